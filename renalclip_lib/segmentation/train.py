"""Train a small real nnU-Net v2 model on the synthetic cohort (tests, demo, benchmarks).

``train_synthetic`` writes a phantom cohort at a small matrix (96), lays it out as an nnU-Net raw
dataset (a 110 x 110 x 150 mm box around each kidney of each patient and phase: the tiny model is a
kidney-region segmenter; labels 1 kidney, 2 tumor, 3 cyst), then runs nnU-Net's
own planning, preprocessing and training in a child process (``_train_child``) with
``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` and the worker counts set for that child
only: this process's ``os.environ`` is never changed. Everything is built in a temporary folder
beside ``out``; the finished model folder is renamed into place, so ``out`` is either the complete
previous model or the complete new one.

Usage::

    summary = train_synthetic("models/synthetic", n_patients=6, epochs=3)
    model = SegmentationModel("models/synthetic")
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import RenalCLIPError

DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID:03d}_RenalSynthetic"
LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


class TrainingFailedError(RuntimeError):
    """nnU-Net's child process failed: the message holds the end of its log."""


KIDNEY_BOX_MM = (110.0, 110.0, 150.0)


def kidney_crop(image, label, centre_lps, rng=None, size_mm=KIDNEY_BOX_MM, jitter_mm: float = 10.0):
    """The image and label map cut to a box around one kidney (centre jittered), same spacing.

    In a whole synthetic abdomen the kidneys fill about 0.6 % of the voxels and a tiny nnU-Net with
    its default optimiser finds nothing in a few hundred iterations; in a 110 x 110 x 150 mm box
    around one kidney (with its neighbours: liver or spleen, bowel, psoas, spine) they fill about
    10-15 %, and it learns them in a minute or two. The tiny model is therefore a kidney-region
    segmenter: give it such boxes, not whole scans.
    """
    import numpy as np

    from ..io import Volume

    rng = rng if rng is not None else np.random.default_rng(0)
    centre = np.asarray(centre_lps, float) + rng.uniform(-jitter_mm, jitter_mm, 3)
    half = np.asarray(size_mm, float) / 2
    corners = np.array([centre + half * np.array([a, b, c]) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    ijk = image.physical_to_index(corners)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, None)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(image.size_xyz))
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    origin = image.index_to_physical(lo.astype(float))
    return (Volume(np.ascontiguousarray(image.array[sl]), image.spacing, origin, image.direction, image.source),
            Volume(np.ascontiguousarray(label.array[sl]), label.spacing, origin, label.direction, label.source))


