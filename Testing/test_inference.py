"""Bundles, ``analyze`` and ``batch`` on synthetic patients with tiny randomly initialised models.

The expected answers are computed independently: register every phase onto the reference grid
(the published BRAINSResample step), crop, window, run the network, softmax.
"""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

from renalclip_lib.cli import main
from renalclip_lib.coordinates import lps_to_ras
from renalclip_lib.data.manifest_cases import cases_from_manifest
from renalclip_lib.errors import CenterOutsideScanError, EmptySegmentationError, PhaseOverlapError
from renalclip_lib.inference import analyze_case, build_bundle, load_bundle
from renalclip_lib.inference.analyze import DifferentPatientsError
from renalclip_lib.inference.assessment import Assessment
from renalclip_lib.inference.bundle import InvalidBundleError, youden_threshold
from renalclip_lib.io import Volume, read_volume, write_dicom_series, write_volume
from renalclip_lib.models import ClassifierHead, CoxHead, ImageEncoder, save_image_model
from renalclip_lib.phantom import write_cohort
from renalclip_lib.preprocess import crop_roi, lesion_center, register_phases, to_model_input
from renalclip_lib.progress import parse_line
from renalclip_lib.tasks import TASKS, nephrometry_score
from renalclip_lib.training.survival import write_risk_threshold

WIDTH = 4
TASK_NAMES = ["renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy", "aggressiveness"]


def _heads(names):
    torch.manual_seed(1)
    return {t: ClassifierHead(len(TASKS[t].classes), in_dim=8 * WIDTH, hidden=8) for t in names}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    manifest = write_cohort(root / "cohort", 3, seed=3, cohorts="internal", matrix=96)
    cases, _ = cases_from_manifest(manifest)
    torch.manual_seed(0)
    enc = ImageEncoder(width=WIDTH, embed_dim=16)
    tasks_pt = save_image_model(root / "run" / "tasks.pt", enc, _heads(TASK_NAMES))
    surv_dir = root / "run" / "survival"
    torch.manual_seed(2)
    surv_pt = save_image_model(surv_dir / "best.pt", ImageEncoder(width=WIDTH, embed_dim=16), None,
                               CoxHead(in_dim=8 * WIDTH, hidden=8))
    write_risk_threshold(surv_dir / "risk_threshold.json", np.array([-1.0, 0.0, 0.25, 3.0]), "rfs")
    bundle = build_bundle(root / "bundle", heads=tasks_pt, survival=surv_pt, synthetic=True)
    return {"root": root, "manifest": manifest, "cases": cases, "bundle": bundle, "tasks_pt": tasks_pt}


def _expected_logits(case, center, tasks_pt):
    """Independent path: whole-volume registration onto the reference grid, then crop."""
    from renalclip_lib.models import load_task_model

    vols = {ph: read_volume(p) for ph, p in case.phases.items()}
    reg = register_phases(vols)
    ref = "A" if "A" in reg else "V"
    x = torch.from_numpy(to_model_input(crop_roi(reg[ref], center))[None])
    with torch.no_grad():
        _, logits = load_task_model(tasks_pt)(x)
    return {k: torch.softmax(v[0], -1).numpy() for k, v in logits.items()}


def test_analyze_matches_registration_then_crop(world):
    case = world["cases"][0]
    bundle = load_bundle(world["bundle"])
    a = analyze_case(case.phases, bundle, center_lps=case.lesion_center)
    exp = _expected_logits(case, case.lesion_center, world["tasks_pt"])
    for t in TASK_NAMES:
        if TASKS[t].kind == "binary":
            assert a.tasks[t]["probability"] == pytest.approx(float(exp[t][1]), abs=1e-5)
            assert a.tasks[t]["positive"] == (exp[t][1] >= bundle.threshold(t))
        else:
            np.testing.assert_allclose(a.tasks[t]["probabilities"], exp[t], atol=1e-5)
            assert a.tasks[t]["predicted_class"] == int(np.argmax(exp[t]))
    classes = {t[-1]: a.tasks[t]["predicted_class"] for t in TASK_NAMES if t.startswith("renal_")}
    assert a.nephrometry == nephrometry_score(classes)
    assert a.survival["threshold"] == pytest.approx(0.125)
    assert a.survival["risk_group"] == ("high" if a.survival["risk_score"] > 0.125 else "low")
    assert a.center["ras"] == pytest.approx(list(lps_to_ras(case.lesion_center)), abs=1e-3)
    assert a.phases["reference"] == "A" and a.phases["used"] == ["A"]
    assert "not for clinical use" in a.disclaimer
    assert set(a.timings) >= {"read", "roi", "models", "total"}


