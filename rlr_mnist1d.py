"""Notebook 07's protocol: the verdict on MNIST-1D, the study's second task, with the polynomial study's rules.

Every family of the registry that runs on any task (the schedules, the rules that watch the run and the
learning-rate-free optimisers; the within-run DQN agents learn on the polynomial engine only) gets a pool of
the same size (its own scrambled Sobol draw, Method.configurations) on the validation splits of tuning seeds,
run by the registry on MNIST1DTask (Method.run_pool); each family's pick is the configuration with the lowest
mean validation error. The learned controllers are notebook 04's, frozen (trained on polynomials: the transfer
across tasks), and notebook 04's DQN controller design trained again here on MNIST-1D task seeds
(train_controller, on rlr_env.LRControlVectorEnv), frozen at checkpoints; the best of them all is
picked on the tuning seeds by the same rule. The picks, Adam at the paper's default lr and the controllers
then run on evaluation seeds, whose test sets score them. A seed is the generator's seed: a fresh data set
(rlr_tasks), so training, tuning and evaluation seeds share no example. Everything runs K runs at once
(rlr_tasks.train_mnist1d_batched).

    study = MNIST1DStudy()
    tuning = tune(study)                      # one row per family x configuration x tuning seed
    picks = choose(tuning)                    # family -> its pick, with the margin over its runner-up
    snapshots, history, seconds = train_controller(study, schedule, dqn, ControllerTraining())
    runs = run_picks(picks, study.eval_seeds, study.task) | run_controllers(controllers, study.eval_seeds, study.task)

Metrics are errors, so that lower is better everywhere and the one ratio convention applies: test error
(1 - accuracy) and test cross-entropy, on each seed's 1000 held-out examples.

Read top to bottom: the study's config -> the families -> running a pool -> tuning and picks -> a controller
trained on MNIST-1D -> evaluation -> the primary comparisons and the reading.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

import rlr_batched
import rlr_core as rc
import rlr_methods as methods
import rlr_report as report
import rlr_stats as stats
import rlr_tasks as tasks
from rlr_env import LRControlVectorEnv, train_agent_on_vector_env
from rlr_results import RunResult, atomic_write_text
from rlr_tasks import GENERATED_TRAIN, MNIST1DConfig

# ---------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------


@dataclass
class MNIST1DStudy:
    """The MNIST-1D verdict: which seeds tune, which evaluate, how many configurations each family gets."""

    task: MNIST1DConfig = field(default_factory=MNIST1DConfig)
    """the runs: the paper's MLP, mini-batches of 100, 6000 Adam steps, 1000 of the 4000 training examples
    held out for validation"""
    first_eval_seed: int = 0
    """the first evaluation seed (generator seeds first_eval_seed, first_eval_seed + 1, ...)"""
    n_eval_seeds: int = 16
    """evaluation seeds: each method runs once on each, paired by seed"""
    first_tuning_seed: int = 100_000
    """the first tuning seed: far from the evaluation seeds, so the two never overlap"""
    n_tuning_seeds: int = 4
    """tuning seeds: each configuration of each family runs on all of them"""
    tuning_budget: int = 32
    """configurations per family (its pool), the same for every family"""
    search_seed: int = 0
    """the Sobol draws' seed (each family scrambles its own draw from it, rlr_methods.family_seed)"""

    def __post_init__(self) -> None:
        self.task = tasks.check_config(self.task)
        for name, minimum in (("first_eval_seed", 0), ("n_eval_seeds", 1), ("first_tuning_seed", 0),
                              ("n_tuning_seeds", 1), ("tuning_budget", 1), ("search_seed", 0)):
            rc.check_int(f"study.{name}", getattr(self, name), minimum)
        if self.task.n_validation == 0:
            raise ValueError("study.task.n_validation must be > 0: tuning scores the validation split")
        overlap = set(self.eval_seeds) & set(self.tuning_seeds)
        if overlap:
            raise ValueError(f"study tuning seeds overlap the evaluation seeds: {sorted(overlap)}")

    @property
    def eval_seeds(self) -> list[int]:
        return list(range(self.first_eval_seed, self.first_eval_seed + self.n_eval_seeds))

    @property
    def tuning_seeds(self) -> list[int]:
        return list(range(self.first_tuning_seed, self.first_tuning_seed + self.n_tuning_seeds))

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# The families: the registry's entries whose rule runs on any model
# ---------------------------------------------------------------------------------------------------


