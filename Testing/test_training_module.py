"""The RenalCLIPTraining Slicer module without a GUI: its command line, its logic following real
child processes (a scripted stand-in for the pipeline and the real ``renalclip train all``), Stop,
``train.py`` under a plain Python, and static checks of the widget, the .ui file and CMakeLists.

Expectations come from what the stand-in child prints (its own stage sequence), from the
documented command line and exit codes, and from the files on disk, never from the code under test.
"""
import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML) is not installed")

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "RenalCLIPTraining"
TRAIN_PY = MODULE / "train.py"
DEMO = ROOT / "Resources" / "configs" / "demo.yaml"
sys.path.insert(0, str(MODULE))

from RenalCLIPTrainingLib.commands import parse_stages, train_all_command  # noqa: E402  (puts RenalCLIPLib on the path)
from RenalCLIPLib.child_process import PopenBackend  # noqa: E402
from RenalCLIPTrainingLib.logic import TrainingLogic  # noqa: E402
from RenalCLIPTrainingLib.parameters import TrainingParameters  # noqa: E402
from RenalCLIPTrainingLib.stage_progress import StageProgress  # noqa: E402

ALL = ["cache", "attributes", "text", "text-features", "clip", "finetune", "survival", "report", "evaluate", "bundle"]
PREFIX = ["py", "-m", "renalclip_lib.cli"]
SLICER_HEADLESS = "Slicer --no-main-window --python-script RenalCLIPTraining/train.py --config"


@pytest.fixture()
def scene():
    sc = slicer.vtkMRMLScene()
    slicer.mrmlScene = sc
    yield sc
    sc.Clear(1)


# Command line ------------------------------------------------------------------------------------------
def test_train_all_command_is_the_documented_command_line():
    argv = train_all_command(PREFIX, "demo.yaml", "run", manifest="cohort/manifest.csv", gpus=2,
                             stages="finetune, cache", overrides=["finetune.optim.epochs=2"])
    assert argv == PREFIX + ["train", "all", "--config", "demo.yaml", "--out", "run", "--stages", "cache,finetune",
                             "--gpus", "2", "--set", "data.manifest=cohort/manifest.csv",
                             "--set", "finetune.optim.epochs=2", "--progress-json"]
    assert train_all_command(PREFIX, "c.yaml", "r") == PREFIX + ["train", "all", "--config", "c.yaml", "--out", "r",
                                                                 "--gpus", "1", "--progress-json"]
    every = train_all_command(PREFIX, "c.yaml", "r", stages=",".join(reversed(ALL)), gpus="4", nnodes=2,
                              rdzv_endpoint="node0.cluster:29500")
    assert every == PREFIX + ["train", "all", "--config", "c.yaml", "--out", "r", "--gpus", "4", "--nnodes", "2",
                              "--rdzv-endpoint", "node0.cluster:29500", "--progress-json"]
    assert parse_stages("") == [] and parse_stages(["bundle", "text"]) == ["text", "bundle"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(config="", out="r"), "config"),
    (dict(config="c.yaml", out=""), "output folder"),
    (dict(config="c.yaml", out="r", stages="cache,trian"), "unknown stage 'trian'"),
    (dict(config="c.yaml", out="r", gpus=0), "GPUs"),
    (dict(config="c.yaml", out="r", gpus=1.5), "GPUs"),
    (dict(config="c.yaml", out="r", nnodes=2), "rendezvous endpoint"),
    (dict(config="c.yaml", out="r", nnodes=2, rdzv_endpoint="node0"), "rendezvous endpoint"),
    (dict(config="c.yaml", out="r", overrides=["epochs"]), "KEY=VALUE"),
])
def test_bad_choices_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_all_command(PREFIX, **kwargs)


