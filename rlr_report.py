"""Figures, tables and plain-text readings of runs, shared by the notebooks.

Notebooks call these so that no plotting or summarising code is copied between them. Every number a
reading prints is computed from the runs' own series and tables, never typed in; the statistics behind
them (geometric means, bootstrap and Wilson intervals, paired tests, Holm) are rlr_stats'. The study
layer (rlr_study) produces the runs and tables; this module only reads them.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from rlr_core import PolynomialData, TaskConfig, sample_points
from rlr_results import RunResult
from rlr_stats import bootstrap_interval, geometric_mean, paired_ratios, paired_validation, smallest_holm_p

ACTION_NAMES = ("decrease", "keep", "increase")


def save_figure(fig: plt.Figure, figures_dir: str | Path, name: str) -> Path:
    """Save as figures_dir/name.png (stable names, so the README can embed them)."""
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def steps_axis(length: int) -> np.ndarray:
    """1-based index of logged values: the epoch or optimiser step after which each was measured."""
    return np.arange(1, length + 1)


def stacked_series(runs: Sequence[RunResult], name: str = "loss") -> np.ndarray:
    """[runs, steps] array of one series; a run that diverged early is padded with NaN (no values)."""
    length = max(len(run.series[name]) for run in runs)
    stacked = np.full((len(runs), length), np.nan)
    for row, run in zip(stacked, runs):
        row[:len(run.series[name])] = run.series[name]
    return stacked


def draw_curve(ax: plt.Axes, runs: Sequence[RunResult], name: str, label: str, **style) -> None:
    """One run: its curve. Several: the median over seeds with the interquartile range as a band."""
    values = stacked_series(runs, name)
    steps = steps_axis(values.shape[1])
    if len(runs) == 1:
        ax.plot(steps, values[0], label=label, **style)
        return
    low, median, high = np.nanpercentile(values, [25, 50, 75], axis=0)
    line, = ax.plot(steps, median, label=f"{label} (median of {len(runs)} seeds, IQR band)", **style)
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.25, lw=0)


def plot_loss_history(runs: Sequence[RunResult], title: str = "Adam loss history",
                      xlabel: str = "epoch", label: str = "mini-batch Adam, lr 1e-3") -> plt.Figure:
    """The original's figure 1: full-data MSE per epoch (or step), log-log."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    draw_curve(ax, runs, "loss", label, lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel=f"{xlabel} (log scale)", ylabel="full-data MSE (log scale)",
           title=title)
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


def plot_agent_runs(groups: dict[str, Sequence[RunResult]]) -> plt.Figure:
    """The original's figure 3 plus two panels: loss (log-log) above lr (log-log), epsilon, reward."""
    fig, axes = plt.subplots(4, 1, figsize=(8, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1, 1.5]})
    for label, runs in groups.items():
        for ax, name, width in zip(axes, ("loss", "lr", "epsilon", "reward"), (0.7, 0.7, 1.0, 0.5)):
            draw_curve(ax, runs, name, label, lw=width)
    axes[0].set(yscale="log", ylabel="full-data MSE\n(log scale)",
                title="RL-scheduled Adam: loss and learning rate")
    axes[1].set(yscale="log", ylabel="learning rate\n(log scale)")
    axes[2].set(ylabel="epsilon")
    axes[3].set(ylabel="reward\nL_t - L_{t+1}\n(symlog)", xlabel="environment step (log scale)", xscale="log")
    axes[3].set_yscale("symlog", linthresh=1e-8)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def agent_behaviour(runs: Sequence[RunResult], grid_size: int, window: int = 1000) -> dict:
    """What agents did, averaged over runs: where they kept the lr, how often they sat at the grid's ends."""
    per_run = []
    for run in runs:
        series = run.series
        lr_index, actions, explored = series["lr_index"], series["action"], series["explored"].astype(bool)
        greedy = actions[~explored]
        last = slice(-window, None)
        per_run.append({
            "steps": len(lr_index), "final_loss": float(series["loss"][-1]),
            "median_last_100": float(np.median(series["loss"][-100:])),
            "explored_share": float(explored.mean()),
            **{f"greedy_{name}_share": float(np.mean(greedy == a)) if len(greedy) else float("nan")
               for a, name in enumerate(ACTION_NAMES)},
            "at_lowest_lr_share": float(np.mean(lr_index == 0)),
            "at_highest_lr_share": float(np.mean(lr_index == grid_size - 1)),
            "median_lr_last_window": float(np.median(series["lr"][last])),
            "mean_index_last_window": float(np.mean(lr_index[last])),
            "final_lr": float(series["lr"][-1]), "window": min(window, len(lr_index))})
    averaged = {key: float(np.mean([row[key] for row in per_run])) for key in per_run[0]}
    averaged["final_loss"] = geometric_mean([row["final_loss"] for row in per_run])
    averaged["median_last_100"] = geometric_mean([row["median_last_100"] for row in per_run])
    averaged["runs"] = len(runs)
    return averaged


def describe_agent_run(runs: Sequence[RunResult], grid_size: int, label: str) -> str:
    """A markdown paragraph, written from the runs' numbers (means over seeds), of what the agent did."""
    b = agent_behaviour(runs, grid_size)
    over = f"{b['runs']} seeds, " if b["runs"] > 1 else ""
    mean = "geometric mean " if b["runs"] > 1 else ""
    greedy = ", ".join(f"{name} {b[f'greedy_{name}_share']:.0%}" for name in ACTION_NAMES)
    return (f"**{label}** ({over}{b['steps']:.0f} steps): {mean}final MSE {b['final_loss']:.3e}, median of "
            f"the last 100 {b['median_last_100']:.3e}. {b['explored_share']:.0%} of the actions were random "
            f"(epsilon); the greedy actions were: {greedy}. The lr sat at the lowest grid value "
            f"{b['at_lowest_lr_share']:.0%} of the steps and at the highest {b['at_highest_lr_share']:.0%}. "
            f"Over the last {b['window']:.0f} steps the median lr was {b['median_lr_last_window']:.2e} "
            f"(mean grid index {b['mean_index_last_window']:.1f}); the final lr was {b['final_lr']:.2e}.")


