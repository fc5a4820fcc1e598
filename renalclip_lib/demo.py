"""``renalclip demo``: the whole product on a fresh install with no weights, on synthetic data.

Steps: synthetic cohort -> tiny nnU-Net (trained by nnU-Net v2's own pipeline; checked on a held-out
kidney region) -> every training stage (``renalclip train all`` with Resources/configs/demo.yaml) ->
evaluation of the held-out external cohorts -> ``analyze`` of one held-out case (its label map standing
in for the reviewed segmentation: the mass is measured and the report grounded in it) -> ``DIR/index.html``. The trained bundle stays in ``DIR/run/bundle`` for ``renalclip analyze``.
Everything resumes: a second run reuses what the first finished.

Its models are trained on synthetic data and are not for clinical use; every page says so.

Usage: ``run_demo("demo_out", quick=False)``
"""
from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path

from .atomic import atomic_write_json, atomic_write_text
from .inference.assessment import DISCLAIMER_SYNTHETIC
from .inference.panel import save_assessment_panel
from .progress import ProgressReporter
from .resources import resource_path

# Sizes of the two demo settings (one place): patients, in-plane matrix, nnU-Net schedule, and
# config overrides that shorten training for --quick.
DEMO_SETTINGS = {
    "full": {"patients": 120, "matrix": 160, "nnunet": {"n_patients": 6, "epochs": 3, "iterations": 60},
             "overrides": ["attributes.optim.epochs=6", "finetune.optim.epochs=10", "survival.optim.epochs=8",
                           "clip.optim.epochs=5", "report.tiny.optim.epochs=20",
                           "report.stage_a.epochs=8", "report.stage_b.epochs=4"]},
    "quick": {"patients": 56, "matrix": 128, "nnunet": {"n_patients": 3, "epochs": 1, "iterations": 20},
              "overrides": ["attributes.optim.epochs=2", "finetune.optim.epochs=3", "survival.optim.epochs=3",
                            "text.mntp.steps=6", "text.simcse.steps=6", "clip.optim.epochs=2",
                            "report.tiny.optim.epochs=2", "report.stage_a.epochs=4", "report.stage_b.epochs=2"]},
}


def save_roi_preview(rois: dict, path, title: str = "") -> Path:
    """Axial, coronal and sagittal planes through the centre of each phase's ROI, as one PNG."""
    return save_assessment_panel(rois, path, title=title)


def _step(name: str, rep: ProgressReporter, timings: dict):
    class _Timer:
        def __enter__(self):
            rep.log(f"== {name}")
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t0, 1)
            if exc[0] is None:
                rep.log(f"   {name}: {timings[name]:.1f} s")
    return _Timer()


def _segmentation_check(model_dir: Path, case) -> dict:
    """Kidney Dice of the tiny nnU-Net on a held-out patient's kidney region (what it was trained for)."""
    import numpy as np

    from .io import read_volume
    from .segmentation import SegmentationModel, dice
    from .segmentation.train import kidney_crop

    ref = "A" if "A" in case.phases else "V"
    img, lab = read_volume(case.phases[ref]), read_volume(case.label_path)
    side = case.lesion_side or "left"
    centre = case.kidney_centers.get(side) or case.lesion_center
    img_c, lab_c = kidney_crop(img, lab, centre, rng=np.random.default_rng(0), jitter_mm=0.0)
    t0 = time.perf_counter()
    pred = SegmentationModel(model_dir, verbose=False).predict(img_c)
    return {"kidney_dice": round(dice(pred.array, lab_c.array, {1, 2, 3}), 3),
            "seconds": round(time.perf_counter() - t0, 2), "box_mm": [110, 110, 150]}


def _pick_case(cases, train_cohorts):
    held = [c for c in cases if c.cohort not in set(train_cohorts) and c.cohort != "pretrain"
            and c.lesion_center is not None and c.label_path]
    held = held or [c for c in cases if c.split in ("val", "test") and c.lesion_center is not None]
    return sorted(held, key=lambda c: (0 if "A" in c.phases else 1, -len(c.phases), c.patient_id))[0]


def run_demo(out_dir, quick: bool = False, seed: int = 0, reporter: ProgressReporter | None = None) -> dict:
    """Run the demo into ``out_dir``; returns a summary (also ``out_dir/summary.json``)."""
    from .config import load_config
    from .data.manifest_cases import cases_from_manifest
    from .inference import analyze_case, load_bundle
    from .phantom import write_cohort
    from .segmentation.train import train_synthetic
    from .training.cli_train import _overrides
    from .training.pipeline import run_pipeline

    rep = reporter or ProgressReporter()
    setting = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    rep.log(f"RenalCLIP demo ({'quick' if quick else 'full'}): {DISCLAIMER_SYNTHETIC}")

    manifest = out / "cohort" / "manifest.csv"
    with _step("synthetic cohort", rep, timings):
        if not manifest.exists():
            write_cohort(out / "cohort", n_patients=setting["patients"], seed=seed, matrix=setting["matrix"])
    cases, _ = cases_from_manifest(manifest)

    nnunet = out / "nnunet"
    with _step("nnU-Net segmentation model", rep, timings):
        if not (nnunet / "training_summary.json").exists():
            if nnunet.exists():
                shutil.rmtree(nnunet)
            train_synthetic(nnunet, seed=seed, **setting["nnunet"], progress=lambda m: rep.log(f"   nnU-Net: {m}"))
    cfg_path = resource_path("configs", "demo.yaml")
    overrides = [f"data.manifest={manifest}", f"data.cache={out / 'cache'}"] + setting["overrides"]
    cfg = load_config(cfg_path, _overrides(overrides))
    case = _pick_case(cases, cfg.data.train_cohorts)
    with _step("nnU-Net check on a held-out kidney", rep, timings):
        seg_check = _segmentation_check(nnunet, case)

    run_dir = out / "run"
    with _step("training pipeline (renalclip train all)", rep, timings):
        stages = run_pipeline(cfg, run_dir, overrides=overrides, reporter=rep, synthetic=True)

    with _step("analyze one held-out case", rep, timings):
        bundle = load_bundle(run_dir / "bundle")
        has_report = "report" in bundle.manifest.get("components", {})
        assessment = analyze_case(case.phases, bundle, center_lps=case.lesion_center, segmentation=case.label_path,
                                  report=has_report, greedy=True, panel=out / "panel.png")
        assessment.write(out / "assessment.json")
    summary = {"disclaimer": DISCLAIMER_SYNTHETIC, "manifest": str(manifest), "nnunet": seg_check,
               "stages": stages, "bundle": str(run_dir / "bundle"), "assessment": str(out / "assessment.json"),
               "case": {"cohort": case.cohort, "side": case.lesion_side, "truth": {k: case.labels.get(k, "") for k in
                        ("histology", "renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy",
                         "aggressiveness")}},
               "timings_s": timings, "index": str(out / "index.html")}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "index.html", render_demo_index(out, summary, assessment.to_dict()))
    rep.log(f"demo finished: open {out / 'index.html'}")
    return summary


