"""``renalclip batch``: analyse every case of a cohort manifest, each case isolated and resumable.

For each patient of the manifest (the cohort manifest format, one row per image): the lesion centre
comes from the manifest's centre columns, else its label map, else the nnU-Net model given with
``segment_with``. The label map, else the nnU-Net segmentation, is also measured, and with
``report`` the generated report states the measured side and size (``ground``; see ``analyze``).
Output::

    OUT/cases/<patient_id>/assessment.json   one per finished case (skipped on rerun)
    OUT/summary.csv                          one row per patient: status, error, main answers
    OUT/predictions.csv                      the ``renalclip evaluate`` format, when labels exist
                                             (with ``report``: report_pred, and report_true from
                                             the manifest's report of the lesion kidney)
    OUT/evaluation/                          ``renalclip evaluate`` on it (tables, figures, HTML)

A case that fails is recorded with its one-line error and the rest go on.

Usage: ``run_batch("cohort/manifest.csv", "bundle", "batch_out")``
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from ..atomic import atomic_path
from ..errors import RenalCLIPError
from ..progress import ProgressReporter
from ..tasks import RENAL_COMPONENTS
from .assessment import Assessment
from .bundle import BINARY_TASKS

SUMMARY_COLUMNS = ("patient_id", "cohort", "status", "error", "seconds", "renal_score", "complexity",
                   "malignancy_prob", "aggressiveness_prob", "risk", "risk_group", "warnings")
SURVIVAL_TIMES = ("rfs_time", "rfs_event", "dss_time", "dss_event", "os_time", "os_event")
STAGE_GRADE = ("stage", "grade")


def _case_dir(out: Path, patient_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in patient_id)
    return out / "cases" / safe


def _summary_row(case, a: Assessment | None, status: str, error: str = "", seconds: float = 0.0) -> dict:
    row = {"patient_id": case.patient_id, "cohort": case.cohort, "status": status, "error": error,
           "seconds": f"{seconds:.2f}"}
    if a is not None:
        s = a.summary()
        row.update(renal_score=s["renal_score"] or "", complexity=s["complexity"] or "",
                   malignancy_prob=s["malignancy"] if s["malignancy"] is not None else "",
                   aggressiveness_prob=s["aggressiveness"] if s["aggressiveness"] is not None else "",
                   risk="" if not a.survival else a.survival["risk_score"],
                   risk_group="" if not a.survival else (a.survival["risk_group"] or ""),
                   warnings=" | ".join(a.warnings))
    return row


def _lesion_reports(manifest) -> dict[str, str]:
    from ..training.report_stage import lesion_reports

    return lesion_reports(manifest)


def prediction_row(case, a: Assessment, reference_report: str | None = None) -> dict:
    """One row of the evaluation format from an assessment and the case's manifest labels; with a
    generated report and the manifest's report of the lesion kidney, ``report_pred``/``report_true``.
    Survival times go with a risk only: ``evaluate`` refuses times without one."""
    row = {"patient_id": case.patient_id, "cohort": case.cohort, "split": case.split}
    for comp in RENAL_COMPONENTS:
        t = a.tasks.get(f"renal_{comp}")
        if t is not None:
            row[f"renal_{comp}_true"] = case.labels.get(f"renal_{comp}", "")
            for c, p in enumerate(t["probabilities"]):
                row[f"renal_{comp}_prob_{c}"] = p
    for task in BINARY_TASKS:
        t = a.tasks.get(task)
        if t is not None:
            row[f"{task}_true"] = case.labels.get(task, "")
            row[f"{task}_prob"] = t["probability"]
    if a.survival:
        row["risk"] = a.survival["risk_score"]
        for col in SURVIVAL_TIMES:
            row[col] = case.labels.get(col, "")
    for col in STAGE_GRADE:
        row[col] = case.labels.get(col, "")
    if a.zeroshot:
        for task, z in a.zeroshot.items():
            row[f"zeroshot_{task}_prob"] = z["probability"]
    if a.report and a.report.get("text") and reference_report:
        row["report_true"], row["report_pred"] = reference_report, a.report["text"]
    return row


def _write_csv(path: Path, rows: list[dict], columns=None) -> None:
    cols = list(columns or [])
    for r in rows:
        cols += [k for k in r if k not in cols]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)


def _has_labels(rows: list[dict]) -> bool:
    keys = [k for k in (rows[0] if rows else {}) if k.endswith("_true")]
    return any(str(r.get(k, "")).strip() not in ("", "nan") for r in rows for k in keys)


def run_batch(manifest, bundle_path, out, device: str = "cpu", segment_with=None, report: bool = False,
              evaluate: bool = True, n_boot: int = 200, reporter: ProgressReporter | None = None,
              show_bar: bool = True, ground: bool = True, mirroring: bool = True) -> dict:
    from ..data.manifest_cases import cases_from_manifest
    from .analyze import analyze_case
    from .bundle import load_bundle

    out = Path(out)
    rep = reporter or ProgressReporter(quiet=True)
    cases, problems = cases_from_manifest(manifest, on_error="skip")
    references = _lesion_reports(manifest) if report else {}
    bundle = load_bundle(bundle_path, device=device, report=report)
    segmenter = None
    summary_rows, pred_rows = [], []
    for p in problems:
        summary_rows.append({"patient_id": "", "cohort": "", "status": "bad manifest row", "error": p})
    from tqdm import tqdm

    bar = tqdm(cases, desc="cases", unit="case", disable=not show_bar or rep.json_lines, file=sys.stderr)
    n_done = n_failed = n_skipped = 0
    for i, case in enumerate(bar):
        cdir = _case_dir(out, case.patient_id)
        target = cdir / "assessment.json"
        t0 = time.perf_counter()
        if target.exists():
            a = Assessment.read(target)
            summary_rows.append(_summary_row(case, a, "done (earlier run)"))
            pred_rows.append(prediction_row(case, a, references.get(case.patient_id)))
            n_skipped += 1
            continue
        try:
            kwargs = {}
            if case.lesion_center is not None:
                kwargs["center_lps"] = case.lesion_center
            if case.label_path:
                kwargs["segmentation"] = case.label_path
            elif segment_with is not None:
                if segmenter is None:
                    from ..segmentation import SegmentationModel

                    segmenter = SegmentationModel(segment_with, device=device, mirroring=mirroring, verbose=False)
                kwargs["segment_with"], kwargs["segmenter"] = segment_with, segmenter
            elif not kwargs:
                raise RenalCLIPError(manifest, f"case {i + 1}: no lesion centre, label map or --segment-with model")
            a = analyze_case(case.phases, bundle, report=report, ground=ground,
                             panel=cdir / "panel.png", **kwargs)
            a.write(target)
            summary_rows.append(_summary_row(case, a, "done", seconds=time.perf_counter() - t0))
            pred_rows.append(prediction_row(case, a, references.get(case.patient_id)))
            n_done += 1
        except (RenalCLIPError, OSError, ValueError, RuntimeError) as exc:
            summary_rows.append(_summary_row(case, None, "failed", " ".join(str(exc).split()),
                                             seconds=time.perf_counter() - t0))
            n_failed += 1
        rep.progress("batch", (i + 1) / max(len(cases), 1), f"{i + 1}/{len(cases)} cases")
    _write_csv(out / "summary.csv", summary_rows, SUMMARY_COLUMNS)
    result = {"cases": len(cases), "done": n_done, "skipped_done_earlier": n_skipped, "failed": n_failed,
              "bad_rows": len(problems), "summary": str(out / "summary.csv")}
    if pred_rows:
        _write_csv(out / "predictions.csv", pred_rows)
        result["predictions"] = str(out / "predictions.csv")
        if evaluate and _has_labels(pred_rows):
            import contextlib

            from ..cli import main as cli_main

            with contextlib.redirect_stdout(sys.stderr):
                code = cli_main(["evaluate", "--model", f"RenalCLIP={out / 'predictions.csv'}", "--out",
                                 str(out / "evaluation"), "--bootstrap", str(n_boot), "--quiet"])
            result["evaluation"] = str(out / "evaluation") if code == 0 else f"failed (exit {code})"
    return result
