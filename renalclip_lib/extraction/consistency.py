"""Factual consistency of a generated report with its reference, through the 14 questions.

BLEU and ROUGE reward wording; this asks whether the generated report says the same things. Both
texts go through the questionnaire extractor; then, per report:

- ``side_agreement``: 1 if both put the mass(es) in the same kidney (left, right, bilateral, none);
- ``side_size_agreement``: 1 if the side agrees and, for each kidney the reference gives a size
  for, the size class (<= 4, 4-7, 7-10, > 10 cm) agrees;
- ``consistency``: the share of the reference's stated answers (class > 0, per kidney with a mass)
  that the generated report gives identically; a reference that states nothing scores 1 when the
  generated report also describes no mass, else 0;
- ``per_question``: that agreement per question key (None where the reference says nothing).

Usage::

    c = consistency(generated_text, reference_text)   # {"side_agreement": 1.0, "consistency": 0.8, ...}
    arrays = consistency_scores(references, predictions)   # per-report arrays for the evaluation
"""
from __future__ import annotations

import numpy as np

from ..constants import SIDES
from ..questionnaire import QUESTIONS
from .rules import SIDE_KEY, extract_answers

CONSISTENCY_METRICS = ("side_agreement", "side_size_agreement", "consistency")


def _sides_with_mass(answers: dict) -> tuple[str, ...]:
    side = answers.get(SIDE_KEY)
    return SIDES if side == "bilateral" else (side,) if side in SIDES else ()


def consistency(pred_text: str, true_text: str, pred_answers: dict | None = None,
                true_answers: dict | None = None) -> dict:
    """Agreement of ``pred_text`` with ``true_text`` (see the module docstring)."""
    t = true_answers if true_answers is not None else extract_answers(true_text)
    p = pred_answers if pred_answers is not None else extract_answers(pred_text)
    side_ok = t.get(SIDE_KEY) == p.get(SIDE_KEY)
    sides = _sides_with_mass(t)
    per_question: dict = {}
    hits = []
    for q in QUESTIONS:
        got = [float(p[q.column(s)] == t[q.column(s)]) for s in sides if t[q.column(s)] > 0]
        per_question[q.key] = float(np.mean(got)) if got else None
        hits += got
    size_ok = all(p[f"q_size_{s}"] == t[f"q_size_{s}"] for s in sides if t[f"q_size_{s}"] > 0)
    if hits:
        score = float(np.mean(hits))
    else:
        score = float(not _sides_with_mass(p))
    return {"side_agreement": float(side_ok), "side_size_agreement": float(side_ok and size_ok),
            "consistency": score, "per_question": per_question, "n_stated": len(hits),
            "true_side": t.get(SIDE_KEY), "pred_side": p.get(SIDE_KEY)}


def consistency_scores(references, predictions) -> dict[str, np.ndarray]:
    """Per-report ``CONSISTENCY_METRICS`` arrays (every value finite, in [0, 1])."""
    out = {k: np.zeros(len(references)) for k in CONSISTENCY_METRICS}
    for i, (ref, hyp) in enumerate(zip(references, predictions)):
        c = consistency(hyp, ref)
        for k in CONSISTENCY_METRICS:
            out[k][i] = c[k]
    return out
