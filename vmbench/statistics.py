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
  bounded quantities measured a few times (a fraction over seeds) a t-interval on the logit scale,
  mapped back, so that it never leaves [0, 1] as a plain t-interval over two seeds does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

__all__ = [
    "RANKING_SCHEMES",
    "RankStability",
    "aggregate_then_rank",
    "bootstrap_mean_ci",
    "bootstrap_rank_stability",
    "consensus_rank",
    "holm",
    "kendall_tau_b",
    "logit_t_interval",
    "min_rank",
    "paired_wilcoxon",
    "rank_then_aggregate",
    "test_then_rank",
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


def paired_wilcoxon(x, y, alternative: str = "two-sided") -> tuple[float, int]:
    """(p-value, number of pairs) of the Wilcoxon signed-rank test of ``x - y`` (NaN pairs dropped).

    All-equal pairs carry no evidence either way: p = 1. Fewer than one informative pair: NaN.
    """
    from scipy import stats

    x, y = np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(len(x))
    if n == 0:
        return float("nan"), 0
    if np.all(x == y):
        return 1.0, n
    return float(stats.wilcoxon(x, y, alternative=alternative).pvalue), n


def min_rank(scores: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """1 = best; tied scores share the best of their ranks; NaN scores rank last."""
    values = scores if higher_is_better else -scores
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
    """Rank the models on ``n_boot`` resamples of the cases (with replacement, seeded)."""
    rank_fn = RANKING_SCHEMES[scheme]
    table = table.dropna(axis=0, how="any")
    models = list(table.columns)
    full = rank_fn(table, higher_is_better)
    rng = np.random.default_rng(seed)
    n = len(table)
    boot = np.empty((n_boot, len(models)), dtype="int64")
    taus = np.empty(n_boot)
    values = table.to_numpy()
    for k in range(n_boot):
        sample = pd.DataFrame(values[rng.integers(0, n, n)], columns=models)
        ranks = rank_fn(sample, higher_is_better)
        boot[k] = ranks.to_numpy()
        taus[k] = kendall_tau_b(full.to_numpy(), boot[k])
    counts = pd.DataFrame(
        {r: (boot == r).sum(axis=0) for r in range(1, len(models) + 1)}, index=models, dtype="int64"
    )
    return RankStability(
        scheme=scheme,
        ranks=full,
        rank_counts=counts,
        p_first=pd.Series((boot == 1).mean(axis=0), index=models),
        mean_rank=pd.Series(boot.mean(axis=0), index=models),
        kendall_tau=taus,
        n_boot=n_boot,
        n_cases=n,
        seed=seed,
    )


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


def logit_t_interval(fractions, level: float = 0.95, eps: float = 1e-6) -> tuple[float, float]:
    """t-interval of the mean on the logit scale, mapped back: inside (0, 1) whatever the spread.

    For a few repeated measurements of a fraction (a test DSC over seeds). NaN with fewer than 2.
    """
    from scipy import stats
    from scipy.special import expit, logit

    x = np.asarray(fractions, dtype="float64")
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    z = logit(np.clip(x, eps, 1 - eps))
    half = stats.t.ppf(0.5 + level / 2, len(z) - 1) * z.std(ddof=1) / np.sqrt(len(z))
    return float(expit(z.mean() - half)), float(expit(z.mean() + half))
