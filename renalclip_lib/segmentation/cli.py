"""``renalclip segmentation``: predict with an nnU-Net model folder; train the tiny synthetic model.

Usage::

    renalclip segmentation train-synthetic --out models/synthetic [--patients 6] [--epochs 3]
    renalclip segmentation predict ct.nii.gz --model models/synthetic --out labels.nii.gz [--device cuda]

stdout carries one JSON object; nnU-Net's own chatter goes to stderr (or nowhere with --quiet).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time

from ..errors import EXIT_OK


def cmd_predict(args) -> int:
    import numpy as np

    from ..io import read_volume, write_volume
    from .model import SegmentationModel

    folds = None if args.folds == ["all-present"] else tuple(int(f) if f.isdigit() else f for f in args.folds)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model = SegmentationModel(args.model, device=args.device, folds=folds, checkpoint=args.checkpoint,
                                  mirroring=not args.no_mirroring, verbose=not args.quiet)
        vol = read_volume(args.image)
        t1 = time.perf_counter()
        labels = model.predict(vol)
        t2 = time.perf_counter()
    write_volume(labels, args.out)
    counts = {name: int(np.count_nonzero(labels.array == v)) for v, name in model.label_names.items()}
    print(json.dumps({"labels": str(args.out), "shape_zyx": list(labels.array.shape), "voxels": counts,
                      "device": str(model.device), "folds": list(model.folds),
                      "load_seconds": round(t1 - t0, 2), "predict_seconds": round(t2 - t1, 2)}))
    return EXIT_OK


def cmd_train_synthetic(args) -> int:
    from .train import train_synthetic

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[segmentation] {msg}", file=sys.stderr, flush=True)

    summary = train_synthetic(args.out, n_patients=args.patients, epochs=args.epochs, iterations=args.iterations,
                              val_iterations=args.val_iterations, seed=args.seed, matrix=args.matrix,
                              device=args.device, max_patch=args.max_patch, threads=args.threads,
                              n_proc_da=args.workers, progress=say)
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def add_segmentation_parser(subparsers):
    s = subparsers.add_parser("segmentation", help="kidney/tumour/cyst segmentation with nnU-Net v2",
                              description="Segment kidneys, tumours and cysts with a trained nnU-Net v2 model "
                                          "folder, or train a tiny one on the synthetic cohort.")
    sub = s.add_subparsers(dest="segmentation_command", required=True)

    p = sub.add_parser("predict", help="segment one CT with an nnU-Net model folder")
    p.add_argument("image", help="CT file (NIfTI, NRRD, MHA) or DICOM folder")
    p.add_argument("--model", required=True, help="nnU-Net model folder (dataset.json, plans.json, fold_N/)")
    p.add_argument("--out", required=True, help="output label map (.nii.gz, .nrrd): 1 kidney, 2 tumour, 3 cyst")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--folds", nargs="+", default=["0"],
                   help="folds to ensemble (default 0; 'all-present' for every fold_N in the folder)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--no-mirroring", action="store_true", help="skip test-time mirroring (about 8x faster in 3D)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    t = sub.add_parser("train-synthetic", help="train a tiny nnU-Net on synthetic patients (tests, demo)")
    t.add_argument("--out", required=True, help="model folder to write (replaced atomically if it holds a model)")
    t.add_argument("--patients", type=int, default=6)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--iterations", type=int, default=80, help="training iterations per epoch")
    t.add_argument("--val-iterations", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--matrix", type=int, default=96, help="in-plane matrix of the synthetic CTs")
    t.add_argument("--max-patch", type=int, default=32, help="cap on the patch size per axis")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--threads", type=int, default=None, help="torch threads in the training process")
    t.add_argument("--workers", type=int, default=1, help="nnU-Net data-augmentation workers (nnUNet_n_proc_DA)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train_synthetic)
    return s
