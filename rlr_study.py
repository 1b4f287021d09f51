"""The study: runs over many seeds and methods, the protocol (seeds, tuning, budgets) and its tables.

One seed runs the readable reference loop of rlr_engine (the faithful single run); several seeds run
the batched engine rlr_batched in one process (the same runs up to rounding: tests/test_batched.py).
Two studies live here: the many-seed benchmark of notebook 04 and the transfer study of notebook 05.
Statistics are rlr_stats', figures and readings rlr_report's; the learned controllers (rlr_controllers)
build on this protocol, which never imports them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

import rlr_batched
import rlr_methods as methods
import rlr_core as rc
import rlr_engine as engine
import rlr_peers as peers
import rlr_stats as stats
from rlr_engine import Config
from rlr_env import LRControlEnv, train_agent_on_env
from rlr_results import RunResult

MODES = ("baseline", "full_batch", "agent")


def seed_range(first_seed: int, n_seeds: int) -> list[int]:
    """Seeds first_seed, ..., first_seed + n_seeds - 1, checked (notebook parameters seed, n_seeds)."""
    rc.check_int("seed", first_seed, 0)
    rc.check_int("n_seeds", n_seeds, 1)
    return list(range(first_seed, first_seed + n_seeds))


def train_seeds(mode: str, config: Config, seeds: Sequence[int], progress: bool = False,
                **options) -> list[RunResult]:
    """Train one run per seed: mode 'baseline', 'full_batch' (options lr, steps, method) or 'agent'.

    config.seed is replaced by each seed. One seed: rlr_engine's loop; several: rlr_batched in one go.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    seeds = rc.check_seeds("seeds", seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(seeds) == 1:
        single = config.with_seed(seeds[0])
        if mode == "baseline":
            return [engine.train_baseline(single, progress=progress)]
        if mode == "full_batch":
            return [engine.train_full_batch(single, progress=progress, **options)]
        return [engine.train_rl_scheduled(single, progress=progress)]
    if mode == "baseline":
        return rlr_batched.train_baseline(config, seeds, progress=progress)
    if mode == "full_batch":
        return rlr_batched.train_full_batch(config, seeds, progress=progress, **options)
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress)


# ---------------------------------------------------------------------------------------------------
# The protocol of the many-seed benchmark (notebook 04): seeds and splits, an equal tuning budget per
# method family on validation data of tuning seeds, budgets, the pre-registered comparisons.
# ---------------------------------------------------------------------------------------------------


@dataclass
class StudyConfig:
    """The benchmark study. Tuning seeds and evaluation seeds never overlap (no test-set tuning)."""

    first_eval_seed: int = 0
    """first evaluation seed; every method runs on each evaluation seed with the same data and weights"""
    n_eval_seeds: int = 32
    """evaluation seeds (notebook 04 prints the effect each primary test can detect with them)"""
    first_tuning_seed: int = 1000
    """first seed used only for tuning (scored on its validation set, never evaluated)"""
    n_tuning_seeds: int = 8
    """tuning seeds; each configuration of each family runs on all of them"""
    steps: int = 10_000
    """optimiser steps of every full-batch method and agent (the agent's budget)"""
    n_heldout_examples: int = 1024
    """validation and test polynomials per seed (two independent draws), same distribution as training"""
    tuning_budget: int = 32
    """configurations per method family (its pool), the same for every family; the verdict's picks"""
    shown_budget: int | None = None
    """the smaller budget whose pick (the best of the pool's first shown_budget) is shown beside;
    None: min(8, tuning_budget)"""
    search_seed: int = 0
    """seed of the scrambled Sobol draws (each family its own, rlr_methods.family_seed)"""

    def __post_init__(self) -> None:
        if self.shown_budget is None and isinstance(self.tuning_budget, int):
            self.shown_budget = min(8, self.tuning_budget)
        for name, minimum in (("first_eval_seed", 0), ("n_eval_seeds", 1), ("first_tuning_seed", 0),
                              ("n_tuning_seeds", 1), ("steps", 1), ("n_heldout_examples", 1),
                              ("tuning_budget", 2), ("shown_budget", 1), ("search_seed", 0)):
            rc.check_int(f"study.{name}", getattr(self, name), minimum)
        if self.shown_budget > self.tuning_budget:
            raise ValueError(f"study.shown_budget ({self.shown_budget}) must be at most study.tuning_budget "
                             f"({self.tuning_budget}): its pick is the best of the pool's first shown_budget")
        overlap = set(self.eval_seeds) & set(self.tuning_seeds)
        if overlap:
            raise ValueError(f"study tuning seeds overlap the evaluation seeds: {sorted(overlap)}")

    def pool_steps(self, budget: int | None = None) -> int:
        """Optimiser steps a family's tuning pays once: budget (default tuning_budget) configurations x the
        tuning seeds x steps."""
        if budget is None:
            budget = self.tuning_budget
        rc.check_int("budget", budget, 1)
        return budget * self.n_tuning_seeds * self.steps

    @property
    def eval_seeds(self) -> list[int]:
        return seed_range(self.first_eval_seed, self.n_eval_seeds)

    @property
    def tuning_seeds(self) -> list[int]:
        return seed_range(self.first_tuning_seed, self.n_tuning_seeds)


ORIGINAL_RESULT = {"baseline_final_mse": 9.80166e-07, "agent_final_mse": 4.96017e-07}
"""What the original printed (one unseeded run each, docs/original.md): the claim's two numbers."""

BASELINE, TUNED = "original baseline (mini-batch Adam 1e-3)", "tuned constant lr"
"""The two references of every pre-registered comparison."""

ORIGINAL_AGENTS: dict[str, dict] = {
    "DQN as described": {},
    "DQN as coded (original)": {"dqn": {"variant": "as_coded"}},
    "random index walk": {"dqn": {"epsilon_start": 1.0, "epsilon_end": 1.0}},
    "DQN, log features": {"schedule": {"features": "log"}},
    "DQN, x0.5/x1/x2 actions": {"schedule": {"lr_factors": (0.5, 1.0, 2.0)}},
    "DQN, log features + x0.5/x1/x2": {"schedule": {"features": "log", "lr_factors": (0.5, 1.0, 2.0)}},
}
"""Agents at the original's settings (and ablations): label -> overrides of Config.dqn / Config.schedule."""

