"""Risk stratification and Cox regression (as the paper's Fig. 3f-g, 4b-e and Tables 17-18).

- ``km_split``: high risk = risk score above the cohort's median (ties at the median go low); two-sided
  log-rank p; hazard ratio high vs low from a univariate Cox model on the group (Wald CI and p).
- ``cox_table``: univariate Cox for the risk score (HR per unit of score), stage and grade (each as a
  categorical variable against its lowest level), and one multivariate model with all three; rows with
  a missing stage or grade are left out of the models that use it (n says how many were used).
Ties: Efron's method (``cox.py``, checked against lifelines). A model without a finite estimate
(a group without events, a constant covariate) gives null values with the reason.

Usage: ``km = km_split(time, event, risk)``; ``rows = cox_table(time, event, risk, stage, grade)``
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .bootstrap import MetricValue, null
from .cox import CoxNotEstimable, cox_fit, logrank


@dataclass
class KMSplit:
    high: np.ndarray          # bool per patient
    cutoff: float
    logrank_p: MetricValue
    hr: MetricValue           # high vs low, Wald CI
    hr_p: MetricValue


@dataclass
class CoxRow:
    variable: str             # "Risk score", "Stage II vs Stage I", ...
    key: str                  # metric-name suffix: "risk", "stage II vs I"
    uni_hr: MetricValue
    uni_p: MetricValue
    multi_hr: MetricValue | None = None
    multi_p: MetricValue | None = None


@dataclass
class CoxTable:
    rows: list[CoxRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fit(df: pd.DataFrame) -> tuple[dict | None, str | None]:
    """Fit a Cox model on columns T, E + covariates: ({covariate: (hr, lo, hi, p)}, None) or (None, why)."""
    covariates = [c for c in df.columns if c not in ("T", "E")]
    if df["E"].sum() == 0:
        return None, "no events"
    constant = [c for c in covariates if df[c].nunique() < 2]
    if constant:
        return None, f"{constant[0]} does not vary among these patients"
    try:
        fit = cox_fit(df["T"].to_numpy(float), df["E"].to_numpy(bool), df[covariates].to_numpy(float))
    except CoxNotEstimable as exc:
        return None, f"Cox model not estimable: {exc}"
    return {c: (fit.hr[i], fit.ci_low[i], fit.ci_high[i], fit.p[i]) for i, c in enumerate(covariates)}, None


def _hr(summary: dict | None, covariate: str, n: int, why: str | None) -> tuple[MetricValue, MetricValue]:
    if summary is None:
        return null(why or "not estimable", n), null(why or "not estimable", n)
    hr, lo, hi, p = (float(v) for v in summary[covariate])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        why = "95% CI unbounded (too few patients or events in a category)"
        return MetricValue(hr, None, None, n, why), MetricValue(p, None, None, n, why)
    return MetricValue(hr, lo, hi, n), MetricValue(p, None, None, n)


def km_split(time, event, risk) -> KMSplit:
    time, event, risk = np.asarray(time, float), np.asarray(event, bool), np.asarray(risk, float)
    cutoff = float(np.median(risk))
    high = risk > cutoff
    n = len(time)
    if high.all() or not high.any():
        why = "the median split leaves one group empty (tied risk scores)"
        return KMSplit(high, cutoff, null(why, n), null(why, n), null(why, n))
    if not event.any():
        why = "no events (all censored)"
        return KMSplit(high, cutoff, null(why, n), null(why, n), null(why, n))
    _, p_lr = logrank(time, event, high)
    summary, why = _fit(pd.DataFrame({"T": time, "E": event.astype(int), "high_risk": high.astype(float)}))
    hr, p = _hr(summary, "high_risk", n, why)
    return KMSplit(high, cutoff, MetricValue(p_lr, None, None, n), hr, p)


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5}


def level_order(values) -> list[str]:
    """Sort categorical levels naturally: 1 < 2 < 10, I < II < IV, 'Stage II' < 'Stage III'."""
    def key(v: str):
        m = re.search(r"(\d+(?:\.\d+)?)|\b([ivx]+)\b", v.lower())
        if m and m.group(1):
            return (0, float(m.group(1)), v)
        if m and m.group(2) in _ROMAN:
            return (0, float(_ROMAN[m.group(2)]), v)
        return (1, 0.0, v)
    return sorted({str(v) for v in values}, key=key)


def _label(name: str, level: str) -> str:
    return level if level.lower().startswith(name.lower()) else f"{name} {level}"


def _dummies(values: pd.Series, name: str) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    levels = level_order(values.dropna())
    ref = levels[0]
    cols, meta = {}, []
    for lev in levels[1:]:
        col = f"{name}_{len(meta)}"
        cols[col] = (values.astype(str) == lev).astype(float).where(values.notna())
        meta.append((col, f"{_label(name, lev)} vs {_label(name, ref)}", f"{name.lower()} {lev} vs {ref}"))
    return pd.DataFrame(cols, index=values.index), meta


def cox_table(time, event, risk, stage=None, grade=None) -> CoxTable:
    base = pd.DataFrame({"T": np.asarray(time, float), "E": np.asarray(event, bool).astype(int)})
    out = CoxTable()
    n = len(base)
    blocks = []                                     # (dummy frame, [(col, label, key)])
    for name, values in (("Stage", stage), ("Grade", grade)):
        if values is None:
            out.notes.append(f"no {name.lower()} column: the multivariate model is not adjusted for it")
            continue
        v = pd.Series(values, index=base.index, dtype=object)
        if v.notna().sum() == 0:
            out.notes.append(f"{name.lower()} is empty for every patient: not adjusted for it")
            continue
        d, meta = _dummies(v, name)
        if not meta:
            out.notes.append(f"{name.lower()} has one level only: not adjusted for it")
            continue
        blocks.append((d, meta))
    for d, meta in blocks:
        df = pd.concat([base, d], axis=1).dropna()
        summary, why = _fit(df)
        for col, label, key in meta:
            out.rows.append(CoxRow(label, key, *_hr(summary, col, len(df), why)))
    risk_df = base.assign(risk=np.asarray(risk, float))
    summary, why = _fit(risk_df)
    out.rows.append(CoxRow("Risk score", "risk", *_hr(summary, "risk", n, why)))
    if blocks:
        multi = pd.concat([risk_df] + [d for d, _ in blocks], axis=1).dropna()
        summary, why = _fit(multi)
        if len(multi) < n:
            out.notes.append(f"multivariate model on {len(multi)} of {n} patients (stage or grade missing)")
        for row in out.rows:
            col = "risk" if row.key == "risk" else next(c for d, meta in blocks for c, _, k in meta if k == row.key)
            row.multi_hr, row.multi_p = _hr(summary, col, len(multi), why)
    return out
