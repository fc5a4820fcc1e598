"""Pieces every image stage shares: encoder initialisation, loaders, prediction, validation AUC.

Usage::

    enc = encoder_from_init("attributes", run_dir, width=16)
    probs = predict_logits(model, loader, device)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.datasets import batch_images
from ..data.device_cache import DeviceCacheLoader
from ..errors import ConfigError, MissingFileError
from ..models import ImageEncoder, load_checkpoint
from .options import BACKBONE, HEADS

# Where each stage writes its run inside a run folder.
STAGE_DIRS = {"attributes": "attributes", "clip": "clip", "finetune": "finetune", "survival": "survival"}


def init_path(init: str, run_dir) -> Path:
    """The checkpoint an init names: a stage's best ("attributes", "clip") or a file path."""
    if init in ("attributes", "clip"):
        path = Path(run_dir) / STAGE_DIRS[init] / "best.pt"
        if not path.exists():
            raise MissingFileError(path, f"no '{init}' encoder yet: run the '{init}' stage first")
        return path
    return Path(init)


def encoder_from_init(init: str, run_dir, width: int, embed_dim: int = 4096) -> ImageEncoder:
    """A fresh encoder ("random"), a stage's best encoder ("attributes", "clip"), or a file path."""
    if init == "random":
        return ImageEncoder(embed_dim=embed_dim, width=width)
    path = init_path(init, run_dir)
    enc = load_checkpoint(path).encoder
    if enc.width != width:
        raise ConfigError(str(path), f"encoder width {enc.width} differs from model.width {width} in the config")
    return enc


