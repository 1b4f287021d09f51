"""Notebook 07's protocol (rlr_mnist1d): the families' lr rules against torch's schedulers, the picks and the
budget curves against hand-made tables, the study's checks, the primary family, the reading's convention,
and one tiny end-to-end tuning and evaluation (deterministic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import rlr_batched
import rlr_core as rc
import rlr_methods as methods
import rlr_mnist1d as mnist1d
import rlr_stats as stats
import rlr_tasks as tasks
from rlr_engine import AdamHD, Config
from rlr_tasks import MNIST1DConfig


def test_each_schedule_familys_lrs_are_its_torch_scheduler_stepped_once_per_step() -> None:
    steps, lr = 50, 3e-3
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.01)
    expected = []
    for _ in range(steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(methods.get("cosine").lr_schedule({"lr": lr, "final_fraction": 0.01}, steps), expected)
    np.testing.assert_array_equal(methods.get("constant").lr_schedule({"lr": lr}, steps), np.full(steps, lr))
    one_cycle = methods.get("one_cycle").lr_schedule({"lr": lr, "pct_start": 0.3}, steps)
    assert one_cycle.max() == pytest.approx(lr, rel=1e-6) and one_cycle[0] < lr / 10  # warms up to its peak
    for key in ("plateau", "adam_hd"):
        with pytest.raises(ValueError, match="no fixed schedule"):
            methods.get(key).lr_schedule({"lr": lr}, steps)


RULES = {"plateau": ({"lr": 3e-3, "factor": 0.5, "patience": 3},
                     dict(make_scheduler=lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(
                         optimizer, factor=0.5, patience=3))),
         "adam_hd": ({"lr": 1e-3, "hypergradient_lr": 1e-4},
                     dict(make_optimizer=lambda parameters, lr: AdamHD(parameters, lr, hypergradient_lr=1e-4)))}


@pytest.mark.parametrize("key", list(RULES))
def test_the_rules_that_watch_the_run_run_on_mnist1d_as_in_the_reference_loop(key: str) -> None:
    """ReduceLROnPlateau (stepped with each mini-batch loss) and Adam-HD through the registry on MNIST1DTask, K
    runs at once, against train_mnist1d with torch's scheduler or rlr_engine.AdamHD, one run at a time."""
    config = MNIST1DConfig(steps=60)
    params, reference_options = RULES[key]
    runs = methods.get(key).run_pool([params], tasks.MNIST1DTask(config), [1, 2], config.steps)[0]
    for seed, run in zip([1, 2], runs):
        alone = tasks.train_mnist1d(seed, config, params["lr"], **reference_options)
        assert run.diverged_at is None and run.seed == seed
        np.testing.assert_allclose(run.series["lr"], alone.series["lr"], rtol=1e-5)
        np.testing.assert_allclose(run.series["loss"], alone.series["loss"], rtol=1e-4)
        assert len(set(run.series["lr"])) > 1, "the rule moved the lr"


