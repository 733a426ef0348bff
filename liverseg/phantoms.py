"""Synthetic abdominal CT phantoms with an exact liver label, for ``liverseg demo`` and tests.

Why phantoms: the demo must run the whole pipeline (read, resample, train, segment, write) on a CPU in
minutes, with no patient data to download. The task has to look like abdominal CT (so the pipeline is
exercised on realistic intensities and neighbours of liver-like HU) yet be learnable from ~12 volumes.

Design
------
* **Anatomy lives in world space.** Every structure is an implicit function of patient RAS+
  millimetres (ellipsoids, cylinders, tubes, smoothly deformed by low-frequency sinusoid sums),
  centred near the origin. All of its random parameters are drawn from the seed alone, so a seed
  means one patient whatever grid it is imaged on.
* **The grid is random and independent of the anatomy.** Spacing, axis order/flips (an orientation
  code) and a small oblique rotation give an affine; the world coordinates of every voxel centre
  are computed from it and the anatomy is sampled there. The label is therefore exact on any grid,
  and any orientation bug downstream (a flipped or permuted axis) shows up as a bad Dice instead of
  being hidden by a phantom that happens to be symmetric or axis-aligned.
* **Painter's algorithm.** Structures are painted in a fixed order, later ones overwriting earlier
  ones, into an HU array and a label array together; the label is 1 exactly where the *last* paint
  was liver (parenchyma, intrahepatic vessels, lesions). So the liver is clipped by the diaphragm,
  body wall, IVC, gallbladder, kidney... without any bookkeeping.
* **Image formation** is a mild Gaussian blur plus Gaussian noise on the HU image only.

Sign convention: RAS+ as nibabel, NIfTI and ``liverseg.io.volume`` (``LPS_TO_RAS``) define it,
i.e. +x points to the patient's RIGHT, +y anterior, +z superior (an orientation letter names where an
array axis points, as in ``nibabel.aff2axcodes``: "L" = -x). The liver is therefore at world x > 0,
the spleen and stomach at x < 0 -- what a real CT read with SimpleITK and flipped LPS -> RAS gives.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from liverseg.io.volume import Volume

__all__ = ["make_phantom", "phantom_dataset", "ORIENTATION_CHOICES", "MAX_VOXELS"]

# Random grids are kept under this many voxels (speed of generation and of the demo's resampling).
MAX_VOXELS = 1_500_000

# Orientation codes drawn when ``orientation`` is None. LPS (DICOM order) is listed twice because it
# is what most real series look like; the permuted codes put the slice axis first or in the middle.
ORIENTATION_CHOICES = ("LPS", "LPS", "RAS", "LAS", "RPI", "SLP", "PLS", "IRA")

_LETTER_VEC = {
    "R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}

AIR_HU = -1000.0


# --------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------
class _Field:
    """Smooth random scalar field: a sum of plane-wave sinusoids with random directions.

    Normalised to unit variance, so thresholds and amplitudes mean the same for every seed.
    Cheap to evaluate on arbitrary point sets (no lattice, no interpolation), which lets the same
    field be sampled at the voxel centres of any grid.
    """

    def __init__(self, rng: np.random.Generator, n_terms: int, wl_min: float, wl_max: float):
        dirs = rng.normal(size=(n_terms, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2.0 * np.pi / rng.uniform(wl_min, wl_max, size=n_terms)
        # Python floats keep float32 inputs float32 (NumPy 2 treats them as weak scalars).
        self.terms = [(float(d[0] * kk), float(d[1] * kk), float(d[2] * kk), float(ph))
                      for d, kk, ph in zip(dirs, k, rng.uniform(0.0, 2.0 * np.pi, size=n_terms))]
        self.amp = math.sqrt(2.0 / n_terms)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(x), dtype=np.float32)
        for kx, ky, kz, ph in self.terms:
            out += np.sin(kx * x + ky * y + kz * z + ph)
        out *= self.amp
        return out


def _frame(axis: Sequence[float], hint: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """Orthonormal 3x3 whose third column is ``axis`` and first column is closest to ``hint``."""
    e3 = np.asarray(axis, dtype=np.float64)
    e3 = e3 / np.linalg.norm(e3)
    e1 = np.asarray(hint, dtype=np.float64)
    e1 = e1 - e1.dot(e3) * e3
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(e3, e1), e3], axis=1)


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``deg`` degrees."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    t = math.radians(deg)
    kx = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(t) * kx + (1.0 - math.cos(t)) * (kx @ kx)


class _Ellipsoid:
    """Ellipsoid with centre ``c``, semi-axes ``s`` along the columns of ``rot``."""

    def __init__(self, c: Sequence[float], s: Sequence[float], rot: np.ndarray | None = None):
        self.c = tuple(float(v) for v in c)
        self.s = tuple(float(v) for v in s)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)

    def local(self, x, y, z):
        """Coordinates in the ellipsoid frame, divided by the semi-axes (unit sphere inside)."""
        dx, dy, dz = x - self.c[0], y - self.c[1], z - self.c[2]
        r = self.rot
        out = []
        for a in range(3):
            out.append((float(r[0, a]) * dx + float(r[1, a]) * dy + float(r[2, a]) * dz)
                       * (1.0 / self.s[a]))
        return out

    def radius(self, x, y, z):
        """Normalised radius: < 1 inside. Used as a cheap, smooth, unitless implicit function."""
        u, v, w = self.local(x, y, z)
        return np.sqrt(u * u + v * v + w * w)

    def box(self, margin: float = 0.0):
        half = np.sqrt(((self.rot * np.asarray(self.s)[None, :]) ** 2).sum(axis=1)) + margin
        c = np.asarray(self.c)
        return c - half, c + half


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a union of two implicit shapes without a crease at the seam."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


class _Grid:
    """Voxel-centre world coordinates of a grid, and index-space boxes around world boxes."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray):
        self.shape = shape
        self.affine = affine
        self.inv = np.linalg.inv(affine)
        idx = [np.arange(n, dtype=np.float32) for n in shape]
        bcast = [idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]
        # float32 is plenty for millimetres within +-300 mm and halves memory and time.
        self.xyz = []
        for row in range(3):
            a = affine[row]
            self.xyz.append((float(a[3]) + float(a[0]) * bcast[0] + float(a[1]) * bcast[1])
                            + float(a[2]) * bcast[2])

    def region(self, lo: Sequence[float], hi: Sequence[float]):
        """Index slices covering the world box [lo, hi] (None if the box misses the grid)."""
        corners = np.array([[lo[0] if a else hi[0], lo[1] if b else hi[1], lo[2] if c else hi[2], 1.0]
                            for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        ijk = (self.inv @ corners.T)[:3]
        start = np.maximum(np.floor(ijk.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))

    def view(self, lo, hi):
        sl = self.region(lo, hi)
        if sl is None:
            return None
        return sl, self.xyz[0][sl], self.xyz[1][sl], self.xyz[2][sl]


class _Canvas:
    """HU image and liver label painted together (painter's algorithm, see module docstring)."""

    def __init__(self, shape):
        self.hu = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def paint(self, sl, mask, value, liver: bool = False):
        hu = self.hu[sl]
        hu[mask] = value
        lab = self.label[sl]
        lab[mask] = 1 if liver else 0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------------------------------
# Anatomy: every random number about the patient is drawn here, from the anatomy stream only
# --------------------------------------------------------------------------------------------------
class _Anatomy:
    def __init__(self, rng: np.random.Generator):
        u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731

        # Body: elliptical cylinder whose semi-axes vary slowly along z; the back is flatter.
        self.a0, self.b0 = u(150, 175), u(105, 125)
        self.va, self.vb = u(0.0, 0.05), u(0.0, 0.05)
        self.ka, self.kb = 2 * np.pi / u(300, 600), 2 * np.pi / u(300, 600)
        self.pa, self.pb = u(0, 2 * np.pi), u(0, 2 * np.pi)
        self.flat = u(1.05, 1.12)              # posterior semi-axis = b / flat
        self.fat = u(10, 25)                   # subcutaneous fat, thicker anteriorly
        self.fat_c2 = u(-0.15, 0.2)            # lateral vs AP fat distribution
        self.mus = u(8, 14)                    # abdominal wall muscle thickness
        self.skin_hu, self.fat_hu, self.mus_hu = u(10, 40), u(-120, -80), u(40, 60)
        self.cav_fat_hu = u(-105, -85)
        self.f_cav = _Field(rng, 5, 20, 60)
        self.f_fat = _Field(rng, 4, 30, 90)

        self.y_post = -self.b0 / self.flat     # posterior skin line at the midline

        # Diaphragm: two paraboloid domes; the right one (over the liver) is the higher.
        self.zd = u(65, 85)
        self.zd_left = self.zd - u(8, 20)
        self.dome_r = (u(50, 70), u(-15, 0), u(110, 150))   # x, y of apex, curvature radius
        self.dome_l = (-u(50, 70), u(-15, 0), u(110, 150))
        self.lung_hu, self.heart_hu = u(-880, -820), u(100, 150)
        self.f_lung = _Field(rng, 4, 15, 40)
        self.heart = _Ellipsoid((-u(15, 30), u(20, 40), self.zd_left + u(45, 60)),
                                (u(55, 70), u(45, 55), u(45, 55)), _rot_z(u(-20, 20)))

        # Spine and back muscles, placed from the posterior skin line.
        self.r_vb = u(16, 20)
        self.y_vb = self.y_post + u(62, 72)
        self.y_canal = self.y_vb - self.r_vb - u(8, 10)
        self.disc_period, self.disc_phase = u(28, 34), u(0, 34)
        self.cortex_hu, self.cancel_hu, self.disc_hu = u(700, 1000), u(200, 300), u(70, 100)
        self.arch_hu, self.csf_hu = u(400, 650), u(10, 30)
        self.paraspinal = [(side * u(30, 36), self.y_canal - u(10, 16), u(22, 28), u(17, 22))
                           for side in (1.0, -1.0)]
        self.paraspinal_hu = u(45, 60)
        self.psoas_top = self.zd - u(95, 110)
        self.psoas_hu = u(45, 55)

        # Great vessels. The IVC swings anteriorly as it climbs through the liver to the heart.
        self.r_ao = u(10, 13)
        self.aorta = (-u(8, 15), self.y_vb + self.r_vb + self.r_ao + u(1, 4))
        self.aorta_hu = u(120, 200)
        self.ivc = (u(18, 26), self.y_vb + self.r_vb + u(4, 10), u(11, 14), u(8, 11))
        self.ivc_rise = (self.zd - u(70, 90), u(0.25, 0.45))
        self.ivc_hu = u(80, 150)

        # Liver: union of three ellipsoids (right lobe, medial segment, tapering left lobe), with a
        # low-frequency radial deformation; its top is shaped by the right dome, not by the ellipsoid.
        s = u(0.88, 1.12)
        sx, sy, sz = (s * u(0.94, 1.06) for _ in range(3))
        dx, dy = u(-8, 8), u(-6, 6)
        self.liver = [
            _Ellipsoid((62 * sx + dx, -8 + dy, self.zd - 45 * sz), (68 * sx, 68 * sy, 92 * sz)),
            _Ellipsoid((15 * sx + dx, 5 + dy, self.zd - 45 * sz), (50 * sx, 55 * sy, 55 * sz)),
            _Ellipsoid((-20 * sx + dx, 30 * sy + dy, self.zd - 35 * sz), (50 * sx, 35 * sy, 32 * sz),
                       _rot_z(u(-15, 15))),
        ]
        self.liver_k = 0.25
        self.f_liver_shape = _Field(rng, 6, 60, 160)
        self.liver_deform = u(0.05, 0.10)
        self.liver_hu = u(50, 70)
        self.f_liver_tex = _Field(rng, 6, 12, 40)
        self.liver_tex = u(3.0, 5.0)           # std; +-8 HU at two sigma
        self.f_ves = (_Field(rng, 5, 35, 80), _Field(rng, 5, 35, 80))
        self.ves_w = u(0.22, 0.32)
        self.ves_hu = self.liver_hu + u(20, 45)

        # Lesions (part of the liver label): centres rejection-sampled deep inside the organ.
        self.lesions = []
        n_les = int(rng.integers(0, 4))
        lo, hi = self.liver[0].box()
        for _ in range(60):
            if len(self.lesions) >= n_les:
                break
            p = rng.uniform(lo, hi)
            r = u(5, 15)
            if self.liver_f(*(np.array([v], dtype=np.float32) for v in p))[0] < -0.25 \
                    and p[2] < self.zd - 15 - r:
                self.lesions.append((tuple(float(v) for v in p), r, u(20, 40)))

        # Gallbladder: in the fossa on the inferior surface of the liver, bulging below it.
        self.gallbladder = None
        if rng.random() < 0.85:
            gx, gy = u(25, 45) * sx + dx, u(25, 45) * sy + dy
            zs = np.arange(self.zd, self.zd - 220, -1.0, dtype=np.float32)
            inside = self.liver_f(np.full_like(zs, gx), np.full_like(zs, gy), zs) < 0
            if inside.any():
                z_inf = float(zs[np.nonzero(inside)[0].max()])
                semi = (u(13, 18), u(12, 16), u(28, 40))
                axis = (u(-0.1, 0.2), u(0.3, 0.6), 1.0)   # fundus anterior and inferior
                self.gallbladder = _Ellipsoid((gx, gy + 5, z_inf + u(0.1, 0.4) * semi[2]),
                                              semi, _frame(axis))
                self.gb_hu = u(0, 15)

        # Spleen (liver-like HU): left, posterior, under the left dome.
        ssp = u(0.88, 1.12)
        phi = math.radians(u(25, 40))
        e2 = (math.sin(phi), math.cos(phi), 0.0)        # long axis: posterior-lateral -> anterior-medial
        rot = np.stack([np.cross(e2, (0, 0, 1.0)), e2, (0.0, 0.0, 1.0)], axis=1)
        self.spleen = _Ellipsoid((-u(75, 90), -u(30, 45), self.zd_left - u(40, 55)),
                                 (u(25, 32) * ssp, u(50, 62) * ssp, u(45, 55) * ssp), rot)
        self.f_spleen = _Field(rng, 5, 50, 120)
        self.spleen_hu = u(45, 60)

        # Stomach: left anterior upper; fluid with an air cap on the non-dependent (anterior) side
        # since patients lie supine.
        sst = u(0.88, 1.12)
        self.stomach = _Ellipsoid((-u(40, 55), u(10, 25), self.zd_left - u(45, 60)),
                                  (u(38, 48) * sst, u(30, 38) * sst, u(55, 65) * sst),
                                  _frame((-0.45, -0.25, 0.86)))
        self.stomach_wall_hu, self.stomach_fluid_hu = u(40, 70), u(10, 30)
        self.stomach_air = self.stomach.c[1] + u(0.1, 0.5) * self.stomach.s[1]

        # Pancreas: tapered tube from the head (near the duodenum) to the tail (splenic hilum).
        self.panc = ((u(15, 30), self.y_vb + u(45, 55), self.zd - u(110, 125)),
                     (-u(70, 85), self.y_vb + u(20, 30), self.zd - u(80, 95)),
                     u(14, 18), u(8, 11))
        self.panc_hu = u(40, 55)
        self.f_panc = _Field(rng, 5, 8, 20)

        # Kidneys: posterior, lower than the liver, the left one higher; long axis tilted so the
        # upper pole is medial and posterior.
        self.kidneys = []
        for side, z_off in ((1.0, u(120, 135)), (-1.0, u(105, 120))):
            k = u(0.9, 1.1)
            e = _Ellipsoid((side * u(68, 78), self.y_vb + u(0, 8), self.zd - z_off),
                           (u(25, 30) * k, u(22, 26) * k, u(48, 56) * k),
                           _frame((-side * u(0.1, 0.3), -u(0.05, 0.25), 1.0), (side, 0.0, 0.0)))
            self.kidneys.append(e)
        self.cortex_k_hu, self.medulla_hu, self.sinus_hu = u(140, 180), u(35, 50), u(-90, -60)

        # Bowel: a tangle of tubes (where two smooth fields are both near zero) below the liver.
        self.bowel_top = self.zd - u(100, 115)
        self.f_bowel = (_Field(rng, 6, 40, 90), _Field(rng, 6, 40, 90), _Field(rng, 5, 20, 50))
        self.bowel_w = u(0.9, 1.1)
        self.bowel_wall_hu, self.bowel_fluid_hu = u(30, 45), u(20, 35)

        # Ribs: tilted hoops just inside the wall, descending anteriorly; lower ones shorter.
        z0 = self.zd + u(25, 35)
        self.ribs = []
        for i, t_end in enumerate((2.6, 2.4, 2.1, 1.7, 1.25)):
            self.ribs.append((z0 - i * u(28, 34), u(35, 50), t_end * u(0.9, 1.05)))
        self.rib_hu = u(450, 800)

    # ---- implicit functions that are also evaluated outside rendering (lesions, gallbladder) ----
    def liver_f(self, x, y, z):
        """Liver implicit function, unitless (< 0 inside), before the clipping done by painting."""
        e = self.liver
        f = _smin(e[0].radius(x, y, z) - 1.0, e[1].radius(x, y, z) - 1.0, self.liver_k)
        f = _smin(f, e[2].radius(x, y, z) - 1.0, self.liver_k)
        return f - self.liver_deform * self.f_liver_shape(x, y, z)

    def liver_box(self):
        los, his = zip(*(e.box(margin=15.0) for e in self.liver))
        return np.min(los, axis=0), np.max(his, axis=0)

    def diaphragm_z(self, x, y):
        (xr, yr, rr), (xl, yl, rl) = self.dome_r, self.dome_l
        # Steeper behind the apex than in front: the posterior costophrenic recesses are the deepest.
        ky_r = np.where(y < yr, np.float32(1.3), np.float32(0.75))
        ky_l = np.where(y < yl, np.float32(1.3), np.float32(0.75))
        zr = self.zd - ((x - xr) ** 2 + (ky_r * (y - yr)) ** 2) * (0.5 / rr)
        zl = self.zd_left - ((x - xl) ** 2 + (ky_l * (y - yl)) ** 2) * (0.5 / rl)
        return np.maximum(zr, zl)


# --------------------------------------------------------------------------------------------------
# Rendering: paint the anatomy onto a grid, in a fixed order
# --------------------------------------------------------------------------------------------------
def _render(an: _Anatomy, grid: _Grid) -> _Canvas:
    cv = _Canvas(grid.shape)
    x, y, z = grid.xyz
    big = 1e4

    # Body wall layers, as distances measured inward from the skin along rays from the body axis.
    a = an.a0 * (1.0 + an.va * np.sin(an.ka * z + an.pa))
    b = an.b0 * (1.0 + an.vb * np.sin(an.kb * z + an.pb))
    yy = np.where(y < 0, y * an.flat, y)
    rho = np.sqrt((x / a) ** 2 + (yy / b) ** 2)
    r = np.sqrt(x * x + yy * yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(rho > 1e-4, r / rho - r, big).astype(np.float32)
        sin_t = np.where(r > 1e-3, yy / r, 0.0)
        cos2_t = np.where(r > 1e-3, (x * x - yy * yy) / (r * r), 0.0)
    del a, b, yy, rho, r
    fat_w = an.fat * (1.0 + 0.35 * sin_t + an.fat_c2 * cos2_t)
    wall = fat_w + an.mus * (1.0 + 0.25 * sin_t)
    del sin_t, cos2_t
    body = depth > 0
    cav = depth >= wall
    everything = tuple(slice(None) for _ in range(3))

    m = body & (depth < 1.5)
    cv.paint(everything, m, an.skin_hu)
    m = body & (depth >= 1.5) & (depth < fat_w)
    cv.paint(everything, m, an.fat_hu + 6.0 * an.f_fat(x[m], y[m], z[m]))
    m = body & (depth >= fat_w) & ~cav
    cv.paint(everything, m, an.mus_hu + 3.0 * an.f_fat(x[m], y[m], z[m]))
    # Intra-abdominal fat with soft-tissue strands.
    cv.paint(everything, cav, an.cav_fat_hu + 10.0 * an.f_cav(x[cav], y[cav], z[cav]))

    def organ_view(lo, hi):
        v = grid.view(lo, hi)
        if v is None:
            return None
        sl, xs, ys, zs = v
        return sl, xs, ys, zs, cav[sl]

    # Bowel below the liver, anterior to the retroperitoneum; higher on the patient's left.
    v = organ_view((-an.a0, an.y_vb + 20, -400.0), (an.a0, an.b0 * 1.1, an.bowel_top + 30))
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        region = cv_ & (ys > an.y_vb + 20) & (zs < an.bowel_top - 0.12 * xs)
        px, py, pz = xs[region], ys[region], zs[region]
        g1, g2, g3 = (f(px, py, pz) for f in an.f_bowel)
        rr = g1 * g1 + g2 * g2
        w2 = an.bowel_w ** 2
        tube = rr < w2
        val = np.where(rr < 0.45 * w2, an.bowel_fluid_hu, an.bowel_wall_hu).astype(np.float32)
        val += 4.0 * g3
        val[(rr < 0.45 * w2) & (g3 > 1.3)] = -900.0      # gas bubbles
        sub = np.zeros(region.shape, dtype=bool)
        sub[region] = tube
        cv.paint(sl, sub, val[tube])

    # Stomach.
    st = an.stomach
    v = organ_view(*st.box())
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        q = st.radius(xs, ys, zs)
        m = (q < 1.0) & cv_
        wall_q = 1.0 - 4.5 / min(st.s)
        val = np.where(q[m] > wall_q, an.stomach_wall_hu, an.stomach_fluid_hu).astype(np.float32)
        val[(q[m] <= wall_q) & (ys[m] > an.stomach_air)] = -900.0
        cv.paint(sl, m, val)

    # Pancreas.
    p0, p1, r0, r1 = an.panc
    lo = np.minimum(p0, p1) - max(r0, r1)
    hi = np.maximum(p0, p1) + max(r0, r1)
    v = organ_view(lo, hi)
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        d = np.subtract(p1, p0)
        dd = float(d @ d)
        t = np.clip(((xs - p0[0]) * float(d[0]) + (ys - p0[1]) * float(d[1])
                     + (zs - p0[2]) * float(d[2])) * (1.0 / dd), 0.0, 1.0)
        dist2 = ((xs - p0[0] - t * float(d[0])) ** 2 + (ys - p0[1] - t * float(d[1])) ** 2
                 + (zs - p0[2] - t * float(d[2])) ** 2)
        rad = r0 + (r1 - r0) * t
        m = (dist2 < rad * rad) & cv_
        cv.paint(sl, m, an.panc_hu + 6.0 * an.f_panc(xs[m], ys[m], zs[m]))

    # Spleen.
    sp = an.spleen
    v = organ_view(*sp.box(margin=10.0))
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        m = (sp.radius(xs, ys, zs) - 0.08 * an.f_spleen(xs, ys, zs) < 1.0) & cv_
        cv.paint(sl, m, an.spleen_hu + 3.0 * an.f_liver_tex(xs[m], ys[m], zs[m]))

    # Liver, with intrahepatic vessels and lesions (all labelled liver).
    v = organ_view(*an.liver_box())
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        f = an.liver_f(xs, ys, zs)
        m = (f < 0.0) & cv_
        px, py, pz = xs[m], ys[m], zs[m]
        val = an.liver_hu + an.liver_tex * an.f_liver_tex(px, py, pz)
        g1, g2 = (fv(px, py, pz) for fv in an.f_ves)
        ves = (g1 * g1 + g2 * g2 < an.ves_w ** 2) & (f[m] < -0.06)
        val[ves] = an.ves_hu
        for c, rad, hu in an.lesions:
            les = (px - c[0]) ** 2 + (py - c[1]) ** 2 + (pz - c[2]) ** 2 < rad * rad
            val[les] = hu + 2.0 * g1[les]
        cv.paint(sl, m, val, liver=True)

    # Gallbladder: not liver, even where it sits inside the liver's outline.
    gb = an.gallbladder
    if gb is not None:
        v = organ_view(*gb.box())
        if v is not None:
            sl, xs, ys, zs, cv_ = v
            m = (gb.radius(xs, ys, zs) < 1.0) & cv_
            cv.paint(sl, m, an.gb_hu)

    # Kidneys: enhancing cortex, medulla, fat in the sinus opening medially.
    for kid in an.kidneys:
        v = organ_view(*kid.box())
        if v is None:
            continue
        sl, xs, ys, zs, cv_ = v
        lu, lv, lw = kid.local(xs, ys, zs)
        q = np.sqrt(lu * lu + lv * lv + lw * lw)
        m = (q < 1.0) & cv_
        medial = -lu                      # frame's first axis points laterally
        hilum = (medial > 0.35) & (np.abs(lw) < 0.35) & (np.abs(lv) < 0.45)
        val = np.where(q < 0.7, an.medulla_hu, an.cortex_k_hu).astype(np.float32)
        val = np.where(hilum, an.sinus_hu, val)
        notch = hilum & (medial > 0.7)    # the hilum opens onto the surrounding fat
        m &= ~notch
        cv.paint(sl, m, val[m])

    # Psoas muscles, growing caudally.
    v = organ_view((-90.0, an.y_vb - 40, -400.0), (90.0, an.y_vb + 40, an.psoas_top))
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        rad = np.clip(6.0 + (an.psoas_top - zs) * 0.3, 0.0, 24.0)
        cx = 28.0 + 0.6 * rad
        m = np.zeros(xs.shape, dtype=bool)
        for side in (1.0, -1.0):
            m |= ((xs - side * cx) / np.maximum(rad, 1e-3)) ** 2 + \
                 ((ys - an.y_vb - 2.0) / np.maximum(0.85 * rad, 1e-3)) ** 2 < 1.0
        m &= cv_ & (zs < an.psoas_top)
        cv.paint(sl, m, an.psoas_hu)

    # Above the diaphragm: lung bases and the bottom of the heart; a 5 mm diaphragm muscle band.
    v = organ_view((-an.a0 * 1.1, -an.b0 * 1.1, an.zd_left - 110.0), (an.a0 * 1.1, an.b0 * 1.1, 400.0))
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        zdia = an.diaphragm_z(xs, ys)
        band = cv_ & (zs >= zdia) & (zs < zdia + 5.0)
        cv.paint(sl, band, an.mus_hu)
        above = cv_ & (zs >= zdia + 5.0)
        heart = above & (an.heart.radius(xs, ys, zs) < 1.0)
        lung = above & ~heart
        cv.paint(sl, heart, an.heart_hu)
        cv.paint(sl, lung, an.lung_hu + 25.0 * an.f_lung(xs[lung], ys[lung], zs[lung]))

    # Aorta and IVC (the IVC bends anteriorly towards the right atrium; it is not liver).
    v = organ_view((-80.0, an.y_vb - 40, -400.0), (80.0, an.b0, 400.0))
    if v is not None:
        sl, xs, ys, zs, cv_ = v
        ax, ay = an.aorta
        m = ((xs - ax) ** 2 + (ys - ay) ** 2 < an.r_ao ** 2) & cv_
        cv.paint(sl, m, an.aorta_hu)
        ix, iy, isx, isy = an.ivc
        z_bend, slope = an.ivc_rise
        iyz = iy + slope * np.maximum(zs - z_bend, 0.0)
        m = (((xs - ix) / isx) ** 2 + ((ys - iyz) / isy) ** 2 < 1.0) & cv_
        cv.paint(sl, m, an.ivc_hu)

    # Back muscles and spine: inside the subcutaneous fat, not only inside the cavity.
    v = grid.view((-90.0, an.y_post - 5, -400.0), (90.0, an.y_vb + an.r_vb + 5, 400.0))
    if v is not None:
        sl, xs, ys, zs = v
        deep = depth[sl] >= fat_w[sl]
        m = np.zeros(xs.shape, dtype=bool)
        for cx, cy, sx, sy in an.paraspinal:
            m |= ((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2 < 1.0
        cv.paint(sl, m & deep, an.paraspinal_hu)

        rv = np.sqrt(xs * xs + (ys - an.y_vb) ** 2)
        phase = np.mod(zs - an.disc_phase, an.disc_period)
        disc = np.abs(phase - 0.5 * an.disc_period) > 0.5 * an.disc_period - 3.5
        m = rv < an.r_vb
        val = np.where(rv < an.r_vb - 2.5, an.cancel_hu, an.cortex_hu).astype(np.float32)
        val = np.where(disc, an.disc_hu, val)
        cv.paint(sl, m, val[m])
        rc = np.sqrt(xs * xs + (ys - an.y_canal) ** 2)
        arch = (rc >= 8.0) & (rc < 13.5) & ~(rv < an.r_vb)
        spinous = (np.abs(xs) < 4.0) & (ys < an.y_canal - 10.0) & (ys > an.y_canal - 35.0)
        transverse = (np.abs(ys - an.y_canal - 3.0) < 4.0) & (np.abs(xs) > 10.0) & \
            (np.abs(xs) < 40.0) & (zs < an.zd - 70.0)
        bone = (arch | spinous | transverse) & deep
        cv.paint(sl, bone, an.arch_hu)
        cv.paint(sl, rc < 8.0, an.csf_hu)

    # Ribs: only evaluated in the thin shell where they can be (cheap).
    z_rib_lo = min(z0 - drop * t_end for z0, drop, t_end in an.ribs) - 10.0
    v = grid.view((-an.a0 * 1.2, -an.b0 * 1.2, z_rib_lo), (an.a0 * 1.2, an.b0 * 1.2, an.ribs[0][0] + 10))
    if v is not None:
        sl, xs, ys, zs = v
        dep = depth[sl]
        rib_d = fat_w[sl] + 0.5 * an.mus
        shell = np.abs(dep - rib_d) < 5.0
        px, py, pz = xs[shell], ys[shell], zs[shell]
        t = np.abs(np.arctan2(px, -py))    # angle from the posterior midline, 0..pi
        hit = np.zeros(px.shape, dtype=bool)
        for z0, drop, t_end in an.ribs:
            hit |= (np.abs(pz - (z0 - drop * t)) < 4.5) & (t > 0.35) & (t < t_end)
        sub = np.zeros(shell.shape, dtype=bool)
        sub[shell] = hit
        cv.paint(sl, sub, an.rib_hu)

    return cv


# --------------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------------
def _direction_from_code(code: str) -> np.ndarray:
    code = code.upper()
    if len(code) != 3 or any(c not in _LETTER_VEC for c in code) or \
            sorted(int(np.argmax(np.abs(_LETTER_VEC[c]))) for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation must be 3 letters, one of each of L/R, A/P, S/I; got {code!r}")
    return np.array([_LETTER_VEC[c] for c in code], dtype=np.float64).T   # columns = axis directions


def _make_grid(rng: np.random.Generator, an: _Anatomy, spacing_mm, orientation, oblique_deg):
    # Every random draw happens whatever the arguments, so fixing one of them leaves the others as
    # they would have been for that seed.
    code_random = ORIENTATION_CHOICES[int(rng.integers(len(ORIENTATION_CHOICES)))]
    is_oblique = rng.random() < 0.4
    angle_random = _u(rng, 1.0, 10.0) if is_oblique else 0.0
    rot_axis = rng.normal(size=3)
    fov_world = np.array([max(_u(rng, 350, 370), 2 * an.a0 * (1 + an.va) + 20),
                          max(_u(rng, 270, 290), 2 * an.b0 * (1 + an.vb) + 20),
                          _u(rng, 200, 240)])
    centre = np.array([_u(rng, -8, 8), _u(rng, -8, 8), _u(rng, -10, 5)])

    code = (orientation or code_random).upper()
    angle = float(angle_random if oblique_deg is None else oblique_deg)
    direction = _rotation(rot_axis, angle) @ _direction_from_code(code)

    # World axis each array axis runs along (after the oblique tilt), and its field of view.
    dominant = np.argmax(np.abs(direction), axis=0)
    if sorted(dominant.tolist()) != [0, 1, 2]:      # only possible for tilts near 45 degrees
        dominant = np.argmax(np.abs(_direction_from_code(code)), axis=0)
    fov = fov_world[dominant]
    slice_axis = int(np.argmax(np.abs(direction[2])))

    if spacing_mm is None:
        # Clinical-looking anisotropic spacing, redrawn until the volume fits the voxel budget.
        for _ in range(200):
            inplane, thick = _u(rng, 1.4, 2.4), _u(rng, 2.5, 5.0)
            spacing = np.full(3, inplane)
            spacing[slice_axis] = thick
            if np.prod(np.ceil(fov / spacing)) <= MAX_VOXELS:
                break
        else:
            spacing *= (np.prod(np.ceil(fov / spacing)) / MAX_VOXELS) ** (1 / 3) * 1.01
    else:
        spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(3)
        if np.any(spacing <= 0):
            raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")

    shape = tuple(int(max(1, math.ceil(f / s))) for f, s in zip(fov, spacing))
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, affine, code, angle


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def make_phantom(seed: int, *, spacing_mm: tuple[float, float, float] | None = None,
                 orientation: str | None = None,
                 oblique_deg: float | None = None) -> tuple[Volume, Volume]:
    """Return ``(ct, label)``: ct float32 HU, label uint8 (0 background, 1 liver), on the same grid.

    ``spacing_mm`` is per ARRAY axis (as ``Volume.spacing_mm``); None draws in-plane 1.4-2.4 mm and
    slice 2.5-5.0 mm under a budget of ``MAX_VOXELS``. ``orientation`` is a code such as "LPS"
    (each letter: where that array axis points, nibabel style); None draws from
    ``ORIENTATION_CHOICES``. ``oblique_deg`` tilts the axes about a random axis; None gives 0 for
    ~60% of seeds and up to 10 degrees otherwise. The anatomy depends on ``seed`` only, so the same
    seed on different grids is the same patient.
    """
    root = np.random.default_rng(seed)
    rng_anat, rng_grid, rng_noise = root.spawn(3)
    anatomy = _Anatomy(rng_anat)
    shape, affine, code, angle = _make_grid(rng_grid, anatomy, spacing_mm, orientation, oblique_deg)
    canvas = _render(anatomy, _Grid(shape, affine))

    # Image formation: scanner blur and quantum noise. The label stays the sampled truth.
    hu = ndimage.gaussian_filter(canvas.hu, sigma=_u(rng_noise, 0.5, 0.8), mode="nearest")
    noise_sd = _u(rng_noise, 8.0, 20.0)
    hu += rng_noise.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd)
    np.clip(hu, -1024.0, 3071.0, out=hu)

    meta = {"source": "phantom", "seed": int(seed), "orientation": code, "oblique_deg": angle}
    return (Volume(hu.astype(np.float32, copy=False), affine.copy(), dict(meta)),
            Volume(canvas.label, affine.copy(), dict(meta)))


def _save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    """Write next to the destination, then rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:-7]}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def phantom_dataset(out_dir: Path, seeds: Sequence[int]) -> list[dict]:
    """Write phantoms as NIfTI under ``out_dir/images`` and ``out_dir/labels``; return the manifest.

    Images are int16 HU (rounded), labels uint8. Entries are ``{"id", "image", "label"}`` with paths
    relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds:
        ct, label = make_phantom(int(seed))
        case = f"phantom_{int(seed):03d}"
        image_rel, label_rel = f"images/{case}.nii.gz", f"labels/{case}.nii.gz"
        _save_atomic(_nifti(np.rint(ct.array).astype(np.int16), ct.affine_ras), out_dir / image_rel)
        _save_atomic(_nifti(label.array.astype(np.uint8), label.affine_ras), out_dir / label_rel)
        entries.append({"id": case, "image": image_rel, "label": label_rel})
    return entries
