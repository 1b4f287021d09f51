"""An oracle for the learned controllers' policy class: a tuned schedule, as close as their actions get.

A controller (rlr_controllers.ControllerConfig) acts once every decision_interval optimiser steps, and
an action only multiplies the lr by one of lr_factors, clipped to lr_range. Whatever it learns, its lr
path is one of the paths such action sequences give. The oracle takes a tuned schedule (one run's
per-step "lr" series, or any per-step lr path), finds the action sequence whose path is closest to it in
log lr (cloned_actions: an exact dynamic programme), and runs that path open loop, Adam on the given seeds
(oracle_runs). clone_cost says how far the clone is from the schedule (RMS, in decades of lr).

What it tells: the oracle is a path inside the class (a controller sees the budget left, so it can play
any fixed sequence), so a controller that loses to it falls short in what it learned, not in what its
actions can express; the gap between the tuned schedule and the oracle is what squeezing that schedule
into the class costs. (The clone is chosen for closeness to the schedule, not for its loss: the class's
best path may do better still.)

Read top to bottom: input checks -> the path of an action sequence (open_loop_lrs) -> the clone
(cloned_actions, clone_cost) -> the oracle's runs (oracle_runs). The move rule is rlr_core.next_lr, the
one LRControlVectorEnv uses, so a cloned path is exactly what the controller's environment would run.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

import rlr_batched
import rlr_core as rc
from rlr_controllers import ControllerConfig
from rlr_engine import Config
from rlr_results import RunResult

ORACLE_METHOD = "oracle"
"""the method name of the oracle's runs (RunResult.method)"""
ORACLE = "oracle: the best tuned schedule in the controller's actions"
"""the label to show for the oracle's runs in tables and figures"""


# ---------------------------------------------------------------------------------------------------
# Input checks: every argument before any compute
# ---------------------------------------------------------------------------------------------------


def check_controller(controller: Any) -> ControllerConfig:
    """controller, or TypeError naming it: its lr_factors, lr_range and start define the policy class."""
    if not isinstance(controller, ControllerConfig):
        raise TypeError(f"controller must be a ControllerConfig, got {type(controller).__name__}")
    return controller


def check_lr_path(name: str, value: Any, steps: int) -> np.ndarray:
    """value as a per-step lr path [steps] (float64), or an error naming name: the distance is in log lr,
    so every lr must be finite and > 0, and a path of another length belongs to another run."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence of {steps} per-step learning rates, got {type(value).__name__}")
    try:
        array = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
    except ValueError as error:  # a ragged list
        raise ValueError(f"{name} must be a flat sequence of {steps} per-step learning rates") from error
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold numbers (per-step learning rates), got dtype {array.dtype}")
    if array.shape != (steps,):
        raise ValueError(f"{name} must hold one lr per step, shape ({steps},), got shape {array.shape}")
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if bad.size:
        raise ValueError(f"{name} must hold finite learning rates > 0, got {array[bad[0]]} at step {bad[0]}")
    return array.astype(np.float64)


def target_lr_path(target: RunResult | Any, steps: int) -> np.ndarray:
    """The per-step lrs to clone: a run's "lr" series (a tuned schedule's run logs the lr of every step), or
    the lrs given; checked as a path of steps. A diverged run's series stop early: it is refused."""
    if not isinstance(target, RunResult):
        return check_lr_path("target", target, steps)
    if "lr" not in target.series:
        raise ValueError(f"target ({target.method}, seed {target.seed}) has no per-step 'lr' series to clone")
    if target.diverged_at is not None:
        raise ValueError(f"target ({target.method}, seed {target.seed}) diverged at step {target.diverged_at}: its "
                         f"lr series stops there; clone a run that finished")
    return check_lr_path(f"target ({target.method}'s lr series)", target.series["lr"], steps)


# ---------------------------------------------------------------------------------------------------
# The path of an action sequence: the controller's own move rule, decision by decision
# ---------------------------------------------------------------------------------------------------


def decision_segments(controller: ControllerConfig, steps: int) -> list[tuple[int, int]]:
    """The optimiser steps [start, stop) that each decision's lr holds, as LRControlVectorEnv runs them: an
    action every decision_interval steps from step 0 (it sets the lr of the steps that follow), the last
    interval cut at steps when decision_interval does not divide it (rlr_controllers.decisions_per_episode
    of them)."""
    interval = controller.decision_interval
    return [(start, min(start + interval, steps)) for start in range(0, steps, interval)]


def moved_lrs(lrs: np.ndarray, schedule: rc.ScheduleConfig) -> np.ndarray:
    """[S, A]: the lr that each action leads to from each of S lrs, by rlr_core.next_lr (multiply by
    lr_factors[a], clip to the grid's range), the rule the environment applies. With lr_factors next_lr's
    grid index is only for logs, so the lr alone is the state (the index argument is unused)."""
    actions = torch.arange(schedule.n_actions).unsqueeze(0)  # [1, A] against lrs [S, 1]
    lrs = torch.from_numpy(np.asarray(lrs, dtype=np.float64)).unsqueeze(-1)
    _, moved = rc.next_lr(torch.zeros_like(actions), lrs, actions, schedule)
    return moved.numpy()


def start_lr(schedule: rc.ScheduleConfig) -> np.ndarray:
    """[1]: the lr before the first decision, the grid's start_index point (where the environment starts)."""
    return np.array([schedule.lr_grid[schedule.start_index]], dtype=np.float64)


