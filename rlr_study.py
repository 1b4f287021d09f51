"""The study: runs over many seeds and methods, the protocol (seeds, tuning, budgets) and its tables.

One seed runs the readable reference loop of rlr_engine (the faithful single run); several seeds run
the batched engine rlr_batched in one process (the same runs up to rounding: tests/test_batched.py).
Two studies live here: the many-seed benchmark of notebook 04 and the transfer study of notebook 05.
Statistics, figures and readings are rlr_report's.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import gmean

import rlr_batched
import rlr_core as rc
import rlr_engine as engine
import rlr_peers as peers
import rlr_report as report
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
    n_eval_seeds: int = 16
    """evaluation seeds"""
    first_tuning_seed: int = 1000
    """first seed used only for tuning (scored on its validation set, never evaluated)"""
    n_tuning_seeds: int = 8
    """tuning seeds; each configuration of each family runs on all of them"""
    steps: int = 10_000
    """optimiser steps of every full-batch method and agent (the agent's budget)"""
    n_heldout_examples: int = 1024
    """validation and test polynomials per seed (two independent draws), same distribution as training"""
    tuning_budget: int = 8
    """configurations per method family, the same for every family"""
    search_seed: int = 0
    """seed of the scrambled Sobol sequence that places each family's configurations in its ranges"""

    def __post_init__(self) -> None:
        for name, minimum in (("first_eval_seed", 0), ("n_eval_seeds", 1), ("first_tuning_seed", 0),
                              ("n_tuning_seeds", 1), ("steps", 1),
                              ("n_heldout_examples", 1), ("tuning_budget", 2), ("search_seed", 0)):
            rc.check_int(f"study.{name}", getattr(self, name), minimum)
        overlap = set(self.eval_seeds) & set(self.tuning_seeds)
        if overlap:
            raise ValueError(f"study tuning seeds overlap the evaluation seeds: {sorted(overlap)}")

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

SCALE_FREE = {"features": "log", "lr_factors": (0.5, 1.0, 2.0)}
"""The scale-free agent's schedule options: state (log L, its change, lr position), actions x0.5/x1/x2."""

LR_RANGE = (1e-5, 0.3, "log")
"""The learning rates every schedule family searches: the original grid's range and 1.5 decades above it
(a first run with 1e-4 at the bottom chose Adam-HD's lowest value tried, so the range grew)."""

DQN_RANGES = {"dqn.lr": (1e-5, 1e-2, "log"), "dqn.horizon": (3.0, 1000.0, "log"),
              "dqn.epsilon_decay": (100.0, 10_000.0, "log")}
"""A DQN family's search: the Q-network's Adam lr, the discount as a horizon 1 / (1 - gamma), and the
exploration time constant."""


@dataclass(frozen=True)
class Family:
    """A method family: the ranges its tuning searches (name -> (low, high, 'log' | 'linear' |
    'log-int')) and, for agents, the schedule options of the variant it tunes."""

    kind: str
    """'schedule' (full-batch Adam under a learning-rate rule), 'agent' (a DQN scheduler) or 'optimiser'
    (a learning-rate-free optimiser of rlr_peers, run per seed)"""
    ranges: dict
    """hyperparameter -> (low, high, scale)"""
    schedule: dict = field(default_factory=dict)
    """agents: overrides of Config.schedule (the variant)"""


FAMILIES: dict[str, Family] = {
    "constant lr": Family("schedule", {"lr": LR_RANGE}),
    "cosine annealing": Family("schedule", {"lr": LR_RANGE, "final_fraction": (1e-4, 0.3, "log")}),
    "exponential decay": Family("schedule", {"lr": LR_RANGE, "total_decay": (3.0, 1e4, "log")}),
    "one-cycle": Family("schedule", {"lr": LR_RANGE, "pct_start": (0.05, 0.5, "linear")}),
    "ReduceLROnPlateau": Family("schedule", {"lr": LR_RANGE, "factor": (0.1, 0.8, "linear"),
                                             "patience": (10.0, 2000.0, "log-int")}),
    "Adam-HD": Family("schedule", {"lr": LR_RANGE, "hypergradient_lr": (1e-9, 1e-3, "log")}),
    "DQN as described, tuned": Family("agent", DQN_RANGES),
    "scale-free DQN, tuned": Family("agent", DQN_RANGES, SCALE_FREE),
    **{name: Family("optimiser", ranges) for name, ranges in peers.LR_FREE.items()},
}
"""Every tuned family, each searched with the same number of configurations (StudyConfig.tuning_budget)."""


def with_overrides(config: Config, overrides: dict) -> Config:
    """A copy of config with some fields of its parts replaced (validated like any Config)."""
    data = config.to_dict()
    for part, fields in overrides.items():
        data[part] = {**data[part], **fields}
    return Config.from_dict(data)


def study_config(config: Config, study: StudyConfig) -> Config:
    """The run config of the study: the agent's run length set to study.steps."""
    return with_overrides(config, {"schedule": {"steps": study.steps}})


def family_configurations(family: Family, budget: int, seed: int) -> list[dict[str, float]]:
    """budget configurations spread over the family's ranges by a scrambled Sobol sequence
    (scipy.stats.qmc): every family gets the same number, placed the same unbiased way."""
    from scipy.stats import qmc

    names = list(family.ranges)
    points = qmc.Sobol(len(names), scramble=True, seed=seed).random(budget)
    configurations = []
    for point in points:
        values = {}
        for name, u in zip(names, point):
            low, high, scale = family.ranges[name]
            value = low + u * (high - low) if scale == "linear" else math.exp(
                math.log(low) + u * (math.log(high) - math.log(low)))
            values[name] = float(round(value)) if scale == "log-int" else float(value)
        configurations.append(values)
    return configurations


def schedule_factory(name: str, params: dict, steps: int) -> Callable | None:
    """The torch.optim.lr_scheduler factory of a schedule family (None: constant or an adaptive rule)."""
    from torch.optim import lr_scheduler
    lr = params["lr"]
    if name == "cosine annealing":
        return lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * params["final_fraction"])
    if name == "exponential decay":
        return lambda opt: lr_scheduler.ExponentialLR(opt, gamma=params["total_decay"] ** (-1.0 / steps))
    if name == "one-cycle":
        # lr only: torch's default also cycles Adam's beta1, which the batched engine's Adam keeps fixed
        return lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=params["pct_start"],
                                                   cycle_momentum=False)
    return None


