"""One case -> ``Assessment``: phases, lesion centre, ROI, every head of a bundle, optional report.

Each phase's ROI is resampled straight from its own grid at the same physical box (the identity
transform of the published BRAINSResample step), which equals registering onto the reference grid
and cropping, with one interpolation instead of two and without resampling whole volumes.

Usage::

    bundle = load_bundle("bundle")
    a = analyze_case({"A": "art.nii.gz", "V": "ven.nii.gz"}, bundle, center_lps=(62.0, -10.5, 1203.0))
    a.write("assessment.json")
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import numpy as np

from ..constants import (CROP_SHAPE_XYZ, LABEL_CYST, LABEL_KIDNEY, LABEL_TUMOR, PHASES, REFERENCE_PHASE_ORDER,
                         ROI_SPACING_MM)
from ..coordinates import lps_to_ras, ras_to_lps
from ..errors import EmptySegmentationError, InvalidImageError, PhaseOverlapError, RenalCLIPError
from ..io import Volume, read_volume
from ..progress import ProgressReporter
from ..tasks import RENAL_COMPONENTS, TASKS, nephrometry_score
from .assessment import DISCLAIMER_SYNTHETIC, Assessment
from .bundle import BINARY_TASKS, Bundle

CENTER_KIDNEY_TOLERANCE_MM = 15.0
MASS_CENTER_TOLERANCE_MM = 15.0
PLAUSIBLE_HU = (-1100.0, 3500.0)
MIN_SOFT_TISSUE_HU = 20.0


class DifferentPatientsError(RenalCLIPError):
    """The phases of one analysis come from different patients."""


@contextmanager
def _timed(timings: dict, step: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - t0, 4)


def dicom_patient_key(path) -> str | None:
    """A hash of the DICOM PatientID of a series (folder or file), or None for other formats."""
    import hashlib

    import SimpleITK as sitk

    p = Path(path) if not isinstance(path, Volume) else None
    if p is None:
        return None
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        if not files:
            return None
        p = files[0]
    elif p.suffix.lower() not in (".dcm", ""):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if not reader.HasMetaDataKey("0010|0020"):
        return None
    return hashlib.sha256(reader.GetMetaData("0010|0020").strip().encode()).hexdigest()[:12]


def _read_phases(phases: Mapping, timings: dict) -> dict[str, Volume]:
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise InvalidImageError(None, f"unknown phase key(s) {unknown}; use N, A, V or D")
    if not phases:
        raise InvalidImageError(None, "no phase given (need at least one of N, A, V, D)")
    keys = {}
    for ph, src in phases.items():
        if not isinstance(src, Volume):
            keys[ph] = dicom_patient_key(src)
    known = {ph: k for ph, k in keys.items() if k is not None}
    if len(set(known.values())) > 1:
        raise DifferentPatientsError(None, "phases come from different patients (DICOM PatientID differs "
                                           f"between {', '.join(sorted(known))}): refusing to combine them")
    with _timed(timings, "read"):
        return {ph: src if isinstance(src, Volume) else read_volume(src) for ph, src in phases.items()}


def _reference_key(vols: Mapping) -> str:
    for p in REFERENCE_PHASE_ORDER + PHASES:
        if p in vols:
            return p
    raise InvalidImageError(None, "no phase given")


def _check_overlap(vols: dict[str, Volume], ref_key: str) -> None:
    from ..preprocess.resample import overlap_fraction

    ref = vols[ref_key]
    for ph, v in vols.items():
        if ph != ref_key and overlap_fraction(v, ref) <= 0.0:
            raise PhaseOverlapError(v.source, f"phase {ph} does not overlap the reference phase {ref_key} in "
                                              "physical space: different patients or a wrong origin")


def _labels_on(labels: Volume, ref: Volume) -> Volume:
    same = (labels.array.shape == ref.array.shape and np.allclose(labels.spacing, ref.spacing)
            and np.allclose(labels.origin, ref.origin, atol=1e-3) and np.allclose(labels.direction, ref.direction))
    if same:
        return labels
    from ..preprocess.resample import resample_to_reference

    return resample_to_reference(labels, ref, default_value=0, interpolator="nearest")


def _center_from_labels(labels: Volume, source_name: str) -> np.ndarray:
    from ..preprocess.center import lesion_center

    try:
        return np.asarray(lesion_center(labels, "lesion"), float)
    except EmptySegmentationError:
        raise EmptySegmentationError(source_name, "the segmentation holds no tumour or cyst: give the lesion "
                                                  "centre with --center-lps or --center-ras") from None


def _label_warnings(labels: Volume, center: np.ndarray) -> list[str]:
    """Centre outside the kidney region; lesion reaching beyond the model's crop."""
    from scipy.ndimage import distance_transform_edt

    warnings = []
    arr = labels.array
    organ = np.isin(arr, (LABEL_KIDNEY, LABEL_TUMOR, LABEL_CYST))
    ijk = np.round(labels.physical_to_index(center)).astype(int)
    inside = np.all(ijk >= 0) and np.all(ijk < np.asarray(labels.size_xyz))
    if organ.any() and inside:
        k, j, i = ijk[2], ijk[1], ijk[0]
        lo = np.maximum(np.array([k, j, i]) - 40, 0)
        hi = np.minimum(np.array([k, j, i]) + 41, arr.shape)
        sub = organ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if not sub.any():
            dist = np.inf
        else:
            sampling = (labels.spacing[2], labels.spacing[1], labels.spacing[0])
            d = distance_transform_edt(~sub, sampling=sampling)
            dist = float(d[k - lo[0], j - lo[1], i - lo[2]])
        if dist > CENTER_KIDNEY_TOLERANCE_MM:
            warnings.append(f"the centre lies more than {CENTER_KIDNEY_TOLERANCE_MM:.0f} mm outside the segmented "
                            "kidney region: check the point")
    lesion = np.isin(arr, (LABEL_TUMOR, LABEL_CYST))
    if lesion.any():
        pts = labels.index_to_physical(np.argwhere(lesion)[:, ::-1].astype(float))
        half = np.asarray(CROP_SHAPE_XYZ, float) * np.asarray(ROI_SPACING_MM, float) / 2.0
        if np.any(np.abs(pts - center).max(axis=0) > half):
            warnings.append("the lesion reaches beyond the model's 128 x 128 x 160 mm view: part of it is not seen")
    return warnings


