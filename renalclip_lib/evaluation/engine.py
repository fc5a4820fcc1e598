"""Compute every metric for every model, task and cohort (the numbers behind metrics.json).

Rows of a cohort (or of a group of cohorts) are sorted by patient id, and the bootstrap weights depend
only on the cohort name, the number of patients and the base seed, so every model and task sees the
same resamples of the same patients when their files agree (paired comparisons). A metric that cannot
be computed is kept as a null ``MetricValue`` whose note says why; nothing is dropped silently.

Usage::

    results = evaluate(models, CohortSpec(), Settings(n_boot=1000, seed=0))
    results.metrics["RenalCLIP"]["malignancy"]["tcia"]["roc_auc"].value
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import columns as C
from . import metrics_classification as mc
from . import metrics_survival as ms
from .bootstrap import MetricValue, bootstrap_weights, null, seed_for, split_point, summarize, with_point
from .predictions import CohortSpec, ModelPredictions, PredictionsError, resolve_cohorts
from .retrieval import retrieval_hits
from .survival_stats import cox_table, km_split
from ..tasks import TASKS


@dataclass
class Settings:
    n_boot: int = 1000
    seed: int = 0
    times: tuple[float, ...] = C.DEFAULT_TIMES_MONTHS
    wordnet: object | None = None            # nltk WordNet reader for METEOR (None: METEOR is null)
    wordnet_note: str = "WordNet not found: METEOR not computed"


@dataclass
class Results:
    models: list[str]
    cohorts: list[str]
    members: dict[str, list[str]]
    metrics: dict = field(default_factory=dict)          # model -> task -> cohort -> metric -> MetricValue
    notes: list[str] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    predictions: dict = field(default_factory=dict)      # model -> ModelPredictions
    embeddings: dict = field(default_factory=dict)       # model -> embeddings dict
    data_efficiency: pd.DataFrame | None = None

    def get(self, model, task, cohort, metric) -> MetricValue | None:
        return self.metrics.get(model, {}).get(task, {}).get(cohort, {}).get(metric)

    def tasks(self) -> list[str]:
        present = {t for m in self.metrics.values() for t in m}
        return [t for t in C.ALL_TASKS if t in present]

    def cohorts_for(self, task: str) -> list[str]:
        present = {c for m in self.metrics.values() for c in m.get(task, {})}
        return [c for c in self.cohorts if c in present]

    def to_json(self) -> dict:
        return {m: {t: {c: {k: v.to_json() for k, v in mets.items()} for c, mets in cs.items()}
                    for t, cs in tasks.items()} for m, tasks in self.metrics.items()}


class _Weights:
    """Bootstrap weights with the point-estimate row on top, cached per (cohort, n)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache: dict = {}

    def __call__(self, cohort: str, n: int) -> np.ndarray:
        key = (cohort, n)
        if key not in self.cache:
            s = self.settings
            W = bootstrap_weights(n, s.n_boot, seed_for(s.seed, cohort)) if s.n_boot > 0 else None
            self.cache[key] = with_point(W, n)
        return self.cache[key]


def _summ(values: np.ndarray, n: int, why: str | None = None, **extra) -> MetricValue:
    point, boot = split_point(values)
    return summarize(point, boot, n, why, **extra)


def eval_classification(task: str, rows: pd.DataFrame, weights, cohort: str) -> dict[str, MetricValue]:
    true_col, prob_cols = C.true_column(task), C.prob_columns(task)
    lab = rows[rows[true_col].notna()]
    n = len(lab)
    if n == 0:
        return {}
    names = ("roc_auc",) if (task in C.MULTICLASS_TASKS or task in C.ZEROSHOT_TASKS) else C.BINARY_METRICS
    probs = lab[prob_cols].to_numpy(float)
    missing = np.isnan(probs).any(axis=1)
    if missing.any():
        col = next(c for c in prob_cols if lab[c].isna().any())
        return {m: null(f"{int(missing.sum())} of {n} labelled patients have no {col} (empty or NaN)", n)
                for m in names}
    y = lab[true_col].to_numpy(float).astype(int)
    classes = TASKS[task.removeprefix("zeroshot_")].classes
    absent = [k for k in range(len(classes)) if not (y == k).any()]
    if absent:
        why = (f"only one class ({classes[1 - absent[0]]}) among {n} patients" if len(classes) == 2 else
               f"class {absent[0]} ({classes[absent[0]]}) absent among {n} patients: macro AUC undefined")
        return {m: null(why, n) for m in names}
    W = weights(cohort, n)
    why = "a resample with a class missing"
    if task in C.MULTICLASS_TASKS:
        return {"roc_auc": _summ(mc.multiclass_auc(y, probs, W), n, why)}
    out = {"roc_auc": _summ(mc.binary_auc(y, probs[:, 0], W), n, why)}
    if task in C.BINARY_TASKS:
        for k, v in mc.binary_threshold_metrics(y, probs[:, 0], W).items():
            if k == "threshold":                       # +inf: no threshold beats "all negative"
                if np.isinf(v[0]):
                    out[k] = null("no threshold gives TPR - FPR > 0, so every patient is called negative", n)
                    continue
                v = np.where(np.isinf(v), np.nan, v)
            out[k] = _summ(v, n, why)
    return out


