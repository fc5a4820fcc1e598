"""The one training loop every stage uses (open_clip style: plain, readable, resumable).

AdamW with per-group learning rates, cosine schedule with linear warm-up (per step), bf16
autocast on GPU, gradient-norm clipping, DistributedDataParallel under torchrun, an atomic
``checkpoint_last.pt`` every epoch (model, optimiser, scheduler, RNG states), automatic resume
from it, ``best`` selection on a validation metric, a JSONL metrics log and ``finished.json``.
Each epoch's record holds ``train_loss`` and ``first_step_loss`` (the loss of its first global
batch, averaged over ranks: with ``common.make_loader``'s samplers one process and several give
the same value, the check that the distributed path computes what a single process computes).

A stage supplies a ``StageTask``: its model, parameter groups, the loss of a batch, a validation
function and how to save the best model.

Usage::

    result = fit(task, train_loader, val_loader, out_dir, OptimOptions(epochs=10, lr=5e-4))
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..atomic import atomic_torch_save, atomic_write_text, jsonable
from ..errors import ConfigError
from .distributed import DistContext, unwrap
from .options import BACKBONE, OptimOptions

LAST = "checkpoint_last.pt"
FINISHED = "finished.json"
METRICS_LOG = "metrics.jsonl"


class StageTask(Protocol):
    model: torch.nn.Module

    def param_groups(self, model: torch.nn.Module, cfg: OptimOptions) -> list[dict]: ...

    def loss(self, model: torch.nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict]: ...

    def evaluate(self, model: torch.nn.Module, loader, device: torch.device) -> dict: ...

    def save_best(self, path: Path, model: torch.nn.Module, metrics: dict) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def group_schedules(groups: list[dict], total_steps: int, warmup_steps: int, frozen_steps: int) -> list[Callable[[int], float]]:
    """One learning-rate factor per parameter group: the cosine with warm-up for all, except that the
    group named ``BACKBONE`` stays at 0 for its first ``frozen_steps`` (LP-FT: the heads fit the
    pre-trained features before the backbone moves; Kumar et al., ICLR 2022), then follows the
    same cosine from where it has come to."""
    cosine = cosine_with_warmup(total_steps, warmup_steps)

    def held_then_cosine(step: int) -> float:
        return 0.0 if step < frozen_steps else cosine(step)

    return [held_then_cosine if frozen_steps and g.get("name") == BACKBONE else cosine for g in groups]


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].astype(np.int64).tolist(),
            "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"]))
    random.setstate((3, tuple(state["python"]), None))


def fit(task: StageTask, train_loader, val_loader, out_dir, cfg: OptimOptions,
        ctx: DistContext | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train ``task.model``; resume from ``out_dir/checkpoint_last.pt`` if present.

    Returns ``{"best": value, "best_epoch": e, "epochs": n, "history": [...]}``; writes
    ``best.pt`` through ``task.save_best`` on the main rank.
    """
    ctx = ctx or DistContext()
    out = Path(out_dir)
    seed_everything(cfg.seed + ctx.rank)
    model = ctx.wrap(task.model)
    groups = task.param_groups(unwrap(model), cfg)
    if cfg.head_only_epochs and not any(g.get("name") == BACKBONE for g in groups):
        raise ConfigError(None, "optim.head_only_epochs: this stage trains no separate backbone (set it to 0)")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_schedules(
        groups, total, int(round(cfg.warmup_ratio * total)), cfg.head_only_epochs * steps_per_epoch))
    use_amp = cfg.amp == "bf16" and ctx.device.type == "cuda"
    start_epoch, best, best_epoch, history = 0, None, -1, []

    last = out / LAST
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        history = list(state.get("history", []))
        _set_rng_state(state["rng"])
        if log:
            log(f"resumed from {last} at epoch {start_epoch}")

    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        t0, n_seen, first_loss = time.time(), 0, None
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)   # summed on the device: no wait per step
        bar = _progress(train_loader, cfg.progress and ctx.is_main, f"epoch {epoch + 1}/{cfg.epochs}")
        for batch in bar:
            if isinstance(batch, dict) and "aug" in batch:
                batch = train_loader.dataset.augment.apply_batch(batch, ctx.device)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, _ = task.loss(model, batch, ctx.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            bs = _batch_size(batch)
            n_seen += bs
            loss_sum += loss.detach().double() * bs
            first_loss = loss.detach().double() if first_loss is None else first_loss
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(loss_sum) / max(1, n_seen):.4f}")
        train_loss = ctx.all_reduce_mean(float(loss_sum) / max(1, n_seen))
        record = {"epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss,
                  "first_step_loss": ctx.all_reduce_mean(float(first_loss) if first_loss is not None else float("nan")),
                  "lr": scheduler.get_last_lr()[0],
                  "seconds": round(time.time() - t0, 2), "samples_per_s": round(n_seen * ctx.world_size / max(1e-9, time.time() - t0), 2)}
        if ctx.is_main:
            if val_loader is not None:
                record.update(task.evaluate(unwrap(model), val_loader, ctx.device))
            value = record.get(cfg.select_metric, record["train_loss"] if cfg.select_metric == "train_loss" else None)
            no_best_yet = best is None and epoch == cfg.epochs - 1   # metric never defined: keep the last
            if _better(value, best, cfg.select_mode) or no_best_yet:
                best, best_epoch = value, epoch
                task.save_best(out / "best.pt", unwrap(model), record)
            history.append(record)
            atomic_torch_save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                               "best_epoch": best_epoch, "history": history, "rng": _rng_state(),
                               "config": jsonable(asdict(cfg))}, last)
            atomic_write_text(out / METRICS_LOG, "".join(json.dumps(jsonable(h)) + "\n" for h in history))
            if log:
                log(json.dumps(jsonable(record)))
        ctx.barrier()

    result = {"best": best, "best_epoch": best_epoch, "epochs": cfg.epochs, "history": history}
    if ctx.is_main:
        atomic_write_text(out / FINISHED, json.dumps(jsonable({k: v for k, v in result.items() if k != "history"}), allow_nan=False))
    return result


def _batch_size(batch) -> int:
    if isinstance(batch, dict):
        batch = batch.get("image", next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0]) if hasattr(batch, "shape") else 1


def _progress(iterable, enabled: bool, desc: str):
    import sys

    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def is_finished(out_dir) -> bool:
    return (Path(out_dir) / FINISHED).exists() and (Path(out_dir) / "best.pt").exists()
