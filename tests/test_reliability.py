"""Reliability and reproducibility: determinism, divergence, validation, atomic results, checkpoints.

Determinism: the same Config (seed included) gives bit-identical histories on CPU, in fresh processes,
on the same machine with the same package versions. What breaks it:
- the thread count: entry points (notebooks, scripts) set it with torch.set_num_threads (the library
  never does), and a different count changes the order of floating-point sums inside matmul (even the
  default 256 x 20 task differs in the last bits between 1 and 2 threads). Every result records it
  (versions["torch_threads"]).
- another CPU or library build: oneDNN/MKL pick kernels by instruction set (AVX2, AVX-512, ARM), and
  another torch or numpy version may change kernels; bit-identity holds on one machine and one
  environment (the versions are in every result's "versions").
- a GPU: cuBLAS and fused kernels differ from the CPU ones and some use atomics, so CUDA runs are not
  bit-identical to CPU runs, and not guaranteed bit-identical to each other without
  torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8 (not set by rlr_core).
- float32 vs float64 (Config.dtype) gives different numbers by design.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rlr_engine as engine
import rlr_results as results_io
from rlr_core import (
    DQNAgent,
    DQNConfig,
    QNetwork,
    ReplayMemory,
    RLRScheduler,
    ScheduleConfig,
    TaskConfig,
    make_polynomial_dataset,
    original_lr_grid,
    soft_update,
)
from rlr_engine import (
    BaselineConfig,
    Config,
    save_checkpoint,
    train_baseline,
    train_full_batch,
    train_rl_scheduled,
)
from rlr_results import (
    RunResult,
    atomic_write,
    atomic_write_text,
    load_result,
    save_arrays_npz,
    save_result,
    save_table_csv,
)
from rlr_report import divergence_report

REPO = Path(__file__).resolve().parents[1]
PROPERTY = settings(max_examples=50, deadline=None)


def run_python(code: str, *args: str) -> subprocess.Popen:
    """Start a fresh interpreter on `code` (rlr_core importable from the checkout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def strict_json(path: Path) -> dict:
    """json.loads that fails on NaN/Infinity, which plain json.loads accepts."""
    def refuse(constant: str):
        raise ValueError(f"non-finite constant {constant} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def same_series(a: RunResult, b: RunResult) -> None:
    assert a.series.keys() == b.series.keys()
    for name in a.series:
        assert a.series[name].dtype == b.series[name].dtype, name
        assert np.array_equal(a.series[name], b.series[name]), name


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------------------------
# Determinism: two fresh processes, the same config, byte-identical arrays.
# ---------------------------------------------------------------------------------------------------

DETERMINISM_SCRIPT = """
import dataclasses, sys
import torch
import rlr_core as rc
import rlr_engine as engine
import rlr_results as results_io
torch.set_num_threads(1)
arrays = {}
for seed in (3, 4):
    config = engine.Config(seed=seed, baseline=engine.BaselineConfig(epochs=4), schedule=rc.ScheduleConfig(steps=100))
    as_coded = dataclasses.replace(config, dqn=rc.DQNConfig(variant="as_coded"))
    for result in (engine.train_rl_scheduled(config), engine.train_rl_scheduled(as_coded),
                   engine.train_baseline(config), engine.train_full_batch(config, 1e-3, 50)):
        for name, values in result.series.items():
            arrays[f"seed{seed}__{result.method}__{name}"] = values
results_io.save_arrays_npz(sys.argv[1], **arrays)
"""


def test_same_config_gives_bit_identical_histories_in_fresh_processes(tmp_path):
    """See the module docstring for what breaks this (thread count, CPU/library build, GPU, dtype)."""
    paths = [tmp_path / "first.npz", tmp_path / "second.npz"]
    processes = [run_python(DETERMINISM_SCRIPT, str(path)) for path in paths]  # concurrently
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
    with np.load(paths[0]) as first, np.load(paths[1]) as second:
        assert sorted(first.files) == sorted(second.files)
        assert len(first.files) >= 4 * 2 * 3
        for key in first.files:
            assert first[key].dtype == second[key].dtype and first[key].shape == second[key].shape, key
            assert first[key].tobytes() == second[key].tobytes(), key
        # The comparison can fail: another seed gives other bytes.
        for method in ("rl_described", "rl_as_coded", "baseline_minibatch", "constant_full_batch"):
            assert first[f"seed3__{method}__loss"].tobytes() != first[f"seed4__{method}__loss"].tobytes()


# ---------------------------------------------------------------------------------------------------
# Divergence: the run stops at the first non-finite value; nothing non-finite is stored or written.
# ---------------------------------------------------------------------------------------------------


def test_full_batch_run_stops_at_the_step_a_huge_lr_makes_the_loss_non_finite(tmp_path):
    def jump_to_huge_lr(optimizer):  # lr 1e-3 for 25 steps, then 1e8
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < 25 else 1e11)

    diverged = train_full_batch(Config(), 1e-3, 60, make_scheduler=jump_to_huge_lr)
    steady = train_full_batch(Config(), 1e-3, 25)
    assert diverged.diverged_at == 25
    assert np.array_equal(diverged.series["loss"], steady.series["loss"])
    assert np.array_equal(diverged.series["lr"], steady.series["lr"])
    save_result(diverged, tmp_path / "diverged.json")
    data = strict_json(tmp_path / "diverged.json")
    assert data["summary"]["diverged_at"] == 25 and len(data["series"]["loss"]) == 25


def test_baseline_with_huge_lr_stops_at_epoch_0_and_saves_finite_json(tmp_path):
    result = train_baseline(Config(baseline=BaselineConfig(lr=1e8, epochs=20)))
    assert result.diverged_at == 0 and len(result.series["loss"]) == 0
    save_result(result, tmp_path / "baseline.json")
    data = strict_json(tmp_path / "baseline.json")
    assert data["summary"]["diverged_at"] == 0 and data["summary"]["final_loss"] is None


@pytest.mark.parametrize("train", [
    train_baseline, train_rl_scheduled, lambda config: train_full_batch(config, 1e-3, 10)])
def test_loss_already_non_finite_before_the_first_step_gives_diverged_at_0(train):
    # Coefficients of 1e30 square to 1e60: the float32 MSE is inf before any optimiser step.
    config = Config(task=TaskConfig(coeff_scale=(1e30,) * 5), baseline=BaselineConfig(epochs=3),
                    schedule=ScheduleConfig(steps=10))
    result = train(config)
    assert result.diverged_at == 0
    assert all(len(values) == 0 for values in result.series.values())


def test_agent_run_stops_when_it_moves_to_a_diverging_lr_and_stores_nothing_non_finite(monkeypatch, tmp_path):
    pushed = []
    original_push = ReplayMemory.push

    def recording_push(self, state, action, next_state, reward, terminated=False):
        pushed.append((state.clone(), next_state.clone(), reward))
        original_push(self, state, action, next_state, reward, terminated)

    monkeypatch.setattr(ReplayMemory, "push", recording_push)
    # The original grid plus lr = 1e8 on top: the first step at 1e8 makes the loss inf.
    extended = Config(schedule=ScheduleConfig(lr_grid=original_lr_grid() + (1e8,), steps=400))
    result = train_rl_scheduled(extended)
    assert result.diverged_at is not None and result.diverged_at > extended.dqn.learning_starts
    assert all(len(values) == result.diverged_at for values in result.series.values())
    assert all(np.isfinite(values).all() for values in result.series.values())
    assert result.series["lr"].max() <= 1e-2
    assert len(pushed) == result.diverged_at  # one transition per completed step, all finite
    assert all(torch.isfinite(s).all() and torch.isfinite(s2).all() and math.isfinite(r) for s, s2, r in pushed)

    # Independent check: on the original grid (same seed) the run is the same until the agent first
    # tries to go above index 11, where the grid clips it; on the extended grid that step is lr = 1e8.
    original = train_rl_scheduled(dataclasses.replace(extended, schedule=ScheduleConfig(steps=400)))
    index, action = original.series["lr_index"], original.series["action"]
    clipped_at_top = (index[:-1] == 11) & (action[1:] == 2)  # at index 11 before, then action +1
    assert clipped_at_top.any() and result.diverged_at == 1 + int(np.argmax(clipped_at_top))
    for name, values in result.series.items():
        assert np.array_equal(values, original.series[name][:result.diverged_at]), name

    save_result(result, tmp_path / "agent.json")
    assert strict_json(tmp_path / "agent.json")["summary"]["diverged_at"] == result.diverged_at


def test_agent_run_stops_when_the_q_values_become_non_finite():
    # A Q-network lr of 1e30 blows its weights up at the first DQN update (after learning_starts
    # transitions): the Q-values of the next step are inf/NaN, while the model's loss is still finite.
    config = Config(dqn=DQNConfig(lr=1e30), schedule=ScheduleConfig(steps=200))
    result = train_rl_scheduled(config)
    assert result.diverged_at == config.dqn.learning_starts
    assert all(np.isfinite(values).all() for values in result.series.values())
    assert len(result.series["q_values"]) == config.dqn.learning_starts


def test_scheduler_refuses_a_non_finite_loss_and_stores_nothing():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = RLRScheduler(optimizer, DQNAgent(2, 3, DQNConfig(), seed=0))
    scheduler.step(1.0)
    lr_before = scheduler.get_last_lr()
    for bad in (math.nan, math.inf):
        with pytest.raises(FloatingPointError, match="non-finite loss"):
            scheduler.step(bad)
    assert len(scheduler.agent.replay) == 0 and scheduler.get_last_lr() == lr_before
    scheduler.step(0.5)
    assert len(scheduler.agent.replay) == 1


def test_replay_refuses_non_finite_transitions_and_keeps_its_contents():
    memory = ReplayMemory(4, 2)
    memory.push(torch.tensor([1.0, 0.0]), 1, torch.tensor([0.5, -0.5]), 0.5)
    for state, next_state, reward in [([math.nan, 0.0], [1.0, 1.0], 0.0), ([1.0, 0.0], [math.inf, 0.0], 0.0),
                                      ([1.0, 0.0], [1.0, 0.0], math.inf)]:
        with pytest.raises(ValueError, match="non-finite"):
            memory.push(torch.tensor(state), 0, torch.tensor(next_state), reward)
    assert len(memory) == 1 and torch.isfinite(memory.states).all() and torch.isfinite(memory.rewards).all()


def test_save_result_refuses_non_finite_series_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    good = RunResult("constant_full_batch", Config().to_dict(), {"loss": np.array([1.0, 0.5])}, 1.0)
    save_result(good, path)
    before = path.read_bytes()
    bad = RunResult("constant_full_batch", Config().to_dict(), {"loss": np.array([1.0, math.nan])}, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        save_result(bad, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["result.json"]


def test_divergence_report_lists_method_seed_and_diverged_at():
    results = [RunResult("rl_described", Config(seed=2).to_dict(), {"loss": np.ones(7)}, 1.0, 7),
               RunResult("baseline_minibatch", Config(seed=5).to_dict(), {"loss": np.ones(30)}, 1.0, None)]
    table = divergence_report(results)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["method", "seed", "diverged_at", "n_logged"]
    assert table["method"].tolist() == ["rl_described", "baseline_minibatch"]
    assert table["seed"].tolist() == [2, 5]
    assert table["diverged_at"].iloc[0] == 7 and pd.isna(table["diverged_at"].iloc[1])
    assert table["n_logged"].tolist() == [7, 30]
    assert len(divergence_report([])) == 0


# ---------------------------------------------------------------------------------------------------
# Validation: every bad field is refused before work starts, naming the field and the allowed range.
# ---------------------------------------------------------------------------------------------------

NAN, INF = math.nan, math.inf
POSITIVE = r" must be a finite number in \(0\.0, inf\)"
UNIT_INTERVAL = r" must be a finite number in \[0\.0, 1\.0\]"
BAD_INPUTS = [  # (case, what to call, error, message start: the field and what is allowed)
    ("seed negative", lambda: Config(seed=-1), ValueError, r"seed must be >= 0"),
    ("seed float", lambda: Config(seed=1.5), TypeError, r"seed must be an int"),
    ("seed bool", lambda: Config(seed=True), TypeError, r"seed must be an int"),
    ("device unknown", lambda: Config(device="tpu"), ValueError, r"device must be 'cpu' or 'cuda\[:N\]'"),
    ("device not cpu or cuda", lambda: Config(device="meta"), ValueError, r"device must be 'cpu' or 'cuda\[:N\]'"),
    ("device not a string", lambda: Config(device=0), TypeError, r"device must be a string"),
    ("dtype unknown", lambda: Config(dtype="float16"), ValueError, r"dtype must be one of \('float32', 'float64'\)"),
    ("dtype not a string", lambda: Config(dtype=torch.float32), ValueError, r"dtype must be one of"),
    ("unknown field", lambda: Config.from_dict({**Config().to_dict(), "num_thread": 1}), ValueError,
     r"unknown config field\(s\) \['num_thread'\]"),
    ("unknown nested field", lambda: Config.from_dict({**Config().to_dict(), "dqn": {"gama": 0.9}}), ValueError,
     r"unknown config field\(s\) \['dqn.gama'\]"),
    ("as-coded batch below 4", lambda: DQNConfig(variant="as_coded", batch_size=3), ValueError,
     r"dqn.batch_size must be >= 4 for variant 'as_coded', got 3"),
    ("task not a TaskConfig", lambda: Config(task={"n_examples": 3}), TypeError, r"task must be a TaskConfig"),
    ("n_examples zero", lambda: TaskConfig(n_examples=0), ValueError, r"task\.n_examples must be >= 1"),
    ("n_points one", lambda: TaskConfig(n_points=1), ValueError, r"task\.n_points must be >= 2"),
    ("x_min NaN", lambda: TaskConfig(x_min=NAN), ValueError, r"task\.x_min must be a finite number"),
    ("x_max inf", lambda: TaskConfig(x_max=INF), ValueError, r"task\.x_max must be a finite number"),
    ("x_min above x_max", lambda: TaskConfig(x_min=2.0, x_max=-2.0), ValueError, r"task\.x_min must be < task\.x_max"),
    ("coeff_scale empty", lambda: TaskConfig(coeff_scale=()), ValueError, r"task\.coeff_scale must not be empty"),
    ("coeff_scale negative", lambda: TaskConfig(coeff_scale=(1.0, -0.5)), ValueError,
     r"task\.coeff_scale\[1\]" + POSITIVE),
    ("coeff_scale a number", lambda: TaskConfig(coeff_scale=1.0), TypeError, r"task\.coeff_scale must be a sequence"),
    ("hidden width zero", lambda: TaskConfig(hidden_sizes=(32, 0)), ValueError, r"task\.hidden_sizes\[1\] must be >= 1"),
    ("hidden_sizes empty", lambda: TaskConfig(hidden_sizes=()), ValueError, r"task\.hidden_sizes must name at least one"),
    ("baseline lr zero", lambda: BaselineConfig(lr=0.0), ValueError, r"baseline\.lr" + POSITIVE),
    ("baseline lr NaN", lambda: BaselineConfig(lr=NAN), ValueError, r"baseline\.lr" + POSITIVE),
    ("baseline lr inf", lambda: BaselineConfig(lr=INF), ValueError, r"baseline\.lr" + POSITIVE),
    ("baseline lr string", lambda: BaselineConfig(lr="1e-3"), TypeError, r"baseline\.lr must be a number"),
    ("epochs zero", lambda: BaselineConfig(epochs=0), ValueError, r"baseline\.epochs must be >= 1"),
    ("baseline batch negative", lambda: BaselineConfig(batch_size=-32), ValueError, r"baseline\.batch_size must be >= 1"),
    ("lr_grid empty", lambda: ScheduleConfig(lr_grid=()), ValueError, r"schedule\.lr_grid must not be empty"),
    ("lr_grid unsorted", lambda: ScheduleConfig(lr_grid=(1e-3, 1e-4, 1e-2), start_index=0), ValueError,
     r"schedule\.lr_grid must be strictly increasing"),
    ("lr_grid repeated value", lambda: ScheduleConfig(lr_grid=(1e-3, 1e-3), start_index=0), ValueError,
     r"schedule\.lr_grid must be strictly increasing"),
    ("lr_grid negative", lambda: ScheduleConfig(lr_grid=(-1e-3, 1e-3), start_index=0), ValueError,
     r"schedule\.lr_grid\[0\]" + POSITIVE),
    ("lr_grid inf", lambda: ScheduleConfig(lr_grid=(1e-3, INF), start_index=0), ValueError,
     r"schedule\.lr_grid\[1\]" + POSITIVE),
    ("lr_grid a number", lambda: ScheduleConfig(lr_grid=1e-3), TypeError, r"schedule\.lr_grid must be a sequence"),
    ("start_index past the grid", lambda: ScheduleConfig(start_index=12), ValueError,
     r"schedule\.start_index must be in \[0, 11\]"),
    ("start_index negative", lambda: ScheduleConfig(start_index=-1), ValueError, r"schedule\.start_index must be >= 0"),
    ("index_shifts empty", lambda: ScheduleConfig(index_shifts=()), ValueError,
     r"schedule\.index_shifts must name at least one action"),
    ("index_shifts float", lambda: ScheduleConfig(index_shifts=(-1, 0.5, 1)), TypeError,
     r"schedule\.index_shifts\[1\] must be an int"),
    ("steps zero", lambda: ScheduleConfig(steps=0), ValueError, r"schedule\.steps must be >= 1"),
    ("features unknown", lambda: ScheduleConfig(features="sqrt"), ValueError, r"schedule\.features must be one of"),
    ("lr_factors zero", lambda: ScheduleConfig(lr_factors=(0.5, 0.0)), ValueError,
     r"schedule\.lr_factors\[1\]" + POSITIVE),
    ("lr_factors a number", lambda: ScheduleConfig(lr_factors=2.0), TypeError, r"schedule\.lr_factors must be a sequence"),
    ("dqn hidden_size zero", lambda: DQNConfig(hidden_size=0), ValueError, r"dqn\.hidden_size must be >= 1"),
    ("gamma one without a terminal end", lambda: engine.Config(dqn=DQNConfig(gamma=1.0)), ValueError,
     r"dqn\.gamma = 1 needs a run whose end is terminal"),
    ("gamma above one", lambda: DQNConfig(gamma=1.5), ValueError, r"dqn\.gamma must be a finite number in \[0\.0, 1\.0\]"),
    ("gamma negative", lambda: DQNConfig(gamma=-0.1), ValueError, r"dqn\.gamma must be a finite number in \[0\.0, 1\.0\]"),
    ("dqn lr negative", lambda: DQNConfig(lr=-1e-3), ValueError, r"dqn\.lr" + POSITIVE),
    ("tau zero", lambda: DQNConfig(tau=0.0), ValueError, r"dqn\.tau must be a finite number in \(0\.0, 1\.0\]"),
    ("tau above one", lambda: DQNConfig(tau=1.5), ValueError, r"dqn\.tau must be a finite number in \(0\.0, 1\.0\]"),
    ("dqn batch_size zero", lambda: DQNConfig(batch_size=0), ValueError, r"dqn\.batch_size must be >= 1"),
    ("capacity below batch size", lambda: DQNConfig(replay_capacity=32), ValueError,
     r"dqn\.replay_capacity \(32\) must be >= dqn\.batch_size \(64\)"),
    ("learning_starts zero", lambda: DQNConfig(learning_starts=0), ValueError, r"dqn\.learning_starts must be >= 1"),
    ("learning_starts above capacity", lambda: DQNConfig(learning_starts=2000), ValueError,
     r"dqn\.learning_starts must be in \[1, dqn\.replay_capacity = 1000\]"),
    ("epsilon_start above one", lambda: DQNConfig(epsilon_start=1.5), ValueError,
     r"dqn\.epsilon_start" + UNIT_INTERVAL),
    ("epsilon_end negative", lambda: DQNConfig(epsilon_end=-0.1), ValueError,
     r"dqn\.epsilon_end" + UNIT_INTERVAL),
    ("epsilon_start NaN", lambda: DQNConfig(epsilon_start=NAN), ValueError,
     r"dqn\.epsilon_start" + UNIT_INTERVAL),
    ("epsilon_decay zero", lambda: DQNConfig(epsilon_decay=0.0), ValueError,
     r"dqn\.epsilon_decay" + POSITIVE),
    ("variant unknown", lambda: DQNConfig(variant="double"), ValueError,
     r"dqn\.variant must be one of \('described', 'as_coded'\)"),
    # Function arguments.
    ("train_full_batch lr zero", lambda: train_full_batch(Config(), 0.0, 10), ValueError,
     r"lr" + POSITIVE),
    ("train_full_batch steps zero", lambda: train_full_batch(Config(), 1e-3, 0), ValueError, r"steps must be >= 1"),
    ("train_full_batch method empty", lambda: train_full_batch(Config(), 1e-3, 10, method=""), ValueError,
     r"method must be a non-empty string"),
    ("train_full_batch scheduler not callable", lambda: train_full_batch(Config(), 1e-3, 10, make_scheduler="cosine"),
     TypeError, r"make_scheduler must be callable"),
    ("train_baseline config a dict", lambda: train_baseline({"seed": 0}), TypeError, r"config must be a Config"),
    ("checkpoint_every without a path", lambda: train_rl_scheduled(Config(), checkpoint_every=10), ValueError,
     r"checkpoint_every must be >= 1 \(steps between saves\) when checkpoint_path is given, and 0 without"),
    ("checkpoint_every negative", lambda: train_baseline(Config(), checkpoint_path="x.pt", checkpoint_every=-1),
     ValueError, r"checkpoint_every must be >= 0"),
    ("checkpoint_path a number", lambda: train_baseline(Config(), checkpoint_path=3, checkpoint_every=1),
     TypeError, r"checkpoint_path must be a str, a Path or None"),
    ("dataset n_examples zero", lambda: make_polynomial_dataset(TaskConfig(), 0, n_examples=0), ValueError,
     r"n_examples must be >= 1"),
    ("dataset seed negative", lambda: make_polynomial_dataset(TaskConfig(), -1), ValueError, r"seed must be >= 0"),
    ("dataset integer dtype", lambda: make_polynomial_dataset(TaskConfig(), 0, dtype=torch.int64), TypeError,
     r"dtype must be a floating torch\.dtype"),
    ("replay capacity zero", lambda: ReplayMemory(0, 2), ValueError, r"capacity must be >= 1"),
    ("replay state_dim zero", lambda: ReplayMemory(10, 0), ValueError, r"state_dim must be >= 1"),
    ("replay sample batch zero", lambda: ReplayMemory(10, 2).sample(0, torch.Generator()), ValueError,
     r"batch_size must be >= 1"),
    ("agent n_actions zero", lambda: DQNAgent(2, 0), ValueError, r"n_actions must be >= 1"),
    ("agent state_dim string", lambda: DQNAgent("2", 3), TypeError, r"state_dim must be an int"),
    ("agent config a dict", lambda: DQNAgent(2, 3, {"lr": 1e-3}), TypeError, r"config must be a DQNConfig"),
    ("agent seed negative", lambda: DQNAgent(2, 3, seed=-5), ValueError, r"seed must be >= 0"),
]


@pytest.mark.parametrize("build, error, message", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_field_and_range(build, error, message):
    with pytest.raises(error, match="^" + message):
        build()


CONFIG_PARTS = {"": Config, "task.": TaskConfig, "baseline.": BaselineConfig, "schedule.": ScheduleConfig,
                "dqn.": DQNConfig}
EVERY_FIELD = [(prefix, part, field.name, bad) for prefix, part in CONFIG_PARTS.items()
               for field in dataclasses.fields(part)
               for bad in (["object", "NaN"] if isinstance(getattr(part(), field.name), (int, float)) else ["object"])]


@pytest.mark.parametrize("prefix, part, name, bad", EVERY_FIELD,
                         ids=[f"{prefix}{name}={bad}" for prefix, _, name, bad in EVERY_FIELD])
def test_every_config_field_refuses_a_wrong_type_or_nan_naming_the_field(prefix, part, name, bad):
    # Generic over dataclasses.fields, so a field added later is covered without a new table row.
    value = object() if bad == "object" else math.nan
    with pytest.raises((TypeError, ValueError), match=rf"^{re.escape(prefix + name)}\b"):
        part(**{name: value})


def test_a_config_changed_after_construction_is_checked_before_the_run_starts(monkeypatch):
    config = Config(schedule=ScheduleConfig(steps=10))
    config.dqn.tau = 5.0  # dataclasses do not re-validate on assignment
    monkeypatch.setattr(engine, "make_polynomial_dataset", lambda *a, **k: pytest.fail("work started"))
    for train in (train_rl_scheduled, train_baseline, lambda c: train_full_batch(c, 1e-3, 10)):
        with pytest.raises(ValueError, match=r"^dqn\.tau must be a finite number in \(0\.0, 1\.0\]"):
            train(config)


def test_valid_edge_values_are_accepted():
    # The ends of each allowed range, so that the checks above are not simply too strict.
    DQNConfig(gamma=0.0, tau=1.0, epsilon_start=1.0, epsilon_end=0.0, replay_capacity=64, learning_starts=64)
    ScheduleConfig(lr_grid=(0.5,), start_index=0, index_shifts=(-1, 1), steps=1)
    TaskConfig(n_examples=1, n_points=2, coeff_scale=[1.0], hidden_sizes=[1])
    Config(seed=0, dtype="float64")


# ---------------------------------------------------------------------------------------------------
# Results on disk: atomic writes; every JSON carries config, seed, versions and the git commit.
# ---------------------------------------------------------------------------------------------------

WRITERS = {
    "json": lambda path, version: save_result(
        RunResult("constant_full_batch", Config(seed=version).to_dict(), {"loss": np.arange(3.0) + version}, 1.0),
        path),
    "csv": lambda path, version: save_table_csv(pd.DataFrame({"seed": [version], "loss": [0.5]}), path),
    "npz": lambda path, version: save_arrays_npz(path, loss=np.arange(4.0) + version),
    "checkpoint": lambda path, version: save_checkpoint(
        path, Config(seed=version), "m", 2, {"loss": np.arange(3.0)}, 1.0, model=torch.nn.Linear(2, 1)),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_writer_that_fails_at_the_rename_leaves_the_old_file_and_no_temp_file(kind, tmp_path, monkeypatch):
    path = tmp_path / f"out.{kind}"
    WRITERS[kind](path, 1)
    before = path.read_bytes()

    def broken_replace(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr(results_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        WRITERS[kind](path, 2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_writer_that_fails_half_way_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = atomic_write_text(tmp_path / "notes.txt", "old and complete")

    def write_half_then_fail(file):
        file.write(b"new but only ha")
        raise KeyboardInterrupt  # an interrupt, not just an error: cleanup must still run

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write_half_then_fail)
    assert path.read_text() == "old and complete"
    assert os.listdir(tmp_path) == ["notes.txt"]


KILLED_WRITER_SCRIPT = """
import os, signal, sys
import numpy as np
import rlr_engine as engine
import rlr_results as results_io
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die after writing, before the rename
result = results_io.RunResult("constant_full_batch", engine.Config(seed=2).to_dict(), {"loss": np.ones(100_000)}, 1.0)
results_io.save_result(result, sys.argv[1])
"""


def test_writer_killed_mid_write_leaves_the_old_result_readable(tmp_path):
    path = tmp_path / "run.json"
    save_result(RunResult("constant_full_batch", Config(seed=1).to_dict(), {"loss": np.array([0.25])}, 1.0), path)
    before = path.read_bytes()
    process = run_python(KILLED_WRITER_SCRIPT, str(path))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    assert path.read_bytes() == before
    assert load_result(path).seed == 1
    # SIGKILL leaves no chance to clean up: at most one hidden temp file, which no '*.json' matches.
    leftovers = [name for name in os.listdir(tmp_path) if name != "run.json"]
    assert len(leftovers) <= 1
    assert all(name.startswith(".run.json.") and name.endswith(".tmp") for name in leftovers)
    assert [p.name for p in tmp_path.glob("*.json")] == ["run.json"]


def test_result_json_carries_config_seed_versions_and_git_commit(tmp_path):
    config = Config(seed=7, schedule=ScheduleConfig(steps=20))
    result = train_rl_scheduled(config)
    data = strict_json(save_result(result, tmp_path / "run.json"))
    assert data["seed"] == 7 and data["method"] == "rl_described"
    assert Config.from_dict(data["config"]) == config
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["numpy"] == np.__version__
    assert data["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if git.returncode == 0:
        assert data["versions"]["git_commit"] == git.stdout.strip()
    else:  # no commit yet (or no git): the field is left out rather than invented
        assert "git_commit" not in data["versions"]
    assert data["series"]["loss"] == result.series["loss"].tolist()


def test_save_table_csv_and_save_arrays_npz_round_trip(tmp_path):
    table = pd.DataFrame({"method": ["a", "b"], "seed": [0, 1], "final_loss": [1.5e-7, 2.25e-3]})
    save_table_csv(table, tmp_path / "tables" / "summary.csv")  # creates the folder
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tables" / "summary.csv"), table)

    arrays = {"loss": np.linspace(0, 1, 7), "action": np.arange(5, dtype=np.int64),
              "explored": np.array([True, False])}
    save_arrays_npz(tmp_path / "series.npz", **arrays)
    save_arrays_npz(tmp_path / "series_no_suffix", **arrays)  # written exactly where asked
    assert sorted(os.listdir(tmp_path)) == ["series.npz", "series_no_suffix", "tables"]
    for name in ("series.npz", "series_no_suffix"):
        with np.load(tmp_path / name) as loaded:
            for key, values in arrays.items():
                assert loaded[key].dtype == values.dtype and np.array_equal(loaded[key], values)


# ---------------------------------------------------------------------------------------------------
# Checkpoint and resume: an interrupted run, resumed, ends bit-identical to an uninterrupted one.
# ---------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def interrupt_at_call(monkeypatch, call: int) -> None:
    """Make the call-th full_batch_loss raise, as a Ctrl-C or a lost machine would stop the run."""
    real_loss, calls = engine.full_batch_loss, [0]

    def loss_until_interrupted(model, data):
        calls[0] += 1
        if calls[0] == call:
            raise Interrupted
        return real_loss(model, data)

    monkeypatch.setattr(engine, "full_batch_loss", loss_until_interrupted)


@pytest.mark.parametrize("variant, schedule", [
    ("described", ScheduleConfig(steps=300)),
    ("as_coded", ScheduleConfig(steps=300)),
    ("described", ScheduleConfig(steps=300, features="log", lr_factors=(0.5, 1.0, 2.0))),  # lr off the grid
], ids=["described", "as_coded", "log_features_lr_factors"])
def test_interrupted_agent_run_resumes_bit_identical(variant, schedule, tmp_path, monkeypatch):
    config = Config(seed=1, schedule=schedule, dqn=DQNConfig(variant=variant))
    uninterrupted = train_rl_scheduled(config)
    checkpoint = tmp_path / "agent.pt"
    with monkeypatch.context() as patch:
        interrupt_at_call(patch, 1 + 173)  # L_0, then one loss per step: stops inside step 172
        with pytest.raises(Interrupted):
            train_rl_scheduled(config, checkpoint_path=checkpoint, checkpoint_every=50)
    assert torch.load(checkpoint, weights_only=True)["step"] == 150  # resumes from the middle
    assert os.listdir(tmp_path) == ["agent.pt"]
    resumed = train_rl_scheduled(config, checkpoint_path=checkpoint, checkpoint_every=50)
    same_series(resumed, uninterrupted)
    assert resumed.diverged_at is None and same_parameters(resumed.model, uninterrupted.model)
    assert torch.load(checkpoint, weights_only=True)["step"] == 300  # the finished run is saved too


def test_interrupted_baseline_resumes_bit_identical(tmp_path, monkeypatch):
    config = Config(seed=2, baseline=BaselineConfig(epochs=30))
    uninterrupted = train_baseline(config)
    checkpoint = tmp_path / "baseline.pt"
    with monkeypatch.context() as patch:
        interrupt_at_call(patch, 18)  # one full-data loss per epoch: stops in epoch 17
        with pytest.raises(Interrupted):
            train_baseline(config, checkpoint_path=checkpoint, checkpoint_every=5)
    assert torch.load(checkpoint, weights_only=True)["step"] == 15
    resumed = train_baseline(config, checkpoint_path=checkpoint, checkpoint_every=5)
    same_series(resumed, uninterrupted)
    assert same_parameters(resumed.model, uninterrupted.model)


def test_a_finished_shorter_run_is_continued_to_a_longer_one(tmp_path):
    checkpoint = tmp_path / "agent.pt"
    short = train_rl_scheduled(Config(schedule=ScheduleConfig(steps=120)), checkpoint_path=checkpoint,
                               checkpoint_every=1000)  # saved only at its end
    longer = train_rl_scheduled(Config(schedule=ScheduleConfig(steps=250)), checkpoint_path=checkpoint,
                                checkpoint_every=1000)
    uninterrupted = train_rl_scheduled(Config(schedule=ScheduleConfig(steps=250)))
    same_series(longer, uninterrupted)
    assert np.array_equal(short.series["loss"], uninterrupted.series["loss"][:120])
    with pytest.raises(ValueError, match=r"checkpoint_path .* is at step 250, outside this run's 0..100"):
        train_rl_scheduled(Config(schedule=ScheduleConfig(steps=100)), checkpoint_path=checkpoint,
                           checkpoint_every=1000)


def test_checkpoint_of_another_run_is_refused_unless_resume_is_false(tmp_path):
    checkpoint = tmp_path / "agent.pt"
    train_rl_scheduled(Config(seed=0, schedule=ScheduleConfig(steps=30)), checkpoint_path=checkpoint,
                       checkpoint_every=10)
    other = Config(seed=1, schedule=ScheduleConfig(steps=30))
    with pytest.raises(ValueError, match="checkpoint_path .* holds another run"):
        train_rl_scheduled(other, checkpoint_path=checkpoint, checkpoint_every=10)
    with pytest.raises(ValueError, match="checkpoint_path .* holds another run"):
        train_baseline(Config(seed=0), checkpoint_path=checkpoint, checkpoint_every=10)  # another method
    fresh = train_rl_scheduled(other, checkpoint_path=checkpoint, checkpoint_every=10, resume=False)
    same_series(fresh, train_rl_scheduled(other))
    assert torch.load(checkpoint, weights_only=True)["config"]["seed"] == 1  # overwritten


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(step=-3), r"is at step -3, outside this run's 0..30"),
    (lambda c: c.update(step=2.5), r"its step 2.5 is not an integer"),
    (lambda c: c.update(wall_seconds=float("nan")), r"wall_seconds nan is not a finite number"),
    (lambda c: c["series"].update(loss=c["series"]["loss"][:-2]), r"series 'loss' holds \(8,\), not the \(10,\) of its step"),
    (lambda c: c["series"].update(loss=[0.0] * 10), r"series 'loss' holds list, not the \(10,\) of its step"),
])
def test_a_checkpoint_with_a_step_or_series_out_of_shape_is_refused_before_anything_is_restored(tmp_path, edit, message):
    """A checkpoint edited (or written by other code) with a negative step or series shorter than its step
    would leave the run's series half-filled: refused, naming the file, before any state is loaded."""
    checkpoint = tmp_path / "agent.pt"
    config = Config(seed=0, schedule=ScheduleConfig(steps=30))
    train_rl_scheduled(Config(seed=0, schedule=ScheduleConfig(steps=10)), checkpoint_path=checkpoint, checkpoint_every=10)
    stored = torch.load(checkpoint, weights_only=True)
    edit(stored)
    torch.save(stored, checkpoint)
    with pytest.raises(ValueError, match=message):
        train_rl_scheduled(config, checkpoint_path=checkpoint, checkpoint_every=10)


KILLED_RUN_SCRIPT = """
import sys
import torch
import rlr_core as rc
import rlr_engine as engine
torch.set_num_threads(1)
config = engine.Config(seed=5, schedule=rc.ScheduleConfig(steps=800))
engine.train_rl_scheduled(config, checkpoint_path=sys.argv[1], checkpoint_every=50)
"""


def test_agent_run_killed_with_sigkill_resumes_bit_identical(tmp_path):
    checkpoint = tmp_path / "agent.pt"
    process = run_python(KILLED_RUN_SCRIPT, str(checkpoint))
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 50 <= killed_at < 800
    config = Config(seed=5, schedule=ScheduleConfig(steps=800))
    resumed = train_rl_scheduled(config, checkpoint_path=checkpoint, checkpoint_every=50)
    same_series(resumed, train_rl_scheduled(config))


# ---------------------------------------------------------------------------------------------------
# Properties (hypothesis): replay memory, the lr index, soft update.
# ---------------------------------------------------------------------------------------------------


@PROPERTY
@given(capacity=st.integers(1, 40), n_pushes=st.integers(0, 120), batch_size=st.integers(1, 50),
       seed=st.integers(0, 2**32 - 1))
def test_replay_never_exceeds_capacity_and_samples_only_stored_transitions(capacity, n_pushes, batch_size, seed):
    memory = ReplayMemory(capacity, 2)
    for i in range(n_pushes):  # transition i is recognisable from every one of its fields
        memory.push(torch.tensor([i, -i]), i % 3, torch.tensor([i + 0.5, i]), 10.0 * i)
        assert len(memory) == min(i + 1, capacity) <= capacity
    assert memory.states.shape[0] == capacity
    stored = set(range(max(0, n_pushes - capacity), n_pushes))  # the latest `capacity` transitions
    if n_pushes == 0:
        with pytest.raises(ValueError):
            memory.sample(batch_size, torch.Generator().manual_seed(seed))
        return
    batch = memory.sample(batch_size, torch.Generator().manual_seed(seed))
    assert batch.state.shape == (batch_size, 2)
    for state, action, next_state, reward, terminated in zip(*batch):
        i = int(state[0])
        assert i in stored
        assert state[1] == -i and action == i % 3 and reward == 10.0 * i and terminated == 0.0
        assert next_state.tolist() == [i + 0.5, i]


@PROPERTY
@given(data=st.data())
def test_lr_index_stays_on_the_grid_for_any_action_sequence(data):
    grid_size = data.draw(st.integers(1, 15), label="grid_size")
    shifts = data.draw(st.lists(st.integers(-grid_size, 5), min_size=1, max_size=5), label="shifts")
    start = data.draw(st.integers(0, grid_size - 1), label="start")
    actions = data.draw(st.lists(st.integers(0, len(shifts) - 1), max_size=60), label="actions")
    losses = data.draw(st.lists(st.floats(1e-9, 1e3), min_size=len(actions) + 1, max_size=len(actions) + 1))
    grid = tuple(float(v) for v in np.logspace(-5, -2, grid_size))
    schedule = ScheduleConfig(lr_grid=grid, start_index=start, index_shifts=tuple(shifts))
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:]}])
    agent = DQNAgent(2, len(shifts), DQNConfig(learning_starts=1000), seed=0)  # stores, never learns
    forced = iter(actions + [0])
    agent.act = lambda state: next(forced)  # the agent is local to this example: no fixture needed
    scheduler = RLRScheduler(optimizer, agent, schedule)
    expected = start
    for step, loss in enumerate(losses):
        scheduler.step(loss)
        action = (actions + [0])[step]
        expected = min(max(expected + shifts[action], 0), grid_size - 1)  # independent clip
        assert 0 <= scheduler.lr_index < grid_size and scheduler.lr_index == expected
        assert [group["lr"] for group in optimizer.param_groups] == [grid[expected]] * 2
        assert scheduler.get_last_lr() == [grid[expected]] * 2


def q_network(seed: int) -> QNetwork:
    torch.manual_seed(seed)
    return QNetwork(2, 3, hidden_size=8)


@PROPERTY
@given(seed=st.integers(0, 10_000), tau=st.floats(1e-6, 1.0))
def test_soft_update_is_the_convex_combination(seed, tau):
    target, policy = q_network(seed), q_network(seed + 1)
    old = [p.detach().double().clone() for p in target.parameters()]
    soft_update(target, policy, tau)
    for new, start, end in zip(target.parameters(), old, policy.parameters()):
        expected = (1 - tau) * start + tau * end.detach().double()
        assert torch.allclose(new.detach().double(), expected, rtol=0, atol=1e-6)


@PROPERTY
@given(seed=st.integers(0, 10_000), tiny_tau=st.floats(0.0, 1e-9))
def test_soft_update_with_tau_1_copies_and_with_tau_to_0_keeps(seed, tiny_tau):
    target, policy = q_network(seed), q_network(seed + 1)
    soft_update(target, policy, 1.0)
    assert same_parameters(target, policy)

    target, policy = q_network(seed), q_network(seed + 1)
    old = [p.detach().clone() for p in target.parameters()]
    soft_update(target, policy, tiny_tau)
    for new, start, end in zip(target.parameters(), old, policy.parameters()):
        moved = (new.detach() - start).abs()
        # Rounded to float32, a step of tau |policy - target| moves a weight by at most twice that.
        assert (moved <= 2.5 * tiny_tau * (end.detach() - start).abs() + 1e-30).all()
        if tiny_tau == 0.0:
            assert torch.equal(new.detach(), start)


# ---------------------------------------------------------------------------------------------------
# Progress bars: shown on request, refreshed at most every 2 s (notebook output stays small).
# ---------------------------------------------------------------------------------------------------


def test_progress_bar_refreshes_at_most_every_2_s_on_stderr_and_only_when_enabled(capsys):
    """The bar's settings, read off the tqdm object (no timing involved): mininterval 2 s instead of
    tqdm's 0.1 s, disabled unless enabled, starting at initial; it writes to stderr, never stdout."""
    bar = engine.progress_bar(40, "steps", enabled=True, initial=5)
    assert (bar.disable, bar.mininterval, bar.total, bar.desc, bar.n) == (False, 2.0, 40, "steps", 5)
    bar.update(35)
    bar.close()
    shown = capsys.readouterr()
    assert shown.out == "" and "steps" in shown.err and "40/40" in shown.err
    bar = engine.progress_bar(40, "steps", enabled=False)
    assert bar.disable is True
    bar.update(40)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_training_loops_show_their_bar_only_on_request(capsys):
    train_full_batch(Config(), 1e-3, 30)  # progress off by default: nothing at all on stderr (or stdout)
    assert capsys.readouterr() == ("", "")
    train_full_batch(Config(), 1e-3, 30, progress=True)
    shown = capsys.readouterr()
    assert shown.out == "" and "30/30" in shown.err


def test_atomic_writes_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    import stat
    mask = os.umask(0o022)
    try:
        path = results_io.atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_benchmark_is_saved_with_its_readme_part_and_refuses_an_empty_one(tmp_path):
    path = results_io.save_benchmark(tmp_path / "bench.json", {"rows": [1, 2]}, lambda m: f"rows: {len(m['rows'])}")
    assert json.loads(path.read_text()) == {"rows": [1, 2], "readme_markdown": "rows: 2"}
    with pytest.raises(ValueError, match="readme_markdown must give non-empty markdown"):
        results_io.save_benchmark(tmp_path / "empty.json", {"rows": []}, lambda m: "  ")
    assert not (tmp_path / "empty.json").exists()
