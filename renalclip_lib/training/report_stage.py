"""Stage "report": the LLaVA-style report generator, stage A (projector) then stage B (+ LoRA).

Data: each patient's lesion-centred ROIs (the ROI cache) paired with the report of the kidney that
holds the lesion (manifest ``findings_<side>`` / ``impression_<side>``), written as
``Findings: ...\\nImpression: ...``. The image encoder is frozen, so its features are computed once
for every cached ROI (``features.npz``); training draws one of the patient's phases per epoch,
prediction uses the arterial phase, else venous.

Steps, each resumable and skipped once finished (all under ``RUN/report/``):

1. ``llm/``: when ``report.llm`` is empty, a tiny Mistral (``report.tiny``) is trained as a
   language model, the stand-in for BioMistral-7B: with ``report.tiny.image_conditioned`` on the
   lesion reports of the alignment and training cohorts with their image tokens, the projector
   learning with it (``llm/projector.pt``, stage A's start), otherwise on report text alone
   (``llm_text/``);
2. ``stage_a/``: projector only, LLM frozen, on ``report.align_cohorts`` (the paper's pre-training
   set); best epoch by validation loss on the training cohorts' ``val`` split;
3. ``stage_b/``: projector (``stage_b.head_lr``) + LoRA adapters (``stage_b.lr``) on the training
   cohorts' ``train`` split, from stage A's best projector;
4. ``model/`` (``ReportGenerator.save``) and ``predictions.csv``: a generated report for every
   ``val``/``test`` patient of the other cohorts that has a reference report (``report_true``,
   ``report_pred``: the input of ``renalclip evaluate``).

With ``report.standardize_features`` every step trains on features standardised by the mean and
standard deviation of the training patients' ROIs (a preconditioner for the projector; README,
report generation; ``feature_stats.npz`` keeps them); before ``model/`` is written the projector is
folded back onto raw features (``fold_standardisation``), so the saved generator is the released
architecture and takes the encoder's features as they come.

Usage::

    run_report(cfg, "run")          # or: renalclip train report --config demo.yaml --out run
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_path, atomic_torch_save, atomic_write_json
from ..config import TrainConfig
from ..constants import SIDES
from ..data.datasets import Unit, group_units
from ..data.roi_cache import open_cache
from ..errors import ConfigError, ManifestError
from ..extraction.report_text import format_report
from ..models.report_generator import feature_standardisation, fold_standardisation
from .distributed import DistContext
from .loop import fit, is_finished
from .options import OptimOptions

EVAL_SPLITS = ("val", "test")
PROJECTOR_INIT = "projector.pt"     # the tiny LLM's jointly trained projector, stage A's start


# ----- data ------------------------------------------------------------------------------------
def lesion_reports(manifest_path) -> dict[str, str]:
    """patient_id -> report text of the kidney holding the lesion (patients without one are left out)."""
    from ..data.manifest import read_manifest

    table = read_manifest(manifest_path, check_files=False)
    out = {}
    for pid, rows in table.by_patient().items():
        side = next((r["lesion_side"] for r in rows if r["lesion_side"]), None)
        if side is None:
            continue
        findings, impression = rows[0].report(side)
        if findings.strip() or impression.strip():
            out[pid] = format_report(findings, impression)
    return out


def kidney_reports(manifest_path, keep) -> list[str]:
    """Every kidney's report text (lesion or not) of the patients for which ``keep(row)`` holds."""
    from ..data.manifest import read_manifest

    table = read_manifest(manifest_path, check_files=False)
    texts = []
    for rows in table.by_patient().values():
        if not keep(rows[0]):
            continue
        for s in SIDES:
            f, i = rows[0].report(s)
            if f.strip() or i.strip():
                texts.append(format_report(f, i))
    return texts