def run_family(name: str, params: dict, config: Config, seeds: Sequence[int], steps: int,
               progress: bool = False) -> list[RunResult]:
    """One configuration of a family on some seeds, for `steps` optimiser steps (batched engine)."""
    family, seeds = FAMILIES[name], rc.check_seeds("seeds", seeds)
    if family.kind == "optimiser":
        return peers.run_lr_free(name, params, config, seeds, steps)
    if family.kind == "agent":
        agent = with_overrides(config, {**agent_overrides(name, params), "schedule": {**family.schedule, "steps": steps}})
        return rlr_batched.train_rl_scheduled(agent, seeds, progress=progress)
    factory = schedule_factory(name, params, steps)
    lr = rlr_batched.lr_schedule(factory, params["lr"], steps) if factory is not None else params["lr"]
    options: dict = {}
    if name == "ReduceLROnPlateau":
        options["plateau"] = {"factor": params["factor"], "patience": int(params["patience"])}
    if name == "Adam-HD":
        options["hypergradient_lr"] = params["hypergradient_lr"]
    return rlr_batched.train_full_batch(config, seeds, lr, steps, name, progress, **options)


def tune_family(name: str, config: Config, study: StudyConfig, progress: bool = False,
                submitted: Sequence[Callable[[], list]] | None = None) -> tuple[dict, pd.DataFrame]:
    """The family's configuration with the lowest geometric-mean validation MSE over the tuning seeds
    (a diverged run scores +inf: never chosen), and one row per configuration tried. submitted: for a
    learning-rate-free family, the collect() of each configuration's runs already submitted (tune_families)."""
    rows = []
    for index, params in enumerate(family_configurations(FAMILIES[name], study.tuning_budget, study.search_seed)):
        runs = submitted[index]() if submitted else run_family(name, params, config, study.tuning_seeds, study.steps,
                                                                progress)
        scores = [heldout_mse(run, "validation", study.n_heldout_examples) for run in runs]
        score = float(gmean([np.inf if not np.isfinite(value) else value for value in scores]))
        rows.append({"family": name, "configuration": index, **params, "validation MSE": score,
                     "diverged": sum(run.diverged_at is not None for run in runs)})
    table = pd.DataFrame(rows)
    if not np.isfinite(table["validation MSE"]).any():
        raise FloatingPointError(f"every configuration of {name} diverged on the tuning seeds: widen or move its ranges")
    best = int(table["validation MSE"].idxmin())
    table["chosen"] = table.index == best
    return {key: table.loc[best, key] for key in FAMILIES[name].ranges}, table


