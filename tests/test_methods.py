"""The registry of methods (rlr_methods): a family registered from this file alone runs through tuning and
evaluation; the one Sobol sampler; the entries' checks; no label dispatch left in the library."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import PolynomialLR

import rlr_engine as engine
import rlr_methods as methods
import rlr_study as study

ROOT = Path(__file__).resolve().parents[1]
SMALL = study.StudyConfig(first_eval_seed=3, n_eval_seeds=2, first_tuning_seed=40, n_tuning_seeds=2, steps=30,
                          tuning_budget=4, n_heldout_examples=32)


@pytest.fixture
def polynomial_decay():
    """torch's PolynomialLR as a schedule family, registered here only (and removed afterwards)."""
    method = methods.register(methods.schedule_method(
        "polynomial_decay", "polynomial decay", {"lr": methods.LR_RANGE, "power": (0.5, 3.0, "linear")},
        lambda optimizer, params, steps: PolynomialLR(optimizer, total_iters=steps, power=params["power"]),
        "`torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power={power:.2g})` on Adam at lr {lr:.2g}"))
    yield method
    methods.unregister("polynomial_decay")


@pytest.fixture
def adadelta():
    """torch's Adadelta (no learning rate to tune: lr=1 scales its own ratio of running averages) as a
    learning-rate-free family, registered here only."""
    method = methods.register(methods.lr_free_method(
        "adadelta", "Adadelta", {"rho": (0.8, 0.99, "linear")},
        lambda parameters, knobs, steps: torch.optim.Adadelta(parameters, lr=1.0, rho=knobs["rho"]),
        "`torch.optim.Adadelta(model.parameters(), lr=1.0, rho={rho:.3g})`",
        domains={"rho": (0.0, 1.0, True, True)}))
    yield method
    methods.unregister("adadelta")


def test_a_schedule_family_registered_in_a_test_runs_through_tuning_and_evaluation(polynomial_decay):
    config = engine.Config()
    chosen, table = study.tune_family("polynomial_decay", config, SMALL)
    assert len(table) == SMALL.tuning_budget and table["chosen"].sum() == 1 and set(chosen) == {"lr", "power"}
    assert (table["family"] == "polynomial_decay").all()
    runs = study.run_tuned({"polynomial_decay": chosen}, config, SMALL)
    assert list(runs) == ["polynomial decay, tuned"]
    tidy = study.tidy_table(runs, "same optimiser steps", SMALL)
    assert list(tidy["seed"]) == SMALL.eval_seeds and np.isfinite(tidy["test_mse"]).all()
    # the batched run is what rlr_engine's reference loop gives under the same torch scheduler
    run = runs["polynomial decay, tuned"][0]
    reference = engine.train_full_batch(config.with_seed(run.seed), chosen["lr"], SMALL.steps, make_scheduler=(
        lambda optimizer: PolynomialLR(optimizer, total_iters=SMALL.steps, power=chosen["power"])))
    np.testing.assert_allclose(run.series["lr"], reference.series["lr"], rtol=1e-12)
    np.testing.assert_allclose(run.series["loss"], reference.series["loss"], rtol=1e-4)
    assert polynomial_decay.usage_line(chosen).startswith("`torch.optim.lr_scheduler.PolynomialLR(optimizer")


def test_a_learning_rate_free_family_registered_in_a_test_runs_through_tuning_and_evaluation(adadelta):
    config = engine.Config()
    chosen, table = study.tune_family("adadelta", config, SMALL)
    assert set(chosen) == {"rho"} and 0.8 <= chosen["rho"] <= 0.99 and table["chosen"].sum() == 1
    runs = study.run_tuned({"adadelta": chosen}, config, SMALL)
    tidy = study.tidy_table(runs, "same optimiser steps", SMALL)
    assert list(tidy["method"].unique()) == ["Adadelta, tuned"] and np.isfinite(tidy["test_mse"]).all()
    first = runs["Adadelta, tuned"][0]
    assert first.method == "adadelta" and first.series["loss"][-1] < first.series["loss"][0]
    assert study.best_lr_free(table.assign(family="adadelta")) == "Adadelta, tuned"
    with pytest.raises(ValueError, match=r"Adadelta\.rho must be a finite number in \(0\.0, 1\.0\)"):
        adadelta.optimizer({"rho": 1.5}, 10)


def test_the_registry_refuses_what_would_make_dispatch_ambiguous():
    constant = methods.get("constant")
    with pytest.raises(ValueError, match="registered already"):
        methods.register(constant)
    with pytest.raises(ValueError, match="label 'constant lr' is taken"):
        methods.register(methods.schedule_method("constant_again", "constant lr", {"lr": methods.LR_RANGE}, None, "x"))
    with pytest.raises(ValueError, match="no method with key 'cosine annealing'; registered"):
        methods.get("cosine annealing")  # a label is no key
    with pytest.raises(ValueError, match="kind must be one of"):
        methods.Method("x", "x", "optimiser", {"lr": methods.LR_RANGE}, lambda *a: [], "x")
    with pytest.raises(ValueError, match="key must be lower-case"):
        methods.Method("Cosine Annealing", "x", "schedule", {"lr": methods.LR_RANGE}, lambda *a: [], "x")
    with pytest.raises(ValueError, match=r"x.ranges\['lr'\] is on a log scale: low must be > 0"):
        methods.Method("x", "x", "schedule", {"lr": (0.0, 1.0, "log")}, lambda *a: [], "x")
    with pytest.raises(ValueError, match=r"scale in \('linear', 'log', 'log-int', 'binary'\)"):
        methods.Method("x", "x", "schedule", {"lr": (1e-3, 1.0, "exp")}, lambda *a: [], "x")


