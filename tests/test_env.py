"""rlr_env: LRControlEnv is a Gymnasium environment of the original problem, and DQNAgent trains through
the standard Gymnasium loop (on it, and on CartPole-v1 without modification).

Expected values are computed independently: losses by a plain Adam loop, index paths by hand, and the
env's episode against engine.train_rl_scheduled. Step counts are small (a few seconds in all).
"""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch.nn import functional as F

import rlr_core as rc
import rlr_engine as engine
import rlr_env
from rlr_env import LRControlEnv, train_agent_on_env

GRID = 10.0 ** np.linspace(-5.0, -2.0, 12)  # the original's grid, written out independently
SMALL_TASK = rc.TaskConfig(n_examples=32, n_points=7, coeff_scale=(1.0, 0.5, 0.25), hidden_sizes=(8, 8, 4))


class Recorder(gymnasium.Wrapper):
    """Records every step's action, reward, flags and info, and the model's weights at episode ends."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.actions, self.rewards, self.infos, self.observations, self.final_weights = [], [], [], [], []

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self.observations.append(observation)
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.actions.append(int(action))
        self.rewards.append(reward)
        self.infos.append(info)
        self.observations.append(observation)
        if (terminated or truncated) and hasattr(self.env.unwrapped, "model"):
            self.final_weights.append({k: v.clone() for k, v in self.env.unwrapped.model.state_dict().items()})
        return observation, reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------------
# The environment itself
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, dtype", [(rc.TaskConfig(), "float32"), (SMALL_TASK, "float64")])
def test_env_passes_gymnasium_env_checker(task, dtype):
    env = gymnasium.make(rlr_env.ENV_ID, task=task, schedule=rc.ScheduleConfig(steps=30), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings count as failures
        check_env(env.unwrapped)
    assert env.observation_space.shape == (2,) and env.action_space == gymnasium.spaces.Discrete(3)
    assert env.observation_space.dtype == np.dtype(dtype)


def test_observations_rewards_and_losses_match_a_plain_adam_loop():
    """obs = (L_t, L_t - L_{t-1}), reward = L_t - L_{t+1}, lr = grid[clipped index], one full-batch Adam step."""
    env = LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=40))
    observation, info = env.reset(seed=4)
    actions = [2] * 8 + [0] * 16 + [1, 2] * 8  # reaches both ends of the grid
    index, path = 6, []
    for action in actions:
        index = min(max(index + (-1, 0, 1)[action], 0), 11)
        path.append(index)
    assert min(path) == 0 and max(path) == 11

    seeds = rc.derive_seeds(4)  # the independent loop: same data and initial weights, plain torch Adam
    data = rc.make_polynomial_dataset(SMALL_TASK, seeds.data)
    torch.manual_seed(seeds.init)
    model = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    adam = torch.optim.Adam(model.parameters(), lr=1.0, fused=True)
    previous = F.mse_loss(model(data.inputs), data.targets).item()
    assert observation.tolist() == [np.float32(previous), 0.0] and info["loss"] == previous
    assert info["lr_index"] == 6 and info["lr"] == pytest.approx(GRID[6], rel=1e-12)
    for t, action in enumerate(actions):
        observation, reward, terminated, truncated, info = env.step(action)
        adam.param_groups[0]["lr"] = float(GRID[path[t]])
        adam.zero_grad()
        F.mse_loss(model(data.inputs), data.targets).backward()
        adam.step()
        loss = F.mse_loss(model(data.inputs), data.targets).item()
        assert info["lr_index"] == path[t] and info["lr"] == pytest.approx(GRID[path[t]], rel=1e-12)
        assert info["loss"] == pytest.approx(loss, rel=1e-6)
        assert observation.dtype == np.float32
        assert observation.tolist() == [np.float32(info["loss"]), np.float32(info["loss"] - previous)]
        assert reward == previous - info["loss"]
        assert not terminated and truncated == (t == 39)
        previous = info["loss"]


def test_reset_starts_a_new_task_and_the_same_seed_the_same_task():
    env = LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=10))
    first, _ = env.reset(seed=1)
    weights, data = [p.clone() for p in env.model.parameters()], env.data
    for _ in range(5):
        env.step(2)
    assert env.lr_index == 11
    again, info = env.reset(seed=1)
    assert np.array_equal(first, again) and info["lr_index"] == 6 and env.elapsed_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(weights, env.model.parameters()))
    env.reset()  # a new network on the same data
    assert not torch.equal(weights[0], next(env.model.parameters()))
    assert torch.equal(env.data.inputs, data.inputs)
    resampling = LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=10), resample_data=True)
    resampling.reset(seed=1)
    assert torch.equal(resampling.data.inputs, data.inputs)
    resampling.reset()
    assert not torch.equal(resampling.data.inputs, data.inputs)
    with pytest.raises(ValueError, match="takes no options"):
        env.reset(options={"degree": 3})


def test_task_options_shape_the_network_and_the_data():
    env = LRControlEnv(SMALL_TASK)
    env.reset(seed=0)
    linears = [m for m in env.model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 8), (8, 8), (8, 4), (4, 3)]
    assert env.data.inputs.shape == (32, 7) and env.data.targets.shape == (32, 3)
    # the data, recomputed from the seed: w = randn(n, d) * coeff_scale, y_i = sum_j w_j x_i^j
    generator = torch.Generator().manual_seed(rc.derive_seeds(0).data)
    targets = torch.randn(32, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 0.5, 0.25],
                                                                                         dtype=torch.float64)
    x = np.linspace(-2.0, 2.0, 7)
    inputs = targets.numpy() @ np.stack([np.ones(7), x, x ** 2])
    assert env.data.targets.dtype == torch.float32 and env.data.inputs.dtype == torch.float32
    assert torch.equal(env.data.targets, targets.float())  # the float32 rounding of the same draws
    np.testing.assert_allclose(env.data.inputs.numpy(), inputs, rtol=1e-6, atol=1e-6)  # float32 rounding


def test_episode_is_truncated_after_schedule_steps_and_must_be_reset():
    env = LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=5))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)
    env.reset(seed=0)
    flags = [env.step(1)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)
    env.reset()
    with pytest.raises(ValueError, match="action must be an int in"):
        env.step(3)


@pytest.mark.parametrize("penalty", [None, -5.0, 0.25])
def test_divergence_terminates_with_the_penalty_and_a_finite_observation(penalty):
    """lr = 1e6 sends the loss to inf in one Adam step. The reward there is the constructor's
    divergence_penalty; without one, the default, which costs more than any episode of the default task
    can earn (an episode's return L_0 - L_T is below L_0)."""
    options = {} if penalty is None else {"divergence_penalty": penalty}
    env = LRControlEnv(schedule=rc.ScheduleConfig(lr_grid=(1e3, 1e6), start_index=1, steps=50), **options)
    start, start_info = env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step(1)
    assert not math.isfinite(info["loss"]) and info["diverged"]
    assert (terminated, truncated) == (True, False)
    if penalty is None:
        assert reward == rlr_env.DIVERGENCE_PENALTY and -reward > start_info["loss"]  # L_0 of the default task
    else:
        assert reward == penalty
    assert np.isfinite(observation).all() and np.array_equal(observation, start), "the last finite state"
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(1)


# ---------------------------------------------------------------------------------------------------
# The Gymnasium loop with the project's DQNAgent
# ---------------------------------------------------------------------------------------------------


def test_env_episode_reproduces_train_rl_scheduled():
    """Same seed: reset(seed=s) takes data and initial weights from derive_seeds(s) like the run, and the
    agent gets derive_seeds(s).agent as its seed (the run builds its agent so). One episode of N steps
    then gives exactly the run's losses, learning rates, rewards and final weights."""
    n = 120  # past learning_starts (64): the DQN updates are part of what must match
    config = engine.Config(seed=3, schedule=rc.ScheduleConfig(steps=n))
    run = engine.train_rl_scheduled(config)
    env = Recorder(LRControlEnv.from_config(config))
    agent = rc.DQNAgent(2, 3, config.dqn, rc.derive_seeds(3).agent)
    history = train_agent_on_env(env, agent, n, seed=3)
    assert history["episode_lengths"] == [n] and history["episode_terminated"] == [False]
    assert np.array_equal([info["loss"] for info in env.infos], run.series["loss"])
    assert np.array_equal([info["lr"] for info in env.infos], run.series["lr"])
    assert np.array_equal(env.actions, run.series["action"])
    assert np.array_equal(env.rewards, run.series["reward"])
    assert len(history["dqn_losses"]) == n - 64 + 1
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(env.final_weights[0][name], tensor), name
    assert history["episode_returns"][0] == pytest.approx(run.series["reward"].sum(), rel=1e-9)


def test_train_agent_on_env_resets_and_stores_the_real_next_state_at_truncation():
    env = Recorder(LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=20)))
    agent = rc.DQNAgent(2, 3, rc.DQNConfig(learning_starts=16, batch_size=16), seed=0)
    history = train_agent_on_env(env, agent, 50, seed=0)
    assert history["episode_lengths"] == [20, 20] and history["episode_terminated"] == [False, False]
    assert len(history["dqn_losses"]) == 50 - 16 + 1 and np.isfinite(history["dqn_losses"]).all()
    losses = [info["loss"] for info in env.infos]
    first_loss = env.observations[0][0]
    # telescoping: an episode's return is its first loss minus its last
    assert history["episode_returns"][0] == pytest.approx(float(first_loss) - losses[19], rel=1e-5)
    assert len(agent.replay) == 50
    # transition 19 ends episode 1: its next state is the real last observation, not the reset one
    assert np.array_equal(agent.replay.next_states[19].numpy(), env.observations[20])
    assert env.observations[21][1] == 0.0 and np.array_equal(agent.replay.states[20].numpy(), env.observations[21])
    assert set(env.actions) <= {0, 1, 2}