FROZEN_AGENT = "DQN greedy policy, frozen after training"
"""The described agent's greedy policy, frozen at the end of its run and replayed from the same initial network."""

SCALE_FREE, LR_RANGE, DQN_RANGES = methods.SCALE_FREE, methods.LR_RANGE, methods.DQN_RANGES
"""The registry's search ranges and the scale-free agent's options (their home is rlr_methods)."""


@dataclass(frozen=True)
class Family:
    """A method family: the ranges its tuning searches (name -> (low, high, 'log' | 'linear' |
    'log-int')) and, for agents, the schedule options of the variant it tunes."""

    kind: str
    """a kind of rlr_methods.KINDS: 'schedule', 'agent' or 'lr_free'"""
    ranges: dict
    """hyperparameter -> (low, high, scale)"""
    schedule: dict = field(default_factory=dict)
    """agents: overrides of Config.schedule (the variant)"""


STUDY_KINDS = ("schedule", "agent", "lr_free")
"""The kinds of family notebook 04 tunes (the controllers are tuned by rlr_controllers)."""

FAMILIES: dict[str, Family] = {
    (method.tuned_label if method.kind == "agent" else method.label): Family(method.kind, method.ranges,
                                                                            method.options.get("schedule", {}))
    for method in (methods.get(key) for key in methods.keys()) if method.kind in STUDY_KINDS}
"""Every tuned family, by the name the study's tables give it (a view of the registry, rlr_methods), each
searched with the same number of configurations (StudyConfig.tuning_budget)."""


def with_overrides(config: Config, overrides: dict) -> Config:
    """A copy of config with some fields of its parts replaced: Config.with_overrides (the one home)."""
    return config.with_overrides(overrides)


def study_config(config: Config, study: StudyConfig) -> Config:
    """The run config of the study: the agent's run length set to study.steps."""
    return with_overrides(config, {"schedule": {"steps": study.steps}})


def family(name: str) -> methods.Method:
    """The registry entry of a family named by its key, its label or its tuned label (the study's tables
    name families by label; dispatch is always on the entry)."""
    if name in methods.REGISTRY:
        return methods.get(name)
    for key in methods.keys():
        if name in (methods.get(key).label, methods.get(key).tuned_label):
            return methods.get(key)
    raise ValueError(f"no family named {name!r}; registered: {methods.keys()}")


def family_configurations(name: str, budget: int, seed: int) -> list[dict[str, float]]:
    """The family's pool of budget configurations (its registry entry's: its own scrambled Sobol draw)."""
    return family(name).configurations(budget, seed)


def run_family(name: str, params: dict, config: Config, seeds: Sequence[int], steps: int,
               progress: bool = False) -> list[RunResult]:
    """One configuration of a family (key or label) on some seeds, for `steps` optimiser steps: its
    registry entry's run (batched engine; per seed for the learning-rate-free optimisers)."""
    return family(name).run(params, config, rc.check_seeds("seeds", seeds), steps, progress)


def pool_scores(runs: Sequence[RunResult], n_examples: int) -> dict[str, float]:
    """One configuration's scores over the tuning seeds: its validation score (geometric mean; a diverged
    run scores +inf) with a 95% bootstrap CI over the seeds (NaN when a run diverged), and the geometric
    mean of its test MSE on the tuning seeds' own test sets (what the budget curves score a pick by,
    leaving the evaluation seeds untouched by tuning)."""
    validation = [heldout_mse(run, "validation", n_examples) for run in runs]
    score = stats.validation_score(validation)
    low, high = stats.bootstrap_interval(validation) if math.isfinite(score) else (math.nan, math.nan)
    return {"validation MSE": score, "validation CI low": low, "validation CI high": high,
            "tuning-seed test MSE": stats.validation_score([heldout_mse(run, "test", n_examples) for run in runs]),
            "diverged": sum(run.diverged_at is not None for run in runs)}


def tune_family(name: str, config: Config, study: StudyConfig, progress: bool = False,
                submitted: Sequence[Callable[[], list]] | None = None) -> tuple[dict, pd.DataFrame]:
    """The family's configuration with the lowest geometric-mean validation MSE over the tuning seeds
    (a diverged run scores +inf: never chosen) among its pool of study.tuning_budget, and one row per
    configuration (pool_scores; 'chosen' marks the pick, f'chosen at {shown_budget}' the best of the
    pool's first shown_budget). The pool runs as one batch where the family can (Method.run_pool).
    submitted: for a learning-rate-free family, the collect() of each configuration's runs already
    submitted (tune_families)."""
    pool = family_configurations(name, study.tuning_budget, study.search_seed)
    pool_runs = [collect() for collect in submitted] if submitted else \
        family(name).run_pool(pool, config, study.tuning_seeds, study.steps, progress)
    table = pd.DataFrame([{"family": name, "configuration": index, **params,
                           **pool_scores(runs, study.n_heldout_examples)}
                          for index, (params, runs) in enumerate(zip(pool, pool_runs))])
    if not np.isfinite(table["validation MSE"]).any():
        raise FloatingPointError(f"every configuration of {name} diverged on the tuning seeds: widen or move its ranges")
    best = int(table["validation MSE"].idxmin())
    table["chosen"] = table.index == best
    table[shown_column(study)] = table.index == int(table["validation MSE"].iloc[:study.shown_budget].idxmin())
    return {key: table.loc[best, key] for key in family(name).ranges}, table


def shown_column(study: StudyConfig) -> str:
    return f"chosen at {study.shown_budget}"


def chosen_at(tuning: pd.DataFrame, column: str) -> dict[str, dict]:
    """family -> the configuration a tuning table's column ('chosen', or 'chosen at K') marks."""
    picked = tuning[tuning[column].astype(bool)]
    return {name: {key: row[key] for key in family(name).ranges} for name, row in picked.set_index("family").iterrows()}