def test_the_sobol_sampler_maps_each_scale_and_stratifies_a_power_of_two():
    ranges = {"lr": (1e-5, 0.3, "log"), "fraction": (0.05, 0.5, "linear"), "patience": (10.0, 2000.0, "log-int")}
    configurations = methods.sobol_configurations(ranges, 8, seed=0)
    assert configurations == methods.sobol_configurations(ranges, 8, seed=0)
    assert configurations != methods.sobol_configurations(ranges, 8, seed=1)
    for name, (low, high, scale) in ranges.items():
        values = np.array([configuration[name] for configuration in configurations])
        assert low <= values.min() and values.max() <= high
        position = (np.log(values) - math.log(low)) / (math.log(high) - math.log(low)) if scale != "linear" else \
            (values - low) / (high - low)
        if scale == "log-int":
            assert (values == np.round(values)).all()
        else:  # a scrambled Sobol set of 8 puts one point in each eighth of the (log) range
            assert sorted(np.floor(position * 8).astype(int)) == list(range(8)), name
    assert methods.from_unit(0.5, 1e-4, 1e-2, "log") == pytest.approx(1e-3)
    assert methods.from_unit(0.25, 0.0, 2.0, "linear") == 0.5
    assert methods.from_unit(0.5, 10.0, 1000.0, "log-int") == 100.0


def test_every_registered_family_has_a_unique_label_and_a_usage_line_for_its_configurations():
    labels = [methods.get(key).label for key in methods.keys()]
    assert len(set(labels)) == len(labels)
    for key in methods.keys():
        method = methods.get(key)
        for params in method.configurations(2, seed=0):
            line = method.usage_line(params)
            assert line.startswith("`") and "{" not in line.replace("{}", ""), (key, line)


def test_no_library_module_dispatches_on_a_display_label():
    """Stable keys dispatch: no `== "<label>"` or `in ("<label>", ...)` on a registered label in the library."""
    labels = {methods.get(key).label for key in methods.keys()} | {methods.get(key).tuned_label for key in methods.keys()}
    pattern = re.compile(r"""(==|!=)\s*["']([^"']+)["']""")
    offenders = []
    for path in sorted(ROOT.glob("rlr_*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            offenders += [f"{path.name}:{number}: {line.strip()}" for _, text in pattern.findall(line) if text in labels]
    assert not offenders, offenders


@pytest.mark.parametrize("key", ["constant", "cosine", "plateau", "adam_hd"])
def test_a_schedule_familys_pool_in_one_batch_is_each_configuration_run_on_its_own(key):
    """run_pool runs every configuration x seed as one batch (per-run lr tables, plateau options and
    Adam-HD betas): the same runs as one call per configuration, up to float rounding. 300 steps, so that
    plateau's patience (10 to 2 000) cuts some runs' lr and a mis-assigned option would show."""
    method = methods.get(key)
    pool = method.configurations(3, 0)
    if key == "plateau":  # short patience: cuts within 300 steps, each by its own factor
        pool = [{**params, "patience": 3.0 + index} for index, params in enumerate(pool)]
    pooled = method.run_pool(pool, engine.Config(), [3, 4], 300)
    if key == "plateau":
        assert any(run.series["lr"][-1] < run.series["lr"][0] for runs in pooled for run in runs)
    for params, runs in zip(pool, pooled):
        alone = method.run(params, engine.Config(), [3, 4], 300)
        assert [run.seed for run in runs] == [3, 4]
        for batched, single in zip(runs, alone):
            # float32 rounding differs with the batch's size and the runs are chaotic: lr and loss over the
            # first 50 steps; a plateau run's first cut is by its own configuration's factor
            np.testing.assert_allclose(batched.series["lr"][:50], single.series["lr"][:50], rtol=1e-4)
            np.testing.assert_allclose(batched.series["loss"][:50], single.series["loss"][:50], rtol=1e-4)
            cuts = np.flatnonzero(np.diff(batched.series["lr"]) < 0)
            if key == "plateau" and len(cuts):
                lr = batched.series["lr"]
                assert lr[cuts[0] + 1] / lr[cuts[0]] == pytest.approx(params["factor"], rel=1e-9)


def test_a_binary_knob_is_yes_or_no_and_says_yes_in_about_half_of_a_pool():
    pool = methods.sobol_configurations({"dqn.lr": (1e-5, 1e-2, "log"), "dqn.undiscounted": (0, 1, "binary")}, 32, 3)
    values = [params["dqn.undiscounted"] for params in pool]
    assert set(values) == {0.0, 1.0} and sum(values) == 16  # Sobol's balance at a power of 2
    assert methods.from_unit(0.5, 0, 1, "binary") == 1.0 and methods.from_unit(0.4999, 0, 1, "binary") == 0.0
    with pytest.raises(ValueError, match="binary"):
        methods.check_ranges("x", {"flag": (0, 2, "binary")})


def test_dqn_overrides_turn_the_horizon_into_gamma_and_undiscounted_into_gamma_1():
    base = {"dqn.lr": 1e-4, "dqn.horizon": 10.0}
    assert methods.dqn_overrides({**base, "dqn.undiscounted": 0.0}) == {"dqn": {"lr": 1e-4, "gamma": 0.9}}
    assert methods.dqn_overrides({**base, "dqn.undiscounted": 1.0}) == {"dqn": {"lr": 1e-4, "gamma": 1.0}}
