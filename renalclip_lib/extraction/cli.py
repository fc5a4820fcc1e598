"""``renalclip extract``: questionnaire labels from free-text reports, for attribute pre-training.

With ``--manifest`` it reads each patient's per-kidney reports (``findings_<side>``,
``impression_<side>``), answers the 14 questions per kidney and writes a copy of the manifest with
the ``q_<key>_<side>`` columns filled (blank cells only, unless ``--overwrite``) and a blank
``lesion_side`` filled when exactly one kidney has a mass. With ``--text`` it prints the answers
of one report as JSON. The rules answer by default; ``--llm-url`` sends the paper's prompt to an
OpenAI-compatible endpoint instead, falling back to the rules when it fails (``--on-llm-error``).

Usage::

    renalclip extract --manifest cohort/manifest.csv --out cohort/manifest_labelled.csv
    renalclip extract --text "Findings: ... Impression: ..."
    renalclip extract --manifest m.csv --out o.csv --llm-url http://localhost:8000/v1 --llm-model qwen2.5
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..constants import SIDES
from ..questionnaire import QUESTIONS
from .llm_backend import LLMEndpoint, extract_with_fallback
from .rules import SIDE_KEY


def label_manifest(manifest, out, endpoint: LLMEndpoint | None = None, overwrite: bool = False,
                   on_llm_error: str = "rules", warn=None) -> dict:
    """Write ``out``: the manifest with questionnaire columns answered from its reports.

    Returns counts: patients, kidneys read, cells filled, kidneys answered by the LLM.
    """
    from ..data.manifest import read_manifest, write_manifest

    table = read_manifest(manifest, check_files=False)
    counts = {"patients": 0, "kidneys": 0, "filled": 0, "llm": 0}
    by_patient = table.by_patient()
    for rows in by_patient.values():
        counts["patients"] += 1
        ref = rows[0]
        answers, with_mass = {}, []
        for s in SIDES:
            findings, impression = ref.report(s)
            if not (findings.strip() or impression.strip()):
                continue
            counts["kidneys"] += 1
            got, used = extract_with_fallback(f"Findings: {findings}\nImpression: {impression}", endpoint,
                                              fallback=on_llm_error, warn=warn, side=s)
            counts["llm"] += used == "llm"
            answers.update({q.column(s): got[q.column(s)] for q in QUESTIONS})
            if got[SIDE_KEY] == s:
                with_mass.append(s)
        for r in rows:
            for col, value in answers.items():
                if overwrite or r.values.get(col) is None:
                    counts["filled"] += r.values.get(col) != value
                    r.values[col] = value
            if not r.values.get("lesion_side") and len(with_mass) == 1:
                r.values["lesion_side"] = with_mass[0]
    write_manifest([r for rs in by_patient.values() for r in rs], Path(out))
    return counts


def cmd_extract(args) -> int:
    from ..errors import RenalCLIPError

    endpoint = None
    if args.llm_url:
        endpoint = LLMEndpoint(args.llm_url, model=args.llm_model, timeout_s=args.llm_timeout,
                               api_key_env=args.llm_api_key_env)
    warn = lambda msg: print(f"renalclip: warning: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.text is not None:
        answers, used = extract_with_fallback(args.text, endpoint, fallback=args.on_llm_error, warn=warn)
        print(json.dumps({"source": used, **answers}))
        return 0
    if not args.manifest or not args.out:
        raise RenalCLIPError("extract", "give --text, or --manifest and --out")
    counts = label_manifest(args.manifest, args.out, endpoint, args.overwrite, args.on_llm_error, warn)
    print(json.dumps({"manifest": str(args.out), **counts}))
    return 0


def add_extract_parser(sub) -> None:
    e = sub.add_parser("extract", help="answer the 14 report questions from free-text reports (manifest or one text)")
    e.add_argument("--manifest", help="cohort manifest whose findings_/impression_ columns are read")
    e.add_argument("--out", help="manifest to write with the q_<key>_<side> columns filled")
    e.add_argument("--text", help="one report: print its answers as JSON")
    e.add_argument("--overwrite", action="store_true", help="replace answers already in the manifest")
    e.add_argument("--llm-url", help="OpenAI-compatible endpoint (e.g. http://localhost:8000/v1); off by default")
    e.add_argument("--llm-model", default="default", help="model name sent to the endpoint")
    e.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request")
    e.add_argument("--llm-api-key-env", help="name of an environment variable that holds an API key")
    e.add_argument("--on-llm-error", choices=("rules", "fail"), default="rules",
                   help="endpoint down or malformed answer: use the rules (default) or stop")
    e.set_defaults(func=cmd_extract)
