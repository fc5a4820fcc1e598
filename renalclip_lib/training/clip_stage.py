"""Stages "text-features", "clip" and "clip-eval": contrastive alignment of CT kidneys with their reports.

Samples are kidneys (the "kidney" ROI cache: one ROI per patient, side and phase) paired with
that kidney's report (manifest columns ``findings_<side>``, ``impression_<side>``) formatted as
released, plus four sentence-shuffled copies; training draws a random phase and a random copy.
Splits are those of the attribute stage: kidneys of ``data.pretrain_cohorts`` train; the "val"
kidneys validate (of the pre-training cohorts, else of ``data.train_cohorts``). Validation and
evaluation use one kidney per patient, the lesion's (normal kidneys' reports are near-identical),
and the original report.

"text-features": the frozen text encoder runs once per report text (``TextFeatureCache``) and
``RUN/text_features/features.npz`` holds ``unit`` (U,) and ``features`` (U, 1 + n_shuffles, D),
next to ``prompt_embeddings.npz`` (the zero-shot prompts, so later steps need no LLM).

"clip": ``loop.fit`` with the symmetric InfoNCE loss (``models.clip_model``): backbone at
``optim.lr``, projection and logit scale at ``optim.head_lr``, AdamW, cosine with warm-up,
gradient-norm clip, features all-gathered with gradients under torchrun; best epoch by validation
retrieval (mean of image-to-text and text-to-image Recall@5). ``RUN/clip/`` then holds ``best.pt``
(``load_image_encoder`` reads it; ``logit_scale`` inside), ``prompt_embeddings.npz``,
``embeddings.npz`` (``image``, ``text``, ``patient_id``, ``cohort``: the evaluated patients with a
report, for ``renalclip evaluate --embeddings``), ``predictions.csv`` (``zeroshot_<task>_prob`` by
maximum similarity for every evaluated lesion) and ``zeroshot.json`` (AUCs by maximum similarity
and over 1,000 random prompt pairs, per cohort group). These outputs embed each patient's
evaluation phase, or with ``clip.fuse_phases`` the mean of its phases' embeddings, and
``retrieval.json`` (Recall@K both ways with chance k/n).

"clip-eval": the same outputs for another cohort (``data.manifest``, ``data.cache``) from the
aligned encoder as it is, in ``RUN/clip/eval/<cache folder name>/``: an external check that
played no part in training or in choosing the epoch.

Usage::

    run_text_features(cfg, "run")
    run_clip(cfg, "run")                 # or: renalclip train clip --config demo.yaml --out run
    run_clip_eval(cfg_other_cohort, "run")   # or: renalclip train clip-eval ... --set data.cache=other_cache
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path, atomic_write_json
from ..config import TrainConfig
from ..constants import PHASES
from ..data.augment import train_augment
from ..data.datasets import RoiDataset, Unit, batch_images, parse_label, with_lesion_views
from ..data.device_cache import device_cache
from ..errors import ConfigError, MissingFileError
from ..models.clip_model import ClipModel, clip_loss, save_clip_model, with_text_projection
from ..text.feature_cache import TextFeatureCache
from ..text.reports import has_report, report_variants
from .common import encoder_from_init, head_and_backbone_groups, make_loader
from .distributed import DistContext
from .loop import fit, is_finished

FEATURES_DIR = "text_features"
FEATURES_FILE = "features.npz"
PROMPTS_FILE = "prompt_embeddings.npz"
ZEROSHOT_TASKS = ("malignancy", "aggressiveness")
EVAL_DIR = "eval"


# ----------------------------------------------------------------------------- reports and units
def manifest_reports(cfg: TrainConfig) -> dict[str, dict]:
    """{patient_id: {"left": (findings, impression), "right": ..., "lesion_side": side}} from the manifest."""
    if not cfg.data.manifest:
        raise ConfigError(cfg.source, "'data.manifest' is not set: the clip stages read the reports from the manifest")
    return reports_by_patient(cfg.data.manifest, cfg.data.on_bad_row)


def reports_by_patient(manifest, on_error: str = "fail") -> dict[str, dict]:
    """``manifest_reports`` of a manifest file: each kidney's first report found among the patient's rows."""
    from ..data.manifest import read_manifest

    table = read_manifest(manifest, on_error=on_error, check_files=False)
    out = {}
    for pid, rows in table.by_patient().items():
        entry = {"lesion_side": next((r["lesion_side"] for r in rows if r["lesion_side"]), "")}
        for side in ("left", "right"):
            entry[side] = next((r.report(side) for r in rows if has_report(*r.report(side))), ("", ""))
        out[pid] = entry
    return out


def unit_side(unit: Unit) -> tuple[str, str]:
    return unit.first["patient_id"], unit.first["side"]


def unit_texts(unit: Unit, reports: dict, n_shuffles: int) -> list[str] | None:
    """The original report of a kidney and its shuffled copies; None if the patient has no report."""
    pid, side = unit_side(unit)
    entry = reports.get(pid)
    if entry is None or not (has_report(*entry["left"]) or has_report(*entry["right"])):
        return None
    findings, impression = entry[side]
    return report_variants(findings, impression, side, entry["lesion_side"] == side, n_shuffles,
                           seed=zlib.crc32(unit.unit.encode()))


def lesion_kidneys(units: list[Unit], reports: dict) -> list[Unit]:
    """One kidney per patient: the lesion's; all kidneys of patients whose lesion side is unknown."""
    out = []
    for u in units:
        pid, side = unit_side(u)
        lesion = reports.get(pid, {}).get("lesion_side", "")
        if not lesion or lesion == side:
            out.append(u)
    return out


