"""Figures of the paper's evaluation (matplotlib, Agg backend): one PNG each, under figures/.

- ``roc_<task>_<cohort>.png``: ROC curves of every model (macro-average one-vs-rest curve for R.E.N.A.L.).
- ``km_<endpoint>_<cohort>.png``: Kaplan-Meier curves of high/low risk (median split) with 95 % bands,
  per model, with the Cox HR, its p and the log-rank p (Fig. 3f-g, 4b-e).
- ``td_<endpoint>_<cohort>.png``: time-dependent AUC, C-index and Brier score with 95 % bands (Fig. 4f-h).
- ``radar_<cohort>.png``: ROC AUC / C-index of the ten core tasks (Fig. 1d-f).
- ``retrieval_<cohort>.png``, ``report_<cohort>.png``: Recall@K and report-metric bars with 95 % CI.
- ``data_efficiency_<task>_<cohort>.png``: metric vs training fraction, mean ± sd, zero-shot as dashed
  lines (Fig. 5d-g).

Usage: ``paths = write_figures(results, out_dir / "figures")``
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from . import columns as C
from .engine import cohort_rows, survival_rows
from .tables import safe_name

DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(models: list[str]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def _save(fig, path: Path, out: list[Path]) -> None:
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    out.append(path)


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def roc_figure(res, task: str, cohort: str, colors, path: Path, out: list[Path]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    grid = np.linspace(0, 1, 201)
    drawn = 0
    for m in res.models:
        auc = res.get(m, task, cohort, "roc_auc")
        if auc is None or not auc.ok:
            continue
        rows = cohort_rows(res.predictions[m].frame, res.members[cohort])
        rows = rows[rows[C.true_column(task)].notna()]
        y = rows[C.true_column(task)].to_numpy(int)
        probs = rows[C.prob_columns(task)].to_numpy(float)
        if probs.shape[1] == 1:
            fpr, tpr = _roc_points(y, probs[:, 0])
        else:                                  # macro average of the one-vs-rest curves
            fpr = grid
            tpr = np.mean([np.interp(grid, *_roc_points(y == k, probs[:, k])) for k in range(probs.shape[1])], axis=0)
        ax.plot(fpr, tpr, color=colors[m], lw=1.6, label=f"{m} (AUC {auc.value:.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="Sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{C.task_label(task)}, {cohort}" + (" (macro OvR)" if task in C.MULTICLASS_TASKS else ""))
    if drawn:
        ax.legend(loc="lower right", fontsize=7)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
    _save(fig, path, out)


def km_figure(res, ep: str, cohort: str, colors, path: Path, out: list[Path]) -> None:
    from lifelines import KaplanMeierFitter

    from .tables import fmt_p, fmt_value

    models = [m for m in res.models if (res.get(m, ep, cohort, "km_hr") or None) is not None]
    if not models:
        return
    plt = _plt()
    ncol = min(3, len(models))
    nrow = -(-len(models) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False, sharey=True)
    for ax in axes.ravel()[len(models):]:
        ax.set_visible(False)
    for ax, m in zip(axes.ravel(), models):
        rows = survival_rows(cohort_rows(res.predictions[m].frame, res.members[cohort]), ep)
        t = rows[C.time_column(ep)].to_numpy(float)
        e = rows[C.event_column(ep)].to_numpy(float).astype(bool)
        r = rows[C.RISK].to_numpy(float)
        hr, p, lr = (res.get(m, ep, cohort, k) for k in ("km_hr", "km_hr_p", "km_logrank_p"))
        if len(t) and not np.isnan(r).any():
            high = r > np.median(r)
            for grp, name, col in ((~high, "Low risk", "#1f77b4"), (high, "High risk", "#d62728")):
                if grp.any():
                    kmf = KaplanMeierFitter().fit(t[grp], e[grp])
                    x = kmf.survival_function_.index.to_numpy(float)
                    ci = kmf.confidence_interval_survival_function_.to_numpy(float)
                    ax.step(x, kmf.survival_function_.to_numpy(float)[:, 0], where="post", color=col, lw=1.4,
                            label=f"{name} (n={int(grp.sum())})")
                    ax.fill_between(x, ci[:, 0], ci[:, 1], step="post", color=col, alpha=0.2, lw=0)
        text = (f"HR {fmt_value(hr, 2)}, p {fmt_p(p.value)}\n"
                f"log-rank p {fmt_p(lr.value)}" if hr.ok and lr.ok else f"n/a: {hr.note or lr.note}")
        ax.text(0.03, 0.04, text, transform=ax.transAxes, fontsize=7, va="bottom")
        ax.set(title=m, xlabel="Months", ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="upper right")
    for row in axes:
        row[0].set_ylabel(f"{C.task_label(ep)} probability")
    fig.suptitle(f"{C.task_label(ep)}, {cohort}", fontsize=11, y=0.995)
    height = 3.2 * nrow
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.45 / height, top=1 - 0.6 / height, wspace=0.08,
                        hspace=0.45)
    _save(fig, path, out)


def td_figure(res, ep: str, cohort: str, colors, path: Path, out: list[Path]) -> None:
    plt = _plt()
    kinds = (("td_auc", "Time-dependent AUC"), ("td_cindex", "C-index (Uno)"), ("brier", "Brier score"))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    drawn = False
    for ax, (kind, label) in zip(axes, kinds):
        for m in res.models:
            pts = [(t / 12.0, res.get(m, ep, cohort, C.td_metric(kind, t))) for t in res.settings.times]
            pts = [(x, v) for x, v in pts if v is not None and v.ok]
            if not pts:
                continue
            x = np.array([p[0] for p in pts])
            ax.plot(x, [p[1].value for p in pts], marker="o", ms=3, color=colors[m], label=m)
            lo = [p[1].ci_low if p[1].ci_low is not None else np.nan for p in pts]
            hi = [p[1].ci_high if p[1].ci_high is not None else np.nan for p in pts]
            ax.fill_between(x, lo, hi, color=colors[m], alpha=0.12)
            drawn = True
        ax.set(title=label, xlabel="Years")
    if not drawn:
        plt.close(fig)
        return
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{C.task_label(ep)}, {cohort}", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.84, wspace=0.22)
    _save(fig, path, out)


def radar_figure(res, cohort: str, colors, path: Path, out: list[Path]) -> None:
    axes_tasks = []
    for task in C.CORE_TASKS:
        metric = "c_index" if task in C.SURVIVAL_TASKS else "roc_auc"
        if any((v := res.get(m, task, cohort, metric)) is not None and v.ok for m in res.models):
            axes_tasks.append((task, metric))
    if len(axes_tasks) < 3:
        return
    plt = _plt()
    angles = np.linspace(0, 2 * np.pi, len(axes_tasks), endpoint=False)
    fig = plt.figure(figsize=(5.2, 5.2))
    ax = fig.add_subplot(projection="polar")
    lows = []
    for m in res.models:
        vals = [res.get(m, t, cohort, k) for t, k in axes_tasks]
        v = np.array([x.value if x is not None and x.ok else np.nan for x in vals])
        if np.isnan(v).all():
            continue
        lows.append(np.nanmin(v))
        ax.plot(np.r_[angles, angles[0]], np.r_[v, v[0]], color=colors[m], lw=1.5, label=m)
        ax.fill(np.r_[angles, angles[0]], np.nan_to_num(np.r_[v, v[0]], nan=0.4), color=colors[m], alpha=0.06)
    ax.set_xticks(angles, [C.task_label(t) for t, _ in axes_tasks], fontsize=8)
    ax.set_ylim(min(0.4, np.floor(min(lows) * 10) / 10), 1.0)
    ax.set_title(cohort, fontsize=10, pad=18)
    fig.text(0.5, 0.015, "ROC AUC (characterization, diagnosis); C-index (prognosis)", ha="center", fontsize=8)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.12), fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.8, bottom=0.1, top=0.86)
    _save(fig, path, out)


def bars_figure(res, task: str, cohort: str, groups: list[tuple[str, list[str]]], colors, path: Path,
                out: list[Path], title: str) -> None:
    models = [m for m in res.models if cohort in res.metrics.get(m, {}).get(task, {})]
    if not models:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 3.4), squeeze=False)
    width = 0.8 / len(models)
    for ax, (label, metrics) in zip(axes[0], groups):
        x = np.arange(len(metrics))
        for j, m in enumerate(models):
            vals = [res.get(m, task, cohort, k) for k in metrics]
            v = np.array([a.value if a is not None and a.ok else np.nan for a in vals])
            lo = np.array([a.value - a.ci_low if a is not None and a.ok and a.ci_low is not None else 0 for a in vals])
            hi = np.array([a.ci_high - a.value if a is not None and a.ok and a.ci_high is not None else 0 for a in vals])
            ax.bar(x + (j - (len(models) - 1) / 2) * width, v, width, yerr=[lo, hi], capsize=2, color=colors[m],
                   label=m)
        ax.set_xticks(x, [C.metric_label(k).replace("Text-to-image ", "").replace("Image-to-text ", "")
                          for k in metrics], fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}, {cohort}", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84, wspace=0.2)
    _save(fig, path, out)


def data_efficiency_figure(res, task: str, cohort: str, metric: str, colors, path: Path, out: list[Path]) -> None:
    df = res.data_efficiency
    sub = df[(df["task"] == task) & (df["cohort"] == cohort) & (df["metric"] == metric)]
    if sub.empty:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    models = [m for m in res.models if m in set(sub["model"])] + sorted(set(sub["model"]) - set(res.models))
    palette = _colors(res.models + [m for m in models if m not in res.models])
    for m in models:
        g = sub[sub["model"] == m].groupby("fraction")["value"]
        mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
        ax.errorbar(mean.index * 100, mean.values, yerr=sd.values, marker="o", ms=4, capsize=3, color=palette[m],
                    label=m)
        zs = res.get(m, f"zeroshot_{task}", cohort, "roc_auc") if metric == "roc_auc" else None
        if zs is not None and zs.ok:
            ax.axhline(zs.value, ls="--", lw=1, color=palette[m])
    ax.set(xlabel="Training data (%)", ylabel=C.metric_label(metric), title=f"{C.task_label(task)}, {cohort}")
    ax.legend(fontsize=7, title="dashed: zero-shot", title_fontsize=7)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.92)
    _save(fig, path, out)


def figure_jobs(res, folder: Path) -> list[tuple]:
    """Every figure of a run as (function, args...) with the output path last but one."""
    jobs = []
    for task in res.tasks():
        for cohort in res.cohorts_for(task):
            name = safe_name(f"{task}_{cohort}")
            if task in C.MULTICLASS_TASKS + C.BINARY_TASKS + C.ZEROSHOT_TASKS:
                jobs.append((roc_figure, task, cohort, folder / f"roc_{name}.png"))
            elif task in C.SURVIVAL_TASKS:
                jobs.append((km_figure, task, cohort, folder / f"km_{name}.png"))
                jobs.append((td_figure, task, cohort, folder / f"td_{name}.png"))
            elif task == C.RETRIEVAL_TASK:
                groups = [("Text-to-image", [m for m in C.RETRIEVAL_METRICS if m.startswith("t2i")]),
                          ("Image-to-text", [m for m in C.RETRIEVAL_METRICS if m.startswith("i2t")])]
                jobs.append((bars_figure, task, cohort, groups, folder / f"retrieval_{safe_name(cohort)}.png",
                             "Cross-modal retrieval"))
            elif task == C.REPORT_TASK:
                jobs.append((bars_figure, task, cohort, [("", list(C.REPORT_METRICS))],
                             folder / f"report_{safe_name(cohort)}.png", "Report generation"))
    for cohort in res.cohorts:
        jobs.append((radar_figure, cohort, folder / f"radar_{safe_name(cohort)}.png"))
    df = res.data_efficiency
    if df is not None and len(df):
        for (task, cohort, metric), _ in df.groupby(["task", "cohort", "metric"], sort=False):
            suffix = "" if metric == "roc_auc" else f"_{metric}"
            jobs.append((data_efficiency_figure, task, cohort, metric,
                         folder / f"data_efficiency_{safe_name(f'{task}_{cohort}')}{suffix}.png"))
    return jobs


_JOBS: tuple = ()        # (res, colors, jobs) for forked workers


def _run_job(k: int) -> list[Path]:
    res, colors, jobs = _JOBS
    fn, *args = jobs[k]
    out: list[Path] = []
    if fn is bars_figure:                     # (task, cohort, groups, path, title)
        fn(res, *args[:3], colors, args[3], out, args[4])
    else:
        fn(res, *args[:-1], colors, args[-1], out)
    return out


def _workers(n_jobs: int) -> int:
    env = os.environ.get("RENALCLIP_FIGURE_WORKERS")
    if env:
        return max(1, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, n_jobs // 8))


def write_figures(res, folder: Path) -> list[Path]:
    """Render every figure; with several cores, in forked worker processes (RENALCLIP_FIGURE_WORKERS=1: serial)."""
    global _JOBS
    folder.mkdir(parents=True, exist_ok=True)
    jobs = figure_jobs(res, folder)
    _JOBS = (res, _colors(res.models), jobs)
    try:
        n = _workers(len(jobs))
        parts = None
        if n > 1 and "fork" in mp.get_all_start_methods():
            _plt()                            # import matplotlib once, before forking
            try:
                with mp.get_context("fork").Pool(n) as pool:
                    parts = pool.map(_run_job, range(len(jobs)), chunksize=1)
            except OSError:                   # no process pool here (e.g. no /dev/shm): draw serially
                parts = None
        if parts is None:
            parts = [_run_job(k) for k in range(len(jobs))]
    finally:
        _JOBS = ()
    return [p for part in parts for p in part]
