"""The transfer study (notebook 05, rlr_env's transfer functions): seeds, held-out tasks, episodic
training over many tasks, and the frozen evaluation through the batched engine.

Expected values are computed independently where possible: network shapes read off the layers, the
frozen agent's learning rates against a greedy rollout of the same agent through LRControlEnv, win
rates and geometric means by hand. Step counts are small (a few seconds in all).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import rlr_core as rc
import rlr_engine as engine
import rlr_env
import rlr_study

SMALL_TASK = rc.TaskConfig(n_examples=32, n_points=7, coeff_scale=(1.0, 0.5, 0.25), hidden_sizes=(8, 4))
SCALE_FREE = rlr_study.TRANSFER_AGENTS["scale-free DQN (log features, x0.5/x1/x2)"]


def small_config(steps: int = 20, dtype: str = "float32", **schedule) -> engine.Config:
    return engine.Config(dtype=dtype, task=SMALL_TASK, schedule=rc.ScheduleConfig(steps=steps, **schedule),
                     dqn=rc.DQNConfig(batch_size=8, learning_starts=8, replay_capacity=64))


def layer_widths(model: torch.nn.Module) -> list[int]:
    return [layer.out_features for layer in model.modules() if isinstance(layer, torch.nn.Linear)]


def test_training_and_evaluation_seeds_are_disjoint():
    training, evaluation = rlr_study.transfer_seeds(2000, 50, 0, 16)
    assert training == list(range(2000, 2050)) and evaluation == list(range(16))
    assert not set(training) & set(evaluation)
    with pytest.raises(ValueError, match="overlap"):
        rlr_study.transfer_seeds(10, 5, 0, 16)
    with pytest.raises(ValueError, match="n_training_episodes"):
        rlr_study.transfer_seeds(2000, 0, 0, 16)


def test_held_out_tasks_have_the_stated_degrees_and_widths():
    tasks = rlr_study.held_out_tasks(rc.TaskConfig())
    expected = {"same task, new seeds": (4, [32, 16]), "degree 3 polynomials": (3, [32, 16]),
                "degree 6 polynomials": (6, [32, 16]), "wider, deeper net (64, 32, 16)": (4, [64, 32, 16])}
    assert set(tasks) == set(expected) | set(rlr_study.OFF_THRESHOLD)
    assert tasks["1 024 examples"].n_examples == 4 * rc.TaskConfig().n_examples
    assert tasks["noisy samples (sd 0.1)"].input_noise == 0.1 and rc.bayes_floor(tasks["noisy samples (sd 0.1)"]) > 0
    for label, (degree, hidden) in expected.items():
        model = rc.MaclaurinNet(tasks[label])
        assert layer_widths(model) == hidden + [degree + 1], label
        data = rc.make_polynomial_dataset(tasks[label], 0, 8)
        assert data.targets.shape == (8, degree + 1)
        assert tasks[label].n_points == 20 and tasks[label].n_examples == 256  # the rest of the task unchanged


class RecordingEnv(rlr_env.LRControlEnv):
    """LRControlEnv that records each episode's seed (None for an unseeded reset), actions and losses."""

    episodes: list[dict] = []

    def reset(self, *, seed=None, options=None):
        observation, info = super().reset(seed=seed, options=options)
        RecordingEnv.episodes.append({"seed": seed, "actions": [], "losses": []})
        return observation, info

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        RecordingEnv.episodes[-1]["actions"].append(int(action))
        RecordingEnv.episodes[-1]["losses"].append(info["loss"])
        return observation, reward, terminated, truncated, info


