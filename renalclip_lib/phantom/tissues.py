"""Attenuation of every tissue per contrast phase (HU ranges of the CT appearance reference).

``TISSUE_HU`` holds, for each normal tissue, the (low, high) HU range in the non-contrast (N),
corticomedullary/arterial (A), nephrographic/venous (V) and excretory/delayed (D) phase, taken from
``ct-appearance.md``. ``draw_tissue_hu`` draws one value per tissue and phase for a patient, keeps
the physiological couplings (venous medulla ~ venous cortex, a simple cyst's phases within 10 HU),
and applies a cohort's contrast-timing shift (a late arterial phase moves toward venous values).

Usage::

    hu = draw_tissue_hu(rng, arterial_delay=0.0)
    hu["cortex"]["A"]    # e.g. 183.2
"""
from __future__ import annotations

import numpy as np

from ..constants import PHASES

_SAME = object()


def _table(n, a=_SAME, v=_SAME, d=_SAME):
    a = n if a is _SAME else a
    v = a if v is _SAME else v
    d = v if d is _SAME else d
    return {"N": n, "A": a, "V": v, "D": d}


# (low, high) HU per phase, from the reference table.
TISSUE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "air": _table((-1000, -1000)),
    "fat": _table((-120, -80)),
    "skin": _table((20, 50), (30, 60), (35, 65), (35, 60)),
    "muscle": _table((40, 60), (50, 70), (55, 75), (55, 70)),
    "cortical_bone": _table((700, 1200)),
    "cancellous_bone": _table((150, 300)),
    "disc": _table((70, 100)),
    "csf": _table((0, 15)),
    "liver": _table((50, 65), (65, 85), (100, 120), (80, 100)),
    "spleen": _table((40, 50), (100, 140), (110, 130), (90, 110)),
    "aorta": _table((35, 50), (250, 400), (150, 200), (100, 130)),
    "vein": _table((35, 50), (80, 120), (140, 180), (100, 130)),
    "cortex": _table((30, 40), (150, 220), (140, 190), (100, 130)),
    "medulla": _table((30, 40), (60, 100), (140, 190), (110, 140)),
    "urine": _table((0, 15), (0, 15), (10, 40), (300, 1000)),
    "bowel": _table((20, 40), (35, 55), (45, 70), (40, 60)),
    "lymph_node": _table((35, 45), (55, 70), (70, 90), (60, 80)),
    "stranding": _table((-45, -10)),
    "table": _table((100, 250)),
}

# Relative heterogeneity (HU amplitude of a smooth texture) of organs per phase: the spleen's
# arciform arterial pattern, a faint liver texture.
ORGAN_TEXTURE_HU = {"spleen": {"N": 2, "A": 22, "V": 4, "D": 3}, "liver": {"N": 2, "A": 4, "V": 3, "D": 3}}


def draw_phase_values(rng: np.random.Generator, table: dict[str, tuple[float, float]]) -> dict[str, float]:
    """One value per phase, each uniform in its range (the same quantile across phases when the
    ranges share a driver would be too tidy; independent draws keep patients varied)."""
    return {p: float(rng.uniform(*table[p])) for p in PHASES}


def draw_tissue_hu(rng: np.random.Generator, arterial_delay: float = 0.0) -> dict[str, dict[str, float]]:
    """Per-patient HU for every tissue and phase; ``arterial_delay`` in [0, 1] mixes A toward V."""
    hu = {name: draw_phase_values(rng, table) for name, table in TISSUE_HU.items()}
    # The nephrographic phase is homogeneous: medulla reaches the cortex.
    hu["medulla"]["V"] = hu["cortex"]["V"] + float(rng.uniform(-5, 5))
    # Static tissues: one value for every phase (no enhancement), up to measurement jitter.
    for name in ("fat", "cortical_bone", "cancellous_bone", "disc", "csf", "stranding", "table"):
        v = hu[name]["N"]
        hu[name] = {p: v for p in PHASES}
    for name in ("cortex", "medulla", "urine", "vein"):
        hu[name]["A"] = max(hu[name]["A"], hu[name]["N"])
    return apply_arterial_delay(hu, arterial_delay)


def apply_arterial_delay(hu: dict[str, dict[str, float]], delay: float) -> dict[str, dict[str, float]]:
    """A late arterial acquisition: every A value moves a fraction ``delay`` toward the V value."""
    if delay <= 0:
        return hu
    for name, ph in hu.items():
        ph["A"] = (1 - delay) * ph["A"] + delay * ph["V"]
    return hu
