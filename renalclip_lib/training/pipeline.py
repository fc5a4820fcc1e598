"""``renalclip train all``: every stage in order, each skipped when finished, resumed when interrupted.

Stages (``PIPELINE_STAGES``): cache (ROI caches), attributes, text (MNTP, SimCSE), text-features,
clip, finetune (seven tasks), survival, report (A, B), evaluate (every cohort), bundle.

- Before anything trains, ``preflight`` reads the manifest (missing files fail), refuses a patient
  that appears in two splits or an image shared by two patients (leakage), names the stages whose
  labels the cohorts lack (they are skipped with one line), and checks that model folders the
  config names exist.
- A stage is done when ``RUN_DIR/pipeline/<stage>.json`` exists; a stage that stopped midway
  resumes from its own ``checkpoint_last.pt`` (the shared loop does that).
- With ``nproc`` > 1 (GPUs, or CPU processes with Gloo) the distributed stages run under torchrun
  (``python -m torch.distributed.run``) launched from this process; multi-node through torchrun's
  rendezvous (``nnodes``, ``rdzv_endpoint``).

Usage::

    run_pipeline(load_config("Resources/configs/demo.yaml"), "run")
    renalclip train all --config demo.yaml --out run [--stages cache,attributes] [--gpus 4]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_json
from ..config import TrainConfig
from ..errors import ConfigError, ManifestError, MissingFileError, RenalCLIPError
from ..progress import ProgressReporter

PIPELINE_STAGES = ("cache", "attributes", "text", "text-features", "clip", "finetune", "survival", "report",
                   "evaluate", "bundle")
DISTRIBUTED_STAGES = ("attributes", "clip", "finetune", "survival")
STATE_DIR = "pipeline"


@dataclass
class Preflight:
    """What the manifest allows: stages to skip (with the reason) and counts for the log."""

    skip: dict = field(default_factory=dict)
    patients: int = 0
    cohorts: dict = field(default_factory=dict)


def preflight(cfg: TrainConfig, stages) -> Preflight:
    """Fail fast on bad input; see the module docstring. Returns the stages to skip and why."""
    from ..data.manifest import read_manifest
    from ..questionnaire import QUESTIONS

    if not cfg.data.manifest:
        raise ConfigError(cfg.source, "'data.manifest' is not set: the cohort manifest CSV to train on")
    manifest = Path(cfg.data.manifest)
    table = read_manifest(manifest, on_error=cfg.data.on_bad_row)
    for _, msg in table.problems:
        print(f"renalclip: skipped: {msg}", file=sys.stderr)
    patients = table.by_patient()
    images: dict = {}
    for pid, rows in patients.items():
        splits = sorted({r.split for r in rows})
        if len(splits) > 1:
            raise ManifestError(manifest, f"patient {_anon(pid)} appears in splits {', '.join(splits)}: "
                                          "train/validation/test leakage; give each patient one split")
        for r in rows:
            key = os.path.realpath(str(r.image_path))
            if key in images and images[key] != pid:
                raise ManifestError(manifest, f"one image file is listed for two patients ({_anon(pid)} and "
                                              f"{_anon(images[key])}): leakage between cases")
            images[key] = pid
    pf = Preflight(patients=len(patients))
    for rows in patients.values():
        pf.cohorts[rows[0].cohort] = pf.cohorts.get(rows[0].cohort, 0) + 1
    refs = [rows[0] for rows in patients.values()]
    train = [r for r in refs if r.cohort in set(cfg.data.train_cohorts) and r.split == "train"]
    pre = [r for r in refs if r.cohort in set(cfg.data.pretrain_cohorts)] or train

    def has(rows, col) -> bool:
        return any(r[col] is not None and str(r[col]).strip() != "" for r in rows)

    if not train:
        for s in ("finetune", "survival", "report", "clip"):
            pf.skip[s] = f"no patient of cohorts {cfg.data.train_cohorts} has split 'train'"
    if "finetune" not in pf.skip and not any(has(train, t) for t in cfg.finetune.tasks):
        pf.skip["finetune"] = f"no label of {', '.join(cfg.finetune.tasks)} in the training cohorts"
    ep = cfg.survival.endpoint
    if "survival" not in pf.skip and not (has(train, f"{ep}_time") and has(train, f"{ep}_event")):
        pf.skip["survival"] = f"no {ep}_time/{ep}_event in the training cohorts"
    q_cols = [q.column(s) for q in QUESTIONS for s in ("left", "right")]
    if not any(has(pre, c) for c in q_cols):
        pf.skip["attributes"] = "no questionnaire answers (q_*_left/right) in the pre-training cohorts"
    report_cols = ("findings_left", "impression_left", "findings_right", "impression_right")
    if not any(has(pre + train, c) for c in report_cols):
        for s in ("text", "text-features", "clip", "report"):
            pf.skip.setdefault(s, "no report text (findings/impression columns) in the manifest")
    for s in stages:
        if s in pf.skip:
            continue
        for path in _model_folders(cfg, s):
            if not Path(path).is_dir():
                raise MissingFileError(path, f"model folder named in the config for stage '{s}' does not exist")
    return pf


def _anon(pid: str) -> str:
    """A short hash instead of a patient identifier (no identifiers in logs)."""
    import hashlib

    return "patient#" + hashlib.sha256(str(pid).encode()).hexdigest()[:8]


def _model_folders(cfg: TrainConfig, stage: str) -> list[str]:
    """Local model folders a stage will load (LLM bases, text encoders); "tiny"/"minilm" need none."""
    out = []
    if stage == "text":
        base = getattr(cfg.text, "base", "")
        if base and base not in ("tiny",):
            out.append(base)
    if stage in ("text-features", "clip"):
        enc = getattr(cfg.clip, "text_encoder", "")
        if enc and enc not in ("text", "minilm", "tiny") and not str(enc).endswith(".json"):
            out.append(enc)
    if stage == "report":
        llm = getattr(cfg.report, "llm", "")
        if llm and llm not in ("tiny",):
            out.append(llm)
    return out


def _state(run_dir: Path, stage: str) -> Path:
    return run_dir / STATE_DIR / f"{stage}.json"


def stage_done(run_dir, stage: str) -> bool:
    return _state(Path(run_dir), stage).exists()


def _torchrun(stage: str, cfg_path: str, run_dir: Path, overrides: list[str], nproc: int, nnodes: int,
              rdzv_endpoint: str | None) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ConfigError(cfg_path, "--nnodes > 1 needs --rdzv-endpoint HOST:PORT")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "renalclip_lib.cli", "train", stage, "--config", cfg_path, "--out", str(run_dir), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                            start_new_session=True)
    try:
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    if code != 0:
        raise RuntimeError(f"stage '{stage}' failed under torchrun (exit {code})")


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop torchrun and its workers together (they run in their own session)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(run_dir: Path, stage: str, log, poll_s: float = 10.0) -> None:
    """On a node other than rank 0: wait until rank 0 has finished a non-distributed stage."""
    said = False
    while not stage_done(run_dir, stage):
        if not said:
            log(f"{stage}: waiting for node 0 (shared run folder {run_dir})")
            said = True
        time.sleep(poll_s)


def _run_cache(cfg: TrainConfig, run_dir: Path, log) -> dict:
    from ..data.manifest_cases import cases_from_manifest
    from ..data.roi_cache import build_cache

    cases, problems = cases_from_manifest(cfg.data.manifest, on_error=cfg.data.on_bad_row)
    out = {}
    for kind in ("lesion", "kidney"):
        path, skipped = build_cache(cases, cfg.data.cache, kind, on_error=cfg.data.on_bad_row,
                                    progress=lambda d, t, w: log(f"cache {kind}: {d}/{t}") if d == t or d % 25 == 0 else None)
        out[kind] = {"cache": str(path), "skipped": len(skipped) + len(problems)}
    return out


def _finetune_init(cfg: TrainConfig, skip: dict) -> str:
    init = cfg.finetune.init
    if init == "clip" and "clip" in skip:
        return "attributes" if "attributes" not in skip else "random"
    if init == "attributes" and "attributes" in skip:
        return "random"
    return init


def _run_evaluate(cfg: TrainConfig, run_dir: Path, init: str, log) -> dict:
    """Join every stage's predictions by patient and run ``renalclip evaluate`` on them."""
    import contextlib

    from ..cli import main as cli_main
    from .predictions import read_rows, write_rows

    sources = [run_dir / "finetune" / init / "predictions.csv", run_dir / "survival" / init / "predictions.csv",
               run_dir / "clip" / "predictions.csv", run_dir / "report" / "predictions.csv"]
    joined: dict = {}
    for src in sources:
        if not src.exists():
            continue
        for r in read_rows(src):
            row = joined.setdefault(r["patient_id"], {})
            row.update({k: v for k, v in r.items() if v != "" or k not in row})
    if not joined:
        raise MissingFileError(run_dir, "no predictions to evaluate (finetune/survival/clip/report stages)")
    pred = write_rows(run_dir / "predictions.csv", list(joined.values()))
    external = sorted({r["cohort"] for r in joined.values()} - set(cfg.data.train_cohorts))
    args = ["evaluate", "--model", f"RenalCLIP={pred}", "--out", str(run_dir / "evaluation"),
            "--bootstrap", str(cfg.evaluation.bootstrap), "--seed", str(cfg.evaluation.seed), "--quiet"]
    if len(external) > 1:
        args += ["--group", f"combined_external={','.join(external)}"]
    emb = run_dir / "clip" / "embeddings.npz"
    if emb.exists():
        args += ["--retrieval", f"RenalCLIP={emb}"]
    with contextlib.redirect_stdout(sys.stderr):
        code = cli_main(args)
    if code != 0:
        raise RuntimeError(f"evaluation failed (exit {code})")
    return {"predictions": str(pred), "evaluation": str(run_dir / "evaluation" / "index.html")}


