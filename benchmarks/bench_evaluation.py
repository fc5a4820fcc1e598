"""Speed of the evaluation: 5 models x 8 cohorts x 10 core tasks, 1,000 bootstrap resamples each.

Target (2 CPU cores): under 60 s for reading the five prediction CSVs and computing every metric with
its 95 % bootstrap interval (R.E.N.A.L. x 5, malignancy, aggressiveness: every binary metric;
RFS/DSS/OS: C-index, yearly time-dependent AUC / C-index / Brier for 10 years, KM split, Cox
univariate and multivariate with stage and grade). Cohort sizes follow the paper (internal 100,
five external sites 67-250, their combination 935, TCIA 300); survival uses the malignant cases.
Prints medians of repeated runs, the machine, and the ratio to the target; ``--output`` also times
writing tables, figures and index.html once (not part of the target).

Usage: ``python benchmarks/bench_evaluation.py [--repeats 3] [--bootstrap 1000] [--output]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from renalclip_lib.evaluation import CohortSpec, Settings, evaluate, read_predictions, write_run  # noqa: E402
from renalclip_lib.evaluation.synthetic import synthetic_predictions, synthetic_truth  # noqa: E402

TARGET_S = 60.0
SITES = {"internal": 100, "xiamen": 250, "shandong": 229, "ruijin": 189, "lianyun": 200, "zhangye": 67, "tcia": 300}
EXTERNAL = ["xiamen", "shandong", "ruijin", "lianyun", "zhangye"]
MODELS = ("CNN (Rand Init)", "CT-CLIP", "Merlin", "CT-FM", "RenalCLIP")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--output", action="store_true", help="also time tables + figures + index.html once")
    args = ap.parse_args()
    print(f"machine: {describe_machine()}")
    truth = synthetic_truth(SITES, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    paths = []
    for k, name in enumerate(MODELS):
        paths.append((name, tmp / f"model{k}.csv"))
        synthetic_predictions(truth, skill=0.5 + 0.4 * k, seed=10 + k, zeroshot=False).to_csv(paths[-1][1], index=False)
    spec = CohortSpec(order=["internal", *EXTERNAL, "combined_external", "tcia"],
                      groups={"combined_external": EXTERNAL})
    settings = Settings(n_boot=args.bootstrap, seed=0)
    print(f"workload: {len(MODELS)} models x {len(spec.order)} cohorts x 10 tasks, {args.bootstrap} resamples, "
          f"{len(truth)} patients, time-dependent metrics at {len(settings.times)} yearly times")

    def once():
        models = [read_predictions(p, n) for n, p in paths]
        return evaluate(models, spec, settings)

    times, res = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = once()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    n_metrics = sum(len(ms) for m in res.metrics.values() for cs in m.values() for ms in cs.values())
    print(f"read + evaluate: median {med:.1f} s over {args.repeats} runs (runs: "
          f"{', '.join(f'{x:.1f}' for x in times)}); {n_metrics} metrics "
          f"(target {TARGET_S:.0f} s, ratio {med / TARGET_S:.2f})")
    if args.output:
        t = time.perf_counter()
        summary = write_run(res, tmp / "out", figures=True)
        print(f"write tables ({summary['tables']}) + figures ({summary['figures']}) + index.html: "
              f"{time.perf_counter() - t:.1f} s (one run; not part of the target)")


if __name__ == "__main__":
    main()
