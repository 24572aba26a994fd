"""Statistics that put studies side by side: scores against λ_s, one study against another.

- Rank correlation across layers between a transferability estimate (see `quanta.scores`)
  and the trained measure, the final λ_s: Spearman's ρ and Kendall's τ (scipy.stats), with
  their two-sided p-values. Ranks, because the estimates live on unrelated scales and only
  their ordering of layers can be compared with λ_s.
- Welch's t-test between two studies' final λ_s at one layer: the runs of two studies have
  no reason to share a variance.

Undefined results are None, never NaN (which JSON cannot carry): fewer than 3 layers or a
constant series for a correlation, fewer than 2 runs on either side or no variance at all
for a t-test. NaN or infinite inputs are left out before counting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from quanta_spec.statistics import MIN_VALUES_FOR_SPREAD, finite

#: A rank correlation over fewer layers than this is not reported.
MIN_CORRELATION_POINTS = 3


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise ValueError(f"{len(x)} scores against {len(y)} λ_s values")
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def rank_correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Spearman's ρ and Kendall's τ (τ-b, which handles ties) between `x` and `y`.

    Returns {"spearman", "spearman_p", "kendall", "kendall_p", "n"}; the four statistics
    are None when fewer than MIN_CORRELATION_POINTS finite pairs remain or either series
    is constant.
    """
    a, b = _pairs(x, y)
    result: dict[str, float | int | None] = {
        "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None,
        "n": int(a.shape[0]),
    }
    if a.shape[0] < MIN_CORRELATION_POINTS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(a, b)
        kendall = stats.kendalltau(a, b)
    result.update(spearman=_finite(spearman.statistic), spearman_p=_finite(spearman.pvalue),
                  kendall=_finite(kendall.statistic), kendall_p=_finite(kendall.pvalue))
    return result


def score_correlations(
    scores: Mapping[str, Mapping[str, float]], lambdas: Mapping[str, float],
    names: Iterable[str] | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Per score name, its rank correlations with λ_s across the layers both have.

    `scores` maps a layer ("0".."6") to its scores ({"logme": ..., ...}); `lambdas` maps a
    layer to its mean final λ_s. `names` defaults to every score name found.
    """
    if names is None:
        names = sorted({name for layer in scores.values() for name in layer})
    layers = sorted(set(scores) & set(lambdas), key=lambda k: (len(k), k))
    return {
        name: rank_correlations(
            [scores[k].get(name, math.nan) for k in layers], [lambdas[k] for k in layers])
        for name in names
    }


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided p-value of Welch's t-test for equal means of `a` and `b`, or None.

    None when either side has fewer than MIN_VALUES_FOR_SPREAD finite values, or neither side
    varies (the test statistic is then undefined, not infinitely significant).
    """
    x = np.asarray(finite(a), dtype=np.float64)
    y = np.asarray(finite(b), dtype=np.float64)
    if x.shape[0] < MIN_VALUES_FOR_SPREAD or y.shape[0] < MIN_VALUES_FOR_SPREAD:
        return None
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = stats.ttest_ind(x, y, equal_var=False)
    return _finite(test.pvalue)


def compare_runs(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """Two studies' final λ_s at one layer: sizes, means, `difference` (mean b − mean a)
    and Welch's `p_value`; a mean is None for a side without runs."""
    x, y = finite(a), finite(b)
    mean_a = float(np.mean(x)) if x else None
    mean_b = float(np.mean(y)) if y else None
    return {
        "n_a": len(x), "n_b": len(y), "mean_a": mean_a, "mean_b": mean_b,
        "difference": mean_b - mean_a if mean_a is not None and mean_b is not None else None,
        "p_value": welch_p_value(x, y),
    }
