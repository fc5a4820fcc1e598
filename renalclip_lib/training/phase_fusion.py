"""Phase-fusion ablation: a model trained on random single phases, evaluated by averaging its
logits over the phases a patient has (Extended Data Fig. 9).

Settings are cumulative phase sets; a patient contributes the phases of the set it has (at least
one: otherwise its evaluation phase, arterial else venous).

Usage: ``evaluate_phase_fusion(model, rois, units, tasks, out_dir)`` -> one predictions CSV per setting
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.datasets import RoiDataset, Unit
from .common import make_loader, predict_logits, softmax
from .predictions import write_predictions

FUSION_SETTINGS = {"single": (), "A+V": ("A", "V"), "N+A+V": ("N", "A", "V"), "N+A+V+D": ("N", "A", "V", "D")}


def phase_means(compute, rois, units: list[Unit], phases: tuple, batch_size: int = 8) -> dict:
    """Per unit, the mean over the ``phases`` it has of ``compute(loader) -> {name: rows}`` (rows in
    the loader's order); a unit with none of them, or every unit for an empty tuple, contributes its
    evaluation phase."""
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros(len(units))

    def add(idx: list[int], phase) -> None:
        subset = [units[i] for i in idx]
        ds = RoiDataset(rois, subset, np.zeros((len(subset), 1)), phase=phase, raw=True)
        for k, v in compute(make_loader(ds, batch_size, False)).items():
            sums.setdefault(k, np.zeros((len(units),) + v.shape[1:]))[idx] += v
        counts[idx] += 1

    for phase in phases:
        idx = [i for i, u in enumerate(units) if phase in u.rows]
        if idx:
            add(idx, phase)
    rest = [i for i in range(len(units)) if counts[i] == 0]
    if rest:
        add(rest, None)
    return {k: v / counts.reshape((-1,) + (1,) * (v.ndim - 1)) for k, v in sums.items()}


def fused_logits(model, rois, units: list[Unit], phases: tuple, device, batch_size: int = 8) -> dict:
    """Logits per head averaged over ``phases`` available per unit (empty tuple: evaluation phase)."""
    return phase_means(lambda loader: predict_logits(model, loader, device)[0], rois, units, phases, batch_size)


@torch.no_grad()
def evaluate_phase_fusion(model, rois, units: list[Unit], tasks, out_dir, device=torch.device("cpu")) -> dict:
    out = {}
    for name, phases in FUSION_SETTINGS.items():
        logits = fused_logits(model, rois, units, phases, device)
        probs = {t: softmax(logits[t]) for t in tasks if t in logits}
        risk = logits["risk"].reshape(-1) if "risk" in logits else None
        out[name] = write_predictions(Path(out_dir) / f"predictions_{name}.csv", units, probs, risk)
    return out
