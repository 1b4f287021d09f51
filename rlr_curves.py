"""Learning curves of the DQN controller: its chosen configuration trained far longer, frozen at doubling
checkpoints, scored on the tuning seeds' validation sets, with a stated plateau rule.

The tuned DQN controller of notebook 04 is picked from a pool trained for a short budget each (the
study's tuning budget). Whether that budget, not RL, limits it is what this module answers: the chosen
configuration trains on for CurveConfig.episodes episodes (new task seeds of its own), with several agent
seeds, and at every checkpoint (64, 128, 256, ... episodes) its greedy policy is frozen and run on the
tuning seeds, never on an evaluation seed. The evaluated controller is the agent seed with the lowest
validation MSE at the last checkpoint (best_agent); the evaluation seeds see only that final policy.

Read top to bottom: the config -> one agent's curve (train_to_checkpoints) -> all agents as Ray tasks ->
the plateau rule -> the controller that is evaluated.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import rlr_controllers as controllers
import rlr_core as rc
import rlr_peers as peers
import rlr_results as results_io
import rlr_stats as stats
from rlr_engine import Config
from rlr_env import train_agent_on_vector_env
from rlr_study import StudyConfig

# ---------------------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------------------


@dataclass
class CurveConfig:
    """How long the chosen DQN controller trains, how often it is scored, and how many agents train."""

    episodes: int = 1024
    """training episodes per agent in all (n_envs tasks at once, each episode a new task seed): 16x the
    tuning pool's 64"""
    first_checkpoint: int = 64
    """episodes at the first checkpoint; the next ones double it, up to episodes (always a checkpoint)"""
    agent_seeds: tuple = (0, 1, 2)
    """one agent per seed (exploration, replay sampling, Q-network initialisation), each a Ray task"""

    def __post_init__(self) -> None:
        rc.check_int("curve.episodes", self.episodes, 1)
        rc.check_int("curve.first_checkpoint", self.first_checkpoint, 1)
        if self.first_checkpoint > self.episodes:
            raise ValueError(f"curve.first_checkpoint ({self.first_checkpoint}) must be at most curve.episodes "
                             f"({self.episodes})")
        self.agent_seeds = tuple(rc.check_seeds("curve.agent_seeds", list(rc.check_sequence("curve.agent_seeds",
                                                                                             self.agent_seeds))))
        if not self.agent_seeds or len(set(self.agent_seeds)) != len(self.agent_seeds):
            raise ValueError(f"curve.agent_seeds must name at least one seed, each once, got {self.agent_seeds}")

    def checkpoints(self) -> list[int]:
        """Episodes at each checkpoint: first_checkpoint, doubling, and episodes itself last."""
        points, episodes = [], self.first_checkpoint
        while episodes < self.episodes:
            points.append(episodes)
            episodes *= 2
        return points + [self.episodes]

    def check_tasks(self, controller: controllers.ControllerConfig) -> None:
        """ValueError unless every checkpoint is a whole number of rounds of controller.n_envs tasks."""
        ragged = [point for point in self.checkpoints() if point % controller.n_envs]
        if ragged:
            raise ValueError(f"curve checkpoints {ragged} are not multiples of controller.n_envs "
                             f"({controller.n_envs}): each checkpoint must end a round of tasks")


# ---------------------------------------------------------------------------------------------------
# One agent's curve
# ---------------------------------------------------------------------------------------------------


