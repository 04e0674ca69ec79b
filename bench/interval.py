"""Paired differences and their Student-t 95% interval, for accuracy claims with seeds.

No SciPy: the two-sided 95% quantile of Student's t comes from a table (df 1-30, values from any
statistics text, e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2) and, above 30 degrees of
freedom, from the Cornish-Fisher expansion around the normal quantile (error below 1e-3).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
"""t_{0.975, df} for df = 1..30."""


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 values (df >= 1)")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def t_interval(values: Sequence[float]) -> dict:
    """Mean, sample SD, n and the 95% t interval of the mean (None bounds for fewer than 2 values)."""
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    if n < 2:
        return {"mean": mean, "sd": None, "n": n, "low": None, "high": None}
    sd = statistics.stdev(values)
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half}
