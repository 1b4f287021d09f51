"""The methods practitioners use instead of an RL scheduler, each through its own package.

- Learning-rate-free optimisers (Schedule-Free AdamW, Prodigy, D-Adaptation Adam: their entries are in
  rlr_methods). Prodigy and D-Adaptation estimate their step size from norms over all parameters, so
  runs must not share one optimiser: rlr_batched.train_own_optimizers gives each run its own instance and
  shares only the forward and backward pass, LR_FREE_BATCH seeds per Ray task when Ray is started
  (start_ray), else in this process (the same numbers: each batch is on one thread either way).
- Population Based Training on Ray Tune (run_pbt): P members train full-batch Adam from P learning rates;
  at every perturbation interval the worst quarter copies a best member's checkpoint (model and Adam state)
  and perturbs its lr. It costs P runs of optimiser steps.

Read top to bottom: Ray -> the learning-rate-free optimisers -> PBT.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

import rlr_batched as batched
import rlr_core as rc
import rlr_engine as engine
from rlr_engine import Config
from rlr_results import RunResult

# ---------------------------------------------------------------------------------------------------
# Ray: a local instance by default, a cluster with an address (sweep.py and the runs below use it).
# ---------------------------------------------------------------------------------------------------


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (address or RAY_ADDRESS) or start a local instance; False if Ray was already up."""
    import ray
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # "local": never attach to another user's instance on a shared machine by surprise. On a busy machine
    # the raylet can give up on its metrics agent after a fixed 15 s (ray-project/ray#65983) and the start
    # fails with "The current node timed out during startup": start once more.
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return True
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for a start-up timeout
            ray.shutdown()
            if attempt == 2:
                raise
            print(f"starting Ray failed ({str(error).splitlines()[0]}); trying once more", file=sys.stderr)
    return True


def on_one_thread(function: Callable) -> Callable:
    """function wrapped to run torch on one thread: the entry point of a Ray worker process (the thread
    count is the worker's, never the caller's)."""
    def wrapped(*args, **kwargs):
        torch.set_num_threads(1)
        return function(*args, **kwargs)
    wrapped.__name__ = function.__name__
    return wrapped


def submit_tasks(function: Callable, calls: Sequence[tuple]) -> Callable[[], list]:
    """function(*call) for every call: one Ray task each (one CPU, torch on one thread) when Ray is started,
    submitted now; without Ray, nothing runs until the result is asked for. Returns collect(), which gives
    the results in the order of calls. Submitting before other work lets the Ray workers run while this
    process does it (the notebooks' batched runs use one core)."""
    import ray
    if not ray.is_initialized():
        return lambda: [function(*call) for call in calls]
    task = ray.remote(num_cpus=1, max_retries=0)(on_one_thread(function))
    pending = [task.remote(*call) for call in calls]
    return lambda: ray.get(pending)


# ---------------------------------------------------------------------------------------------------
# The learning-rate-free optimisers
# ---------------------------------------------------------------------------------------------------

LR_FREE_BATCH = 16
"""Runs of one learning-rate-free configuration per task, sharing one batched forward and backward pass
(rlr_batched.train_own_optimizers); benchmarks/bench_lr_free.py times K = 8, 16 and 32 against the
reference loop (the README's performance block)."""


def submit_per_seed(make_optimizer: Callable, method: str, config: Config, seeds: Sequence[int], steps: int
                    ) -> Callable[[], list]:
    """One learning-rate-free configuration on every seed: rlr_batched.train_own_optimizers on chunks of
    at most LR_FREE_BATCH seeds, one task per chunk (submit_tasks); returns collect(), one RunResult per
    seed, in the order of seeds."""
    seeds = list(seeds)
    chunks = [seeds[start:start + LR_FREE_BATCH] for start in range(0, len(seeds), LR_FREE_BATCH)]
    collect = submit_tasks(batched.train_own_optimizers,
                           [(config, chunk, make_optimizer, steps, method) for chunk in chunks])
    return lambda: [run for runs in collect() for run in runs]


# ---------------------------------------------------------------------------------------------------
# Population Based Training on Ray Tune
# ---------------------------------------------------------------------------------------------------


