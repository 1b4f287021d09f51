"""The reference training loops: one readable run at a time, with checkpoint/resume.

Three loops, one per method family of the original experiment: the mini-batch Adam baseline
(train_baseline), full-batch Adam under a constant lr, a torch.optim.lr_scheduler or another optimiser
(train_full_batch), and full-batch Adam steered by RLRScheduler (train_rl_scheduled). Each returns a
rlr_results.RunResult. The batched engine (rlr_batched) runs the same runs K at a time; the Gymnasium
environment (rlr_env) takes the same full-batch step (adam_step) one action at a time.

Read top to bottom: the run config -> setup -> Adam-HD -> the shared step -> checkpoints -> the loops.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from rlr_core import (DQNAgent, DTYPES, PolynomialData, RLRScheduler, RunSeeds, check_float, check_int,
                      derive_seeds, full_batch_loss, is_decision_step, loss_reward, make_adam, make_model,
                      make_polynomial_dataset)
from rlr_config import BaselineConfig, Config, check_device  # noqa: F401  (re-exported: rlr_engine.Config)
from rlr_results import RunResult, atomic_write

# ---------------------------------------------------------------------------------------------------
# Setup, progress, Adam-HD and the one full-batch step every loop (and the environment) takes
# ---------------------------------------------------------------------------------------------------


def check_run(config: Config) -> tuple[RunSeeds, torch.dtype, torch.device]:
    """Check every config field again (dataclasses can be changed after construction) and resolve the
    seeds, dtype and device of a run. Touches no global state: entry points set torch's thread count."""
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, got {type(config).__name__}")
    Config.from_dict(config.to_dict())  # re-runs every __post_init__ check; raises naming the field
    return derive_seeds(config.seed), DTYPES[config.dtype], check_device(config.device)


def setup_run(config: Config) -> tuple[RunSeeds, PolynomialData, nn.Module]:
    """Seeds, training data and initial MaclaurinNet of a run: the same for every method of a seed."""
    seeds, dtype, device = check_run(config)
    data = make_polynomial_dataset(config.task, seeds.data, dtype=dtype, device=device)
    return seeds, data, make_model(config.task, seeds.init, dtype, device)


def heldout_data(config: Config, split: str, n_examples: int) -> PolynomialData:
    """Held-out polynomials of config.seed, from the training data's distribution: split 'validation'
    (for tuning and PBT's ranking) or 'test' (for the verdict), independent draws of n_examples."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
    check_int("n_examples", n_examples, 1)
    seeds, dtype, device = check_run(config)
    return make_polynomial_dataset(config.task, getattr(seeds, split), n_examples, dtype=dtype, device=device)


def progress_bar(total: int, description: str, enabled: bool, initial: int = 0) -> tqdm:
    """The training loops' progress bar (here and in rlr_batched), on stderr, off unless enabled."""
    # A few updates per second at most: papermill can time out on floods of output messages.
    return tqdm(total=total, desc=description, disable=not enabled, mininterval=2.0, file=sys.stderr,
                initial=initial)


def hypergradient_step(lr: float | torch.Tensor, hypergradient_lr: float | torch.Tensor,
                       grad_dot_direction: float | torch.Tensor) -> torch.Tensor:
    """Adam-HD's lr update, max(0, lr + hypergradient_lr * <g_t, u_{t-1}>) (float64; runs on leading axes)."""
    lr = torch.as_tensor(lr, dtype=torch.float64)
    return (lr + torch.as_tensor(hypergradient_lr, dtype=torch.float64) * grad_dot_direction).clamp_min(0.0)


class AdamHD(torch.optim.Adam):
    """Adam with hypergradient descent on its learning rate (Adam-HD, Baydin et al. 2018).

    Before each step, lr <- max(0, lr + hypergradient_lr * <g_t, u_{t-1}>) (hypergradient_step): u_{t-1}
    is the previous Adam direction, the last parameter change divided by the lr that made it. Online lr
    adaptation without RL; hand-written because no maintained library ships it for torch.optim
    (rlr_stacked.BatchedAdamHD is held to it by tests).
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
            grad_dot_direction = sum(float((p.grad * d).sum()) for p, d in zip(params, self.last_direction)
                                     if p.grad is not None)
            for group in self.param_groups:
                group["lr"] = float(hypergradient_step(group["lr"], self.hypergradient_lr, grad_dot_direction))
        before = [p.detach().clone() for p in params]
        loss = super().step(closure)
        lr = self.param_groups[0]["lr"]
        self.last_direction = [(b - p) / lr if lr > 0 else torch.zeros_like(p) for b, p in zip(before, params)]
        return loss


def adam_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: PolynomialData,
              loss: torch.Tensor, forward: bool = True) -> torch.Tensor | None:
    """One full-batch optimiser step on L_t (loss, with its graph); returns L_{t+1}, with its graph.

    One forward and one backward per step: the loss after step t is the loss before step t+1.
    forward=False skips that forward (returns None): for a caller that must change the weights first.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return full_batch_loss(model, data) if forward else None


