"""Survival metrics for many bootstrap resamples at once, matching scikit-survival on resampled data.

Rows of ``W`` (R, n) are resamples (a row of ones is the plain estimate). For each row these equal
what scikit-survival 0.28 returns on the resampled patients, NaN where it would raise (all censored,
no comparable pair, a time outside the follow-up of the resample, a zero censoring survival):

- ``harrell_cindex``: ``concordance_index_censored`` (comparable pair: the earlier time is an event;
  an event is also comparable with a censored patient at the same time; tied risks count 0.5).
- ``uno_cindex``: ``concordance_index_ipcw(y, y, risk, tau)`` (the censoring distribution is
  estimated on the same cohort: prediction files carry no training data).
- ``cumulative_dynamic_auc``: ``cumulative_dynamic_auc(y, y, risk, times)``.
- ``brier``: ``brier_score(y, y, S(t), times)`` with S(t | risk) = exp(-H0(t) exp(risk)), H0 the
  Breslow baseline cumulative hazard fitted on the same (resampled) cohort with the risk score as the
  linear predictor (the models' risk heads are Cox log-hazards), as sksurv's ``BreslowEstimator``.

Harrell's and Uno's C use comparable-pair matrices (n x n, one matrix product for all resamples), so
memory grows as n^2: about 25 MB at n = 1,000.

Everything is computed in time order: the censoring Kaplan-Meier, the Breslow baseline and Uno's C
(whose inverse-probability weights do not depend on tau) become cumulative sums over patients, so
all truncation times cost one pass.

Usage::

    sb = SurvivalBootstrap(time, event, risk, with_point(W, n))
    sb.harrell(); sb.uno(24.0); sb.td_auc(24.0); sb.brier(24.0)      # each (R,), row 0 = point
"""
from __future__ import annotations

import numpy as np

from .metrics_classification import score_levels, sorted_auc

TIED_TOL = 1e-8  # scikit-survival's default tolerance for tied risk scores


def pair_matrices(time, event, risk, tied_tol: float = TIED_TOL) -> tuple[np.ndarray, np.ndarray]:
    """(A, C): A[i, j] = 1 if i is an event earlier than j (or tied in time with a censored j);
    C[i, j] = A[i, j] * (1 if risk_i > risk_j, 0.5 if the risks are tied, else 0)."""
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    r = np.asarray(risk, float)
    a = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    d = r[:, None] - r[None, :]
    score = np.where(np.abs(d) <= tied_tol, 0.5, (d > 0).astype(float))
    return a.astype(float), a * score