@dataclass
class PBTConfig:
    """Population Based Training of full-batch Adam's lr (Ray Tune's PopulationBasedTraining, synchronous)."""

    population: int = 8
    """members; PBT costs `population` runs of optimiser steps"""
    perturbation_interval: int = 1000
    """optimiser steps between two exploit/explore rounds (each member reports and checkpoints then)"""
    quantile_fraction: float = 0.25
    """the worst fraction copies a member of the best fraction (Ray's default)"""
    resample_probability: float = 0.25
    """chance that an explored lr is redrawn from lr_range instead of multiplied by 0.8 or 1.2 (Ray's default)"""
    lr_range: tuple = (1e-5, 0.3)
    """initial lrs are spread log-uniformly (scrambled Sobol) over it, redrawn lrs too; the same range as
    the tuned schedules"""
    n_heldout_examples: int = 1024
    """validation polynomials of the seed: the score PBT ranks members by (never the test set)"""
    seed: int = 0
    """seed of the initial lrs and of PBT's random choices"""

    def __post_init__(self) -> None:
        rc.check_int("pbt.population", self.population, 2)
        rc.check_int("pbt.perturbation_interval", self.perturbation_interval, 1)
        rc.check_float("pbt.quantile_fraction", self.quantile_fraction, 0.0, 0.5, low_open=True)
        rc.check_float("pbt.resample_probability", self.resample_probability, 0.0, 1.0, low_open=False)
        self.lr_range = rc.check_lr_range("pbt.lr_range", self.lr_range)
        rc.check_int("pbt.n_heldout_examples", self.n_heldout_examples, 1)
        rc.check_int("pbt.seed", self.seed, 0)

    def check_steps(self, steps: int) -> None:
        """ValueError naming pbt.perturbation_interval if runs of `steps` hold no exploit/explore round."""
        rc.check_int("steps", steps, 1)
        if self.perturbation_interval > steps:
            raise ValueError(f"pbt.perturbation_interval ({self.perturbation_interval}) must be at most the "
                             f"run's steps ({steps})")

    def initial_lrs(self) -> list[float]:
        from scipy.stats import qmc
        low, high = (math.log(value) for value in self.lr_range)
        points = qmc.Sobol(1, scramble=True, seed=self.seed).random(self.population)[:, 0]
        return [float(math.exp(low + u * (high - low))) for u in points]


