"""The controller options against short-horizon bias (issue: an RL controller done right): a decision
every N optimiser steps, a state that sees the fraction of the budget left, and a log reward that
telescopes over the run. The same rules serve RLRScheduler, the reference loop and LRControlEnv."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import rlr_batched
import rlr_core as rc
import rlr_engine as engine
import rlr_controllers as controllers
import rlr_methods as methods
import rlr_env

CONTROL = dict(features="control", lr_factors=(0.5, 1.0, 2.0))


def test_the_controller_options_are_checked_and_shape_the_state():
    with pytest.raises(ValueError, match="schedule.decision_interval must be >= 1"):
        rc.ScheduleConfig(decision_interval=0)
    with pytest.raises(ValueError, match="schedule.features must be one of"):
        rc.ScheduleConfig(features="budget")
    assert rc.ScheduleConfig(features="control").state_dim == 4
    assert rc.ScheduleConfig().decision_interval == 1  # the original decides every step
    state = rc.loss_state(torch.tensor([0.5, 0.1]), torch.tensor([1.0, 0.1]), torch.tensor([0.2, 0.4]), "control",
                          torch.float64, rc.budget_fraction_left(torch.tensor([25, 100]), rc.ScheduleConfig(steps=100)))
    expected = torch.tensor([[math.log(0.5), math.log(0.5), 0.2, 0.75], [math.log(0.1), 0.0, 0.4, 0.0]],
                            dtype=torch.float64)
    assert torch.allclose(state, expected)
    with pytest.raises(ValueError, match="budget_left"):
        rc.loss_state(0.5, None, 0.2, "control")


@pytest.mark.parametrize("interval, steps", [(10, 95), (1, 30), (7, 7)])
def test_an_env_step_is_a_decision_interval_and_the_return_telescopes(interval: int, steps: int):
    schedule = rc.ScheduleConfig(steps=steps, decision_interval=interval, **CONTROL)
    env = rlr_env.LRControlEnv(schedule=schedule)
    observation, info = env.reset(seed=3)
    assert env.observation_space.contains(observation) and observation[3] == 1.0
    first_loss, total, decisions, done = info["loss"], 0.0, 0, False
    while not done:
        observation, reward, terminated, truncated, info = env.step(decisions % 3)
        total, decisions, done = total + reward, decisions + 1, terminated or truncated
        assert observation[3] == pytest.approx(1.0 - min(decisions * interval, steps) / steps)
    assert decisions == math.ceil(steps / interval) and env.elapsed_steps == steps and not terminated
    assert total == pytest.approx(math.log(first_loss) - math.log(info["loss"]), rel=1e-9, abs=1e-12)


def test_holding_the_lr_for_an_interval_is_the_reference_loops_adam_at_that_lr():
    """Always 'keep' (factor 1): the env's N-step decisions are exactly full-batch Adam at the start lr."""
    schedule = rc.ScheduleConfig(steps=40, decision_interval=8, **CONTROL)
    env = rlr_env.LRControlEnv(schedule=schedule)
    env.reset(seed=4)
    losses = [env.step(1)[4]["loss"] for _ in range(5)]
    reference = engine.train_full_batch(engine.Config(seed=4), schedule.lr_grid[schedule.start_index], 40)
    assert losses == [float(value) for value in reference.series["loss"][7::8]]


def test_the_scheduler_decides_every_interval_and_its_rewards_telescope():
    config = engine.Config(seed=1, schedule=rc.ScheduleConfig(steps=60, decision_interval=6, **CONTROL))
    run = engine.train_rl_scheduled(config)
    lr = run.series["lr"]
    changes = np.flatnonzero(lr[1:] != lr[:-1]) + 1
    assert len(changes) and (changes % 6 == 0).all(), "the lr moves only at decisions"
    decisions = np.flatnonzero(run.series["reward"])
    assert set(decisions + 1) <= set(range(6, 61, 6)), "a reward only where the agent decides"
    data = rc.make_polynomial_dataset(config.task, rc.derive_seeds(1).data)
    model = rc.make_model(config.task, rc.derive_seeds(1).init)
    with torch.no_grad():
        first = float(rc.full_batch_loss(model, data))
    assert run.series["reward"].sum() == pytest.approx(math.log(first) - math.log(run.series["loss"][59]), rel=1e-6)
    assert run.config["schedule"]["decision_interval"] == 6


