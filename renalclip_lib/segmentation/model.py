"""Kidney / tumour / cyst segmentation with a trained nnU-Net v2 model folder.

A model folder is what nnU-Net writes under ``nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>``:
``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``. Prediction runs nnU-Net's own
``nnUNetPredictor`` (its preprocessing, sliding window and resampling back); this module only
hands it the array in the axis layout the model was trained with, and maps the output values to
our labels (``constants``: 1 kidney, 2 tumour, 3 cyst) by the label *names* in ``dataset.json``:

- plain labels: ``{"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}`` in any order or ids;
  aliases such as ``tumour``, ``kidney_tumor``, ``renal_cyst``, ``kidney_left`` are understood;
  a label naming none of the three (``ureter``, ``liver``) becomes background;
- region-based (KiTS21/23 style): ``{"background": 0, "kidney": [1, 2, 3], "masses": [2, 3],
  "tumor": 2}`` with ``regions_class_order``; a value written by a generic ``masses`` region that a
  later ``tumor`` region paints over means cyst (KiTS: masses minus tumour), otherwise tumour.

Axis layout: nnU-Net models see the array as their image reader returned it. ``SimpleITKIO`` and
``NibabelIO`` give the stored voxel order (our ``Volume.array``); ``NibabelIOWithReorient`` (the
KiTS23 reader) first reorients to RAS. The reader is taken from ``dataset.json``
(``overwrite_image_reader_writer``) or ``plans.json`` (``image_reader_writer``).

Usage::

    model = SegmentationModel("models/kits_tiny", device="cpu")     # loads once
    labels = model.predict(read_volume("ct.nii.gz"))                 # Volume on the CT's grid, uint8
    labels = segment(ct, "models/kits_tiny", device="cuda", folds=(0,))
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import LABEL_BACKGROUND, LABEL_CYST, LABEL_KIDNEY, LABEL_NAMES, LABEL_TUMOR
from ..errors import InvalidImageError, MissingFileError, RenalCLIPError
from ..io import Volume

CHECKPOINT_NAME = "checkpoint_final.pth"
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])

_TUMOR_WORDS = {"tumor", "tumour", "tumors", "tumours", "carcinoma", "rcc", "neoplasm", "malignancy", "malignant"}
_CYST_WORDS = {"cyst", "cysts", "cystic"}
_MASS_WORDS = {"mass", "masses", "lesion", "lesions"}
_KIDNEY_WORDS = {"kidney", "kidneys", "renal", "parenchyma"}


class InvalidModelError(RenalCLIPError):
    """A segmentation model folder is missing a file, holds an unreadable one, or names no kidney label."""


def _name_kind(name: str) -> str | None:
    """'tumor', 'cyst', 'mass', 'kidney' or None for a dataset.json label name."""
    words = {w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w}
    for kind, vocab in (("tumor", _TUMOR_WORDS), ("cyst", _CYST_WORDS), ("mass", _MASS_WORDS), ("kidney", _KIDNEY_WORDS)):
        if words & vocab:
            return kind
    return None


# A label named only "mass"/"lesion" (no tumour/cyst distinction) is treated as the primary lesion.
_KIND_LABEL = {"kidney": LABEL_KIDNEY, "tumor": LABEL_TUMOR, "mass": LABEL_TUMOR, "cyst": LABEL_CYST,
               None: LABEL_BACKGROUND}


def output_label_map(dataset_json: dict, source=None) -> dict[int, int]:
    """nnU-Net output value -> our label (0 background, 1 kidney, 2 tumour, 3 cyst), from label names.

    ``source`` names the dataset.json in errors. Raises ``InvalidModelError`` if the labels are
    malformed or none of them is a kidney, tumour or cyst.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InvalidModelError(source, "no 'labels' mapping in dataset.json")
    region_based = any(isinstance(v, (list, tuple)) for v in labels.values())
    out: dict[int, int] = {}
    try:
        if not region_based:
            for name, value in labels.items():
                v = int(value)
                out[v] = LABEL_BACKGROUND if v == 0 else _KIND_LABEL[_name_kind(name)]
        else:
            order = dataset_json.get("regions_class_order")
            regions = [(n, tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])))
                       for n, v in labels.items() if n != "background" and not (not isinstance(v, (list, tuple)) and int(v) == 0)]
            if order is None or len(order) != len(regions):
                raise InvalidModelError(source, f"region-based labels need 'regions_class_order' with one value per "
                                                f"region ({len(regions)} regions)")
            out[0] = LABEL_BACKGROUND
            kinds = [_name_kind(n) for n, _ in regions]
            for i, ((name, members), value) in enumerate(zip(regions, order)):
                kind = kinds[i]
                if kind == "mass":
                    # What a generic mass region writes is painted over by any later tumour region: the rest is cyst.
                    kind = "cyst" if "tumor" in kinds[i + 1:] else "tumor"
                out[int(value)] = _KIND_LABEL[kind]
    except (TypeError, ValueError) as exc:
        raise InvalidModelError(source, f"malformed 'labels' in dataset.json ({exc})") from None
    if not any(v != LABEL_BACKGROUND for v in out.values()):
        raise InvalidModelError(source, f"no label named kidney, tumor or cyst among {sorted(labels)}")
    return out


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


