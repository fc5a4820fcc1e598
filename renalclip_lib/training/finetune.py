"""Stage "finetune": the seven clinical classification tasks on the lesion ROI.

R, E, N, A, L (three classes each), malignancy and aggressiveness (binary), each with the
release's MLP head. Class-weighted cross-entropy and class-balanced sampling (on the first task)
counter the imbalance; the encoder starts from random weights (the paper's "CNN (Rand Init)"),
the attribute-pretrained or the contrastive encoder, or a file. ``joint`` trains one model with
all heads (fast); otherwise one model per task, as in the paper.

Every run writes ``predictions.csv`` (the evaluation's format, one row per patient of every
validation and test cohort) next to ``best.pt``.

Usage: ``run_finetune(cfg, cache_dir, run_dir, out_dir, init="attributes")``
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.augment import train_augment
from ..data.datasets import RoiDataset, Unit, batch_images, parse_label
from ..data.device_cache import device_cache
from ..errors import ConfigError
from ..models import ClassifierHead, ImageTaskModel, load_checkpoint, save_image_model
from ..tasks import TASKS
from .common import (auc_score, class_weights, encoder_from_init, head_and_backbone_groups, init_path, make_loader,
                     masked_cross_entropy, nanmean, predict_logits, softmax)
from .distributed import DistContext
from .head_transfer import transfer_question_heads
from .loop import fit
from .predictions import write_predictions

CLASSIFICATION_TASKS = ("renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy", "aggressiveness")


def unit_targets(units: list[Unit], columns) -> np.ndarray:
    return np.array([[parse_label(u.first.get(c, "")) for c in columns] for u in units], np.float32).reshape(len(units), -1)


class FinetuneTask:
    """Loss and validation of classification heads on a shared encoder."""

    def __init__(self, model: ImageTaskModel, tasks: list[str], weights: dict):
        self.model = model
        self.tasks = tasks
        self.weights = {t: torch.as_tensor(w, dtype=torch.float32) for t, w in weights.items()}
        self.meta: dict = {}

    def param_groups(self, model, cfg):
        return head_and_backbone_groups(model, cfg)

    def loss(self, model, batch, device):
        _, logits = model(batch_images(batch, device))
        target = batch["target"].to(device)
        losses = {t: masked_cross_entropy(logits[t], target[:, i], self.weights[t]) for i, t in enumerate(self.tasks)}
        return sum(losses.values()), {f"loss_{t}": v.detach() for t, v in losses.items()}

    def evaluate(self, model, loader, device) -> dict:
        logits, _ = predict_logits(model, loader, device)
        targets = loader.dataset.targets
        out = {}
        for i, t in enumerate(self.tasks):
            out[f"val_auc_{t}"] = auc_score(targets[:, i], softmax(logits[t]))
        out["val_auc"] = nanmean(out[f"val_auc_{t}"] for t in self.tasks)
        return out

    def save_best(self, path, model, metrics):
        save_image_model(path, model.encoder, dict(model.classifiers), meta={**self.meta, "metrics": metrics})


def build_model(encoder, tasks, freeze_encoder: bool) -> ImageTaskModel:
    heads = {t: ClassifierHead(len(TASKS[t].classes), in_dim=encoder.feature_dim) for t in tasks}
    model = ImageTaskModel(encoder, heads)
    if freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


def run_finetune(cfg: TrainConfig, rois, train_units: list[Unit], val_units: list[Unit], eval_units: list[Unit],
                 run_dir, out_dir, init: str, tasks=None, seed: int | None = None, log=None,
                 ctx: DistContext | None = None) -> dict:
    """Train one model on ``tasks`` (all configured tasks by default) and predict ``eval_units``."""
    ft = cfg.finetune
    tasks = list(tasks or ft.tasks)
    optim = ft.optim if seed is None else type(ft.optim)(**{**ft.optim.__dict__, "seed": seed})
    ctx = ctx or DistContext.from_env(cfg.device)
    torch.manual_seed(optim.seed)
    encoder = encoder_from_init(init, run_dir, cfg.model.width, cfg.model.embed_dim)
    model = build_model(encoder, tasks, ft.freeze_encoder)
    started = []
    if ft.head_init == "attributes":
        if init == "random":
            raise ConfigError(None, "finetune.head_init 'attributes' needs the attribute checkpoint's heads: "
                                    "not with init 'random'")
        source = init_path(init, run_dir)
        started = transfer_question_heads(model.classifiers, load_checkpoint(source).classifiers, source)
        if log and ctx.is_main:
            log(f"heads started from their questions: {', '.join(started) or 'none'}")
    y_train = unit_targets(train_units, tasks)
    weights = {t: class_weights(y_train[:, i], len(TASKS[t].classes)) for i, t in enumerate(tasks)}
    sample_w = None
    if ft.class_balanced:
        w0 = weights[tasks[0]]
        y0 = y_train[:, 0]
        sample_w = np.where(np.isnan(y0), 1.0, w0[np.nan_to_num(y0).astype(int)])
    task = FinetuneTask(model, tasks, weights)
    task.meta = {"stage": "finetune", "init": init, "tasks": tasks, "seed": optim.seed, "width": cfg.model.width,
                 "heads_from_questions": started}
    train_ds = RoiDataset(rois, train_units, y_train, augment=train_augment(ft.flip, optim.seed, optim.augment_on, optim.augment_rotate), seed=optim.seed)
    val_ds = RoiDataset(rois, val_units, unit_targets(val_units, tasks), raw=True)
    on_device = device_cache(rois, optim.device_cache, ctx.device, log)
    train_loader = make_loader(train_ds, optim.batch_size, True, optim.num_workers, sample_w, optim.seed, ctx.distributed, on_device)
    val_loader = make_loader(val_ds, optim.batch_size, False, device_cache=on_device)
    result = fit(task, train_loader, val_loader, out_dir, optim, ctx, log)
    if ctx.is_main:
        best = Path(out_dir) / "best.pt"
        from ..models import load_task_model

        model = load_task_model(best).to(ctx.device)
        eval_ds = RoiDataset(rois, eval_units, unit_targets(eval_units, tasks), raw=True)
        logits, _ = predict_logits(model, make_loader(eval_ds, optim.batch_size, False, device_cache=on_device), ctx.device)
        probs = {t: softmax(logits[t]) for t in tasks}
        write_predictions(Path(out_dir) / "predictions.csv", eval_units, probs)
    return result