def test_a_scheduler_state_saved_before_decision_intervals_still_loads():
    model = torch.nn.Linear(2, 1)
    scheduler = rc.RLRScheduler(torch.optim.Adam(model.parameters()), seed=0)
    scheduler.step(1.0)
    state = scheduler.state_dict()
    del state["schedule"]["decision_interval"]
    rc.RLRScheduler(torch.optim.Adam(model.parameters()), seed=0).load_state_dict(state)


def test_the_batched_engine_refuses_what_it_does_not_run():
    config = engine.Config(schedule=rc.ScheduleConfig(steps=20, decision_interval=5))
    with pytest.raises(ValueError, match="decision_interval"):
        rlr_batched.train_rl_scheduled(config, [0, 1])


def test_a_controller_trains_over_many_tasks_and_runs_frozen_on_others():
    """Two tasks at once, two rounds of 4-decision episodes: the learning curve has a row per episode,
    its seeds are new tasks, the same seeds give the same curve, and the frozen policy runs the reference
    loop on evaluation seeds with the controller's schedule."""
    controller = controllers.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=2, updates_per_step=2)
    config = engine.Config(schedule=rc.ScheduleConfig(steps=40), dqn=rc.DQNConfig(batch_size=8, learning_starts=8))
    run_config, agent, curve = controllers.train_controller(config, controller)
    assert len(curve) == 4 and list(curve["round"]) == [0, 0, 1, 1] and curve["return"].notna().all()
    assert list(curve["seed"][:2]) == [3000, 3001] and not set(curve["seed"]) & set(range(16))
    assert run_config.schedule.features == "control" and run_config.schedule.decision_interval == 10
    again = controllers.train_controller(config, controller)[2]
    assert curve.equals(again)
    runs = controllers.frozen_agent_runs(run_config, agent, [0, 1])
    assert [run.seed for run in runs] == [0, 1] and all(len(run.series["loss"]) == 40 for run in runs)
    assert all(run.method == "rl_described_frozen" for run in runs)
    with pytest.raises(ValueError, match="controller.decision_interval"):
        controllers.ControllerConfig(decision_interval=0)
    import rlr_study as study
    with pytest.raises(ValueError, match="rlr_controllers.frozen_agent_runs"):  # not the batched engine's
        study.evaluate_frozen_agent(run_config, agent, [0, 1])


def test_a_policy_on_the_vector_env_logs_what_the_reference_loop_logs():
    """The trained controller's greedy policy run on every seed at once (frozen_agent_runs: run_policy
    on the vector env) gives the per-step losses, lrs and final networks of the reference loop's frozen
    runs (RLRScheduler with the same policy), in float64."""
    import rlr_study as study
    controller = controllers.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=2, updates_per_step=2)
    config = engine.Config(dtype="float64", schedule=rc.ScheduleConfig(steps=45),
                           dqn=rc.DQNConfig(batch_size=8, learning_starts=8))
    run_config, agent, _ = controllers.train_controller(config, controller)
    batched = controllers.frozen_agent_runs(run_config, agent, [0, 1, 2])  # run_policy with greedy_policy
    reference = [engine.train_rl_scheduled(engine.Config.from_dict({**run_config.to_dict(), "seed": seed}),
                                           initial_policy=agent.policy_weights(), frozen=True) for seed in (0, 1, 2)]
    for mine, theirs in zip(batched, reference):
        assert mine.seed == theirs.seed and len(mine.series["loss"]) == 45 and mine.diverged_at is None
        np.testing.assert_allclose(mine.series["loss"], theirs.series["loss"], rtol=1e-9)
        np.testing.assert_allclose(mine.series["lr"], theirs.series["lr"], rtol=1e-12)
        assert study.heldout_mse(mine, "test", 64) == pytest.approx(study.heldout_mse(theirs, "test", 64), rel=1e-9)


def test_a_policy_run_that_diverges_stops_before_the_non_finite_loss():
    import rlr_study as study
    schedule = rc.ScheduleConfig(lr_grid=(1e-3, 1e9), start_index=1, steps=20, decision_interval=5,
                                 features="control", lr_factors=(1.0, 2.0))
    runs = controllers.run_policy(engine.Config(schedule=schedule), lambda observations: np.zeros(len(observations), int),
                                  [0, 1])
    for run in runs:
        assert run.diverged_at is not None and len(run.series["loss"]) == run.diverged_at
        assert np.isfinite(run.series["loss"]).all() and run.model is None
        assert math.isnan(study.heldout_mse(run, "test", 32))


