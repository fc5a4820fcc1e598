"""Speed of the geometry pipeline on a full-size CT: ROI extraction and four-phase registration.

Targets (2 CPU cores): crop_roi + to_model_input under 0.3 s; register_phases of four
512 x 512 x 200 phases under 5 s. Prints medians of repeated runs and the ratio to the target.

Usage: ``python benchmarks/bench_geometry.py [--repeats 5] [--slices 200]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, median_seconds  # noqa: E402

from renalclip_lib.io import Volume  # noqa: E402
from renalclip_lib.preprocess import crop_roi, register_phases, to_model_input  # noqa: E402


def _phase(rng, shape_zyx, spacing, shift_mm) -> Volume:
    arr = rng.normal(40, 15, size=shape_zyx).astype(np.int16)
    nz, ny, nx = shape_zyx
    origin = -0.5 * np.array([nx - 1, ny - 1, nz - 1]) * np.asarray(spacing) + np.asarray(shift_mm)
    return Volume(arr, spacing, origin, np.eye(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slices", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.slices, 512, 512)
    print(f"machine: {describe_machine()}")
    print(f"volume: 512 x 512 x {args.slices}, int16")

    ct = _phase(rng, shape, (0.78, 0.78, 1.25), (0, 0, 0))
    centre = np.array([35.0, 10.0, -20.0])
    t_roi = median_seconds(lambda: to_model_input(crop_roi(ct, centre)), args.repeats)
    print(f"crop_roi + to_model_input: median {t_roi:.3f} s over {args.repeats} runs "
          f"(target 0.3 s, ratio {t_roi / 0.3:.2f})")

    phases = {
        "A": ct,
        "N": _phase(rng, (args.slices // 2, 512, 512), (0.70, 0.70, 2.5), (1.5, -2.0, 3.0)),
        "V": _phase(rng, shape, (0.82, 0.82, 1.25), (-2.0, 1.0, -3.5)),
        "D": _phase(rng, (args.slices // 4, 512, 512), (0.75, 0.75, 5.0), (0.5, 2.5, 4.0)),
    }
    reps = max(1, args.repeats // 2)
    t_reg = median_seconds(lambda: register_phases(phases), reps)
    print(f"register_phases (4 phases onto A): median {t_reg:.3f} s over {reps} runs "
          f"(target 5 s, ratio {t_reg / 5.0:.2f})")


if __name__ == "__main__":
    main()