def _intensity_warnings(rois: dict[str, Volume]) -> list[str]:
    warnings = []
    for ph, roi in rois.items():
        a = roi.array
        inside = a[a > -999.0]
        if inside.size == 0:
            warnings.append(f"phase {ph}: the ROI lies entirely outside the scan")
            continue
        lo, hi = np.percentile(inside, [0.5, 99.5])
        if lo < PLAUSIBLE_HU[0] or hi > PLAUSIBLE_HU[1]:
            warnings.append(f"phase {ph}: unusual intensities ({lo:.0f} to {hi:.0f}): is the image in Hounsfield units?")
        elif lo >= 0.0:
            warnings.append(f"phase {ph}: no value below 0 in the ROI: the image may be stored without its HU rescale")
        elif hi < MIN_SOFT_TISSUE_HU:
            warnings.append(f"phase {ph}: no soft tissue in the ROI (99.5th percentile {hi:.0f} HU): check the centre")
        outside = float(np.mean(a <= -999.0))
        if outside > 0.25:
            warnings.append(f"phase {ph}: {100 * outside:.0f}% of the ROI lies outside the scan")
    return warnings


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _task_outputs(bundle: Bundle, logits: dict[str, np.ndarray], warnings: list) -> tuple[dict, dict | None]:
    tasks: dict = {}
    classes: dict = {}
    for comp in RENAL_COMPONENTS:
        name = f"renal_{comp}"
        if name not in logits:
            tasks[name] = None
            continue
        p = _softmax(logits[name])
        c = int(np.argmax(p))
        classes[comp] = c
        tasks[name] = {"probabilities": [round(float(v), 6) for v in p], "predicted_class": c,
                       "points": c + 1 if comp != "A" else None, "label": TASKS[name].classes[c]}
    for name in BINARY_TASKS:
        if name not in logits:
            tasks[name] = None
            continue
        prob = float(_softmax(logits[name])[1])
        thr = bundle.threshold(name)
        tasks[name] = {"probability": round(prob, 6), "threshold": round(thr, 6), "positive": bool(prob >= thr),
                       "label": TASKS[name].classes[int(prob >= thr)]}
    missing = [t for t, v in tasks.items() if v is None]
    if missing and bundle.tasks_model is not None:
        warnings.append(f"the bundle has no head for {', '.join(missing)}: those answers are null")
    neph = nephrometry_score(classes) if classes else None
    return tasks, neph