# Stage progress from protocol events -----------------------------------------------------------------------
def test_stage_statuses_follow_the_pipeline_events():
    sp = StageProgress(["cache", "attributes", "text", "clip"])
    sp.on_progress("cache", 0.0, "starting")
    assert sp.statuses() == {"cache": "running", "attributes": "pending", "text": "pending", "clip": "pending"}
    sp.on_log("cache lesion: 19/19")
    assert sp["cache"].message == "cache lesion: 19/19"
    sp.on_log("cache: done in 4.5 s")
    sp.on_progress("attributes", 0.25, "starting")
    sp.on_log('{"epoch": 2, "train_loss": 0.6931, "lr": 0.001}')
    assert sp["attributes"].status == "running" and sp["attributes"].message == "epoch 3, loss 0.6931"
    sp.on_progress("text", 0.5, "starting")            # no "done" line: moving on means the stage ended
    sp.on_log("text: skipped: no report text (findings/impression columns) in the manifest")
    sp.on_progress("clip", 0.75, "starting")
    sp.on_finished("failed", "clip: out of memory")
    assert sp.statuses() == {"cache": "done", "attributes": "done", "text": "skipped", "clip": "failed"}
    assert sp["cache"].seconds == 4.5 and sp["cache"].fraction == 1.0
    assert sp["text"].message.startswith("no report text") and sp["clip"].message == "clip: out of memory"


# The logic following child processes --------------------------------------------------------------------
FAKE_PIPELINE = """
import json, os, sys, time
args = sys.argv[1:]
json.dump(args, open(os.environ["FAKE_ARGV_FILE"], "w", encoding="utf-8"))
out = args[args.index("--out") + 1]
def emit(**e):
    print(json.dumps(e), flush=True)
    time.sleep(0.05)
stages = ["cache", "attributes", "text", "finetune", "evaluate"]
for i, s in enumerate(stages):
    emit(event="progress", step=s, fraction=i / len(stages), message="starting")
    if s == "attributes":
        emit(event="log", message="attributes: already finished (delete run/pipeline/attributes.json to rerun)")
    elif s == "text":
        emit(event="log", message="text: skipped: no report text (findings/impression columns) in the manifest")
    else:
        emit(event="log", message=json.dumps({"epoch": 0, "train_loss": 1.25}))
        print("a warning on stderr", file=sys.stderr, flush=True)
        if s == "evaluate":
            os.makedirs(os.path.join(out, "evaluation"))
            open(os.path.join(out, "evaluation", "index.html"), "w", encoding="utf-8").write("<html></html>")
        emit(event="log", message=f"{s}: done in {i + 1}.5 s")
emit(event="progress", step="done", fraction=1.0, message="pipeline finished")
emit(event="result", stages={"cache": {"status": "done", "seconds": 1.5},
                             "attributes": {"status": "done earlier", "seconds": 0.0},
                             "text": {"status": "skipped", "reason": "no report text", "seconds": 0.0},
                             "finetune": {"status": "done", "seconds": 4.5},
                             "evaluate": {"status": "done", "seconds": 5.5}})
"""


def _fake_logic(tmp_path, body, name="fake_pipeline.py"):
    script = tmp_path / name
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return TrainingLogic(backendFactory=PopenBackend, renalclipPrefix=[sys.executable, str(script)])


