"""``renalclip preprocess`` and ``renalclip train <stage>``: the image stages from the command line.

Usage::

    renalclip preprocess --manifest cohort/manifest.csv --out cache
    renalclip train attributes --config Resources/configs/demo.yaml --out run --set data.cache=cache
    renalclip train finetune   --config demo.yaml --out run --init random
    renalclip train compare    --config demo.yaml --out run      # random vs attribute-pretrained table
    renalclip train ablation   --config demo.yaml --out run      # the four pre-training variants (clip)
"""
from __future__ import annotations

import json
import sys

import yaml

IMAGE_STAGES = ("attributes", "finetune", "survival", "data-efficiency", "phase-fusion", "compare")
TEXT_STAGES = ("text", "text-features", "clip", "clip-eval", "ablation")
REPORT_STAGES = ("report",)


def _overrides(pairs) -> dict:
    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep:
            from ..errors import ConfigError

            raise ConfigError("--set", f"expected KEY=VALUE, found {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _log(quiet: bool):
    return None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def cmd_preprocess(args) -> int:
    from ..data.manifest_cases import cases_from_manifest
    from ..data.roi_cache import build_cache

    cases, problems = cases_from_manifest(args.manifest, on_error=args.on_bad_row)
    for p in problems:
        print(f"renalclip: skipped: {p}", file=sys.stderr)
    kinds = ("lesion", "kidney") if args.kind == "both" else (args.kind,)
    summary = {}
    for kind in kinds:
        progress = None if args.quiet else (lambda d, t, w: print(f"[{d}/{t}] {w}", file=sys.stderr, flush=True))
        out, skipped = build_cache(cases, args.out, kind, on_error=args.on_bad_row, progress=progress)
        for s in skipped:
            print(f"renalclip: skipped: {s}", file=sys.stderr)
        summary[kind] = {"cache": str(out), "skipped": len(skipped) + len(problems)}
    print(json.dumps(summary))
    return 0


def cmd_merge_manifests(args) -> int:
    from ..data.manifest import merge_manifests

    out = merge_manifests(args.manifests, args.out)
    print(json.dumps({"manifest": str(out)}))
    return 0


def cmd_train(args) -> int:
    from ..atomic import jsonable
    from ..config import load_config
    from .image_stages import run_data_efficiency, run_stage

    cfg = load_config(args.config, _overrides(args.set))
    log = _log(args.quiet)
    if args.stage == "all":
        from ..progress import ProgressReporter
        from .pipeline import run_pipeline

        rep = ProgressReporter(json_lines=args.progress_json, quiet=args.quiet)
        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        summary = run_pipeline(cfg, args.out, stages, nproc=args.gpus, nnodes=args.nnodes,
                               rdzv_endpoint=args.rdzv_endpoint, overrides=list(args.set or []), reporter=rep,
                               node_rank=args.node_rank)
        width = max(len(s) for s in summary) if summary else 0
        for stage, info in summary.items():
            print(f"{stage:<{width}}  {info['status']:<13} {info['seconds']:8.1f} s", file=sys.stderr)
        if args.progress_json:
            rep.result(stages=summary)
        else:
            print(json.dumps(summary))
        return 0
    if args.stage in ("attributes", "finetune", "survival"):
        result = run_stage(args.stage, cfg, args.out, log, init=args.init)
    elif args.stage == "data-efficiency":
        result = {"table": str(run_data_efficiency(cfg, args.out, log))}
    elif args.stage == "text":
        from .text_stage import run_text

        result = run_text(cfg, args.out, log)
    elif args.stage == "text-features":
        from .clip_stage import run_text_features

        result = run_text_features(cfg, args.out, log)
    elif args.stage == "clip":
        from .clip_stage import run_clip

        if args.init:
            cfg.clip.init = args.init
        result = run_clip(cfg, args.out, log)
    elif args.stage == "clip-eval":
        from .clip_stage import run_clip_eval

        result = run_clip_eval(cfg, args.out, log)
    elif args.stage == "ablation":
        from .ablation import run_ablation

        result = run_ablation(cfg, args.out, log)
    elif args.stage == "report":
        from .report_stage import run_report

        result = run_report(cfg, args.out, log, init=args.init)
    elif args.stage == "phase-fusion":
        from .compare import run_phase_fusion

        result = run_phase_fusion(cfg, args.out, init=args.init or cfg.finetune.init)
    else:
        from .compare import run_compare

        result = run_compare(cfg, args.out, log)
    print(json.dumps(jsonable({k: v for k, v in (result or {}).items() if k != "history"}), default=str))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("preprocess", help="build the ROI cache (lesion- and kidney-centred) from a cohort manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--kind", choices=("lesion", "kidney", "both"), default="both")
    p.add_argument("--on-bad-row", choices=("fail", "skip"), default="fail",
                   help="a manifest row or image that fails to load: stop (default) or report and skip it")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_preprocess)

    m = sub.add_parser("merge-manifests", help="join manifests into one (paths rewritten; a patient's phase twice is an error)")
    m.add_argument("manifests", nargs="+")
    m.add_argument("--out", required=True, help="the merged manifest CSV")
    m.set_defaults(func=cmd_merge_manifests)

    t = sub.add_parser("train", help="run an image training stage from a YAML config")
    t.add_argument("stage", choices=("all",) + IMAGE_STAGES + TEXT_STAGES + REPORT_STAGES,
                   help="a stage, or 'all': the whole pipeline in order (renalclip_lib.training.pipeline)")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True, help="run folder (stages resume inside it)")
    t.add_argument("--init", help="encoder to start from: random, attributes, clip or a checkpoint path")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. finetune.optim.epochs=2")
    t.add_argument("--stages", help="with 'all': comma-separated subset, e.g. cache,attributes,finetune")
    t.add_argument("--gpus", type=int, default=1, help="with 'all': processes per node for the distributed "
                                                       "stages (GPUs; on CPU, Gloo processes), via torchrun")
    t.add_argument("--nnodes", type=int, default=1, help="with 'all': nodes (torchrun rendezvous)")
    t.add_argument("--rdzv-endpoint", help="with 'all' and --nnodes > 1: HOST:PORT of the rendezvous")
    t.add_argument("--node-rank", type=int, help="with 'all' and --nnodes > 1: this node's rank (default $NODE_RANK or 0); "
                                                 "node 0 runs every stage, the others join the distributed ones")
    t.add_argument("--progress-json", action="store_true", help="JSON lines on stdout (RenalCLIPTraining panel)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)
