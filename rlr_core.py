"""RLR Scheduler core: the polynomial task, MaclaurinNet, a small DQN agent and the training loops.

A DQN agent picks Adam's learning rate, step by step, while Adam trains MaclaurinNet. Everything the
notebooks run lives here, so that tests can reach it. Defaults reproduce the original experiment
(see SPEC.md in the project docs); every deliberate departure is a named option.

Read top to bottom: configs -> task and models -> DQN agent -> learning-rate scheduler -> training loops
-> results on disk.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

# ---------------------------------------------------------------------------------------------------
# Configs. Every number of the original experiment is a field here; none is buried in the code.
# ---------------------------------------------------------------------------------------------------

DQN_VARIANTS = ("described", "as_coded")
STATE_FEATURES = ("raw", "log")
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

    def __post_init__(self) -> None:
        check_int("task.n_examples", self.n_examples, 1)
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
    log L - log L_prev, lr position in [0, 1]), reward log L_t - log L_{t+1} (scale-free ablation)"""
    lr_factors: tuple[float, ...] = ()
    """empty: actions shift the grid index (original); else action a multiplies the lr by
    lr_factors[a], clipped to [lr_grid[0], lr_grid[-1]] (e.g. (0.5, 1.0, 2.0))"""

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

    @property
    def state_dim(self) -> int:
        """2 for raw features (L, dL), 3 for log features (log L, d log L, lr position)."""
        return 2 if self.features == "raw" else 3

    @property
    def n_actions(self) -> int:
        return len(self.lr_factors) if self.lr_factors else len(self.index_shifts)


@dataclass
class DQNConfig:
    """The DQN agent (PyTorch DQN tutorial shape): replay, soft target update, Huber loss."""

    hidden_size: int = 64
    """width of both hidden layers of the Q-network"""
    gamma: float = 0.99
    """discount factor; the run has no terminal states"""
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
    """'described' (the original's text: correct DQN) or 'as_coded' (what its code ran, SPEC.md)"""

    def __post_init__(self) -> None:
        check_int("dqn.hidden_size", self.hidden_size, 1)
        check_float("dqn.gamma", self.gamma, 0.0, 1.0, low_open=False, high_open=True)
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