# ---------------------------------------------------------------------------------------------------
# Checkpoints: everything a loop needs to continue bit-identically after an interruption
# ---------------------------------------------------------------------------------------------------


def check_checkpointing(checkpoint_path: Any, checkpoint_every: Any, resume: Any) -> None:
    """Checked before any work: a typo here would otherwise surface only at the first save."""
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a str, a Path or None, got {type(checkpoint_path).__name__}")
    check_int("checkpoint_every", checkpoint_every, 0)
    if (checkpoint_path is None) != (checkpoint_every == 0):
        raise ValueError(f"checkpoint_every must be >= 1 (steps between saves) when checkpoint_path is given, "
                         f"and 0 without one; got {checkpoint_every} with checkpoint_path={checkpoint_path!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")


def config_differences(saved: dict, current: dict) -> list[str]:
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
    """Restore parts and series[name][:step] from a save_checkpoint file; return (step, wall_seconds so far).
    ValueError naming the file for one that is not a checkpoint (empty, truncated, random bytes, another
    payload) or that holds another run."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # empty or truncated file (EOFError with no message), random bytes, code
        first_line = str(error).splitlines()[0] if str(error) else "the file ends early"
        raise ValueError(f"checkpoint_path {str(path)!r} is not a checkpoint written by save_checkpoint "
                         f"({type(error).__name__}: {first_line}): delete it or pass resume=False") from error
    expected = {"method", "config", "step", "wall_seconds", "series", "parts"}
    if not isinstance(checkpoint, dict) or set(checkpoint) != expected or not isinstance(checkpoint["series"], dict) \
            or not isinstance(checkpoint["parts"], dict) or not isinstance(checkpoint["config"], dict):
        raise ValueError(f"checkpoint_path {str(path)!r} is not a checkpoint written by save_checkpoint (it needs "
                         f"{sorted(expected)}): delete it or pass resume=False")
    if isinstance(checkpoint["step"], bool) or not isinstance(checkpoint["step"], int) \
            or not isinstance(checkpoint["wall_seconds"], (int, float)) or not math.isfinite(checkpoint["wall_seconds"]):
        raise ValueError(f"checkpoint_path {str(path)!r}: its step {checkpoint['step']!r} is not an integer or its "
                         f"wall_seconds {checkpoint['wall_seconds']!r} is not a finite number: delete it or pass resume=False")
    step = checkpoint["step"]
    differences = config_differences(checkpoint["config"], config.to_dict())
    if checkpoint["method"] != method or differences or set(checkpoint["series"]) != set(series):
        raise ValueError(f"checkpoint_path {str(path)!r} holds another run (method {checkpoint['method']!r}, "
                         f"config differs in {differences}, series {sorted(checkpoint['series'])}): delete it "
                         "or pass resume=False")
    if set(checkpoint["parts"]) != set(parts):
        raise ValueError(f"checkpoint_path {str(path)!r} holds parts {sorted(checkpoint['parts'])}, this loop has "
                         f"{sorted(parts)}: delete it or pass resume=False")
    if not 0 <= step <= len(series["loss"]):
        raise ValueError(f"checkpoint_path {str(path)!r} is at step {step}, outside this run's 0..{len(series['loss'])}")
    for name, values in checkpoint["series"].items():
        wanted = (step,) + tuple(series[name].shape[1:])  # per-step rows (q_values has one column per action)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != wanted:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"checkpoint_path {str(path)!r}: series {name!r} holds {shape}, not the {wanted} of "
                             "its step: delete it or pass resume=False")
    for name, values in checkpoint["series"].items():
        series[name][:step] = values.numpy()
    for name, part in parts.items():
        state = checkpoint["parts"][name]
        part.set_state(state) if isinstance(part, torch.Generator) else part.load_state_dict(state)
    return step, float(checkpoint["wall_seconds"])


# ---------------------------------------------------------------------------------------------------
# The three loops. Each returns a RunResult: per-epoch or per-step series plus the config and timing.
# ---------------------------------------------------------------------------------------------------


def train_baseline(config: Config, progress: bool = False, checkpoint_path: str | Path | None = None,
                   checkpoint_every: int = 0, resume: bool = True) -> RunResult:
    """The original baseline: Adam(lr) on mini-batches of a fresh permutation each epoch.

    Logs the full-data MSE after every epoch. Stops at the first non-finite loss (diverged_at).
    With checkpoint_path, saves every checkpoint_every epochs and at the end; with resume, a call that
    finds a checkpoint there continues from it, bit-identical to a run that was never interrupted.
    """
    check_checkpointing(checkpoint_path, checkpoint_every, resume)
    seeds, data, model = setup_run(config)
    device = data.inputs.device
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
    make_optimizer(params, lr) swaps the optimiser (e.g. AdamHD, or a learning-rate-free optimiser of
    rlr_methods' lr_free entries). Logs the full-data loss after every step and the lr each step used. An optimiser
    with train()/eval() modes (schedule-free) steps in train mode, and its logged losses and the returned
    model are those of its eval-mode weights.
    """
    check_float("lr", lr, 0.0, math.inf, high_open=True)
    check_int("steps", steps, 1)
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string (the result's name), got {method!r}")
    if make_scheduler is not None and not callable(make_scheduler):
        raise TypeError(f"make_scheduler must be callable(optimizer) or None, got {type(make_scheduler).__name__}")
    _, data, model = setup_run(config)
    optimizer = make_optimizer(model.parameters(), lr)
    scheduler = make_scheduler(optimizer) if make_scheduler is not None else None
    wants_loss = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    has_modes = callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
    if has_modes:  # schedule-free optimisers: steps in train mode, the weights they stand for in eval mode
        optimizer.train()
    losses, lrs = np.empty(steps), np.empty(steps)
    diverged_at = None
    started = time.perf_counter()
    loss = full_batch_loss(model, data)
    with progress_bar(steps, method, progress) as bar:
        for step in range(steps):
            if has_modes:  # the mode switches rewrite the weights in place: L at y is taken after them
                adam_step(model, optimizer, data, loss, forward=False)
                value = eval_mode_loss(model, optimizer, data)
                loss = full_batch_loss(model, data)
            else:
                loss = adam_step(model, optimizer, data, loss)
                value = loss.item()
            lrs[step] = optimizer.param_groups[0]["lr"]  # the lr this step used (AdamHD sets it in step)
            if not math.isfinite(value):
                diverged_at = step
                break
            losses[step] = value
            if scheduler is not None:
                scheduler.step(value) if wants_loss else scheduler.step()
            bar.update()
    if has_modes:
        optimizer.eval()  # the returned model holds the weights the optimiser stands for (test MSE is theirs)
    count = step if diverged_at is not None else steps
    return RunResult(method, config.to_dict(), {"loss": losses[:count], "lr": lrs[:count]},
                     time.perf_counter() - started, diverged_at, model)


def eval_mode_loss(model: nn.Module, optimizer: torch.optim.Optimizer, data: PolynomialData) -> float:
    """The full-data loss at an optimiser's eval-mode weights (schedule-free: the averaged x, not the y
    its gradients are taken at), back in train mode afterwards."""
    optimizer.eval()
    with torch.no_grad():
        value = full_batch_loss(model, data).item()
    optimizer.train()
    return value


def agent_method_name(variant: str, frozen: bool = False) -> str:
    """The results' method name of an agent run: rl_<variant>, with _frozen for a frozen (greedy) policy.
    The one place it is spelled (the reference loop, the batched engine and the controllers use it)."""
    return f"rl_{variant}" + ("_frozen" if frozen else "")


def train_rl_scheduled(config: Config, progress: bool = False, checkpoint_path: str | Path | None = None,
                       checkpoint_every: int = 0, resume: bool = True, *, initial_policy: dict | None = None,
                       frozen: bool = False) -> RunResult:
    """The original agent run: one continuous run of schedule.steps full-batch Adam steps.

    Per step (docs/original.md): L_t and s_t; epsilon-greedy action -> lr; Adam step on L_t; L_{t+1},
    r_t, s_{t+1}; store and one DQN update. The order lives in RLRScheduler.step, the loop in
    run_agent_steps. Stops at the first non-finite model loss or Q-value (diverged_at), before it
    reaches the replay memory or the series. Checkpointing (checkpoint_path, checkpoint_every, resume):
    as train_baseline. initial_policy: a policy_net state_dict (e.g. another run's
    RunResult.policy_state) loaded into the policy and target networks before the run. frozen: the
    scheduler runs in eval() (greedy, no replay writes, no updates), method agent_method_name(variant, True); the
    agent still draws its 2 uniforms per act.
    """
    check_checkpointing(checkpoint_path, checkpoint_every, resume)
    if initial_policy is not None and not isinstance(initial_policy, dict):
        raise TypeError(f"initial_policy must be a policy_net state_dict (dict) or None, "
                        f"got {type(initial_policy).__name__}")
    if not isinstance(frozen, bool):
        raise TypeError(f"frozen must be a bool, got {type(frozen).__name__}")
    seeds, data, model = setup_run(config)
    optimizer = make_adam(model.parameters(), config.schedule.lr_grid[config.schedule.start_index])
    agent = DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, seeds.agent,
                     data.inputs.dtype, data.inputs.device)
    if initial_policy is not None:
        agent.policy_net.load_state_dict(initial_policy)
        agent.target_net.load_state_dict(initial_policy)
    scheduler = RLRScheduler(optimizer, agent, config.schedule)
    if frozen:
        scheduler.eval()
    method = agent_method_name(config.dqn.variant, frozen)
    series = empty_agent_series(config.schedule.steps, agent.n_actions)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}  # the scheduler holds the agent
    first_step, earlier_seconds = 0, 0.0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        first_step, earlier_seconds = load_checkpoint(checkpoint_path, config, method, series, **parts)
    started = time.perf_counter()

    def save(step: int) -> None:
        if checkpoint_path is not None and (step % checkpoint_every == 0 or step == config.schedule.steps):
            save_checkpoint(checkpoint_path, config, method, step, series,
                            earlier_seconds + time.perf_counter() - started, **parts)

    with progress_bar(config.schedule.steps, f"agent ({config.dqn.variant})", progress, initial=first_step) as bar:
        diverged_at = run_agent_steps(scheduler, model, data, series, first_step, save, bar)
    count = diverged_at if diverged_at is not None else config.schedule.steps
    return RunResult(method, config.to_dict(), {name: values[:count] for name, values in series.items()},
                     earlier_seconds + time.perf_counter() - started, diverged_at, model, agent.policy_weights())


