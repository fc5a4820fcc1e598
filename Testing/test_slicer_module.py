"""The RenalCLIP Slicer module without a GUI: its logic on slicer-core's real MRML, its child-process
protocol with real child processes, and static checks of the widget, the .ui file and CMakeLists.

Expectations come from first principles (a voxel sits at IJK->RAS of its index; a linear ramp is
interpolated exactly; the lesion centre is the centroid of the largest axial cross-section,
computed here with numpy) or from the synthetic case's ground truth, never from the code under test.
"""
import ast
import json
import os
import re
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML) is not installed")

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "RenalCLIP"
sys.path.insert(0, str(MODULE))

from renalclip_lib.coordinates import lps_to_ras, ras_to_lps  # noqa: E402
from renalclip_lib.io import Volume, read_volume, write_volume  # noqa: E402
from RenalCLIPLib import commands, dependencies  # noqa: E402
from RenalCLIPLib.child_process import ChildProcess, PopenBackend  # noqa: E402
from RenalCLIPLib.lesion_point import (LESION_POINT_NAME, RoiFollower, ensure_lesion_point, ensure_roi_box,  # noqa: E402
                                       lesion_point_lps, roi_box_center_ras, set_lesion_point_lps)
from RenalCLIPLib.logic import CaseLogic  # noqa: E402
from RenalCLIPLib.mrml_volumes import node_from_volume  # noqa: E402
from RenalCLIPLib.parameters import Parameters  # noqa: E402
from RenalCLIPLib.phase_inputs import guess_phase, guess_phases  # noqa: E402
from RenalCLIPLib.registration import register_phase_nodes  # noqa: E402
from RenalCLIPLib.results import load_assessment, save_report, summary_line, table_rows  # noqa: E402
from RenalCLIPLib.sample_data import load_sample_case, write_sample_case  # noqa: E402
from RenalCLIPLib.segmentation_nodes import (SEGMENT_COLORS, label_volume_from_segmentation,  # noqa: E402
                                             segmentation_from_label_volume)

SELF_TEST = ("Slicer --no-main-window --testing --additional-module-paths RenalCLIP --python-code "
             "\"slicer.util.selectModule('RenalCLIP'); import slicer.testing; "
             "slicer.testing.runUnitTest(['RenalCLIP'], 'RenalCLIP')\"")