BUDGET_KS = (1, 2, 4, 8, 16, 32)
"""The numbers of trials a budget curve is read at (the pool's size is its last)."""


def budget_curves(tuning: pd.DataFrame, ks: Sequence[int] = BUDGET_KS) -> pd.DataFrame:
    """Per family and number of trials k (rlr_stats.budget_curve over its pool, resampled with
    replacement): the best validation MSE that k trials find (median, band, expectation) and the
    expected tuning-seed test MSE of the configuration they pick. Read at every k of ks up to the pool's
    size, and always at the pool's size itself."""
    curves = [stats.budget_curve(part["validation MSE"], part["tuning-seed test MSE"],
                                 sorted({k for k in ks if k <= len(part)} | {len(part)})).assign(family=name)
              for name, part in tuning.groupby("family", sort=False)]
    frame = pd.concat(curves, ignore_index=True)
    return frame[["family", *[column for column in frame.columns if column != "family"]]]


SELECTION_RULE = ("the lowest validation MSE of the chosen configurations on the tuning seeds; a runner-up whose "
                  "score lies inside the pick's 95% validation CI is within noise and carried beside it")
"""How every reference (best schedule, best learning-rate-free optimiser, best controller) is picked."""


def selection_margin(scores: pd.DataFrame, label: str = "family") -> dict:
    """The pick among candidates (rows: label, 'validation MSE', 'validation CI high') and the runner-up:
    the margin (runner-up's validation MSE over the pick's, >= 1) and whether the runner-up lies inside
    the pick's validation CI (within noise: then both are references; None where the pick has no CI)."""
    ordered = scores.sort_values("validation MSE", kind="stable").reset_index(drop=True)
    if ordered.empty:
        raise ValueError("selection_margin needs at least one candidate")
    best = ordered.iloc[0]
    if len(ordered) == 1:
        return {"best": str(best[label]), "runner_up": None, "margin": math.nan, "within_noise": False}
    runner_up = ordered.iloc[1]
    high = float(best.get("validation CI high", math.nan))
    return {"best": str(best[label]), "runner_up": str(runner_up[label]),
            "margin": float(runner_up["validation MSE"] / best["validation MSE"]),
            "within_noise": None if math.isnan(high) else bool(runner_up["validation MSE"] <= high)}


