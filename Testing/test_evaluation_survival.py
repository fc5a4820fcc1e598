"""Survival metrics against scikit-survival (on every resample), Cox and log-rank against lifelines."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test
from sksurv.compare import compare_survival
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import brier_score, concordance_index_censored, concordance_index_ipcw, cumulative_dynamic_auc
from sksurv.util import Surv

from renalclip_lib.evaluation.bootstrap import bootstrap_indices, weights_from_indices, with_point
from renalclip_lib.evaluation.cox import CoxNotEstimable, cox_fit, logrank
from renalclip_lib.evaluation.metrics_survival import SurvivalBootstrap, breslow_cumhazard
from renalclip_lib.evaluation.survival_stats import cox_table, km_split, level_order

TIMES = [12.0, 24.0, 36.0, 60.0, 100.0]


def _cohort(seed, n=70, tied=True):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    t_ev = rng.exponential(40 * np.exp(-0.7 * risk)) + 1
    cens = rng.uniform(10, 150, n)
    if tied:                      # tied risks, tied times, events and censorings at the same time
        risk, t_ev, cens = np.round(risk, 1), np.round(t_ev), np.round(cens)
    return np.minimum(t_ev, cens), t_ev <= cens, risk


def _ref(fn):
    """A reference value, NaN where scikit-survival refuses (as our vectorised code reports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn())
    except ValueError:
        return np.nan


def _same(got, ref, tol=1e-10):
    if np.isnan(ref):
        return np.isnan(got)
    return abs(got - ref) <= tol


@pytest.mark.parametrize("seed,tied", [(3, True), (4, False)])
def test_survival_metrics_match_scikit_survival_on_every_resample(seed, tied):
    time, event, risk = _cohort(seed, tied=tied)
    n = len(time)
    idx = bootstrap_indices(n, 40, 0)
    sb = SurvivalBootstrap(time, event, risk, with_point(weights_from_indices(idx, n), n))
    got = {"c": sb.harrell(), **{(k, t): getattr(sb, k)(t) for k in ("uno", "td_auc", "brier") for t in TIMES}}
    n_nan = 0
    for b, ii in enumerate([np.arange(n)] + list(idx)):
        y, r = Surv.from_arrays(event[ii], time[ii]), risk[ii]
        assert _same(got["c"][b], _ref(lambda: concordance_index_censored(event[ii], time[ii], r)[0]))
        surv = BreslowEstimator().fit(r, event[ii], time[ii]).get_survival_function(r)
        for t in TIMES:
            ref_auc = _ref(lambda: cumulative_dynamic_auc(y, y, r, [t])[0][0])
            n_nan += np.isnan(ref_auc)
            assert _same(got[("td_auc", t)][b], ref_auc), (b, t)
            assert _same(got[("uno", t)][b], _ref(lambda: concordance_index_ipcw(y, y, r, tau=t)[0])), (b, t)
            s_t = np.array([f(t) for f in surv]) if t >= time[ii].min() else np.ones(n)
            assert _same(got[("brier", t)][b], _ref(lambda: brier_score(y, y, s_t, [t])[1][0])), (b, t)
    assert n_nan < len(TIMES) * 41          # the comparison is not vacuous


def test_breslow_baseline_matches_scikit_survival():
    time, event, risk = _cohort(5)
    uniq, h0 = breslow_cumhazard(time, event, risk, np.ones((1, len(time))))
    ref = BreslowEstimator().fit(risk, event, time)
    assert np.allclose(h0[0], ref.cum_baseline_hazard_(uniq), rtol=1e-10)


def test_all_censored_gives_nan_not_a_number():
    time = np.array([5.0, 6, 7, 8])
    sb = SurvivalBootstrap(time, np.zeros(4, bool), np.array([1.0, 2, 3, 4]), np.ones((1, 4)))
    assert np.isnan(sb.harrell()[0]) and np.isnan(sb.td_auc(6.0)[0]) and np.isnan(sb.brier(6.0)[0])


def _lifelines(df):
    """lifelines' Cox fit, converged tightly (its default stops at a step norm of 1e-7)."""
    return CoxPHFitter().fit(df, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-15}).summary


