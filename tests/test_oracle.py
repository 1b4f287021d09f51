"""The oracle for the controllers' policy class (rlr_oracle): the clone is the brute-force optimum, a path of
the class is cloned exactly, an action sequence's path is what the controller's environment runs, and the
oracle's runs are train_full_batch on that path. Inputs are refused, naming the parameter, before compute."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict

import numpy as np
import pytest

import rlr_batched
import rlr_core as rc
import rlr_methods as methods
import rlr_oracle as oracle
from rlr_controllers import ControllerConfig, decisions_per_episode, run_policy
from rlr_engine import Config

NARROW = (1e-3, 0.1)
"""a range the start (grid point 5, 8.1e-3) leaves within 5 decisions both ways (4 doublings pass 0.1, 4
halvings pass 1e-3; 3 of 2.5 or of 0.4 do), so short sequences are clipped at both ends"""
SMALL_STEPS = 18
"""4 steps a decision: 5 decisions, the last one of 2 steps (a remainder, as the env cuts it)"""
FACTORS = [(0.5, 1.0, 2.0), (0.4, 1.0, 2.5)]
"""the default factors (powers of 2: few states) and ones whose products round, so that one lr reached two
ways is two floats, two states (8 states for 7 lrs after 3 decisions)"""


def small_controller(factors: tuple = (0.5, 1.0, 2.0)) -> ControllerConfig:
    return ControllerConfig(decision_interval=4, lr_range=NARROW, lr_factors=factors)


def brute_force_best(target: np.ndarray, controller: ControllerConfig, steps: int) -> float:
    """The smallest clone_cost over every action sequence (3^5 = 243 here)."""
    decisions = len(oracle.decision_segments(controller, steps))
    return min(oracle.clone_cost(target, actions, controller, steps)
               for actions in itertools.product(range(len(controller.lr_factors)), repeat=decisions))


# --- the clone against brute force ----------------------------------------------------------------------------


@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_clone_is_the_best_of_every_action_sequence(factors: tuple, seed: int):
    """Random per-step targets, log-uniform from two decades below the range to one above it (so paths
    that clip compete), against the exhaustive minimum."""
    controller = small_controller(factors)
    target = 10 ** np.random.default_rng(seed).uniform(-5, 1, SMALL_STEPS)
    assert target.min() < NARROW[0] and target.max() > NARROW[1]
    actions = oracle.cloned_actions(target, controller, SMALL_STEPS)
    assert len(actions) == 5 and all(isinstance(action, int) for action in actions)
    best = brute_force_best(target, controller, SMALL_STEPS)
    assert oracle.clone_cost(target, actions, controller, SMALL_STEPS) == pytest.approx(best, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("outside, bound", [(1.0, NARROW[1]), (1e-6, NARROW[0])])
def test_a_target_beyond_the_range_is_cloned_onto_its_clip_point(factors: tuple, outside: float, bound: float):
    """A target above (below) the whole range: the best path runs to the clip point and stays there."""
    controller = small_controller(factors)
    target = np.full(SMALL_STEPS, outside)
    actions = oracle.cloned_actions(target, controller, SMALL_STEPS)
    path = oracle.open_loop_lrs(actions, controller, SMALL_STEPS)
    assert path[-1] == bound and (path[-4:] == bound).all()
    assert oracle.clone_cost(target, actions, controller, SMALL_STEPS) == pytest.approx(
        brute_force_best(target, controller, SMALL_STEPS), rel=1e-12)


@pytest.mark.parametrize("factors", FACTORS)
def test_a_reachable_target_is_cloned_at_cost_zero_by_brute_force_and_the_clone(factors: tuple):
    controller = small_controller(factors)
    target = oracle.open_loop_lrs([2, 2, 2, 2, 0], controller, SMALL_STEPS)  # clipped at 0.1 on the way
    assert target.max() == NARROW[1]
    actions = oracle.cloned_actions(target, controller, SMALL_STEPS)
    assert brute_force_best(target, controller, SMALL_STEPS) == 0.0
    assert oracle.clone_cost(target, actions, controller, SMALL_STEPS) == 0.0


@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_path_of_the_class_is_recovered_exactly(factors: tuple, seed: int):
    """Longer runs than brute force reaches (30 decisions, the last of 50 steps): the clone of a path some
    action sequence gives is that path (the actions may differ where clipping makes two sequences tie)."""
    controller = ControllerConfig(decision_interval=100, lr_factors=factors)
    steps = 2950
    actions = np.random.default_rng(seed).integers(0, 3, 30)
    target = oracle.open_loop_lrs(actions, controller, steps)
    cloned = oracle.cloned_actions(target, controller, steps)
    assert np.array_equal(oracle.open_loop_lrs(cloned, controller, steps), target)
    assert oracle.clone_cost(target, cloned, controller, steps) == 0.0


def test_clone_cost_is_the_rms_distance_in_decades():
    controller = small_controller()
    start = controller.schedule(SMALL_STEPS).lr_grid[controller.start_index]
    keep = [1] * 5
    assert oracle.clone_cost(np.full(SMALL_STEPS, start * 10), keep, controller, SMALL_STEPS) == pytest.approx(1.0)
    half_off = np.r_[np.full(9, start), np.full(9, start * 100)]  # 0 on half the steps, 2 decades on the rest
    assert oracle.clone_cost(half_off, keep, controller, SMALL_STEPS) == pytest.approx(math.sqrt(2.0))


# --- the path of an action sequence is what the controller's environment runs -------------------------------


def test_open_loop_lrs_multiply_and_clip_from_the_start_lr_one_action_per_decision():
    """Computed by hand: the first action already sets the first interval's lr; the 2 steps of the last
    decision (18 = 4 x 4 + 2) hold its lr; doubling past 0.1 stops at 0.1, and halving from there halves 0.1."""
    controller = small_controller()
    start = float(np.logspace(-3, -1, 12)[5])
    path = oracle.open_loop_lrs([2, 2, 2, 2, 0], controller, SMALL_STEPS)
    expected = [start * 2] * 4 + [start * 4] * 4 + [start * 8] * 4 + [NARROW[1]] * 4 + [NARROW[1] / 2] * 2
    assert start * 16 > NARROW[1] and path.tolist() == expected
    assert len(oracle.decision_segments(controller, SMALL_STEPS)) == decisions_per_episode(
        controller.schedule(SMALL_STEPS))


def replay(actions: list[int]):
    """A policy that plays the actions in order, the same on every task (and fails past their end)."""
    remaining = iter(actions)
    return lambda observations: np.full(len(observations), next(remaining))


def test_replaying_actions_in_the_env_is_train_full_batch_on_their_path():
    """The env (run_policy on LRControlVectorEnv) and rlr_batched.train_full_batch build the K runs with the
    same rlr_batched.PolynomialRuns (data, init), step the same BatchedAdam with one lr per run and take the
    loss from the same mse_loss_and_grad, on the same K: the same floating-point operations in the same
    order, so the tolerance is zero (float32, the default)."""
    controller = ControllerConfig(decision_interval=10)
    steps, seeds, actions = 35, [0, 1], [2, 0, 2, 2]  # 4 decisions, the last of 5 steps
    config = Config().with_overrides({"schedule": asdict(controller.schedule(steps))})
    path = oracle.open_loop_lrs(actions, controller, steps)
    in_env = run_policy(config, replay(actions), seeds)
    batched = rlr_batched.train_full_batch(config, seeds, path, steps)
    for env_run, batched_run in zip(in_env, batched):
        assert env_run.diverged_at is None and len(env_run.series["loss"]) == steps
        assert np.array_equal(env_run.series["lr"], path) and np.array_equal(batched_run.series["lr"], path)
        assert np.array_equal(env_run.series["loss"], batched_run.series["loss"])
    assert not np.array_equal(path, np.full(steps, path[0]))  # the actions did move the lr


# --- the oracle's runs ----------------------------------------------------------------------------------------


def test_the_oracle_of_a_schedule_in_the_class_reruns_that_schedule():
    """A tuned run whose lr path the controller can play: the oracle clones it exactly and its runs are that
    run's, loss for loss, on the same seeds (the same batch, so bit for bit)."""
    controller = ControllerConfig(decision_interval=10)
    steps, seeds = 30, [3, 4]
    config = Config()
    path = oracle.open_loop_lrs([2, 2, 0], controller, steps)
    tuned = rlr_batched.train_full_batch(config, seeds, path, steps, method="tuned_schedule")
    runs = oracle.oracle_runs(tuned[0], controller, config, seeds, steps)
    assert [run.seed for run in runs] == seeds
    assert all(run.method == oracle.ORACLE_METHOD == "oracle" for run in runs)
    for run, reference in zip(runs, tuned):
        assert np.array_equal(run.series["lr"], path) and np.array_equal(run.series["loss"], reference.series["loss"])
        assert run.config["schedule"] == asdict(controller.schedule(steps))


