"""The paper's clinical tasks and their label definitions (one place for each).

R.E.N.A.L. follows the paper's Supplementary Data Table 1 (Kutikov & Uzzo 2009); each component
has three classes, 0/1/2 for the table's A/B/C. Malignancy: 0 benign, 1 malignant.
Aggressiveness: 0 indolent (benign, or malignant indolent), 1 aggressive (malignant aggressive).
Survival end points: recurrence-free, disease-specific and overall survival, times in months.

Usage: ``renal_radius_class(5.2) == 1``; ``TASKS["renal_R"].classes``
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    kind: str                 # "multiclass", "binary" or "survival"
    classes: tuple[str, ...]  # class names in label order (empty for survival)
    description: str


RENAL_COMPONENTS = ("R", "E", "N", "A", "L")
SURVIVAL_ENDPOINTS = ("rfs", "dss", "os")

TASKS: dict[str, Task] = {
    "renal_R": Task("renal_R", "multiclass", ("<= 4 cm", "4-7 cm", ">= 7 cm"),
                    "Radius: largest diameter in any single plane"),
    "renal_E": Task("renal_E", "multiclass", (">= 50% exophytic", "< 50% exophytic", "entirely endophytic"),
                    "Exophytic/endophytic fraction of the mass relative to the parenchyma"),
    "renal_N": Task("renal_N", "multiclass", (">= 7 mm", "4-7 mm", "<= 4 mm"),
                    "Nearness: shortest distance to the collecting system or renal sinus"),
    "renal_A": Task("renal_A", "multiclass", ("anterior", "posterior", "neither"),
                    "Anterior/posterior to the coronal plane at the level of the hilar vessels"),
    "renal_L": Task("renal_L", "multiclass",
                    ("entirely above/below the polar lines", "crosses a polar line",
                     "> 50% across a polar line, entirely between them, or crosses the axial midline"),
                    "Location relative to the polar lines"),
    "malignancy": Task("malignancy", "binary", ("benign", "malignant"), "Benign versus malignant mass"),
    "aggressiveness": Task("aggressiveness", "binary", ("indolent", "aggressive"),
                           "Invasive/aggressive versus non-invasive/indolent mass"),
    "rfs": Task("rfs", "survival", (), "Recurrence-free survival"),
    "dss": Task("dss", "survival", (), "Disease-specific survival"),
    "os": Task("os", "survival", (), "Overall survival"),
}

# Histology groups of the paper: benign indolent, malignant indolent, malignant aggressive.
HISTOLOGY_GROUPS = ("benign", "malignant_indolent", "malignant_aggressive")


def renal_radius_class(max_diameter_cm: float) -> int:
    """R: <= 4 cm -> 0, 4-7 cm -> 1, >= 7 cm -> 2."""
    return 0 if max_diameter_cm <= 4.0 else (1 if max_diameter_cm < 7.0 else 2)


def renal_exophytic_class(exophytic_fraction: float) -> int:
    """E from the fraction of lesion volume outside the parenchymal outline."""
    if exophytic_fraction >= 0.5:
        return 0
    return 1 if exophytic_fraction > 0.0 else 2


def renal_nearness_class(distance_mm: float) -> int:
    """N from the shortest lesion-to-collecting-system/sinus distance: >= 7 -> 0, 4-7 -> 1, <= 4 -> 2."""
    return 0 if distance_mm >= 7.0 else (1 if distance_mm > 4.0 else 2)


# A: the share of the mass in front of the coronal plane through the hilar vessels that makes it
# "anterior" (and behind it, "posterior"); in between, the mass straddles the plane: "neither".
RENAL_A_MAJORITY = 2.0 / 3.0


def renal_anterior_class(anterior_fraction: float) -> int:
    """A from the fraction of lesion volume anterior to the hilar coronal plane: 0 a, 1 p, 2 neither (x)."""
    if anterior_fraction >= RENAL_A_MAJORITY:
        return 0
    if anterior_fraction <= 1.0 - RENAL_A_MAJORITY:
        return 1
    return 2


def renal_location_class(fraction_between_polar_lines: float, crosses_axial_midline: bool) -> int:
    """L: 0 entirely above/below the polar lines; 1 crosses a polar line; 2 > 50% between the lines,
    entirely between them, or crossing the axial midline (Supplementary Data Table 1)."""
    if crosses_axial_midline or fraction_between_polar_lines > 0.5:
        return 2
    return 1 if fraction_between_polar_lines > 0.0 else 0


# R.E.N.A.L. nephrometry sum (Kutikov & Uzzo 2009): R, E, N and L score 1-3 points (class + 1);
# A contributes a suffix, not points.
NEPHROMETRY_POINT_COMPONENTS = ("R", "E", "N", "L")
NEPHROMETRY_A_SUFFIX = ("a", "p", "x")
NEPHROMETRY_COMPLEXITY = ((4, 6, "low"), (7, 9, "moderate"), (10, 12, "high"))


def nephrometry_score(classes: dict) -> dict:
    """Total score, A suffix and complexity from component classes {"R": 0-2, ...}.

    Missing R/E/N/L components make the total None. ``nephrometry_score({"R": 1, "E": 0, "N": 2,
    "A": 1, "L": 2})`` -> ``{"total": 10, "suffix": "p", "complexity": "high"}``.
    """
    pts = [classes.get(c) for c in NEPHROMETRY_POINT_COMPONENTS]
    total = None if any(p is None for p in pts) else int(sum(int(p) + 1 for p in pts))
    a = classes.get("A")
    suffix = "" if a is None else NEPHROMETRY_A_SUFFIX[int(a)]
    complexity = None if total is None else next(name for lo, hi, name in NEPHROMETRY_COMPLEXITY if lo <= total <= hi)
    return {"total": total, "suffix": suffix, "complexity": complexity}
