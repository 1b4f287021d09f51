"""The learning-rate problem on any task, as one Gymnasium vector environment: the batched engine seen from the
controller's side.

TaskControlVectorEnv runs num_envs runs of a task (rlr_tasks.PolynomialTask, rlr_tasks.MNIST1DTask: anything
whose `runs(seeds)` gives rlr_tasks.BatchedRuns) under one BatchedAdam with one lr per run, and gives a
controller the observations, rewards, lr moves, truncation and divergence of rlr_env.LRControlVectorEnv, from
the same rlr_core rules (loss_state, decision_reward, next_lr). On the polynomial task it is LRControlVectorEnv
transition for transition (tests/test_task_env.py holds it to that); on MNIST-1D it is what
rlr_core.PolicyScheduler(loss_average='interval') shows a frozen controller in a user's loop (the same test
holds its greedy runs to rlr_tasks.train_mnist1d_batched's), so a controller trained here acts in a user's
loop as it acted in training.

What the state and reward read as the training loss is the task's `loss_reading`: the loss at the decision
step ('last': the polynomial task's full-batch loss) or the mean of the mini-batch losses since the previous
decision ('interval': MNIST-1D). It is LRControlVectorEnv with the task's runs in place of the polynomial
engine: reset, step, the observation, the reward and the info are inherited, so the rules live in one place;
only building, restarting and stepping the runs are the task's. LRControlVectorEnv stays the polynomial
notebooks' environment until their next full run, when it can become this class on PolynomialTask.

    env = TaskControlVectorEnv(16, MNIST1DTask(), controller.schedule(6000))
    history = rlr_env.train_agent_on_vector_env(env, agent, total_steps, seed=200_000)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

import rlr_core as rc
import rlr_stacked
import rlr_tasks
from rlr_env import DIVERGENCE_PENALTY, LRControlVectorEnv

LOSS_READINGS = rc.PolicyScheduler.LOSS_AVERAGES
"""How a task's training loss is read at a decision: as PolicyScheduler reads it in a user's loop."""


class TaskControlVectorEnv(LRControlVectorEnv):
    """num_envs runs of a task under a learning-rate controller, with Gymnasium 1.x's next-step autoreset.

    One step is one decision: the action moves each run's lr (rlr_core.next_lr), then every active run takes
    up to schedule.decision_interval Adam steps at it. Observation: rlr_core.loss_state of the loss reading
    (task.loss_reading), the lr's position, the budget left and, with features 'validation', the validation
    loss; reward: rlr_core.decision_reward. A non-finite loss ends the run's episode (terminated, reward
    divergence_penalty, the last finite observation returned); schedule.steps Adam steps truncate it.
    All of this is LRControlVectorEnv's reset and step; `loss` holds the reading the state reads.

    reset(seed=s) starts run i on task seed s + i, reset(seed=[...]) run i on the i-th; later episodes draw
    their seeds from the environment's np_random in [0, task.seed_bound). info holds, per run, lr, lr_index,
    loss (the reading), diverged, episode_seed, the losses of the interval's optimiser steps (step_losses,
    steps_taken) and, where the schedule uses it, validation_loss.
    """

    def __init__(self, num_envs: int, task: Any, schedule: rc.ScheduleConfig, *,
                 divergence_penalty: float = DIVERGENCE_PENALTY) -> None:
        if not isinstance(task, rlr_tasks.TASKS):
            raise TypeError(f"task must be one of {[t.__name__ for t in rlr_tasks.TASKS]}, got {type(task).__name__}")
        if task.loss_reading not in LOSS_READINGS:
            raise ValueError(f"task.loss_reading must be one of {LOSS_READINGS}, got {task.loss_reading!r}")
        dtype_name = {value: key for key, value in rc.DTYPES.items()}.get(task.dtype)
        if dtype_name is None:
            raise TypeError(f"task.dtype must be one of {list(rc.DTYPES.values())}, got {task.dtype!r}")
        # the parent checks num_envs, the schedule, the penalty and the device, and builds the spaces
        super().__init__(num_envs, None, schedule, divergence_penalty=divergence_penalty, dtype=dtype_name,
                         device=task.device)
        task.check_schedule(schedule)
        self.task, self.runs = task, None

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """LRControlVectorEnv.reset, with the seeds checked against the task's bound first (a seed the task
        cannot take would otherwise fail half-way through restarting the runs)."""
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            last = int(seed) + self.num_envs - 1
            if last >= self.task.seed_bound:
                raise ValueError(f"seed + num_envs - 1 ({last}) must be < {self.task.seed_bound}, the task's seed bound")
        elif seed is not None and not isinstance(seed, (float, np.floating, bool, np.bool_)):
            for value in rc.check_seeds("seed", seed, self.num_envs):
                if value >= self.task.seed_bound:
                    raise ValueError(f"every seed must be < {self.task.seed_bound}, the task's seed bound; got {value}")
        return super().reset(seed=seed, options=options)

    def draw_seeds(self, count: int | None = None) -> list[int]:
        """Task seeds from the environment's np_random, in [0, task.seed_bound): one per run, or count."""
        size = self.num_envs if count is None else count
        return [int(value) for value in self.np_random.integers(0, self.task.seed_bound, size=size)]

    def build(self, seeds: Sequence[int]) -> None:
        """Every run from its seed (task.runs) with a fresh BatchedAdam, the lr at the grid's start."""
        self.runs = self.task.runs(seeds)
        self.net, self.dtype = self.runs.net, self.runs.net.params.dtype
        self.optimizer = rlr_stacked.BatchedAdam(self.net.params, self.net.rows_of)
        start = self.schedule.start_index
        self.lr_index = torch.full((self.num_envs,), start, dtype=torch.int64, device=self.device)
        self.lr = torch.full((self.num_envs,), self.schedule.lr_grid[start], dtype=torch.float64, device=self.device)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.episode_seeds = list(seeds)
        with torch.no_grad():
            self.loss = self.runs.loss_and_grad().double()
        self.validation = self.validation_losses()

    def restart(self, k: int, seed: int) -> None:
        """Run k starts a new episode on seed: its data, network, Adam state, lr and step count."""
        self.runs.restart(k, seed)
        self.optimizer.restart_run(k)
        self.lr_index[k] = self.schedule.start_index
        self.lr[k] = self.schedule.lr_grid[self.schedule.start_index]
        self.elapsed[k] = 0
        self.episode_seeds[k] = seed

    def refresh_loss(self, restarted: np.ndarray) -> None:
        """L_0 (and V_0) of the restarted runs at their new weights, with their gradients; the other runs keep
        their reading, their place in their mini-batch stream and their gradient (restored, not recomputed: a
        run's gradient is then the one its loss reading came with, whatever the task's runs do with a run they
        do not advance)."""
        if not np.any(restarted):
            return
        mask = torch.as_tensor(restarted, device=self.device)
        kept_grad = self.net.grad.clone()
        with torch.no_grad():
            loss = self.runs.loss_and_grad(advance=mask).double()
            for now, before in zip(self.net.rows_of(self.net.grad), self.net.rows_of(kept_grad)):
                now[~mask] = before[~mask]
        self.loss = torch.where(mask, loss, self.loss)
        if self.validation is not None:
            self.validation = torch.where(mask, self.validation_losses(), self.validation)

    def validation_losses(self) -> torch.Tensor | None:
        """V of every run at its current weights (float64), or None where the schedule does not use it."""
        return self.runs.validation_losses() if self.schedule.uses_validation else None

    def train_interval(self, active: torch.Tensor) -> np.ndarray:
        """Up to decision_interval Adam steps for every active run with budget left (the others step at lr 0,
        which leaves their weights as they are, and draw no mini-batch), then the new reading (loss_reading);
        returns the runs whose loss went non-finite."""
        diverged = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.step_losses = torch.zeros(self.num_envs, self.schedule.decision_interval, dtype=torch.float64)
        self.steps_taken = torch.zeros(self.num_envs, dtype=torch.int64)
        last = self.loss.clone()
        with torch.no_grad():
            for index in range(self.schedule.decision_interval):
                stepping = active & (self.elapsed < self.schedule.steps) & ~diverged
                if not stepping.any():
                    break
                self.optimizer.step(self.net.grad, torch.where(stepping, self.lr, 0.0))
                loss = self.runs.loss_and_grad(advance=stepping).double()
                last = torch.where(stepping, loss, last)
                self.elapsed += stepping.long()
                self.step_losses[:, index] = loss.cpu()
                self.steps_taken += stepping.long().cpu()
                diverged |= stepping & ~torch.isfinite(loss)
        self.loss = self.loss_reading(last)
        return diverged.cpu().numpy()

    def loss_reading(self, last: torch.Tensor) -> torch.Tensor:
        """The training loss the state reads after an interval: the last step's ('last') or the mean of the
        interval's step losses ('interval', in numpy's order of summation, as PolicyScheduler takes it); a run
        that took no step keeps its reading."""
        if self.task.loss_reading == "last":
            return last
        reading = self.loss.clone()
        losses, taken = self.step_losses.numpy(), self.steps_taken.numpy()
        for k in np.flatnonzero(taken):
            reading[k] = float(np.mean(losses[k, :taken[k]]))
        return reading
