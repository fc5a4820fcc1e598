"""Image encoder throughput: inference and training, each against a bare pass of the same network.

- inference: volumes/s at batch 8 through the ROI cache + DataLoader + network, and the same
  network on a ready tensor (float32 on CPU; bf16 and channels-last on a GPU);
- training: samples/s of the real pipeline (memory-mapped cache, augmentation of Table 40, random
  phase, loader workers) against bare forward+backward+step on a ready batch, once with MONAI per
  ROI in the loader workers (``augment_on: cpu``) and once batched on the training device
  (``augment_on: device``, the default on a GPU).
A ratio near 1 means the data pipeline never holds the model back (target >= 0.9 on CPU).
Targets: >= 2,000 volumes/s bf16 inference on one H100-class GPU.

Usage: ``python benchmarks/bench_encoder.py [--width 64] [--batches 6] [--workers 2]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, median_seconds  # noqa: E402

from renalclip_lib.data.augment import DeviceAugment, TrainAugment  # noqa: E402
from renalclip_lib.data.datasets import RoiDataset, group_units  # noqa: E402
from renalclip_lib.models import ImageEncoder  # noqa: E402
from renalclip_lib.training.common import make_loader  # noqa: E402


def _fake_cache(folder: Path, n_units: int) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(0)
    path = folder / "rois.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(n_units * 2, 32, 140, 140))
    for i in range(len(arr)):
        arr[i] = rng.normal(40, 120, (32, 140, 140)).astype(np.int16)
    arr.flush()
    index = [{"row": str(2 * u + k), "unit": f"u{u}", "patient_id": f"p{u}", "phase": ph}
             for u in range(n_units) for k, ph in enumerate("AV")]
    return np.load(path, mmap_mode="r"), group_units(index)


where_text = {"cpu": "MONAI per ROI in the loader workers", "device": "batched on the training device"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {describe_machine()}; device {dev}"
          + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else f", torch threads {torch.get_num_threads()}"))
    n = args.batch * args.batches
    with tempfile.TemporaryDirectory() as tmp:
        rois, units = _fake_cache(Path(tmp), n)
        targets = np.zeros((n, 1), np.float32)
        enc = ImageEncoder(width=args.width, with_projection=False).to(dev)
        x = torch.rand(args.batch, 1, 32, 128, 128, device=dev)

        enc.eval()
        amp = dev.type == "cuda"
        if amp:
            enc = enc.to(memory_format=torch.channels_last_3d)

        def bare_infer():
            with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                for _ in range(args.batches):
                    enc.features(x)
            if amp:
                torch.cuda.synchronize()

        eval_loader = make_loader(RoiDataset(rois, units, targets), args.batch, False, args.workers)

        def pipeline_infer():
            with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                for b in eval_loader:
                    enc.features(b["image"].to(dev, non_blocking=True))
            if amp:
                torch.cuda.synchronize()

        bare = n / median_seconds(bare_infer, args.repeats)
        pipe = n / median_seconds(pipeline_infer, args.repeats)
        kind = "bf16 channels-last" if amp else "float32"
        print(f"inference ({kind}, width {args.width}, batch {args.batch}): bare {bare:.1f} vol/s, "
              f"with cache+loader {pipe:.1f} vol/s, ratio {pipe / bare:.2f}")

        enc.train()
        opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)

        def step(batch):
            with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                loss = enc.features(batch).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def bare_train():
            for _ in range(args.batches):
                step(x)
            if amp:
                torch.cuda.synchronize()

        bare_t = n / median_seconds(bare_train, args.repeats)
        print(f"training (width {args.width}, batch {args.batch}, {args.workers} loader workers): bare {bare_t:.2f} samples/s")
        for where, augment in (("cpu", TrainAugment(flip=True, seed=0)), ("device", DeviceAugment(flip=True))):
            train_loader = make_loader(RoiDataset(rois, units, targets, augment=augment), args.batch, True, args.workers)

            def pipeline_train():
                for b in train_loader:
                    if "aug" in b:
                        b = augment.apply_batch(b, dev)
                    step(b["image"].to(dev, non_blocking=True))
                if amp:
                    torch.cuda.synchronize()

            pipe_t = n / median_seconds(pipeline_train, args.repeats)
            print(f"  with augmentation ({where_text[where]}) + loader: {pipe_t:.2f} samples/s, "
                  f"ratio {pipe_t / bare_t:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