def _table(rows: list[tuple]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{body}</table>"


def _measurement_line(m: dict | None) -> str:
    if not m:
        return "<p>No segmentation was measured.</p>"
    dims = " x ".join(f"{d:.1f}" for d in m["diameters_cm"])
    return (f"<p>Measured on the case's label map (standing in for a reviewed segmentation): {html.escape(m['side'])} "
            f"kidney, {dims} cm, {m['volume_ml']:.1f} ml.</p>")


def _grounding_part(report: dict) -> str:
    if not report.get("grounding"):
        return ""
    changes = "".join(f"<li>{html.escape(c)}</li>" for c in report["grounding"])
    return (f"<p>Corrected to the measurement (Report grounding):</p><ul>{changes}</ul>"
            f"<p>The generator wrote:</p><pre>{html.escape(report.get('generated_text', ''))}</pre>")


def render_demo_index(out: Path, summary: dict, a: dict) -> str:
    """The demo's front page: disclaimer, assessment, ROI panel, report, evaluation and timings."""
    rows = [("task", "answer", "probability / score", "truth")]
    truth = summary["case"]["truth"]
    for name, t in a["tasks"].items():
        if t is None:
            rows.append((name, "no head in the bundle", "", truth.get(name, "")))
        elif "probabilities" in t:
            rows.append((name, t["label"], f"{max(t['probabilities']):.2f}", truth.get(name, "")))
        else:
            rows.append((name, t["label"], f"{t['probability']:.2f} (threshold {t['threshold']:.2f})", truth.get(name, "")))
    if a.get("nephrometry"):
        n = a["nephrometry"]
        rows.append(("R.E.N.A.L. score", f"{n['total']}{n['suffix']}", n["complexity"], ""))
    if a.get("survival"):
        s = a["survival"]
        rows.append(("RFS risk", s["risk_group"] or "", f"{s['risk_score']:.3f}", ""))
    for task, z in (a.get("zeroshot") or {}).items():
        rows.append((f"zero-shot {task}", "", f"{z['probability']:.2f}", ""))
    report = a.get("report") or {}
    stage_rows = [("stage", "status", "seconds")] + [(k, v.get("status", ""), v.get("seconds", ""))
                                                     for k, v in summary["stages"].items()]
    step_rows = [("step", "seconds")] + list(summary["timings_s"].items())
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    eval_index = out / "run" / "evaluation" / "index.html"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>RenalCLIP demo</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td{border:1px solid #ccc;padding:.25em .6em}.warn{background:#fff3cd;padding:.8em;border:1px solid #e0c36b}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}</style></head><body>",
        "<h1>RenalCLIP demo</h1>",
        f"<p class='warn'><b>{html.escape(summary['disclaimer'])}</b></p>",
        f"<h2>Assessment of one held-out case ({html.escape(summary['case']['cohort'])} cohort)</h2>",
        _table(rows),
        f"<p>Centre: LPS {a['center']['lps']} ({html.escape(a['center']['source'])}); phases "
        f"{', '.join(a['phases']['given'])}, model saw {', '.join(a['phases']['used'])}.</p>",
        "<p>Warnings: " + (html.escape("; ".join(a["warnings"])) or "none") + "</p>",
        "<img src='panel.png' alt='ROI planes'>",
        _measurement_line(a.get("measurement")),
        "<h2>Generated report</h2>",
        f"<pre>{html.escape(report.get('text', 'no report generator in the bundle'))}</pre>",
        _grounding_part(report),
        "<h2>Evaluation of the held-out cohorts</h2>",
        f"<p><a href='{rel(eval_index)}'>Tables and figures</a> (renalclip evaluate).</p>" if eval_index.exists()
        else "<p>No evaluation was run.</p>",
        "<h2>Segmentation</h2>",
        f"<p>Tiny nnU-Net, kidney Dice {summary['nnunet']['kidney_dice']} on a held-out kidney region "
        f"({summary['nnunet']['seconds']} s).</p>",
        "<h2>Training stages</h2>", _table(stage_rows),
        "<h2>Wall time per step</h2>", _table(step_rows),
        f"<p>Bundle for <code>renalclip analyze</code>: <code>{html.escape(rel(summary['bundle']))}</code></p>",
        "</body></html>",
    ]
    return "\n".join(parts)