def test_the_oracle_of_a_schedule_outside_the_class_runs_its_clone():
    """A cosine decay (not a path of halvings and doublings): the runs use the clone's path, which is
    nearer the schedule than holding the start lr."""
    controller = ControllerConfig(decision_interval=10)
    steps = 60
    cosine = 1e-5 + 0.5 * (3e-2 - 1e-5) * (1 + np.cos(np.pi * np.arange(steps) / steps))
    actions = oracle.cloned_actions(cosine, controller, steps)
    runs = oracle.oracle_runs(cosine, controller, Config(), [0], steps)
    assert np.array_equal(runs[0].series["lr"], oracle.open_loop_lrs(actions, controller, steps))
    held_at_start = oracle.clone_cost(cosine, [1] * 6, controller, steps)
    assert 0 < oracle.clone_cost(cosine, actions, controller, steps) < held_at_start


def test_the_oracles_label_is_its_own():
    labels = {method.label for method in methods.REGISTRY.values()} | set(methods.tuned_labels())
    assert oracle.ORACLE.startswith("oracle: ") and oracle.ORACLE not in labels


# --- inputs are refused, naming the parameter, before compute --------------------------------------------------


TARGET = np.full(SMALL_STEPS, 1e-2)


@pytest.mark.parametrize("target, error, match", [
    (np.full(SMALL_STEPS - 1, 1e-2), ValueError, r"target_lrs must hold one lr per step, shape \(18,\)"),
    (np.full((2, SMALL_STEPS), 1e-2), ValueError, "target_lrs must hold one lr per step"),
    (np.r_[TARGET[:-1], 0.0], ValueError, "target_lrs must hold finite learning rates > 0, got 0.0 at step 17"),
    (np.r_[-1e-3, TARGET[1:]], ValueError, "target_lrs must hold finite learning rates > 0"),
    (np.r_[np.nan, TARGET[1:]], ValueError, "target_lrs must hold finite"),
    (np.r_[np.inf, TARGET[1:]], ValueError, "target_lrs must hold finite"),
    (["0.01"] * SMALL_STEPS, TypeError, "target_lrs must hold numbers"),
    ([True] * SMALL_STEPS, TypeError, "target_lrs must hold numbers"),
    (0.01, TypeError, "target_lrs must be a sequence"),
])
def test_cloning_refuses_a_target_that_is_no_per_step_lr_path(target, error, match):
    with pytest.raises(error, match=match):
        oracle.cloned_actions(target, small_controller(), SMALL_STEPS)
    with pytest.raises(error, match=match):
        oracle.clone_cost(target, [1] * 5, small_controller(), SMALL_STEPS)


