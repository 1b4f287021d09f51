"""The learning-rate-free optimisers (rlr_study.LR_FREE), used through their own packages: they train
MaclaurinNet in float32 and float64, schedule-free runs are recorded at their eval-mode weights, a wrong
knob is refused naming it, and a divergence is caught like any other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rlr_core as rc
import rlr_engine as engine
import rlr_study as study

KNOBS = {"Schedule-Free AdamW": {"lr": 3e-3, "warmup_fraction": 0.05}, "Prodigy": {"d_coef": 1.0},
         "D-Adaptation Adam": {"lr": 1.0}}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(study.LR_FREE))
def test_each_learning_rate_free_optimiser_lowers_the_loss(name: str, dtype: str):
    run = engine.train_full_batch(engine.Config(dtype=dtype), 1.0, 300, name,
                                  make_optimizer=study.lr_free_optimizer(name, KNOBS[name], 300))
    assert run.diverged_at is None and np.isfinite(run.series["loss"]).all()
    assert run.series["loss"][-1] < 0.5 * run.series["loss"][0], name


def test_schedule_free_runs_are_recorded_at_their_eval_mode_weights():
    config = engine.Config(seed=2)
    run = engine.train_full_batch(config, 1.0, 100, "schedule-free",
                                  make_optimizer=study.lr_free_optimizer("Schedule-Free AdamW", KNOBS["Schedule-Free AdamW"], 100))
    data = rc.make_polynomial_dataset(config.task, rc.derive_seeds(2).data)
    with torch.no_grad():
        assert run.series["loss"][-1] == pytest.approx(float(rc.full_batch_loss(run.model, data)), rel=1e-6)
    # eval mode holds other weights than train mode (the averaged x, not the y gradients are taken at)
    model = rc.make_model(config.task, rc.derive_seeds(2).init)
    optimizer = study.lr_free_optimizer("Schedule-Free AdamW", KNOBS["Schedule-Free AdamW"], 100)(model.parameters(), 1.0)
    optimizer.train()
    for _ in range(20):
        optimizer.zero_grad()
        rc.full_batch_loss(model, data).backward()
        optimizer.step()
    train_weights = [p.detach().clone() for p in model.parameters()]
    optimizer.eval()
    assert not all(torch.equal(a, b) for a, b in zip(train_weights, model.parameters()))
    with torch.no_grad():
        eval_loss = float(rc.full_batch_loss(model, data))
    optimizer.train()
    assert all(torch.allclose(a, b) for a, b in zip(train_weights, model.parameters()))
    with torch.no_grad():
        assert float(rc.full_batch_loss(model, data)) != eval_loss


@pytest.mark.parametrize("name, knobs, match", [
    ("Prodigy", {"d_coef": -1.0}, r"Prodigy\.d_coef must be a finite number in \(0\.0, inf\)"),
    ("Prodigy", {"d_coef": math.nan}, r"Prodigy\.d_coef"),
    ("Schedule-Free AdamW", {"lr": 1e-3, "warmup_fraction": 1.5}, r"Schedule-Free AdamW\.warmup_fraction"),
    ("D-Adaptation Adam", {"lr": 1.0, "beta": 0.9}, r"no knob\(s\) \['beta'\]"),
    ("Adam", {"lr": 1.0}, "name must be one of"),
])
def test_a_wrong_knob_is_refused_naming_it(name: str, knobs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        study.lr_free_optimizer(name, knobs, 100)


def test_a_diverging_learning_rate_free_run_stops_with_nothing_non_finite_logged():
    run = engine.train_full_batch(engine.Config(), 1.0, 200, "schedule-free",
                                  make_optimizer=study.lr_free_optimizer("Schedule-Free AdamW", {"lr": 1e6}, 200))
    assert run.diverged_at is not None and run.diverged_at < 200
    assert np.isfinite(run.series["loss"]).all() and len(run.series["loss"]) == run.diverged_at


def test_d_adaptation_trains_only_with_adams_bias_correction_which_the_study_turns_on():
    """Why lr_free_optimizer passes use_bias_correction=True: with the package's default (off) the first
    steps are so large that the network collapses to a constant prediction and stays there."""
    import dadaptation

    def final_loss(bias_correction: bool) -> float:
        make = lambda parameters, lr: dadaptation.DAdaptAdam(parameters, lr=1.0, use_bias_correction=bias_correction)
        return engine.train_full_batch(engine.Config(), 1.0, 300, "d", make_optimizer=make).series["loss"][-1]

    assert final_loss(False) > 0.25 and final_loss(True) < 0.01
