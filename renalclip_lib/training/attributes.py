"""Stage "attributes": multi-task pre-training of the image encoder on the 14 report questions.

Each kidney of each patient is a sample (the kidney-centred ROI); each question has a linear head
``classifiers.text_label_<release id>`` as released; the loss is the cross-entropy of every
question over its known answers ("don't know" = -1 and blanks ignored), summed over questions;
with ``attributes.class_weighted`` each question's classes are weighted by inverse training
frequency (``common.class_weights``), so rare answers such as fat density count as much as common ones.
With ``attributes.lesion_view`` a lesion kidney is read, with that probability, from its
lesion-centred ROI (``preprocess --kind both``), the framing fine-tuning sees; validation then
reads every lesion kidney that way, so the selected epoch is the one best at that framing. With
``attributes.repeat_threshold`` kidneys are drawn by repeat-factor sampling
(``common.repeat_factors``): a kidney whose rarest answer is rare comes up more often.
The best epoch has the highest macro AUC over questions on the validation kidneys. No horizontal
flip: left and right must stay what the report says.

Usage: ``run_attributes(cfg, rois, train_units, val_units, out_dir)``
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig
from ..data.augment import train_augment
from ..data.datasets import RoiDataset, Unit, batch_images, with_lesion_views
from ..data.device_cache import device_cache
from ..models import AttributeHead, ImageEncoder, ImageTaskModel, save_image_model
from ..questionnaire import QUESTIONS
from .common import (auc_score, class_weights, make_loader, masked_cross_entropy, nanmean, predict_logits, repeat_factors,
                     softmax)
from .distributed import DistContext
from .finetune import unit_targets
from .loop import fit

HEAD_NAMES = [q.head_name for q in QUESTIONS]
TARGET_COLUMNS = [f"q_{q.key}" for q in QUESTIONS]


class AttributeTask:
    def __init__(self, model: ImageTaskModel, weights: list | None = None):
        self.model = model
        self.weights = [None] * len(HEAD_NAMES) if weights is None else [torch.as_tensor(w, dtype=torch.float32) for w in weights]
        self.meta: dict = {}

    def param_groups(self, model, cfg):
        return [{"params": list(model.parameters()), "lr": cfg.lr}]

    def loss(self, model, batch, device):
        _, logits = model(batch_images(batch, device))
        target = batch["target"].to(device)
        losses = [masked_cross_entropy(logits[h], target[:, i], self.weights[i]) for i, h in enumerate(HEAD_NAMES)]
        return torch.stack(losses).sum(), {}

    def evaluate(self, model, loader, device) -> dict:
        logits, _ = predict_logits(model, loader, device)
        targets = loader.dataset.targets
        aucs = {h: auc_score(np.where(targets[:, i] < 0, np.nan, targets[:, i]), softmax(logits[h]))
                for i, h in enumerate(HEAD_NAMES)}
        return {"val_macro_auc": nanmean(aucs.values()), **{f"val_auc_{h}": v for h, v in aucs.items()}}

    def save_best(self, path, model, metrics):
        save_image_model(path, model.encoder, dict(model.classifiers), meta={**self.meta, "metrics": metrics})


def run_attributes(cfg: TrainConfig, rois, train_units: list[Unit], val_units: list[Unit], out_dir, log=None,
                   ctx: DistContext | None = None) -> dict:
    opt = cfg.attributes.optim
    ctx = ctx or DistContext.from_env(cfg.device)
    torch.manual_seed(opt.seed)
    encoder = ImageEncoder(embed_dim=cfg.model.embed_dim, width=cfg.model.width)
    heads = {h: AttributeHead(q.n_classes, in_dim=encoder.feature_dim) for h, q in zip(HEAD_NAMES, QUESTIONS)}
    y_train = unit_targets(train_units, TARGET_COLUMNS)
    weights = ([class_weights(y_train[:, i], q.n_classes) for i, q in enumerate(QUESTIONS)]
               if cfg.attributes.class_weighted else None)
    task = AttributeTask(ImageTaskModel(encoder, heads), weights)
    task.meta = {"stage": "attributes", "seed": opt.seed, "width": cfg.model.width}
    y_val, views = unit_targets(val_units, TARGET_COLUMNS), None
    if cfg.attributes.lesion_view > 0:
        n = len(train_units)
        rois, views = with_lesion_views(cfg.data.cache, rois, train_units + val_units, "attributes.lesion_view")
        val_units = [views.get(n + j, u) for j, u in enumerate(val_units)]
        views = {i: v for i, v in views.items() if i < n}
    val_ds = RoiDataset(rois, val_units, y_val, raw=True)
    train_ds = RoiDataset(rois, train_units, y_train,
                          augment=train_augment(cfg.attributes.flip, opt.seed, opt.augment_on, opt.augment_rotate), seed=opt.seed,
                          views=views, view_prob=cfg.attributes.lesion_view)
    on_device = device_cache(rois, opt.device_cache, ctx.device, log)
    sample_w = repeat_factors(y_train, cfg.attributes.repeat_threshold) if cfg.attributes.repeat_threshold > 0 else None
    return fit(task, make_loader(train_ds, opt.batch_size, True, opt.num_workers, sample_w, opt.seed, ctx.distributed, on_device),
               make_loader(val_ds, opt.batch_size, False, device_cache=on_device), out_dir, opt, ctx, log)
