"""Tables laid out as the paper's Supplementary Data Tables 2-30, as Markdown, CSV and HTML.

Cohorts are rows and models columns; a cell reads "value (low-high)" with the 95 % bootstrap interval;
the best model of each row is bold (highest, or lowest for the Brier score; ties by the printed value
are all bold). A null metric shows "n/a [k]" with footnote k saying why; "–" means not evaluated
(the file has no such column or no labelled patient in that cohort).

Usage: ``for table in build_tables(results): table.write(out_dir / "tables")``
"""
from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import columns as C
from .bootstrap import MetricValue

PAPER_TABLE = {**{t: 2 + i for i, t in enumerate(C.MULTICLASS_TASKS)}, "malignancy": 12, "aggressiveness": 13,
               "rfs": 14, "dss": 15, "os": 16, "zeroshot_malignancy": 27, "zeroshot_aggressiveness": 28}
MISSING = "–"


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    name: str
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)      # [label, Cell, ...] or [label] for a section row
    notes: list[str] = field(default_factory=list)

    def footnote(self, text: str) -> int:
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def to_markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |",
               "|" + "|".join(["---"] * len(self.header)) + "|"]
        for row in self.rows:
            if len(row) == 1:
                out.append(f"| *{row[0]}* |" + " |" * (len(self.header) - 1))
                continue
            cells = [f"**{c.text}**" if c.bold else c.text for c in row[1:]]
            out.append("| " + " | ".join([row[0]] + cells) + " |")
        out += [""] + [f"[{i}] {n}  " for i, n in enumerate(self.notes, 1)]
        return "\n".join(out).rstrip() + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        for row in self.rows:
            w.writerow([row[0]] + [c.text for c in row[1:]] + [""] * (len(self.header) - len(row)))
        for i, n in enumerate(self.notes, 1):
            buf.write(f"# [{i}] {n}\n")
        return buf.getvalue()

    def to_html(self) -> str:
        h = [f"<table id='{html.escape(self.name)}'><caption>{html.escape(self.title)}</caption><tr>"]
        h += [f"<th>{html.escape(x)}</th>" for x in self.header] + ["</tr>"]
        for row in self.rows:
            if len(row) == 1:
                h.append(f"<tr><td colspan='{len(self.header)}'><em>{html.escape(row[0])}</em></td></tr>")
                continue
            cells = [f"<td>{'<b>' if c.bold else ''}{html.escape(c.text)}{'</b>' if c.bold else ''}</td>"
                     for c in row[1:]]
            h.append(f"<tr><th>{html.escape(row[0])}</th>{''.join(cells)}</tr>")
        h.append("</table>")
        if self.notes:
            h.append("<ol class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes) + "</ol>")
        return "\n".join(h)

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{self.name}.md", folder / f"{self.name}.csv"]
        paths[0].write_text(self.to_markdown(), encoding="utf-8")
        paths[1].write_text(self.to_csv(), encoding="utf-8")
        return paths


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def fmt_value(m: MetricValue, digits: int = 3) -> str:
    v = f"{m.value:.{digits}f}"
    if m.ci_low is None or m.ci_high is None:
        return v
    return f"{v} ({m.ci_low:.{digits}f}-{m.ci_high:.{digits}f})"


def fmt_p(p: float) -> str:
    star = "*" if p < 0.05 else ""
    return f"< 0.001{star}" if p < 0.001 else f"{p:.3f}{star}"


def _cell(table: Table, m: MetricValue | None, who: str, digits: int = 3) -> Cell:
    if m is None:
        return Cell(MISSING)
    if not m.ok:
        why = m.note or "not computable"
        return Cell(f"n/a [{table.footnote(f'{who}: {why}')}]")
    text = fmt_value(m, digits)
    if m.note:
        text += f" [{table.footnote(f'{who}: {m.note}')}]"
    return Cell(text)


def _bold_best(cells: list[Cell], values: list[MetricValue | None], metric: str, digits: int = 3) -> None:
    direction = C.higher_is_better(metric)
    ok = [(round(v.value, digits), i) for i, v in enumerate(values) if v is not None and v.ok]
    if direction is None or len(ok) < 2:
        return
    best = max(x for x, _ in ok) if direction else min(x for x, _ in ok)
    for x, i in ok:
        cells[i].bold = x == best


def _models_with(res, task: str) -> list[str]:
    return [m for m in res.models if task in res.metrics.get(m, {})]


def metric_table(res, task: str, metric: str) -> Table | None:
    """Cohorts x models for one metric of one task (Supplementary Data Tables 2-6, 12-16, 27-28)."""
    models, cohorts = _models_with(res, task), res.cohorts_for(task)
    if not models or not cohorts:
        return None
    paper = PAPER_TABLE.get(task) if metric in ("roc_auc", "c_index") else None
    title = (f"{C.metric_label(metric)} on the {C.task_label(task)} task across models and cohorts. Best model "
             f"per cohort in bold; 95% CI in parentheses" + (f" (as Supplementary Data Table {paper})." if paper
                                                                  else "."))
    t = Table(safe_name(f"{task}_{metric}"), title, ["Cohort"] + models)
    for cohort in cohorts:
        vals = [res.get(m, task, cohort, metric) for m in models]
        cells = [_cell(t, v, f"{m}, {cohort}") for m, v in zip(models, vals)]
        _bold_best(cells, vals, metric)
        t.rows.append([cohort] + cells)
    return t


def cohort_table(res, task: str, cohort: str, sections: list[tuple[str | None, list[str]]], name: str,
                 title: str) -> Table | None:
    """Metrics x models for one cohort (report: Tables 7-11; retrieval: 19-23; time-dependent metrics)."""
    models = [m for m in _models_with(res, task) if cohort in res.metrics[m][task]]
    if not models:
        return None
    t = Table(safe_name(name), title, ["Metric"] + models)
    for section, metrics in sections:
        if section:
            t.rows.append([section])
        for metric in metrics:
            vals = [res.get(m, task, cohort, metric) for m in models]
            if all(v is None for v in vals):
                continue
            label = C.metric_label(metric)
            label = label[len(section):].strip() if section and label.startswith(section) else label
            cells = [_cell(t, v, f"{m}, {C.metric_label(metric)}") for m, v in zip(models, vals)]
            _bold_best(cells, vals, metric)
            t.rows.append([label] + cells)
    return t


def km_table(res, ep: str) -> Table | None:
    models, cohorts = _models_with(res, ep), res.cohorts_for(ep)
    if not models:
        return None
    t = Table(safe_name(f"{ep}_km"), f"{C.task_label(ep)}: high vs low risk (split at the cohort's median risk "
              "score): hazard ratio from a univariate Cox model (95% CI, Wald p) and two-sided log-rank p.",
              ["Cohort"] + models)
    for cohort in cohorts:
        cells = []
        for m in models:
            hr, p, lr = (res.get(m, ep, cohort, k) for k in ("km_hr", "km_hr_p", "km_logrank_p"))
            if hr is None:
                cells.append(Cell(MISSING))
            elif not hr.ok or lr is None or not lr.ok:
                bad = hr if not hr.ok else lr
                cells.append(Cell(f"n/a [{t.footnote(f'{m}, {cohort}: {bad.note}')}]"))
            else:
                cells.append(Cell(f"HR {fmt_value(hr, 2)}, p {fmt_p(p.value)}; log-rank p {fmt_p(lr.value)}"))
        t.rows.append([cohort] + cells)
    return t


def cox_table(res, ep: str, cohort: str) -> Table | None:
    """Univariate and multivariate Cox analysis per model (as Supplementary Data Tables 17-18)."""
    models = [m for m in _models_with(res, ep) if cohort in res.metrics[m][ep]]
    if not models:
        return None
    t = Table(safe_name(f"{ep}_cox_{cohort}"),
              f"Univariate and multivariate analysis of {C.task_label(ep)} in the {cohort} cohort (as Supplementary "
              "Data Tables 17-18). HR per unit of risk score; p from the Wald test; * p < 0.05.",
              ["Variables", "Univariate HR", "95% CI", "p-value", "Multivariate HR", "95% CI", "p-value"])
    for m in models:
        mets = res.metrics[m][ep][cohort]
        keys = [k[len("cox_hr["):-1] for k in mets if k.startswith("cox_hr[")]
        if not keys:
            continue
        t.rows.append([m])
        for key in keys:
            row = [mets[f"cox_hr[{key}]"].extra.get("variable", key)]
            for prefix in ("cox_", "cox_multi_"):
                hr, p = mets.get(f"{prefix}hr[{key}]"), mets.get(f"{prefix}p[{key}]")
                if hr is None:
                    row += [Cell(MISSING)] * 3
                elif not hr.ok:
                    row += [Cell(f"n/a [{t.footnote(f'{m}, {row[0]}: {hr.note}')}]"), Cell(""), Cell("")]
                else:
                    ci = (f"{hr.ci_low:.2f}-{hr.ci_high:.2f}" if hr.ci_low is not None and hr.ci_high is not None
                          else f"n/a [{t.footnote(f'{m}, {row[0]}: {hr.note}')}]")
                    row += [Cell(f"{hr.value:.2f}"), Cell(ci), Cell(fmt_p(p.value))]
                    if prefix == "cox_multi_" and hr.note:
                        t.footnote(f"{m}: {hr.note}")
            t.rows.append(row)
    return t


def data_efficiency_table(df, task: str, metric: str, cohort_order: list[str], model_order: list[str]) -> Table:
    """Fraction sections x cohorts x models, "mean ± sd" over seeds (as Supplementary Data Tables 29-30)."""
    sub = df[(df["task"] == task) & (df["metric"] == metric)]
    models = [m for m in model_order if m in set(sub["model"])] + sorted(set(sub["model"]) - set(model_order))
    cohorts = [c for c in cohort_order if c in set(sub["cohort"])] + sorted(set(sub["cohort"]) - set(cohort_order))
    t = Table(safe_name(f"data_efficiency_{task}_{metric}"),
              f"{C.task_label(task)}: {C.metric_label(metric)} with varying proportions of training data; mean ± "
              "standard deviation over seeds (a single run shows its value). Best per row in bold (as Supplementary "
              "Data Tables 29-30).", ["Cohort"] + models)
    for frac in sorted(set(sub["fraction"])):
        t.rows.append([f"{frac * 100:g}% training data"])
        for cohort in cohorts:
            cells, means = [], []
            for m in models:
                v = sub[(sub["fraction"] == frac) & (sub["cohort"] == cohort) & (sub["model"] == m)]["value"]
                if v.empty:
                    cells.append(Cell(MISSING))
                    means.append(None)
                    continue
                mean = float(v.mean())
                cells.append(Cell(f"{mean:.3f} ± {float(v.std(ddof=1)):.3f}" if len(v) > 1 else f"{mean:.3f}"))
                means.append(MetricValue(mean, n=len(v)))
            _bold_best(cells, means, metric)
            t.rows.append([cohort] + cells)
    return t


def build_tables(res) -> list[Table]:
    tables = []
    for task in res.tasks():
        if task in C.MULTICLASS_TASKS or task in C.ZEROSHOT_TASKS:
            tables.append(metric_table(res, task, "roc_auc"))
        elif task in C.BINARY_TASKS:
            tables += [metric_table(res, task, m) for m in C.BINARY_METRICS]
        elif task in C.SURVIVAL_TASKS:
            tables += [metric_table(res, task, "c_index"), km_table(res, task)]
            times = res.settings.times
            for cohort in res.cohorts_for(task):
                sections = [(lab, [C.td_metric(k, x) for x in times]) for lab, k in
                            (("Time-dependent ROC AUC", "td_auc"), ("Time-dependent C-index (Uno)", "td_cindex"),
                             ("Brier score (lower is better)", "brier"))]
                tables.append(cohort_table(res, task, cohort, sections, f"{task}_time_{cohort}",
                                           f"Time-dependent performance for {C.task_label(task)} in the {cohort} "
                                           "cohort; 95% CI in parentheses; best per row in bold."))
                tables.append(cox_table(res, task, cohort))
        elif task == C.REPORT_TASK:
            for cohort in res.cohorts_for(task):
                tables.append(cohort_table(res, task, cohort, [(None, list(C.REPORT_METRICS))], f"report_{cohort}",
                                           f"Report generation in the {cohort} cohort (as Supplementary Data Tables "
                                           "7-11). Best model per metric in bold; 95% CI in parentheses."))
        elif task == C.RETRIEVAL_TASK:
            for cohort in res.cohorts_for(task):
                sections = [("Text-to-image", [m for m in C.RETRIEVAL_METRICS if m.startswith("t2i")]),
                            ("Image-to-text", [m for m in C.RETRIEVAL_METRICS if m.startswith("i2t")])]
                tables.append(cohort_table(res, task, cohort, sections, f"retrieval_{cohort}",
                                           f"Cross-modal retrieval in the {cohort} cohort (as Supplementary Data "
                                           "Tables 19-23). Best model per metric in bold; 95% CI in parentheses."))
    df = res.data_efficiency
    if df is not None and len(df):
        for task in [t for t in C.ALL_TASKS if t in set(df["task"])]:
            for metric in sorted(set(df[df["task"] == task]["metric"])):
                tables.append(data_efficiency_table(df, task, metric, res.cohorts, res.models))
    return [t for t in tables if t is not None and t.rows]

