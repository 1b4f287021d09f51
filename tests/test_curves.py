"""Learning curves of the DQN controller (rlr_curves): checkpoints double, every checkpoint is a frozen
policy scored on the tuning seeds only, the same seed gives the same curve, the last checkpoint is one
continuous training, and the plateau rule and the pick of the evaluated agent do what they state."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import rlr_controllers as controllers
import rlr_curves as curves
import rlr_engine as engine
import rlr_study as study

PARAMS = {"dqn.lr": 1e-3, "dqn.horizon": 20.0, "dqn.undiscounted": 1.0, "dqn.epsilon_decay": 100.0,
          "controller.validation_state": 1.0, "controller.validation_reward": 0.0}


def tiny():
    setup = study.StudyConfig(first_eval_seed=0, n_eval_seeds=2, n_tuning_seeds=2, steps=40, n_heldout_examples=32,
                              tuning_budget=2)
    controller = controllers.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=1)
    return setup, study.study_config(engine.Config(), setup), controller


def test_checkpoints_double_up_to_the_budget_which_is_always_the_last():
    assert curves.CurveConfig(1024, 64).checkpoints() == [64, 128, 256, 512, 1024]
    assert curves.CurveConfig(100, 16).checkpoints() == [16, 32, 64, 100]
    assert curves.CurveConfig(8, 8).checkpoints() == [8]
    with pytest.raises(ValueError, match="curve.first_checkpoint"):
        curves.CurveConfig(8, 16)
    with pytest.raises(ValueError, match="curve.agent_seeds"):
        curves.CurveConfig(agent_seeds=(1, 1))
    with pytest.raises(ValueError, match="multiples of controller.n_envs"):
        curves.CurveConfig(6, 2).check_tasks(controllers.ControllerConfig(n_envs=4))


def test_a_learning_curve_is_deterministic_and_its_last_checkpoint_is_one_continuous_training():
    """Checkpoints at 2, 4 and 8 episodes (2 tasks at once): the same seed twice gives the same table and
    policy; the final policy equals one training of 8 episodes in a go (the checkpoints' freezing and
    scoring change nothing); only tuning seeds were scored; gamma = 1 with validation features trains."""
    import torch
    setup, config, controller = tiny()
    curve = curves.CurveConfig(episodes=8, first_checkpoint=2, agent_seeds=(0,))
    trained, table = curves.train_to_checkpoints(config, setup, controller, PARAMS, curve, 0)
    again, table_again = curves.train_to_checkpoints(config, setup, controller, PARAMS, curve, 0)
    pd.testing.assert_frame_equal(table.drop(columns="seconds"), table_again.drop(columns="seconds"))
    assert list(table["episodes"]) == [2, 4, 8] and list(table["training optimiser steps"]) == [80, 160, 320]
    assert list(table["episodes finished"]) == [2, 4, 8]
    assert all(torch.equal(trained.policy[key], again.policy[key]) for key in trained.policy)
    assert len(trained.curve) == 8 and trained.run_config["dqn"]["gamma"] == 1.0
    assert trained.run_config["schedule"]["features"] == "validation" and len(trained.validation_mse) == 2
    one_go = controllers.train_dqn_controller(config, setup, controllers.ControllerConfig(
        decision_interval=10, n_envs=2, training_rounds=4), PARAMS)
    assert all(torch.equal(trained.policy[key], one_go.policy[key]) for key in trained.policy)
    assert trained.curve[["seed", "return"]].equals(one_go.curve[["seed", "return"]])
    assert trained.validation_mse == one_go.validation_mse
    assert not set(trained.curve["seed"]) & (set(setup.eval_seeds) | set(setup.tuning_seeds))


def test_the_plateau_is_where_a_doubling_no_longer_beats_the_previous_ci():
    rows = []
    for seed, scores in ((0, [4.0, 2.0, 1.9, 1.0]), (1, [4.0, 3.0, 2.0, 1.0])):
        for episodes, score in zip((64, 128, 256, 512), scores):
            rows.append({"agent seed": seed, "episodes": episodes, "validation MSE": score,
                         "validation CI low": 0.9 * score})
    reached = curves.plateau_at(pd.DataFrame(rows))
    assert reached == {0: 256, 1: None}  # 1.9 is inside [1.8, ...]; seed 1 improves past its CI every time
    nan_ci = pd.DataFrame([{"agent seed": 0, "episodes": e, "validation MSE": math.inf, "validation CI low": math.nan}
                           for e in (64, 128)])
    assert curves.plateau_at(nan_ci) == {0: None}  # a diverged checkpoint has no spread: no plateau claimed


def test_the_evaluated_agent_is_the_lowest_final_validation_mse():
    def table(finals):
        return pd.DataFrame({"episodes": [64, 128], "validation MSE": finals})
    results = [(None, table([1.0, 3.0])), (None, table([5.0, 2.0])), (None, table([0.5, 2.0]))]
    assert curves.best_agent(results) == 1
    with pytest.raises(ValueError, match="at least one"):
        curves.best_agent([])


def test_paired_validation_is_the_geometric_ratio_with_wins_and_scipys_wilcoxon():
    from scipy.stats import wilcoxon
    import rlr_stats as stats
    method, reference = [1.0, 2.0, 4.0, 8.0, math.nan], [2.0, 2.0, 2.0, 2.0, 1.0]
    result = stats.paired_validation(method, reference)  # reference / method, as the primary tests
    assert result["seeds"] == 4 and result["wins"] == 1
    assert result["ratio"] == pytest.approx(math.exp(np.mean(np.log([2.0, 1.0, 0.5, 0.25]))))
    assert result["p"] == pytest.approx(wilcoxon(np.log([2.0, 1.0, 0.5, 0.25])).pvalue)
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_validation([1.0], [1.0, 2.0])


def curve_frame(reached):
    rows = []
    for seed, at in reached.items():
        for episodes, score in ((64, 2.0), (128, 1.0)):
            rows.append({"agent seed": seed, "episodes": episodes, "training optimiser steps": episodes * 100,
                         "validation MSE": score, "validation CI low": 0.8 * score, "validation CI high": 1.2 * score,
                         "training return": 1.0, "plateau at": at})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("beaten, oracle_scale, controller_scale, expected", [
    (True, 1.0, 2.0, "the goal is met"),
    (False, 1.0, 2.0, "the bottleneck is the learning"),
    (False, 0.5, 2.0, "the bottleneck is the learning"),
    (False, 1.0, 1.0, "resolve no gap"),
    (False, 1.0, 0.5, "improves on the clone"),
    (False, 3.0, 2.0, "the policy class (its factors"),
])
def test_the_curve_reading_names_one_of_three_outcomes_from_the_numbers(beaten, oracle_scale, controller_scale,
                                                                       expected):
    import rlr_report as report
    rng = np.random.default_rng(0)
    schedule = list(rng.uniform(1.0, 2.0, 8))
    validation = {"ctrl": [controller_scale * v * f for v, f in zip(schedule, rng.uniform(0.97, 1.03, 8))], "best": schedule,
                  "oracle": [oracle_scale * v * f for v, f in zip(schedule, rng.uniform(0.95, 1.05, 8))]}
    text = report.curve_reading(curve_frame({0: 128, 1: None}), curves.PLATEAU_RULE, "ctrl", "best", validation,
                                "oracle", "ctrl" if beaten else None)
    assert expected in text
    assert "agent seed 0: at 128 episodes" in text and "agent seed 1: not within the budget" in text
    assert "times lower" in text or "times higher" in text
    with pytest.raises(ValueError, match="lacks the label"):
        report.curve_reading(curve_frame({0: None}), "", "ctrl", "best", {"best": [1.0]}, "oracle", None)


def test_the_curve_figure_and_table_render():
    import matplotlib
    matplotlib.use("Agg")
    import rlr_report as report
    table = curve_frame({0: 128, 1: None})
    fig = report.plot_controller_curves(table, {"best schedule": 1.5, "cosine": 1.7})
    assert len(fig.axes[0].lines) >= 4
    markdown = report.curve_markdown(table)
    assert markdown.count("\n") >= 5 and "6,400" in markdown and "128" in markdown


def test_the_evaluated_controllers_best_is_the_lowest_validation_score_and_beats_reads_the_primary_family():
    make = lambda label, mse: controllers.TrainedController(label, "dqn", {}, {}, pd.DataFrame(), 0.0, {}, mse)
    trained = {"a": make("a", [1.0, 4.0]), "b": make("b", [2.0, 1.0]), "c": make("c", [math.nan, 0.1])}
    assert controllers.best_trained(trained) == "b"  # c diverged once: +inf
    primary = pd.DataFrame([{"method": "a", "against": "s", "metric": "test_mse", "significant": True, "ratio": 1.5},
                            {"method": "b", "against": "s", "metric": "test_mse", "significant": True, "ratio": 0.5},
                            {"method": "c", "against": "s", "metric": "test_mse", "significant": False, "ratio": 2.0}])
    assert [study.beats(primary, m, "s") for m in "abc"] == [True, False, False]
    with pytest.raises(ValueError, match="no test"):
        study.beats(primary, "a", "t")


def test_the_selection_cost_is_every_other_agents_whole_curve():
    table = pd.DataFrame([{"agent seed": seed, "episodes": episodes, "training optimiser steps": episodes * 10,
                           "seconds": episodes / 10} for seed in (0, 1, 2) for episodes in (4, 8)])
    assert curves.selection_cost(table, 1) == (160, 1.6)
    with pytest.raises(ValueError, match="agent seed 5"):
        curves.selection_cost(table, 5)


def test_learning_curves_refuse_bad_input_before_training():
    setup, config, controller = tiny()
    curve = curves.CurveConfig(episodes=4, first_checkpoint=2)
    with pytest.raises(ValueError, match="params must give"):
        curves.submit_learning_curves(config, setup, controller, {"dqn.lr": 1e-3}, curve)
    with pytest.raises(TypeError, match="curve must be a CurveConfig"):
        curves.train_to_checkpoints(config, setup, controller, PARAMS, {"episodes": 4}, 0)
    with pytest.raises(TypeError, match="controller must be a ControllerConfig"):
        curves.submit_learning_curves(config, setup, None, PARAMS, curve)


def fake_training(agent_seeds=(0, 1)) -> curves.ControllerTraining:
    """A ControllerTraining of untrained but real controllers (a seeded DQN's weights), made in a second."""
    import rlr_core as rc
    from dataclasses import asdict

    controller = controllers.ControllerConfig(decision_interval=10, n_envs=2, training_rounds=1)
    run_config = engine.Config().with_overrides({"schedule": asdict(controller.schedule(40)),
                                                 "dqn": controllers.CONTROLLER_DQN})
    agent = rc.DQNAgent(run_config.schedule.state_dim, run_config.schedule.n_actions, run_config.dqn, 0)
    episodes = pd.DataFrame({"episode": [0], "round": [0], "seed": [3000], "return": [0.5], "diverged": [False]})
    trained = {controllers.DQN_CONTROLLER: controllers.TrainedController(
        controllers.DQN_CONTROLLER, "dqn", run_config.to_dict(), controllers.policy_weights(agent), episodes, 1.0,
        dict(PARAMS), [1e-4, 2e-4])}
    tuning = pd.DataFrame({"controller": [controllers.DQN_CONTROLLER], "configuration": [0], "validation MSE": [1.4e-4],
                           "chosen": [True]})
    curve_rows = pd.DataFrame({"agent seed": list(agent_seeds), "episodes": [2] * len(agent_seeds),
                               "validation MSE": [1e-4] * len(agent_seeds), "plateau at": [np.nan] * len(agent_seeds)})
    return curves.ControllerTraining(controller, curves.CurveConfig(4, 2, tuple(agent_seeds)), trained, tuning,
                                     curve_rows, agent_seeds[-1])


def test_part_one_saves_what_part_two_loads_and_refuses_another_setup(tmp_path):
    setup = tiny()[0]
    training = fake_training()
    written = curves.save_training(tmp_path, setup, training)
    assert sorted(path.name for path in written) == sorted(curves.TRAINING_FILES.values())
    loaded = curves.load_training(tmp_path, setup)
    assert loaded.controller == training.controller and loaded.curve == training.curve
    assert loaded.best_agent_seed == training.best_agent_seed and list(loaded.trained) == list(training.trained)
    for name, tensor in training.trained[controllers.DQN_CONTROLLER].policy.items():
        assert np.array_equal(loaded.trained[controllers.DQN_CONTROLLER].policy[name].numpy(), tensor.numpy())
    pd.testing.assert_frame_equal(loaded.tuning, training.tuning)
    from dataclasses import replace
    assert curves.load_training(tmp_path, replace(setup, shown_budget=1)).best_agent_seed == training.best_agent_seed
    with pytest.raises(ValueError, match=r"another study setup \(steps: 40 there, 80 here\)"):
        curves.load_training(tmp_path, replace(setup, steps=80))
    record = tmp_path / curves.TRAINING_FILES["record"]
    for damaged, match in ((b"\xff not json", "is not JSON"), (b'{"study": {}}', "is not notebook 04_controllers' record"),
                           (b"[1, 2]", "is not notebook 04_controllers' record")):
        saved = record.read_bytes()
        record.write_bytes(damaged)
        with pytest.raises(ValueError, match=match) as caught:
            curves.load_training(tmp_path, setup)
        assert str(record) in str(caught.value), "the message names the file"
        record.write_bytes(saved)
    (tmp_path / curves.TRAINING_FILES["curves"]).unlink()
    with pytest.raises(FileNotFoundError, match="run notebook 04_controllers first"):
        curves.load_training(tmp_path, setup)


def test_the_controllers_submitted_are_the_learners_named():
    setup, config, controller = tiny()
    with pytest.raises(ValueError, match="learners must name"):
        controllers.submit_controllers(config, setup, controller, ["dqn", "dqn"])
    with pytest.raises(ValueError, match="learners must name"):
        controllers.submit_controllers(config, setup, controller, ["a2c"])
    with pytest.raises(ValueError, match="learners must name"):
        controllers.submit_controllers(config, setup, controller, [])
