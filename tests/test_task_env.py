"""LRControlVectorEnv, the learning-rate problem on any task: on the polynomial task a task object
(rlr_batched.PolynomialTask) is the TaskConfig it holds, transition for transition (through autoresets, partial
resets and divergence; tests/test_vector_env.py holds that one to LRControlEnv); on MNIST-1D a policy run
through it steers Adam exactly as the same policy does as a PolicyScheduler(loss_average='interval') in
rlr_tasks.train_mnist1d_batched (the loop a user's runs take); an agent trains on it; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rlr_batched
import rlr_core as rc
import rlr_env
import rlr_tasks
from rlr_engine import Config
from rlr_env import LRControlVectorEnv

POLYNOMIAL_SCHEDULES = {
    "validation features and reward, interval 7": rc.ScheduleConfig(
        steps=30, decision_interval=7, features="validation", reward="validation", lr_factors=(0.5, 1.0, 2.0),
        validation_examples=64),
    "original (raw, every step)": rc.ScheduleConfig(steps=6),
}


@pytest.mark.parametrize("name", list(POLYNOMIAL_SCHEDULES))
def test_a_polynomial_task_object_is_the_task_config_it_holds(name: str):
    schedule, n_envs = POLYNOMIAL_SCHEDULES[name], 3
    reference = LRControlVectorEnv(n_envs, schedule=schedule, dtype="float64")
    task = rlr_batched.PolynomialTask(Config(dtype="float64"), validation_examples=schedule.validation_examples)
    generic = LRControlVectorEnv(n_envs, task, schedule)
    assert task.dtype == torch.float64 and generic.task is task
    for got, expected in zip(generic.reset(seed=11), reference.reset(seed=11)):
        compare(got, expected)
    rng = np.random.default_rng(0)
    for t in range(3 * -(-schedule.steps // schedule.decision_interval) + 2):
        actions = rng.integers(0, schedule.n_actions, n_envs)
        for got, expected in zip(generic.step(actions), reference.step(actions)):
            compare(got, expected)
        if t == 4:  # a partial reset of run 1 mid-episode: its own new task, the others go on
            options = {"reset_mask": np.array([False, True, False])}
            for got, expected in zip(generic.reset(seed=[1, 2, 3], options=options),
                                     reference.reset(seed=[1, 2, 3], options=options)):
                compare(got, expected)


def compare(got, expected) -> None:
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            compare(got[key], expected[key])
    else:
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float), rtol=1e-12, atol=1e-15)


def test_a_diverging_run_terminates_alone_whichever_way_the_polynomial_task_is_given():
    schedule = rc.ScheduleConfig(lr_grid=(1e-3, 1e9), start_index=0, index_shifts=(0, 1), steps=50)
    reference = LRControlVectorEnv(2, schedule=schedule, divergence_penalty=-7.0)
    generic = LRControlVectorEnv(2, rlr_batched.PolynomialTask(), schedule, divergence_penalty=-7.0)
    generic.reset(seed=0), reference.reset(seed=0)
    terminated_once = False
    for _ in range(12):
        got, expected = generic.step(np.array([1, 0])), reference.step(np.array([1, 0]))
        for a, b in zip(got, expected):
            compare(a, b)
        terminated_once |= bool(got[2][0])
    assert terminated_once


MNIST1D = rlr_tasks.MNIST1DConfig(steps=90, n_validation=500)


def fixed_policy(observations: np.ndarray) -> np.ndarray:
    """A deterministic policy that moves the lr both ways: up while the loss falls fast, down otherwise."""
    return np.where(observations[:, 1] < -0.05, 2, np.where(observations[:, 3] < 0.5, 0, 1))


@pytest.mark.parametrize("features", ["control", "validation"])
def test_on_mnist1d_a_policy_steers_adam_as_its_policy_scheduler_does_in_a_users_loop(features: str, monkeypatch):
    monkeypatch.setattr(rlr_tasks, "DRAW_CHUNK", 7)  # mini-batches drawn 7 steps at a time: many refills in 90 steps
    schedule = rc.ScheduleConfig(lr_grid=tuple(np.logspace(-5, np.log10(0.3), 12)), start_index=7, steps=MNIST1D.steps,
                                 decision_interval=8, features=features, reward="training", lr_factors=(0.5, 1.0, 2.0))
    seeds = [3, 4]
    env = LRControlVectorEnv(len(seeds), rlr_tasks.MNIST1DTask(MNIST1D), schedule)
    observation, _ = env.reset(seed=seeds)
    losses, lrs, done = [[], []], [[], []], np.zeros(2, dtype=bool)
    while not done.all():
        observation, _, terminated, truncated, info = env.step(fixed_policy(observation))
        for k in range(2):
            if not done[k]:
                taken = info["steps_taken"][k]
                losses[k] += [*info["step_losses"][k, :taken]]
                lrs[k] += [info["lr"][k]] * taken
        done |= terminated | truncated
    runs = rlr_tasks.train_mnist1d_batched(
        seeds, MNIST1D, make_controller=lambda optimizer: rc.PolicyScheduler(optimizer, fixed_policy, schedule, "interval"))
    for k, run in enumerate(runs):
        assert run.diverged_at is None
        np.testing.assert_array_equal(run.series["lr"], lrs[k])
        assert len(set(lrs[k])) > 2, "the policy moved the lr"
        # the env's step t loss is taken after update t, the loop's before it: the same losses, one step apart
        np.testing.assert_array_equal(run.series["loss"][1:], losses[k][:-1])


def test_on_mnist1d_restarted_and_out_of_step_runs_are_each_the_run_of_their_seed_alone(monkeypatch):
    """Run 1 is restarted mid-episode (a partial reset), so the two runs are out of step and reach their time
    limits, and autoreset, at different vector steps; each run must still be exactly the run of its seed in an
    environment of its own, stream, weights and lrs included."""
    monkeypatch.setattr(rlr_tasks, "DRAW_CHUNK", 7)
    schedule = rc.ScheduleConfig(steps=40, decision_interval=10, features="control",
                                 lr_factors=(0.5, 1.0, 2.0), lr_grid=tuple(np.logspace(-5, -1, 12)))
    task = rlr_tasks.MNIST1DTask(rlr_tasks.MNIST1DConfig(steps=40, n_validation=500))
    together = LRControlVectorEnv(2, task, schedule)
    together.reset(seed=[5, 6])
    alone = {0: LRControlVectorEnv(1, task, schedule), 1: LRControlVectorEnv(1, task, schedule)}
    alone[0].reset(seed=[5]), alone[1].reset(seed=[6])
    seeds_seen = {0: [5], 1: [6]}
    for t in range(12):
        if t == 2:
            together.reset(seed=[7, 8], options={"reset_mask": np.array([False, True])})
            alone[1].reset(seed=[8])
            seeds_seen[1].append(8)
        actions = np.array([2, 0]) if t % 3 else np.array([1, 2])
        got = together.step(actions)
        for k in (0, 1):
            expected = alone[k].step(actions[k:k + 1])
            if got[4]["episode_seed"][k] != seeds_seen[k][-1]:  # an autoreset drew a new seed: the alone run takes it
                seeds_seen[k].append(int(got[4]["episode_seed"][k]))
                expected = alone[k].reset(seed=[seeds_seen[k][-1]])
                np.testing.assert_allclose(got[0][k], expected[0][0], rtol=1e-5)
                continue
            # K = 2 and K = 1 batched passes may round differently in float32; another batch or weights would not
            np.testing.assert_allclose(got[0][k], expected[0][0], rtol=1e-5)
            np.testing.assert_allclose(got[1][k], expected[1][0], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got[4]["step_losses"][k], expected[4]["step_losses"][0], rtol=1e-5)
    assert len(seeds_seen[0]) >= 3 and len(seeds_seen[1]) >= 3, "both runs went through autoresets, out of step"


def test_an_agent_trains_on_mnist1d_and_every_seed_it_draws_is_a_generator_seed():
    schedule = rc.ScheduleConfig(steps=40, decision_interval=10, features="control", lr_factors=(0.5, 1.0, 2.0),
                                 lr_grid=tuple(np.logspace(-5, -1, 12)))
    env = LRControlVectorEnv(2, rlr_tasks.MNIST1DTask(rlr_tasks.MNIST1DConfig(steps=40)), schedule)
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, rc.DQNConfig(learning_starts=4, batch_size=4), seed=0)
    history = rlr_env.train_agent_on_vector_env(env, agent, 12, seed=200_000)
    assert len(history["episode_returns"]) == 4 and len(history["dqn_losses"]) > 0
    assert history["episode_seeds"][:2] == [200_000, 200_001]
    assert all(0 <= seed < 2**32 for seed in history["episode_seeds"])
    assert len(agent.replay) == 2 * (4 + 4 + 2), "every real transition (two episodes and two steps), none at an autoreset"


def test_bad_input_is_refused_before_any_run():
    schedule = rc.ScheduleConfig(steps=10)
    with pytest.raises(TypeError, match="task must be a TaskConfig, None or a task object"):
        LRControlVectorEnv(2, rlr_tasks.MNIST1DConfig(), schedule)
    with pytest.raises(ValueError, match="its own dtype and device"):
        LRControlVectorEnv(2, rlr_batched.PolynomialTask(), schedule, dtype="float64")
    with pytest.raises(ValueError, match="num_envs"):
        LRControlVectorEnv(0, rlr_batched.PolynomialTask(), schedule)
    with pytest.raises(TypeError, match="schedule"):
        LRControlVectorEnv(2, rlr_batched.PolynomialTask(), "schedule")
    env = LRControlVectorEnv(2, rlr_batched.PolynomialTask(), schedule)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 0]))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, 9]))
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([True])})
    with pytest.raises(ValueError, match="seed"):
        rlr_tasks.MNIST1DTask().runs([2**32])
    mnist1d = LRControlVectorEnv(2, rlr_tasks.MNIST1DTask(rlr_tasks.MNIST1DConfig(steps=10)), schedule)
    with pytest.raises(ValueError, match="seed bound"):
        mnist1d.reset(seed=2**32 - 1)  # run 1 would get 2**32
    with pytest.raises(ValueError, match="seed bound"):
        mnist1d.reset(seed=[0, 2**32])
    assert mnist1d.runs is None, "nothing was built or restarted"
    validation = rc.ScheduleConfig(steps=10, features="validation", lr_factors=(0.5, 1.0, 2.0), validation_examples=64)
    with pytest.raises(ValueError, match="n_validation"):
        LRControlVectorEnv(2, rlr_tasks.MNIST1DTask(rlr_tasks.MNIST1DConfig(steps=10, n_validation=0)), validation)
    with pytest.raises(ValueError, match="validation_examples"):
        LRControlVectorEnv(2, rlr_batched.PolynomialTask(validation_examples=1024), validation)
    with pytest.raises(TypeError, match="config must be a Config"):
        rlr_batched.PolynomialTask(rc.TaskConfig())
    with pytest.raises(ValueError, match="validation_examples"):
        rlr_batched.PolynomialTask(validation_examples=-1)
    with pytest.raises(ValueError, match="no monitoring split"):
        rlr_batched.PolynomialTask(validation_examples=0).runs([0]).validation_losses()


def test_the_polynomial_task_refuses_bad_settings_naming_them():
    with pytest.raises(ValueError, match="loss_reading"):
        rlr_batched.PolynomialTask(loss_reading="best")
    with pytest.raises(ValueError, match="seed_bound"):
        rlr_batched.PolynomialTask(seed_bound=0)
    with pytest.raises(ValueError, match="configs must name at least one run"):
        rlr_batched.PolynomialRuns([])