@pytest.fixture()
def scene():
    sc = slicer.vtkMRMLScene()
    slicer.mrmlScene = sc
    yield sc
    sc.Clear(1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The synthetic sample case at a small matrix (fast), written once for the module."""
    return write_sample_case(tmp_path_factory.mktemp("sample"), matrix=64)


def _rot(axis, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return {"z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]), "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]])}[axis]


def _ijk_to_ras(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ras_of_voxels(node, ijk):
    m = _ijk_to_ras(node)
    ijk = np.asarray(ijk, float)
    return ijk @ m[:3, :3].T + m[:3, 3]


# Phase inputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, phase", [
    ("ART 1.25mm", "A"), ("Arterial phase", "A"), ("Corticomedullary", "A"), ("case_00012_A", "A"),
    ("PV 5mm", "V"), ("Portal venous", "V"), ("Nephrographic 2mm", "V"), ("patient 3 V", "V"),
    ("Plain CT", "N"), ("Non-contrast abdomen", "N"), ("UNENHANCED", "N"), ("case_1_N", "N"),
    ("Delayed 10 min", "D"), ("Excretory", "D"), ("urographic", "D"),
    ("Scout", None), ("A", None), ("arterial and venous fused", None), ("Dose report", None),
])
def test_phase_is_guessed_from_the_volume_name(name, phase):
    assert guess_phase(name) == phase


def test_each_phase_goes_to_the_first_name_that_names_it():
    names = ["Scout", "CT venous 5mm", "CT plain", "CT venous 1mm", "Arterial"]
    assert guess_phases(names) == {"N": "CT plain", "A": "Arterial", "V": "CT venous 5mm"}


# Registration ----------------------------------------------------------------------------------------
def test_registration_puts_each_phase_on_the_arterial_grid_at_the_same_physical_points(scene):
    ref = Volume(np.zeros((12, 30, 28), np.int16), (1.6, 1.4, 3.0), (-20.0, -25.0, -18.0), _rot("z", 20))
    grad = np.array([2.0, -1.5, 0.75])
    mov_geo = Volume(np.zeros((30, 36, 40), np.float32), (1.2, 1.1, 1.5), (-30.0, -32.0, -25.0), _rot("x", 8))
    k, j, i = np.meshgrid(*[np.arange(n) for n in mov_geo.array.shape], indexing="ij")
    pts = mov_geo.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3))
    moving = mov_geo.with_array((pts @ grad + 10.0).reshape(mov_geo.array.shape).astype(np.float32))
    a = node_from_volume(ref, "CT arterial", scene)
    v = node_from_volume(moving, "CT venous", scene)

    out = register_phase_nodes({"A": a, "V": v, "N": None}, scene)
    assert set(out) == {"A", "V"} and out["A"] is a and out["V"] is not v
    assert out["V"].GetName() == "CT venous on arterial grid"
    np.testing.assert_allclose(_ijk_to_ras(out["V"]), _ijk_to_ras(a), atol=1e-9)
    arr = slicer.util.arrayFromVolume(out["V"])
    assert arr.shape == ref.array.shape
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3)
    lps = ras_to_lps(_ras_of_voxels(out["V"], ijk))
    inside = np.array([moving.contains(p, margin_voxels=-0.01) for p in lps])
    assert inside.mean() > 0.5 and (~inside).any()
    np.testing.assert_allclose(arr.reshape(-1)[inside], lps[inside] @ grad + 10.0, atol=1e-2)
    assert np.all(arr.reshape(-1)[~inside & np.array([not moving.contains(p, 0.6) for p in lps])] == -1000)

    again = register_phase_nodes({"A": a, "V": v}, scene)
    assert again["V"] is out["V"], "a second registration reuses its output node"


def test_phases_that_do_not_overlap_are_refused_with_the_volume_named(scene):
    from renalclip_lib.errors import PhaseOverlapError

    a = node_from_volume(Volume(np.zeros((5, 5, 5), np.int16), (1, 1, 1), (0, 0, 0)), "art", scene)
    v = node_from_volume(Volume(np.zeros((5, 5, 5), np.int16), (1, 1, 1), (500, 0, 0)), "far venous", scene)
    with pytest.raises(PhaseOverlapError, match="far venous"):
        register_phase_nodes({"A": a, "V": v}, scene)


# Segmentation nodes ---------------------------------------------------------------------------------
def test_label_volume_becomes_named_coloured_segments_and_back(scene):
    arr = np.zeros((10, 20, 24), np.uint8)
    arr[2:8, 4:16, 3:20] = 1
    arr[3:6, 6:10, 5:9] = 2
    arr[4:7, 12:15, 14:18] = 3
    labels = Volume(arr, (0.8, 0.9, 2.5), (10.0, -5.0, 40.0), _rot("z", 30))
    ref = node_from_volume(labels.with_array(np.zeros_like(arr, np.int16)), "ref", scene)
    seg = segmentation_from_label_volume(labels, scene, reference_node=ref)
    s = seg.GetSegmentation()
    names = [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())]
    assert names == ["Kidney", "Tumor", "Cyst"]
    for i, value in enumerate((1, 2, 3)):
        np.testing.assert_allclose(s.GetNthSegment(i).GetColor(), SEGMENT_COLORS[value])
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0, "temporary label node removed"

    back = label_volume_from_segmentation(seg, ref)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.origin, labels.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, labels.direction, atol=1e-9)

    # A radiologist's renamed segment still counts; an unrelated segment is ignored.
    s.GetNthSegment(1).SetName("tumour")
    s.GetNthSegment(2).SetName("adrenal")
    back = label_volume_from_segmentation(seg, ref)
    np.testing.assert_array_equal(back.array, np.where(arr == 3, 0, arr))


# Lesion point, RAS/LPS, ROI box -----------------------------------------------------------------------
def _largest_axial_centroid_lps(label_volume):
    """Independent: tumour (else cyst) largest component's largest axial slice, its centroid, to LPS."""
    from scipy.ndimage import label

    arr = label_volume.array
    mask = arr == 2 if (arr == 2).any() else arr == 3
    lab, n = label(mask, structure=np.ones((3, 3, 3)))
    comp = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    areas = comp.sum(axis=(1, 2))
    k = np.flatnonzero(areas == areas.max())
    k = int(k[len(k) // 2])
    jj, ii = np.nonzero(comp[k])
    return label_volume.index_to_physical([ii.mean(), jj.mean(), k])


def test_proposed_point_in_slicer_is_the_physical_lesion_centre(scene, sample, tmp_path):
    logic = CaseLogic(scene, workFolder=tmp_path)
    nodes = load_sample_case(scene, Path(sample["images"]["A"]).parents[1], matrix=64)
    assert set(logic.guessPhaseNodes()) == set(sample["images"]) == set(nodes)
    registered = logic.registerPhases()
    ref_code = sample["reference"]
    labels = read_volume(sample["labels"][ref_code])
    logic.loadSegmentationFile(sample["labels"][ref_code], registered[ref_code])
    center = logic.proposeLesionCentre()

    point = logic.lesionPointNode()
    assert point.GetName() == LESION_POINT_NAME and point.GetNumberOfControlPoints() == 1
    ras = [0.0, 0.0, 0.0]
    point.GetNthControlPointPositionWorld(0, ras)
    # The clicked/proposed RAS point, the library's LPS centre and the ground truth are one point.
    np.testing.assert_allclose(ras_to_lps(ras), center, atol=1e-6)
    np.testing.assert_allclose(ras_to_lps(ras), sample["lesion_center_lps"], atol=1e-3)
    np.testing.assert_allclose(ras_to_lps(ras), _largest_axial_centroid_lps(labels), atol=1e-6)
    # Slicer's own RAS->IJK of the reference node puts the point in the tumour.
    ijk = np.linalg.solve(_ijk_to_ras(registered[ref_code]), [*ras, 1.0])[:3]
    assert labels.array[tuple(np.round(ijk[::-1]).astype(int))] == 2

    roi = logic.showRoiBox(True)
    np.testing.assert_allclose(roi.GetSize(), (140.0, 140.0, 160.0))
    np.testing.assert_allclose(roi_box_center_ras(roi), ras, atol=1e-6)
    assert roi.GetLocked()


def test_roi_box_follows_the_point_and_hides_without_it(scene):
    point = ensure_lesion_point(scene)
    roi = ensure_roi_box(scene)
    follower = RoiFollower(point, roi)
    assert not roi.GetDisplayNode().GetVisibility()
    set_lesion_point_lps(point, (12.0, -30.0, 85.5))
    np.testing.assert_allclose(roi_box_center_ras(roi), [-12.0, 30.0, 85.5])
    point.SetNthControlPointPositionWorld(0, 1.0, 2.0, 3.0)
    np.testing.assert_allclose(roi_box_center_ras(roi), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(lesion_point_lps(point), [-1.0, -2.0, 3.0])
    assert roi.GetDisplayNode().GetVisibility()
    follower.stop()
    point.SetNthControlPointPositionWorld(0, 50.0, 2.0, 3.0)
    np.testing.assert_allclose(roi_box_center_ras(roi), [1.0, 2.0, 3.0])
    assert ensure_lesion_point(scene) is point and ensure_roi_box(scene) is roi


def test_unplaced_point_is_reported(scene):
    with pytest.raises(ValueError, match="place the lesion centre"):
        lesion_point_lps(ensure_lesion_point(scene))


def test_parameter_node_keeps_phases_and_strings(scene):
    a = node_from_volume(Volume(np.zeros((3, 4, 5), np.int16), (1, 1, 1), (0, 0, 0)), "a", scene)
    p = Parameters(scene)
    p.set_phase_node("A", a)
    p["BundleFolder"] = "/models/b"
    again = Parameters(scene)
    assert again.node is p.node and again.phase_nodes() == {"A": a} and again["BundleFolder"] == "/models/b"
    assert again["Device"] == "cpu"
    with pytest.raises(KeyError):
        again["NoSuchKey"] = 1


# Child-process protocol ------------------------------------------------------------------------------
def _script(tmp_path, body, name="child.py"):
    path = tmp_path / name
    path.write_text("import json, os, sys, time\n"
                    "def emit(**kw):\n    sys.stdout.write(json.dumps(kw) + '\\n'); sys.stdout.flush()\n"
                    + textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def _run(argv, **extra):
    events = []
    job = ChildProcess(PopenBackend(), on_progress=lambda *a: events.append(("progress",) + a),
                       on_log=lambda m: events.append(("log", m)), on_result=lambda r: events.append(("result", r)),
                       on_error=lambda m, c: events.append(("error", m, c)),
                       on_finished=lambda j: events.append(("finished", j.status)), **extra)
    return job, events


def test_child_protocol_lines_reach_the_callbacks_in_order(tmp_path):
    argv = _script(tmp_path, """
        emit(event="progress", step="register", fraction=0.25, message="3 phases")
        sys.stdout.write('{"event": "log", "mes'); sys.stdout.flush(); time.sleep(0.2)
        sys.stdout.write('sage": "half a line, then the rest"}\\nnot json at all\\n'); sys.stdout.flush()
        print("nnU-Net chatter", file=sys.stderr, flush=True)
        emit(event="progress", step="models", fraction=0.9, message="")
        emit(event="result", assessment="out/assessment.json", summary={"risk_group": "low"})
        """)
    job, events = _run(argv)
    job.start(argv)
    assert job.wait(30) == "succeeded"
    # stderr is read beside stdout, so only its presence is certain, not its place in the sequence.
    assert ("log", "nnU-Net chatter") in events
    stdout_events = [e for e in events if e != ("log", "nnU-Net chatter")]
    assert stdout_events == [
        ("progress", "register", 0.25, "3 phases"), ("log", "half a line, then the rest"), ("log", "not json at all"),
        ("progress", "models", 0.9, ""),
        ("result", {"assessment": "out/assessment.json", "summary": {"risk_group": "low"}}), ("finished", "succeeded")]
    assert job.exit_code == 0 and job.fraction == 1.0 and job.result["assessment"] == "out/assessment.json"


def test_child_error_event_and_stderr_error_line_become_the_failure_message(tmp_path):
    argv = _script(tmp_path, """
        emit(event="error", message="ct.nii.gz: truncated NIfTI", exit_code=2)
        sys.exit(2)
        """, "a.py")
    job, events = _run(argv)
    job.start(argv)
    assert job.wait(30) == "failed" and job.error == "ct.nii.gz: truncated NIfTI" and job.exit_code == 2
    assert ("error", "ct.nii.gz: truncated NIfTI", 2) in events

    argv = _script(tmp_path, """
        print("Traceback noise", file=sys.stderr)
        print("renalclip: error: labels.nii.gz: segmentation holds no tumor (2) or cyst (3) voxel", file=sys.stderr)
        print("trailing", file=sys.stderr)
        sys.exit(2)
        """, "b.py")
    job, _ = _run(argv)
    job.start(argv)
    assert job.wait(30) == "failed"
    assert job.error == "labels.nii.gz: segmentation holds no tumor (2) or cyst (3) voxel"

    job, events = _run([str(tmp_path / "does-not-exist")])
    job.start([str(tmp_path / "does-not-exist")])
    assert job.status == "failed" and "cannot start" in job.error and events[-1] == ("finished", "failed")


def test_cancel_kills_the_child_and_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    argv = _script(tmp_path, f"""
        import subprocess
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w", encoding="utf-8").write(str(g.pid))
        emit(event="progress", step="models", fraction=0.1, message="slow")
        time.sleep(120)
        """)
    job, events = _run(argv)
    job.start(argv)
    t0 = time.monotonic()
    while not any(e[0] == "progress" for e in events):
        job.backend.pump(0.1)
        assert time.monotonic() - t0 < 30
    job.cancel()
    assert job.wait(15) == "cancelled"
    assert time.monotonic() - t0 < 30 and events[-1] == ("finished", "cancelled")
    gpid = int(pid_file.read_text(encoding="utf-8"))
    for _ in range(50):
        try:
            os.kill(gpid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{gpid}/stat").exists() and Path(f"/proc/{gpid}/stat").read_text(encoding="utf-8").split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived Cancel")


# Command builders --------------------------------------------------------------------------------------
def test_analyze_command_is_the_documented_command_line():
    argv = commands.analyze_command(["py", "-m", "renalclip_lib.cli"], {"V": "v.nii", "A": "a.nii", "N": None},
                                    bundle="B", out="o.json", center_ras=(1, -2.5, 3), report=True, panel="p.png")
    assert argv == ["py", "-m", "renalclip_lib.cli", "analyze", "--phase", "A=a.nii", "--phase", "V=v.nii",
                    "--center-ras", "1.0", "-2.5", "3.0", "--bundle", "B", "--out", "o.json", "--report",
                    "--panel", "p.png", "--device", "cpu", "--progress-json"]
    seg = commands.analyze_command(["r"], {"A": "a"}, "B", "o.json", segment_with="nn", device="cuda:1")
    assert seg[seg.index("--segment-with") + 1] == "nn" and seg[seg.index("--device") + 1] == "cuda:1"
    both = commands.analyze_command(["r"], {"A": "a"}, "B", "o.json", center_ras=(1, 2, 3), segmentation="l.nii.gz")
    assert both[both.index("--center-ras") + 1:both.index("--center-ras") + 4] == ["1.0", "2.0", "3.0"]
    assert both[both.index("--segmentation") + 1] == "l.nii.gz"
    for bad, msg in ((dict(phases={"A": "a"}), "give a lesion centre"),
                     (dict(phases={"A": "a"}, center_ras=(0, 0, 0), center_lps=(0, 0, 0)), "once"),
                     (dict(phases={"A": "a"}, segmentation="l", segment_with="m"), "not both"),
                     (dict(phases={}, center_ras=(0, 0, 0)), "at least one phase"),
                     (dict(phases={"X": "x"}, center_ras=(0, 0, 0)), "unknown phase"),
                     (dict(phases={"A": "a"}, center_ras=(0, 0, 0), device="gpu"), "device")):
        phases = bad.pop("phases")
        with pytest.raises(ValueError, match=msg):
            commands.analyze_command(["r"], phases, "B", "o.json", **bad)
    assert commands.segmentation_command(["r"], "ct.nii", "M", "l.nii.gz") == [
        "r", "segmentation", "predict", "ct.nii", "--model", "M", "--out", "l.nii.gz", "--device", "cpu"]
    env = commands.child_environment({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [commands.library_root(), "/x"]
    assert (Path(commands.library_root()) / "renalclip_lib" / "__init__.py").is_file()


FAKE_CLI = '''
import json, sys
import numpy as np
from renalclip_lib.io import read_volume
from renalclip_lib.progress import ProgressReporter

args = sys.argv[1:]
rep = ProgressReporter(json_lines="--progress-json" in args)
def value(flag, n=1):
    i = args.index(flag)
    return args[i + 1:i + 1 + n]
if args[0] == "batch":
    rep.result(cases=1, argv=args)
    sys.exit(0)
if args[:2] == ["segmentation", "predict"]:
    import os, shutil
    image = read_volume(args[2])  # the reference phase the panel wrote
    labels = read_volume(os.environ["FAKE_LABELS"])
    assert image.array.shape == labels.array.shape and np.allclose(image.origin, labels.origin), "wrong grid"
    assert value("--model") == ["MODEL"]
    print("nnU-Net: predicting", file=sys.stderr)
    shutil.copy(os.environ["FAKE_LABELS"], value("--out")[0])
    print(json.dumps({"labels": value("--out")[0]}))
    sys.exit(0)
phases = dict(v.split("=", 1) for i, v in enumerate(args) if i and args[i - 1] == "--phase")
rep.progress("register", 0.2, f"{len(phases)} phases")
ras = np.array([float(v) for v in value("--center-ras", 3)])
measured = read_volume(value("--segmentation")[0]) if "--segmentation" in args else None
lps = ras * np.array([-1.0, -1.0, 1.0])
vols = {p: read_volume(f) for p, f in phases.items()}
ref = vols["A"]
shapes = {p: list(v.array.shape) for p, v in vols.items()}
out = value("--out")[0]
assessment = {
    "schema_version": 1, "disclaimer": "fake",
    "tasks": {"renal_R": {"probabilities": [0.1, 0.2, 0.7], "predicted_class": 2, "points": 3, "label": ">= 7 cm"},
              "renal_E": {"probabilities": [0.6, 0.3, 0.1], "predicted_class": 0, "points": 1, "label": ">= 50% exophytic"},
              "renal_N": None,
              "renal_A": {"probabilities": [0.2, 0.7, 0.1], "predicted_class": 1, "points": None, "label": "posterior"},
              "renal_L": {"probabilities": [0.1, 0.1, 0.8], "predicted_class": 2, "points": 3, "label": "x"},
              "malignancy": {"probability": 0.91, "threshold": 0.5, "positive": True, "label": "malignant"},
              "aggressiveness": {"probability": 0.2, "threshold": 0.4, "positive": False, "label": "indolent"}},
    "nephrometry": {"total": None, "suffix": "p", "complexity": None},
    "survival": {"endpoint": "rfs", "risk_score": 0.42, "threshold": 0.1, "risk_group": "high"},
    "zeroshot": None,
    "report": {"text": "Findings: right renal mass.\\nImpression: suspicious.", "findings": "right renal mass.",
               "impression": "suspicious."} if "--report" in args else None,
    "center": {"lps": lps.tolist(), "ras": ras.tolist(), "source": "point",
               "voxel_label": None},
    "measurement": None if measured is None else {"side": "left", "diameters_cm": [5.2, 4.1, 3.8],
                                                  "lesion_voxels": int((measured.array == 2).sum())},
    "phases": {"used": sorted(phases), "reference": "A", "fusion": len(phases) > 1, "shapes": shapes},
    "warnings": ["no N head"], "models": {}, "timings": {},
}
json.dump(assessment, open(out, "w", encoding="utf-8"))
rep.progress("models", 1.0, "done")
rep.result(assessment=out, summary={"risk_group": "high"})
'''


def test_segmentation_and_analysis_run_in_children_and_fill_the_scene(scene, sample, tmp_path, monkeypatch):
    fake = tmp_path / "fake_renalclip.py"
    fake.write_text(FAKE_CLI, encoding="utf-8")
    monkeypatch.setenv("FAKE_LABELS", sample["labels"]["A"])
    logic = CaseLogic(scene, renalclipPrefix=[sys.executable, str(fake)], workFolder=tmp_path / "work")
    load_sample_case(scene, Path(sample["images"]["A"]).parents[1], matrix=64)
    logic.guessPhaseNodes()
    logic.registerPhases()
    logs = []
    job = logic.startSegmentation("MODEL", on_log=logs.append)
    assert job.wait(60) == "succeeded", job.error
    assert "nnU-Net: predicting" in logs
    seg = logic.params.node_for("Segmentation").GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["Kidney", "Tumor"]
    logic.proposeLesionCentre()

    progress = []
    job = logic.startAnalysis("BUNDLE", report=True, on_progress=lambda *a: progress.append(a))
    assert job.wait(60) == "succeeded", job.error
    assert progress[0][0] == "register" and progress[-1][1] == 1.0
    a = logic.assessment
    # The child received the registered phases on one grid and the proposed point as RAS.
    assert a["phases"]["used"] == sorted(sample["images"])
    assert len({tuple(s) for s in a["phases"]["shapes"].values()}) == 1
    np.testing.assert_allclose(a["center"]["lps"], sample["lesion_center_lps"], atol=1e-3)
    # ... and the reviewed segmentation, exported on the reference grid, to be measured.
    from renalclip_lib.io import read_volume

    reviewed = read_volume(tmp_path / "work" / "segmentation_reviewed.nii.gz")
    np.testing.assert_array_equal(reviewed.array, read_volume(sample["labels"]["A"]).array)
    assert a["measurement"]["lesion_voxels"] == int((reviewed.array == 2).sum()) > 0

    table = logic.resultsTableNode()
    rows = [[table.GetCellText(r, c) for c in range(4)] for r in range(table.GetNumberOfRows())]
    assert rows[0] == ["R: Radius", ">= 7 cm", "0.700", "3"]
    assert ["Measured size", "5.2 x 4.1 x 3.8 cm", "", "left kidney"] in rows
    assert not any(r[0].startswith("N:") for r in rows), "a null task has no row"
    assert ["Malignancy", "malignant", "0.910", ""] in rows
    assert rows[-1][:2] == ["Survival risk", "high risk"]
    assert "malignancy 0.91" in logic.summaryLine() and "high risk" in logic.summaryLine()

    logic.job.status = "running"
    with pytest.raises(RuntimeError, match="another RenalCLIP job"):
        logic.startAnalysis("BUNDLE")
    logic.job.status = "succeeded"

    batch = logic.analyzeManifest(tmp_path / "manifest.csv", "BUNDLE", tmp_path / "batch", log=None)
    assert batch["argv"][:7] == ["batch", "--manifest", str(tmp_path / "manifest.csv"), "--bundle", "BUNDLE",
                                 "--out", str(tmp_path / "batch")]


def test_results_rows_summary_and_saved_report(tmp_path):
    a = {"schema_version": 1, "tasks": {
        "renal_R": {"probabilities": [0.7, 0.2, 0.1], "predicted_class": 0, "points": 1, "label": "<= 4 cm"},
        "renal_E": None, "renal_N": None, "renal_A": None, "renal_L": None, "malignancy": None,
        "aggressiveness": {"probability": 0.83, "threshold": 0.5, "positive": True}},
        "nephrometry": {"total": 9, "suffix": "a", "complexity": "moderate"}, "survival": None,
        "zeroshot": {"BMC": {"probability": 0.66, "label": "malignant"}}, "report": {"text": "Findings: x."},
        "center": {}, "phases": {}, "warnings": [], "models": {}, "timings": {}}
    rows = table_rows(a)
    assert rows == [("R: Radius", "<= 4 cm", "0.700", "1"), ("R.E.N.A.L. score", "9a", "", "9 (moderate complexity)"),
                    ("Aggressiveness", "aggressive", "0.830", ""),
                    ("Zero-shot benign vs malignant", "malignant", "0.660", "")]
    line = summary_line(a)
    assert "R.E.N.A.L. 9a (moderate)" in line and "aggressiveness 0.83" in line and "malignancy" not in line
    path = tmp_path / "assessment.json"
    path.write_text(json.dumps(a), encoding="utf-8")
    assert load_assessment(path)["nephrometry"]["total"] == 9
    txt, js = save_report(tmp_path / "r.txt", tmp_path / "r.json", "Findings: edited.", a)
    assert txt.read_text(encoding="utf-8") == "Findings: edited.\n"
    saved = json.loads(js.read_text(encoding="utf-8"))
    assert saved["report"]["text"] == "Findings: edited." and saved["report"]["generated_text"] == "Findings: x."
    path.write_text(json.dumps({**a, "schema_version": 7}), encoding="utf-8")
    with pytest.raises(Exception, match="assessment.json: assessment schema version 7"):
        load_assessment(path)


# Dependencies --------------------------------------------------------------------------------------------
class _FakeSlicer:
    def __init__(self, testing=False, packaging=False, confirm=True):
        self.calls = []
        self.app = SimpleNamespace(testingEnabled=lambda: testing)
        self.util = SimpleNamespace(
            confirmOkCancelDisplay=lambda *a, **k: self.calls.append(("confirm",)) or confirm,
            pip_install=lambda args: self.calls.append(("pip_install", list(args))))
        if packaging:
            self.packaging = SimpleNamespace(
                pip_ensure=lambda reqs, requester, constraints: self.calls.append(("pip_ensure", list(reqs), constraints)))


def test_dependencies_ask_once_and_never_touch_slicers_own_packages():
    installed = {"scipy": "1.17.1", "nibabel": "5.4.2", "numpy": "2.3.5", "SimpleITK": "2.5.7"}
    present = set()

    def find_spec(name):
        return object() if name in present or name in ("scipy", "nibabel") else None

    def version_of(name):
        return installed.get(name)

    # Declined: nothing is installed.
    fake = _FakeSlicer(confirm=False)
    assert dependencies.DependencyInstaller(fake, find_spec, version_of).ensure(["core"]) is False
    assert fake.calls == [("confirm",)]
    # Accepted: pip_install with a constraints file pinning numpy and SimpleITK at Slicer's versions.
    fake = _FakeSlicer()
    pinned = []
    fake.util.pip_install = lambda args: (fake.calls.append(("pip_install", list(args))), present.add("yaml"),
                                          pinned.append(Path(args[2]).read_text(encoding="utf-8")))
    assert dependencies.DependencyInstaller(fake, find_spec, version_of).ensure(["core"]) is True
    (kind, args), = [c for c in fake.calls if c[0] == "pip_install"]
    assert args[0] == "pyyaml>=6.0" and args[1] == "-c"
    assert pinned == ["numpy==2.3.5\nSimpleITK==2.5.7\n"]
    assert not Path(args[2]).exists(), "the constraints file outlives the install"
    assert not any(dependencies.distribution_name(a) in dependencies.PROTECTED for a in args)
    # Testing mode: no question asked.
    present.discard("yaml")
    fake = _FakeSlicer(testing=True, packaging=True)
    fake.util.pip_install = lambda args: (fake.calls.append(("pip_install", list(args))), present.add("yaml"))
    assert dependencies.DependencyInstaller(fake, find_spec, version_of).ensure(["core"]) is True
    assert [c[0] for c in fake.calls] == ["pip_install"]
    # slicer.packaging asks itself (once) where Slicer has it.
    present.discard("yaml")
    fake = _FakeSlicer(packaging=True)
    fake.packaging.pip_ensure = lambda reqs, requester, constraints: (fake.calls.append(("pip_ensure", list(reqs))),
                                                                       present.add("yaml"))
    assert dependencies.DependencyInstaller(fake, find_spec, version_of).ensure(["core"]) is True
    assert fake.calls == [("pip_ensure", ["pyyaml>=6.0"])]
    # PyTorch goes through the PyTorch extension when it is there.
    torch_calls = []
    utils = SimpleNamespace(PyTorchUtilsLogic=lambda: SimpleNamespace(
        installTorch=lambda askConfirmation, torchVersionRequirement: torch_calls.append(
            (askConfirmation, torchVersionRequirement)) or present.add("torch") or "torch"))
    present.update({"yaml", "monai", "tqdm", "sklearn"})
    fake = _FakeSlicer()
    assert dependencies.DependencyInstaller(fake, find_spec, version_of, pytorch_utils=utils).ensure(["analysis"])
    assert torch_calls == [(True, ">=2.2")] and fake.calls == []


def test_dependency_versions_follow_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.update(extra)
    for feature, specs in dependencies.FEATURES.items():
        for spec in specs:
            assert spec in declared, f"{feature}: {spec} is not in pyproject.toml"
            assert dependencies.distribution_name(spec) not in dependencies.PROTECTED
    assert dependencies.missing(["numpy>=1.0"]) == [] and dependencies.missing(["numpy>=99"]) == ["numpy>=99"]
    assert dependencies.missing(["no-such-package-xyz"]) == ["no-such-package-xyz"]


# Static checks: widget <-> .ui, CMakeLists ----------------------------------------------------------------
EXPECTED_CLASS_BY_SUFFIX = (
    ("CollapsibleButton", "ctkCollapsibleButton"), ("Selector", "qMRMLNodeComboBox"), ("PathLineEdit", "ctkPathLineEdit"),
    ("PlaceWidget", "qSlicerMarkupsPlaceWidget"), ("TableView", "qMRMLTableView"), ("CheckBox", "QCheckBox"),
    ("ComboBox", "QComboBox"), ("TextEdit", "QPlainTextEdit"), ("ProgressBar", "QProgressBar"), ("Label", "QLabel"),
    ("Button", "QPushButton"))


def _ui_widgets():
    tree = ET.parse(MODULE / "Resources" / "UI" / "RenalCLIP.ui")
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}, tree


def _widget_names_used():
    tree = ast.parse((MODULE / "RenalCLIP.py").read_text(encoding="utf-8"))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
             and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    src = (MODULE / "RenalCLIP.py").read_text(encoding="utf-8")
    names |= set(re.findall(r'"(\w+(?:Selector|Button))"', src))
    return names


def test_every_widget_the_panel_uses_is_in_the_ui_file_with_the_expected_class():
    widgets, tree = _ui_widgets()
    used = _widget_names_used()
    assert len(used) > 25
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in RenalCLIP.ui"
        expected = next((cls for suffix, cls in EXPECTED_CLASS_BY_SUFFIX if name.lower().endswith(suffix.lower())), None)
        assert expected is not None, f"no naming rule for {name}"
        assert widgets[name] == expected, f"{name} is a {widgets[name]}, expected {expected}"
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    assert {c for c in widgets.values() if c.startswith(("q", "ctk"))} <= declared
    for conn in tree.iter("connection"):
        assert conn.findtext("receiver") in widgets
    mrml_widgets = {n for n, c in widgets.items() if c in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget", "qMRMLTableView")}
    assert mrml_widgets <= {c.findtext("receiver") for c in tree.iter("connection")}, "every MRML widget gets the scene"


def test_cmakelists_lists_every_module_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "RenalCLIP")
    listed = set(re.findall(r"^\s+([\w/.]+\.(?:py|png|ui))\s*$", text, re.M))
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*")
               if p.is_file() and p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert listed == on_disk
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(RenalCLIP)" in top and "renalclip_lib/*.py" in top and "ctkMacroCompilePythonScript" in top
    assert "WITH_GENERIC_TESTS" in text


def test_readme_documents_the_self_test_command_of_the_module():
    module_src = (MODULE / "RenalCLIP.py").read_text(encoding="utf-8")
    assert SELF_TEST in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "class RenalCLIPTest(ScriptedLoadableModuleTest)" in module_src and "def test_workflow_on_sample_case" in module_src


@pytest.mark.skipif(getattr(slicer, "app", None) is None,
                    reason="the module's ScriptedLoadableModuleTest needs the 3D Slicer application; run: " + SELF_TEST)
def test_module_self_test_in_real_slicer():
    import RenalCLIP

    RenalCLIP.RenalCLIPTest().runTest()


def test_panel_runs_the_real_renalclip_analyze_in_a_child(scene, sample, tmp_path):
    """The contract end to end: our argv, the real command line, its JSON lines, its assessment.json."""
    torch = pytest.importorskip("torch")
    from renalclip_lib.inference import build_bundle
    from renalclip_lib.models import ClassifierHead, ImageEncoder, save_image_model
    from renalclip_lib.tasks import TASKS

    torch.manual_seed(0)
    heads = {t: ClassifierHead(len(TASKS[t].classes), in_dim=32, hidden=8) for t in ("renal_R", "malignancy")}
    tasks_pt = save_image_model(tmp_path / "run" / "tasks.pt", ImageEncoder(width=4, embed_dim=16), heads)
    bundle = build_bundle(tmp_path / "bundle", heads=tasks_pt, synthetic=True)

    logic = CaseLogic(scene, backendFactory=PopenBackend, workFolder=tmp_path / "work")
    load_sample_case(scene, Path(sample["images"]["A"]).parents[1], matrix=64)
    logic.guessPhaseNodes()
    logic.registerPhases()
    set_lesion_point_lps(logic.lesionPointNode(), sample["lesion_center_lps"])
    steps = []
    job = logic.startAnalysis(str(bundle), on_progress=lambda step, f, m: steps.append(step))
    assert job.wait(240) == "succeeded", job.error
    a = logic.assessment
    assert steps and a["schema_version"] == 1
    np.testing.assert_allclose(a["center"]["lps"], sample["lesion_center_lps"], atol=1e-3)  # stored to 0.001 mm
    assert a["tasks"]["renal_E"] is None and a["tasks"]["renal_R"] is not None
    table = logic.resultsTableNode()
    tasks = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]
    assert tasks == ["R: Radius", "Malignancy"]
    assert logic.summaryLine().startswith("malignancy ")
