"""Torch datasets over the ROI cache: one sample per unit (a patient, or a patient's kidney).

Training draws a random available phase per sample, as the paper; evaluation uses the arterial
phase, else venous (``eval_phase``), or a given phase list for phase-fusion ablations.

Usage::

    rois, index = open_cache(cache, "lesion")
    units = group_units(index, lambda r: r["cohort"] == "internal" and r["split"] == "train")
    ds = RoiDataset(rois, units, targets, augment=TrainAugment(flip=True))
    rois, views = with_lesion_views(cache, rois, units, "clip.lesion_view")   # kidney units may read lesion ROIs
    ds = RoiDataset(rois, units, targets, augment=..., views=views, view_prob=0.5)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import PHASES, REFERENCE_PHASE_ORDER
from ..errors import MissingFileError
from ..preprocess.roi import crop_hu, to_model_input, window_torch
from .roi_cache import open_cache


@dataclass
class Unit:
    """One sample unit: its id, index rows (text dicts) and ROI row per phase."""

    unit: str
    rows: dict            # phase -> index row (dict of text)

    @property
    def first(self) -> dict:
        return next(iter(self.rows.values()))

    def eval_phase(self) -> str:
        for p in REFERENCE_PHASE_ORDER + PHASES:
            if p in self.rows:
                return p
        raise KeyError(self.unit)


def group_units(index: Sequence[dict], keep: Callable[[dict], bool] = lambda r: True) -> list[Unit]:
    """Index rows grouped by unit, in first-seen order, keeping rows for which ``keep`` is true."""
    units: dict[str, Unit] = {}
    for r in index:
        if keep(r):
            units.setdefault(r["unit"], Unit(r["unit"], {})).rows[r["phase"]] = r
    return list(units.values())


def parse_label(value: str) -> float:
    """A label cell as a number; blank, 'nan' or 'NA' mean unknown (NaN)."""
    if value is None:
        return float("nan")
    v = str(value).strip()
    if v == "" or v.lower() in ("nan", "na", "none"):
        return float("nan")
    return float(v)


class RoiDataset(Dataset):
    """Yields ``{"image": (1, 32, 128, 128), "target": (T,), "index": i}``.

    With an ``augment`` that runs on the training device (``data.augment.DeviceAugment``), ``image``
    is the raw cached ROI (1, 32, 140, 140) and ``aug`` its drawn parameters; the training loop
    augments the batch (``DeviceAugment.apply_batch``).

    ``targets`` is an (n_units, T) float array (NaN = unknown). With ``augment`` set, a random
    available phase is drawn per item; otherwise the evaluation phase (or ``phases`` fused by the
    caller) is used with the centre crop. With ``raw`` the evaluation item is that crop in HU (int16,
    half the bytes to copy; no float work in the loader) and ``batch_images`` windows it on the
    device. With ``rows_only`` (set by ``training.common.make_loader`` for a cache held on the device,
    ``data.device_cache``) an item carries the ROI's cache ``row`` instead of ``image``.

    With ``views`` (``lesion_views``), training reads a kidney's lesion-centred ROI instead of its
    kidney-centred one with probability ``view_prob``: the framing that fine-tuning, zero-shot and
    inference see (``attributes.lesion_view``, ``clip.lesion_view``). Evaluation never does.
    """

    def __init__(self, rois: np.ndarray, units: list[Unit], targets: np.ndarray, augment=None,
                 phase: str | None = None, seed: int = 0, raw: bool = False,
                 views: dict[int, Unit] | None = None, view_prob: float = 0.0):
        self.rois = rois
        self.units = units
        self.targets = np.asarray(targets, np.float32).reshape(len(units), -1)
        self.augment = augment
        self.phase = phase
        self.seed = seed
        self.raw = raw
        self.rows_only = False
        self.views, self.view_prob = views or {}, view_prob

    def __len__(self) -> int:
        return len(self.units)

    def item_rng(self, key, stream: int = 0) -> np.random.Generator:
        """Random stream ``stream`` of one item, keyed by (seed, epoch, index): ``key`` is the index
        or the ``(epoch, index)`` pair a training sampler yields (``training.common.EpochKeyedSampler``)."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        return np.random.default_rng([self.seed, int(epoch), int(i), stream])

    def __getitem__(self, key) -> dict:
        i = key[1] if isinstance(key, tuple) else key
        unit = self.units[i]
        if self.augment is not None and i in self.views and self.item_rng(key, stream=2).random() < self.view_prob:
            unit = self.views[i]
        return self.item_of(unit, key, i)

    def item_of(self, unit: Unit, key, i: int) -> dict:
        """Item ``i`` (``key`` as in ``item_rng``) read from ``unit``'s ROIs."""
        item = {"target": torch.from_numpy(self.targets[i]), "index": i}
        if self.augment is not None:
            rng = self.item_rng(key)
            row = int(unit.rows[list(unit.rows)[int(rng.integers(len(unit.rows)))]]["row"])
            if getattr(self.augment, "on_device", False):
                item["aug"] = torch.from_numpy(self.augment.draw(rng))
                if self.rows_only:
                    return {**item, "row": row}
                return {**item, "image": torch.from_numpy(np.array(self.rois[row]))[None]}
            self.augment.set_seed(int(rng.integers(2**31)))
            image = self.augment(np.asarray(self.rois[row], dtype=np.float32))
        else:
            row = int(unit.rows[self.phase if self.phase in unit.rows else unit.eval_phase()]["row"])
            if self.rows_only:
                return {**item, "row": row}
            image = torch.from_numpy(crop_hu(self.rois[row]) if self.raw else to_model_input(np.asarray(self.rois[row], np.float32)))
        return {**item, "image": image}


