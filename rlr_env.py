"""The learning-rate problem as a Gymnasium environment: the same task seen from the agent's side.

LRControlEnv: each step is one full-batch Adam step on MaclaurinNet (rlr_engine.adam_step, the step
of the reference loops) at the learning rate the action picks; the observation and reward are the
ones RLRScheduler gives its agent (rlr_core.loss_state, loss_reward, next_lr), so external agents and
episodic training see exactly the original problem. train_agent_on_env runs rlr_core.DQNAgent on any
environment with a Box observation and Discrete actions through the standard Gymnasium loop (act,
step, remember, learn; reset at episode end).

Nothing of the RL logic or of the training step is copied here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

import rlr_batched
import rlr_stacked
import rlr_core as rc
from rlr_engine import Config, adam_step, check_device

DIVERGENCE_PENALTY = -1.0
"""Reward of the step whose loss is non-finite (the episode terminates there). With raw features an
episode's return, L_0 - L_T, is below L_0 (about 0.3 in the default task), so one divergence costs more
than any episode can earn; with log features returns are e-folds of loss decrease (several), so pass a
larger penalty (divergence_penalty=) when that matters."""


class LRControlEnv(gymnasium.Env):
    """Choose Adam's learning rate, one full-batch step at a time, while it trains MaclaurinNet.

    Observation: (L_t, L_t - L_{t-1}), raw, exactly RLRScheduler's state (rlr_core.loss_state); the
    difference is 0 at reset. Actions: index_shifts of the ScheduleConfig (default -1, 0, +1 along
    the grid, clipped to it). Reward: L_t - L_{t+1} (rlr_core.loss_reward), as the original agent saw.

    reset(seed=s) starts a new task: the data set and the initial weights are the ones
    rlr_engine.train_rl_scheduled uses for Config(seed=s) (derive_seeds(s).data / .init), a fresh Adam, and
    the lr index back to schedule.start_index. reset() without a seed draws the next task's seed from
    the environment's np_random; the data are redrawn too only with resample_data=True, otherwise the
    data of the last seeded reset stay (a new network, the same regression problem).

    With schedule.decision_interval N > 1 one env step is N Adam steps at the chosen lr (the last one
    fewer when N does not divide schedule.steps); the observation's change and the reward span them.
    With features 'log' or 'control' the rewards telescope: an episode's return is log L_0 - log L_T.

    An episode is schedule.steps Adam steps long (truncated=True at the end). A non-finite loss ends it
    (terminated=True) with reward divergence_penalty; the observation returned then is the last finite
    one (s_t, not the non-finite s_{t+1}) and info["diverged"] is True. No observation is ever
    non-finite. info holds the lr and lr_index the step used and the loss after it.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: rc.TaskConfig | None = None, schedule: rc.ScheduleConfig | None = None, *,
                 resample_data: bool = False, divergence_penalty: float = DIVERGENCE_PENALTY,
                 dtype: str = "float32", device: str = "cpu") -> None:
        task = rc.TaskConfig() if task is None else task
        schedule = rc.ScheduleConfig() if schedule is None else schedule
        if not isinstance(task, rc.TaskConfig):
            raise TypeError(f"task must be a TaskConfig, got {type(task).__name__}")
        if not isinstance(schedule, rc.ScheduleConfig):
            raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
        if not isinstance(resample_data, bool):
            raise TypeError(f"resample_data must be a bool, got {type(resample_data).__name__}")
        if isinstance(divergence_penalty, bool) or not isinstance(divergence_penalty, (int, float)) \
                or not math.isfinite(divergence_penalty):
            raise ValueError(f"divergence_penalty must be a finite number, got {divergence_penalty!r}")
        if not isinstance(dtype, str) or dtype not in rc.DTYPES:
            raise ValueError(f"dtype must be one of {tuple(rc.DTYPES)}, got {dtype!r}")
        self.task, self.schedule = task, schedule
        self.resample_data, self.divergence_penalty = resample_data, float(divergence_penalty)
        self.dtype, self.device = rc.DTYPES[dtype], check_device(device)
        # The loss is an MSE (>= 0), its change has either sign; both are finite (a non-finite loss ends
        # the episode), so the bounds are the dtype's largest finite value (as CartPole's velocities).
        # With features='log' the state is (log L, its change, lr position in [0, 1]); 'control' adds
        # the fraction of the budget left, in [0, 1].
        largest = np.finfo(np.float32 if dtype == "float32" else np.float64).max
        low, high = {"raw": ([0.0, -largest], [largest, largest]),
                     "log": ([-largest, -largest, 0.0], [largest, largest, 1.0]),
                     "control": ([-largest, -largest, 0.0, 0.0], [largest, largest, 1.0, 1.0]),
                     "validation": ([-largest, -largest, 0.0, 0.0, -largest, -largest],
                                    [largest, largest, 1.0, 1.0, largest, largest])}[schedule.features]
        self.observation_space = spaces.Box(low=np.array(low, dtype=largest.dtype),
                                            high=np.array(high, dtype=largest.dtype), dtype=largest.dtype)
        self.action_space = spaces.Discrete(schedule.n_actions)
        self.data: rc.PolynomialData | None = None
        self.validation_data: rc.PolynomialData | None = None  # the task seed's validation split, if used
        self._validation: float | None = None  # V_t, where the state or the reward reads it
        self.model: rc.MaclaurinNet | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_index = schedule.start_index
        self.lr = schedule.lr_grid[self.lr_index]
        self.episode_seed: int | None = None
        self.elapsed_steps = 0
        self._loss: torch.Tensor | None = None  # L_t with its graph: differentiated by the next step
        self._observation: np.ndarray | None = None
        self._episode_over = True

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> "LRControlEnv":
        """The environment of a run config: its task, schedule, dtype and device."""
        return cls(config.task, config.schedule, dtype=config.dtype, device=config.device, **kwargs)

    def _info(self) -> dict:
        info = {"lr": self.lr, "lr_index": self.lr_index, "loss": float(self._loss.item())}
        if self._validation is not None:
            info["validation_loss"] = self._validation
        return info

    def _validation_loss(self) -> float | None:
        """V: the full loss on the task seed's monitoring split (RunSeeds.monitor; None where the schedule does
        not use it)."""
        if not self.schedule.uses_validation:
            return None
        with torch.no_grad():
            return float(rc.full_batch_loss(self.model, self.validation_data).item())

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if options:  # both checked before np_random is reseeded
            raise ValueError(f"LRControlEnv.reset takes no options, got {options!r}")
        if seed is not None:
            rc.check_seed("seed", seed)
        super().reset(seed=seed)
        if seed is not None:
            self.episode_seed = int(seed)
        else:
            self.episode_seed = int(self.np_random.integers(0, 2 ** 63 - 1))
        seeds = rc.derive_seeds(self.episode_seed)
        if self.data is None or seed is not None or self.resample_data:
            self.data = rc.make_polynomial_dataset(self.task, seeds.data, dtype=self.dtype, device=self.device)
            if self.schedule.uses_validation:
                self.validation_data = rc.make_polynomial_dataset(self.task, seeds.monitor,
                                                                  self.schedule.validation_examples,
                                                                  dtype=self.dtype, device=self.device)
        self.model = rc.make_model(self.task, seeds.init, self.dtype, self.device)
        self.lr_index = self.schedule.start_index
        self.lr = self.schedule.lr_grid[self.lr_index]
        self.optimizer = rc.make_adam(self.model.parameters(), self.lr)
        self.elapsed_steps = 0
        self._loss = rc.full_batch_loss(self.model, self.data)
        loss = self._loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"the initial loss is {loss} (data or initial weights out of float range): "
                                     "lower task.coeff_scale or use dtype='float64'")
        self._validation = self._validation_loss()
        self._observation = self._state(loss, None, self._validation, None)
        self._episode_over = False
        return self._observation.copy(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._episode_over:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        action = int(rc.check_int_array("action", action, (), 0, int(self.action_space.n) - 1))
        lr_index, lr = rc.next_lr(self.lr_index, self.lr, action, self.schedule)
        self.lr_index, self.lr = int(lr_index), float(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        previous_loss = loss = self._loss.item()
        previous_validation = self._validation
        for _ in range(min(self.schedule.decision_interval, self.schedule.steps - self.elapsed_steps)):
            self._loss = adam_step(self.model, self.optimizer, self.data, self._loss)  # L_{t+1}, with its graph
            loss = self._loss.item()
            self.elapsed_steps += 1
            if not math.isfinite(loss):
                break
        self._validation = self._validation_loss() if math.isfinite(loss) else None
        observation = self._state(loss, previous_loss, self._validation, previous_validation)
        reward = float(rc.decision_reward(previous_loss, loss, self.schedule, previous_validation, self._validation)) \
            if math.isfinite(loss) else math.nan
        info = self._info()
        if not (math.isfinite(loss) and np.isfinite(observation).all() and math.isfinite(reward)):
            self._episode_over = True
            info["diverged"] = True
            return self._observation.copy(), self.divergence_penalty, True, False, info
        info["diverged"] = False
        self._observation = observation
        truncated = self.elapsed_steps >= self.schedule.steps
        self._episode_over = truncated
        return observation.copy(), reward, False, truncated, info

    def _state(self, loss: float, previous_loss: float | None, validation: float | None = None,
               previous_validation: float | None = None) -> np.ndarray:
        """RLRScheduler's state for this loss (rlr_core.loss_state), as a numpy observation."""
        if self.schedule.features == "validation" and validation is None:
            validation = math.nan  # a diverged step: the observation is non-finite and never returned
        return rc.loss_state(loss, previous_loss, rc.lr_position(self.lr, self.schedule), self.schedule.features,
                             self.dtype, rc.budget_fraction_left(self.elapsed_steps, self.schedule),
                             validation, previous_validation).numpy()


LOSS_READINGS = rc.PolicyScheduler.LOSS_AVERAGES
"""How a task's training loss is read at a decision: as PolicyScheduler reads it in a user's loop."""

TASK_INTERFACE = ("runs", "check_schedule", "loss_reading", "seed_bound", "dtype", "device")
"""What a task object offers the vector environment (rlr_batched.PolynomialTask, rlr_tasks.MNIST1DTask)."""


def polynomial_task(task: rc.TaskConfig | None, schedule: rc.ScheduleConfig, dtype: str,
                    device: str) -> rlr_batched.PolynomialTask:
    """The original's task of a TaskConfig, as the vector environment runs it: each run's monitoring split
    built only where the schedule's state or reward reads V."""
    config = Config(dtype=dtype, device=device, task=rc.TaskConfig() if task is None else task, schedule=schedule)
    return rlr_batched.PolynomialTask(config, schedule.validation_examples if schedule.uses_validation else 0)


class LRControlVectorEnv(VectorEnv):
    """num_envs runs of a task under a learning-rate controller, backed by the batched engine (the task's
    stacked runs, rlr_batched.BatchedRuns, and one BatchedAdam with one lr per run), with Gymnasium 1.x's
    next-step autoreset: the step() after a run's episode ended resets that run (observation of the new
    run, reward 0, neither terminated nor truncated) while the others go on.

    The task: a TaskConfig (or None: the original's), the polynomial problem of LRControlEnv, run at dtype
    and device; or a task object (rlr_batched.PolynomialTask, rlr_tasks.MNIST1DTask: anything with
    TASK_INTERFACE), which brings its own dtype and device. On the polynomial task the observations,
    actions, rewards, decision interval, truncation and divergence are LRControlEnv's, from the same rlr_core
    rules, one row per run (tests/test_vector_env.py holds them to that); on MNIST-1D a greedy policy here
    is what rlr_core.PolicyScheduler(loss_average='interval') shows it in a user's loop (tests/test_task_env.py),
    so a controller trained here acts in a user's loop as it acted in training.

    One step is one decision: the action moves each run's lr (rlr_core.next_lr), then every active run takes
    up to schedule.decision_interval Adam steps at it. Observation: rlr_core.loss_state of the training loss
    as the task reads it at a decision (task.loss_reading: 'last', the polynomial task's full-batch loss at
    the decision step; 'interval', MNIST-1D's mean of the mini-batch losses since the previous decision), the
    lr's position, the budget left and, with features 'validation', the validation loss V; reward:
    rlr_core.decision_reward. A non-finite loss ends the run's episode (terminated, reward divergence_penalty,
    the last finite observation returned); schedule.steps Adam steps truncate it.

    reset(seed=s) starts run i on task seed s + i (Gymnasium's convention), reset(seed=[s_0, ..., s_K-1])
    run i on s_i (np_random then seeded with s_0); a run that resets later, or a reset without a seed, draws
    its seed from the environment's np_random in [0, task.seed_bound). Every reset of a run draws a new data
    set and a new network from its seed (LRControlEnv(resample_data=True)). options={"reset_mask": mask}
    resets only the runs in mask. info holds, per run, lr, lr_index, loss (the reading), diverged,
    episode_seed, the losses of the interval's optimiser steps (step_losses, steps_taken) and, where the
    schedule uses it, validation_loss.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int, task: Any = None, schedule: rc.ScheduleConfig | None = None, *,
                 divergence_penalty: float = DIVERGENCE_PENALTY, dtype: str | None = None,
                 device: str | None = None) -> None:
        rc.check_int("num_envs", num_envs, 1)
        if task is None or isinstance(task, rc.TaskConfig):
            problem, dtype, device = task, "float32" if dtype is None else dtype, "cpu" if device is None else device
        else:
            missing = [name for name in TASK_INTERFACE if not hasattr(task, name)]
            if missing:
                raise TypeError(f"task must be a TaskConfig, None or a task object (rlr_batched.PolynomialTask, "
                                f"rlr_tasks.MNIST1DTask), got {type(task).__name__} (it has no {missing})")
            if dtype is not None or device is not None:
                raise ValueError("a task object brings its own dtype and device: pass dtype and device to it, not here")
            if task.loss_reading not in LOSS_READINGS:
                raise ValueError(f"task.loss_reading must be one of {LOSS_READINGS}, got {task.loss_reading!r}")
            problem = None
            dtype = {value: key for key, value in rc.DTYPES.items()}.get(task.dtype)
            if dtype is None:
                raise TypeError(f"task.dtype must be one of {list(rc.DTYPES.values())}, got {task.dtype!r}")
            device = str(task.device)
        single = LRControlEnv(problem, schedule, resample_data=True, divergence_penalty=divergence_penalty,
                              dtype=dtype, device=device)  # checks every argument
        self.num_envs, self.schedule = num_envs, single.schedule
        self.task = task if problem is None and task is not None else polynomial_task(problem, single.schedule,
                                                                                      dtype, device)
        self.task.check_schedule(self.schedule)
        self.divergence_penalty = single.divergence_penalty
        self.single_observation_space, self.single_action_space = single.observation_space, single.action_space
        self.observation_space = batch_space(single.observation_space, num_envs)
        self.action_space = batch_space(single.action_space, num_envs)
        self.device = single.device
        self.runs: rlr_batched.BatchedRuns | None = None
        self.net: rlr_stacked.StackedModel | None = None
        self.validation: torch.Tensor | None = None  # V of every run, where the state or the reward reads it
        self.step_losses = torch.zeros(num_envs, self.schedule.decision_interval, dtype=torch.float64)
        self.steps_taken = torch.zeros(num_envs, dtype=torch.int64)  # none at a reset
        self.autoreset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        mask = np.ones(self.num_envs, dtype=bool)
        if options:
            unknown = set(options) - {"reset_mask"}
            if unknown:
                raise ValueError(f"LRControlVectorEnv.reset knows only the option 'reset_mask', got {sorted(unknown)}")
            mask = np.asarray(options["reset_mask"])
            if mask.dtype != np.bool_:
                raise TypeError(f"reset_mask must hold booleans, got dtype {mask.dtype} ({options['reset_mask']!r})")
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if seed is None:
            super().reset(seed=None)
            seeds = self.draw_seeds()
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            last = rc.check_seed("seed", seed) + self.num_envs - 1
            if last >= self.task.seed_bound:  # checked before anything restarts
                raise ValueError(f"seed + num_envs - 1 ({last}) must be < {self.task.seed_bound}, the task's seed bound")
            super().reset(seed=int(seed))
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            if isinstance(seed, (float, np.floating, bool, np.bool_)):
                raise TypeError(f"seed must be None, an int or a list of {self.num_envs} ints, got "
                                f"{type(seed).__name__} ({seed!r})")
            seeds = rc.check_seeds("seed", seed, self.num_envs)
            for value in seeds:
                if value >= self.task.seed_bound:
                    raise ValueError(f"every seed must be < {self.task.seed_bound}, the task's seed bound; got {value}")
            super().reset(seed=seeds[0])  # later runs' seeds come from np_random: seeded, as with an int seed
        if self.net is None:
            self.build(seeds)
        else:
            for k in np.flatnonzero(mask):
                self.restart(int(k), seeds[k])
            self.refresh_loss(mask)
        self.autoreset[mask] = False
        self.steps_taken = torch.zeros(self.num_envs, dtype=torch.int64)
        self._observation = self.states(None)
        return self._observation.copy(), self.info(np.zeros(self.num_envs, dtype=bool))

    def draw_seeds(self, count: int | None = None) -> list[int]:
        """Task seeds from the environment's np_random, in [0, task.seed_bound): one per run, or count."""
        size = self.num_envs if count is None else count
        return [int(value) for value in self.np_random.integers(0, self.task.seed_bound, size=size)]

    def build(self, seeds: Sequence[int]) -> None:
        """Every run from its seed (task.runs) with a fresh BatchedAdam, the lr at the grid's start."""
        self.runs = self.task.runs(seeds)
        self.net, self.dtype = self.runs.net, self.runs.net.params.dtype
        self.optimizer = rlr_stacked.BatchedAdam(self.net.params, self.net.rows_of)
        self.lr_index = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.lr = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.episode_seeds = list(seeds)
        self.restart_control(np.ones(self.num_envs, dtype=bool))
        with torch.no_grad():
            self.loss = self.runs.loss_and_grad().double()
        self.validation = self.validation_losses()

    def restart_control(self, restarted: np.ndarray) -> None:
        """The restarted runs' lr back at the grid's start and their step count at 0."""
        mask = torch.as_tensor(restarted, device=self.device)
        start = self.schedule.start_index
        self.lr_index[mask] = start
        self.lr[mask] = self.schedule.lr_grid[start]
        self.elapsed[mask] = 0

    def restart(self, k: int, seed: int) -> None:
        """Run k starts a new episode on seed: its data, network, Adam state, lr and step count."""
        self.runs.restart(k, seed)
        self.optimizer.restart_run(k)
        self.restart_control(np.arange(self.num_envs) == k)
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

    def states(self, previous_loss: torch.Tensor | None, previous_validation: torch.Tensor | None = None) -> np.ndarray:
        position = rc.lr_position(self.lr, self.schedule)
        budget = rc.budget_fraction_left(self.elapsed, self.schedule)
        return rc.loss_state(self.loss, previous_loss, position, self.schedule.features, self.dtype, budget,
                             self.validation, previous_validation).cpu().numpy()

    def info(self, diverged: np.ndarray) -> dict:
        """Per run: lr, lr_index, loss, diverged, episode_seed, and the loss after each optimiser step of
        the last interval (step_losses [K, decision_interval], the first steps_taken of each row count)."""
        values = {"lr": self.lr.cpu().numpy(), "lr_index": self.lr_index.cpu().numpy(),
                  "loss": self.loss.cpu().numpy(), "diverged": diverged, "episode_seed": np.array(self.episode_seeds),
                  "step_losses": self.step_losses.numpy(), "steps_taken": self.steps_taken.numpy()}
        if self.validation is not None:
            values["validation_loss"] = self.validation.cpu().numpy()
        return {**values, **{f"_{key}": np.ones(self.num_envs, dtype=bool) for key in values}}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self.net is None:
            raise RuntimeError("call reset() first")
        actions = rc.check_int_array("actions", actions, (self.num_envs,), 0, int(self.single_action_space.n) - 1)
        resetting, active = self.autoreset.copy(), torch.as_tensor(~self.autoreset, device=self.device)
        lr_index, lr = rc.next_lr(self.lr_index, self.lr, torch.as_tensor(actions, device=self.device), self.schedule)
        self.lr_index, self.lr = torch.where(active, lr_index, self.lr_index), torch.where(active, lr, self.lr)
        previous_loss = self.loss.clone()
        previous_validation = None if self.validation is None else self.validation.clone()
        diverged = self.train_interval(active)
        if self.validation is not None:
            self.validation = self.validation_losses()
        for k in np.flatnonzero(resetting):  # after the others' Adam steps: theirs touched no restarted state
            self.restart(int(k), self.draw_seeds(1)[0])
        self.refresh_loss(resetting)
        observation = self.states(previous_loss, previous_validation)
        rewards = rc.decision_reward(previous_loss, self.loss, self.schedule, previous_validation,
                                     self.validation).cpu().numpy()
        terminated = diverged | ~np.isfinite(observation).all(axis=1) | ~np.isfinite(rewards)
        observation[terminated] = self._observation[terminated]  # the last finite observation
        rewards[terminated] = self.divergence_penalty
        truncated = (self.elapsed >= self.schedule.steps).cpu().numpy() & ~terminated
        observation[resetting], rewards[resetting] = self.states(None)[resetting], 0.0
        terminated[resetting], truncated[resetting] = False, False
        self.autoreset = terminated | truncated
        self._observation = observation
        return observation.copy(), rewards, terminated, truncated, self.info(terminated)

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


def time_limit_is_terminal(env: Any) -> bool:
    """Whether an episode's end at its time limit is a terminal state of the problem the agent sees: yes
    when the observation holds the budget left (schedule.sees_budget), because then the time limit is part
    of the MDP and bootstrapping past it would value steps the run never takes; no otherwise, where the
    truncation is the experimenter's and the last transition is bootstrapped from its real next state
    (Pardo et al. 2018, "Time Limits in Reinforcement Learning"). env: an LRControlEnv, its vector form, or
    any env (a wrapper's unwrapped one) with a `schedule`; an env without one truncates (False)."""
    schedule = getattr(getattr(env, "unwrapped", env), "schedule", None)
    return bool(getattr(schedule, "sees_budget", False))


def stored_as_terminal(terminated: Any, truncated: Any, time_limit_terminal: bool) -> Any:
    """What replay stores as `terminated` (no bootstrapping from next_state): a terminated transition,
    and a truncated one where the time limit is terminal (time_limit_is_terminal). Works on bools and on
    numpy bool arrays (vector envs)."""
    return terminated | (truncated & time_limit_terminal)


def check_discount(env: Any, agent: rc.DQNAgent) -> bool:
    """time_limit_is_terminal(env), after rlr_config.check_discount's rule for the agent's gamma on the
    env's schedule (gamma = 1 only where the time limit is terminal)."""
    rc.check_discount(agent.config.gamma, getattr(getattr(env, "unwrapped", env), "schedule", None))
    return time_limit_is_terminal(env)


def train_agent_on_env(env: gymnasium.Env, agent: rc.DQNAgent, total_steps: int,
                       seed: int | None = None, max_episodes: int | None = None) -> dict[str, list]:
    """Run agent on env for total_steps environment steps (or until max_episodes episodes have finished),
    the standard Gymnasium loop.

    obs -> act -> step -> remember(obs, action, next_obs, reward) -> learn, then reset at terminated or
    truncated. The first reset uses seed, later ones continue the environment's own RNG. next_obs is
    always the observation step() returned, also at truncation (the real next state). Gymnasium's
    semantics: a terminated transition is stored as terminal (no bootstrapping from it: for
    LRControlEnv's divergence, the penalty is the last reward), a truncated one is bootstrapped from its
    real next observation, except where the time limit is terminal (time_limit_is_terminal: the budget is
    in the state), when it is stored as terminal too. With agent.training False (eval) nothing is stored
    or learned: an evaluation rollout with the greedy policy.

    Returns episode_returns, episode_lengths and episode_terminated (one per finished episode; an
    unfinished last episode is left out) and dqn_losses (one per DQN update).
    """
    if not isinstance(env.action_space, spaces.Discrete) or int(env.action_space.n) != agent.n_actions:
        raise ValueError(f"env.action_space must be Discrete({agent.n_actions}) for this agent, "
                         f"got {env.action_space}")
    if not isinstance(env.observation_space, spaces.Box) or env.observation_space.shape != (agent.state_dim,):
        raise ValueError(f"env.observation_space must be a Box of shape ({agent.state_dim},) for this agent, "
                         f"got {env.observation_space}")
    rc.check_int("total_steps", total_steps, 0)
    if max_episodes is not None:
        rc.check_int("max_episodes", max_episodes, 1)
    time_limit_terminal = check_discount(env, agent)
    history: dict[str, list] = {"episode_returns": [], "episode_lengths": [], "episode_terminated": [],
                                "dqn_losses": []}
    observation, _ = env.reset(seed=seed)
    episode_return, episode_length = 0.0, 0
    for _ in range(total_steps):
        action = agent.act(observation)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        if agent.training:
            agent.remember(observation, action, next_observation, float(reward),
                           terminated=bool(stored_as_terminal(bool(terminated), bool(truncated), time_limit_terminal)))
            dqn_loss = agent.learn()
            if dqn_loss is not None:
                history["dqn_losses"].append(dqn_loss)
        episode_return += float(reward)
        episode_length += 1
        if terminated or truncated:
            history["episode_returns"].append(episode_return)
            history["episode_lengths"].append(episode_length)
            history["episode_terminated"].append(bool(terminated))
            if max_episodes is not None and len(history["episode_returns"]) >= max_episodes:
                break
            observation, _ = env.reset()
            episode_return, episode_length = 0.0, 0
        else:
            observation = next_observation
    return history


def train_agent_on_vector_env(envs: VectorEnv, agent: rc.DQNAgent, total_steps: int, seed: int | None = None,
                              updates_per_step: int = 1, checkpoints: Sequence[int] = (),
                              at_checkpoint: Callable[[int, dict], None] | None = None) -> dict[str, list]:
    """train_agent_on_env over a vector environment with next-step autoreset (e.g. LRControlVectorEnv):
    each vector step the agent acts for every task, remembers every real transition (terminated ones as
    terminal, truncated ones too where the time limit is terminal: stored_as_terminal; not the step that
    autoresets a task, which is no transition) and takes updates_per_step
    DQN updates. total_steps counts vector steps; after each vector step count in checkpoints,
    at_checkpoint(steps, history so far) is called (to freeze and score the policy mid-training without
    touching the training: learning curves). Returns episode_returns, episode_lengths,
    episode_terminated and episode_seeds (info["episode_seed"], None if the env gives none) of every
    finished episode, in the order they finish, and dqn_losses."""
    if envs.metadata.get("autoreset_mode") != AutoresetMode.NEXT_STEP:
        raise ValueError("envs must autoreset on the next step (gymnasium.vector.AutoresetMode.NEXT_STEP)")
    single = envs.single_action_space
    if not isinstance(single, spaces.Discrete) or int(single.n) != agent.n_actions:
        raise ValueError(f"envs.single_action_space must be Discrete({agent.n_actions}) for this agent, got {single}")
    rc.check_int("total_steps", total_steps, 0)
    rc.check_int("updates_per_step", updates_per_step, 1)
    checkpoints = set(rc.check_seeds("checkpoints", list(checkpoints))) if len(checkpoints) else set()
    if checkpoints and not callable(at_checkpoint):
        raise TypeError("at_checkpoint must be callable(steps, history) when checkpoints are given")
    time_limit_terminal = check_discount(envs, agent)
    history: dict[str, list] = {"episode_returns": [], "episode_lengths": [], "episode_terminated": [],
                                "episode_seeds": [], "dqn_losses": []}
    observations, _ = envs.reset(seed=seed)
    returns, lengths = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=np.int64)
    restarting = np.zeros(envs.num_envs, dtype=bool)
    for step in range(1, total_steps + 1):
        actions = np.array([agent.act(observation) for observation in observations])
        next_observations, rewards, terminated, truncated, info = envs.step(actions)
        terminal = stored_as_terminal(terminated, truncated, time_limit_terminal)
        for k in np.flatnonzero(~restarting):
            if agent.training:
                agent.remember(observations[k], int(actions[k]), next_observations[k], float(rewards[k]),
                               terminated=bool(terminal[k]))
            returns[k] += rewards[k]
            lengths[k] += 1
        for k in np.flatnonzero(terminated | truncated):
            history["episode_returns"].append(float(returns[k]))
            history["episode_lengths"].append(int(lengths[k]))
            history["episode_terminated"].append(bool(terminated[k]))
            history["episode_seeds"].append(int(info["episode_seed"][k]) if "episode_seed" in info else None)
            returns[k], lengths[k] = 0.0, 0
        for _ in range(updates_per_step if agent.training else 0):
            dqn_loss = agent.learn()
            if dqn_loss is not None:
                history["dqn_losses"].append(dqn_loss)
        restarting = terminated | truncated
        observations = next_observations
        if step in checkpoints:
            at_checkpoint(step, history)
    return history


ENV_ID = "rlr_env/LRControl-v0"
"""gymnasium.make(ENV_ID, task=..., schedule=..., ...) builds an LRControlEnv (keyword arguments as the
constructor's); the environment truncates its episodes itself, after schedule.steps steps."""
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point="rlr_env:LRControlEnv")
