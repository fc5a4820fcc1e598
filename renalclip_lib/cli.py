"""The ``renalclip`` command line.

Exit codes: 0 success; 2 bad input (one line ``renalclip: error: <file>: <problem>`` on stderr, no
partial output); 1 an unexpected internal error (a bug: please report it with the traceback).

Usage::

    renalclip phantom --out cohort --patients 8 --seed 0 --matrix 128
    renalclip roi ct.nii.gz --center-lps 31 12.5 -140 --out roi.nii.gz --tensor roi.npy
    renalclip demo --out demo_out
    renalclip preprocess --manifest cohort/manifest.csv --out cache
    renalclip train compare --config Resources/configs/demo.yaml --out run --set data.cache=cache
"""
from __future__ import annotations

import argparse
import json
import sys


from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, RenalCLIPError


def cmd_roi(args) -> int:
    from .atomic import atomic_save_npy
    from .io import read_volume, write_volume
    from .preprocess import crop_roi, to_model_input

    vol = read_volume(args.image)
    roi = crop_roi(vol, args.center_lps)
    tensor = to_model_input(roi) if args.tensor else None
    write_volume(roi, args.out)
    if tensor is not None:
        atomic_save_npy(args.tensor, tensor)
    print(json.dumps({"roi": str(args.out), "tensor": str(args.tensor) if args.tensor else None,
                      "shape_zyx": list(roi.array.shape)}))
    return EXIT_OK


def _phantom_splits(args):
    """The splits ``renalclip phantom`` writes: all, or only the test or pre-training patients."""
    if args.test_only and args.pretrain_only:
        raise RenalCLIPError(args.out, "--test-only and --pretrain-only exclude each other")
    return ("test",) if args.test_only else ("pretrain",) if args.pretrain_only else None


def cmd_phantom(args) -> int:
    from .phantom import write_cohort

    manifest = write_cohort(args.out, n_patients=args.patients, seed=args.seed, matrix=args.matrix,
                            progress=_progress_printer(args.quiet), first=args.first,
                            splits=_phantom_splits(args))
    print(json.dumps({"manifest": str(manifest)}))
    return EXIT_OK


def cmd_demo(args) -> int:
    from .demo import run_demo

    from .progress import ProgressReporter

    rep = ProgressReporter(json_lines=args.progress_json, quiet=args.quiet)
    summary = run_demo(args.out, quick=args.quick, seed=args.seed, reporter=rep)
    if args.progress_json:
        rep.result(index=summary["index"], bundle=summary["bundle"])
    else:
        print(json.dumps({k: summary[k] for k in ("index", "bundle", "assessment", "timings_s", "disclaimer")}, indent=2))
    return EXIT_OK


def _progress_printer(quiet: bool):
    if quiet:
        return None

    def show(done: int, total: int, what: str = "") -> None:
        print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)

    return show


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="renalclip", description="RenalCLIP: AI assessment of renal masses on CT.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("roi", help="cut the 140x140x160 mm ROI around a point and write it (and the model tensor)")
    r.add_argument("image", help="CT file (NIfTI, NRRD, MHA) or DICOM folder")
    r.add_argument("--center-lps", nargs=3, type=float, required=True, metavar=("X", "Y", "Z"),
                   help="ROI centre in LPS millimetres (Slicer shows RAS: negate X and Y)")
    r.add_argument("--out", required=True, help="output ROI image (.nii.gz, .nrrd, .mha)")
    r.add_argument("--tensor", help="also write the (1, 32, 128, 128) float32 model input as .npy")
    r.set_defaults(func=cmd_roi)

    ph = sub.add_parser("phantom", help="generate a synthetic multi-phase renal CT cohort with a manifest")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--patients", type=int, default=12)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--matrix", type=int, default=512, help="in-plane matrix (512 = full size; 128 is fast)")
    ph.add_argument("--first", type=int, default=0, help="index of the first patient (skip those an existing cohort of this seed has)")
    ph.add_argument("--test-only", action="store_true",
                    help="write only the external (test-split) patients: a held-out pool for a cohort of the same seed")
    ph.add_argument("--pretrain-only", action="store_true",
                    help="write only the pre-training patients: more report-labelled pre-training data for a cohort "
                         "of the same seed (the paper pre-trains on 17 times its internal training cohort)")
    ph.add_argument("--quiet", action="store_true")
    ph.set_defaults(func=cmd_phantom)

    d = sub.add_parser("demo", help="the whole product on synthetic data: cohort, nnU-Net, every training "
                                    "stage, evaluation, one analysed case, DIR/index.html",
                       description="Models trained by the demo are trained on synthetic data: not for clinical use.")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--quick", action="store_true", help="smaller cohort and shorter training (a few minutes)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--progress-json", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    from .training.cli_train import add_parsers as add_training_parsers

    add_training_parsers(sub)
    from .evaluation.cli import add_evaluate_parser

    add_evaluate_parser(sub)
    from .segmentation.cli import add_segmentation_parser

    add_segmentation_parser(sub)
    from .extraction.cli import add_extract_parser

    add_extract_parser(sub)
    from .inference.cli import add_inference_parsers

    add_inference_parsers(sub)
    return p


def _leave_process_group(code: int) -> None:
    """A torchrun worker meets its peers and exits here (torch is only imported if a stage used it)."""
    if "torch.distributed" in sys.modules:
        from .training.distributed import exit_worker

        exit_worker(code)


def main(argv=None) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    code = _run(args)
    _leave_process_group(code)
    return code


def _run(args) -> int:
    try:
        return int(args.func(args))
    except RenalCLIPError as exc:
        print(f"renalclip: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("renalclip: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - an unexpected failure is a bug: show it in full
        import traceback

        traceback.print_exc()
        print("renalclip: internal error (a bug); the traceback above says where", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
