"""The statistics over seeds (rlr_stats) against scipy.stats, hand counts and brute-force definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import rlr_stats as stats
from rlr_results import RunResult


def test_geometric_mean_and_interval_match_scipy():
    values = np.exp(np.random.default_rng(1).normal(-12, 1.5, 20))
    assert stats.geometric_mean(values) == pytest.approx(scipy.stats.gmean(values))
    low, high = stats.bootstrap_interval(values, "geometric_mean")
    direct = scipy.stats.bootstrap((np.log(values),), np.mean, rng=0).confidence_interval
    assert (low, high) == pytest.approx((np.exp(direct.low), np.exp(direct.high)))
    assert low < stats.geometric_mean(values) < high
    median_low, median_high = stats.bootstrap_interval(values, "median")
    assert median_low <= np.median(values) <= median_high


def test_paired_statistics_match_hand_counts():
    table = pd.DataFrame({"method": ["base"] * 4 + ["agent"] * 4, "seed": [0, 1, 2, 3] * 2,
                          "mse": [4.0, 4.0, 1.0, 9.0, 1.0, 2.0, 2.0, 3.0]})
    # per seed base/agent = 4, 2, 0.5, 3: the agent wins on 3 of 4 seeds, 3 of them reach 2x
    assert stats.paired_win_rate(table, "mse", "base", "agent") == 0.75
    claim = stats.paired_comparison(table, "mse", "base", "agent")
    assert claim["ratio"] == pytest.approx((4 * 2 * 0.5 * 3) ** 0.25)
    assert claim["seeds_reaching_2"] == 3 and claim["seeds"] == 4 and claim["wins"] == 3
    summary = stats.summarise_over_seeds(table, "mse")
    assert summary.loc["agent", "median"] == 2.0 and summary.loc["base", "seeds"] == 4


def test_holm_adjustment_matches_its_definition_by_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(20):
        p = rng.uniform(0, 0.2, rng.integers(1, 9))
        m, order = len(p), np.argsort(p)
        expected = np.empty(m)
        for rank, index in enumerate(order):  # max over the smaller-or-equal ranks of (m - j) p_(j)
            expected[index] = min(1.0, max((m - j) * p[order[j]] for j in range(rank + 1)))
        assert stats.holm_adjusted(p) == pytest.approx(expected)


def test_wilson_interval_matches_the_formula():
    for wins, n in ((0, 16), (3, 4), (16, 16), (7, 10)):
        z, phat = scipy.stats.norm.ppf(0.975), wins / n
        centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
        assert stats.wilson_interval(wins, n) == pytest.approx((centre - half, centre + half))


def test_paired_comparison_uses_scipys_wilcoxon_on_log_ratios():
    table = pd.DataFrame({"method": ["base"] * 5 + ["agent"] * 5, "seed": list(range(5)) * 2,
                          "mse": [4.0, 3.0, 5.0, 2.0, 1.0, 1.0, 2.0, 1.0, 3.0, 0.5]})
    result = stats.paired_comparison(table, "mse", "base", "agent")
    ratios = np.array([4.0, 1.5, 5.0, 2 / 3, 2.0])
    assert result["p_value"] == pytest.approx(scipy.stats.wilcoxon(np.log(ratios)).pvalue)
    assert result["wins"] == 4 and result["ratio"] == pytest.approx(scipy.stats.gmean(ratios))
    assert result["seeds_reaching_2"] == 3


def test_the_smallest_holm_p_is_scipys_wilcoxon_with_every_seed_one_way_times_the_tests():
    for n_seeds in (6, 8, 12):
        exact = scipy.stats.wilcoxon(np.arange(1.0, n_seeds + 1), method="exact").pvalue
        assert stats.smallest_holm_p(n_seeds, 14) == pytest.approx(min(1.0, 14 * exact))
    assert stats.smallest_holm_p(8, 14) > 0.05 > stats.smallest_holm_p(12, 14)


def test_bootstrap_interval_rejects_an_unknown_statistic():
    with pytest.raises(ValueError, match="statistic"):
        stats.bootstrap_interval([1.0, 2.0, 3.0], "mean")


def test_bootstrap_interval_refuses_a_confidence_outside_the_open_unit_interval():
    for confidence in (0.0, 1.0, 1.5, -0.05, 95, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="confidence"):
            stats.bootstrap_interval([1.0, 2.0, 3.0], confidence=confidence)
    for confidence in (True, "0.95", None):
        with pytest.raises(TypeError, match="confidence"):
            stats.bootstrap_interval([1.0, 2.0, 3.0], confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):  # checked before the shortcut for one value
        stats.bootstrap_interval([1.0], confidence=2.0)
    values = np.exp(np.random.default_rng(2).normal(0, 1, 12))
    narrow, wide = stats.bootstrap_interval(values, confidence=0.5), stats.bootstrap_interval(values, confidence=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    direct = scipy.stats.bootstrap((values,), np.median, confidence_level=0.8, rng=0, method="percentile")
    assert stats.bootstrap_interval(values, "median", 0.8) == pytest.approx(
        (direct.confidence_interval.low, direct.confidence_interval.high))


def test_wilson_interval_is_scipys_binomtest_wilson_interval():
    for (wins, n), confidence in itertools.product(((0, 1), (0, 16), (3, 4), (16, 16), (7, 10), (41, 97)),
                                                   (0.8, 0.95, 0.99)):
        expected = scipy.stats.binomtest(wins, n).proportion_ci(confidence_level=confidence, method="wilson")
        assert stats.wilson_interval(wins, n, confidence) == pytest.approx((expected.low, expected.high))
    assert stats.wilson_interval(np.int64(3), np.int64(4)) == stats.wilson_interval(3, 4)  # numpy ints are ints


@pytest.mark.parametrize("wins, n, error, named", [
    (True, 4, TypeError, "wins"), (1, True, TypeError, "n"), (1.0, 4, TypeError, "wins"), (1, 4.0, TypeError, "n"),
    ("1", 4, TypeError, "wins"), (2.5, 4, TypeError, "wins"), (5, 4, ValueError, "wins"), (-1, 4, ValueError, "wins"),
    (0, 0, ValueError, "n"), (0, -3, ValueError, "n")])
def test_wilson_interval_refuses_what_is_not_a_count_of_wins_out_of_n(wins, n, error, named):
    with pytest.raises(error, match=rf"^{named} must"):
        stats.wilson_interval(wins, n)


def holm_step_down(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's procedure as he wrote it: sort ascending; reject H_(1), H_(2), ... while
    p_(i) <= alpha / (m - i + 1) (i from 1), and stop at the first that fails."""
    m, order = len(p_values), np.argsort(p_values, kind="stable")
    rejected = np.zeros(m, dtype=bool)
    for i, index in enumerate(order, start=1):
        if p_values[index] > alpha / (m - i + 1):
            break
        rejected[index] = True
    return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(7)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = rng.choice([rng.uniform(0, 0.1), rng.uniform(0, 1)], size=m)  # many near the thresholds
        p[rng.random(m) < 0.2] = p[0]  # ties
        adjusted = stats.holm_adjusted(p)
        assert ((adjusted >= p) & (adjusted <= 1.0)).all()
        for alpha in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
            np.testing.assert_array_equal(adjusted <= alpha, holm_step_down(p, alpha), err_msg=f"{p} at {alpha}")
    assert stats.holm_adjusted([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_paired_ratios_of_runs_match_by_seed_and_the_accuracy_ratio_is_their_geometric_mean():
    def run(seed: int, losses: list[float]) -> RunResult:
        return RunResult("m", {"seed": seed}, {"loss": np.array(losses)}, 1.0)

    baselines = [run(0, [4.0, 2.0]), run(1, [9.0, 8.0]), run(2, [1.0, 1.0])]
    agents = [run(1, [3.0, 2.0]), run(0, [1.0, 1.0]), run(5, [1.0, 1.0])]  # other order, seed 2 missing
    np.testing.assert_allclose(stats.paired_ratios(baselines, agents), [2.0, 4.0])
    np.testing.assert_allclose(stats.paired_ratios(baselines, agents, "median_last_100"), [3.0, 8.5 / 2.5])
    assert stats.accuracy_ratio(baselines, agents) == pytest.approx(math.sqrt(8.0))
    with pytest.raises(ValueError, match="share no seed"):
        stats.paired_ratios(baselines[2:], agents)


def test_validation_score_is_the_geometric_mean_with_a_diverged_run_scoring_infinity():
    assert stats.validation_score([1e-4, 1e-2]) == pytest.approx(1e-3)
    assert stats.validation_score([1e-4, float("nan")]) == math.inf
    assert stats.validation_score([1e-4, float("inf")]) == math.inf


def test_preregistered_tests_adjust_over_the_whole_family_and_count_dropped_seeds():
    rows = [{"budget": budget, "method": method, "seed": seed, "mse": value * (1 + slope * seed),
             "other": value * (1 + slope * seed), "diverged_at": 3 if (budget, method, seed) == ("b", "agent", 2) else None}
            for budget in ("a", "b") for seed in range(7)
            for method, value, slope in (("reference", 2.0, 0.1), ("agent", 1.0 if budget == "a" else 3.0, 0.2))]
    table = pd.DataFrame(rows)
    comparisons = [("a", "agent", "reference"), ("b", "agent", "reference")]
    tests = stats.preregistered_tests(table, comparisons, ["mse"])
    assert list(tests["dropped"]) == [0, 1] and list(tests["seeds"]) == [7, 6]
    assert list(tests["wins"]) == [7, 0] and (tests["ratio"] > 1).tolist() == [True, False]
    # every seed one way: the exact two-sided Wilcoxon p is 2 / 2**n; Holm over the family of 2
    assert tests["p_value"].to_numpy() == pytest.approx([2 / 2 ** 7, 2 / 2 ** 6])
    assert tests["p_holm"].to_numpy() == pytest.approx([2 * 2 / 2 ** 7, 2 / 2 ** 6])
    assert tests["significant"].all()
    # the same tests in a family of four (two metrics): Holm's factors grow and none holds at 5%
    family = stats.preregistered_tests(table, comparisons, ["mse", "other"])
    assert family["p_value"].to_numpy() == pytest.approx([2 / 2 ** 7, 2 / 2 ** 7, 2 / 2 ** 6, 2 / 2 ** 6])
    assert family["p_holm"].to_numpy() == pytest.approx(stats.holm_adjusted(family["p_value"]))
    assert family["p_holm"].to_numpy() == pytest.approx([4 / 64] * 4) and not family["significant"].any()


def test_a_summary_with_win_rates_counts_diverged_runs_and_keeps_a_method_that_always_diverged():
    table = pd.DataFrame({"method": ["ref"] * 3 + ["m"] * 3 + ["gone"] * 3, "seed": [0, 1, 2] * 3,
                          "mse": [2.0, 2.0, 2.0, 1.0, 3.0, float("nan"), 1.0, 1.0, 1.0],
                          "diverged_at": [None] * 5 + [4] + [1] * 3})
    summary = stats.summary_with_win_rates(table, "mse", {"ref": "ref"})
    assert list(summary.index) == ["ref", "m", "gone"]
    assert list(summary["seeds"]) == [3, 3, 3] and list(summary["diverged"]) == [0, 1, 3]
    assert summary.loc["m", "wins vs ref"] == 0.5 and summary.loc["ref", "wins vs ref"] == 0.0
    assert summary.loc["m", "geometric mean"] == pytest.approx(math.sqrt(3.0))
    assert math.isnan(summary.loc["gone", "geometric mean"]) and math.isnan(summary.loc["gone", "wins vs ref"])