def tuning_edges(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per family and hyperparameter: 'inside', or 'lowest tried' / 'highest tried' when the chosen value
    is an extreme of the configurations tried (then the best may lie outside: the range must grow)."""
    edges: dict[str, dict[str, str]] = {}
    for name, part in table.groupby("family", sort=False):
        chosen = part[part["chosen"]].iloc[0]
        edges[name] = {}
        for parameter in FAMILIES[name].ranges:
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
    submitted = {name: [peers.submit_lr_free(name, params, config, study.tuning_seeds, study.steps) for params in
                        family_configurations(FAMILIES[name], study.tuning_budget, study.search_seed)]
                 for name in names if FAMILIES[name].kind == "optimiser"}
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


def tidy_table(methods: dict[str, Sequence[RunResult]], budget: str, study: StudyConfig) -> pd.DataFrame:
    """One row per method x seed: training MSE (median of the last 100: the primary training metric;
    the final value), validation and test MSE of the final weights, cost and divergence."""
    rows = []
    for method, runs in methods.items():
        for run in runs:
            summary = run.summary()
            rows.append({"budget": budget, "method": method, "seed": run.seed,
                         "logged": summary["n_logged"], "train_median_last_100": summary["median_last_100"],
                         "train_final": summary["final_loss"],
                         "validation_mse": heldout_mse(run, "validation", study.n_heldout_examples),
                         "test_mse": heldout_mse(run, "test", study.n_heldout_examples),
                         "diverged_at": run.diverged_at, "wall_seconds_per_run": run.wall_seconds})
    return pd.DataFrame(rows)


def tuned_label(name: str) -> str:
    """The label of a tuned family's runs in the tables (agent families carry 'tuned' in their name)."""
    return TUNED if name == "constant lr" else name if FAMILIES[name].kind == "agent" else f"{name}, tuned"


def run_tuned(chosen: dict[str, dict], config: Config, study: StudyConfig, progress: bool = False
              ) -> dict[str, list[RunResult]]:
    """Every tuned family at its chosen configuration on the evaluation seeds (the per-seed optimisers'
    runs submitted first, as in tune_families)."""
    submitted = {name: peers.submit_lr_free(name, params, config, study.eval_seeds, study.steps)
                 for name, params in chosen.items() if FAMILIES[name].kind == "optimiser"}
    return {tuned_label(name): submitted[name]() if name in submitted else
            run_family(name, params, config, study.eval_seeds, study.steps, progress) for name, params in chosen.items()}


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


def constant_configurations(config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """The constant lr at each of its study.tuning_budget configurations, on the evaluation seeds."""
    return {f"constant lr {params['lr']:.2e}": run_family("constant lr", params, config, study.eval_seeds, study.steps,
                                                          progress)
            for params in family_configurations(FAMILIES["constant lr"], study.tuning_budget, study.search_seed)}


def picked_constant(config: Config, study: StudyConfig, progress: bool = False) -> list[RunResult]:
    """Per evaluation seed, the constant-lr configuration (of study.tuning_budget) with the lowest validation
    MSE (never the test set): a per-run choice among that many runs, the equal-compute peer of a PBT
    population of the same size."""
    return pick_per_seed(constant_configurations(config, study, progress), "validation", study.n_heldout_examples)[0]


def headroom_label(n_candidates: int, split: str) -> str:
    return f"best of {n_candidates} schedules per seed ({'validation' if split == 'validation' else 'hindsight: test'})"


def pbt_label(population: int) -> str:
    return f"PBT, population {population}"


def equal_compute_label(population: int) -> str:
    return f"constant lr, best of {population} per seed (validation)"


def optimiser_steps_paid(study: StudyConfig, tuning: StudyConfig, population: int) -> pd.DataFrame:
    """What each method of notebook 06 pays in optimiser steps: per evaluated run (a PBT population and
    the per-seed pick run `population` runs), and once for tuning on the tuning seeds (notebook 04's
    families, given `tuning`, notebook 04's StudyConfig), which any number of runs then reuse."""
    once = tuning.tuning_budget * tuning.n_tuning_seeds * tuning.steps
    return pd.DataFrame([
        {"method": pbt_label(population), "optimiser steps per run": population * study.steps, "tuning, once": 0},
        {"method": equal_compute_label(population), "optimiser steps per run": population * study.steps,
         "tuning, once": 0},
        {"method": "a family tuned in notebook 04", "optimiser steps per run": study.steps, "tuning, once": once},
    ]).set_index("method")


BEST_LR_FREE_RULE = ("the learning-rate-free optimiser whose chosen configuration has the lowest validation MSE "
                     "on the tuning seeds")
"""How the pre-registered learning-rate-free reference is picked: on validation data, never on test data."""


def best_lr_free(tuning: pd.DataFrame) -> str:
    """The tuned label of the learning-rate-free family picked by BEST_LR_FREE_RULE from the tuning table."""
    return best_chosen(tuning, list(peers.LR_FREE), "learning-rate-free")


BEST_SCHEDULE_RULE = ("the schedule family other than the constant lr whose chosen configuration has the lowest "
                      "validation MSE on the tuning seeds")
"""How the pre-registered best schedule is picked: on validation data, never on test data."""


def best_schedule(tuning: pd.DataFrame) -> str:
    """The tuned label of the schedule family picked by BEST_SCHEDULE_RULE from the tuning table."""
    return best_chosen(tuning, [name for name, family in FAMILIES.items()
                                if family.kind == "schedule" and name != "constant lr"], "schedule")


def best_chosen(tuning: pd.DataFrame, families: Sequence[str], what: str) -> str:
    """The tuned label of the family, among families, whose chosen configuration scored the lowest
    validation MSE in the tuning table."""
    chosen = tuning[tuning["chosen"] & tuning["family"].isin(list(families))]
    if chosen.empty:
        raise ValueError(f"the tuning table holds no {what} family")
    return tuned_label(str(chosen.loc[chosen["validation MSE"].idxmin(), "family"]))


def run_original_agents(config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """Every agent at the original's settings on the evaluation seeds, plus the described agent's greedy
    policy frozen at the end of its run and replayed from the same initial network."""
    runs = {label: rlr_batched.train_rl_scheduled(with_overrides(config, overrides), study.eval_seeds,
                                                  progress=progress)
            for label, overrides in ORIGINAL_AGENTS.items()}
    policies = [run.policy_state for run in runs["DQN as described"]]
    runs["DQN greedy policy, frozen after training"] = rlr_batched.train_rl_scheduled(
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
    return with_overrides(config, {**agent_overrides(label, chosen[label]), "schedule": FAMILIES[label].schedule})


def agent_overrides(name: str, params: dict) -> dict:
    """Config overrides of a DQN family's configuration: its dqn.* values, the horizon as gamma."""
    dqn = {key.removeprefix("dqn."): value for key, value in params.items() if key != "dqn.horizon"}
    return {"dqn": {**dqn, "gamma": 1.0 - 1.0 / params["dqn.horizon"]}}


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
    primary = report.preregistered_tests(table, comparisons, PRIMARY_METRICS)
    secondary = report.preregistered_tests(table, comparisons, ["train_final"])
    return pd.concat([primary.assign(primary=True), secondary.assign(primary=False)], ignore_index=True)


def benchmark_summary(results_dir: str | Path) -> dict:
    """Notebook 04's summary (results/benchmark_summary.json); FileNotFoundError before notebook 04 ran."""
    path = Path(results_dir) / "benchmark_summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 04 first")
    return json.loads(path.read_text())


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
}
"""Held-out tasks: label -> overrides of the training TaskConfig (the first is the training task itself,
evaluated on new data seeds and initialisations)."""

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
    for config.schedule.steps steps, on the batched engine; a controller's decision interval or control
    features, which that engine does not run, run on LRControlVectorEnv (run_policy, its batched step).
    The agent itself is left unchanged."""
    seeds = rc.check_seeds("seeds", seeds)
    if config.schedule.decision_interval != 1 or config.schedule.features == "control":
        if config.dqn.variant != "described":
            raise ValueError("a controller's schedule runs the 'described' variant only")
        return run_policy(config, greedy_policy(agent), seeds, f"rl_{config.dqn.variant}_frozen")
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress,
                                          initial_policies=[agent.policy_weights()] * len(seeds), frozen=True)


CONTROLLER_GRID_SIZE = 12
"""points of the controller's lr grid between lr_range's ends (the grid places the start and clips the lr)"""


@dataclass
class ControllerConfig:
    """A learning-rate controller against short-horizon bias (issue: an RL controller done right): a DQN
    with control features (the budget left in its state), a decision every decision_interval steps and the
    telescoping log reward, trained over many tasks at once on LRControlVectorEnv."""

    decision_interval: int = 100
    """optimiser steps per decision (a 10 000-step run is 100 decisions)"""
    lr_factors: tuple = (0.5, 1.0, 2.0)
    """what an action does to the lr (clipped to the grid's range)"""
    lr_range: tuple = (1e-5, 0.3)
    """the lr's bounds, the range the tuned schedules search; the grid of 12 between them places the start"""
    start_index: int = 5
    """grid index of the first lr (about 1e-3 on the default range)"""
    n_envs: int = 16
    """tasks trained at once (the vector environment's K)"""
    training_rounds: int = 4
    """episodes per task: n_envs x training_rounds training episodes in all, each on a new task seed (16 x 4
    x 10 000 optimiser steps: what tuning one family costs, 8 configurations x 8 seeds)"""
    first_training_seed: int = 3000
    """the first round's task seeds are first_training_seed + i; later ones are drawn by the environment"""
    updates_per_step: int = 16
    """DQN updates per vector step (16 with 16 tasks: one per transition, as the original's one per step)"""
    agent_seed: int = 0
    """seed of the agent's exploration, replay sampling and Q-network"""

    def __post_init__(self) -> None:
        for name, minimum in (("decision_interval", 1), ("start_index", 0), ("n_envs", 1), ("training_rounds", 1),
                              ("first_training_seed", 0), ("updates_per_step", 1), ("agent_seed", 0)):
            rc.check_int(f"controller.{name}", getattr(self, name), minimum)
        self.lr_range = rc.check_lr_range("controller.lr_range", self.lr_range)
        self.lr_factors = rc.check_sequence("controller.lr_factors", self.lr_factors)
        if len(self.lr_factors) < 2:  # an empty tuple would mean index shifts to ScheduleConfig
            raise ValueError(f"controller.lr_factors must name at least two lr multipliers, got {self.lr_factors}")
        for index, value in enumerate(self.lr_factors):
            rc.check_float(f"controller.lr_factors[{index}]", value, 0.0, math.inf, high_open=True)
        if self.start_index >= CONTROLLER_GRID_SIZE:
            raise ValueError(f"controller.start_index must be in [0, {CONTROLLER_GRID_SIZE - 1}] (on the grid of "
                             f"{CONTROLLER_GRID_SIZE}), got {self.start_index}")

    def first_round_seeds(self) -> list[int]:
        """The task seeds of the first training round (later rounds draw 63-bit seeds from the environment)."""
        return list(range(self.first_training_seed, self.first_training_seed + self.n_envs))

    def check_disjoint(self, seeds: Sequence[int], what: str = "evaluation or tuning seeds") -> None:
        """ValueError, before any training, if the controller's first-round task seeds meet the given seeds."""
        shared = sorted(set(self.first_round_seeds()) & set(rc.check_seeds("seeds", seeds)))
        if shared:
            raise ValueError(f"the controllers' training task seeds {self.first_training_seed}.."
                             f"{self.first_training_seed + self.n_envs - 1} (controller.first_training_seed) overlap "
                             f"the {what} {shared[:5]}{'...' if len(shared) > 5 else ''}: move one of them")

    def check_steps(self, steps: int) -> None:
        """ValueError naming controller.decision_interval if runs of `steps` cannot hold one decision."""
        rc.check_int("steps", steps, 1)
        if self.decision_interval > steps:
            raise ValueError(f"controller.decision_interval ({self.decision_interval}) must be at most the run's "
                             f"steps ({steps})")

    def schedule(self, steps: int) -> rc.ScheduleConfig:
        """The controller's ScheduleConfig for runs of `steps` optimiser steps (validated there)."""
        low, high = self.lr_range
        self.check_steps(steps)
        grid = tuple(float(lr) for lr in np.logspace(math.log10(low), math.log10(high), CONTROLLER_GRID_SIZE))
        return rc.ScheduleConfig(lr_grid=grid, start_index=self.start_index, steps=steps, features="control",
                                 lr_factors=tuple(self.lr_factors), decision_interval=self.decision_interval)


def train_controller(config: Config, controller: ControllerConfig) -> tuple[Config, rc.DQNAgent, pd.DataFrame]:
    """Train a controller (config.dqn's DQN on controller.schedule(config.schedule.steps)) over
    n_envs x training_rounds task episodes on LRControlVectorEnv. Returns the config its policy runs with
    (for evaluate_frozen_agent), the agent, and its learning curve: one row per training episode (round,
    seed, return log L_0 - log L_T, whether it diverged)."""
    from rlr_env import LRControlVectorEnv, train_agent_on_vector_env
    run_config = with_overrides(config, {"schedule": asdict(controller.schedule(config.schedule.steps))})
    schedule = run_config.schedule
    env = LRControlVectorEnv(controller.n_envs, run_config.task, schedule, dtype=run_config.dtype,
                             device=run_config.device)
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, run_config.dqn, controller.agent_seed,
                        rc.DTYPES[run_config.dtype], run_config.device)
    decisions = -(-schedule.steps // schedule.decision_interval)
    history = train_agent_on_vector_env(env, agent, (decisions + 1) * controller.training_rounds,
                                        controller.first_training_seed, controller.updates_per_step)
    curve = pd.DataFrame({"episode": range(len(history["episode_returns"])), "seed": history["episode_seeds"],
                          "return": history["episode_returns"], "diverged": history["episode_terminated"]})
    curve["round"] = curve["episode"] // controller.n_envs
    return run_config, agent, curve


def greedy_policy(agent: rc.DQNAgent) -> Callable[[np.ndarray], np.ndarray]:
    """The agent's frozen greedy policy for many observations at once (argmax of its policy network); the
    agent, its RNG included, is left as it is."""
    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            states = torch.as_tensor(observations, dtype=agent.dtype, device=agent.device)
            return agent.policy_net(states).argmax(dim=-1).cpu().numpy()
    return act


def run_policy(config: Config, act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int],
               method: str = "policy") -> list[RunResult]:
    """A policy (observations [K, state_dim] -> actions [K]: greedy_policy, or a stable-baselines3 model's
    predict) steering Adam for one episode of config.schedule.steps optimiser steps on every seed at once
    (LRControlVectorEnv, the batched engine): per seed a RunResult logging the loss and lr of every
    optimiser step, as the reference loop does, and the final network (none for a run that diverged)."""
    from rlr_env import LRControlVectorEnv
    seeds = rc.check_seeds("seeds", seeds)
    env = LRControlVectorEnv(len(seeds), config.task, config.schedule, dtype=config.dtype, device=config.device)
    observation, _ = env.reset(seed=seeds)
    series = [{"loss": [], "lr": []} for _ in seeds]
    finished, diverged_at = np.zeros(len(seeds), dtype=bool), [None] * len(seeds)
    started = time.perf_counter()
    while not finished.all():
        observation, _, terminated, truncated, info = env.step(np.asarray(act(observation)))
        for k in np.flatnonzero(~finished):
            losses = info["step_losses"][k, :info["steps_taken"][k]]
            if terminated[k]:  # the interval's last loss is the non-finite one: the series stop before it
                diverged_at[k], losses = len(series[k]["loss"]) + len(losses) - 1, losses[:-1]
            series[k]["loss"] += losses.tolist()
            series[k]["lr"] += [float(info["lr"][k])] * len(losses)
        finished |= terminated | truncated
    seconds = (time.perf_counter() - started) / len(seeds)
    models = env.net.to_modules(lambda: rc.MaclaurinNet(config.task))
    return [RunResult(method, config.with_seed(seed).to_dict(),
                      {name: np.asarray(values) for name, values in series[k].items()}, seconds, diverged_at[k],
                      models[k] if diverged_at[k] is None else None) for k, seed in enumerate(seeds)]


# ---------------------------------------------------------------------------------------------------
# Learned controllers (notebook 04, reused frozen in notebook 05): a DQN controller tuned with the same
# budget as every family, and stable-baselines3's PPO and DQN as learners nobody here wrote, all trained on
# LRControlVectorEnv over task seeds of their own, then frozen.
# ---------------------------------------------------------------------------------------------------

CONTROLLER_RANGES = {"dqn.lr": (1e-5, 1e-2, "log"), "dqn.horizon": (10.0, 1000.0, "log"),
                     "dqn.epsilon_decay": (100.0, 10_000.0, "log")}
"""The DQN controller's search, fixed before any controller result: the Q-network's Adam lr, the discount
as a horizon in decisions (10 decisions = 1 000 optimiser steps; 1 000 is about gamma 1 over a 100-decision
run: no short-horizon bias) and the exploration time constant in acts (a training of 4 rounds on 16 tasks
acts about 6 500 times)."""

CONTROLLER_DQN = {"double_dqn": True, "replay_capacity": 100_000, "learning_starts": 256}
"""The controller DQN's fixed settings: Double DQN, a replay memory holding every transition of its training."""

DQN_CONTROLLER, SB3_PPO, SB3_DQN = "DQN controller, tuned", "PPO controller (stable-baselines3)", \
    "DQN controller (stable-baselines3)"
"""Labels of the learned controllers in the tables."""

BEST_CONTROLLER_RULE = ("the learned controller with the lowest validation MSE on the tuning seeds (for the "
                        "tuned DQN controller, its chosen configuration's)")
"""How the pre-registered best RL controller is picked: on validation data, never on test data."""


@dataclass
class TrainedController:
    """A controller trained over many tasks, then frozen: what notebook 04 evaluates and notebook 05 reloads."""

    label: str
    """its label in the tables"""
    learner: str
    """'dqn' (rlr_core.DQNAgent) or an SB3_LEARNERS name"""
    run_config: dict
    """Config.to_dict() of the runs its policy steers (the controller's schedule)"""
    policy: dict
    """the policy's weights as plain tensors: the DQN's policy_net state_dict, or the SB3 model's
    policy.state_dict() (rebuilt by sb3_policy from the learner's class and the run's spaces, never unpickled)"""
    curve: pd.DataFrame
    """one row per training episode: episode, round, seed, return (log L_0 - log L_T), diverged"""
    training_seconds: float
    """wall seconds of its training (one process, one thread)"""
    params: dict = field(default_factory=dict)
    """the configuration it was trained with (the tuned knobs)"""
    validation_mse: list = field(default_factory=list)
    """its frozen runs' validation MSE on the tuning seeds (NaN: diverged)"""

    def act(self) -> Callable[[np.ndarray], np.ndarray]:
        """The frozen greedy policy: observations [K, state_dim] -> actions [K] (for run_policy)."""
        config = Config.from_dict(self.run_config)
        if self.learner == "dqn":
            agent = rc.DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, 0,
                                rc.DTYPES[config.dtype], config.device)
            agent.policy_net.load_state_dict(self.policy)
            return greedy_policy(agent)
        policy = sb3_policy(self.learner, config, self.policy)
        return lambda observations: policy.predict(observations, deterministic=True)[0]

    @property
    def training_optimiser_steps(self) -> int:
        return len(self.curve) * Config.from_dict(self.run_config).schedule.steps


@contextmanager
def quiet_sb3():
    """SB3's two expected warnings silenced: PPO's (64 does not divide a rollout of 16 x 101, so the last
    mini-batch is smaller) and DQN's (its target update follows each vector step, as sb3_dqn intends)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You have specified a mini-batch size|The number of environments used")
        yield


def _sb3_ppo(env, seed: int, decisions: int):
    """SB3's PPO at its defaults, except a rollout of one episode per task (n_steps = decisions; the
    default 2048 per task would be 20 episodes each, more than a training holds)."""
    from stable_baselines3 import PPO
    return PPO("MlpPolicy", env, n_steps=decisions, seed=seed, device="cpu")


def _sb3_dqn(env, seed: int, decisions: int):
    """SB3's DQN with the controller DQN's design (CONTROLLER_DQN, DQNConfig's defaults: batch 64, Adam 1e-3,
    gamma 0.99, soft target update, epsilon from 0.9 to 0.05 over the first quarter, one update per
    transition); SB3 updates the target once per vector step, so its tau is the pull of n_envs updates at
    tau 0.005. SB3's DQN has no Double DQN."""
    from stable_baselines3 import DQN
    return DQN("MlpPolicy", env, learning_rate=1e-3, buffer_size=CONTROLLER_DQN["replay_capacity"],
               learning_starts=CONTROLLER_DQN["learning_starts"], batch_size=64, tau=1 - 0.995 ** env.num_envs,
               gamma=0.99,
               train_freq=1, gradient_steps=env.num_envs, target_update_interval=1, exploration_fraction=0.25,
               exploration_initial_eps=0.9, exploration_final_eps=0.05, seed=seed, device="cpu")


