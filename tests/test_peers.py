"""The learning-rate-free optimisers (rlr_methods' lr_free entries), used through their own packages: they train
MaclaurinNet in float32 and float64, schedule-free runs are recorded at their eval-mode weights, a wrong
knob is refused naming it, and a divergence is caught like any other."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import rlr_batched
import rlr_core as rc
import rlr_engine as engine
import rlr_methods as methods
import rlr_peers as peers

KNOBS = {"schedule_free": {"lr": 3e-3, "warmup_fraction": 0.05}, "prodigy": {"d_coef": 1.0},
         "d_adaptation": {"lr": 1.0}}


def lr_free_optimizer(key: str, knobs: dict, steps: int):
    return methods.get(key).optimizer(knobs, steps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", methods.keys("lr_free"))
def test_each_learning_rate_free_optimiser_lowers_the_loss(name: str, dtype: str):
    run = engine.train_full_batch(engine.Config(dtype=dtype), 1.0, 300, name,
                                  make_optimizer=lr_free_optimizer(name, KNOBS[name], 300))
    assert run.diverged_at is None and np.isfinite(run.series["loss"]).all()
    assert run.series["loss"][-1] < 0.5 * run.series["loss"][0], name


def test_schedule_free_runs_are_recorded_at_their_eval_mode_weights():
    config = engine.Config(seed=2)
    run = engine.train_full_batch(config, 1.0, 100, "schedule-free",
                                  make_optimizer=lr_free_optimizer("schedule_free", KNOBS["schedule_free"], 100))
    data = rc.make_polynomial_dataset(config.task, rc.derive_seeds(2).data)
    with torch.no_grad():
        assert run.series["loss"][-1] == pytest.approx(float(rc.full_batch_loss(run.model, data)), rel=1e-6)
    # eval mode holds other weights than train mode (the averaged x, not the y gradients are taken at)
    model = rc.make_model(config.task, rc.derive_seeds(2).init)
    optimizer = lr_free_optimizer("schedule_free", KNOBS["schedule_free"], 100)(model.parameters(), 1.0)
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
    ("prodigy", {"d_coef": -1.0}, r"Prodigy\.d_coef must be a finite number in \(0\.0, inf\)"),
    ("prodigy", {"d_coef": math.nan}, r"Prodigy\.d_coef"),
    ("schedule_free", {"lr": 1e-3, "warmup_fraction": 1.5}, r"Schedule-Free AdamW\.warmup_fraction"),
    ("d_adaptation", {"lr": 1.0, "beta": 0.9}, r"no knob\(s\) \['beta'\]"),
    ("schedule_free", {"warmup_fraction": 0.1}, r"needs its knob\(s\) \['lr'\]"),
    ("adam", {"lr": 1.0}, "no method with key 'adam'"),
])
def test_a_wrong_knob_is_refused_naming_it(name: str, knobs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        lr_free_optimizer(name, knobs, 100)


def test_a_diverging_learning_rate_free_run_stops_with_nothing_non_finite_logged():
    run = engine.train_full_batch(engine.Config(), 1.0, 200, "schedule-free",
                                  make_optimizer=lr_free_optimizer("schedule_free", {"lr": 1e6}, 200))
    assert run.diverged_at is not None and run.diverged_at < 200
    assert np.isfinite(run.series["loss"]).all() and len(run.series["loss"]) == run.diverged_at


def test_d_adaptation_trains_only_with_adams_bias_correction_which_the_study_turns_on():
    """Why the d_adaptation entry passes use_bias_correction=True: with the package's default (off) the first
    steps are so large that the network collapses to a constant prediction and stays there."""
    import dadaptation

    def final_loss(bias_correction: bool) -> float:
        make = lambda parameters, lr: dadaptation.DAdaptAdam(parameters, lr=1.0, use_bias_correction=bias_correction)
        return engine.train_full_batch(engine.Config(), 1.0, 300, "d", make_optimizer=make).series["loss"][-1]

    assert final_loss(False) > 0.25 and final_loss(True) < 0.01


@pytest.mark.parametrize("name", methods.keys("lr_free"))
def test_batched_runs_each_with_its_own_optimiser_equal_the_reference_loop_in_float64(name: str):
    """rlr_batched.train_own_optimizers shares only the forward and backward pass: every run equals its
    reference run (same losses to summation order, same lrs, same final weights). A shared instance
    (one step size from all runs' norms) would not: Prodigy's and D-Adaptation's estimates would mix."""
    config, steps, seeds = engine.Config(dtype="float64"), 40, [0, 3, 5]
    make = lr_free_optimizer(name, KNOBS[name], steps)
    batched = rlr_batched.train_own_optimizers(config, seeds, make, steps, name)
    for run, seed in zip(batched, seeds):
        reference = engine.train_full_batch(config.with_seed(seed), 1.0, steps, name, make_optimizer=make)
        assert run.seed == seed and run.method == reference.method and run.diverged_at is None
        np.testing.assert_allclose(run.series["loss"], reference.series["loss"], rtol=1e-10)
        assert np.array_equal(run.series["lr"], reference.series["lr"])
        for mine, theirs in zip(run.model.parameters(), reference.model.parameters()):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)


