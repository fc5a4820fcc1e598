"""Image encoder throughput: inference and training, each against a bare pass of the same network.

- inference: volumes/s through the ROI cache + DataLoader + network against the same network on a
  ready tensor (float32 on CPU; bf16 and channels-last on a GPU), and the loader alone. The
  pipeline's items are int16 HU crops windowed on the device (``RoiDataset(raw=True)``, pinned
  batches on a GPU); ``float32 items`` is the former path (windowed in the loader, unpinned); on a
  GPU also the whole cache held there (``optim.device_cache``), the loader yielding rows only.
- training: samples/s of the real pipeline (memory-mapped cache, augmentation of Table 40, random
  phase, loader workers) against bare forward+backward+step on a ready batch, once with MONAI per
  ROI in the loader workers (``augment_on: cpu``) and once batched on the training device
  (``augment_on: device``, what ``auto`` picks); for the latter also the loader alone and the
  loader with the batched augmentation but no network, so a stall shows where it is, and on a GPU
  the same from the cache held on the GPU;
- the training loop itself (``training.loop.fit``, fine-tuning's loss, batched augmentation):
  samples/s of its second epoch from the loader and, on a GPU, from the cache held there.
A ratio near 1 means the data pipeline never holds the model back (target >= 0.9 on CPU).
``--rotate z`` keeps the rotation to the axial plane, as ``demo.yaml`` does (``xyz``: Table 40).
Targets: >= 2,000 volumes/s bf16 inference on one H100-class GPU.

Usage: ``python benchmarks/bench_encoder.py [--width 64] [--batch 8] [--batches 6] [--workers 2] [--rotate z]``
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

from renalclip_lib.constants import AUGMENT_ROTATE  # noqa: E402
from renalclip_lib.data.augment import DeviceAugment, TrainAugment  # noqa: E402
from renalclip_lib.data.datasets import RoiDataset, batch_images, group_units  # noqa: E402
from renalclip_lib.data.device_cache import DeviceRois  # noqa: E402
from renalclip_lib.models import ImageEncoder  # noqa: E402
from renalclip_lib.training.common import make_loader  # noqa: E402
from renalclip_lib.training.distributed import DistContext  # noqa: E402
from renalclip_lib.training.finetune import FinetuneTask, build_model  # noqa: E402
from renalclip_lib.training.loop import fit  # noqa: E402
from renalclip_lib.training.options import OptimOptions  # noqa: E402


def _fake_cache(folder: Path, n_units: int) -> tuple[np.ndarray, list]:
    """A memory-mapped int16 ROI cache of two phases per unit (random HU, each ROI different)."""
    rng = np.random.default_rng(0)
    path = folder / "rois.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(n_units * 2, 32, 140, 140))
    block = rng.normal(40, 120, (32, 140, 140)).astype(np.int16)
    for i in range(len(arr)):
        arr[i] = np.roll(block, i, axis=2)
    arr.flush()
    index = [{"row": str(2 * u + k), "unit": f"u{u}", "patient_id": f"p{u}", "phase": ph}
             for u in range(n_units) for k, ph in enumerate("AV")]
    return np.load(path, mmap_mode="r"), group_units(index)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def loop_rate(loader, width: int, dev: torch.device, out_dir: Path) -> float:
    """Samples/s of the second epoch of ``fit`` (fine-tuning's malignancy loss) over ``loader``."""
    task = FinetuneTask(build_model(ImageEncoder(width=width, with_projection=False), ["malignancy"], False),
                        ["malignancy"], {"malignancy": np.ones(2)})
    opt = OptimOptions(epochs=2, lr=1e-4, amp="bf16", progress=False, select_metric="train_loss")
    result = fit(task, loader, None, out_dir, opt, DistContext(device=dev))
    return float(result["history"][-1]["samples_per_s"])


where_text = {"cpu": "MONAI per ROI in the loader workers", "device": "batched on the training device"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rotate", choices=AUGMENT_ROTATE, default="xyz", help="the augmentation's rotation axes")
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
            _sync(dev)

        def infer_over(loader, model=True):
            def run():
                with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                    for b in loader:
                        images = batch_images(b, dev)
                        if model:
                            enc.features(images)
                _sync(dev)
            return run

        bare = n / median_seconds(bare_infer, args.repeats)
        kind = "bf16 channels-last" if amp else "float32"
        print(f"inference ({kind}, width {args.width}, batch {args.batch}, {args.workers} loader workers): "
              f"bare {bare:.1f} vol/s")
        on_device = DeviceRois(rois, dev) if dev.type == "cuda" else None
        variants = [("int16 items, windowed on the device", True, None, None),
                    ("float32 items (former path, unpinned)", False, False, None)]
        if on_device is not None:
            variants.append(("ROI cache held on the GPU", True, None, on_device))
        for label, raw, pin, cache in variants:
            loader = make_loader(RoiDataset(rois, units, targets, raw=raw), args.batch, False, args.workers,
                                 device_cache=cache)
            if pin is not None:
                loader.pin_memory = pin
            alone = n / median_seconds(infer_over(loader, model=False), args.repeats)
            pipe = n / median_seconds(infer_over(loader), args.repeats)
            print(f"  {label}: loader and copy alone {alone:.1f} vol/s; with the network {pipe:.1f} vol/s, "
                  f"ratio {pipe / bare:.2f}")

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
            _sync(dev)

        if dev.type == "cuda":
            check = DeviceAugment(flip=True)
            params = torch.as_tensor(np.stack([check.draw(np.random.default_rng(i)) for i in range(4)]))
            hu = torch.as_tensor(np.array(rois[:4]))[:, None]
            diff = (check(hu.to(dev), params.to(dev)).cpu() - check(hu, params)).abs().max()
            print(f"batched augmentation on the GPU against the CPU, same parameters: max |difference| {float(diff):.2e}")
        bare_t = n / median_seconds(bare_train, args.repeats)
        print(f"training (width {args.width}, batch {args.batch}, {args.workers} loader workers, rotation about "
              f"{args.rotate}): bare {bare_t:.2f} samples/s")
        runs = [("cpu", TrainAugment(flip=True, seed=0, rotate=args.rotate), None),
                ("device", DeviceAugment(flip=True, rotate=args.rotate), None)]
        if on_device is not None:
            runs.append(("device", DeviceAugment(flip=True, rotate=args.rotate), on_device))
        for where, augment, cache in runs:
            train_loader = make_loader(RoiDataset(rois, units, targets, augment=augment), args.batch, True, args.workers,
                                       device_cache=cache)
            source = "the cache held on the GPU" if cache is not None else "the loader"

            def pipeline_train(network=True, augmenting=True):
                def run():
                    for b in train_loader:
                        if not augmenting:
                            continue
                        if "aug" in b:
                            b = augment.apply_batch(b, dev)
                        images = batch_images(b, dev)
                        if network:
                            step(images)
                    _sync(dev)
                return run

            if where == "device":
                alone = n / median_seconds(pipeline_train(network=False, augmenting=False), args.repeats)
                augmented = n / median_seconds(pipeline_train(network=False), args.repeats)
                print(f"  {source} alone {alone:.1f} samples/s; with copy and batched augmentation {augmented:.1f} samples/s")
            pipe_t = n / median_seconds(pipeline_train(), args.repeats)
            print(f"  with augmentation ({where_text[where]}) + {source}: {pipe_t:.2f} samples/s, "
                  f"ratio {pipe_t / bare_t:.2f} (target >= 0.9)")
            if where == "device":
                rate = loop_rate(train_loader, args.width, dev, Path(tmp) / ("loop_gpu_cache" if cache is not None else "loop_loader"))
                print(f"    the training loop (fit, second epoch) over {source}: {rate:.2f} samples/s, "
                      f"ratio {rate / bare_t:.2f}")


if __name__ == "__main__":
    main()
