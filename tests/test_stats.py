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


# ---------------------------------------------------------------------------------------------------
# Budget curves, the Holm-matched signed-rank interval, the minimum detectable ratio, the primary family
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(1, 1), (3, 1), (4, 2), (4, 3), (5, 4)])
def test_best_of_k_probabilities_match_enumerating_every_draw(n, k):
    counts = np.zeros(n)
    for draw in itertools.product(range(n), repeat=k):
        counts[min(draw)] += 1  # configuration i is the i-th best
    np.testing.assert_allclose(stats.best_of_k_probabilities(n, k), counts / n ** k, rtol=0, atol=1e-15)


def test_the_budget_curve_matches_brute_force_resampling_of_the_pool():
    """Expected best validation and the pick's test MSE (geometric), the median and the band, against
    every one of the n^k draws; a diverged configuration is picked only when every draw diverged."""
    validation = np.array([3e-5, 1e-5, 2e-5, np.nan, 5e-5])
    test = np.array([4e-5, 2e-5, 1e-5, np.nan, 9e-5])
    curve = stats.budget_curve(validation, test, [1, 2, 3]).set_index("k")
    for k in (1, 2, 3):
        bests, picks, diverged = [], [], 0
        for draw in itertools.product(range(5), repeat=k):
            scores = [validation[i] if np.isfinite(validation[i]) else np.inf for i in draw]
            best = draw[int(np.argmin(scores))]
            bests.append(np.min(scores))
            if np.isfinite(validation[best]):
                picks.append(best)
            else:
                diverged += 1
        finished = [validation[i] for i in picks]
        assert curve.loc[k, "best validation MSE, expected"] == pytest.approx(stats.geometric_mean(finished), rel=1e-12)
        assert curve.loc[k, "test MSE of the pick, expected"] == pytest.approx(
            stats.geometric_mean([test[i] for i in picks]), rel=1e-12)
        assert curve.loc[k, "P(every trial diverged)"] == pytest.approx(diverged / 5 ** k)
        ordered = np.sort(bests)
        assert curve.loc[k, "best validation MSE, median"] == ordered[int(np.ceil(0.5 * len(ordered))) - 1]
        assert curve.loc[k, "band high"] == ordered[int(np.ceil(0.9 * len(ordered))) - 1]
    assert curve.loc[1, "band high"] == np.inf  # one trial in ten or more draws the diverged configuration
    untested = stats.budget_curve([1e-5, 2e-5, 3e-5], [np.nan, 1e-5, 1e-5], [1]).iloc[0]
    assert untested["P(every trial diverged)"] == 0.0  # a finished run whose test MSE is missing did not diverge
    assert untested["best validation MSE, expected"] == pytest.approx(stats.geometric_mean([1e-5, 2e-5, 3e-5]))