def pbt_member(settings: dict) -> None:
    """One PBT member, a Ray Tune function trainable: full-batch Adam at settings['lr'], reporting the
    seed's validation MSE every perturbation interval with a checkpoint (model, Adam's state, the
    training losses and lrs so far, and which member wrote it). Restored from another member's checkpoint
    when PBT exploits; a diverged member reports an infinite validation MSE until it is replaced."""
    from ray import tune
    torch.set_num_threads(1)  # a Ray worker process: its own entry point
    config, steps, interval = Config.from_dict(settings["config"]), settings["steps"], settings["interval"]
    _, data, model = engine.setup_run(config)
    validation = engine.heldout_data(config, "validation", settings["n_heldout_examples"])
    optimizer = rc.make_adam(model.parameters(), settings["lr"])
    me, copied_from, history = tune.get_context().get_trial_id(), None, {"loss": [], "lr": []}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "member.pt", weights_only=True)  # tensors and plain values only
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, copied_from = state["history"], state["writer"]
    for group in optimizer.param_groups:
        group["lr"] = settings["lr"]  # the (perturbed) lr of this member from here on
    loss = rc.full_batch_loss(model, data)
    while len(history["loss"]) < steps:
        diverged = not math.isfinite(history["loss"][-1]) if history["loss"] else False
        for _ in range(min(interval, steps - len(history["loss"]))):
            if not diverged:
                loss = engine.adam_step(model, optimizer, data, loss)
            history["loss"].append(float(loss) if not diverged else math.inf)
            history["lr"].append(settings["lr"])
            diverged = diverged or not math.isfinite(history["loss"][-1])
        with torch.no_grad():
            score = math.inf if diverged else float(rc.full_batch_loss(model, validation))
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                        "writer": me}, Path(folder) / "member.pt")
            tune.report({"validation_mse": score if math.isfinite(score) else math.inf, "step": len(history["loss"]),
                         "lr": settings["lr"], "member": me, "copied_from": copied_from or me},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        copied_from = None


def run_pbt(config: Config, steps: int, pbt: PBTConfig, storage: str | os.PathLike | None = None,
            progress: bool = False) -> tuple[RunResult, pd.DataFrame]:
    """PBT on config.seed (Ray must be started): the member with the best final validation MSE as a
    RunResult (its lineage's training losses and lrs; wall_seconds of the whole population), and the
    population's history (one row per member x interval: lr, validation MSE, whose checkpoint it continued).
    storage: where Ray Tune keeps its experiment (default: a temporary folder, removed afterwards)."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers import pbt as pbt_module
    if not isinstance(pbt, PBTConfig):
        raise TypeError(f"pbt must be a PBTConfig, got {type(pbt).__name__}")
    pbt.check_steps(steps)
    redraw = np.random.default_rng(pbt.seed)  # PBT's redraws from our generator, not numpy's global one
    low, high = (math.log(value) for value in pbt.lr_range)
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=1, synch=True,
        hyperparam_mutations={"lr": lambda: float(math.exp(redraw.uniform(low, high)))},
        quantile_fraction=pbt.quantile_fraction, resample_probability=pbt.resample_probability)
    space = {"config": config.to_dict(), "steps": steps, "interval": pbt.perturbation_interval,
             "n_heldout_examples": pbt.n_heldout_examples, "lr": tune.grid_search(pbt.initial_lrs())}
    rows: list[dict] = []
    # PBT draws its choices (whom to copy, x0.8 or x1.2, redraw or not) from the module-level `random`,
    # which Tune's controller also draws from at moments that depend on timing: for the fit, PBT's module
    # gets a private generator seeded with pbt.seed (the same choices on every run), restored afterwards.
    shared_random, pbt_module.random = pbt_module.random, random.Random(pbt.seed)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as folder, quiet_tune(progress):
            tuner = tune.Tuner(
                tune.with_resources(pbt_member, {"cpu": 1}), param_space=space,
                tune_config=tune.TuneConfig(scheduler=scheduler, metric="validation_mse", mode="min", reuse_actors=True),
                run_config=tune.RunConfig(name=f"pbt_seed{config.seed}", storage_path=str(storage or folder),
                                          verbose=1 if progress else 0, callbacks=[recorder(rows)]))
            best = tuner.fit().get_best_result(metric="validation_mse", mode="min", scope="last")
            with best.checkpoint.as_directory() as checkpoint:
                state_of_best = torch.load(Path(checkpoint) / "member.pt", weights_only=True)
    finally:
        pbt_module.random = shared_random
    return pbt_result(config, state_of_best, time.perf_counter() - started), history_table(rows)


def recorder(rows: list[dict]):
    """A Ray Tune callback that appends every reported result to rows (Tune's per-trial files can miss
    the row of a trial that was exploited while paused)."""
    from ray.tune import Callback

    class Recorder(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            rows.append({key: result[key] for key in ("step", "lr", "validation_mse", "copied_from")}
                        | {"member": result["trial_id"]})
    return Recorder()


def history_table(rows: list[dict]) -> pd.DataFrame:
    """The population's history, one row per member x interval; 'exploited' marks an interval that
    continued another member's checkpoint."""
    table = pd.DataFrame(rows)[["member", "step", "lr", "validation_mse", "copied_from"]]
    for column in ("member", "copied_from"):  # Tune's trial ids are '<experiment hash>_<index>': keep the index
        table[column] = table[column].map(lambda trial_id: int(str(trial_id).rsplit("_", 1)[1]))
    table = table.sort_values(["step", "member"], ignore_index=True)
    table["exploited"] = table["copied_from"] != table["member"]
    return table


@contextmanager
def quiet_tune(progress: bool):
    """Without progress: none of Ray Tune's console output (the experiment box, every exploit and
    explore, warnings about its own files), which would flood a notebook. Restored afterwards."""
    logger, variable = logging.getLogger("ray.tune"), "RAY_AIR_NEW_OUTPUT"
    level, output = logger.level, os.environ.get(variable)
    if not progress:
        logger.setLevel(logging.ERROR)
        os.environ[variable] = "0"  # the classic reporter, which verbose=0 silences
    try:
        yield
    finally:
        logger.setLevel(level)
        if output is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = output


def pbt_result(config: Config, state: dict, wall_seconds: float) -> RunResult:
    """The chosen member as a RunResult: its network and the losses and lrs of its lineage (the population
    paid pbt.population times its optimiser steps)."""
    losses, lrs = np.asarray(state["history"]["loss"]), np.asarray(state["history"]["lr"])
    finite = np.isfinite(losses)
    diverged_at = None if finite.all() else int(np.argmin(finite))
    count = len(losses) if diverged_at is None else diverged_at
    _, _, model = engine.setup_run(config)
    model.load_state_dict(state["model"])
    return RunResult("PBT", config.to_dict(), {"loss": losses[:count], "lr": lrs[:count]}, wall_seconds,
                     diverged_at, model)


def run_pbt_seeds(config: Config, seeds: Sequence[int], steps: int, pbt: PBTConfig, progress: bool = False
                  ) -> tuple[list[RunResult], pd.DataFrame]:
    """run_pbt on each seed (one population per seed, one after another): the chosen members and the
    populations' histories in one table with a seed column."""
    runs, histories = [], []
    with engine.progress_bar(len(seeds), "PBT, one population per seed", progress) as bar:
        for seed in seeds:
            run, history = run_pbt(config.with_seed(seed), steps, pbt)
            runs.append(run)
            histories.append(history.assign(seed=int(seed)))
            bar.update()
    return runs, pd.concat(histories, ignore_index=True)
