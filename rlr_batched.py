"""Vectorised engine: K independent runs of the RLR experiment at once, in one process.

rlr_engine holds the readable reference loops (one run at a time). This module runs K of them at once
and is held to the reference by tests/test_batched.py. The K models and their Adam states are
rlr_stacked's (torch.func and autograd over stacked parameters, torch's functional Adam: no hand-derived
gradient, no private torch call). The rules (state,
reward, lr move, TD targets, the as-coded rows) are rlr_core's functions, called here with a leading run
axis. The step loop has no Python loop over runs and no .item() (no host sync on a GPU).

Member k with seed s is the reference run with Config(seed=s): same data, initial weights, shuffle
stream and agent random stream (rlr_core.derive_seeds; weights built by rlr_core.make_model and
rlr_core.DQNAgent at setup). Random numbers are pre-drawn per member in chunks, in exactly the order the
reference draws them, because a CPU generator gives the same numbers in bulk as piece by piece. In
float64 a member follows its reference run to ~1e-12 at first; the runs are chaotic, so rounding-level
differences (batched matmuls sum in another order) grow past 1e-9 after roughly 600-2000 steps. That is
expected.

    results = train_rl_scheduled(Config(), seeds=range(32))      # list of 32 rlr_results.RunResult

Results are rlr_results.RunResult, one per seed, with the reference's method names and series. A member
whose loss (or, for the agent, Q-values) goes non-finite keeps computing inside its own slice of every
tensor, harmlessly (no op mixes runs), and its series are cut at diverged_at as the reference's are.
wall_seconds is the batch's loop time divided by K: the amortised cost of one run.

Read top to bottom: setup -> pre-drawn randomness -> the DQN
update -> the three training loops (with ReduceLROnPlateau before the full-batch one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import rlr_core
from rlr_core import DQNConfig
from rlr_config import check_seed
from rlr_engine import Config, agent_method_name, check_run, progress_bar
from rlr_results import RunResult
from rlr_stacked import BatchedAdam, BatchedAdamHD, StackedModel, mse_loss_and_grad

DRAW_CHUNK = 250
"""steps (or epochs) of random numbers pre-drawn per member at a time"""


# ---------------------------------------------------------------------------------------------------
# Setup: the reference's own functions build each member; then everything is stacked
# ---------------------------------------------------------------------------------------------------


def member_configs(config: Config, seeds: Sequence[int]) -> list[Config]:
    """One Config per member: `config` with its seed replaced (config.seed itself is not used)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one run")
    return [config.with_seed(seed) for seed in seeds]


class PolynomialRuns:
    """K runs of the original's task stacked (a BatchedRuns): member k is the reference run of configs[k], its
    polynomials (derive_seeds(seed).data) as inputs [K, n, points] and targets [K, n, coefficients], its
    MaclaurinNet (.init) as run k of one StackedModel, the full-batch MSE its loss and, with validation_examples
    > 0, its monitoring polynomials (.monitor) the split V is measured on. Every engine of this module and the
    vector environment (rlr_env.LRControlVectorEnv) step these."""

    def __init__(self, configs: Sequence[Config], validation_examples: int = 0) -> None:
        if not configs:
            raise ValueError("configs must name at least one run")
        prepared = [check_run(member) for member in configs]
        self.configs, self.n_runs = list(configs), len(prepared)
        self.run_seeds = [seeds for seeds, _, _ in prepared]
        _, self.dtype, self.device = prepared[0]
        self.task = self.configs[0].task
        rlr_core.check_int("validation_examples", validation_examples, 0)
        self.validation_examples = validation_examples
        data = [self.data(seeds) for seeds in self.run_seeds]
        self.inputs = torch.stack([d.inputs for d in data])
        self.targets = torch.stack([d.targets for d in data])
        self.validation_x = self.validation_y = None
        if self.validation_examples:
            validation = [self.monitoring(seeds) for seeds in self.run_seeds]
            self.validation_x = torch.stack([v.inputs for v in validation])
            self.validation_y = torch.stack([v.targets for v in validation])
        self.net = StackedModel([self.model(seeds) for seeds in self.run_seeds], self.dtype, self.device)

    def data(self, seeds: rlr_core.RunSeeds) -> rlr_core.PolynomialData:
        """A run's training polynomials."""
        return rlr_core.make_polynomial_dataset(self.task, seeds.data, dtype=self.dtype, device=self.device)

    def monitoring(self, seeds: rlr_core.RunSeeds) -> rlr_core.PolynomialData:
        """A run's monitoring polynomials (validation_examples of them): held-out data V is measured on, never
        the validation set tuning scores a method by."""
        return rlr_core.make_polynomial_dataset(self.task, seeds.monitor, self.validation_examples,
                                                dtype=self.dtype, device=self.device)

    def model(self, seeds: rlr_core.RunSeeds) -> nn.Module:
        """A run's initial MaclaurinNet."""
        return rlr_core.make_model(self.task, seeds.init, self.dtype, self.device)

    def restart(self, k: int, seed: int) -> None:
        """Run k starts afresh on seed: its data, monitoring split and initial weights."""
        seeds = rlr_core.derive_seeds(check_seed("seed", seed))
        data = self.data(seeds)
        self.inputs[k], self.targets[k] = data.inputs, data.targets
        if self.validation_examples:
            validation = self.monitoring(seeds)
            self.validation_x[k], self.validation_y[k] = validation.inputs, validation.targets
        self.net.load_run(k, self.model(seeds))
        self.run_seeds[k] = seeds

    def loss_and_grad(self, advance: torch.Tensor | None = None, with_grad: bool = True) -> torch.Tensor:
        """Each run's full-batch MSE at its current weights, [K], with the gradients in net.grad (full batch:
        there is no stream to advance, so `advance` changes nothing)."""
        return mse_loss_and_grad(self.net, self.inputs, self.targets, with_grad=with_grad)

    def validation_losses(self) -> torch.Tensor:
        """Each run's MSE on its monitoring split at its current weights, [K] (float64)."""
        if not self.validation_examples:
            raise ValueError("these runs have no monitoring split: build them with validation_examples > 0")
        with torch.no_grad():
            return mse_loss_and_grad(self.net, self.validation_x, self.validation_y, with_grad=False).double()