def test_the_sb3_vector_env_resets_a_finished_task_in_the_same_step_as_sb3_expects():
    """SB3VectorEnv over LRControlVectorEnv: a finished task comes back as a new task at once (budget 1 in
    its observation), its last observation in info["terminal_observation"], the run's end not marked as a
    truncation (the budget is in the state: the end is terminal, SB3 must not bootstrap past it); every
    episode's return telescopes to log L_0 - log L_T of its own task (checked against LRControlEnv on its seed)."""
    schedule = rc.ScheduleConfig(steps=30, decision_interval=10, **CONTROL)
    env = controllers.SB3VectorEnv(rlr_env.LRControlVectorEnv(2, schedule=schedule, dtype="float64"))
    env.seed(11)
    observation = env.reset()
    assert observation.shape == (2, 4) and (observation[:, 3] == 1.0).all()
    for step in range(3):
        observation, rewards, dones, infos = env.step(np.array([1, 2]))
        assert rewards.dtype == np.float32 and dones.tolist() == [step == 2] * 2
    assert all(not info["TimeLimit.truncated"] and info["terminal_observation"][3] == 0.0 for info in infos)
    assert (observation[:, 3] == 1.0).all(), "the returned observation is the new task's"
    assert [episode["seed"] for episode in env.episodes] == [11, 12]
    for episode, action in zip(env.episodes, (1, 2)):
        single = rlr_env.LRControlEnv(schedule=schedule, dtype="float64")
        _, info = single.reset(seed=episode["seed"])
        first = info["loss"]
        for _ in range(3):
            info = single.step(action)[4]
        assert episode["return"] == pytest.approx(math.log(first) - math.log(info["loss"]), rel=1e-5)
        assert episode["length"] == 3 and not episode["terminated"]
    with pytest.raises(TypeError, match="LRControlVectorEnv"):
        controllers.SB3VectorEnv(rlr_env.LRControlEnv(schedule=schedule))


def test_controllers_are_tuned_on_validation_saved_and_run_frozen_the_same_again(tmp_path):
    """The DQN controller and each SB3 learner at two Sobol configurations, on 2 tasks for 2 rounds: one row
    per training, each learner's configuration with the lowest validation MSE kept, the same
    numbers on a second training, no training seed among the evaluation or tuning seeds, and a saved and
    reloaded controller steering the same runs, on the original task and on another."""
    import rlr_study as study
    c = controllers
    setup = study.StudyConfig(first_eval_seed=0, n_eval_seeds=2, n_tuning_seeds=2, steps=40, n_heldout_examples=32,
                              tuning_budget=2)
    controller = c.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=2)
    config = study.study_config(engine.Config(), setup)
    tuned, table = c.tune_controllers(config, setup, controller)
    assert list(table["controller"]) == [c.DQN_CONTROLLER] * 2 + [c.SB3_PPO] * 2 + [c.SB3_DQN] * 2
    assert list(table["configuration"]) == [0, 1] * 3 and table["chosen"].sum() == 3
    for label in (c.DQN_CONTROLLER, c.SB3_PPO, c.SB3_DQN):
        rows = table[table["controller"] == label]
        assert table.loc[rows["validation MSE"].idxmin(), "chosen"], label
    assert set(tuned) == {c.DQN_CONTROLLER, c.SB3_PPO, c.SB3_DQN}
    assert c.best_controller(table) == table.loc[table[table["chosen"]]["validation MSE"].idxmin(), "controller"]
    again, table_again = c.tune_controllers(config, setup, controller)
    pd.testing.assert_frame_equal(table.drop(columns="training seconds"), table_again.drop(columns="training seconds"))
    for label, trained in tuned.items():  # the second round's tasks too (drawn by the env: seeded)
        assert len(trained.curve) == 4 and trained.curve.equals(again[label].curve), label
    runs = c.run_controllers(tuned, setup.eval_seeds)
    path = c.save_controllers(tuned, tmp_path / "controllers.pt")
    loaded = c.load_controllers(path)
    assert all(loaded[label].curve.equals(tuned[label].curve) for label in tuned)
    for label, runs_again in c.run_controllers(loaded, setup.eval_seeds).items():
        for run, run_again in zip(runs[label], runs_again):
            np.testing.assert_array_equal(run.series["loss"], run_again.series["loss"])
            assert len(run.series["loss"]) == 40 and run.method == label
    other = config.with_overrides({"task": {"hidden_sizes": (8, 8)}, "schedule": {"steps": 20}})
    moved = c.run_controllers({c.SB3_PPO: loaded[c.SB3_PPO]}, [0], other)[c.SB3_PPO][0]
    assert len(moved.series["loss"]) == 20 and tuple(moved.config["task"]["hidden_sizes"]) == (8, 8)
    clash = c.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=1, first_training_seed=1)
    with pytest.raises(RuntimeError, match="evaluation or tuning seed"):
        c.tune_controllers(config, setup, clash)
    with pytest.raises(FileNotFoundError, match="notebook 04"):
        c.load_controllers(tmp_path / "missing.pt")