def test_ras_centre_and_segmentation_centre(world, tmp_path):
    case = world["cases"][1]
    bundle = load_bundle(world["bundle"])
    by_lps = analyze_case(case.phases, bundle, center_lps=case.lesion_center)
    by_ras = analyze_case(case.phases, bundle, center_ras=lps_to_ras(case.lesion_center))
    assert by_ras.tasks == by_lps.tasks
    by_seg = analyze_case(case.phases, bundle, segmentation=case.label_path, panel=tmp_path / "panel.png")
    labels = read_volume(case.label_path)
    assert by_seg.center["lps"] == pytest.approx(list(lesion_center(labels)), abs=1e-3)
    assert by_seg.center["source"].startswith("segmentation")
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nephrometry_score_analytic():
    assert nephrometry_score({"R": 0, "E": 0, "N": 0, "A": 0, "L": 0}) == {"total": 4, "suffix": "a", "complexity": "low"}
    assert nephrometry_score({"R": 1, "E": 1, "N": 1, "A": 2, "L": 1}) == {"total": 8, "suffix": "x", "complexity": "moderate"}
    assert nephrometry_score({"R": 2, "E": 2, "N": 2, "A": 1, "L": 2}) == {"total": 12, "suffix": "p", "complexity": "high"}
    assert nephrometry_score({"R": 2, "A": 1})["total"] is None


def test_youden_threshold_separates_perfectly():
    t = youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
    assert 0.3 < t <= 0.6


def test_missing_heads_are_null_with_warning(world, tmp_path):
    path = save_image_model(tmp_path / "mal.pt", ImageEncoder(width=WIDTH, embed_dim=16), _heads(["malignancy"]))
    bundle = load_bundle(build_bundle(tmp_path / "b", heads=path))
    case = world["cases"][0]
    a = analyze_case(case.phases, bundle, center_lps=case.lesion_center)
    assert a.tasks["malignancy"] is not None and a.tasks["renal_R"] is None and a.nephrometry is None
    assert a.survival is None
    assert any("renal_R" in w for w in a.warnings) and any("survival" in w for w in a.warnings)


def test_published_encoder_with_our_heads(world, tmp_path):
    torch.manual_seed(5)
    enc = ImageEncoder(width=WIDTH, embed_dim=16)
    published = tmp_path / "RenalCLIP_model-best-acc.pt"
    sd = {f"module.image_encoder_q_student.{k}": v for k, v in enc.state_dict().items()}
    sd["module.logit_scale"] = torch.tensor(2.3)
    torch.save({"model": sd, "fp16_scaler": None}, published)
    bundle = load_bundle(build_bundle(tmp_path / "b", encoder=published, heads=world["tasks_pt"]))
    case = world["cases"][0]
    a = analyze_case(case.phases, bundle, center_lps=case.lesion_center)
    vols = {ph: read_volume(p) for ph, p in case.phases.items()}
    x = torch.from_numpy(to_model_input(crop_roi(vols["A"], case.lesion_center))[None])
    from renalclip_lib.models import load_task_model

    heads = load_task_model(world["tasks_pt"]).classifiers
    with torch.no_grad():
        p = torch.softmax(heads["malignancy"](enc.eval().features(x)), -1)[0, 1].item()
    assert a.tasks["malignancy"]["probability"] == pytest.approx(p, abs=1e-5)


