"""Classification metrics and the bootstrap, checked against scikit-learn on the same resamples.

Each vectorised metric is computed for a point estimate plus resamples at once; the reference is
scikit-learn called on every resampled data set separately.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from renalclip_lib.evaluation import metrics_classification as mc
from renalclip_lib.evaluation.bootstrap import (bootstrap_indices, percentile_ci, seed_for, summarize,
                                               weights_from_indices, with_point)

N_BOOT = 60


def _resamples(n, seed=0):
    idx = bootstrap_indices(n, N_BOOT, seed)
    return [np.arange(n)] + list(idx), with_point(weights_from_indices(idx, n), n)


def _youden_reference(y, s):
    """Sensitivity, true specificity TN/(TN+FP), F1 and threshold at sklearn's first max of TPR - FPR."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))
    pred = s >= thr[k]
    tp = np.sum(pred & (y == 1))
    fp = np.sum(pred & (y == 0))
    tn = np.sum(~pred & (y == 0))
    fn = np.sum(~pred & (y == 1))
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return tp / (tp + fn), tn / (tn + fp), f1, thr[k]


@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_match_sklearn_on_every_resample(ties):
    rng = np.random.default_rng(1)
    n = 70
    y = rng.integers(0, 2, n)
    s = rng.random(n) + 0.4 * y
    if ties:
        s = np.round(s, 1)
    sets, W = _resamples(n)
    auc = mc.binary_auc(y, s, W)
    other = mc.binary_threshold_metrics(y, s, W)
    for b, ii in enumerate(sets):
        yy, ss = y[ii], s[ii]
        if len(set(yy)) < 2:
            assert np.isnan(auc[b])
            continue
        assert auc[b] == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
        assert other["pr_auc"][b] == pytest.approx(average_precision_score(yy, ss), abs=1e-12)
        sens, spec, f1, thr = _youden_reference(yy, ss)
        assert other["sensitivity"][b] == pytest.approx(sens, abs=1e-12)
        assert other["specificity"][b] == pytest.approx(spec, abs=1e-12)
        assert other["f1"][b] == pytest.approx(f1, abs=1e-12)
        assert other["threshold"][b] == thr


def test_specificity_is_true_specificity_not_npv():
    # Worked by hand: the Youden threshold is 0.35 (TPR 1, FPR 0.5): TP 4, FN 0, TN 3, FP 3.
    # True specificity TN / (TN + FP) = 0.5; the release's "specificity" (NPV, TN / (TN + FN)) would be 1.
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.35, 0.45, 0.8, 0.95])
    out = mc.binary_threshold_metrics(y, s, np.ones((1, len(y))))
    assert out["threshold"][0] == 0.35
    assert out["sensitivity"][0] == pytest.approx(1.0)
    assert out["specificity"][0] == pytest.approx(0.5)
    assert out["f1"][0] == pytest.approx(2 * 4 / (2 * 4 + 3 + 0))
    assert _youden_reference(y, s)[1] == pytest.approx(0.5)


@pytest.mark.parametrize("ties", [False, True])
def test_macro_ovr_auc_matches_sklearn(ties):
    rng = np.random.default_rng(2)
    n = 60
    y = rng.integers(0, 3, n)
    p = rng.dirichlet([1, 1, 1], n) + 0.5 * np.eye(3)[y]
    p /= p.sum(axis=1, keepdims=True)
    if ties:
        p = np.round(p, 1)
        p /= p.sum(axis=1, keepdims=True)
    sets, W = _resamples(n, 3)
    got = mc.multiclass_auc(y, p, W)
    for b, ii in enumerate(sets):
        if len(set(y[ii])) < 3:
            assert np.isnan(got[b])
        else:
            ref = roc_auc_score(y[ii], p[ii], multi_class="ovr", average="macro")
            assert got[b] == pytest.approx(ref, abs=1e-12)


def test_bootstrap_is_seeded_and_ci_is_the_percentile_interval():
    n = 50
    a = bootstrap_indices(n, 200, seed_for(0, "tcia"))
    b = bootstrap_indices(n, 200, seed_for(0, "tcia"))
    c = bootstrap_indices(n, 200, seed_for(1, "tcia"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    W = weights_from_indices(a, n)
    assert np.array_equal(W[5], np.bincount(a[5], minlength=n))
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, n), rng.random(n)
    vals = mc.binary_auc(y, s, with_point(W, n))
    ref = np.array([roc_auc_score(y[i], s[i]) for i in a if len(set(y[i])) == 2])
    m = summarize(vals[0], vals[1:], n)
    assert m.value == pytest.approx(roc_auc_score(y, s))
    assert (m.ci_low, m.ci_high) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))


def test_ci_is_null_when_most_resamples_are_undefined():
    vals = np.r_[0.7, np.full(10, np.nan)]
    lo, hi, k = percentile_ci(vals)
    assert lo is None and hi is None and k == 1
    m = summarize(0.6, vals, 12, "one class")
    assert m.value == 0.6 and m.ci_low is None and "undefined" in m.note
