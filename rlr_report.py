"""Figures, tables and plain-text readings of runs, shared by the notebooks.

Notebooks call these so that no plotting or summarising code is copied between them. Every number a
reading prints is computed here from the run's own series, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from rlr_core import Config, PolynomialData, RunResult, sample_points, TaskConfig

ACTION_NAMES = ("decrease", "keep", "increase")


def save_figure(fig: plt.Figure, figures_dir: str | Path, name: str) -> Path:
    """Save as figures_dir/name.png (stable names, so the README can embed them)."""
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def steps_axis(result: RunResult) -> np.ndarray:
    """1-based index of the logged values: epoch or optimiser step after which each was measured."""
    return np.arange(1, len(result.series["loss"]) + 1)


def plot_loss_history(result: RunResult, title: str = "Adam loss history", xlabel: str = "epoch") -> plt.Figure:
    """The original's figure 1: full-data MSE per epoch (or step), log-log."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.loglog(steps_axis(result), result.series["loss"], lw=0.8, label=result.method)
    ax.set(xlabel=f"{xlabel} (log scale)", ylabel="full-data MSE (log scale)", title=title)
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)
    return fig


@torch.no_grad()
def plot_examples(model: torch.nn.Module, data: PolynomialData, task: TaskConfig, n_examples: int = 3,
                  seed: int = 0) -> plt.Figure:
    """The original's figure 2: true polynomials vs polynomials from the predicted coefficients."""
    picks = np.random.default_rng(seed).choice(len(data.targets), size=n_examples, replace=False)
    x = sample_points(task).numpy()
    powers = x[None, :] ** np.arange(task.n_coefficients)[:, None]
    device = next(model.parameters()).device
    predicted = model(data.inputs[picks].to(device)).double().cpu().numpy()
    fig, axes = plt.subplots(1, n_examples, figsize=(4 * n_examples, 3.3), sharey=False)
    for ax, index, coefficients in zip(np.atleast_1d(axes), picks, predicted):
        ax.plot(x, data.inputs[index].double().cpu().numpy(), "o", ms=4, label="true polynomial")
        ax.plot(x, coefficients @ powers, "-", label="from predicted coefficients")
        ax.set(xlabel="x", ylabel="p(x)", title=f"example {index}")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_agent_runs(results: Sequence[RunResult], labels: Sequence[str] | None = None) -> plt.Figure:
    """The original's figure 3 plus two panels: loss (log-log) above lr (log-log), epsilon, reward."""
    labels = labels or [r.method for r in results]
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1, 1.5]})
    for result, label in zip(results, labels):
        steps = steps_axis(result)
        axes[0].loglog(steps, result.series["loss"], lw=0.7, label=label)
        axes[1].loglog(steps, result.series["lr"], lw=0.7, label=label)
        axes[2].semilogx(steps, result.series["epsilon"], lw=1.0, label=label)
        axes[3].plot(steps, result.series["reward"], lw=0.5, label=label)
    axes[0].set(ylabel="full-data MSE\n(log scale)", title="RL-scheduled Adam: loss and learning rate")
    axes[1].set(ylabel="learning rate\n(log scale)")
    axes[2].set(ylabel="epsilon")
    axes[3].set(ylabel="reward\nL_t - L_{t+1}\n(symlog)", xlabel="environment step (log scale)")
    axes[3].set_yscale("symlog", linthresh=1e-8)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def agent_behaviour(result: RunResult, grid_size: int, window: int = 1000) -> dict:
    """Numbers that say what an agent did: where it kept the lr, how often it sat at the grid's ends."""
    series = result.series
    lr_index, actions, explored = series["lr_index"], series["action"], series["explored"].astype(bool)
    greedy_actions = actions[~explored]
    greedy_share = {name: float(np.mean(greedy_actions == a)) if len(greedy_actions) else float("nan")
                    for a, name in enumerate(ACTION_NAMES)}
    last = slice(-window, None)
    return {"steps": int(len(lr_index)),
            "final_loss": float(series["loss"][-1]),
            "median_last_100": float(np.median(series["loss"][-100:])),
            "explored_share": float(explored.mean()),
            "greedy_share": greedy_share,
            "at_lowest_lr_share": float(np.mean(lr_index == 0)),
            "at_highest_lr_share": float(np.mean(lr_index == grid_size - 1)),
            "median_lr_last_window": float(np.median(series["lr"][last])),
            "mean_index_last_window": float(np.mean(lr_index[last])),
            "final_lr": float(series["lr"][-1]),
            "window": min(window, int(len(lr_index)))}


