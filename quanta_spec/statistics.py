"""The statistics over runs that a study reports and stops on, once (TensorFlow-free).

The mean, the sample standard deviation and the 95% confidence interval of the mean
(Student's t) of a layer's final λ_s are what `summary.json` shows (`quanta.summary`),
what `--until` stops on (`quanta_jobs.adaptive_runs`) and what a comparison of studies shows
(`quanta_jobs.compare`): the three must agree, so they read one function. A value that
is not finite (a run that diverged) is left out of the statistics and counted
(`non_finite`), never averaged in and never dropped unsaid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

#: Below this many finite values, a spread (standard deviation, interval) is unknown.
MIN_VALUES_FOR_SPREAD = 2


def finite(values: Sequence[float]) -> list[float]:
    """The finite values, as floats, in their order."""
    return [float(v) for v in values if math.isfinite(v)]


def t_halfwidth(values: Sequence[float]) -> float | None:
    """Half-width of the 95% confidence interval of the mean of the finite `values`
    (Student's t with n - 1 degrees of freedom); None below two."""
    x = np.asarray(finite(values), dtype=np.float64)
    n = x.shape[0]
    if n < MIN_VALUES_FOR_SPREAD:
        return None
    return float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))


def describe(values: Sequence[float]) -> dict[str, Any]:
    """`n`, `mean`, `std`, `ci95` ([low, high]) and `values` of the finite `values`
    (`std` and `ci95` None below two: one run says nothing of the spread), and
    `non_finite`, how many were left out, when any were."""
    kept = finite(values)
    left_out = len(values) - len(kept)
    out: dict[str, Any]
    if not kept:
        out = {"n": 0, "mean": None, "std": None, "ci95": None, "values": []}
    else:
        x = np.asarray(kept, dtype=np.float64)
        mean = float(x.mean())
        half = t_halfwidth(kept)
        out = {"n": len(kept), "mean": mean,
               "std": float(x.std(ddof=1)) if half is not None else None,
               "ci95": [mean - half, mean + half] if half is not None else None,
               "values": x.tolist()}
    if left_out:
        out["non_finite"] = left_out
    return out