def run_pipeline(cfg: TrainConfig, run_dir, stages=None, nproc: int = 1, nnodes: int = 1,
                 rdzv_endpoint: str | None = None, overrides: list[str] | None = None,
                 reporter: ProgressReporter | None = None, synthetic: bool = False, node_rank: int | None = None) -> dict:
    """Run the pipeline; returns per-stage status and wall time (also in RUN_DIR/pipeline/summary.json).

    Multi-node (``nnodes`` > 1, RUN_DIR on a shared file system): node 0 (``node_rank`` or the
    ``NODE_RANK`` variable) runs every stage; the other nodes join the distributed stages' torchrun
    rendezvous and wait for node 0 to finish the others.
    """
    node_rank = int(os.environ.get("NODE_RANK", "0")) if node_rank is None else int(node_rank)
    run_dir = Path(run_dir)
    rep = reporter or ProgressReporter()
    stages = list(stages or PIPELINE_STAGES)
    unknown = [s for s in stages if s not in PIPELINE_STAGES]
    if unknown:
        raise ConfigError(cfg.source, f"unknown stage '{unknown[0]}' (stages: {', '.join(PIPELINE_STAGES)})")
    if not cfg.data.cache:
        cfg.data.cache = str(run_dir / "cache")
    pf = preflight(cfg, stages)
    run_dir.mkdir(parents=True, exist_ok=True)
    if node_rank == 0:
        atomic_write_json(run_dir / "run.json", {"synthetic": synthetic, "config": Path(cfg.source).name if cfg.source else "",
                                                "patients": pf.patients, "cohorts": pf.cohorts})
    log = rep.log
    init = _finetune_init(cfg, pf.skip)
    summary: dict = {}
    for i, stage in enumerate(stages):
        rep.progress(stage, i / len(stages), "starting")
        if stage in pf.skip:
            log(f"{stage}: skipped: {pf.skip[stage]}")
            summary[stage] = {"status": "skipped", "reason": pf.skip[stage], "seconds": 0.0}
            continue
        if stage_done(run_dir, stage):
            log(f"{stage}: already finished (delete {_state(run_dir, stage)} to rerun)")
            summary[stage] = {"status": "done earlier", "seconds": 0.0}
            continue
        if nnodes > 1 and node_rank > 0:
            t0 = time.perf_counter()
            if stage in DISTRIBUTED_STAGES:
                _run_stage(stage, cfg, run_dir, init, pf, nproc, nnodes, rdzv_endpoint, overrides or [], log, synthetic)
            _wait_for(run_dir, stage, log)
            summary[stage] = {"status": f"done (node {node_rank})", "seconds": round(time.perf_counter() - t0, 2)}
            continue
        t0 = time.perf_counter()
        result = _run_stage(stage, cfg, run_dir, init, pf, nproc, nnodes, rdzv_endpoint, overrides or [], log,
                            synthetic)
        dt = time.perf_counter() - t0
        atomic_write_json(_state(run_dir, stage), {"seconds": round(dt, 2), "result": _brief(result)})
        summary[stage] = {"status": "done", "seconds": round(dt, 2)}
        log(f"{stage}: done in {dt:.1f} s")
    rep.progress("done", 1.0, "pipeline finished")
    if node_rank == 0:
        atomic_write_json(run_dir / STATE_DIR / "summary.json", summary)
    return summary


