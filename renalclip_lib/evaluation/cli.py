"""``renalclip evaluate``: the paper's evaluation of prediction files (any model: ours or a baseline).

The lead wires it into ``renalclip_lib/cli.py``::

    from .evaluation.cli import add_evaluate_parser
    add_evaluate_parser(sub)                     # sets func=cmd_evaluate

Usage::

    renalclip evaluate --model RenalCLIP=renalclip.csv --model CT-FM=ctfm.csv \\
        --cohorts cohorts.txt --retrieval RenalCLIP=emb.npz --data-efficiency fractions.csv --out eval_out

Bad input (missing file or column, a label out of range, a group naming an unknown cohort) raises a
RenalCLIPError before anything is written: exit 2 with one line naming the file and the problem.
"""
from __future__ import annotations

import json
import sys

from ..errors import EXIT_OK
from .columns import DEFAULT_TIMES_MONTHS


def add_evaluate_parser(subparsers):
    e = subparsers.add_parser(
        "evaluate", help="metrics, tables and figures of the paper's evaluation from prediction files",
        description="Evaluate prediction files of one or more models (format: docs/evaluation.md). Writes "
                    "DIR/metrics.json, DIR/tables/*.md|csv, DIR/figures/*.png and DIR/index.html.")
    e.add_argument("--model", action="append", default=[], metavar="NAME=PREDS.csv",
                   help="a model's predictions CSV; repeat for more models (column order of the tables)")
    e.add_argument("--retrieval", action="append", default=[], metavar="NAME=EMB.npz",
                   help="image/text embeddings for Recall@K (arrays image, text, patient_id[, cohort])")
    e.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier evaluation)")
    e.add_argument("--cohorts", metavar="FILE", help="cohort list: one per line in table order; "
                                                     "'NAME = a, b, c' defines a group")
    e.add_argument("--group", action="append", default=[], metavar="NAME=a,b,c",
                   help="a group of cohorts evaluated together (e.g. combined_external=xiamen,ruijin)")
    e.add_argument("--data-efficiency", metavar="FILE",
                   help="CSV/JSON of model, task, cohort, fraction, seed, value[, metric]")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--times", help="months for the time-dependent metrics, comma-separated "
                                   f"(default {','.join(str(t) for t in DEFAULT_TIMES_MONTHS)})")
    e.add_argument("--nltk-data", metavar="DIR", help="where WordNet for METEOR is assembled "
                                                      "(default ~/.cache/renalclip/nltk_data)")
    e.add_argument("--wordnet-source", metavar="DIR", help="WordNet 3.0 dict folder (default /usr/share/wordnet)")
    e.add_argument("--no-figures", action="store_true", help="skip the PNG figures (faster)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    return e


def _times(text: str | None) -> tuple[float, ...]:
    from .predictions import PredictionsError

    if not text:
        return DEFAULT_TIMES_MONTHS
    try:
        times = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise PredictionsError(None, f"--times expects months separated by commas, got {text!r}") from None
    if not times or min(times) <= 0:
        raise PredictionsError(None, f"--times expects positive months, got {text!r}")
    return times


def cmd_evaluate(args) -> int:
    from .engine import Settings, evaluate
    from .output import check_output_folder, write_run
    from .predictions import (CohortSpec, PredictionsError, parse_group, parse_named_path, read_cohort_list,
                              read_data_efficiency, read_embeddings, read_predictions)

    if not args.model and not args.retrieval:
        raise PredictionsError(None, "nothing to evaluate: give --model NAME=PREDS.csv and/or --retrieval NAME=EMB.npz")
    if args.bootstrap < 0:
        raise PredictionsError(None, "--bootstrap must be >= 0")
    check_output_folder(args.out)
    say = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    models, names = [], set()
    for arg in args.model:
        name, path = parse_named_path(arg, "--model")
        if name in names:
            raise PredictionsError(path, f"model name {name!r} given twice")
        names.add(name)
        models.append(read_predictions(path, name))
    embeddings = {}
    for arg in args.retrieval:
        name, path = parse_named_path(arg, "--retrieval")
        if name in embeddings:
            raise PredictionsError(path, f"--retrieval name {name!r} given twice")
        embeddings[name] = (read_embeddings(path), path)
    spec = read_cohort_list(args.cohorts) if args.cohorts else CohortSpec()
    for g in args.group:
        gname, members = parse_group(g.replace("=", " = ", 1), "--group")
        if gname in spec.groups:
            raise PredictionsError(None, f"--group {gname!r} is defined twice")
        spec.groups[gname] = members
    data_eff = read_data_efficiency(args.data_efficiency) if args.data_efficiency else None
    settings = Settings(n_boot=args.bootstrap, seed=args.seed, times=_times(args.times))
    if any("report" in m.tasks for m in models):
        from .text_metrics import INSTALL_HINT, load_wordnet

        settings.wordnet = load_wordnet(args.nltk_data, args.wordnet_source)
        if settings.wordnet is None:
            settings.wordnet_note = f"WordNet not found, METEOR not computed ({INSTALL_HINT})"
            say(f"renalclip: warning: {settings.wordnet_note}")
    say(f"evaluating {len(models)} model(s), {args.bootstrap} bootstrap resamples")
    results = evaluate(models, spec, settings, embeddings, data_eff,
                       progress=lambda k, n, what: say(f"[{k}/{n}] {what}"))
    summary = write_run(results, args.out, figures=not args.no_figures,
                        progress=lambda k, n, what: say(f"writing: {what}"))
    print(json.dumps(summary, indent=2))
    return EXIT_OK
