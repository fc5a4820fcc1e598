"""GPU check: one epoch of every pipeline stage with small models on a synthetic cohort.

For a short slot on a shared or rented GPU (under 8 minutes): generates its own cohort
(``renalclip_lib.phantom.write_cohort``, matrix 128), then runs each stage of ``renalclip train
all`` through the real stage code (``run_pipeline``, one stage at a time, small encoder, one epoch,
a few text steps) and prints per stage: wall time, training samples/s (from the stage's
``metrics.jsonl``: epochs of the shared loop, steps x batch of the text stage; ROIs/s of the cache,
texts/s of the text features), peak GPU memory (``torch.cuda.max_memory_allocated``) and whether
bf16 autocast was entered. Without CUDA it says so and runs the same on CPU with smaller settings.
Nothing is downloaded (the text encoders are a tiny Llama and MiniLM from an installed package).

Usage::

    python benchmarks/gpu_check.py [--out gpu_check_out] [--budget-s 420] [--augment-on auto] [--verbose]
    benchmarks/gpu_check.sh          # the same with the repository's virtual environment

Exit codes: 0 every stage ran; 1 a stage failed or was left out for the time budget.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from machine import describe_machine  # noqa: E402

from renalclip_lib.progress import ProgressReporter  # noqa: E402

LOOP_SECTIONS = ("attributes.optim", "finetune.optim", "survival.optim", "clip.optim", "report.tiny.optim",
                 "report.stage_a", "report.stage_b")
COHORTS = {"pretrain": 0.3, "internal": 0.5, "tcia_like": 0.2}
SETTINGS = {
    "cuda": {"patients": 40, "matrix": 128, "width": 16, "embed_dim": 512, "text_steps": 10, "workers": 4,
             "amp": "bf16", "max_new_tokens": 64, "beams": 2},
    "cpu": {"patients": 16, "matrix": 64, "width": 4, "embed_dim": 16, "text_steps": 2, "workers": 0,
            "amp": "fp32", "max_new_tokens": 16, "beams": 1},
}
STAGE_FOLDERS = {"attributes": "attributes", "clip": "clip", "finetune": "finetune", "survival": "survival",
                 "report": "report"}


def overrides(s: dict, augment_on: str = "auto") -> list[str]:
    """Config overrides of the check: small encoder, one epoch per loop, a few text steps."""
    out = [f"model.width={s['width']}", f"model.embed_dim={s['embed_dim']}",
           f"text.mntp.steps={s['text_steps']}", f"text.simcse.steps={s['text_steps']}", f"text.amp={s['amp']}",
           f"report.decoding.max_new_tokens={s['max_new_tokens']}", f"report.decoding.num_beams={s['beams']}",
           f"report.max_report_tokens={max(64, s['max_new_tokens'])}"]
    for section in LOOP_SECTIONS:
        out += [f"{section}.epochs=1", f"{section}.amp={s['amp']}"]
    for section in ("attributes.optim", "finetune.optim", "survival.optim", "clip.optim"):
        out += [f"{section}.num_workers={s['workers']}", f"{section}.augment_on={augment_on}"]
    return out


class AutocastRecorder:
    """Replaces ``torch.autocast`` while a stage runs and notes each (device, dtype) it enables."""

    def __init__(self):
        self.used: set = set()
        self._original = torch.autocast

    def __enter__(self):
        recorder, base = self, self._original

        class RecordingAutocast(base):
            def __enter__(self):
                if self._enabled:
                    recorder.used.add((str(self.device), str(self.fast_dtype).replace("torch.", "")))
                return super().__enter__()

        torch.autocast = RecordingAutocast
        return self

    def __exit__(self, *exc):
        torch.autocast = self._original
        return False


class CapturingReporter(ProgressReporter):
    """Keeps the pipeline's log lines (and echoes them to stderr with --verbose)."""

    def __init__(self, echo: bool):
        super().__init__(quiet=True)
        self.lines: list[str] = []
        self.echo = echo

    def log(self, message: str) -> None:
        self.lines.append(str(message))
        if self.echo:
            print(f"  | {message}", file=sys.stderr, flush=True)


def loop_throughput(folder: Path, since: float) -> tuple[float, float, list[str]]:
    """(samples, training seconds, parts) of the epochs the shared loop logged under ``folder`` since ``since``."""
    samples = seconds = 0.0
    parts = []
    for path in sorted(folder.rglob("metrics.jsonl")) if folder.is_dir() else []:
        if path.stat().st_mtime < since:
            continue
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        recs = [r for r in recs if "samples_per_s" in r]
        if not recs:
            continue
        s = sum(r["samples_per_s"] * r["seconds"] for r in recs)
        t = sum(r["seconds"] for r in recs)
        samples, seconds = samples + s, seconds + t
        parts.append(f"{path.parent.relative_to(folder.parent).as_posix()} {s / max(t, 1e-9):.1f}/s")
    return samples, seconds, parts


def text_throughput(folder: Path, cfg) -> tuple[float, float]:
    """(texts, seconds) of the text stage: steps x batch size of MNTP and SimCSE, from its metrics.jsonl."""
    path = folder / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []
    samples = seconds = 0.0
    for phase, batch in (("mntp", cfg.text.mntp.batch_size), ("simcse", cfg.text.simcse.batch_size)):
        mine = [r for r in recs if r.get("phase") == phase]
        if mine:
            samples += mine[-1]["step"] * batch
            seconds += mine[-1]["seconds"]
    return samples, seconds