SB3_LEARNERS = {"ppo": ("PPO", _sb3_ppo, SB3_PPO), "dqn-sb3": ("DQN", _sb3_dqn, SB3_DQN)}
"""stable-baselines3 learners: name -> (its class in stable_baselines3, builder, label). The builders are private:
SB3 seeds torch, numpy and random globally when it builds a model and draws from them while it learns, so
building and learning happen together inside one rc.global_rng_preserved() block (train_sb3_controller)."""


def sb3_policy(learner: str, config: Config, weights: dict):
    """An SB3 learner's trained policy rebuilt from plain tensors: its algorithm's MlpPolicy at the builders'
    (default) architecture for the run's observation and action spaces, with weights loaded (strict) and in
    eval mode. SB3's own load() is not used: it unpickles the saved zip's data with cloudpickle, so a stored
    file could run code. The global random state is left as it was (building the policy draws its initial
    weights, which the loaded ones replace)."""
    import importlib

    from rlr_env import LRControlEnv
    if learner not in SB3_LEARNERS:
        raise ValueError(f"learner must be one of {sorted(SB3_LEARNERS)}, got {learner!r}")
    policy_class = importlib.import_module(f"stable_baselines3.{SB3_LEARNERS[learner][0].lower()}").MlpPolicy
    spaces = LRControlEnv(config.task, config.schedule, dtype=config.dtype)
    with rc.global_rng_preserved():
        policy = policy_class(spaces.observation_space, spaces.action_space, lr_schedule=lambda _: 0.0)
    policy.load_state_dict(weights)
    policy.set_training_mode(False)
    return policy