def test_training_runs_one_episode_per_training_seed_in_order(monkeypatch):
    """Each episode's return with raw features telescopes: sum_t (L_t - L_{t+1}) = L_0 - L_T.

    L_0 is computed here from the seed's data and initial weights; L_T by replaying the episode's
    recorded actions through a fresh LRControlEnv. Tolerance 1e-12 absolute (L_0 is 0.3-0.6): every
    loss is a float32 value, so each reward L_t - L_{t+1} and each partial sum L_0 - L_k is exact in
    float64 and the float64 sum telescopes without rounding; 1e-12 leaves room for float64 rounding only,
    far below one float32 ulp of L_0 (3e-8) and below any single reward, so a dropped, doubled or
    float32-accumulated reward fails.
    """
    monkeypatch.setattr(RecordingEnv, "episodes", [])
    monkeypatch.setattr(rlr_study, "LRControlEnv", RecordingEnv)
    config = small_config(steps=15)
    seeds = [2003, 2001, 2002]
    agent, history = rlr_study.train_agent_on_tasks(config, seeds, agent_seed=1)
    assert history["seed"].tolist() == seeds and history["episode"].tolist() == [0, 1, 2]
    assert agent.steps_done == 15 * len(seeds)  # epsilon decays across episodes
    assert len(agent.replay) == min(15 * len(seeds), config.dqn.replay_capacity)
    assert not history["diverged"].any()
    seeded = [episode for episode in RecordingEnv.episodes if episode["seed"] is not None]
    assert [episode["seed"] for episode in seeded] == seeds
    for (_, row), episode in zip(history.iterrows(), seeded):
        assert len(episode["actions"]) == 15
        task_seeds = rc.derive_seeds(row["seed"])  # L_0 from the seed's data and initial weights
        data = rc.make_polynomial_dataset(SMALL_TASK, task_seeds.data)
        initial_loss = float(rc.full_batch_loss(rc.make_model(SMALL_TASK, task_seeds.init), data).detach())
        replay = rlr_env.LRControlEnv(SMALL_TASK, config.schedule, dtype="float32")  # L_T by replay
        replay.reset(seed=int(row["seed"]))
        losses = [replay.step(action)[4]["loss"] for action in episode["actions"]]
        assert losses == episode["losses"], "the replay is the training episode"
        assert row["return"] == pytest.approx(initial_loss - losses[-1], rel=0, abs=1e-12), row["seed"]
        assert initial_loss - losses[-1] > 1e-3  # the check is not vacuous: the episode did lower the loss


def test_frozen_evaluation_leaves_the_agent_unchanged_and_acts_greedily():
    config = small_config(steps=20, **SCALE_FREE)
    agent, _ = rlr_study.train_agent_on_tasks(config, [2000, 2001], agent_seed=0)
    before = {name: tensor.clone() for name, tensor in agent.policy_net.state_dict().items()}
    steps_before = agent.steps_done
    runs = rlr_study.evaluate_frozen_agent(config, agent, [0, 1, 2])
    assert agent.steps_done == steps_before
    for name, tensor in agent.policy_net.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for run in runs:
        assert run.method.endswith("_frozen")
        assert not run.series["explored"].any()
        for name, tensor in run.policy_state.items():  # no learning during the evaluation either
            assert torch.equal(tensor.to(before[name].dtype), before[name]), name


def test_frozen_evaluation_matches_a_greedy_rollout_through_the_environment():
    config = small_config(steps=30, dtype="float64", **SCALE_FREE)
    agent = rc.DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, seed=3,
                        dtype=torch.float64)
    torch.nn.init.normal_(agent.policy_net[-1].weight, std=1.0,  # a policy that changes its mind
                          generator=torch.Generator().manual_seed(3))
    run = rlr_study.evaluate_frozen_agent(config, agent, [7])[0]
    env = rlr_env.LRControlEnv(SMALL_TASK, config.schedule, dtype="float64")
    observation, _ = env.reset(seed=7)
    lrs, losses = [], []
    for _ in range(config.schedule.steps):
        with torch.no_grad():
            action = int(agent.policy_net(torch.as_tensor(observation)).argmax())  # greedy, by hand
        observation, _, terminated, _, info = env.step(action)
        lrs.append(info["lr"])
        losses.append(info["loss"])
        assert not terminated
    np.testing.assert_allclose(run.series["lr"], lrs, rtol=1e-12)
    np.testing.assert_allclose(run.series["loss"], losses, rtol=1e-9)
    assert len(set(lrs)) > 1


