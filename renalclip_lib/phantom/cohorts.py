"""Synthetic cohorts like the paper's: what differs between sites is data, not code.

Each ``CohortSpec`` says how a site scans and who it sees: class balance of the three histology
categories, phase availability (Extended Data Table 1), in-plane pixel size and slice thickness,
noise level and reconstruction kernel, contrast timing (a late arterial phase), scanner
calibration offset, whether reports exist and how much they say, and survival follow-up.

- ``pretrain``: large, varied, reports, no follow-up (split ``pretrain``);
- ``internal``: the fine-tuning cohort, train/val split, reports, RFS follow-up;
- ``external_noisy``: low-dose scanner (noise 16-28 HU);
- ``external_thick``: 5 mm slices only, non-contrast and delayed phases common;
- ``external_late``: arterial phase acquired late (halfway toward nephrographic enhancement);
- ``external_offset``: miscalibrated scanner (+15 to +35 HU everywhere), more aggressive tumours;
- ``tcia_like``: mostly malignant, half aggressive, no reports, RFS/DSS/OS follow-up.

Usage::

    spec = COHORTS["external_thick"]
    cohort_for_patient(7, seed=0)        # which cohort patient 7 of the default mix belongs to
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class CohortSpec:
    name: str
    split: str = "test"                                  # "pretrain", "train_val" or "test"
    val_fraction: float = 0.2
    group_weights: tuple = (0.18, 0.56, 0.26)            # benign, malignant indolent, malignant aggressive
    phase_prob: dict = field(default_factory=lambda: {"N": 0.84, "A": 0.99, "V": 0.97, "D": 0.38})
    inplane_mm: tuple = (0.6, 0.9)
    thickness_mm: tuple = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    thickness_p: tuple = (0.2, 0.2, 0.15, 0.15, 0.1, 0.2)
    noise_sd: tuple = (8.0, 20.0)
    kernel_sigma_px: tuple = (0.5, 1.0)
    arterial_delay: tuple = (0.0, 0.15)
    hu_offset: tuple = (-3.0, 3.0)
    misregistration_mm: tuple = (1.0, 5.0)
    coverage_mm: tuple = (200.0, 300.0)
    has_reports: bool = True
    mention_rate: float = 0.85
    endpoints: tuple = ()
    followup_months: tuple = (12.0, 120.0)
    contralateral_cyst_p: float = 0.15
    extra_cyst_p: float = 0.07

    @property
    def group_weight_dict(self) -> dict:
        return dict(zip(("benign", "malignant_indolent", "malignant_aggressive"), self.group_weights))


_BASE = CohortSpec("base")
COHORTS: dict[str, CohortSpec] = {
    "pretrain": replace(_BASE, name="pretrain", split="pretrain"),
    "internal": replace(_BASE, name="internal", split="train_val", group_weights=(0.16, 0.62, 0.22),
                        phase_prob={"N": 0.83, "A": 1.0, "V": 0.98, "D": 0.3}, endpoints=("rfs",),
                        followup_months=(12.0, 120.0)),
    "external_noisy": replace(_BASE, name="external_noisy", group_weights=(0.29, 0.59, 0.12), noise_sd=(16.0, 28.0),
                              kernel_sigma_px=(0.3, 0.6), phase_prob={"N": 0.79, "A": 0.99, "V": 0.98, "D": 0.41}),
    "external_thick": replace(_BASE, name="external_thick", group_weights=(0.11, 0.57, 0.32), thickness_mm=(5.0,),
                              thickness_p=(1.0,), phase_prob={"N": 1.0, "A": 0.99, "V": 0.99, "D": 0.97},
                              endpoints=("rfs",), followup_months=(6.0, 36.0)),
    "external_late": replace(_BASE, name="external_late", group_weights=(0.17, 0.43, 0.40), arterial_delay=(0.35, 0.65),
                             phase_prob={"N": 0.93, "A": 0.91, "V": 0.94, "D": 0.39}),
    "external_offset": replace(_BASE, name="external_offset", group_weights=(0.19, 0.33, 0.48), hu_offset=(15.0, 35.0),
                               phase_prob={"N": 0.98, "A": 1.0, "V": 0.97, "D": 0.91}, mention_rate=0.7),
    "tcia_like": replace(_BASE, name="tcia_like", group_weights=(0.03, 0.48, 0.49), has_reports=False,
                         phase_prob={"N": 0.69, "A": 0.56, "V": 0.69, "D": 0.53}, endpoints=("rfs", "dss", "os"),
                         followup_months=(24.0, 144.0), inplane_mm=(0.65, 0.95), contralateral_cyst_p=0.1),
}

# Default mix of ``write_cohort``: share of patients per cohort.
DEFAULT_MIX = {"pretrain": 0.3, "internal": 0.35, "external_noisy": 0.06, "external_thick": 0.06,
               "external_late": 0.06, "external_offset": 0.06, "tcia_like": 0.11}
_PHI = (5 ** 0.5 - 1) / 2


def resolve_cohorts(cohorts=None) -> tuple[list[CohortSpec], np.ndarray]:
    """Cohort specs and their shares from None (default mix), names, specs, or {name or spec: share}."""
    if cohorts is None:
        cohorts = DEFAULT_MIX
    if isinstance(cohorts, (str, CohortSpec)):
        cohorts = [cohorts]
    if isinstance(cohorts, dict):
        items = list(cohorts.items())
    else:
        items = [(c, 1.0) for c in cohorts]
    specs, w = [], []
    for c, share in items:
        specs.append(get_cohort(c))
        w.append(float(share))
    w = np.asarray(w, float)
    if not len(specs) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("cohorts must name at least one cohort with a positive share")
    return specs, w / w.sum()


def get_cohort(c) -> CohortSpec:
    if isinstance(c, CohortSpec):
        return c
    if c not in COHORTS:
        raise ValueError(f"unknown cohort {c!r}; known: {', '.join(COHORTS)}")
    return COHORTS[c]


def cohort_index(i: int, seed: int, shares: np.ndarray) -> int:
    """Cohort of patient ``i``: a low-discrepancy sequence, so shares hold for small N and patient
    i's cohort does not depend on how many patients are generated."""
    u = (0.5 + (i + 1) * _PHI + seed * 0.1234567) % 1.0
    return int(np.searchsorted(np.cumsum(shares), u, side="right").clip(0, len(shares) - 1))


def split_for_patient(spec: CohortSpec, i: int, seed: int) -> str:
    if spec.split == "pretrain":
        return "pretrain"
    if spec.split == "train_val":
        u = (0.25 + (i + 1) * 2 ** 0.5 + seed * 0.7654321) % 1.0
        return "val" if u < spec.val_fraction else "train"
    return "test"