def head_and_backbone_groups(model, cfg) -> list[dict]:
    """AdamW groups: the backbone (trainable parameters outside ``model.head_parameters()``) at
    ``cfg.lr`` and the heads at ``cfg.head_lr`` (or ``cfg.lr``): the release's separate rates.
    Each group is named (``BACKBONE``, ``HEADS``) so the loop can hold the backbone still for
    ``cfg.head_only_epochs``."""
    head_ids = {id(p) for p in model.head_parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = [{"params": model.head_parameters(), "lr": cfg.head_lr or cfg.lr, "name": HEADS}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": cfg.lr, "name": BACKBONE})
    return groups


class WeightedEpochSampler(torch.utils.data.Sampler):
    """``len(weights)`` indices drawn with replacement in proportion to ``weights``, a function of
    (seed, epoch) alone, so a resumed run draws what an uninterrupted one would. Under torchrun
    every rank draws the same global sequence (padded to a multiple of the world size) and keeps
    its share as ``DistributedSampler`` does (rank r: positions r, r + R, ...), so R processes
    with batch b see the global batches of one process with batch b x R.

    Usage: ``make_loader(ds, 16, True, sample_weights=w)`` (what the loader does with weights)
    """

    def __init__(self, weights, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 1 or not len(w) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sample weights must be finite, non-negative and not all zero")
        self.weights, self.seed, self.epoch = w, int(seed), 0
        self.replicas, self.rank = int(num_replicas), int(rank)
        self.per_rank = math.ceil(len(w) / self.replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_rank * self.replicas, replacement=True, generator=g)
        return iter(drawn[self.rank::self.replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank


class EpochKeyedSampler(torch.utils.data.Sampler):
    """Wraps a training sampler so that it yields ``(epoch, index)``: the dataset then keys each
    item's random draws (phase, augmentation, report copy) by (seed, epoch, index), which makes an
    item's augmentation the same whichever process or worker loads it (one process and two give the
    same global batch) and repeat exactly after a resume."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_loader(dataset, batch_size: int, train: bool, num_workers: int = 0, sample_weights=None,
                seed: int = 0, distributed: bool = False, device_cache=None):
    """A DataLoader; for training, a seeded sampler, wrapped in ``EpochKeyedSampler`` when the dataset
    keys its random draws (has ``item_rng``, as ``data.datasets.RoiDataset``).

    With ``sample_weights`` the training sampler is ``WeightedEpochSampler`` (drawn with replacement,
    in proportion to the weights). Without them it is torch's ``DistributedSampler`` in every case
    (one replica when not distributed), so epoch e's order is a function of (seed, e) alone and rank r
    of R processes with batch b sees, in its k-th batch, its share of the k-th global batch of
    b x R that a single process would see. Where CUDA is present, batches come in pinned memory, so
    the copies to the GPU (``non_blocking``) overlap the work already queued there. With
    ``device_cache`` (``data.device_cache.DeviceRois``) a ``RoiDataset`` whose augmentation, if any,
    runs on the device yields rows only, read in this process, and the batches' ROIs are gathered
    from the device (``DeviceCacheLoader``).
    """
    augment = getattr(dataset, "augment", None)
    on_device = device_cache is not None and hasattr(dataset, "rows_only") and (
        augment is None or getattr(augment, "on_device", False))
    if on_device:
        dataset.rows_only, num_workers = True, 0
    sampler = None
    if train and sample_weights is not None:
        world = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
        sampler = WeightedEpochSampler(sample_weights, seed, *world)
    elif train:
        from torch.utils.data.distributed import DistributedSampler

        replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed, **replicas)
    if sampler is not None and hasattr(dataset, "item_rng"):
        sampler = EpochKeyedSampler(sampler)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers,
                        drop_last=train and len(sampler or dataset) > batch_size,
                        pin_memory=torch.cuda.is_available() and not on_device,
                        persistent_workers=num_workers > 0, worker_init_fn=_one_thread if num_workers else None)
    return DeviceCacheLoader(loader, device_cache) if on_device else loader


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)


@torch.no_grad()
def predict_logits(model, loader, device) -> tuple[dict, np.ndarray]:
    """Run a model over a loader: ({head: (n, C) logits}, features (n, F)) in dataset order."""
    model.eval()
    outs: dict[str, list] = {}
    feats, order = [], []
    for batch in loader:
        f, logits = model(batch_images(batch, device))
        feats.append(f.float().cpu())
        order.append(batch["index"])
        for k, v in logits.items():
            outs.setdefault(k, []).append(v.float().cpu())
    idx = torch.cat(order).numpy()
    inv = np.argsort(idx)
    return ({k: torch.cat(v).numpy()[inv] for k, v in outs.items()}, torch.cat(feats).numpy()[inv])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (binary) or macro one-vs-rest AUC (multi-class) over known labels; NaN if undefined."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, float)
    ok = ~np.isnan(y)
    y, p = y[ok].astype(int), np.asarray(probs)[ok]
    if len(np.unique(y)) < 2:
        return float("nan")
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 1:
        return float(roc_auc_score(y, p))
    present = np.unique(y)
    if len(present) < p.shape[1]:
        scores = [roc_auc_score(y == c, p[:, c]) for c in present]
        return float(np.mean(scores))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(p.shape[1]))))


def nanmean(values) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over rows whose label is known (not NaN and >= 0); 0 if none are.

    The mean is torch's (weighted by the class weights of the known rows), computed with masks
    rather than by selecting the rows, so nothing waits for the GPU."""
    ok = ~torch.isnan(target) & (target >= 0)
    labels = torch.where(ok, target, torch.zeros_like(target)).long()
    w = torch.ones(logits.shape[-1], device=logits.device) if weight is None else weight.to(logits.device, torch.float32)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    row_w = w[labels] * ok
    return (nll * row_w).sum() / row_w.sum().clamp_min(torch.finfo(torch.float32).tiny)


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019) over several label columns: an answer
    given by a fraction f of the samples that answer its column has r = max(1, sqrt(threshold / f)),
    and a sample is drawn in proportion to the largest r among its answers (NaN or < 0: unknown,
    no say). Rare answers (fat density) come up more often without reweighting the loss.

    Usage: ``make_loader(ds, 16, True, sample_weights=repeat_factors(y, 0.1))``
    """
    y = np.asarray(labels, float).reshape(len(labels), -1)
    r = np.ones(len(y))
    for col in y.T:
        known = ~np.isnan(col) & (col >= 0)
        if not known.any():
            continue
        values, counts = np.unique(col[known], return_counts=True)
        rc = np.maximum(1.0, np.sqrt(threshold / (counts / known.sum())))
        r[known] = np.maximum(r[known], rc[np.searchsorted(values, col[known])])
    return r


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 over present classes (absent classes: 0)."""
    y = np.asarray(labels, float)
    y = y[~np.isnan(y) & (y >= 0)].astype(int)
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    return w / w[present].mean() if present.any() else np.ones(n_classes)
