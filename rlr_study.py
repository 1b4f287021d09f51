"""The study: runs over many seeds and methods, the protocol (seeds, tuning, budgets) and its tables.

One seed runs the readable reference loop of rlr_engine (the faithful single run); several seeds run
the batched engine rlr_batched in one process (the same runs up to rounding: tests/test_batched.py).
Two studies live here: the many-seed benchmark of notebook 04 and the transfer study of notebook 05.
Statistics, figures and readings are rlr_report's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from scipy.stats import gmean

import rlr_batched
import rlr_core as rc
import rlr_engine as engine
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
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(seeds) == 1:
        single = Config.from_dict({**config.to_dict(), "seed": seeds[0]})
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
# The many-seed benchmark (notebook 04): methods, tuning on separate seeds, budgets, the tidy table.
# ---------------------------------------------------------------------------------------------------


@dataclass
class StudyConfig:
    """The benchmark study. Tuning seeds and evaluation seeds never overlap (no test-set tuning)."""

    first_eval_seed: int = 0
    """first evaluation seed (seed 0 is also the committed single run of notebooks 01-03)"""
    n_eval_seeds: int = 16
    """evaluation seeds: every method runs on each, with the same data and initial weights"""
    first_tuning_seed: int = 1000
    """first seed used only to choose the tuned constant lr and Adam-HD's hypergradient lr"""
    n_tuning_seeds: int = 8
    """seeds for tuning"""
    steps: int = 10_000
    """optimiser steps of every full-batch method and agent (the agent's budget)"""
    baseline_epochs: int = 10_000
    """epochs of the original mini-batch baseline (the same passes over the data as the agent)"""
    n_test_examples: int = 1024
    """held-out polynomials per seed, same distribution as the training data"""
    hypergradient_lrs: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    """Adam-HD's beta candidates, tuned on the tuning seeds"""
    timing_steps: int = 300
    """steps (epochs / 8 for the baseline) of the single-run timing behind the wall-clock budget"""

    def __post_init__(self) -> None:
        rc.check_int("study.first_eval_seed", self.first_eval_seed, 0)
        rc.check_int("study.n_eval_seeds", self.n_eval_seeds, 1)
        rc.check_int("study.first_tuning_seed", self.first_tuning_seed, 0)
        rc.check_int("study.n_tuning_seeds", self.n_tuning_seeds, 1)
        eval_seeds, tuning_seeds = set(self.eval_seeds), set(self.tuning_seeds)
        if eval_seeds & tuning_seeds:
            raise ValueError(f"study tuning seeds overlap the evaluation seeds: {sorted(eval_seeds & tuning_seeds)}")
        rc.check_int("study.steps", self.steps, 1)
        rc.check_int("study.baseline_epochs", self.baseline_epochs, 1)
        rc.check_int("study.n_test_examples", self.n_test_examples, 1)
        self.hypergradient_lrs = tuple(self.hypergradient_lrs)
        if not self.hypergradient_lrs:
            raise ValueError("study.hypergradient_lrs must not be empty")
        for i, beta in enumerate(self.hypergradient_lrs):
            rc.check_float(f"study.hypergradient_lrs[{i}]", beta, 0.0, math.inf, high_open=True)
        rc.check_int("study.timing_steps", self.timing_steps, 8)

    @property
    def eval_seeds(self) -> list[int]:
        return seed_range(self.first_eval_seed, self.n_eval_seeds)

    @property
    def tuning_seeds(self) -> list[int]:
        return seed_range(self.first_tuning_seed, self.n_tuning_seeds)


AGENT_VARIANTS: dict[str, dict] = {
    "DQN as described": {},
    "DQN as coded (original)": {"dqn": {"variant": "as_coded"}},
    "random index walk": {"dqn": {"epsilon_start": 1.0, "epsilon_end": 1.0}},
    "DQN, log features": {"schedule": {"features": "log"}},
    "DQN, x0.5/x1/x2 actions": {"schedule": {"lr_factors": (0.5, 1.0, 2.0)}},
    "DQN, log features + x0.5/x1/x2": {"schedule": {"features": "log", "lr_factors": (0.5, 1.0, 2.0)}},
}
"""Agent ablations: label -> overrides of Config.dqn / Config.schedule fields."""