# ----------------------------------------------------------------------------- text encoder and features
def text_encoder_spec(cfg: TrainConfig, run_dir) -> dict:
    from ..models.text_encoder import demo_text_encoder_spec, read_spec_file

    c = cfg.clip
    name = c.text_encoder
    if name == "minilm":
        spec = demo_text_encoder_spec()
    elif name == "text":
        path = Path(run_dir) / "text" / "encoder.json"
        if not path.is_file():
            raise MissingFileError(path, "no text encoder yet: run the 'text' stage first (or set clip.text_encoder)")
        spec = read_spec_file(path)
    elif name.endswith(".json"):
        spec = read_spec_file(name)
    else:
        spec = {"kind": c.text_kind, "path": name, "adapters": list(c.text_adapters)}
    spec["max_length"] = c.text_max_length
    spec["device"] = cfg.device
    return spec


def _spec_signature(spec: dict, texts_digest: str) -> str:
    h = hashlib.sha256(json.dumps({k: spec[k] for k in ("kind", "path", "adapters", "max_length")}).encode())
    for folder in [spec["path"], *spec["adapters"]]:
        for f in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(texts_digest.encode())
    return h.hexdigest()


def run_text_features(cfg: TrainConfig, run_dir, log=None, ctx: DistContext | None = None, out=None) -> dict:
    """Encode every kidney report (original + shuffles) and the zero-shot prompts, once (main rank),
    into ``out`` (default ``RUN/text_features``)."""
    from ..data.roi_cache import open_cache
    from .image_stages import _cache

    ctx = ctx or DistContext()
    out = Path(out) if out is not None else Path(run_dir) / FEATURES_DIR
    _, index = open_cache(_cache(cfg), "kidney")
    from ..data.datasets import group_units

    units = group_units(index)
    reports = manifest_reports(cfg)
    texts = {u.unit: t for u in units if (t := unit_texts(u, reports, cfg.clip.n_shuffles)) is not None}
    if not texts:
        raise ConfigError(cfg.data.manifest, "no kidney in the cache has a report (columns findings_/impression_<side>)")
    spec = text_encoder_spec(cfg, run_dir)
    digest = hashlib.sha256(json.dumps(sorted(texts.items())).encode()).hexdigest()
    signature = _spec_signature(spec, digest + (cfg.clip.prompts or "default"))
    meta_path = out / "meta.json"
    if ctx.is_main and not (meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")).get("signature") == signature):
        from ..evaluation.zeroshot import prompt_embeddings, save_prompt_embeddings
        from ..models.text_encoder import load_text_encoder

        encoder = load_text_encoder(spec)
        cache = TextFeatureCache(out / "cache")
        names = sorted(texts)
        flat = [t for n in names for t in texts[n]]
        feats = cache.encode(encoder, flat, cfg.clip.text_batch_size).reshape(len(names), 1 + cfg.clip.n_shuffles, -1)
        if log:
            log(f"text features: {len(names)} kidneys, {cache.last_encoded} texts encoded, "
                f"{encoder.last_truncated} over {spec['max_length']} tokens truncated")
        with atomic_path(out / FEATURES_FILE, ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, unit=np.array(names), features=feats.astype(np.float32))
        save_prompt_embeddings(out / PROMPTS_FILE, prompt_embeddings(encoder, cfg.clip.prompts or None,
                                                                     cfg.clip.text_batch_size))
        atomic_write_json(meta_path, {"signature": signature, "spec": spec, "fingerprint": encoder.fingerprint,
                                      "dim": encoder.dim, "n_units": len(names), "n_shuffles": cfg.clip.n_shuffles})
        del encoder
    ctx.barrier()
    return {"features": str(out / FEATURES_FILE), "prompts": str(out / PROMPTS_FILE), "n_units": len(texts)}


def load_text_features(run_dir, features_dir=None) -> dict[str, np.ndarray]:
    path = Path(features_dir if features_dir is not None else Path(run_dir) / FEATURES_DIR) / FEATURES_FILE
    if not path.is_file():
        raise MissingFileError(path, "no text features: run the 'text-features' stage first")
    with np.load(path, allow_pickle=False) as z:
        return {str(u): f for u, f in zip(z["unit"], np.asarray(z["features"], np.float32))}


# ----------------------------------------------------------------------------- dataset and task
class ClipDataset(RoiDataset):
    """Kidney ROIs with their text features (V copies each): ``{"image", "text", "index"}``.

    Training (``augment`` set) draws a random phase and a random copy; evaluation takes the
    evaluation phase and the original report (copy 0). ``views`` and ``view_prob`` as in
    ``RoiDataset`` (``clip.lesion_view``).
    """

    def __init__(self, rois, units: list[Unit], text: np.ndarray, augment=None, seed: int = 0,
                 views: dict[int, Unit] | None = None, view_prob: float = 0.0, raw: bool = False):
        super().__init__(rois, units, np.zeros((len(units), 0), np.float32), augment=augment, seed=seed, raw=raw,
                         views=views, view_prob=view_prob)
        self.text = np.asarray(text, np.float32)

    def __getitem__(self, key) -> dict:
        item = super().__getitem__(key)
        i = item["index"]
        v = int(self.item_rng(key, stream=1).integers(self.text.shape[1])) if self.augment is not None else 0
        item["text"] = torch.from_numpy(self.text[i, v])
        del item["target"]
        return item


@torch.no_grad()
def embed_images(encoder, loader, device) -> np.ndarray:
    """Joint-space (normalised) embeddings of a loader's images, in dataset order."""
    encoder.eval()
    out, order = [], []
    for batch in loader:
        out.append(encoder.embed(batch_images(batch, device)).float().cpu())
        order.append(batch["index"])
    if not out:
        return np.zeros((0, 0), np.float32)
    emb, idx = torch.cat(out).numpy(), torch.cat(order).numpy()
    return emb[np.argsort(idx)]


def phase_embeddings(encoder, rois, units: list[Unit], device, batch_size: int, fuse: bool) -> np.ndarray:
    """Normalised joint-space embedding per unit: of its evaluation phase (arterial, else venous),
    or with ``fuse`` the normalised mean of its phases' embeddings (the phase fusion of the
    paper's ablation, applied to the embedding; ``analyze`` does the same with a fusion bundle)."""
    from .phase_fusion import phase_means

    mean = phase_means(lambda loader: {"embedding": embed_images(encoder, loader, device)}, rois, units,
                       PHASES if fuse else (), batch_size)
    if not mean:
        return np.zeros((0, 0), np.float32)
    emb = mean["embedding"]
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def retrieval_metrics(image: np.ndarray, text: np.ndarray, prefix: str = "val_") -> dict:
    from ..evaluation.retrieval import retrieval_hits

    hits = retrieval_hits(image, text, ks=(1, 5))
    out = {f"{prefix}{k}": float(v.mean()) for k, v in hits.items()}
    for k in (1, 5):
        out[f"{prefix}recall@{k}"] = 0.5 * (out[f"{prefix}i2t_recall@{k}"] + out[f"{prefix}t2i_recall@{k}"])
    return out


class ClipTask:
    """Loss, parameter groups, validation and saving of the contrastive stage (``loop.StageTask``)."""

    def __init__(self, model: ClipModel):
        self.model = model
        self.meta: dict = {}

    def param_groups(self, model, cfg):
        return head_and_backbone_groups(model, cfg)

    def loss(self, model, batch, device):
        image, scale = model(batch_images(batch, device))
        text = F.normalize(batch["text"].to(device).float(), dim=-1)
        return clip_loss(image, text, scale, gather=True), {"logit_scale": float(scale.detach())}

    def evaluate(self, model, loader, device) -> dict:
        img = embed_images(model.image_encoder, loader, device)
        txt = loader.dataset.text[:, 0]
        txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
        scale = float(model.logit_scale.detach().exp())
        with torch.no_grad():
            val_loss = float(clip_loss(torch.from_numpy(img), torch.from_numpy(txt), torch.tensor(scale), gather=False))
        return {"val_loss": val_loss, "logit_scale": scale, **retrieval_metrics(img, txt)}

    def save_best(self, path, model, metrics):
        save_clip_model(path, model, meta={**self.meta, "metrics": metrics})


def train_clip(cfg: TrainConfig, encoder, rois, train_units: list[Unit], train_text: np.ndarray,
               val_units: list[Unit], val_text: np.ndarray, out_dir, log=None, ctx: DistContext | None = None,
               augment: bool = True, meta: dict | None = None) -> dict:
    """Align ``encoder`` (its projection already at the text width) with the text features."""
    c, opt = cfg.clip, cfg.clip.optim
    ctx = ctx or DistContext.from_env(cfg.device)
    model = ClipModel(encoder, c.init_temperature, c.max_logit_scale)
    task = ClipTask(model)
    task.meta = {"stage": "clip", "width": encoder.width, "text_dim": int(train_text.shape[-1]), **(meta or {})}
    views = None
    if c.lesion_view > 0 and augment:
        from .image_stages import _cache

        rois, views = with_lesion_views(_cache(cfg), rois, train_units, "clip.lesion_view")
    train_ds = ClipDataset(rois, train_units, train_text,
                           augment=train_augment(c.flip, opt.seed, opt.augment_on, opt.augment_rotate) if augment else None, seed=opt.seed,
                           views=views, view_prob=c.lesion_view)
    on_device = device_cache(rois, opt.device_cache, ctx.device, log)
    val_loader = make_loader(ClipDataset(rois, val_units, val_text, raw=True), opt.batch_size, False,
                             device_cache=on_device) if val_units else None
    train_loader = make_loader(train_ds, opt.batch_size, True, opt.num_workers, None, opt.seed, ctx.distributed, on_device)
    return fit(task, train_loader, val_loader, out_dir, opt, ctx, log)


# ----------------------------------------------------------------------------- the stage
def clip_units(cfg: TrainConfig, run_dir):
    """(kidney ROIs, train units, train text, val units, val text, reports)."""
    from .image_stages import attribute_units

    rois, train, val = attribute_units(cfg)
    feats = load_text_features(run_dir)
    reports = manifest_reports(cfg)
    train = [u for u in train if u.unit in feats]
    val = [u for u in lesion_kidneys(val, reports) if u.unit in feats]
    if len(train) < 2:
        raise ConfigError(cfg.source, f"only {len(train)} training kidneys with a report: contrastive training needs more")
    stack = lambda us: np.stack([feats[u.unit] for u in us]) if us else np.zeros((0, 1, 1), np.float32)  # noqa: E731
    return rois, train, stack(train), val, stack(val), reports, feats


def run_clip(cfg: TrainConfig, run_dir, log=None, ctx: DistContext | None = None) -> dict:
    """Text features, alignment and the evaluation outputs into ``run_dir/clip`` (see module doc)."""
    run_dir = Path(run_dir)
    out = run_dir / "clip"
    if is_finished(out) and (out / "outputs.json").exists():
        return {"skipped": str(out)}
    ctx = ctx or DistContext.from_env(cfg.device)
    run_text_features(cfg, run_dir, log, ctx)
    rois, train, train_text, val, val_text, reports, feats = clip_units(cfg, run_dir)
    torch.manual_seed(cfg.clip.optim.seed)
    encoder = encoder_from_init(cfg.clip.init, run_dir, cfg.model.width, cfg.model.embed_dim)
    encoder = with_text_projection(encoder, int(train_text.shape[-1]), seed=cfg.clip.optim.seed)
    meta = {"init": cfg.clip.init, "text_encoder": json.loads((run_dir / FEATURES_DIR / "meta.json").read_text(encoding="utf-8"))["spec"]}
    result = train_clip(cfg, encoder, rois, train, train_text, val, val_text, out, log, ctx, meta=meta)
    if ctx.is_main:
        result["outputs"] = write_clip_outputs(cfg, run_dir, reports, feats)
    ctx.barrier()
    return result


def run_clip_eval(cfg: TrainConfig, run_dir, log=None) -> dict:
    """The aligned encoder of ``RUN/clip`` on the cohorts of ``cfg.data`` (another hospital's
    manifest and ROI cache, say): zero-shot and retrieval without training, with the text encoder
    the run was aligned with and the prompts of ``clip.prompts`` (a new task needs no retraining).
    Outputs as ``write_clip_outputs`` in ``RUN/clip/eval/<cache folder name>/``, next to that
    cohort's text features."""
    from ..data.roi_cache import open_cache
    from .image_stages import EVAL_SPLITS, _cache

    run_dir = Path(run_dir)
    best = run_dir / "clip" / "best.pt"
    if not best.is_file():
        raise MissingFileError(best, "no aligned encoder yet: run the 'clip' stage first")
    spec = text_encoder_spec(cfg, run_dir)
    trained = run_dir / FEATURES_DIR / "meta.json"
    if trained.is_file():
        used = json.loads(trained.read_text(encoding="utf-8"))["spec"]
        same = lambda k: json.dumps(used.get(k)) == json.dumps(spec.get(k))  # noqa: E731
        if not all(same(k) for k in ("kind", "path", "adapters", "max_length")):
            raise ConfigError(cfg.source, f"the text encoder ({spec['path']}, max length {spec['max_length']}) is not "
                                          f"the one {run_dir} was aligned with ({used.get('path')}, max length "
                                          f"{used.get('max_length')}): evaluate with the run's config")
    _, index = open_cache(_cache(cfg), "kidney")
    pre = set(cfg.data.pretrain_cohorts)
    if not any(r["cohort"] not in pre and r["split"] in EVAL_SPLITS for r in index):
        raise ConfigError(cfg.source, f"{_cache(cfg)}: no patient to evaluate (cohorts outside "
                                      f"data.pretrain_cohorts, split val or test)")
    out = run_dir / "clip" / EVAL_DIR / _cache(cfg).name
    run_text_features(cfg, run_dir, log, out=out / FEATURES_DIR)
    written = write_clip_outputs(cfg, run_dir, out=out, features_dir=out / FEATURES_DIR)
    if log:
        log(f"clip-eval: {json.dumps({k: v for k, v in written.items() if k != 'prompt_embeddings'})}")
    return written


# ----------------------------------------------------------------------------- evaluation outputs
def write_clip_outputs(cfg: TrainConfig, run_dir, reports: dict | None = None, feats: dict | None = None,
                       out=None, features_dir=None) -> dict:
    """Embeddings for retrieval, Recall@K, zero-shot predictions and prompt-pair AUCs of
    ``RUN/clip/best.pt`` on the cohorts of ``cfg.data``, into ``out`` (default ``RUN/clip``), from
    the text features and prompt embeddings in ``features_dir`` (default ``RUN/text_features``)."""
    from ..data.datasets import group_units
    from ..data.roi_cache import open_cache
    from ..evaluation.retrieval import retrieval_summary
    from ..evaluation.zeroshot import (description_aucs, load_prompt_embeddings, pair_auc_distribution,
                                       read_prompt_file, save_prompt_embeddings, zeroshot_probabilities)
    from ..models import load_checkpoint
    from .image_stages import EVAL_SPLITS, _cache, cohort_groups, lesion_units
    from .predictions import write_rows

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "clip"
    features_dir = Path(features_dir) if features_dir is not None else run_dir / FEATURES_DIR
    reports = reports if reports is not None else manifest_reports(cfg)
    feats = feats if feats is not None else load_text_features(run_dir, features_dir)
    ck = load_checkpoint(run_dir / "clip" / "best.pt")
    encoder, scale = ck.encoder, float(np.exp(ck.logit_scale)) if ck.logit_scale is not None else 100.0
    device = torch.device("cpu") if cfg.device == "cpu" or not torch.cuda.is_available() else torch.device("cuda")
    encoder.to(device)
    bs = max(1, min(cfg.clip.optim.batch_size, 32))
    prompts = load_prompt_embeddings(features_dir / PROMPTS_FILE)
    save_prompt_embeddings(out / PROMPTS_FILE, prompts)
    written = {"prompt_embeddings": str(out / PROMPTS_FILE)}

    rois, index = open_cache(_cache(cfg), "kidney")
    pre = set(cfg.data.pretrain_cohorts)
    evaluated = group_units(index, lambda r: r["cohort"] not in pre and r["split"] in EVAL_SPLITS)
    evaluated = [u for u in lesion_kidneys(evaluated, reports) if u.unit in feats]
    if evaluated:
        text = np.stack([feats[u.unit][0] for u in evaluated])
        img = phase_embeddings(encoder, rois, evaluated, device, bs, cfg.clip.fuse_phases)
        ids = [u.first["patient_id"] if _one_per_patient(evaluated) else u.unit for u in evaluated]
        with atomic_path(out / "embeddings.npz", ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, image=img.astype(np.float32), text=(text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32),
                         patient_id=np.array(ids), cohort=np.array([u.first["cohort"] for u in evaluated]))
        written["embeddings"] = str(out / "embeddings.npz")
        atomic_write_json(out / "retrieval.json", retrieval_summary(out / "embeddings.npz"))
        written["retrieval"] = str(out / "retrieval.json")

    cache = _cache(cfg)
    if (cache / "done_lesion.json").exists():
        lrois, _, _, lesions = lesion_units(cfg)
        if lesions:
            img = phase_embeddings(encoder, lrois, lesions, device, bs, cfg.clip.fuse_phases)
            probs = zeroshot_probabilities(img, prompts, "max", logit_scale=scale)
            rows = []
            for i, u in enumerate(lesions):
                r0 = u.first
                row = {"patient_id": r0["patient_id"], "cohort": r0["cohort"], "split": r0.get("split", "")}
                for task in ZEROSHOT_TASKS:
                    row[f"{task}_true"] = r0.get(task, "")
                for task, p in probs.items():
                    if p.ndim == 1:
                        row[f"zeroshot_{task}_prob"] = f"{float(p[i]):.6g}"
                rows.append(row)
            write_rows(out / "predictions.csv", rows)
            written["predictions"] = str(out / "predictions.csv")
            summary = {}
            descriptions = read_prompt_file(cfg.clip.prompts or None)[1]
            for group, members in {"all": rows, **cohort_groups(cfg, rows)}.items():
                member_ids = {id(r) for r in members}
                keep = np.array([id(r) in member_ids for r in rows])
                for task, classes in prompts.items():
                    if task not in ZEROSHOT_TASKS or len(classes) != 2 or not keep.any():
                        continue
                    y = np.array([parse_label(rows[i].get(f"{task}_true", "")) for i in np.flatnonzero(keep)])
                    dist = pair_auc_distribution(img[keep], y, classes, cfg.clip.prompt_pairs, cfg.clip.prompt_pair_seed)
                    summary.setdefault(task, {})[group] = {
                        "max_similarity_auc": _auc(y, probs[task][keep]),
                        "prompt_pairs": {k: dist[k] for k in ("mean", "low", "high", "n")},
                        "descriptions": description_aucs(img[keep], y, classes, descriptions.get(task, {}))}
            atomic_write_json(out / "zeroshot.json", {"logit_scale": scale, "fuse_phases": bool(cfg.clip.fuse_phases),
                                                      "tasks": summary})
            written["zeroshot"] = str(out / "zeroshot.json")
    atomic_write_json(out / "outputs.json", written)
    return written


def _one_per_patient(units: list[Unit]) -> bool:
    ids = [u.first["patient_id"] for u in units]
    return len(set(ids)) == len(ids)


def _auc(y: np.ndarray, p: np.ndarray):
    from .common import auc_score

    v = auc_score(y, p)
    return None if np.isnan(v) else float(v)