def comparison_table(runs: dict[str, tuple[Sequence[RunResult], int, float]]) -> pd.DataFrame:
    """One row per method: label -> (runs over seeds, optimiser steps, passes over the data).

    MSE columns are geometric means over seeds (the value itself for one seed).
    """
    rows = []
    for label, (results, optimiser_steps, passes) in runs.items():
        summaries = [result.summary() for result in results]
        rows.append({"method": label, "seeds": len(results), "optimiser steps": optimiser_steps,
                     "passes over data": passes,
                     "final MSE": geometric_mean([s["final_loss"] for s in summaries]),
                     "median last 100": geometric_mean([s["median_last_100"] for s in summaries]),
                     "wall seconds per run": round(float(np.mean([s["wall_seconds"] for s in summaries])), 1)})
    return pd.DataFrame(rows).set_index("method")


def claim_verdict(baselines: Sequence[RunResult], agents: Sequence[RunResult], budget: str) -> str:
    """One sentence: does "two times more accurate" (baseline MSE at least 2 times the agent's) hold, on the
    final value and the median of the last 100? Ratios in the one convention (fold)."""
    final, robust = paired_ratios(baselines, agents), paired_ratios(baselines, agents, "median_last_100")
    holds = "HOLDS" if geometric_mean(final) >= 2 and geometric_mean(robust) >= 2 else "does NOT hold"
    if len(final) == 1:
        return (f"{budget}: the agent's MSE is {fold(final[0])} than the baseline's on the final value, "
                f"{fold(robust[0])} on the median of the last 100; the claim of 2 times lower {holds} in this single run.")
    low, high = bootstrap_interval(final)
    return (f"{budget}: the agent's MSE, geometric mean over {len(final)} seeds, is "
            f"{fold_interval(geometric_mean(final), low, high)} than the baseline's on the final value (95% CI), "
            f"{fold(geometric_mean(robust))} on the median of the last 100; {int((final >= 2).sum())} of "
            f"{len(final)} seeds reach 2 times lower; the claim of 2 times lower {holds}.")


def plot_comparison(curves: dict[str, Sequence[RunResult]], title: str) -> plt.Figure:
    """Loss curves of several methods against their own logged index (epoch or step), log-log."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in curves.items():
        draw_curve(ax, runs, "loss", label, lw=0.8)
    ax.set(xscale="log", yscale="log",
           xlabel="passes over the data = epochs (baseline) or full-batch steps (log scale)",
           ylabel="full-data MSE (log scale)", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_intervals(summary: pd.DataFrame, title: str, xlabel: str = "test MSE") -> plt.Figure:
    """Dot-and-interval chart: geometric mean over seeds with its 95% bootstrap CI, one row per method,
    best first; a summary indexed by (panel, method), e.g. task x method, gets one panel per task."""
    if summary.index.nlevels == 1:
        panels = {"": summary}
    else:
        panels = {panel: summary.loc[panel] for panel in dict.fromkeys(summary.index.get_level_values(0))}
    rows = sum(len(part) for part in panels.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.0 + 0.32 * rows + 0.5 * len(panels)), squeeze=False)
    for ax, (panel, part) in zip(axes[:, 0], panels.items()):
        ordered = part.sort_values("geometric mean")
        y = np.arange(len(ordered))
        errors = [ordered["geometric mean"] - ordered["gm CI low"], ordered["gm CI high"] - ordered["geometric mean"]]
        ax.errorbar(ordered["geometric mean"], y, xerr=errors, fmt="o", ms=4, capsize=3,
                    label="geometric mean over seeds, 95% bootstrap CI")
        ax.set_yticks(y, ordered.index, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(panel, fontsize=9)
        ax.grid(True, axis="x", which="major", alpha=0.3)
    axes[-1, 0].set_xlabel(f"{xlabel} (log scale)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


SUMMARY_KINDS = {"original": ("the original's methods", "tab:gray"), "schedule": ("tuned schedules", "tab:blue"),
                 "lr_free": ("learning-rate-free optimisers, tuned", "tab:green"),
                 "agent": ("RL agents learning within the run, tuned", "tab:orange"),
                 "controller": ("learned controllers, trained once, frozen", "tab:red"),
                 "pbt": ("Population Based Training", "tab:purple")}
"""The summary figure's groups, in reading order, with their legend label and colour."""


def plot_summary(rows: pd.DataFrame, references: Sequence[str], headroom: dict | None, title: str,
                 xlabel: str = "test MSE") -> plt.Figure:
    """Every method at a glance: geometric mean over seeds with its CI (columns 'geometric mean', 'gm CI
    low', 'gm CI high'), one row per method, grouped and coloured by 'kind' (SUMMARY_KINDS order, best
    first within a group), a method's 'note' (e.g. its compute) after its name; the references drawn as
    dashed vertical lines through every group; headroom ({'label', 'low', 'high'}), the per-run pick's CI,
    shaded across the figure."""
    unknown = sorted(set(rows["kind"]) - set(SUMMARY_KINDS))
    if unknown:
        raise ValueError(f"rows: unknown kind(s) {unknown}; known: {list(SUMMARY_KINDS)}")
    missing = [label for label in references if label not in set(rows["method"])]
    if missing:
        raise ValueError(f"references {missing} are not rows of the figure")
    ordered = pd.concat([rows[rows["kind"] == kind].sort_values("geometric mean") for kind in SUMMARY_KINDS
                         if (rows["kind"] == kind).any()], ignore_index=True)
    fig, ax = plt.subplots(figsize=(9, 2.6 + 0.3 * len(ordered)))
    y = np.arange(len(ordered))
    if headroom is not None:
        ax.axvspan(headroom["low"], headroom["high"], color="gold", alpha=0.3, label=headroom["label"])
    for kind, (label, colour) in SUMMARY_KINDS.items():
        part = ordered[ordered["kind"] == kind]
        if part.empty:
            continue
        errors = [part["geometric mean"] - part["gm CI low"], part["gm CI high"] - part["geometric mean"]]
        ax.errorbar(part["geometric mean"], part.index, xerr=errors, fmt="o", ms=5, capsize=3, color=colour, label=label)
    for style, reference in zip(("--", ":", "-."), references):
        value = float(ordered.loc[ordered["method"] == reference, "geometric mean"].iloc[0])
        ax.axvline(value, color="black", ls=style, lw=0.9, label=f"reference: {reference}")
    names = [f"{method} ({note})" if isinstance(note, str) and note else method
             for method, note in zip(ordered["method"], ordered.get("note", [""] * len(ordered)))]
    ax.set_yticks(y, names, fontsize=8)
    for tick, method in zip(ax.get_yticklabels(), ordered["method"]):
        tick.set_fontweight("bold" if method in references else "normal")
    for boundary in np.flatnonzero(ordered["kind"].to_numpy()[1:] != ordered["kind"].to_numpy()[:-1]):
        ax.axhline(boundary + 0.5, color="0.8", lw=0.6)  # between two groups
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{xlabel} (geometric mean over seeds, 95% bootstrap CI; log scale, lower is better)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.07), ncol=2, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_lr_trajectories(schedules: dict[str, Sequence[RunResult]], agents: dict[str, Sequence[RunResult]],
                         title: str, lr_range: tuple[float, float]) -> plt.Figure:
    """Learning rate per step, median over seeds with IQR band (log-log): schedules dashed, agents
    solid, the y axis clipped to lr_range (a schedule that decays to 0 would otherwise stretch it)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, runs in schedules.items():
        draw_curve(ax, runs, "lr", f"{label} (schedule)", lw=1.0, ls="--")
    for label, runs in agents.items():
        draw_curve(ax, runs, "lr", f"{label} (agent)", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="optimiser step (log scale)", ylim=lr_range,
           ylabel="learning rate (log scale)", title=title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def formatted(table: pd.DataFrame, formats: dict[str, str]) -> pd.DataFrame:
    """A copy of table with some columns as formatted strings (format spec per column, e.g. '.3e', '.0%').

    Unlike pandas' Styler, the result shows as a plain table in HTML and in text (papermill, nbconvert,
    code hosts), not as '<Styler at 0x...>'. NaN shows as '-'."""
    shown = table.copy()
    for column, spec in formats.items():
        if column in shown:
            shown[column] = [("-" if pd.isna(value) else format(value, spec)) for value in shown[column]]
    return shown


def least_squares_mse(data: PolynomialData, task: TaskConfig) -> float:
    """MSE of the coefficients that a linear least-squares fit (numpy.linalg.lstsq, float64) recovers
    from the data's values: the task's own limit (the map from 20 noise-free values to 5 coefficients is
    linear and exactly determined), to compare with a network's MSE."""
    x = sample_points(task).numpy()
    powers = x[:, None] ** np.arange(task.n_coefficients)[None, :]
    inputs, targets = data.inputs.double().cpu().numpy(), data.targets.double().cpu().numpy()
    coefficients, *_ = np.linalg.lstsq(powers, inputs.T, rcond=None)
    return float(np.mean((coefficients.T - targets) ** 2))


