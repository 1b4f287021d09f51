"""LRControlVectorEnv: K tasks at once on the batched engine, held to K single LRControlEnvs (float64,
through autoresets), with Gymnasium 1.x's next-step autoreset, partial resets, divergence as a terminal
state, seeds, and BatchedAdam's per-run restart (K separate torch Adams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rlr_stacked
import rlr_core as rc
import rlr_env

SCHEDULES = {
    "control, interval 4": rc.ScheduleConfig(steps=20, decision_interval=4, features="control", lr_factors=(0.5, 1.0, 2.0)),
    "original (raw, every step)": rc.ScheduleConfig(steps=6),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_vector_env_is_k_single_envs_through_an_autoreset(name: str):
    schedule, n_envs = SCHEDULES[name], 3
    vector = rlr_env.LRControlVectorEnv(n_envs, schedule=schedule, dtype="float64")
    singles = [rlr_env.LRControlEnv(schedule=schedule, dtype="float64") for _ in range(n_envs)]
    observation, info = vector.reset(seed=5)
    assert vector.observation_space.contains(observation.astype(vector.observation_space.dtype))
    expected = np.array([env.reset(seed=5 + k)[0] for k, env in enumerate(singles)])
    np.testing.assert_allclose(observation, expected, rtol=1e-12, atol=1e-14)
    rng = np.random.default_rng(0)
    episode_length = -(-schedule.steps // schedule.decision_interval)
    for t in range(2 * episode_length + 1):
        actions = rng.integers(0, vector.single_action_space.n, n_envs)
        observation, rewards, terminated, truncated, info = vector.step(actions)
        if t == episode_length:  # next-step autoreset: the new task's first observation, reward 0
            assert not terminated.any() and not truncated.any() and (rewards == 0).all()
            expected = np.array([env.reset(seed=int(info["episode_seed"][k]))[0] for k, env in enumerate(singles)])
            np.testing.assert_allclose(observation, expected, rtol=1e-12, atol=1e-14)
            continue
        steps = [env.step(int(action)) for env, action in zip(singles, actions)]
        np.testing.assert_allclose(observation, np.array([step[0] for step in steps]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rewards, [step[1] for step in steps], rtol=1e-9, atol=1e-12)
        assert list(truncated) == [step[3] for step in steps] and not terminated.any()
        assert list(truncated) == [t % (episode_length + 1) == episode_length - 1] * n_envs
        np.testing.assert_allclose(info["lr"], [step[4]["lr"] for step in steps], rtol=1e-15)


def test_a_diverging_task_terminates_alone_and_restarts_on_the_next_step():
    schedule = rc.ScheduleConfig(lr_grid=(1e-3, 1e9), start_index=0, index_shifts=(0, 1), steps=50)
    vector = rlr_env.LRControlVectorEnv(2, schedule=schedule, divergence_penalty=-7.0)
    first, _ = vector.reset(seed=0)
    for _ in range(10):
        observation, rewards, terminated, truncated, info = vector.step(np.array([1, 0]))  # task 0 jumps to 1e9
        if terminated[0]:
            break
    assert terminated[0] and not terminated[1] and rewards[0] == -7.0 and info["diverged"][0]
    assert np.isfinite(observation).all(), "the last finite observation, never a non-finite one"
    observation, rewards, terminated, truncated, info = vector.step(np.array([0, 0]))
    assert rewards[0] == 0.0 and not terminated[0] and info["lr"][0] == 1e-3 and vector.elapsed[0] == 0
    assert np.isfinite(info["loss"]).all() and vector.elapsed[1] > 1


def test_seeds_partial_resets_and_bad_input():
    vector = rlr_env.LRControlVectorEnv(3, schedule=rc.ScheduleConfig(steps=10))
    first, info = vector.reset(seed=11)
    assert list(info["episode_seed"]) == [11, 12, 13]
    vector.step(np.array([2, 2, 2]))
    moved, _ = vector.reset(seed=[11, 40, 13], options={"reset_mask": [False, True, False]})
    assert list(vector.episode_seeds) == [11, 40, 13] and vector.elapsed.tolist() == [1, 0, 1]
    again = rlr_env.LRControlVectorEnv(3, schedule=rc.ScheduleConfig(steps=10))
    np.testing.assert_array_equal(again.reset(seed=11)[0], first)
    with pytest.raises(ValueError, match="actions must be 3 ints"):
        vector.step(np.array([0, 1]))
    with pytest.raises(ValueError, match="reset_mask"):
        vector.reset(options={"reset_mask": [True]})
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        rlr_env.LRControlVectorEnv(0)


def test_restarting_one_run_of_batched_adam_is_a_fresh_torch_adam_for_it():
    torch.manual_seed(0)
    networks = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
                for _ in range(2)]
    stacked = rlr_stacked.StackedModel(networks, torch.float64, torch.device("cpu"))
    adam = rlr_stacked.BatchedAdam(stacked.params, stacked.rows_of)
    inputs, targets = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 2, dtype=torch.float64)
    references = [torch.optim.Adam(network.parameters(), lr=0.01) for network in networks]

    def step_both() -> None:
        rlr_stacked.mse_loss_and_grad(stacked, inputs, targets)
        adam.step(stacked.grad, torch.tensor([0.01, 0.01], dtype=torch.float64))
        for k, (network, optimizer) in enumerate(zip(networks, references)):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(network(inputs[k]), targets[k]).backward()
            optimizer.step()

    for _ in range(3):
        step_both()
    adam.restart_run(1)
    references[1] = torch.optim.Adam(networks[1].parameters(), lr=0.01)  # run 1: a fresh Adam, same weights
    for _ in range(3):
        step_both()
    for k, network in enumerate(stacked.to_modules(lambda: torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))):
        for mine, theirs in zip(network.parameters(), networks[k].parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_the_agent_trains_on_the_vector_env_storing_only_real_transitions():
    """4 tasks, episodes of 4 decisions: 9 vector steps are 2 episodes per task and one autoreset step,
    which is no transition. Every stored reward is a real one, and each episode's return telescopes."""
    schedule = rc.ScheduleConfig(steps=40, decision_interval=10, features="control", lr_factors=(0.5, 1.0, 2.0))
    vector = rlr_env.LRControlVectorEnv(4, schedule=schedule)
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, rc.DQNConfig(batch_size=8, learning_starts=8), seed=0)
    history = rlr_env.train_agent_on_vector_env(vector, agent, total_steps=9, seed=0)
    assert history["episode_lengths"] == [4] * 8 and not any(history["episode_terminated"])
    assert len(agent.replay) == 4 * 8 and len(history["dqn_losses"]) == 9 - 1  # learns once 8 are stored
    assert all(np.isfinite(history["episode_returns"])) and all(value > 0 for value in history["episode_returns"])
    with pytest.raises(ValueError, match="Discrete\\(2\\)"):
        rlr_env.train_agent_on_vector_env(vector, rc.DQNAgent(4, 2), total_steps=1)
