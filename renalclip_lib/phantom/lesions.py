"""Renal masses: histology, size, position in the kidney and CT appearance per phase.

``HISTOLOGIES`` lists the subtypes of the paper's three categories (benign indolent, malignant
indolent, malignant aggressive) with their segmentation label (tumour or cyst), size distribution
and attenuation per phase from the CT appearance reference. ``draw_lesion`` places one mass on a
kidney (pole to mid, anterior/posterior lip, exophytic to fully endophytic, near or far from the
sinus) and gives it the signs of its histology: macroscopic fat (angiomyolipoma), a central scar
(oncocytoma, some chromophobe), septa, wall thickening and calcification (complex cyst), washout,
heterogeneity, a hypervascular rim and central necrosis (clear cell), and for aggressive tumours an
infiltrative margin, perinephric fat stranding, renal vein / IVC tumour thrombus and enlarged nodes.
Everything visible is a ``Layer`` painted after the normal anatomy.

Usage::

    les = draw_lesion(rng, anatomy, HISTOLOGY_BY_KEY["clear_cell_rcc_aggressive"], arterial_delay=0.0)
    les.shape.inside(x, y, z)   # the mass, for ground truth
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import LABEL_CYST, LABEL_TUMOR, PHASES
from .anatomy import Anatomy, Kidney, Layer
from .shapes import Ellipsoid, Tube, ZCylinder, cosine_texture, random_unit_vectors, rotation_from_axes
from .tissues import apply_arterial_delay


@dataclass(frozen=True)
class Histology:
    key: str
    name: str                  # as a pathology report names it
    group: str                 # one of tasks.HISTOLOGY_GROUPS
    label: int                 # segmentation label of the mass
    size_cm: tuple             # (median, log-sd) of the largest diameter
    hu: dict                   # phase -> (low, high) HU of the solid (or fluid) part
    texture_hu: dict           # phase -> amplitude of heterogeneity
    graded: bool = False       # WHO/ISUP grade applies (clear cell, papillary)


def _hu(n, a, v, d):
    return {"N": n, "A": a, "V": v, "D": d}


HISTOLOGIES: tuple[Histology, ...] = (
    Histology("angiomyolipoma", "angiomyolipoma", "benign", LABEL_TUMOR, (3.2, 0.45),
              _hu((30, 45), (100, 150), (80, 120), (60, 90)), _hu(4, 12, 8, 6)),
    Histology("fat_poor_angiomyolipoma", "fat-poor angiomyolipoma", "benign", LABEL_TUMOR, (2.5, 0.35),
              _hu((38, 50), (100, 150), (80, 120), (60, 90)), _hu(2, 5, 4, 3)),
    Histology("simple_cyst", "simple renal cyst", "benign", LABEL_CYST, (2.8, 0.4),
              _hu((0, 20), (0, 20), (0, 20), (0, 20)), _hu(0, 0, 0, 0)),
    Histology("complex_cyst", "complex renal cyst", "benign", LABEL_CYST, (3.2, 0.4),
              _hu((0, 30), (0, 30), (0, 30), (0, 30)), _hu(0, 0, 0, 0)),
    Histology("oncocytoma", "oncocytoma", "benign", LABEL_TUMOR, (3.5, 0.4),
              _hu((30, 45), (110, 160), (100, 140), (80, 110)), _hu(2, 8, 6, 4)),
    Histology("clear_cell_rcc_indolent", "clear cell renal cell carcinoma", "malignant_indolent", LABEL_TUMOR, (3.1, 0.4),
              _hu((30, 40), (120, 180), (90, 130), (70, 100)), _hu(3, 22, 12, 8), graded=True),
    Histology("papillary_rcc_indolent", "papillary renal cell carcinoma", "malignant_indolent", LABEL_TUMOR, (2.8, 0.4),
              _hu((30, 45), (40, 70), (60, 90), (60, 90)), _hu(2, 4, 4, 4), graded=True),
    Histology("chromophobe_rcc", "chromophobe renal cell carcinoma", "malignant_indolent", LABEL_TUMOR, (4.0, 0.45),
              _hu((30, 45), (70, 110), (80, 120), (70, 100)), _hu(2, 5, 5, 4)),
    Histology("clear_cell_rcc_aggressive", "clear cell renal cell carcinoma", "malignant_aggressive", LABEL_TUMOR, (6.3, 0.4),
              _hu((30, 40), (120, 180), (90, 130), (70, 100)), _hu(4, 30, 16, 10), graded=True),
    Histology("papillary_rcc_aggressive", "papillary renal cell carcinoma", "malignant_aggressive", LABEL_TUMOR, (5.5, 0.4),
              _hu((30, 45), (45, 75), (60, 95), (60, 90)), _hu(3, 8, 8, 6), graded=True),
)
HISTOLOGY_BY_KEY = {h.key: h for h in HISTOLOGIES}
# Subtype weights within each category (the paper's Extended Data Table 1, rounded).
SUBTYPE_WEIGHTS = {
    "benign": {"angiomyolipoma": 0.45, "fat_poor_angiomyolipoma": 0.1, "complex_cyst": 0.25, "simple_cyst": 0.08, "oncocytoma": 0.12},
    "malignant_indolent": {"clear_cell_rcc_indolent": 0.76, "papillary_rcc_indolent": 0.1, "chromophobe_rcc": 0.14},
    "malignant_aggressive": {"clear_cell_rcc_aggressive": 0.85, "papillary_rcc_aggressive": 0.15},
}
SIZE_LIMITS_CM = (1.5, 12.0)
NECROSIS_HU = (10, 30)
SCAR_HU = _hu((20, 30), (30, 50), (50, 70), (70, 90))
# Semi-axes of an angiomyolipoma's fat blobs as a fraction of the mass's: together 25-65 % of its volume
# (median about 40 %), a classic fat-rich AML.
AML_FAT_BLOB_SCALE = (0.45, 0.75)


@dataclass
class Lesion:
    """One mass: its shape (for ground truth), what it shows (features) and how to paint it."""

    histology: Histology
    side: str
    shape: Ellipsoid
    morphology: str                      # round, lobulated or irregular
    features: dict
    layers: list = field(default_factory=list)
    extra_layers: list = field(default_factory=list)   # outside the mass: thrombus, stranding, nodes
    thrombus: object = None              # shape of a renal vein / IVC tumour thrombus, if any

    @property
    def label(self) -> int:
        return self.histology.label


def choose_histology(rng: np.random.Generator, group_weights: dict) -> Histology:
    groups = list(group_weights)
    g = groups[rng.choice(len(groups), p=np.array([group_weights[k] for k in groups]) / sum(group_weights.values()))]
    keys = list(SUBTYPE_WEIGHTS[g])
    w = np.array([SUBTYPE_WEIGHTS[g][k] for k in keys])
    return HISTOLOGY_BY_KEY[keys[rng.choice(len(keys), p=w / w.sum())]]


def _bumps(rng, morphology: str) -> np.ndarray:
    n, amp, freq = {"round": (3, (0.005, 0.02), (0.8, 1.5)), "lobulated": (4, (0.03, 0.055), (1.2, 2.2)),
                    "irregular": (8, (0.015, 0.035), (2.5, 5.0))}[morphology]
    dirs = random_unit_vectors(rng, n)
    return np.column_stack([rng.uniform(*amp, n), rng.uniform(*freq, n), dirs, rng.uniform(0, 2 * np.pi, n)])


def _phase_values(rng, table: dict, delay: float) -> dict:
    vals = {p: float(rng.uniform(*table[p])) for p in PHASES}
    return apply_arterial_delay({"x": vals}, delay)["x"]


def _place(rng, kidney: Kidney, radius: float, anatomy: Anatomy, polar_bias: float = 0.45):
    """Centre of a mass of ``radius`` mm on ``kidney``: pole/mid, lip, depth (exophytic..endophytic)."""
    a, b, c = kidney.axes
    if rng.random() < polar_bias:
        t = rng.choice([-1, 1]) * rng.uniform(0.55, 0.95)
    else:
        t = rng.uniform(-0.55, 0.55)
    psi = rng.uniform(-0.8, 0.8) * np.pi if rng.random() < 0.85 else rng.uniform(0.8, 1.2) * np.pi
    s = np.sqrt(max(1 - t * t, 0.02))
    loc = np.array([a * t, -b * s * np.cos(psi), c * s * np.sin(psi)])
    normal_local = loc / kidney.axes ** 2
    normal = kidney.rotation @ (normal_local / np.linalg.norm(normal_local))
    surf = kidney.local_to_world(loc)
    depth_max = float(np.clip(min(b, c) * 1.2 / radius, 0.2, 1.4))
    depth = rng.uniform(-0.6, depth_max)
    center = surf - normal * depth * radius
    # Keep a large mass inside the abdominal cavity: slide it toward the kidney if needed.
    A, B = anatomy.body_axes - 45
    for _ in range(20):
        dx, dy = center[0] - anatomy.body_center[0], center[1] - anatomy.body_center[1]
        if (abs(dx) + radius) < A and (abs(dy) + radius) < B + 10:
            break
        center = center + 0.1 * (kidney.center - center)
    return center


def draw_lesion(rng: np.random.Generator, anatomy: Anatomy, hist: Histology, arterial_delay: float = 0.0,
                side: str | None = None) -> Lesion:
    """Draw the primary mass of ``hist`` on one kidney (random side unless given)."""
    side = side or ("left" if rng.random() < 0.5 else "right")
    kidney = anatomy.kidneys[side]
    diam = float(np.clip(np.exp(np.log(hist.size_cm[0]) + hist.size_cm[1] * rng.standard_normal()), *SIZE_LIMITS_CM))
    aggressive = hist.group == "malignant_aggressive"
    cystic = hist.label == LABEL_CYST
    if aggressive:
        morphology = rng.choice(["irregular", "lobulated", "round"], p=[0.55, 0.3, 0.15])
    elif cystic:
        morphology = "round" if hist.key == "simple_cyst" or rng.random() < 0.7 else "lobulated"
    else:
        morphology = rng.choice(["round", "lobulated"], p=[0.7, 0.3])
    r_nom = diam * 10 / 2 / (1 + 0.5 * {"round": 0.02, "lobulated": 0.1, "irregular": 0.12}[morphology])
    axes = r_nom * np.array([1.0, rng.uniform(0.78, 1.0), rng.uniform(0.75, 1.0)])
    rot = rotation_from_axes(random_unit_vectors(rng, 1)[0], random_unit_vectors(rng, 1)[0])
    center = _place(rng, kidney, r_nom, anatomy)
    shape = Ellipsoid(center, axes, rot, _bumps(rng, str(morphology)))

    feat = {"diameter_nominal_cm": diam, "necrosis": False, "fat": False, "scar": False, "septa": 0,
            "calcification": False, "wall_thickening": False, "hyperdense": False, "rim": False,
            "stranding": False, "thrombus": None, "nodes": 0, "margin": "ill-defined" if morphology == "irregular" else "well-defined"}
    hu = _phase_values(rng, hist.hu, arterial_delay)
    if hist.key in ("clear_cell_rcc_indolent", "clear_cell_rcc_aggressive", "oncocytoma", "fat_poor_angiomyolipoma"):
        hu["V"] = min(hu["V"], hu["A"] - 12)
        hu["D"] = min(hu["D"], hu["V"] - 8)
    elif hist.key.startswith("papillary"):
        hu["V"] = max(hu["V"], hu["A"] + 10)
    if cystic:
        base = float(rng.uniform(*hist.hu["N"]))
        if hist.key == "complex_cyst" and rng.random() < 0.3:
            base = float(rng.uniform(50, 90))
            feat["hyperdense"] = True
        hu = {p: base + (0.0 if p == "N" else float(rng.uniform(-4, 4))) for p in PHASES}
    feat["hu"] = dict(hu)
    tex = cosine_texture(rng, 5, (8, 22))
    tex_hu = dict(hist.texture_hu)
    les = Lesion(hist, side, shape, str(morphology), feat)

    solid_interior = Ellipsoid(center, axes * 0.86, rot, shape.bumps)
    if hist.key.startswith("clear_cell"):
        rim_hu = {p: hu[p] + (25.0 if p == "A" else 8.0 if p == "V" else 0.0) for p in PHASES}
        les.layers.append(Layer("lesion_rim", shape, hu=rim_hu, label=hist.label))
        les.layers.append(Layer("lesion", solid_interior, hu=hu, texture=tex, texture_hu=tex_hu))
        feat["rim"] = True
    elif hist.key == "complex_cyst":
        wall = float(rng.uniform(1.0, 2.5))
        feat["wall_thickening"] = rng.random() < 0.3
        if feat["wall_thickening"]:
            wall = float(rng.uniform(3.0, 5.0))
        wall_hu = _phase_values(rng, _hu((30, 40), (45, 60), (45, 60), (40, 55)), arterial_delay)
        les.layers.append(Layer("cyst_wall", shape, hu=wall_hu, label=hist.label))
        fluid = Ellipsoid(center, np.maximum(axes - wall, 1.0), rot, shape.bumps)
        les.layers.append(Layer("cyst_fluid", fluid, hu=hu))
        feat["septa"] = int(rng.integers(1, 4))
        for _ in range(feat["septa"]):
            n = random_unit_vectors(rng, 1)[0]
            off = center + n * rng.uniform(-0.3, 0.3) * axes.min()
            septum = Ellipsoid(off, (axes.max() * 1.2, axes.max() * 1.2, rng.uniform(0.6, 1.2)), rotation_from_axes(np.cross(n, [0.3, 0.5, 0.8]), np.cross(n, np.cross(n, [0.3, 0.5, 0.8]))))
            les.layers.append(Layer("septum", septum, hu=wall_hu, clip_to=fluid))
        if rng.random() < 0.3:
            feat["calcification"] = True
            cal_hu = float(rng.uniform(350, 800))
            for _ in range(int(rng.integers(1, 4))):
                d = random_unit_vectors(rng, 1)[0]
                les.layers.append(Layer("calcification", Ellipsoid(center + rot @ (d * axes * 0.97), (1.6, 1.6, 1.6)),
                                        hu={p: cal_hu for p in PHASES}))
    else:
        les.layers.append(Layer("lesion", shape, hu=hu, label=hist.label,
                                texture=tex if hist.label == LABEL_TUMOR else None, texture_hu=tex_hu))

    if hist.key == "angiomyolipoma":
        # Classic (fat-rich) AML: macroscopic fat is a large part of the mass (AML_FAT_BLOB_SCALE),
        # so it survives 5 mm slices and the ROI's resampling; fat-poor AML is its own histology.
        feat["fat"] = True
        fat_hu = float(rng.uniform(-115, -85))
        feat["fat_hu"] = fat_hu
        for _ in range(int(rng.integers(2, 5))):
            off = rot @ (rng.uniform(-0.35, 0.35, 3) * axes)
            blob = Ellipsoid(center + off, axes * rng.uniform(*AML_FAT_BLOB_SCALE, 3), rotation_from_axes(*random_unit_vectors(rng, 2)),
                             _bumps(rng, "round"))
            les.layers.append(Layer("aml_fat", blob, hu={p: fat_hu for p in PHASES}, clip_to=shape))
    if hist.key == "oncocytoma" or (hist.key == "chromophobe_rcc" and rng.random() < 0.3):
        feat["scar"] = True
        scar = _phase_values(rng, SCAR_HU, arterial_delay)
        les.layers.append(Layer("scar", Ellipsoid(center, axes * 0.12), hu=scar))
        for _ in range(int(rng.integers(3, 6))):
            d = random_unit_vectors(rng, 1)[0]
            les.layers.append(Layer("scar", Tube(np.array([center, center + d * axes.min() * 0.5]), rng.uniform(0.8, 1.5)),
                                    hu=scar, clip_to=shape))
    if aggressive:
        p_nec = 0.55 + 0.35 * (diam > 5)
        if hist.key.startswith("papillary"):
            p_nec *= 0.5
        if rng.random() < p_nec:
            feat["necrosis"] = True
            nec = Ellipsoid(center + rot @ (rng.uniform(-0.1, 0.1, 3) * axes), axes * rng.uniform(0.35, 0.62, 3), rot,
                            _bumps(rng, "irregular"))
            v = float(rng.uniform(*NECROSIS_HU))
            les.layers.append(Layer("necrosis", nec, hu={p: v + (0.0 if p == "N" else float(rng.uniform(0, 4))) for p in PHASES},
                                    clip_to=shape))
            feat["necrosis_fraction"] = float(np.prod(nec.axes / axes))
        _aggressive_extension(rng, les, anatomy, kidney, hu, diam, arterial_delay)
    return les


def _aggressive_extension(rng, les: Lesion, anatomy: Anatomy, kidney: Kidney, hu: dict, diam: float, delay: float):
    """Perinephric stranding, renal vein / IVC thrombus and enlarged nodes of an aggressive tumour."""
    shape = les.shape
    outer = kidney.outer
    if rng.random() < 0.5:
        pts = []
        for d in random_unit_vectors(rng, 60):
            p = shape.center + shape.rotation @ (d * shape.axes)
            if not outer.inside(*p.reshape(3, 1))[0]:
                pts.append((p, d))
        if pts:
            les.features["stranding"] = True
            for p, d in pts[: int(rng.integers(6, 12))]:
                direction = shape.rotation @ (d / shape.axes)
                direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.35, 3)
                direction /= np.linalg.norm(direction)
                end = p + direction * rng.uniform(8, 22)
                les.extra_layers.append(Layer("stranding", Tube(np.array([p, end]), rng.uniform(0.6, 1.2)), "stranding"))
    p_thr = 0.12 + 0.25 * (diam > 7)
    if rng.random() < p_thr:
        vein = kidney.vein
        pts = vein.points
        n_keep = int(rng.integers(2, len(pts) + 1))
        thr_pts = pts[:n_keep].copy()
        if n_keep < len(pts):
            thr_pts = np.vstack([thr_pts[:-1], thr_pts[-2] + (thr_pts[-1] - thr_pts[-2]) * rng.uniform(0.4, 1.0)])
        to_ivc = n_keep == len(pts) and rng.random() < 0.4
        les.features["thrombus"] = "ivc" if to_ivc else "renal_vein"
        thr_hu = {p: hu[p] * 0.8 + 10 for p in PHASES}
        les.extra_layers.append(Layer("expanded_vein", Tube(thr_pts, vein.radius * 1.35), "vein"))
        thr = Tube(thr_pts, vein.radius * 1.05)
        shapes = [thr]
        les.extra_layers.append(Layer("thrombus", thr, hu=thr_hu, label=LABEL_TUMOR))
        if to_ivc:
            ivc_layer = next(layer for layer in anatomy.retro if layer.name == "ivc")
            c = ivc_layer.shape.center0
            z0 = pts[-1][2]
            cyl = ZCylinder(c, c, ivc_layer.shape.axes0 * 0.65, ivc_layer.shape.axes0 * 0.65, z0 - 5, z0 + rng.uniform(20, 60))
            les.extra_layers.append(Layer("ivc_thrombus", cyl, hu=thr_hu, label=LABEL_TUMOR))
            shapes.append(cyl)
        les.thrombus = shapes
    if rng.random() < 0.15 + 0.15 * (diam > 7):
        aorta = next(layer for layer in anatomy.retro if layer.name == "aorta").shape
        n = int(rng.integers(1, 4))
        les.features["nodes"] = n
        for _ in range(n):
            c = np.array([aorta.center0[0] + rng.uniform(-35, 25), aorta.center0[1] + rng.uniform(-25, 5),
                          kidney.hilum[2] + rng.uniform(-40, 30)])
            les.extra_layers.append(Layer("lymph_node", Ellipsoid(c, rng.uniform(6, 12, 3)), "lymph_node"))


def draw_small_cyst(rng: np.random.Generator, anatomy: Anatomy, side: str, max_diameter_cm: float) -> Lesion:
    """A small simple cortical cyst (a second finding: the other kidney, or a second lesion)."""
    kidney = anatomy.kidneys[side]
    diam = float(rng.uniform(0.8, max(0.9, min(2.0, max_diameter_cm))))
    r = diam * 5
    a, b, c = kidney.axes
    t = rng.uniform(-0.8, 0.8)
    psi = rng.uniform(-0.7, 0.7) * np.pi
    s = np.sqrt(1 - t * t)
    loc = np.array([a * t, -b * s * np.cos(psi), c * s * np.sin(psi)])
    n = kidney.rotation @ (loc / kidney.axes ** 2)
    n /= np.linalg.norm(n)
    center = kidney.local_to_world(loc) - n * r * rng.uniform(0.0, 0.8)
    shape = Ellipsoid(center, (r, r * rng.uniform(0.85, 1), r * rng.uniform(0.85, 1)), None, _bumps(rng, "round"))
    v = float(rng.uniform(0, 15))
    hist = HISTOLOGY_BY_KEY["simple_cyst"]
    hu = {p: v + (0.0 if p == "N" else float(rng.uniform(-3, 3))) for p in PHASES}
    les = Lesion(hist, side, shape, "round", {"diameter_nominal_cm": diam, "hu": hu, "margin": "well-defined"})
    les.layers.append(Layer("small_cyst", shape, hu=hu, label=LABEL_CYST))
    return les