class StackedRois:
    """Two ROI arrays read as one: row ``len(first) + k`` is row ``k`` of the second. ``shape``,
    ``nbytes`` and row slices as an array's, so ``data.device_cache`` can copy it to a GPU."""

    def __init__(self, first, second):
        self.first, self.second, self.n = first, second, len(first)

    def __len__(self) -> int:
        return self.n + len(self.second)

    @property
    def shape(self) -> tuple:
        return (len(self),) + tuple(self.first.shape[1:])

    @property
    def nbytes(self) -> int:
        return int(self.first.nbytes + self.second.nbytes)

    def __getitem__(self, row):
        if isinstance(row, slice):
            rows = range(*row.indices(len(self)))
            parts = [np.asarray(self[r]) for r in rows]
            return np.stack(parts) if parts else np.zeros((0,) + self.shape[1:], self.first.dtype)
        return self.first[row] if row < self.n else self.second[row - self.n]


def lesion_views(kidney_rois, units: list[Unit], lesion_rois, lesion_index) -> tuple[StackedRois, dict[int, Unit]]:
    """The lesion-centred ROIs of the kidneys in ``units`` that hold the lesion, as alternative units
    whose rows point into ``StackedRois(kidney_rois, lesion_rois)``: ``{unit position: Unit}``."""
    n = len(kidney_rois)
    by_kidney = {(u.first["patient_id"], u.first["side"]): u for u in group_units(lesion_index)}
    views = {}
    for i, u in enumerate(units):
        lu = by_kidney.get((u.first["patient_id"], u.first["side"]))
        if lu is not None:
            views[i] = Unit(u.unit, {ph: {**r, "row": str(int(r["row"]) + n)} for ph, r in lu.rows.items()})
    return StackedRois(kidney_rois, lesion_rois), views


def with_lesion_views(cache_dir, kidney_rois, units: list[Unit], option: str) -> tuple[StackedRois, dict[int, Unit]]:
    """``lesion_views`` over the lesion ROIs of ``cache_dir``; a clear error naming ``option`` (the
    config key that asked for them) when that cache holds none."""
    if not (Path(cache_dir) / "done_lesion.json").exists():
        raise MissingFileError(str(cache_dir), f"{option} needs the lesion-centred ROIs: run "
                                               f"'renalclip preprocess --kind both' (or set {option}: 0)")
    lesion_rois, lesion_index = open_cache(cache_dir, "lesion")
    return lesion_views(kidney_rois, units, lesion_rois, lesion_index)


def batch_images(batch: dict, device) -> torch.Tensor:
    """A loader batch's images as the encoder's float input on ``device``: HU crops (integer dtype,
    ``RoiDataset(raw=True)``) are windowed there, windowed ones pass as they are."""
    x = batch["image"].to(device, non_blocking=True)
    return x if x.is_floating_point() else window_torch(x)
