"""Statistics of the leaderboard, as plain functions of numbers and frames (no MLflow, no tables).

* :func:`group_summary`: mean, sample standard deviation and a 95 % confidence interval of each
  column per group (the seeds of one model, dataset and protocol). The interval is a Student-t
  interval computed on a scale that respects the metric's range and mapped back
  (:func:`vmbench.statistics.t_interval`): the logit scale for fractions shown in percent (the
  interval stays inside [0, 100]), the log scale for HD95 (it stays above 0), the plain scale
  otherwise. A plain t-interval over two seeds of mIoU 60 % and 99.9 % reads [-, 104.9].

The tests, rankings and corrections themselves live in :mod:`vmbench.statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from vmbench.protocols import metric_unit
from vmbench.statistics import from_scale, to_scale

__all__ = ["CONFIDENCE", "GroupSummary", "INTERVAL_TEXT", "group_summary", "interval_scale", "t_quantile"]

CONFIDENCE = 0.95
# What each interval scale means, for the tables' notes.
INTERVAL_TEXT = {
    "logit": "t-interval on the logit scale of the fraction, mapped back (stays inside [0, 100] %)",
    "log": "t-interval on the log scale, mapped back (stays above 0; '–' when a value is 0)",
    "linear": "plain t-interval",
}


def interval_scale(key: str) -> str:
    """The scale of a metric's interval: 'logit' for fractions (shown in %), 'log' for HD95, else 'linear'."""
    unit = metric_unit(key)
    return "logit" if unit == "pct" else "log" if unit == "vox" else "linear"


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
    values: pd.DataFrame,
    by: Sequence[str],
    columns: Sequence[str],
    confidence: float = CONFIDENCE,
    scales: Mapping[str, str] | None = None,
    interval_values: pd.DataFrame | None = None,
) -> GroupSummary:
    """Mean, std and a range-respecting t-interval of ``columns`` over the rows of each ``by`` group.

    ``scales``: column -> 'logit' (values in percent), 'log' or 'linear' (default: from the
    metric key, :func:`interval_scale`). The interval is ``mean(z) ± t(confidence, n-1) ·
    std(z) / sqrt(n)`` on ``z = scale(value)``, mapped back; NaN for groups of one value (and on
    the log scale for groups holding a value <= 0). ``interval_values`` (same columns): the
    values the interval is computed from when they are not ``values`` (protocol cv: one
    fold-averaged value per seed).
    """
    by, columns = list(by), list(columns)
    grouped = values.groupby(by, sort=True)[columns]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    count = grouped.count()
    source = values if interval_values is None else interval_values
    scale = {c: (scales or {}).get(c) or interval_scale(c) for c in columns}
    per_unit = pd.Series({c: 100.0 if scale[c] == "logit" else 1.0 for c in columns})
    raw = source[columns].astype("float64") / per_unit
    z = pd.DataFrame({c: to_scale(raw[c], scale[c]) for c in columns}, index=source.index)
    invalid = raw.notna() & z.isna()  # a value the scale cannot take (<= 0 on the log scale)
    keys = source[by]
    zg = pd.concat([keys, z], axis=1).groupby(by, sort=True)[columns]
    zm, zs, n = zg.mean(), zg.std(ddof=1), zg.count()
    bad = pd.concat([keys, invalid], axis=1).groupby(by, sort=True)[columns].any()
    half = t_quantile(n.to_numpy() - 1, confidence) * zs.to_numpy() / np.sqrt(n.to_numpy().clip(min=1))
    lo = pd.DataFrame(np.nan, index=zm.index, columns=columns)
    hi = lo.copy()
    for i, c in enumerate(columns):
        lo[c] = from_scale(zm[c].to_numpy() - half[:, i], scale[c]) * per_unit[c]
        hi[c] = from_scale(zm[c].to_numpy() + half[:, i], scale[c]) * per_unit[c]
    lo, hi = lo.mask(bad), hi.mask(bad)
    return GroupSummary(mean, std, lo.reindex(mean.index), hi.reindex(mean.index), count)