@pytest.mark.parametrize("seed,p", [(6, 1), (7, 3)])
def test_cox_fit_matches_lifelines(seed, p):
    time, event, risk = _cohort(seed, n=150)
    rng = np.random.default_rng(seed)
    X = np.column_stack([risk] + [rng.integers(0, 2, len(time)) for _ in range(p - 1)]).astype(float)
    fit = cox_fit(time, event, X)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(p)]).assign(T=time, E=event.astype(int))
    ref = _lifelines(df)
    assert np.allclose(fit.hr, ref["exp(coef)"], rtol=1e-7)
    assert np.allclose(fit.ci_low, ref["exp(coef) lower 95%"], rtol=1e-7)
    assert np.allclose(fit.ci_high, ref["exp(coef) upper 95%"], rtol=1e-7)
    assert np.allclose(fit.p, ref["p"], atol=1e-8)


def test_cox_without_a_finite_estimate_is_refused():
    time = np.array([1.0, 2, 3, 4, 5, 6])
    event = np.array([1, 1, 1, 0, 0, 0], bool)
    group = np.array([1, 1, 1, 0, 0, 0], float)          # all events in one group: HR infinite
    with pytest.raises(CoxNotEstimable):
        cox_fit(time, event, group[:, None])
    with pytest.raises(CoxNotEstimable):
        cox_fit(time, event, np.ones((6, 1)))


def test_logrank_matches_lifelines_and_scikit_survival():
    time, event, risk = _cohort(8, n=120)
    high = risk > np.median(risk)
    chi2, p = logrank(time, event, high)
    ref = logrank_test(time[high], time[~high], event[high], event[~high])
    assert chi2 == pytest.approx(ref.test_statistic, rel=1e-10)
    assert p == pytest.approx(ref.p_value, rel=1e-10)
    chi2_sk, p_sk = compare_survival(Surv.from_arrays(event, time), high)
    assert chi2 == pytest.approx(chi2_sk, rel=1e-10) and p == pytest.approx(p_sk, rel=1e-10)


def test_km_split_and_cox_table_match_lifelines():
    time, event, risk = _cohort(9, n=200)
    rng = np.random.default_rng(9)
    stage = rng.choice(["I", "II", "III", "IV"], len(time))
    grade = rng.choice(["1", "2", "3"], len(time)).astype(object)
    grade[:7] = None                                         # missing grade: left out of those models
    km = km_split(time, event, risk)
    high = risk > np.median(risk)
    assert np.array_equal(km.high, high)
    ref = _lifelines(pd.DataFrame({"T": time, "E": event.astype(int), "g": high.astype(float)})).loc["g"]
    assert km.hr.value == pytest.approx(ref["exp(coef)"], rel=1e-7)
    assert km.hr_p.value == pytest.approx(ref["p"], abs=1e-8)
    assert km.logrank_p.value == pytest.approx(logrank_test(time[high], time[~high], event[high],
                                                            event[~high]).p_value)
    table = cox_table(time, event, risk, stage, grade)
    rows = {r.key: r for r in table.rows}
    assert list(rows) == ["stage II vs I", "stage III vs I", "stage IV vs I", "grade 2 vs 1", "grade 3 vs 1", "risk"]
    ok = ~pd.isna(grade)
    multi = pd.DataFrame({"T": time[ok], "E": event[ok].astype(int), "risk": risk[ok],
                          **{f"s{k}": (stage[ok] == k).astype(float) for k in ("II", "III", "IV")},
                          **{f"g{k}": (grade[ok] == k).astype(float) for k in ("2", "3")}})
    ref = _lifelines(multi)
    assert rows["risk"].multi_hr.value == pytest.approx(ref.loc["risk", "exp(coef)"], rel=1e-7)
    assert rows["stage IV vs I"].multi_hr.ci_high == pytest.approx(ref.loc["sIV", "exp(coef) upper 95%"], rel=1e-7)
    assert rows["grade 3 vs 1"].multi_p.value == pytest.approx(ref.loc["g3", "p"], abs=1e-8)
    assert rows["risk"].multi_hr.n == ok.sum() and rows["risk"].uni_hr.n == len(time)
    uni = _lifelines(pd.DataFrame({"T": time, "E": event.astype(int), "risk": risk})).loc["risk"]
    assert rows["risk"].uni_hr.value == pytest.approx(uni["exp(coef)"], rel=1e-7)
    assert any("multivariate model on" in n for n in table.notes)


def test_level_order_is_natural():
    assert level_order(["IV", "I", "III", "II"]) == ["I", "II", "III", "IV"]
    assert level_order(["Stage 10", "Stage 2", "Stage 1"]) == ["Stage 1", "Stage 2", "Stage 10"]
    assert level_order([3, 1, 2]) == ["1", "2", "3"]
