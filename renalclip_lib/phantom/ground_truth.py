"""Labels derived from the generated geometry: R.E.N.A.L., pole, stage, grade and survival.

Nothing here is drawn independently of the image: the mass is sampled on a fine physical grid
(about 32 points across its largest diameter, plus 3000 exact surface points) and every nephrometry component is measured on
those points against the kidney's analytic shapes, following the paper's Supplementary Data
Table 1 (thresholds in ``tasks``):

- R: the largest diameter (Feret diameter of the sampled mass);
- E: the fraction of the mass outside the kidney's outline (the convex parenchymal contour);
- N: the shortest distance from the mass to the renal sinus or collecting system;
- A: the fraction of the mass anterior to the coronal plane through the hilar vessels;
- L: the fraction of the mass between the polar lines (the levels where sinus fat stops
  appearing) and whether it crosses the axial midline between them.

Stage (AJCC 8th) and WHO/ISUP grade follow histology and the visible extension (size, vein
thrombus, perinephric or sinus invasion, nodes). Survival for malignant masses comes from a
Weibull proportional-hazards model whose risk grows with aggressiveness, size, stage and grade,
with administrative and random censoring; benign masses have no survival.

Usage::

    m = measure_lesion(anatomy, lesion)
    renal = renal_labels(m)                      # {"renal_R": 1, ...}
    out = draw_outcomes(rng, lesion, m, endpoints=("rfs",), followup_months=(24, 120))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tasks import (renal_anterior_class, renal_exophytic_class, renal_location_class, renal_nearness_class,
                     renal_radius_class)
from .anatomy import Kidney
from .lesions import Lesion

# Below this fraction outside the outline a mass is "entirely endophytic" (sub-millimetre bulge).
ENDOPHYTIC_TOLERANCE = 0.01
POINTS_ACROSS = 32


@dataclass
class LesionMeasurement:
    max_diameter_mm: float
    dims_mm: tuple              # largest diameter, then the two principal extents
    volume_ml: float
    centroid: np.ndarray
    exophytic_fraction: float
    nearness_mm: float
    sinus_fraction: float
    anterior_fraction: float
    between_fraction: float
    crosses_midline: bool
    pole: str                   # upper pole, mid pole, lower pole (by thirds of the kidney height)


def lesion_points(shape, spacing_mm: float | None = None) -> tuple[np.ndarray, float]:
    """Points of a regular grid inside ``shape`` (n, 3) and the grid spacing used."""
    lo, hi = shape.bbox()
    h = spacing_mm or max(0.35, float(np.max(hi - lo)) / POINTS_ACROSS)
    axes = [np.arange(lo[a] + h / 2, hi[a], h) for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    x, y, z = x.ravel(), y.ravel(), z.ravel()
    keep = shape.inside(x, y, z)
    return np.column_stack([x[keep], y[keep], z[keep]]), h


def _feret(points: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(points).max())


def measure_lesion(kidney: Kidney, lesion: Lesion) -> LesionMeasurement:
    """Measure a mass against its kidney on a fine grid (see module docstring)."""
    from scipy.spatial import cKDTree

    shape = lesion.shape
    S = shape.surface_points(3000)
    P, h = lesion_points(shape)
    P = np.vstack([P, S])
    x, y, z = P.T
    feret = _feret(shape.surface_points(1200))
    c = P.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((S - c).T))
    proj = (S - c) @ evecs[:, ::-1]
    ext = np.sort(proj.max(axis=0) - proj.min(axis=0))[::-1]
    dims = (feret, float(min(ext[1], feret)), float(min(ext[2], feret)))

    outer = kidney.outer
    exo = float(np.mean(~outer.inside(x, y, z)))
    if exo < ENDOPHYTIC_TOLERANCE:
        exo = 0.0
    in_sinus = kidney.sinus.inside(x, y, z) & outer.inside(x, y, z)
    in_cs = kidney.pelvis.inside(x, y, z)
    for t in kidney.infundibula:
        in_cs |= t.inside(x, y, z)
    sinus_fraction = float(np.mean(in_sinus | in_cs))
    if sinus_fraction > 0:
        near = 0.0
    else:
        tree = cKDTree(S)
        d_sinus = tree.query(kidney.sinus.surface_points(4000))[0].min()
        d_pelvis = tree.query(kidney.pelvis.surface_points(1500))[0].min()
        d_inf = np.inf
        for t in kidney.infundibula:
            seg = np.linspace(t.points[0], t.points[-1], 40)
            d_inf = min(d_inf, tree.query(seg)[0].min() - t.radius)
        near = float(max(0.0, min(d_sinus, d_pelvis, d_inf)))

    ant = float(np.mean(y < kidney.hilar_plane_y))
    z_lo, z_hi = kidney.polar_lines()
    between = float(np.mean((z > z_lo) & (z < z_hi)))
    z_mid = 0.5 * (z_lo + z_hi)
    crosses = bool(z.min() < z_mid < z.max())
    k_lo, k_hi = kidney.z_extent()
    rel = (c[2] - k_lo) / (k_hi - k_lo)
    pole = "upper pole" if rel > 2 / 3 else "lower pole" if rel < 1 / 3 else "mid pole"
    n_inside = len(P) - len(S)
    return LesionMeasurement(feret, dims, n_inside * h ** 3 / 1000.0, c, exo, near, sinus_fraction, ant, between, crosses, pole)


def renal_labels(m: LesionMeasurement) -> dict:
    """The five R.E.N.A.L. components (0-2) from a measurement."""
    return {
        "renal_R": renal_radius_class(m.max_diameter_mm / 10.0),
        "renal_E": renal_exophytic_class(m.exophytic_fraction),
        "renal_N": renal_nearness_class(m.nearness_mm),
        "renal_A": renal_anterior_class(m.anterior_fraction),
        "renal_L": renal_location_class(m.between_fraction, m.crosses_midline),
    }


def stage_and_grade(rng: np.random.Generator, lesion: Lesion, m: LesionMeasurement) -> dict:
    """AJCC 8th stage group (1-4) and WHO/ISUP grade (1-4), None where not applicable (benign,
    chromophobe grade); also the T/N/M parts and whether the sinus fat is invaded."""
    h, f = lesion.histology, lesion.features
    if h.group == "benign":
        return {"stage": None, "grade": None, "T": None, "N": None, "M": None, "sinus_invasion": False}
    aggressive = h.group == "malignant_aggressive"
    d = m.max_diameter_mm / 10.0
    sinus_inv = aggressive and m.sinus_fraction > 0.02
    T = "T1a" if d <= 4 else "T1b" if d <= 7 else "T2a" if d <= 10 else "T2b"
    if aggressive and (f.get("thrombus") == "renal_vein" or f.get("stranding") or sinus_inv):
        T = "T3a"
    if aggressive and f.get("thrombus") == "ivc":
        T = "T3b"
    N = "N1" if f.get("nodes") else "N0"
    M = "M1" if aggressive and rng.random() < 0.06 + 0.1 * (d > 7) else "M0"
    stage = 4 if M == "M1" else 3 if (T.startswith("T3") or N == "N1") else 2 if T.startswith("T2") else 1
    grade = None
    if h.graded:
        if aggressive:
            invasive = f.get("necrosis") or T.startswith("T3") or N == "N1"
            grade = int(rng.choice([2, 3, 4], p=[0.25, 0.55, 0.2])) if invasive else int(rng.choice([3, 4], p=[0.75, 0.25]))
        else:
            grade = int(rng.choice([1, 2], p=[0.35, 0.65]))
    return {"stage": stage, "grade": grade, "T": T, "N": N, "M": M, "sinus_invasion": bool(sinus_inv)}


# Weibull baseline: 5-year recurrence-free survival ~93% for a 4 cm indolent, stage I, low-grade tumour.
RFS_SHAPE = 0.9
RFS_SCALE_MONTHS = 60.0 / (-np.log(0.93)) ** (1 / RFS_SHAPE)
OTHER_DEATH_MEAN_MONTHS = 300.0
LOSS_MEAN_MONTHS = 240.0


def risk_score(lesion: Lesion, m: LesionMeasurement, sg: dict) -> float:
    """Log-hazard of recurrence relative to the baseline (the model's truth, for checks)."""
    aggressive = lesion.histology.group == "malignant_aggressive"
    lp = 1.9 * aggressive + 0.6 * np.log(max(m.max_diameter_mm, 10.0) / 40.0)
    lp += {1: 0.0, 2: 0.3, 3: 0.9, 4: 1.8}[sg["stage"]]
    lp += 0.4 * ((sg["grade"] or 0) >= 3) + 0.3 * bool(lesion.features.get("necrosis"))
    return float(lp)


def draw_outcomes(rng: np.random.Generator, lesion: Lesion, m: LesionMeasurement, sg: dict,
                  endpoints=("rfs", "dss", "os"), followup_months=(12.0, 120.0)) -> dict:
    """RFS/DSS/OS time (months) and event for a malignant mass; all None for benign or unlisted endpoints.

    RFS ends at recurrence (censored by death from other causes or end of follow-up); DSS at death
    from kidney cancer, which only follows a recurrence; OS at death from any cause. Hence DSS
    events are OS events and RFS never ends after OS.
    """
    out = {f"{e}_{k}": None for e in ("rfs", "dss", "os") for k in ("time", "event")}
    u = rng.random(5)  # always drawn, so later draws do not depend on histology
    if lesion.histology.group == "benign" or not endpoints:
        return out
    aggressive = lesion.histology.group == "malignant_aggressive"
    lp = risk_score(lesion, m, sg) + 0.25 * float(np.sqrt(-2 * np.log(u[0])) * np.cos(2 * np.pi * u[1]))
    t_rec = RFS_SCALE_MONTHS * (-np.log(u[2]) / np.exp(lp)) ** (1 / RFS_SHAPE)
    t_cd = t_rec + rng.exponential(20.0 if aggressive else 45.0)
    t_oc = rng.exponential(OTHER_DEATH_MEAN_MONTHS)
    c = min(rng.uniform(*followup_months), rng.exponential(LOSS_MEAN_MONTHS))
    c = max(c, 1.0)
    rfs_t = min(t_rec, t_oc, c)
    os_t = min(t_cd, t_oc, c)
    values = {
        "rfs": (rfs_t, int(t_rec <= min(t_oc, c))),
        "dss": (os_t, int(t_cd <= min(t_oc, c))),
        "os": (os_t, int(min(t_cd, t_oc) <= c)),
    }
    for e in endpoints:
        t, ev = values[e]
        out[f"{e}_time"] = max(round(float(t), 1), 0.1)
        out[f"{e}_event"] = ev
    return out
