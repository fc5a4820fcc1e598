"""Classification metrics for many bootstrap resamples at once (rows of a weight matrix W).

Each function takes labels, scores and ``W`` of shape (R, n) (row r = how often each patient is in
resample r; a row of ones is the plain estimate) and returns one value per row, NaN where the metric
is undefined (a resample with one class), exactly as scikit-learn computes it on the resampled data:

- ``binary_auc``: ROC AUC (Mann-Whitney with half credit for tied scores = sklearn's trapezoid ROC).
- ``multiclass_auc``: macro one-vs-rest ROC AUC (sklearn ``multi_class="ovr", average="macro"``).
- ``binary_threshold_metrics``: average precision (PR AUC, sklearn ``average_precision_score``) and
  sensitivity, specificity = TN / (TN + FP) (true specificity, not NPV), F1 at the Youden-optimal
  threshold (the highest threshold maximising TPR - FPR over sklearn's ROC points, predicting positive
  when score >= threshold). The threshold is re-optimised in each resample.

Cost: O(R n) after one sort of the n scores.

Usage: ``auc = binary_auc(y, p, with_point(W, len(y)))``
"""
from __future__ import annotations

import numpy as np


def score_levels(scores: np.ndarray, descending: bool = False, tol: float = 0.0):
    """Sort order and start of each group of tied scores (consecutive differences <= tol are tied)."""
    scores = np.asarray(scores, float)
    order = np.argsort(-scores if descending else scores, kind="mergesort")
    s = scores[order]
    starts = np.r_[0, np.flatnonzero(np.abs(np.diff(s)) > tol) + 1]
    return order, starts


def level_sums(weights: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum of each row's weights within every tied-score group: (R, n) -> (R, n_levels)."""
    ws = np.take(weights, order, axis=1)
    if len(starts) == weights.shape[1]:
        return ws
    return np.add.reduceat(ws, starts, axis=1)


def sorted_auc(pos: np.ndarray, neg: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """AUC from weights already sorted by ascending score (R, n); ``starts`` begin each tied group.

    Each positive earns the negatives below its group plus half of those in its group:
    0.5 * (cum_neg[group end] + cum_neg[group start] - neg[group start]).
    """
    n = pos.shape[1]
    cum = np.cumsum(neg, axis=1)
    if len(starts) == n:                                  # no ties: the common case
        credit = cum - 0.5 * neg
    else:
        ends = np.r_[starts[1:], n] - 1
        per_level = 0.5 * (cum[:, ends] + cum[:, starts] - neg[:, starts])
        credit = np.take(per_level, np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n])), axis=1)
    num = np.einsum("ij,ij->i", pos, credit)
    p_tot, n_tot = pos.sum(axis=1), cum[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = num / (p_tot * n_tot)
    auc[(p_tot <= 0) | (n_tot <= 0)] = np.nan
    return auc


def weighted_auc(scores: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """AUC = P(score_pos > score_neg) + 0.5 P(tie), with per-row positive and negative weights (R, n)."""
    order, starts = score_levels(scores, tol=tol)
    return sorted_auc(np.take(pos_w, order, axis=1), np.take(neg_w, order, axis=1), starts)


def binary_auc(y: np.ndarray, scores: np.ndarray, W: np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    order, starts = score_levels(scores)
    ws = np.take(W, order, axis=1)
    pos = ws * y[order]
    return sorted_auc(pos, ws - pos, starts)


def multiclass_auc(y: np.ndarray, probs: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC over the columns of ``probs``; NaN in a row where any class is absent."""
    y = np.asarray(y)
    per_class = [binary_auc(y == k, probs[:, k], W) for k in range(probs.shape[1])]
    return np.mean(per_class, axis=0)


def binary_threshold_metrics(y: np.ndarray, scores: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """PR AUC and the Youden-threshold metrics for every row of W (see module docstring)."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, float)
    order, starts = score_levels(scores, descending=True)
    ws = np.take(W, order, axis=1)
    pos = ws * y[order]
    neg = ws - pos
    if len(starts) < len(scores):
        pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
    tp = np.cumsum(pos, axis=1)
    fp = np.cumsum(neg, axis=1)
    p_tot, n_tot = tp[:, -1], fp[:, -1]
    bad = (p_tot <= 0) | (n_tot <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        ap = (pos * precision).sum(axis=1) / p_tot
        tpr = tp / p_tot[:, None]
        fpr = fp / n_tot[:, None]
    zeros = np.zeros((W.shape[0], 1))
    j = np.hstack([zeros, tpr - fpr])                 # column 0: threshold +inf, nothing positive
    k = np.nanargmax(np.where(bad[:, None], 0.0, j), axis=1)
    rows = np.arange(W.shape[0])
    tp_k = np.hstack([zeros, tp])[rows, k]
    fp_k = np.hstack([zeros, fp])[rows, k]
    thresholds = np.r_[np.inf, scores[order][starts]]
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = tp_k / p_tot
        spec = (n_tot - fp_k) / n_tot
        denom = 2 * tp_k + fp_k + (p_tot - tp_k)
        f1 = np.where(denom > 0, 2 * tp_k / np.where(denom > 0, denom, 1.0), 0.0)
    out = {"pr_auc": ap, "sensitivity": sens, "specificity": spec, "f1": f1, "threshold": thresholds[k]}
    for v in out.values():
        v[bad] = np.nan
    return out
