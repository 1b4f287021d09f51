"""Tools of the many-seed study: Adam-HD and the statistics over seeds, against independent computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import rlr_core as rc
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
    hd, adam = rc.AdamHD([hd_param], lr=1e-2, hypergradient_lr=0.0), torch.optim.Adam([adam_param], lr=1e-2)
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
    optimizer = rc.AdamHD([param], lr=0.1, hypergradient_lr=0.01)
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
    config = rc.Config(schedule=rc.ScheduleConfig(steps=10))
    result = rc.train_full_batch(config, 1e-3, 50, make_optimizer=lambda p, lr: rc.AdamHD(p, lr, hypergradient_lr=1e-3))
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
