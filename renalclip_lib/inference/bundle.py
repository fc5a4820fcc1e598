"""Model bundle: one folder with everything ``renalclip analyze`` needs, with checksums.

Layout::

    BUNDLE/bundle.json     manifest: format, schema version, software versions, components,
                           operating thresholds, files with SHA-256, "synthetic" flag
    BUNDLE/tasks.pt        encoder + R.E.N.A.L./malignancy/aggressiveness heads (any flavour
                           ``load_checkpoint`` reads, the authors' downstream files included)
    BUNDLE/survival.pt     encoder + Cox head; bundle.json holds the risk-group cut-off
                           (median risk of the training cohort)
    BUNDLE/clip.pt         contrastive encoder (joint-space projection, log of the logit scale)
    BUNDLE/zeroshot.npz    prompt embeddings of the zero-shot tasks (from the text encoder)
    BUNDLE/report/         report generator (projector + LLM/adapters + tokenizer)

Every component is optional: ``analyze`` reports a missing one as null with a warning.

Usage::

    build_bundle("bundle", run_dir="run")                     # from a training run
    build_bundle("bundle", encoder="RenalCLIP_model-best-acc.pt", heads="run/finetune/clip/best.pt")
    b = load_bundle("bundle", device="cpu")
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..errors import MissingFileError, RenalCLIPError
from ..json_files import read_format_file

BUNDLE_FORMAT = "renalclip-bundle"
BUNDLE_SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
FINETUNE_INIT_PREFERENCE = ("clip", "attributes", "random")
DEFAULT_THRESHOLD = 0.5
BINARY_TASKS = ("malignancy", "aggressiveness")


class InvalidBundleError(RenalCLIPError):
    """A bundle folder is incomplete, altered (checksum mismatch) or of an unknown format."""


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _software() -> dict:
    import torch

    from .. import __version__

    return {"renalclip_lib": __version__, "torch": torch.__version__, "python": platform.python_version()}


def youden_threshold(y_true, prob) -> float | None:
    """Operating point maximising sensitivity + specificity - 1 (Youden's J) on validation data."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true, float)
    p = np.asarray(prob, float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if y.size == 0 or len(np.unique(y)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j[1:]) + 1) if len(thr) > 1 else 0
    return float(min(max(thr[best], 0.0), 1.0))


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def thresholds_from_predictions(pred_csv, internal_cohorts: set | None = None) -> dict:
    """Youden operating thresholds of the binary tasks from a fine-tuning predictions CSV.

    Uses the validation rows (split "val") of the internal cohorts when given, else every "val" row;
    a task without both classes there keeps 0.5.
    """
    with open(pred_csv, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split", "val") == "val"]
    if internal_cohorts:
        inner = [r for r in rows if r.get("cohort") in internal_cohorts]
        rows = inner or rows
    out = {}
    for task in BINARY_TASKS:
        if rows and f"{task}_prob" in rows[0]:
            t = youden_threshold([_float(r.get(f"{task}_true")) for r in rows], [_float(r.get(f"{task}_prob")) for r in rows])
            out[task] = {"value": DEFAULT_THRESHOLD if t is None else t,
                         "rule": "default 0.5 (validation lacks both classes)" if t is None else
                         f"Youden J on {len(rows)} validation cases"}
    return out


def _pick_init(run_dir: Path, init: str | None) -> str:
    if init:
        return init
    for cand in FINETUNE_INIT_PREFERENCE:
        if (run_dir / "finetune" / cand / "best.pt").exists():
            return cand
    raise MissingFileError(run_dir / "finetune", "no fine-tuned model (finetune/<init>/best.pt): "
                                                 "run `renalclip train finetune` first")


def _report_encoder(run: Path) -> Path | None:
    """The encoder whose features the run's report generator was trained on (from features.npz)."""
    feats = run / "report" / "features.npz"
    if not feats.exists():
        return None
    with np.load(feats, allow_pickle=False) as z:
        init = json.loads(str(z["stamp"])).get("init", "")
    path = run / init / "best.pt" if init in ("attributes", "clip") else Path(init)
    return path if path.exists() else None


def _embed_dim(encoder) -> int | None:
    head = encoder.global_embedding
    return None if head is None else int(next(p for n, p in head.named_parameters() if n.endswith("weight")).shape[0])


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _set_decoding(report_dir: Path, **options: bool) -> None:
    from ..models.report_generator import CONFIG_FILE, FORMAT

    path = report_dir / CONFIG_FILE
    cfg = read_format_file(path, InvalidBundleError, FORMAT, "version", 1)
    cfg.setdefault("decoding", {}).update(options)
    atomic_write_json(path, cfg)


def build_bundle(out, run_dir=None, init: str | None = None, encoder=None, heads=None, survival=None,
                 clip=None, zeroshot=None, report=None, report_encoder=None, synthetic: bool | None = None,
                 internal_cohorts=None, number_safe: bool | None = None, fuse_phases: bool | None = None,
                 require_measurement: bool | None = None) -> Path:
    """Assemble a bundle folder atomically (built beside ``out``, then renamed into place).

    From a run folder, components are found at their stage paths (``finetune/<init>/best.pt``,
    ``survival/<init>/best.pt`` + ``risk_threshold.json``, ``clip/best.pt``, ``clip/prompt_embeddings.npz``,
    ``report/model`` and the encoder its features came from); explicit paths override them. ``encoder`` (e.g. the authors' contrastive
    file) + ``heads`` (a checkpoint whose classifier heads fit that encoder) makes a tasks model
    from the published encoder and our heads. ``number_safe`` True/False sets the report generator's
    decoding (``DecodingOptions.number_safe``) in the bundle's copy; None keeps the generator's own;
    ``require_measurement`` likewise (``DecodingOptions.require_measurement``).
    ``fuse_phases`` True makes ``analyze`` embed every given phase for zero-shot and average
    (``clip.fuse_phases``); None takes the run's ``clip/zeroshot.json``, else False.
    """
    from ..models.checkpoints import load_checkpoint, save_image_model

    out = Path(out)
    run = Path(run_dir) if run_dir else None
    init_name = None
    files: dict[str, Path] = {}
    info: dict = {"components": {}, "thresholds": {}}
    if run is not None:
        init_name = _pick_init(run, init)
        ft = run / "finetune" / init_name
        files["tasks.pt"] = Path(heads) if heads and not encoder else ft / "best.pt"
        sv = run / "survival" / init_name
        if survival is None and (sv / "best.pt").exists():
            survival = sv / "best.pt"
        if clip is None and (run / "clip" / "best.pt").exists():
            clip = run / "clip" / "best.pt"
        if zeroshot is None and (run / "clip" / "prompt_embeddings.npz").exists():
            zeroshot = run / "clip" / "prompt_embeddings.npz"
        if fuse_phases is None and (run / "clip" / "zeroshot.json").exists():
            fuse_phases = json.loads((run / "clip" / "zeroshot.json").read_text(encoding="utf-8")).get("fuse_phases")
        if report is None and (run / "report" / "model").is_dir():
            report = run / "report" / "model"
            report_encoder = report_encoder or _report_encoder(run)
        if (ft / "predictions.csv").exists():
            info["thresholds"] = thresholds_from_predictions(ft / "predictions.csv", internal_cohorts)
        meta_path = run / "run.json"
        if synthetic is None and meta_path.exists():
            synthetic = bool(json.loads(meta_path.read_text(encoding="utf-8")).get("synthetic", False))
    elif heads and not encoder:
        files["tasks.pt"] = Path(heads)
    if report is not None and report_encoder is None:
        raise RenalCLIPError(report, "a report generator needs the image encoder it was trained on (--report-encoder)")
    for p in [files.get("tasks.pt"), survival, clip, zeroshot, report, report_encoder, encoder, heads]:
        if p is not None and not Path(p).exists():
            raise MissingFileError(p, "not found (bundle component)")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if encoder is not None:
            if heads is None:
                raise RenalCLIPError(encoder, "a published encoder needs --heads (a checkpoint with our task heads)")
            enc = load_checkpoint(encoder)
            hd = load_checkpoint(heads)
            if not hd.classifiers:
                raise InvalidBundleError(heads, "holds no classifier heads")
            in_dims = {n: next(iter(h.parameters())).shape[-1] for n, h in hd.classifiers.items()}
            bad = [n for n, d in in_dims.items() if d != enc.encoder.feature_dim]
            if bad:
                raise InvalidBundleError(heads, f"heads {bad[:3]} expect {in_dims[bad[0]]}-d features; "
                                                f"the encoder gives {enc.encoder.feature_dim}")
            save_image_model(tmp / "tasks.pt", enc.encoder, hd.classifiers,
                             meta={"encoder_source": Path(encoder).name, "heads_source": Path(heads).name})
            info["components"]["tasks"] = {"file": "tasks.pt", "heads": sorted(hd.classifiers)}
        elif "tasks.pt" in files:
            _copy(files["tasks.pt"], tmp / "tasks.pt")
            ck = load_checkpoint(tmp / "tasks.pt")
            info["components"]["tasks"] = {"file": "tasks.pt", "heads": sorted(ck.classifiers), "init": init_name}
        if survival is not None:
            _copy(Path(survival), tmp / "survival.pt")
            thr_file = Path(survival).parent / "risk_threshold.json"
            thr = json.loads(thr_file.read_text(encoding="utf-8")) if thr_file.exists() else {}
            info["components"]["survival"] = {"file": "survival.pt", "endpoint": thr.get("endpoint", "rfs"),
                                              "risk_threshold": thr.get("threshold"),
                                              "threshold_rule": thr.get("rule", "none recorded: risk group unavailable"),
                                              "n_train": thr.get("n_train")}
        if clip is not None:
            _copy(Path(clip), tmp / "clip.pt")
            ck = load_checkpoint(tmp / "clip.pt")
            info["components"]["clip"] = {"file": "clip.pt", "log_logit_scale": ck.logit_scale,
                                          "embed_dim": _embed_dim(ck.encoder)}
        if zeroshot is not None:
            _copy(Path(zeroshot), tmp / "zeroshot.npz")
            info["components"]["zeroshot"] = {"file": "zeroshot.npz", "fuse_phases": bool(fuse_phases)}
        if report is not None:
            _copy(Path(report), tmp / "report")
            options = {k: bool(v) for k, v in (("number_safe", number_safe),
                                                ("require_measurement", require_measurement)) if v is not None}
            if options:
                _set_decoding(tmp / "report", **options)
            save_image_model(tmp / "report_encoder.pt", load_checkpoint(report_encoder).encoder,
                             meta={"source": Path(report_encoder).name})
            info["components"]["report"] = {"folder": "report", "encoder": "report_encoder.pt"}
        if not info["components"]:
            raise InvalidBundleError(out, "nothing to bundle: no tasks, survival, clip or report model given")
        for task in BINARY_TASKS:
            info["thresholds"].setdefault(task, {"value": DEFAULT_THRESHOLD, "rule": "default 0.5"})
        manifest = {"format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA_VERSION,
                    "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "software": _software(), "synthetic": bool(synthetic),
                    **info,
                    "files": {str(p.relative_to(tmp)): sha256_file(p) for p in _tree_files(tmp)}}
        atomic_write_json(tmp / MANIFEST, manifest)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class Bundle:
    """A loaded bundle: models on ``device`` (eval mode) and the manifest."""

    path: Path
    manifest: dict
    device: str = "cpu"
    tasks_model: object = None
    survival_model: object = None
    clip_encoder: object = None
    logit_scale: float | None = None
    prompt_embeddings: dict | None = None
    zeroshot_fusion: bool = False
    report_generator: object = None
    report_encoder: object = None
    load_seconds: float = 0.0
    warnings: list = field(default_factory=list)

    @property
    def heads(self) -> list[str]:
        return sorted(self.tasks_model.classifiers) if self.tasks_model is not None else []

    def threshold(self, task: str) -> float:
        return float(self.manifest.get("thresholds", {}).get(task, {}).get("value", DEFAULT_THRESHOLD))

    @property
    def risk_threshold(self) -> float | None:
        return self.manifest.get("components", {}).get("survival", {}).get("risk_threshold")

    def checksums(self) -> dict:
        return {name: digest[:16] for name, digest in self.manifest.get("files", {}).items()
                if "/" not in name or name.startswith("report/") and name.count("/") == 1}

    def load_report_generator(self):
        """The report generator and its image encoder, loaded on first use (the slowest component)."""
        comp = self.manifest.get("components", {}).get("report")
        if self.report_generator is None and comp:
            from ..models.checkpoints import load_image_encoder
            from ..models.report_generator import ReportGenerator

            self.report_encoder = load_image_encoder(self.path / comp["encoder"]).to(self.device).eval()
            self.report_generator = ReportGenerator.load(self.path / comp["folder"], device=self.device)
        return self.report_generator


def read_manifest(path) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise MissingFileError(path, "bundle folder not found")
    if not mf.exists():
        raise InvalidBundleError(path, f"not a bundle: no {MANIFEST} (build one with `renalclip bundle`)")
    return read_format_file(mf, InvalidBundleError, BUNDLE_FORMAT, "schema_version", BUNDLE_SCHEMA_VERSION)


def verify_bundle(path) -> dict:
    """Check every listed file exists and matches its SHA-256; returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise InvalidBundleError(f, "listed in bundle.json but missing")
        if sha256_file(f) != digest:
            raise InvalidBundleError(f, "checksum differs from bundle.json (file altered or corrupt)")
    return manifest


def load_bundle(path, device: str = "cpu", verify: bool = True, report: bool = False) -> Bundle:
    """Load every component present; ``report=True`` also loads the report generator now."""
    import torch

    from ..models.checkpoints import load_checkpoint
    from ..models.image_model import ImageTaskModel

    t0 = time.perf_counter()
    path = Path(path)
    manifest = verify_bundle(path) if verify else read_manifest(path)
    comps = manifest.get("components", {})
    b = Bundle(path=path, manifest=manifest, device=str(device))
    dev = torch.device(device)
    if "tasks" in comps:
        ck = load_checkpoint(path / comps["tasks"]["file"])
        b.tasks_model = ImageTaskModel(ck.encoder, ck.classifiers, None).to(dev).eval()
    if "survival" in comps:
        ck = load_checkpoint(path / comps["survival"]["file"])
        if ck.cox is None:
            raise InvalidBundleError(path / comps["survival"]["file"], "survival model has no Cox head")
        b.survival_model = ImageTaskModel(ck.encoder, {}, ck.cox).to(dev).eval()
    if "clip" in comps:
        ck = load_checkpoint(path / comps["clip"]["file"])
        b.clip_encoder = ck.encoder.to(dev).eval()
        log_scale = ck.logit_scale if ck.logit_scale is not None else comps["clip"].get("log_logit_scale")
        b.logit_scale = None if log_scale is None else float(math.exp(log_scale))
    if "zeroshot" in comps:
        from ..evaluation.zeroshot import load_prompt_embeddings

        b.prompt_embeddings = load_prompt_embeddings(path / comps["zeroshot"]["file"])
        b.zeroshot_fusion = bool(comps["zeroshot"].get("fuse_phases", False))
    if report:
        b.load_report_generator()
    b.load_seconds = time.perf_counter() - t0
    return b