SCHEDULES = ("constant", "cosine", "exponential", "one_cycle", "plateau", "adam_hd")
"""the schedule families: Adam under a fixed schedule (Method.lr_schedule) or under a rule that watches the run
(ReduceLROnPlateau stepped with each mini-batch loss, Adam-HD), all run by the registry on MNIST1DTask"""
LR_FREE = ("schedule_free", "prodigy", "d_adaptation")
"""the learning-rate-free families (Method.optimizer builds one instance per run)"""
FAMILIES = (*SCHEDULES, *LR_FREE)
"""every family tuned here, in the order tables list them"""
PAPER_LR = 1e-2
"""the MNIST-1D paper's Adam lr (its training script's default, get_model_args): the untuned reference"""
PAPER_ADAM = "Adam at lr 1e-2 (the paper's default)"
"""its label"""
PAPER_ACCURACY = 68.0
"""the test accuracy, in %, the MNIST-1D paper reports for its MLP (Greydanus 2020, Table 1)"""


def run_pool(key: str, pool: Sequence[dict], seeds: Sequence[int], config: MNIST1DConfig,
             method: str | None = None) -> list[list[RunResult]]:
    """Every configuration of a pool on every seed, in one batch (the registry's Method.run_pool on MNIST1DTask):
    per configuration, one RunResult per seed, named `method` (default: the family's label)."""
    if key not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {key!r}")
    config = tasks.check_config(config)
    per_configuration = methods.get(key).run_pool(pool, tasks.MNIST1DTask(config), seeds, config.steps)
    label = method or methods.get(key).label
    for runs in per_configuration:
        for run in runs:
            run.method = label
    return per_configuration


def scores(run: RunResult, config: MNIST1DConfig, splits: tasks.MNIST1DSplits | None = None) -> dict[str, float]:
    """A run's errors on its seed's splits (NaN where it diverged): validation and test error (1 - accuracy)
    and cross-entropy, and the training loss (mean mini-batch cross-entropy over its last 100 steps). splits:
    the seed's, when the caller holds them (a study scores many runs per seed)."""
    if run.diverged_at is not None:
        return {name: math.nan for name in ("validation_error", "validation_ce", "test_error", "test_ce", "train_loss")}
    splits = splits if splits is not None else tasks.mnist1d_data(run.seed, config)
    return {"validation_error": 1.0 - tasks.accuracy(run.model, *splits.validation),
            "validation_ce": tasks.cross_entropy(run.model, *splits.validation),
            "test_error": 1.0 - tasks.accuracy(run.model, *splits.test),
            "test_ce": tasks.cross_entropy(run.model, *splits.test),
            "train_loss": float(np.mean(run.series["loss"][-100:]))}


# ---------------------------------------------------------------------------------------------------
# Tuning and the picks
# ---------------------------------------------------------------------------------------------------


def tune(study: MNIST1DStudy, families: Sequence[str] = FAMILIES, progress: Callable = lambda item: item
         ) -> pd.DataFrame:
    """Every family's pool on the tuning seeds: one row per family x configuration x seed, with its
    params (JSON), the scores and the optimiser steps it cost."""
    rows, splits = [], {seed: tasks.mnist1d_data(seed, study.task) for seed in study.tuning_seeds}
    for key in progress(list(families)):
        pool = methods.get(key).configurations(study.tuning_budget, study.search_seed)
        for index, (params, runs) in enumerate(zip(pool, run_pool(key, pool, study.tuning_seeds, study.task))):
            for run in runs:
                rows.append({"family": key, "configuration": index, "params": json.dumps(params, sort_keys=True),
                             "seed": run.seed, "diverged_at": run.diverged_at,
                             **scores(run, study.task, splits[run.seed]),
                             "optimiser_steps": study.task.steps})
    return pd.DataFrame(rows)