def least_squares_reading(least_squares: float, network: float) -> str:
    """One sentence on what the network's MSE means beside the task's own limit."""
    return (f"A linear least-squares fit recovers the coefficients from the same inputs with an MSE of "
            f"{least_squares:.1e}, {network / least_squares:.0e} times below the baseline network's final "
            f"training MSE ({network:.2e}): the inverse problem is linear and exactly determined, so an MSE of "
            f"this size measures how closely a ReLU network imitates one fixed linear map, not how hard the "
            f"polynomials are to recover.")


def plot_training_returns(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    """Return of each training episode (a new task each), one panel per agent: does training improve?"""
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (label, history) in zip(axes[0], histories.items()):
        ax.plot(history["episode"], history["return"], ".", ms=4, label="episode return")
        window = max(1, len(history) // 10)
        ax.plot(history["episode"], history["return"].rolling(window, min_periods=1).mean(),
                label=f"rolling mean ({window} episodes)")
        ax.set(xlabel="training episode (a new task each)", ylabel="return (sum of rewards)", title=label)
        ax.title.set_fontsize(9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def divergence_report(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: method, seed, diverged_at (<NA> if it finished), n_logged.

    Diverged runs stop early, so a table of final losses alone would hide them; print this beside it.
    """
    rows = [(result.method, result.seed, result.diverged_at, len(result.series["loss"])) for result in results]
    table = pd.DataFrame(rows, columns=["method", "seed", "diverged_at", "n_logged"])
    table["diverged_at"] = table["diverged_at"].astype("Int64")
    return table


# ---------------------------------------------------------------------------------------------------
# Generated readings and markdown tables of the studies: every number in them comes from the results.
# ---------------------------------------------------------------------------------------------------

METRIC_WORDS = {"train_median_last_100": "training MSE (median of the last 100)", "train_final": "final training MSE",
                "test_mse": "test MSE"}
"""How each metric column is named in prose."""


def fold(ratio: float, spec: str = ".2f") -> str:
    """The study's one ratio convention: ratio = reference MSE / method MSE as 'k times lower' (> 1: the
    method is better) or 'k times higher' (< 1), k >= 1 always ('1.00 times lower' for a tie)."""
    if ratio is None or not (math.isfinite(ratio) and ratio > 0):
        return "not comparable"
    return f"{ratio:{spec}} times lower" if ratio >= 1 else f"{1.0 / ratio:{spec}} times higher"


def fold_interval(ratio: float, low: float, high: float, spec: str = ".2f") -> str:
    """A ratio with its CI in the convention of fold: '1.40 times lower [1.10 times lower, 1.80 times
    lower]', each bound folded on its own, so every number printed is >= 1."""
    return f"{fold(ratio, spec)} [{fold(low, spec)}, {fold(high, spec)}]"


def times_mse(mse: float, reference_mse: float, reference: str, metric: str = "test MSE", spec: str = ".2f") -> str:
    """'2.00 times higher test MSE than <reference>': an MSE against a reference's, in the one convention."""
    return f"{fold(reference_mse / mse, spec)} {metric} than {reference}"


def interval(value: float, low: float, high: float, spec: str = ".2f") -> str:
    """'value [low, high]' with one format spec."""
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def outcome(row: dict | pd.Series) -> str:
    """A pre-registered comparison's result in words: better or worse when the Holm-adjusted test says
    so at 5%, else no significant difference."""
    if not row["significant"]:
        return "no significant difference"
    return "better" if row["ratio"] > 1 else "worse"


def markdown_table(frame: pd.DataFrame) -> str:
    """A pandas DataFrame (already formatted as strings where needed) as a GitHub markdown table.
    (pandas' to_markdown needs the tabulate package; these four lines do not.)"""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def claims_markdown(claims: pd.DataFrame) -> str:
    """Comparisons as a markdown table: the agent's MSE against the reference's (fold) with its CI, wins
    with a Wilson CI, the Holm-adjusted p-value and the outcome (the two main metrics only)."""
    rows = [{"budget": row["budget"], "agent": row["method"], "against": row["against"],
             "metric": METRIC_WORDS[row["metric"]], "agent's MSE [95% CI]": fold_interval(row["ratio"], row["ci_low"], row["ci_high"]),
             "wins [95% CI]": f"{row['wins']}/{row['seeds']} [{row['win_ci_low']:.0%}, {row['win_ci_high']:.0%}]"
                              + (f", {row['dropped']} seeds dropped (diverged)" if row.get("dropped") else ""),
             "Holm p": f"{row['p_holm']:.3g}", "agent is": outcome(row)}
            for _, row in claims[claims["primary"]].iterrows()]
    return markdown_table(pd.DataFrame(rows))


def summary_markdown(summary: pd.DataFrame, metric: str, references: Sequence[str]) -> str:
    """Per method (best first): geometric mean of the metric over seeds with its 95% CI, diverged runs,
    and the win rates against the references (summary_with_win_rates' columns)."""
    ordered = summary.sort_values("geometric mean")
    rows = [{"method": method, f"{METRIC_WORDS[metric]}, geometric mean [95% CI]":
             "-" if pd.isna(pd.to_numeric(row[["geometric mean", "gm CI low", "gm CI high"]])).any() else
             interval(row["geometric mean"], row["gm CI low"], row["gm CI high"], ".2e"),
             "diverged": f"{int(row['diverged'])}/{int(row['seeds'])}",
             **{f"wins vs {label}": ("-" if pd.isna(row[f"wins vs {label}"]) else f"{row[f'wins vs {label}']:.0%}")
                for label in references}}
            for method, row in ordered.iterrows()]
    return markdown_table(pd.DataFrame(rows))


def benchmark_reading(claims: pd.DataFrame, summary: pd.DataFrame, agents: Sequence[str], tuned: str,
                      baseline: str, lr_free: str | None = None) -> str:
    """The descriptive reading in sentences, from the descriptive family of comparisons and the test-MSE summary
    at the same optimiser steps (summary_with_win_rates); lr_free: the label of the pre-registered
    learning-rate-free reference, if there is one."""
    primary = claims[claims["primary"]]
    ordered = summary.sort_values("geometric mean")
    best, tuned_row = ordered.index[0], summary.loc[tuned]
    lines = [f"At the same optimiser steps the lowest test MSE (geometric mean over seeds) is that of **{best}** "
             f"({interval(*ordered.iloc[0][['geometric mean', 'gm CI low', 'gm CI high']], '.2e')}); the tuned "
             f"constant lr reaches {interval(*tuned_row[['geometric mean', 'gm CI low', 'gm CI high']], '.2e')}."]
    if lr_free is not None:
        lines.append(lr_free_reading(primary, summary, agents, tuned, lr_free))
    for agent in agents:
        rows = primary[(primary["method"] == agent) & (primary["against"] == tuned)]
        better = rows[rows["significant"] & (rows["ratio"] > 1)]
        worse = rows[rows["significant"] & (rows["ratio"] < 1)]
        lines.append(f"**{agent}** against the tuned constant lr, over {len(rows)} descriptive comparisons "
                     f"(budgets x metrics): significantly better in {len(better)}, significantly worse in "
                     f"{len(worse)}, no significant difference in {len(rows) - len(better) - len(worse)}.")
    claim = primary[(primary["against"] == baseline) & (primary["ratio"] >= 2) & primary["significant"]
                    & (primary["ci_low"] > 1)]
    against_baseline = primary[primary["against"] == baseline]
    if claim.empty:
        lines.append(f"The original's claim, \"two times more accurate\" than the original baseline, is supported "
                     f"(2 times lower or more, and significantly lower) in none of the {len(against_baseline)} "
                     "descriptive comparisons with that baseline (the primary family holds the verdict on it).")
    else:
        where = "; ".join(f"{row['method']}, {row['budget']}, {METRIC_WORDS[row['metric']]}: "
                          f"{fold_interval(row['ratio'], row['ci_low'], row['ci_high'])}" for _, row in claim.iterrows())
        lines.append(f"The original's claim, \"two times more accurate\" than the original baseline (2 times lower or more, "
                     f"significantly above 1), is supported in {len(claim)} of the {len(against_baseline)} "
                     f"descriptive comparisons with that baseline: {where}.")
    return "\n\n".join(lines)


def lr_free_reading(primary: pd.DataFrame, summary: pd.DataFrame, agents: Sequence[str], tuned: str,
                    lr_free: str) -> str:
    """Where the learning-rate-free reference stands (test MSE against the tuned constant) and where each
    agent stands against it, on both primary metrics (ratio reference / agent with its CI)."""
    row = summary.loc[lr_free]
    sentences = [f"The learning-rate-free optimiser picked on validation data, **{lr_free}**, reaches a test MSE of "
                 f"{interval(*row[['geometric mean', 'gm CI low', 'gm CI high']], '.2e')}, "
                 f"{times_mse(row['geometric mean'], summary.loc[tuned, 'geometric mean'], 'the tuned constant lr')}."]
    for agent in agents:
        rows = primary[(primary["method"] == agent) & (primary["against"] == lr_free)]
        parts = [f"{METRIC_WORDS[test['metric']]} {fold_interval(test['ratio'], test['ci_low'], test['ci_high'])} "
                 f"({'agent ' if test['significant'] else ''}{outcome(test)})" for _, test in rows.iterrows()]
        sentences.append(f"**{agent}** against it (the agent's MSE, paired by seed): " + "; ".join(parts) + ".")
    return " ".join(sentences)


def log_decrease(run: RunResult) -> float:
    """log L_first - log L_last over a run's logged training losses: the controllers' objective (their
    telescoping return), computed the same way for any method."""
    losses = run.series["loss"]
    return float(np.log(losses[0]) - np.log(losses[-1])) if len(losses) else float("nan")


def controller_reading(claims: pd.DataFrame, summary: pd.DataFrame, best: str, references: dict[str, str],
                       curve: pd.DataFrame, returns: dict[str, float], headroom: str, headroom_mse: float) -> str:
    """Where the best learned controller stands (test MSE, pre-registered comparisons on both primary
    metrics), whether the goal is met (a paired test-MSE ratio CI above 1 against the tuned constant and
    cosine), whether it maximised its own objective (curve: its training episodes; returns: mean frozen
    log decrease of the training loss on the evaluation seeds, per method label) and, for each goal
    reference it does not beat, which of the two reasons the data show. references: role ('the tuned
    constant lr', 'cosine annealing', 'the best schedule', 'the best learning-rate-free optimiser') -> label."""
    primary = claims[claims["primary"] & (claims["method"] == best)]
    row = summary.loc[best]
    lines = [f"**{best}** reaches a test MSE of {interval(*row[['geometric mean', 'gm CI low', 'gm CI high']], '.2e')} "
             f"(geometric mean over {int(row['seeds'])} evaluation seeds); the per-seed pick among the schedules "
             f"on validation data ({headroom}, one run of each candidate per seed), reaches {headroom_mse:.2e}."]
    for role, label in references.items():
        parts = [f"{METRIC_WORDS[test['metric']]} {fold_interval(test['ratio'], test['ci_low'], test['ci_high'])} "
                 f"({outcome(test)})" for _, test in primary[primary["against"] == label].iterrows()]
        named = role if label == role or label.startswith(role.removeprefix("the ")) else f"{role} ({label})"
        lines.append(f"Against {named} (the controller's MSE, paired by seed, descriptive Holm): " + "; ".join(parts) + ".")
    test = primary[primary["metric"] == "test_mse"].set_index("against")
    goal_roles = ("the tuned constant lr", "cosine annealing")
    missed = [role for role in goal_roles if not test.loc[references[role], "ci_low"] > 1]
    first, last = (curve.groupby("round")["return"].mean().iloc[index] for index in (0, -1))
    lines.append(f"The goal, a paired test-MSE CI that lies wholly on the lower side against both the tuned constant "
                 f"lr and cosine annealing, is **{'not met' if missed else 'met'}**. Its own objective (the return, log L_0 - log L_T "
                 f"per run): the mean over its first round of training episodes is {first:.2f}, over its last "
                 f"{last:.2f}; frozen on the evaluation seeds it is {returns[best]:.2f}, against "
                 + " and ".join(f"{returns[references[role]]:.2f} for {role}" for role in goal_roles) + ".")
    for role in missed:
        mine, theirs = returns[best], returns[references[role]]
        lines.append(f"Why it does not beat {role}: " + (
            f"frozen on new tasks it decreases the training loss less ({mine:.2f} against {theirs:.2f}), so on its "
            "own objective the policy it learned is worse than that schedule." if mine < theirs else
            f"it decreases the training loss as much or more ({mine:.2f} against {theirs:.2f}), yet its test MSE is "
            "not lower: the return rewards the training loss, and held-out data do not follow it."))
    return "\n\n".join(lines)


def controller_costs(controllers: dict, tuning: pd.DataFrame, runs: dict[str, Sequence[RunResult]],
                     steps: int, family_tuning_steps: int, selection: dict[str, tuple[int, float]] | None = None
                     ) -> pd.DataFrame:
    """What each learned controller cost: its training (episodes, optimiser steps, seconds), its tuning
    (every configuration trained, plus selection: label -> the optimiser steps and seconds of further
    trainings its pick needed, e.g. the learning curves' other agents), and one frozen run, beside a tuned
    family's one-off tuning."""
    rows, selection = [], selection or {}
    for label, trained in controllers.items():
        tried = tuning[tuning["controller"] == label]
        extra_steps, extra_seconds = selection.get(label, (0, 0.0))
        rows.append({"method": label, "training episodes": len(trained.curve),
                     "training optimiser steps": trained.training_optimiser_steps,
                     "training seconds": trained.training_seconds,
                     "tuning: optimiser steps": int(tried["training episodes"].sum()) * steps + int(extra_steps),
                     "tuning: seconds": float(tried["training seconds"].sum()) + float(extra_seconds),
                     "seconds per frozen run": float(np.mean([run.wall_seconds for run in runs[label]]))})
    rows.append({"method": "a tuned family (schedule or optimiser)", "training episodes": 0,
                 "training optimiser steps": 0, "training seconds": 0.0,
                 "tuning: optimiser steps": family_tuning_steps, "tuning: seconds": float("nan"),
                 "seconds per frozen run": float("nan")})
    return pd.DataFrame(rows).set_index("method")


def plot_pbt_population(history: pd.DataFrame, seed: int) -> plt.Figure:
    """One seed's PBT population per interval: each member's validation MSE (top) and lr (bottom); a ring
    marks an interval that continued another member's checkpoint (an exploit, then a perturbed lr)."""
    part = history[history["seed"] == seed]
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for member, rows in part.groupby("member"):
        exploited = rows[rows["exploited"]]
        for ax, column in zip(axes, ("validation_mse", "lr")):
            line, = ax.plot(rows["step"], rows[column], marker=".", label=f"member {member}")
            ax.scatter(exploited["step"], exploited[column], s=70, facecolors="none", edgecolors=line.get_color())
    for ax, label in zip(axes, ("validation MSE", "learning rate")):
        ax.set_yscale("log")
        ax.set_ylabel(label)
    axes[0].set_title(f"PBT population, seed {seed} (rings: exploited a better member, then perturbed)")
    axes[0].legend(fontsize=7, ncol=4)
    axes[1].set_xlabel("optimiser step")
    fig.tight_layout()
    return fig


def headroom_reading(summary: pd.DataFrame, tuned: str, honest: str, hindsight: str, chosen: Sequence[str]) -> str:
    """How much a per-run choice among the schedules gains over the tuned constant (test MSE): picked per
    seed on validation (honest) and in hindsight on the test set (biased low), and what was picked."""
    ratio = {label: summary.loc[tuned, "geometric mean"] / summary.loc[label, "geometric mean"] for label in (honest, hindsight)}
    counts = pd.Series(list(chosen)).value_counts()
    picks = ", ".join(f"{label} ({count})" for label, count in counts.items())
    return (f"Picked per seed on validation data, **{honest}** reaches a test MSE of "
            f"{interval(*summary.loc[honest, ['geometric mean', 'gm CI low', 'gm CI high']], '.2e')}: "
            f"{fold(ratio[honest])} than the tuned constant lr's: what a per-run choice among these schedules gains "
            f"here, paying one run of each per seed. Picked in hindsight on the test set itself it would seem "
            f"{fold(ratio[hindsight])}: that gap is the bias of a minimum over noisy runs. Picked on validation, per "
            f"seed: {picks}.")


def tuning_markdown(chosen: dict[str, dict], edges: dict[str, dict[str, str]], budget: int) -> str:
    """Per family: the chosen configuration and whether each value is inside the configurations tried."""
    rows = [{"family": name, "configurations": budget,
             "chosen": ", ".join(f"{key} = {value:.3g}" for key, value in params.items()),
             "chosen value within the values tried": ", ".join(f"{key}: {where}" for key, where in edges[name].items())}
            for name, params in chosen.items()]
    return markdown_table(pd.DataFrame(rows))


def learning_table(returns: dict[str, Sequence[float]]) -> pd.DataFrame:
    """Per agent (label -> its training returns in episode order): rlr_stats.return_rose's first and last
    quarter means, p and whether it learned (LEARNED_RULE)."""
    from rlr_stats import return_rose
    return pd.DataFrame({label: return_rose(values) for label, values in returns.items()}).T


def transfer_reading(summary: pd.DataFrame, runs: dict[str, dict[str, Sequence[RunResult]]],
                     agents: Sequence[str], reference: str, learned: dict[str, bool | None] | None = None) -> str:
    """Per task: each frozen agent's geometric-mean test MSE relative to the reference, its win rate,
    and where it leaves the learning rate (median over seeds of the last step's lr). learned (label ->
    learning_table's verdict): an agent whose training returns did not rise is named first, so that its
    rows read as an untrained policy's, not as a transfer result."""
    lines = []
    for agent in agents:
        verdict = (learned or {}).get(agent, True)
        if verdict is not True:
            lines.append(f"- **{agent}** " + ("did not learn by the stated rule (its training returns did not rise): "
                                             if verdict is False else "trained too few episodes to tell whether it learned: ")
                         + "its rows below are those of a policy that did not improve in training, not a transfer result.")
    for task in dict.fromkeys(summary.index.get_level_values("task")):
        part = summary.loc[task]
        best = part["geometric mean"].idxmin()
        parts = []
        for agent in agents:
            row = part.loc[agent]
            final_lr = float(np.median([run.series["lr"][-1] for run in runs[task][agent]]))
            parts.append(f"{agent}: {times_mse(row['geometric mean'], part.loc[reference, 'geometric mean'], 'the ' + reference)}, "
                         f"wins {row[f'wins vs {reference}']:.0%} of seeds, median final "
                         f"lr {final_lr:.1e}")
        lines.append(f"- **{task}**: lowest test MSE {best}. " + "; ".join(parts) + ".")
    return "\n".join(lines)


def training_reading(histories: dict[str, pd.DataFrame], window: int = 10) -> str:
    """Did each agent maximise its own objective? Mean episode return, first vs last `window` episodes."""
    return "\n".join(f"- **{label}**: mean return of the first {min(window, len(history))} episodes "
                     f"{history['return'].head(window).mean():.3g}, of the last {min(window, len(history))} "
                     f"{history['return'].tail(window).mean():.3g}; {int(history['diverged'].sum())} of "
                     f"{len(history)} episodes diverged." for label, history in histories.items())


def reference_agreement(reference: RunResult, batched: RunResult) -> str:
    """Where one seed's reference-loop run and its batched-engine run part ways: the first step with
    another action and the final training MSEs (same seed, same data, same weights, other rounding)."""
    steps = min(len(reference.series["action"]), len(batched.series["action"]))
    differs = np.flatnonzero(reference.series["action"][:steps] != batched.series["action"][:steps])
    first = f"choose the same action at every one of the {steps} steps" if differs.size == 0 else \
        f"choose the same actions for the first {int(differs[0])} steps, then part"
    return (f"Seed {reference.seed} here (batched engine) and the single run of notebook 02 (reference loop) start "
            f"from the same data and weights and {first}: both are exact up to float32 rounding, which the "
            f"two paths do in a different order, and the run is chaotic. Final training MSE: "
            f"{reference.series['loss'][-1]:.3e} (notebook 02) and {batched.series['loss'][-1]:.3e} (here).")


# ---------------------------------------------------------------------------------------------------
# The verdict's protocol (notebook 04): budget curves, the primary family, compute, selection margins
# ---------------------------------------------------------------------------------------------------


def plot_budget_curves(curves: pd.DataFrame, highlight: Sequence[str] = ()) -> plt.Figure:
    """Per family, the best validation MSE that k trials of its pool find (median with its band) and the
    expected tuning-seed test MSE of the configuration they pick, against k (log axes)."""
    fig, (validation_ax, test_ax) = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for family, part in curves.groupby("family", sort=False):
        style = {"lw": 2.2} if family in highlight else {"lw": 1.2, "alpha": 0.8}
        line, = validation_ax.plot(part["k"], part["best validation MSE, median"], marker="o", ms=3, label=family, **style)
        validation_ax.fill_between(part["k"], part["band low"], part["band high"].clip(upper=part["band high"][
            np.isfinite(part["band high"])].max() if np.isfinite(part["band high"]).any() else None),
                                   color=line.get_color(), alpha=0.12)
        test_ax.plot(part["k"], part["test MSE of the pick, expected"], marker="o", ms=3, color=line.get_color(), **style)
    for ax, title in ((validation_ax, "best validation MSE of k trials (median, 10-90% band)"),
                      (test_ax, "test MSE of the configuration k trials pick (tuning seeds, expected)")):
        ax.set(xscale="log", yscale="log", xlabel="trials k (configurations tried)", title=title)
        ax.set_xticks(sorted(curves["k"].unique()), [str(k) for k in sorted(curves["k"].unique())])
        ax.grid(alpha=0.3, which="both")
    validation_ax.set_ylabel("MSE")
    validation_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def budget_markdown(curves: pd.DataFrame, ks: Sequence[int]) -> str:
    """The budget curves at a few k as a table: per family, the median best validation MSE and the
    expected test MSE of the pick."""
    rows = []
    for family, part in curves.groupby("family", sort=False):
        by_k = part.set_index("k")
        rows.append({"family": family, **{f"k = {k}": f"{by_k.loc[k, 'best validation MSE, median']:.2e} / "
                                                      f"{by_k.loc[k, 'test MSE of the pick, expected']:.2e}"
                                          for k in ks if k in by_k.index}})
    return markdown_table(pd.DataFrame(rows))


def primary_markdown(primary: pd.DataFrame) -> str:
    """The primary family as a table: method and reference (role: label), budget with its compute ratio,
    metric, the method's MSE against the reference's (Hodges-Lehmann, fold) with its CI at the test's
    Holm level, wins, the Holm-adjusted p, the smallest ratio detectable at 80% power, the outcome."""
    rows = [{"method": f"{row['role']}: {row['method']}", "against": f"{row['reference role']}: {row['against']}",
             "budget": row["budget"] + ("" if row["compute ratio"] == 1 else
                                        f" (the reference {compute_words(row['compute ratio'])})"),
             "metric": METRIC_WORDS[row["metric"]],
             "method's MSE [CI at the Holm level]": f"{fold_interval(row['ratio'], row['ci_low'], row['ci_high'])} "
                                                    f"({row['confidence']:.1%})",
             "wins": f"{row['wins']}/{row['seeds']}" + (f", {row['dropped']} dropped" if row["dropped"] else ""),
             "Holm p": f"{row['p_holm']:.3g}", "detectable (80% power)": f"{row['detectable_ratio']:.2f} times",
             "outcome": outcome(row)}
            for _, row in primary.iterrows()]
    return markdown_table(pd.DataFrame(rows))


def compute_words(ratio: float) -> str:
    """A compute ratio (the reference's optimiser steps over the method's) in the fold convention."""
    return f"{ratio:.3g} times the optimiser steps" if ratio >= 1 else f"{1 / ratio:.3g} times fewer optimiser steps"


def compute_markdown(compute: pd.DataFrame) -> str:
    """The compute table (rlr_study.compute_table) as markdown, steps with thousands separators."""
    return markdown_table(formatted(compute.reset_index(), {column: ",d" for column in compute.columns}))


def margins_markdown(picks: dict[str, dict]) -> str:
    """Per reference picked on validation data: the pick, the runner-up and the margin, within noise or not."""
    rows = [{"reference": role, "picked": pick["best"], "runner-up": pick["runner_up"] or "-",
             "runner-up's validation MSE": "-" if pick["runner_up"] is None else f"{pick['margin']:.3f} times the pick's",
             "within noise": "-" if pick["runner_up"] is None or pick["within_noise"] is None else
                             ("yes: both carried" if pick["within_noise"] else "no")}
            for role, pick in picks.items()]
    return markdown_table(pd.DataFrame(rows))


def compute_sentence(rows: pd.DataFrame) -> str:
    """Whether the comparisons named ran at equal optimiser steps per run, and where not, at what ratio."""
    unequal = rows[rows["compute ratio"] != 1]
    if unequal.empty:
        return ("Compute: each comparison above ran the same optimiser steps per evaluated run; tuning and "
                "controller training are paid once, in the compute table.")
    return "Compute differs: " + "; ".join(f"{row['against']} used {compute_words(row['compute ratio'])} of "
                                           f"{row['method']}" for _, row in unequal.iterrows()) + "."


HEADLINE_LINES = 8
"""The headline's longest form, in lines (tests/test_readme.py holds it)."""


def headline(primary: pd.DataFrame, summary: pd.DataFrame, n_seeds: int, scope: str) -> str:
    """The verdict in at most HEADLINE_LINES lines, from the primary family only: does a learned
    controller or an RL agent beat the best tuned schedule, and by how much; the best of each kind with
    its test MSE; compute where it differs; the power; the scope."""
    gm = summary["geometric mean"]
    rows = primary.set_index(["role", "reference role"])
    rl = primary[primary["role"].isin(["best learned controller", "best tuned agent", "DQN as described"])
                 & (primary["reference role"] == "best schedule") & (primary["metric"] == "test_mse")]
    beats = rl[rl["significant"] & (rl["ratio"] > 1)].drop_duplicates("method")
    controller = rows.loc[("best learned controller", "best schedule")]
    schedule = rows.loc[("best schedule", "tuned constant lr")]
    agent = rows.loc[("best tuned agent", "best schedule")]
    free = rows.loc[("best learning-rate-free optimiser", "best schedule")]

    def against(row: pd.Series) -> str:
        return (f"{fold(row['ratio'])} test MSE than {row['against']} ({row['wins']} of {row['seeds']} seeds lower; "
                f"{'significant' if row['significant'] else 'not significant'}, Holm p {row['p_holm']:.2g})")

    lines = [
        ("An RL controller beat the best tuned schedule: " + ", ".join(beats["method"]) + "." if not beats.empty else
         f"No RL controller beat the best tuned schedule on test MSE (primary tests, Holm over {len(primary)})."),
        f"Best learned controller, {controller['method']}: test MSE {gm[controller['method']]:.2e}, {against(controller)}.",
        f"Best within-run RL agent, {agent['method']}: test MSE {gm[agent['method']]:.2e}, {against(agent)}.",
        f"Best schedule, {schedule['method']}: test MSE {gm[schedule['method']]:.2e}, {against(schedule)}.",
        f"Best learning-rate-free optimiser, {free['method']}: test MSE {gm[free['method']]:.2e}, {against(free)}.",
        compute_sentence(primary[primary["metric"] == "test_mse"]),
        f"Power: {n_seeds} evaluation seeds; the smallest effect detectable at 80% power ranges "
        f"{primary['detectable_ratio'].min():.2f}-{primary['detectable_ratio'].max():.2f} times over the {len(primary)} tests.",
        f"Scope: {scope}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Learning curves of the DQN controller and the oracle of its policy class (issue: give RL a real chance)
# ---------------------------------------------------------------------------------------------------


def plot_controller_curves(table: pd.DataFrame, levels: dict[str, float]) -> plt.Figure:
    """Validation MSE (tuning seeds, geometric mean with its 95% CI) of each agent seed's frozen policy
    against its training optimiser steps, with the tuned schedules' validation levels (levels: label -> MSE)
    as horizontal lines and each agent's plateau (the 'plateau at' column) marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for seed, part in table.sort_values("episodes").groupby("agent seed", sort=False):
        steps = part["training optimiser steps"]
        line, = ax.plot(steps, part["validation MSE"], "o-", ms=4, label=f"agent seed {seed}")
        ax.fill_between(steps, part["validation CI low"], part["validation CI high"], color=line.get_color(), alpha=0.15)
        plateau = part["plateau at"].iloc[0]
        if plateau is not None and not pd.isna(plateau):
            at = part[part["episodes"] == plateau]
            ax.plot(at["training optimiser steps"], at["validation MSE"], "s", ms=9, mfc="none", color=line.get_color())
    for (label, level), style in zip(levels.items(), ("--", ":", "-.")):
        ax.axhline(level, color="0.3", ls=style, lw=1, label=f"{label} (validation)")
    ax.set(xscale="log", yscale="log", xlabel="training optimiser steps (all tasks)",
           ylabel="validation MSE, tuning seeds")
    ax.set_title("DQN controller trained longer: frozen at doubling checkpoints (square: plateau)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def curve_markdown(table: pd.DataFrame) -> str:
    """The learning curves as a table: per agent seed and checkpoint, validation MSE with its CI and the
    mean training return."""
    shown = table.assign(**{"validation MSE": [interval(v, lo, hi, ".3g") for v, lo, hi in zip(
        table["validation MSE"], table["validation CI low"], table["validation CI high"])]})
    columns = ["agent seed", "episodes", "training optimiser steps", "validation MSE", "training return", "plateau at"]
    return markdown_table(formatted(shown[columns], {"training optimiser steps": ",d", "training return": ".2f"}
                                    ).astype({"plateau at": object}).fillna("-"))


def significance(comparison: dict, alpha: float = 0.05) -> str:
    """'better', 'worse' or 'tie' for rlr_stats.paired_validation's result (ratio reference / method)."""
    if comparison["p"] >= alpha or not math.isfinite(comparison["ratio"]):
        return "tie"
    return "better" if comparison["ratio"] > 1 else "worse"


def curve_reading(table: pd.DataFrame, plateau_rule: str, controller: str, best_schedule: str,
                  validation: dict[str, Sequence[float]], oracle: str, beaten_by: str | None) -> str:
    """What the learning curves (of `controller`, the DQN controller whose agents they are) and the oracle
    say, from the numbers. validation: label -> per-tuning-seed validation MSEs of the controller, the best
    schedule and the oracle (same seeds), compared by rlr_stats.paired_validation (descriptive, tuning
    seeds). beaten_by: the best learned controller if the primary test found its test MSE lower than the
    best schedule's, else None. The outcomes: the goal is met; else the oracle (the class's nearest path
    to the schedule) against the schedule, then the controller against the oracle, decide between 'the
    learning is the bottleneck', 'no gap resolved', 'the learned policy beats the clone' and 'the nearest
    path in the class is worse'."""
    missing = sorted({controller, best_schedule, oracle} - set(validation))
    if missing:
        raise ValueError(f"validation lacks the label(s) {missing}")
    reached = table.groupby("agent seed")["plateau at"].first()
    plateaus = ", ".join(f"agent seed {seed}: " + ("not within the budget" if pd.isna(at) else f"at {int(at)} episodes")
                         for seed, at in reached.items())
    lines = [f"Plateau rule ({plateau_rule}), {controller}'s agents: {plateaus}."]
    oracle_vs = paired_validation(validation[oracle], validation[best_schedule])
    controller_vs = paired_validation(validation[controller], validation[oracle])
    lines.append(f"On the tuning seeds' validation sets, {oracle} has "
                 f"{times_mse(1.0, oracle_vs['ratio'], best_schedule, 'validation MSE')} ({oracle_vs['wins']} of "
                 f"{oracle_vs['seeds']} seeds lower, Wilcoxon p = {oracle_vs['p']:.2g}); {controller} has "
                 f"{times_mse(1.0, controller_vs['ratio'], 'the oracle', 'validation MSE')} ({controller_vs['wins']} of "
                 f"{controller_vs['seeds']} seeds lower, p = {controller_vs['p']:.2g}).")
    if beaten_by is not None:
        lines.append(f"{beaten_by} beats {best_schedule} on the primary test: the goal is met.")
        return "\n\n".join(lines)
    oracle_side, controller_side = significance(oracle_vs), significance(controller_vs)
    at_plateau = bool(reached.notna().all())
    if oracle_side == "worse":
        lines.append(f"The nearest path the controllers' actions allow to {best_schedule} is significantly worse than it "
                     "on validation: the policy class (its factors, decision interval and range) limits before any "
                     "learning, although a path further from the schedule could still do better.")
    elif controller_side == "worse":
        lines.append(f"The controllers' actions can follow {best_schedule} without significant loss (the oracle"
                     f"{' beats it' if oracle_side == 'better' else ' ties it'} on validation), and {controller} is "
                     "significantly worse than that oracle: the bottleneck is the learning, not the policy class" + (
                         ", with every agent at its plateau." if at_plateau
                         else "; not every agent reached its plateau, so more training may still help."))
    elif controller_side == "better":
        lines.append(f"{controller} beats the oracle on validation, yet no learned controller beats {best_schedule} "
                     "on the primary test: the learned policy improves on the clone of the schedule, not on the schedule.")
    else:
        lines.append(f"{controller} is within noise of the oracle, and the oracle "
                     f"{'beats' if oracle_side == 'better' else 'ties'} {best_schedule} on validation: these seeds "
                     "resolve no gap in the learning.")
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The polynomial task off its interpolation threshold (notebook 05)
# ---------------------------------------------------------------------------------------------------


def floor_table(table: pd.DataFrame, floors: dict[str, float], tasks: Sequence[str]) -> pd.DataFrame:
    """Per task of `tasks` and method (a transfer table's rows): geometric means over the finished seeds of
    the training MSE (median of the last 100 steps: optimisation) and the test MSE (generalisation), the
    task's Bayes floor (floors: task -> rlr_core.bayes_floor) and the test MSE's excess over it, test /
    floor (NaN for a noise-free task, whose floor is 0)."""
    finished = table[table["diverged_at"].isna() & table["task"].isin(list(tasks))]
    rows = []
    for (task, method), part in finished.groupby(["task", "method"], sort=False):
        test = geometric_mean(part["test_mse"])
        rows.append({"task": task, "method": method, "training MSE": geometric_mean(part["train_median_last_100"]),
                     "test MSE": test, "Bayes floor": floors[task],
                     "test / floor": test / floors[task] if floors[task] > 0 else math.nan})
    return pd.DataFrame(rows).set_index(["task", "method"])


def floor_reading(floors: pd.DataFrame) -> str:
    """Per task: the method best on training MSE and the one best on test MSE (the same one, or not: then a
    better optimiser is not the better generaliser), and on a noisy task how far the best test MSE is from
    the Bayes floor."""
    lines = []
    for task, part in floors.groupby(level="task", sort=False):
        part = part.droplevel("task")
        train_best, test_best = part["training MSE"].idxmin(), part["test MSE"].idxmin()
        line = (f"- **{task}**: lowest training MSE {train_best}, lowest test MSE {test_best}"
                + (" (the same method)" if train_best == test_best else " (not the same: optimising the training "
                   "loss better did not generalise better here)"))
        floor = float(part["Bayes floor"].iloc[0])
        if floor > 0:
            line += (f"; the Bayes floor is {floor:.3g}, and {test_best}'s test MSE is "
                     f"{part.loc[test_best, 'test / floor']:.2f} times it")
        lines.append(line + ".")
    return "\n".join(lines)
