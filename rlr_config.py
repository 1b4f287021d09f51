"""The configs of a run and the checks of every input: the lightest layer, below rlr_core.

TaskConfig (the polynomial task and MaclaurinNet's widths), ScheduleConfig (the learning-rate grid and
the agent's actions), DQNConfig (the agent), BaselineConfig (the original's mini-batch Adam) and Config
(all of them, with the run's seed, device and dtype). Every number of the original experiment is a field
here; none is buried in the code. The check_* functions give the errors every module raises for bad
input: a ValueError or TypeError naming the parameter, before any work starts. rlr_core and rlr_engine
re-export what they always offered (rlr_core.TaskConfig, rlr_engine.Config), so callers import either.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator

import numpy as np
import torch

DQN_VARIANTS = ("described", "as_coded")
STATE_FEATURES = ("raw", "log", "control", "validation")
SEES_BUDGET = ("control", "validation")
"""The features whose state holds the fraction of the budget left (ScheduleConfig.sees_budget)."""
LOG_FEATURES = ("log", "control", "validation")
"""The features with log states and the log reward (everything but 'raw')."""
REWARDS = ("training", "validation")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = True,
                 high_open: bool = False) -> None:
    """Check that value is a finite real number in the interval (low, high] (openness configurable)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")


def check_seed(name: str, value: Any) -> int:
    """value as a seed (an int >= 0, numpy ints included; a bool, float or string is refused)."""
    check_int(name, value, 0)
    return int(value)


def check_seeds(name: str, value: Any, count: int | None = None) -> list[int]:
    """value as a list of seeds, count of them when given (check_seed each, never truncated: 1.5 or '1' is
    refused; a string or a bare number is no list)."""
    values = check_sequence(name, value)
    if count is not None and len(values) != count:
        raise ValueError(f"{name} must hold {count} seeds, got {len(values)}")
    return [check_seed(f"{name}[{index}]", item) for index, item in enumerate(values)]


