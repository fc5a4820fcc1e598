"""assessment.json (schema version 1) -> the panel's results table, summary line and report files.

Rows: one per task the bundle answered (R, E, N, A, L, the measured size when the case had a
segmentation, the R.E.N.A.L. score, malignancy, aggressiveness, survival risk, zero-shot answers)
with columns task, class, probability, points.
Class names come from ``renalclip_lib.tasks``; the summary line is the library's own
(``Assessment.summary_line``), so the panel and the command line say the same thing.

Usage::

    a = load_assessment("out/assessment.json")
    fill_table_node(table_node, table_rows(a)); label.text = summary_line(a)
    save_report("report.txt", "assessment.json", edited_text, a)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from renalclip_lib.errors import MissingFileError, RenalCLIPError
from renalclip_lib.json_files import read_json_object
from renalclip_lib.tasks import RENAL_COMPONENTS, TASKS

SCHEMA_VERSION = 1
COLUMNS = ("Task", "Class", "Probability", "Points")
ZEROSHOT_NAMES = {"BMC": "Zero-shot benign vs malignant", "IC": "Zero-shot invasive vs non-invasive"}


def load_assessment(path) -> dict:
    """Read and check an assessment.json; RenalCLIPError naming the file on a problem."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "assessment file not found")
    data = read_json_object(path, RenalCLIPError)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RenalCLIPError(path, f"assessment schema version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return data


def _short_name(task: str) -> str:
    """First word of a task's description: "Radius", "Exophytic/endophytic", "Nearness", ..."""
    return re.split(r"[:\s]", TASKS[task].description)[0]


def _prob(p) -> str:
    return "" if p is None else f"{float(p):.3f}"


def table_rows(assessment: dict) -> list[tuple[str, str, str, str]]:
    """(task, class, probability of that class, points) for every answered task, in reading order."""
    tasks = assessment.get("tasks") or {}
    rows = []
    for c in RENAL_COMPONENTS:
        key = f"renal_{c}"
        t = tasks.get(key)
        if not t:
            continue
        k = int(t["predicted_class"])
        label = t.get("label") or TASKS[key].classes[k]
        points = t.get("points")
        rows.append((f"{c}: {_short_name(key)}", label, _prob(t["probabilities"][k]),
                     "" if points is None else str(points)))
    measured = assessment.get("measurement")
    if measured:
        dims = " x ".join(f"{float(d):.1f}" for d in measured["diameters_cm"])
        rows.append(("Measured size", f"{dims} cm", "", f"{measured['side']} kidney"))
    neph = assessment.get("nephrometry")
    if neph and neph.get("total") is not None:
        rows.append(("R.E.N.A.L. score", f"{neph['total']}{neph.get('suffix') or ''}", "",
                     f"{neph['total']} ({neph.get('complexity')} complexity)"))
    for key in ("malignancy", "aggressiveness"):
        t = tasks.get(key)
        if not t:
            continue
        classes = TASKS[key].classes
        label = t.get("label") or classes[1 if t.get("positive") else 0]
        rows.append((key.capitalize(), label, _prob(t["probability"]), ""))
    surv = assessment.get("survival")
    if surv:
        rows.append(("Survival risk", f"{surv['risk_group']} risk", "",
                     f"score {float(surv['risk_score']):.3f} (cut-off {float(surv['threshold']):.3f})"))
    for name, answer in (assessment.get("zeroshot") or {}).items():
        if answer:
            rows.append((ZEROSHOT_NAMES.get(name, f"Zero-shot {name}"), answer.get("label", ""),
                         _prob(answer.get("probability")), ""))
    return rows


def summary_line(assessment: dict) -> str:
    """R.E.N.A.L. score, malignancy, aggressiveness and risk group in one line (the library's wording)."""
    from renalclip_lib.inference.assessment import Assessment

    return Assessment.from_dict(assessment).summary_line()


def report_text(assessment: dict) -> str:
    """The generated report's text ("" if the analysis made none)."""
    report = assessment.get("report") or {}
    if report.get("text"):
        return str(report["text"])
    parts = [f"Findings: {report['findings']}" if report.get("findings") else "",
             f"Impression: {report['impression']}" if report.get("impression") else ""]
    return "\n".join(p for p in parts if p)


def with_edited_report(assessment: dict, text: str) -> dict:
    """A copy of the assessment whose report is the radiologist's edited text (marked as edited)."""
    out = json.loads(json.dumps(assessment))
    report = dict(out.get("report") or {})
    if report.get("text") != text:
        report.setdefault("generated_text", report.get("text"))
        report["text"] = text
        report["edited"] = True
    out["report"] = report
    return out


def save_report(txt_path, json_path, text: str, assessment: dict | None) -> list[Path]:
    """Write the report as .txt and, if an assessment is given, the assessment with that report as .json."""
    from renalclip_lib.atomic import atomic_write_json, atomic_write_text

    written = [atomic_write_text(txt_path, text.rstrip("\n") + "\n")]
    if assessment is not None and json_path:
        written.append(atomic_write_json(json_path, with_edited_report(assessment, text)))
    return written


def fill_table_node(table_node, rows) -> None:
    """Replace the table node's content with ``COLUMNS`` and ``rows`` (all text columns)."""
    import vtk

    table = table_node.GetTable()
    table_node.RemoveAllColumns()
    arrays = []
    for name in COLUMNS:
        arr = vtk.vtkStringArray()
        arr.SetName(name)
        arrays.append(arr)
    for row in rows:
        for arr, value in zip(arrays, row):
            arr.InsertNextValue(str(value))
    for arr in arrays:
        table.AddColumn(arr)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.Modified()
