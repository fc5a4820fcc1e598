"""Cohort search: find the kidneys of an indexed cohort closest to a text or an image query.

``build_index`` embeds every kidney of a manifest (the "kidney" ROI cache, evaluation phase:
arterial, else venous) with the contrastive encoder (``RUN/clip/best.pt`` or a bundle's
``clip.pt``) and writes ``OUT/index.npz`` (``embeddings`` (N, D) float32, L2-normalised,
``patient_id``, ``side``, ``cohort``) and, last, ``OUT/index.json`` (format, checkpoint path and
SHA-256, text encoder spec, logit scale, the SHA-256 of index.npz, and per kidney its phase and
the manifest's findings and impression). Scores are cosine similarities in the joint space: a
text query goes through the frozen text encoder the checkpoint was aligned with (no text
projection), an image query through the same image encoder.

Usage::

    build_index("cohort_index", clip="run/clip/best.pt", manifest="cohort/manifest.csv")
    index = load_index("cohort_index")
    hits = search_text(index, "left renal mass with washout", top=5)
    x, warnings = load_query_image("ct.nii.gz", center_lps=(62.0, -10.5, 1203.0))
    hits = search_image(index, x, top=5)
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_json
from ..constants import CROP_SHAPE_XYZ, ROI_SHAPE_XYZ
from ..errors import InvalidImageError, ManifestError, MissingFileError, RenalCLIPError, UnreadableFileError
from ..json_files import read_format_file
from .bundle import MANIFEST as BUNDLE_MANIFEST
from .bundle import InvalidBundleError, sha256_file

INDEX_FORMAT = "renalclip-cohort-index"
INDEX_VERSION = 1
INDEX_JSON = "index.json"
INDEX_NPZ = "index.npz"
CACHE_DIR = "cache"
EXCERPT_CHARS = 160
MODEL_INPUT_SHAPE = (1, *reversed(CROP_SHAPE_XYZ))
RAW_ROI_SHAPE = tuple(reversed(ROI_SHAPE_XYZ))


class CohortIndexError(RenalCLIPError):
    """A cohort index folder is missing, incomplete, altered or of an unknown format."""


class QueryError(RenalCLIPError):
    """A search query is empty or cannot be compared with the index."""


@dataclass
class CohortIndex:
    """A loaded index: normalised embeddings (N, D), per-kidney columns and index.json."""

    path: Path
    meta: dict
    embeddings: np.ndarray
    patient_id: np.ndarray
    side: np.ndarray
    cohort: np.ndarray
    entries: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.embeddings)


# ----------------------------------------------------------------------------- the clip checkpoint
def resolve_clip(clip) -> Path:
    """The contrastive checkpoint file of ``clip``: a .pt file or a bundle folder with a clip component."""
    p = Path(clip)
    if not p.exists():
        raise MissingFileError(p, "clip checkpoint or bundle folder not found")
    if p.is_file():
        return p
    mf = p / BUNDLE_MANIFEST
    if not mf.is_file():
        raise InvalidBundleError(p, f"a folder given as --clip must be a model bundle (no {BUNDLE_MANIFEST})")
    from .bundle import read_manifest

    manifest = read_manifest(p)
    comp = manifest.get("components", {}).get("clip")
    if not comp:
        raise InvalidBundleError(p, "the bundle has no clip component (contrastive encoder)")
    f = p / comp["file"]
    if not f.is_file():
        raise InvalidBundleError(f, "listed in bundle.json but missing")
    digest = manifest.get("files", {}).get(comp["file"])
    if digest and sha256_file(f) != digest:
        raise InvalidBundleError(f, "checksum differs from bundle.json (file altered or corrupt)")
    return f


def _load_clip(path: Path):
    from ..models import load_checkpoint

    ck = load_checkpoint(path)
    if not ck.encoder.has_projection:
        raise UnreadableFileError(path, "the image encoder has no projection head: not a contrastive (clip) checkpoint")
    return ck


def _text_spec(meta: dict, source) -> dict | None:
    from ..models.text_encoder import normalise_spec

    spec = meta.get("text_encoder")
    return None if spec is None else normalise_spec(spec, source)


# ----------------------------------------------------------------------------- building
def _select_cases(manifest, cohorts, on_error: str):
    from ..data.manifest_cases import cases_from_manifest

    cases, problems = cases_from_manifest(manifest, on_error=on_error)
    if cohorts:
        wanted = set(cohorts)
        present = sorted({c.cohort for c in cases})
        unknown = sorted(wanted - set(present))
        if unknown:
            raise ManifestError(manifest, f"no patient of cohort(s) {', '.join(unknown)} "
                                          f"(cohorts in the manifest: {', '.join(present) or 'none'})")
        cases = [c for c in cases if c.cohort in wanted]
    if not cases:
        raise ManifestError(manifest, "no patient to index")
    return cases, problems


def _kidney_units(cases, cache, out_dir: Path, on_error: str, log):
    from ..data.datasets import group_units
    from ..data.roi_cache import build_cache, open_cache

    skipped: list[str] = []
    if cache is not None and (Path(cache) / "done_kidney.json").is_file():
        cache_dir = Path(cache)
    else:
        if cache is not None and log:
            log(f"{cache}: no finished kidney ROI cache there; building one in {out_dir / CACHE_DIR}")
        cache_dir, skipped = build_cache(cases, out_dir / CACHE_DIR, "kidney", on_error=on_error,
                                         progress=(lambda d, t, w: log(f"[{d}/{t}] {w}")) if log else None)
    rois, index = open_cache(cache_dir, "kidney")
    wanted = {c.patient_id for c in cases}
    units = group_units(index, lambda r: r["patient_id"] in wanted)
    missing = sorted(wanted - {u.first["patient_id"] for u in units})
    if missing and len(missing) == len(wanted):
        raise ManifestError(cache_dir, "the kidney ROI cache holds none of the manifest's patients (another cohort?)")
    skipped += [f"{pid}: not in the kidney ROI cache" for pid in missing]
    return cache_dir, rois, units, skipped


def build_index(out_dir, clip, manifest, cache=None, cohorts=None, device: str = "cpu", on_error: str = "fail",
                batch_size: int = 8, log=None) -> Path:
    """Embed every kidney of ``manifest`` (optionally only ``cohorts``) and write the index into ``out_dir``.

    ``cache``: a finished "kidney" ROI cache to reuse; otherwise one is built in ``out_dir/cache``.
    index.json is written last; a failure leaves an existing index as it was and removes an
    ``out_dir`` this call created.
    """
    import torch

    from ..data.datasets import RoiDataset
    from ..training.clip_stage import embed_images, reports_by_patient

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RenalCLIPError(out, "--out must be a folder")
    ckpt = resolve_clip(clip)
    ck = _load_clip(ckpt)
    spec = _text_spec(ck.meta, ckpt)
    if log and spec is None:
        log(f"{ckpt}: no text encoder recorded in the checkpoint: the index serves image queries only")
    cases, problems = _select_cases(manifest, cohorts, on_error)
    reports = reports_by_patient(manifest)
    created = not out.exists()
    try:
        cache_dir, rois, units, skipped = _kidney_units(cases, cache, out, on_error, log)
        skipped = problems + skipped
        if not units:
            raise ManifestError(manifest, "no kidney ROI to index (every case was skipped)")
        dev = torch.device(device)
        encoder = ck.encoder.to(dev).eval()
        ds = RoiDataset(rois, units, np.zeros((len(units), 0), np.float32), raw=True)
        loader = torch.utils.data.DataLoader(ds, batch_size=max(1, int(batch_size)), shuffle=False)
        if log:
            log(f"embedding {len(units)} kidneys")
        emb = embed_images(encoder, loader, dev).astype(np.float32)
        rows = [u.first for u in units]
        entries = []
        for u, r in zip(units, rows):
            findings, impression = reports.get(r["patient_id"], {}).get(r["side"], ("", ""))
            entries.append({"patient_id": r["patient_id"], "side": r["side"], "cohort": r["cohort"],
                            "split": r.get("split", ""), "phase": u.eval_phase(),
                            "findings": findings, "impression": impression})
        with atomic_path(out / INDEX_NPZ, ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, embeddings=emb, patient_id=np.array([r["patient_id"] for r in rows]),
                         side=np.array([r["side"] for r in rows]), cohort=np.array([r["cohort"] for r in rows]))
        log_scale = ck.logit_scale
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "clip": {"path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)},
                "text_encoder": spec,
                "logit_scale": None if log_scale is None else float(math.exp(log_scale)),
                "manifest": str(Path(manifest).resolve()), "cache": str(Path(cache_dir).resolve()),
                "cohorts": sorted({r["cohort"] for r in rows}), "n": len(rows), "dim": int(emb.shape[1]),
                "npz_sha256": sha256_file(out / INDEX_NPZ), "skipped": skipped, "entries": entries}
        atomic_write_json(out / INDEX_JSON, meta)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- loading
def load_index(path) -> CohortIndex:
    """Read and check an index folder (format, version, index.npz against index.json)."""
    d = Path(path)
    if not d.is_dir():
        raise MissingFileError(d, "index folder not found")
    jf, nf = d / INDEX_JSON, d / INDEX_NPZ
    for f in (jf, nf):
        if not f.is_file():
            raise CohortIndexError(f, "missing: not a complete cohort index (build one with `renalclip index-cohort`)")
    meta = read_format_file(jf, CohortIndexError, INDEX_FORMAT, "version", INDEX_VERSION)
    if meta.get("npz_sha256") and sha256_file(nf) != meta["npz_sha256"]:
        raise CohortIndexError(nf, "does not match index.json (altered, or from another build): rebuild the index")
    try:
        with np.load(nf, allow_pickle=False) as z:
            emb = np.asarray(z["embeddings"], np.float32)
            cols = {k: np.asarray(z[k]).astype(str) for k in ("patient_id", "side", "cohort")}
    except (OSError, ValueError, KeyError) as exc:
        raise CohortIndexError(nf, f"unreadable index arrays ({str(exc).splitlines()[0][:120]})") from None
    n = int(meta.get("n", -1))
    entries = meta.get("entries", [])
    if emb.ndim != 2 or len(emb) != n or len(entries) != n or any(len(v) != n for v in cols.values()):
        raise CohortIndexError(nf, f"holds {len(emb)} embeddings but index.json lists {n}: rebuild the index")
    return CohortIndex(d, meta, emb, cols["patient_id"], cols["side"], cols["cohort"], entries)


# ----------------------------------------------------------------------------- searching
def report_excerpt(entry: dict, limit: int = EXCERPT_CHARS) -> str:
    """Findings and impression of an entry on one line, cut at ``limit`` characters."""
    parts = []
    for label, key in (("Findings", "findings"), ("Impression", "impression")):
        text = " ".join(str(entry.get(key) or "").split())
        if text:
            parts.append(f"{label}: {text}")
    s = " ".join(parts)
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "\u2026"


def rank(index: CohortIndex, query: np.ndarray, top: int = 5) -> list[dict]:
    """Hits for a normalised (D,) query: cosine similarity to every entry, best first."""
    top = int(top)
    if top < 1:
        raise QueryError(None, f"--top must be at least 1, got {top}")
    q = np.asarray(query, np.float32).reshape(-1)
    if q.shape[0] != index.embeddings.shape[1]:
        raise QueryError(index.path / INDEX_JSON, f"the query embedding is {q.shape[0]}-d but the index holds "
                                                  f"{index.embeddings.shape[1]}-d embeddings (another model?)")
    scores = index.embeddings @ q
    order = np.argsort(-scores, kind="stable")[:top]
    return [{"rank": r + 1, "patient_id": str(index.patient_id[i]), "side": str(index.side[i]),
             "cohort": str(index.cohort[i]), "score": float(scores[i]), "report": report_excerpt(index.entries[i])}
            for r, i in enumerate(order)]


def _normalised(v: np.ndarray, source) -> np.ndarray:
    v = np.asarray(v, np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise QueryError(source, "the query embedding is zero or not finite")
    return (v / norm).astype(np.float32)


def load_index_text_encoder(index: CohortIndex, device: str | None = None):
    """The text encoder the index's checkpoint was aligned with (spec from index.json)."""
    from ..models.text_encoder import TextEncoderError, load_text_encoder

    jf = index.path / INDEX_JSON
    spec = index.meta.get("text_encoder")
    if not spec:
        raise CohortIndexError(jf, "no text encoder recorded (the clip checkpoint had none): only image queries work")
    spec = {**spec, "device": device or "auto"}
    folder = Path(spec["path"])
    if not folder.is_dir():
        raise MissingFileError(folder, f"text encoder folder not found: {jf} names it and text queries need it")
    try:
        return load_text_encoder(spec)
    except TextEncoderError as exc:
        raise TextEncoderError(exc.source, f"{exc.problem} (the text encoder {jf} names)") from None