def check_lr_range(name: str, value: Any) -> tuple[float, float]:
    """value as (low, high): two finite learning rates > 0 with low < high; errors name the field."""
    values = check_sequence(name, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be (low, high), got {values}")
    for index, item in enumerate(values):
        check_float(f"{name}[{index}]", item, 0.0, math.inf, high_open=True)
    if not values[0] < values[1]:
        raise ValueError(f"{name} must be increasing, got {values}")
    return float(values[0]), float(values[1])


def check_int_array(name: str, value: Any, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    """value as an int64 array of shape with entries in [low, high]. Booleans and floats are refused: numpy
    and torch take a bool (or uint8) array as a mask, not as indices, and a float action is not an action."""
    array = np.asarray(value)
    what = "an int" if shape == () else f"{math.prod(shape)} ints"
    if array.dtype == np.bool_ or array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be {what} in [{low}, {high}], got dtype {array.dtype} ({value!r})")
    if array.shape != shape:
        raise ValueError(f"{name} must be {what} in [{low}, {high}] (shape {shape}), got shape {array.shape}")
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"{name} must be {what} in [{low}, {high}], got {array.tolist()}")
    return array.astype(np.int64)


@contextlib.contextmanager
def global_rng_preserved() -> Iterator[None]:
    """Run a block that touches the global random state (a package that seeds torch, numpy and random, a
    module whose constructor draws from torch's RNG) and put all three back afterwards: library code never
    changes the caller's random stream."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def check_sequence(name: str, value: Any) -> tuple:
    """Return value as a tuple, or raise TypeError naming the field (a bare number or string is no grid)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence (tuple or list), got {type(value).__name__} ({value!r})")
    return tuple(value)


@dataclass
class TaskConfig:
    """The regression problem: read a polynomial at n_points, return its coefficients."""

    n_examples: int = 256
    """number of polynomials in the (training) data set"""
    n_points: int = 20
    """equidistant sample points on [x_min, x_max], both ends included"""
    x_min: float = -2.0
    """left end of the sampling interval"""
    x_max: float = 2.0
    """right end of the sampling interval"""
    coeff_scale: tuple[float, ...] = (1.0, 0.5, 0.2, 0.1, 0.05)
    """standard deviation of each coefficient; its length is the degree + 1 ("Maclaurin-like" decay)"""
    hidden_sizes: tuple[int, ...] = (32, 16)
    """widths of MaclaurinNet's hidden layers"""
    input_noise: float = 0.0
    """standard deviation of Gaussian noise on each sampled value (a noisy reading of the polynomial; the
    coefficients stay exact): 0, the original, is noise-free and exactly linear; > 0 gives the task a
    non-zero Bayes floor (rlr_core.bayes_floor), so test MSE can be read against the best any model can do"""

    def __post_init__(self) -> None:
        check_int("task.n_examples", self.n_examples, 1)
        check_float("task.input_noise", self.input_noise, 0.0, math.inf, low_open=False, high_open=True)
        check_int("task.n_points", self.n_points, 2)
        check_float("task.x_min", self.x_min, -math.inf, math.inf, high_open=True)
        check_float("task.x_max", self.x_max, -math.inf, math.inf, high_open=True)
        if not self.x_min < self.x_max:
            raise ValueError(f"task.x_min must be < task.x_max, got {self.x_min} >= {self.x_max}")
        self.coeff_scale = check_sequence("task.coeff_scale", self.coeff_scale)
        if len(self.coeff_scale) == 0:
            raise ValueError("task.coeff_scale must not be empty (one scale per coefficient)")
        for i, scale in enumerate(self.coeff_scale):
            check_float(f"task.coeff_scale[{i}]", scale, 0.0, math.inf, high_open=True)
        self.hidden_sizes = check_sequence("task.hidden_sizes", self.hidden_sizes)
        if len(self.hidden_sizes) == 0:
            raise ValueError("task.hidden_sizes must name at least one hidden layer")
        for i, width in enumerate(self.hidden_sizes):
            check_int(f"task.hidden_sizes[{i}]", width, 1)

    @property
    def n_coefficients(self) -> int:
        return len(self.coeff_scale)


def original_lr_grid() -> tuple[float, ...]:
    """logspace(-5, -2, 12): the original's grid. 1e-3 is not on it (neighbours 8.11e-4, 1.52e-3)."""
    return tuple(float(v) for v in np.logspace(-5, -2, 12))


@dataclass
class ScheduleConfig:
    """How the agent's discrete actions move the learning rate along a grid."""

    lr_grid: tuple[float, ...] = field(default_factory=original_lr_grid)
    """allowed learning rates, strictly increasing"""
    start_index: int = 6
    """grid index of the first learning rate (12 // 2 = 6, lr = 4.33e-4)"""
    index_shifts: tuple[int, ...] = (-1, 0, 1)
    """action a moves the grid index by index_shifts[a], then clips to the grid"""
    steps: int = 10_000
    """environment steps (full-batch Adam steps) in the agent's one continuous run"""
    features: str = "raw"
    """'raw': state (L, L - L_prev), reward L_t - L_{t+1} (original); 'log': state (log L,
    log L - log L_prev, lr position in [0, 1]), reward log L_t - log L_{t+1} (scale-free ablation);
    'control': the log state plus the fraction of the budget (steps) left, the same log reward (a
    controller that sees the end of its run); 'validation': the control state plus log V and
    log V - log V_prev, V the loss on held-out polynomials of the task seed's own monitoring stream
    (RunSeeds.monitor: independent of the validation set tuning scores by and of the test set)"""
    lr_factors: tuple[float, ...] = ()
    """empty: actions shift the grid index (original); else action a multiplies the lr by
    lr_factors[a], clipped to [lr_grid[0], lr_grid[-1]] (e.g. (0.5, 1.0, 2.0))"""
    decision_interval: int = 1
    """optimiser steps per decision: an action's lr is held this many steps, and the reward and the
    state's change span them (1: the original, a decision every step)"""
    reward: str = "training"
    """'training': the features' reward on the training loss; 'validation': log V_t - log V_{t+1} on the
    validation split (telescoping to log V_0 - log V_T; Xu et al. 2019 reward the validation loss to target
    generalisation); not with raw features"""
    validation_examples: int = 1024
    """held-out polynomials of the task seed's monitoring stream that V is measured on, wherever the
    features or the reward use it"""

    def __post_init__(self) -> None:
        self.lr_grid = tuple(float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
                             else v for v in check_sequence("schedule.lr_grid", self.lr_grid))
        if len(self.lr_grid) == 0:
            raise ValueError("schedule.lr_grid must not be empty")
        for i, lr in enumerate(self.lr_grid):
            check_float(f"schedule.lr_grid[{i}]", lr, 0.0, math.inf, high_open=True)
        if any(b <= a for a, b in zip(self.lr_grid, self.lr_grid[1:])):
            raise ValueError(f"schedule.lr_grid must be strictly increasing, got {self.lr_grid}")
        check_int("schedule.start_index", self.start_index, 0)
        if self.start_index >= len(self.lr_grid):
            raise ValueError(f"schedule.start_index must be in [0, {len(self.lr_grid) - 1}] "
                             f"(on the grid), got {self.start_index}")
        self.index_shifts = check_sequence("schedule.index_shifts", self.index_shifts)
        if len(self.index_shifts) == 0:
            raise ValueError("schedule.index_shifts must name at least one action")
        for i, shift in enumerate(self.index_shifts):
            check_int(f"schedule.index_shifts[{i}]", shift, -len(self.lr_grid))
        check_int("schedule.steps", self.steps, 1)
        if self.features not in STATE_FEATURES:
            raise ValueError(f"schedule.features must be one of {STATE_FEATURES}, got {self.features!r}")
        self.lr_factors = check_sequence("schedule.lr_factors", self.lr_factors)
        for i, factor in enumerate(self.lr_factors):
            check_float(f"schedule.lr_factors[{i}]", factor, 0.0, math.inf, high_open=True)
        check_int("schedule.decision_interval", self.decision_interval, 1)
        if self.reward not in REWARDS:
            raise ValueError(f"schedule.reward must be one of {REWARDS}, got {self.reward!r}")
        if self.reward == "validation" and self.features == "raw":
            raise ValueError("schedule.reward='validation' is a log reward: use features 'log', 'control' or "
                             "'validation', not 'raw'")
        check_int("schedule.validation_examples", self.validation_examples, 1)
        if self.decision_interval > self.steps:
            raise ValueError(f"schedule.decision_interval must be at most schedule.steps ({self.steps}): a "
                             f"decision holds its lr that many steps, got {self.decision_interval}")

    @property
    def state_dim(self) -> int:
        """2 for raw features (L, dL), 3 for log features (log L, d log L, lr position), 4 for control
        features (log features and the fraction of the budget left), 6 for validation features (control
        features and log V, d log V)."""
        return {"raw": 2, "log": 3, "control": 4, "validation": 6}[self.features]

    @property
    def n_actions(self) -> int:
        return len(self.lr_factors) if self.lr_factors else len(self.index_shifts)

    @property
    def sees_budget(self) -> bool:
        """Whether the state holds the fraction of the budget left (features 'control', 'validation'): then
        the run's end is part of the problem the agent sees, a terminal state (rlr_env.time_limit_is_terminal)."""
        return self.features in SEES_BUDGET

    @property
    def uses_validation(self) -> bool:
        """Whether the state or the reward reads the validation loss V (the environments measure it)."""
        return self.features == "validation" or self.reward == "validation"


@dataclass
class DQNConfig:
    """The DQN agent (PyTorch DQN tutorial shape): replay, soft target update, Huber loss."""

    hidden_size: int = 64
    """width of both hidden layers of the Q-network"""
    gamma: float = 0.99
    """discount factor in [0, 1]; 1 (the undiscounted telescoping return, log L_0 - log L_T with log
    rewards) only where the run's end is terminal, i.e. the state sees the budget (Config checks)"""
    lr: float = 1e-3
    """Adam learning rate of the Q-network"""
    tau: float = 0.005
    """soft update: target <- (1 - tau) target + tau policy, after every update"""
    batch_size: int = 64
    """transitions per DQN update, sampled uniformly with replacement"""
    replay_capacity: int = 1000
    """replay memory size (the default of the library the original used)"""
    learning_starts: int = 64
    """updates start once the memory holds this many transitions"""
    epsilon_start: float = 0.9
    """exploration probability at step 0"""
    epsilon_end: float = 0.05
    """exploration probability as t -> infinity"""
    epsilon_decay: float = 5000.0
    """time constant (steps) of the exponential decay from epsilon_start to epsilon_end"""
    variant: str = "described"
    """'described' (the original's text: correct DQN) or 'as_coded' (what its code ran, docs/original.md)"""
    double_dqn: bool = False
    """Double DQN (van Hasselt et al. 2016): the policy network picks a', the target network values it"""

    def __post_init__(self) -> None:
        check_int("dqn.hidden_size", self.hidden_size, 1)
        check_float("dqn.gamma", self.gamma, 0.0, 1.0, low_open=False)
        check_float("dqn.lr", self.lr, 0.0, math.inf, high_open=True)
        check_float("dqn.tau", self.tau, 0.0, 1.0)
        check_int("dqn.batch_size", self.batch_size, 1)
        check_int("dqn.replay_capacity", self.replay_capacity, 1)
        if self.replay_capacity < self.batch_size:
            raise ValueError(f"dqn.replay_capacity ({self.replay_capacity}) must be >= "
                             f"dqn.batch_size ({self.batch_size})")
        check_int("dqn.learning_starts", self.learning_starts, 1)
        if self.learning_starts > self.replay_capacity:  # the memory would never hold enough: no updates
            raise ValueError(f"dqn.learning_starts must be in [1, dqn.replay_capacity = "
                             f"{self.replay_capacity}], got {self.learning_starts}")
        for name in ("epsilon_start", "epsilon_end"):
            check_float(f"dqn.{name}", getattr(self, name), 0.0, 1.0, low_open=False)
        check_float("dqn.epsilon_decay", self.epsilon_decay, 0.0, math.inf, high_open=True)
        if self.variant not in DQN_VARIANTS:
            raise ValueError(f"dqn.variant must be one of {DQN_VARIANTS}, got {self.variant!r}")
        if not isinstance(self.double_dqn, bool):
            raise TypeError(f"dqn.double_dqn must be a bool, got {type(self.double_dqn).__name__}")
        if self.variant == "as_coded" and self.batch_size < 4:  # its update reads 4 sampled transitions
            raise ValueError(f"dqn.batch_size must be >= 4 for variant 'as_coded', got {self.batch_size}")



def check_discount(gamma: float, schedule: "ScheduleConfig | None") -> None:
    """The one rule for gamma = 1 (the undiscounted return): only where the run's end is terminal, i.e. the
    state sees the budget (schedule.sees_budget); elsewhere the run has no terminal state and undiscounted
    values grow without bound over bootstrapped truncations. schedule None: an environment without one."""
    if gamma == 1.0 and not (schedule is not None and schedule.sees_budget):
        features = "no schedule" if schedule is None else f"features={schedule.features!r}"
        raise ValueError(f"dqn.gamma = 1 needs a run whose end is terminal: schedule.features 'control' or "
                         f"'validation' (the budget left in the state), got {features}")


# ---------------------------------------------------------------------------------------------------
# The run config: the task and agent configs plus the baseline, seed, device and dtype
# ---------------------------------------------------------------------------------------------------


@dataclass
class BaselineConfig:
    """The original baseline: mini-batch Adam at a constant learning rate."""

    lr: float = 1e-3
    """Adam learning rate"""
    epochs: int = 10_000
    """passes over the data set"""
    batch_size: int = 32
    """mini-batch size; a fresh random permutation every epoch"""

    def __post_init__(self) -> None:
        check_float("baseline.lr", self.lr, 0.0, math.inf, high_open=True)
        check_int("baseline.epochs", self.epochs, 1)
        check_int("baseline.batch_size", self.batch_size, 1)


@dataclass
class Config:
    """Everything one run needs. The defaults are the original experiment."""

    seed: int = 0
    """run seed; data, initialisation, shuffling and agent draw from streams derived from it"""
    device: str = "cpu"
    """'cpu', or 'cuda' / 'cuda:N' when a GPU is available"""
    dtype: str = "float32"
    """'float32' (the original) or 'float64' (equivalence tests)"""
    task: TaskConfig = field(default_factory=TaskConfig)
    """the polynomial task and the network"""
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    """the mini-batch Adam baseline"""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """the learning-rate grid the agent moves on"""
    dqn: DQNConfig = field(default_factory=DQNConfig)
    """the DQN agent"""

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)
        check_device(self.device)
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for name, kind in (("task", TaskConfig), ("baseline", BaselineConfig),
                           ("schedule", ScheduleConfig), ("dqn", DQNConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        check_discount(self.dqn.gamma, self.schedule)

    def to_dict(self) -> dict:
        return asdict(self)

    def baseline_optimiser_steps(self) -> int:
        """Optimiser steps of the mini-batch baseline: epochs x mini-batches per epoch (the last one partial)."""
        return self.baseline.epochs * math.ceil(self.task.n_examples / self.baseline.batch_size)

    def with_seed(self, seed: int) -> "Config":
        """This config on another seed (checked: an int >= 0): the one way a run's seed is replaced."""
        return replace(self, seed=check_seed("seed", seed))

    def with_overrides(self, overrides: dict) -> "Config":
        """A copy with some fields of its parts replaced, e.g. {"dqn": {"lr": 1e-4}} (validated like any
        Config; an unknown part or field is an error naming it)."""
        if not isinstance(overrides, dict):
            raise TypeError(f"overrides must be a dict of part -> {{field: value}}, got {type(overrides).__name__}")
        data = self.to_dict()
        for part, values in overrides.items():
            if not isinstance(values, dict):
                data[part] = values
                continue
            if not isinstance(data.get(part), dict):
                raise ValueError(f"unknown config part {part!r} in overrides")
            data[part] = {**data[part], **values}
        return Config.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of to_dict (for reading results back). Unknown fields are an error naming them: a
        misspelt field must not silently fall back to its default."""
        parts = {"task": TaskConfig, "baseline": BaselineConfig, "schedule": ScheduleConfig,
                 "dqn": DQNConfig}
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict of Config fields (Config.to_dict()), got {type(data).__name__}")
        wrong = [name for name in parts if name in data and not isinstance(data[name], (dict, parts[name]))]
        if wrong:
            raise TypeError(f"config.{wrong[0]} must be a dict of its fields, got {type(data[wrong[0]]).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        unknown += [f"{name}.{key}" for name, kind in parts.items() if isinstance(data.get(name), dict)
                    for key in sorted(set(data[name]) - {f.name for f in fields(kind)})]
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}")
        return cls(**{k: (parts[k](**v) if k in parts and isinstance(v, dict) else v) for k, v in data.items()})


def check_device(device: str) -> torch.device:
    """Return the torch.device, or raise ValueError if it is unknown or not available here."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from error
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available on this machine")
    return parsed