def validate_controller(trained: TrainedController, study: StudyConfig) -> TrainedController:
    """Its frozen policy on the tuning seeds (never an evaluation seed): validation MSE per seed."""
    runs = frozen_controller_runs(trained, study.tuning_seeds)
    trained.validation_mse = [heldout_mse(run, "validation", study.n_heldout_examples) for run in runs]
    return trained


def train_dqn_controller(config: Config, study: StudyConfig, controller: ControllerConfig, params: dict
                         ) -> TrainedController:
    """One configuration of the DQN controller (CONTROLLER_RANGES' knobs), trained and validated."""
    overrides = agent_overrides(DQN_CONTROLLER, params)
    dqn_config = with_overrides(config, {"dqn": {**CONTROLLER_DQN, **overrides["dqn"]}})
    started = time.perf_counter()
    run_config, agent, curve = train_controller(dqn_config, controller)
    trained = TrainedController(DQN_CONTROLLER, "dqn", run_config.to_dict(), agent.policy_net.state_dict(), curve,
                                time.perf_counter() - started, dict(params))
    return validate_controller(trained, study)


def train_sb3_controller(config: Config, study: StudyConfig, controller: ControllerConfig, learner: str
                         ) -> TrainedController:
    """An SB3 learner on the controller's environment, task seeds, episodes and reward; validated."""
    from rlr_env import LRControlVectorEnv
    from rlr_sb3 import SB3VectorEnv
    run_config = with_overrides(config, {"schedule": asdict(controller.schedule(config.schedule.steps))})
    schedule = run_config.schedule
    env = SB3VectorEnv(LRControlVectorEnv(controller.n_envs, run_config.task, schedule, dtype=run_config.dtype,
                                          device=run_config.device))
    decisions = -(-schedule.steps // schedule.decision_interval)
    _, build, label = SB3_LEARNERS[learner]
    started = time.perf_counter()
    with quiet_sb3(), rc.global_rng_preserved():  # SB3 seeds torch, numpy and random globally
        model = build(env, controller.agent_seed, decisions)
        env.seed(controller.first_training_seed)  # after the model: SB3 seeds the env with its own seed
        model.learn(controller.n_envs * decisions * controller.training_rounds)
    seconds = time.perf_counter() - started
    curve = pd.DataFrame(env.episodes).rename(columns={"terminated": "diverged"})
    curve.insert(0, "episode", range(len(curve)))
    curve["round"] = curve["episode"] // controller.n_envs
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.policy.state_dict().items()}
    trained = TrainedController(label, learner, run_config.to_dict(), weights, curve, seconds)
    return validate_controller(trained, study)