def with_overrides(config: Config, overrides: dict) -> Config:
    """A copy of config with some fields of its parts replaced (validated like any Config)."""
    data = config.to_dict()
    for part, fields in overrides.items():
        data[part] = {**data[part], **fields}
    return Config.from_dict(data)


def study_config(config: Config, study: StudyConfig) -> Config:
    """The run config of the study: the agent's run length set to study.steps."""
    return with_overrides(config, {"schedule": {"steps": study.steps}})


def geometric_mean_of(results: Sequence[RunResult], statistic: str = "median_last_100") -> float:
    """Geometric mean over runs of a summary statistic (diverged runs count as +inf: never chosen)."""
    return float(gmean([r.summary()[statistic] if r.diverged_at is None else np.inf for r in results]))


def tune_constant_lr(config: Config, study: StudyConfig, progress: bool = False) -> tuple[float, pd.DataFrame]:
    """The grid lr with the lowest geometric-mean (over tuning seeds) median-of-last-100 training MSE."""
    grid, seeds = config.schedule.lr_grid, study.tuning_seeds
    lrs = np.repeat(grid, len(seeds))[:, None] * np.ones(study.steps)  # member (lr, seed) -> its lr per step
    runs = rlr_batched.train_full_batch(config, seeds * len(grid), lrs, study.steps, "tuning", progress)
    scores = [geometric_mean_of(runs[i * len(seeds):(i + 1) * len(seeds)]) for i in range(len(grid))]
    table = pd.DataFrame({"lr": grid, "tuning MSE (geometric mean, median of last 100)": scores})
    return float(grid[int(np.argmin(scores))]), table


def tune_hypergradient_lr(config: Config, study: StudyConfig, lr: float,
                          progress: bool = False) -> tuple[float, pd.DataFrame]:
    """Adam-HD's beta with the lowest geometric-mean tuning MSE, starting from lr."""
    betas, seeds = study.hypergradient_lrs, study.tuning_seeds
    runs = rlr_batched.train_full_batch(config, seeds * len(betas), lr, study.steps, "tuning", progress,
                                        hypergradient_lr=list(np.repeat(betas, len(seeds))))
    scores = [geometric_mean_of(runs[i * len(seeds):(i + 1) * len(seeds)]) for i in range(len(betas))]
    table = pd.DataFrame({"hypergradient lr": betas, "tuning MSE (geometric mean, median of last 100)": scores})
    return float(betas[int(np.argmin(scores))]), table


def standard_schedules(lr: float, steps: int) -> dict[str, tuple[str, Callable]]:
    """The torch.optim.lr_scheduler schedules of the study, each from the tuned constant lr: name ->
    (its settings in words, factory(optimizer))."""
    from torch.optim import lr_scheduler
    return {
        "cosine annealing": (f"CosineAnnealingLR(T_max={steps}, eta_min=0)",
                             lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=steps)),
        "exponential decay": (f"ExponentialLR(gamma=0.01**(1/{steps})): 100x lower at the end",
                              lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / steps))),
        "one-cycle": (f"OneCycleLR(max_lr=tuned lr, total_steps={steps}), torch defaults otherwise",
                      lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)),
    }


PLATEAU_SETTINGS = {"factor": 0.5, "patience": 200, "threshold": 1e-4, "cooldown": 0, "min_lr": 1e-5}
"""ReduceLROnPlateau from the tuned lr, stepped with the full-data loss after every step."""