def build_raw_dataset(raw_root, n_patients: int, seed: int = 0, matrix: int = 96, phases=None, cohorts=None,
                      crop: bool = True, progress=None) -> Path:
    """Write the synthetic cohort as ``raw_root/<DATASET_NAME>`` (imagesTr, labelsTr, dataset.json).

    One case per patient and phase, or with ``crop`` two: a box around each kidney (``kidney_crop``).
    """
    import numpy as np

    from ..data.manifest import read_manifest
    from ..io import read_volume, write_volume
    from ..phantom import write_cohort

    raw = Path(raw_root) / DATASET_NAME
    cohort_dir = Path(raw_root) / "_cohort"
    manifest = write_cohort(cohort_dir, n_patients=n_patients, seed=seed, cohorts=cohorts, matrix=matrix,
                            phases=phases, progress=progress)
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 7])
    n = 0
    for row in read_manifest(manifest):
        case = f"{row.patient_id}_{row.phase}"
        if not crop:
            os.replace(row.image_path, raw / "imagesTr" / f"{case}_0000.nii.gz")
            os.replace(row.label_path, raw / "labelsTr" / f"{case}.nii.gz")
            n += 1
            continue
        image, label = read_volume(row.image_path), read_volume(row.label_path)
        for side in ("left", "right"):
            img, lab = kidney_crop(image, label, row.kidney_center(side), rng)
            write_volume(img, raw / "imagesTr" / f"{case}_{side[0].upper()}_0000.nii.gz")
            write_volume(lab, raw / "labelsTr" / f"{case}_{side[0].upper()}.nii.gz")
            n += 1
    shutil.rmtree(cohort_dir)
    dataset = {"name": DATASET_NAME, "description": "RenalCLIP synthetic phantom cohort (not real CT)",
               "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n, "file_ending": ".nii.gz",
               "overwrite_image_reader_writer": "SimpleITKIO"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return raw


def child_environment(work: Path, n_proc: int = 1, n_proc_da: int = 1, threads: int | None = None) -> dict:
    """A copy of ``os.environ`` with nnU-Net's folders and worker counts (for the child only)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_def_n_proc=str(int(n_proc)),
               nnUNet_n_proc_DA=str(int(n_proc_da)), nnUNet_compile="f", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_synthetic(out, n_patients: int = 6, epochs: int = 3, iterations: int = 80, val_iterations: int = 3,
                    seed: int = 0, matrix: int = 96, phases=None, crop: bool = True, device: str = "cpu", n_proc_da: int = 1,
                    base_features: int = 8, max_features: int = 80, max_patch: int | None = 32, max_stages: int | None = 4,
                    batch_size: int = 2, threads: int | None = None, progress=None, keep_work: bool = False) -> dict:
    """Train a tiny nnU-Net on ``n_patients`` synthetic patients and write the model folder ``out``.

    Returns the training summary (also ``out/training_summary.json``). ``progress(msg)`` gets one
    line per step. The child's full log is kept as ``out/training_log.txt``.
    """
    out = Path(out).absolute()
    if n_patients < 2:
        raise RenalCLIPError(None, f"--patients must be at least 2 (got {n_patients}): nnU-Net needs a validation case")
    if epochs < 1 or iterations < 1:
        raise RenalCLIPError(None, "--epochs and --iterations must be at least 1")
    if out.exists() and not out.is_dir():
        raise RenalCLIPError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise RenalCLIPError(out, "folder is not empty and is not a model folder: refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        say(f"writing {n_patients} synthetic patients (matrix {matrix})")
        build_raw_dataset(work / "nnUNet_raw", n_patients, seed=seed, matrix=matrix, phases=phases, crop=crop)
        model_tmp = work / "model"
        cfg = {"dataset_id": DATASET_ID, "dataset_name": DATASET_NAME, "epochs": int(epochs),
               "iterations": int(iterations), "val_iterations": int(val_iterations), "device": str(device),
               "fold": 0, "seed": int(seed), "model_out": str(model_tmp), "torch_threads": threads,
               "plan": {"base_features": base_features, "max_features": max_features, "max_patch": max_patch, "max_stages": max_stages,
                        "batch_size": batch_size}}
        cfg_path = work / "config.json"
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        log_path = work / "training_log.txt"
        say(f"nnU-Net plan, preprocess and train ({epochs} epochs x {iterations} iterations) in a child process")
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run([sys.executable, "-m", "renalclip_lib.segmentation._train_child", str(cfg_path)],
                                  env=child_environment(work, 1, n_proc_da, threads), cwd=str(work),
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not (model_tmp / "fold_0" / "checkpoint_final.pth").is_file():
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
            raise TrainingFailedError(f"nnU-Net training failed (exit {proc.returncode}); end of its log:\n{tail}")
        shutil.copy(log_path, model_tmp / "training_log.txt")
        summary = json.loads((model_tmp / "training_summary.json").read_text(encoding="utf-8"))
        summary.update(patients=n_patients, matrix=matrix, seed=seed, crop=crop, total_seconds=round(time.time() - t0, 1),
                       model=str(out))
        (model_tmp / "training_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        # Atomic replacement: the old model (if any) moves aside, the new one is renamed into place.
        if out.exists():
            os.replace(out, work / "previous")
        os.replace(model_tmp, out)
        say(f"model written to {out}")
        return summary
    finally:
        if keep_work:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