def test_a_registry_family_on_a_task_object_is_the_family_on_its_engine() -> None:
    """On the polynomial task a PolynomialTask is the Config it holds, bit for bit; on MNIST-1D a pool is one
    batch of train_mnist1d_batched; the within-run agents refuse a task they cannot learn on."""
    config = Config(schedule=rc.ScheduleConfig(steps=20))
    pool = methods.get("cosine").configurations(2, 0)
    on_config = methods.get("cosine").run_pool(pool, config, [0, 1], 20)
    on_task = methods.get("cosine").run_pool(pool, rlr_batched.PolynomialTask(config), [0, 1], 20)
    for runs, again in zip(on_config, on_task):
        for run, other in zip(runs, again):
            np.testing.assert_array_equal(run.series["loss"], other.series["loss"])
            assert run.config == other.config and run.method == other.method == "cosine"
    small = MNIST1DConfig(steps=30)
    task_runs = methods.get("exponential").run_pool([{"lr": 2e-3, "total_decay": 10.0}],
                                                    tasks.MNIST1DTask(small), [3, 4], 30)[0]
    direct = tasks.train_mnist1d_batched([3, 4], small, methods.get("exponential").lr_schedule(
        {"lr": 2e-3, "total_decay": 10.0}, 30), method="exponential")
    for run, other in zip(task_runs, direct):
        np.testing.assert_array_equal(run.series["loss"], other.series["loss"])
    with pytest.raises(ValueError, match="polynomial task's batched engine only"):
        methods.get("dqn_tuned").run({"dqn.lr": 1e-3, "dqn.horizon": 10.0, "dqn.epsilon_decay": 100.0},
                                     tasks.MNIST1DTask(small), [0], 30)
    with pytest.raises(ValueError, match="steps must be the task's run length"):
        methods.get("constant").run({"lr": 1e-3}, tasks.MNIST1DTask(small), [0], 31)
    with pytest.raises(TypeError, match="config must be a Config or a task"):
        methods.get("constant").run({"lr": 1e-3}, small, [0], 30)


def tuning_table(rows: list[tuple[str, int, int, float, float]]) -> pd.DataFrame:
    """A tuning table from (family, configuration, seed, validation error, validation ce)."""
    return pd.DataFrame([{"family": family, "configuration": index, "params": json.dumps({"lr": 10.0 ** -index}),
                          "seed": seed, "validation_error": error, "validation_ce": ce, "test_error": error + 0.01}
                         for family, index, seed, error, ce in rows])


def test_the_pick_has_the_lowest_mean_validation_error_and_never_a_diverged_run() -> None:
    table = tuning_table([("constant", 0, 1, 0.30, 1.0), ("constant", 0, 2, 0.34, 1.0),  # mean 0.32
                          ("constant", 1, 1, 0.20, 0.9), ("constant", 1, 2, math.nan, math.nan),  # diverged once
                          ("constant", 2, 1, 0.31, 1.1), ("constant", 2, 2, 0.31, 0.8),  # mean 0.31: the pick
                          ("cosine", 0, 1, 0.25, 1.2), ("cosine", 0, 2, 0.25, 1.2),  # tie on error ...
                          ("cosine", 1, 1, 0.25, 1.1), ("cosine", 1, 2, 0.25, 1.1)])  # ... broken by ce
    picks = mnist1d.choose(table)
    assert picks["constant"]["configuration"] == 2 and picks["constant"]["params"] == {"lr": 0.01}
    assert picks["constant"]["validation_error"] == pytest.approx(0.31)
    assert picks["constant"]["runner_up_margin"] == pytest.approx(0.32 / 0.31)
    assert picks["cosine"]["configuration"] == 1 and picks["cosine"]["runner_up_margin"] == pytest.approx(1.0)
    assert mnist1d.best_pick(picks, ["constant", "cosine"]) == "cosine"
    with pytest.raises(ValueError, match="no pick"):
        mnist1d.best_pick(picks, ["prodigy"])
    every_one_diverged = tuning_table([("prodigy", 0, 1, math.nan, math.nan), ("prodigy", 1, 1, 0.2, 1.0),
                                       ("prodigy", 1, 2, math.nan, math.nan), ("prodigy", 0, 2, 0.2, 1.0)])
    with pytest.raises(ValueError, match="prodigy: every candidate diverged"):
        mnist1d.choose(every_one_diverged)


def runs(rows: list[tuple[str, str, int, float, float, float | None]]) -> pd.DataFrame:
    """A runs table from (method, kind, seed, validation error, test error, diverged_at)."""
    return pd.DataFrame([{"method": method, "kind": kind, "seed": seed, "validation_error": validation,
                          "validation_ce": validation * 3, "test_error": test, "test_ce": test * 3,
                          "diverged_at": diverged, "budget": "same optimiser steps"}
                         for method, kind, seed, validation, test, diverged in rows])