@dataclass
class Config:
    """Everything one run needs. The defaults are the original experiment."""

    seed: int = 0
    """run seed; data, initialisation, shuffling and agent draw from streams derived from it"""
    device: str = "cpu"
    """'cpu', or 'cuda' / 'cuda:N' when a GPU is available"""
    dtype: str = "float32"
    """'float32' (the original) or 'float64' (equivalence tests)"""
    num_threads: int = 1
    """torch intra-op threads; 1 is fastest for these tiny models (README, Performance)"""
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
        check_int("num_threads", self.num_threads, 1)
        for name, kind in (("task", TaskConfig), ("baseline", BaselineConfig),
                           ("schedule", ScheduleConfig), ("dqn", DQNConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of to_dict (for reading results back)."""
        parts = {"task": TaskConfig, "baseline": BaselineConfig, "schedule": ScheduleConfig,
                 "dqn": DQNConfig}
        known = {f.name for f in fields(cls)}
        kwargs = {k: (parts[k](**v) if k in parts else v) for k, v in data.items() if k in known}
        return cls(**kwargs)


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


# ---------------------------------------------------------------------------------------------------
# Seeds, task and models
# ---------------------------------------------------------------------------------------------------


class RunSeeds(NamedTuple):
    """Independent seeds for the parts of one run, so that changing one part leaves the others alone."""

    data: int
    init: int
    shuffle: int
    agent: int
    test: int
    """held-out test polynomials, same distribution as the training data"""


def derive_seeds(seed: int) -> RunSeeds:
    """Split one run seed into independent streams (numpy's SeedSequence does this properly).

    generate_state is prefix-stable: adding a stream at the end leaves the earlier ones unchanged.
    """
    words = np.random.SeedSequence(seed).generate_state(len(RunSeeds._fields), dtype=np.uint32)
    return RunSeeds(*(int(w) for w in words))


def sample_points(task: TaskConfig) -> torch.Tensor:
    """The x at which every polynomial is read: linspace(x_min, x_max, n_points), float64."""
    return torch.linspace(task.x_min, task.x_max, task.n_points, dtype=torch.float64)


class PolynomialData(NamedTuple):
    """Inputs y (polynomial values, n x n_points) and targets w (coefficients, n x degree+1)."""

    inputs: torch.Tensor
    targets: torch.Tensor


def make_polynomial_dataset(task: TaskConfig, seed: int, n_examples: int | None = None,
                            dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu") -> PolynomialData:
    """w = randn(n, d) * coeff_scale; y = w @ X with X[j, i] = x_i ** j. Seeded by its own generator."""
    if not isinstance(task, TaskConfig):
        raise TypeError(f"task must be a TaskConfig, got {type(task).__name__}")
    check_int("seed", seed, 0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    n = task.n_examples if n_examples is None else n_examples
    check_int("n_examples", n, 1)
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor(task.coeff_scale, dtype=torch.float64)
    targets = torch.randn(n, task.n_coefficients, generator=generator, dtype=torch.float64) * scale
    powers = sample_points(task)[None, :] ** torch.arange(task.n_coefficients, dtype=torch.float64)[:, None]
    inputs = targets @ powers
    return PolynomialData(inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype))


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear - ReLU - ... - Linear with PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MaclaurinNet(nn.Sequential):
    """Polynomial values at n_points in, coefficients out: Linear(20,32)-ReLU-Linear(32,16)-ReLU-Linear(16,5)."""

    def __init__(self, task: TaskConfig = TaskConfig()) -> None:
        super().__init__(*mlp([task.n_points, *task.hidden_sizes, task.n_coefficients]))


class QNetwork(nn.Sequential):
    """State in, one Q-value per action out: Linear(d,64)-ReLU-Linear(64,64)-ReLU-Linear(64,n_actions)."""

    def __init__(self, state_dim: int, n_actions: int, hidden_size: int = 64) -> None:
        super().__init__(*mlp([state_dim, hidden_size, hidden_size, n_actions]))


def make_model(task: TaskConfig, seed: int, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> MaclaurinNet:
    """MaclaurinNet with default init drawn from torch's global RNG seeded with `seed`."""
    torch.manual_seed(seed)
    return MaclaurinNet(task).to(device=device, dtype=dtype)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel: 1.5-2x faster per step than the default for these tiny models."""
    return torch.optim.Adam(params, lr=lr, fused=True)


class AdamHD(torch.optim.Adam):
    """Adam with hypergradient descent on its learning rate (Adam-HD, Baydin et al. 2018).

    Before each step, lr <- max(0, lr + hypergradient_lr * <g_t, u_{t-1}>): u_{t-1} is the previous
    Adam direction, the last parameter change divided by the lr that made it. Online lr adaptation
    without RL; hand-written because no maintained library ships it for torch.optim.
    """

    def __init__(self, params, lr: float = 1e-3, hypergradient_lr: float = 1e-7, **adam_options: Any) -> None:
        check_float("hypergradient_lr", hypergradient_lr, 0.0, math.inf, low_open=False, high_open=True)
        super().__init__(params, lr=lr, **adam_options)
        self.hypergradient_lr = hypergradient_lr
        self.last_direction: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:  # type: ignore[override]
        params = [p for group in self.param_groups for p in group["params"]]
        if self.last_direction is not None:
            hypergradient = sum(float((p.grad * d).sum()) for p, d in zip(params, self.last_direction)
                                if p.grad is not None)
            for group in self.param_groups:
                group["lr"] = max(0.0, group["lr"] + self.hypergradient_lr * hypergradient)
        before = [p.detach().clone() for p in params]
        loss = super().step(closure)
        lr = self.param_groups[0]["lr"]
        self.last_direction = [(b - p) / lr if lr > 0 else torch.zeros_like(p) for b, p in zip(before, params)]
        return loss


def full_batch_loss(model: nn.Module, data: PolynomialData) -> torch.Tensor:
    """MSE between true and predicted coefficients over every example (mean over n x d entries)."""
    return F.mse_loss(model(data.inputs), data.targets)


# ---------------------------------------------------------------------------------------------------
# The DQN agent. It knows nothing about learning rates: states, actions and rewards only.
# ---------------------------------------------------------------------------------------------------


class Transition(NamedTuple):
    """One transition, or a batch of them stacked along the first axis (field order as the original)."""

    state: torch.Tensor
    action: torch.Tensor
    next_state: torch.Tensor
    reward: torch.Tensor


class ReplayMemory:
    """Fixed-capacity ring buffer of transitions held as tensors; uniform sampling with replacement."""

    def __init__(self, capacity: int, state_dim: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        check_int("capacity", capacity, 1)
        check_int("state_dim", state_dim, 1)
        self.capacity = capacity
        self.states = torch.zeros(capacity, state_dim, dtype=dtype, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=device)
        self.next_states = torch.zeros(capacity, state_dim, dtype=dtype, device=device)
        self.rewards = torch.zeros(capacity, dtype=dtype, device=device)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, state: torch.Tensor, action: int, next_state: torch.Tensor, reward: float) -> None:
        """Store one transition, overwriting the oldest once full. Non-finite values are refused."""
        if not (torch.isfinite(state).all() and torch.isfinite(next_state).all() and math.isfinite(reward)):
            raise ValueError("replay memory refuses a transition with a non-finite state or reward")
        self.states[self.position] = state
        self.actions[self.position] = action
        self.next_states[self.position] = next_state
        self.rewards[self.position] = reward
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Transition:
        """Uniform indices with replacement: floor(u * size) from float64 uniforms (one draw each)."""
        check_int("batch_size", batch_size, 1)
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        uniforms = torch.rand(batch_size, dtype=torch.float64, generator=generator)
        indices = (uniforms * self.size).long().to(self.states.device)
        return Transition(self.states[indices], self.actions[indices], self.next_states[indices],
                          self.rewards[indices])

    def state_dict(self) -> dict:
        return {"states": self.states.clone(), "actions": self.actions.clone(),
                "next_states": self.next_states.clone(), "rewards": self.rewards.clone(),
                "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["states"].shape != self.states.shape:
            raise ValueError(f"replay memory shape {tuple(state['states'].shape)} does not match "
                             f"{tuple(self.states.shape)}")
        for name in ("states", "actions", "next_states", "rewards"):
            getattr(self, name).copy_(state[name])
        self.position, self.size = int(state["position"]), int(state["size"])


def epsilon_at(step: int, config: DQNConfig) -> float:
    """eps(t) = end + (start - end) * exp(-t / decay): 0.9 at t=0, 0.36 at t=5000, 0.17 at t=9999."""
    return config.epsilon_end + (config.epsilon_start - config.epsilon_end) * math.exp(-step / config.epsilon_decay)


@torch.no_grad()
def soft_update(target: nn.Module, policy: nn.Module, tau: float) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta_policy (tau = 1 copies)."""
    for target_param, policy_param in zip(target.parameters(), policy.parameters()):
        target_param.lerp_(policy_param, tau)


def assemble_as_coded_batch(batch: Transition, n_actions: int) -> Transition:
    """The 64-row batch the original's update actually trained on (SPEC.md, table).

    The original looped `for i, b in enumerate(batch)` over the 4 stacked fields (S, A, S2, R) as if
    they were 64 transitions: row i takes, from field i, element 0 as the state, element 1 as the
    action (int() truncation), element 2 as the next state and element 3 as the reward; a scalar is
    repeated to fill the state (`s.repeat(state_dim)[:state_dim]`). Rows 4..63 stay zero.
    """
    n_rows, state_dim = batch.state.shape
    dtype, device = batch.state.dtype, batch.state.device
    states = torch.zeros(n_rows, state_dim, dtype=dtype, device=device)
    next_states = torch.zeros_like(states)
    actions = torch.zeros(n_rows, dtype=torch.long, device=device)
    rewards = torch.zeros(n_rows, dtype=dtype, device=device)

    def as_state(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).reshape(-1).repeat(state_dim)[:state_dim]

    def first(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).reshape(-1)[0]

    for row, stacked in enumerate(batch[: min(4, n_rows)]):  # 4 fields, not a loop over samples
        states[row] = as_state(stacked[0])
        next_states[row] = as_state(stacked[2])
        rewards[row] = first(stacked[3])
        # int() truncates toward zero. The original would crash on an index outside [0, n_actions);
        # that needs a loss >= n_actions or a reward <= -1, which this task never produces: clip.
        actions[row] = int(torch.trunc(first(stacked[1])).clamp(0, n_actions - 1))
    return Transition(states, actions, next_states, rewards)


class DQNAgent:
    """Small DQN for any low-dimensional state and discrete action set.

    act(state) -> action (epsilon-greedy); remember(s, a, s', r); learn() -> one DQN update on a replay
    batch followed by a soft target update. Its randomness comes from one torch.Generator, drawn in a
    fixed pattern (act: 2 uniforms; learn: batch_size uniforms), so runs are reproducible and the
    batched engine can replay the same stream.
    """

    def __init__(self, state_dim: int, n_actions: int, config: DQNConfig = DQNConfig(), seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        check_int("state_dim", state_dim, 1)
        check_int("n_actions", n_actions, 1)
        if not isinstance(config, DQNConfig):
            raise TypeError(f"config must be a DQNConfig, got {type(config).__name__}")
        check_int("seed", seed, 0)
        self.state_dim, self.n_actions, self.config = state_dim, n_actions, config
        self.dtype, self.device = dtype, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # PyTorch default init of the Q-network draws from the global RNG
        self.policy_net = QNetwork(state_dim, n_actions, config.hidden_size).to(device=device, dtype=dtype)
        self.target_net = QNetwork(state_dim, n_actions, config.hidden_size).to(device=device, dtype=dtype)
        self.target_net.load_state_dict(self.policy_net.state_dict())
        self.optimizer = make_adam(self.policy_net.parameters(), config.lr)
        self.replay = ReplayMemory(config.replay_capacity, state_dim, dtype, device)
        self.steps_done = 0
        self.training = True
        self.last_q_values = torch.zeros(n_actions, dtype=dtype)
        self.last_epsilon = config.epsilon_start
        self.last_explored = False

    def epsilon(self) -> float:
        return epsilon_at(self.steps_done, self.config)

    @torch.no_grad()
    def act(self, state: torch.Tensor) -> int:
        """Epsilon-greedy in training mode (epsilon decays with every call), greedy in eval mode."""
        state = torch.as_tensor(state, dtype=self.dtype, device=self.device)
        self.last_q_values = self.policy_net(state).cpu()
        explore_draw, action_draw = torch.rand(2, dtype=torch.float64, generator=self.generator).tolist()
        self.last_epsilon = self.epsilon() if self.training else 0.0
        if self.training:
            self.steps_done += 1
        self.last_explored = explore_draw < self.last_epsilon
        if self.last_explored:
            return int(action_draw * self.n_actions)
        return int(self.last_q_values.argmax())

    def remember(self, state: torch.Tensor, action: int, next_state: torch.Tensor, reward: float) -> None:
        self.replay.push(torch.as_tensor(state), action, torch.as_tensor(next_state), reward)

    def learn(self) -> float | None:
        """One DQN update (Huber loss on r + gamma max Q_target(s')), then the soft update. None if too early."""
        config = self.config
        if len(self.replay) < max(config.learning_starts, 1):
            return None
        batch = self.replay.sample(config.batch_size, self.generator)
        if config.variant == "as_coded":
            batch = assemble_as_coded_batch(batch, self.n_actions)
        q_taken = self.policy_net(batch.state).gather(1, batch.action[:, None]).squeeze(1)
        with torch.no_grad():
            target = batch.reward + config.gamma * self.target_net(batch.next_state).max(dim=1).values
        loss = F.smooth_l1_loss(q_taken, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        soft_update(self.target_net, self.policy_net, config.tau)
        return loss.item()

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically: networks, optimiser, replay, step, RNG."""
        return {"policy_net": self.policy_net.state_dict(), "target_net": self.target_net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "replay": self.replay.state_dict(),
                "steps_done": self.steps_done, "generator": self.generator.get_state(),
                "training": self.training, "last_q_values": self.last_q_values.clone(),
                "last_epsilon": self.last_epsilon, "last_explored": self.last_explored}

    def load_state_dict(self, state: dict) -> None:
        self.policy_net.load_state_dict(state["policy_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.steps_done = int(state["steps_done"])
        self.generator.set_state(state["generator"])
        self.training = bool(state["training"])
        # What the last act() saw: training loops log it at the next step, so a resumed run needs it.
        self.last_q_values = state.get("last_q_values", self.last_q_values).clone()
        self.last_epsilon = float(state.get("last_epsilon", self.last_epsilon))
        self.last_explored = bool(state.get("last_explored", self.last_explored))


# ---------------------------------------------------------------------------------------------------
# The learning-rate scheduler: an optimiser + an agent, advanced by step(loss) like ReduceLROnPlateau.
# ---------------------------------------------------------------------------------------------------


def safe_log(loss: float | torch.Tensor) -> float | torch.Tensor:
    """log of a loss, floored at 1e-30 so that an exact zero gives a large finite value, not -inf.
    A tensor of losses (one per run, rlr_batched) gives a float64 tensor of logs."""
    if isinstance(loss, torch.Tensor):
        return loss.double().clamp_min(1e-30).log()
    return math.log(max(float(loss), 1e-30))


def loss_state(loss: float, previous_loss: float | None, dtype: torch.dtype = torch.float32,
               features: str = "raw", lr_position: float = 0.0) -> torch.Tensor:
    """The agent's state s_t = (L_t, L_t - L_{t-1}), raw; the difference is 0 when there is no L_{t-1}.

    With features='log': (log L_t, log L_t - log L_{t-1}, lr_position), scale-free. The one definition
    of the state: RLRScheduler and the Gymnasium environment (rlr_env) both use it. The difference is
    taken in Python floats (float64) before the cast to dtype.
    """
    if features == "raw":
        difference = 0.0 if previous_loss is None else float(loss) - float(previous_loss)
        return torch.tensor([float(loss), difference], dtype=dtype)
    log_difference = 0.0 if previous_loss is None else safe_log(loss) - safe_log(previous_loss)
    return torch.tensor([safe_log(loss), log_difference, lr_position], dtype=dtype)


def loss_reward(previous_loss: float | torch.Tensor, loss: float | torch.Tensor,
                features: str = "raw") -> float | torch.Tensor:
    """The agent's reward r_t = L_t - L_{t+1} (raw), or log L_t - log L_{t+1} with features='log'.
    Tensors of losses (one per run, rlr_batched) give a float64 tensor of rewards."""
    if features == "log":
        return safe_log(previous_loss) - safe_log(loss)
    if isinstance(loss, torch.Tensor):
        return previous_loss.double() - loss.double()
    return float(previous_loss) - float(loss)


def lr_position(lr: float, schedule: ScheduleConfig) -> float:
    """Where lr sits between the grid's ends on a log scale: 0 at the lowest, 1 at the highest."""
    low, high = math.log(schedule.lr_grid[0]), math.log(schedule.lr_grid[-1])
    return 0.0 if high == low else (math.log(lr) - low) / (high - low)


def next_lr_index(lr_index: int, action: int, schedule: ScheduleConfig) -> int:
    """Move the grid index by schedule.index_shifts[action], then clip it to the grid."""
    return min(max(lr_index + schedule.index_shifts[action], 0), len(schedule.lr_grid) - 1)


def next_lr(lr_index: int, lr: float, action: int, schedule: ScheduleConfig) -> tuple[int, float]:
    """The (grid index, lr) an action leads to: a grid shift (original), or with schedule.lr_factors a
    multiplication clipped to the grid's range, whose index is then the nearest grid value (for logs)."""
    grid = schedule.lr_grid
    if not schedule.lr_factors:
        index = next_lr_index(lr_index, action, schedule)
        return index, grid[index]
    lr = min(max(lr * schedule.lr_factors[action], grid[0]), grid[-1])
    return int(np.argmin(np.abs(np.log(grid) - math.log(lr)))), lr


class RLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Reinforcement-learning learning-rate scheduler, used like ReduceLROnPlateau.

        loss = compute_loss(); scheduler.step(loss.item())   # once with L_0: picks the first lr
        for t in range(steps):
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            loss = compute_loss(); scheduler.step(loss.item())

    step(L_{t+1}) finishes transition t (reward L_t - L_{t+1}, next state), stores it, runs one DQN
    update (train mode), then chooses the next action and writes grid[index] into every param group:
    exactly the original's order of operations. State s_t = (L_t, L_t - L_{t-1}); with the agent's
    variant 'as_coded' the state acted on is (L_t, 0), as in the original's code (SPEC.md).

    The grid: pass schedule=ScheduleConfig(...), or for short lr_grid=[...] (and optionally
    start_index, default len(lr_grid) // 2 as the original's 12 // 2), which builds the ScheduleConfig
    (where the grid is validated). Without an agent, a fresh DQNAgent(2, n_actions, seed=seed) learns
    online; pass a trained one (load_agent) and call eval() to use its policy frozen.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, agent: DQNAgent | None = None,
                 schedule: ScheduleConfig | None = None, seed: int = 0, *,
                 lr_grid: Iterable[float] | None = None, start_index: int | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if schedule is not None and (lr_grid is not None or start_index is not None):
            raise ValueError("pass either schedule=ScheduleConfig(...) or lr_grid=/start_index=, not both")
        if schedule is None:
            grid = check_sequence("lr_grid", lr_grid) if lr_grid is not None else original_lr_grid()
            schedule = ScheduleConfig(lr_grid=grid, start_index=len(grid) // 2 if start_index is None
                                      else start_index)
        if not isinstance(schedule, ScheduleConfig):
            raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.agent = agent if agent is not None else DQNAgent(schedule.state_dim, schedule.n_actions, seed=seed)
        if self.agent.n_actions != schedule.n_actions:
            raise ValueError(f"agent has {self.agent.n_actions} actions but the schedule has "
                             f"{schedule.n_actions} (index_shifts, or lr_factors when given)")
        if self.agent.state_dim != schedule.state_dim:
            raise ValueError(f"agent.state_dim must be {schedule.state_dim} for schedule.features="
                             f"{schedule.features!r}, got {self.agent.state_dim}")
        self.lr_index = schedule.start_index
        self.previous_loss: float | None = None
        self.previous_state: torch.Tensor | None = None
        self.last_action: int | None = None
        self.last_epoch = 0
        self._set_lr(schedule.lr_grid[self.lr_index])

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def train(self) -> "RLRScheduler":
        """Learn online (the original): epsilon-greedy actions, one DQN update per step."""
        self.agent.training = True
        return self

    def eval(self) -> "RLRScheduler":
        """Frozen greedy policy: no exploration, no replay writes, no updates."""
        self.agent.training = False
        return self

    def observe(self, loss: float) -> torch.Tensor:
        """State (L_t, L_t - L_{t-1}) (loss_state); the difference is 0 on the first call."""
        return loss_state(loss, self.previous_loss, self.agent.dtype, self.schedule.features,
                          lr_position(self._last_lr[0], self.schedule))

    def step(self, loss: float) -> None:  # type: ignore[override]
        loss = float(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"RLRScheduler.step got a non-finite loss ({loss}); the model "
                                     "diverged. Nothing was stored; stop or restart the run.")
        state = self.observe(loss)
        if self.previous_state is not None and self.agent.training:
            reward = loss_reward(self.previous_loss, loss, self.schedule.features)
            self.agent.remember(self.previous_state, self.last_action, state, reward)
            self.agent.learn()
        acting_state = state.clone()
        if self.agent.config.variant == "as_coded":
            acting_state[1] = 0.0
        action = self.agent.act(acting_state)
        self.lr_index, lr = next_lr(self.lr_index, self._last_lr[0], action, self.schedule)
        self._set_lr(lr)
        self.previous_loss, self.previous_state, self.last_action = loss, acting_state, action
        self.last_epoch += 1

    def state_dict(self) -> dict:
        """A snapshot (deep copy) of everything step() depends on: the agent (policy and target nets,
        its optimiser, replay memory, epsilon step, RNG), lr index, previous loss/state/action, the grid.

        Plain tensors and primitives only, so torch.load(..., weights_only=True) reads it back.
        """
        schedule = asdict(self.schedule)
        del schedule["steps"]  # the run length is the training loop's business, not the scheduler's
        return copy.deepcopy({
            "agent": self.agent.state_dict(), "schedule": schedule, "lr_index": self.lr_index,
            "previous_loss": self.previous_loss, "previous_state": self.previous_state,
            "last_action": self.last_action, "last_epoch": self.last_epoch, "last_lr": list(self._last_lr)})

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(); the scheduler must have the same grid, start index and actions."""
        saved = state.get("schedule")  # absent from checkpoints written before the grid was saved
        if saved is not None:
            mine = {"lr_grid": list(self.schedule.lr_grid), "start_index": self.schedule.start_index,
                    "index_shifts": list(self.schedule.index_shifts), "features": self.schedule.features,
                    "lr_factors": list(self.schedule.lr_factors)}
            theirs = {"lr_grid": [float(v) for v in saved["lr_grid"]], "start_index": int(saved["start_index"]),
                      "index_shifts": [int(v) for v in saved["index_shifts"]],
                      "features": saved.get("features", "raw"),
                      "lr_factors": [float(v) for v in saved.get("lr_factors", ())]}
            if mine != theirs:
                raise ValueError(f"scheduler state was saved with schedule {theirs}, this scheduler has {mine}")
        lr_index = int(state["lr_index"])
        if not 0 <= lr_index < len(self.schedule.lr_grid):
            raise ValueError(f"scheduler state has lr_index {lr_index}, outside the grid of "
                             f"{len(self.schedule.lr_grid)} learning rates")
        self.agent.load_state_dict(state["agent"])
        self.lr_index = lr_index
        self.previous_loss = None if state["previous_loss"] is None else float(state["previous_loss"])
        previous_state = state["previous_state"]
        self.previous_state = None if previous_state is None else previous_state.clone()
        self.last_action = None if state["last_action"] is None else int(state["last_action"])
        self.last_epoch = int(state["last_epoch"])
        saved_lr = state.get("last_lr")  # with lr_factors the lr need not be a grid value
        self._set_lr(float(saved_lr[0]) if saved_lr else self.schedule.lr_grid[self.lr_index])


AGENT_FILE_FORMAT = "rlr_scheduler.dqn_agent"
AGENT_FILE_VERSION = 1


def save_agent(agent: DQNAgent, path: str | Path) -> Path:
    """Write a trained agent's policy to a small file, atomically, for load_agent.

    Holds the config (as a dict), state_dim, n_actions, steps_done (so epsilon continues where it was)
    and the policy and target weights: plain tensors and primitives, readable with
    torch.load(path, weights_only=True), no pickled code. Not the replay memory, the Q-network's
    optimiser or the RNG: to continue a run bit-identically, save RLRScheduler.state_dict() instead.
    """
    if not isinstance(agent, DQNAgent):
        raise TypeError(f"agent must be a DQNAgent, got {type(agent).__name__}")

    def weights(network: nn.Module) -> dict:
        return {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}

    content = {"format": AGENT_FILE_FORMAT, "format_version": AGENT_FILE_VERSION,
               "state_dim": agent.state_dim, "n_actions": agent.n_actions, "config": asdict(agent.config),
               "steps_done": agent.steps_done, "policy_net": weights(agent.policy_net),
               "target_net": weights(agent.target_net)}
    return atomic_write(path, lambda file: torch.save(content, file))


def load_agent(path: str | Path, seed: int = 0, device: str | torch.device = "cpu", *,
               state_dim: int | None = None, n_actions: int | None = None) -> DQNAgent:
    """Read a save_agent file into a new DQNAgent (training mode; call eval() on its scheduler to freeze it).

    seed seeds the new agent's RNG (exploration, replay sampling); its replay memory and optimiser
    start empty. state_dim / n_actions, when given, must match the file's. Anything that is not a
    save_agent file of the expected shape raises ValueError saying what is wrong; a missing file
    raises FileNotFoundError.
    """
    where = f"load_agent({str(path)!r})"
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # random bytes, JSON, a pickle with code in it...: not an agent file
        raise ValueError(f"{where}: not a file written by save_agent (torch.load failed: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(content, dict) or content.get("format") != AGENT_FILE_FORMAT:
        kind = f"a dict with keys {sorted(map(str, content))[:8]}" if isinstance(content, dict) \
            else f"a {type(content).__name__}"
        raise ValueError(f"{where}: not a file written by save_agent (it holds {kind}, "
                         f"without format={AGENT_FILE_FORMAT!r})")
    if content.get("format_version") != AGENT_FILE_VERSION:
        raise ValueError(f"{where}: agent file format_version {content.get('format_version')!r}, this code "
                         f"reads version {AGENT_FILE_VERSION}")
    missing = {"state_dim", "n_actions", "config", "steps_done", "policy_net", "target_net"} - set(content)
    if missing:
        raise ValueError(f"{where}: agent file lacks {sorted(missing)}")
    for name, expected in (("state_dim", state_dim), ("n_actions", n_actions)):
        value = content[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, the file has {value!r}")
        if expected is not None and value != expected:
            raise ValueError(f"{where}: the agent has {name}={value}, expected {name}={expected}")
    steps_done = content["steps_done"]
    if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
        raise ValueError(f"{where}: steps_done must be an int >= 0, the file has {steps_done!r}")
    try:
        config = DQNConfig(**content["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: the file's DQN config is invalid: {error}") from error
    first_weight = next(iter(content["policy_net"].values()), None) if isinstance(content["policy_net"], dict) \
        else None
    if not isinstance(first_weight, torch.Tensor) or first_weight.dtype not in DTYPES.values():
        raise ValueError(f"{where}: policy_net must hold float32 or float64 weight tensors")
    agent = DQNAgent(content["state_dim"], content["n_actions"], config, seed, first_weight.dtype, device)
    for name in ("policy_net", "target_net"):
        saved, expected = content[name], getattr(agent, name).state_dict()
        if not isinstance(saved, dict) or set(saved) != set(expected):
            raise ValueError(f"{where}: {name} holds tensors {sorted(saved) if isinstance(saved, dict) else saved!r}"
                             f", a Q-network needs {sorted(expected)}")
        for key, tensor in saved.items():
            if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{where}: {name}.{key} has shape {shape}, expected "
                                 f"{tuple(expected[key].shape)} for state_dim={agent.state_dim}, "
                                 f"n_actions={agent.n_actions}, hidden_size={config.hidden_size}")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{where}: {name}.{key} holds non-finite weights")
        getattr(agent, name).load_state_dict(saved)
    agent.steps_done = content["steps_done"]
    return agent


# ---------------------------------------------------------------------------------------------------
# Training loops. Each returns a RunResult: per-epoch or per-step series plus the config and timing.
# ---------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run: what was trained, with which config and seed, and what it logged."""

    method: str
    config: dict
    series: dict[str, np.ndarray]
    wall_seconds: float
    diverged_at: int | None = None
    """index of the step/epoch whose loss (or, for the agent, Q-values) was non-finite; series stop before it"""
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    """the trained network, for plots in the same session (not saved to JSON)"""
    policy_state: dict | None = field(default=None, repr=False, compare=False)
    """agent runs: the policy network's final state_dict (CPU tensors), e.g. to replay it frozen through
    train_rl_scheduled(initial_policy=...); not saved to JSON"""

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    def summary(self) -> dict:
        loss = self.series["loss"]
        return {"final_loss": float(loss[-1]) if len(loss) else None,
                "median_last_100": float(np.median(loss[-100:])) if len(loss) else None,
                "wall_seconds": self.wall_seconds, "diverged_at": self.diverged_at,
                "n_logged": int(len(loss))}


def prepare_run(config: Config) -> tuple[RunSeeds, torch.dtype, torch.device]:
    """Check every config field again (dataclasses can be changed after construction), apply the thread
    setting and resolve seeds, dtype and device for a run."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, got {type(config).__name__}")
    Config.from_dict(config.to_dict())  # re-runs every __post_init__ check; raises naming the field
    torch.set_num_threads(config.num_threads)
    return derive_seeds(config.seed), DTYPES[config.dtype], check_device(config.device)


def progress_bar(total: int, description: str, enabled: bool, initial: int = 0) -> tqdm:
    """The training loops' progress bar (here and in rlr_batched), on stderr, off unless enabled."""
    # A few updates per second at most: papermill can time out on floods of output messages.
    return tqdm(total=total, desc=description, disable=not enabled, mininterval=2.0, file=sys.stderr,
                initial=initial)




def _check_checkpointing(checkpoint_path: Any, checkpoint_every: Any, resume: Any) -> None:
    """Checked before any work: a typo here would otherwise surface only at the first save."""
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a str, a Path or None, got {type(checkpoint_path).__name__}")
    check_int("checkpoint_every", checkpoint_every, 0)
    if (checkpoint_path is None) != (checkpoint_every == 0):
        raise ValueError(f"checkpoint_every must be >= 1 (steps between saves) when checkpoint_path is given, "
                         f"and 0 without one; got {checkpoint_every} with checkpoint_path={checkpoint_path!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")


def _config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted names of the fields where two config dicts differ, except the run lengths (schedule.steps,
    baseline.epochs): a checkpoint of a shorter run may be continued to a longer one."""
    differences = []
    for key in sorted(saved.keys() | current.keys()):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [f"{key}.{name}" for name in sorted(old.keys() | new.keys())
                            if old.get(name) != new.get(name) and f"{key}.{name}" not in
                            ("schedule.steps", "baseline.epochs")]
        elif old != new:
            differences.append(key)
    return differences


def save_checkpoint(path: str | Path, config: Config, method: str, step: int, series: dict[str, np.ndarray],
                    wall_seconds: float, **parts: Any) -> Path:
    """torch.save, atomically, all a training loop needs to continue bit-identically after `step` steps.

    parts are the loop's stateful objects (model, optimiser, RLRScheduler with its agent, torch.Generator);
    series[name][:step] are the values logged so far.
    """
    checkpoint = {"method": method, "config": config.to_dict(), "step": step, "wall_seconds": wall_seconds,
                  "series": {name: torch.from_numpy(values[:step].copy()) for name, values in series.items()},
                  "parts": {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
                            for name, part in parts.items()}}
    return atomic_write(path, lambda file: torch.save(checkpoint, file))


def load_checkpoint(path: str | Path, config: Config, method: str, series: dict[str, np.ndarray],
                    **parts: Any) -> tuple[int, float]:
    """Restore parts and series[name][:step] from a save_checkpoint file; return (step, wall_seconds so far)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    step = int(checkpoint["step"])
    differences = _config_differences(checkpoint["config"], config.to_dict())
    if checkpoint["method"] != method or differences or set(checkpoint["series"]) != set(series):
        raise ValueError(f"checkpoint_path {str(path)!r} holds another run (method {checkpoint['method']!r}, "
                         f"config differs in {differences}, series {sorted(checkpoint['series'])}): delete it "
                         "or pass resume=False")
    if step > len(series["loss"]):
        raise ValueError(f"checkpoint_path {str(path)!r} is at step {step}, past this run's {len(series['loss'])}")
    for name, values in checkpoint["series"].items():
        series[name][:step] = values.numpy()
    for name, part in parts.items():
        state = checkpoint["parts"][name]
        part.set_state(state) if isinstance(part, torch.Generator) else part.load_state_dict(state)
    return step, float(checkpoint["wall_seconds"])


def train_baseline(config: Config, progress: bool = False, checkpoint_path: str | Path | None = None,
                   checkpoint_every: int = 0, resume: bool = True) -> RunResult:
    """The original baseline: Adam(lr) on mini-batches of a fresh permutation each epoch.

    Logs the full-data MSE after every epoch. Stops at the first non-finite loss (diverged_at).
    With checkpoint_path, saves every checkpoint_every epochs and at the end; with resume, a call that
    finds a checkpoint there continues from it, bit-identical to a run that was never interrupted.
    """
    _check_checkpointing(checkpoint_path, checkpoint_every, resume)
    seeds, dtype, device = prepare_run(config)
    data = make_polynomial_dataset(config.task, seeds.data, dtype=dtype, device=device)
    model = make_model(config.task, seeds.init, dtype, device)
    optimizer = make_adam(model.parameters(), config.baseline.lr)
    shuffle = torch.Generator().manual_seed(seeds.shuffle)
    n, batch_size, epochs = len(data.targets), config.baseline.batch_size, config.baseline.epochs
    method, losses = "baseline_minibatch", np.empty(epochs)
    parts = {"model": model, "optimizer": optimizer, "shuffle": shuffle}
    first_epoch, earlier_seconds = 0, 0.0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        first_epoch, earlier_seconds = load_checkpoint(checkpoint_path, config, method, {"loss": losses}, **parts)
    diverged_at = None
    started = time.perf_counter()
    with progress_bar(epochs, "baseline epochs", progress, initial=first_epoch) as bar:
        for epoch in range(first_epoch, epochs):
            permutation = torch.randperm(n, generator=shuffle).to(device)
            for start in range(0, n, batch_size):
                batch = permutation[start:start + batch_size]
                loss = F.mse_loss(model(data.inputs[batch]), data.targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                epoch_loss = full_batch_loss(model, data).item()
            if not math.isfinite(epoch_loss):
                diverged_at = epoch
                break
            losses[epoch] = epoch_loss
            bar.update()
            if checkpoint_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                save_checkpoint(checkpoint_path, config, method, epoch + 1, {"loss": losses},
                                earlier_seconds + time.perf_counter() - started, **parts)
    count = diverged_at if diverged_at is not None else epochs
    return RunResult(method, config.to_dict(), {"loss": losses[:count]},
                     earlier_seconds + time.perf_counter() - started, diverged_at, model)


def train_full_batch(config: Config, lr: float, steps: int, method: str = "constant_full_batch",
                     make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                     progress: bool = False,
                     make_optimizer: Callable[[Any, float], torch.optim.Optimizer] = make_adam) -> RunResult:
    """Full-batch Adam for `steps` steps from lr, optionally driven by a torch.optim.lr_scheduler.

    make_scheduler(optimizer) builds the schedule; ReduceLROnPlateau gets step(loss), the rest step().
    make_optimizer(params, lr) swaps the optimiser (e.g. AdamHD). Logs the full-data loss after every
    step and the lr each step used.
    """
    check_float("lr", lr, 0.0, math.inf, high_open=True)
    check_int("steps", steps, 1)
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string (the result's name), got {method!r}")
    if make_scheduler is not None and not callable(make_scheduler):
        raise TypeError(f"make_scheduler must be callable(optimizer) or None, got {type(make_scheduler).__name__}")
    seeds, dtype, device = prepare_run(config)
    data = make_polynomial_dataset(config.task, seeds.data, dtype=dtype, device=device)
    model = make_model(config.task, seeds.init, dtype, device)
    optimizer = make_optimizer(model.parameters(), lr)
    scheduler = make_scheduler(optimizer) if make_scheduler is not None else None
    wants_loss = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    losses, lrs = np.empty(steps), np.empty(steps)
    diverged_at = None
    started = time.perf_counter()
    loss = full_batch_loss(model, data)
    with progress_bar(steps, method, progress) as bar:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lrs[step] = optimizer.param_groups[0]["lr"]  # the lr this step used (AdamHD sets it in step)
            loss = full_batch_loss(model, data)  # L_{t+1}: logged now, differentiated next step
            value = loss.item()
            if not math.isfinite(value):
                diverged_at = step
                break
            losses[step] = value
            if scheduler is not None:
                scheduler.step(value) if wants_loss else scheduler.step()
            bar.update()
    count = step if diverged_at is not None else steps
    return RunResult(method, config.to_dict(), {"loss": losses[:count], "lr": lrs[:count]},
                     time.perf_counter() - started, diverged_at, model)


def train_rl_scheduled(config: Config, progress: bool = False, checkpoint_path: str | Path | None = None,
                       checkpoint_every: int = 0, resume: bool = True, *, initial_policy: dict | None = None,
                       frozen: bool = False) -> RunResult:
    """The original agent run: one continuous run of schedule.steps full-batch Adam steps.

    Per step (SPEC.md): L_t and s_t; epsilon-greedy action -> lr; Adam step on L_t; L_{t+1}, r_t,
    s_{t+1}; store and one DQN update. One forward and one backward per step: the post-step loss of
    step t is the pre-step loss of step t+1. The order lives in RLRScheduler.step.
    Stops at the first non-finite model loss or Q-value (diverged_at), before it reaches the replay
    memory or the series. Checkpointing (checkpoint_path, checkpoint_every, resume): as train_baseline.
    initial_policy: a policy_net state_dict (e.g. another run's RunResult.policy_state) loaded into the
    policy and target networks before the run. frozen: the scheduler runs in eval() (greedy, no replay
    writes, no updates), method f"rl_{variant}_frozen"; the agent still draws its 2 uniforms per act.
    """
    _check_checkpointing(checkpoint_path, checkpoint_every, resume)
    if initial_policy is not None and not isinstance(initial_policy, dict):
        raise TypeError(f"initial_policy must be a policy_net state_dict (dict) or None, "
                        f"got {type(initial_policy).__name__}")
    if not isinstance(frozen, bool):
        raise TypeError(f"frozen must be a bool, got {type(frozen).__name__}")
    seeds, dtype, device = prepare_run(config)
    data = make_polynomial_dataset(config.task, seeds.data, dtype=dtype, device=device)
    model = make_model(config.task, seeds.init, dtype, device)
    optimizer = make_adam(model.parameters(), config.schedule.lr_grid[config.schedule.start_index])
    agent = DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, seeds.agent, dtype, device)
    if initial_policy is not None:
        agent.policy_net.load_state_dict(initial_policy)
        agent.target_net.load_state_dict(initial_policy)
    scheduler = RLRScheduler(optimizer, agent, config.schedule)
    if frozen:
        scheduler.eval()
    method = f"rl_{config.dqn.variant}" + ("_frozen" if frozen else "")
    steps = config.schedule.steps
    series = {name: np.empty(steps) for name in ("loss", "lr", "reward", "epsilon")}
    series["action"] = np.empty(steps, dtype=np.int64)
    series["lr_index"] = np.empty(steps, dtype=np.int64)
    series["q_values"] = np.empty((steps, agent.n_actions))
    series["explored"] = np.empty(steps, dtype=bool)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}  # the scheduler holds the agent
    first_step, earlier_seconds = 0, 0.0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        first_step, earlier_seconds = load_checkpoint(checkpoint_path, config, method, series, **parts)
    diverged_at = None
    started = time.perf_counter()
    loss = full_batch_loss(model, data)  # L_t of the first step to run
    if first_step == 0:
        if not math.isfinite(loss.item()):  # out of float range before any step (data or initial weights)
            return RunResult(method, config.to_dict(), {name: values[:0] for name, values in series.items()},
                             time.perf_counter() - started, 0, model, _policy_state(agent))
        scheduler.step(loss.item())  # L_0: chooses the first action and lr
    with progress_bar(steps, f"agent ({config.dqn.variant})", progress, initial=first_step) as bar:
        for step in range(first_step, steps):
            series["lr"][step] = scheduler.get_last_lr()[0]
            series["lr_index"][step] = scheduler.lr_index
            series["action"][step] = scheduler.last_action
            series["epsilon"][step] = agent.last_epsilon
            series["q_values"][step] = agent.last_q_values.numpy()
            series["explored"][step] = agent.last_explored
            previous_value = scheduler.previous_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss = full_batch_loss(model, data)
            value = loss.item()
            if not (math.isfinite(value) and np.isfinite(series["q_values"][step]).all()):
                diverged_at = step  # the model's loss or the agent's Q-values left the float range
                break
            series["loss"][step] = value
            series["reward"][step] = loss_reward(previous_value, value, config.schedule.features)
            scheduler.step(value)
            bar.update()
            if checkpoint_path is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save_checkpoint(checkpoint_path, config, method, step + 1, series,
                                earlier_seconds + time.perf_counter() - started, **parts)
    count = diverged_at if diverged_at is not None else steps
    return RunResult(method, config.to_dict(), {name: values[:count] for name, values in series.items()},
                     earlier_seconds + time.perf_counter() - started, diverged_at, model, _policy_state(agent))


def _policy_state(agent: DQNAgent) -> dict:
    """A copy of the agent's policy_net weights on the CPU (RunResult.policy_state)."""
    return {name: tensor.detach().cpu().clone() for name, tensor in agent.policy_net.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# Results on disk: one JSON per run, written atomically, with config, seed and package versions.
# ---------------------------------------------------------------------------------------------------


def package_versions() -> dict:
    """Versions of what produced a result, and the git commit when the code is in a checkout."""
    import matplotlib
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "matplotlib": matplotlib.__version__,
                "platform": platform.platform()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10)
        if commit.returncode == 0:
            versions["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> Path:
    """write(binary_file) into a temp file in the same folder, fsync, then rename over path.

    Readers see the old file or the new one, never half of one. On an error the temp file is removed;
    only a hard kill (SIGKILL, power loss) can leave a hidden '.<name>.*.tmp' beside the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically: readers never see half a file."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def save_table_csv(table: Any, path: str | Path, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV, atomically: the one way notebooks write tables."""
    return atomic_write_text(path, table.to_csv(index=index))


def save_arrays_npz(path: str | Path, **arrays: Any) -> Path:
    """np.savez(path, **arrays), atomically: the one way notebooks write large arrays beside a JSON."""
    return atomic_write(path, lambda file: np.savez(file, **arrays))


def result_to_dict(result: RunResult) -> dict:
    """The shared results schema (DESIGN.md): config, seed, method, series, summary, versions."""
    series = {}
    for name, values in result.series.items():
        values = np.asarray(values)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"series {name!r} of {result.method} holds non-finite values")
        series[name] = values.tolist()
    return {"method": result.method, "seed": result.seed, "config": result.config, "series": series,
            "summary": result.summary(), "versions": package_versions()}


def save_result(result: RunResult, path: str | Path) -> Path:
    """Save one run as JSON, atomically. NaN/inf are refused (allow_nan=False), never written."""
    return atomic_write_text(path, json.dumps(result_to_dict(result), allow_nan=False))


def load_result(path: str | Path) -> RunResult:
    """Read a result written by save_result back into a RunResult (series as numpy arrays)."""
    data = json.loads(Path(path).read_text())
    return RunResult(data["method"], data["config"],
                     {name: np.asarray(values) for name, values in data["series"].items()},
                     data["summary"]["wall_seconds"], data["summary"]["diverged_at"])


def json_ready(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with numpy scalars as Python numbers and NaN/inf as None,
    so that json.dumps(..., allow_nan=False) writes valid JSON (no NaN tokens) for summaries."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def save_results(results: Sequence[RunResult], path: str | Path) -> Path:
    """Save several runs (e.g. one per seed): a readable JSON index (method, seed, config, summary,
    versions per run) and their series in a sibling .npz (keys 'run<i>/<series>'), both atomic.

    The arrays are written first, so a JSON on disk always has its arrays beside it.
    """
    if len(results) == 0:
        raise ValueError("results must hold at least one RunResult")
    path = Path(path)
    arrays, runs = {}, []
    for i, result in enumerate(results):
        entry = result_to_dict(result)  # checks that every series is finite
        del entry["series"], entry["versions"]
        runs.append(entry)
        arrays.update({f"run{i}/{name}": np.asarray(values) for name, values in result.series.items()})
    save_arrays_npz(path.with_suffix(".npz"), **arrays)
    return atomic_write_text(path, json.dumps({"runs": runs, "versions": package_versions(),
                                               "arrays": path.with_suffix(".npz").name},
                                              indent=1, allow_nan=False))


def load_results(path: str | Path) -> list[RunResult]:
    """Read runs written by save_results (series back from the sibling .npz)."""
    path = Path(path)
    index = json.loads(path.read_text())
    with np.load(path.with_name(index["arrays"])) as arrays:
        results = []
        for i, run in enumerate(index["runs"]):
            prefix = f"run{i}/"
            series = {key[len(prefix):]: arrays[key] for key in arrays.files if key.startswith(prefix)}
            results.append(RunResult(run["method"], run["config"], series, run["summary"]["wall_seconds"],
                                     run["summary"]["diverged_at"]))
    return results


def divergence_report(results: Iterable[RunResult]) -> Any:
    """A pandas DataFrame, one row per run: method, seed, diverged_at (<NA> if it finished), n_logged.

    Diverged runs stop early, so a table of final losses alone would hide them; print this beside it.
    """
    import pandas as pd  # only the notebooks' tables need pandas, not the training code
    rows = [(result.method, result.seed, result.diverged_at, len(result.series["loss"])) for result in results]
    table = pd.DataFrame(rows, columns=["method", "seed", "diverged_at", "n_logged"])
    table["diverged_at"] = table["diverged_at"].astype("Int64")
    return table