@pytest.mark.parametrize("steps, error, match", [
    (18.0, TypeError, "steps must be an int"), (True, TypeError, "steps must be an int"),
    ("18", TypeError, "steps must be an int"), (0, ValueError, "steps must be >= 1"),
    (3, ValueError, r"controller.decision_interval \(4\) must be at most the run's steps \(3\)")])
def test_every_function_refuses_steps_that_are_no_run_length(steps, error, match):
    controller = small_controller()
    calls = [lambda: oracle.cloned_actions(TARGET, controller, steps),
             lambda: oracle.open_loop_lrs([1] * 5, controller, steps),
             lambda: oracle.clone_cost(TARGET, [1] * 5, controller, steps),
             lambda: oracle.oracle_runs(TARGET, controller, Config(), [0], steps)]
    for call in calls:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("controller", [rc.ScheduleConfig(), None, {"decision_interval": 4}])
def test_every_function_refuses_a_controller_that_is_no_controller_config(controller):
    calls = [lambda: oracle.cloned_actions(TARGET, controller, SMALL_STEPS),
             lambda: oracle.open_loop_lrs([1] * 5, controller, SMALL_STEPS),
             lambda: oracle.clone_cost(TARGET, [1] * 5, controller, SMALL_STEPS),
             lambda: oracle.oracle_runs(TARGET, controller, Config(), [0], SMALL_STEPS)]
    for call in calls:
        with pytest.raises(TypeError, match="controller must be a ControllerConfig, got"):
            call()


