"""Phantom anatomy: implicit shapes in world RAS+ millimetres and the random patient built from them."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

AIR_HU = -1000.0


# --------------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------------
class Field:
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


def frame(axis: Sequence[float], hint: Sequence[float] = (1.0, 0.0, 0.0)) -> np.ndarray:
    """Orthonormal 3x3 whose third column is ``axis`` and first column is closest to ``hint``."""
    e3 = np.asarray(axis, dtype=np.float64)
    e3 = e3 / np.linalg.norm(e3)
    e1 = np.asarray(hint, dtype=np.float64)
    e1 = e1 - e1.dot(e3) * e3
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(e3, e1), e3], axis=1)


def rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``deg`` degrees."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    t = math.radians(deg)
    kx = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(t) * kx + (1.0 - math.cos(t)) * (kx @ kx)


class Ellipsoid:
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


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a union of two implicit shapes without a crease at the seam."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))



# --------------------------------------------------------------------------------------------------
# Anatomy: every random number about the patient is drawn here, from the anatomy stream only
# --------------------------------------------------------------------------------------------------
class Anatomy:
    def __init__(self, rng: np.random.Generator):
        u = lambda lo, hi: uniform(rng, lo, hi)  # noqa: E731

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
        self.f_cav = Field(rng, 5, 20, 60)
        self.f_fat = Field(rng, 4, 30, 90)

        self.y_post = -self.b0 / self.flat     # posterior skin line at the midline

        # Diaphragm: two paraboloid domes; the right one (over the liver) is the higher.
        self.zd = u(65, 85)
        self.zd_left = self.zd - u(8, 20)
        self.dome_r = (u(50, 70), u(-15, 0), u(110, 150))   # x, y of apex, curvature radius
        self.dome_l = (-u(50, 70), u(-15, 0), u(110, 150))
        self.lung_hu, self.heart_hu = u(-880, -820), u(100, 150)
        self.f_lung = Field(rng, 4, 15, 40)
        self.heart = Ellipsoid((-u(15, 30), u(20, 40), self.zd_left + u(45, 60)),
                                (u(55, 70), u(45, 55), u(45, 55)), rot_z(u(-20, 20)))

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
            Ellipsoid((62 * sx + dx, -8 + dy, self.zd - 45 * sz), (68 * sx, 68 * sy, 92 * sz)),
            Ellipsoid((15 * sx + dx, 5 + dy, self.zd - 45 * sz), (50 * sx, 55 * sy, 55 * sz)),
            Ellipsoid((-20 * sx + dx, 30 * sy + dy, self.zd - 35 * sz), (50 * sx, 35 * sy, 32 * sz),
                       rot_z(u(-15, 15))),
        ]
        self.liver_k = 0.25
        self.f_liver_shape = Field(rng, 6, 60, 160)
        self.liver_deform = u(0.05, 0.10)
        self.liver_hu = u(50, 70)
        self.f_liver_tex = Field(rng, 6, 12, 40)
        self.liver_tex = u(3.0, 5.0)           # std; +-8 HU at two sigma
        self.f_ves = (Field(rng, 5, 35, 80), Field(rng, 5, 35, 80))
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
                self.gallbladder = Ellipsoid((gx, gy + 5, z_inf + u(0.1, 0.4) * semi[2]),
                                              semi, frame(axis))
                self.gb_hu = u(0, 15)

        # Spleen (liver-like HU): left, posterior, under the left dome.
        ssp = u(0.88, 1.12)
        phi = math.radians(u(25, 40))
        e2 = (math.sin(phi), math.cos(phi), 0.0)        # long axis: posterior-lateral -> anterior-medial
        rot = np.stack([np.cross(e2, (0, 0, 1.0)), e2, (0.0, 0.0, 1.0)], axis=1)
        self.spleen = Ellipsoid((-u(75, 90), -u(30, 45), self.zd_left - u(40, 55)),
                                 (u(25, 32) * ssp, u(50, 62) * ssp, u(45, 55) * ssp), rot)
        self.f_spleen = Field(rng, 5, 50, 120)
        self.spleen_hu = u(45, 60)

        # Stomach: left anterior upper; fluid with an air cap on the non-dependent (anterior) side
        # since patients lie supine.
        sst = u(0.88, 1.12)
        self.stomach = Ellipsoid((-u(40, 55), u(10, 25), self.zd_left - u(45, 60)),
                                  (u(38, 48) * sst, u(30, 38) * sst, u(55, 65) * sst),
                                  frame((-0.45, -0.25, 0.86)))
        self.stomach_wall_hu, self.stomach_fluid_hu = u(40, 70), u(10, 30)
        self.stomach_air = self.stomach.c[1] + u(0.1, 0.5) * self.stomach.s[1]

        # Pancreas: tapered tube from the head (near the duodenum) to the tail (splenic hilum).
        self.panc = ((u(15, 30), self.y_vb + u(45, 55), self.zd - u(110, 125)),
                     (-u(70, 85), self.y_vb + u(20, 30), self.zd - u(80, 95)),
                     u(14, 18), u(8, 11))
        self.panc_hu = u(40, 55)
        self.f_panc = Field(rng, 5, 8, 20)

        # Kidneys: posterior, lower than the liver, the left one higher; long axis tilted so the
        # upper pole is medial and posterior.
        self.kidneys = []
        for side, z_off in ((1.0, u(120, 135)), (-1.0, u(105, 120))):
            k = u(0.9, 1.1)
            e = Ellipsoid((side * u(68, 78), self.y_vb + u(0, 8), self.zd - z_off),
                           (u(25, 30) * k, u(22, 26) * k, u(48, 56) * k),
                           frame((-side * u(0.1, 0.3), -u(0.05, 0.25), 1.0), (side, 0.0, 0.0)))
            self.kidneys.append(e)
        self.cortex_k_hu, self.medulla_hu, self.sinus_hu = u(140, 180), u(35, 50), u(-90, -60)

        # Bowel: a tangle of tubes (where two smooth fields are both near zero) below the liver.
        self.bowel_top = self.zd - u(100, 115)
        self.f_bowel = (Field(rng, 6, 40, 90), Field(rng, 6, 40, 90), Field(rng, 5, 20, 50))
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
        f = smooth_min(e[0].radius(x, y, z) - 1.0, e[1].radius(x, y, z) - 1.0, self.liver_k)
        f = smooth_min(f, e[2].radius(x, y, z) - 1.0, self.liver_k)
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