def encoder_features(cfg: TrainConfig, run_dir, out_file: Path, log=None) -> np.ndarray:
    """Frozen-encoder features of every lesion ROI in the cache, (n_rois, F); computed once."""
    from ..preprocess.roi import to_model_input
    from .common import encoder_from_init

    cache = Path(cfg.data.cache)
    done = json.loads((cache / "done_lesion.json").read_text(encoding="utf-8")) if (cache / "done_lesion.json").exists() else {}
    init = cfg.report.init
    init_file = Path(run_dir) / init / "best.pt" if init in ("attributes", "clip") else Path(init)
    stamp = {"cache": done.get("fingerprint"), "init": init,
             "init_mtime": os.path.getmtime(init_file) if init_file.exists() else None, "width": cfg.model.width}
    if out_file.exists():
        with np.load(out_file, allow_pickle=False) as z:
            if json.loads(str(z["stamp"])) == stamp:
                return z["features"]
    rois, _ = open_cache(cache, "lesion")
    enc = encoder_from_init(init, run_dir, cfg.model.width, cfg.model.embed_dim).eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(rois), 8):
            x = np.stack([to_model_input(np.asarray(r, np.float32)) for r in rois[start:start + 8]])
            feats.append(enc.features(torch.from_numpy(x)).float().numpy())
            if log and start % 64 == 0:
                log(f"features {start + len(x)}/{len(rois)}")
    arr = np.concatenate(feats) if feats else np.zeros((0, enc.feature_dim), np.float32)
    with atomic_path(out_file, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=arr, stamp=np.array(json.dumps(stamp)))
    return arr


class FeatureReportDataset(Dataset):
    """``{"features": (F,), "report": str, "index": i}`` per unit; a random phase per item when ``train``."""

    def __init__(self, features: np.ndarray, units: list[Unit], reports: list[str], train: bool):
        self.features, self.units, self.reports, self.train = features, units, reports, train

    def __len__(self) -> int:
        return len(self.units)

    def row(self, i: int) -> int:
        unit = self.units[i]
        phase = list(unit.rows)[np.random.randint(len(unit.rows))] if self.train else unit.eval_phase()
        return int(unit.rows[phase]["row"])

    def __getitem__(self, i: int) -> dict:
        return {"features": torch.from_numpy(np.asarray(self.features[self.row(i)], np.float32)),
                "report": self.reports[i], "index": i}


def _units_with_reports(index, reports: dict, keep) -> tuple[list[Unit], list[str]]:
    units = [u for u in group_units(index, keep) if u.unit in reports]
    return units, [reports[u.unit] for u in units]


# ----- tasks for the shared loop ---------------------------------------------------------------
class ReportTask:
    """Stage A (``lora=False``: projector only) or B (projector at ``head_lr``, adapters at ``lr``)."""

    def __init__(self, model, lora: bool):
        self.model, self.lora = model, lora

    def param_groups(self, model, cfg: OptimOptions):
        proj = list(model.projector.parameters())
        groups = [{"params": proj, "lr": (cfg.head_lr or cfg.lr) if self.lora else cfg.lr}]
        if self.lora:
            groups.append({"params": [p for n, p in model.llm.named_parameters() if "lora_" in n and p.requires_grad],
                           "lr": cfg.lr})
        return groups

    def loss(self, model, batch, device):
        return model(batch["features"].to(device), list(batch["report"])), {}

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict:
        model.eval()
        total = n = 0.0
        for batch in loader:
            b = len(batch["report"])
            total += float(model(batch["features"].to(device), list(batch["report"]))) * b
            n += b
        model.train()
        return {"val_loss": total / max(n, 1)}

    def save_best(self, path, model, metrics):
        atomic_torch_save({"state": model.state_dict(), "metrics": metrics}, path)


class _LanguageModel(torch.nn.Module):
    """The LLM as the module the loop trains and checkpoints (all of its weights), run through a
    ``ReportGenerator`` whose projector stays outside (zero, frozen)."""

    def __init__(self, generator):
        super().__init__()
        self.llm = generator.llm
        object.__setattr__(self, "generator", generator)

    def forward(self, texts: list[str]) -> torch.Tensor:
        gen = self.generator
        gen.projector.to(next(self.llm.parameters()).device)
        return gen(torch.zeros(len(texts), gen.feature_dim), texts)