@pytest.mark.parametrize("actions, error, match", [
    ([1] * 4, ValueError, r"actions must be 5 ints in \[0, 2\]"), ([1, 1, 1, 1, 3], ValueError, "actions must be 5"),
    ([1.0] * 5, TypeError, "actions must be 5 ints"), ([True] * 5, TypeError, "actions must be 5 ints")])
def test_an_action_sequence_must_be_one_valid_action_per_decision(actions, error, match):
    with pytest.raises(error, match=match):
        oracle.open_loop_lrs(actions, small_controller(), SMALL_STEPS)


def oracle_inputs() -> dict:
    """Valid arguments of oracle_runs, for the cases below to spoil one at a time."""
    return {"target": TARGET, "controller": small_controller(), "config": Config(), "seeds": [0, 1],
            "steps": SMALL_STEPS}


def finished_run(**changes) -> object:
    run = rlr_batched.train_full_batch(Config(), [0], TARGET, SMALL_STEPS, method="tuned_schedule")[0]
    for name, value in changes.items():
        setattr(run, name, value)
    return run


@pytest.mark.parametrize("spoilt, error, match", [
    ({"seeds": []}, ValueError, "seeds must name at least one run"),
    ({"seeds": [0, -1]}, ValueError, r"seeds\[1\] must be >= 0"),
    ({"seeds": 0}, TypeError, "seeds must be a sequence"),
    ({"config": {"seed": 0}}, TypeError, "config must be a Config, got dict"),
    ({"target": TARGET[:-1]}, ValueError, r"target must hold one lr per step"),
    ({"target": "schedule"}, TypeError, "target must be a sequence"),
    ({"target": np.r_[TARGET[:-1], -1.0]}, ValueError, "target must hold finite learning rates > 0"),
])
def test_oracle_runs_refuse_bad_inputs_before_cloning(monkeypatch, spoilt, error, match):
    def not_before_the_checks(*args, **kwargs):
        raise AssertionError("cloned before the inputs were checked")
    monkeypatch.setattr(oracle, "cloned_actions", not_before_the_checks)
    monkeypatch.setattr(rlr_batched, "train_full_batch", not_before_the_checks)
    with pytest.raises(error, match=match):
        oracle.oracle_runs(**{**oracle_inputs(), **spoilt})


def test_oracle_runs_refuse_a_run_that_diverged_or_logged_no_lr():
    diverged = finished_run(diverged_at=12)
    diverged.series = {name: values[:12] for name, values in diverged.series.items()}
    with pytest.raises(ValueError, match=r"target \(tuned_schedule, seed 0\) diverged at step 12"):
        oracle.oracle_runs(**{**oracle_inputs(), "target": diverged})
    with pytest.raises(ValueError, match="has no per-step 'lr' series"):
        oracle.oracle_runs(**{**oracle_inputs(), "target": finished_run(series={"loss": np.ones(SMALL_STEPS)})})
    short = finished_run()
    short.series = {"lr": short.series["lr"][:-1]}
    with pytest.raises(ValueError, match=r"target \(tuned_schedule's lr series\) must hold one lr per step"):
        oracle.oracle_runs(**{**oracle_inputs(), "target": short})