def search_text(index: CohortIndex, query: str, top: int = 5, text_encoder=None,
                device: str | None = None) -> list[dict]:
    """Entries ranked by cosine similarity of their image embedding to the encoded ``query``."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError(None, "the text query is empty")
    encoder = text_encoder if text_encoder is not None else load_index_text_encoder(index, device)
    feats = encoder.encode([query])
    return rank(index, _normalised(feats[0], None), top)


def check_clip_unchanged(index: CohortIndex) -> Path:
    """The index's checkpoint file, refused if missing or changed since the index was built."""
    clip = index.meta.get("clip", {})
    path = Path(clip.get("path", ""))
    if not path.is_file():
        raise MissingFileError(path, f"clip checkpoint not found ({index.path / INDEX_JSON} names it; "
                                     "image queries need it)")
    if clip.get("sha256") and sha256_file(path) != clip["sha256"]:
        raise CohortIndexError(path, "checkpoint changed since the index was built (SHA-256 differs): "
                                     "rebuild the index")
    return path


def load_index_encoder(index: CohortIndex, device: str = "cpu"):
    """The image encoder the index was built with (eval mode, on ``device``)."""
    import torch

    return _load_clip(check_clip_unchanged(index)).encoder.to(torch.device(device)).eval()


def search_image(index: CohortIndex, roi_input, top: int = 5, encoder=None, device: str = "cpu") -> list[dict]:
    """Entries ranked by cosine similarity to the embedding of a model input (1, 32, 128, 128)."""
    import torch

    if torch.is_tensor(roi_input):
        x = roi_input.detach().float().cpu()
    else:
        x = torch.from_numpy(np.asarray(roi_input, np.float32))
    while x.ndim > len(MODEL_INPUT_SHAPE) and x.shape[0] == 1:
        x = x[0]
    if x.ndim == len(MODEL_INPUT_SHAPE) - 1:
        x = x[None]
    if tuple(x.shape) != MODEL_INPUT_SHAPE:
        raise QueryError(None, f"query image has shape {tuple(x.shape)}; expected a model input {MODEL_INPUT_SHAPE}")
    enc = encoder if encoder is not None else load_index_encoder(index, device)
    dev = next(enc.parameters()).device
    with torch.no_grad():
        e = enc.embed(x[None].to(dev)).float().cpu().numpy()[0]
    return rank(index, _normalised(e, None), top)