# ---------------------------------------------------------------------------------------------
# Model folder checks


def _load_json(path: Path) -> dict:
    from ..json_files import read_json_object

    return read_json_object(path, InvalidModelError)


def _hint(folder: Path) -> str:
    try:
        found = sorted(p.parent for p in folder.glob("*/dataset.json")) + sorted(p.parent for p in folder.glob("*/*/dataset.json"))
    except OSError:
        found = []
    if found:
        return f"; a model folder lies below it: {found[0]}"
    return ""


def check_model_folder(model_dir, folds: Sequence | None = (0,), checkpoint: str = CHECKPOINT_NAME):
    """Validate an nnU-Net model folder; returns (folder, dataset_json, plans, folds).

    ``folds=None`` uses every ``fold_N`` holding the checkpoint. Raises ``MissingFileError`` for a
    missing folder and ``InvalidModelError`` (naming the file) for a missing or broken part.
    """
    folder = Path(model_dir)
    if not folder.exists():
        raise MissingFileError(folder, "segmentation model folder not found")
    if not folder.is_dir():
        raise InvalidModelError(folder, "not a folder (give the nnU-Net model folder holding dataset.json, plans.json "
                                        "and fold_N/)")
    need = "an nnU-Net model folder holds dataset.json, plans.json and fold_N/" + checkpoint
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise InvalidModelError(folder / name, f"missing ({need}){_hint(folder)}")
    dataset_json = _load_json(folder / "dataset.json")
    plans = _load_json(folder / "plans.json")
    if "channel_names" not in dataset_json and "modality" not in dataset_json:
        raise InvalidModelError(folder / "dataset.json", "no 'channel_names'")
    if not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise InvalidModelError(folder / "plans.json", "no 'configurations'")
    output_label_map(dataset_json, folder / "dataset.json")
    available = sorted(p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint).is_file())
    if folds is None:
        folds = tuple(int(f) if f.isdigit() else f for f in available if f != "all") or tuple(available)
        if not folds:
            raise InvalidModelError(folder, f"no fold_N/{checkpoint} ({need})")
    else:
        folds = tuple(folds) if isinstance(folds, (list, tuple)) else (folds,)
        if not folds:
            raise InvalidModelError(folder, "no fold asked for")
        for f in folds:
            ck = folder / f"fold_{f}" / checkpoint
            if not ck.is_file():
                have = ", ".join(available) if available else "none"
                raise InvalidModelError(ck, f"missing (folds with {checkpoint}: {have})")
    return folder, dataset_json, plans, folds


# ---------------------------------------------------------------------------------------------
# Axis layout of the model's image reader


def reader_name(dataset_json: dict, plans: dict) -> str:
    name = dataset_json.get("overwrite_image_reader_writer")
    if not name or name == "None":
        name = plans.get("image_reader_writer") or "SimpleITKIO"
    return str(name)


def to_model_layout(volume: Volume, reader: str = "SimpleITKIO"):
    """(array (z, y, x) as the model's reader returns it, spacing (z, y, x), inverse function).

    ``inverse(seg)`` puts an array in the model layout back into ``volume.array``'s layout.
    """
    arr = volume.array
    spacing_zyx = [float(s) for s in volume.spacing[::-1]]
    if reader != "NibabelIOWithReorient":
        return arr, spacing_zyx, lambda seg: seg
    from nibabel.orientations import apply_orientation, io_orientation

    affine = np.eye(4)
    affine[:3, :3] = _RAS_FROM_LPS @ volume.direction @ np.diag(volume.spacing)
    affine[:3, 3] = _RAS_FROM_LPS @ volume.origin
    ornt = io_orientation(affine)                        # row a: output axis and flip of input axis (i, j, k)[a]
    inv = np.zeros_like(ornt)
    for a, (b, flip) in enumerate(ornt):
        inv[int(b)] = (a, flip)
    zooms = np.zeros(3)
    for a, (b, _) in enumerate(ornt):
        zooms[int(b)] = volume.spacing[a]
    model = np.ascontiguousarray(apply_orientation(arr.transpose(2, 1, 0), ornt).transpose(2, 1, 0))

    def inverse(seg):
        return np.ascontiguousarray(apply_orientation(np.asarray(seg).transpose(2, 1, 0), inv).transpose(2, 1, 0))

    return model, [float(z) for z in zooms[::-1]], inverse


# ---------------------------------------------------------------------------------------------