def model_inputs(rois: dict[str, Volume]) -> dict[str, np.ndarray]:
    from ..preprocess import to_model_input

    return {ph: to_model_input(roi) for ph, roi in rois.items()}


def evaluated_phases(available, fusion: bool) -> list[str]:
    """Phases the heads see: every phase (logits averaged) with fusion, else arterial, else venous."""
    if fusion:
        return [p for p in PHASES if p in available]
    return [_reference_key(available)]


def analyze_case(phases: Mapping, bundle: Bundle, center_lps=None, center_ras=None, segmentation=None,
                 segment_with=None, report: bool = False, panel=None, greedy: bool = False,
                 reporter: ProgressReporter | None = None, segmenter=None,
                 number_safe: bool | None = None, ground: bool = True, mirroring: bool = True) -> Assessment:
    """Analyse one case; see the module docstring.

    The centre comes from a point (``center_lps`` or ``center_ras``), else from the segmentation:
    ``segmentation``, a label map (path or Volume, labels 1 kidney, 2 tumour, 3 cyst), or
    ``segment_with``, an nnU-Net model folder (``segmenter`` may inject a ready ``SegmentationModel``).
    A point may come with a segmentation: the point places the ROI, the segmentation is measured.
    With a segmentation the assessment holds the mass's measurement (``measurement``: side,
    diameters, volume) and, with ``ground`` (the default), the report states the measured side and
    size (``extraction.grounding``; the model's own text stays in ``report.generated_text``).
    ``mirroring``: nnU-Net's test-time mirroring with ``segment_with`` (about 8x slower in 3D).
    ``number_safe``: True/False overrides the bundle's ``DecodingOptions.number_safe`` for the report.
    """
    import torch

    rep = reporter or ProgressReporter(quiet=True)
    if center_lps is not None and center_ras is not None:
        raise RenalCLIPError(None, "give the centre once, in LPS or in RAS")
    if segmentation is not None and segment_with is not None:
        raise RenalCLIPError(None, "give a segmentation or an nnU-Net model, not both")
    if all(x is None for x in (center_lps, center_ras, segmentation, segment_with)):
        raise RenalCLIPError(None, "give a centre (LPS or RAS), a segmentation, or an nnU-Net model")
    timings: dict = {}
    warnings: list[str] = []
    t_start = time.perf_counter()
    rep.progress("read", 0.02, f"reading {len(phases)} phase(s)")
    vols = _read_phases(phases, timings)
    ref_key = _reference_key(vols)
    _check_overlap(vols, ref_key)
    if "A" not in vols:
        warnings.append("no arterial phase: the models see the venous phase" if "V" in vols else
                        f"no arterial or venous phase: the models see the {ref_key} phase, outside their training")
    labels = None
    rep.progress("centre", 0.15, "finding the lesion centre")
    with _timed(timings, "centre"):
        if segmentation is not None:
            seg = segmentation if isinstance(segmentation, Volume) else read_volume(segmentation)
            labels, seg_name = _labels_on(seg, vols[ref_key]), seg.source or "segmentation"
            how = "segmentation (largest axial section of the lesion)"
        elif segment_with is not None:
            with _timed(timings, "segmentation"):
                from ..segmentation import SegmentationModel

                model = segmenter or SegmentationModel(segment_with, device=bundle.device, mirroring=mirroring,
                                                       verbose=False)
                labels = model.predict(vols[ref_key])
            seg_name, how = os.fspath(segment_with), "nnU-Net segmentation"
        if center_lps is not None:
            center, how = np.asarray(center_lps, float).reshape(3), "given (LPS)"
        elif center_ras is not None:
            center, how = ras_to_lps(np.asarray(center_ras, float).reshape(3)), "given (RAS)"
        else:
            center = _center_from_labels(labels, seg_name)
    measurement = None
    if labels is not None:
        warnings += _label_warnings(labels, center)
        measurement = _measure(labels, center, warnings)

    rep.progress("roi", 0.3, "cutting the ROI from each phase")
    from ..preprocess import crop_roi

    rois: dict[str, Volume] = {}
    with _timed(timings, "roi"):
        for ph in [p for p in PHASES if p in vols]:
            if vols[ph].contains(center):
                rois[ph] = crop_roi(vols[ph], center)
            elif ph == ref_key:
                crop_roi(vols[ph], center)
            else:
                warnings.append(f"phase {ph} does not contain the centre: left out")
    warnings += _intensity_warnings(rois)
    fusion = bool(bundle.manifest.get("fusion", False))
    used = evaluated_phases(rois, fusion)
    x = torch.from_numpy(np.stack([model_inputs({p: rois[p]})[p] for p in used])).to(bundle.device)

    rep.progress("models", 0.5, "running the image models")
    tasks, neph, survival, zeroshot, feats, zs_used = {}, None, None, None, None, []
    with torch.no_grad(), _timed(timings, "models"):
        if bundle.tasks_model is not None:
            feats_t, logits_t = bundle.tasks_model(x)
            feats = feats_t.mean(0, keepdim=True)
            logits = {k: v.float().mean(0).cpu().numpy() for k, v in logits_t.items()}
            tasks, neph = _task_outputs(bundle, logits, warnings)
        else:
            tasks = {f"renal_{c}": None for c in RENAL_COMPONENTS} | {t: None for t in BINARY_TASKS}
            warnings.append("the bundle has no task model: R.E.N.A.L., malignancy and aggressiveness are null")
        if bundle.survival_model is not None:
            _, out = bundle.survival_model(x)
            risk = float(out["risk"].float().mean().cpu())
            thr = bundle.risk_threshold
            survival = {"endpoint": bundle.manifest["components"]["survival"].get("endpoint", "rfs"),
                        "risk_score": round(risk, 6), "threshold": thr,
                        "risk_group": None if thr is None else ("high" if risk > thr else "low")}
            if thr is None:
                warnings.append("the bundle records no risk threshold: risk group unavailable")
        else:
            warnings.append("the bundle has no survival model: risk is null")
        if bundle.clip_encoder is not None and bundle.prompt_embeddings is not None:
            from ..evaluation.zeroshot import zeroshot_probabilities

            zs_used = evaluated_phases(rois, fusion or bundle.zeroshot_fusion)
            xz = x if zs_used == used else torch.from_numpy(
                np.stack([model_inputs({p: rois[p]})[p] for p in zs_used])).to(bundle.device)
            emb = bundle.clip_encoder.embed(xz).float().mean(0, keepdim=True)
            emb = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
            probs = zeroshot_probabilities(emb, bundle.prompt_embeddings, logit_scale=bundle.logit_scale or 100.0)
            zeroshot = {t: {"probability": round(float(p[0]), 6)} for t, p in probs.items()}
    report_out = None
    if report:
        rep.progress("report", 0.7, "generating the report")
        with _timed(timings, "report"):
            report_out = _generate_report(bundle, x, greedy, warnings, number_safe)
            if report_out is not None and measurement is not None and ground:
                report_out = _grounded(report_out, measurement)
                if report_out["grounding"]:
                    warnings.append("the generated report disagreed with the segmentation and was corrected: "
                                    + "; ".join(report_out["grounding"]))
    if panel is not None:
        rep.progress("panel", 0.9, "drawing the ROI panel")
        with _timed(timings, "panel"):
            from .panel import save_assessment_panel

            seg_rois = None
            if labels is not None:
                seg_rois = crop_roi(labels, center, antialias=False)
            save_assessment_panel(rois, panel, seg_roi=seg_rois, title=_panel_title(tasks, neph))
    timings["total"] = round(time.perf_counter() - t_start, 4)
    a = Assessment(tasks=tasks, nephrometry=neph, survival=survival, zeroshot=zeroshot, report=report_out,
                   measurement=None if measurement is None else measurement.to_dict(),
                   center={"lps": [round(float(v), 3) for v in center],
                           "ras": [round(float(v), 3) for v in lps_to_ras(center)], "source": how},
                   phases={"given": sorted(vols, key=PHASES.index), "reference": ref_key, "used": used,
                           "fusion": fusion and len(used) > 1,
                           "zeroshot": zs_used if zeroshot is not None else []},
                   warnings=warnings + list(bundle.warnings), models=bundle.checksums(), timings=timings)
    if bundle.manifest.get("synthetic"):
        a.disclaimer = DISCLAIMER_SYNTHETIC
    rep.progress("done", 1.0, a.summary_line())
    return a