def test_agent_in_eval_mode_only_rolls_out():
    env = LRControlEnv(SMALL_TASK, rc.ScheduleConfig(steps=10))
    agent = rc.DQNAgent(2, 3, seed=0)
    agent.training = False
    history = train_agent_on_env(env, agent, 25, seed=0)
    assert history["episode_lengths"] == [10, 10] and len(agent.replay) == 0 and agent.steps_done == 0
    assert history["dqn_losses"] == []


def test_divergence_ends_the_episode_in_the_loop_and_is_stored_with_the_penalty():
    env = LRControlEnv(schedule=rc.ScheduleConfig(lr_grid=(1e3, 1e6), start_index=1, index_shifts=(0, 0),
                                                  steps=50))
    agent = rc.DQNAgent(2, 2, seed=0)
    history = train_agent_on_env(env, agent, 3, seed=0)
    assert history["episode_lengths"] == [1, 1, 1] and history["episode_terminated"] == [True] * 3
    assert history["episode_returns"] == [-1.0] * 3
    assert agent.replay.rewards[:3].tolist() == [-1.0] * 3
    assert torch.equal(agent.replay.states[0], agent.replay.next_states[0]), "the last finite observation"
    assert agent.replay.terminated[:3].tolist() == [1.0] * 3, "stored as terminal: never bootstrapped from"


def test_train_agent_on_env_refuses_an_agent_of_another_shape():
    with pytest.raises(ValueError, match=r"Discrete\(2\)"):
        train_agent_on_env(LRControlEnv(SMALL_TASK), rc.DQNAgent(2, 2), 5)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        train_agent_on_env(LRControlEnv(SMALL_TASK), rc.DQNAgent(4, 3), 5)


def test_dqn_agent_runs_on_cartpole_unmodified():
    env = Recorder(gymnasium.make("CartPole-v1"))
    agent = rc.DQNAgent(4, 2, seed=0)
    history = train_agent_on_env(env, agent, 300, seed=0)
    assert len(agent.replay) == 300 and agent.steps_done == 300
    assert len(history["dqn_losses"]) == 300 - 64 + 1 and np.isfinite(history["dqn_losses"]).all()
    assert set(env.actions) == {0, 1}
    assert len(history["episode_lengths"]) >= 3 and sum(history["episode_lengths"]) <= 300
    assert history["episode_returns"] == [float(n) for n in history["episode_lengths"]]  # +1 per step
    assert all(torch.isfinite(p).all() for p in agent.policy_net.parameters())
