"""K copies of any small nn.Module, and K Adam states, as single tensors: the batched engine's layer.

rlr_batched's training loops and rlr_env's vector environment run K independent runs through these.
Nothing here re-implements what torch does: the K models are torch.func.stack_module_state and
vmap(functional_call) (or, for a chain of Linear layers and elementwise activations, one baddbmm per
layer in feature-major layout, the same arithmetic faster); gradients come from autograd over the
stacked parameters (no op mixes runs, so the gradient of the summed per-run losses is each run's own);
Adam is torch.optim.adam.adam, the functional form of torch.optim.Adam, with its fused kernel.
tests/test_batched.py holds every piece to per-run autograd and torch.optim.Adam, on models the
engine's own runs never use (other activations and depths, a 1-D convolution, cross-entropy).
"""

from __future__ import annotations

import copy
import ctypes
import math
import sys
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adam import adam as functional_adam

import rlr_core
from rlr_engine import hypergradient_step

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
