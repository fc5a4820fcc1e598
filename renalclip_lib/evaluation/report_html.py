"""index.html: one page that shows every table and links every table file and figure of a run.

Self-contained (no scripts, no network); figures are linked relative to the output folder, so the
folder can be moved or zipped as a whole.

Usage: ``(out / "index.html").write_text(render_index(results, tables, figures, out), encoding="utf-8")``
"""
from __future__ import annotations

import html
from pathlib import Path

from . import columns as C

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.6em 0 .2em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
caption{text-align:left;font-weight:600;padding:4px 0;max-width:1100px}
.notes{font-size:12px;color:#555;margin-top:0}
img{border:1px solid #ddd;margin:4px;max-width:440px;vertical-align:top}
h2{border-bottom:2px solid #444;margin-top:2em} .files{font-size:12px}
"""


def _section_of(name: str) -> str:
    for task in C.ALL_TASKS:
        if name.startswith(task + "_") or name.startswith(f"roc_{task}_") or name.startswith(f"km_{task}_") \
                or name.startswith(f"td_{task}_"):
            return task
    if name.startswith("retrieval_"):
        return C.RETRIEVAL_TASK
    if name.startswith("report_"):
        return C.REPORT_TASK
    if name.startswith("data_efficiency"):
        return "data_efficiency"
    if name.startswith("radar_"):
        return "summary"
    return "other"


def render_index(res, tables, figures: list[Path], out: Path) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>RenalCLIP evaluation</title>"
             f"<style>{STYLE}</style></head><body><h1>RenalCLIP evaluation</h1>"]
    s = res.settings
    parts.append("<p>Models: " + ", ".join(
        f"<b>{e(m)}</b>" + (f" ({e(str(res.predictions[m].path))})" if m in res.predictions else "")
        for m in res.models) + f". Cohorts: {e(', '.join(res.cohorts))}.<br>"
        f"95% intervals: {s.n_boot} bootstrap resamples, seed {s.seed}. Survival times in months; "
        f"time-dependent metrics at {e(', '.join(f'{t:g}' for t in s.times))} months.</p>")
    parts.append("<p class='files'>Numbers: <a href='metrics.json'>metrics.json</a> · settings and notes: "
                 "<a href='run.json'>run.json</a></p>")
    groups = {g: m for g, m in res.members.items() if m != [g]}
    if groups:
        parts.append("<p>Groups: " + "; ".join(f"{e(g)} = {e(', '.join(m))}" for g, m in groups.items()) + "</p>")
    if res.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{e(n)}</li>" for n in res.notes) + "</ul>")
    order = ["summary"] + list(C.ALL_TASKS) + ["data_efficiency", "other"]
    labels = {"summary": "Summary (radar)", "data_efficiency": "Data efficiency", "other": "Other",
              **{t: C.task_label(t) for t in C.ALL_TASKS}}
    by_section: dict[str, list] = {k: [] for k in order}
    for t in tables:
        by_section[_section_of(t.name)].append(("table", t))
    for f in figures:
        by_section[_section_of(f.stem)].append(("figure", f))
    parts.append("<p>" + " · ".join(f"<a href='#{k}'>{e(labels[k])}</a>" for k in order if by_section[k]) + "</p>")
    for key in order:
        items = by_section[key]
        if not items:
            continue
        parts.append(f"<h2 id='{key}'>{e(labels[key])}</h2>")
        for kind, item in items:
            if kind == "table":
                parts.append(item.to_html())
                parts.append(f"<p class='files'><a href='tables/{e(item.name)}.md'>{e(item.name)}.md</a> · "
                             f"<a href='tables/{e(item.name)}.csv'>{e(item.name)}.csv</a></p>")
        figs = [item for kind, item in items if kind == "figure"]
        if figs:
            parts.append("<div>" + "".join(
                f"<a href='{e(f.relative_to(out).as_posix())}'><img src='{e(f.relative_to(out).as_posix())}' "
                f"alt='{e(f.stem)}' title='{e(f.stem)}'></a>" for f in figs) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
