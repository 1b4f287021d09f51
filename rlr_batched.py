"""Vectorised engine: K independent runs of the RLR experiment at once, in one process.

rlr_engine holds the readable reference loops (one run at a time). This module runs K of them at once
and is held to the reference by tests/test_batched.py. It re-implements nothing that autograd or torch
already does: K copies of any nn.Module are stacked (torch.func.stack_module_state) and run through
torch.func.vmap(functional_call); the gradients come from autograd over the stacked parameters (no op
mixes runs, so the gradient of the summed per-run losses is each run's own gradient); Adam is
torch.optim.adam.adam, the functional form of torch.optim.Adam, with its fused kernel. The rules (state,
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

Read top to bottom: stacked models, Adam and Adam-HD -> setup -> pre-drawn randomness -> the DQN
update -> the three training loops (with ReduceLROnPlateau before the full-batch one).
"""

from __future__ import annotations

import copy
import ctypes
import math
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam as functional_adam

import rlr_core
from rlr_core import DQNConfig
from rlr_engine import Config, check_run, hypergradient_step, progress_bar
from rlr_results import RunResult

DRAW_CHUNK = 250
"""steps (or epochs) of random numbers pre-drawn per member at a time"""


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS (an entry point's call,
    like torch.set_num_threads: it changes the process's allocator, so library code never calls it).

    Autograd allocates the same few-MB activations and gradients every step. glibc serves blocks above
    its mmap threshold (128 KiB at first) with fresh pages and unmaps them on free, so each step pays
    page faults that cost more than the arithmetic: measured 1.5-1.7x on the batched MaclaurinNet step
    (benchmarks/bench_batched.py --kernels). PyTorch's CPU performance guide recommends swapping in
    jemalloc or TCMalloc for the same reason; raising glibc's mmap and trim thresholds (mallopt) gets the
    same effect with no extra package. Returns whether it applied (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, one_gib = -1, -3, 1 << 30  # glibc's malloc.h parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, one_gib)) and bool(libc.mallopt(m_trim_threshold, one_gib))


# ---------------------------------------------------------------------------------------------------
# K models and K Adam states as single tensors
# ---------------------------------------------------------------------------------------------------


class StackedModel:
    """K copies of one nn.Module (any architecture), all parameters in one flat tensor `params`.

    The flat tensor lets Adam and the soft update treat all K models as one tensor. Inside it, each
    parameter of the module (in named_parameters order) is one contiguous block [K, *shape]; `tensors`
    holds those blocks by name, as torch.func.stack_module_state would. forward runs any module through
    vmap(functional_call), so any layer, activation or depth works; buffers (if any) are stacked too and
    read, not updated (a module that writes a buffer in forward, e.g. BatchNorm in training mode, does
    not vmap). loss_and_grad takes a per-run loss of the stacked outputs and lets autograd fill `grad`.

    One shortcut, for speed only: an nn.Sequential of nn.Linear and elementwise activations (every
    network of the study) runs as a chain of batched matmuls in feature-major layout [K, features, rows]
    instead, the same function of the same parameters. Autograd's gradients of those matmuls then
    run over the long rows axis, which MKL does 1.3-1.6x faster for these skinny layers than vmap's
    layout (benchmarks/bench_batched.py --kernels); tests hold both paths to per-run autograd.
    """

    def __init__(self, networks: Sequence[nn.Module], dtype: torch.dtype, device: torch.device) -> None:
        if not networks:
            raise ValueError("StackedModel needs at least one network")
        layouts = [[(name, tuple(p.shape)) for name, p in net.named_parameters()] for net in networks]
        if any(layout != layouts[0] for layout in layouts):
            raise ValueError("all stacked networks must have the same parameter names and shapes")
        self.n_runs, self.layout = len(networks), layouts[0]
        self.params = torch.empty(self.n_runs * sum(math.prod(shape) for _, shape in self.layout),
                                  dtype=dtype, device=device)
        self.grad = torch.zeros_like(self.params)
        self.tensors, self.grads = self.blocks(self.params), self.blocks(self.grad)
        _, buffers = stack_module_state(list(networks))
        self.buffers = {name: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
                        for name, value in buffers.items()}
        for k, network in enumerate(networks):
            self.load_run(k, network)
        self.template = copy.deepcopy(networks[0]).to("meta")  # the architecture, no storage
        self.blueprint = copy.deepcopy(networks[0])  # what to_modules copies by default
        self.batched_forward = vmap(self.forward_one)
        self.chain = linear_chain(self.template)

    def forward_one(self, params: dict, buffers: dict, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (inputs,))

    def blocks(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-parameter blocks [K, *shape] of a flat tensor (views: they follow in-place updates)."""
        blocks, offset = {}, 0
        for name, shape in self.layout:
            size = self.n_runs * math.prod(shape)
            blocks[name] = flat[offset:offset + size].view(self.n_runs, *shape)
            offset += size
        return blocks

    def rows_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The blocks of a flat tensor as [K, n] views, row k = run k (for one learning rate per run)."""
        return [block.view(self.n_runs, -1) for block in self.blocks(flat).values()]

    @torch.no_grad()
    def load_run(self, k: int, network: nn.Module) -> None:
        """Copy a network's parameters into run k's slice (at construction, and to restart one run)."""
        named = dict(network.named_parameters())
        if [(name, tuple(p.shape)) for name, p in named.items()] != self.layout:
            raise ValueError("the network's parameter names and shapes differ from the stacked networks'")
        for name, block in self.tensors.items():
            block[k].copy_(named[name])

    def forward(self, inputs: torch.Tensor, tensors: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """inputs [K, rows, ...] -> outputs [K, rows, ...]: run k's module on inputs[k]."""
        tensors = self.tensors if tensors is None else tensors
        if self.chain is not None and inputs.dim() == 3:
            return self.chain_forward(tensors, inputs)
        return self.batched_forward(tensors, self.buffers, inputs)

    def chain_forward(self, tensors: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The Linear/activation chain on inputs [K, rows, in], as W h + b on features-by-rows blocks."""
        hidden_t = inputs.transpose(1, 2)  # [K, features, rows]
        for name, layer in self.chain:
            if isinstance(layer, nn.Linear):
                weight, bias = tensors[f"{name}.weight"], tensors.get(f"{name}.bias")
                hidden_t = torch.bmm(weight, hidden_t) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight,
                                                                                         hidden_t)
            else:
                hidden_t = layer(hidden_t)  # elementwise: the layout does not matter
        return hidden_t.transpose(1, 2)

    def loss_and_grad(self, per_run_loss: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                      with_grad: bool = True) -> torch.Tensor:
        """per_run_loss(outputs [K, ...]) -> losses [K]; with_grad also writes d(loss_k)/d(run k's params)
        into self.grad, by autograd on the sum of the losses (runs never mix, so that is each run's own
        gradient). Returns the losses, detached."""
        if not with_grad:
            with torch.no_grad():
                return per_run_loss(self.forward(inputs))
        leaves = {name: block.detach().requires_grad_() for name, block in self.tensors.items()}
        with torch.enable_grad():
            loss = per_run_loss(self.forward(inputs, leaves))
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()), materialize_grads=True)
        with torch.no_grad():
            for block, grad in zip(self.grads.values(), grads):
                block.copy_(grad)
        return loss.detach()

    def to_modules(self, make_network: Callable[[], nn.Module] | None = None) -> list[nn.Module]:
        """Each run's parameters in a fresh network from make_network() (default: a copy of the first
        network given). The global RNG that make_network's default initialisation draws from is left as
        it was."""
        networks = []
        for k in range(self.n_runs):
            with rlr_core.global_rng_preserved():
                network = (make_network or (lambda: copy.deepcopy(self.blueprint)))().to(dtype=self.params.dtype, device=self.params.device)
            named = dict(network.named_parameters())
            with torch.no_grad():
                for name, block in self.tensors.items():
                    named[name].copy_(block[k])
            networks.append(network)
        return networks


ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Identity)
"""Activation modules that act on each entry alone, so that they apply in any layout."""


def linear_chain(network: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(name, layer) of an nn.Sequential made only of nn.Linear and ELEMENTWISE layers (StackedModel's
    shortcut); None for any other module (a subclass with its own forward included), which then runs
    through vmap."""
    if not isinstance(network, nn.Sequential) or type(network).forward is not nn.Sequential.forward:
        return None
    layers = list(network.named_children())
    if not layers or not all(isinstance(layer, (nn.Linear, *ELEMENTWISE)) for _, layer in layers):
        return None
    return layers


def per_run_mse(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-run loss of the polynomial task: F.mse_loss of each run's outputs against its targets
    (mean over rows x outputs, as rlr_core.full_batch_loss), as a function of the stacked outputs."""
    return lambda outputs: (outputs - targets).square().mean(dim=tuple(range(1, outputs.dim())))


def mse_loss_and_grad(net: StackedModel, inputs: torch.Tensor, targets: torch.Tensor,
                      with_grad: bool = True) -> torch.Tensor:
    """Per-run MSE [K] of the stacked models on inputs [K, rows, in]; with_grad also fills net.grad."""
    return net.loss_and_grad(per_run_mse(targets), inputs, with_grad)


class BatchedAdam:
    """Adam for K runs whose parameters share one flat tensor; one learning rate per run if asked.

    Runs torch.optim.adam.adam, the functional form of torch.optim.Adam, with its fused kernel (what
    rlr_core.make_adam uses; defaults: no weight decay, no amsgrad) on the flat tensor, so with one
    learning rate for all runs every parameter gets exactly torch.optim.Adam's update. With a learning
    rate per run, the kernel runs at lr = 1 on a zeroed buffer, which yields the unit step
    -m_hat / (sqrt(v_hat) + eps); each run's parameters then move by its own lr times that. rows_of(flat)
    gives the [K, n] blocks (row k = run k) that make up the flat layout, e.g. StackedModel.rows_of.
    """

    def __init__(self, params: torch.Tensor,
                 rows_of: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.betas, self.eps = params, betas, eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.step_count = torch.zeros((), dtype=torch.float32, device=params.device)  # as torch's fused Adam
        self.unit_step = torch.zeros_like(params) if rows_of is not None else None
        self.rows = list(zip(rows_of(params), rows_of(self.unit_step))) if rows_of is not None else None
        self.rows_of = rows_of
        self.run_steps: list[torch.Tensor] | None = None  # one step count per run and block, once a run restarts

    def adam(self, target: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """torch's Adam step on target (the parameters, or the zeroed unit-step buffer); the function
        counts the step itself."""
        if self.run_steps is None:
            tensors = [[target], [grad], [self.exp_avg], [self.exp_avg_sq]]
            steps = [self.step_count]
        else:  # each run's rows as tensors of their own, each with its own step count
            tensors = [self.run_rows(flat) for flat in (target, grad, self.exp_avg, self.exp_avg_sq)]
            steps = self.run_steps
        functional_adam(*tensors, [], steps, fused=True, amsgrad=False, beta1=self.betas[0],
                        beta2=self.betas[1], lr=lr, weight_decay=0.0, eps=self.eps, maximize=False)

    def run_rows(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """flat's blocks cut into one row per run, run by run (views made once per buffer: this is on
        every step's path, and making them costs far more than the kernel). Keyed by address: the cached
        views keep their buffer alive, so no other tensor can take that address meanwhile."""
        key = flat.data_ptr()
        if key not in self.row_views:
            n_runs = self.rows_of(flat)[0].shape[0]
            self.row_views[key] = [block[k] for k in range(n_runs) for block in self.rows_of(flat)]
        return self.row_views[key]

    @torch.no_grad()
    def restart_run(self, k: int) -> None:
        """Run k starts afresh (zero moments, step count 0), the others go on: from then on each run keeps
        its own step count, as K separate torch.optim.Adam would (needs rows_of)."""
        if self.rows_of is None:
            raise ValueError("restarting a run needs rows_of (where each run's parameters are)")
        n_runs, n_blocks = self.rows_of(self.params)[0].shape[0], len(self.rows_of(self.params))
        if self.run_steps is None:
            self.run_steps = [self.step_count.clone() for _ in range(n_runs * n_blocks)]
            self.row_views: dict[int, list[torch.Tensor]] = {}
        for flat in (self.exp_avg, self.exp_avg_sq):
            for block in self.rows_of(flat):
                block[k].zero_()
        for count in self.run_steps[k * n_blocks:(k + 1) * n_blocks]:
            count.zero_()

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float | torch.Tensor) -> float | torch.Tensor:
        """One Adam step; lr is one float for every run or a tensor [K] (one learning rate per run).
        Returns the learning rate the step used (BatchedAdamHD moves it first)."""
        if isinstance(lr, torch.Tensor):
            if self.rows is None:
                raise ValueError("a learning rate per run needs rows_of (where each run's parameters are)")
            self.adam(self.unit_step.zero_(), grad, 1.0)
            lr_column = lr.to(self.params.dtype).unsqueeze(1)
            for param_rows, unit_rows in self.rows:  # a few blocks (2 per layer), not a loop over runs
                param_rows.addcmul_(unit_rows, lr_column)
        else:
            self.adam(self.params, grad, lr)
        return lr


class BatchedAdamHD(BatchedAdam):
    """rlr_engine.AdamHD (Adam with hypergradient descent on its lr) for K runs, one beta per run.

    Before each step, lr <- max(0, lr + beta <g_t, u_{t-1}>) per run (rlr_engine.hypergradient_step), where u_{t-1} is the previous
    Adam direction m_hat / (sqrt(v_hat) + eps). BatchedAdam's per-run-lr path already holds it, negated,
    in unit_step, so the hypergradient costs one product and a sum per block. The reference gets u as
    (parameter change) / lr (in float32 that difference loses digits; the unit step does not) and sets
    it to zero after a step at lr 0 (the lr then stays 0); here a mask does the same. A run with beta 0
    is plain Adam.
    """

    def __init__(self, params: torch.Tensor, rows_of: Callable[[torch.Tensor], list[torch.Tensor]],
                 hypergradient_lr: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, rows_of, betas, eps)
        self.hypergradient_lr = hypergradient_lr  # [K], float64
        self.grad_times_unit_step = torch.zeros_like(params)
        self.product_rows = rows_of(self.grad_times_unit_step)
        self.last_lr: torch.Tensor | None = None  # the lr of the previous step: None before the first

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """Move each run's lr [K] by its hypergradient, take the Adam step with it, return it."""
        if self.last_lr is not None:
            torch.mul(grad, self.unit_step, out=self.grad_times_unit_step)
            grad_dot_direction = -sum(block.sum(dim=1) for block in self.product_rows)  # <g_t, u_{t-1}>
            grad_dot_direction = torch.where(self.last_lr > 0, grad_dot_direction.double(), 0.0)
            lr = hypergradient_step(lr, self.hypergradient_lr, grad_dot_direction)
        super().step(grad, lr)
        self.last_lr = lr
        return lr


# ---------------------------------------------------------------------------------------------------
# Setup: the reference's own functions build each member; then everything is stacked
# ---------------------------------------------------------------------------------------------------


def member_configs(config: Config, seeds: Sequence[int]) -> list[Config]:
    """One Config per member: `config` with its seed replaced (config.seed itself is not used)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one run")
    return [config.with_seed(seed) for seed in seeds]


def stack_members(configs: list[Config]) -> tuple[list[rlr_core.RunSeeds], torch.dtype, torch.device,
                                                  torch.Tensor, torch.Tensor, StackedModel]:
    """Seeds, dtype, device, inputs [K, n, points], targets [K, n, coefficients] and the K MaclaurinNets."""
    prepared = [check_run(member) for member in configs]
    run_seeds = [seeds for seeds, _, _ in prepared]
    _, dtype, device = prepared[0]
    task = configs[0].task
    data = [rlr_core.make_polynomial_dataset(task, seeds.data, dtype=dtype, device=device)
            for seeds in run_seeds]
    models = [rlr_core.make_model(task, seeds.init, dtype, device) for seeds in run_seeds]
    inputs = torch.stack([d.inputs for d in data])
    targets = torch.stack([d.targets for d in data])
    return run_seeds, dtype, device, inputs, targets, StackedModel(models, dtype, device)


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
    run_seeds, dtype, device, inputs, targets, net = stack_members(configs)
    n_runs, n_examples = inputs.shape[:2]
    batch_size, epochs = config.baseline.batch_size, config.baseline.epochs
    inputs_by_row, targets_by_row = inputs.flatten(0, 1), targets.flatten(0, 1)
    shuffles = [torch.Generator().manual_seed(seeds.shuffle) for seeds in run_seeds]
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
            losses[epoch] = mse_loss_and_grad(net, inputs, targets, with_grad=False)
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


class PlateauPerRun:
    """torch.optim.lr_scheduler.ReduceLROnPlateau for K runs, each stepped with its own loss.

    torch's scheduler keeps best, num_bad_epochs and cooldown_counter as Python numbers of one run, so
    rather than rewrite its rules for a run axis, each run gets its own torch scheduler on a stand-in
    optimiser whose lr is written before and read after every step. This costs a loop over runs and
    one host sync per step (the losses as Python floats, as the reference's loss.item()), negligible
    beside a step for the K of the study. torch validates the options (unknown ones raise TypeError).
    """

    def __init__(self, lrs: Sequence[float], options: dict) -> None:
        if not isinstance(options, dict):
            raise TypeError(f"plateau must be a dict of ReduceLROnPlateau options or None, "
                            f"got {type(options).__name__}")
        self.stand_ins = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr) for lr in lrs]
        try:
            self.schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(stand_in, **options)
                               for stand_in in self.stand_ins]
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
                     plateau: dict | None = None) -> list[RunResult]:
    """rlr_engine.train_full_batch for every seed: full-batch Adam under a given learning-rate schedule.

    lr: one number (then steps is required), a schedule [steps] shared by all runs, or one schedule per
    run [K, steps] (a learning-rate sweep is one call). Logs loss and lr per step, as the reference.
    Two rules that move the lr from what the run sees, each starting from lr (then one number):
    hypergradient_lr: Adam-HD's beta, one number or one per run (a beta x seed sweep is one call), as
    rlr_engine.AdamHD; 0 (the default) is plain Adam. plateau: ReduceLROnPlateau's options (dict),
    stepped with each run's full-data loss after every step, as the reference with
    make_scheduler=ReduceLROnPlateau. Both together: Adam-HD moves the lr, the plateau rule cuts it.
    """
    configs = member_configs(config, seeds)
    n_runs = len(configs)
    betas = hypergradient_lrs(hypergradient_lr, n_runs)
    adapts_lr = betas.any() or plateau is not None
    if adapts_lr and np.ndim(lr.cpu() if isinstance(lr, torch.Tensor) else lr) != 0:
        raise ValueError("with hypergradient_lr or plateau, lr must be one number: every run's starting lr")
    lrs = lr_table(lr, n_runs, steps)
    steps = lrs.shape[1]
    scheduler = PlateauPerRun(lrs[:, 0], plateau) if plateau is not None else None  # torch checks the options
    _, dtype, device, inputs, targets, net = stack_members(configs)
    lrs_by_step = torch.from_numpy(lrs.T.copy()).to(device)  # [steps, K], float64 like the reference's lr
    if betas.any():
        optimizer = BatchedAdamHD(net.params, net.rows_of, torch.from_numpy(betas).to(device))
    else:
        optimizer = BatchedAdam(net.params, net.rows_of)
    losses = torch.empty(steps, n_runs, dtype=dtype, device=device)
    used_lrs = torch.empty(steps, n_runs, dtype=torch.float64, device=device)
    started = time.perf_counter()
    with torch.no_grad(), progress_bar(steps, f"{method} x{n_runs}", progress) as bar:
        mse_loss_and_grad(net, inputs, targets)  # gradient of L_0
        lr_now = lrs_by_step[0]
        for step in range(steps):
            if not adapts_lr:
                lr_now = lrs_by_step[step]
            lr_now = optimizer.step(net.grad, lr_now)  # Adam-HD moves each run's lr first
            used_lrs[step] = lr_now
            losses[step] = mse_loss_and_grad(net, inputs, targets, with_grad=step < steps - 1)
            if scheduler is not None:
                lr_now = scheduler.step(losses[step], lr_now)  # the lr of the next step
            bar.update()
    wall_seconds = time.perf_counter() - started
    series = {"loss": losses.cpu().double().numpy(), "lr": used_lrs.cpu().numpy()}
    return per_member_results(method, configs, series, ~np.isfinite(series["loss"]), wall_seconds,
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
    actions (epsilon 0), no replay, no updates, method f"rl_{variant}_frozen", as the reference's.
    Each result's policy_state holds its policy network's final weights.
    """
    configs = member_configs(config, seeds)
    if not isinstance(frozen, bool):
        raise TypeError(f"frozen must be a bool, got {type(frozen).__name__}")
    if config.schedule.decision_interval != 1 or config.schedule.features == "control":
        raise ValueError("schedule.decision_interval > 1 and features='control' run on the reference loop "
                         "(rlr_engine.train_rl_scheduled) and LRControlEnv; the batched engine decides every step")
    check_initial_policies(initial_policies, len(configs))
    run_seeds, dtype, device, inputs, targets, net = stack_members(configs)
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
        loss = mse_loss_and_grad(net, inputs, targets)  # L_0 and its gradient
        initial_loss = loss.clone()
        state = rlr_core.acting_state(state_of(loss, None, lr), variant)  # s_0
        for step in range(steps):
            action, logged["q_values"][step] = agents.act(state, step)
            lr_index, lr = rlr_core.next_lr(lr_index, lr, action, schedule)
            logged["action"][step], logged["lr_index"][step], logged["lr"][step] = action, lr_index, lr
            optimizer.step(net.grad, lr)  # Adam step on L_t, then L_{t+1} and its gradient (for the next step)
            next_loss = logged["loss"][step] = mse_loss_and_grad(net, inputs, targets, with_grad=step < steps - 1)
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
    method = f"rl_{dqn.variant}" + ("_frozen" if agents.frozen else "")
    return per_member_results(method, configs, {name: series[name] for name in order}, bad, wall_seconds,
                              net.to_modules(), agents.policy_states())