def mean_or_inf(values: pd.Series) -> float:
    """The mean of a tuning score over seeds, or +inf when any run diverged (NaN score): a configuration
    (or controller) with a diverged run is never picked over one whose runs all finished."""
    return float(values.mean()) if np.isfinite(values.to_numpy(dtype=float)).all() else math.inf


def configuration_scores(tuning: pd.DataFrame, by: Sequence[str] = ("family", "configuration")) -> pd.DataFrame:
    """Per family x configuration (or per `by`): mean validation error and cross-entropy over the tuning seeds
    (mean_or_inf) and the mean test error there."""
    grouped = tuning.groupby(list(by), sort=False)
    frame = {"validation_error": grouped["validation_error"].agg(mean_or_inf),
             "validation_ce": grouped["validation_ce"].agg(mean_or_inf), "test_error": grouped["test_error"].agg(mean_or_inf)}
    if "params" in tuning:
        frame = {"params": grouped["params"].first(), **frame}
    return pd.DataFrame(frame).reset_index()


SELECTION_RULE = ("the configuration with the lowest mean validation error over the tuning seeds (validation "
                  "cross-entropy breaks a tie; a configuration with a diverged run is never picked)")
"""how a family's pick (and the best learned controller) is made, as the notebook and the reading print it"""


def ranked(scores: pd.DataFrame, what: str) -> pd.DataFrame:
    """Rows of configuration_scores best first by SELECTION_RULE; ValueError naming `what` when every one
    diverged (nothing can be picked)."""
    order = scores.sort_values(["validation_error", "validation_ce"], kind="stable")
    if not math.isfinite(order.iloc[0]["validation_error"]):
        raise ValueError(f"{what}: every candidate diverged on some tuning seed; nothing can be picked")
    return order


def choose(tuning: pd.DataFrame) -> dict[str, dict]:
    """family -> its pick (SELECTION_RULE): params, configuration index, its mean validation error and
    cross-entropy, and the margin over the runner-up (runner-up's validation error / the pick's)."""
    picks = {}
    for key, part in configuration_scores(tuning).groupby("family", sort=False):
        order = ranked(part, key)
        best = order.iloc[0]
        margin = order.iloc[1]["validation_error"] / best["validation_error"] if len(order) > 1 else math.nan
        picks[key] = {"params": json.loads(best["params"]), "configuration": int(best["configuration"]),
                      "validation_error": float(best["validation_error"]), "validation_ce": float(best["validation_ce"]),
                      "runner_up_margin": float(margin)}
    return picks


def choose_method(table: pd.DataFrame, labels: Sequence[str]) -> str:
    """The method among labels (rows of a runs_table on the tuning seeds) that SELECTION_RULE picks: lowest
    mean validation error, a diverged run disqualifying, cross-entropy breaking a tie."""
    part = table[table["method"].isin(labels)]
    if set(part["method"]) != set(labels):
        raise ValueError(f"the table has no runs of {sorted(set(labels) - set(part['method']))}")
    return str(ranked(configuration_scores(part, by=["method"]), "the controllers").iloc[0]["method"])


def best_pick(picks: dict[str, dict], keys: Sequence[str]) -> str:
    """The family among keys whose pick has the lowest mean validation error (tuning seeds only)."""
    candidates = [key for key in keys if key in picks]
    if not candidates:
        raise ValueError(f"no pick among {list(keys)}")
    return min(candidates, key=lambda key: picks[key]["validation_error"])