def curve_row(trained: controllers.TrainedController, agent_seed: int, episodes: int, steps: int) -> dict:
    """One checkpoint's row: the episodes finished by then (a diverged episode ends early and its task
    restarts, so this can exceed the checkpoint's nominal count), the optimiser steps they took (each
    finished episode's decisions x the decision interval, capped at the run's steps), its validation score
    over the tuning seeds with its 95% bootstrap CI, the mean training return of the last half of the
    finished episodes, and the training seconds (scoring excluded)."""
    validation = trained.validation_mse
    score = stats.validation_score(validation)
    low, high = stats.bootstrap_interval(validation) if math.isfinite(score) else (math.nan, math.nan)
    interval = Config.from_dict(trained.run_config).schedule.decision_interval
    taken = int(np.minimum(trained.curve["length"].to_numpy() * interval, steps).sum())
    return {"agent seed": agent_seed, "episodes": episodes, "episodes finished": len(trained.curve),
            "training optimiser steps": taken,
            "validation MSE": score, "validation CI low": low, "validation CI high": high,
            "diverged": sum(not math.isfinite(value) for value in validation),
            "training return": float(trained.curve["return"].iloc[-(len(trained.curve) // 2 or 1):].mean()),
            "seconds": trained.training_seconds}


def train_to_checkpoints(config: Config, study: StudyConfig, controller: controllers.ControllerConfig,
                         params: dict, curve: CurveConfig, agent_seed: int
                         ) -> tuple[controllers.TrainedController, pd.DataFrame]:
    """The DQN controller at configuration `params` (CONTROLLER_RANGES' knobs) trained by one agent seed for
    curve.episodes episodes, frozen and validated on the tuning seeds at every checkpoint. Returns the final
    frozen controller and one row per checkpoint (curve_row). Training continues across checkpoints (the same
    agent, replay and exploration schedule; the environment draws each round's task seeds from its own
    seeded generator), so the last checkpoint is one training of curve.episodes episodes."""
    check_curve_inputs(controller, params, curve)
    controller = replace(controller, agent_seed=rc.check_seed("agent_seed", agent_seed)).with_knobs(params)
    run_config = controllers.dqn_run_config(config, controller, params)
    _, env = controllers.controller_env(run_config, controller)
    schedule = run_config.schedule
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, run_config.dqn, agent_seed,
                        rc.DTYPES[run_config.dtype], run_config.device)
    steps_per_round = controllers.decisions_per_episode(schedule) + 1  # the last step autoresets every task
    at_steps = {steps_per_round * point // controller.n_envs: point for point in curve.checkpoints()}
    frozen: list[controllers.TrainedController] = []
    rows, started, scoring = [], time.perf_counter(), [0.0]

    def score(vector_steps: int, history: dict) -> None:  # freezes a copy: the training goes on untouched
        begun = time.perf_counter()
        trained = controllers.frozen_dqn(run_config, agent, controller, history, begun - started - scoring[0], params)
        frozen.append(controllers.validate_controller(trained, study))
        rows.append(curve_row(frozen[-1], agent_seed, at_steps[vector_steps], schedule.steps))
        scoring[0] += time.perf_counter() - begun

    train_agent_on_vector_env(env, agent, max(at_steps), controller.first_training_seed, controller.updates_per_step,
                              sorted(at_steps), score)
    return frozen[-1], pd.DataFrame(rows)


def check_curve_inputs(controller: controllers.ControllerConfig, params: dict, curve: CurveConfig) -> None:
    """Before any training: the configs' types, params naming exactly CONTROLLER_RANGES' knobs, and every
    checkpoint ending a round of the controller's tasks."""
    if not isinstance(curve, CurveConfig):
        raise TypeError(f"curve must be a CurveConfig, got {type(curve).__name__}")
    if not isinstance(controller, controllers.ControllerConfig):
        raise TypeError(f"controller must be a ControllerConfig, got {type(controller).__name__}")
    if not isinstance(params, dict) or set(params) != set(controllers.CONTROLLER_RANGES):
        raise ValueError(f"params must give the DQN controller's knobs {sorted(controllers.CONTROLLER_RANGES)}, "
                         f"got {sorted(params) if isinstance(params, dict) else params!r}")
    curve.check_tasks(controller)


def submit_learning_curves(config: Config, study: StudyConfig, controller: controllers.ControllerConfig,
                           params: dict, curve: CurveConfig
                           ) -> Callable[[], list[tuple[controllers.TrainedController, pd.DataFrame]]]:
    """train_to_checkpoints for every agent seed, one Ray task each when Ray is started (they train while the
    caller goes on); returns collect(), in the order of curve.agent_seeds."""
    check_curve_inputs(controller, params, curve)
    return peers.submit_tasks(train_to_checkpoints, [(config, study, controller, params, curve, seed)
                                                     for seed in curve.agent_seeds])


# ---------------------------------------------------------------------------------------------------
# The plateau rule and the controller that is evaluated
# ---------------------------------------------------------------------------------------------------

PLATEAU_RULE = ("an agent has reached its plateau at the first checkpoint whose validation MSE (geometric mean "
                "over the tuning seeds) is not below the previous checkpoint's 95% bootstrap CI over those seeds: "
                "the last doubling of training improved it by less than the seed-to-seed spread")
"""Stated before any curve was seen; plateau_at applies it."""


def plateau_at(table: pd.DataFrame) -> dict[int, int | None]:
    """Per agent seed of a curve table (train_to_checkpoints' rows, any number of agents): the episodes at
    which PLATEAU_RULE first holds, or None if it never does within the budget."""
    reached: dict[int, int | None] = {}
    for seed, part in table.sort_values("episodes").groupby("agent seed", sort=False):
        reached[int(seed)] = None
        scores, lows = part["validation MSE"].to_numpy(), part["validation CI low"].to_numpy()
        for index in range(1, len(part)):
            if math.isfinite(lows[index - 1]) and not scores[index] < lows[index - 1]:
                reached[int(seed)] = int(part["episodes"].iloc[index])
                break
    return reached


def best_agent(results: Sequence[tuple[controllers.TrainedController, pd.DataFrame]]) -> int:
    """The index (into results) of the agent with the lowest validation MSE at its last checkpoint: the
    controller that is evaluated (validation data of the tuning seeds only; the first of equals)."""
    if not results:
        raise ValueError("best_agent needs at least one agent's curve")
    finals = [float(table.sort_values("episodes")["validation MSE"].iloc[-1]) for _, table in results]
    return int(np.argmin(finals))


def selection_cost(table: pd.DataFrame, evaluated_seed: int) -> tuple[int, float]:
    """Optimiser steps and seconds of the agents trained beside the evaluated one (their whole curves):
    what picking the agent cost, on top of the tuning pool (rlr_report.controller_costs' selection)."""
    finals = table.sort_values("episodes").groupby("agent seed").last()
    if evaluated_seed not in finals.index:
        raise ValueError(f"agent seed {evaluated_seed} has no curve in the table (seeds {sorted(finals.index)})")
    others = finals.drop(index=evaluated_seed)
    return int(others["training optimiser steps"].sum()), float(others["seconds"].sum())


def curve_table(results: Sequence[tuple[controllers.TrainedController, pd.DataFrame]]) -> pd.DataFrame:
    """Every agent's checkpoints in one table, with the plateau column (PLATEAU_RULE) per agent."""
    table = pd.concat([rows for _, rows in results], ignore_index=True)
    reached = plateau_at(table)
    table["plateau at"] = [reached[int(seed)] for seed in table["agent seed"]]
    return table


# ---------------------------------------------------------------------------------------------------
# Notebook 04's two parts: the controllers' training (04_controllers) read back by the verdict (04_verdict)
# ---------------------------------------------------------------------------------------------------

TRAINING_FILES = {"record": "controllers_training.json", "controllers": "controllers.pt",
                  "tuning": "controller_tuning.csv", "curves": "controller_curves.csv"}
"""What notebook 04_controllers writes into its results folder, and notebook 04_verdict reads."""


@dataclass
class ControllerTraining:
    """The learned controllers as the verdict takes them: trained, tuned and trained to their curves in
    notebook 04_controllers, on the same study setup."""

    controller: controllers.ControllerConfig
    """the controllers' decision interval, actions, tasks and training rounds"""
    curve: CurveConfig
    """the learning curves' length, checkpoints and agent seeds"""
    trained: dict
    """label -> TrainedController: each learner's pick, the DQN controller as its best curve agent"""
    tuning: pd.DataFrame
    """every controller trained in the pools, with its validation MSE (choose_controllers' table)"""
    curves: pd.DataFrame
    """every curve agent's checkpoints (curve_table)"""
    best_agent_seed: int
    """the curve agent evaluated as the DQN controller (best_agent)"""


def save_training(results_dir: str | Path, study: StudyConfig, training: ControllerTraining) -> list[Path]:
    """Write the controllers (plain tensors, controllers.save_controllers), the two tables and a record of
    the study setup, configs and evaluated agent (JSON with package versions), each atomically; the record
    is written last, so a reader never finds a record without its files. Returns the paths written."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    controllers.save_controllers(training.trained, folder / TRAINING_FILES["controllers"])
    results_io.save_table_csv(training.tuning, folder / TRAINING_FILES["tuning"])
    results_io.save_table_csv(training.curves, folder / TRAINING_FILES["curves"])
    record = {"study": asdict(study), "controller": asdict(training.controller), "curve": asdict(training.curve),
              "best_agent_seed": int(training.best_agent_seed), "labels": list(training.trained),
              "versions": results_io.package_versions()}
    results_io.atomic_write_text(folder / TRAINING_FILES["record"],
                                 json.dumps(results_io.json_ready(record), indent=1, allow_nan=False))
    return [folder / name for name in TRAINING_FILES.values()]


def load_training(results_dir: str | Path, study: StudyConfig) -> ControllerTraining:
    """save_training's files back (controllers read with weights_only=True). FileNotFoundError naming the
    notebook to run when a file is missing; ValueError when they were trained on another study setup than
    `study` (naming the fields that differ: the verdict must score controllers tuned on its own tuning
    seeds, budget and steps) or the files disagree with the record."""
    folder = Path(results_dir)
    missing = [name for name in TRAINING_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"results_dir: {missing} missing in {str(folder)!r}: run notebook 04_controllers first")
    record_path = folder / TRAINING_FILES["record"]
    try:
        record = json.loads(record_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{record_path} is not JSON ({error}): re-run notebook 04_controllers") from error
    fields = {"study", "labels", "controller", "curve", "best_agent_seed"}
    if not isinstance(record, dict) or not fields <= set(record) or not isinstance(record["study"], dict):
        raise ValueError(f"{record_path} is not notebook 04_controllers' record: it needs the fields {sorted(fields)} "
                         "(study a dict); re-run notebook 04_controllers")
    differing = sorted(name for name, value in asdict(study).items()  # the smaller budget's pick is the verdict's alone
                       if name != "shown_budget" and record["study"].get(name) != value)
    if differing:
        changes = ", ".join(f"{name}: {record['study'].get(name)!r} there, {getattr(study, name)!r} here"
                            for name in differing)
        raise ValueError(f"the controllers in {str(folder)!r} were trained on another study setup ({changes}): "
                         "run notebook 04_controllers with the same parameters")
    trained = controllers.load_controllers(folder / TRAINING_FILES["controllers"])
    if list(trained) != record["labels"]:
        raise ValueError(f"{TRAINING_FILES['controllers']} holds {list(trained)}, the record names {record['labels']}")
    controller = controllers.ControllerConfig(**{**record["controller"],
                                                 **{name: tuple(record["controller"][name]) for name in ("lr_factors", "lr_range")}})
    curve = CurveConfig(**{**record["curve"], "agent_seeds": tuple(record["curve"]["agent_seeds"])})
    return ControllerTraining(controller, curve, trained, pd.read_csv(folder / TRAINING_FILES["tuning"]),
                              pd.read_csv(folder / TRAINING_FILES["curves"]), int(record["best_agent_seed"]))
