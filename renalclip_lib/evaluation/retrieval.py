"""Cross-modal retrieval: Recall@K image-to-text and text-to-image within one cohort.

Image i's correct text is text i (same patient). Similarity is the cosine of the embeddings. The
rank of the correct item counts every other item whose similarity is greater *or equal* (ties are
counted against the model, so a model that embeds everything alike scores 0, not 1). A query is a
hit at K when fewer than K other items rank at or above the correct one. The cohort's Recall@K is
the mean over queries; its bootstrap resamples queries with the gallery (the whole cohort) fixed.

Usage: ``hits = retrieval_hits(img, txt)`` -> ``{"t2i_recall@1": bool array over patients, ...}``;
``retrieval_summary("clip/embeddings.npz")`` -> Recall@K both ways with chance k/n.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .columns import RETRIEVAL_KS


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, float)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def correct_ranks(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i2t rank, t2i rank) per patient: how many wrong items score >= the correct one (0 = first)."""
    sim = _normalise(image) @ _normalise(text).T          # sim[i, j] = image i vs text j
    diag = np.diag(sim)
    n = sim.shape[0]
    off = ~np.eye(n, dtype=bool)
    i2t = ((sim >= diag[:, None]) & off).sum(axis=1)       # texts ranked with or above text i
    t2i = ((sim >= diag[None, :]) & off).sum(axis=0)       # images ranked with or above image j
    return i2t, t2i


def retrieval_hits(image: np.ndarray, text: np.ndarray, ks=RETRIEVAL_KS) -> dict[str, np.ndarray]:
    i2t, t2i = correct_ranks(image, text)
    out = {}
    for direction, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in ks:
            out[f"{direction}_recall@{k}"] = ranks < k
    return out


def retrieval_summary(embeddings: Path, cohorts: set | None = None) -> dict:
    """Recall@K both ways over the patients of ``cohorts`` (all if None) of an embeddings ``.npz``
    (``image``, ``text``, ``cohort``), with chance k/n."""
    with np.load(embeddings, allow_pickle=False) as z:
        keep = np.array([cohorts is None or str(c) in cohorts for c in z["cohort"]], bool)
        image, text = z["image"][keep], z["text"][keep]
    n = int(keep.sum())
    if n < 2:
        return {"n": n}
    out = {"n": n}
    for key, hits in retrieval_hits(image, text, RETRIEVAL_KS).items():
        out[key] = float(hits.mean())
    for k in RETRIEVAL_KS:
        out[f"chance@{k}"] = min(1.0, k / n)
    return out