def test_batched_run_that_diverges_is_cut_where_its_reference_is_and_leaves_the_others_untouched():
    """The first run's optimiser gets an absurd lr (make_optimizer is called once per run, in seed order):
    it diverges at its reference's step, nothing non-finite is logged, and the other run equals its own
    reference."""
    config, steps = engine.Config(), 200  # float32: in float64 this lr collapses the network without overflow
    made = []

    def make(parameters, lr):
        knobs = {"lr": 1e6} if not made else {"lr": 3e-3}
        made.append(knobs)
        return lr_free_optimizer("schedule_free", knobs, steps)(parameters, lr)

    wild, tame = rlr_batched.train_own_optimizers(config, [1, 2], make, steps, "schedule-free")
    wild_reference = engine.train_full_batch(config.with_seed(1), 1.0, steps, "schedule-free",
                                             make_optimizer=lr_free_optimizer("schedule_free", {"lr": 1e6}, steps))
    tame_reference = engine.train_full_batch(config.with_seed(2), 1.0, steps, "schedule-free",
                                             make_optimizer=lr_free_optimizer("schedule_free", {"lr": 3e-3}, steps))
    assert wild.diverged_at == wild_reference.diverged_at is not None
    assert np.isfinite(wild.series["loss"]).all() and len(wild.series["loss"]) == wild.diverged_at
    assert tame.diverged_at is None
    np.testing.assert_allclose(tame.series["loss"], tame_reference.series["loss"], rtol=1e-4)


def test_batched_schedule_free_runs_are_recorded_at_their_eval_mode_weights():
    config = engine.Config(seed=2)
    run, = rlr_batched.train_own_optimizers(config, [2], lr_free_optimizer("schedule_free", KNOBS["schedule_free"], 60),
                                            60, "schedule-free")
    data = rc.make_polynomial_dataset(config.task, rc.derive_seeds(2).data)
    with torch.no_grad():
        assert run.series["loss"][-1] == pytest.approx(float(rc.full_batch_loss(run.model, data)), rel=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 0}, ValueError, "steps"),
    ({"method": ""}, ValueError, "method"),
    ({"make_optimizer": "prodigy"}, TypeError, "make_optimizer"),
    ({"seeds": []}, ValueError, "seeds"),
])
def test_batched_learning_rate_free_runs_refuse_bad_input_by_name(kwargs: dict, error: type, match: str):
    call = {"config": engine.Config(), "seeds": [0], "steps": 10, "method": "prodigy",
            "make_optimizer": lr_free_optimizer("prodigy", KNOBS["prodigy"], 10), **kwargs}
    with pytest.raises(error, match=match):
        rlr_batched.train_own_optimizers(**call)


def test_submit_per_seed_batches_at_most_lr_free_batch_seeds_and_keeps_their_order(monkeypatch):
    calls = []

    def fake(config, seeds, make_optimizer, steps, method):
        calls.append(list(seeds))
        return [f"run {seed}" for seed in seeds]

    monkeypatch.setattr(peers.batched, "train_own_optimizers", fake)
    monkeypatch.setattr(peers, "LR_FREE_BATCH", 3)
    assert peers.submit_per_seed(None, "m", engine.Config(), range(7), 5)() == [f"run {s}" for s in range(7)]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for this module's tests, shut down afterwards."""
    import ray
    started = peers.start_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def test_learning_rate_free_runs_as_ray_tasks_equal_the_runs_in_this_process(local_ray):
    import ray
    config, params = engine.Config(), {"d_coef": 1.0}
    prodigy = methods.get("prodigy")
    remote = prodigy.run(params, config, [3, 4], 60)
    ray.shutdown()
    try:
        local = prodigy.run(params, config, [3, 4], 60)
    finally:
        peers.start_ray(num_cpus=2)
    for a, b in zip(remote, local):
        assert a.seed == b.seed and np.array_equal(a.series["loss"], b.series["loss"])
    with pytest.raises(ValueError, match="Prodigy.d_coef"):
        prodigy.run({"d_coef": 0.0}, config, [3], 60)


def test_pbt_on_local_ray_exploits_and_repeats_itself_from_its_seed(local_ray, tmp_path):
    """A population of 4 over 4 intervals of 10 steps: it completes, the worst member copies a better one
    at least once, the chosen member's lineage covers every step, and the same seed gives the same run."""
    import rlr_results as results_io
    pbt = peers.PBTConfig(population=4, perturbation_interval=10, n_heldout_examples=32, seed=1)
    config = engine.Config(seed=2)
    run, history = peers.run_pbt(config, 40, pbt)
    assert len(history) == 4 * 4 and sorted(history["member"].unique()) == [0, 1, 2, 3]
    assert history["exploited"].any() and not history.loc[history["step"] == 10, "exploited"].any()
    assert run.method == "PBT" and len(run.series["loss"]) == 40 and run.diverged_at is None
    final = history[history["step"] == 40]
    chosen = final.loc[final["validation_mse"].idxmin()]
    assert run.series["lr"][-1] == pytest.approx(chosen["lr"])
    assert study_heldout(run) == pytest.approx(chosen["validation_mse"], rel=1e-5)
    results_io.save_table_csv(history, tmp_path / "pbt_history.csv")
    assert pd.read_csv(tmp_path / "pbt_history.csv")["exploited"].sum() == history["exploited"].sum()
    again, history_again = peers.run_pbt(config, 40, pbt)
    pd.testing.assert_frame_equal(history, history_again)
    assert np.array_equal(run.series["loss"], again.series["loss"])


def study_heldout(run) -> float:
    import rlr_study
    return rlr_study.heldout_mse(run, "validation", 32)


@pytest.mark.parametrize("field, value, match", [
    ("population", 1, "pbt.population"), ("quantile_fraction", 0.7, "pbt.quantile_fraction"),
    ("lr_range", (1e-2, 1e-3), "pbt.lr_range must be increasing"), ("lr_range", 0.1, "pbt.lr_range must be a sequence"),
])
def test_a_bad_pbt_setting_is_refused_naming_it(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        peers.PBTConfig(**{field: value})
