"""Zero-shot classification from prompts: the released prompt file, both released strategies.

A prompt file holds ``templates`` (sentences with a ``____`` blank) and ``attributes``
(task -> class "0".."C-1" -> descriptions). Each class gets every template filled with every
description, templates outer and descriptions inner (as ``expanded_zeroshot_prompts.json`` is
built): 20 x 5 = 100 prompts per class in the released file. The released task names map to ours
(``BMC`` -> ``malignancy``, ``IC`` -> ``aggressiveness``); any other task keeps its name, so a user
can add e.g. a cystic-lesion task by writing a file of the same shape, without retraining.

Prompt embeddings are the text encoder's pooled features, L2-normalised; computed once and stored
(``save_prompt_embeddings``), so inference needs no language model.

Strategies (logits are raw cosine similarities, as released):
- ``max``: per class, the highest similarity over its prompts;
- ``mean``: similarity with the normalised mean of the class's prompt embeddings;
- prompt pairs: 1,000 random (class 0 prompt, class 1 prompt) pairs drawn as released
  (``np.random.seed(42)``, class-0 indices then class-1 indices, ``randint``), one AUC per pair,
  reported as mean with the 2.5-97.5 % interval (``pair_auc_distribution``).

A probability for class c is ``softmax(logit_scale * s)_c`` over the per-class scores ``s``, with
``logit_scale`` the model's multiplier exp(logit scale) (100 at the clamp; the CLIP convention).
For two classes this is ``sigmoid(scale * (s_1 - s_0))``: monotone in the score difference, so
every rank-based metric (AUC) equals that of the raw similarities.

Usage::

    emb = prompt_embeddings(text_encoder)                       # {task: {cls: (n, D)}}
    probs = zeroshot_probabilities(image_emb, emb, "max", logit_scale=100.0)   # {task: (N,)}
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import RenalCLIPError
from ..json_files import read_json_object

BLANK = "____"
RELEASED_TASK_NAMES = {"BMC": "malignancy", "IC": "aggressiveness"}
STRATEGIES = ("max", "mean")
N_PROMPT_PAIRS = 1000
PROMPT_PAIR_SEED = 42


class PromptFileError(RenalCLIPError):
    """A zero-shot prompt file is missing, not JSON, or lacks templates or classes."""


def default_prompt_file() -> Path:
    from ..resources import resource_path

    return resource_path("prompts", "zeroshot_prompt.json")


def load_prompt_file(path=None) -> dict[str, dict[int, list[str]]]:
    """{task: {class: [prompt texts]}} from a prompt file (default: the released one)."""
    templates, descriptions = read_prompt_file(path)
    return {task: {c: [t.replace(BLANK, d) for t in templates for d in desc] for c, desc in classes.items()}
            for task, classes in descriptions.items()}


def read_prompt_file(path=None) -> tuple[list[str], dict[str, dict[int, list[str]]]]:
    """(templates, {task: {class: [descriptions]}}) of a prompt file, checked (default: the released one)."""
    path = Path(path) if path is not None else default_prompt_file()
    data = read_json_object(path, PromptFileError, missing="prompt file not found")
    templates = data.get("templates")
    if not isinstance(templates, list) or not templates:
        raise PromptFileError(path, "missing or empty 'templates' (a list of sentences with a ____ blank)")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or BLANK not in t:
            raise PromptFileError(path, f"template {i} has no '{BLANK}' blank: {t!r}")
    attributes = data.get("attributes")
    if not isinstance(attributes, dict) or not attributes:
        raise PromptFileError(path, "missing or empty 'attributes' (task -> class -> descriptions)")
    out = {}
    for task, classes in attributes.items():
        if not isinstance(classes, dict):
            raise PromptFileError(path, f"task {task!r}: expected class -> descriptions")
        want = [str(c) for c in range(max(2, len(classes)))]
        missing = [c for c in want if c not in classes]
        if missing or set(classes) - set(want):
            raise PromptFileError(path, f"task {task!r}: classes must be {', '.join(want)} "
                                        f"(missing class {missing[0] if missing else sorted(set(classes) - set(want))[0]})")
        per_class = {}
        for c in want:
            desc = classes[c]
            if not isinstance(desc, list) or not desc or not all(isinstance(d, str) and d.strip() for d in desc):
                raise PromptFileError(path, f"task {task!r} class {c}: needs a non-empty list of descriptions")
            per_class[int(c)] = list(desc)
        out[RELEASED_TASK_NAMES.get(task, task)] = per_class
    return list(templates), out


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def prompt_embeddings(encoder, prompt_file=None, batch_size: int = 32) -> dict[str, dict[int, np.ndarray]]:
    """{task: {class: (n_prompts, D) float32, L2-normalised}} with ``encoder.encode``."""
    prompts = load_prompt_file(prompt_file)
    out = {}
    for task, classes in prompts.items():
        out[task] = {c: _normalise(encoder.encode(texts, batch_size=batch_size)).astype(np.float32)
                     for c, texts in classes.items()}
    return out


def save_prompt_embeddings(path_npz, emb: dict) -> Path:
    """Store as one ``.npz`` with arrays named ``<task>/<class>`` (atomic)."""
    from ..atomic import atomic_path

    arrays = {f"{task}/{c}": np.asarray(v, np.float32) for task, classes in emb.items() for c, v in classes.items()}
    with atomic_path(path_npz, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(path_npz)


def load_prompt_embeddings(path_npz) -> dict[str, dict[int, np.ndarray]]:
    path = os.fspath(path_npz)
    if not os.path.isfile(path):
        raise PromptFileError(path, "prompt embeddings file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            items = {k: np.asarray(z[k], np.float32) for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable archive
        raise PromptFileError(path, f"cannot read as .npz ({exc})") from None
    out: dict = {}
    for key, arr in items.items():
        task, sep, c = key.rpartition("/")
        if not sep or not c.isdigit() or arr.ndim != 2:
            raise PromptFileError(path, f"unexpected array {key!r} (expected '<task>/<class>' of shape (n, D))")
        out.setdefault(task, {})[int(c)] = arr
    return out


def class_scores(image_embeddings: np.ndarray, classes: dict[int, np.ndarray], strategy: str = "max") -> np.ndarray:
    """(N, C) cosine scores per class: best prompt (``max``) or the mean prompt (``mean``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    img = _normalise(image_embeddings)
    cols = []
    for c in sorted(classes):
        p = _normalise(classes[c])
        if p.shape[1] != img.shape[1]:
            raise PromptFileError(None, f"prompt embeddings have width {p.shape[1]} but image embeddings {img.shape[1]}: "
                                        "they come from a different model")
        if strategy == "max":
            cols.append((img @ p.T).max(axis=1))
        else:
            cols.append(img @ _normalise(p.mean(axis=0)))
    return np.stack(cols, axis=1)


def softmax_probabilities(scores: np.ndarray, logit_scale: float) -> np.ndarray:
    z = logit_scale * np.asarray(scores, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zeroshot_probabilities(image_embeddings: np.ndarray, prompt_emb: dict, strategy: str = "max",
                           logit_scale: float = 100.0) -> dict[str, np.ndarray]:
    """{task: (N,) probability of class 1} (binary tasks) or (N, C) for tasks with more classes."""
    out = {}
    for task, classes in prompt_emb.items():
        p = softmax_probabilities(class_scores(image_embeddings, classes, strategy), logit_scale)
        out[task] = p[:, 1] if p.shape[1] == 2 else p
    return out


def prompt_pair_indices(n0: int, n1: int, n_pairs: int = N_PROMPT_PAIRS, seed: int = PROMPT_PAIR_SEED):
    """The released draw: ``np.random.seed(seed)``, then class-0 and class-1 ``randint`` indices."""
    rs = np.random.RandomState(seed)
    i0 = rs.randint(0, n0, size=n_pairs)
    i1 = rs.randint(0, n1, size=n_pairs)
    return i0, i1


def pair_auc_distribution(image_embeddings: np.ndarray, labels: np.ndarray, classes: dict[int, np.ndarray],
                          n_pairs: int = N_PROMPT_PAIRS, seed: int = PROMPT_PAIR_SEED) -> dict:
    """AUC of each random prompt pair (binary task): mean, 2.5 and 97.5 percentiles, all values."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, float)
    ok = ~np.isnan(y) & (y >= 0)
    y, img = y[ok].astype(int), _normalise(np.asarray(image_embeddings)[ok])
    if len(np.unique(y)) < 2:
        return {"mean": None, "low": None, "high": None, "n": int(ok.sum()), "aucs": []}
    s0, s1 = img @ _normalise(classes[0]).T, img @ _normalise(classes[1]).T     # (N, n0), (N, n1)
    i0, i1 = prompt_pair_indices(s0.shape[1], s1.shape[1], n_pairs, seed)
    aucs = np.array([roc_auc_score(y, s1[:, b] - s0[:, a]) for a, b in zip(i0, i1)])
    return {"mean": float(aucs.mean()), "low": float(np.percentile(aucs, 2.5)),
            "high": float(np.percentile(aucs, 97.5)), "n": int(len(y)), "aucs": aucs.tolist()}


def description_aucs(image_embeddings: np.ndarray, labels: np.ndarray, classes: dict[int, np.ndarray],
                     descriptions: dict[int, list[str]]) -> list[dict] | None:
    """Per description of a binary task: the AUC for class 1 of the images' mean similarity to
    that description's prompts (one per template). A class-0 description above 0.5 draws the
    positive cases: a prompt the text encoder reads the wrong way (e.g. a negation it ignores).
    None when the embeddings do not hold templates x descriptions prompts per class."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, float)
    ok = ~np.isnan(y) & (y >= 0)
    y, img = y[ok].astype(int), _normalise(np.asarray(image_embeddings)[ok])
    if len(np.unique(y)) < 2:
        return None
    out = []
    for c in sorted(classes):
        n_desc = len(descriptions.get(c, []))
        n_prompts = len(classes[c])
        if not n_desc or n_prompts % n_desc:
            return None
        sims = (img @ _normalise(classes[c]).T).reshape(len(y), n_prompts // n_desc, n_desc).mean(axis=1)
        out += [{"class": c, "description": d, "auc": float(roc_auc_score(y, sims[:, j]))}
                for j, d in enumerate(descriptions[c])]
    return out