def submit_controllers(config: Config, study: StudyConfig, controller: ControllerConfig
                       ) -> Callable[[], list[TrainedController]]:
    """Start training every controller: the DQN controller at study.tuning_budget configurations of
    CONTROLLER_RANGES (scrambled Sobol, as every family) and the SB3 learners (untuned, one configuration
    each), one Ray task per training when Ray is started (peers.submit_tasks: they train while this process
    goes on). Returns collect(), for choose_controllers."""
    configurations = family_configurations(Family("controller", CONTROLLER_RANGES), study.tuning_budget,
                                           study.search_seed)
    collect_dqn = peers.submit_tasks(train_dqn_controller, [(config, study, controller, params)
                                                            for params in configurations])
    collect_sb3 = peers.submit_tasks(train_sb3_controller, [(config, study, controller, learner)
                                                            for learner in SB3_LEARNERS])
    return lambda: collect_dqn() + collect_sb3()


def choose_controllers(candidates: Sequence[TrainedController], study: StudyConfig
                       ) -> tuple[dict[str, TrainedController], pd.DataFrame]:
    """The DQN controller configuration with the lowest geometric-mean validation MSE on the tuning seeds
    (a diverged run scores +inf) and every SB3 learner: label -> trained controller, and one row per
    controller trained. RuntimeError if any trained on an evaluation or tuning seed."""
    seen = {int(seed) for trained in candidates for seed in trained.curve["seed"]}
    if seen & (set(study.eval_seeds) | set(study.tuning_seeds)):
        raise RuntimeError("a controller trained on an evaluation or tuning seed: move controller.first_training_seed")
    rows = []
    for index, trained in enumerate(candidates):
        scores = np.array([np.inf if not np.isfinite(value) else value for value in trained.validation_mse])
        rows.append({"controller": trained.label, "configuration": index if trained.learner == "dqn" else 0,
                     **trained.params, "validation MSE": float(gmean(scores)), "diverged": int(np.isinf(scores).sum()),
                     "training episodes": len(trained.curve), "training seconds": trained.training_seconds})
    table = pd.DataFrame(rows)
    dqn_rows = table[table["controller"] == DQN_CONTROLLER]
    best = int(dqn_rows["validation MSE"].idxmin()) if np.isfinite(dqn_rows["validation MSE"]).any() else 0
    table["chosen"] = (table["controller"] != DQN_CONTROLLER) | (table.index == best)
    return {trained.label: trained for index, trained in enumerate(candidates) if table.loc[index, "chosen"]}, table