def survival_rows(rows: pd.DataFrame, ep: str) -> pd.DataFrame:
    """Patients with follow-up for this end point, malignant ones only when malignancy_true is given."""
    rows = rows[rows[C.time_column(ep)].notna()]
    if C.true_column(C.MALIGNANT_TASK) in rows:
        rows = rows[rows[C.true_column(C.MALIGNANT_TASK)] == 1]
    return rows


def cohort_rows(frame: pd.DataFrame, members: list[str]) -> pd.DataFrame:
    """A cohort's (or group's) patients sorted by patient id, the order the bootstrap indexes."""
    return frame[frame[C.COHORT].isin(members)].sort_values(C.PATIENT_ID, kind="mergesort")


def eval_survival(ep: str, rows: pd.DataFrame, weights, cohort: str, settings: Settings) -> dict[str, MetricValue]:
    t_col, e_col = C.time_column(ep), C.event_column(ep)
    rows = survival_rows(rows, ep)
    n = len(rows)
    if n == 0:
        return {}
    time = rows[t_col].to_numpy(float)
    event = rows[e_col].to_numpy(float).astype(bool)
    risk = rows[C.RISK].to_numpy(float)
    names = ["c_index"] + [C.td_metric(k, t) for k in ("td_auc", "td_cindex", "brier") for t in settings.times]
    names += ["km_logrank_p", "km_hr", "km_hr_p"]
    n_ev = int(event.sum())
    if np.isnan(risk).any():
        return {m: null(f"{int(np.isnan(risk).sum())} of {n} patients have no risk score (empty or NaN)", n)
                for m in names}
    if n < 2 or n_ev == 0:
        return {m: null("no events (all censored)" if n_ev == 0 else "fewer than two patients", n) for m in names}
    W = weights(cohort, n)
    extra = {"n_events": n_ev}
    sb = ms.SurvivalBootstrap(time, event, risk, W)
    out = {"c_index": _summ(sb.harrell(), n, "no comparable pair", **extra)}
    ok_times = ms.valid_times(time, settings.times)
    for t in settings.times:
        if t not in ok_times:
            why = f"{t:g} months is outside this cohort's follow-up [{time.min():g}, {time.max():g}) months"
            for k in ("td_auc", "td_cindex", "brier"):
                out[C.td_metric(k, t)] = null(why, n, **extra)
            continue
        why = "no case or control at this time, or a zero censoring survival, in some resamples"
        out[C.td_metric("td_auc", t)] = _summ(sb.td_auc(t), n, why, **extra)
        out[C.td_metric("td_cindex", t)] = _summ(sb.uno(t), n, why, **extra)
        out[C.td_metric("brier", t)] = _summ(sb.brier(t), n, why, **extra)
    split = km_split(time, event, risk)
    out.update(km_logrank_p=split.logrank_p, km_hr=split.hr, km_hr_p=split.hr_p)
    stage = rows[C.STAGE].to_numpy(object) if C.STAGE in rows else None
    grade = rows[C.GRADE].to_numpy(object) if C.GRADE in rows else None
    table = cox_table(time, event, risk, stage, grade)
    for row in table.rows:
        out[f"cox_hr[{row.key}]"] = _with(row.uni_hr, variable=row.variable)
        out[f"cox_p[{row.key}]"] = _with(row.uni_p, variable=row.variable)
        if row.multi_hr is not None:
            note = "; ".join(table.notes) or None
            out[f"cox_multi_hr[{row.key}]"] = _with(row.multi_hr, variable=row.variable, note=note)
            out[f"cox_multi_p[{row.key}]"] = _with(row.multi_p, variable=row.variable, note=note)
    return out


def _with(m: MetricValue, note: str | None = None, **extra) -> MetricValue:
    m.extra.update(extra)
    if note and not m.note:
        m.note = note
    return m


def _mean_metric(values: np.ndarray, W: np.ndarray, n: int, note: str | None = None) -> MetricValue:
    if np.isnan(values).all():
        return null(note or "not computed", n)
    point, boot = split_point((W @ values) / W.sum(axis=1))
    return summarize(point, boot, n)


def eval_report(rows: pd.DataFrame, scores: dict, weights, cohort: str, settings: Settings) -> dict:
    has_ref = rows[C.REPORT_TRUE].notna().to_numpy()
    n = int(has_ref.sum())
    if n == 0:
        return {}
    sel = rows[has_ref]
    missing = sel[C.REPORT_PRED].isna()
    if missing.any():
        return {m: null(f"{int(missing.sum())} of {n} patients with a reference report have no report_pred", n)
                for m in C.REPORT_METRICS}
    W = weights(cohort, n)
    pos = sel["_row"].to_numpy()
    return {m: _mean_metric(scores[m][pos], W, n, settings.wordnet_note if m == "meteor" else None)
            for m in C.REPORT_METRICS}