def _measure(labels: Volume, center: np.ndarray, warnings: list):
    from ..preprocess.lesion_size import NoMassAtCentreError, measure_lesion

    try:
        return measure_lesion(labels, center, max_distance_mm=MASS_CENTER_TOLERANCE_MM)
    except NoMassAtCentreError as exc:
        warnings.append(f"no segmented mass at the centre ({exc.problem}): no measurement, the report is not checked")
        return None
    except EmptySegmentationError:
        warnings.append("the segmentation holds no tumour or cyst: no measurement, the report is not checked")
        return None


def _grounded(report: dict, measurement) -> dict:
    from ..extraction.grounding import ground_report
    from ..extraction.report_text import split_report

    text, changes = ground_report(report["text"], measurement)
    findings, impression = split_report(text)
    return {"text": text, "findings": findings, "impression": impression,
            "generated_text": report["text"], "grounding": changes}


def _panel_title(tasks: dict, neph: dict | None) -> str:
    parts = []
    if neph and neph.get("total") is not None:
        parts.append(f"R.E.N.A.L. {neph['total']}{neph.get('suffix', '')}")
    if tasks.get("malignancy"):
        parts.append(f"malignancy {tasks['malignancy']['probability']:.2f}")
    return "  |  ".join(parts)


def _generate_report(bundle: Bundle, x, greedy: bool, warnings: list,
                     number_safe: bool | None = None) -> dict | None:
    gen = bundle.load_report_generator()
    if gen is None:
        warnings.append("the bundle has no report generator: no report")
        return None
    from dataclasses import replace

    from ..models.report_generator import split_report

    import torch

    with torch.no_grad():
        feats = bundle.report_encoder.features(x[:1])
    bundled = gen.decoding
    if number_safe is not None:
        gen.decoding = replace(bundled, number_safe=bool(number_safe))
    try:
        text = gen.generate_from_features(feats, greedy=greedy)[0]
    finally:
        gen.decoding = bundled
    findings, impression = split_report(text)
    return {"text": text, "findings": findings, "impression": impression}
