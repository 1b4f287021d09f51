"""Statistics over seeds: centres, bootstrap and Wilson intervals, paired tests, Holm's adjustment.

MSEs span decades and are skewed, so the centre is the geometric mean (mean of log MSE) and the median;
confidence intervals are scipy's BCa bootstrap over seeds (percentile for the median), win rates get a
Wilson interval, and a method is compared with a reference by a two-sided Wilcoxon signed-rank test of
the per-seed log ratios, Holm-adjusted over a pre-registered family of tests. Tables are one row per
method x seed (columns method, seed, the metric, and budget and diverged_at where a function says so).

Only numbers: figures, markdown and sentences about them are rlr_report's. This module imports no other
module of the project, nor torch (tests/test_architecture.py), so anything may use it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import gmean

# ---------------------------------------------------------------------------------------------------
# Centres and intervals
# ---------------------------------------------------------------------------------------------------


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log values)): the centre of MSEs that span decades (scipy.stats.gmean)."""
    return float(gmean(np.asarray(values, dtype=float)))


def validation_score(values: Sequence[float]) -> float:
    """The tuning score of one configuration's runs: the geometric mean of their validation MSEs, where a
    diverged run (NaN or infinite MSE) scores +inf, so that a configuration with any diverged run is never
    chosen over one whose runs all finished."""
    return geometric_mean([value if math.isfinite(value) else math.inf for value in map(float, values)])