def test_every_learner_trains_on_the_one_controller_environment():
    """controller_env is where a controller's environment is built (train_controller, train_sb3_controller,
    and run_policy through vector_env): n_envs tasks of the run config, the controller's schedule on it."""
    controller = controllers.ControllerConfig(decision_interval=10, n_envs=3)
    config = engine.Config(dtype="float64", schedule=rc.ScheduleConfig(steps=40))
    run_config, env = controllers.controller_env(config, controller)
    assert isinstance(env, rlr_env.LRControlVectorEnv) and env.num_envs == 3
    assert run_config.schedule == controller.schedule(40) == env.schedule
    assert run_config.task == config.task and run_config.dtype == "float64" and run_config.dqn == config.dqn
    assert controllers.decisions_per_episode(run_config.schedule) == 4
    assert controllers.decisions_per_episode(controllers.ControllerConfig(decision_interval=15).schedule(40)) == 3


# ---------------------------------------------------------------------------------------------------
# The validation loss as a state feature and as a reward
# ---------------------------------------------------------------------------------------------------

VALIDATION = {"lr_factors": (0.5, 1.0, 2.0), "decision_interval": 10, "steps": 30, "validation_examples": 64}


@pytest.mark.parametrize("features, reward", [("validation", "training"), ("control", "validation"),
                                              ("validation", "validation")])
def test_the_validation_loss_reaches_state_and_reward_the_same_in_both_environments(features: str, reward: str):
    """V is the MSE on the task seed's monitoring split (RunSeeds.monitor), not the validation split tuning
    scores by (rlr_engine.heldout_data); the vector env gives every task the single env's observations and
    rewards; a validation reward telescopes to log V_0 - log V_T."""
    schedule = rc.ScheduleConfig(features=features, reward=reward, **VALIDATION)
    vector = rlr_env.LRControlVectorEnv(2, schedule=schedule, dtype="float64")
    observations, info = vector.reset(seed=[4, 9])
    first_validation, returns = info["validation_loss"].copy(), np.zeros(2)
    for _ in range(3):
        observations, rewards, _, truncated, info = vector.step(np.array([2, 0]))
        returns += rewards
    assert observations.shape == (2, schedule.state_dim) and truncated.all()
    if reward == "validation":
        np.testing.assert_allclose(returns, np.log(first_validation) - np.log(info["validation_loss"]), rtol=1e-9)
    for k, (seed, action) in enumerate([(4, 2), (9, 0)]):
        single = rlr_env.LRControlEnv(schedule=schedule, dtype="float64")
        single.reset(seed=seed)
        total = 0.0
        for _ in range(3):
            observation, reward_k, _, _, single_info = single.step(action)
            total += reward_k
        np.testing.assert_allclose(observation, observations[k], rtol=1e-9)
        assert total == pytest.approx(returns[k], rel=1e-9)
        monitor = rc.make_polynomial_dataset(rc.TaskConfig(), rc.derive_seeds(seed).monitor, 64, dtype=torch.float64)
        scored = engine.heldout_data(engine.Config(seed=seed, dtype="float64"), "validation", 64)
        with torch.no_grad():
            assert single_info["validation_loss"] == pytest.approx(float(rc.full_batch_loss(single.model, monitor)),
                                                                   rel=1e-12)
            assert not torch.equal(monitor.inputs, scored.inputs)  # the tuning score's data stay unseen


