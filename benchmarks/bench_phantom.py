"""Speed of the synthetic cohort: seconds per patient at full size (512 x 512) and small matrices.

Target (2 CPU cores): under 2 s per patient at full size, all of its phases rendered (in memory;
writing compressed NIfTI adds the time of gzip). Prints the median over patients and the number
of slices rendered, since thin-slice four-phase studies cost the most.

Usage: ``python benchmarks/bench_phantom.py [--patients 6] [--matrix 512]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from renalclip_lib.phantom import generate_patient, patient_seed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--matrix", type=int, nargs="+", default=[512, 128])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {describe_machine()}")
    for matrix in args.matrix:
        times, slices = [], []
        for i in range(args.patients):
            t = time.perf_counter()
            pc = generate_patient(patient_seed(args.seed, i), "internal", matrix=matrix)
            times.append(time.perf_counter() - t)
            slices.append(sum(v.array.shape[0] for v in pc.images.values()))
        med = statistics.median(times)
        line = (f"matrix {matrix}: median {med:.2f} s per patient over {args.patients} patients "
                f"(min {min(times):.2f}, max {max(times):.2f}; median {statistics.median(slices):.0f} slices rendered)")
        if matrix == 512:
            line += f"; target 2 s, ratio {med / 2.0:.2f}"
        print(line)


if __name__ == "__main__":
    main()
