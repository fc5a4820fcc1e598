"""``renalclip demo``: the main job on the embedded default, a small synthetic cohort.

For each patient: read every phase, put them on the arterial grid (venous if none), find the
lesion centre on the reference segmentation, cut the model's ROI from every phase, write the
ROIs, the network tensor of the reference phase and a preview picture, and summarise the run in
``summary.json``. Later stages (segmentation, analysis, report) join this pipeline as they land.

Usage: ``run_demo("demo_out", n_patients=6, seed=0, matrix=160)``
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path, atomic_save_npy, atomic_write_text
from .constants import PHASE_NAMES
from .io import read_volume, write_volume
from .preprocess import crop_roi, lesion_center, register_phases, to_model_input
from .inference.panel import save_assessment_panel
from .preprocess.resample import reference_phase, resample_to_reference


def save_roi_preview(rois: dict, path, title: str = "") -> Path:
    """Axial, coronal and sagittal planes through the centre of each phase's ROI, as one PNG."""
    return save_assessment_panel(rois, path, title=title)


def process_patient(case, out_dir: Path) -> dict:
    """Register, centre, crop and preview one patient (a ``CaseImages``)."""
    phases = {ph: read_volume(p) for ph, p in case.phases.items()}
    ref_key = reference_phase(phases)
    registered = register_phases(phases)
    labels = read_volume(case.label_path)
    labels_on_ref = resample_to_reference(labels, registered[ref_key], default_value=0, interpolator="nearest")
    center = lesion_center(labels_on_ref, "lesion")
    rois = {ph: crop_roi(vol, center) for ph, vol in registered.items()}
    pdir = out_dir / case.patient_id
    files = {ph: str(write_volume(roi, pdir / f"roi_{ph}.nii.gz")) for ph, roi in rois.items()}
    tensor = atomic_save_npy(pdir / "input_tensor.npy", to_model_input(rois[ref_key]))
    title = f"{case.patient_id}: {case.labels.get('histology', '')} ({case.lesion_side} kidney)"
    preview = save_roi_preview(rois, pdir / "preview.png", title)
    manifest_center = np.asarray(case.lesion_center, float) if case.lesion_center is not None else None
    return {
        "patient_id": case.patient_id, "cohort": case.cohort, "histology": case.labels.get("histology", ""),
        "phases": sorted(phases), "reference_phase": ref_key,
        "lesion_center_lps": [round(float(v), 2) for v in center],
        "distance_to_manifest_center_mm": None if manifest_center is None
        else round(float(np.linalg.norm(center - manifest_center)), 2),
        "rois": files, "tensor": str(tensor), "preview": str(preview),
    }


def run_demo(out_dir, n_patients: int = 6, seed: int = 0, matrix: int = 160, progress=None) -> dict:
    from .data.manifest_cases import cases_from_manifest
    from .phantom import write_cohort

    out = Path(out_dir)
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.exists():
        manifest = write_cohort(out / "cohort", n_patients=n_patients, seed=seed, matrix=matrix, progress=progress)
    cases, _ = cases_from_manifest(manifest)
    cases = [c for c in cases if c.lesion_side]
    results = []
    for i, case in enumerate(cases):
        results.append(process_patient(case, out / "patients"))
        if progress:
            progress(i + 1, len(cases), f"{case.patient_id}: ROI and preview")
    summary = {"manifest": str(manifest), "patients": results}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return {"summary": str(out / "summary.json"), "patients": len(results),
            "previews": [r["preview"] for r in results]}