def test_the_best_controller_is_picked_by_the_families_rule_a_diverged_run_disqualifying() -> None:
    table = runs([("a", "controller", 1, 0.30, 0.3, None), ("a", "controller", 2, 0.30, 0.3, None),
                  ("b", "controller", 1, 0.10, 0.1, None), ("b", "controller", 2, math.nan, math.nan, 40),
                  ("c", "controller", 1, 0.35, 0.2, None), ("c", "controller", 2, 0.35, 0.2, None)])
    assert mnist1d.choose_method(table, ["a", "b", "c"]) == "a"  # b diverged once; c is worse on validation
    with pytest.raises(ValueError, match="no runs of"):
        mnist1d.choose_method(table, ["a", "z"])
    with pytest.raises(ValueError, match="every candidate diverged"):
        mnist1d.choose_method(table, ["b"])


def test_a_diverged_run_counts_at_chance_in_the_summaries() -> None:
    table = runs([("a", "schedule", 1, 0.3, 0.30, None), ("a", "schedule", 2, 0.3, 0.34, None),
                  ("b", "lr_free", 1, 0.1, 0.10, None), ("b", "lr_free", 2, math.nan, math.nan, 7)])
    summary = mnist1d.test_accuracy_summary(table).set_index("method")
    assert summary.loc["b", "test accuracy"] == pytest.approx(100 * (1 - (0.10 + mnist1d.CHANCE_ERROR) / 2))
    assert summary.loc["b", "diverged"] == 1 and summary.loc["a", "test accuracy"] == pytest.approx(68.0)
    assert list(summary.index) == ["a", "b"]  # b's divergence costs it the first place
    errors = mnist1d.error_summary(table).set_index("method")
    assert errors.loc["b", "geometric mean"] == pytest.approx(math.sqrt(0.10 * mnist1d.CHANCE_ERROR))
    assert errors.loc["a", "gm CI low"] <= errors.loc["a", "geometric mean"] <= errors.loc["a", "gm CI high"]


def test_the_budget_curves_are_rlr_stats_curves_of_each_familys_configurations() -> None:
    rng = np.random.default_rng(0)
    rows = [("constant", index, seed, float(rng.uniform(0.2, 0.5)), 1.0) for index in range(8) for seed in (1, 2)]
    table = tuning_table(rows)
    curves = mnist1d.budget_curves(table, ks=(1, 2, 4, 8, 16))
    assert list(curves["k"]) == [1, 2, 4, 8]  # no k above the pool
    assert "best validation error, median" in curves and not any("MSE" in column for column in curves)
    means = table.groupby("configuration")["validation_error"].mean()
    expected = stats.budget_curve(means, means + 0.01, [1, 2, 4, 8])
    np.testing.assert_allclose(curves["best validation error, expected"], expected["best validation MSE, expected"])
    np.testing.assert_allclose(curves["test error of the pick, expected"], expected["test MSE of the pick, expected"])


def test_the_study_refuses_bad_settings_naming_them() -> None:
    with pytest.raises(ValueError, match="overlap"):
        mnist1d.MNIST1DStudy(first_eval_seed=0, n_eval_seeds=10, first_tuning_seed=5)
    with pytest.raises(ValueError, match="n_validation"):
        mnist1d.MNIST1DStudy(task=MNIST1DConfig(n_validation=0))
    with pytest.raises(ValueError, match="study.n_eval_seeds"):
        mnist1d.MNIST1DStudy(n_eval_seeds=0)
    with pytest.raises(TypeError, match="study.tuning_budget"):
        mnist1d.MNIST1DStudy(tuning_budget=2.5)
    with pytest.raises(ValueError, match="family must be one of"):
        mnist1d.run_pool("dqn_tuned", [{"lr": 1e-3}], [0], MNIST1DConfig(steps=2))
    with pytest.raises(ValueError, match="empty"):
        mnist1d.run_pool("constant", [], [0], MNIST1DConfig(steps=2))
    with pytest.raises(TypeError, match="config must be an MNIST1DConfig"):
        mnist1d.run_pool("constant", [{"lr": 1e-3}], [0], "cfg")