def tune_controllers(config: Config, study: StudyConfig, controller: ControllerConfig
                     ) -> tuple[dict[str, TrainedController], pd.DataFrame]:
    """submit_controllers, then choose_controllers: label -> trained controller, and the tuning table."""
    return choose_controllers(submit_controllers(config, study, controller)(), study)


def best_controller(table: pd.DataFrame) -> str:
    """The label picked by BEST_CONTROLLER_RULE from tune_controllers' table."""
    chosen = table[table["chosen"]]
    return str(chosen.loc[chosen["validation MSE"].idxmin(), "controller"])


def frozen_controller_runs(trained: TrainedController, seeds: Sequence[int], config: Config | None = None
                           ) -> list[RunResult]:
    """A frozen controller on the seeds (run_policy); config: another task's run config (its task and steps
    replace the controller's), e.g. notebook 05's held-out tasks."""
    run_config = Config.from_dict(trained.run_config)
    if config is not None:
        run_config = with_overrides(run_config, {"task": asdict(config.task), "schedule": {"steps": config.schedule.steps}})
    return run_policy(run_config, trained.act(), seeds, trained.label)


def submit_controller_runs(controllers: dict[str, TrainedController], seeds: Sequence[int],
                           configs: dict[str, Config | None]) -> Callable[[], dict[str, dict[str, list[RunResult]]]]:
    """frozen_controller_runs of every controller under every config (label -> a task's run config, None
    for the controller's own), one Ray task each when Ray is started (peers.submit_tasks). Returns
    collect(): config label -> controller label -> runs."""
    calls = [(trained, list(seeds), config) for config in configs.values() for trained in controllers.values()]
    collect = peers.submit_tasks(frozen_controller_runs, calls)

    def gather() -> dict[str, dict[str, list[RunResult]]]:
        runs = iter(collect())
        return {name: {label: next(runs) for label in controllers} for name in configs}
    return gather


def run_controllers(controllers: dict[str, TrainedController], seeds: Sequence[int], config: Config | None = None
                    ) -> dict[str, list[RunResult]]:
    """Every frozen controller on the seeds (submit_controller_runs under one config): label -> runs."""
    return submit_controller_runs(controllers, seeds, {"runs": config})()["runs"]


