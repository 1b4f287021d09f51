"""Notebook 06's comparisons (rlr_pbt): the equal-compute per-seed pick, the pre-registered family with its
compute on every row, the compute table and the generated reading."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import rlr_engine as engine
import rlr_pbt as pbt_study
import rlr_study as study

POPULATION = 4
BENCHMARK = {"best_schedule": "cosine annealing, tuned", "lr_free": "Prodigy, tuned", "best_agent": "scale-free DQN, tuned",
             "controllers": {"best": "DQN controller, tuned", "cost": [
                 {"method": "DQN controller, tuned", "training optimiser steps": 640_000, "tuning: optimiser steps": 5_120_000}]},
             "study": {"n_tuning_seeds": 2, "steps": 100, "tuning_budget": 4, "first_tuning_seed": 50, "n_eval_seeds": 6},
             "chosen": {"constant lr": {"lr": 1e-3}, "cosine annealing": {"lr": 1e-2}, "Prodigy": {"d_coef": 1.0}}}


def synthetic_table(steps: int = 100, n_seeds: int = 8) -> pd.DataFrame:
    """Rows as notebook 06 builds them: PBT and the two per-seed picks pay POPULATION runs per seed, notebook
    04's methods one. PBT's test MSE is lowest on every seed; the rest follow a fixed order."""
    labels = pbt_study.comparison_labels(POPULATION, BENCHMARK)
    factors = {labels["PBT"]: 1.0, labels["best schedule, best of P per seed"]: 1.5, labels["constant lr, best of P per seed"]: 2.0,
               labels["best schedule"]: 1.2, labels["tuned constant lr"]: 3.0, labels["best learning-rate-free optimiser"]: 1.1,
               labels["best learned controller"]: 4.0, labels["best tuned agent"]: 2.5}
    population_paid = {labels["PBT"], labels["best schedule, best of P per seed"], labels["constant lr, best of P per seed"]}
    noise = np.random.default_rng(0).uniform(0.97, 1.03, size=(len(factors), n_seeds))  # a real per-seed spread
    rows = []
    for index, (method, factor) in enumerate(factors.items()):
        for seed in range(n_seeds):
            runs = POPULATION if method in population_paid else 1
            rows.append({"budget": pbt_study.runs_per_seed_label(POPULATION) if runs > 1 else study.SAME_STEPS,
                         "method": method, "seed": seed, "optimiser_steps": runs * steps,
                         "test_mse": factor * 1e-4 * noise[index, seed], "diverged_at": None})
    return pd.DataFrame(rows)


def test_the_family_is_declared_once_and_maps_every_role_to_a_label():
    labels = pbt_study.comparison_labels(POPULATION, BENCHMARK)
    family = pbt_study.comparison_family(labels)
    assert len(family) == len(pbt_study.PBT_COMPARISONS) <= 8
    assert family[0] == (pbt_study.GROUP, study.pbt_label(POPULATION),
                         f"cosine annealing, best of {POPULATION} per seed (validation)", "test_mse")
    assert labels["best learned controller"] == "DQN controller, tuned" and labels["tuned constant lr"] == study.TUNED


def test_every_test_states_its_compute_and_no_unequal_one_says_same_optimiser_steps():
    tests = pbt_study.pbt_tests(synthetic_table(), pbt_study.comparison_labels(POPULATION, BENCHMARK))
    assert list(zip(tests["role"], tests["reference role"])) == list(pbt_study.PBT_COMPARISONS)
    equal = tests["compute ratio"] == 1
    assert equal.sum() == 2 and list(tests.loc[equal, "reference role"]) == [
        "best schedule, best of P per seed", "constant lr, best of P per seed"]
    assert tests.loc[equal, "budget"].str.startswith("the same optimiser steps per run").all()
    for _, row in tests[~equal].iterrows():
        assert "same optimiser steps" not in row["budget"]
        assert f"{row['method steps']:,}" in row["budget"] and f"{row['reference steps']:,}" in row["budget"]
        ratios = [float(value) for value in re.findall(r"([0-9.]+) times", row["budget"])]
        assert ratios and min(ratios) >= 1  # the fold convention: "4 times fewer", never "0.25 times"
    pbt_vs_constant = tests[tests["reference role"] == "tuned constant lr"].iloc[0]
    assert pbt_vs_constant["compute ratio"] == pytest.approx(1 / POPULATION)
    assert pbt_vs_constant["ratio"] == pytest.approx(3.0, rel=0.05) and pbt_vs_constant["wins"] == 8
    # the CI at the Holm level excludes 1 exactly when the test is significant, and wins carry a Wilson CI
    assert (tests["significant"] == ((tests["ci_low"] > 1) | (tests["ci_high"] < 1))).all()
    assert ((tests["win_ci_low"] <= tests["wins"] / tests["seeds"]) & (tests["wins"] / tests["seeds"] <= tests["win_ci_high"])).all()
    assert tests["primary"].all()


def test_a_missing_side_is_refused_before_any_test():
    table = synthetic_table()
    table = table[table["method"] != study.TUNED]
    with pytest.raises(ValueError, match="no runs of"):
        pbt_study.pbt_tests(table, pbt_study.comparison_labels(POPULATION, BENCHMARK))


def test_the_reading_has_every_comparison_and_no_ratio_below_one():
    table = synthetic_table()
    labels = pbt_study.comparison_labels(POPULATION, BENCHMARK)
    tests = pbt_study.pbt_tests(table, labels)
    summary = pd.DataFrame({"geometric mean": [1e-4], "gm CI low": [0.9e-4], "gm CI high": [1.1e-4], "seeds": [8],
                            "diverged": [0]}, index=[labels["PBT"]])
    reading = pbt_study.pbt_reading(tests, summary, labels["PBT"], POPULATION)
    for _, test in tests.iterrows():
        assert f"- {test['method']} against {test['against']} (" in reading
    assert re.search(r"tuned constant lr \(.*\): test MSE (2\.9|3\.0|3\.1)\d times lower", reading)  # PBT is better
    assert re.search(r"DQN controller, tuned against PBT.*: test MSE (3\.9|4\.0|4\.1)\d times higher", reading)
    assert min(float(value) for value in re.findall(r"([0-9.]+) times", reading)) >= 1


def test_the_cost_table_charges_tuning_to_tuned_families_and_training_to_controllers():
    table = synthetic_table()
    labels = pbt_study.comparison_labels(POPULATION, BENCHMARK)
    methods = [labels[role] for role in ("PBT", "tuned constant lr", "best learned controller")]
    cost = pbt_study.cost_table(table, methods, BENCHMARK)
    assert list(cost.index) == methods
    pool = study.StudyConfig(**BENCHMARK["study"]).pool_steps()
    assert cost.loc[labels["PBT"]].tolist()[:3] == [POPULATION * 100, 0, 0]
    assert cost.loc[study.TUNED, "tuning, once"] == pool == 4 * 2 * 100
    assert cost.loc["DQN controller, tuned", "training, once"] == 640_000
    assert cost.loc["DQN controller, tuned", "tuning, once"] == 5_120_000
    rows = table[table["method"] == study.TUNED]
    assert cost.loc[study.TUNED, "test MSE (geometric mean)"] == pytest.approx(np.exp(np.mean(np.log(rows["test_mse"]))))


def test_the_per_seed_pick_of_a_schedule_family_keeps_each_seeds_lowest_validation_mse():
    """Against brute force: every configuration run on its own, the lowest validation MSE picked by hand."""
    setup = study.StudyConfig(first_eval_seed=3, n_eval_seeds=2, steps=30, tuning_budget=4, n_heldout_examples=32)
    config = engine.Config()
    picked, chosen = pbt_study.picked_per_seed("cosine annealing", config, setup, 4)
    assert [run.seed for run in picked] == setup.eval_seeds and len(chosen) == 2
    pool = study.family_configurations("cosine annealing", 4, setup.search_seed)
    for run, label in zip(picked, chosen):
        candidates = [study.run_family("cosine annealing", params, config, [run.seed], 30)[0] for params in pool]
        scores = [study.heldout_mse(candidate, "validation", 32) for candidate in candidates]
        best = int(np.nanargmin(scores))
        assert study.heldout_mse(run, "validation", 32) == pytest.approx(scores[best], rel=1e-5)
        assert label == ", ".join(f"{key} {value:.3g}" for key, value in pool[best].items())