def test_every_family_is_a_registry_entry_of_its_kind() -> None:
    assert all(methods.get(key).kind == "schedule" for key in mnist1d.SCHEDULES)
    assert all(methods.get(key).kind == "lr_free" and methods.get(key).optimizer for key in mnist1d.LR_FREE)


def test_the_primary_family_is_eight_distinct_comparisons_on_both_metrics() -> None:
    comparisons = mnist1d.primary_comparisons("constant", "schedule", "free", "controller")
    assert len(set(comparisons)) == 8 <= stats.PRIMARY_LIMIT
    assert {metric for *_, metric in comparisons} == {"test_error", "test_ce"}


def test_the_accuracy_interval_holds_the_mean_and_is_nan_without_spread() -> None:
    values = np.array([0.61, 0.65, 0.66, 0.70, 0.64, 0.67])
    low, high = mnist1d.mean_interval(values)
    assert low < values.mean() < high and high - low < values.max() - values.min()
    assert all(math.isnan(bound) for bound in mnist1d.mean_interval(np.full(4, 0.6)))
    assert all(math.isnan(bound) for bound in mnist1d.mean_interval(np.array([0.6])))


@pytest.fixture(scope="module")
def tiny_study():
    """Two families' pools of 2 on 2 tuning seeds, then the picks, the paper's Adam and a rule controller."""
    study = mnist1d.MNIST1DStudy(task=MNIST1DConfig(steps=30, n_validation=500), n_eval_seeds=3, n_tuning_seeds=2,
                                 first_tuning_seed=50, tuning_budget=2)
    tuning = mnist1d.tune(study, ["constant", "schedule_free"])
    picks = mnist1d.choose(tuning)
    runs = mnist1d.run_picks(picks, study.eval_seeds, study.task)
    return study, tuning, picks, runs


def test_tuning_runs_every_configuration_on_every_tuning_seed_and_is_deterministic(tiny_study) -> None:
    study, tuning, picks, runs = tiny_study
    assert len(tuning) == 2 * study.tuning_budget * study.n_tuning_seeds
    assert set(tuning["seed"]) == set(study.tuning_seeds) and tuning["validation_error"].between(0, 1).all()
    again = mnist1d.run_pool("constant", [picks["constant"]["params"]], study.tuning_seeds, study.task)[0]
    first = tuning[(tuning["family"] == "constant") & (tuning["configuration"] == picks["constant"]["configuration"])]
    assert [mnist1d.scores(run, study.task)["validation_error"] for run in again] == list(first["validation_error"])


def test_the_evaluation_table_and_the_reading_follow_the_runs(tiny_study) -> None:
    study, tuning, picks, runs = tiny_study
    kinds = {mnist1d.tuned_label("constant"): "schedule", mnist1d.tuned_label("schedule_free"): "lr_free",
             mnist1d.PAPER_ADAM: "original"}
    table = mnist1d.runs_table(runs, study.task, kinds)
    assert len(table) == 3 * study.n_eval_seeds and set(table["seed"]) == set(study.eval_seeds)
    summary = mnist1d.test_accuracy_summary(table)
    for _, row in summary.iterrows():
        part = table[table["method"] == row["method"]]
        assert row["test accuracy"] == pytest.approx(100 * (1 - part["test_error"]).mean())
    assert list(summary["test accuracy"]) == sorted(summary["test accuracy"], reverse=True)
    primary = stats.primary_tests(table, [("same optimiser steps", mnist1d.tuned_label("schedule_free"),
                                           mnist1d.tuned_label("constant"), "test_error")])
    roles = {"tuned constant": mnist1d.tuned_label("constant")}
    text = mnist1d.reading(summary, primary, roles, 68.0, study.task)
    assert f"the tuned constant lr {summary.set_index('method').loc[roles['tuned constant'], 'test accuracy']:.1f}%" in text
    assert f"train on {study.task.n_train}" in text and "tuned constant: tuned constant lr" in text
    for number in __import__("re").findall(r"([\d.]+) times (?:lower|higher)", text):
        assert float(number) >= 1