class LanguageModelTask:
    """Causal-LM pre-training of the tiny LLM on report text, in the generator's own layout: the
    prompt of ``ReportGenerator`` with its image tokens held at zero and the loss on the report
    tokens only, so the LLM learns to write a report after the instruction, not to recite it."""

    def __init__(self, generator):
        torch.nn.init.zeros_(generator.projector.weight)
        torch.nn.init.zeros_(generator.projector.bias)
        generator.projector.requires_grad_(False)
        generator.llm.requires_grad_(True)
        self.model = _LanguageModel(generator)

    def param_groups(self, model, cfg):
        return [{"params": list(model.llm.parameters()), "lr": cfg.lr}]

    def loss(self, model, batch, device):
        return model(list(batch["text"])), {}

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict:
        model.eval()
        total = n = 0.0
        for batch in loader:
            loss, _ = self.loss(model, batch, device)
            total += float(loss) * len(batch["text"])
            n += len(batch["text"])
        model.train()
        return {"val_loss": total / max(n, 1)}

    def save_best(self, path, model, metrics):
        atomic_torch_save({"state": model.llm.state_dict(), "metrics": metrics}, path)


class _ConditionedLanguageModel(torch.nn.Module):
    """The LLM and the projector as one module the loop trains and checkpoints (all their weights)."""

    def __init__(self, generator):
        super().__init__()
        self.llm = generator.llm
        self.projector = generator.projector
        object.__setattr__(self, "generator", generator)

    def forward(self, features: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.generator(features, texts)


class ConditionedLanguageModelTask(ReportTask):
    """Causal-LM training of the tiny LLM on (lesion ROI, report) pairs: the LLM and the projector
    learn together, so the stand-in LLM, like a large pre-trained one, reads its image tokens. On
    the synthetic cohort, a tiny LLM trained on text alone (image tokens at zero) and then frozen
    did not learn to use them through the projector (README, report generation)."""

    def __init__(self, generator):
        generator.llm.requires_grad_(True)
        generator.projector.requires_grad_(True)
        self.model, self.lora = _ConditionedLanguageModel(generator), False

    def param_groups(self, model, cfg):
        return [{"params": list(model.parameters()), "lr": cfg.lr}]


class _Texts(Dataset):
    def __init__(self, texts):
        self.texts = list(texts)

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return {"index": i, "text": self.texts[i]}


def simulated_reports(n: int, seed: int = 424242) -> list[str]:
    """Report texts of ``n`` simulated patients (no voxels) from cohorts with reports, seeds apart
    from any written cohort's, for the tiny LLM's language-model corpus."""
    from ..phantom import simulate_case

    names = ["pretrain", "internal"]
    texts = []
    for i in range(int(n)):
        case = simulate_case(np.random.default_rng([seed, i]), names[i % 2])
        for s in SIDES:
            f, imp = case.reports[f"findings_{s}"], case.reports[f"impression_{s}"]
            if f or imp:
                texts.append(format_report(f, imp))
    return texts


def train_tiny_llm(cfg: TrainConfig, train_texts: list[str], val_texts: list[str], out_dir: Path, log=None,
                   ctx: DistContext | None = None, pairs: tuple | None = None) -> Path:
    """Train (or reuse) the tiny Mistral on report text; returns its Hugging Face model folder.

    With ``pairs = (features, units, reports, val_units, val_reports)`` it trains on the lesion
    reports with their image tokens, the projector with it, and writes that projector to
    ``out_dir/projector.pt`` (stage A starts from it); ``train_texts`` are then not used."""
    from ..models.report_generator import ReportGenerator
    from ..models.tiny_mistral import build_mistral, tiny_mistral_config
    from ..models.tokenizers import mistral_tokenizer

    folder = out_dir / "model"
    if is_finished(out_dir) and (folder / "config.json").exists():
        if pairs is not None and not (out_dir / PROJECTOR_INIT).exists():
            raise ConfigError(cfg.source, f"{out_dir} holds a tiny LLM trained on text alone (no {PROJECTOR_INIT}): "
                                          "remove that folder to train the image-conditioned one")
        return folder
    t = cfg.report.tiny
    opt = t.optim
    llm = build_mistral(tiny_mistral_config(t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads,
                                            t.intermediate_size), seed=opt.seed)
    from .common import make_loader

    if pairs is None:
        generator = ReportGenerator(llm, mistral_tokenizer(), feature_dim=1, n_image_tokens=cfg.report.image_tokens,
                                    max_report_tokens=cfg.report.max_report_tokens)
        task = LanguageModelTask(generator)
        fit(task, make_loader(_Texts(train_texts), opt.batch_size, True, 0, None, opt.seed),
            make_loader(_Texts(val_texts or train_texts[:32]), opt.batch_size, False), out_dir, opt, ctx, log)
        llm.load_state_dict(torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)["state"])
    else:
        feats, units, reps, v_units, v_reps = pairs
        generator = ReportGenerator(llm, mistral_tokenizer(), feature_dim=feats.shape[1],
                                    n_image_tokens=cfg.report.image_tokens, max_report_tokens=cfg.report.max_report_tokens)
        task = ConditionedLanguageModelTask(generator)
        fit(task, make_loader(FeatureReportDataset(feats, units, reps, True), opt.batch_size, True, 0, None, opt.seed),
            make_loader(FeatureReportDataset(feats, v_units or units, v_reps or reps, False), opt.batch_size, False),
            out_dir, opt, ctx, log)
        task.model.load_state_dict(torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)["state"])
        atomic_torch_save(generator.projector.state_dict(), out_dir / PROJECTOR_INIT)
    tmp = out_dir / ".tmp-model"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    llm.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