def tuning_edges(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per family and hyperparameter: 'inside', or 'lowest tried' / 'highest tried' when the chosen value
    is an extreme of the configurations tried (then the best may lie outside: the range must grow)."""
    edges: dict[str, dict[str, str]] = {}
    for name, part in table.groupby("family", sort=False):
        chosen = part[part["chosen"]].iloc[0]
        edges[name] = {}
        for parameter in family(name).ranges:
            values = part[parameter]
            edges[name][parameter] = ("lowest tried" if chosen[parameter] == values.min() else
                                      "highest tried" if chosen[parameter] == values.max() else "inside")
    return edges


def tune_families(config: Config, study: StudyConfig, names: Sequence[str] | None = None,
                  progress: bool = False) -> tuple[dict[str, dict], pd.DataFrame]:
    """tune_family for every family (default: all of FAMILIES): chosen configurations and one table."""
    names = list(FAMILIES) if names is None else list(names)
    # the per-seed optimisers' runs are submitted first: Ray's workers run them while this process runs the
    # batched families (the same numbers in any order)
    submitted = {name: [family(name).start(params, config, study.tuning_seeds, study.steps) for params in
                        family_configurations(name, study.tuning_budget, study.search_seed)]
                 for name in names if family(name).submit is not None}
    chosen, tables = {}, []
    for name in names:
        chosen[name], table = tune_family(name, config, study, progress, submitted.get(name))
        tables.append(table)
    return chosen, pd.concat(tables, ignore_index=True)


def heldout_mse(result: RunResult, split: str, n_examples: int) -> float:
    """MSE of the run's trained network on held-out polynomials of its seed (NaN if it diverged):
    split 'validation' (for tuning) or 'test' (for the verdict), independent draws of n_examples."""
    heldout = engine.heldout_data(Config.from_dict(result.config), split, n_examples)
    if result.diverged_at is not None or result.model is None:
        return float("nan")
    with torch.no_grad():
        value = float(rc.full_batch_loss(result.model, heldout))
    return value if math.isfinite(value) else float("nan")


def optimiser_steps(run: RunResult) -> int:
    """The optimiser steps one run was given (its budget, whether or not it diverged): its steps for the
    full-batch methods and agents, epochs x mini-batches per epoch for the mini-batch baseline."""
    config = Config.from_dict(run.config)
    if run.method == "baseline_minibatch":
        return config.baseline_optimiser_steps()
    return int(run.summary()["n_logged"]) if run.diverged_at is None else config.schedule.steps


def tidy_table(methods: dict[str, Sequence[RunResult]], budget: str, study: StudyConfig,
               runs_per_seed: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per method x seed: training MSE (median of the last 100: the primary training metric;
    the final value), validation and test MSE of the final weights, the optimiser steps paid for the row
    (a run's own, times runs_per_seed[method] for a per-seed pick among that many runs), cost and
    divergence."""
    rows = []
    for method, runs in methods.items():
        for run in runs:
            summary = run.summary()
            rows.append({"budget": budget, "method": method, "seed": run.seed,
                         "optimiser_steps": optimiser_steps(run) * (runs_per_seed or {}).get(method, 1),
                         "logged": summary["n_logged"], "train_median_last_100": summary["median_last_100"],
                         "train_final": summary["final_loss"],
                         "validation_mse": heldout_mse(run, "validation", study.n_heldout_examples),
                         "test_mse": heldout_mse(run, "test", study.n_heldout_examples),
                         "diverged_at": run.diverged_at, "wall_seconds_per_run": run.wall_seconds})
    return pd.DataFrame(rows)


def tuned_label(name: str) -> str:
    """The label of a tuned family's runs in the tables (its registry entry's)."""
    return family(name).tuned_label


def run_tuned(chosen: dict[str, dict], config: Config, study: StudyConfig, progress: bool = False
              ) -> dict[str, list[RunResult]]:
    """Every tuned family at its chosen configuration on the evaluation seeds (the per-seed optimisers'
    runs submitted first, as in tune_families)."""
    submitted = {name: family(name).start(params, config, study.eval_seeds, study.steps)
                 for name, params in chosen.items() if family(name).submit is not None}
    return {tuned_label(name): submitted[name]() if name in submitted else
            run_family(name, params, config, study.eval_seeds, study.steps, progress) for name, params in chosen.items()}


def shown_label(name: str, budget: int) -> str:
    """The label of a family's runs at the pick of a smaller budget (the best of its pool's first `budget`)."""
    return f"{tuned_label(name)} (best of {budget} trials)"


def run_shown_picks(shown: dict[str, dict], chosen: dict[str, dict], tuned_runs: dict[str, list[RunResult]],
                    config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """Every family at the pick of study.shown_budget trials on the evaluation seeds: the runs of the full
    pool's pick where both picked the same configuration (the same runs), else its own runs."""
    runs = {}
    for name, params in shown.items():
        same = params == chosen[name]
        runs[shown_label(name, study.shown_budget)] = tuned_runs[tuned_label(name)] if same else \
            run_family(name, params, config, study.eval_seeds, study.steps, progress)
    return runs


def pick_per_seed(candidates: dict[str, Sequence[RunResult]], split: str, n_examples: int
                  ) -> tuple[list[RunResult], list[str]]:
    """Per seed, the candidate run with the lowest MSE on `split` ('validation': an honest per-run choice;
    'test': the choice in hindsight, biased low) and its label. Every candidate runs the same seeds."""
    labels = list(candidates)
    seeds = [[run.seed for run in candidates[label]] for label in labels]
    if any(order != seeds[0] for order in seeds):
        raise ValueError("every candidate must run the same seeds in the same order")
    picked, chosen = [], []
    for runs in zip(*(candidates[label] for label in labels)):
        scores = [heldout_mse(run, split, n_examples) for run in runs]
        best = int(np.argmin([score if np.isfinite(score) else np.inf for score in scores]))
        picked.append(runs[best])
        chosen.append(labels[best])
    return picked, chosen


def constant_configurations(config: Config, study: StudyConfig, progress: bool = False,
                            budget: int | None = None) -> dict[str, list[RunResult]]:
    """The constant lr at each of the first `budget` (default all study.tuning_budget) configurations of its
    pool, on the evaluation seeds, in one batch."""
    pool = family_configurations("constant lr", study.tuning_budget, study.search_seed)[:budget]
    runs = family("constant lr").run_pool(pool, config, study.eval_seeds, study.steps, progress)
    return {f"constant lr {params['lr']:.2e}": pool_runs for params, pool_runs in zip(pool, runs)}


def headroom_label(n_candidates: int, split: str) -> str:
    return f"best of {n_candidates} schedules per seed ({'validation' if split == 'validation' else 'hindsight: test'})"


def pbt_label(population: int) -> str:
    return f"PBT, population {population}"


def equal_compute_label(population: int) -> str:
    return f"constant lr, best of {population} per seed (validation)"


BEST_LR_FREE_RULE = ("the learning-rate-free optimiser whose chosen configuration has the lowest validation MSE "
                     "on the tuning seeds")
"""How the pre-registered learning-rate-free reference is picked: on validation data, never on test data."""


def best_lr_free(tuning: pd.DataFrame) -> str:
    """The tuned label of the learning-rate-free family picked by BEST_LR_FREE_RULE from the tuning table."""
    return best_chosen(tuning, family_names("lr_free"), "learning-rate-free")


BEST_SCHEDULE_RULE = ("the schedule family other than the constant lr whose chosen configuration has the lowest "
                      "validation MSE on the tuning seeds")
"""How the pre-registered best schedule is picked: on validation data, never on test data."""


def best_schedule(tuning: pd.DataFrame) -> str:
    """The tuned label of the schedule family picked by BEST_SCHEDULE_RULE from the tuning table."""
    return best_chosen(tuning, [name for name in family_names("schedule") if family(name).key != "constant"], "schedule")


def family_names(kind: str) -> list[str]:
    """Every name a tuning table may give a family of this kind: its key and its labels."""
    return [name for key in methods.keys(kind) for name in (key, methods.get(key).label, methods.get(key).tuned_label)]


def best_chosen(tuning: pd.DataFrame, families: Sequence[str], what: str) -> str:
    """The tuned label of the family, among families, whose chosen configuration scored the lowest
    validation MSE in the tuning table."""
    return reference_pick(tuning, families, what)["best"]


def reference_pick(tuning: pd.DataFrame, families: Sequence[str], what: str) -> dict:
    """The pick among families by SELECTION_RULE, as tuned labels, with its margin to the runner-up
    (selection_margin)."""
    chosen = tuning[tuning["chosen"] & tuning["family"].isin(list(families))]
    if chosen.empty:
        raise ValueError(f"the tuning table holds no {what} family")
    scores = chosen.assign(family=[tuned_label(name) for name in chosen["family"]])
    return selection_margin(scores)


def reference_picks(tuning: pd.DataFrame) -> dict[str, dict]:
    """The three references the study picks on validation data (SELECTION_RULE), each with its margin:
    the best schedule (other than the constant), the best learning-rate-free optimiser and the best
    within-run agent (a tuned DQN family)."""
    return {"best schedule": reference_pick(tuning, [name for name in family_names("schedule")
                                                     if family(name).key != "constant"], "schedule"),
            "best learning-rate-free optimiser": reference_pick(tuning, family_names("lr_free"), "learning-rate-free"),
            "best tuned agent": reference_pick(tuning, family_names("agent"), "agent")}


def run_original_agents(config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """Every agent at the original's settings on the evaluation seeds, plus the described agent's greedy
    policy frozen at the end of its run and replayed from the same initial network."""
    runs = {label: rlr_batched.train_rl_scheduled(with_overrides(config, overrides), study.eval_seeds,
                                                  progress=progress)
            for label, overrides in ORIGINAL_AGENTS.items()}
    policies = [run.policy_state for run in runs["DQN as described"]]
    runs[FROZEN_AGENT] = rlr_batched.train_rl_scheduled(
        config, study.eval_seeds, progress=progress, initial_policies=policies, frozen=True)
    return runs


def run_baselines(config: Config, study: StudyConfig, epochs: int, progress: bool = False) -> list[RunResult]:
    """The original mini-batch baseline (Adam, its lr, batch 32) for a given number of epochs."""
    return rlr_batched.train_baseline(with_overrides(config, {"baseline": {"epochs": epochs}}),
                                      study.eval_seeds, progress=progress)


def agent_config(label: str, config: Config, chosen: dict[str, dict]) -> Config:
    """The run config of an agent of the study: an original-settings agent or a tuned family."""
    if label in ORIGINAL_AGENTS:
        return with_overrides(config, ORIGINAL_AGENTS[label])
    return with_overrides(config, {**methods.dqn_overrides(chosen[label]),
                                   "schedule": family(label).options.get("schedule", {})})


def seconds_per_unit(configs: dict[str, Config], config: Config, study: StudyConfig) -> dict[str, float]:
    """Wall seconds per step of each agent (label -> its run config), of full-batch Adam, and per epoch
    of the mini-batch baseline: each timed as itself on the readable reference loop (what one run
    costs a user), warm (after a short run of the same kind), over a full-length run."""
    short = with_overrides(config, {"schedule": {"steps": 50}, "baseline": {"epochs": 5}})
    engine.train_rl_scheduled(short), engine.train_full_batch(short, 1e-3, 50), engine.train_baseline(short)
    seconds = {label: engine.train_rl_scheduled(with_overrides(agent, {"schedule": {"steps": study.steps}}))
               .wall_seconds / study.steps for label, agent in configs.items()}
    seconds["full-batch Adam step"] = engine.train_full_batch(config, config.baseline.lr, study.steps).wall_seconds \
        / study.steps
    baseline = with_overrides(config, {"baseline": {"epochs": study.steps}})  # the same-passes baseline's length
    seconds["mini-batch baseline epoch"] = engine.train_baseline(baseline).wall_seconds / study.steps
    return seconds


def run_budgets(config: Config, study: StudyConfig, chosen: dict[str, dict], wall_clock: dict[str, dict],
                same_steps_epochs: int) -> tuple[list[RunResult], list[RunResult], dict[str, dict[str, list[RunResult]]]]:
    """The references' runs of the three budgets, one Ray task each when Ray is started (peers.submit_tasks;
    the same runs as in this process): the original baseline at the same optimiser steps (same_steps_epochs
    epochs) and at the same passes (study.steps epochs), and per agent the baseline and the tuned constant
    lr at that agent's wall-clock (wall_clock: agent -> wall_clock_budget). Returns the two baseline run
    lists and agent -> {BASELINE: runs, TUNED: runs}."""
    constants = peers.submit_tasks(run_family, [("constant lr", chosen["constant lr"], config, study.eval_seeds,
                                                 budget["full_batch_steps"]) for budget in wall_clock.values()])
    baselines = peers.submit_tasks(run_baselines, [(config, study, epochs) for epochs in (
        same_steps_epochs, study.steps, *[budget["baseline_epochs"] for budget in wall_clock.values()])])
    same_steps, same_passes, *per_agent = baselines()
    return same_steps, same_passes, {agent: {BASELINE: baseline, TUNED: constant} for agent, baseline, constant
                                     in zip(wall_clock, per_agent, constants())}


def wall_clock_budget(agent_seconds_per_step: float, seconds: dict[str, float], study: StudyConfig) -> dict:
    """What one agent run's time buys the references: full-batch Adam steps and baseline epochs."""
    agent_seconds = study.steps * agent_seconds_per_step
    return {"agent_seconds": agent_seconds,
            "full_batch_steps": max(1, round(agent_seconds / seconds["full-batch Adam step"])),
            "baseline_epochs": max(1, round(agent_seconds / seconds["mini-batch baseline epoch"]))}


def wall_clock_label(agent: str) -> str:
    return f"same wall-clock as {agent}"


SAME_STEPS, SAME_PASSES = "same optimiser steps", "same passes over the data"

SCOPE = ("one task, MaclaurinNet fitting degree-4 polynomials (256 examples), where the network sits near its "
         "interpolation threshold; notebook 07 repeats the verdict on a second, real task (MNIST-1D)")
"""What the verdict covers, said in its headline."""

PRIMARY_COMPARISONS: tuple[tuple[str, str, str, str], ...] = (
    (SAME_STEPS, "best learned controller", "best schedule", "test_mse"),
    (SAME_STEPS, "best learned controller", "tuned constant lr", "test_mse"),
    (SAME_STEPS, "best tuned agent", "best schedule", "test_mse"),
    (SAME_STEPS, "DQN as described", "tuned constant lr", "test_mse"),
    (SAME_PASSES, "DQN as described", "original baseline", "train_median_last_100"),
    (SAME_PASSES, "DQN as coded (original)", "original baseline", "train_median_last_100"),
    (SAME_STEPS, "best learning-rate-free optimiser", "best schedule", "test_mse"),
    (SAME_STEPS, "best schedule", "tuned constant lr", "test_mse"),
)
"""The primary, pre-registered family (budget, method role, reference role, metric), fixed before any run
and printed first by notebook 04: does a learned controller, a tuned within-run agent or the original's
agent beat the tuned schedules on test MSE; does the original's claim (training MSE against its own
baseline at the same passes) hold for either variant; and, for scale, the best learning-rate-free optimiser
and the best schedule against the constant. Holm over these 8 only (rlr_stats.primary_tests); every other
comparison is descriptive. Roles become labels through primary_labels once the picks are made on
validation data."""


def primary_labels(picks: dict[str, dict], best_controller: str) -> dict[str, str]:
    """role -> method label for PRIMARY_COMPARISONS: the picks of reference_picks, the best learned
    controller, the original's agents and the two references."""
    return {"best learned controller": best_controller, "best schedule": picks["best schedule"]["best"],
            "best tuned agent": picks["best tuned agent"]["best"],
            "best learning-rate-free optimiser": picks["best learning-rate-free optimiser"]["best"],
            "tuned constant lr": TUNED, "original baseline": BASELINE,
            "DQN as described": "DQN as described", "DQN as coded (original)": "DQN as coded (original)"}


def beats(primary: pd.DataFrame, method: str, reference: str, metric: str = "test_mse") -> bool:
    """Whether the primary family found method's metric significantly lower than reference's (Holm)."""
    rows = primary[(primary["method"] == method) & (primary["against"] == reference) & (primary["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"the primary family has no test of {method!r} against {reference!r} on {metric}")
    return bool(rows["significant"].iloc[0] and rows["ratio"].iloc[0] > 1)


def primary_family(labels: dict[str, str], comparisons: Sequence[tuple[str, str, str, str]] = PRIMARY_COMPARISONS
                   ) -> list[tuple[str, str, str, str]]:
    """A pre-registered family (default PRIMARY_COMPARISONS) with its roles replaced by labels (labels:
    role -> label)."""
    missing = sorted({role for _, method, reference, _ in comparisons for role in (method, reference)} - set(labels))
    if missing:
        raise ValueError(f"labels lacks the role(s) {missing}")
    return [(budget, labels[method], labels[reference], metric) for budget, method, reference, metric in comparisons]


def primary_table(table: pd.DataFrame, labels: dict[str, str],
                  comparisons: Sequence[tuple[str, str, str, str]] = PRIMARY_COMPARISONS) -> pd.DataFrame:
    """The tests (rlr_stats.primary_tests) of a pre-registered family of (budget, method role, reference
    role, metric), default PRIMARY_COMPARISONS, with each row's roles, both sides' optimiser steps per run
    and their compute ratio (the reference's over the method's; 1 where they are equal)."""
    tests = stats.primary_tests(table, primary_family(labels, comparisons))
    steps = table.groupby(["budget", "method"])["optimiser_steps"].max()
    tests.insert(0, "role", [method for _, method, _, _ in comparisons])
    tests.insert(1, "reference role", [reference for _, _, reference, _ in comparisons])
    tests["method steps"] = [int(steps[(row["budget"], row["method"])]) for _, row in tests.iterrows()]
    tests["reference steps"] = [int(steps[(row["budget"], row["against"])]) for _, row in tests.iterrows()]
    tests["compute ratio"] = tests["reference steps"] / tests["method steps"]
    return tests


def compute_table(table: pd.DataFrame, tuning_steps: dict[str, int],
                  controller_costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method of a table (one budget): the optimiser steps of one evaluated run, and what was paid
    once before it: its tuning (tuning_steps: label -> optimiser steps, e.g. a pool of tuning_budget
    configurations x n_tuning_seeds x steps) and, for a learned controller, its training and its tuning
    (controller_costs: rlr_report.controller_costs' table)."""
    rows = []
    for method, part in table.groupby("method", sort=False):
        row = {"method": method, "optimiser steps per run": int(part["optimiser_steps"].max()),
               "tuning, once": int(tuning_steps.get(method, 0)), "training, once": 0}
        if controller_costs is not None and method in controller_costs.index:
            row["tuning, once"] = int(controller_costs.loc[method, "tuning: optimiser steps"])
            row["training, once"] = int(controller_costs.loc[method, "training optimiser steps"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def preregistered_comparisons(agents: Sequence[str], lr_free: str | None = None) -> list[tuple[str, str, str]]:
    """(budget, agent, reference) for each agent: against the original baseline at the same optimiser
    steps, the same passes over the data (the original's comparison) and the agent's own wall-clock;
    against the tuned constant lr at the same optimiser steps and the agent's wall-clock; against the
    learning-rate-free optimiser picked by BEST_LR_FREE_RULE (label lr_free) at the same optimiser steps.
    (For full-batch methods a step is a pass, so 'same passes' would repeat 'same steps'.)"""
    return [comparison for agent in agents for comparison in (
        ("same optimiser steps", agent, BASELINE), ("same optimiser steps", agent, TUNED),
        ("same passes over the data", agent, BASELINE),
        (wall_clock_label(agent), agent, BASELINE), (wall_clock_label(agent), agent, TUNED),
        *([("same optimiser steps", agent, lr_free)] if lr_free is not None else []))]


def controller_comparisons(controllers: Sequence[str], best: str, lr_free: str) -> list[tuple[str, str, str]]:
    """(budget, controller, reference) for each learned controller, at the same optimiser steps: against the
    tuned constant lr, the tuned cosine annealing, the schedule picked by BEST_SCHEDULE_RULE (label best)
    and the learning-rate-free optimiser picked by BEST_LR_FREE_RULE (label lr_free)."""
    references = list(dict.fromkeys([TUNED, tuned_label("cosine annealing"), best, lr_free]))
    return [("same optimiser steps", controller, reference) for controller in controllers for reference in references]


PRIMARY_METRICS = ("train_median_last_100", "test_mse")
"""The verdict's metrics: training MSE as the median of the last 100 losses (the original's metric, made
robust to the last step's noise) and test MSE of the final weights. The final training loss is
reported beside them, descriptive only."""


def claim_table(table: pd.DataFrame, agents: Sequence[str], lr_free: str | None = None,
                controllers: Sequence[str] = (), best: str | None = None) -> pd.DataFrame:
    """The original's ratio (reference MSE / agent MSE, paired by seed) per budget, agent, reference and
    metric, with its 95% CI, the number of seeds reaching 2, and the pre-registered paired tests on
    the primary metrics (Wilcoxon, Holm-adjusted over all of them); the final training loss follows,
    Holm-adjusted as a family of its own (descriptive). controllers: learned controllers, compared as
    controller_comparisons (best: the best schedule's label) in the same Holm family."""
    comparisons = preregistered_comparisons(agents, lr_free)
    if controllers:
        if best is None or lr_free is None:
            raise ValueError("comparing controllers needs best (the best schedule) and lr_free")
        comparisons += controller_comparisons(controllers, best, lr_free)
    return comparison_claims(table, comparisons)


def comparison_claims(table: pd.DataFrame, comparisons: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    """The paired tests of some pre-registered (budget, method, reference) comparisons: primary metrics
    Holm-adjusted together, the final training loss as a family of its own (descriptive)."""
    primary = stats.preregistered_tests(table, comparisons, PRIMARY_METRICS)
    secondary = stats.preregistered_tests(table, comparisons, ["train_final"])
    return pd.concat([primary.assign(primary=True), secondary.assign(primary=False)], ignore_index=True)


def benchmark_summary(results_dir: str | Path) -> dict:
    """Notebook 04's summary (results/benchmark_summary.json); FileNotFoundError before notebook 04 ran."""
    path = Path(results_dir) / "benchmark_summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 04_verdict first")
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}): re-run notebook 04_verdict") from error
    missing = sorted(BENCHMARK_SUMMARY_FIELDS - set(summary)) if isinstance(summary, dict) else sorted(BENCHMARK_SUMMARY_FIELDS)
    study_missing = [] if missing else sorted(STUDY_FIELDS - set(summary["study"] if isinstance(summary["study"], dict) else {}))
    if missing or study_missing:
        raise ValueError(f"{path} is not notebook 04's summary: it lacks {missing or ['study.' + name for name in study_missing]}; "
                         "re-run notebook 04_verdict")
    return summary


BENCHMARK_SUMMARY_FIELDS = frozenset({"study", "agents", "chosen", "controllers", "summaries", "claims"})
"""What the later notebooks read of notebook 04's summary (benchmark_summary checks it is there)."""
STUDY_FIELDS = frozenset({"first_eval_seed", "n_eval_seeds", "steps", "n_heldout_examples"})


def load_benchmark(results_dir: str | Path, study: StudyConfig) -> tuple[dict, pd.DataFrame]:
    """Notebook 04's summary and its rows at the same optimiser steps on study's evaluation seeds, checked
    to be comparable (same steps and held-out size, and every seed present): other notebooks compare with them."""
    folder = Path(results_dir)
    summary = benchmark_summary(folder)
    for name in ("steps", "n_heldout_examples"):
        if summary["study"][name] != getattr(study, name):
            raise ValueError(f"{name}={getattr(study, name)} differs from notebook 04's {summary['study'][name]}: "
                             "the runs would not be comparable")
    table = pd.read_csv(folder / "benchmark_runs.csv")
    table = table[(table["budget"] == "same optimiser steps") & table["seed"].isin(study.eval_seeds)]
    missing = sorted(set(study.eval_seeds) - set(table["seed"]))
    if missing:
        raise ValueError(f"notebook 04 did not run evaluation seed(s) {missing}: choose seeds it ran")
    return summary, table.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# The transfer study (notebook 05): train one agent over many short episodes on a family of training tasks,
# freeze it, and evaluate it on held-out tasks against the tuned constant lr and cosine annealing.
# ---------------------------------------------------------------------------------------------------

HELD_OUT_TASKS: dict[str, dict] = {
    "same task, new seeds": {},
    "degree 3 polynomials": {"coeff_scale": (1.0, 0.5, 0.2, 0.1)},
    "degree 6 polynomials": {"coeff_scale": (1.0, 0.5, 0.2, 0.1, 0.05, 0.025, 0.0125)},
    "wider, deeper net (64, 32, 16)": {"hidden_sizes": (64, 32, 16)},
    "1 024 examples": {"n_examples": 1024},
    "noisy samples (sd 0.1)": {"input_noise": 0.1},
}
"""Held-out tasks: label -> overrides of the training TaskConfig (the first is the training task itself,
evaluated on new data seeds and initialisations). The last two move the task off its interpolation
threshold (MaclaurinNet's 1 285 parameters against 256 x 5 targets): 4x the examples, and noisy samples
with a non-zero Bayes floor (rlr_core.bayes_floor), so test MSE can be read against the best possible."""

OFF_THRESHOLD = ("1 024 examples", "noisy samples (sd 0.1)")
"""The held-out tasks off the interpolation threshold (notebook 05 reads their training and test MSE apart)."""

TRANSFER_AGENTS: dict[str, dict] = {
    "scale-free DQN (log features, x0.5/x1/x2)": {"features": "log", "lr_factors": (0.5, 1.0, 2.0)},
    "DQN as described (raw features)": {},
}
"""The agents trained for transfer: label -> overrides of the ScheduleConfig (the DQN stays 'described')."""

TUNED_CONSTANT, COSINE = "tuned constant lr", "cosine annealing"
"""Method labels of the two references in the transfer tables (both tuned on the training task)."""


def held_out_tasks(task: rc.TaskConfig) -> dict[str, rc.TaskConfig]:
    """The held-out TaskConfigs of HELD_OUT_TASKS, each a copy of the training task with its overrides."""
    return {label: rc.TaskConfig(**{**asdict(task), **overrides}) for label, overrides in HELD_OUT_TASKS.items()}


def transfer_seeds(first_training_seed: int, n_training_episodes: int, first_eval_seed: int,
                   n_eval_seeds: int) -> tuple[list[int], list[int]]:
    """Training seeds (one new task per episode) and evaluation seeds; ValueError if they overlap, so no
    evaluation task is ever seen in training."""
    rc.check_int("first_training_seed", first_training_seed, 0)
    rc.check_int("n_training_episodes", n_training_episodes, 1)
    rc.check_int("first_eval_seed", first_eval_seed, 0)
    rc.check_int("n_eval_seeds", n_eval_seeds, 1)
    training = [first_training_seed + i for i in range(n_training_episodes)]
    evaluation = [first_eval_seed + i for i in range(n_eval_seeds)]
    overlap = sorted(set(training) & set(evaluation))
    if overlap:
        raise ValueError(f"training seeds overlap the evaluation seeds: {overlap[:5]}"
                         f"{'...' if len(overlap) > 5 else ''} (move first_training_seed or first_eval_seed)")
    return training, evaluation


def train_agent_on_tasks(config: Config, training_seeds: Sequence[int], agent_seed: int = 0,
                         progress: bool = False) -> tuple[rc.DQNAgent, pd.DataFrame]:
    """Train one DQN agent over one episode of config.schedule.steps steps per training seed, in order.

    Episode i is LRControlEnv.reset(seed=training_seeds[i]): that seed's data set and initial weights, a
    fresh Adam, the lr back at the start. The agent (its replay memory, epsilon decay and Q-network)
    carries over from episode to episode. An episode that diverges ends early; the rest of its steps run
    on a new initialisation of the same data (the environment's own reset), so every episode costs the
    same number of steps. Returns the agent (still in training mode) and one row per episode: seed,
    return of the seeded episode (log L_0 - log L_T for log features) and whether it diverged.
    """
    engine.check_run(config)
    seeds = rc.check_seeds("training_seeds", training_seeds)
    if not seeds:
        raise ValueError("training_seeds must not be empty")
    env = LRControlEnv.from_config(config)
    agent = rc.DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, agent_seed,
                        rc.DTYPES[config.dtype], config.device)
    rows = []
    with engine.progress_bar(len(seeds), f"training episodes ({config.schedule.features} features)", progress) as bar:
        for seed in seeds:
            history = train_agent_on_env(env, agent, config.schedule.steps, seed)
            rows.append({"episode": len(rows), "seed": seed, "return": history["episode_returns"][0],
                         "diverged": history["episode_terminated"][0],
                         "epsilon_at_end": agent.epsilon()})
            bar.update()
    return agent, pd.DataFrame(rows)


def evaluate_frozen_agent(config: Config, agent: rc.DQNAgent, seeds: Sequence[int],
                          progress: bool = False) -> list[RunResult]:
    """The agent's greedy policy, frozen (no exploration, replay or learning), steering Adam on each seed
    for config.schedule.steps steps, on the batched engine. The agent itself is left unchanged. A
    controller's schedule (a decision interval, control features), which that engine does not run, runs on
    LRControlVectorEnv instead: rlr_controllers.frozen_agent_runs."""
    seeds = rc.check_seeds("seeds", seeds)
    if config.schedule.decision_interval != 1 or config.schedule.features == "control":
        raise ValueError("a controller's schedule (decision_interval > 1 or control features) runs frozen on "
                         "LRControlVectorEnv: use rlr_controllers.frozen_agent_runs")
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress,
                                          initial_policies=[agent.policy_weights()] * len(seeds), frozen=True)


def task_configs(config: Config, tasks: dict[str, rc.TaskConfig]) -> dict[str, Config]:
    """config with each task in place of its own: task label -> run config."""
    return {label: with_overrides(config, {"task": asdict(task)}) for label, task in tasks.items()}


def evaluate_on_held_out_tasks(config: Config, tasks: dict[str, rc.TaskConfig],
                               agents: dict[str, tuple[Config, rc.DQNAgent]], tuned: dict[str, dict],
                               seeds: Sequence[int], progress: bool = False,
                               controller_runs: dict[str, dict[str, list[RunResult]]] | None = None
                               ) -> dict[str, dict[str, list[RunResult]]]:
    """task label -> method label -> one run per seed: the tuned constant lr and the tuned cosine
    annealing (tuned: family -> chosen configuration, from tune_family on the training task) and every
    frozen agent, all config.schedule.steps full-batch Adam steps on the same data and initial weights
    of each seed, then the frozen controllers' runs on those tasks and seeds, if given (task label ->
    label -> runs: rlr_controllers.submit_controller_runs). agents: label -> (the config it was trained with, agent)."""
    steps = config.schedule.steps
    runs: dict[str, dict[str, list[RunResult]]] = {}
    for task_label, task_config in task_configs(config, tasks).items():
        runs[task_label] = {TUNED_CONSTANT: run_family("constant lr", tuned["constant lr"], task_config, seeds, steps,
                                                       progress),
                            COSINE: run_family(COSINE, tuned[COSINE], task_config, seeds, steps, progress)}
        for agent_label, (agent_config, agent) in agents.items():
            agent_task_config = with_overrides(agent_config, {"task": asdict(task_config.task),
                                                              "schedule": {"steps": steps}})
            runs[task_label][agent_label] = evaluate_frozen_agent(agent_task_config, agent, seeds, progress)
        runs[task_label].update((controller_runs or {}).get(task_label, {}))
    return runs


def transfer_table(runs: dict[str, dict[str, list[RunResult]]], n_heldout_examples: int) -> pd.DataFrame:
    """One row per task x method x seed: training MSE (median of last 100, final), validation and test
    MSE on held-out polynomials of the same task, divergence and cost."""
    setup = StudyConfig(n_heldout_examples=n_heldout_examples)
    tables = [tidy_table(methods, task, setup) for task, methods in runs.items()]
    return pd.concat(tables, ignore_index=True).rename(columns={"budget": "task"})


def transfer_summary(table: pd.DataFrame, metric: str = "test_mse") -> pd.DataFrame:
    """Per task and method: geometric mean and median over seeds with 95% bootstrap CIs, diverged runs
    (left out of the statistics) and paired win rates against the tuned constant lr and cosine annealing."""
    references = {TUNED_CONSTANT: TUNED_CONSTANT, COSINE: COSINE}
    return pd.concat({task: stats.summary_with_win_rates(part, metric, references)
                      for task, part in table.groupby("task", sort=False)}, names=["task"])