def test_the_summary_names_the_notebook_to_run_when_its_results_are_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="07_mnist1d"):
        mnist1d.summary_blocks(tmp_path)


def test_the_controller_training_checks_its_settings_and_keeps_doubling_checkpoints() -> None:
    assert mnist1d.ControllerTraining().checkpoints == [2, 4, 8, 16]
    assert mnist1d.ControllerTraining(rounds=12, first_checkpoint=3).checkpoints == [3, 6, 12]
    assert mnist1d.ControllerTraining(rounds=1, first_checkpoint=1).checkpoints == [1]
    with pytest.raises(ValueError, match="training.first_checkpoint"):
        mnist1d.ControllerTraining(rounds=2, first_checkpoint=3)
    with pytest.raises(TypeError, match="training.rounds"):
        mnist1d.ControllerTraining(rounds=2.0)
    with pytest.raises(ValueError, match="training.first_training_seed"):
        mnist1d.ControllerTraining(first_training_seed=2**32 - 4)  # its 16 runs' seeds reach past the generator's
    study = mnist1d.MNIST1DStudy()
    with pytest.raises(ValueError, match="training task seeds meet"):
        mnist1d.ControllerTraining(first_training_seed=study.first_tuning_seed - 3).check_disjoint(
            mnist1d.ControllerTraining(first_training_seed=study.first_tuning_seed - 3).first_round_seeds, study)


def test_a_controllers_schedule_keeps_its_decisions_per_run_on_another_run_length() -> None:
    polynomial = rc.ScheduleConfig(steps=10_000, decision_interval=100, features="control", lr_factors=(0.5, 1.0, 2.0))
    carried = mnist1d.controller_schedule(polynomial, 6000)
    assert (carried.steps, carried.decision_interval) == (6000, 60)
    assert (carried.lr_grid, carried.features, carried.reward) == (polynomial.lr_grid, polynomial.features, polynomial.reward)
    assert mnist1d.controller_schedule(polynomial, 30).decision_interval == 1
    with pytest.raises(TypeError, match="schedule must be a ScheduleConfig"):
        mnist1d.controller_schedule({"steps": 10}, 30)


def tiny_training(first_training_seed: int = 300_000) -> tuple:
    study = mnist1d.MNIST1DStudy(task=MNIST1DConfig(steps=20, n_validation=500), n_eval_seeds=2, n_tuning_seeds=1)
    schedule = rc.ScheduleConfig(steps=20, decision_interval=5, features="validation", reward="validation",
                                 lr_factors=(0.5, 1.0, 2.0), lr_grid=tuple(np.logspace(-5, -1, 12)))
    dqn = rc.DQNConfig(learning_starts=4, batch_size=4, gamma=1.0)
    training = mnist1d.ControllerTraining(first_training_seed=first_training_seed, n_envs=2, rounds=2, first_checkpoint=1,
                                          updates_per_step=2)
    return mnist1d.train_controller(study, schedule, dqn, training)


def test_a_controller_trains_on_mnist1d_seeds_of_its_own_deterministically() -> None:
    trained = tiny_training()
    snapshots, history = trained.snapshots, trained.history
    assert list(snapshots) == [2, 4]  # episodes finished after rounds 1 and 2 (2 runs per round)
    assert history["episode_seeds"][:2] == [300_000, 300_001] and len(history["episode_returns"]) == 4
    assert trained.optimiser_steps == 4 * 20, "four whole episodes of 20 Adam steps, none diverged"
    assert any(not torch.equal(snapshots[2][name], snapshots[4][name]) for name in snapshots[2]), "it learned"
    again = tiny_training()
    assert again.history["episode_returns"] == history["episode_returns"]
    assert all(torch.equal(again.snapshots[4][name], snapshots[4][name]) for name in snapshots[4])
    with pytest.raises(ValueError, match="training task seeds meet"):
        tiny_training(first_training_seed=0)  # the evaluation seeds 0, 1


