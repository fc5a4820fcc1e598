"""One command for the encoder comparison: random initialisation versus attribute pre-training.

Runs (or reuses) the attributes stage, then fine-tuning and survival from each encoder, and
tabulates AUC for the seven tasks and Harrell's C-index for RFS on the internal validation
cohort and on the external cohorts combined. Writes ``compare.md``, ``compare.json`` and, per
encoder, ``predictions_<init>.csv`` (classification and risk joined) for ``renalclip evaluate``.

Usage: ``renalclip train compare --config Resources/configs/demo.yaml --out run``
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..config import TrainConfig
from ..data.datasets import parse_label
from .image_stages import cohort_groups, lesion_units, run_stage, task_auc
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


def render_markdown(results: dict, tasks) -> str:
    lines = []
    for group in next(iter(results.values())):
        n = next(iter(results.values()))[group]["n"]
        lines += [f"### {group} (n = {n})", "",
                  "| task | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
        for key in list(tasks) + ["rfs_cindex", "dss_cindex", "os_cindex"]:
            vals = [results[m][group][key] for m in results]
            finite = [v for v in vals if not math.isnan(v)]
            best = max(finite) if finite else None
            cells = [f"**{_fmt(v)}**" if best is not None and v == best and len(finite) > 1 else _fmt(v) for v in vals]
            label = key if key.endswith("cindex") else f"{key} AUC"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_compare(cfg: TrainConfig, run_dir, log=None) -> dict:
    run_dir = Path(run_dir)
    run_stage("attributes", cfg, run_dir, log)
    results = {}
    for init in INITS:
        run_stage("finetune", cfg, run_dir, log, init=init)
        run_stage("survival", cfg, run_dir, log, init=init)
        results[init] = summarize(cfg, run_dir / "finetune" / init / "predictions.csv",
                                  run_dir / "survival" / init / "predictions.csv")
        merge_prediction_files([run_dir / "finetune" / init / "predictions.csv",
                                run_dir / "survival" / init / "predictions.csv"], run_dir / f"predictions_{init}.csv")
    atomic_write_json(run_dir / "compare.json", results)
    atomic_write_text(run_dir / "compare.md", render_markdown(results, cfg.finetune.tasks))
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
