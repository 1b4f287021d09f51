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
