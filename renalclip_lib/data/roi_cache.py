"""A cache of preprocessed ROIs: built once from the cohort, memory-mapped by every training run.

Two kinds: ``lesion`` (one ROI per patient and phase, centred on the primary lesion: fine-tuning,
survival, analysis) and ``kidney`` (one per patient, side and phase, centred on each kidney:
attribute and contrastive pre-training). Each ROI is cut from the phase's own grid at the same
physical point, which equals resampling onto the reference grid and cropping (the identity
transform) with one interpolation instead of two. Stored as int16 HU, (N, 32, 140, 140).

Files in the cache folder: ``rois_<kind>.npy`` (a .npy memmap), ``index_<kind>.csv`` (one row per
ROI: row, unit, patient_id, cohort, split, side, phase, then the label columns as text) and
``done_<kind>.json`` (written last, with a fingerprint of the inputs): a finished cache is reused.

Usage::

    build_cache(cases, "cache", kind="lesion")
    rois, index = open_cache("cache", "lesion")
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..constants import ROI_SHAPE_XYZ, SIDES
from ..errors import ManifestError, RenalCLIPError

KINDS = ("lesion", "kidney")
INDEX_FIXED = ("row", "unit", "patient_id", "cohort", "split", "side", "phase")


@dataclass
class CaseImages:
    """One patient as the cache needs it: image paths per phase, centres (LPS mm), labels."""

    patient_id: str
    cohort: str
    split: str
    phases: dict                       # phase -> image path
    lesion_center: tuple | None = None
    lesion_side: str = ""
    kidney_centers: dict = field(default_factory=dict)   # side -> (x, y, z)
    label_path: str | None = None      # segmentation, used when a centre is missing
    labels: dict = field(default_factory=dict)           # column -> value (text; "" = unknown)
    side_labels: dict = field(default_factory=dict)      # side -> {column -> value}


def _fingerprint(cases: list[CaseImages], kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    for c in cases:
        h.update(json.dumps([c.patient_id, sorted(c.phases.items()), c.lesion_center, c.kidney_centers,
                             sorted(c.labels.items()), sorted((s, sorted(v.items())) for s, v in c.side_labels.items())],
                            default=str).encode())
    return h.hexdigest()[:16]


def _units(case: CaseImages, kind: str) -> list[tuple[str, str, dict]]:
    """(unit id, side, extra labels) for the ROIs of one case."""
    if kind == "lesion":
        return [(case.patient_id, case.lesion_side, {})]
    return [(f"{case.patient_id}:{side}", side, case.side_labels.get(side, {})) for side in SIDES]


def _centers(case: CaseImages, kind: str) -> dict[str, np.ndarray]:
    from ..io import read_volume
    from ..preprocess import lesion_center

    if kind == "lesion":
        if case.lesion_center is not None:
            return {case.lesion_side: np.asarray(case.lesion_center, float)}
        if not case.label_path:
            raise ManifestError(case.patient_id, "no lesion centre and no segmentation to compute it from")
        return {case.lesion_side: lesion_center(read_volume(case.label_path), "lesion")}
    centers = {s: np.asarray(c, float) for s, c in case.kidney_centers.items() if c is not None}
    if len(centers) < 2 and case.label_path:
        found = lesion_center(read_volume(case.label_path), "kidney")
        centers = {**{s: c for s, c in found.items()}, **centers}
    return centers


def build_cache(cases: Iterable[CaseImages], out_dir, kind: str = "lesion",
                on_error: str = "fail", progress: Callable | None = None) -> tuple[Path, list[str]]:
    """Crop and store every ROI; returns (cache folder, messages about skipped cases)."""
    from ..io import read_volume
    from ..preprocess import crop_roi

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    cases = list(cases)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(cases, kind)
    done = out / f"done_{kind}.json"
    if done.exists() and json.loads(done.read_text(encoding="utf-8")).get("fingerprint") == fp:
        return out, json.loads(done.read_text(encoding="utf-8")).get("skipped", [])

    planned = [(case, phase, path) for case in cases for phase, path in sorted(case.phases.items())]
    n_max = sum(len(_units(case, kind)) for case, _, _ in planned)
    label_cols = sorted({k for c in cases for k in c.labels} | {k for c in cases for v in c.side_labels.values() for k in v})
    nz_ny_nx = tuple(reversed(ROI_SHAPE_XYZ))
    rows, skipped = [], []
    with atomic_path(out / f"rois_{kind}.npy") as tmp_npy:
        arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.int16, shape=(n_max,) + nz_ny_nx)
        centers: dict = {}
        for i, (case, phase, path) in enumerate(planned):
            try:
                if centers.get("patient") != case.patient_id:
                    centers = {"patient": case.patient_id, **_centers(case, kind)}
                volume = read_volume(path)
            except RenalCLIPError as exc:
                if on_error != "skip":
                    raise
                skipped.append(f"{case.patient_id} {phase}: {exc}")
                continue
            for unit, side, extra in _units(case, kind):
                try:
                    if side not in centers:
                        raise ManifestError(case.patient_id, f"no {side or 'lesion'} centre")
                    roi = crop_roi(volume, centers[side])
                except RenalCLIPError as exc:
                    if on_error != "skip":
                        raise
                    skipped.append(f"{case.patient_id} {phase} {side}: {exc}")
                    continue
                arr[len(rows)] = np.clip(np.rint(roi.array), -32768, 32767).astype(np.int16)
                labels = {**case.labels, **extra}
                rows.append({"row": len(rows), "unit": unit, "patient_id": case.patient_id, "cohort": case.cohort,
                             "split": case.split, "side": side, "phase": phase,
                             **{c: labels.get(c, "") for c in label_cols}})
            if progress:
                progress(i + 1, len(planned), f"{case.patient_id} {phase}")
        arr.flush()
        del arr
        if len(rows) < n_max:
            _truncate_npy(tmp_npy, len(rows))
    _write_csv(out / f"index_{kind}.csv", list(INDEX_FIXED) + label_cols, rows)
    atomic_write_text(done, json.dumps({"fingerprint": fp, "n": len(rows), "skipped": skipped}))
    return out, skipped


def open_cache(cache_dir, kind: str) -> tuple[np.ndarray, list[dict]]:
    """The memory-mapped ROI array and its index rows (dicts of text)."""
    d = Path(cache_dir)
    if not (d / f"done_{kind}.json").exists():
        raise ManifestError(str(d), f"no finished '{kind}' ROI cache here (run `renalclip preprocess`)")
    rois = np.load(d / f"rois_{kind}.npy", mmap_mode="r")
    with open(d / f"index_{kind}.csv", newline="", encoding="utf-8") as fh:
        index = list(csv.DictReader(fh))
    if len(index) != len(rois):
        raise ManifestError(str(d), f"cache index has {len(index)} rows but {len(rois)} ROIs: rebuild it")
    return rois, index


def _truncate_npy(path: str, n: int) -> None:
    """Keep the first ``n`` items of a .npy file (rows of skipped cases were never filled)."""
    full = np.load(path, mmap_mode="r")
    kept = np.array(full[:n])
    del full
    with open(path, "wb") as fh:
        np.save(fh, kept)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
