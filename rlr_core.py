"""RLR Scheduler core: the polynomial task, MaclaurinNet, a small DQN agent and the learning-rate scheduler.

A DQN agent picks Adam's learning rate, step by step, while Adam trains MaclaurinNet. This module is the
bottom layer: the task and agent configs, the data, the networks, the replay memory, the agent, the
rules that turn losses into states and rewards and actions into learning rates, and RLRScheduler. The
rules take tensors with optional leading run axes, so the reference loop (rlr_engine) and the batched
engine (rlr_batched) call the same functions. Defaults reproduce the original experiment
(docs/original.md); every deliberate departure is a named option.

Read top to bottom: configs -> task and models -> replay and DQN agent -> rules -> scheduler.
Nothing here touches global state: random draws come from explicit seeds and generators.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict
from typing import Any, Iterable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlr_config import (DQN_VARIANTS, DTYPES, LOG_FEATURES, REWARDS, SEES_BUDGET, STATE_FEATURES, DQNConfig, ScheduleConfig, TaskConfig,  # noqa: F401
                        check_discount, check_float, check_int, check_int_array, check_lr_range, check_seed, check_seeds,
                        check_sequence, global_rng_preserved, original_lr_grid)

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
    validation: int
    """held-out validation polynomials (for tuning), same distribution, independent of the test set"""
    monitor: int
    """held-out polynomials a controller watches during its run (the validation loss V in its state or reward),
    independent of the validation set tuning scores it by and of the test set"""


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
    """w = randn(n, d) * coeff_scale; y = w @ X with X[j, i] = x_i ** j, plus task.input_noise * randn(n, points)
    when the task is noisy (drawn after w from the same generator, so a noise-free task's data are the
    original's bit for bit). Seeded by its own generator."""
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
    if task.input_noise > 0:
        inputs = inputs + task.input_noise * torch.randn(inputs.shape, generator=generator, dtype=torch.float64)
    return PolynomialData(inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype))


def bayes_floor(task: TaskConfig) -> float:
    """The lowest MSE (mean over the coefficients) any predictor of w from the noisy samples y can reach on
    the task's distribution: w ~ N(0, diag(coeff_scale^2)) and y = X^T w + N(0, input_noise^2 I) are jointly
    Gaussian, so the best predictor is the posterior mean and its MSE is trace(posterior covariance) / d,
    with posterior covariance (diag(1 / coeff_scale^2) + X X^T / input_noise^2)^-1. 0 for a noise-free task
    whose design has full rank (the map is then exactly linear and invertible). Hand-written: a closed
    form no library states for this task; tests/test_core.py checks it against the posterior mean's MSE
    on sampled data."""
    if not isinstance(task, TaskConfig):
        raise TypeError(f"task must be a TaskConfig, got {type(task).__name__}")
    scale = torch.tensor(task.coeff_scale, dtype=torch.float64)
    powers = sample_points(task)[None, :] ** torch.arange(task.n_coefficients, dtype=torch.float64)[:, None]
    if task.input_noise == 0:
        return 0.0 if torch.linalg.matrix_rank(powers) == task.n_coefficients else math.nan
    precision = torch.diag(1.0 / scale ** 2) + powers @ powers.T / task.input_noise ** 2
    return float(torch.linalg.inv(precision).trace() / task.n_coefficients)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear - ReLU - ... - Linear with PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MaclaurinNet(nn.Sequential):
    """Polynomial values at n_points in, coefficients out: Linear(20,32)-ReLU-Linear(32,16)-ReLU-Linear(16,5).

    With seed, its initial weights come from a generator seeded with it and torch's global RNG is left as
    it was (what make_model does); without, it draws them from the global RNG, as every nn.Module does."""

    def __init__(self, task: TaskConfig = TaskConfig(), seed: int | None = None) -> None:
        sizes = [task.n_points, *task.hidden_sizes, task.n_coefficients]
        super().__init__(*(mlp(sizes) if seed is None else seeded_init(seed, lambda: mlp(sizes))))


class QNetwork(nn.Sequential):
    """State in, one Q-value per action out: Linear(d,64)-ReLU-Linear(64,64)-ReLU-Linear(64,n_actions).

    seed as MaclaurinNet's: seeded and free of global side effects when given, torch's global RNG when not."""

    def __init__(self, state_dim: int, n_actions: int, hidden_size: int = 64, seed: int | None = None) -> None:
        sizes = [state_dim, hidden_size, hidden_size, n_actions]
        super().__init__(*(mlp(sizes) if seed is None else seeded_init(seed, lambda: mlp(sizes))))


