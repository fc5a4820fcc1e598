"""One command for the paper's pre-training ablation (section 4.4.7, Extended Data Fig. 8).

Four contrastive models, each aligned by the same "clip" stage and differing only in where their
encoders start:

============================  ===========================  ===================================
variant                       image encoder                text encoder
============================  ===========================  ===================================
``renalclip``                 attribute-pretrained         domain (``ablation.domain_text_encoder``)
``no_text_pretrain``          attribute-pretrained         general (``ablation.general_text_encoder``)
``no_image_pretrain``         random                       domain
``clip_baseline``             random                       general
============================  ===========================  ===================================

The domain text encoder is by default the pipeline's "text" stage (LLM2Vec with MNTP + SimCSE);
the general one is a BERT-style encoder (the paper's BioClinicalBERT; MiniLM in the demo). Each
variant runs in ``RUN/ablation/<variant>/`` (resumable like every stage) and is scored on the
external cohorts combined: retrieval Recall@1/3/5 both ways (with chance, k/n), zero-shot AUC by
maximum similarity and over random prompt pairs (mean), and, with ``ablation.finetune``, the
fine-tuned AUCs of the seven tasks from each variant's encoder. Writes ``RUN/ablation/ablation.json``
and ``ablation.md``.

Usage: ``renalclip train ablation --config Resources/configs/demo.yaml --out run``
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..config import TrainConfig
from ..evaluation.retrieval import retrieval_summary
from .image_stages import cohort_groups, run_stage

VARIANTS = {
    "renalclip": ("attributes", "domain"),
    "no_text_pretrain": ("attributes", "general"),
    "no_image_pretrain": ("random", "domain"),
    "clip_baseline": ("random", "general"),
}
GROUP = "combined_external"


def variant_config(cfg: TrainConfig, run_dir: Path, variant: str) -> TrainConfig:
    """``cfg`` with the clip stage's image init and text encoder of ``variant`` (absolute paths,
    so the variant's folder needs no copy of the upstream stages)."""
    image, text = VARIANTS[variant]
    v = copy.deepcopy(cfg)
    v.clip.init = "random" if image == "random" else str(run_dir / "attributes" / "best.pt")
    name = cfg.ablation.domain_text_encoder if text == "domain" else cfg.ablation.general_text_encoder
    v.clip.text_encoder = str(run_dir / "text" / "encoder.json") if name == "text" else name
    return v


def _zeroshot_summary(zeroshot: dict) -> dict:
    out = {}
    for task, groups in zeroshot.get("tasks", {}).items():
        g = groups.get(GROUP) or groups.get("all") or {}
        out[f"zeroshot_{task}_auc"] = g.get("max_similarity_auc")
        out[f"zeroshot_{task}_pairs_mean"] = (g.get("prompt_pairs") or {}).get("mean")
    return out


def run_ablation(cfg: TrainConfig, run_dir, log=None) -> dict:
    """Run (or reuse) the upstream stages and the four variants; tabulate them (see module doc)."""
    import json

    from .clip_stage import run_clip

    run_dir = Path(run_dir)
    if any(VARIANTS[v][0] == "attributes" for v in VARIANTS):
        run_stage("attributes", cfg, run_dir, log)
    if "text" in (cfg.ablation.domain_text_encoder, cfg.ablation.general_text_encoder):
        from .text_stage import run_text

        run_text(cfg, run_dir, log)
    results = {}
    for variant in VARIANTS:
        vdir = run_dir / "ablation" / variant
        vcfg = variant_config(cfg, run_dir, variant)
        if log:
            log(f"ablation: {variant} (image {VARIANTS[variant][0]}, text {vcfg.clip.text_encoder})")
        run_clip(vcfg, vdir, log)
        external = {r["cohort"] for r in cohort_groups(cfg, _cohort_rows(vdir))[GROUP]}
        row = {"image_init": VARIANTS[variant][0], "text_side": VARIANTS[variant][1], "text_encoder": vcfg.clip.text_encoder,
               **retrieval_summary(vdir / "clip" / "embeddings.npz", external)}
        zs = vdir / "clip" / "zeroshot.json"
        if zs.exists():
            row.update(_zeroshot_summary(json.loads(zs.read_text(encoding="utf-8"))))
        if cfg.ablation.finetune:
            from .compare import summarize

            init = str(vdir / "clip" / "best.pt")
            run_stage("finetune", cfg, vdir, log, init=init)
            aucs = summarize(cfg, vdir / "finetune" / "best" / "predictions.csv", None).get(GROUP, {})
            row.update({f"finetune_{t}_auc": aucs.get(t) for t in cfg.finetune.tasks})
        results[variant] = row
    atomic_write_json(run_dir / "ablation" / "ablation.json", results)
    atomic_write_text(run_dir / "ablation" / "ablation.md", render_markdown(results))
    return {"table": str(run_dir / "ablation" / "ablation.md"), "results": results}


def _cohort_rows(vdir: Path) -> list[dict]:
    with np.load(vdir / "clip" / "embeddings.npz", allow_pickle=False) as z:
        return [{"cohort": str(c)} for c in z["cohort"]]


def _text_label(row: dict) -> str:
    path = Path(row["text_encoder"])
    name = "text stage" if path.name == "encoder.json" and path.parent.name == "text" else path.name
    return f"{row['text_side']} ({name})"


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def render_markdown(results: dict) -> str:
    """One table: a row per metric, a column per variant, the best of each row in bold."""
    names = list(results)
    first = results[names[0]]
    keys = [k for k in first if k not in ("image_init", "text_side", "text_encoder", "n") and not k.startswith("chance@")]
    lines = [f"### Pre-training ablation, external cohorts combined (n = {first.get('n', 0)})", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             "| image encoder | " + " | ".join(results[v]["image_init"] for v in names) + " |",
             "| text encoder | " + " | ".join(_text_label(results[v]) for v in names) + " |"]
    for key in keys:
        vals = [results[v].get(key) for v in names]
        finite = [x for x in vals if x is not None and not math.isnan(x)]
        best = max(finite) if len(finite) > 1 else None
        cells = [f"**{_fmt(x)}**" if best is not None and x == best else _fmt(x) for x in vals]
        chance = first.get(f"chance@{key.rsplit('@', 1)[1]}") if "recall@" in key else None
        label = key + (f" (chance {chance:.3f})" if chance is not None else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