# ----------------------------------------------------------------------------- query images
def parse_center(values) -> tuple[float, float, float]:
    """``"x,y,z"`` or three numbers (as argparse gives them) -> an LPS point."""
    text = ",".join(str(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        point = tuple(float(p) for p in parts)
    except ValueError:
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise QueryError(None, f"--center-lps expects X,Y,Z in LPS millimetres; got {text!r}")
    return point


def _npy_query(path: Path) -> np.ndarray:
    from ..preprocess import to_model_input

    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(path, f"not a readable .npy array ({str(exc).splitlines()[0][:120]})") from None
    shape = arr.shape
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype.kind not in "iuf" or arr.ndim != 3:
        raise InvalidImageError(path, f"array of shape {shape} ({arr.dtype}): expected a raw HU ROI {RAW_ROI_SHAPE} "
                                      f"or a model input {MODEL_INPUT_SHAPE}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InvalidImageError(path, "the array holds NaN or infinite values")
    if arr.shape == RAW_ROI_SHAPE:
        return to_model_input(arr)
    if arr.shape == MODEL_INPUT_SHAPE[1:]:
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise InvalidImageError(path, f"a model input holds windowed values in [0, 1], found {arr.min():.4g} to "
                                          f"{arr.max():.4g} (a raw HU ROI is {RAW_ROI_SHAPE})")
        return arr[None]
    raise InvalidImageError(path, f"array of shape {shape}: expected a raw HU ROI {RAW_ROI_SHAPE} "
                                  f"or a model input {MODEL_INPUT_SHAPE}")


def load_query_image(path, center_lps=None) -> tuple[np.ndarray, list[str]]:
    """A query file as a model input (1, 32, 128, 128) and warnings about it.

    ``.npy``: a cached ROI in HU (32, 140, 140) or a model input; any image ``read_volume`` reads
    (NIfTI, NRRD, MHA, a DICOM folder) with ``center_lps``: cropped as ``analyze`` crops it.
    """
    from ..io import read_volume
    from ..preprocess import crop_roi
    from .analyze import _intensity_warnings, model_inputs

    p = Path(path)
    if not p.exists():
        raise MissingFileError(p, "query image not found")
    if p.is_file() and p.suffix.lower() == ".npy":
        if center_lps is not None:
            raise QueryError(p, "--center-lps applies to a CT volume, not to a .npy ROI")
        return _npy_query(p), []
    if center_lps is None:
        raise QueryError(p, "a CT volume needs the lesion or kidney centre (--center-lps X,Y,Z)")
    center = parse_center(center_lps) if not isinstance(center_lps, np.ndarray) else tuple(map(float, center_lps))
    roi = crop_roi(read_volume(p), np.asarray(center, float))
    warnings = [w.replace("phase query: ", "") for w in _intensity_warnings({"query": roi})]
    return model_inputs({"query": roi})["query"], warnings


def index_summary(index: CohortIndex) -> dict:
    """What an index holds, for messages."""
    return {"index": str(index.path), "n": len(index), "cohorts": index.meta.get("cohorts", []),
            "text_queries": bool(index.meta.get("text_encoder")), "clip": index.meta.get("clip", {}).get("path")}
