"""The synthetic sample case: four CT phases of one phantom patient, made on this machine.

Nothing is downloaded: the case is rendered by ``renalclip_lib.phantom`` (a right-kidney
aggressive clear-cell carcinoma with non-contrast, arterial, venous and delayed phases) into a
cache folder on first use, then loaded as volume nodes named after their phase, so the panel's
phase guess finds them. The SampleData module lists it under "RenalCLIP" (its custom downloader
makes the files instead of downloading them).

Usage::

    nodes = load_sample_case(slicer.mrmlScene)     # {"N": node, "A": node, "V": node, "D": node}
    register_sample_data(icon_path)                # inside Slicer, once at startup
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from renalclip_lib.constants import PHASE_NAMES

SAMPLE_NAME = "RenalCLIPSyntheticCase"
SAMPLE_CATEGORY = "RenalCLIP"
SAMPLE_SEED = 8
SAMPLE_COHORT = "internal"
SAMPLE_MATRIX = 128
STAMP = "sample.json"


def default_cache_folder() -> Path:
    """Slicer's cache folder when running in Slicer, else the system temporary folder."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
        if app is not None:
            return Path(app.cachePath) / "RenalCLIP"
    except ImportError:
        pass
    return Path(tempfile.gettempdir()) / "RenalCLIP-cache"


def node_name(phase: str) -> str:
    return f"RenalCLIP sample {PHASE_NAMES[phase]}"


def write_sample_case(folder=None, seed: int = SAMPLE_SEED, matrix: int = SAMPLE_MATRIX) -> dict:
    """Render the case into ``folder`` (once; reused while seed and matrix match); returns its description.

    ``{"images": {phase: path}, "labels": {phase: path}, "reference": "A", "lesion_center_lps": [x, y, z],
    "truth": {task: value}}``; the label maps and the true centre are the ground truth, for tests.
    """
    from renalclip_lib.atomic import atomic_write_json
    from renalclip_lib.io import write_volume
    from renalclip_lib.phantom.case import generate_patient

    folder = Path(folder or default_cache_folder()) / f"sample_{seed}_{matrix}"
    stamp = folder / STAMP
    if stamp.is_file():
        info = json.loads(stamp.read_text(encoding="utf-8"))
        if all(Path(p).is_file() for p in list(info["images"].values()) + list(info["labels"].values())):
            return info
    pc = generate_patient(seed, SAMPLE_COHORT, matrix=matrix, patient_id="renalclip_sample")
    info = {"seed": seed, "matrix": matrix, "reference": pc.reference_phase, "images": {}, "labels": {},
            "lesion_center_lps": [float(v) for v in pc.lesion_center],
            "truth": {k: v for k, v in pc.labels.items() if not k.startswith("q_")}}
    for p, img in pc.images.items():
        info["images"][p] = str(write_volume(img, folder / f"sample_{p}.nii.gz"))
        info["labels"][p] = str(write_volume(pc.segmentations[p], folder / f"sample_{p}_label.nii.gz"))
    atomic_write_json(stamp, info)
    return info


def load_sample_case(scene, folder=None, seed: int = SAMPLE_SEED, matrix: int = SAMPLE_MATRIX) -> dict:
    """Volume nodes of the sample case, by phase (the case is written first if needed)."""
    from renalclip_lib.io import read_volume

    from .mrml_volumes import node_from_volume

    info = write_sample_case(folder, seed, matrix)
    return {p: node_from_volume(read_volume(path), node_name(p), scene) for p, path in info["images"].items()}


def register_sample_data(thumbnail: str | None = None) -> None:
    """List the case in the SampleData module (inside Slicer; a no-op where SampleData is absent)."""
    try:
        import SampleData
    except ImportError:
        return

    def make_and_load(source=None):
        import slicer

        nodes = load_sample_case(slicer.mrmlScene)
        first = nodes.get("A") or next(iter(nodes.values()))
        slicer.util.setSliceViewerLayers(background=first, fit=True)
        return list(nodes.values())

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY, sampleName=SAMPLE_NAME, uris="renalclip:synthetic-case",
        fileNames="renalclip_sample.nii.gz", nodeNames=node_name("A"), customDownloader=make_and_load,
        thumbnailFileName=thumbnail if thumbnail and os.path.exists(thumbnail) else None)
