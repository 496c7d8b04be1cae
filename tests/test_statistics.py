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


def test_wilcoxon_signed_rank_methods_against_scipy():
    rng = np.random.default_rng(11)
    d = rng.normal(0.01, 0.03, 15)
    p, method = S.wilcoxon_signed_rank(d)
    assert method == "exact" and p == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    tied = np.array([0.01, 0.01, 0.02, -0.03, 0.04, 0.05, 0.0])  # a tie and a zero
    p, method = S.wilcoxon_signed_rank(tied)
    assert method == "asymptotic"
    assert p == pytest.approx(stats.wilcoxon(tied[tied != 0], method="approx").pvalue)
    # Averaging seeds leaves floating-point noise: 0.3 - 0.1 - 0.2 is not 0, but is no evidence either.
    noisy = np.array([0.3 - 0.1 - 0.2, 0.02, 0.04, -0.01])
    assert S.wilcoxon_signed_rank(noisy)[0] == pytest.approx(stats.wilcoxon([0.02, 0.04, -0.01], method="exact").pvalue)
    assert math.isnan(S.wilcoxon_signed_rank([0.0, 0.0])[0])
    one_sided = S.wilcoxon_signed_rank(d, "greater")[0]
    assert one_sided == pytest.approx(stats.wilcoxon(d, method="exact", alternative="greater").pvalue)


def test_wilcoxon_min_p_by_enumeration():
    import itertools

    for n in range(1, 9):
        # Rank sums of all 2^n sign patterns; the most extreme is every sign the same.
        sums = [sum(r for r, s in zip(range(1, n + 1), signs) if s) for signs in itertools.product((0, 1), repeat=n)]
        top = n * (n + 1) // 2
        expected = min(1.0, 2 * sum(w >= top for w in sums) / 2**n)
        assert S.wilcoxon_min_p(n) == pytest.approx(expected)
        assert S.wilcoxon_min_p(n, "greater") == pytest.approx(expected / 2 if n > 1 or expected < 1 else 0.5)
    assert S.wilcoxon_min_p(5) > 0.05 > S.wilcoxon_min_p(6)  # 0.0625 vs 0.03125
    assert S.wilcoxon_min_p(6) == pytest.approx(stats.wilcoxon(np.arange(1, 7) / 10, method="exact").pvalue)


def test_log_scale_t_interval_by_hand():
    values = np.array([10.0, 40.0])
    # log 10, log 40: mean log 20, sd |log 4| / sqrt 2; t(0.975, 1) = tan(0.475 pi).
    factor = math.exp(math.tan(math.pi * 0.475) * (math.log(4) / math.sqrt(2)) / math.sqrt(2))
    lo, hi = S.log_t_interval(values)
    assert lo == pytest.approx(20 / factor) and hi == pytest.approx(20 * factor) and lo > 0
    assert all(math.isnan(v) for v in S.log_t_interval([0.0, 3.0]))  # no log of 0
    assert S.t_interval([0.5997, 0.9993], "logit") == S.logit_t_interval([0.5997, 0.9993])
    plain = S.t_interval([1.0, 3.0], "linear")
    assert plain == pytest.approx((2 - math.tan(math.pi * 0.475), 2 + math.tan(math.pi * 0.475)))
    with pytest.raises(ValueError, match="scale 'cube'"):
        S.to_scale([1.0], "cube")


def test_pareto_optimal_by_hand():
    # cost, score: A (1, 0.70) B (2, 0.80) C (3, 0.75: B is cheaper and better) D (2, 0.80: ties B) E (NaN)
    costs = [1, 2, 3, 2, np.nan]
    scores = [0.70, 0.80, 0.75, 0.80, 0.99]
    assert S.pareto_optimal(costs, scores).tolist() == [True, True, False, True, False]
    # Two costs: F is cheaper on one axis only, so it stays on the front.
    two = S.pareto_optimal([[1, 5], [2, 1], [3, 6]], [0.7, 0.7, 0.6])
    assert two.tolist() == [True, True, False]


@pytest.mark.parametrize("scheme", ["aggregate-then-rank", "rank-then-aggregate"])
def test_vectorised_bootstrap_matches_a_plain_loop(scheme):
    rng = np.random.default_rng(4)
    table = pd.DataFrame(rng.uniform(0.5, 0.9, (17, 4)).round(2), columns=list("ABCD"))  # rounded: some ties
    result = S.bootstrap_rank_stability(table, scheme, n_boot=150, seed=9)
    draws = np.random.default_rng(9)
    counts = pd.DataFrame(0, index=list("ABCD"), columns=range(1, 5))
    for _ in range(150):
        sample = table.iloc[draws.integers(0, 17, 17)].reset_index(drop=True)
        if scheme == "aggregate-then-rank":
            score = {m: sample[m].mean() for m in "ABCD"}
            ranks = {m: 1 + sum(score[o] > score[m] + 1e-12 for o in "ABCD") for m in "ABCD"}
        else:
            per_case = [{m: 1 + sum(row[o] > row[m] for o in "ABCD") for m in "ABCD"} for _, row in sample.iterrows()]
            mean_rank = {m: sum(r[m] for r in per_case) / 17 for m in "ABCD"}
            ranks = {m: 1 + sum(mean_rank[o] < mean_rank[m] - 1e-12 for o in "ABCD") for m in "ABCD"}
        for m, r in ranks.items():
            counts.at[m, r] += 1
    pd.testing.assert_frame_equal(result.rank_counts, counts, check_dtype=False, check_names=False)