class BatchedRuns(Protocol):
    """K runs of one task, stacked for the batched engines: what the vector environment
    (rlr_env.LRControlVectorEnv) steps, with one BatchedAdam over net.params. PolynomialRuns and
    rlr_tasks.MNIST1DRuns are the two."""

    n_runs: int
    net: StackedModel
    device: torch.device

    def loss_and_grad(self, advance: torch.Tensor | None = None) -> torch.Tensor:
        """Each run's training loss at its current weights (its next mini-batch's, or the full batch's), [K],
        gradients into net.grad; runs outside `advance` (a bool mask [K]) draw no new mini-batch."""

    def validation_losses(self) -> torch.Tensor:
        """Each run's loss on its validation (monitoring) split, [K], float64."""

    def restart(self, k: int, seed: int) -> None:
        """Run k starts afresh on another task seed."""


@dataclass(frozen=True)
class PolynomialTask:
    """The original's task (MaclaurinNet, full-batch MSE) as a task: what the vector environment, the registry's
    families (rlr_methods.Method.run_pool) and the controllers' training take, like rlr_tasks.MNIST1DTask."""

    config: Config = field(default_factory=Config)
    """the problem (config.task), dtype and device of every run; its seed is not used (each run has its own)"""
    validation_examples: int = 1024
    """monitoring polynomials per seed that V is measured on (a schedule's validation_examples); 0: none"""
    loss_reading: str = "last"
    """the training loss a controller's state reads at a decision: the full-batch loss at the decision step
    ('last'), which is exact here"""
    seed_bound: int = 2**63 - 1
    """task seeds an environment draws lie in [0, seed_bound)"""

    def __post_init__(self) -> None:
        if not isinstance(self.config, Config):
            raise TypeError(f"config must be a Config, got {type(self.config).__name__}")
        rlr_core.check_int("validation_examples", self.validation_examples, 0)
        if self.loss_reading not in rlr_core.PolicyScheduler.LOSS_AVERAGES:
            raise ValueError(f"loss_reading must be one of {rlr_core.PolicyScheduler.LOSS_AVERAGES}, "
                             f"got {self.loss_reading!r}")
        rlr_core.check_int("seed_bound", self.seed_bound, 1)

    @property
    def dtype(self) -> torch.dtype:
        return rlr_core.DTYPES[self.config.dtype]

    @property
    def device(self) -> str:
        return self.config.device

    def runs(self, seeds: Sequence[int]) -> PolynomialRuns:
        """The runs of these seeds, stacked (each the reference run of config.with_seed(seed))."""
        return PolynomialRuns(member_configs(self.config, seeds), self.validation_examples)

    def check_schedule(self, schedule: rlr_core.ScheduleConfig) -> None:
        """ValueError where a controller's schedule and this task disagree: V is measured on
        schedule.validation_examples polynomials, which must be this task's validation_examples."""
        if schedule.uses_validation and schedule.validation_examples != self.validation_examples:
            raise ValueError(f"task.validation_examples ({self.validation_examples}) must equal the schedule's "
                             f"validation_examples ({schedule.validation_examples}): V is measured on them")

    def train(self, seeds: Sequence[int], lr: Any, steps: int | None, method: str, progress: bool = False,
              **rules: Any) -> list[RunResult]:
        """Adam under a learning-rate table or rule (train_full_batch's lr, hypergradient_lr and plateau)."""
        return train_full_batch(self.config, seeds, lr, steps, method, progress, **rules)

    def train_own_optimizers(self, seeds: Sequence[int], make_optimizer: Any, steps: int, method: str,
                             progress: bool = False) -> list[RunResult]:
        """Each run under its own instance of another package's optimiser: make_optimizer(parameters, lr), or
        a list of K factories (run k's from the k-th)."""
        return train_own_optimizers(self.config, seeds, make_optimizer, steps, method, progress)


def first_bad_step(bad: np.ndarray) -> list[int | None]:
    """Per run (column of bad [steps, K]), the index of the first True, or None."""
    return [int(np.argmax(bad[:, k])) if bad[:, k].any() else None for k in range(bad.shape[1])]


def per_member_results(method: str, configs: list[Config], series: dict[str, np.ndarray], bad: np.ndarray,
                       wall_seconds: float, models: list[nn.Module],
                       policy_states: list[dict] | None = None) -> list[RunResult]:
    """Split [steps, K, ...] series into one RunResult per member, cut at its first bad step (diverged_at).

    A diverged member kept computing inside its own slice of every tensor (no op mixes runs), so the
    others are untouched; its series stop before the bad step, as the reference's do.
    wall_seconds of each result is the batch's wall time divided by K: the amortised cost of one run.
    """
    results = []
    for k, (member, diverged_at) in enumerate(zip(configs, first_bad_step(bad))):
        count = len(bad) if diverged_at is None else diverged_at
        member_series = {name: np.ascontiguousarray(values[:count, k]) for name, values in series.items()}
        results.append(RunResult(method, member.to_dict(), member_series, wall_seconds / len(configs),
                                 diverged_at=diverged_at, model=models[k],
                                 policy_state=None if policy_states is None else policy_states[k]))
    return results


# ---------------------------------------------------------------------------------------------------
# Pre-drawn randomness, in the reference's exact order
# ---------------------------------------------------------------------------------------------------


