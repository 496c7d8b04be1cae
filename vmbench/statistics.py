"""Statistics for comparing segmentation models: corrected paired tests, rankings and their stability.

Everything works on a *case table*: one row per test case, one column per model, each cell the
model's score on that case (seed- and fold-averaged before it gets here). The methods follow the
challenge-ranking literature:

* paired two-sided Wilcoxon signed-rank tests of every model against a reference, with Holm's
  step-down correction across the comparisons (Holm 1979, Scand. J. Statist. 6:65-70);
* the three ranking schemes of challengeR (Wiesenfarth et al. 2021, Sci. Rep. 11:2369):
  aggregate-then-rank (mean per model, then rank), rank-then-aggregate (rank per case, then the
  mean rank) and test-then-rank (count of one-sided Wilcoxon wins at alpha 0.05); ties share the
  best rank (challengeR's ``ties.method = "min"``);
* rank stability by bootstrap over the test cases (challengeR's blob plots): each model's rank
  distribution, the probability that it ranks first, and Kendall's tau-b between the full-data
  ranking and each bootstrap ranking (Maier-Hein et al. 2018, Nat. Commun. 9:5217 showed how often
  ranks flip with the test cases);
* a consensus rank over data sets: the mean of each model's ranks, ranked again;
* intervals that respect a metric's range: percentile bootstrap of a mean over cases, and for
  quantities measured a few times (a fraction or a distance over seeds) a t-interval on the logit
  scale (fractions) or the log scale (positive values such as HD95), mapped back, so that it never
  leaves [0, 1] or (0, inf) as a plain t-interval over two seeds does;
* the power limit of the exact signed-rank test (:func:`wilcoxon_min_p`: with n pairs no p-value
  below 2 / 2**n exists) and the Pareto front of accuracy against cost (:func:`pareto_optimal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "RANKING_SCHEMES",
    "SCALES",
    "RankStability",
    "aggregate_then_rank",
    "bootstrap_mean_ci",
    "bootstrap_rank_stability",
    "consensus_rank",
    "holm",
    "from_scale",
    "kendall_tau_b",
    "log_t_interval",
    "logit_t_interval",
    "min_rank",
    "paired_wilcoxon",
    "pareto_optimal",
    "rank_then_aggregate",
    "t_interval",
    "test_then_rank",
    "to_scale",
    "wilcoxon_min_p",
    "wilcoxon_signed_rank",
]


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the input's order; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype="float64")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def wilcoxon_signed_rank(diff, alternative: str = "two-sided") -> tuple[float, str]:
    """Wilcoxon signed-rank p-value of paired differences, and the method used.

    Zero differences are dropped (Wilcoxon's original method). The exact distribution is used for
    up to 50 non-zero differences without ties, else the normal approximation with tie
    correction: named explicitly, so the choice never depends on scipy's defaults. Differences are
    rounded to 12 decimals first (floating-point noise from averaging seeds must neither break
    ties nor hide zeros). Returns (NaN, reason) when every difference is zero.
    """
    from scipy import stats

    d = np.round(np.asarray(diff, dtype="float64"), 12)
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return float("nan"), "all paired differences are zero"
    ties = np.unique(np.abs(d)).size < d.size
    method = "exact" if d.size <= 50 and not ties else "asymptotic"
    result = stats.wilcoxon(d, alternative=alternative, method="exact" if method == "exact" else "approx")
    return float(result.pvalue), method


def paired_wilcoxon(x, y, alternative: str = "two-sided") -> tuple[float, int]:
    """(p-value, number of pairs) of the Wilcoxon signed-rank test of ``x - y`` (NaN pairs dropped).

    All-equal pairs carry no evidence either way: p = 1. Fewer than one informative pair: NaN.
    The test itself is :func:`wilcoxon_signed_rank`.
    """
    x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(len(x))
    if n == 0:
        return float("nan"), 0
    p, _ = wilcoxon_signed_rank(x - y, alternative)
    return (1.0 if np.isnan(p) else p), n


def wilcoxon_min_p(n_pairs: int, alternative: str = "two-sided") -> float:
    """The smallest p-value the exact signed-rank test can give with ``n_pairs`` non-zero differences.

    Every difference of one sign is the most extreme outcome: probability 1 / 2**n under the null,
    doubled for a two-sided test. With 5 pairs no two-sided p falls below 0.0625.
    """
    if n_pairs < 1:
        return 1.0
    one_sided = 0.5 ** int(n_pairs)
    return float(min(1.0, 2 * one_sided if alternative == "two-sided" else one_sided))


def min_rank(scores: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """1 = best; tied scores share the best of their ranks; NaN scores rank last.

    Scores are compared to 12 decimals: means of equal sums taken in another order must tie.
    """
    values = (scores if higher_is_better else -scores).astype("float64").round(12)
    return values.rank(ascending=False, method="min", na_option="bottom").astype("int64")


def aggregate_then_rank(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Rank of each model's mean over cases."""
    return min_rank(table.mean(axis=0), higher_is_better)


def rank_then_aggregate(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Rank of each model's mean rank over cases (ranks within a case: 1 = best, ties share)."""
    values = table if higher_is_better else -table
    per_case = values.rank(axis=1, ascending=False, method="min", na_option="bottom")
    return min_rank(per_case.mean(axis=0), higher_is_better=False)


def test_then_rank(table: pd.DataFrame, higher_is_better: bool = True, alpha: float = 0.05) -> pd.Series:
    """Rank by the number of models each one beats in a one-sided paired Wilcoxon test at ``alpha``."""
    models = list(table.columns)
    wins = pd.Series(0, index=models, dtype="int64")
    alternative = "greater" if higher_is_better else "less"
    for a in models:
        for b in models:
            if a != b:
                p, _ = paired_wilcoxon(table[a], table[b], alternative=alternative)
                wins[a] += int(p < alpha)
    return min_rank(wins, higher_is_better=True)


test_then_rank.__test__ = False  # a ranking scheme, not a pytest test
RANKING_SCHEMES: dict[str, Callable[[pd.DataFrame, bool], pd.Series]] = {
    "aggregate-then-rank": aggregate_then_rank,
    "rank-then-aggregate": rank_then_aggregate,
    "test-then-rank": test_then_rank,
}


def kendall_tau_b(a, b) -> float:
    """Kendall's tau-b of two rankings of the same items (ties in either corrected for)."""
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    n1, n2 = int(np.sum(da == 0)), int(np.sum(db == 0))
    denominator = np.sqrt(float(n0 - n1) * float(n0 - n2))
    return float(np.sum(da * db) / denominator) if denominator > 0 else float("nan")


@dataclass
class RankStability:
    """What a bootstrap over test cases says of a ranking (one data set, one scheme)."""

    scheme: str
    ranks: pd.Series  # full-data ranking
    rank_counts: pd.DataFrame  # models x ranks: how many bootstrap samples put the model at that rank
    p_first: pd.Series  # fraction of bootstrap samples in which the model ranks first
    mean_rank: pd.Series
    kendall_tau: np.ndarray  # tau-b between the full-data ranking and each bootstrap ranking
    n_boot: int
    n_cases: int
    seed: int

    @property
    def tau_median(self) -> float:
        return float(np.nanmedian(self.kendall_tau)) if len(self.kendall_tau) else float("nan")


def bootstrap_rank_stability(
    table: pd.DataFrame,
    scheme: str = "aggregate-then-rank",
    higher_is_better: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> RankStability:
    """Rank the models on ``n_boot`` resamples of the cases (with replacement, seeded).

    Cases with a missing score for any model are left out first. The two mean-based schemes are
    computed for all resamples at once (the per-case ranks of rank-then-aggregate do not change
    when cases are resampled); test-then-rank runs its pairwise tests on every resample (slow).
    """
    rank_fn = RANKING_SCHEMES[scheme]
    table = table.dropna(axis=0, how="any")
    models = list(table.columns)
    full = rank_fn(table, higher_is_better)
    rng = np.random.default_rng(seed)
    n = len(table)
    if scheme in _MEAN_BASED:
        boot = _mean_based_boot_ranks(table, scheme, higher_is_better, rng, n_boot)
    else:
        boot = np.empty((n_boot, len(models)), dtype="int64")
        values = table.to_numpy()
        for k in range(n_boot):
            sample = pd.DataFrame(values[rng.integers(0, n, n)], columns=models)
            boot[k] = rank_fn(sample, higher_is_better).to_numpy()
    taus = np.array([kendall_tau_b(full.to_numpy(), row) for row in boot]) if n_boot else np.empty(0)
    counts = pd.DataFrame(
        {r: (boot == r).sum(axis=0) for r in range(1, len(models) + 1)}, index=models, dtype="int64"
    )
    return RankStability(
        scheme=scheme,
        ranks=full,
        rank_counts=counts,
        p_first=pd.Series((boot == 1).mean(axis=0) if n_boot else np.nan, index=models),
        mean_rank=pd.Series(boot.mean(axis=0) if n_boot else np.nan, index=models),
        kendall_tau=taus,
        n_boot=n_boot,
        n_cases=n,
        seed=seed,
    )


_MEAN_BASED = ("aggregate-then-rank", "rank-then-aggregate")


def _mean_based_boot_ranks(table: pd.DataFrame, scheme: str, higher_is_better: bool, rng, n_boot: int) -> np.ndarray:
    """Bootstrap ranks (n_boot x models) of the mean-based schemes, resamples drawn as the loop would.

    Resample k takes ``rng.integers(0, n, n)`` in turn (one (n_boot, n) draw gives the same stream).
    """
    from scipy.stats import rankdata

    values = table.to_numpy(dtype="float64")
    if scheme == "rank-then-aggregate":
        signed = values if higher_is_better else -values
        values = rankdata(-signed, method="min", axis=1)  # per-case ranks, 1 = best
        better_high = False
    else:
        better_high = higher_is_better
    n = len(values)
    out = np.empty((n_boot, values.shape[1]), dtype="int64")
    chunk = max(1, 4_000_000 // max(1, n * values.shape[1]))  # bounded memory for big case pools
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means = np.round(values[rng.integers(0, n, (stop - start, n))].mean(axis=1), 12)  # as min_rank
        out[start:stop] = rankdata(-means if better_high else means, method="min", axis=1)
    return out


def consensus_rank(ranks_per_dataset: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Mean rank of each model over the data sets it was ranked on, and the rank of that mean."""
    frame = pd.DataFrame(dict(ranks_per_dataset))
    mean = frame.mean(axis=1)
    return pd.DataFrame(
        {"mean_rank": mean, "datasets": frame.notna().sum(axis=1), "consensus_rank": min_rank(mean, higher_is_better=False)}
    ).sort_values(["consensus_rank", "mean_rank"])


def bootstrap_mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (stays inside the values' range by construction)."""
    values = np.asarray(values, dtype="float64")
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


SCALES = ("linear", "logit", "log")


def to_scale(values, scale: str, eps: float = 1e-6) -> np.ndarray:
    """Values on the scale a t-interval is computed on: fractions -> logit (clipped to [eps, 1 - eps]),
    positive values -> log (values <= 0 become NaN), or unchanged."""
    from scipy.special import logit

    x = np.asarray(values, dtype="float64")
    if scale == "logit":
        return logit(np.clip(x, eps, 1 - eps))
    if scale == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
    if scale == "linear":
        return x
    raise ValueError(f"scale {scale!r}: expected one of {', '.join(SCALES)}")


def from_scale(z, scale: str) -> np.ndarray:
    """The inverse of :func:`to_scale`."""
    from scipy.special import expit

    z = np.asarray(z, dtype="float64")
    return expit(z) if scale == "logit" else np.exp(z) if scale == "log" else z


def t_interval(values, scale: str = "linear", level: float = 0.95, eps: float = 1e-6) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` computed on ``scale`` and mapped back.

    ``logit`` keeps a fraction's interval inside (0, 1), ``log`` a positive quantity's above 0
    (NaN when a value is <= 0: no log-scale interval exists). NaN with fewer than 2 values.
    """
    from scipy import stats

    x = np.asarray(values, dtype="float64")
    x = x[~np.isnan(x)]
    z = to_scale(x, scale, eps)
    if len(z) < 2 or np.isnan(z).any():
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(z) - 1) * z.std(ddof=1) / np.sqrt(len(z))
    lo, hi = from_scale([z.mean() - half, z.mean() + half], scale)
    return float(lo), float(hi)


def logit_t_interval(fractions, level: float = 0.95, eps: float = 1e-6) -> tuple[float, float]:
    """t-interval of the mean on the logit scale, mapped back: inside (0, 1) whatever the spread.

    For a few repeated measurements of a fraction (a test DSC over seeds). NaN with fewer than 2.
    """
    return t_interval(fractions, "logit", level, eps)


def log_t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """t-interval of the mean on the log scale, mapped back: above 0 (for HD95 over seeds)."""
    return t_interval(values, "log", level)


def pareto_optimal(costs, scores) -> np.ndarray:
    """Which points no other point dominates (cost no higher on every axis, score no lower, one strictly).

    ``costs``: (n,) or (n, k), lower is better; ``scores``: (n,), higher is better. Points with a
    NaN are never optimal and never dominate.
    """
    c = np.asarray(costs, dtype="float64")
    c = c[:, None] if c.ndim == 1 else c
    s = np.asarray(scores, dtype="float64")
    ok = ~(np.isnan(c).any(axis=1) | np.isnan(s))
    optimal = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (np.arange(len(s)) != i)
        no_worse = (c <= c[i]).all(axis=1) & (s >= s[i])
        strictly = (c < c[i]).any(axis=1) | (s > s[i])
        if (others & no_worse & strictly).any():
            optimal[i] = False
    return optimal