def eval_retrieval(emb: dict, patient_ids: list[str], weights, cohort: str) -> dict:
    index = {p: i for i, p in enumerate(emb["patient_id"])}
    sel = np.array([index[p] for p in sorted(patient_ids)], int)
    n = len(sel)
    if n < 2:
        return {m: null("fewer than two patients with embeddings", n) for m in C.RETRIEVAL_METRICS} if n else {}
    hits = retrieval_hits(emb["image"][sel], emb["text"][sel])
    W = weights(cohort, n)
    return {m: _mean_metric(hits[m].astype(float), W, n) for m in C.RETRIEVAL_METRICS}


def _retrieval_cohorts(name: str, emb: dict, preds: ModelPredictions | None, source) -> np.ndarray:
    if "cohort" in emb:
        return emb["cohort"]
    if preds is None:
        raise PredictionsError(source, f"no 'cohort' array and no predictions file for model {name!r} to "
                                       "look the cohorts up")
    lookup = dict(zip(preds.frame[C.PATIENT_ID], preds.frame[C.COHORT]))
    unknown = [p for p in emb["patient_id"] if p not in lookup]
    if unknown:
        raise PredictionsError(source, f"patient {unknown[0]!r} is not in {preds.path} (add a 'cohort' array)")
    return np.array([lookup[p] for p in emb["patient_id"]])


def evaluate(models: list[ModelPredictions], spec: CohortSpec | None = None, settings: Settings | None = None,
             embeddings: dict | None = None, data_efficiency: pd.DataFrame | None = None,
             progress=None) -> Results:
    """Evaluate each model on every task its file supports, per cohort and per group of cohorts."""
    settings = settings or Settings()
    spec = spec or CohortSpec()
    embeddings = embeddings or {}
    by_name = {m.name: m for m in models}
    cohort_of = {name: _retrieval_cohorts(name, emb, by_name.get(name), source)
                 for name, (emb, source) in embeddings.items()}
    order, members, notes = resolve_cohorts(spec, models, [c for v in cohort_of.values() for c in v])
    names = [m.name for m in models] + [n for n in embeddings if n not in {m.name for m in models}]
    res = Results(names, order, members, notes=notes, settings=settings,
                  predictions={m.name: m for m in models}, data_efficiency=data_efficiency)
    weights = _Weights(settings)
    for k, m in enumerate(models):
        res.notes.extend(m.notes)
        frame = m.frame.assign(_row=np.arange(len(m.frame)))
        out = res.metrics.setdefault(m.name, {})
        if any(t in C.SURVIVAL_TASKS for t in m.tasks):
            res.notes.append(f"{m.name}: survival analyses restricted to malignant cases (malignancy_true = 1)"
                             if C.true_column(C.MALIGNANT_TASK) in frame else
                             f"{m.name}: no malignancy_true column, so survival analyses use every patient")
        scores = None
        if C.REPORT_TASK in m.tasks:
            from .text_metrics import report_scores
            ok = frame[C.REPORT_TRUE].notna() & frame[C.REPORT_PRED].notna()
            scores = {k2: np.full(len(frame), np.nan) for k2 in C.REPORT_METRICS}
            part = report_scores(frame.loc[ok, C.REPORT_TRUE].tolist(), frame.loc[ok, C.REPORT_PRED].tolist(),
                                 settings.wordnet)
            from ..extraction.consistency import consistency_scores
            part.update(consistency_scores(frame.loc[ok, C.REPORT_TRUE].tolist(), frame.loc[ok, C.REPORT_PRED].tolist()))
            for k2, v in part.items():
                scores[k2][ok.to_numpy()] = v
            if settings.wordnet is None:
                res.notes.append(f"{m.name}: {settings.wordnet_note}")
        for cohort in order:
            rows = cohort_rows(frame, members[cohort])
            if rows.empty:
                continue
            for task in m.tasks:
                if task in C.SURVIVAL_TASKS:
                    got = eval_survival(task, rows, weights, cohort, settings)
                elif task == C.REPORT_TASK:
                    got = eval_report(rows, scores, weights, cohort, settings)
                else:
                    got = eval_classification(task, rows, weights, cohort)
                if got:
                    out.setdefault(task, {})[cohort] = got
        if progress:
            progress(k + 1, len(models) + len(embeddings), m.name)
    for k, (name, (emb, source)) in enumerate(embeddings.items()):
        res.embeddings[name] = emb
        for cohort in order:
            mem = members.get(cohort, [cohort])
            ids = [p for p, c in zip(emb["patient_id"], cohort_of[name]) if c in mem]
            got = eval_retrieval(emb, ids, weights, cohort) if ids else {}
            if got:
                res.metrics.setdefault(name, {}).setdefault(C.RETRIEVAL_TASK, {})[cohort] = got
        if progress:
            progress(len(models) + k + 1, len(models) + len(embeddings), f"{name} retrieval")
    return res
