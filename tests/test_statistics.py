"""vmbench.statistics against independent oracles: scipy, and values worked out by hand here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vmbench import statistics as S


def test_holm_by_hand():
    # m = 4; sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max.
    adjusted = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and does not count in m; values cap at 1.
    np.testing.assert_allclose(S.holm([0.2, np.nan, 0.7]), [0.4, np.nan, 0.7])
    assert S.holm([0.9, 0.8])[0] == 1.0


def test_paired_wilcoxon_matches_scipy_after_dropping_nan_pairs():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.5, 0.9, 20), rng.uniform(0.5, 0.9, 20)
    x[3], y[7] = np.nan, np.nan
    keep = ~(np.isnan(x) | np.isnan(y))
    p, n = S.paired_wilcoxon(x, y)
    assert n == 18 and p == pytest.approx(stats.wilcoxon(x[keep], y[keep]).pvalue)
    assert S.paired_wilcoxon([0.5, 0.6], [0.5, 0.6]) == (1.0, 2)
    p_nan, n0 = S.paired_wilcoxon([np.nan], [0.1])
    assert math.isnan(p_nan) and n0 == 0


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(1, 5, 7), rng.integers(1, 5, 7)
        expected = stats.kendalltau(a, b).statistic
        got = S.kendall_tau_b(a, b)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


# A hand-built case table: 6 cases x 3 models (higher is better).
CASES = pd.DataFrame(
    {
        "A": [0.9, 0.8, 0.7, 0.9, 0.6, 0.8],  # mean 0.7833
        "B": [0.8, 0.85, 0.6, 0.7, 0.65, 0.8],  # mean 0.7333
        "C": [0.5, 0.9, 0.9, 0.6, 0.7, 0.5],  # mean 0.6833
    }
)


def test_aggregate_then_rank_by_hand():
    assert S.aggregate_then_rank(CASES).to_dict() == {"A": 1, "B": 2, "C": 3}
    # Lower is better (e.g. HD95): the order flips.
    assert S.aggregate_then_rank(CASES, higher_is_better=False).to_dict() == {"A": 3, "B": 2, "C": 1}


def test_rank_then_aggregate_by_hand():
    # Per-case ranks (ties share the best): A 1,3,2,1,3,1 (mean 11/6); B 2,2,3,2,2,1 (2); C 3,1,1,3,1,3 (2).
    assert S.rank_then_aggregate(CASES).to_dict() == {"A": 1, "B": 2, "C": 2}


def test_test_then_rank_by_hand():
    # A beats B beats C on every one of 6 cases: one-sided exact Wilcoxon p = 1/2**6 = 0.0156 < 0.05.
    ordered = pd.DataFrame({"C": np.arange(6) / 10, "A": np.arange(6) / 10 + 0.3, "B": np.arange(6) / 10 + 0.1})
    assert 1 / 2**6 < 0.05
    assert S.test_then_rank(ordered).to_dict() == {"C": 3, "A": 1, "B": 2}
    # The hand-built table has no significant pair at n = 6: all tie for first.
    assert set(S.test_then_rank(CASES).to_numpy()) == {1}


def test_rank_stability_of_a_dominant_model():
    ordered = pd.DataFrame({"A": np.linspace(0.6, 0.9, 30) + 0.05, "B": np.linspace(0.6, 0.9, 30)})
    result = S.bootstrap_rank_stability(ordered, n_boot=200, seed=1)
    assert result.p_first["A"] == 1.0 and result.p_first["B"] == 0.0
    assert np.all(result.kendall_tau == 1.0) and result.tau_median == 1.0
    assert (result.rank_counts.sum(axis=1) == 200).all()


def test_rank_stability_is_seeded_and_counts_add_up():
    rng = np.random.default_rng(5)
    table = pd.DataFrame(rng.uniform(0.6, 0.9, (25, 4)), columns=list("WXYZ"))
    first = S.bootstrap_rank_stability(table, n_boot=100, seed=7)
    again = S.bootstrap_rank_stability(table, n_boot=100, seed=7)
    pd.testing.assert_frame_equal(first.rank_counts, again.rank_counts)
    assert first.p_first.sum() >= 1.0 - 1e-12  # ties can put two models first in one sample
    # Tau of each bootstrap ranking against the full one, recomputed with scipy.
    ranks = S.aggregate_then_rank(table)
    rng2 = np.random.default_rng(7)
    sample = table.to_numpy()[rng2.integers(0, 25, 25)]
    boot_ranks = S.aggregate_then_rank(pd.DataFrame(sample, columns=table.columns))
    assert first.kendall_tau[0] == pytest.approx(stats.kendalltau(ranks, boot_ranks).statistic)


def test_consensus_rank_by_hand():
    result = S.consensus_rank({"isic": pd.Series({"A": 1, "B": 2, "C": 3}), "synapse": pd.Series({"A": 3, "B": 1, "C": 2})})
    assert result["mean_rank"].to_dict() == {"B": 1.5, "A": 2.0, "C": 2.5}
    assert result["consensus_rank"].to_dict() == {"B": 1, "A": 2, "C": 3}


def test_intervals_stay_in_range():
    # Two seeds of mIoU 0.5997 and 0.9993: a plain t-interval reaches past 1.
    seeds = np.array([0.5997, 0.9993])
    half = stats.t.ppf(0.975, 1) * seeds.std(ddof=1) / np.sqrt(2)
    assert seeds.mean() + half > 1
    lo, hi = S.logit_t_interval(seeds)
    assert 0 <= lo < seeds.min() and seeds.max() < hi <= 1  # wide with 2 seeds, as it should be, but bounded
    values = np.random.default_rng(2).uniform(0.7, 0.8, 40)
    lo, hi = S.bootstrap_mean_ci(values, n_boot=500, seed=0)
    assert values.min() <= lo < values.mean() < hi <= values.max()