def describe_agent_run(result: RunResult, grid_size: int, label: str) -> str:
    """A markdown paragraph, written from this run's numbers, of what the agent did."""
    b = agent_behaviour(result, grid_size)
    greedy = ", ".join(f"{name} {share:.0%}" for name, share in b["greedy_share"].items())
    return (f"**{label}** ({b['steps']} steps): final MSE {b['final_loss']:.3e}, median of the last 100 "
            f"{b['median_last_100']:.3e}. {b['explored_share']:.0%} of the actions were random "
            f"(epsilon); the greedy actions were: {greedy}. The lr sat at the lowest grid value "
            f"(1e-5 by default) {b['at_lowest_lr_share']:.0%} of the steps and at the highest "
            f"{b['at_highest_lr_share']:.0%}. Over the last {b['window']} steps the median lr was "
            f"{b['median_lr_last_window']:.2e} (mean grid index {b['mean_index_last_window']:.1f}); "
            f"the final lr was {b['final_lr']:.2e}.")


def comparison_table(runs: dict[str, tuple[RunResult, int, float]]) -> pd.DataFrame:
    """One row per run: label -> (result, optimiser steps, passes over the data)."""
    rows = []
    for label, (result, optimiser_steps, passes) in runs.items():
        summary = result.summary()
        rows.append({"method": label, "optimiser steps": optimiser_steps, "passes over data": passes,
                     "final MSE": summary["final_loss"], "median last 100": summary["median_last_100"],
                     "wall seconds": round(summary["wall_seconds"], 1)})
    return pd.DataFrame(rows).set_index("method")


def accuracy_ratio(baseline: RunResult, agent: RunResult, statistic: str = "final_loss") -> float:
    """The original's "times more accurate": baseline MSE / agent MSE (> 1 means the agent is better)."""
    return baseline.summary()[statistic] / agent.summary()[statistic]


def claim_verdict(baseline: RunResult, agent: RunResult, budget: str) -> str:
    """One sentence: does "two times more accurate" hold for this pair, on both statistics?"""
    final, robust = accuracy_ratio(baseline, agent), accuracy_ratio(baseline, agent, "median_last_100")
    holds = "HOLDS" if final >= 2 and robust >= 2 else "does NOT hold"
    return (f"{budget}: baseline/agent MSE ratio = {final:.2f} on the final value, {robust:.2f} on the "
            f"median of the last 100; the claim of 2x {holds} in this single run.")


def plot_comparison(curves: dict[str, RunResult], title: str) -> plt.Figure:
    """Loss curves of several runs against their own logged index (epoch or step), log-log."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, result in curves.items():
        ax.loglog(steps_axis(result), result.series["loss"], lw=0.8, label=label)
    ax.set(xlabel="passes over the data = epochs (baseline) or full-batch steps (log scale)",
           ylabel="full-data MSE (log scale)", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def baseline_optimiser_steps(config: Config) -> int:
    """Optimiser steps of the mini-batch baseline: epochs x ceil(n_examples / batch_size)."""
    return config.baseline.epochs * -(-config.task.n_examples // config.baseline.batch_size)


# ---------------------------------------------------------------------------------------------------
# Statistics over seeds. MSEs span decades and are skewed, so the centre is the geometric mean (mean of
# log MSE) and the median; confidence intervals are scipy's BCa bootstrap over seeds.
# ---------------------------------------------------------------------------------------------------


def geometric_mean(values: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(values))))


def bootstrap_interval(values: Sequence[float], statistic: str = "geometric_mean", confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """95% bootstrap confidence interval over seeds of the geometric mean or the median."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    if statistic == "geometric_mean":
        result = bootstrap((np.log(values),), np.mean, confidence_level=confidence, rng=seed)
        return float(np.exp(result.confidence_interval.low)), float(np.exp(result.confidence_interval.high))
    if statistic == "median":
        result = bootstrap((values,), np.median, confidence_level=confidence, rng=seed, method="percentile")
        return float(result.confidence_interval.low), float(result.confidence_interval.high)
    raise ValueError(f"statistic must be 'geometric_mean' or 'median', got {statistic!r}")


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


def paired_ratio(table: pd.DataFrame, metric: str, reference: str, method: str) -> pd.Series:
    """Per seed: reference MSE / method MSE (> 1: the method is better), matched on the seed column."""
    pivot = table.pivot(index="seed", columns="method", values=metric)
    return (pivot[reference] / pivot[method]).dropna()


def paired_win_rate(table: pd.DataFrame, metric: str, reference: str, method: str) -> float:
    """Share of seeds on which the method reaches a lower MSE than the reference."""
    return float((paired_ratio(table, metric, reference, method) > 1).mean())


def claim_ratio(table: pd.DataFrame, metric: str, baseline: str, agent: str) -> dict:
    """The original's "times more accurate" over seeds: geometric mean of baseline/agent with its CI."""
    ratios = paired_ratio(table, metric, baseline, agent).to_numpy()
    low, high = bootstrap_interval(ratios, "geometric_mean")
    return {"ratio": geometric_mean(ratios), "ci_low": low, "ci_high": high, "seeds": len(ratios),
            "seeds_reaching_2": int((ratios >= 2).sum())}
