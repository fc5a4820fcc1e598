"""The ROI cache held whole on the training device, so a GPU never waits for the loader.

Loader processes that read, collate and pin 1.25 MB per ROI fed an H200 about half the samples/s
the published-width encoder can train at (README, Benchmarks). When the int16 cache fits on the
GPU, it is copied there once per stage; the dataset then yields only rows (and the augmentation
parameters), and ``DeviceCacheLoader`` gathers the ROIs on the device: the raw ROI for the batched
augmentation (``data.augment.DeviceAugment``), the centre crop in HU for evaluation (windowed by
``datasets.batch_images``). The items are the same as from the memory-mapped cache.

``optim.device_cache`` (every image stage): ``auto`` (on a GPU, when the cache takes at most
``DEVICE_CACHE_MAX_SHARE`` of its free memory), ``always`` (any device), ``never``.

Usage::

    rois_on_device = device_cache(rois, optim.device_cache, ctx.device, log)
    loader = make_loader(dataset, 16, True, device_cache=rois_on_device)
"""
from __future__ import annotations

import numpy as np
import torch

from ..constants import DEVICE_CACHE, DEVICE_CACHE_MAX_SHARE
from ..preprocess.roi import crop_xy

_UPLOAD_ROWS = 256


class DeviceRois:
    """An (N, 32, 140, 140) int16 ROI cache copied onto ``device``, read by rows."""

    def __init__(self, rois: np.ndarray, device):
        self.device = torch.device(device)
        self.tensor = torch.empty(tuple(rois.shape), dtype=torch.int16, device=self.device)
        for start in range(0, len(rois), _UPLOAD_ROWS):
            part = np.array(rois[start:start + _UPLOAD_ROWS], dtype=np.int16)
            self.tensor[start:start + len(part)].copy_(torch.from_numpy(part))

    def gather(self, rows: torch.Tensor, crop: bool) -> torch.Tensor:
        """ROIs of ``rows`` as (B, 1, 32, 140, 140) int16, or with ``crop`` the centre crop
        (B, 1, 32, 128, 128) in (z, x, y) order, as ``preprocess.roi.crop_hu`` makes it."""
        x = self.tensor.index_select(0, rows.to(self.device, torch.long))[:, None]
        return crop_xy(x).contiguous() if crop else x


class DeviceCacheLoader:
    """Wraps a DataLoader over a rows-only dataset (``RoiDataset.rows_only``): each batch gets its
    ``image`` gathered from ``rois`` (raw for batches with augmentation parameters, else the centre
    crop). ``dataset``, ``sampler`` and ``len`` are the wrapped loader's, as the training loop uses them."""

    def __init__(self, loader, rois: DeviceRois):
        self.loader, self.rois = loader, rois
        self.dataset, self.sampler = loader.dataset, loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch["image"] = self.rois.gather(batch.pop("row"), crop="aug" not in batch)
            yield batch


def device_cache(rois: np.ndarray, mode: str, device, log=None) -> DeviceRois | None:
    """The cache on ``device`` as ``mode`` says (module docstring), or None to read it from disk."""
    if mode not in DEVICE_CACHE:
        raise ValueError(f"device_cache must be one of {DEVICE_CACHE}, not {mode!r}")
    device = torch.device(device)
    if mode == "never" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if rois.nbytes > DEVICE_CACHE_MAX_SHARE * free:
            if log:
                log(f"ROI cache of {rois.nbytes / 2**30:.1f} GiB left on disk: over {DEVICE_CACHE_MAX_SHARE:.0%} "
                    f"of the GPU's {free / 2**30:.1f} GiB free")
            return None
    return DeviceRois(rois, device)


__all__ = ["DeviceCacheLoader", "DeviceRois", "device_cache"]