def test_altered_bundle_is_refused(world, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(world["bundle"], copy)
    with open(copy / "tasks.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InvalidBundleError, match="checksum"):
        load_bundle(copy)


def test_bad_inputs(world, tmp_path):
    bundle = load_bundle(world["bundle"])
    case = world["cases"][0]
    empty = read_volume(case.label_path)
    empty = empty.with_array(np.where(empty.array > 1, 1, empty.array).astype(empty.array.dtype))
    with pytest.raises(EmptySegmentationError, match="--center-lps"):
        analyze_case(case.phases, bundle, segmentation=empty)
    with pytest.raises(CenterOutsideScanError):
        analyze_case(case.phases, bundle, center_lps=(1e4, 0.0, 0.0))
    a = read_volume(case.phases["A"])
    far = Volume(a.array, a.spacing, a.origin + np.array([0.0, 0.0, 5000.0]), a.direction)
    with pytest.raises(PhaseOverlapError):
        analyze_case({"A": a, "V": far}, bundle, center_lps=case.lesion_center)
    d1 = write_dicom_series(a, tmp_path / "a_dcm", patient_id="P1")
    v = read_volume(case.phases["V"])
    d2 = write_dicom_series(v, tmp_path / "v_dcm", patient_id="P2")
    with pytest.raises(DifferentPatientsError, match="different patients"):
        analyze_case({"A": d1, "V": d2}, bundle, center_lps=case.lesion_center)
    # Centre far from the kidneys: a warning, not a refusal.
    labels = read_volume(case.label_path)
    corner = labels.index_to_physical(np.array(labels.size_xyz) * np.array([0.15, 0.15, 0.5]))
    from renalclip_lib.inference.analyze import _label_warnings

    assert any("outside the segmented kidney" in w for w in _label_warnings(labels, corner))
    assert not any("outside the segmented kidney" in w for w in _label_warnings(labels, np.asarray(case.lesion_center)))


def test_cli_analyze_protocol_and_exit_codes(world, tmp_path, capsys):
    case = world["cases"][2]
    out = tmp_path / "assessment.json"
    args = ["analyze", *sum((["--phase", f"{ph}={p}"] for ph, p in case.phases.items()), []),
            "--center-lps", *map(str, case.lesion_center), "--bundle", str(world["bundle"]), "--out", str(out),
            "--panel", str(tmp_path / "panel.png"), "--progress-json"]
    capsys.readouterr()
    assert main(args) == 0
    lines = [parse_line(line) for line in capsys.readouterr().out.splitlines()]
    assert all(ev is not None for ev in lines)
    assert lines[-1]["event"] == "result" and lines[-1]["assessment"] == str(out)
    fractions = [ev["fraction"] for ev in lines if ev["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    a = Assessment.read(out)
    assert a.schema_version == 1 and a.tasks["malignancy"] is not None
    bad = tmp_path / "bad.json"
    assert main(["analyze", "--phase", f"A={case.phases['A']}", "--center-lps", "99999", "0", "0",
                 "--bundle", str(world["bundle"]), "--out", str(bad), "--progress-json"]) == 2
    err = [parse_line(line) for line in capsys.readouterr().out.splitlines()]
    assert err[-1]["event"] == "error" and err[-1]["exit_code"] == 2 and "outside the scan" in err[-1]["message"]
    assert not bad.exists()


def test_batch_isolates_failures_resumes_and_evaluates(world, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(world["root"] / "cohort", cohort)
    manifest = cohort / "manifest.csv"
    cases, _ = cases_from_manifest(manifest)
    broken = next(iter(cases[1].phases.values()))
    data = open(broken, "rb").read()
    open(broken, "wb").write(data[: len(data) // 3])
    out = tmp_path / "batch"
    assert main(["batch", "--manifest", str(manifest), "--bundle", str(world["bundle"]), "--out", str(out),
                 "--bootstrap", "20", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    status = {r["patient_id"]: r["status"] for r in rows}
    assert status[cases[1].patient_id] == "failed" and status[cases[0].patient_id] == "done"
    assert "truncated" in next(r["error"] for r in rows if r["patient_id"] == cases[1].patient_id).lower()
    preds = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert len(preds) == 2 and "renal_R_prob_2" in preds[0] and "malignancy_true" in preds[0]
    assert (out / "evaluation" / "metrics.json").exists()
    first = (out / "cases" / cases[0].patient_id / "assessment.json").stat().st_mtime_ns
    open(broken, "wb").write(data)
    assert main(["batch", "--manifest", str(manifest), "--bundle", str(world["bundle"]), "--out", str(out),
                 "--bootstrap", "20", "--quiet"]) == 0
    rows = {r["patient_id"]: r["status"] for r in csv.DictReader(open(out / "summary.csv", encoding="utf-8"))}
    assert rows[cases[0].patient_id] == "done (earlier run)" and rows[cases[1].patient_id] == "done"
    assert (out / "cases" / cases[0].patient_id / "assessment.json").stat().st_mtime_ns == first


def test_batch_with_a_bundle_without_survival_still_evaluates(world, tmp_path):
    bundle = build_bundle(tmp_path / "no_survival", heads=world["tasks_pt"], synthetic=True)
    out = tmp_path / "batch"
    assert main(["batch", "--manifest", str(world["manifest"]), "--bundle", str(bundle), "--out", str(out),
                 "--bootstrap", "20", "--quiet"]) == 0
    preds = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert "risk" not in preds[0] and "rfs_time" not in preds[0] and "malignancy_prob" in preds[0]
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert "malignancy" in json.dumps(metrics) and "rfs" not in json.dumps(metrics)


def test_batch_segments_with_nnunet_without_mirroring_when_told(world, tmp_path, monkeypatch):
    """The label maps stand in for nnU-Net's output; the model must be built as the flag says."""
    import renalclip_lib.segmentation as segmentation
    from renalclip_lib.inference.analyze import _labels_on

    labels_of = {str(p): c.label_path for c in world["cases"] for p in c.phases.values()}
    built = []

    class FakeModel:
        def __init__(self, model_dir, device="cpu", mirroring=True, verbose=False):
            built.append(mirroring)

        def predict(self, volume):
            return _labels_on(read_volume(labels_of[str(volume.source)]), volume)

    monkeypatch.setattr(segmentation, "SegmentationModel", FakeModel)
    rows = list(csv.DictReader(open(world["manifest"], encoding="utf-8")))
    for r in rows:
        r["image_path"] = str(world["manifest"].parent / r["image_path"])
        r["label_path"] = ""
    manifest = tmp_path / "no_labels.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "batch"
    assert main(["batch", "--manifest", str(manifest), "--bundle", str(world["bundle"]), "--out", str(out),
                 "--segment-with", str(tmp_path / "nnunet"), "--no-mirroring", "--no-evaluate", "--quiet"]) == 0
    assert built == [False]
    with_labels = tmp_path / "with_labels"
    assert main(["batch", "--manifest", str(world["manifest"]), "--bundle", str(world["bundle"]), "--out",
                 str(with_labels), "--no-evaluate", "--quiet"]) == 0
    sides = {r["patient_id"]: r["lesion_side"] for r in rows}
    for case in world["cases"]:
        a = Assessment.read(out / "cases" / case.patient_id / "assessment.json")
        b = Assessment.read(with_labels / "cases" / case.patient_id / "assessment.json")
        assert a.measurement["side"] == sides[case.patient_id]
        assert a.measurement == b.measurement


def test_zeroshot_answer_is_the_softmax_of_scaled_max_similarities(world, tmp_path):
    from renalclip_lib.evaluation.zeroshot import save_prompt_embeddings
    from renalclip_lib.models.clip_model import ClipModel, save_clip_model

    torch.manual_seed(7)
    clip = ClipModel(ImageEncoder(width=WIDTH, embed_dim=16))
    clip_pt = save_clip_model(tmp_path / "clip.pt", clip)
    rng = np.random.default_rng(0)
    prompts = {"malignancy": {c: rng.normal(size=(5, 16)).astype(np.float32) for c in (0, 1)}}
    for c in (0, 1):
        prompts["malignancy"][c] /= np.linalg.norm(prompts["malignancy"][c], axis=1, keepdims=True)
    npz = save_prompt_embeddings(tmp_path / "prompts.npz", prompts)
    bundle = load_bundle(build_bundle(tmp_path / "b", heads=world["tasks_pt"], clip=clip_pt, zeroshot=npz))
    case = world["cases"][0]
    a = analyze_case(case.phases, bundle, center_lps=case.lesion_center)
    x = torch.from_numpy(to_model_input(crop_roi(read_volume(case.phases["A"]), case.lesion_center))[None])
    with torch.no_grad():
        emb = clip.image_encoder.eval().embed(x)[0].numpy()
    scale = float(np.exp(clip.logit_scale.item()))
    s0, s1 = (float((prompts["malignancy"][c] @ emb).max()) for c in (0, 1))
    expected = 1.0 / (1.0 + np.exp(-scale * (s1 - s0)))
    assert a.zeroshot["malignancy"]["probability"] == pytest.approx(expected, abs=1e-4)
    assert a.phases["zeroshot"] == ["A"]

    # A bundle with clip.fuse_phases embeds every phase's ROI and averages; the heads keep one.
    fused = load_bundle(build_bundle(tmp_path / "f", heads=world["tasks_pt"], clip=clip_pt, zeroshot=npz, fuse_phases=True))
    b = analyze_case(case.phases, fused, center_lps=case.lesion_center)
    order = [ph for ph in ("N", "A", "V", "D") if ph in case.phases]
    assert len(order) > 1 and b.phases["zeroshot"] == order and b.phases["used"] == ["A"]
    x = torch.from_numpy(np.stack([to_model_input(crop_roi(read_volume(case.phases[ph]), case.lesion_center))
                                   for ph in order]))
    with torch.no_grad():
        mean = clip.image_encoder.embed(x).mean(0).numpy()
    mean /= np.linalg.norm(mean)
    s0, s1 = (float((prompts["malignancy"][c] @ mean).max()) for c in (0, 1))
    assert b.zeroshot["malignancy"]["probability"] == pytest.approx(1.0 / (1.0 + np.exp(-scale * (s1 - s0))), abs=1e-4)
    assert b.zeroshot["malignancy"]["probability"] != pytest.approx(expected, abs=1e-3)

    # From a run folder the bundle takes the setting the clip stage recorded in zeroshot.json.
    import shutil

    run = tmp_path / "run"
    (run / "finetune" / "attributes").mkdir(parents=True)
    (run / "clip").mkdir()
    shutil.copy(world["tasks_pt"], run / "finetune" / "attributes" / "best.pt")
    shutil.copy(clip_pt, run / "clip" / "best.pt")
    shutil.copy(npz, run / "clip" / "prompt_embeddings.npz")
    for fuse in (True, False):
        (run / "clip" / "zeroshot.json").write_text(json.dumps({"fuse_phases": fuse, "tasks": {}}), encoding="utf-8")
        assert load_bundle(build_bundle(tmp_path / "r", run_dir=run)).zeroshot_fusion is fuse


WRONG_REPORT = ("Findings: A 9.9 x 9.0 cm solid mass is seen in the {side} kidney.\n"
                "Impression: {Side} renal mass (9.9 cm), likely malignant.")


def test_a_segmented_case_is_measured_and_its_report_grounded(world, tmp_path, monkeypatch):
    from renalclip_lib.extraction import extract_answers
    from renalclip_lib.inference import analyze as analyze_module
    from renalclip_lib.preprocess.lesion_size import measure_lesion

    case = world["cases"][0]
    labels = read_volume(case.label_path)
    expected = measure_lesion(labels, case.lesion_center)
    other = "left" if expected.side == "right" else "right"
    raw = WRONG_REPORT.format(side=other, Side=other.capitalize())
    monkeypatch.setattr(analyze_module, "_generate_report", lambda *a, **k: {"text": raw})
    bundle = load_bundle(world["bundle"])
    a = analyze_case(case.phases, bundle, center_lps=case.lesion_center, segmentation=case.label_path, report=True)
    assert a.center["source"] == "given (LPS)"
    assert a.measurement["side"] == expected.side and a.measurement["size_class"] == expected.size_class
    assert a.measurement["diameters_mm"] == pytest.approx(expected.diameters_mm, abs=0.05)
    answers = extract_answers(a.report["text"])
    assert answers["side"] == expected.side and answers[f"q_size_{expected.side}"] == expected.size_class
    assert a.report["generated_text"] == raw and a.report["grounding"][0] == f"side: {other} -> {expected.side}"
    kept = analyze_case(case.phases, bundle, segmentation=case.label_path, report=True, ground=False)
    assert kept.report["text"] == raw and kept.measurement == a.measurement
    plain = analyze_case(case.phases, bundle, center_lps=case.lesion_center, report=True)
    assert plain.measurement is None and plain.report["text"] == raw
    assert Assessment.from_dict(a.to_dict()).measurement == a.measurement

    cohort = tmp_path / "cohort"
    shutil.copytree(world["root"] / "cohort", cohort)
    out = tmp_path / "batch"
    assert main(["batch", "--manifest", str(cohort / "manifest.csv"), "--bundle", str(world["bundle"]),
                 "--out", str(out), "--report", "--no-evaluate", "--quiet"]) == 0
    preds = {r["patient_id"]: r for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    row = preds[case.patient_id]
    assert extract_answers(row["report_pred"])["side"] == expected.side
    assert row["report_true"].startswith("Findings: ") and row["report_true"] != row["report_pred"]
    saved = Assessment.read(out / "cases" / case.patient_id / "assessment.json")
    assert saved.measurement["diameters_mm"] == pytest.approx(expected.diameters_mm, abs=0.05)