# ----- the stage -------------------------------------------------------------------------------
def _generator(cfg: TrainConfig, llm_dir: Path, feature_dim: int, device):
    from dataclasses import asdict

    from ..models.report_generator import DecodingOptions, ReportGenerator, load_llm
    from ..models.tokenizers import mistral_tokenizer

    rc = cfg.report
    llm = load_llm(llm_dir, device)
    tok_dir = llm_dir
    if (tok_dir / "tokenizer.json").exists() or (tok_dir / "tokenizer.model").exists():
        from ..models.report_generator import load_tokenizer

        tok = load_tokenizer(tok_dir)
    else:
        tok = mistral_tokenizer()
    decoding = DecodingOptions(**{k: v for k, v in asdict(rc.decoding).items() if k != "greedy"})
    gen = ReportGenerator(llm, tok, feature_dim, rc.image_tokens, decoding=decoding,
                          max_report_tokens=rc.max_report_tokens, llm_source=llm_dir)
    gen.freeze_llm()
    return gen


def run_report(cfg: TrainConfig, run_dir, log=None, init: str | None = None, ctx: DistContext | None = None) -> dict:
    """Run the whole report stage into ``run_dir/report`` (see the module docstring)."""
    from .common import make_loader

    rc = cfg.report
    if init:
        rc.init = init
    if not cfg.data.cache:
        raise ConfigError(cfg.source, "'data.cache' is not set (the folder `renalclip preprocess` wrote)")
    if not cfg.data.manifest:
        raise ConfigError(cfg.source, "'data.manifest' is not set: the report stage reads the report text from it")
    run_dir = Path(run_dir)
    out = run_dir / "report"
    if (out / "finished.json").exists() and (out / "model").exists():
        return {"skipped": str(out)}
    ctx = ctx or DistContext.from_env(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rc.stage_a.seed)

    reports = lesion_reports(cfg.data.manifest)
    _, index = open_cache(cfg.data.cache, "lesion")
    feats = encoder_features(cfg, run_dir, out / "features.npz", log)
    tc, pre, align = set(cfg.data.train_cohorts), set(cfg.data.pretrain_cohorts), set(rc.align_cohorts)
    a_units, a_reps = _units_with_reports(index, reports, lambda r: r["cohort"] in align and r["split"] not in EVAL_SPLITS)
    b_units, b_reps = _units_with_reports(index, reports, lambda r: r["cohort"] in tc and r["split"] == "train")
    v_units, v_reps = _units_with_reports(index, reports, lambda r: r["cohort"] in tc and r["split"] == "val")
    e_units, e_reps = _units_with_reports(index, reports, lambda r: r["cohort"] not in pre and r["split"] in EVAL_SPLITS)
    if not a_units and not b_units:
        raise ManifestError(cfg.data.manifest, "no training patient with a lesion side and a report")
    raw_feats, stats = feats, None
    if rc.standardize_features:
        train_rows = sorted({int(r["row"]) for u in a_units + b_units for r in u.rows.values()})
        stats = feature_standardisation(raw_feats[train_rows])
        feats = (raw_feats - stats[0]) / stats[1]
        if ctx.is_main:
            with atomic_path(out / "feature_stats.npz", ".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, mean=stats[0], std=stats[1], rows=np.asarray(train_rows))

    if rc.llm:
        llm_dir = Path(rc.llm)
    else:
        if rc.tiny.image_conditioned:
            lm_units, lm_reps = _units_with_reports(
                index, reports, lambda r: r["cohort"] in align | tc and r["split"] not in EVAL_SPLITS)
            llm_dir = train_tiny_llm(cfg, [], v_reps, out / "llm", log, ctx,
                                     pairs=(feats, lm_units, lm_reps, v_units, v_reps))
        else:
            keep = lambda r: (r.cohort in align | tc) and r.split not in EVAL_SPLITS  # noqa: E731
            corpus = kidney_reports(cfg.data.manifest, keep) + simulated_reports(rc.tiny.extra_reports)
            if rc.tiny.max_reports:
                corpus = corpus[:rc.tiny.max_reports]
            llm_dir = train_tiny_llm(cfg, corpus, v_reps, out / "llm_text", log, ctx)
    gen = _generator(cfg, llm_dir, feats.shape[1], ctx.device)
    projector_init = out / "llm" / PROJECTOR_INIT
    if not rc.llm and rc.tiny.image_conditioned and projector_init.exists():
        gen.projector.load_state_dict(torch.load(projector_init, map_location="cpu", weights_only=True))

    def loaders(units, reps, opt):
        train = make_loader(FeatureReportDataset(feats, units, reps, True), opt.batch_size, True, 0, None, opt.seed)
        val = make_loader(FeatureReportDataset(feats, v_units or units, v_reps or reps, False), opt.batch_size, False)
        return train, val

    results = {}
    if rc.stage_a.epochs and a_units:
        results["stage_a"] = fit(ReportTask(gen, lora=False), *loaders(a_units, a_reps, rc.stage_a), out / "stage_a",
                                 rc.stage_a, ctx, log)
        gen.load_state_dict(torch.load(out / "stage_a" / "best.pt", map_location="cpu", weights_only=True)["state"])
    gen.add_lora(rc.lora.r, rc.lora.alpha, rc.lora.dropout, rc.lora.targets)
    if rc.stage_b.epochs and b_units:
        results["stage_b"] = fit(ReportTask(gen, lora=True), *loaders(b_units, b_reps, rc.stage_b), out / "stage_b",
                                 rc.stage_b, ctx, log)
        gen.load_state_dict(torch.load(out / "stage_b" / "best.pt", map_location="cpu", weights_only=True)["state"])
    if not ctx.is_main:
        return results
    if stats is not None:
        fold_standardisation(gen.projector, *stats)
    gen.save(out / "model")
    pred_path = write_predictions(gen, raw_feats, e_units, e_reps, out / "predictions.csv", rc.decoding.greedy, log)
    summary = {"model": str(out / "model"), "predictions": str(pred_path), "llm": str(llm_dir),
               "standardized_features": stats is not None,
               "n_align": len(a_units), "n_train": len(b_units), "n_val": len(v_units), "n_predicted": len(e_units),
               **{f"{k}_best_val_loss": v["best"] for k, v in results.items()}}
    atomic_write_json(out / "finished.json", summary)
    return summary


def write_predictions(gen, feats: np.ndarray, units: list[Unit], reports: list[str], path: Path, greedy: bool,
                      log=None, batch_size: int = 8) -> Path:
    """``patient_id, cohort, split, report_true, report_pred`` per unit, atomically."""
    rows = []
    for start in range(0, len(units), batch_size):
        chunk = units[start:start + batch_size]
        x = torch.from_numpy(np.stack([feats[int(u.rows[u.eval_phase()]["row"])] for u in chunk]).astype(np.float32))
        texts = gen.generate_from_features(x, greedy=greedy)
        for u, ref, hyp in zip(chunk, reports[start:start + batch_size], texts):
            rows.append({"patient_id": u.unit, "cohort": u.first["cohort"], "split": u.first["split"],
                         "report_true": ref, "report_pred": hyp})
        if log:
            log(f"generated {min(start + batch_size, len(units))}/{len(units)} reports")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["patient_id", "cohort", "split", "report_true", "report_pred"])
            w.writeheader()
            w.writerows(rows)
    return path


__all__ = ["ConditionedLanguageModelTask", "FeatureReportDataset", "LanguageModelTask", "ReportTask", "encoder_features", "lesion_reports",
           "run_report", "simulated_reports", "train_tiny_llm", "write_predictions"]
