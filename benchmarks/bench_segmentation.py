"""Speed of nnU-Net segmentation: ``SegmentationModel.predict`` on a full-size and a small CT.

Uses a model folder given with ``--model``, or trains the tiny synthetic one first
(``train_synthetic``, about 2-3 minutes on 2 cores; not timed). Times the prediction (nnU-Net's
preprocessing, sliding window, resampling back, label mapping) on a 512 x 512 x 200 volume
(0.78 x 0.78 x 1.25 mm) and on a small 96 x 96 x 60 one, on CPU and, if present, on the GPU;
prints medians and the machine.

Usage: ``python benchmarks/bench_segmentation.py [--model DIR] [--repeats 3] [--large-repeats 1] [--slices 200] [--threads N] [--mirroring]``
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

from renalclip_lib.io import Volume  # noqa: E402


def _ct(rng, shape_zyx, spacing) -> Volume:
    """A body-like volume: air outside an ellipse of soft tissue, two brighter ellipsoids as kidneys."""
    nz, ny, nx = shape_zyx
    z, y, x = np.ogrid[:nz, :ny, :nx]
    xs, ys, zs = (x - nx / 2) * spacing[0], (y - ny / 2) * spacing[1], (z - nz / 2) * spacing[2]
    arr = np.full(shape_zyx, -1000, np.int16)
    body = (xs / 170.0) ** 2 + (ys / 120.0) ** 2 <= 1
    arr[np.broadcast_to(body, shape_zyx)] = 40
    for side in (-1, 1):
        k = ((xs - side * 75) / 30.0) ** 2 + ((ys - 40) / 25.0) ** 2 + (zs / 55.0) ** 2 <= 1
        arr[k] = 160
    arr += rng.normal(0, 12, size=shape_zyx).astype(np.int16)
    origin = -0.5 * np.array([nx - 1, ny - 1, nz - 1]) * np.asarray(spacing)
    return Volume(arr, spacing, origin, np.eye(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="nnU-Net model folder (default: train the tiny synthetic model)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-repeats", type=int, default=1, help="timed runs on the 512 x 512 volume")
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--mirroring", action="store_true", help="nnU-Net test-time mirroring (8x the work in 3D)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; on a loaded machine 1 can be "
                                                "several times faster than oversubscribed cores)")
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    args = ap.parse_args()
    import torch

    from renalclip_lib.segmentation import SegmentationModel, train_synthetic

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {describe_machine()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    tmp = None
    model_dir = args.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_seg_")
        t = time.perf_counter()
        summary = train_synthetic(Path(tmp.name) / "model", n_patients=6, epochs=3, iterations=100, threads=1)
        print(f"trained the tiny synthetic model in {time.perf_counter() - t:.0f} s "
              f"(features {summary['features_per_stage']}, patch {summary['patch_size']}, "
              f"spacing {[round(s, 2) for s in summary['spacing']]} mm)")
        model_dir = Path(tmp.name) / "model"
    rng = np.random.default_rng(0)
    volumes = {f"512 x 512 x {args.slices}": _ct(rng, (args.slices, 512, 512), (0.78, 0.78, 1.25)),
               "96 x 96 x 60": _ct(rng, (60, 96, 96), (3.5, 3.5, 3.0))}
    for dev in args.devices.split(","):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"{dev}: skipped (no GPU)")
            continue
        t = time.perf_counter()
        model = SegmentationModel(model_dir, device=dev, mirroring=args.mirroring)
        print(f"{dev}: model loaded in {time.perf_counter() - t:.2f} s (mirroring {'on' if args.mirroring else 'off'})")
        for name, vol in volumes.items():
            reps = args.repeats if vol.array.size < 5e6 else args.large_repeats
            sec = median_seconds(lambda: model.predict(vol), reps)
            print(f"{dev}: predict {name}: median {sec:.2f} s over {reps} runs (after one warm-up)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
