"""One command for the encoder comparison: random initialisation versus attribute pre-training.

Runs (or reuses) the attributes stage, then fine-tuning and survival from each encoder, and
tabulates AUC for the seven tasks and Harrell's C-index for RFS on the internal validation
cohort and on the external cohorts combined. Writes ``compare.md``, ``compare.json`` and, per
encoder, ``predictions_<init>.csv`` (classification and risk joined) for ``renalclip evaluate``.

With ``compare.seeds`` the fine-tuning and survival runs are repeated per seed from the same
pre-trained encoder (``finetune/<init>_seed<N>``; the configured seed keeps ``finetune/<init>``)
and the table gives mean +- standard deviation over the seeds: on a cohort of a hundred patients
one run's AUC moves by a few hundredths with the seed alone. ``compare_seeds.json`` keeps each
seed's figures; ``predictions_<init>.csv`` stays the configured seed's run (else the first
seed's).

Usage: ``renalclip train compare --config Resources/configs/demo.yaml --out run``
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..config import TrainConfig
from ..data.datasets import parse_label
from .image_stages import cohort_groups, lesion_units, run_stage, run_tag, task_auc
from .predictions import merge_prediction_files, read_rows
from .survival import concordance

INITS = ("random", "attributes")


def _cindex(rows: list[dict], endpoint: str = "rfs") -> float:
    rows = [r for r in rows if parse_label(r.get("malignancy_true", r.get("malignancy", ""))) == 1]
    t = np.array([parse_label(r.get(f"{endpoint}_time", "")) for r in rows])
    e = np.array([parse_label(r.get(f"{endpoint}_event", "")) for r in rows])
    risk = np.array([parse_label(r.get("risk", "")) for r in rows])
    return concordance(t, e, risk) if len(rows) else float("nan")


def summarize(cfg: TrainConfig, finetune_csv: Path, survival_csv: Path | None) -> dict:
    rows = read_rows(finetune_csv)
    surv = {r["patient_id"]: r for r in read_rows(survival_csv)} if survival_csv and survival_csv.exists() else {}
    for r in rows:
        if r["patient_id"] in surv:
            r["risk"] = surv[r["patient_id"]].get("risk", "")
    out = {}
    for group, grows in cohort_groups(cfg, rows).items():
        metrics = {t: task_auc(grows, t) for t in cfg.finetune.tasks}
        for ep in ("rfs", "dss", "os"):
            metrics[f"{ep}_cindex"] = _cindex(grows, ep) if surv else float("nan")
        metrics["n"] = len(grows)
        out[group] = metrics
    return out


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _metric_keys(tasks) -> list[str]:
    return list(tasks) + ["rfs_cindex", "dss_cindex", "os_cindex"]


def aggregate_seeds(per_seed: dict, tasks) -> tuple[dict, dict]:
    """Mean and sample standard deviation over seeds of ``{seed: {init: {group: {metric: v}}}}``;
    a seed whose metric is undefined (NaN) is left out of that metric's mean."""
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    mean, sd = {}, {}
    for init in first:
        mean[init], sd[init] = {}, {}
        for group in first[init]:
            m, d = {"n": first[init][group]["n"], "seeds": len(seeds)}, {}
            for key in _metric_keys(tasks):
                vals = np.array([per_seed[s][init][group][key] for s in seeds], float)
                vals = vals[np.isfinite(vals)]
                m[key] = float(vals.mean()) if vals.size else float("nan")
                d[key] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
            mean[init][group], sd[init][group] = m, d
    return mean, sd


def render_markdown(results: dict, tasks, sd: dict | None = None) -> str:
    """The comparison table; with ``sd`` each cell is "mean +- sd" over the seeds."""
    lines = []
    first = next(iter(results.values()))
    for group in first:
        n = first[group]["n"]
        seeds = first[group].get("seeds", 1)
        title = f"### {group} (n = {n})" + (f", mean +- sd over {seeds} fine-tuning seeds" if seeds > 1 else "")
        lines += [title, "", "| task | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
        for key in _metric_keys(tasks):
            vals = [results[m][group][key] for m in results]
            finite = [v for v in vals if not math.isnan(v)]
            best = max(finite) if finite else None
            cells = []
            for m, v in zip(results, vals):
                cell = _fmt(v)
                if sd is not None and not math.isnan(v) and not math.isnan(sd[m][group][key]):
                    cell += f" +- {sd[m][group][key]:.3f}"
                cells.append(f"**{cell}**" if best is not None and v == best and len(finite) > 1 else cell)
            label = key if key.endswith("cindex") else f"{key} AUC"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_compare(cfg: TrainConfig, run_dir, log=None) -> dict:
    run_dir = Path(run_dir)
    run_stage("attributes", cfg, run_dir, log)
    configured = cfg.finetune.optim.seed
    seeds = list(cfg.compare.seeds) or [configured]
    kept = configured if configured in seeds else seeds[0]
    per_seed = {}
    for seed in seeds:
        override = None if seed == configured else seed
        per_seed[seed] = {}
        for init in INITS:
            tag = run_tag(cfg, init, override)
            run_stage("finetune", cfg, run_dir, log, init=init, seed=override)
            run_stage("survival", cfg, run_dir, log, init=init, seed=override)
            per_seed[seed][init] = summarize(cfg, run_dir / "finetune" / tag / "predictions.csv",
                                             run_dir / "survival" / tag / "predictions.csv")
            if seed == kept:
                merge_prediction_files([run_dir / "finetune" / tag / "predictions.csv",
                                        run_dir / "survival" / tag / "predictions.csv"], run_dir / f"predictions_{init}.csv")
    if len(seeds) == 1:
        results, sd = per_seed[seeds[0]], None
    else:
        results, sd = aggregate_seeds(per_seed, cfg.finetune.tasks)
        atomic_write_json(run_dir / "compare_seeds.json", {"seeds": seeds, "per_seed": {str(s): v for s, v in per_seed.items()},
                                                           "sd": sd})
    atomic_write_json(run_dir / "compare.json", results)
    atomic_write_text(run_dir / "compare.md", render_markdown(results, cfg.finetune.tasks, sd))
    return {"table": str(run_dir / "compare.md"), "results": results}


def run_phase_fusion(cfg: TrainConfig, run_dir, init: str) -> dict:
    """Evaluate the fine-tuned model of ``init`` under each phase-fusion setting."""
    import torch

    from ..models import load_task_model
    from .phase_fusion import evaluate_phase_fusion

    run_dir = Path(run_dir)
    base = run_dir / "finetune" / Path(init).stem
    model = load_task_model(base / "best.pt")
    surv = run_dir / "survival" / Path(init).stem / "best.pt"
    if surv.exists():
        model.cox = load_task_model(surv).cox
    rois, _, _, evaluated = lesion_units(cfg)
    out = base / "phase_fusion"
    files = evaluate_phase_fusion(model, rois, evaluated, cfg.finetune.tasks, out, torch.device("cpu"))
    results = {}
    for name, path in files.items():
        rows = read_rows(path)
        results[name] = {t: task_auc(rows, t) for t in cfg.finetune.tasks}
        results[name]["rfs_cindex"] = _cindex(rows) if surv.exists() else float("nan")
    atomic_write_json(out / "phase_fusion.json", results)
    return {"results": results, "folder": str(out)}