def draw_permutations(generators: Sequence[torch.Generator], n_epochs: int, n_examples: int,
                      device: torch.device) -> torch.Tensor:
    """Per epoch and run, a permutation as row indices into the runs' data flattened to [K * n]: [E, K, n].

    Same calls as train_baseline: one torch.randperm(n, generator=shuffle) per epoch.
    """
    permutations = torch.stack([torch.stack([torch.randperm(n_examples, generator=generator)
                                             for _ in range(n_epochs)]) for generator in generators], dim=1)
    run_offsets = torch.arange(len(generators))[None, :, None] * n_examples
    return (permutations + run_offsets).to(device)


def draw_agent_randomness(generators: Sequence[torch.Generator], first_step: int, n_steps: int,
                          dqn: DQNConfig, n_actions: int, n_sample_rows: int,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The agents' random decisions for steps first_step .. first_step + n_steps - 1.

    DQNAgent draws, per step: act: torch.rand(2, float64) (explore draw, then action draw); learn (once the
    memory holds learning_starts transitions): torch.rand(batch_size, float64) -> floor(u * size). One
    torch.rand per member for the whole chunk gives the same numbers. Returns explore [C, K] (bool),
    random_action [C, K] and replay_rows [C, K, n_sample_rows]: the first n_sample_rows sampled indices as
    rows of the replay memories flattened to [K * capacity].
    """
    steps = np.arange(first_step, first_step + n_steps)
    memory_size = np.minimum(steps + 1, dqn.replay_capacity)  # after the push of step t
    learns = memory_size >= max(dqn.learning_starts, 1)
    draws_per_step = 2 + dqn.batch_size * learns
    starts = np.cumsum(draws_per_step) - draws_per_step
    uniforms = torch.stack([torch.rand(int(draws_per_step.sum()), dtype=torch.float64, generator=generator)
                            for generator in generators])  # [K, draws]
    epsilon = torch.tensor([rlr_core.epsilon_at(int(t), dqn) for t in steps], dtype=torch.float64)
    explore = uniforms[:, starts] < epsilon
    random_action = (uniforms[:, starts + 1] * n_actions).long()
    sample_columns = np.where(learns[:, None], starts[:, None] + 2 + np.arange(n_sample_rows), 0)
    sampled = (uniforms[:, sample_columns] * torch.from_numpy(memory_size)[None, :, None]).long()
    replay_rows = sampled + torch.arange(len(generators))[:, None, None] * dqn.replay_capacity
    return (explore.T.contiguous().to(device), random_action.T.contiguous().to(device),
            replay_rows.transpose(0, 1).contiguous().to(device))


# ---------------------------------------------------------------------------------------------------
# K DQN agents: DQNAgent's act / remember / learn with a leading run axis. The rules (td_targets,
# as_coded_rows) are rlr_core's; the networks are StackedModels, their gradients autograd's.
# ---------------------------------------------------------------------------------------------------

# Replay memory: one tensor [K, capacity, 2 * state_dim + 2]; a row is (state, action, next_state,
# reward), the field order of rlr_core.Transition. Every member pushes every step, so the position
# and the size are shared.


def replay_fields(samples: torch.Tensor, state_dim: int) -> rlr_core.Transition:
    """The fields of replay rows [..., row] as a Transition (the action as a float, as stored)."""
    return rlr_core.Transition(samples[..., :state_dim], samples[..., state_dim],
                               samples[..., state_dim + 1:2 * state_dim + 1], samples[..., 2 * state_dim + 1])


def training_rows(samples: torch.Tensor, dqn: DQNConfig, n_actions: int, state_dim: int
                  ) -> tuple[rlr_core.Transition, float | torch.Tensor]:
    """The rows one update trains on, from the sampled transitions [K, rows, row], and each row's weight
    in the mean Huber loss: the samples themselves ('described'), or the original's rows ('as_coded',
    rlr_core.as_coded_rows). The as-coded batch's other batch_size - 4 rows are all zeros and identical,
    so they appear once, weighted (batch_size - 4) / batch_size (the same loss up to rounding)."""
    batch = replay_fields(samples, state_dim)
    if dqn.variant == "described":
        return batch._replace(action=batch.action.long()), 1.0 / dqn.batch_size
    rows = rlr_core.as_coded_rows(batch, n_actions)
    with_zero_row = rlr_core.Transition(*(torch.cat([values, torch.zeros_like(values[:, :1])], dim=1)
                                          for values in rows[:4]))
    row_weights = samples.new_tensor([1.0] * 4 + [dqn.batch_size - 4.0]) / dqn.batch_size
    return with_zero_row, row_weights


def dqn_update(policy: StackedModel, target: StackedModel, optimizer: BatchedAdam, batch: rlr_core.Transition,
               row_weights: float | torch.Tensor, dqn: DQNConfig) -> None:
    """DQNAgent.learn for K agents: Huber loss on rlr_core.td_targets, Adam, soft update.

    row_weights: each row's weight in the mean (1 / batch_size for the described update).
    """
    with torch.no_grad():
        next_q_values = policy.forward(batch.next_state) if dqn.double_dqn else None
        targets = rlr_core.td_targets(batch.reward, target.forward(batch.next_state), dqn.gamma,
                                      next_actions=None if next_q_values is None else next_q_values.argmax(dim=2))
        # (the learning-rate run has no terminal states)

    def weighted_huber(q_values: torch.Tensor) -> torch.Tensor:  # F.smooth_l1_loss's mean, per run
        q_taken = q_values.gather(2, batch.action.unsqueeze(2)).squeeze(2)
        return (F.smooth_l1_loss(q_taken, targets, reduction="none") * row_weights).sum(dim=1)

    policy.loss_and_grad(weighted_huber, batch.state)
    optimizer.step(policy.grad, dqn.lr)
    target.params.lerp_(policy.params, dqn.tau)  # soft update, as rlr_core.soft_update


class BatchedDQN:
    """K DQNAgents, one per run seed, built by rlr_core.DQNAgent (same initial weights and random
    stream) and then stacked. act / remember / learn as DQNAgent's, for all K at once; the random
    decisions are pre-drawn per chunk of steps in the reference's order (draw_agent_randomness)."""

    def __init__(self, run_seeds: Sequence[rlr_core.RunSeeds], config: Config, dtype: torch.dtype,
                 device: torch.device, initial_policies: Sequence[dict] | None, frozen: bool) -> None:
        schedule, dqn = config.schedule, config.dqn
        self.dqn, self.frozen, self.n_runs = dqn, frozen, len(run_seeds)
        self.state_dim, self.n_actions = schedule.state_dim, schedule.n_actions
        agents = [rlr_core.DQNAgent(self.state_dim, self.n_actions, dqn, seeds.agent, dtype, device)
                  for seeds in run_seeds]
        for k, agent in enumerate(agents if initial_policies is not None else []):
            try:
                agent.policy_net.load_state_dict(initial_policies[k])
                agent.target_net.load_state_dict(initial_policies[k])
            except RuntimeError as error:  # missing or unexpected keys, wrong shapes
                raise ValueError(f"initial_policies[{k}] does not fit the Q-network (state_dim={self.state_dim}, "
                                 f"n_actions={self.n_actions}, hidden_size={dqn.hidden_size}): {error}") from error
        self.policy = StackedModel([agent.policy_net for agent in agents], dtype, device)
        self.target = StackedModel([agent.target_net for agent in agents], dtype, device)
        self.generators = [agent.generator for agent in agents]  # fresh: nothing drawn yet
        self.optimizer = BatchedAdam(self.policy.params)
        self.replay = torch.zeros(self.n_runs, dqn.replay_capacity, 2 * self.state_dim + 2, dtype=dtype,
                                  device=device)
        self.n_sample_rows = dqn.batch_size if dqn.variant == "described" else 4
        self.explored: list[torch.Tensor] = []  # per chunk [C, K], on the CPU
        self.steps = config.schedule.steps

    @torch.no_grad()
    def act(self, states: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epsilon-greedy actions [K] on states [K, state_dim] (greedy when frozen), and the Q-values."""
        chunk_step = step % DRAW_CHUNK
        if not self.frozen and chunk_step == 0:  # a frozen agent's draws are never used
            self.explore, self.random_action, self.replay_rows = draw_agent_randomness(
                self.generators, step, min(DRAW_CHUNK, self.steps - step), self.dqn, self.n_actions,
                self.n_sample_rows, states.device)
            self.explored.append(self.explore.cpu())
        q_values = self.policy.forward(states.unsqueeze(1)).squeeze(1)
        action = q_values.argmax(dim=1)
        if not self.frozen:
            action = torch.where(self.explore[chunk_step], self.random_action[chunk_step], action)
        return action, q_values

    def remember(self, states: torch.Tensor, actions: torch.Tensor, next_states: torch.Tensor,
                 rewards: torch.Tensor, step: int) -> None:
        """Push (s_t, a_t, s_{t+1}, r_t) of every run; the memory is a ring, all runs at one position."""
        dtype = self.replay.dtype
        self.replay[:, step % self.dqn.replay_capacity] = torch.cat(
            [states, actions.unsqueeze(1).to(dtype), next_states, rewards.unsqueeze(1).to(dtype)], dim=1)

    @torch.no_grad()
    def learn(self, step: int) -> None:
        """One DQN update of every agent once the memory holds learning_starts transitions."""
        if min(step + 1, self.dqn.replay_capacity) < self.dqn.learning_starts:
            return
        rows = self.replay_rows[step % DRAW_CHUNK].view(-1)
        replay_by_row = self.replay.view(-1, self.replay.shape[-1])
        samples = replay_by_row.index_select(0, rows).view(self.n_runs, -1, self.replay.shape[-1])
        dqn_update(self.policy, self.target, self.optimizer,
                   *training_rows(samples, self.dqn, self.n_actions, self.state_dim), self.dqn)

    def explored_series(self, steps: int) -> np.ndarray:
        """[steps, K]: whether each step's action was random."""
        if self.frozen:
            return np.zeros((steps, self.n_runs), dtype=bool)
        return torch.cat(self.explored).numpy()

    def policy_states(self) -> list[dict]:
        """Each agent's final policy weights (CPU), as DQNAgent.policy_weights."""
        networks = self.policy.to_modules()
        return [{name: tensor.cpu() for name, tensor in network.state_dict().items()} for network in networks]


# ---------------------------------------------------------------------------------------------------
# Training loops: the three of rlr_core, for K runs
# ---------------------------------------------------------------------------------------------------


def train_baseline(config: Config, seeds: Sequence[int], progress: bool = False) -> list[RunResult]:
    """rlr_engine.train_baseline for every seed: mini-batch Adam, a fresh permutation per run and epoch."""
    configs = member_configs(config, seeds)
    runs = PolynomialRuns(configs)
    net, dtype, device = runs.net, runs.dtype, runs.device
    n_runs, n_examples = runs.inputs.shape[:2]
    batch_size, epochs = config.baseline.batch_size, config.baseline.epochs
    inputs_by_row, targets_by_row = runs.inputs.flatten(0, 1), runs.targets.flatten(0, 1)
    shuffles = [torch.Generator().manual_seed(seeds.shuffle) for seeds in runs.run_seeds]
    optimizer = BatchedAdam(net.params)
    losses = torch.empty(epochs, n_runs, dtype=dtype, device=device)
    started = time.perf_counter()
    with torch.no_grad(), progress_bar(epochs, f"baseline epochs x{n_runs}", progress) as bar:
        for epoch in range(epochs):
            if epoch % DRAW_CHUNK == 0:
                chunk = min(DRAW_CHUNK, epochs - epoch)
                permutations = draw_permutations(shuffles, chunk, n_examples, device)
            order = permutations[epoch % DRAW_CHUNK].reshape(-1)
            shuffled_inputs = inputs_by_row.index_select(0, order).view(n_runs, n_examples, -1)
            shuffled_targets = targets_by_row.index_select(0, order).view(n_runs, n_examples, -1)
            for start in range(0, n_examples, batch_size):
                batch = slice(start, start + batch_size)
                mse_loss_and_grad(net, shuffled_inputs[:, batch], shuffled_targets[:, batch])
                optimizer.step(net.grad, config.baseline.lr)
            losses[epoch] = runs.loss_and_grad(with_grad=False)
            bar.update()
    wall_seconds = time.perf_counter() - started
    series = {"loss": losses.cpu().double().numpy()}
    return per_member_results("baseline_minibatch", configs, series, ~np.isfinite(series["loss"]),
                              wall_seconds, net.to_modules())


def lr_table(lr: float | Sequence[float] | np.ndarray | torch.Tensor, n_runs: int,
             steps: int | None) -> np.ndarray:
    """Learning rates [K, steps] from one float, a schedule [steps] or one schedule per run [K, steps]."""
    table = np.asarray(lr.cpu() if isinstance(lr, torch.Tensor) else lr, dtype=np.float64)
    if table.ndim == 0:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (an int >= 1) is required when lr is a single number, got {steps!r}")
        table = np.full(steps, float(table))
    if table.ndim == 1:
        table = np.broadcast_to(table, (n_runs, len(table)))
    if table.ndim != 2 or table.shape[0] != n_runs or table.shape[1] == 0:
        raise ValueError(f"lr must be a number, a schedule [steps] or one per run [{n_runs}, steps]; "
                         f"got shape {table.shape}")
    if steps is not None and table.shape[1] != steps:
        raise ValueError(f"lr schedule has {table.shape[1]} steps but steps={steps}")
    if not (np.isfinite(table).all() and (table >= 0).all()):
        raise ValueError("every learning rate must be finite and >= 0 (schedules may reach 0)")
    return np.ascontiguousarray(table)


def lr_schedule(make_scheduler: Callable[[torch.optim.Optimizer], object], lr: float,
                steps: int) -> np.ndarray:
    """The learning rate each step uses under a torch.optim.lr_scheduler, as an array [steps].

    Lets the batched train_full_batch run what rlr_engine.train_full_batch(make_scheduler=...) runs, for
    schedules that do not look at the loss (ReduceLROnPlateau does: it has no fixed array).
    """
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau depends on the loss; it has no precomputed schedule")
    lrs = np.empty(steps)
    for step in range(steps):
        lrs[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return lrs


def hypergradient_lrs(hypergradient_lr: float | Sequence[float], n_runs: int) -> np.ndarray:
    """Adam-HD's beta per run [K], float64, from one number or one per run; each finite and >= 0."""
    def check(name: str, beta: float) -> float:
        rlr_core.check_float(name, beta, 0.0, math.inf, low_open=False, high_open=True)
        return float(beta)

    if isinstance(hypergradient_lr, (str, bytes)) or not hasattr(hypergradient_lr, "__len__"):
        return np.full(n_runs, check("hypergradient_lr", hypergradient_lr))
    if len(hypergradient_lr) != n_runs:
        raise ValueError(f"hypergradient_lr must be one number or one per run ({n_runs}), "
                         f"got {len(hypergradient_lr)} values")
    return np.array([check(f"hypergradient_lr[{k}]", beta) for k, beta in enumerate(hypergradient_lr)])


def rule_starts(lr: Any, plateau: dict | Sequence[dict] | None, n_runs: int, name: str = "lr") -> np.ndarray:
    """Each run's starting lr [K] under Adam's rules that watch the run (hypergradient_lr, plateau): lr one
    number or one per run, each finite and >= 0; the plateau options checked by torch. Before any work."""
    starts = np.asarray(lr.cpu() if isinstance(lr, torch.Tensor) else lr, dtype=np.float64)
    if starts.ndim > 1 or (starts.ndim == 1 and len(starts) != n_runs):
        raise ValueError(f"with hypergradient_lr or plateau, {name} must be one number or one per run ({n_runs}): "
                         f"each run's starting lr, got shape {starts.shape}")
    starts = np.ascontiguousarray(np.broadcast_to(starts, (n_runs,)))
    if not (np.isfinite(starts).all() and (starts >= 0).all()):
        raise ValueError(f"every starting lr in {name} must be finite and >= 0, got {starts.tolist()}")
    if plateau is not None:
        PlateauPerRun(starts, plateau)
    return starts


class PlateauPerRun:
    """torch.optim.lr_scheduler.ReduceLROnPlateau for K runs, each stepped with its own loss.

    torch's scheduler keeps best, num_bad_epochs and cooldown_counter as Python numbers of one run, so
    rather than rewrite its rules for a run axis, each run gets its own torch scheduler on a stand-in
    optimiser whose lr is written before and read after every step. This costs a loop over runs and
    one host sync per step (the losses as Python floats, as the reference's loss.item()), negligible
    beside a step for the K of the study. torch validates the options (unknown ones raise TypeError).
    """

    def __init__(self, lrs: Sequence[float], options: dict | Sequence[dict]) -> None:
        per_run = [options] * len(lrs) if isinstance(options, dict) else list(options) \
            if isinstance(options, (list, tuple)) else None
        if per_run is None or len(per_run) != len(lrs) or not all(isinstance(item, dict) for item in per_run):
            raise TypeError(f"plateau must be a dict of ReduceLROnPlateau options, one per run ({len(lrs)}), "
                            f"or None, got {type(options).__name__}")
        self.stand_ins = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr) for lr in lrs]
        try:
            self.schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(stand_in, **run_options)
                               for stand_in, run_options in zip(self.stand_ins, per_run)]
        except (TypeError, ValueError) as error:  # say which parameter the message is about
            raise type(error)(f"plateau: {error}") from error

    def step(self, loss: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Take each run's loss [K] into account; return the lr [K] each run uses from now on."""
        for stand_in, scheduler, run_loss, run_lr in zip(self.stand_ins, self.schedulers, loss.tolist(),
                                                          lr.tolist()):
            stand_in.param_groups[0]["lr"] = run_lr
            scheduler.step(run_loss)
        return torch.tensor([stand_in.param_groups[0]["lr"] for stand_in in self.stand_ins],
                            dtype=torch.float64, device=lr.device)


def train_full_batch(config: Config, seeds: Sequence[int],
                     lr: float | Sequence[float] | np.ndarray | torch.Tensor, steps: int | None = None,
                     method: str = "constant_full_batch", progress: bool = False, *,
                     hypergradient_lr: float | Sequence[float] = 0.0,
                     plateau: dict | Sequence[dict] | None = None) -> list[RunResult]:
    """rlr_engine.train_full_batch for every seed: full-batch Adam under a given learning-rate schedule.

    lr: one number (then steps is required), a schedule [steps] shared by all runs, or one schedule per
    run [K, steps] (a learning-rate sweep is one call). Logs loss and lr per step, as the reference.
    Two rules that move the lr from what the run sees, each starting from lr (then one number):
    hypergradient_lr: Adam-HD's beta, one number or one per run (a beta x seed sweep is one call), as
    rlr_engine.AdamHD; 0 (the default) is plain Adam. plateau: ReduceLROnPlateau's options (a dict, or
    one per run), stepped with each run's full-data loss after every step, as the reference with
    make_scheduler=ReduceLROnPlateau. Both together: Adam-HD moves the lr, the plateau rule cuts it.
    With either, lr is each run's starting lr: one number or one per run [K] (a pool of configurations
    x seeds is one call: seeds may repeat).
    """
    configs = member_configs(config, seeds)
    n_runs = len(configs)
    betas = hypergradient_lrs(hypergradient_lr, n_runs)
    adapts_lr = betas.any() or plateau is not None
    if adapts_lr:
        starts = rule_starts(lr, plateau, n_runs)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps (an int >= 1) is required with hypergradient_lr or plateau, got {steps!r}")
        lr = np.repeat(starts[:, None], steps, axis=1)
    lrs = lr_table(lr, n_runs, steps)
    steps = lrs.shape[1]
    scheduler = PlateauPerRun(lrs[:, 0], plateau) if plateau is not None else None  # torch checks the options
    runs = PolynomialRuns(configs)
    dtype, device, net = runs.dtype, runs.device, runs.net
    lrs_by_step = torch.from_numpy(lrs.T.copy()).to(device)  # [steps, K], float64 like the reference's lr
    if betas.any():
        optimizer = BatchedAdamHD(net.params, net.rows_of, torch.from_numpy(betas).to(device))
    else:
        optimizer = BatchedAdam(net.params, net.rows_of)
    losses = torch.empty(steps, n_runs, dtype=dtype, device=device)
    used_lrs = torch.empty(steps, n_runs, dtype=torch.float64, device=device)
    started = time.perf_counter()
    with torch.no_grad(), progress_bar(steps, f"{method} x{n_runs}", progress) as bar:
        runs.loss_and_grad()  # gradient of L_0
        lr_now = lrs_by_step[0]
        for step in range(steps):
            if not adapts_lr:
                lr_now = lrs_by_step[step]
            lr_now = optimizer.step(net.grad, lr_now)  # Adam-HD moves each run's lr first
            used_lrs[step] = lr_now
            losses[step] = runs.loss_and_grad(with_grad=step < steps - 1)
            if scheduler is not None:
                lr_now = scheduler.step(losses[step], lr_now)  # the lr of the next step
            bar.update()
    wall_seconds = time.perf_counter() - started
    series = {"loss": losses.cpu().double().numpy(), "lr": used_lrs.cpu().numpy()}
    return per_member_results(method, configs, series, ~np.isfinite(series["loss"]), wall_seconds,
                              net.to_modules())


def run_major_order(net: StackedModel) -> torch.Tensor:
    """Indices into net.params such that net.params[order].view(K, P) has run k's P parameters in row k
    (named_parameters order): the layout in which each run is one flat tensor."""
    blocks = net.blocks(torch.arange(net.params.numel(), device=net.params.device))
    return torch.cat([block.reshape(net.n_runs, -1) for block in blocks.values()], dim=1).reshape(-1)


class OwnOptimizers:
    """One optimiser instance per run of a StackedModel, each from its own package, stepping its run's
    parameters as one flat tensor (a row of a run-major copy of net.params, copied back after each step).

    make_optimizer(parameters, lr) builds every run's instance, or a list of K factories builds run k's from
    the k-th (a pool's configurations in one batch; check_factories).
    Hand-written because no library steps many instances of a third-party optimiser on stacked models.
    Runs must not share an instance: Prodigy and D-Adaptation estimate one step size from norms over all
    of an instance's parameters. One flat tensor is the same update as the per-layer tensors for
    optimisers whose update is elementwise with sums over all parameters (Prodigy, D-Adaptation Adam,
    Schedule-Free AdamW; tests/test_peers.py holds each to the reference loop), up to summation order.
    """

    def __init__(self, net: StackedModel, make_optimizer: Callable[[Any, float], Any] | Sequence[Callable],
                 lr: float = 1.0) -> None:
        self.net, self.order = net, run_major_order(net)
        self.runs = net.params[self.order].view(net.n_runs, -1).clone()
        self.run_grads = torch.zeros_like(self.runs)
        rows = [self.runs[k] for k in range(net.n_runs)]
        for row, grad in zip(rows, self.run_grads):
            row.grad = grad
        makers = make_optimizer if isinstance(make_optimizer, (list, tuple)) else [make_optimizer] * net.n_runs
        self.optimizers = [make([row], lr) for make, row in zip(makers, rows)]
        self.has_modes = all(callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))
                             for opt in self.optimizers)

    def step(self, alive: np.ndarray, lrs: np.ndarray) -> None:
        """Each live run's optimiser steps on its gradient (net.grad); lrs[k] gets the lr its group holds."""
        torch.index_select(self.net.grad, 0, self.order, out=self.run_grads.view(-1))
        for k in np.flatnonzero(alive):
            self.optimizers[k].step()
            lrs[k] = self.optimizers[k].param_groups[0]["lr"]
        self.net.params.index_copy_(0, self.order, self.runs.view(-1))

    def set_mode(self, mode: str) -> None:
        """'train' or 'eval' on every instance (schedule-free: the switches rewrite the weights in place)."""
        for opt in self.optimizers:
            getattr(opt, mode)()
        self.net.params.index_copy_(0, self.order, self.runs.view(-1))


