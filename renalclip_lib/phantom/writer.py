"""Write a synthetic cohort to disk: NIfTI images and label maps, and the manifest.

Patient ``i`` of seed ``S`` always gets the child seed ``SeedSequence([S, i])`` and the same
cohort (a low-discrepancy assignment), so it is the same patient whatever the number of patients.
Files: ``images/<patient>_<phase>.nii.gz`` (int16 HU), ``labels/<patient>_<phase>.nii.gz`` (uint8),
``manifest.csv`` (one row per image; see ``renalclip_lib.data.manifest``), all written atomically.

A held-out pool for an existing cohort: ``first`` skips the patients it already has and ``splits``
keeps only the test-split (external) patients, so the pool shares no patient with it and the
cohort's training and validation patients are unchanged.

Usage::

    path = write_cohort("cohort", n_patients=12, seed=0, matrix=128)
    write_cohort("heldout", n_patients=600, seed=0, first=12, splits=("test",))   # patients 12..611, external only
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import SIDES
from ..errors import RenalCLIPError
from ..io import write_volume
from .case import FULL_MATRIX, generate_patient
from .cohorts import cohort_index, resolve_cohorts, split_for_patient


def patient_seed(seed: int, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(i)])


def _fmt(v):
    return None if v is None else float(np.round(v, 3))


def write_cohort(out_dir, n_patients: int, seed: int = 0, cohorts=None, matrix: int = FULL_MATRIX, phases=None,
                 progress=None, compress: bool = True, first: int = 0, splits=None) -> Path:
    """Generate patients ``first`` .. ``first + n_patients - 1`` and write images, label maps and
    ``manifest.csv``; returns the manifest path.

    ``cohorts``: None (the default mix), a cohort name, a list of names / ``CohortSpec`` (equal
    shares) or a dict of shares. ``phases`` restricts the phases written (e.g. ``("A", "V")``).
    ``splits`` (e.g. ``("test",)``) writes only the patients of those splits; the others are
    skipped without being generated. ``progress(done, total, what)`` is called after each patient.
    """
    from ..data.manifest import ManifestRow, write_manifest

    out = Path(out_dir)
    specs, shares = resolve_cohorts(cohorts)
    rows = []
    for n, i in enumerate(range(int(first), int(first) + int(n_patients))):
        spec = specs[cohort_index(i, seed, shares)]
        split = split_for_patient(spec, i, seed)
        if splits is not None and split not in splits:
            continue
        pid = f"case_{i:05d}"
        pc = generate_patient(patient_seed(seed, i), spec, matrix=matrix, phases=phases, patient_id=pid, split=split)
        lab = pc.labels
        for p, img in pc.images.items():
            ip = write_volume(img, out / "images" / f"{pid}_{p}.nii.gz", compress)
            lp = write_volume(pc.segmentations[p], out / "labels" / f"{pid}_{p}.nii.gz", compress)
            c = pc.lesion_centers[p]
            k = pc.kidney_centers[p]
            values = dict(patient_id=pid, cohort=pc.cohort, split=pc.split, phase=p,
                          image_path=ip.relative_to(out).as_posix(), label_path=lp.relative_to(out).as_posix(),
                          lesion_side=lab["lesion_side"], center_x=_fmt(c[0]), center_y=_fmt(c[1]), center_z=_fmt(c[2]),
                          **{f"kidney_{s}_{a}": _fmt(k[s][n]) for s in SIDES for n, a in enumerate("xyz")},
                          **pc.reports,
                          **{key: lab[key] for key in lab if key not in ("histology_group", "lesion_side")})
            rows.append(ManifestRow.from_dict(values, base_dir=out))
        if progress is not None:
            progress(n + 1, int(n_patients), f"{pid} ({pc.cohort}, {'/'.join(pc.images)})")
    if splits is not None and not rows:
        raise RenalCLIPError(out, f"none of patients {first}..{first + n_patients - 1} is in the splits {', '.join(splits)}: "
                                  "ask for more patients")
    return write_manifest(rows, out / "manifest.csv")