def task_configs(config: Config, tasks: dict[str, rc.TaskConfig]) -> dict[str, Config]:
    """config with each task in place of its own: task label -> run config."""
    return {label: with_overrides(config, {"task": asdict(task)}) for label, task in tasks.items()}


CONTROLLERS_FILE_FORMAT, CONTROLLERS_FILE_VERSION = "rlr_scheduler.controllers", 2
"""save_controllers' file: version 2 holds plain tensors and values only (version 1 held SB3's pickled zips)."""

CONTROLLER_FIELDS = {"label": str, "learner": str, "run_config": dict, "policy": dict, "curve": dict,
                     "training_seconds": float, "params": dict, "validation_mse": list}
"""Every field a saved controller holds, with its type on disk (the curve as a dict of columns)."""


def save_controllers(controllers: dict[str, TrainedController], path: str | Path) -> Path:
    """The frozen controllers in one file (atomic), for notebook 05 and your own loop: plain tensors, strings,
    numbers, lists and dicts, so that torch.load(path, weights_only=True) reads it and nothing is unpickled."""
    from rlr_results import atomic_write
    payload = {"format": CONTROLLERS_FILE_FORMAT, "format_version": CONTROLLERS_FILE_VERSION, "controllers": {
        label: {"label": trained.label, "learner": trained.learner, "run_config": trained.run_config,
                "policy": {name: tensor.detach().cpu() for name, tensor in trained.policy.items()},
                "curve": trained.curve.to_dict(orient="list"), "training_seconds": float(trained.training_seconds),
                "params": dict(trained.params), "validation_mse": [float(value) for value in trained.validation_mse]}
        for label, trained in controllers.items()}}
    return atomic_write(path, lambda file: torch.save(payload, file))


def load_controllers(path: str | Path) -> dict[str, TrainedController]:
    """save_controllers' file back, read with weights_only=True (tensors and plain values, no code).
    FileNotFoundError for a missing file; ValueError naming the file and what is wrong for anything that is
    not such a file (random, truncated or empty bytes, another payload, missing fields, weights of the wrong
    shape for the controller's network)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 04 first")
    where = f"load_controllers({str(path)!r})"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # random, truncated or empty bytes, or a pickle that is not plain data
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{where}: not a file written by save_controllers (torch.load with weights_only=True "
                         f"failed: {type(error).__name__}: {first_line})") from error
    if not isinstance(payload, dict) or payload.get("format") != CONTROLLERS_FILE_FORMAT:
        raise ValueError(f"{where}: not a file written by save_controllers (no format={CONTROLLERS_FILE_FORMAT!r})")
    if payload.get("format_version") != CONTROLLERS_FILE_VERSION:
        raise ValueError(f"{where}: format_version {payload.get('format_version')!r}, this code reads "
                         f"version {CONTROLLERS_FILE_VERSION}")
    if not isinstance(payload.get("controllers"), dict) or not payload["controllers"]:
        raise ValueError(f"{where}: 'controllers' must be a non-empty dict of label -> controller")
    return {label: checked_controller(fields, f"{where}[{label!r}]") for label, fields in payload["controllers"].items()}


def checked_controller(fields: Any, where: str) -> TrainedController:
    """One saved controller's fields as a TrainedController whose policy loads, or ValueError saying why."""
    if not isinstance(fields, dict) or set(fields) != set(CONTROLLER_FIELDS):
        keys = sorted(map(str, fields)) if isinstance(fields, dict) else type(fields).__name__
        raise ValueError(f"{where}: a controller holds exactly {sorted(CONTROLLER_FIELDS)}, got {keys}")
    for name, kind in CONTROLLER_FIELDS.items():
        if not isinstance(fields[name], kind) or (kind is float and isinstance(fields[name], bool)):
            raise ValueError(f"{where}: {name} must be a {kind.__name__}, got {type(fields[name]).__name__}")
    if fields["learner"] != "dqn" and fields["learner"] not in SB3_LEARNERS:
        raise ValueError(f"{where}: learner must be 'dqn' or one of {sorted(SB3_LEARNERS)}, got {fields['learner']!r}")
    if not all(isinstance(tensor, torch.Tensor) for tensor in fields["policy"].values()):
        raise ValueError(f"{where}: policy must map names to tensors")
    curve = fields["curve"]
    if not {"episode", "seed", "return"} <= set(curve) or len({len(column) for column in curve.values()}) != 1:
        raise ValueError(f"{where}: curve must hold equally long columns episode, seed, return, ...")
    try:
        trained = TrainedController(**{**fields, "curve": pd.DataFrame(curve)})
        trained.act()  # rebuilds the network from run_config and loads the weights (strict: names and shapes)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{where}: its run_config or policy weights do not make a controller: {first_line}") from error
    return trained


def evaluate_on_held_out_tasks(config: Config, tasks: dict[str, rc.TaskConfig],
                               agents: dict[str, tuple[Config, rc.DQNAgent]], tuned: dict[str, dict],
                               seeds: Sequence[int], progress: bool = False,
                               controller_runs: dict[str, dict[str, list[RunResult]]] | None = None
                               ) -> dict[str, dict[str, list[RunResult]]]:
    """task label -> method label -> one run per seed: the tuned constant lr and the tuned cosine
    annealing (tuned: family -> chosen configuration, from tune_family on the training task) and every
    frozen agent, all config.schedule.steps full-batch Adam steps on the same data and initial weights
    of each seed, then the frozen controllers' runs on those tasks and seeds, if given (task label ->
    label -> runs: submit_controller_runs). agents: label -> (the config it was trained with, agent)."""
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
    return pd.concat({task: report.summary_with_win_rates(part, metric, references)
                      for task, part in table.groupby("task", sort=False)}, names=["task"])
