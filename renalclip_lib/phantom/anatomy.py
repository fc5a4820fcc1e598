"""The patient's body as analytic shapes: trunk, spine, muscles, organs, vessels and two kidneys.

Coordinates are LPS millimetres in the patient's own frame (before any phase's misregistration
shift). Geometry follows the CT appearance reference: a 300-400 mm wide, 220-300 mm deep abdomen;
kidneys 10-12 cm long, 5-6 cm wide, 3-4 cm thick, long axis tilted with the upper pole medial and
posterior, hilum facing anteromedially, the left kidney higher than the right; each kidney with
cortex, medullary pyramids, sinus fat, renal pelvis with infundibula and a ureter, a renal vein to
the IVC (the left one passing in front of the aorta) and a renal artery from the aorta.

``draw_anatomy`` draws one patient; ``Anatomy.layers()`` lists the shapes in painting order, each
with the tissue whose HU it takes (see ``tissues.TISSUE_HU``) and the segmentation label it sets.

Usage::

    anat = draw_anatomy(rng)
    for layer in anat.layers(): ...
    anat.kidneys["left"].polar_lines()   # (z_lower, z_upper) of the renal sinus
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import LABEL_KIDNEY
from .shapes import Ellipsoid, Shape, Tube, ZCylinder, rotation_from_axes

BIG = 1.0e4


@dataclass
class Layer:
    """One painted shape: ``tissue`` names a row of the HU table, or ``hu`` gives HU per phase."""

    name: str
    shape: Shape
    tissue: str | None = None
    hu: dict | None = None
    label: int | None = None
    texture: object = None           # callable(xs, ys, zs) -> unit-amplitude field
    texture_hu: dict | None = None   # amplitude per phase
    clip_to: Shape | None = None
    in_template: bool = False        # z-invariant trunk layer: painted once in 2D, then broadcast


@dataclass
class Kidney:
    """One kidney; ``rotation`` columns are u (toward the upper pole), v (toward the hilum), w = u x v."""

    side: str
    center: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray
    sinus: Ellipsoid
    pelvis: Ellipsoid
    pyramids: list
    infundibula: list
    ureter: Tube
    vein: Tube
    artery: Tube
    perirenal: Ellipsoid
    fascia: Ellipsoid

    @property
    def outer(self) -> Ellipsoid:
        return Ellipsoid(self.center, self.axes, self.rotation)

    @property
    def hilum(self) -> np.ndarray:
        """The hilar point: where the renal vessels enter, on the medial contour."""
        return self.center + self.rotation[:, 1] * self.axes[1]

    @property
    def hilar_plane_y(self) -> float:
        """y (mm) of the coronal plane at the level of the hilar vessels: through the renal pelvis and
        the vessels' course in the sinus, halfway between the sinus centre and the kidney's centre."""
        return float(0.5 * (self.sinus.center[1] + self.center[1]))

    def local_to_world(self, local) -> np.ndarray:
        return self.center + self.rotation @ np.asarray(local, float)

    def polar_lines(self) -> tuple[float, float]:
        """z (mm) of the lower and upper polar lines: where sinus fat stops appearing in the kidney."""
        if not hasattr(self, "_polar"):
            lo, hi = self.sinus.bbox()
            n = 32
            g = [np.linspace(lo[a], hi[a], n) for a in range(3)]
            x, y, z = np.meshgrid(*g, indexing="ij")
            x, y, z = x.ravel(), y.ravel(), z.ravel()
            keep = self.sinus.inside(x, y, z) & self.outer.inside(x, y, z)
            self._polar = (float(z[keep].min()), float(z[keep].max()))
        return self._polar

    def z_extent(self) -> tuple[float, float]:
        lo, hi = self.outer.bbox()
        return float(lo[2]), float(hi[2])


@dataclass
class Anatomy:
    """Everything normal in one patient; ``z_range`` is the span a renal CT must cover."""

    body_center: np.ndarray
    body_axes: np.ndarray          # outer semi-axes (x, y)
    kidneys: dict
    trunk: list = field(default_factory=list)      # z-invariant layers (template)
    organs: list = field(default_factory=list)     # intraperitoneal organs, under the kidneys' fat
    retro: list = field(default_factory=list)      # spine, muscles, great vessels: over the perirenal fat
    spine_z: tuple = ()

    def layers(self) -> list:
        """All layers in painting order (later ones cover earlier ones)."""
        out = list(self.trunk) + list(self.organs)
        for k in self.kidneys.values():
            out += kidney_layers(k)[:2]
        out += list(self.retro)
        for k in self.kidneys.values():
            out += kidney_layers(k)[2:]
        return out

    def coverage(self) -> tuple[float, float]:
        """(z_low, z_high) of both kidneys together."""
        zs = [k.z_extent() for k in self.kidneys.values()]
        return min(z[0] for z in zs), max(z[1] for z in zs)


def kidney_layers(k: Kidney) -> list:
    """Painting order for one kidney: fascia, perirenal fat, cortex, pyramids, sinus, collecting system, vessels."""
    out = [Layer(f"{k.side}_fascia", k.fascia, "skin"),
           Layer(f"{k.side}_perirenal_fat", k.perirenal, "fat"),
           Layer(f"{k.side}_cortex", k.outer, "cortex", label=LABEL_KIDNEY)]
    out += [Layer(f"{k.side}_pyramid", p, "medulla") for p in k.pyramids]
    out.append(Layer(f"{k.side}_sinus_fat", k.sinus, "fat"))
    out += [Layer(f"{k.side}_infundibulum", t, "urine") for t in k.infundibula]
    out += [Layer(f"{k.side}_pelvis", k.pelvis, "urine"), Layer(f"{k.side}_ureter", k.ureter, "urine"),
            Layer(f"{k.side}_renal_artery", k.artery, "aorta"), Layer(f"{k.side}_renal_vein", k.vein, "vein")]
    return out


def _ray_ellipsoid_entry(origin, direction, e: Ellipsoid, R: np.ndarray) -> float | None:
    """Smallest t >= 0 where origin + t * direction enters ellipsoid ``e`` (all in world coordinates)."""
    o = (R.T @ (origin - e.center)) / e.axes
    d = (R.T @ direction) / e.axes
    a, b, c = d @ d, 2 * o @ d, o @ o - 1
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    t = (-b - np.sqrt(disc)) / (2 * a)
    return float(t) if t >= 0 else 0.0


def _draw_kidney(rng, side: str, center, aorta_xy, ivc_xy, ivc_axes, psoas_front, z_bottom) -> Kidney:
    sgn = 1.0 if side == "left" else -1.0
    axes = np.array([rng.uniform(50, 60), rng.uniform(25, 30), rng.uniform(16, 20)])
    am, ap = np.deg2rad(rng.uniform(8, 20)), np.deg2rad(rng.uniform(10, 25))
    u = np.array([-sgn * np.sin(am), np.sin(ap), 1.0])
    phi = np.deg2rad(rng.uniform(15, 35))
    v0 = np.array([-sgn * np.cos(phi), -np.sin(phi), 0.0])
    R = rotation_from_axes(u, v0)
    a, b, c = axes
    center = np.asarray(center, float)
    world = lambda loc: center + R @ np.asarray(loc, float)  # noqa: E731

    sinus = Ellipsoid(world((0, 0.58 * b, 0)), (rng.uniform(0.48, 0.56) * a, 0.42 * b, rng.uniform(0.36, 0.42) * c), R)
    pelvis = Ellipsoid(world((rng.uniform(-4, 2), 0.78 * b, 0)), (rng.uniform(11, 16), rng.uniform(6, 9), rng.uniform(4, 6)), R)

    pyramids, infundibula = [], []
    cortex = rng.uniform(5.5, 9.0)
    n_pyr = int(rng.integers(7, 10))
    ts = np.linspace(-0.78, 0.78, n_pyr) + rng.uniform(-0.05, 0.05, n_pyr)
    for i, t in enumerate(ts):
        psi = (1 if i % 2 else -1) * rng.uniform(0.05, 0.55) * np.pi
        s = np.sqrt(max(1 - t * t, 0.05))
        surf_local = np.array([a * t, -b * s * np.cos(psi), c * s * np.sin(psi)])
        surf = world(surf_local)
        target = sinus.center + R[:, 0] * (np.clip(t, -0.8, 0.8) * sinus.axes[0] * 0.6)
        d = target - surf
        d /= np.linalg.norm(d)
        t_sinus = _ray_ellipsoid_entry(surf, d, sinus, R)
        if t_sinus is None or t_sinus < cortex + 6:
            continue
        t_in = t_sinus + 2.0
        radial = (t_in - cortex) / 2.0
        pc = surf + d * (cortex + radial)
        tang = rng.uniform(6.0, 8.5)
        pyramids.append(Ellipsoid(pc, (radial, tang, tang * rng.uniform(0.75, 1.0)), rotation_from_axes(d, R[:, 0])))
        infundibula.append(Tube(np.array([pelvis.center, surf + d * t_in]), rng.uniform(1.6, 2.4)))

    hilum = world((0, b, 0))
    ant = -np.array([0.0, 1.0, 0.0])
    vein_hilum = hilum + ant * 5 + R[:, 1] * 6
    art_hilum = hilum - ant * 4 + R[:, 1] * 4
    vein_r = rng.uniform(4.5, 6.5) if side == "left" else rng.uniform(4.0, 5.5)
    ivc = np.array([ivc_xy[0], ivc_xy[1], hilum[2]])
    if side == "left":
        pre_aortic = np.array([aorta_xy[0], aorta_xy[1] - aorta_xy[2] - vein_r - 3, hilum[2] + 3])
        vein_pts = [sinus.center + ant * 4, vein_hilum, pre_aortic, ivc]
        art_pts = [sinus.center - ant * 3, art_hilum, np.array([aorta_xy[0], aorta_xy[1], hilum[2] + 10])]
    else:
        vein_pts = [sinus.center + ant * 4, vein_hilum, ivc]
        retro_caval = np.array([ivc_xy[0], ivc_xy[1] + ivc_axes[1] + 5, hilum[2] + 8])
        art_pts = [sinus.center - ant * 3, art_hilum, retro_caval, np.array([aorta_xy[0], aorta_xy[1], hilum[2] + 12])]
    vein = Tube(np.array(vein_pts), vein_r)
    artery = Tube(np.array(art_pts), rng.uniform(2.5, 3.5))

    exit_pt = pelvis.center + R[:, 1] * 14 - R[:, 0] * 10
    ureter = Tube(np.array([pelvis.center, exit_pt, [psoas_front[0], psoas_front[1], exit_pt[2] - 60],
                            [psoas_front[0] * 0.9, psoas_front[1], z_bottom]]), rng.uniform(2.0, 3.0))
    margin = rng.uniform(5, 12)
    perirenal = Ellipsoid(center, axes + margin, R)
    fascia = Ellipsoid(center, axes + margin + 1.5, R)
    return Kidney(side, center, axes, R, sinus, pelvis, pyramids, infundibula, ureter, vein, artery, perirenal, fascia)


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's normal anatomy (kidneys, organs, trunk) in LPS mm."""
    bx, by = rng.uniform(-15, 15), rng.uniform(-15, 15)
    z_ref = rng.uniform(-260, -60)
    A, B = rng.uniform(150, 195), rng.uniform(108, 145)
    t_skin, t_sub, t_mus = 2.0, rng.uniform(8, 32), rng.uniform(8, 14)
    t_sub_post = t_sub * rng.uniform(0.5, 0.8)
    P = np.array([bx, by])
    dy = (t_sub - t_sub_post) / 2
    wall = np.array([A - t_skin - t_sub, B - t_skin - (t_sub + t_sub_post) / 2])
    inner = wall - t_mus
    cavity = ZCylinder(P + (0, dy), P + (0, dy), inner, inner, -BIG, BIG)

    def zc(c, ax, name, tissue, template=False):
        c, ax = np.asarray(c, float), np.asarray(ax, float)
        return Layer(name, ZCylinder(c, c, ax, ax, -BIG, BIG), tissue, in_template=template)

    # Spine, muscles and great vessels, relative to the body centre.
    r_vb = rng.uniform(17, 22)
    vb = P + (0, B * rng.uniform(0.25, 0.33))
    canal = vb + (0, r_vb + 9)
    para_ay = rng.uniform(18, 24)
    para_y = min(by + B - t_skin - t_sub_post - 2 - para_ay, canal[1] + 24)
    r_ao = rng.uniform(9.5, 13)
    aorta = vb + (rng.uniform(12, 20), -r_vb - r_ao - rng.uniform(1, 5))
    ivc_ax = np.array([rng.uniform(11, 15), rng.uniform(7, 10)])
    ivc = vb + (-rng.uniform(18, 26), -r_vb - ivc_ax[1] - rng.uniform(3, 8))

    table_c = P + (0, B + 30)
    trunk = [
        zc(table_c, (A * 1.15, 12), "table", "table", True),
        zc(table_c, (A * 1.13, 9), "table_core", "air", True),
        zc(P, (A, B), "skin", "skin", True),
        zc(P, (A - t_skin, B - t_skin), "subcutaneous_fat", "fat", True),
        zc(P + (0, dy), wall, "abdominal_wall", "muscle", True),
        zc(P + (0, dy), inner, "visceral_fat", "fat", True),
    ]
    for s in (-1, 1):
        colon_xy = P + (s * (inner[0] - rng.uniform(25, 40)), rng.uniform(-10, 15))
        r_col = rng.uniform(16, 24)
        trunk.append(zc(colon_xy, (r_col, r_col), "colon", "bowel", True))
        trunk.append(zc(colon_xy + rng.uniform(-3, 3, 2), (r_col * 0.6, r_col * 0.6), "colon_gas", "air", True))

    # Kidneys: left higher; centres lateral to the psoas.
    zL = z_ref
    zR = zL - rng.uniform(10, 25)
    z_low, z_top = min(zL, zR) - 250, max(zL, zR) + 250
    kidneys = {}
    for side, zk in (("left", zL), ("right", zR)):
        sgn = 1.0 if side == "left" else -1.0
        kc = (bx + sgn * rng.uniform(70, 84), vb[1] + rng.uniform(-8, 6), zk)
        ps_front = (bx + sgn * (r_vb + 14), vb[1] - 12)
        kidneys[side] = _draw_kidney(rng, side, kc, (aorta[0], aorta[1], r_ao), ivc, ivc_ax, ps_front, z_low)

    retro = [zc(P + (-rng.uniform(30, 40), para_y - by), (rng.uniform(24, 32), para_ay), "paraspinal", "muscle"),
             zc(P + (rng.uniform(30, 40), para_y - by), (rng.uniform(24, 32), para_ay), "paraspinal", "muscle")]
    ps_r_top, ps_r_bot = rng.uniform(7, 11), rng.uniform(18, 24)
    for s in (-1, 1):
        top, bot = vb + (s * (r_vb + 5), 0), vb + (s * (r_vb + ps_r_bot * 0.9), -4)
        retro.append(Layer("psoas", ZCylinder(top, bot, (ps_r_top, ps_r_top), (ps_r_bot, ps_r_bot * 0.85),
                                              max(zL, zR) + 40, min(zL, zR) - 200), "muscle"))
        ql = vb + (s * rng.uniform(58, 70), rng.uniform(28, 40))
        retro.append(Layer("quadratus_lumborum", ZCylinder(ql, ql + (s * 5, 0), (12, 8), (20, 11),
                                                           max(zL, zR) + 30, min(zL, zR) - 200), "muscle"))
    retro += [zc(canal, (14, 12), "neural_arch", "cortical_bone"),
              zc(canal + (0, 14), (4, 14), "spinous_process", "cortical_bone"),
              zc(canal, (8, 7), "spinal_canal", "csf"),
              zc(vb, (r_vb, r_vb * 0.85), "disc", "disc")]
    spine_z = []
    z = z_low + rng.uniform(0, 35)
    while z < z_top:
        h = rng.uniform(24, 29)
        spine_z.append((z, z + h))
        retro.append(Layer("vertebra_cortex", ZCylinder(vb, vb, (r_vb, r_vb * 0.85), (r_vb, r_vb * 0.85), z, z + h), "cortical_bone"))
        retro.append(Layer("vertebra", ZCylinder(vb, vb, (r_vb - 2.2, r_vb * 0.85 - 2.2), (r_vb - 2.2, r_vb * 0.85 - 2.2),
                                                 z + 1.5, z + h - 1.5), "cancellous_bone"))
        z += h + rng.uniform(7, 10)
    retro += [zc(aorta, (r_ao, r_ao), "aorta", "aorta"), zc(ivc, ivc_ax, "ivc", "vein")]

    # Intraperitoneal organs, inside the abdominal wall.
    organs = []
    y_max = aorta[1] - r_ao - 10
    for _ in range(int(rng.integers(7, 12))):
        ax = rng.uniform(14, 30, 3)
        y_lo, y_hi = by + dy - 0.85 * inner[1] + ax[1], y_max - ax[1]
        c = np.array([bx + rng.uniform(-0.6, 0.6) * inner[0], rng.uniform(y_lo, max(y_lo, y_hi)),
                      rng.uniform(min(zL, zR) - 120, max(zL, zR) + 30)])
        organs.append(Layer("bowel", Ellipsoid(c, ax), "bowel", clip_to=cavity))
        if rng.random() < 0.5:
            organs.append(Layer("bowel_gas", Ellipsoid(c + rng.uniform(-4, 4, 3), ax * rng.uniform(0.3, 0.6)), "air", clip_to=cavity))
    kr, kl = kidneys["right"], kidneys["left"]
    liver_ax = np.array([rng.uniform(85, 105), rng.uniform(75, 95), rng.uniform(75, 95)])
    liver_c = np.array([bx - inner[0] + liver_ax[0] - rng.uniform(0, 10), by + rng.uniform(-25, 0),
                        kr.center[2] + kr.axes[0] * 0.3 + liver_ax[2] * rng.uniform(0.75, 0.95)])
    organs.append(Layer("liver", Ellipsoid(liver_c, liver_ax, rotation_from_axes((1, 0, 0.25), (0, 1, 0))), "liver", clip_to=cavity))
    spl_ax = np.array([rng.uniform(22, 32), rng.uniform(45, 60), rng.uniform(45, 60)])
    spl_c = np.array([bx + inner[0] - spl_ax[0] - rng.uniform(3, 12), by + inner[1] * rng.uniform(0.2, 0.4),
                      kl.center[2] + kl.axes[0] * 0.6 + spl_ax[2] * 0.5])
    organs.append(Layer("spleen", Ellipsoid(spl_c, spl_ax, rotation_from_axes((np.cos(0.5), np.sin(0.5), 0), (0, 0, 1))),
                        "spleen", clip_to=cavity))
    return Anatomy(np.array([bx, by, z_ref]), np.array([A, B]), kidneys, trunk, organs, retro, tuple(spine_z))