def check_factories(make_optimizer: Any, n_runs: int) -> None:
    """make_optimizer: one callable(parameters, lr), or a list of n_runs of them (one per run)."""
    if isinstance(make_optimizer, (list, tuple)):
        if not all(callable(make) for make in make_optimizer):
            raise TypeError("make_optimizer must be callable, or a list of callables (one per run)")
        if len(make_optimizer) != n_runs:
            raise ValueError(f"make_optimizer as a list must hold one factory per run ({n_runs}), got {len(make_optimizer)}")
    elif not callable(make_optimizer):
        raise TypeError(f"make_optimizer must be callable(parameters, lr), got {type(make_optimizer).__name__}")


def train_own_optimizers(config: Config, seeds: Sequence[int],
                         make_optimizer: Callable[[Any, float], Any] | Sequence[Callable[[Any, float], Any]],
                         steps: int, method: str, progress: bool = False) -> list[RunResult]:
    """rlr_engine.train_full_batch(config.with_seed(s), 1.0, steps, method, make_optimizer=make_optimizer)
    for every seed s, with one batched forward and backward pass per step and one optimiser instance per
    run, built by make_optimizer([its parameters], 1.0), or by the k-th of a list of factories (OwnOptimizers).

    An optimiser with train()/eval() modes steps in train mode, and its losses and models are those of
    its eval-mode weights, as in the reference. A run whose loss goes non-finite stops stepping; its
    series are cut at diverged_at.
    """
    rlr_core.check_int("steps", steps, 1)
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string (the results' name), got {method!r}")
    configs = member_configs(config, seeds)
    check_factories(make_optimizer, len(configs))
    runs = PolynomialRuns(configs)
    dtype, device, net = runs.dtype, runs.device, runs.net
    optimizers = OwnOptimizers(net, make_optimizer)
    if optimizers.has_modes:
        optimizers.set_mode("train")
    losses = torch.full((steps, net.n_runs), math.nan, dtype=dtype, device=device)
    used_lrs = np.full((steps, net.n_runs), math.nan)
    alive = np.ones(net.n_runs, dtype=bool)
    started = time.perf_counter()
    with torch.no_grad(), progress_bar(steps, f"{method} x{net.n_runs}", progress) as bar:
        runs.loss_and_grad()  # gradient of L_0 at the train-mode weights
        for step in range(steps):
            optimizers.step(alive, used_lrs[step])
            if optimizers.has_modes:  # L at the eval-mode weights is logged; the gradient is taken in train mode
                optimizers.set_mode("eval")
                losses[step] = runs.loss_and_grad(with_grad=False)
                optimizers.set_mode("train")
                if step < steps - 1:
                    runs.loss_and_grad()
            else:
                losses[step] = runs.loss_and_grad(with_grad=step < steps - 1)
            alive &= torch.isfinite(losses[step]).cpu().numpy()
            if not alive.any():
                break
            bar.update()
    if optimizers.has_modes:
        optimizers.set_mode("eval")  # the returned models hold the weights the optimisers stand for
    series = {"loss": losses.cpu().double().numpy(), "lr": used_lrs}
    return per_member_results(method, configs, series, ~np.isfinite(series["loss"]), time.perf_counter() - started,
                              net.to_modules())


def check_initial_policies(initial_policies: Sequence[dict] | None, n_runs: int) -> None:
    """None, or one policy_net state_dict per run."""
    if initial_policies is None:
        return
    if isinstance(initial_policies, dict) or not hasattr(initial_policies, "__len__"):
        raise TypeError(f"initial_policies must be a sequence of policy_net state_dicts (one per run), "
                        f"got {type(initial_policies).__name__}")
    if len(initial_policies) != n_runs:
        raise ValueError(f"initial_policies must hold one state_dict per run ({n_runs}), got {len(initial_policies)}")
    for k, state in enumerate(initial_policies):
        if not isinstance(state, dict):
            raise TypeError(f"initial_policies[{k}] must be a policy_net state_dict, got {type(state).__name__}")


def train_rl_scheduled(config: Config, seeds: Sequence[int], progress: bool = False,
                       initial_policies: Sequence[dict] | None = None, frozen: bool = False) -> list[RunResult]:
    """rlr_engine.train_rl_scheduled for every seed: K agents each steering their own full-batch Adam.

    Per step, as RLRScheduler + DQNAgent (docs/original.md): act epsilon-greedily on s_t, move the lr,
    Adam step on L_t, L_{t+1}, remember (s_t, a_t, s_{t+1}, r_t), one DQN update once the memory holds
    learning_starts transitions; state, reward and lr move are rlr_core's rules. The options of the
    reference work here too (variant 'as_coded', features 'log', lr_factors).
    initial_policies: one policy_net state_dict per run (e.g. RunResult.policy_state of an earlier call),
    loaded into its policy and target networks, as the reference's initial_policy. frozen: greedy
    actions (epsilon 0), no replay, no updates, method agent_method_name(variant, frozen=True), as the reference's.
    Each result's policy_state holds its policy network's final weights.
    """
    configs = member_configs(config, seeds)
    if not isinstance(frozen, bool):
        raise TypeError(f"frozen must be a bool, got {type(frozen).__name__}")
    if config.schedule.decision_interval != 1 or config.schedule.features == "control":
        raise ValueError("schedule.decision_interval > 1 and features='control' run on the reference loop "
                         "(rlr_engine.train_rl_scheduled) and LRControlEnv; the batched engine decides every step")
    check_initial_policies(initial_policies, len(configs))
    runs = PolynomialRuns(configs)
    run_seeds, dtype, device, net = runs.run_seeds, runs.dtype, runs.device, runs.net
    schedule, variant, steps = config.schedule, config.dqn.variant, config.schedule.steps
    agents = BatchedDQN(run_seeds, config, dtype, device, initial_policies, frozen)
    optimizer = BatchedAdam(net.params, net.rows_of)
    lr_index = torch.full((len(configs),), schedule.start_index, device=device)
    lr = rlr_core.action_tables(schedule.lr_grid, schedule.index_shifts, schedule.lr_factors, device)[0][lr_index]
    logged = {"loss": torch.empty(steps, len(configs), dtype=dtype, device=device),
              "lr": torch.empty(steps, len(configs), dtype=torch.float64, device=device),
              "lr_index": torch.empty(steps, len(configs), dtype=torch.long, device=device),
              "action": torch.empty(steps, len(configs), dtype=torch.long, device=device),
              "q_values": torch.empty(steps, len(configs), agents.n_actions, dtype=dtype, device=device)}

    def state_of(loss: torch.Tensor, previous_loss: torch.Tensor | None, lr: torch.Tensor) -> torch.Tensor:
        return rlr_core.loss_state(loss, previous_loss, rlr_core.lr_position(lr, schedule), schedule.features, dtype)

    started = time.perf_counter()
    with torch.no_grad(), progress_bar(steps, f"agent ({variant}) x{len(configs)}", progress) as bar:
        loss = runs.loss_and_grad()  # L_0 and its gradient
        initial_loss = loss.clone()
        state = rlr_core.acting_state(state_of(loss, None, lr), variant)  # s_0
        for step in range(steps):
            action, logged["q_values"][step] = agents.act(state, step)
            lr_index, lr = rlr_core.next_lr(lr_index, lr, action, schedule)
            logged["action"][step], logged["lr_index"][step], logged["lr"][step] = action, lr_index, lr
            optimizer.step(net.grad, lr)  # Adam step on L_t, then L_{t+1} and its gradient (for the next step)
            next_loss = logged["loss"][step] = runs.loss_and_grad(with_grad=step < steps - 1)
            next_state = state_of(next_loss, loss, lr)
            if not frozen:
                agents.remember(state, action, next_state, rlr_core.loss_reward(loss, next_loss, schedule.features),
                                step)
                agents.learn(step)
            loss, state = next_loss, rlr_core.acting_state(next_state, variant)
            bar.update()
    wall_seconds = time.perf_counter() - started
    return agent_results(config, configs, logged, initial_loss, agents, net, wall_seconds)


def agent_results(config: Config, configs: list[Config], logged: dict[str, torch.Tensor],
                  initial_loss: torch.Tensor, agents: BatchedDQN, net: StackedModel,
                  wall_seconds: float) -> list[RunResult]:
    """The logged tensors [steps, K, ...] as the reference's series, one RunResult per member, cut where
    the reference stops: at a non-finite L_{t+1} or acting Q-values, and at step 0 for a non-finite L_0."""
    schedule, dqn, steps = config.schedule, config.dqn, config.schedule.steps
    series = {name: values.cpu().numpy() for name, values in logged.items()}
    series["loss"] = series["loss"].astype(np.float64)
    series["q_values"] = series["q_values"].astype(np.float64)
    losses_before = np.concatenate([initial_loss.cpu().double().numpy()[None], series["loss"][:-1]])
    series["reward"] = rlr_core.loss_reward(torch.from_numpy(losses_before), torch.from_numpy(series["loss"]),
                                            schedule.features).numpy()  # in float64, as the reference's series
    epsilons = np.array([0.0 if agents.frozen else rlr_core.epsilon_at(step, dqn) for step in range(steps)])
    series["epsilon"] = np.broadcast_to(epsilons[:, None], (steps, len(configs)))
    series["explored"] = agents.explored_series(steps)
    bad = ~np.isfinite(series["loss"]) | ~np.isfinite(series["q_values"]).all(axis=2)
    bad[0] |= ~np.isfinite(losses_before[0])
    order = ("loss", "lr", "reward", "epsilon", "action", "lr_index", "q_values", "explored")
    method = agent_method_name(dqn.variant, agents.frozen)
    return per_member_results(method, configs, {name: series[name] for name in order}, bad, wall_seconds,
                              net.to_modules(), agents.policy_states())
