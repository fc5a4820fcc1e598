"""Seeded, vectorised bootstrap: resample patients as a (B, n) multiplicity matrix, CI by percentiles.

Every metric here is written as a function of per-patient weights ``w`` (how often each patient is
drawn), so one call computes the point estimate (``w = 1``) and all B resamples at once. A resample
is the same set of patients for every model (the seed depends only on task, cohort and base seed,
and rows are sorted by patient id), so model comparisons are paired.

Usage::

    W = bootstrap_weights(n=200, n_boot=1000, seed=seed_for(0, "malignancy", "tcia"))
    values = some_metric(W)                  # shape (1000,), NaN where undefined in a resample
    m = summarize(point, values, n=200)      # MetricValue(value, ci_low, ci_high, n, note)
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

CI_LEVEL = 0.95
# A CI needs this share of resamples in which the metric is defined, otherwise it is reported null.
MIN_VALID_SHARE = 0.5


@dataclass
class MetricValue:
    """One number of metrics.json: value, 95 % interval, patients used, and why it is null if it is."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    note: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"value": _clean(self.value), "ci_low": _clean(self.ci_low), "ci_high": _clean(self.ci_high),
               "n": int(self.n)}
        if self.note:
            out["note"] = self.note
        out.update({k: (_clean(v) if isinstance(v, float) else v) for k, v in self.extra.items()})
        return out

    @property
    def ok(self) -> bool:
        return self.value is not None and math.isfinite(self.value)


def null(note: str, n: int = 0, **extra) -> MetricValue:
    return MetricValue(None, None, None, n, note, dict(extra))


def _clean(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def seed_for(base_seed: int, *names: str) -> np.random.SeedSequence:
    """A seed that depends on the base seed and the names only (stable across runs and platforms)."""
    return np.random.SeedSequence([int(base_seed)] + [zlib.crc32(str(n).encode()) for n in names])


def bootstrap_indices(n: int, n_boot: int, seed) -> np.ndarray:
    """(n_boot, n) row indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def weights_from_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicity matrix W[b, i] = how often row i is drawn in resample b (float64)."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_weights(n: int, n_boot: int, seed) -> np.ndarray:
    return weights_from_indices(bootstrap_indices(n, n_boot, seed), n)


def with_point(W: np.ndarray | None, n: int) -> np.ndarray:
    """Stack the all-ones row (the point estimate) on top of the resample weights: row 0 = point."""
    ones = np.ones((1, n))
    return ones if W is None or W.shape[0] == 0 else np.vstack([ones, W])


def percentile_ci(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float | None, float | None, int]:
    """Percentile interval over the finite values; (None, None, k) if fewer than half are finite."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    k = finite.size
    if values.size == 0 or k < MIN_VALID_SHARE * values.size:
        return None, None, k
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi), k


def summarize(point: float, boot: np.ndarray | None, n: int, undefined_note: str | None = None,
              **extra) -> MetricValue:
    """Point estimate + percentile CI; a note says how many resamples had the metric undefined."""
    if point is None or not np.isfinite(point):
        return null(undefined_note or "metric undefined on this cohort", n, **extra)
    if boot is None or len(boot) == 0:
        return MetricValue(float(point), None, None, n, None, dict(extra))
    lo, hi, k = percentile_ci(boot)
    note = None
    if k < len(boot):
        why = f" ({undefined_note})" if undefined_note else ""
        note = (f"CI from {k} of {len(boot)} resamples; the metric is undefined in the others{why}"
                if lo is not None else
                f"no CI: the metric is undefined in {len(boot) - k} of {len(boot)} resamples{why}")
    return MetricValue(float(point), lo, hi, n, note, dict(extra))


def split_point(values: np.ndarray) -> tuple[float, np.ndarray]:
    """Row 0 of a ``with_point`` computation is the point estimate, the rest the resamples."""
    values = np.asarray(values, float)
    return float(values[0]), values[1:]
