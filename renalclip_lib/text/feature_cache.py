"""Text features computed once: a store keyed by a hash of the text and of the encoder.

The frozen text encoder is the slow part of alignment (an 8B LLM), so every report text is
encoded once per encoder. Each encoder (``TextEncoder.fingerprint``: weights, adapters, pooling,
max length) has its own folder; inside, ``features.npz`` holds ``keys`` (SHA-256 of each text)
and ``features`` (N, D) float32, rewritten atomically when new texts arrive. A changed encoder
gets a new folder, so stale features are never served.

Usage::

    cache = TextFeatureCache("run/text_features/cache")
    feats = cache.encode(encoder, texts)        # (len(texts), D); only unseen texts are encoded
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

STORE = "features.npz"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextFeatureCache:
    def __init__(self, root):
        self.root = Path(root)
        self.last_encoded = 0

    def folder(self, fingerprint: str) -> Path:
        return self.root / fingerprint[:24]

    def _load(self, fingerprint: str) -> tuple[dict, np.ndarray | None]:
        path = self.folder(fingerprint) / STORE
        if not path.is_file():
            return {}, None
        with np.load(path, allow_pickle=False) as z:
            keys, feats = [str(k) for k in z["keys"]], np.asarray(z["features"], np.float32)
        if len(keys) != len(feats):
            return {}, None
        return {k: i for i, k in enumerate(keys)}, feats

    def encode(self, encoder, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Features of ``texts`` in order; unseen texts are encoded and added to the store."""
        texts = list(texts)
        fp = encoder.fingerprint
        index, feats = self._load(fp)
        keys = [text_key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in index}.items())
        self.last_encoded = len(todo)
        if todo:
            new = encoder.encode([t for _, t in todo], batch_size=batch_size)
            base = 0 if feats is None else len(feats)
            feats = new if feats is None else np.concatenate([feats, new])
            for j, (k, _) in enumerate(todo):
                index[k] = base + j
            all_keys = np.array(sorted(index, key=index.get))
            folder = self.folder(fp)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / STORE, ".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=all_keys, features=feats)
        if feats is None:
            return np.zeros((0, encoder.dim), np.float32)
        return feats[[index[k] for k in keys]]