def empty_agent_series(steps: int, n_actions: int) -> dict[str, np.ndarray]:
    """The per-step series an agent run logs (the batched engine logs the same names)."""
    series = {name: np.empty(steps) for name in ("loss", "lr", "reward", "epsilon")}
    series["action"] = np.empty(steps, dtype=np.int64)
    series["lr_index"] = np.empty(steps, dtype=np.int64)
    series["q_values"] = np.empty((steps, n_actions))
    series["explored"] = np.empty(steps, dtype=bool)
    return series


def run_agent_steps(scheduler: RLRScheduler, model: nn.Module, data: PolynomialData,
                    series: dict[str, np.ndarray], first_step: int, save: Callable[[int], None],
                    bar: tqdm) -> int | None:
    """Steps first_step.. of an agent run, logging into series; returns diverged_at (None if it finished).

    A step whose loss L_{t+1} or whose acting Q-values are non-finite ends the run before anything of
    it is stored; a non-finite L_0 ends it at step 0.
    """
    agent, optimizer, features = scheduler.agent, scheduler.optimizer, scheduler.schedule.features
    loss = full_batch_loss(model, data)  # L_t of the first step to run
    if first_step == 0:
        if not math.isfinite(loss.item()):  # out of float range before any step (data or initial weights)
            return 0
        scheduler.step(loss.item())  # L_0: chooses the first action and lr
    for step in range(first_step, len(series["loss"])):
        series["lr"][step] = scheduler.get_last_lr()[0]
        series["lr_index"][step] = scheduler.lr_index
        series["action"][step] = scheduler.last_action
        series["epsilon"][step] = agent.last_epsilon
        series["q_values"][step] = agent.last_q_values.numpy()
        series["explored"][step] = agent.last_explored
        previous_value = scheduler.previous_loss
        loss = adam_step(model, optimizer, data, loss)
        value = loss.item()
        if not (math.isfinite(value) and np.isfinite(series["q_values"][step]).all()):
            return step  # the model's loss or the agent's Q-values left the float range
        series["loss"][step] = value
        decides = is_decision_step(scheduler.last_epoch, scheduler.schedule)  # else no transition, no reward
        series["reward"][step] = float(loss_reward(previous_value, value, features)) if decides else 0.0
        scheduler.step(value)
        bar.update()
        save(step + 1)
    return None
