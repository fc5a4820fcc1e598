"""``renalclip train all``: fail-fast checks before training, skipped stages, kill-and-resume, bundle."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renalclip_lib.config import load_config
from renalclip_lib.errors import ManifestError, MissingFileError
from renalclip_lib.phantom import write_cohort
from renalclip_lib.resources import resource_path
from renalclip_lib.training.cli_train import _overrides
from renalclip_lib.training.pipeline import preflight

CONFIG = str(resource_path("configs", "demo.yaml"))
TINY = ["model.width=4", "model.embed_dim=16", "attributes.optim.epochs=1", "finetune.optim.epochs=6",
        "survival.optim.epochs=1", "attributes.optim.num_workers=0", "finetune.optim.num_workers=0",
        "survival.optim.num_workers=0"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    manifest = write_cohort(root / "cohort", n_patients=20, seed=11, matrix=64,
                            cohorts={"pretrain": 0.3, "internal": 0.5, "tcia_like": 0.2})
    return manifest


def _edit(manifest: Path, out: Path, fn) -> Path:
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows = fn(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def _abs_paths(manifest: Path):
    def fn(rows):
        for r in rows:
            for col in ("image_path", "label_path"):
                if r.get(col):
                    r[col] = str((manifest.parent / r[col]).resolve())
        return rows
    return fn


def _cfg(manifest, *extra):
    return load_config(CONFIG, _overrides([f"data.manifest={manifest}", *extra]))


def test_leakage_between_splits_is_refused(cohort, tmp_path):
    def leak(rows):
        rows = _abs_paths(cohort)(rows)
        pid = next(r["patient_id"] for r in rows if r["split"] == "train")
        first = next(r for r in rows if r["patient_id"] == pid)
        clone = dict(first, split="val", phase="D" if first["phase"] != "D" else "N")
        return rows + [clone]
    bad = _edit(cohort, tmp_path / "m.csv", leak)
    with pytest.raises(ManifestError, match="leakage") as err:
        preflight(_cfg(bad), ["finetune"])
    assert "P0" not in str(err.value) and "patient#" in str(err.value)


def test_one_image_for_two_patients_is_refused(cohort, tmp_path):
    def share(rows):
        rows = _abs_paths(cohort)(rows)
        a, b = rows[0], next(r for r in rows if r["patient_id"] != rows[0]["patient_id"] and r["split"] == rows[0]["split"])
        b["image_path"] = a["image_path"]
        return rows
    with pytest.raises(ManifestError, match="two patients"):
        preflight(_cfg(_edit(cohort, tmp_path / "m.csv", share)), ["cache"])


def test_missing_files_and_model_folders_fail_before_training(cohort, tmp_path):
    def drop(rows):
        rows = _abs_paths(cohort)(rows)
        rows[3]["image_path"] = str(tmp_path / "nowhere.nii.gz")
        return rows
    with pytest.raises(ManifestError, match="nowhere"):
        preflight(_cfg(_edit(cohort, tmp_path / "m.csv", drop)), ["cache"])
    with pytest.raises(MissingFileError, match="no_such_llm"):
        preflight(_cfg(cohort, f"report.llm={tmp_path / 'no_such_llm'}"), ["report"])


def test_stages_without_labels_are_skipped_with_a_reason(cohort, tmp_path):
    def unlabel(rows):
        rows = _abs_paths(cohort)(rows)
        for r in rows:
            for c in ("rfs_time", "rfs_event"):
                r[c] = ""
        return rows
    pf = preflight(_cfg(_edit(cohort, tmp_path / "m.csv", unlabel)), ["survival", "finetune"])
    assert "survival" in pf.skip and "rfs" in pf.skip["survival"] and "finetune" not in pf.skip


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "renalclip_lib.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_finished_stages(cohort, tmp_path):
    run = tmp_path / "run"
    args = ["train", "all", "--config", CONFIG, "--out", str(run), "--stages",
            "cache,attributes,finetune,survival,evaluate,bundle", "--progress-json",
            "--set", f"data.manifest={cohort}", *sum((["--set", s] for s in TINY), [])]
    proc = _run(args)
    ft = run / "finetune" / "attributes"
    deadline = time.time() + 600
    while not (ft / "checkpoint_last.pt").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "pipeline" / "attributes.json").exists() and not (run / "pipeline" / "finetune.json").exists()
    assert not (ft / "finished.json").exists()
    attributes_mtime = (run / "attributes" / "best.pt").stat().st_mtime_ns
    import torch

    saved_epoch = torch.load(ft / "checkpoint_last.pt", map_location="cpu", weights_only=True)["epoch"]

    proc = _run(args)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "attributes: already finished" in logs and "cache: already finished" in logs
    assert f"checkpoint_last.pt at epoch {saved_epoch + 1}" in logs
    assert (run / "attributes" / "best.pt").stat().st_mtime_ns == attributes_mtime
    history = [json.loads(line) for line in (ft / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [h["epoch"] for h in history] == list(range(6)) and saved_epoch < 5
    stages = events[-1]["stages"]
    assert stages["attributes"]["status"] == "done earlier" and stages["finetune"]["status"] == "done"
    from renalclip_lib.inference import load_bundle

    bundle = load_bundle(run / "bundle")
    assert bundle.tasks_model is not None and bundle.survival_model is not None and bundle.risk_threshold is not None
    assert (run / "evaluation" / "metrics.json").exists()


def test_other_nodes_wait_for_node_zero(tmp_path):
    import threading

    from renalclip_lib.atomic import atomic_write_json
    from renalclip_lib.training.pipeline import _wait_for, stage_done

    said = []
    timer = threading.Timer(0.3, lambda: atomic_write_json(tmp_path / "pipeline" / "cache.json", {"seconds": 1}))
    timer.start()
    t0 = time.time()
    _wait_for(tmp_path, "cache", said.append, poll_s=0.05)
    assert stage_done(tmp_path, "cache") and time.time() - t0 >= 0.25
    assert len(said) == 1 and "waiting for node 0" in said[0]


@pytest.mark.slow
def test_two_gloo_processes_run_the_distributed_stages_through_torchrun(cohort, tmp_path):
    """``--gpus 2`` on a CPU machine: the distributed stages run as two Gloo processes under torchrun."""
    run = tmp_path / "run"
    one_epoch = [s.replace("finetune.optim.epochs=6", "finetune.optim.epochs=1") for s in TINY]
    proc = _run(["train", "all", "--config", CONFIG, "--out", str(run), "--stages", "cache,attributes,finetune",
                 "--gpus", "2", "--set", f"data.manifest={cohort}", *sum((["--set", s] for s in one_epoch), [])])
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert {s: v["status"] for s, v in summary.items()} == {"cache": "done", "attributes": "done", "finetune": "done"}
    for stage in ("attributes", "finetune"):
        state = json.loads((run / "pipeline" / f"{stage}.json").read_text(encoding="utf-8"))
        assert state["result"] == {"torchrun": 2}
    from renalclip_lib.models import load_checkpoint

    assert load_checkpoint(run / "finetune" / "attributes" / "best.pt").classifiers
    assert (run / "finetune" / "attributes" / "predictions.csv").exists()


@pytest.mark.slow
def test_two_processes_through_the_pipeline_give_the_one_process_losses(cohort, tmp_path):
    """The alignment stage through ``train all``: 2 Gloo processes x batch 4 against 1 process x
    batch 8 see the same global batches with the same augmentations, so the first step's loss agrees,
    and so does the next epoch's first loss, which depends on the first update."""
    clip = ["clip.init=random", "clip.optim.epochs=2", "clip.optim.num_workers=0", "clip.optim.warmup_ratio=0"]
    losses = {}
    for gpus, batch in ((1, 8), (2, 4)):
        run = tmp_path / f"run{gpus}"
        proc = _run(["train", "all", "--config", CONFIG, "--out", str(run), "--stages", "cache,text-features,clip",
                     "--gpus", str(gpus), "--set", f"data.manifest={cohort}", "--set", f"clip.optim.batch_size={batch}",
                     *sum((["--set", s] for s in TINY + clip), [])])
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        state = json.loads((run / "pipeline" / "clip.json").read_text(encoding="utf-8"))
        assert (state["result"] == {"torchrun": 2}) == (gpus == 2)
        history = [json.loads(line) for line in (run / "clip" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        losses[gpus] = [h["first_step_loss"] for h in history]
    print("first-step losses", losses)
    assert len(losses[1]) == 2 and losses[1][0] > 0 and losses[1][0] != losses[1][1]
    assert losses[2] == pytest.approx(losses[1], abs=1e-4)