def test_logic_follows_the_child_stage_by_stage_to_the_report(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ARGV_FILE", str(tmp_path / "argv.json"))
    logic = _fake_logic(tmp_path, FAKE_PIPELINE)
    seen, logs, finished = [], [], []
    run = tmp_path / "run"
    job = logic.startTraining("demo.yaml", str(run), manifest="m.csv", gpus=2,
                              stages="evaluate,finetune,text,attributes,cache",
                              on_stages=lambda p: seen.append(p.statuses()), on_log=logs.append,
                              on_finished=finished.append)
    assert logic.running and logic.reportPath() is None
    assert job.wait(30) == "succeeded" and finished == [job]

    assert json.loads((tmp_path / "argv.json").read_text(encoding="utf-8")) == [
        "train", "all", "--config", "demo.yaml", "--out", str(run), "--stages", "cache,attributes,text,finetune,evaluate",
        "--gpus", "2", "--set", "data.manifest=m.csv", "--progress-json"]
    assert logic.stageProgress.statuses() == {"cache": "done", "attributes": "done earlier", "text": "skipped",
                                              "finetune": "done", "evaluate": "done"}
    assert [logic.stageProgress[s].seconds for s in ("cache", "finetune", "evaluate")] == [1.5, 4.5, 5.5]
    assert logic.stageProgress["text"].message == "no report text"
    assert logic.stageProgress.fraction == 1.0
    # the log lines alone gave each stage its final status, before the closing result event
    first_final = {stage: next(s[stage] for s in seen if s[stage] not in ("pending", "running"))
                   for stage in logic.stageProgress.states}
    assert first_final == logic.stageProgress.statuses()
    # each trained stage was seen running before it was done
    for stage in ("cache", "finetune", "evaluate"):
        states = [s[stage] for s in seen]
        assert "running" in states and states.index("running") < states.index("done")
    assert "a warning on stderr" in logs
    assert logic.reportPath() == run / "evaluation" / "index.html"
    params = TrainingParameters(scene)
    assert (params["ConfigPath"], params["OutputFolder"], params["ManifestPath"], params.gpus()) == \
        ("demo.yaml", str(run), "m.csv", 2)
    assert params["Stages"] == "cache,attributes,text,finetune,evaluate"


def test_inputs_default_to_the_parameter_node(scene, tmp_path):
    params = TrainingParameters(scene)
    params["ConfigPath"], params["OutputFolder"], params["GPUs"] = "paper.yaml", "runs/a", "8"
    params["Overrides"] = "model.width=16; finetune.optim.epochs=3"
    logic = TrainingLogic(renalclipPrefix=PREFIX)
    assert logic.trainCommand() == PREFIX + ["train", "all", "--config", "paper.yaml", "--out", "runs/a", "--gpus", "8",
                                             "--set", "model.width=16", "--set", "finetune.optim.epochs=3",
                                             "--progress-json"]


class DirectChildOnlyBackend(PopenBackend):
    """Kills only the child itself, as Qt's QProcess does inside Slicer (its workers share Slicer's group)."""

    def kill(self):
        self.process.kill()


def _gone(pid: int) -> bool:
    for _ in range(50):
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text(encoding="utf-8").split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("backend", [PopenBackend, DirectChildOnlyBackend])
def test_stop_kills_the_run_and_its_workers(scene, tmp_path, backend):
    pids = tmp_path / "pids.txt"
    launcher = (f"import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
                f"open({str(pids)!r}, 'a', encoding='utf-8').write(str(w.pid) + chr(10)); time.sleep(120)")
    logic = _fake_logic(tmp_path, f"""
        import json, subprocess, sys, time
        def emit(**e):
            print(json.dumps(e), flush=True)
        emit(event="progress", step="cache", fraction=0.0, message="starting")
        emit(event="log", message="cache: done in 0.1 s")
        emit(event="progress", step="attributes", fraction=0.1, message="starting")
        torchrun = subprocess.Popen([sys.executable, "-c", {launcher!r}])
        open({str(pids)!r}, "a", encoding="utf-8").write(str(torchrun.pid) + chr(10))
        while len(open({str(pids)!r}, encoding="utf-8").read().split()) < 2:
            time.sleep(0.05)
        emit(event="log", message=json.dumps({{"epoch": 0, "train_loss": 2.0}}))
        time.sleep(120)
        """, "slow_pipeline.py")
    logic.backendFactory = backend
    finished = []
    job = logic.startTraining("c.yaml", str(tmp_path / "run"), on_finished=finished.append)
    t0 = time.monotonic()
    while logic.stageProgress["attributes"].message != "epoch 1, loss 2":
        job.backend.pump(0.1)
        assert time.monotonic() - t0 < 30, logic.stageProgress.statuses()
    assert logic.stageProgress["attributes"].status == "running"
    logic.stop()
    assert job.wait(15) == "cancelled" and finished == [job] and not logic.running
    assert logic.stageProgress.statuses()["cache"] == "done"
    assert logic.stageProgress["attributes"].status == "stopped"
    assert logic.stageProgress["text"].status == "pending"
    workers = [int(p) for p in pids.read_text(encoding="utf-8").split()]
    assert len(workers) == 2
    for pid in workers:
        assert _gone(pid), f"process {pid} survived Stop"


def test_real_pipeline_in_a_child_runs_the_cache_stage_and_reports_bad_config(scene, tmp_path):
    """Our argv through the real ``renalclip train all``: its JSON lines drive the stage table."""
    from renalclip_lib.phantom import write_cohort

    manifest = write_cohort(tmp_path / "cohort", n_patients=4, seed=5, matrix=48)
    logic = TrainingLogic(backendFactory=PopenBackend)
    run = tmp_path / "run"
    statuses = logic.train(str(DEMO), str(run), manifest=str(manifest), stages="cache", timeout=240, log=None)
    assert statuses == {"cache": "done"}
    state = json.loads((run / "pipeline" / "cache.json").read_text(encoding="utf-8"))
    assert logic.stageProgress["cache"].seconds == pytest.approx(state["seconds"], abs=0.06)
    assert (run / "cache").is_dir() and logic.reportPath() is None

    job = logic.startTraining(str(tmp_path / "missing.yaml"), str(run))
    assert job.wait(120) == "failed" and job.exit_code == 2
    assert job.error == f"{tmp_path / 'missing.yaml'}: config file not found"


# train.py ------------------------------------------------------------------------------------------------------
def _train_py(*args, cwd):
    return subprocess.run([sys.executable, str(TRAIN_PY), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_train_py_under_plain_python_exit_codes(tmp_path):
    missing = tmp_path / "nope.yaml"
    bad = _train_py("--config", str(missing), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [f"renalclip: error: {missing}: config file not found"]
    assert not (tmp_path / "run").exists()

    usage = _train_py("--help", cwd=tmp_path)
    assert usage.returncode == 0
    for option in ("--config", "--out", "--stages", "--gpus", "--nnodes", "--rdzv-endpoint", "--python-script"):
        assert option in usage.stdout

    passthrough = _train_py("phantom", "--help", cwd=tmp_path)
    assert passthrough.returncode == 0 and passthrough.stdout.startswith("usage: renalclip phantom")
    assert _train_py(cwd=tmp_path).returncode == 2     # no --config/--out: argparse's usage error


def _load_train_py():
    spec = importlib.util.spec_from_file_location("renalclip_train_script", TRAIN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_py_exits_through_slicer_when_inside_it(monkeypatch):
    mod = _load_train_py()
    assert mod.script_arguments(["--", "--config", "c"]) == ["--config", "c"]
    assert mod.renalclip_arguments(["--config", "c"]) == ["train", "all", "--config", "c"]
    assert mod.renalclip_arguments(["preprocess", "--out", "x"]) == ["preprocess", "--out", "x"]

    calls = []
    fake = SimpleNamespace(app=SimpleNamespace(exit=lambda c: calls.append(("app.exit", c))),
                           util=SimpleNamespace(exit=lambda c: calls.append(("util.exit", c))))
    monkeypatch.setitem(sys.modules, "slicer", fake)
    mod.exit_with(3)
    fake.util = SimpleNamespace()
    mod.exit_with(2)
    assert calls == [("util.exit", 3), ("app.exit", 2)]
    monkeypatch.setitem(sys.modules, "slicer", SimpleNamespace(app=None))
    with pytest.raises(SystemExit) as out:
        mod.exit_with(4)
    assert out.value.code == 4


# Static checks: widget <-> .ui, CMakeLists, README ------------------------------------------------------------
EXPECTED_CLASS_BY_SUFFIX = (
    ("CollapsibleButton", "ctkCollapsibleButton"), ("PathLineEdit", "ctkPathLineEdit"), ("LineEdit", "QLineEdit"),
    ("SpinBox", "QSpinBox"), ("TableWidget", "QTableWidget"), ("TextEdit", "QPlainTextEdit"),
    ("ProgressBar", "QProgressBar"), ("Label", "QLabel"), ("Button", "QPushButton"))


def _widget_names_used():
    src = (MODULE / "RenalCLIPTraining.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
             and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    return names | set(re.findall(r'"(\w+(?:LineEdit|SpinBox|Button))"', src))


def test_every_widget_the_panel_uses_is_in_the_ui_file_with_the_expected_class():
    tree = ET.parse(MODULE / "Resources" / "UI" / "RenalCLIPTraining.ui")
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    used = _widget_names_used()
    assert {"configPathLineEdit", "manifestPathLineEdit", "outputPathLineEdit", "gpusSpinBox", "stagesLineEdit",
            "startButton", "stagesTableWidget", "logTextEdit", "openReportButton", "progressBar"} <= used
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in RenalCLIPTraining.ui"
        expected = next((cls for suffix, cls in EXPECTED_CLASS_BY_SUFFIX if name.lower().endswith(suffix.lower())), None)
        assert expected is not None, f"no naming rule for {name}"
        assert widgets[name] == expected, f"{name} is a {widgets[name]}, expected {expected}"
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    assert {c for c in widgets.values() if c.startswith(("q", "ctk"))} <= declared


def test_cmakelists_lists_every_module_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "RenalCLIPTraining")
    listed = set(re.findall(r"^\s+([\w/.]+\.(?:py|png|ui))\s*$", text, re.M))
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*")
               if p.is_file() and p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert listed == on_disk
    assert "WITH_GENERIC_TESTS" in text and "add_subdirectory(RenalCLIPTraining)" in (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def test_readme_documents_the_training_entry_points():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Training pipeline (RenalCLIPTraining)"):]
    for needle in ("renalclip train all --config", "--gpus", "--nnodes 2 --rdzv-endpoint", SLICER_HEADLESS,
                   "benchmarks/gpu_check.py"):
        assert needle in section, needle


# The GPU check's settings and its bf16 detection (the whole check runs for minutes: benchmarks/gpu_check.py)
def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("renalclip_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_settings_are_valid_config_overrides():
    from renalclip_lib.config import load_config
    from renalclip_lib.training.cli_train import _overrides

    check = _load_gpu_check()
    for kind, setting in check.SETTINGS.items():
        cfg = load_config(str(DEMO), _overrides(check.overrides(setting) + [f"device={kind}"]))
        assert cfg.device == kind and cfg.model.width == setting["width"]
        assert cfg.attributes.optim.epochs == cfg.finetune.optim.epochs == cfg.clip.optim.epochs == 1
        assert cfg.report.stage_a.epochs == cfg.report.stage_b.epochs == cfg.report.tiny.optim.epochs == 1
        assert {cfg.attributes.optim.amp, cfg.report.stage_b.amp, cfg.text.amp} == {setting["amp"]}
    assert check.SETTINGS["cuda"]["matrix"] == 128 and check.SETTINGS["cuda"]["amp"] == "bf16"


def test_gpu_check_notes_bf16_autocast_only_when_enabled():
    import torch

    check = _load_gpu_check()
    original = torch.autocast
    with check.AutocastRecorder() as amp:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=False):
            pass
        assert amp.used == set()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=True):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        assert y.dtype == torch.bfloat16 and amp.used == {("cpu", "bfloat16")}
    assert torch.autocast is original
