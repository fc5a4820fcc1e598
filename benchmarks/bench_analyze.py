"""Speed of ``analyze`` and of bundle loading with a full-size encoder (width 64, every head).

Targets (2 CPU cores): ``analyze`` with a given centre on four 512 x 512 x 200 phases, bundle
already loaded, under 3 s (report generation excluded); bundle loading under 2 s. Also prints the
part spent reading the files (compressed and uncompressed NIfTI) and batch throughput in cases per
minute on small synthetic patients. nnU-Net timing: benchmarks/bench_segmentation.py.

Usage: ``python benchmarks/bench_analyze.py [--repeats 3] [--slices 200]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, median_seconds  # noqa: E402

from renalclip_lib.inference import analyze_case, build_bundle, load_bundle  # noqa: E402
from renalclip_lib.io import Volume, write_volume  # noqa: E402
from renalclip_lib.models import ClassifierHead, CoxHead, ImageEncoder, save_image_model  # noqa: E402
from renalclip_lib.tasks import TASKS  # noqa: E402
from renalclip_lib.training.survival import write_risk_threshold  # noqa: E402

TASK_NAMES = ["renal_R", "renal_E", "renal_N", "renal_A", "renal_L", "malignancy", "aggressiveness"]


def _bundle(root: Path) -> Path:
    enc = ImageEncoder(width=64)
    heads = {t: ClassifierHead(len(TASKS[t].classes)) for t in TASK_NAMES}
    tasks = save_image_model(root / "tasks.pt", enc, heads)
    surv = save_image_model(root / "surv" / "best.pt", ImageEncoder(width=64), None, CoxHead())
    write_risk_threshold(root / "surv" / "risk_threshold.json", np.zeros(3), "rfs")
    return build_bundle(root / "bundle", heads=tasks, survival=surv)


def _phase(rng, slices: int, shift) -> Volume:
    arr = rng.normal(40, 15, size=(slices, 512, 512)).astype(np.int16)
    spacing = (0.75, 0.75, 1.0)
    origin = -0.5 * np.array([511, 511, slices - 1]) * np.asarray(spacing) + np.asarray(shift)
    return Volume(arr, spacing, origin, np.eye(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=200)
    args = ap.parse_args()
    print(describe_machine())
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bpath = _bundle(root)
        t_load = median_seconds(lambda: load_bundle(bpath), args.repeats)
        print(f"bundle load (width 64, 7 heads + Cox model, checksums verified): median {t_load:.2f} s "
              f"(target 2 s, ratio {t_load / 2:.2f})")
        bundle = load_bundle(bpath)
        vols = {ph: _phase(rng, args.slices, (0.0, 0.0, 2.0 * i)) for i, ph in enumerate("NAVD")}
        center = (10.0, -5.0, 0.0)
        t_mem = median_seconds(lambda: analyze_case(vols, bundle, center_lps=center), args.repeats)
        print(f"analyze, 4 phases already in memory: median {t_mem:.2f} s")
        for ext in (".nii", ".nii.gz"):
            paths = {ph: str(write_volume(v, root / f"{ph}{ext}", compress=ext.endswith("gz"))) for ph, v in vols.items()}
            timings = {}

            def run():
                timings.update(analyze_case(paths, bundle, center_lps=center).timings)

            t = median_seconds(run, args.repeats)
            print(f"analyze, 4 phases from {ext} files: median {t:.2f} s (target 3 s, ratio {t / 3:.2f}); "
                  f"last run: read {timings['read']:.2f} s, roi {timings['roi']:.2f} s, models {timings['models']:.2f} s")
        from renalclip_lib.phantom import write_cohort
        from renalclip_lib.inference.batch import run_batch

        manifest = write_cohort(root / "cohort", 4, seed=1, cohorts="internal", matrix=256)
        t0 = time.perf_counter()
        res = run_batch(manifest, bpath, root / "batch", evaluate=False, show_bar=False)
        dt = time.perf_counter() - t0
        print(f"batch: {res['done']} synthetic cases (matrix 256, 3-4 phases, panels written) in {dt:.1f} s: "
              f"{60 * res['done'] / dt:.1f} cases/min")


if __name__ == "__main__":
    main()