def budget_curves(tuning: pd.DataFrame, ks: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> pd.DataFrame:
    """Per family, what k trials of its pool would have found (rlr_stats.budget_curve, Dodge et al. 2019) in
    validation error, with the tuning seeds' test error of the pick."""
    parts = []
    for key, part in configuration_scores(tuning).groupby("family", sort=False):
        curve = stats.budget_curve(part["validation_error"], part["test_error"], [k for k in ks if k <= len(part)])
        curve.columns = [column.replace("MSE", "error") for column in curve.columns]
        parts.append(curve.assign(family=methods.get(key).label))
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# A controller trained on MNIST-1D task seeds
# ---------------------------------------------------------------------------------------------------


@dataclass
class ControllerTraining:
    """Notebook 04's DQN controller design trained again, on MNIST-1D task seeds (rlr_env.LRControlVectorEnv):
    how many runs at once, how long, and when its policy is frozen and kept."""

    first_training_seed: int = 200_000
    """the first round's task seeds are first_training_seed + i; later rounds draw generator seeds from the
    environment; none may be an evaluation or tuning seed (checked before and after training)"""
    n_envs: int = 16
    """runs trained at once (the vector environment's K), as notebook 04's controllers"""
    rounds: int = 16
    """episodes per run: n_envs x rounds training episodes of the study's run length"""
    first_checkpoint: int = 2
    """the greedy policy is frozen and kept after this many rounds, after every doubling of them and at the end
    (checkpoints); each is scored on the tuning seeds and the best picked there (SELECTION_RULE), so the
    training length is tuned on validation data like any knob"""
    updates_per_step: int = 16
    """DQN updates per vector step (one per transition with 16 runs, as notebook 04's)"""
    agent_seed: int = 0
    """seed of the agent's Q-network, exploration and replay sampling"""

    def __post_init__(self) -> None:
        for name, minimum in (("first_training_seed", 0), ("n_envs", 1), ("rounds", 1), ("first_checkpoint", 1),
                              ("updates_per_step", 1), ("agent_seed", 0)):
            rc.check_int(f"training.{name}", getattr(self, name), minimum)
        if self.first_checkpoint > self.rounds:
            raise ValueError(f"training.first_checkpoint ({self.first_checkpoint}) must be at most training.rounds "
                             f"({self.rounds})")
        tasks.check_data_seed(self.first_training_seed + self.n_envs - 1, "training.first_training_seed + n_envs - 1")

    @property
    def checkpoints(self) -> list[int]:
        """The rounds after which the policy is kept: first_checkpoint, its doublings below rounds, and rounds."""
        rounds, checkpoint = [], self.first_checkpoint
        while checkpoint < self.rounds:
            rounds, checkpoint = rounds + [checkpoint], 2 * checkpoint
        return rounds + [self.rounds]

    @property
    def first_round_seeds(self) -> list[int]:
        return list(range(self.first_training_seed, self.first_training_seed + self.n_envs))

    def check_disjoint(self, seeds: Sequence[int], study: MNIST1DStudy) -> None:
        """ValueError if any training task seed is one of the study's evaluation or tuning seeds."""
        shared = sorted(set(seeds) & (set(study.eval_seeds) | set(study.tuning_seeds)))
        if shared:
            raise ValueError(f"the controller's training task seeds meet the study's evaluation or tuning seeds "
                             f"{shared[:5]} (training.first_training_seed): move one of them")


def controller_schedule(schedule: rc.ScheduleConfig, steps: int) -> rc.ScheduleConfig:
    """A controller's schedule carried to runs of `steps` optimiser steps: the same lr grid, actions, state and
    reward, and as many decisions per run (the decision interval scaled as TrainedController.scheduler scales it)."""
    if not isinstance(schedule, rc.ScheduleConfig):
        raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
    rc.check_int("steps", steps, 1)
    return replace(schedule, steps=steps, decision_interval=max(1, round(steps * schedule.decision_interval / schedule.steps)))


class TrainedOnMNIST1D(NamedTuple):
    """What train_controller returns."""

    snapshots: dict[int, dict]
    """the greedy policy's weights (plain tensors) after each checkpoint round, keyed by the training episodes
    finished by then (a diverged episode ends early, so this can exceed rounds x n_envs)"""
    history: dict[str, list]
    """rlr_env.train_agent_on_vector_env's history: every finished episode's return, length, seed, and the DQN losses"""
    seconds: float
    """wall seconds of the training (one process, one thread)"""
    optimiser_steps: int
    """Adam steps the training ran, over every episode, finished or not"""


def train_controller(study: MNIST1DStudy, schedule: rc.ScheduleConfig, dqn: rc.DQNConfig,
                     training: ControllerTraining) -> TrainedOnMNIST1D:
    """A DQN controller (rlr_core.DQNAgent at `dqn`) trained on schedule (controller_schedule of a controller's,
    over study.task.steps) for n_envs x rounds MNIST-1D episodes, each a new task seed, through
    rlr_env.train_agent_on_vector_env on LRControlVectorEnv; its greedy policy kept after each checkpoint round."""
    if not isinstance(study, MNIST1DStudy) or not isinstance(training, ControllerTraining):
        raise TypeError("study must be an MNIST1DStudy and training a ControllerTraining")
    if not isinstance(schedule, rc.ScheduleConfig):
        raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
    if not isinstance(dqn, rc.DQNConfig):
        raise TypeError(f"dqn must be a DQNConfig, got {type(dqn).__name__}")
    if schedule.steps != study.task.steps:
        raise ValueError(f"schedule.steps ({schedule.steps}) must be the study's run length ({study.task.steps}): "
                         "use controller_schedule")
    training.check_disjoint(training.first_round_seeds, study)
    env = LRControlVectorEnv(training.n_envs, tasks.MNIST1DTask(study.task), schedule)
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, dqn, training.agent_seed)
    per_round = -(-schedule.steps // schedule.decision_interval) + 1  # an episode's decisions and its autoreset
    snapshots: dict[int, dict] = {}

    def keep(step: int, history: dict[str, list]) -> None:
        snapshots[len(history["episode_returns"])] = {name: tensor.detach().clone()
                                                      for name, tensor in agent.policy_net.state_dict().items()}

    started = time.perf_counter()
    history = train_agent_on_vector_env(env, agent, per_round * training.rounds, training.first_training_seed,
                                        training.updates_per_step, [per_round * r for r in training.checkpoints], keep)
    training.check_disjoint(history["episode_seeds"], study)
    finished = np.minimum(np.array(history["episode_lengths"], dtype=np.int64) * schedule.decision_interval,
                          schedule.steps).sum()
    unfinished = env.elapsed.cpu().numpy()[~env.autoreset].sum()  # episodes still running at the end
    return TrainedOnMNIST1D(snapshots, history, time.perf_counter() - started, int(finished + unfinished))


def trained_label(episodes: int) -> str:
    """The label of the MNIST-1D controller frozen after `episodes` training episodes."""
    return f"DQN controller trained on MNIST-1D ({episodes} episodes)"


# ---------------------------------------------------------------------------------------------------
# Evaluation: the picks, the paper's Adam and the learned controllers on the evaluation seeds
# ---------------------------------------------------------------------------------------------------


def tuned_label(key: str) -> str:
    """The label of a family's pick (the registry's tuned label)."""
    return methods.get(key).tuned_label


def run_picks(picks: dict[str, dict], seeds: Sequence[int], config: MNIST1DConfig) -> dict[str, list[RunResult]]:
    """Each family's pick on the seeds, and Adam at the paper's default lr (PAPER_LR, untuned)."""
    runs = {tuned_label(key): run_pool(key, [pick["params"]], seeds, config, tuned_label(key))[0]
            for key, pick in picks.items()}
    runs[PAPER_ADAM] = tasks.train_mnist1d_batched(seeds, config, PAPER_LR, method=PAPER_ADAM)
    return runs


def run_controllers(controllers: dict[str, Any], seeds: Sequence[int], config: MNIST1DConfig,
                    loss_average: str = "interval") -> dict[str, list[RunResult]]:
    """Each frozen controller (rlr_controllers.TrainedController) steering Adam on the seeds: its
    scheduler(optimizer, config.steps, loss_average) per run, stepped with the mini-batch losses (their mean
    over each decision interval by default: one mini-batch's loss is a noisy reading of the training loss the
    controller was trained on) and with the validation loss at its decisions where its state reads it."""
    return {label: tasks.train_mnist1d_batched(
                seeds, config, make_controller=lambda optimizer, c=controller: c.scheduler(optimizer, config.steps, loss_average),
                method=label)
            for label, controller in controllers.items()}


def runs_table(runs: dict[str, Sequence[RunResult]], config: MNIST1DConfig, kinds: dict[str, str]) -> pd.DataFrame:
    """One row per method x seed: kind, the scores, diverged_at, and the budget (every run: config.steps
    optimiser steps; the primary tests pair runs of one budget)."""
    seeds = {run.seed for group in runs.values() for run in group}
    splits = {seed: tasks.mnist1d_data(seed, config) for seed in sorted(seeds)}
    rows = [{"method": label, "kind": kinds[label], "seed": run.seed, "budget": "same optimiser steps",
             "diverged_at": run.diverged_at, "optimiser_steps": config.steps, **scores(run, config, splits[run.seed])}
            for label, group in runs.items() for run in group]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# The primary comparisons and the reading
# ---------------------------------------------------------------------------------------------------


def primary_comparisons(constant: str, schedule: str, lr_free: str, controller: str
                        ) -> list[tuple[str, str, str, str]]:
    """The pre-registered family (rlr_stats.primary_tests, Holm over all 8): on test error and on test
    cross-entropy, the best tuned schedule against the tuned constant, the best learning-rate-free optimiser
    against the tuned constant, and the best learned controller (notebook 04's, frozen, or the one trained on
    MNIST-1D here: whichever the tuning seeds pick) against the tuned constant and against the best tuned
    schedule."""
    pairs = [(schedule, constant), (lr_free, constant), (controller, constant), (controller, schedule)]
    return [("same optimiser steps", method, reference, metric)
            for metric in ("test_error", "test_ce") for method, reference in pairs]


def transfer_comparison(table: pd.DataFrame, polynomial: str, native: str) -> dict:
    """Does a controller trained on polynomials do as well as one trained on the task itself? The paired test
    error of notebook 04's best controller on the tuning seeds (polynomial) against the controller trained on
    MNIST-1D task seeds that the tuning seeds pick (native), by rlr_stats.paired_comparison (ratio > 1: the
    polynomial one is better), unadjusted: descriptive, outside the Holm family. ValueError naming a label the
    table does not hold."""
    for name, label in (("polynomial", polynomial), ("native", native)):
        if label not in set(table["method"]):
            raise ValueError(f"{name}: {label!r} is not a method of the table (it holds {sorted(set(table['method']))})")
    return {"method": polynomial, "against": native, **stats.paired_comparison(table, "test_error", native, polynomial)}


METRIC_WORDS = {"test_error": "test error", "test_ce": "test cross-entropy"}


def primary_markdown(primary: pd.DataFrame) -> str:
    """The primary tests as a table: method, reference, metric, the method's value against the reference's
    (Hodges-Lehmann ratio, in the one convention) with its CI at the test's Holm level, wins, Holm p,
    the outcome."""
    rows = [{"method": row["method"], "against": row["against"], "metric": METRIC_WORDS[row["metric"]],
             "method's value [CI at the Holm level]": f"{report.fold_interval(row['ratio'], row['ci_low'], row['ci_high'], '.3f')} "
                                                      f"({row['confidence']:.1%})",
             "wins": f"{row['wins']}/{row['seeds']}" + (f", {row['dropped']} dropped" if row["dropped"] else ""),
             "Holm p": f"{row['p_holm']:.3g}", "outcome": report.outcome(row)}
            for _, row in primary.iterrows()]
    return report.markdown_table(pd.DataFrame(rows))


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The 95% BCa bootstrap CI of a mean over seeds (scipy.stats.bootstrap, seeded): accuracies are
    bounded and near-symmetric, so their centre is the mean, not rlr_stats' geometric mean of MSEs.
    NaN under two values or when every value is the same (nothing to resample)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.ptp(values) == 0:
        return math.nan, math.nan
    result = bootstrap((values,), np.mean, confidence_level=confidence, method="BCa", rng=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


CHANCE_ERROR = 0.9
"""the error of guessing among the 10 classes: what a diverged run scores in the summaries"""


def with_divergence_at_chance(table: pd.DataFrame) -> pd.Series:
    """Each run's test error, a diverged run's counted as chance (CHANCE_ERROR): a method is not made to look
    better by leaving out the seeds it diverged on (the primary tests drop such pairs and say how many)."""
    return table["test_error"].where(table["diverged_at"].isna(), CHANCE_ERROR)


def test_accuracy_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: kind, seeds, diverged, mean test accuracy over every seed (a diverged run at chance) with
    its 95% bootstrap CI (percent), mean test cross-entropy over the finished runs; best first."""
    rows = []
    for label, part in table.groupby("method", sort=False):
        accuracy = 1.0 - with_divergence_at_chance(part).to_numpy(dtype=float)
        low, high = mean_interval(accuracy)
        rows.append({"method": label, "kind": part["kind"].iloc[0], "seeds": len(part),
                     "diverged": int(part["diverged_at"].notna().sum()), "test accuracy": 100 * accuracy.mean(),
                     "CI low": 100 * low, "CI high": 100 * high,
                     "test cross-entropy": part.loc[part["diverged_at"].isna(), "test_ce"].mean()})
    return pd.DataFrame(rows).sort_values("test accuracy", ascending=False, ignore_index=True)


def error_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: kind, the geometric mean of test error over every seed (a diverged run at chance) and its
    95% BCa bootstrap CI (rlr_stats), in the columns rlr_report.plot_summary reads (notebook 08's figure)."""
    rows = []
    for label, part in table.groupby("method", sort=False):
        errors = with_divergence_at_chance(part).to_numpy(dtype=float)
        low, high = stats.bootstrap_interval(errors) if len(errors) > 1 and np.ptp(errors) > 0 else (math.nan, math.nan)
        rows.append({"method": label, "kind": part["kind"].iloc[0], "geometric mean": stats.geometric_mean(errors),
                     "gm CI low": low, "gm CI high": high})
    return pd.DataFrame(rows)


KIND_LEGEND = {**report.SUMMARY_KINDS, "original": ("untuned reference (the paper's Adam)", report.SUMMARY_KINDS["original"][1])}
"""kind -> (legend label, colour) in this notebook's figures: the summary figure's, the grey dot being the paper's Adam"""


KIND_WORDS = {"schedule": "tuned schedules (the constant lr included)", "lr_free": "tuned learning-rate-free optimisers",
              "controller": "learned controllers (notebook 04's, trained on polynomials, and the one trained on MNIST-1D)",
              "original": "untuned references"}
"""a kind of method as the reading names it"""


def reading(summary: pd.DataFrame, primary: pd.DataFrame, roles: dict[str, str], paper_accuracy: float,
            config: MNIST1DConfig, transfer: dict | None = None, training: dict | None = None) -> str:
    """The notebook's generated reading: the roles the primary tests compare (picked on validation), the
    highest test accuracy within each kind, the paper's Adam and the tuned constant against the paper's
    accuracy (with the training-set difference), each primary comparison on test error, and where given the
    transfer comparison (transfer_comparison, descriptive) and the controller's training compute (training:
    its episodes and optimiser steps, against one family's tuning)."""
    by_method = summary.set_index("method")
    lines = ["- Compared by the primary tests (each picked on the tuning seeds' validation error): "
             + "; ".join(f"{role}: {label}" for role, label in roles.items()) + "."]
    for kind, part in summary.groupby("kind", sort=False):
        best = part.iloc[0]
        diverged = f", {best['diverged']} of {best['seeds']} runs diverged (scored at chance)" if best["diverged"] else ""
        lines.append(f"- Highest test accuracy among {KIND_WORDS[kind]}: {best['method']}, {best['test accuracy']:.1f}% "
                     f"[{best['CI low']:.1f}, {best['CI high']:.1f}]{diverged}.")
    paper, constant = by_method.loc[PAPER_ADAM, "test accuracy"], by_method.loc[roles["tuned constant"], "test accuracy"]
    lines.append(f"- {PAPER_ADAM} reaches {paper:.1f}% test accuracy and the tuned constant lr {constant:.1f}%; the MNIST-1D "
                 f"paper reports about {paper_accuracy:.0f}% for this MLP trained on all {GENERATED_TRAIN} training "
                 f"examples, where these runs train on {config.n_train} ({config.n_validation} are held out for tuning).")
    for _, row in primary[primary["metric"] == "test_error"].iterrows():
        lines.append(f"- {row['method']} against {row['against']}: {report.fold(row['ratio'], '.3f')} test error, "
                     f"{row['wins']} of {row['seeds']} seeds lower, Holm p = {row['p_holm']:.3g}: {report.outcome(row)}.")
    if transfer is not None:
        lines.append(f"- Transfer across tasks (descriptive, not in the Holm family): {transfer['method']} against "
                     f"{transfer['against']}: {report.fold(transfer['ratio'], '.3f')} test error, {transfer['wins']} of "
                     f"{transfer['seeds']} seeds lower, unadjusted Wilcoxon p = {transfer['p_value']:.3g}.")
    if training is not None:
        lines.append(f"- Compute: the controller trained on MNIST-1D took {training['episodes']} training episodes "
                     f"({training['optimiser_steps']:,} optimiser steps, its configuration carried over from notebook 04's "
                     f"search on polynomials) where each family's tuning took {training['tuning_steps_per_family']:,}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The notebook's summary: its block of the site's MNIST-1D page
# ---------------------------------------------------------------------------------------------------

NOTEBOOK = "07_mnist1d"
"""the notebook whose results this module renders"""


def summary_markdown(results: str | Path) -> str:
    """The 'mnist1d' block, rendered from results/mnist1d_summary.json: the setup in a line, the reading, every
    method's test accuracy and cross-entropy, the primary tests."""
    path = Path(results) / "mnist1d_summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook {NOTEBOOK} first")
    saved = json.loads(path.read_text())
    setup, summary = saved["study"], pd.DataFrame(saved["summary"])
    table = pd.DataFrame({"method": summary["method"], "kind": summary["kind"],
                          "test accuracy, % [95% CI]": [f"{row['test accuracy']:.1f} [{row['CI low']:.1f}, {row['CI high']:.1f}]"
                                                        for _, row in summary.iterrows()],
                          "test cross-entropy": summary["test cross-entropy"].map("{:.3f}".format),
                          "diverged": summary["diverged"]})
    task = setup["task"]
    lines = [f"MNIST-1D, the paper's {task['model'].upper()} ({', '.join(map(str, task['hidden_sizes']))} hidden), Adam on "
             f"mini-batches of {task['batch_size']} for {task['steps']:,} steps; {setup['tuning_budget']} configurations per "
             f"family on {setup['n_tuning_seeds']} tuning seeds, {setup['n_eval_seeds']} evaluation seeds.", "",
             saved["reading"], "", report.markdown_table(table), "", primary_markdown(pd.DataFrame(saved["primary"]))]
    return "\n".join(lines)


def headline_markdown(results: str | Path) -> str:
    """The 'mnist1d-headline' block, the README's line under the verdict's headline: on MNIST-1D, the best
    tuned schedule's test accuracy, and the best learned controller against it (the primary test on test error)."""
    saved = json.loads((Path(results) / "mnist1d_summary.json").read_text())
    summary, roles = pd.DataFrame(saved["summary"]).set_index("method"), saved["roles"]
    schedule, controller = roles["best tuned schedule"], roles["best learned controller"]
    test = next(row for row in saved["primary"] if row["metric"] == "test_error" and row["method"] == controller
                and row["against"] == schedule)
    return (f"- On MNIST-1D (notebook 07, the paper's MLP, {saved['study']['n_eval_seeds']} seeds): the best tuned schedule, "
            f"{schedule}, reaches {summary.loc[schedule, 'test accuracy']:.1f}% test accuracy; the best learned controller "
            f"on MNIST-1D's tuning seeds, {controller}, {summary.loc[controller, 'test accuracy']:.1f}%: "
            f"{report.fold(test['ratio'], '.2f')} test error than the schedule ({test['wins']} of {test['seeds']} seeds "
            f"lower; {'significant' if test['significant'] else 'not significant'}, Holm p {test['p_holm']:.2g}).")


def summary_blocks(results: str | Path) -> dict[str, str]:
    """This notebook's blocks (block name -> markdown), as readme.py places them."""
    return {"mnist1d": summary_markdown(results).strip(), "mnist1d-headline": headline_markdown(results).strip()}


def write_summary(results: str | Path) -> Path:
    """results/summaries/07_mnist1d.json in rlr_summaries' format ({"notebook", "blocks"}), written atomically.
    Rendered here rather than in rlr_summaries.SUMMARIES: an entry there would make rlr_summaries import this
    module, and so put MNIST-1D's code among the inputs (rlr_provenance) of every notebook that writes a summary."""
    path = Path(results) / "summaries" / f"{NOTEBOOK}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"notebook": NOTEBOOK, "blocks": summary_blocks(results)}, indent=1) + "\n")
    return path
