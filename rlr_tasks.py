"""The study's tasks for the batched engine and the environments, and MNIST-1D (Greydanus 2020), the second task:
data per seed, the paper's two models, a reference training loop, its batched form and the metrics.

A task is data + model + loss + metrics, given as one object that the vector environment
(rlr_env.LRControlVectorEnv), the registry's families (rlr_methods.Method.run_pool) and the controllers'
training take: rlr_batched.PolynomialTask (the original's MaclaurinNet on full-batch MSE) and MNIST1DTask here
(the paper's MLP or CNN on mini-batch cross-entropy). Its `runs(seeds)` stacks K runs as rlr_batched.BatchedRuns
(rlr_batched.PolynomialRuns, MNIST1DRuns): their losses and gradients in one pass, their validation losses, a
run restarted on a new seed; its `train` and `train_own_optimizers` run K runs of a family at once. Each task
also says what its training loss reads as at a controller's decision (loss_reading) and which seeds it takes.

MNIST-1D is a procedurally generated 10-class problem of 40-sample 1-D signals, small enough to train
in seconds on a CPU yet far from solved by a linear model (the paper: ~68% test accuracy for its MLP,
~94% for its CNN). The data come from the `mnist1d` package's generator (`make_dataset`), never from its
download (`get_dataset` fetches and unpickles a file). A task seed is the generator's seed, so each
seed is a fresh data set of the same distribution; seed 42 is the package's default data set.

    splits = mnist1d_data(seed=0)                                # train 3000, validation 1000, test 1000
    result = train_mnist1d(0, MNIST1DConfig(), lr=1e-3)          # rlr_results.RunResult
    accuracy(result.model, splits.test.x, splits.test.y)
    results = train_mnist1d_batched(range(8), MNIST1DConfig(), lrs)   # lrs [8, steps]: 8 runs at once
    runs = MNIST1DTask().runs([0, 1]); runs.loss_and_grad()     # the environment's side: K runs, one pass

A run of seed s draws its data (seed s), initial weights (rlr_core.derive_seeds(s).init) and batch
order (derive_seeds(s).shuffle) from separate streams, as the polynomial task's runs do. Nothing here
touches global state: the generator seeds numpy's and random's global RNGs, so every call of it runs
inside rlr_config.global_rng_preserved (which puts torch's, numpy's and random's states back).

Read top to bottom: models (first: the config checks against their registry) -> config -> data ->
mini-batches -> the reference loop -> both tasks' stacked runs and the tasks -> the batched loop -> metrics.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import rlr_core
from rlr_config import (DTYPES, check_device, check_int, check_seed, check_seeds, check_sequence,
                        global_rng_preserved)
from rlr_results import RunResult
from rlr_batched import (OwnOptimizers, PlateauPerRun, PolynomialTask, check_factories, hypergradient_lrs,
                         rule_starts)
from rlr_stacked import BatchedAdam, BatchedAdamHD, StackedModel

N_FEATURES = 40
"""samples per signal (the generator's final_seq_length)"""
N_CLASSES = 10
"""digits 0-9"""
GENERATED_TRAIN = 4000
"""training examples the generator makes (num_samples 5000, train_split 0.8); the rest, 1000, are its test set"""
GENERATED_TEST = 1000
"""test examples the generator makes"""
DRAW_CHUNK = 250
"""steps of mini-batch indices the batched loop draws per run at a time (bounds their memory)"""


# ---------------------------------------------------------------------------------------------------
# Models: the paper's MLP and CNN (github.com/greydanus/mnist1d, notebooks/models.py), in a registry
# ---------------------------------------------------------------------------------------------------


class ResidualMLP(nn.Module):
    """The paper's MLPBase: h = relu(W1 x + b1); h = h + relu(Wi h + bi) for each further hidden layer;
    logits = Wout h + bout. 40-100-100-10 has 15,210 parameters. Layers are built in the paper's order,
    so a seed gives the initial weights the paper's class gets after torch.manual_seed(seed)."""

    def __init__(self, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.input = nn.Linear(N_FEATURES, hidden_sizes[0])
        self.hidden = nn.ModuleList(nn.Linear(width, width) for width in hidden_sizes[1:])
        self.output = nn.Linear(hidden_sizes[-1], N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.input(x))
        for layer in self.hidden:
            h = h + F.relu(layer(h))
        return self.output(h)


def conv_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of nn.Conv1d (dilation 1), from torch's documented formula."""
    return (length + 2 * padding - kernel_size) // stride + 1


class ConvNet(nn.Module):
    """The paper's ConvBase: three Conv1d (kernel 5 then 3 and 3, stride 2, padding 1) each with ReLU
    (lengths 40 -> 19 -> 10 -> 5), flattened, then Linear to the 10 logits. With 25 channels it has
    5,210 parameters (150 + 1,900 + 1,900 + 1,260). Takes x [..., 40] like the MLP (a channel axis is
    added inside), so both models share the data and the loops."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        length = N_FEATURES
        for conv in (self.conv1, self.conv2, self.conv3):
            length = conv_length(length, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        self.linear = nn.Linear(channels * length, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(-2)  # [rows, 1, 40]: one input channel
        for conv in (self.conv1, self.conv2, self.conv3):
            h = F.relu(conv(h))
        return self.linear(h.flatten(-2))


def mlp_model(config: MNIST1DConfig) -> nn.Module:
    """'mlp': ResidualMLP, or with residual=False the plain Linear-ReLU chain (an nn.Sequential, which
    rlr_stacked.StackedModel runs on its faster batched-matmul path)."""
    if config.residual:
        return ResidualMLP(config.hidden_sizes)
    return rlr_core.mlp([N_FEATURES, *config.hidden_sizes, N_CLASSES])


MODELS: dict[str, Callable[[MNIST1DConfig], nn.Module]] = {
    "mlp": mlp_model,
    "cnn": lambda config: ConvNet(config.channels),
}
"""The models by config.model: one entry per architecture, the one table the code dispatches on."""


def make_mnist1d_model(config: MNIST1DConfig, seed: int, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> nn.Module:
    """config.model with PyTorch's default initialisation drawn from `seed` (rlr_core.seeded_init: the
    caller's global RNG is left as it was)."""
    config, dtype = check_config(config), check_dtype(dtype)
    return rlr_core.seeded_init(seed, lambda: MODELS[config.model](config)).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass
class MNIST1DConfig:
    """One MNIST-1D run: how the generator's data are split, which of the paper's models, how long."""

    n_validation: int = 1000
    """examples held out of the generator's 4000 training examples for tuning: the last n_validation
    (the generator shuffles before it splits, so they are a uniform draw); training uses the first
    4000 - n_validation. 0 is the paper's setting (all 4000 train, no validation split)"""
    model: str = "mlp"
    """a key of MODELS: 'mlp' (the paper's MLPBase) or 'cnn' (its ConvBase)"""
    hidden_sizes: tuple[int, ...] = (100, 100)
    """mlp: widths of the hidden layers (the paper: 100, 100)"""
    residual: bool = True
    """mlp: each hidden layer after the first adds its input to its output, h + relu(W h + b), as the
    paper's MLPBase does (needs equal widths); False: a plain Linear-ReLU chain"""
    channels: int = 25
    """cnn: output channels of each of the three convolutions (the paper: 25)"""
    batch_size: int = 100
    """examples per mini-batch (the paper: 100)"""
    steps: int = 6000
    """Adam steps of one run (the paper's reference runs: 6000, i.e. 200 epochs of 3000 examples here)"""

    def __post_init__(self) -> None:
        check_int("mnist1d.n_validation", self.n_validation, 0)
        if self.n_validation >= GENERATED_TRAIN:
            raise ValueError(f"mnist1d.n_validation must be in [0, {GENERATED_TRAIN - 1}] (some training "
                             f"examples must remain), got {self.n_validation}")
        if not isinstance(self.model, str) or self.model not in MODELS:
            raise ValueError(f"mnist1d.model must be one of {tuple(MODELS)}, got {self.model!r}")
        self.hidden_sizes = check_sequence("mnist1d.hidden_sizes", self.hidden_sizes)
        if len(self.hidden_sizes) == 0:
            raise ValueError("mnist1d.hidden_sizes must name at least one hidden layer")
        for i, width in enumerate(self.hidden_sizes):
            check_int(f"mnist1d.hidden_sizes[{i}]", width, 1)
        if not isinstance(self.residual, bool):
            raise TypeError(f"mnist1d.residual must be a bool, got {type(self.residual).__name__}")
        if self.residual and len(set(self.hidden_sizes)) > 1:
            raise ValueError(f"mnist1d.hidden_sizes must be equal widths when mnist1d.residual is True "
                             f"(h + relu(W h + b) keeps the width), got {self.hidden_sizes}")
        check_int("mnist1d.channels", self.channels, 1)
        check_int("mnist1d.batch_size", self.batch_size, 1)
        check_int("mnist1d.steps", self.steps, 1)

    @property
    def n_train(self) -> int:
        """examples the model trains on"""
        return GENERATED_TRAIN - self.n_validation


def check_config(config: Any) -> MNIST1DConfig:
    """config, checked again (a dataclass can be changed after construction): raises naming the field."""
    if not isinstance(config, MNIST1DConfig):
        raise TypeError(f"config must be an MNIST1DConfig, got {type(config).__name__}")
    return MNIST1DConfig(**asdict(config))


def check_dtype(dtype: Any) -> torch.dtype:
    """dtype as one of the study's float dtypes (float32, float64); TypeError otherwise."""
    if dtype not in DTYPES.values():
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


DATA_SEED_BOUND = 2**32
"""MNIST-1D task seeds lie in [0, DATA_SEED_BOUND): the generator seeds numpy's global RNG, which takes 32 bits"""


def check_data_seed(seed: Any, name: str = "seed") -> int:
    """A task seed: an int in [0, DATA_SEED_BOUND), the range numpy's global seed (which the generator sets) takes."""
    seed = check_seed(name, seed)
    if seed >= DATA_SEED_BOUND:
        raise ValueError(f"{name} must be < 2**32 (it seeds numpy's generator), got {seed}")
    return seed


# ---------------------------------------------------------------------------------------------------
# Data: the generator's data set of a seed, split into train / validation / test
# ---------------------------------------------------------------------------------------------------


class Split(NamedTuple):
    """One split: inputs x [n, 40] (float) and labels y [n] (int64, 0-9)."""

    x: torch.Tensor
    y: torch.Tensor


class MNIST1DSplits(NamedTuple):
    """The three splits of one task seed. Disjoint: train and validation are the two parts of the
    generator's training set, test is its test set, all from one generated data set of 5000 examples."""

    train: Split
    validation: Split
    test: Split


@functools.lru_cache(maxsize=16)
def generated_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, x_test, y_test of mnist1d's make_dataset with args.seed = seed (read-only arrays).

    Memoised because the generator takes ~2 s a seed and a study builds the same seeds for several
    methods; the arrays are read-only so no caller can change what the next one gets. The package is
    imported here, not at the top: it imports matplotlib.pyplot, which `import rlr_tasks` need not pay.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    with global_rng_preserved():  # make_dataset calls random.seed and np.random.seed
        dataset = make_dataset(args)
    arrays = tuple(np.array(dataset[key]) for key in ("x", "y", "x_test", "y_test"))
    expected = [(GENERATED_TRAIN, N_FEATURES), (GENERATED_TRAIN,), (GENERATED_TEST, N_FEATURES), (GENERATED_TEST,)]
    if [array.shape for array in arrays] != expected:
        raise RuntimeError(f"mnist1d's generator gave shapes {[a.shape for a in arrays]}, expected {expected}: "
                           "the package changed (requirements.txt pins the version this module expects)")
    for array in arrays:
        array.setflags(write=False)
    return arrays


def mnist1d_data(seed: int, config: MNIST1DConfig = MNIST1DConfig(), dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> MNIST1DSplits:
    """The train / validation / test splits of task seed `seed`: float inputs [n, 40], int64 labels [n].

    Built offline by the generator (no download), bit-identical in every process, the caller's RNG
    untouched. The generator works in float64 (float32 inputs are its values rounded once) and
    standardises the whole data set (mean 0, std 1 over all 5000 x 40 values), so the inputs need no
    further scaling.
    """
    seed = check_data_seed(seed)
    config, dtype = check_config(config), check_dtype(dtype)
    device = check_device(str(device))
    x, y, x_test, y_test = generated_arrays(seed)
    n_train = config.n_train

    def split(inputs: np.ndarray, labels: np.ndarray) -> Split:
        return Split(torch.tensor(inputs, dtype=dtype, device=device),
                     torch.tensor(labels, dtype=torch.int64, device=device))

    return MNIST1DSplits(split(x[:n_train], y[:n_train]), split(x[n_train:], y[n_train:]), split(x_test, y_test))


# ---------------------------------------------------------------------------------------------------
# Mini-batches: one seeded stream of example indices per run
# ---------------------------------------------------------------------------------------------------


class MiniBatches:
    """The order in which a run visits its n training examples: a fresh torch.randperm(n, generator) per
    epoch, the permutations laid end to end and cut into batches of batch_size.

    Every batch is full (a batch may straddle two epochs), so K runs' batches stack into one tensor, and
    every example is seen once per epoch. next(n_steps) continues the stream: drawing it in chunks gives
    the same batches as drawing it at once (the batched loop draws chunks, the reference all of it).
    """

    def __init__(self, n_examples: int, batch_size: int, generator: torch.Generator) -> None:
        check_int("n_examples", n_examples, 1)
        check_int("batch_size", batch_size, 1)
        self.n_examples, self.batch_size, self.generator = n_examples, batch_size, generator
        self.pending = torch.empty(0, dtype=torch.int64)

    def next(self, n_steps: int) -> torch.Tensor:
        """Example indices of the next n_steps batches, [n_steps, batch_size] (int64, on the CPU)."""
        check_int("n_steps", n_steps, 1)
        needed = n_steps * self.batch_size
        parts, available = [self.pending], len(self.pending)
        while available < needed:
            parts.append(torch.randperm(self.n_examples, generator=self.generator))
            available += self.n_examples
        stream = torch.cat(parts)
        self.pending = stream[needed:]
        return stream[:needed].view(n_steps, self.batch_size)


# ---------------------------------------------------------------------------------------------------
# The reference loop (one run, readable) and the batched loop (K runs at once)
# ---------------------------------------------------------------------------------------------------


def lr_table(lr: Any, n_runs: int, steps: int, name: str = "lr") -> np.ndarray:
    """Learning rates [n_runs, steps] (float64) from one number, a schedule [steps] or one schedule per
    run [n_runs, steps]; each finite and >= 0 (a schedule may reach 0). Raises naming `name`."""
    if isinstance(lr, bool) or isinstance(lr, (str, bytes)):
        raise TypeError(f"{name} must be a number or an array of learning rates, got {type(lr).__name__}")
    try:
        table = np.asarray(lr.detach().cpu() if isinstance(lr, torch.Tensor) else lr, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a number or an array of learning rates, got {type(lr).__name__}") from error
    if table.ndim == 0:
        table = np.full(steps, float(table))
    if table.ndim == 1:
        table = np.broadcast_to(table, (n_runs, len(table)))
    if table.shape != (n_runs, steps):
        raise ValueError(f"{name} must be a number, a schedule [{steps}] or one per run [{n_runs}, {steps}] "
                         f"(steps = config.steps), got shape {table.shape}")
    if not (np.isfinite(table).all() and (table >= 0).all()):
        raise ValueError(f"{name} must be finite and >= 0 (every learning rate in it)")
    return np.ascontiguousarray(table)


def run_config(seed: int, config: MNIST1DConfig, dtype: torch.dtype, device: torch.device) -> dict:
    """The config a RunResult records: the task, the seed (RunResult.seed reads it) and the fields."""
    return {"task": "mnist1d", "seed": seed, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
            "mnist1d": asdict(config)}


class RunSetup(NamedTuple):
    """What a run of one seed starts from: the checked inputs, its data, initial model and batch stream."""

    config: MNIST1DConfig
    dtype: torch.dtype
    device: torch.device
    splits: MNIST1DSplits
    model: nn.Module
    batches: MiniBatches


def setup_run(seed: int, config: MNIST1DConfig, dtype: torch.dtype, device: str | torch.device) -> RunSetup:
    """The start of seed's run, the same for every method (and for the reference and batched loops):
    data of seed, weights of derive_seeds(seed).init, batch order of derive_seeds(seed).shuffle."""
    seed, config, dtype = check_data_seed(seed), check_config(config), check_dtype(dtype)
    device = check_device(str(device))
    run_seeds = rlr_core.derive_seeds(seed)
    splits = mnist1d_data(seed, config, dtype, device)
    model = make_mnist1d_model(config, run_seeds.init, dtype, device)
    batches = MiniBatches(config.n_train, config.batch_size, torch.Generator().manual_seed(run_seeds.shuffle))
    return RunSetup(config, dtype, device, splits, model, batches)


CONTROLLERS = (rlr_core.PolicyScheduler, rlr_core.RLRScheduler)
"""Schedulers stepped with the loss before the step they set the lr of (train_mnist1d)."""


def reads_validation(controller: Any) -> bool:
    """Whether a controller's state reads the validation loss (schedule.features == 'validation')."""
    return getattr(getattr(controller, "schedule", None), "features", None) == "validation"


def deciding_on_validation(controller: Any) -> bool:
    """Whether the controller's next step(...) is a decision that reads the validation loss: the loops then
    score the validation split (its mean cross-entropy) at the current weights, and only then."""
    return (reads_validation(controller) and controller.last_epoch < controller.schedule.steps
            and rlr_core.is_decision_step(controller.last_epoch, controller.schedule))


def step_controller(controller: Any, loss: float, model: nn.Module, validation: Split) -> bool:
    """The reference loop's controller step: it reads L_t (and, at its decisions where its state reads it, the
    validation cross-entropy V_t), then sets the lr of step t. False (nothing stepped) when V_t is non-finite:
    the run has diverged there."""
    value = cross_entropy(model, *validation) if deciding_on_validation(controller) else None
    if value is not None and not math.isfinite(value):
        return False
    controller.step(loss, value) if value is not None else controller.step(loss)
    return True


def check_run_options(lr: Any, make_scheduler: Any, method: Any) -> bool:
    """train_mnist1d's options checked before any work; returns whether lr is one number (a constant)."""
    constant = np.ndim(lr) == 0 and not isinstance(lr, (str, bytes))
    if make_scheduler is not None and not callable(make_scheduler):
        raise TypeError(f"make_scheduler must be callable(optimizer) or None, got {type(make_scheduler).__name__}")
    if make_scheduler is not None and not constant:
        raise ValueError("with make_scheduler, lr must be one number (the scheduler's starting lr)")
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string (the result's name), got {method!r}")
    return constant


def train_mnist1d(seed: int, config: MNIST1DConfig = MNIST1DConfig(), lr: Any = 1e-3, *,
                  make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                  make_optimizer: Callable[[Any, float], torch.optim.Optimizer] = rlr_core.make_adam,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  method: str = "mnist1d_adam") -> RunResult:
    """One MNIST-1D run: Adam (make_optimizer(params, lr)) on config.steps mini-batches of seed's data.

    lr: one number (constant, or the start of make_scheduler(optimizer), a torch.optim.lr_scheduler
    stepped after every step; ReduceLROnPlateau gets the mini-batch loss) or a schedule [steps] written
    into the optimiser before each step. A controller stepped with the loss (CONTROLLERS: a frozen learned
    controller's rlr_core.PolicyScheduler, or rlr_core.RLRScheduler) sees each mini-batch loss before the step
    that uses it: step(L_0) picks the first lr, step(L_t) after t updates the next, as in its own loop; one
    whose state reads the validation loss also gets, at each decision, the validation split's mean
    cross-entropy at the current weights. Series per step: 'loss', the mini-batch cross-entropy at the
    weights the step's gradient is taken at, and 'lr', the lr the step used. A non-finite loss stops the
    run there: diverged_at is that step and the series stop before it (the rlr_engine convention), as does a
    non-finite validation loss a controller was to read; weights left non-finite by the last update give
    diverged_at = steps with the full series. An optimiser with train()/eval() modes (schedule-free) steps
    in train mode and the returned model holds its eval-mode weights."""
    constant = check_run_options(lr, make_scheduler, method)
    lrs = lr_table(lr, 1, check_config(config).steps)[0]
    config, dtype, device, splits, model, batch_stream = setup_run(seed, config, dtype, device)
    optimizer = make_optimizer(model.parameters(), float(lrs[0]))
    scheduler = make_scheduler(optimizer) if make_scheduler is not None else None
    wants_loss = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    controlled = isinstance(scheduler, CONTROLLERS)
    if controlled and reads_validation(scheduler) and config.n_validation == 0:
        raise ValueError("the controller's state reads the validation loss: config.n_validation must be > 0")
    has_modes = callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
    if has_modes:
        optimizer.train()
    batches = batch_stream.next(config.steps).to(device)
    losses, used_lrs = np.empty(config.steps), np.empty(config.steps)
    diverged_at, started = None, time.perf_counter()
    for step in range(config.steps):
        if scheduler is None and not constant:
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
        batch = batches[step]
        loss = F.cross_entropy(model(splits.train.x[batch]), splits.train.y[batch])
        value = loss.item()
        if not math.isfinite(value):
            diverged_at = step
            break
        if controlled and not step_controller(scheduler, value, model, splits.validation):
            diverged_at = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step], used_lrs[step] = value, optimizer.param_groups[0]["lr"]
        if scheduler is not None and not controlled:
            scheduler.step(value) if wants_loss else scheduler.step()
    if has_modes:
        optimizer.eval()
    count = config.steps if diverged_at is None else diverged_at
    if diverged_at is None and not finite_weights(model):
        diverged_at = config.steps  # the last update (or the eval-mode switch) left non-finite weights
    return RunResult(method, run_config(seed, config, dtype, device), {"loss": losses[:count], "lr": used_lrs[:count]},
                     time.perf_counter() - started, diverged_at, model)


def per_run_cross_entropy(labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-run loss of the batched loop: F.cross_entropy (mean over the batch) of each run's logits
    [K, rows, 10] against its labels [K, rows], as a function of the stacked logits (-> [K])."""
    return lambda logits: F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                          reduction="none").view(labels.shape).mean(dim=1)


class MNIST1DRuns:
    """K MNIST-1D runs stacked, the batched engine's side of the task (a BatchedRuns): run k is setup_run(seeds[k])
    (so the reference run of that seed), its training rows [n_train] at rows k * n_train of `inputs` and `labels`,
    validation inputs [K, n_validation, 40] and labels [K, n_validation], the K models as one StackedModel, and
    the K mini-batch streams. loss_and_grad() takes every run's next mini-batch, restart(k, seed) starts run k
    afresh on another seed (the vector environment's autoreset)."""

    def __init__(self, seeds: Sequence[int], config: MNIST1DConfig, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        runs = [setup_run(seed, config, dtype, device) for seed in seeds]
        self.config, self.dtype, self.device, self.n_runs = runs[0].config, runs[0].dtype, runs[0].device, len(runs)
        self.inputs = torch.cat([run.splits.train.x for run in runs])
        self.labels = torch.cat([run.splits.train.y for run in runs])
        self.validation_x = torch.stack([run.splits.validation.x for run in runs])
        self.validation_y = torch.stack([run.splits.validation.y for run in runs])
        self.net = StackedModel([run.model for run in runs], dtype, self.device)
        self.streams = [run.batches for run in runs]
        self.offsets = (torch.arange(self.n_runs) * self.config.n_train).view(self.n_runs, 1, 1)
        # Example indices are drawn DRAW_CHUNK steps per run at a time (a stream drawn in chunks gives the
        # batches it gives drawn at once); `position` counts the batches each run has taken from its chunk.
        self.drawn = torch.zeros(self.n_runs, DRAW_CHUNK, self.config.batch_size, dtype=torch.int64)
        self.position = torch.full((self.n_runs,), DRAW_CHUNK, dtype=torch.int64)

    def restart(self, k: int, seed: int) -> None:
        """Run k starts afresh as setup_run(seed): its data, initial weights and batch stream."""
        run = setup_run(seed, self.config, self.dtype, self.device)
        rows = slice(k * self.config.n_train, (k + 1) * self.config.n_train)
        self.inputs[rows], self.labels[rows] = run.splits.train.x, run.splits.train.y
        self.validation_x[k], self.validation_y[k] = run.splits.validation.x, run.splits.validation.y
        self.net.load_run(k, run.model)
        self.streams[k], self.position[k] = run.batches, DRAW_CHUNK

    def next_rows(self, advance: torch.Tensor | None = None) -> torch.Tensor:
        """The rows of every run's next mini-batch in the stacked data, [K * batch_size]; a run outside
        `advance` (a bool mask [K]; None: every run) draws nothing and its stream stays put: it gets its last
        batch again, or, just restarted, rows of its previous seed's stream, whose loss and gradient its caller
        discards (the vector environment keeps such a run's gradient)."""
        advance = torch.ones(self.n_runs, dtype=torch.bool) if advance is None else advance.cpu()
        for k in torch.nonzero(advance & (self.position == DRAW_CHUNK)).flatten().tolist():
            self.drawn[k], self.position[k] = self.streams[k].next(DRAW_CHUNK), 0
        self.position += advance.long()
        batch = self.drawn[torch.arange(self.n_runs), (self.position - 1).clamp(min=0)] + self.offsets[:, 0]  # [K, b]
        return batch.reshape(-1).to(self.device)

    def loss_and_grad(self, advance: torch.Tensor | None = None) -> torch.Tensor:
        """Each run's cross-entropy on its next mini-batch at its current weights, [K] (the model's dtype),
        with the gradients in net.grad: what the next optimiser step follows. Runs outside `advance` (a bool
        mask [K]; None: all) are scored on their last mini-batch again and draw none."""
        rows = self.next_rows(advance)
        shape = (self.n_runs, self.config.batch_size)
        return self.net.loss_and_grad(per_run_cross_entropy(self.labels.index_select(0, rows).view(shape)),
                                      self.inputs.index_select(0, rows).view(*shape, N_FEATURES))

    def validation_losses(self) -> torch.Tensor:
        """Each run's validation cross-entropy at its current weights, [K] (float64)."""
        with torch.no_grad():
            return per_run_cross_entropy(self.validation_y)(self.net.forward(self.validation_x)).double()


@dataclass(frozen=True)
class MNIST1DTask:
    """MNIST-1D (the paper's model, Adam on mini-batches) as a task: what the vector environment
    (rlr_env.LRControlVectorEnv) and the registry's families (rlr_methods.Method.run_pool) run on."""

    config: MNIST1DConfig = field(default_factory=MNIST1DConfig)
    """the data split, model and run length"""
    dtype: torch.dtype = torch.float32
    """the runs' float dtype"""
    device: str = "cpu"
    """where they run"""
    loss_reading: str = "interval"
    """the training loss a controller's state reads at a decision: the mean of the mini-batch losses since the
    previous decision ('interval'), as rlr_core.PolicyScheduler(loss_average='interval') reads it in a user's
    loop; one mini-batch's loss is too noisy a reading, and the full training loss costs a pass over the data
    that no user's loop makes"""
    seed_bound: int = DATA_SEED_BOUND
    """task seeds an environment draws lie in [0, seed_bound): the generator takes 32-bit seeds"""

    def runs(self, seeds: Sequence[int]) -> MNIST1DRuns:
        seeds = check_seeds("seeds", seeds)
        for seed in seeds:
            check_data_seed(seed)
        return MNIST1DRuns(seeds, check_config(self.config), self.dtype, self.device)

    def check_schedule(self, schedule: rlr_core.ScheduleConfig) -> None:
        """ValueError where a controller's schedule and this task disagree: a state or reward that reads the
        validation loss needs a validation split (config.n_validation > 0)."""
        if schedule.uses_validation and check_config(self.config).n_validation == 0:
            raise ValueError("the schedule's state or reward reads the validation loss: task.config.n_validation "
                             "must be > 0")

    def check_steps(self, steps: Any) -> None:
        """A family's run length must be the task's (config.steps): MNIST-1D's runs are config.steps long."""
        check_int("steps", steps, 1)
        if steps != check_config(self.config).steps:
            raise ValueError(f"steps must be the task's run length (config.steps = {self.config.steps}), got {steps!r}")

    def train(self, seeds: Sequence[int], lr: Any, steps: int, method: str, progress: bool = False,
              **rules: Any) -> list[RunResult]:
        """Adam under a learning-rate table or rule on K runs at once (train_mnist1d_batched's lrs,
        hypergradient_lr and plateau); progress is accepted for the registry's call (this loop shows none)."""
        self.check_steps(steps)
        return train_mnist1d_batched(seeds, self.config, lr, dtype=self.dtype, device=self.device, method=method,
                                     **rules)

    def train_own_optimizers(self, seeds: Sequence[int], make_optimizer: Any, steps: int, method: str,
                             progress: bool = False) -> list[RunResult]:
        """Each run under its own instance of another package's optimiser: make_optimizer(parameters, lr), or a
        list of K factories (run k's from the k-th)."""
        self.check_steps(steps)
        return train_mnist1d_batched(seeds, self.config, make_optimizer=make_optimizer, dtype=self.dtype,
                                     device=self.device, method=method)


TASKS = (PolynomialTask, MNIST1DTask)
"""The study's tasks: what the vector environment (rlr_env.LRControlVectorEnv), the registry's families
(rlr_methods.Method.run_pool) and the controllers' training take."""


class TableLrs:
    """The lr source of plain batched runs: BatchedAdam at row t of a table [K, steps] of learning rates."""

    def __init__(self, table: np.ndarray, stacked: MNIST1DRuns) -> None:
        self.lrs_by_step = torch.from_numpy(table.T.copy()).to(stacked.device)  # [steps, K]
        self.grad, self.optimizer = stacked.net.grad, BatchedAdam(stacked.net.params, stacked.net.rows_of)

    def step(self, step: int, losses: torch.Tensor, alive: np.ndarray, used_lrs: np.ndarray) -> None:
        used_lrs[step] = self.lrs_by_step[step].cpu().numpy()
        self.optimizer.step(self.grad, self.lrs_by_step[step])


class RuleLrs:
    """The lr source of a rule that watches the run, as train_mnist1d steps it: Adam-HD (rlr_stacked.BatchedAdamHD,
    its beta per run) moves each run's lr by its hypergradient at the step, and ReduceLROnPlateau
    (rlr_batched.PlateauPerRun, a torch scheduler per run) is stepped after it with the step's mini-batch loss
    and sets the next step's lr. Both start from each run's starting lr."""

    def __init__(self, starts: np.ndarray, betas: np.ndarray, plateau: dict | Sequence[dict] | None,
                 stacked: MNIST1DRuns) -> None:
        self.grad, self.lr = stacked.net.grad, torch.from_numpy(starts.copy()).to(stacked.device)
        self.scheduler = PlateauPerRun(starts, plateau) if plateau is not None else None
        if betas.any():
            self.optimizer = BatchedAdamHD(stacked.net.params, stacked.net.rows_of, torch.from_numpy(betas).to(stacked.device))
        else:
            self.optimizer = BatchedAdam(stacked.net.params, stacked.net.rows_of)

    def step(self, step: int, losses: torch.Tensor, alive: np.ndarray, used_lrs: np.ndarray) -> None:
        self.lr = self.optimizer.step(self.grad, self.lr)  # Adam-HD moves each run's lr first
        used_lrs[step] = self.lr.cpu().numpy()
        if self.scheduler is not None:
            self.lr = self.scheduler.step(losses, self.lr)  # the lr of the next step


class ControllerLrs:
    """The lr source of controlled batched runs: run k's lr is its own controller's (make_controller(a proxy
    optimiser holding one lr)), stepped with run k's mini-batch loss before the step, as train_mnist1d steps a
    controller, and with run k's validation cross-entropy at the decisions of a controller whose state reads it.
    A proxy stands in for the optimiser because the K runs' Adam is one BatchedAdam; the controller only
    reads and writes param_groups' lr. The controllers are built (and checked) before any data or model is;
    attach() then binds them to the stacked runs. A run whose loss, or validation loss at a decision, is
    non-finite has diverged there (its loss is set to NaN, so its series are cut at that step, as the
    reference loop cuts them) and stops stepping its controller."""

    def __init__(self, make_controller: Callable[[torch.optim.Optimizer], Any], n_runs: int,
                 config: MNIST1DConfig) -> None:
        self.controllers = []
        for _ in range(n_runs):
            proxy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            controller = make_controller(proxy)
            if not isinstance(controller, CONTROLLERS):
                raise TypeError(f"make_controller must return one of {[c.__name__ for c in CONTROLLERS]}, got "
                                f"{type(controller).__name__}")
            if reads_validation(controller) and config.n_validation == 0:
                raise ValueError("the controller's state reads the validation loss: config.n_validation must be > 0")
            self.controllers.append((proxy, controller))

    def attach(self, stacked: MNIST1DRuns) -> ControllerLrs:
        """Bind to the stacked runs: their model, gradient and validation splits, and one BatchedAdam."""
        self.stacked, self.grad = stacked, stacked.net.grad
        self.optimizer = BatchedAdam(stacked.net.params, stacked.net.rows_of)
        return self

    def step(self, step: int, losses: torch.Tensor, alive: np.ndarray, used_lrs: np.ndarray) -> None:
        values = losses.cpu().double().numpy()
        validation = (self.stacked.validation_losses().cpu().numpy()
                      if any(deciding_on_validation(c) for _, c in self.controllers) else None)
        for k in np.flatnonzero(alive):
            proxy, controller = self.controllers[k]
            if validation is not None and deciding_on_validation(controller):
                if not math.isfinite(validation[k]):
                    losses[k], alive[k] = math.nan, False  # diverged here: the series stop before this step
                    continue
                controller.step(float(values[k]), float(validation[k]))
            else:
                controller.step(float(values[k]))
        used_lrs[step] = [proxy.param_groups[0]["lr"] for proxy, _ in self.controllers]
        lrs = torch.tensor(used_lrs[step], dtype=self.stacked.net.params.dtype, device=self.stacked.device)
        self.optimizer.step(self.grad, lrs)


class OwnOptimizerLrs:
    """The lr source of runs under an optimiser of another package: one instance per run
    (rlr_batched.OwnOptimizers: a learning-rate-free optimiser estimates its step size from norms over its
    own run's parameters), each built by make_optimizer(parameters, lr); the lr logged is its group's."""

    def __init__(self, make_optimizer: Callable[[Any, float], Any] | Sequence[Callable[[Any, float], Any]], lr: float,
                 stacked: MNIST1DRuns) -> None:
        self.optimizers = OwnOptimizers(stacked.net, make_optimizer, lr)
        if self.optimizers.has_modes:
            self.optimizers.set_mode("train")

    def step(self, step: int, losses: torch.Tensor, alive: np.ndarray, used_lrs: np.ndarray) -> None:
        self.optimizers.step(alive, used_lrs[step])

    def finish(self) -> None:
        """Eval mode where the optimiser has modes: the returned models hold the weights it stands for."""
        if self.optimizers.has_modes:
            self.optimizers.set_mode("eval")


def check_lr_sources(lrs: Any, make_controller: Any, make_optimizer: Any, n_runs: int) -> None:
    """train_mnist1d_batched's lr options, checked before any work: one source, each of the right type."""
    if make_controller is not None and make_optimizer is not None:
        raise ValueError("pass make_controller or make_optimizer, not both")
    if make_controller is not None and not callable(make_controller):
        raise TypeError(f"make_controller must be callable or None, got {type(make_controller).__name__}")
    if make_optimizer is not None:
        check_factories(make_optimizer, n_runs)
    if make_controller is not None and lrs is not None:
        raise ValueError("with make_controller, each controller sets its run's lr: lrs must be None")
    if make_optimizer is not None and lrs is not None and np.ndim(lrs) != 0:
        raise ValueError("with make_optimizer, lrs must be one number (the lr each optimiser is built with)")


def train_mnist1d_batched(seeds: Sequence[int], config: MNIST1DConfig = MNIST1DConfig(), lrs: Any = None, *,
                          make_controller: Callable[[torch.optim.Optimizer], Any] | None = None,
                          make_optimizer: Callable[[Any, float], torch.optim.Optimizer] | None = None,
                          hypergradient_lr: float | Sequence[float] = 0.0, plateau: dict | Sequence[dict] | None = None,
                          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                          method: str = "mnist1d_adam") -> list[RunResult]:
    """train_mnist1d for K seeds at once: run k is seeds[k]'s reference run (its data set, initial weights
    and batch order), one batched forward and backward pass per step (rlr_stacked.StackedModel).

    Where each run's lr comes from (one of):
    - lrs: Adam (rlr_stacked.BatchedAdam, torch's functional Adam with one lr per run) under one number, a
      schedule [steps] for every run, or one schedule per run [K, steps] (a seed x schedule sweep is one
      call: seeds may repeat); a scheduler's schedule is rlr_batched.lr_schedule; None: 1e-3;
    - make_controller(optimizer): Adam under a controller per run, stepped with the loss as train_mnist1d
      steps one (ControllerLrs; lrs must then be None: each controller sets its run's lr);
    - make_optimizer(parameters, lr): an optimiser of another package per run (or a list of K factories, run
      k's from the k-th: a pool's configurations in one batch), built with lr = lrs (a number; None: 1e-3),
      stepped in train mode where it has modes, its eval-mode weights returned (OwnOptimizerLrs);
    - hypergradient_lr (Adam-HD's beta, one number or one per run; 0: plain Adam) and plateau
      (ReduceLROnPlateau's options, a dict or one per run, stepped with each step's mini-batch loss): rules that
      move each run's lr from its start, lrs then one number or one per run [K] (RuleLrs, as train_mnist1d with
      make_optimizer=rlr_engine.AdamHD or make_scheduler=ReduceLROnPlateau).
    A diverged run computes on inside its own slice (no op mixes runs) and its series are cut at diverged_at,
    as the reference's are; a run whose weights end non-finite (its last update diverged) has diverged_at =
    steps. wall_seconds is the batch's time divided by K. Every input is checked before any data or model
    is built.
    """
    seeds = check_seeds("seeds", seeds)
    if not seeds:
        raise ValueError("seeds must name at least one run")
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string (the result's name), got {method!r}")
    config, dtype, n_runs = check_config(config), check_dtype(dtype), len(seeds)
    check_lr_sources(lrs, make_controller, make_optimizer, n_runs)
    betas = hypergradient_lrs(hypergradient_lr, n_runs)
    ruled = bool(betas.any()) or plateau is not None
    if ruled:
        if make_controller is not None or make_optimizer is not None:
            raise ValueError("hypergradient_lr and plateau are Adam's rules: not with make_controller or make_optimizer")
        starts = rule_starts(1e-3 if lrs is None else lrs, plateau, n_runs, "lrs")
    else:
        table = lr_table(1e-3 if lrs is None else lrs, n_runs, config.steps, "lrs")
    controlled = ControllerLrs(make_controller, n_runs, config) if make_controller is not None else None
    stacked = MNIST1DRuns(seeds, config, dtype, device)
    if ruled:
        source = RuleLrs(starts, betas, plateau, stacked)
    elif controlled is not None:
        source = controlled.attach(stacked)
    elif make_optimizer is not None:
        source = OwnOptimizerLrs(make_optimizer, float(table[0, 0]), stacked)
    else:
        source = TableLrs(table, stacked)
    series, wall_seconds = run_steps(stacked, config, source)
    return split_runs(method, seeds, config, dtype, stacked.device, series, wall_seconds / n_runs,
                      stacked.net.to_modules())


def run_steps(stacked: MNIST1DRuns, config: MNIST1DConfig, source: TableLrs | RuleLrs | ControllerLrs | OwnOptimizerLrs
              ) -> tuple[dict[str, np.ndarray], float]:
    """The batched loop: per step, the K runs' losses and gradients on their next mini-batches in one pass
    (MNIST1DRuns.loss_and_grad), then the lr source's step. Returns the series [steps, K] ('loss', 'lr') and
    the loop's seconds."""
    n_runs = stacked.n_runs
    losses = torch.full((config.steps, n_runs), math.nan, dtype=stacked.net.params.dtype, device=stacked.device)
    used_lrs = np.full((config.steps, n_runs), math.nan)
    alive = np.ones(n_runs, dtype=bool)
    started = time.perf_counter()
    with torch.no_grad():
        for step in range(config.steps):
            losses[step] = stacked.loss_and_grad()
            alive &= torch.isfinite(losses[step]).cpu().numpy()
            source.step(step, losses[step], alive, used_lrs)
    if isinstance(source, OwnOptimizerLrs):
        source.finish()
    return {"loss": losses.cpu().double().numpy(), "lr": used_lrs}, time.perf_counter() - started


def finite_weights(model: nn.Module) -> bool:
    """Whether every parameter of the model is finite (a run that ends otherwise has diverged)."""
    return all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())


def split_runs(method: str, seeds: list[int], config: MNIST1DConfig, dtype: torch.dtype, device: torch.device,
               series: dict[str, np.ndarray], wall_seconds: float, models: list[nn.Module]) -> list[RunResult]:
    """Series [steps, K] cut into one RunResult per run, each stopped at its first non-finite loss."""
    results = []
    for k, seed in enumerate(seeds):
        bad = ~np.isfinite(series["loss"][:, k])
        diverged_at = int(np.argmax(bad)) if bad.any() else None
        if diverged_at is None and not finite_weights(models[k]):
            diverged_at = config.steps  # the last update (or the eval-mode switch) left non-finite weights
        count = len(bad) if diverged_at is None else diverged_at
        run_series = {name: np.ascontiguousarray(values[:count, k]) for name, values in series.items()}
        results.append(RunResult(method, run_config(seed, config, dtype, device), run_series, wall_seconds,
                                 diverged_at, models[k]))
    return results


# ---------------------------------------------------------------------------------------------------
# Metrics on a split
# ---------------------------------------------------------------------------------------------------


def check_split(model: Any, x: Any, y: Any) -> None:
    """A model and a split it can be scored on: x [n, ...] float, y [n] int64 labels, n >= 1."""
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor [n, features], got {type(x).__name__}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise TypeError(f"y must be an int64 tensor of labels [n], got {getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() != 1 or x.dim() < 1 or len(x) != len(y):
        raise ValueError(f"x [n, ...] and y [n] must hold the same n examples, got shapes {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError("the split is empty (n_validation = 0 gives an empty validation split)")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the examples whose largest logit is their label (a tie goes to the lower class, as
    torch.argmax does)."""
    check_split(model, x, y)
    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).double().mean())


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of the model's logits against the labels, in nats (the training loss, on a
    whole split)."""
    check_split(model, x, y)
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))