def _brief(result) -> dict:
    from ..atomic import jsonable

    if not isinstance(result, dict):
        return {}
    return jsonable({k: v for k, v in result.items() if k not in ("history",) and not isinstance(v, (list,))})


def _run_stage(stage: str, cfg: TrainConfig, run_dir: Path, init: str, pf: Preflight, nproc: int, nnodes: int,
               rdzv_endpoint, overrides: list[str], log, synthetic: bool):
    if (nproc > 1 or nnodes > 1) and stage in DISTRIBUTED_STAGES:
        ov = list(overrides) + [f"data.cache={cfg.data.cache}", f"data.manifest={cfg.data.manifest}"]
        if stage in ("finetune", "survival"):
            ov.append(f"finetune.init={init}")
        _torchrun(stage, cfg.source, run_dir, ov, nproc, nnodes, rdzv_endpoint)
        return {"torchrun": nproc * nnodes}
    if stage == "cache":
        return _run_cache(cfg, run_dir, log)
    if stage in ("attributes", "finetune", "survival"):
        from .image_stages import run_stage

        return run_stage(stage, cfg, run_dir, log, init=None if stage == "attributes" else init)
    if stage == "text":
        from .text_stage import run_text

        return run_text(cfg, run_dir, log)
    if stage == "text-features":
        from .clip_stage import run_text_features

        return run_text_features(cfg, run_dir, log)
    if stage == "clip":
        from .clip_stage import run_clip

        return run_clip(cfg, run_dir, log)
    if stage == "report":
        from .report_stage import run_report

        return run_report(cfg, run_dir, log, init=None)
    if stage == "evaluate":
        return _run_evaluate(cfg, run_dir, init, log)
    if stage == "bundle":
        from ..inference.bundle import build_bundle

        return {"bundle": str(build_bundle(run_dir / "bundle", run_dir=run_dir, init=init, synthetic=synthetic,
                                           internal_cohorts=set(cfg.data.train_cohorts)))}
    raise RenalCLIPError(cfg.source, f"unknown stage {stage}")