def test_held_out_evaluation_runs_every_method_on_the_same_task_and_seeds():
    config = small_config(steps=12)
    agent_config = rlr_study.with_overrides(config, {"schedule": SCALE_FREE})
    agent, _ = rlr_study.train_agent_on_tasks(agent_config, [2000], agent_seed=0)
    tasks = {"small": SMALL_TASK, "degree 1": rc.TaskConfig(**{**SMALL_TASK.__dict__, "coeff_scale": (1.0, 0.5)})}
    tuned = {"constant lr": {"lr": 1e-3}, rlr_study.COSINE: {"lr": 1e-3, "final_fraction": 0.1}}
    runs = rlr_study.evaluate_on_held_out_tasks(config, tasks, {"agent": (agent_config, agent)}, tuned, [0, 1])
    for label, task in tasks.items():
        methods = runs[label]
        assert list(methods) == [rlr_study.TUNED_CONSTANT, rlr_study.COSINE, "agent"]
        for method_runs in methods.values():
            assert [run.seed for run in method_runs] == [0, 1]
            assert all(layer_widths(run.model)[-1] == task.n_coefficients for run in method_runs)
            assert all(len(run.series["loss"]) == 12 for run in method_runs)
        # the same data and initial weights: the first step at the same lr (both start at 1e-3)
        np.testing.assert_allclose(methods[rlr_study.TUNED_CONSTANT][0].series["loss"][0],
                                   methods[rlr_study.COSINE][0].series["loss"][0], rtol=1e-6)
        cosine_lr = methods[rlr_study.COSINE][0].series["lr"]
        floor = 1e-4  # eta_min = final_fraction x lr
        np.testing.assert_allclose(cosine_lr, floor + (1e-3 - floor) * (1 + np.cos(np.pi * np.arange(12) / 12)) / 2,
                                   rtol=1e-9)
    table = rlr_study.transfer_table(runs, n_heldout_examples=16)
    assert len(table) == 2 * 3 * 2 and set(table["task"]) == set(tasks)


def test_transfer_summary_matches_a_hand_computation():
    test_mse = {rlr_study.TUNED_CONSTANT: [1e-4, 2e-4, 4e-4], rlr_study.COSINE: [2e-4, 1e-4, 1e-4],
                "agent": [5e-5, 4e-4, 1e-4]}
    table = pd.DataFrame([{"task": "t", "method": method, "seed": seed, "test_mse": value, "diverged_at": None}
                          for method, values in test_mse.items() for seed, value in enumerate(values)])
    summary = rlr_study.transfer_summary(table).loc["t"]
    assert summary.loc["agent", "geometric mean"] == pytest.approx((5e-5 * 4e-4 * 1e-4) ** (1 / 3))
    assert summary.loc["agent", "wins vs tuned constant lr"] == pytest.approx(2 / 3)  # seeds 0 and 2
    assert summary.loc["agent", "wins vs cosine annealing"] == pytest.approx(1 / 3)  # seed 0 only
    assert summary.loc["agent", "diverged"] == 0


def test_transfer_summary_keeps_a_method_whose_runs_all_diverged():
    rows = [{"task": "t", "method": method, "seed": seed, "test_mse": value, "diverged_at": diverged}
            for method, value, diverged in [(rlr_study.TUNED_CONSTANT, 1e-4, None), (rlr_study.COSINE, 2e-4, None),
                                            ("agent", np.nan, 5)] for seed in range(2)]
    summary = rlr_study.transfer_summary(pd.DataFrame(rows)).loc["t"]
    assert list(summary.index) == [rlr_study.TUNED_CONSTANT, rlr_study.COSINE, "agent"]
    assert summary.loc["agent", "diverged"] == 2 and summary.loc["agent", "seeds"] == 2
    assert np.isnan(summary.loc["agent", "geometric mean"])
    assert np.isnan(summary.loc["agent", "wins vs cosine annealing"])
    assert summary.loc[rlr_study.COSINE, "wins vs tuned constant lr"] == 0.0


def test_the_floor_table_and_reading_tell_optimisation_from_generalisation():
    import rlr_report as report
    rows = [{"task": task, "method": method, "seed": seed, "diverged_at": None, "train_median_last_100": train,
             "test_mse": test}
            for task in ("noisy", "big") for seed in range(3)
            for method, train, test in (("a", 1e-4, 2e-2), ("b", 1e-3, 1.5e-2))]
    table = report.floor_table(pd.DataFrame(rows), {"noisy": 1e-2, "big": 0.0}, ["noisy", "big"])
    assert table.loc[("noisy", "b"), "test / floor"] == pytest.approx(1.5)
    assert np.isnan(table.loc[("big", "a"), "test / floor"])
    text = report.floor_reading(table)
    assert "lowest training MSE a, lowest test MSE b (not the same" in text
    assert "Bayes floor is 0.01" in text and "1.50 times it" in text
