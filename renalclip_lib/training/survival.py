"""Stage "survival": a Cox head on the image encoder, trained on recurrence-free survival.

Trained on malignant cases with known RFS (Cox partial likelihood, Breslow ties); the one risk
score it gives is then evaluated on RFS, DSS and OS. The encoder starts from the fine-tuned model
(``survival.init``: "finetune", "attributes", "random", or a path).

Usage: ``run_survival(cfg, rois, train_units, val_units, eval_units, run_dir, out_dir)``
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..config import TrainConfig
from ..data.augment import train_augment
from ..data.datasets import RoiDataset, Unit, batch_images
from ..data.device_cache import device_cache
from ..errors import MissingFileError
from ..models import CoxHead, ImageTaskModel, load_task_model, save_image_model
from .common import encoder_from_init, head_and_backbone_groups, make_loader, predict_logits
from .cox_loss import cox_partial_nll
from .distributed import DistContext
from .finetune import unit_targets
from .loop import fit
from .predictions import write_predictions


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index (scikit-survival); NaN when no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    ok = ~(np.isnan(time) | np.isnan(event) | np.isnan(risk))
    if ok.sum() < 2 or event[ok].sum() == 0:
        return float("nan")
    try:
        return float(concordance_index_censored(event[ok].astype(bool), time[ok], risk[ok])[0])
    except ValueError:
        return float("nan")


class SurvivalTask:
    def __init__(self, model: ImageTaskModel):
        self.model = model
        self.meta: dict = {}

    def param_groups(self, model, cfg):
        return head_and_backbone_groups(model, cfg)

    def loss(self, model, batch, device):
        _, out = model(batch_images(batch, device))
        t = batch["target"].to(device)
        return cox_partial_nll(out["risk"], t[:, 0], t[:, 1]), {}

    def evaluate(self, model, loader, device) -> dict:
        out, _ = predict_logits(model, loader, device)
        y = loader.dataset.targets
        return {"val_cindex": concordance(y[:, 0], y[:, 1], out["risk"].reshape(-1))}

    def save_best(self, path, model, metrics):
        save_image_model(path, model.encoder, None, model.cox, meta={**self.meta, "metrics": metrics})


def _init_encoder(cfg: TrainConfig, run_dir, finetune_init: str):
    """The survival encoder: the fine-tuned model of ``finetune_init`` when ``survival.init`` is
    "finetune" (its joint model, else its malignancy model), otherwise as ``encoder_from_init``."""
    init = cfg.survival.init
    if init == "finetune":
        base = Path(run_dir) / "finetune" / Path(finetune_init).stem
        path = base / "best.pt" if (base / "best.pt").exists() else base / "malignancy" / "best.pt"
        if not path.exists():
            raise MissingFileError(path, "no fine-tuned encoder yet: run the 'finetune' stage first")
        init = str(path)
    return encoder_from_init(init, run_dir, cfg.model.width, cfg.model.embed_dim)


def run_survival(cfg: TrainConfig, rois, train_units: list[Unit], val_units: list[Unit], eval_units: list[Unit],
                 run_dir, out_dir, log=None, ctx: DistContext | None = None, finetune_init: str = "attributes",
                 seed: int | None = None) -> dict:
    """Train the Cox head (and encoder) on ``train_units`` and write risk predictions for ``eval_units``.

    ``finetune_init`` names the fine-tuning run (a folder under ``run_dir/finetune``) the encoder
    comes from when ``survival.init`` is "finetune"; ``seed`` overrides ``survival.optim.seed``."""
    sv = cfg.survival
    opt = sv.optim if seed is None else type(sv.optim)(**{**sv.optim.__dict__, "seed": seed})
    ctx = ctx or DistContext.from_env(cfg.device)
    torch.manual_seed(opt.seed)
    encoder = _init_encoder(cfg, run_dir, finetune_init)
    model = ImageTaskModel(encoder, {}, CoxHead(in_dim=encoder.feature_dim))
    if sv.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    cols = [f"{sv.endpoint}_time", f"{sv.endpoint}_event"]
    task = SurvivalTask(model)
    task.meta = {"stage": "survival", "endpoint": sv.endpoint, "seed": opt.seed, "width": cfg.model.width}
    train_ds = RoiDataset(rois, train_units, unit_targets(train_units, cols), augment=train_augment(True, opt.seed, opt.augment_on, opt.augment_rotate),
                          seed=opt.seed)
    val_ds = RoiDataset(rois, val_units, unit_targets(val_units, cols), raw=True)
    on_device = device_cache(rois, opt.device_cache, ctx.device, log)
    result = fit(task, make_loader(train_ds, opt.batch_size, True, opt.num_workers, None, opt.seed, ctx.distributed, on_device),
                 make_loader(val_ds, opt.batch_size, False, device_cache=on_device), out_dir, opt, ctx, log)
    if ctx.is_main:
        best = load_task_model(Path(out_dir) / "best.pt").to(ctx.device)
        eval_ds = RoiDataset(rois, eval_units, unit_targets(eval_units, cols), raw=True)
        out, _ = predict_logits(best, make_loader(eval_ds, opt.batch_size, False, device_cache=on_device), ctx.device)
        write_predictions(Path(out_dir) / "predictions.csv", eval_units, {}, risk=out["risk"].reshape(-1))
        train_eval = RoiDataset(rois, train_units, unit_targets(train_units, cols), raw=True)
        train_out, _ = predict_logits(best, make_loader(train_eval, opt.batch_size, False, device_cache=on_device), ctx.device)
        write_risk_threshold(Path(out_dir) / RISK_THRESHOLD_FILE, train_out["risk"].reshape(-1), sv.endpoint)
    return result


RISK_THRESHOLD_FILE = "risk_threshold.json"


def write_risk_threshold(path, train_risk: np.ndarray, endpoint: str) -> Path:
    """The risk-group cut-off the paper uses: the median Cox risk of the training cohort."""
    risk = np.asarray(train_risk, float)
    risk = risk[np.isfinite(risk)]
    return atomic_write_json(path, {"endpoint": endpoint, "threshold": float(np.median(risk)) if risk.size else None,
                                    "n_train": int(risk.size), "rule": "median risk of the training cohort"})