def signed_rank_critical_count(n: int, alpha: float) -> int:
    """The textbook k: the largest count with P(T <= k - 1) <= alpha / 2 under the null, T the signed-rank
    statistic, its distribution by enumerating all 2^n sign patterns (the brute-force definition)."""
    ranks = np.arange(1, n + 1)
    totals = np.array([ranks[np.array(signs, dtype=bool)].sum() for signs in itertools.product([0, 1], repeat=n)])
    k = 0
    while np.mean(totals <= k) <= alpha / 2:
        k += 1
    return k


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_signed_rank_interval_is_the_textbook_order_statistics_of_the_walsh_averages(alpha):
    """[W_(k), W_(N + 1 - k)] with k from the exact null distribution (Hollander & Wolfe), here from all
    2^10 sign patterns; the estimate is the median of the Walsh averages."""
    values = np.random.default_rng(3).normal(0.2, 0.5, 10)
    averages = np.sort([(values[i] + values[j]) / 2 for i in range(10) for j in range(i, 10)])
    k = signed_rank_critical_count(10, alpha)
    estimate, low, high = stats.signed_rank_interval(values, alpha)
    assert estimate == pytest.approx(np.median(averages))
    assert (low, high) == (pytest.approx(averages[k - 1]), pytest.approx(averages[len(averages) - k]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("case", ["normal", "a zero", "a cancelling pair", "ties"])
def test_the_interval_excludes_zero_exactly_when_scipys_wilcoxon_rejects(seed, case):
    """Also where 0 is itself a Walsh average (a seed with equal MSEs, two seeds that cancel) or ties
    make the accepted set non-convex: there scipy's test at 0 drops or ranks differently."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    values = rng.normal(rng.uniform(-0.3, 0.3), 0.4, 22)
    if case == "a zero":
        values[0] = 0.0
    elif case == "a cancelling pair":
        values[1] = -values[0]
    elif case == "ties":
        values = np.round(values, 1)
    for alpha in (0.05, 0.01, 0.05 / 8, 0.2):
        _, low, high = stats.signed_rank_interval(values, alpha)
        assert (low > 0 or high < 0) == (wilcoxon(values).pvalue < alpha)


def test_holm_levels_decide_each_test_as_the_holm_adjusted_p_does():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p_values = rng.uniform(0, 0.1, rng.integers(1, 9)) ** rng.uniform(0.5, 3)
        levels = stats.holm_levels(p_values, 0.05)
        np.testing.assert_array_equal(p_values < levels, stats.holm_adjusted(p_values) < 0.05)
    order = np.array([0.001, 0.02, 0.045])  # the textbook steps: alpha / 3, alpha / 2, alpha
    np.testing.assert_allclose(stats.holm_levels(order, 0.05), [0.05 / 3, 0.05 / 2, 0.05])
    np.testing.assert_allclose(stats.holm_levels([0.001, 0.03, 0.02], 0.05), [0.05 / 3, 0.05, 0.05 / 2])  # in any order
    np.testing.assert_allclose(stats.holm_levels([0.001, 0.04, 0.03], 0.05), [0.05 / 3, 0.025, 0.025])  # stopped at 0.03
    np.testing.assert_allclose(stats.holm_levels([0.6, 0.7], 0.05), [0.025, 0.025])  # capped Holm p: the first step


def test_the_minimum_detectable_ratio_has_the_stated_power_by_simulation():
    """At the returned ratio, scipy's Wilcoxon test over 32 normal log ratios rejects in about 80% of
    4000 simulated studies (the planning approximation's error is a few points)."""
    from scipy.stats import wilcoxon

    ratio = stats.minimum_detectable_ratio(0.41, 32, 0.05 / 8)
    simulated = np.random.default_rng(1).normal(np.log(ratio), 0.41, (4000, 32))
    assert abs(np.mean(wilcoxon(simulated, axis=1).pvalue < 0.05 / 8) - 0.8) < 0.04
    assert stats.minimum_detectable_ratio(0.41, 64, 0.05 / 8) < ratio < stats.minimum_detectable_ratio(0.41, 16, 0.05 / 8)


def paired_table(effects: dict[str, float], n_seeds: int = 32, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(np.log(1e-4), 0.3, n_seeds)
    rows = [{"budget": "same optimiser steps", "method": method, "seed": index, "diverged_at": None,
             "test_mse": value * np.exp(-effect + rng.normal(0, 0.4))}
            for method, effect in {"reference": 0.0, **effects}.items() for index, value in enumerate(base)]
    return pd.DataFrame(rows)


def test_the_primary_family_holds_at_most_eight_tests_and_its_intervals_agree_with_its_tests():
    effects = {f"method {index}": effect for index, effect in enumerate([0.0, 0.1, 0.3, 0.6, -0.5, 0.05, 1.0, -0.2])}
    table = paired_table(effects)
    comparisons = [("same optimiser steps", method, "reference", "test_mse") for method in effects]
    tests = stats.primary_tests(table, comparisons)
    assert len(tests) == 8
    np.testing.assert_allclose(tests["p_holm"], stats.holm_adjusted(tests["p_value"]))
    assert ((tests["ci_low"] > 1) | (tests["ci_high"] < 1)).tolist() == tests["significant"].tolist()
    assert tests["significant"].any() and not tests["significant"].all()
    assert (tests["detectable_ratio"] > 1).all()
    with pytest.raises(ValueError, match="1 to 8 comparisons"):
        stats.primary_tests(table, comparisons + [("same optimiser steps", "method 0", "method 1", "test_mse")])
    with pytest.raises(ValueError, match="no runs of 'nobody'"):
        stats.primary_tests(table, [("same optimiser steps", "nobody", "reference", "test_mse")])


@pytest.mark.parametrize("call, message", [
    (lambda: stats.budget_curve([1, 2], [1, 2], [1], band=(0.9, 0.1)), "band must be two quantiles"),
    (lambda: stats.budget_curve([1, 2], [1, 2], [1.5]), "ks must hold ints >= 1"),
    (lambda: stats.minimum_detectable_ratio(0.4, 32, 2.0), "alpha must be a number in"),
    (lambda: stats.minimum_detectable_ratio(0.4, 32, 0.05, power=1.5), "power must be a number in"),
    (lambda: stats.holm_levels([0.1], alpha=-1), "alpha must be a number in"),
    (lambda: stats.signed_rank_interval([0.1, 0.2, 0.3], 1.5), "alpha must be a number in"),
])
def test_the_protocols_statistics_refuse_bad_inputs_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_return_rose_applies_the_learned_rule_with_scipys_mann_whitney():
    from scipy.stats import mannwhitneyu
    import rlr_stats as stats
    rising = np.linspace(0.0, 1.0, 40)
    result = stats.return_rose(rising)
    assert result["learned"] is True and result["first"] < result["last"]
    assert result["p"] == pytest.approx(mannwhitneyu(rising[-10:], rising[:10], alternative="greater").pvalue)
    assert stats.return_rose(rising[::-1])["learned"] is False
    assert stats.return_rose(np.ones(7))["learned"] is None  # quarters of 1: undecided, never a claim
    with pytest.raises(ValueError, match="returns"):
        stats.return_rose([1.0, np.nan] * 8)
