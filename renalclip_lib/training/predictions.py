"""Write predictions in the format ``renalclip evaluate`` reads (one row per patient).

Columns: ``patient_id``, ``cohort``, ``split``; per classification task ``<task>_true`` and
``<task>_prob`` (binary: probability of class 1) or ``<task>_prob_0..C-1`` (R.E.N.A.L.); ``risk``
for survival models; and the ground truth columns the evaluation needs alongside: ``rfs_time``,
``rfs_event``, ``dss_time``, ``dss_event``, ``os_time``, ``os_event``, ``stage``, ``grade``.

Usage: ``write_predictions("predictions.csv", units, {"malignancy": probs}, risk=None)``
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..tasks import TASKS

PASSTHROUGH = ("rfs_time", "rfs_event", "dss_time", "dss_event", "os_time", "os_event", "stage", "grade")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{float(v):.6g}"
    return str(v)


def prediction_rows(units, probs: dict, risk: np.ndarray | None = None) -> list[dict]:
    rows = []
    for i, u in enumerate(units):
        r0 = u.first
        row = {"patient_id": r0["patient_id"], "cohort": r0["cohort"], "split": r0.get("split", "")}
        for task, p in probs.items():
            row[f"{task}_true"] = r0.get(task, "")
            if TASKS[task].kind == "binary":
                row[f"{task}_prob"] = _fmt(p[i, 1] if p.ndim == 2 else p[i])
            else:
                for c in range(p.shape[1]):
                    row[f"{task}_prob_{c}"] = _fmt(p[i, c])
        if risk is not None:
            row["risk"] = _fmt(risk[i])
        for col in PASSTHROUGH:
            row[col] = r0.get(col, "")
        rows.append(row)
    return rows


def write_rows(path, rows: list[dict]) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    return Path(path)


def write_predictions(path, units, probs: dict, risk: np.ndarray | None = None) -> Path:
    return write_rows(path, prediction_rows(units, probs, risk))


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def merge_prediction_files(paths, out_path) -> Path:
    """Join prediction files on patient_id (later files add columns; shared columns must agree)."""
    merged: dict[str, dict] = {}
    for p in paths:
        for r in read_rows(p):
            merged.setdefault(r["patient_id"], {}).update({k: v for k, v in r.items() if v != "" or k not in merged.get(r["patient_id"], {})})
    return write_rows(out_path, list(merged.values()))
