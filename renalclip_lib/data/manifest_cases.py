"""Group a manifest's rows (one per image) into patients, as the ROI cache needs them.

Each patient takes its labels, centres and segmentation from its reference phase (arterial, else
venous, else the first present): the published pipeline registers every phase onto that grid and
crops all of them around the same centre.

Usage: ``cases, problems = cases_from_manifest("cohort/manifest.csv", on_error="skip")``
"""
from __future__ import annotations

from ..constants import SIDES
from ..errors import ManifestError
from ..preprocess.resample import reference_phase
from ..questionnaire import QUESTIONS
from .manifest import RENAL_COLUMNS, SURVIVAL_COLUMNS, read_manifest
from .roi_cache import CaseImages

LABEL_COLUMNS = RENAL_COLUMNS + ("malignancy", "aggressiveness", "stage", "grade", "histology") + SURVIVAL_COLUMNS


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def cases_from_manifest(path, on_error: str = "fail") -> tuple[list[CaseImages], list[str]]:
    """Patients of a manifest; with ``on_error="skip"`` bad rows are dropped and described."""
    table = read_manifest(path, on_error=on_error)
    problems = [msg for _, msg in table.problems]
    cases = []
    for pid, rows in table.by_patient().items():
        by_phase = {}
        for r in rows:
            if r.phase in by_phase:
                msg = f"{path}: patient {pid} has two rows for phase {r.phase}"
                if on_error != "skip":
                    raise ManifestError(path, f"patient {pid} has two rows for phase {r.phase}")
                problems.append(msg)
                continue
            by_phase[r.phase] = r
        ref = by_phase[reference_phase(by_phase)]
        side_labels = {s: {f"q_{q.key}": _text(ref[q.column(s)]) for q in QUESTIONS} for s in SIDES}
        cases.append(CaseImages(
            patient_id=pid, cohort=ref.cohort, split=ref.split,
            phases={ph: str(r.image_path) for ph, r in by_phase.items()},
            lesion_center=ref.center, lesion_side=ref["lesion_side"] or "",
            kidney_centers={s: ref.kidney_center(s) for s in SIDES if ref.kidney_center(s) is not None},
            label_path=str(ref.label_path) if ref.label_path else None,
            labels={c: _text(ref[c]) for c in LABEL_COLUMNS},
            side_labels=side_labels,
        ))
    return cases, problems
