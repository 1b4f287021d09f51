"""Tools of the many-seed study: Adam-HD and the statistics over seeds, against independent computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import rlr_core as rc
import rlr_engine as engine
import rlr_results as results_io
import rlr_report as report


def adam_direction_numpy(grads: list[np.ndarray], beta1=0.9, beta2=0.999, eps=1e-8) -> np.ndarray:
    """Adam's direction u_t = m_hat / (sqrt(v_hat) + eps) after the given gradients, written out by hand."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
    return m_hat / (np.sqrt(v_hat) + eps)


def test_adam_hd_with_zero_hypergradient_lr_is_plain_adam():
    torch.manual_seed(0)
    weights = torch.randn(5, dtype=torch.float64)
    hd_param, adam_param = weights.clone().requires_grad_(), weights.clone().requires_grad_()
    hd, adam = engine.AdamHD([hd_param], lr=1e-2, hypergradient_lr=0.0), torch.optim.Adam([adam_param], lr=1e-2)
    for _ in range(20):
        for param, optimizer in ((hd_param, hd), (adam_param, adam)):
            optimizer.zero_grad()
            ((param - 3.0) ** 2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(hd_param, adam_param, rtol=1e-12, atol=1e-14)


def test_adam_hd_moves_the_lr_by_the_hypergradient():
    """lr_2 = lr_1 + beta * <g_2, u_1> with u_1 Adam's first direction, all in numpy."""
    start = np.array([1.0, -2.0, 0.5])
    param = torch.tensor(start, requires_grad=True)
    optimizer = engine.AdamHD([param], lr=0.1, hypergradient_lr=0.01)
    gradients = []
    for _ in range(2):
        optimizer.zero_grad()
        (param ** 2).sum().backward()
        gradients.append(param.grad.numpy().copy())
        optimizer.step()
    u1 = adam_direction_numpy(gradients[:1])
    assert np.allclose(gradients[1], 2 * (start - 0.1 * u1))
    expected_lr = 0.1 + 0.01 * float(gradients[1] @ u1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)


def test_train_full_batch_records_the_lr_adam_hd_used():
    config = engine.Config(schedule=rc.ScheduleConfig(steps=10))
    result = engine.train_full_batch(config, 1e-3, 50, make_optimizer=lambda p, lr: engine.AdamHD(p, lr, hypergradient_lr=1e-3))
    assert result.series["lr"][0] == 1e-3  # first step: no previous direction yet
    assert len(np.unique(result.series["lr"])) > 10


def test_geometric_mean_and_interval_match_scipy():
    values = np.exp(np.random.default_rng(1).normal(-12, 1.5, 20))
    assert report.geometric_mean(values) == pytest.approx(scipy.stats.gmean(values))
    low, high = report.bootstrap_interval(values, "geometric_mean")
    direct = scipy.stats.bootstrap((np.log(values),), np.mean, rng=0).confidence_interval
    assert (low, high) == pytest.approx((np.exp(direct.low), np.exp(direct.high)))
    assert low < report.geometric_mean(values) < high
    median_low, median_high = report.bootstrap_interval(values, "median")
    assert median_low <= np.median(values) <= median_high


def test_paired_statistics_match_hand_counts():
    table = pd.DataFrame({"method": ["base"] * 4 + ["agent"] * 4, "seed": [0, 1, 2, 3] * 2,
                          "mse": [4.0, 4.0, 1.0, 9.0, 1.0, 2.0, 2.0, 3.0]})
    # per seed base/agent = 4, 2, 0.5, 3: the agent wins on 3 of 4 seeds, 3 of them reach 2x
    assert report.paired_win_rate(table, "mse", "base", "agent") == 0.75
    claim = report.claim_ratio(table, "mse", "base", "agent")
    assert claim["ratio"] == pytest.approx((4 * 2 * 0.5 * 3) ** 0.25)
    assert claim["seeds_reaching_2"] == 3 and claim["seeds"] == 4
    summary = report.summarise_over_seeds(table, "mse")
    assert summary.loc["agent", "median"] == 2.0 and summary.loc["base", "seeds"] == 4


def test_bootstrap_interval_rejects_an_unknown_statistic():
    with pytest.raises(ValueError, match="statistic"):
        report.bootstrap_interval([1.0, 2.0, 3.0], "mean")


# --- the study layer (rlr_study) ------------------------------------------------------------------

import rlr_study as study  # noqa: E402


def test_study_refuses_tuning_seeds_that_overlap_the_evaluation_seeds():
    with pytest.raises(ValueError, match="overlap"):
        study.StudyConfig(first_eval_seed=0, n_eval_seeds=16, first_tuning_seed=10)
    with pytest.raises(ValueError, match="study.n_eval_seeds"):
        study.StudyConfig(n_eval_seeds=0)


def test_tuned_constant_lr_is_the_argmin_of_the_tuning_scores_computed_independently():
    setup = study.StudyConfig(n_eval_seeds=2, first_tuning_seed=50, n_tuning_seeds=2, steps=40)
    config = study.study_config(engine.Config(schedule=rc.ScheduleConfig(lr_grid=(1e-4, 1e-3, 1e-2), start_index=1)), setup)
    lr, table = study.tune_constant_lr(config, setup)
    scores = []
    for grid_lr in config.schedule.lr_grid:  # the reference loop, one run at a time
        medians = [engine.train_full_batch(engine.Config.from_dict({**config.to_dict(), "seed": s}), grid_lr, 40).summary()["median_last_100"]
                   for s in setup.tuning_seeds]
        scores.append(float(np.exp(np.mean(np.log(medians)))))
    assert table.iloc[:, 1].to_numpy() == pytest.approx(scores, rel=1e-4)
    assert lr == config.schedule.lr_grid[int(np.argmin(scores))]


def test_wall_clock_budget_converts_the_agents_time_into_steps_and_epochs():
    setup = study.StudyConfig(steps=1000)
    budget = study.wall_clock_budget(setup, {"agent_step": 2e-3, "full_batch_step": 5e-4, "baseline_epoch": 4e-3})
    assert budget == {"agent_seconds": 2.0, "full_batch_steps": 4000, "baseline_epochs": 500}


def test_test_mse_is_the_trained_networks_error_on_held_out_polynomials():
    config = engine.Config(seed=3, schedule=rc.ScheduleConfig(steps=30))
    run = engine.train_full_batch(config, 1e-3, 30)
    held_out = rc.make_polynomial_dataset(config.task, rc.derive_seeds(3).test, 64)
    training = rc.make_polynomial_dataset(config.task, rc.derive_seeds(3).data)
    assert not torch.equal(held_out.targets[:5], training.targets[:5])
    with torch.no_grad():
        expected = float(((run.model(held_out.inputs) - held_out.targets) ** 2).mean())
    assert study.test_mse(run, 64) == pytest.approx(expected, rel=1e-6)


def test_claim_table_gives_one_row_per_budget_agent_reference_and_metric():
    rows = []
    for budget in ("b1", "b2"):
        for seed in range(3):
            rows += [{"budget": budget, "method": "base", "seed": seed, "train_final": 4.0, "test_mse": 8.0, "diverged_at": None},
                     {"budget": budget, "method": "tuned", "seed": seed, "train_final": 1.0, "test_mse": 1.0, "diverged_at": None},
                     {"budget": budget, "method": "agent", "seed": seed, "train_final": 2.0, "test_mse": 2.0, "diverged_at": None}]
    claims = study.claim_table(pd.DataFrame(rows), "base", "tuned", ["agent"])
    assert len(claims) == 2 * 1 * 2 * 2
    against_base = claims[(claims.against == "base") & (claims.metric == "test_mse")]
    assert against_base["ratio"].tolist() == pytest.approx([4.0, 4.0])
    assert against_base["seeds_reaching_2"].tolist() == [3, 3]
    assert claims[claims.against == "tuned"]["ratio"].tolist() == pytest.approx([0.5] * 4)


def test_json_ready_replaces_non_finite_numbers_and_numpy_scalars():
    ready = results_io.json_ready({"a": np.float64("nan"), "b": [np.int64(3), float("inf"), 1.5], "c": (np.bool_(True),)})
    assert ready == {"a": None, "b": [3, None, 1.5], "c": [True]}