class SurvivalBootstrap:
    """Survival metrics of one risk score for every row of W (see the module docstring)."""

    def __init__(self, time, event, risk, W: np.ndarray):
        order = np.argsort(np.asarray(time, float), kind="mergesort")
        self.t = np.asarray(time, float)[order]
        self.e = np.asarray(event, bool)[order]
        self.r = np.asarray(risk, float)[order]
        self.W = np.take(W, order, axis=1)
        n = len(self.t)
        self.uniq, self.level = np.unique(self.t, return_inverse=True)
        starts = np.r_[0, np.flatnonzero(np.diff(self.level)) + 1]
        ends = np.r_[starts[1:], n] - 1
        total_w = self.W.sum(axis=1)
        cum = np.cumsum(self.W, axis=1)
        at_risk = total_w[:, None] - (cum[:, starts] - self.W[:, starts])     # weight with time >= level
        cum_e = np.cumsum(self.W * self.e, axis=1)
        self.d = cum_e[:, ends] - np.hstack([np.zeros((W.shape[0], 1)), cum_e[:, ends[:-1]]])
        level_w = cum[:, ends] - np.hstack([np.zeros((W.shape[0], 1)), cum[:, ends[:-1]]])
        censored = level_w - self.d
        denom = at_risk - self.d                                              # events leave first
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(censored > 0, censored / np.where(denom > 0, denom, 1.0), 0.0)
        self.G = np.cumprod(1.0 - ratio, axis=1)                              # censoring survival (R, m)
        self.g_own = self.G[:, self.level]
        self.n_events = cum_e[:, -1]
        present = self.W > 0
        self.t_min = self.t[np.argmax(present, axis=1)]
        self.t_max = self.t[n - 1 - np.argmax(present[:, ::-1], axis=1)]
        self.zero_g = ((self.g_own == 0) & self.e & present)                 # sksurv raises on these
        self._pairs = None
        self._starts, self._at_risk_starts, self.total_w = starts, None, total_w
        self._breslow = None

    # -- Harrell's and Uno's C ------------------------------------------------------------------
    def _pair_products(self):
        if self._pairs is None:
            a, c = pair_matrices(self.t, self.e, self.r)
            self._pairs = (self.W @ c.T, self.W @ a.T)   # per patient i: weighted concordant / comparable j
        return self._pairs

    def harrell(self) -> np.ndarray:
        mc, ma = self._pair_products()
        num = np.einsum("ij,ij->i", self.W, mc)
        den = np.einsum("ij,ij->i", self.W, ma)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def uno(self, tau: float) -> np.ndarray:
        """concordance_index_ipcw(y, y, risk, tau) per row."""
        if not hasattr(self, "_uno_cum"):
            mc, ma = self._pair_products()
            with np.errstate(divide="ignore"):
                inv_g2 = np.where(self.g_own > 0, 1.0 / np.where(self.g_own > 0, self.g_own, 1.0) ** 2, 0.0)
            a = self.W * inv_g2 * self.e
            self._uno_cum = (np.cumsum(a * mc, axis=1), np.cumsum(a * ma, axis=1),
                             np.cumsum(self.zero_g, axis=1), (self.W * ma).sum(axis=1) > 0)
        num_c, den_c, zero_c, has_pairs = self._uno_cum
        k = int(np.searchsorted(self.t, tau, side="left"))     # patients with time < tau
        if k == 0:
            return np.full(self.W.shape[0], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = num_c[:, k - 1] / den_c[:, k - 1]
        out[(zero_c[:, k - 1] > 0) | ~has_pairs | (self.n_events <= 0)] = np.nan
        return out

    # -- time-dependent AUC ---------------------------------------------------------------------
    def in_range(self, t: float) -> np.ndarray:
        """sksurv's rule: min(time) <= t < max(time) in the resample, and at least one event."""
        return (self.t_min <= t) & (t < self.t_max) & (self.n_events > 0)

    def td_auc(self, t: float) -> np.ndarray:
        """cumulative_dynamic_auc(y, y, risk, [t]) per row."""
        if not hasattr(self, "_auc_prep"):
            order, starts = score_levels(self.r, tol=TIED_TOL)
            g = np.take(self.g_own, order, axis=1)
            w = np.take(self.W, order, axis=1)
            ipcw = np.where(self.e[order], 1.0 / np.where(g > 0, g, np.inf), 0.0)
            self._auc_prep = (order, starts, w, w * ipcw, self.zero_g.any(axis=1))
        order, starts, w, w_ipcw, zero_any = self._auc_prep
        t_r, e_r = self.t[order], self.e[order]
        auc = sorted_auc(w_ipcw * ((t_r <= t) & e_r), w * (t_r > t), starts)
        auc[~self.in_range(t) | zero_any] = np.nan
        return auc

    # -- Brier score of Breslow survival probabilities ------------------------------------------
    def cum_baseline_hazard(self) -> tuple[np.ndarray, np.ndarray]:
        """Breslow H0 per row (R, m) at the unique times, relative to exp(risk - max risk)."""
        if self._breslow is None:
            shift = float(self.r.max())
            rel = np.exp(self.r - shift)
            cum_h = np.cumsum(self.W * rel, axis=1)
            starts = self._starts
            risk_set = cum_h[:, -1][:, None] - (cum_h[:, starts] - (self.W * rel)[:, starts])
            with np.errstate(divide="ignore", invalid="ignore"):
                inc = np.where(self.d > 0, self.d / np.where(risk_set > 0, risk_set, 1.0), 0.0)
            self._breslow = (np.cumsum(inc, axis=1), rel, shift)
        return self._breslow

    def survival(self, t: float) -> np.ndarray:
        """S(t | risk) per row and patient (R, n), patients in time order."""
        h0, rel, _ = self.cum_baseline_hazard()
        k = max(int(np.searchsorted(self.uniq, t, side="right")) - 1, 0)   # sksurv clips below the first time
        return np.exp(-h0[:, k][:, None] * rel[None, :])

    def brier(self, t: float) -> np.ndarray:
        """brier_score(y, y, S(t), [t]) per row (G = 0 gives a zero term, as sksurv's 1/inf)."""
        s = self.survival(t)
        k_case = int(np.searchsorted(self.t, t, side="right"))             # time <= t: [0, k_case)
        g_t = self.G[:, max(int(np.searchsorted(self.uniq, t, side="right")) - 1, 0)]
        if t < self.uniq[0]:
            g_t = np.ones_like(g_t)
        g_case = self.g_own[:, :k_case]
        case = self.W[:, :k_case] * self.e[:k_case] * np.where(g_case > 0, 1.0 / np.where(g_case > 0, g_case, 1.0), 0)
        inv_g_t = np.where(g_t > 0, 1.0 / np.where(g_t > 0, g_t, 1.0), 0.0)
        val = (np.einsum("ij,ij->i", case, s[:, :k_case] ** 2)
               + inv_g_t * np.einsum("ij,ij->i", self.W[:, k_case:], (1.0 - s[:, k_case:]) ** 2)) / self.total_w
        val[~self.in_range(t)] = np.nan
        return val


def breslow_cumhazard(time, event, risk, W) -> tuple[np.ndarray, np.ndarray]:
    """Unique times and the Breslow baseline cumulative hazard per row (R, m); risk = log hazard."""
    sb = SurvivalBootstrap(time, event, risk, W)
    h0, _, shift = sb.cum_baseline_hazard()
    return sb.uniq, h0 * np.exp(-shift)


def valid_times(time, times) -> list[float]:
    """The requested times inside the cohort's follow-up [min time, max time) (sksurv's rule)."""
    time = np.asarray(time, float)
    return [float(t) for t in times if time.min() <= t < time.max()]