def bootstrap_interval(values: Sequence[float], statistic: str = "geometric_mean", confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval (95% by default) over seeds of the geometric mean (BCa, on log values)
    or the median (percentile). One value, or all equal: that value twice."""
    from scipy.stats import bootstrap

    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise TypeError(f"confidence must be a number in (0, 1), got {type(confidence).__name__} ({confidence!r})")
    if not 0.0 < float(confidence) < 1.0:  # NaN fails this too
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if statistic not in ("geometric_mean", "median"):
        raise ValueError(f"statistic must be 'geometric_mean' or 'median', got {statistic!r}")
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    if statistic == "geometric_mean":
        result = bootstrap((np.log(values),), np.mean, confidence_level=confidence, rng=seed)
        return float(np.exp(result.confidence_interval.low)), float(np.exp(result.confidence_interval.high))
    result = bootstrap((values,), np.median, confidence_level=confidence, rng=seed, method="percentile")
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilson_interval(wins: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a win rate wins / n (scipy.stats.binomtest). wins and n must be ints (a
    bool or a float is refused, never truncated), 0 <= wins <= n, n >= 1."""
    from scipy.stats import binomtest

    for name, value in (("wins", wins), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= wins <= n:
        raise ValueError(f"wins must be in [0, n] = [0, {n}], got {wins}")
    interval = binomtest(int(wins), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def summarise_over_seeds(table: pd.DataFrame, metric: str, by: str = "method") -> pd.DataFrame:
    """Per method: seeds, geometric mean with its 95% CI, median with its 95% CI, of one metric column."""
    rows = []
    for method, group in table.groupby(by, sort=False):
        values = group[metric].to_numpy(dtype=float)
        gm_low, gm_high = bootstrap_interval(values, "geometric_mean")
        median_low, median_high = bootstrap_interval(values, "median")
        rows.append({by: method, "seeds": len(values), "geometric mean": geometric_mean(values),
                     "gm CI low": gm_low, "gm CI high": gm_high, "median": float(np.median(values)),
                     "median CI low": median_low, "median CI high": median_high})
    return pd.DataFrame(rows).set_index(by)


# ---------------------------------------------------------------------------------------------------
# Paired by seed: ratios, win rates, the Wilcoxon test, Holm's adjustment
# ---------------------------------------------------------------------------------------------------


def paired_ratios(baselines: Sequence[Any], agents: Sequence[Any], statistic: str = "final_loss") -> np.ndarray:
    """Per seed (matched) of two lists of runs (rlr_results.RunResult): baseline MSE / agent MSE, the
    original's "times more accurate"; statistic is a key of RunResult.summary()."""
    agent_by_seed = {run.seed: run.summary()[statistic] for run in agents}
    pairs = [(run.summary()[statistic], agent_by_seed[run.seed]) for run in baselines if run.seed in agent_by_seed]
    if not pairs:
        raise ValueError("the baseline and agent runs share no seed")
    return np.array([base / agent for base, agent in pairs])


def accuracy_ratio(baselines: Sequence[Any], agents: Sequence[Any], statistic: str = "final_loss") -> float:
    """Geometric mean over seeds of baseline / agent MSE (> 1: the agent is better)."""
    return geometric_mean(paired_ratios(baselines, agents, statistic))


def paired_ratio(table: pd.DataFrame, metric: str, reference: str, method: str) -> pd.Series:
    """Per seed: reference MSE / method MSE (> 1: the method is better), matched on the seed column."""
    pivot = table.pivot(index="seed", columns="method", values=metric)
    return (pivot[reference] / pivot[method]).dropna()


def paired_win_rate(table: pd.DataFrame, metric: str, reference: str, method: str) -> float:
    """Share of seeds on which the method reaches a lower MSE than the reference."""
    return float((paired_ratio(table, metric, reference, method) > 1).mean())


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over m pre-registered tests).

    Hand-written because neither scipy nor numpy ships Holm's method (statsmodels does, a large extra
    dependency for five lines): sort ascending, multiply the i-th smallest by (m - i), take running
    maxima, cap at 1. tests/test_stats.py checks it against the definition and the step-down procedure.
    """
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values, kind="stable")
    scaled = (len(p_values) - np.arange(len(p_values))) * p_values[order]
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def smallest_holm_p(n_seeds: int, n_tests: int) -> float:
    """The smallest Holm-adjusted p-value paired tests over n_seeds can reach: the exact two-sided
    Wilcoxon signed-rank p when every seed points the same way, 2 / 2**n_seeds, times the n_tests of the
    family (Holm's factor for the smallest p). Above 0.05, no comparison could ever be significant."""
    return min(1.0, n_tests * 2.0 / 2 ** n_seeds)


def paired_comparison(table: pd.DataFrame, metric: str, reference: str, method: str) -> dict:
    """method against reference, paired by seed: the geometric-mean ratio reference / method (> 1: the
    method is better) with its 95% bootstrap CI, wins with a Wilson CI, and a two-sided Wilcoxon
    signed-rank test of log(reference) - log(method) (scipy.stats.wilcoxon)."""
    from scipy.stats import wilcoxon

    ratios = paired_ratio(table, metric, reference, method).to_numpy()
    low, high = bootstrap_interval(ratios, "geometric_mean")
    wins = int((ratios > 1).sum())
    win_low, win_high = wilson_interval(wins, len(ratios))
    log_ratios = np.log(ratios)
    p_value = float(wilcoxon(log_ratios).pvalue) if np.any(log_ratios != 0) else 1.0
    return {"ratio": geometric_mean(ratios), "ci_low": low, "ci_high": high, "seeds": len(ratios),
            "wins": wins, "win_rate": wins / len(ratios), "win_ci_low": win_low, "win_ci_high": win_high,
            "seeds_reaching_2": int((ratios >= 2).sum()), "p_value": p_value}


def preregistered_tests(table: pd.DataFrame, comparisons: Sequence[tuple[str, str, str]],
                        metrics: Sequence[str]) -> pd.DataFrame:
    """Every pre-registered (budget, method, reference) comparison on every metric, with Holm-adjusted
    p-values over the whole family (all comparisons x metrics) and whether each holds at 5%.
    A seed where either run diverged is left out of that pair and counted in 'dropped' (shown beside
    the test: dropping favours the side that diverged)."""
    finished = table[table["diverged_at"].isna()]
    rows = []
    for budget, method, reference in comparisons:
        part = table[(table["budget"] == budget) & table["method"].isin([method, reference])]
        seeds = part["seed"].nunique()
        for metric in metrics:
            result = paired_comparison(finished[finished["budget"] == budget], metric, reference, method)
            rows.append({"budget": budget, "method": method, "against": reference, "metric": metric, **result,
                         "dropped": seeds - result["seeds"]})
    tests = pd.DataFrame(rows)
    tests["p_holm"] = holm_adjusted(tests["p_value"])
    tests["significant"] = tests["p_holm"] < 0.05
    return tests


def summary_with_win_rates(table: pd.DataFrame, metric: str, references: dict[str, str]) -> pd.DataFrame:
    """Per method: seeds (runs), of them diverged, geometric mean and median of a metric over the runs
    that finished, with 95% CIs, and the paired win rate against each reference method
    (references: column label -> method; column f"wins vs {label}"). A method whose every run diverged
    keeps a row (NaN statistics)."""
    finished = table[table["diverged_at"].isna() & np.isfinite(table[metric].astype(float))]
    methods = list(table["method"].unique())
    summary = summarise_over_seeds(finished, metric).reindex(methods)
    summary["seeds"] = table.groupby("method", sort=False)["seed"].count()  # runs, diverged ones included
    summary.insert(1, "diverged", table.groupby("method", sort=False)["diverged_at"].count())
    finished_methods = set(finished["method"])
    for label, reference in references.items():
        summary[f"wins vs {label}"] = [paired_win_rate(finished, metric, reference, method)
                                       if {reference, method} <= finished_methods else float("nan")
                                       for method in methods]
    return summary


# ---------------------------------------------------------------------------------------------------
# Tuning-budget curves (Dodge et al. 2019, "Show Your Work"): what k trials of a pool would have found
# ---------------------------------------------------------------------------------------------------


def best_of_k_probabilities(n: int, k: int) -> np.ndarray:
    """P(the i-th best of n configurations is the best of k drawn uniformly with replacement), i = 1..n:
    ((n - i + 1) / n)^k - ((n - i) / n)^k (Dodge et al. 2019, eq. 1, for the best instead of the max).

    Hand-written: the closed form is one line and no maintained package ships it (the paper's own code is
    a script); tests/test_stats.py checks it against enumerating every one of the n^k draws."""
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    survive = ((n - np.arange(n + 1)) / n) ** k  # P(all k draws rank worse than the i best), i = 0..n
    return survive[:-1] - survive[1:]


def budget_curve(validation: Sequence[float], test: Sequence[float], ks: Sequence[int],
                 band: tuple[float, float] = (0.1, 0.9)) -> pd.DataFrame:
    """What k trials of a pool would have found, for each k (Dodge et al. 2019; Sivaprasad et al. 2020):
    the best validation MSE among k configurations drawn from the pool with replacement, its median and
    a band (quantiles of that best, exact from best_of_k_probabilities), its expectation in log space (a
    geometric mean: MSEs span decades), and the expected log test MSE of the configuration the k trials
    pick. A configuration that diverged (NaN or inf validation) ranks last; it is picked only when all k
    draws diverged, whose probability is its own column, and the expectations are over the other draws
    (the pick's test MSE over the picks whose test MSE is finite)."""
    if not (isinstance(band, tuple) and len(band) == 2 and 0.0 < band[0] < band[1] < 1.0):
        raise ValueError(f"band must be two quantiles (low, high) with 0 < low < high < 1, got {band!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must hold ints >= 1 (numbers of trials), got {k!r}")
    validation = np.asarray(validation, dtype=float)
    test = np.asarray(test, dtype=float)
    if validation.shape != test.shape or validation.ndim != 1 or len(validation) == 0:
        raise ValueError(f"validation and test must be two equal-length, non-empty 1-d sequences, got "
                         f"{validation.shape} and {test.shape}")
    validation = np.where(np.isfinite(validation), validation, np.inf)
    order = np.argsort(validation, kind="stable")
    ranked_validation, ranked_test = validation[order], test[order]
    finished = np.isfinite(ranked_validation) & (ranked_validation > 0)
    tested = finished & np.isfinite(ranked_test) & (ranked_test > 0)
    rows = []
    for k in ks:
        weights = best_of_k_probabilities(len(validation), int(k))
        cumulative = np.cumsum(weights)

        def quantile(q: float) -> float:
            return float(ranked_validation[min(int(np.searchsorted(cumulative, q - 1e-12)), len(weights) - 1)])

        def expected(values: np.ndarray, mask: np.ndarray) -> float:
            kept = weights * mask
            return float(np.exp(np.sum(kept[mask] * np.log(values[mask])) / kept.sum())) if kept.sum() > 0 else math.nan

        rows.append({"k": int(k), "best validation MSE, median": quantile(0.5), "band low": quantile(band[0]),
                     "band high": quantile(band[1]),
                     "best validation MSE, expected": expected(ranked_validation, finished),
                     "test MSE of the pick, expected": expected(ranked_test, tested),
                     "P(every trial diverged)": float(1.0 - np.sum(weights * finished))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# The primary family: a Hodges-Lehmann ratio whose CI inverts the same Wilcoxon test at the Holm level
# ---------------------------------------------------------------------------------------------------


def walsh_averages(values: Sequence[float]) -> np.ndarray:
    """(x_i + x_j) / 2 for every i <= j, sorted: the pseudo-median's estimator and the ends of its CI."""
    values = np.asarray(values, dtype=float)
    i, j = np.triu_indices(len(values))
    return np.sort((values[i] + values[j]) / 2.0)


def signed_rank_interval(log_ratios: Sequence[float], alpha: float) -> tuple[float, float, float]:
    """The Hodges-Lehmann estimate of the per-seed log ratios' centre (the median of the Walsh averages)
    and the CI that inverts scipy's two-sided Wilcoxon signed-rank test at level alpha: every shift d
    whose test of log_ratios - d has p >= alpha (its hull, decided at 0 by the test at 0). So the CI
    excludes 0 exactly when scipy's test of log_ratios rejects at alpha: the interval and the test never
    disagree.

    Hand-written because scipy inverts no signed-rank test; the statistic only changes at a Walsh average,
    so testing one shift between each two neighbours (one vectorised scipy call) finds the interval.
    tests/test_stats.py checks it against the textbook order statistics of the Walsh averages."""
    from scipy.stats import wilcoxon

    values = np.asarray(log_ratios, dtype=float)
    if values.ndim != 1 or len(values) < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"log_ratios must hold at least 2 finite values, got {values!r}")
    check_level("alpha", alpha)
    averages = walsh_averages(values)
    estimate = float(np.median(averages))
    edges = np.unique(averages)
    spread = max(float(edges[-1] - edges[0]), 1e-12)
    shifts = np.concatenate([[edges[0] - spread], (edges[:-1] + edges[1:]) / 2.0, [edges[-1] + spread]])
    p_values = wilcoxon(values[None, :] - shifts[:, None], axis=1).pvalue
    accepted = np.flatnonzero(p_values >= alpha)
    if len(accepted) == 0:  # alpha above the largest p the test can give: an empty interval at the estimate
        return estimate, estimate, estimate
    bounds = np.concatenate([[-np.inf], edges, [np.inf]])  # shift s lies between bounds[s] and bounds[s + 1]
    low, high = float(bounds[accepted[0]]), float(bounds[accepted[-1] + 1])
    # At a Walsh average itself scipy drops a zero difference (or ranks a tie), so the test of shift 0 can
    # differ from its neighbours' when 0 is one (a seed with equal MSEs, two seeds that cancel), and ties can
    # make the accepted set non-convex. The hull is then cut or widened at 0 by the test at 0 itself.
    if wilcoxon_p(values) >= alpha:
        low, high = min(low, 0.0), max(high, 0.0)
    elif low <= 0.0 <= high:
        low, high = (math.nextafter(0.0, math.inf), high) if estimate > 0 else (low, math.nextafter(0.0, -math.inf))
    return estimate, low, high


def wilcoxon_p(values: np.ndarray) -> float:
    """scipy's two-sided Wilcoxon signed-rank p of paired log ratios; 1 when there are fewer than 2 or all
    are 0 (nothing to test). The one place the primary family's p-value comes from."""
    from scipy.stats import wilcoxon

    values = np.asarray(values, dtype=float)
    return float(wilcoxon(values).pvalue) if len(values) >= 2 and np.any(values != 0) else 1.0


def paired_validation(method: Sequence[float], reference: Sequence[float]) -> dict:
    """Two methods' MSEs on the same seeds (paired by position; a non-finite one drops its pair): the
    geometric-mean ratio reference / method (> 1: the method is better, as primary_tests' ratio), the seeds
    where the method is lower, and the two-sided Wilcoxon p of the log ratios (wilcoxon_p). Descriptive:
    for readings on the tuning seeds, never a primary test."""
    method, reference = np.asarray(method, dtype=float), np.asarray(reference, dtype=float)
    if method.shape != reference.shape or method.ndim != 1:
        raise ValueError(f"method and reference must be MSEs on the same seeds, got shapes {method.shape} "
                         f"and {reference.shape}")
    kept = np.isfinite(method) & np.isfinite(reference) & (method > 0) & (reference > 0)
    log_ratios = np.log(reference[kept]) - np.log(method[kept])
    return {"ratio": float(np.exp(log_ratios.mean())) if kept.any() else math.nan,
            "wins": int((log_ratios > 0).sum()), "seeds": int(kept.sum()), "p": wilcoxon_p(log_ratios)}


LEARNED_RULE = ("an agent learned when its training returns rose: the last quarter of its training episodes "
                "has higher returns than the first quarter (one-sided Mann-Whitney U, p < 0.05)")
"""Stated before any result; return_rose applies it."""


def return_rose(returns: Sequence[float], alpha: float = 0.05) -> dict:
    """LEARNED_RULE on one agent's training returns in episode order (a diverged episode's return counts as
    it is): the first and last quarters' means, the one-sided Mann-Whitney p (scipy) that the last is
    higher, and `learned` (p < alpha). With fewer than 8 episodes the quarters are too small: learned is
    None (undecided), never a claim."""
    from scipy.stats import mannwhitneyu

    returns = np.asarray(returns, dtype=float)
    if returns.ndim != 1 or not np.isfinite(returns).all():
        raise ValueError("returns must be one finite return per training episode, in order")
    check_level("alpha", alpha)
    quarter = len(returns) // 4
    if quarter < 2:
        return {"first": math.nan, "last": math.nan, "p": math.nan, "learned": None}
    first, last = returns[:quarter], returns[-quarter:]
    p_value = float(mannwhitneyu(last, first, alternative="greater").pvalue)
    return {"first": float(first.mean()), "last": float(last.mean()), "p": p_value, "learned": p_value < alpha}


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """The level of each test's step in Holm's procedure: alpha / (m - i + 1) for the i-th smallest p up to
    the first test Holm does not reject, and that step's level for every test after it (the procedure
    stops there). A test is Holm-significant at alpha exactly when p < its level (the later ones have
    p >= the stopping p >= its level), so a CI at 1 - level excludes the null exactly then."""
    check_level("alpha", alpha)
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values, kind="stable")
    steps = alpha / (len(p_values) - np.arange(len(p_values)))
    levels_sorted = steps.copy()
    failed = np.flatnonzero(p_values[order] >= steps)
    if len(failed):
        levels_sorted[failed[0]:] = steps[failed[0]]
    levels = np.empty_like(levels_sorted)
    levels[order] = levels_sorted
    return levels


def check_level(name: str, value: float) -> float:
    """A probability strictly between 0 and 1 (a test's level, a power), refused with its name otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def minimum_detectable_ratio(log_ratio_sd: float, n_seeds: int, alpha: float, power: float = 0.8) -> float:
    """The smallest ratio exp(d) a two-sided paired test over n_seeds at level alpha detects with the given
    power, when the per-seed log ratios spread with standard deviation log_ratio_sd: the one-sample t
    test's (scipy.stats.nct) with the Wilcoxon test's efficiency 3 / pi under normality (its n counted as
    3n / pi), the usual planning approximation for a signed-rank test."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    check_level("alpha", alpha)
    check_level("power", power)
    if not (np.isfinite(log_ratio_sd) and log_ratio_sd > 0):
        raise ValueError(f"log_ratio_sd must be finite and > 0, got {log_ratio_sd!r}")
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, (int, np.integer)) or n_seeds < 3:
        raise ValueError(f"n_seeds must be an int >= 3, got {n_seeds!r}")
    effective = n_seeds * 3.0 / math.pi
    critical = t.ppf(1.0 - alpha / 2.0, n_seeds - 1)

    def shortfall(effect: float) -> float:
        shift = effect / log_ratio_sd * math.sqrt(effective)
        wrong_side = float(np.nan_to_num(nct.cdf(-critical, n_seeds - 1, shift)))  # ~0, NaN far out in scipy
        return float(nct.sf(critical, n_seeds - 1, shift)) + wrong_side - power

    certain = (critical + 6.0) * log_ratio_sd / math.sqrt(effective)  # a shift whose power is ~1
    return float(math.exp(brentq(shortfall, 1e-12, certain)))


PRIMARY_LIMIT = 8
"""At most this many primary, pre-registered comparisons: Holm over few tests keeps the power."""


def primary_tests(table: pd.DataFrame, comparisons: Sequence[tuple[str, str, str, str]], alpha: float = 0.05,
                  power: float = 0.8) -> pd.DataFrame:
    """The primary family: for each (budget, method, reference, metric), the per-seed ratio reference /
    method (> 1: the method is better) as a Hodges-Lehmann estimate, the two-sided Wilcoxon p-value, Holm
    over the family, the CI inverting the same test at each test's Holm level (holm_levels: the CI
    excludes 1 exactly when the test is significant), wins, and the minimum detectable ratio at that
    power and the family's strictest level (alpha / m) from the comparison's own spread of log ratios.
    A seed where either run diverged is left out of that pair and counted in 'dropped'."""
    if not 1 <= len(comparisons) <= PRIMARY_LIMIT:
        raise ValueError(f"the primary family must hold 1 to {PRIMARY_LIMIT} comparisons, got {len(comparisons)}")
    if len(set(comparisons)) != len(comparisons):
        raise ValueError("the primary family lists a comparison twice")
    finished = table[table["diverged_at"].isna()]
    rows = []
    for budget, method, reference, metric in comparisons:
        part = table[(table["budget"] == budget) & table["method"].isin([method, reference])]
        if not {method, reference} <= set(part["method"]):
            raise ValueError(f"the table has no runs of {method!r} and {reference!r} at budget {budget!r}")
        log_ratios = np.log(paired_ratio(finished[finished["budget"] == budget], metric, reference, method).to_numpy())
        p_value = wilcoxon_p(log_ratios)
        wins = int((log_ratios > 0).sum())
        rows.append({"budget": budget, "method": method, "against": reference, "metric": metric,
                     "seeds": len(log_ratios), "dropped": part["seed"].nunique() - len(log_ratios), "wins": wins,
                     "p_value": p_value, "log_ratios": log_ratios})
    tests = pd.DataFrame(rows)
    tests["p_holm"] = holm_adjusted(tests["p_value"])
    tests["level"] = holm_levels(tests["p_value"], alpha)
    tests["significant"] = tests["p_holm"] < alpha
    intervals = [np.exp(signed_rank_interval(row["log_ratios"], row["level"])) if len(row["log_ratios"]) >= 2
                 else np.full(3, math.nan) for _, row in tests.iterrows()]  # under 2 pairs: nothing to estimate
    for column, values in zip(("ratio", "ci_low", "ci_high"), np.array(intervals, dtype=float).T):
        tests[column] = values
    spreads = [float(np.std(log_ratios, ddof=1)) if len(log_ratios) >= 3 else math.nan for log_ratios in tests["log_ratios"]]
    tests["detectable_ratio"] = [minimum_detectable_ratio(spread, int(seeds), alpha / len(tests), power)
                                 if spread > 0 and seeds >= 3 else float("nan")
                                 for spread, seeds in zip(spreads, tests["seeds"])]
    tests["confidence"] = 1.0 - tests["level"]
    return tests.drop(columns="log_ratios")
