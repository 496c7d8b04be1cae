"""Statistics of the leaderboard, as plain functions of numbers and frames (no MLflow, no tables).

* :func:`group_summary`: mean, sample standard deviation and a Student-t confidence interval of
  each column per group (the seeds of one model, dataset and protocol);
* :func:`wilcoxon_signed_rank`: the two-sided paired test of per-case differences.

Further statistics (multiple-comparison corrections, bootstrap rank stability, ranking schemes)
belong here as functions of the same kind: arrays or frames in, numbers or frames out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


def t_quantile(dof: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Two-sided Student-t quantile for ``dof`` degrees of freedom; NaN where ``dof < 1``."""
    from scipy import stats

    dof = np.asarray(dof, dtype="float64")
    out = np.full(dof.shape, np.nan)
    ok = dof >= 1
    out[ok] = stats.t.ppf(0.5 + confidence / 2, dof[ok])
    return out


@dataclass
class GroupSummary:
    """Per group (index) and column: mean, sample std (ddof=1), confidence bounds, count."""

    mean: pd.DataFrame
    std: pd.DataFrame
    ci_lo: pd.DataFrame
    ci_hi: pd.DataFrame
    count: pd.DataFrame


def group_summary(
    values: pd.DataFrame, by: Sequence[str], columns: Sequence[str], confidence: float = CONFIDENCE
) -> GroupSummary:
    """Mean ± t-interval of ``columns`` over the rows of each ``by`` group (NaN values left out).

    The interval is ``mean ± t(confidence, n-1) · std / sqrt(n)``; NaN for groups of one value.
    """
    grouped = values.groupby(list(by), sort=True)[list(columns)]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    n = count.to_numpy()
    half = pd.DataFrame(
        t_quantile(n - 1, confidence) * std.to_numpy() / np.sqrt(n.clip(min=1)), index=mean.index, columns=mean.columns
    )
    return GroupSummary(mean, std, mean - half, mean + half, count)


def wilcoxon_signed_rank(diff: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, and the method used.

    Zero differences are dropped (Wilcoxon's original method). The exact distribution is used for
    up to 50 non-zero differences without ties, else the normal approximation with tie
    correction: deterministic, unlike scipy's permutation fallback. Returns (NaN, reason) when
    every difference is zero.
    """
    from scipy import stats

    d = np.round(np.asarray(diff, dtype="float64"), 12)  # floating-point noise must not break ties or hide zeros
    d = d[d != 0]
    if d.size == 0:
        return float("nan"), "all paired differences are zero"
    ties = np.unique(np.abs(d)).size < d.size
    method = "exact" if d.size <= 50 and not ties else "asymptotic"
    result = stats.wilcoxon(d, alternative="two-sided", method=method)
    return float(result.pvalue), method