def test_validation_features_extend_the_control_state_by_log_v_and_its_change():
    state = rc.loss_state(0.5, 0.25, 0.2, "validation", torch.float64, 0.75, validation=0.1, previous_validation=0.2)
    expected = [math.log(0.5), math.log(2.0), 0.2, 0.75, math.log(0.1), math.log(0.5)]
    torch.testing.assert_close(state, torch.tensor(expected, dtype=torch.float64))
    assert rc.loss_state(0.5, None, 0.2, "validation", torch.float64, 1.0, validation=0.1)[-1] == 0.0
    with pytest.raises(ValueError, match="needs validation"):
        rc.loss_state(0.5, None, 0.2, "validation", torch.float64, 1.0)
    schedule = rc.ScheduleConfig(features="control", reward="validation", lr_factors=(0.5, 1.0, 2.0))
    assert float(rc.decision_reward(0.5, 0.25, schedule, 0.2, 0.1)) == pytest.approx(math.log(2.0))
    assert float(rc.decision_reward(0.5, 0.25, rc.ScheduleConfig(features="log", lr_factors=(0.5, 1.0, 2.0)))) \
        == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="validation losses"):
        rc.decision_reward(0.5, 0.25, schedule)


def test_validation_settings_are_checked_and_refused_where_only_the_training_loss_exists():
    assert rc.ScheduleConfig(features="validation", lr_factors=(0.5, 1.0, 2.0)).state_dim == 6
    assert rc.ScheduleConfig(features="validation", lr_factors=(0.5, 1.0, 2.0)).sees_budget
    with pytest.raises(ValueError, match="schedule.reward"):
        rc.ScheduleConfig(reward="test")
    with pytest.raises(ValueError, match="schedule.reward='validation' is a log reward"):
        rc.ScheduleConfig(reward="validation")
    with pytest.raises(ValueError, match="schedule.validation_examples"):
        rc.ScheduleConfig(validation_examples=0)
    model = rc.make_model(rc.TaskConfig(), 0)
    schedule = rc.ScheduleConfig(features="control", reward="validation", lr_factors=(0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="RLRScheduler sees only the training loss"):
        rc.RLRScheduler(torch.optim.Adam(model.parameters()), agent=rc.DQNAgent(4, 3), schedule=schedule)


def test_the_controller_search_sets_the_validation_knobs_through_its_schedule():
    controller = controllers.ControllerConfig().with_knobs({"dqn.lr": 1e-3, "controller.validation_state": 1.0,
                                                           "controller.validation_reward": 0.0})
    schedule = controller.schedule(1000)
    assert (schedule.features, schedule.reward, schedule.state_dim) == ("validation", "training", 6)
    assert controllers.ControllerConfig(validation_reward=True).schedule(1000).reward == "validation"
    with pytest.raises(ValueError, match="unknown controller knob"):
        controllers.ControllerConfig().with_knobs({"controller.test_reward": 1.0})
    with pytest.raises(TypeError, match="params must be a dict"):
        controllers.ControllerConfig().with_knobs(None)
    with pytest.raises(TypeError, match="controller.validation_state"):
        controllers.ControllerConfig(validation_state=1)
    assert {"controller.validation_state", "controller.validation_reward", "dqn.undiscounted"} <= \
        set(controllers.CONTROLLER_RANGES)


def test_the_sb3_searches_map_onto_their_learners_settings():
    c = controllers
    assert c.sb3_gamma({"dqn.horizon": 10.0, "dqn.undiscounted": 0.0}) == pytest.approx(0.9)
    assert c.sb3_gamma({"dqn.horizon": 10.0, "dqn.undiscounted": 1.0}) == 1.0
    # a rollout is whole episodes and the training whole rollouts: 3 episodes do not divide 4 rounds, 2 do
    assert c.rollout_steps({"sb3.rollout_episodes": 3.0}, 100, 4) == 200
    assert c.rollout_steps({"sb3.rollout_episodes": 4.0}, 100, 4) == 400
    assert c.rollout_steps({"sb3.rollout_episodes": 4.0}, 100, 2) == 200
    for learner, ranges in c.SB3_RANGES.items():
        pool = methods.sobol_configurations(ranges, 8, methods.family_seed(learner, 0))
        assert len(pool) == 8 and all(set(params) == set(ranges) for params in pool)
    with pytest.raises(ValueError, match="learner must be one of"):
        c.train_sb3_controller(engine.Config(), None, c.ControllerConfig(), "a2c", {})
    with pytest.raises(ValueError, match="params must give ppo's knobs"):
        c.train_sb3_controller(engine.Config(), None, c.ControllerConfig(), "ppo", {"sb3.learning_rate": 1e-3})