def _torch_device(device):
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device or "cpu").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RenalCLIPError(None, f"device '{device}' asked for but no CUDA GPU is available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RenalCLIPError(None, f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)") from None


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """nnU-Net prints progress and path warnings on stdout; keep stdout for our own output."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class SegmentationModel:
    """A trained nnU-Net v2 model, loaded once, predicting label maps for many CTs.

    ``device``: "cpu", "cuda", "cuda:N" or "auto". ``folds``: fold ids to ensemble, None = all
    present. ``mirroring``: nnU-Net's test-time mirroring (its default; about 8x slower in 3D).
    """

    def __init__(self, model_dir, device="cpu", folds: Sequence | None = (0,), checkpoint: str = CHECKPOINT_NAME,
                 mirroring: bool = True, tile_step_size: float = 0.5, verbose: bool = False):
        self.model_dir, self.dataset_json, self.plans, self.folds = check_model_folder(model_dir, folds, checkpoint)
        self.label_map = output_label_map(self.dataset_json, self.model_dir / "dataset.json")
        self._lut = _lookup_table(self.label_map)
        self.reader = reader_name(self.dataset_json, self.plans)
        channels = self.dataset_json.get("channel_names") or self.dataset_json.get("modality") or {"0": "CT"}
        self.n_channels = len(channels)
        self.device = _torch_device(device)
        self.verbose = verbose
        with _quiet(not verbose):
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirroring,
                                        perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            try:
                predictor.initialize_from_trained_model_folder(str(self.model_dir), use_folds=self.folds,
                                                               checkpoint_name=checkpoint)
            except Exception as exc:  # noqa: BLE001 - anything failing here is a problem of the model folder
                raise InvalidModelError(self.model_dir, f"cannot load the nnU-Net model "
                                                        f"({type(exc).__name__}: {exc})") from None
        self.predictor = predictor

    @property
    def label_names(self) -> dict[int, str]:
        """Our label values this model can produce, with their names."""
        return {v: LABEL_NAMES[v] for v in sorted(set(self.label_map.values())) if v}

    def predict(self, volume: Volume | Sequence[Volume]) -> Volume:
        """Label map (uint8: 0 background, 1 kidney, 2 tumour, 3 cyst) on the grid of ``volume``.

        A multi-channel model takes one Volume per channel, all on the same grid.
        """
        vols = [volume] if isinstance(volume, Volume) else list(volume)
        ref = vols[0]
        if len(vols) != self.n_channels:
            raise InvalidImageError(ref.source, f"the model takes {self.n_channels} input channel(s), "
                                                f"{len(vols)} image(s) given")
        if ref.array.ndim != 3:
            raise InvalidImageError(ref.source, f"expected a 3D image, got shape {ref.array.shape}")
        for v in vols[1:]:
            if v.array.shape != ref.array.shape or not np.allclose(v.spacing, ref.spacing) or \
                    not np.allclose(v.origin, ref.origin, atol=1e-3) or not np.allclose(v.direction, ref.direction, atol=1e-5):
                raise InvalidImageError(v.source, "channels of a multi-channel model must share one grid")
        layouts = [to_model_layout(v, self.reader) for v in vols]
        data = np.stack([a for a, _, _ in layouts]).astype(np.float32, copy=False)
        spacing_zyx, inverse = layouts[0][1], layouts[0][2]
        with _quiet(not self.verbose):
            seg = self.predictor.predict_single_npy_array(data, {"spacing": spacing_zyx}, None, None, False)
        seg = inverse(np.asarray(seg))
        if seg.shape != ref.array.shape:  # nnU-Net resamples back to the input shape; anything else is a bug
            raise RuntimeError(f"nnU-Net returned shape {seg.shape} for an input of shape {ref.array.shape}")
        seg = seg.astype(np.int64, copy=False)
        labels = np.where(seg < len(self._lut), self._lut[np.clip(seg, 0, len(self._lut) - 1)], 0).astype(np.uint8)
        src = f"{ref.source}_segmentation" if ref.source else "segmentation"
        return Volume(labels, ref.spacing.copy(), ref.origin.copy(), ref.direction.copy(), src)

    def predict_file(self, image, out) -> Volume:
        """Read a CT (file or DICOM folder), predict, write the label map atomically to ``out``."""
        from ..io import read_volume, write_volume

        labels = self.predict(read_volume(image))
        write_volume(labels, out)
        return labels


def segment(volume: Volume | Sequence[Volume], model_dir, device="cpu", folds: Sequence | None = (0,),
            checkpoint: str = CHECKPOINT_NAME, mirroring: bool = True) -> Volume:
    """Label map of ``volume`` on its own grid (loads the model each call: use ``SegmentationModel`` for many)."""
    return SegmentationModel(model_dir, device=device, folds=folds, checkpoint=checkpoint,
                             mirroring=mirroring).predict(volume)


def dice(pred: np.ndarray, truth: np.ndarray, label) -> float:
    """Dice of ``label`` (an int or a set of ints) between two label arrays; nan if both are empty."""
    labels = [label] if np.isscalar(label) else list(label)
    a, b = np.isin(pred, labels), np.isin(truth, labels)
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


__all__ = ["CHECKPOINT_NAME", "InvalidModelError", "SegmentationModel", "check_model_folder", "dice",
           "output_label_map", "reader_name", "segment", "to_model_layout"]