def seeded_init(seed: int, build: Any) -> Any:
    """build() with PyTorch's default initialisation drawn from a CPU generator seeded with `seed`.

    nn.Linear draws its initial weights from torch's global RNG; fork_rng restores that RNG afterwards,
    so building a model never changes the caller's random stream (the weights are those that
    torch.manual_seed(seed) followed by build() would give).
    """
    seed = check_seed("seed", seed)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return build()


def make_model(task: TaskConfig, seed: int, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> MaclaurinNet:
    """MaclaurinNet with PyTorch's default init, seeded with `seed` (no global side effect)."""
    return MaclaurinNet(task, seed).to(device=device, dtype=dtype)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel: 1.5-2x faster per step than the default for these tiny models."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def full_batch_loss(model: nn.Module, data: PolynomialData) -> torch.Tensor:
    """MSE between true and predicted coefficients over every example (mean over n x d entries)."""
    return F.mse_loss(model(data.inputs), data.targets)


# ---------------------------------------------------------------------------------------------------
# Replay memory and the DQN agent. The agent knows nothing about learning rates: states, actions, rewards.
# ---------------------------------------------------------------------------------------------------


class Transition(NamedTuple):
    """One transition, or a batch of them stacked along the first axis (field order as the original)."""

    state: torch.Tensor
    action: torch.Tensor
    next_state: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor | None = None
    """1 where the episode ended in a terminal state (no bootstrapping from next_state); None: never"""


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
        self.terminated = torch.zeros(capacity, dtype=dtype, device=device)
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, state: torch.Tensor, action: int, next_state: torch.Tensor, reward: float,
             terminated: bool = False) -> None:
        """Store one transition, overwriting the oldest once full. Non-finite values are refused."""
        if not (torch.isfinite(state).all() and torch.isfinite(next_state).all() and math.isfinite(reward)):
            raise ValueError("replay memory refuses a transition with a non-finite state or reward")
        self.states[self.position] = state
        self.actions[self.position] = action
        self.next_states[self.position] = next_state
        self.rewards[self.position] = reward
        self.terminated[self.position] = float(terminated)
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
                          self.rewards[indices], self.terminated[indices])

    def state_dict(self) -> dict:
        return {"states": self.states.clone(), "actions": self.actions.clone(),
                "next_states": self.next_states.clone(), "rewards": self.rewards.clone(),
                "terminated": self.terminated.clone(), "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["states"].shape != self.states.shape:
            raise ValueError(f"replay memory shape {tuple(state['states'].shape)} does not match "
                             f"{tuple(self.states.shape)}")
        for name in ("states", "actions", "next_states", "rewards"):
            getattr(self, name).copy_(state[name])
        self.terminated.copy_(state.get("terminated", torch.zeros_like(self.terminated)))  # older states: none
        self.position, self.size = int(state["position"]), int(state["size"])


def epsilon_at(step: int, config: DQNConfig) -> float:
    """eps(t) = end + (start - end) * exp(-t / decay): 0.9 at t=0, 0.36 at t=5000, 0.165 at t=9999."""
    return config.epsilon_end + (config.epsilon_start - config.epsilon_end) * math.exp(-step / config.epsilon_decay)


@torch.no_grad()
def soft_update(target: nn.Module, policy: nn.Module, tau: float) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta_policy (tau = 1 copies)."""
    for target_param, policy_param in zip(target.parameters(), policy.parameters()):
        target_param.lerp_(policy_param, tau)


def td_targets(rewards: torch.Tensor, next_q_values: torch.Tensor, gamma: float,
               terminated: torch.Tensor | None = None, next_actions: torch.Tensor | None = None) -> torch.Tensor:
    """DQN's regression targets r + gamma (1 - terminated) Q_target(s', a') (next_q_values [..., n_actions]).

    a' is the greedy action of the target network (DQN), or next_actions when given (Double DQN: the
    policy network's greedy action, evaluated by the target network). Terminal transitions are not
    bootstrapped; truncated ones are (Gymnasium's semantics). terminated None: no terminal states.
    """
    if next_actions is None:
        next_value = next_q_values.amax(dim=-1)
    else:
        next_value = next_q_values.gather(-1, next_actions.unsqueeze(-1)).squeeze(-1)
    if terminated is not None:
        next_value = next_value * (1.0 - terminated)
    return rewards + gamma * next_value


def as_coded_rows(batch: Transition, n_actions: int) -> Transition:
    """The 4 non-zero rows of the batch the original's update actually trained on (docs/original.md).

    The original looped `for i, b in enumerate(batch)` over the 4 stacked fields (S, A, S2, R) as if
    they were transitions: row i takes, from field i, sample 0 as the state, int(sample 1) as the
    action, sample 2 as the next state and sample 3 as the reward; a scalar field is repeated to fill a
    state (`s.repeat(state_dim)[:state_dim]`). The rest of its 64-row batch stayed zero.
    batch: sampled transitions with optional leading run axes ([..., n >= 4, state_dim] states).
    Returns the 4 rows ([..., 4, state_dim] states, [..., 4] actions and rewards).
    """
    state_dim, dtype = batch.state.shape[-1], batch.state.dtype

    def as_states(values: torch.Tensor) -> torch.Tensor:  # [..., n] or [..., n, d] -> [..., 4, d]
        values = values[..., :4] if values.dim() < batch.state.dim() else values[..., :4, :]
        values = values.to(dtype)
        return values if values.dim() == batch.state.dim() else values.unsqueeze(-1).expand(*values.shape, state_dim)

    fields = torch.stack([as_states(values) for values in batch[:4]], dim=-3)  # [..., field, sample, d]
    # int() truncates toward zero. The original would crash on an index outside [0, n_actions); that
    # needs a loss >= n_actions or a reward <= -1, which this task never produces: clip.
    actions = fields[..., 1, 0].trunc().nan_to_num(0.0).clamp(0, n_actions - 1).long()
    return Transition(fields[..., 0, :], actions, fields[..., 2, :], fields[..., 3, 0])


def assemble_as_coded_batch(batch: Transition, n_actions: int) -> Transition:
    """The whole batch the original trained on: as_coded_rows, then zero rows up to the batch size."""
    rows = as_coded_rows(batch, n_actions)
    padding = batch.state.shape[0] - 4
    return Transition(*(F.pad(values, (0, 0, 0, padding) if values.dim() == 2 else (0, padding))
                        for values in rows[:4]))  # the original's batch had no terminal flags


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
        self.policy_net, self.target_net = seeded_init(seed, lambda: (
            QNetwork(state_dim, n_actions, config.hidden_size), QNetwork(state_dim, n_actions, config.hidden_size)))
        self.policy_net.to(device=device, dtype=dtype)
        self.target_net.to(device=device, dtype=dtype)
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

    def remember(self, state: torch.Tensor, action: int, next_state: torch.Tensor, reward: float,
                 terminated: bool = False) -> None:
        """Store a transition; terminated: the episode ended in a terminal state (Gymnasium's terminated,
        not truncated), so learn() will not bootstrap from next_state."""
        self.replay.push(torch.as_tensor(state), action, torch.as_tensor(next_state), reward, terminated)

    def learn(self) -> float | None:
        """One DQN update (Huber loss on r + gamma max Q_target(s')), then the soft update. None if too early."""
        config = self.config
        if len(self.replay) < config.learning_starts:
            return None
        batch = self.replay.sample(config.batch_size, self.generator)
        if config.variant == "as_coded":
            batch = assemble_as_coded_batch(batch, self.n_actions)
        q_taken = self.policy_net(batch.state).gather(1, batch.action[:, None]).squeeze(1)
        with torch.no_grad():
            next_actions = self.policy_net(batch.next_state).argmax(dim=1) if config.double_dqn else None
            target = td_targets(batch.reward, self.target_net(batch.next_state), config.gamma, batch.terminated,
                                next_actions)
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

    def policy_weights(self) -> dict:
        """A CPU copy of the policy network's weights (to save, or to start other agents from)."""
        return network_weights(self.policy_net)


def network_weights(network: nn.Module) -> dict:
    """A CPU copy of a network's state_dict: plain tensors, detached from the network."""
    return {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# The rules: loss -> state, loss change -> reward, action -> learning rate. Each takes Python numbers
# or tensors with optional leading run axes; the reference loop and the batched engine both call them.
# ---------------------------------------------------------------------------------------------------


def as_float64(value: float | torch.Tensor) -> torch.Tensor:
    """A float64 tensor of a number or a tensor (losses are compared and differenced in float64)."""
    return torch.as_tensor(value).double() if isinstance(value, torch.Tensor) else torch.tensor(float(value),
                                                                                              dtype=torch.float64)


def safe_log(loss: float | torch.Tensor) -> torch.Tensor:
    """log of a loss (float64), floored at 1e-30 so that an exact zero gives a large finite value, not -inf."""
    return as_float64(loss).clamp_min(1e-30).log()


def loss_state(loss: float | torch.Tensor, previous_loss: float | torch.Tensor | None,
               lr_position: float | torch.Tensor = 0.0, features: str = "raw",
               dtype: torch.dtype = torch.float32, budget_left: float | torch.Tensor | None = None,
               validation: float | torch.Tensor | None = None,
               previous_validation: float | torch.Tensor | None = None) -> torch.Tensor:
    """The agent's state s_t = (L_t, L_t - L_{t-1}), raw; the difference is 0 when there is no L_{t-1}
    (L_{t-1}: the loss at the previous decision).

    With features='log': (log L_t, log L_t - log L_{t-1}, lr_position), scale-free; with 'control' also
    budget_left, the fraction of the run's optimiser steps still to come (budget_fraction_left), so that
    the policy can see the end; with 'validation' also log V_t and log V_t - log V_{t-1} (validation, the
    loss on the task's validation split; previous_validation at the previous decision, none at the first).
    Computed in float64, then cast to dtype. Losses [...] give states [..., state_dim].
    """
    loss = as_float64(loss)
    if features == "raw":
        difference = torch.zeros_like(loss) if previous_loss is None else loss - as_float64(previous_loss)
        return torch.stack([loss, difference], dim=-1).to(dtype)
    log_loss = safe_log(loss)
    log_difference = torch.zeros_like(loss) if previous_loss is None else log_loss - safe_log(previous_loss)
    columns = [log_loss, log_difference, as_float64(lr_position).expand_as(loss)]
    if features in SEES_BUDGET:
        if budget_left is None:
            raise ValueError(f"features={features!r} needs budget_left (budget_fraction_left)")
        columns.append(as_float64(budget_left).expand_as(loss))
    if features == "validation":
        if validation is None:
            raise ValueError("features='validation' needs validation (the loss on the validation split)")
        log_validation = safe_log(validation).expand_as(loss)
        columns += [log_validation, torch.zeros_like(loss) if previous_validation is None
                    else log_validation - safe_log(previous_validation)]
    return torch.stack(columns, dim=-1).to(dtype)


def budget_fraction_left(steps_taken: int | torch.Tensor, schedule: ScheduleConfig) -> torch.Tensor:
    """The fraction of the run's schedule.steps optimiser steps still to come, in [0, 1] (float64)."""
    return (1.0 - as_float64(steps_taken) / schedule.steps).clamp(0.0, 1.0)


def is_decision_step(steps_taken: int, schedule: ScheduleConfig) -> bool:
    """Whether the agent decides after steps_taken optimiser steps: every schedule.decision_interval steps,
    from the first loss L_0 on (with interval 1, the original, at every step)."""
    return steps_taken % schedule.decision_interval == 0


def acting_state(state: torch.Tensor, variant: str) -> torch.Tensor:
    """The state the policy acts on: s_t, or for the 'as_coded' variant s_t with its difference zeroed
    (the original computed L_{t-1} from the current parameters, docs/original.md)."""
    if variant == "described":
        return state
    state = state.clone()
    state[..., 1] = 0.0
    return state


def loss_reward(previous_loss: float | torch.Tensor, loss: float | torch.Tensor,
                features: str = "raw") -> torch.Tensor:
    """The agent's reward r_t = L_t - L_{t+1} (raw), or log L_t - log L_{t+1} with features 'log' and
    'control' (float64); over a decision interval, L_t and L_{t+1} are the losses at two decisions, so an
    episode's rewards sum (telescope) to L_0 - L_T or log L_0 - log L_T."""
    if features in LOG_FEATURES:
        return safe_log(previous_loss) - safe_log(loss)
    return as_float64(previous_loss) - as_float64(loss)


def decision_reward(previous_loss: float | torch.Tensor, loss: float | torch.Tensor, schedule: ScheduleConfig,
                    previous_validation: float | torch.Tensor | None = None,
                    validation: float | torch.Tensor | None = None) -> torch.Tensor:
    """The reward of one decision under schedule.reward: 'training', loss_reward of the training losses;
    'validation', log V_t - log V_{t+1} of the validation losses at the two decisions (telescoping to
    log V_0 - log V_T). The one rule both environments use."""
    if schedule.reward == "validation":
        if previous_validation is None or validation is None:
            raise ValueError("schedule.reward='validation' needs the validation losses at both decisions")
        return safe_log(previous_validation) - safe_log(validation)
    return loss_reward(previous_loss, loss, schedule.features)


def lr_position(lr: float | torch.Tensor, schedule: ScheduleConfig) -> torch.Tensor:
    """Where lr sits between the grid's ends on a log scale: 0 at the lowest, 1 at the highest (float64)."""
    low, high = math.log(schedule.lr_grid[0]), math.log(schedule.lr_grid[-1])
    lr = as_float64(lr)
    return torch.zeros_like(lr) if high == low else (lr.log() - low) / (high - low)


@functools.lru_cache(maxsize=64)
def action_tables(lr_grid: tuple[float, ...], index_shifts: tuple[int, ...], lr_factors: tuple[float, ...],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid (float64), its logs and the move of each action (an index shift or an lr factor), as
    tensors made once per schedule and device."""
    grid = torch.tensor(lr_grid, dtype=torch.float64, device=device)
    moves = (torch.tensor(lr_factors, dtype=torch.float64, device=device) if lr_factors
             else torch.tensor(index_shifts, device=device))
    return grid, grid.log(), moves


def next_lr(lr_index: int | torch.Tensor, lr: float | torch.Tensor, action: int | torch.Tensor,
            schedule: ScheduleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The (grid index, lr) an action leads to: the index moved by index_shifts[action] and clipped to
    the grid (original), or with schedule.lr_factors the lr multiplied by lr_factors[action], clipped to
    the grid's range, and the nearest grid index (for logs). Tensors of runs give tensors of runs."""
    action = torch.as_tensor(action)
    grid, log_grid, moves = action_tables(schedule.lr_grid, schedule.index_shifts, schedule.lr_factors,
                                          action.device)
    if not schedule.lr_factors:
        index = (torch.as_tensor(lr_index, device=action.device) + moves[action]).clamp(0, len(grid) - 1)
        return index, grid[index]
    lr = (as_float64(lr).to(action.device) * moves[action]).clamp(grid[0], grid[-1])
    return (log_grid - lr.log().unsqueeze(-1)).abs().argmin(dim=-1), lr


# ---------------------------------------------------------------------------------------------------
# The learning-rate scheduler: an optimiser + an agent, advanced by step(loss) like ReduceLROnPlateau.
# ---------------------------------------------------------------------------------------------------


class RLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Reinforcement-learning learning-rate scheduler, used like ReduceLROnPlateau.

        loss = compute_loss(); scheduler.step(loss.item())   # once with L_0: picks the first lr
        for t in range(steps):
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            loss = compute_loss(); scheduler.step(loss.item())

    step(L_{t+1}) finishes transition t (reward L_t - L_{t+1}, next state), stores it, runs one DQN
    update (train mode), then chooses the next action and writes the new lr into the param groups (each
    at its ratio to the first): exactly the original's order of operations. State s_t = (L_t, L_t - L_{t-1}); with the agent's
    variant 'as_coded' the state acted on is (L_t, 0), as in the original's code (docs/original.md).

    The grid: pass schedule=ScheduleConfig(...), or for short lr_grid=[...] (and optionally
    start_index, default len(lr_grid) // 2 as the original's 12 // 2), which builds the ScheduleConfig
    (where the grid is validated). Without an agent, a fresh DQNAgent seeded with `seed` (default 0)
    learns online; or pass a trained one (load_agent) and call eval() to use its policy frozen.
    Like torch's schedulers it sets `initial_lr` in the param groups and keeps base_lrs, last_epoch
    (the number of step() calls) and get_last_lr(). The agent controls the first param group's lr; every
    other group keeps the ratio of its lr to the first group's at construction (as LambdaLR scales each
    group's base lr), so a head at 10x the body's lr stays at 10x.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, agent: DQNAgent | None = None,
                 schedule: ScheduleConfig | None = None, seed: int | None = None, *,
                 lr_grid: Iterable[float] | None = None, start_index: int | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if agent is not None and seed is not None:
            raise ValueError("pass either agent= (which has its own random stream) or seed=, not both")
        schedule = schedule_from(schedule, lr_grid, start_index)
        self.optimizer = optimizer
        self.schedule = schedule
        self.agent = agent if agent is not None else DQNAgent(schedule.state_dim, schedule.n_actions,
                                                              seed=0 if seed is None else seed)
        if not isinstance(self.agent, DQNAgent):
            raise TypeError(f"agent must be a DQNAgent or None, got {type(self.agent).__name__}")
        if self.agent.n_actions != schedule.n_actions:
            raise ValueError(f"agent has {self.agent.n_actions} actions but the schedule has "
                             f"{schedule.n_actions} (index_shifts, or lr_factors when given)")
        if self.agent.state_dim != schedule.state_dim:
            raise ValueError(f"agent.state_dim must be {schedule.state_dim} for schedule.features="
                             f"{schedule.features!r}, got {self.agent.state_dim}")
        if schedule.uses_validation:
            raise ValueError("RLRScheduler sees only the training loss: schedule.features='validation' and "
                             "schedule.reward='validation' need a validation loss (use rlr_env's environments)")
        check_discount(self.agent.config.gamma, schedule)
        self.lr_index = schedule.start_index
        self.previous_loss: float | None = None
        self.previous_state: torch.Tensor | None = None
        self.last_action: int | None = None
        self.last_epoch = 0
        self.group_ratios = lr_ratios(optimizer)
        first_lr = schedule.lr_grid[self.lr_index]
        for group, ratio in zip(optimizer.param_groups, self.group_ratios):
            group["initial_lr"] = first_lr * ratio
        self.base_lrs = [first_lr * ratio for ratio in self.group_ratios]
        self._set_lr(first_lr)

    def _set_lr(self, lr: float) -> None:
        """The controlled lr into the first param group, and into every other group times its ratio to the
        first (as torch's schedulers scale each group's base lr): per-group lr ratios are kept."""
        self._last_lr = [lr * ratio for ratio in self.group_ratios]
        for group, group_lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = group_lr

    def get_lr(self) -> list[float]:
        """The lr of every param group, as chosen by the last step() (the agent, not a closed form)."""
        return list(self._last_lr)

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
        return loss_state(loss, self.previous_loss, lr_position(self._last_lr[0], self.schedule),
                          self.schedule.features, self.agent.dtype,
                          budget_fraction_left(self.last_epoch, self.schedule))

    def step(self, loss: float) -> None:  # type: ignore[override]
        """Called with the loss after every optimiser step (first with L_0): the agent decides every
        schedule.decision_interval calls (is_decision_step); in between, the lr is held."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"RLRScheduler.step got a non-finite loss ({loss}); the model "
                                     "diverged. Nothing was stored; stop or restart the run.")
        run_end = self.schedule.sees_budget and self.last_epoch == self.schedule.steps
        if not (is_decision_step(self.last_epoch, self.schedule) or run_end):  # the env's last, partial decision too
            self.last_epoch += 1
            return
        state = self.observe(loss)
        if self.previous_state is not None and self.agent.training:
            reward = float(loss_reward(self.previous_loss, loss, self.schedule.features))
            # the run's end is terminal where the state sees the budget (rlr_env.time_limit_is_terminal)
            self.agent.remember(self.previous_state, self.last_action, state, reward,
                                terminated=self.schedule.sees_budget and self.last_epoch >= self.schedule.steps)
            self.agent.learn()
        state = acting_state(state, self.agent.config.variant)
        action = self.agent.act(state)
        lr_index, lr = next_lr(self.lr_index, self._last_lr[0], action, self.schedule)
        self.lr_index = int(lr_index)
        self._set_lr(float(lr))
        self.previous_loss, self.previous_state, self.last_action = loss, state, action
        self.last_epoch += 1

    def state_dict(self) -> dict:
        """A snapshot (deep copy) of everything step() depends on: the agent (policy and target nets,
        its optimiser, replay memory, epsilon step, RNG), lr index, previous loss/state/action, the grid.

        Plain tensors and primitives only, so torch.load(..., weights_only=True) reads it back.
        """
        return copy.deepcopy({
            "agent": self.agent.state_dict(), "schedule": self.schedule_fields(), "lr_index": self.lr_index,
            "previous_loss": self.previous_loss, "previous_state": self.previous_state,
            "last_action": self.last_action, "last_epoch": self.last_epoch, "last_lr": list(self._last_lr),
            "base_lrs": list(self.base_lrs)})

    def schedule_fields(self) -> dict:
        """What of the schedule a saved state must agree on: all of it, except the run length where the state
        does not see it (with features='control' the budget left is part of the state, so the length is too)."""
        schedule = asdict(self.schedule)
        if not self.schedule.sees_budget:
            del schedule["steps"]
        return {name: list(value) if isinstance(value, tuple) else value for name, value in schedule.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(); the scheduler must have the same grid, start index and actions."""
        saved = {name: list(value) if isinstance(value, tuple) else value  # older states lack the schedule
                 for name, value in state.get("schedule", self.schedule_fields()).items()}
        saved.setdefault("decision_interval", 1)  # and states before decision intervals, this field
        saved.setdefault("reward", "training")  # states before the validation reward, these two
        saved.setdefault("validation_examples", 1024)
        if saved != self.schedule_fields():
            raise ValueError(f"scheduler state was saved with schedule {saved}, this scheduler has "
                             f"{self.schedule_fields()}")
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
        self.base_lrs = [float(lr) for lr in state.get("base_lrs", self.base_lrs)]
        self._set_lr(float(state["last_lr"][0]))  # with lr_factors the lr need not be a grid value


class PolicyScheduler(torch.optim.lr_scheduler.LRScheduler):
    """A frozen policy steering any optimiser's learning rate, used like RLRScheduler and ReduceLROnPlateau:

        loss = compute_loss(); scheduler.step(loss.item())      # once with L_0: picks the first lr
        for t in range(schedule.steps):
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            loss = compute_loss(); scheduler.step(loss.item())  # (validation_loss=... where the state reads it)

    act maps observations [K, state_dim] (numpy) to actions [K]: a learned controller's greedy policy
    (rlr_controllers.TrainedController.act, a DQN's or a stable-baselines3 learner's). Every
    schedule.decision_interval calls it sees the state the environments give it (loss_state: log L, its
    change since the last decision, the lr's position in the grid's range, the budget left, and with
    features='validation' log V and its change) and moves the lr by next_lr, the rules the vector environment
    uses, so on the task it was trained on a policy acts here as it acted there. On another model only the
    changes and positions are scale-free: log L itself sits wherever that model's loss sits. Nothing is
    learned: no replay, no exploration (an online learner is RLRScheduler). The loss a decision reads is the
    one passed at the decision step or, with loss_average='interval', the mean of those passed since the
    previous decision (a steadier reading of mini-batch losses). The vector environment reads the loss as its
    task does (task.loss_reading: the polynomial task's full-batch loss at the decision step, MNIST-1D's mean
    over the interval), so a controller trained there sees here what it saw in training. Param groups keep their lr ratio to the first, as in RLRScheduler; a non-finite loss
    raises FloatingPointError.
    """

    LOSS_AVERAGES = ("last", "interval")

    def __init__(self, optimizer: torch.optim.Optimizer, act: Any, schedule: ScheduleConfig,
                 loss_average: str = "last", dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(act):
            raise TypeError(f"act must be a callable (observations -> actions), got {type(act).__name__}")
        if not isinstance(schedule, ScheduleConfig):
            raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
        if schedule.features == "raw":
            raise ValueError("schedule.features='raw' feeds the policy the loss itself, whose scale another model "
                             "does not share: a frozen policy runs on log features ('log', 'control', 'validation')")
        if loss_average not in self.LOSS_AVERAGES:
            raise ValueError(f"loss_average must be one of {self.LOSS_AVERAGES}, got {loss_average!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype (the policy's), got {dtype!r}")
        self.optimizer, self.act, self.schedule, self.loss_average, self.dtype = optimizer, act, schedule, loss_average, dtype
        self.group_ratios = lr_ratios(optimizer)
        self.lr_index = schedule.start_index
        self.last_epoch = 0
        self.previous_loss: float | None = None
        self.previous_validation: float | None = None
        self.interval_losses: list[float] = []
        first_lr = schedule.lr_grid[self.lr_index]
        for group, ratio in zip(optimizer.param_groups, self.group_ratios):
            group["initial_lr"] = first_lr * ratio
        self.base_lrs = [first_lr * ratio for ratio in self.group_ratios]
        self._set_lr(first_lr)

    _set_lr, get_lr = RLRScheduler._set_lr, RLRScheduler.get_lr

    @staticmethod
    def checked_loss(name: str, value: Any) -> float:
        """A loss as a float >= 0 (its log is the state), or TypeError/ValueError naming it; a non-finite one
        is divergence (FloatingPointError)."""
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a number (e.g. loss.item()), got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"PolicyScheduler.step got a non-finite {name} ({value}): the model diverged")
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (the policy reads its log), got {value}")
        return value

    def step(self, loss: float, validation_loss: float | None = None) -> None:  # type: ignore[override]
        """Called with the loss after every optimiser step (first with L_0); decides every
        schedule.decision_interval calls, holds the lr in between, and stops deciding at schedule.steps.
        Everything is checked before the scheduler's state changes."""
        loss = self.checked_loss("loss", loss)
        deciding = is_decision_step(self.last_epoch, self.schedule) and self.last_epoch < self.schedule.steps
        if deciding and self.schedule.features == "validation":
            if validation_loss is None:
                raise ValueError("this policy's state reads the validation loss: pass step(loss, validation_loss=...) "
                                 "at every decision")
            validation_loss = self.checked_loss("validation_loss", validation_loss)
        if not deciding:
            self.interval_losses.append(loss)
            self.last_epoch += 1
            return
        losses = [*self.interval_losses, loss]
        reading = loss if self.loss_average == "last" else float(np.mean(losses))
        state = loss_state(reading, self.previous_loss, lr_position(self._last_lr[0], self.schedule),
                           self.schedule.features, self.dtype, budget_fraction_left(self.last_epoch, self.schedule),
                           validation_loss, self.previous_validation)
        action = self.checked_action(self.act(state.unsqueeze(0).numpy()))
        lr_index, lr = next_lr(self.lr_index, self._last_lr[0], action, self.schedule)
        self.lr_index = int(lr_index)
        self._set_lr(float(lr))
        self.previous_loss, self.previous_validation, self.interval_losses = reading, validation_loss, []
        self.last_epoch += 1

    def checked_action(self, actions: Any) -> int:
        """The policy's one action as an int in range, or ValueError naming act's output."""
        actions = np.asarray(actions).reshape(-1)
        if actions.size != 1 or not np.issubdtype(actions.dtype, np.number) or actions[0] != np.round(actions[0]):
            raise ValueError(f"act must return one integral action for one observation, got {actions!r}")
        action = int(actions[0])
        if not 0 <= action < self.schedule.n_actions:
            raise ValueError(f"act returned action {action}, outside 0..{self.schedule.n_actions - 1}")
        return action

    def state_dict(self) -> dict:
        """Where the run is (plain values: torch.load(..., weights_only=True) reads it); the policy is not in it."""
        return {"lr_index": self.lr_index, "last_epoch": self.last_epoch, "previous_loss": self.previous_loss,
                "previous_validation": self.previous_validation, "interval_losses": list(self.interval_losses),
                "last_lr": list(self._last_lr), "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Resume a run saved by state_dict() (same policy and schedule); ValueError for a state that is not one."""
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a PolicyScheduler.state_dict() with keys {sorted(expected)}, got {keys}")
        lr_index, last_epoch, lr = int(state["lr_index"]), int(state["last_epoch"]), float(state["last_lr"][0])
        if not 0 <= lr_index < len(self.schedule.lr_grid):
            raise ValueError(f"state['lr_index'] {lr_index} is outside the grid of {len(self.schedule.lr_grid)}")
        if last_epoch < 0:
            raise ValueError(f"state['last_epoch'] must be >= 0, got {last_epoch}")
        low, high = self.schedule.lr_grid[0], self.schedule.lr_grid[-1]
        if not low * (1 - 1e-9) <= lr <= high * (1 + 1e-9):
            raise ValueError(f"state['last_lr'] {lr} is outside the policy's lr range [{low}, {high}]")
        self.lr_index, self.last_epoch = lr_index, last_epoch
        self.previous_loss = None if state["previous_loss"] is None else float(state["previous_loss"])
        self.previous_validation = None if state["previous_validation"] is None else float(state["previous_validation"])
        self.interval_losses = [float(value) for value in state["interval_losses"]]
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self._set_lr(lr)


def lr_ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's lr over the first group's, read when a scheduler is built: the first group's lr is
    the one the agent controls, the others keep their ratio to it. ValueError if the first lr is not > 0."""
    lrs = [group["lr"] for group in optimizer.param_groups]
    first = lrs[0]
    if isinstance(first, torch.Tensor):
        first = float(first)
    if not (isinstance(first, (int, float)) and math.isfinite(first) and first > 0):
        raise ValueError(f"optimizer.param_groups[0]['lr'] must be a finite number > 0 (the other groups keep their "
                         f"ratio to it), got {lrs[0]!r}")
    ratios = [float(lr) / first for lr in lrs]
    if not all(math.isfinite(ratio) and ratio >= 0 for ratio in ratios):
        raise ValueError(f"every param group's lr must be a finite number >= 0, got {lrs}")
    return ratios


def schedule_from(schedule: ScheduleConfig | None, lr_grid: Iterable[float] | None,
                  start_index: int | None) -> ScheduleConfig:
    """RLRScheduler's grid: a ScheduleConfig, or one built from lr_grid (default: the original's) and
    start_index (default: the middle of the grid), never both."""
    if schedule is not None and (lr_grid is not None or start_index is not None):
        raise ValueError("pass either schedule=ScheduleConfig(...) or lr_grid=/start_index=, not both")
    if schedule is None:
        grid = check_sequence("lr_grid", lr_grid) if lr_grid is not None else original_lr_grid()
        schedule = ScheduleConfig(lr_grid=grid, start_index=len(grid) // 2 if start_index is None else start_index)
    if not isinstance(schedule, ScheduleConfig):
        raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
    return schedule
