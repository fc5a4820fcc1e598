"""Synthetic prediction files for tests, the benchmark and trying ``renalclip evaluate`` out.

``synthetic_truth`` draws patients (labels, survival, stage, grade, reports) once; ``synthetic_predictions``
adds one model's scores whose quality grows with ``skill`` (0 = chance); ``synthetic_embeddings`` makes
image/text embeddings whose pairing is recoverable in proportion to ``skill``. Nothing here is
realistic medicine: it only exercises every column of the documented format.

Usage::

    truth = synthetic_truth({"internal": 100, "tcia": 300}, seed=0)
    synthetic_predictions(truth, skill=1.5, seed=1).to_csv("model.csv", index=False)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import columns as C

_WORDS = ("left right kidney mass lesion enhancing cystic solid exophytic endophytic cortex sinus hilum "
          "collecting system necrosis calcification margin heterogeneous homogeneous arterial venous phase "
          "tumor renal cell carcinoma clear cell papillary oncocytoma angiomyolipoma fat perinephric").split()


def synthetic_truth(cohorts: dict[str, int], seed: int = 0, reports: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = sum(cohorts.values())
    df = pd.DataFrame({
        C.PATIENT_ID: [f"P{i:05d}" for i in range(n)],
        C.COHORT: np.repeat(list(cohorts), list(cohorts.values())),
    })
    latent = rng.normal(size=n)                             # tumour burden, drives everything
    for comp in C.MULTICLASS_TASKS:
        z = latent + rng.normal(size=n)
        df[C.true_column(comp)] = np.digitize(z, np.quantile(z, [0.4, 0.75]))
    malignant = (latent + rng.normal(scale=1.0, size=n)) > -0.9
    df[C.true_column("malignancy")] = malignant.astype(int)
    df[C.true_column("aggressiveness")] = (malignant & (latent + rng.normal(size=n) > 0.6)).astype(int)
    df["_hazard"] = 0.8 * latent
    follow = rng.uniform(18, 130, n)                        # administrative censoring, months
    for k, ep in enumerate(C.SURVIVAL_TASKS):
        t_ev = rng.exponential(90 * np.exp(-df["_hazard"]) * (1 + 0.4 * k))
        df[C.time_column(ep)] = np.round(np.minimum(t_ev, follow), 1)
        df[C.event_column(ep)] = (t_ev <= follow).astype(int)
    df[C.STAGE] = np.array(["I", "II", "III", "IV"])[np.digitize(latent + rng.normal(size=n), [0.0, 0.8, 1.6])]
    df[C.GRADE] = np.digitize(latent + rng.normal(size=n), [-0.8, 0.3, 1.5]) + 1
    if reports:
        df[C.REPORT_TRUE] = [" ".join(rng.choice(_WORDS, 30)) for _ in range(n)]
    return df


def synthetic_predictions(truth: pd.DataFrame, skill: float = 1.0, seed: int = 1,
                          zeroshot: bool = True, reports: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(truth)
    out = truth.drop(columns=["_hazard"]).copy()
    for comp in C.MULTICLASS_TASKS:
        y = truth[C.true_column(comp)].to_numpy()
        logits = rng.normal(size=(n, 3)) + 0.5 * skill * np.eye(3)[y]
        p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 4)
        p[:, -1] = 1.0 - p[:, :-1].sum(axis=1)              # rows sum to 1 after rounding
        for k, col in enumerate(C.prob_columns(comp)):
            out[col] = p[:, k]
    for task in C.BINARY_TASKS:
        y = truth[C.true_column(task)].to_numpy()
        out[C.prob_columns(task)[0]] = np.round(1 / (1 + np.exp(-(skill * (y - 0.5) * 0.7 + rng.normal(size=n)))), 4)
        if zeroshot:
            z = 0.5 * skill * (y - 0.5) + rng.normal(size=n)
            out[C.prob_columns(f"zeroshot_{task}")[0]] = np.round(1 / (1 + np.exp(-z)), 4)
    out[C.RISK] = np.round(skill * truth["_hazard"].to_numpy() / 0.8 * 0.5 + rng.normal(scale=0.7, size=n), 4)
    if reports and C.REPORT_TRUE in truth:
        keep = min(0.95, 0.3 + 0.2 * skill)
        preds = []
        for ref in truth[C.REPORT_TRUE]:
            words = ref.split()
            preds.append(" ".join(w if rng.random() < keep else rng.choice(_WORDS) for w in words))
        out[C.REPORT_PRED] = preds
    return out


def synthetic_embeddings(truth: pd.DataFrame, skill: float = 1.0, seed: int = 2, dim: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    n = len(truth)
    shared = rng.normal(size=(n, dim))
    image = skill * shared + rng.normal(size=(n, dim)) * 3
    text = skill * shared + rng.normal(size=(n, dim)) * 3
    return {"image": image, "text": text, "patient_id": truth[C.PATIENT_ID].to_numpy().astype(str),
            "cohort": truth[C.COHORT].to_numpy().astype(str)}
