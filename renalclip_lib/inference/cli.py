"""``renalclip analyze``, ``bundle``, ``batch``, ``index-cohort`` and ``search``.

Usage::

    renalclip bundle --from RUN_DIR --out BUNDLE
    renalclip analyze --phase A=art.nii.gz --phase V=ven.nii.gz --center-lps 60 -12 1200 \\
        --bundle BUNDLE --out assessment.json [--report] [--panel panel.png] [--progress-json]
    renalclip batch --manifest cohort/manifest.csv --bundle BUNDLE --out batch_out
    renalclip index-cohort --clip RUN/clip/best.pt --manifest cohort/manifest.csv --out cohort_index
    renalclip search --index cohort_index --query "left renal mass, washout" [--top 5] [--json]

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
                     panel=args.panel, greedy=args.greedy, reporter=rep,
                     number_safe=True if args.number_safe else None, ground=not args.raw_report,
                     mirroring=not args.no_mirroring)
    a.timings["bundle_load"] = round(bundle.load_seconds, 4)
    a.write(out)
    payload = {"assessment": str(out), "summary": a.summary(), "summary_line": a.summary_line(),
               "panel": args.panel, "warnings": a.warnings}
    rep.print_result(payload)
    return EXIT_OK


def cmd_bundle(args) -> int:
    from .bundle import build_bundle

    if not args.from_run and not args.heads and not args.encoder:
        raise RenalCLIPError(None, "give --from RUN_DIR, or --encoder PUBLISHED.pt with --heads HEADS.pt")
    out = build_bundle(args.out, run_dir=args.from_run, init=args.init, encoder=args.encoder, heads=args.heads,
                       survival=args.survival, clip=args.clip, zeroshot=args.zeroshot, report=args.report,
                       report_encoder=args.report_encoder, number_safe=True if args.number_safe else None,
                       require_measurement=True if args.require_measurement else None,
                       fuse_phases=True if args.fuse_phases else None, synthetic=True if args.synthetic else None)
    manifest = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    print(json.dumps({"bundle": str(out), "components": sorted(manifest["components"]),
                      "thresholds": {k: v["value"] for k, v in manifest["thresholds"].items()}}, indent=2))
    return EXIT_OK


def cmd_batch(args) -> int:
    from .batch import run_batch

    rep = _reporter(args)
    result = run_batch(args.manifest, args.bundle, args.out, device=args.device, segment_with=args.segment_with,
                       report=args.report, evaluate=not args.no_evaluate, n_boot=args.bootstrap, reporter=rep,
                       ground=not args.raw_report, mirroring=not args.no_mirroring,
                       show_bar=not args.quiet)
    rep.print_result(result)
    return EXIT_OK


def cmd_index_cohort(args) -> int:
    from .search import build_index, index_summary, load_index

    rep = _reporter(args)
    cohorts = [c.strip() for c in args.cohorts.split(",") if c.strip()] if args.cohorts else None
    rep.progress("index", 0.01, "embedding the cohort's kidneys")
    out = build_index(args.out, clip=args.clip, manifest=args.manifest, cache=args.cache, cohorts=cohorts,
                      device=args.device, on_error=args.on_bad_row, log=rep.log)
    index = load_index(out)
    payload = {**index_summary(index), "skipped": index.meta.get("skipped", [])}
    rep.progress("done", 1.0, f"{len(index)} kidneys indexed in {out}")
    rep.print_result(payload)
    return EXIT_OK


def _table(hits: list[dict], width: int = 70) -> str:
    head = ("rank", "score", "patient", "side", "cohort", "report")
    rows = [(str(h["rank"]), f"{h['score']:.4f}", h["patient_id"], h["side"], h["cohort"],
             h["report"] if len(h["report"]) <= width else h["report"][: width - 1] + "\u2026") for h in hits]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in [head, *rows])


def cmd_search(args) -> int:
    from .search import load_index, load_query_image, parse_center, search_image, search_text

    index = load_index(args.index)
    center = None if args.center_lps is None else parse_center(args.center_lps)
    warnings: list[str] = []
    if args.query is not None:
        if center is not None:
            raise RenalCLIPError(None, "--center-lps goes with --query-image, not with a text query")
        hits = search_text(index, args.query, top=args.top, device=args.device)
        query = {"text": args.query}
    else:
        x, warnings = load_query_image(args.query_image, center)
        hits = search_image(index, x, top=args.top, device=args.device or "cpu")
        query = {"image": args.query_image, "center_lps": None if center is None else list(center)}
    if args.json:
        print(json.dumps({"index": str(index.path), "n": len(index), "query": query, "hits": hits,
                          "warnings": warnings}))
    else:
        for w in warnings:
            print(f"renalclip: warning: {w}", file=sys.stderr)
        what = f"text {args.query!r}" if args.query is not None else f"image {args.query_image}"
        print(f"{len(hits)} of {len(index)} kidneys closest to {what} (cosine similarity)")
        print(_table(hits))
    return EXIT_OK


def add_inference_parsers(sub) -> None:
    a = sub.add_parser("analyze", help="assess one case with a model bundle -> assessment.json",
                       description="Register the phases, find or take the lesion centre, cut the ROI and run "
                                   "every model of the bundle. Exit codes: 0 done, 2 bad input (one line on "
                                   "stderr, no assessment written), 1 internal error.")
    a.add_argument("--phase", action="append", required=True, metavar="PHASE=PATH",
                   help="a phase image (N, A, V or D) as a file or DICOM folder; repeat for each phase")
    c = a.add_mutually_exclusive_group()
    c.add_argument("--center-lps", nargs=3, type=float, metavar=("X", "Y", "Z"), help="lesion centre, LPS mm")
    c.add_argument("--center-ras", nargs=3, type=float, metavar=("X", "Y", "Z"), help="lesion centre, RAS mm (Slicer)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--segmentation", help="label map (1 kidney, 2 tumour, 3 cyst): centre of the largest lesion "
                                          "unless a centre is given; the mass is measured")
    g.add_argument("--segment-with", metavar="NNUNET_DIR", help="nnU-Net model folder: segment, then centre and measure")
    a.add_argument("--no-mirroring", action="store_true",
                   help="with --segment-with: skip nnU-Net's test-time mirroring (about 8x faster in 3D)")
    a.add_argument("--bundle", required=True, help="model bundle folder (renalclip bundle)")
    a.add_argument("--out", required=True, help="assessment.json to write")
    a.add_argument("--report", action="store_true", help="also generate the radiology report")
    a.add_argument("--raw-report", action="store_true",
                   help="keep the generated side and size even where the segmentation measures others")
    a.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    a.add_argument("--number-safe", action="store_true",
                   help="exempt digits from the 3-gram block and repetition penalty (keeps measurements intact)")
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
    b.add_argument("--number-safe", action="store_true",
                   help="the report generator decodes with digits exempt from the 3-gram block and penalty")
    b.add_argument("--require-measurement", action="store_true",
                   help="the report generator's beam search keeps only reports that state a size in cm")
    b.add_argument("--fuse-phases", action="store_true",
                   help="zero-shot averages the embeddings of every given phase (default: as the run's clip.fuse_phases)")
    b.add_argument("--synthetic", action="store_true", help="mark the bundle as trained on synthetic data")
    b.set_defaults(func=cmd_bundle)

    t = sub.add_parser("batch", help="analyse every case of a manifest (resumable; one bad case does not stop it)")
    t.add_argument("--manifest", required=True)
    t.add_argument("--bundle", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--segment-with", metavar="NNUNET_DIR",
                   help="nnU-Net model for cases without a label map: centre (unless given) and measurement")
    t.add_argument("--no-mirroring", action="store_true",
                   help="with --segment-with: skip nnU-Net's test-time mirroring (about 8x faster in 3D)")
    t.add_argument("--report", action="store_true")
    t.add_argument("--raw-report", action="store_true",
                   help="keep the generated side and size even where the segmentation measures others")
    t.add_argument("--device", default="cpu")
    t.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the evaluation")
    t.add_argument("--no-evaluate", action="store_true")
    t.add_argument("--progress-json", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_guard(cmd_batch))

    i = sub.add_parser("index-cohort", help="embed every kidney of a manifest for `renalclip search`",
                       description="Embed each kidney of a manifest (evaluation phase) with the contrastive encoder "
                                   "and write OUT/index.npz and OUT/index.json. Exit codes: 0 done, 2 bad input "
                                   "(one line on stderr, no index written), 1 internal error.")
    i.add_argument("--clip", required=True, help="contrastive checkpoint (RUN/clip/best.pt) or a bundle folder")
    i.add_argument("--manifest", required=True, help="cohort manifest CSV (images, kidney centres, reports)")
    i.add_argument("--cache", help="a finished ROI cache (renalclip preprocess); default: built in OUT/cache")
    i.add_argument("--cohorts", help="comma-separated cohorts to index (default: all)")
    i.add_argument("--out", required=True, help="index folder")
    i.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    i.add_argument("--on-bad-row", choices=("fail", "skip"), default="fail",
                   help="a bad manifest row or unreadable image stops the index (fail) or is left out (skip)")
    i.add_argument("--progress-json", action="store_true", help="JSON lines on stdout (for the Slicer module)")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=_guard(cmd_index_cohort))

    s = sub.add_parser("search", help="kidneys of an indexed cohort closest to a text or an image",
                       description="Rank the kidneys of an index by cosine similarity to a text query (needs the "
                                   "text encoder folder the index names) or to a query image. Exit codes: 0 done, "
                                   "2 bad input (one line on stderr), 1 internal error.")
    s.add_argument("--index", required=True, help="index folder (renalclip index-cohort)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="a text, e.g. \"left renal mass with washout\"")
    q.add_argument("--query-image", metavar="FILE",
                   help="a .npy ROI (cached HU ROI or model input) or a CT volume with --center-lps")
    s.add_argument("--center-lps", nargs="+", metavar="X,Y,Z",
                   help="centre of the query ROI in LPS mm, as X,Y,Z or X Y Z (use --center-lps=-1,2,3 "
                        "when X is negative)")
    s.add_argument("--top", type=int, default=5, help="number of hits (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu for images, auto for text)")
    s.set_defaults(func=cmd_search)