def seconds_per_unit(config: Config, study: StudyConfig) -> dict[str, float]:
    """Single-run wall seconds per step (agent, full-batch Adam) and per epoch (mini-batch baseline),
    timed on the readable reference loops: what one run costs a user, the agent's overhead included."""
    short = with_overrides(config, {"schedule": {"steps": study.timing_steps},
                                    "baseline": {"epochs": max(1, study.timing_steps // 8)}})
    timers = {"agent_step": (lambda: engine.train_rl_scheduled(short), study.timing_steps),
              "full_batch_step": (lambda: engine.train_full_batch(short, config.baseline.lr, study.timing_steps),
                                  study.timing_steps),
              "baseline_epoch": (lambda: engine.train_baseline(short), short.baseline.epochs)}
    for run, _ in timers.values():  # warm-up: the first optimiser steps of a process pay one-off imports
        run()
    return {name: min(run().wall_seconds for _ in range(2)) / units for name, (run, units) in timers.items()}


def test_mse(result: RunResult, n_test_examples: int) -> float:
    """MSE of the run's trained network on held-out polynomials of its seed (NaN if it diverged)."""
    if result.diverged_at is not None or result.model is None:
        return float("nan")
    config = Config.from_dict(result.config)
    model = result.model
    parameter = next(model.parameters())
    test = rc.make_polynomial_dataset(config.task, rc.derive_seeds(result.seed).test, n_test_examples,
                                      dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        return float(rc.full_batch_loss(model, test))


def tidy_table(methods: dict[str, Sequence[RunResult]], budget: str, study: StudyConfig) -> pd.DataFrame:
    """One row per method x seed: training MSE (final, median of last 100), test MSE, cost, divergence."""
    rows = []
    for method, runs in methods.items():
        for run in runs:
            summary = run.summary()
            rows.append({"budget": budget, "method": method, "seed": run.seed,
                         "logged": summary["n_logged"], "train_final": summary["final_loss"],
                         "train_median_last_100": summary["median_last_100"],
                         "test_mse": test_mse(run, study.n_test_examples),
                         "diverged_at": run.diverged_at, "wall_seconds_per_run": run.wall_seconds})
    return pd.DataFrame(rows)


def run_constant_grid(config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """Full-batch Adam at every grid lr on the evaluation seeds, all in one batched call."""
    grid, seeds = config.schedule.lr_grid, study.eval_seeds
    lrs = np.repeat(grid, len(seeds))[:, None] * np.ones(study.steps)
    runs = rlr_batched.train_full_batch(config, seeds * len(grid), lrs, study.steps, "constant_full_batch", progress)
    return {f"constant lr {lr:.2e}": runs[i * len(seeds):(i + 1) * len(seeds)] for i, lr in enumerate(grid)}


def run_schedules(config: Config, study: StudyConfig, tuned_lr: float, hypergradient_lr: float,
                  progress: bool = False) -> dict[str, list[RunResult]]:
    """The standard schedules, ReduceLROnPlateau and Adam-HD, each from the tuned constant lr."""
    seeds, steps = study.eval_seeds, study.steps
    runs = {name: rlr_batched.train_full_batch(config, seeds, rlr_batched.lr_schedule(factory, tuned_lr, steps),
                                               steps, name, progress)
            for name, (_, factory) in standard_schedules(tuned_lr, steps).items()}
    runs["ReduceLROnPlateau"] = rlr_batched.train_full_batch(config, seeds, tuned_lr, steps, "plateau", progress,
                                                             plateau=PLATEAU_SETTINGS)
    runs["Adam-HD"] = rlr_batched.train_full_batch(config, seeds, tuned_lr, steps, "adam_hd", progress,
                                                   hypergradient_lr=hypergradient_lr)
    return runs


def run_agents(config: Config, study: StudyConfig, progress: bool = False) -> dict[str, list[RunResult]]:
    """Every agent variant on the evaluation seeds, plus the described agent's greedy policy frozen at
    the end of its run and replayed from the same initial network (no exploration, no learning)."""
    runs = {label: rlr_batched.train_rl_scheduled(with_overrides(config, overrides), study.eval_seeds,
                                                  progress=progress)
            for label, overrides in AGENT_VARIANTS.items()}
    policies = [run.policy_state for run in runs["DQN as described"]]
    runs["DQN greedy policy, frozen after training"] = rlr_batched.train_rl_scheduled(
        config, study.eval_seeds, progress=progress, initial_policies=policies, frozen=True)
    return runs


def wall_clock_budget(study: StudyConfig, seconds: dict[str, float]) -> dict[str, int]:
    """Steps of full-batch Adam and epochs of the mini-batch baseline that cost one agent run's time."""
    agent_seconds = study.steps * seconds["agent_step"]
    return {"agent_seconds": agent_seconds,
            "full_batch_steps": max(1, round(agent_seconds / seconds["full_batch_step"])),
            "baseline_epochs": max(1, round(agent_seconds / seconds["baseline_epoch"]))}


def run_baselines(config: Config, study: StudyConfig, epochs: int, progress: bool = False) -> list[RunResult]:
    """The original mini-batch baseline (Adam, its lr, batch 32) for a given number of epochs."""
    return rlr_batched.train_baseline(with_overrides(config, {"baseline": {"epochs": epochs}}),
                                      study.eval_seeds, progress=progress)


def claim_table(table: pd.DataFrame, baseline: str, tuned: str, agents: Sequence[str]) -> pd.DataFrame:
    """The original's ratio (reference MSE / agent MSE, paired by seed) per budget, agent, reference and
    metric, with its 95% CI and the number of seeds reaching 2. Diverged runs are left out."""
    finished = table[table["diverged_at"].isna()]
    rows = []
    for budget, part in finished.groupby("budget", sort=False):
        for agent in agents:
            for reference in (baseline, tuned):
                for metric in ("train_final", "test_mse"):
                    rows.append({"budget": budget, "agent": agent, "against": reference, "metric": metric,
                                 **report.claim_ratio(part, metric, reference, agent)})
    return pd.DataFrame(rows)


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
"""Method labels of the two references in the transfer tables."""


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
    seeds = [int(seed) for seed in training_seeds]
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
    for config.schedule.steps steps (batched engine); the agent itself is left unchanged."""
    seeds = [int(seed) for seed in seeds]
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress,
                                          initial_policies=[agent.policy_weights()] * len(seeds), frozen=True)


def evaluate_on_held_out_tasks(config: Config, tasks: dict[str, rc.TaskConfig],
                               agents: dict[str, tuple[Config, rc.DQNAgent]], tuned_lr: float,
                               seeds: Sequence[int], progress: bool = False) -> dict[str, dict[str, list[RunResult]]]:
    """task label -> method label -> one run per seed: the tuned constant lr, cosine annealing from it
    (T_max = the run length) and every frozen agent, all config.schedule.steps full-batch Adam steps on
    the same data and initial weights of each seed. agents: label -> (the config it was trained with, agent).
    """
    steps = config.schedule.steps
    cosine = rlr_batched.lr_schedule(standard_schedules(tuned_lr, steps)[COSINE][1], tuned_lr, steps)
    runs: dict[str, dict[str, list[RunResult]]] = {}
    for task_label, task in tasks.items():
        task_config = with_overrides(config, {"task": asdict(task)})
        runs[task_label] = {
            TUNED_CONSTANT: rlr_batched.train_full_batch(task_config, seeds, tuned_lr, steps, "tuned_constant",
                                                         progress),
            COSINE: rlr_batched.train_full_batch(task_config, seeds, cosine, steps, "cosine", progress)}
        for agent_label, (agent_config, agent) in agents.items():
            agent_task_config = with_overrides(agent_config, {"task": asdict(task),
                                                                        "schedule": {"steps": steps}})
            runs[task_label][agent_label] = evaluate_frozen_agent(agent_task_config, agent, seeds, progress)
    return runs


def transfer_table(runs: dict[str, dict[str, list[RunResult]]], n_test_examples: int) -> pd.DataFrame:
    """One row per task x method x seed: training MSE (final, median of last 100), test MSE on held-out
    polynomials of the same task (test_mse), divergence and cost."""
    setup = StudyConfig(n_test_examples=n_test_examples)
    tables = [tidy_table(methods, task, setup) for task, methods in runs.items()]
    return pd.concat(tables, ignore_index=True).rename(columns={"budget": "task"})


def transfer_summary(table: pd.DataFrame, metric: str = "test_mse") -> pd.DataFrame:
    """Per task and method: geometric mean and median over seeds with 95% bootstrap CIs, diverged runs
    (left out of the statistics) and paired win rates against the tuned constant lr and cosine annealing."""
    references = {TUNED_CONSTANT: TUNED_CONSTANT, COSINE: COSINE}
    return pd.concat({task: report.summary_with_win_rates(part, metric, references)
                      for task, part in table.groupby("task", sort=False)}, names=["task"])
