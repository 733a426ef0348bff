"""Rendering: voxel-centre world coordinates of a grid, and the anatomy painted onto it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .anatomy import AIR_HU, Anatomy


class Grid:
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


class Canvas:
    """HU image and liver label painted together (painter's algorithm, see module docstring)."""

    def __init__(self, shape):
        self.hu = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def paint(self, sl, mask, value, liver: bool = False):
        hu = self.hu[sl]
        hu[mask] = value
        lab = self.label[sl]
        lab[mask] = 1 if liver else 0



# --------------------------------------------------------------------------------------------------
# Rendering: paint the anatomy onto a grid, in a fixed order
# --------------------------------------------------------------------------------------------------
def render(an: Anatomy, grid: Grid) -> Canvas:
    cv = Canvas(grid.shape)
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
