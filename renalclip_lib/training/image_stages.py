"""Run the image stages from a config: which units train, validate and get evaluated.

Splits, from the ROI cache index (the manifest's ``cohort`` and ``split`` columns):
- attributes: kidneys of ``data.pretrain_cohorts`` (split "val" validates; if none, the
  validation kidneys of ``data.train_cohorts``);
- finetune and survival: lesions of ``data.train_cohorts`` with split "train" train, "val"
  validates; every unit with split "val" or "test" of any non-pre-training cohort is predicted;
- survival trains on malignant cases with a known time for its end point.

Usage::

    run_stage("finetune", cfg, run_dir)                  # writes run_dir/finetune/<init>/
    run_data_efficiency(cfg, run_dir)                    # fractions x seeds x inits
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..config import TrainConfig
from ..data.datasets import Unit, group_units, parse_label
from ..data.roi_cache import open_cache
from ..errors import ConfigError
from ..tasks import TASKS
from .common import auc_score
from .loop import is_finished
from .predictions import merge_prediction_files, read_rows

EVAL_SPLITS = ("val", "test")


def _cache(cfg: TrainConfig) -> Path:
    if not cfg.data.cache:
        raise ConfigError(cfg.source, "'data.cache' is not set (the folder `renalclip preprocess` wrote)")
    return Path(cfg.data.cache)


def attribute_units(cfg: TrainConfig):
    rois, index = open_cache(_cache(cfg), "kidney")
    pre = set(cfg.data.pretrain_cohorts)
    train = group_units(index, lambda r: r["cohort"] in pre and r["split"] not in EVAL_SPLITS)
    val = group_units(index, lambda r: r["cohort"] in pre and r["split"] == "val")
    if not val:
        val = group_units(index, lambda r: r["cohort"] in set(cfg.data.train_cohorts) and r["split"] == "val")
    return rois, train, val


def lesion_units(cfg: TrainConfig):
    rois, index = open_cache(_cache(cfg), "lesion")
    tc, pre = set(cfg.data.train_cohorts), set(cfg.data.pretrain_cohorts)
    train = group_units(index, lambda r: r["cohort"] in tc and r["split"] == "train")
    val = group_units(index, lambda r: r["cohort"] in tc and r["split"] == "val")
    evaluated = group_units(index, lambda r: r["cohort"] not in pre and r["split"] in EVAL_SPLITS)
    return rois, train, val, evaluated


def _known_survival(units: list[Unit], endpoint: str) -> list[Unit]:
    return [u for u in units if parse_label(u.first.get("malignancy", "")) == 1
            and not math.isnan(parse_label(u.first.get(f"{endpoint}_time", "")))]


def subsample(units: list[Unit], fraction: float, seed: int, stratify: str = "malignancy") -> list[Unit]:
    """A seeded, stratified fraction of the units (at least one per stratum present)."""
    if fraction >= 1.0:
        return list(units)
    rng = np.random.default_rng(seed)
    strata: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        strata.setdefault(u.first.get(stratify, ""), []).append(i)
    keep = []
    for idx in strata.values():
        n = max(1, int(round(fraction * len(idx))))
        keep += list(rng.choice(idx, size=n, replace=False))
    return [units[i] for i in sorted(keep)]


def run_tag(cfg: TrainConfig, init: str, seed: int | None = None) -> str:
    """The folder name of a fine-tuning or survival run: the init's name, with ``_seed<N>`` when a
    seed other than ``finetune.optim.seed`` is asked for (so the configured seed keeps its folder)."""
    stem = Path(init).stem
    return stem if seed is None or seed == cfg.finetune.optim.seed else f"{stem}_seed{seed}"


def run_stage(stage: str, cfg: TrainConfig, run_dir, log=None, init: str | None = None,
              seed: int | None = None) -> dict:
    """Run one stage into ``run_dir/<stage>[/<run_tag>]``; a finished stage is not run again.

    ``seed`` overrides the fine-tuning and survival seeds (``renalclip train compare``'s repeats)."""
    run_dir = Path(run_dir)
    if stage == "attributes":
        from .attributes import run_attributes

        out = run_dir / "attributes"
        if is_finished(out):
            return {"skipped": str(out)}
        rois, train, val = attribute_units(cfg)
        return run_attributes(cfg, rois, train, val, out, log)
    init = init or cfg.finetune.init
    tag = run_tag(cfg, init, seed)
    if stage == "finetune":
        from .finetune import run_finetune

        out = run_dir / "finetune" / tag
        if is_finished(out) or (not cfg.finetune.joint and (out / "finished.json").exists()):
            return {"skipped": str(out)}
        rois, train, val, evaluated = lesion_units(cfg)
        if cfg.finetune.joint:
            return run_finetune(cfg, rois, train, val, evaluated, run_dir, out, init, seed=seed, log=log)
        results = {}
        for task in cfg.finetune.tasks:
            results[task] = run_finetune(cfg, rois, train, val, evaluated, run_dir, out / task, init, tasks=[task],
                                         seed=seed, log=log)
        merge_prediction_files([out / t / "predictions.csv" for t in cfg.finetune.tasks], out / "predictions.csv")
        atomic_write_text(out / "finished.json", "{}")
        return results
    if stage == "survival":
        from .survival import run_survival

        out = run_dir / "survival" / tag
        if is_finished(out):
            return {"skipped": str(out)}
        rois, train, val, evaluated = lesion_units(cfg)
        ep = cfg.survival.endpoint
        return run_survival(cfg, rois, _known_survival(train, ep), _known_survival(val, ep), evaluated,
                            run_dir, out, log, finetune_init=tag, seed=seed)
    raise ConfigError(cfg.source, f"unknown image stage '{stage}' (attributes, finetune, survival)")


def cohort_groups(cfg: TrainConfig, rows: list[dict]) -> dict[str, list[dict]]:
    """Evaluated rows as the paper groups them: internal validation and the external cohorts combined."""
    internal = set(cfg.data.train_cohorts)
    return {"internal_validation": [r for r in rows if r["cohort"] in internal],
            "combined_external": [r for r in rows if r["cohort"] not in internal]}


def task_auc(rows: list[dict], task: str) -> float:
    """AUC (macro one-vs-rest for R.E.N.A.L.) of a task from prediction rows; NaN if undefined."""
    if not rows:
        return float("nan")
    y = np.array([parse_label(r.get(f"{task}_true", "")) for r in rows])
    if TASKS[task].kind == "binary":
        p = np.array([parse_label(r.get(f"{task}_prob", "")) for r in rows])
    else:
        p = np.array([[parse_label(r.get(f"{task}_prob_{c}", "")) for c in range(len(TASKS[task].classes))] for r in rows])
    return auc_score(y, p)


def run_data_efficiency(cfg: TrainConfig, run_dir, log=None) -> Path:
    """Fine-tune every init on every fraction x seed; write ``data_efficiency.csv`` (AUC on all eval units).

    Columns: model, task, cohort, fraction, seed, metric, value: the data-efficiency input of
    ``renalclip evaluate --data-efficiency``; cohorts are ``cohort_groups``.
    """
    from .finetune import run_finetune
    from .loop import is_finished as done

    run_dir = Path(run_dir)
    de = cfg.data_efficiency
    rois, train, val, evaluated = lesion_units(cfg)
    records = []
    for init in de.inits:
        for frac in de.fractions:
            for seed in de.seeds:
                out = run_dir / "data_efficiency" / Path(init).stem / f"f{frac:g}_s{seed}"
                if not done(out):
                    subset = subsample(train, frac, seed)
                    run_finetune(cfg, rois, subset, val, evaluated, run_dir, out, init, seed=seed, log=log)
                for group, rows in cohort_groups(cfg, read_rows(out / "predictions.csv")).items():
                    for task in cfg.finetune.tasks:
                        auc = task_auc(rows, task)
                        records.append({"model": Path(init).stem, "task": task, "cohort": group, "fraction": frac,
                                        "seed": seed, "metric": "auc", "value": "" if math.isnan(auc) else f"{auc:.6f}"})
    path = run_dir / "data_efficiency.csv"
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["model", "task", "cohort", "fraction", "seed", "metric", "value"])
            w.writeheader()
            w.writerows(records)
    return path