def open_loop_lrs(actions: Sequence[int] | np.ndarray, controller: ControllerConfig, steps: int) -> np.ndarray:
    """The per-step lr path [steps] (float64) that an action sequence gives, one action per decision
    (len(decision_segments)): what LRControlVectorEnv runs when a policy plays these actions in order."""
    controller = check_controller(controller)
    schedule = controller.schedule(steps)  # checks steps
    segments = decision_segments(controller, steps)
    actions = rc.check_int_array("actions", actions, (len(segments),), 0, schedule.n_actions - 1)
    path, lr = np.empty(steps), start_lr(schedule)
    for action, (start, stop) in zip(actions, segments):
        lr = moved_lrs(lr, schedule)[:, action]
        path[start:stop] = lr[0]
    return path


# ---------------------------------------------------------------------------------------------------
# The clone: the action sequence whose path is nearest the target in log lr
# ---------------------------------------------------------------------------------------------------


def best_arrivals(moved: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge the S x A moves of one decision by the lr they reach, keeping the cheapest way into each.

    States are keyed by the exact float next_lr produced: the future of a path depends on its lr alone,
    so merging equal floats is exact (Bellman), and two floats that differ by rounding (factors that are no
    powers of 2) stay two states, as they would be two lrs in the environment. Ties keep the lowest
    (state, action), so the result is deterministic. Returns the lrs reached [S'], for each the index of
    the lr it came from and the action taken, and its cost so far."""
    reached, group = np.unique(moved.ravel(), return_inverse=True)
    group, flat_total = group.ravel(), total.ravel()
    order = np.lexsort((flat_total, group))  # by lr reached, then by cost; stable for ties
    first = order[np.searchsorted(group[order], np.arange(len(reached)))]
    parent, action = np.divmod(first, moved.shape[1])
    return reached, parent, action, flat_total[first]


def cloned_actions(target_lrs: Sequence[float] | np.ndarray, controller: ControllerConfig, steps: int) -> list[int]:
    """The action sequence (one action per decision) whose path, under the controller's own move rule from
    its start lr, minimises the summed squared log10 distance to target_lrs (per step).

    Exact, by dynamic programming over the lrs reachable at each decision: the cost is a sum over
    decisions of a term that depends on the decision's lr alone, so the cheapest path into each lr is all
    that needs keeping. It costs decisions x states x actions: with the default factors (powers of 2) the
    lrs reached are the start's and the two clip points' powers of 2, 45 on the default range; factors that
    are no powers of 2 reach more, and rounding splits them further (0.7 and 1.3: 80 000 after 100
    decisions, seconds).
    Hand-written because no library solves this shortest path over next_lr's states; it is held to
    brute-force enumeration of every action sequence by tests/test_oracle.py."""
    controller = check_controller(controller)
    schedule = controller.schedule(steps)  # checks steps
    log_target = np.log10(check_lr_path("target_lrs", target_lrs, steps))
    lrs, cost = start_lr(schedule), np.zeros(1)
    choices = []  # per decision: for each lr reached, (index of the lr it came from, the action)
    for start, stop in decision_segments(controller, steps):
        moved = moved_lrs(lrs, schedule)  # [S, A]
        held = log_target[start:stop]  # sum_t (x - y_t)^2 = n (x - mean y)^2 + sum_t (y_t - mean y)^2
        spread = ((held - held.mean()) ** 2).sum()
        total = cost[:, None] + len(held) * (np.log10(moved) - held.mean()) ** 2 + spread
        lrs, parent, action, cost = best_arrivals(moved, total)
        choices.append((parent, action))
    state, actions = int(np.argmin(cost)), []
    for parent, action in reversed(choices):  # backtrack from the cheapest final lr
        actions.append(int(action[state]))
        state = int(parent[state])
    return actions[::-1]


def clone_cost(target_lrs: Sequence[float] | np.ndarray, actions: Sequence[int] | np.ndarray,
               controller: ControllerConfig, steps: int) -> float:
    """The RMS log10 distance between target_lrs and the path of actions, per step: in decades of lr, so
    0 means the class expresses the schedule exactly and 0.3 a factor of 2 off, on average."""
    controller = check_controller(controller)
    controller.check_steps(steps)
    target = check_lr_path("target_lrs", target_lrs, steps)
    path = open_loop_lrs(actions, controller, steps)
    return float(np.sqrt(np.mean((np.log10(path) - np.log10(target)) ** 2)))


# ---------------------------------------------------------------------------------------------------
# The oracle's runs: the clone, open loop, on the evaluation seeds
# ---------------------------------------------------------------------------------------------------


def oracle_runs(target: RunResult | Sequence[float] | np.ndarray, controller: ControllerConfig, config: Config,
                seeds: Sequence[int], steps: int) -> list[RunResult]:
    """The oracle on every seed: target (a tuned schedule's run, whose "lr" series is cloned, or a per-step
    lr path [steps]) cloned once into the controller's actions, and that one path run open loop by
    rlr_batched.train_full_batch (full-batch Adam, the engine of the tuned schedules), method
    ORACLE_METHOD. The runs' config is config with the controller's schedule, as the controllers' runs."""
    controller = check_controller(controller)
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, got {type(config).__name__}")
    schedule = controller.schedule(steps)  # checks steps
    seeds = rc.check_seeds("seeds", seeds)
    if not seeds:
        raise ValueError("seeds must name at least one run")
    target_lrs = target_lr_path(target, steps)
    path = open_loop_lrs(cloned_actions(target_lrs, controller, steps), controller, steps)
    run_config = config.with_overrides({"schedule": asdict(schedule)})
    return rlr_batched.train_full_batch(run_config, seeds, path, steps, method=ORACLE_METHOD)