def test_the_transfer_comparison_is_rlr_stats_paired_comparison_of_test_error() -> None:
    table = pd.DataFrame([{"method": method, "seed": seed, "test_error": error}
                          for seed, (a, b) in enumerate([(0.40, 0.42), (0.38, 0.45), (0.41, 0.40), (0.39, 0.44)])
                          for method, error in (("polynomial", a), ("native", b))])
    transfer = mnist1d.transfer_comparison(table, "polynomial", "native")
    expected = stats.paired_comparison(table, "test_error", "native", "polynomial")
    assert transfer["ratio"] == pytest.approx(expected["ratio"]) and transfer["wins"] == 3
    assert (transfer["method"], transfer["against"]) == ("polynomial", "native") and transfer["ratio"] > 1
    with pytest.raises(ValueError, match="native: 'elsewhere' is not a method of the table"):
        mnist1d.transfer_comparison(table, "polynomial", "elsewhere")


@pytest.mark.parametrize("options, error, match", [
    ({"plateau": {"factor": 1.0}}, ValueError, "plateau: Factor should be < 1.0"),
    ({"plateau": {}, "lrs": np.full((2, 5), 1e-3)}, ValueError, "lrs must be one number or one per run"),
    ({"hypergradient_lr": -1.0}, ValueError, "hypergradient_lr"),
    ({"hypergradient_lr": 1e-4, "lrs": [1e-3, float("nan")]}, ValueError, "finite"),
    ({"plateau": {}, "make_optimizer": lambda parameters, lr: torch.optim.SGD(parameters, lr)}, ValueError,
     "Adam's rules")])
def test_bad_rule_options_on_mnist1d_are_refused_before_any_data(options: dict, error: type, match: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the options must be checked before any data or model is built")

    monkeypatch.setattr(tasks, "MNIST1DRuns", no_work)
    with pytest.raises(error, match=match):
        tasks.train_mnist1d_batched([0, 1], MNIST1DConfig(steps=5), **options)


def test_a_schedule_familys_configuration_is_checked_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the configuration must be checked before any work")

    monkeypatch.setattr(tasks, "MNIST1DRuns", no_work)
    task = tasks.MNIST1DTask(MNIST1DConfig(steps=5))
    for key, params, match in (("cosine", {"lr": 1e-3}, r"needs its knob\(s\) \['final_fraction'\]"),
                               ("constant", {"lr": -1e-3}, "constant lr.lr"),
                               ("one_cycle", {"lr": 1e-3, "pct_start": 1.0}, "one-cycle.pct_start"),
                               ("plateau", {"lr": 1e-3, "factor": 0.5}, r"needs its knob\(s\) \['patience'\]"),
                               ("adam_hd", {"lr": 1e-3, "hypergradient_lr": 0.0}, "Adam-HD.hypergradient_lr"),
                               ("exponential", {"lr": 1e-3, "total_decay": 10.0, "warmup": 3}, "has no knob")):
        with pytest.raises(ValueError, match=match):
            methods.get(key).run_pool([params], task, [0], 5)
    with pytest.raises(ValueError, match="steps"):
        methods.get("constant").lr_schedule({"lr": 1e-3}, 0)
    with pytest.raises(TypeError, match="make_scheduler must be callable"):
        methods.Method("bad", "a bad family", "schedule", {"lr": methods.LR_RANGE}, lambda *a: [], "usage",
                       make_scheduler="cosine")
    with pytest.raises(ValueError, match="belong to schedule families"):
        methods.Method("bad", "a bad family", "lr_free", {"lr": methods.LR_RANGE}, lambda *a: [], "usage",
                       rule=lambda params: {})