def stage_throughput(stage: str, run: Path, cfg, since: float, wall: float) -> tuple[str, str]:
    """(samples/s as text, what was counted) for one finished stage."""
    import numpy as np

    state_file = run / "pipeline" / f"{stage}.json"
    result = json.loads(state_file.read_text(encoding="utf-8")).get("result", {}) if state_file.exists() else {}
    if stage == "cache":
        n = sum(np.load(Path(cfg.data.cache) / f"rois_{kind}.npy", mmap_mode="r").shape[0]
                for kind in ("lesion", "kidney") if (Path(cfg.data.cache) / f"rois_{kind}.npy").exists())
        return (f"{n / wall:.1f}" if n else "-"), f"{n} ROIs read, cropped and stored (whole stage)"
    if stage == "text-features":
        n = result.get("n_units")
        return (f"{n / wall:.1f}" if n else "-"), f"{n} kidneys' reports (+ shuffles) encoded (whole stage)"
    if stage == "text":
        samples, seconds = text_throughput(run / "text", cfg)
        return (f"{samples / seconds:.1f}" if seconds else "-"), "MNTP + SimCSE texts per training second"
    folder = STAGE_FOLDERS.get(stage)
    if folder is None:
        return "-", "no training samples"
    samples, seconds, parts = loop_throughput(run / folder, since)
    return (f"{samples / seconds:.1f}" if seconds else "-"), "; ".join(parts) or "no epoch ran"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check_out", help="work folder (cohort, run; replaced)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no new stage starts after this many seconds (the check then exits 1)")
    ap.add_argument("--cpu", action="store_true", help="use the CPU settings even when CUDA is available")
    ap.add_argument("--verbose", action="store_true", help="echo the pipeline's log lines on stderr")
    ap.add_argument("--augment-on", default="auto", choices=("auto", "cpu", "device"),
                    help="where the image stages augment (the configs' optim.augment_on)")
    args = ap.parse_args(argv)

    from renalclip_lib.config import load_config
    from renalclip_lib.phantom import write_cohort
    from renalclip_lib.resources import resource_path
    from renalclip_lib.training.cli_train import _overrides
    from renalclip_lib.training.pipeline import PIPELINE_STAGES, run_pipeline

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu
    kind = "cuda" if cuda else "cpu"
    s = SETTINGS[kind]
    print(describe_machine())
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        print("no CUDA GPU: running the same check on CPU with smaller settings "
              f"({s['patients']} patients, matrix {s['matrix']}, encoder width {s['width']})")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    manifest = write_cohort(out / "cohort", n_patients=s["patients"], seed=0, matrix=s["matrix"], cohorts=COHORTS)
    print(f"cohort: {s['patients']} synthetic patients, matrix {s['matrix']}, "
          f"{time.perf_counter() - t_start:.1f} s", flush=True)
    ov = [f"data.manifest={manifest}", f"data.cache={out / 'cache'}", f"device={kind}"] + overrides(s, args.augment_on)
    cfg = load_config(str(resource_path("configs", "demo.yaml")), _overrides(ov))
    run = out / "run"
    rep = CapturingReporter(args.verbose)

    rows, failed = [], False
    for stage in PIPELINE_STAGES:
        if time.perf_counter() - t_start > args.budget_s:
            rows.append({"stage": stage, "status": "not run (time budget)"})
            failed = True
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        since, t0 = time.time() - 1.0, time.perf_counter()
        row = {"stage": stage}
        with AutocastRecorder() as amp:
            try:
                summary = run_pipeline(cfg, run, [stage], overrides=ov, reporter=rep, synthetic=True)
                row["status"] = summary[stage]["status"]
                if row["status"] == "skipped":
                    row["detail"] = summary[stage].get("reason", "")
            except Exception as exc:  # noqa: BLE001 - the check reports every stage, failed ones included
                row["status"], row["detail"] = "FAILED", f"{type(exc).__name__}: {exc}"
                failed = True
        wall = time.perf_counter() - t0
        row["seconds"] = round(wall, 1)
        if cuda:
            torch.cuda.synchronize()
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["bf16_autocast"] = any(dtype == "bfloat16" for _, dtype in amp.used)
        if row["status"] == "done":
            row["samples_per_s"], row["detail"] = stage_throughput(stage, run, cfg, since, wall)
        rows.append(row)
        print(f"{stage}: {row['status']} in {row['seconds']} s", flush=True)

    total = time.perf_counter() - t_start
    print()
    print(f"{'stage':<14} {'status':<22} {'seconds':>8} {'samples/s':>10} {'peak GPU MiB':>13} {'bf16':>5}  detail")
    for r in rows:
        peak = f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-"
        bf16 = ("yes" if r.get("bf16_autocast") else "no") if "bf16_autocast" in r else "-"
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        print(f"{r['stage']:<14} {r['status']:<22} {seconds:>8} {r.get('samples_per_s', '-'):>10} {peak:>13} {bf16:>5}"
              f"  {r.get('detail', '')}")
    if cuda:
        print(f"peak GPU memory over the check: {max(r.get('peak_gpu_mib', 0) for r in rows):.0f} MiB")
    print(f"device: {kind}; bf16 autocast used by: "
          f"{', '.join(r['stage'] for r in rows if r.get('bf16_autocast')) or 'no stage'}; total {total:.1f} s")
    (out / "gpu_check.json").write_text(json.dumps({"device": kind, "settings": s, "total_seconds": round(total, 1),
                                                    "stages": rows}, indent=2), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
