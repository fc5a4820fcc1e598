"""``renalclip analyze``, ``renalclip bundle`` and ``renalclip batch``.

Usage::

    renalclip bundle --from RUN_DIR --out BUNDLE
    renalclip analyze --phase A=art.nii.gz --phase V=ven.nii.gz --center-lps 60 -12 1200 \\
        --bundle BUNDLE --out assessment.json [--report] [--panel panel.png] [--progress-json]
    renalclip batch --manifest cohort/manifest.csv --bundle BUNDLE --out batch_out

With ``--progress-json`` stdout carries only JSON lines (``renalclip_lib.progress``); otherwise
stdout carries one JSON summary and human progress goes to stderr.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import EXIT_OK, RenalCLIPError
from ..progress import ProgressReporter


def _reporter(args) -> ProgressReporter:
    return ProgressReporter(json_lines=getattr(args, "progress_json", False), quiet=getattr(args, "quiet", False))


def _guard(func):
    """Report a bad-input error as a protocol ``error`` line too, then let ``main`` exit with 2."""
    def run(args) -> int:
        try:
            return func(args)
        except RenalCLIPError as exc:
            if getattr(args, "progress_json", False):
                from ..errors import EXIT_BAD_INPUT

                ProgressReporter(json_lines=True).error(str(exc), EXIT_BAD_INPUT)
            raise
    return run


def _phases(pairs: list[str]) -> dict[str, str]:
    out = {}
    for item in pairs:
        key, sep, path = item.partition("=")
        key = key.strip().upper()
        if not sep or not path or key not in ("N", "A", "V", "D"):
            raise RenalCLIPError(None, f"--phase expects PHASE=PATH with PHASE one of N, A, V, D; got {item!r}")
        if key in out:
            raise RenalCLIPError(path, f"phase {key} given twice")
        out[key] = path
    return out


def cmd_analyze(args) -> int:
    from .analyze import analyze_case
    from .bundle import load_bundle

    rep = _reporter(args)
    phases = _phases(args.phase)
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise RenalCLIPError(out, "--out must name a .json file")
    rep.progress("bundle", 0.01, "loading the bundle")
    bundle = load_bundle(args.bundle, device=args.device, report=args.report)
    a = analyze_case(phases, bundle, center_lps=args.center_lps, center_ras=args.center_ras,
                     segmentation=args.segmentation, segment_with=args.segment_with, report=args.report,
                     panel=args.panel, greedy=args.greedy, reporter=rep)
    a.timings["bundle_load"] = round(bundle.load_seconds, 4)
    a.write(out)
    payload = {"assessment": str(out), "summary": a.summary(), "summary_line": a.summary_line(),
               "panel": args.panel, "warnings": a.warnings}
    if rep.json_lines:
        rep.result(**payload)
    else:
        print(json.dumps(payload, indent=2))
    return EXIT_OK


def cmd_bundle(args) -> int:
    from .bundle import build_bundle

    if not args.from_run and not args.heads and not args.encoder:
        raise RenalCLIPError(None, "give --from RUN_DIR, or --encoder PUBLISHED.pt with --heads HEADS.pt")
    out = build_bundle(args.out, run_dir=args.from_run, init=args.init, encoder=args.encoder, heads=args.heads,
                       survival=args.survival, clip=args.clip, zeroshot=args.zeroshot, report=args.report,
                       report_encoder=args.report_encoder,
                       synthetic=True if args.synthetic else None)
    manifest = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    print(json.dumps({"bundle": str(out), "components": sorted(manifest["components"]),
                      "thresholds": {k: v["value"] for k, v in manifest["thresholds"].items()}}, indent=2))
    return EXIT_OK


def cmd_batch(args) -> int:
    from .batch import run_batch

    rep = _reporter(args)
    result = run_batch(args.manifest, args.bundle, args.out, device=args.device, segment_with=args.segment_with,
                       report=args.report, evaluate=not args.no_evaluate, n_boot=args.bootstrap, reporter=rep,
                       show_bar=not args.quiet)
    if rep.json_lines:
        rep.result(**result)
    else:
        print(json.dumps(result, indent=2))
    return EXIT_OK


def add_inference_parsers(sub) -> None:
    a = sub.add_parser("analyze", help="assess one case with a model bundle -> assessment.json",
                       description="Register the phases, find or take the lesion centre, cut the ROI and run "
                                   "every model of the bundle. Exit codes: 0 done, 2 bad input (one line on "
                                   "stderr, no assessment written), 1 internal error.")
    a.add_argument("--phase", action="append", required=True, metavar="PHASE=PATH",
                   help="a phase image (N, A, V or D) as a file or DICOM folder; repeat for each phase")
    c = a.add_mutually_exclusive_group(required=True)
    c.add_argument("--center-lps", nargs=3, type=float, metavar=("X", "Y", "Z"), help="lesion centre, LPS mm")
    c.add_argument("--center-ras", nargs=3, type=float, metavar=("X", "Y", "Z"), help="lesion centre, RAS mm (Slicer)")
    c.add_argument("--segmentation", help="label map (1 kidney, 2 tumour, 3 cyst): centre of the largest lesion")
    c.add_argument("--segment-with", metavar="NNUNET_DIR", help="nnU-Net model folder: segment, then centre")
    a.add_argument("--bundle", required=True, help="model bundle folder (renalclip bundle)")
    a.add_argument("--out", required=True, help="assessment.json to write")
    a.add_argument("--report", action="store_true", help="also generate the radiology report")
    a.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    a.add_argument("--panel", help="also write a PNG of the ROI planes (what the model saw)")
    a.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a.add_argument("--progress-json", action="store_true", help="JSON lines on stdout (for the Slicer module)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_guard(cmd_analyze))

    b = sub.add_parser("bundle", help="collect a run's models into one bundle folder for analyze")
    b.add_argument("--from", dest="from_run", metavar="RUN_DIR", help="training run folder")
    b.add_argument("--out", required=True, help="bundle folder (replaced atomically)")
    b.add_argument("--init", help="which fine-tuned model: clip, attributes or random (default: best available)")
    b.add_argument("--encoder", help="a published RenalCLIP encoder file, combined with --heads")
    b.add_argument("--heads", help="checkpoint holding task heads (and its encoder unless --encoder is given)")
    b.add_argument("--survival", help="survival checkpoint (default: the run's)")
    b.add_argument("--clip", help="contrastive checkpoint for zero-shot (default: the run's)")
    b.add_argument("--zeroshot", help="prompt embeddings .npz (default: the run's)")
    b.add_argument("--report", help="report generator folder (default: the run's)")
    b.add_argument("--report-encoder", help="checkpoint of the image encoder the report generator was trained on")
    b.add_argument("--synthetic", action="store_true", help="mark the bundle as trained on synthetic data")
    b.set_defaults(func=cmd_bundle)

    t = sub.add_parser("batch", help="analyse every case of a manifest (resumable; one bad case does not stop it)")
    t.add_argument("--manifest", required=True)
    t.add_argument("--bundle", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--segment-with", metavar="NNUNET_DIR", help="nnU-Net model for cases without centre or labels")
    t.add_argument("--report", action="store_true")
    t.add_argument("--device", default="cpu")
    t.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the evaluation")
    t.add_argument("--no-evaluate", action="store_true")
    t.add_argument("--progress-json", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_guard(cmd_batch))
