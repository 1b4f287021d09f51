"""Nothing gets mixed up: inputs of the wrong type or range are refused, naming the field, before compute
starts; loaders say what is wrong with a file; a result pair is one unit; the library leaves global random
state alone (the reliability probe's cases, and the same classes on the surfaces beside them)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch

import rlr_controllers as controllers
import rlr_core as rc
import rlr_engine as engine
import rlr_methods as methods
import rlr_peers as peers
import rlr_results as results_io
import rlr_study as study
from rlr_env import LRControlEnv, LRControlVectorEnv
from rlr_controllers import SB3VectorEnv

ROOT = Path(__file__).resolve().parents[1]
SMALL_TASK = rc.TaskConfig(n_examples=32, n_points=7, coeff_scale=(1.0, 0.5, 0.25), hidden_sizes=(8, 8, 4))
SCHEDULE = rc.ScheduleConfig(steps=20, decision_interval=5)


def vector_env(num_envs: int = 3) -> LRControlVectorEnv:
    env = LRControlVectorEnv(num_envs, SMALL_TASK, SCHEDULE)
    env.reset(seed=0)
    return env


# --- 6. actions are integers, never masks ------------------------------------------------------------------

@pytest.mark.parametrize("actions", [np.array([True] * 3), np.array([1, 1, 1], dtype=np.uint8).astype(bool),
                                     np.array([1.0, 1.0, 1.0]), np.array([1, 1, 1], dtype=np.float32), [True, True, True],
                                     ["1", "1", "1"]])
def test_vector_env_refuses_bool_float_and_string_actions(actions):
    env = vector_env()
    with pytest.raises(TypeError, match="actions"):
        env.step(actions)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint64])
def test_vector_env_takes_every_integer_dtype_as_indices_not_masks(dtype):
    env = vector_env()
    start = env.schedule.start_index
    _, _, _, _, info = env.step(np.array([1, 1, 1], dtype=dtype))  # 'keep': the lr stays where it is
    assert info["lr_index"].tolist() == [start] * 3
    _, _, _, _, info = env.step(np.array([2, 0, 1], dtype=dtype))
    assert info["lr_index"].tolist() == [start + 1, start - 1, start]


def test_vector_env_refuses_actions_of_the_wrong_shape_or_range():
    env = vector_env()
    with pytest.raises(ValueError, match="actions must be 3 ints"):
        env.step(np.array([1, 1]))
    with pytest.raises(ValueError, match=r"actions must be 3 ints in \[0, 2\]"):
        env.step(np.array([1, 3, 1]))


@pytest.mark.parametrize("action", [True, False, np.bool_(True), 1.0, np.float32(1), "1", None, [1]])
def test_single_env_refuses_a_bool_float_string_or_list_action(action):
    env = LRControlEnv(SMALL_TASK, SCHEDULE)
    env.reset(seed=0)
    with pytest.raises((TypeError, ValueError), match="action"):
        env.step(action)


def test_single_env_takes_numpy_integer_actions():
    env = LRControlEnv(SMALL_TASK, SCHEDULE)
    env.reset(seed=0)
    assert env.step(np.int8(2))[4]["lr_index"] == SCHEDULE.start_index + 1


# --- 7. seeds are integers, masks are booleans -------------------------------------------------------------

@pytest.mark.parametrize("seed", [1.5, "12", True, np.float64(2.0), [1.5, 2.7], ["1", "2"], [True, False], [1, -2],
                                  -1, "ab", [1]])
def test_vector_env_reset_refuses_seeds_that_are_not_ints(seed):
    env = LRControlVectorEnv(2, SMALL_TASK, SCHEDULE)
    with pytest.raises((TypeError, ValueError), match="seed"):
        env.reset(seed=seed)


def test_vector_env_reset_takes_int_seeds_and_numpy_ints():
    env = LRControlVectorEnv(2, SMALL_TASK, SCHEDULE)
    _, info = env.reset(seed=np.int64(4))
    assert info["episode_seed"].tolist() == [4, 5]
    _, info = env.reset(seed=[np.int32(7), 9])
    assert info["episode_seed"].tolist() == [7, 9]


@pytest.mark.parametrize("mask", [["a", "b"], [0.5, 2], [1, 0], np.array([1, 0])])
def test_reset_mask_must_be_booleans(mask):
    env = vector_env(2)
    with pytest.raises(TypeError, match="reset_mask"):
        env.reset(options={"reset_mask": mask})


def test_sb3_adapter_refuses_a_float_seed_and_answers_attributes_per_task():
    env = SB3VectorEnv(LRControlVectorEnv(2, SMALL_TASK, SCHEDULE))
    with pytest.raises(TypeError, match="seed"):
        env.seed(1.5)
    env.seed(10)
    env.reset()
    assert env.get_attr("episode_seed") == [10, 11] and env.get_attr("episode_seed", [1]) == [11]
    env.step(np.array([2, 0]))
    assert env.get_attr("lr_index") == [env.env.schedule.start_index + 1, env.env.schedule.start_index - 1]
    assert env.get_attr("render_mode") == [None, None]


# --- 8. a result pair is one unit ------------------------------------------------------------------------

def two_runs(offset: float) -> list[results_io.RunResult]:
    return [results_io.RunResult("m", engine.Config(seed=seed).to_dict(), {"loss": np.arange(3.0) + offset + seed}, 1.0)
            for seed in (0, 1)]


def test_a_write_killed_between_the_two_renames_is_refused_not_mixed(tmp_path, monkeypatch):
    path = tmp_path / "runs.json"
    results_io.save_results(two_runs(0.0), path)
    real_replace, calls = os.replace, []

    def replace_then_die(source, target):
        calls.append(target)
        if str(target).endswith(".json"):
            raise OSError("killed between the two renames")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(OSError, match="killed"):
        results_io.save_results(two_runs(100.0), path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert [Path(target).suffix for target in calls] == [".npz", ".json"]  # the arrays moved, the index did not
    with pytest.raises(ValueError, match="sha256"):
        results_io.load_results(path)
    results_io.save_results(two_runs(100.0), path)  # writing again makes the pair whole
    assert [run.series["loss"][0] for run in results_io.load_results(path)] == [100.0, 101.0]


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"runs": []}', '{"runs": [], "arrays": "../x.npz", '
                                     '"arrays_sha256": "0"}'])
def test_load_results_names_the_file_for_an_index_that_is_not_one(tmp_path, content):
    path = tmp_path / "runs.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="runs.json"):
        results_io.load_results(path)


# --- 9, 10, 11. errors before any work, naming the field --------------------------------------------------

@pytest.mark.parametrize("key, params", [("prodigy", {}), ("schedule_free", {}), ("d_adaptation", {}),
                                         ("schedule_free", {"warmup_fraction": 0.1})])
def test_a_missing_knob_is_refused_before_any_task(key, params):
    with pytest.raises(ValueError, match="needs its knob"):
        methods.get(key).optimizer(params, 10)
    with pytest.raises(ValueError, match="needs its knob"):
        methods.get(key).submit(params, engine.Config(), [0], 10)


def test_a_knob_left_out_that_has_a_default_gets_it():
    optimizer = methods.get("schedule_free").optimizer({"lr": 1e-3}, 100)(rc.make_model(SMALL_TASK, 0).parameters(), 1.0)
    assert optimizer.param_groups[0]["warmup_steps"] == 0


@pytest.mark.parametrize("field, value", [("lr_range", (-1, 0.3)), ("lr_range", (0.3, 1e-5)), ("lr_range", (1e-5,)),
                                          ("lr_range", "ab"), ("lr_range", (1e-5, float("inf"))),
                                          ("lr_factors", (0, 1)), ("lr_factors", "abc"), ("lr_factors", ()),
                                          ("lr_factors", (1.0,)), ("lr_factors", (0.5, float("nan"))),
                                          ("start_index", 99), ("start_index", 1.5), ("n_envs", True),
                                          ("decision_interval", 0), ("agent_seed", -1)])
def test_controller_config_checks_every_field_naming_it(field, value):
    with pytest.raises((TypeError, ValueError), match=f"controller.{field}"):
        controllers.ControllerConfig(**{field: value})


def test_controller_checks_its_interval_against_the_run_and_its_seeds_against_the_study():
    controller = controllers.ControllerConfig(decision_interval=100)
    with pytest.raises(ValueError, match="controller.decision_interval"):
        controller.check_steps(40)
    with pytest.raises(ValueError, match="controller.decision_interval"):
        controller.schedule(40)
    with pytest.raises(ValueError, match="first_training_seed"):
        controller.check_disjoint(range(3000, 3016))
    controller.check_disjoint(range(0, 16))


@pytest.mark.parametrize("steps, interval", [(5, 50), (10_000, 10 ** 12)])
def test_a_decision_interval_longer_than_the_run_is_refused(steps, interval):
    with pytest.raises(ValueError, match="schedule.decision_interval must be at most"):
        rc.ScheduleConfig(steps=steps, decision_interval=interval)


def test_pbt_checks_its_interval_against_the_run_and_takes_a_zero_resample_probability():
    assert peers.PBTConfig(resample_probability=0.0).resample_probability == 0.0
    with pytest.raises(ValueError, match="pbt.perturbation_interval"):
        peers.PBTConfig(perturbation_interval=1000).check_steps(40)
    with pytest.raises(ValueError, match="pbt.resample_probability"):
        peers.PBTConfig(resample_probability=-0.1)


def first_cells_only(notebook: Path, out: Path, parameters: dict) -> Path:
    """The notebook cut after its first two code cells (parameters and the validating cell), prepared with
    parameters: whatever it would do after validation cannot run."""
    content = nbformat.read(notebook, as_version=4)
    code = [index for index, cell in enumerate(content.cells) if cell.cell_type == "code"]
    content.cells = content.cells[:code[1] + 1]
    cut = out / f"cut_{notebook.name}"
    nbformat.write(content, cut)
    return cut


CASES = [
    ("05_transfer", {"agent_seed": -1}, "agent_seed"),
    ("05_transfer", {"agent_seed": 1.5}, "agent_seed"),
    ("05_transfer", {"results_dir": "EMPTY"}, "notebook 04"),
    ("04_controllers", {"first_eval_seed": 3000}, "first_training_seed"),
    ("04_controllers", {"controller_interval": 20_000}, "controller.decision_interval"),
    ("04_controllers", {"progress": "no"}, "parameter progress"),
    ("04_verdict", {"results_dir": "EMPTY"}, "run notebook 04_controllers first"),
    ("04_verdict", {"progress": "no"}, "parameter progress"),
    ("06_pbt", {"perturbation_interval": 20_000}, "pbt.perturbation_interval"),
    ("01_baseline", {"seed": 1.5}, "parameter seed"),
    ("02_rlr_agent", {"results_dir": 3}, "parameter results_dir"),
    ("03_comparison", {"figures_dir": None}, "parameter figures_dir"),
]


@pytest.mark.parametrize("name, parameters, message", CASES)
def test_every_notebook_refuses_a_bad_parameter_in_its_first_code_cell(tmp_path, name, parameters, message):
    """Only the first two code cells run: the error must come from the validating cell, before any work."""
    parameters = {key: (str(tmp_path) if value == "EMPTY" else value) for key, value in parameters.items()}
    cut = first_cells_only(ROOT / "notebooks" / f"{name}.ipynb", tmp_path, parameters)
    defaults = {"results_dir": str(ROOT / "results"), "figures_dir": str(tmp_path), "ray_address": "NO-RAY"}
    accepted = papermill.inspect_notebook(str(cut))
    chosen = {**{key: value for key, value in defaults.items() if key in accepted}, **parameters}
    with pytest.raises(papermill.PapermillExecutionError, match=message):
        papermill.execute_notebook(str(cut), str(tmp_path / "out.ipynb"), parameters=chosen, progress_bar=False,
                                   cwd=str(ROOT / "notebooks"), kernel_name="python3")


# --- 12. loaders say what is wrong with a file ------------------------------------------------------------

def broken_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"empty": b"", "random": os.urandom(2048), "truncated": data[: len(data) // 2], "json": b'{"a": 1}'}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    torch.save({"not": "it"}, tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    paths.update(other=tmp_path / "other.pt", list=tmp_path / "list.pt")
    return paths


@pytest.fixture(scope="module")
def saved_controllers(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("controllers")
    config = engine.Config(task=SMALL_TASK, schedule=controllers.ControllerConfig(decision_interval=5).schedule(20))
    agent = rc.DQNAgent(4, 3, config.dqn, 0)
    curve = pd.DataFrame({"episode": [0], "seed": [3000], "return": [1.0], "diverged": [False], "round": [0]})
    trained = controllers.TrainedController("c", "dqn", config.to_dict(), agent.policy_net.state_dict(), curve, 1.0)
    return controllers.save_controllers({"c": trained}, folder / "controllers.pt")


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "json", "other", "list"])
def test_load_controllers_names_the_file_for_what_is_not_a_controllers_file(tmp_path, saved_controllers, kind):
    path = broken_files(tmp_path, saved_controllers)[kind]
    with pytest.raises(ValueError, match=f"load_controllers.*{path.name}"):
        controllers.load_controllers(path)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("curve"), "exactly"),
    (lambda c: c.update(curve={"episode": [0, 1], "seed": [1], "return": [1.0]}), "curve"),
    (lambda c: c.update(policy={"0.weight": torch.zeros(2, 2)}), "policy weights"),
    (lambda c: c.update(policy={key: value[:1] for key, value in c["policy"].items()}), "policy weights"),
    (lambda c: c.update(learner="a2c"), "learner"),
    (lambda c: c.update(run_config=[]), "run_config"),
    (lambda c: c.update(run_config={"nonsense": 1}), "run_config"),
    (lambda c: c.update(training_seconds="1"), "training_seconds"),
    (lambda c: c.update(label="another"), "label 'another' differs from its key 'c'"),
    (lambda c: c.update(policy={key: torch.full_like(value, float("nan")) for key, value in c["policy"].items()}),
     "NaN or infinite"),
    (lambda c: c["policy"].update({"0.bias": c["policy"]["0.bias"].clone().fill_(float("inf"))}), "NaN or infinite"),
    (lambda c: c.update(policy={key: value.to(torch.int64) for key, value in c["policy"].items()}), "floating-point"),
    (lambda c: c.update(curve={**c["curve"], "episode": torch.tensor([0])}), "list columns"),
    (lambda c: c.update(curve={**c["curve"], "return": "1"}), "list columns"),
    (lambda c: c.update(curve={**c["curve"], "seed": (3000,)}), "list columns"),
])
def test_load_controllers_names_what_is_wrong_inside_the_file(tmp_path, saved_controllers, change, message):
    payload = torch.load(saved_controllers, weights_only=True)
    change(payload["controllers"]["c"])
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(ValueError, match=message):
        controllers.load_controllers(tmp_path / "changed.pt")


def test_load_agent_names_the_file_for_a_truncated_one(tmp_path):
    good = results_io.save_agent(rc.DQNAgent(2, 3, seed=0), tmp_path / "agent.pt")
    for kind, path in broken_files(tmp_path, good).items():
        with pytest.raises(ValueError, match="load_agent"):
            results_io.load_agent(path)
    with pytest.raises(FileNotFoundError):
        results_io.load_agent(tmp_path / "missing.pt")


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "list", "other"])
def test_resuming_from_a_broken_checkpoint_names_it(tmp_path, kind):
    config = engine.Config(seed=0, task=SMALL_TASK, schedule=rc.ScheduleConfig(steps=20))
    good = tmp_path / "good.pt"
    engine.train_rl_scheduled(config, checkpoint_path=good, checkpoint_every=10)
    path = broken_files(tmp_path, good)[kind]
    with pytest.raises(ValueError, match=f"checkpoint_path .*{path.name}"):
        engine.train_rl_scheduled(config, checkpoint_path=path, checkpoint_every=10)


@pytest.mark.parametrize("data", [[], None, "config", 3])
def test_config_from_dict_names_what_it_needs(data):
    with pytest.raises(TypeError, match="config"):
        engine.Config.from_dict(data)


def test_config_from_dict_names_a_part_that_is_not_a_dict():
    with pytest.raises(TypeError, match="config.schedule"):
        engine.Config.from_dict({"schedule": [1, 2]})


# --- 13. the library leaves global random state alone ------------------------------------------------------

def global_state() -> tuple:
    return torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def assert_untouched(before: tuple) -> None:
    after = global_state()
    assert torch.equal(before[0], after[0]), "torch's global RNG moved"
    assert np.array_equal(before[1], after[1]), "numpy's global RNG moved"
    assert before[2] == after[2], "random's global RNG moved"


def test_run_policy_and_frozen_controllers_leave_global_rng_alone(saved_controllers):
    loaded = controllers.load_controllers(saved_controllers)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = global_state()
    controllers.frozen_controller_runs(loaded["c"], [0, 1])
    config = engine.Config.from_dict(loaded["c"].run_config)
    controllers.run_policy(config, lambda observations: np.ones(len(observations), dtype=np.int64), [2])
    assert_untouched(before)


def test_sb3_controllers_train_and_act_without_touching_global_rng(tmp_path):
    setup = study.StudyConfig(first_eval_seed=0, n_eval_seeds=2, first_tuning_seed=1000, n_tuning_seeds=2, steps=20,
                              n_heldout_examples=8, tuning_budget=2)
    config = study.study_config(engine.Config(task=SMALL_TASK), setup)
    controller = controllers.ControllerConfig(decision_interval=5, n_envs=2, training_rounds=1)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    before = global_state()
    params = {"sb3.learning_rate": 3e-4, "sb3.rollout_episodes": 1.0, "sb3.ent_coef": 1e-3,
              "dqn.horizon": 100.0, "dqn.undiscounted": 0.0}
    trained = controllers.train_sb3_controller(config, setup, controller, "ppo", params)
    trained.act()(np.zeros((2, 4), dtype=np.float32))
    assert_untouched(before)
    again = controllers.train_sb3_controller(config, setup, controller, "ppo", params)  # still deterministic
    assert all(torch.equal(trained.policy[key], again.policy[key]) for key in trained.policy)


# --- the saved scheduler state must agree on the run length where the state sees it ------------------------

def test_a_control_feature_state_from_a_run_of_another_length_is_refused():
    def scheduler(steps: int) -> rc.RLRScheduler:
        model = torch.nn.Linear(2, 1)
        schedule = rc.ScheduleConfig(steps=steps, features="control", lr_factors=(0.5, 1.0, 2.0))
        return rc.RLRScheduler(torch.optim.Adam(model.parameters()), schedule=schedule, seed=0)
    saved = scheduler(300).state_dict()
    with pytest.raises(ValueError, match="steps"):
        scheduler(30_000).load_state_dict(saved)
    scheduler(300).load_state_dict(saved)
    raw = rc.RLRScheduler(torch.optim.Adam(torch.nn.Linear(2, 1).parameters()), schedule=rc.ScheduleConfig(steps=10))
    rc.RLRScheduler(torch.optim.Adam(torch.nn.Linear(2, 1).parameters()),
                    schedule=rc.ScheduleConfig(steps=99)).load_state_dict(raw.state_dict())  # raw: length not seen


def test_check_parameters_takes_the_declared_types():
    results_io.check_parameters({"a": int, "b": float, "c": str, "d": bool}, {"a": 1, "b": 2, "c": "x", "d": True})
    for namespace in ({"a": True, "b": 1.0, "c": "x", "d": True}, {"a": 1, "b": "1", "c": "x", "d": True},
                      {"a": 1, "b": 1.0, "c": 3, "d": True}, {"a": 1, "b": 1.0, "c": "x", "d": 1}):
        with pytest.raises(TypeError, match="parameter"):
            results_io.check_parameters({"a": int, "b": float, "c": str, "d": bool}, namespace)


@pytest.mark.parametrize("seeds", [[1.5], ["1"], [True], 3, "12"])
def test_the_study_runs_refuse_seeds_they_would_truncate(seeds, saved_controllers):
    config = engine.Config(task=SMALL_TASK, schedule=rc.ScheduleConfig(steps=5))
    with pytest.raises(TypeError, match="seeds"):
        controllers.run_policy(config, lambda observations: np.ones(len(observations), dtype=np.int64), seeds)
    with pytest.raises(TypeError, match="seeds"):
        controllers.frozen_controller_runs(controllers.load_controllers(saved_controllers)["c"], seeds)
    with pytest.raises(TypeError, match="seeds"):
        study.run_family("constant lr", {"lr": 1e-3}, config, seeds, 5)


def test_review_probe_cases_global_rng_index_runs_and_single_results(tmp_path):
    """The second probe's cases: SB3VectorEnv.seed(None) leaves numpy's global RNG alone; an index that lists
    other runs than its arrays hold is refused; load_result names the file; a refused seed reseeds nothing."""
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    SB3VectorEnv(LRControlVectorEnv(2, SMALL_TASK, SCHEDULE)).seed(None)
    assert np.array_equal(np.random.get_state()[1], before)
    path = tmp_path / "runs.json"
    results_io.save_results(two_runs(0.0)[:1], path)
    index = json.loads(path.read_text())
    index["runs"] = index["runs"] * 2
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lists 2 runs"):
        results_io.load_results(path)
    for content in ("{}", "[1]", "nonsense"):
        (tmp_path / "one.json").write_text(content)
        with pytest.raises(ValueError, match="one.json"):
            results_io.load_result(tmp_path / "one.json")
    env = LRControlEnv(SMALL_TASK, SCHEDULE)
    env.reset(seed=3)
    state = env.np_random.bit_generator.state
    with pytest.raises(TypeError, match="seed"):
        env.reset(seed=True)
    assert env.np_random.bit_generator.state == state


@pytest.mark.parametrize("overrides, error, match", [
    ([1], TypeError, "overrides must be a dict"), ({"nopart": {"x": 1}}, ValueError, "unknown config part 'nopart'"),
    ({"dqn": {"nofield": 1}}, ValueError, r"unknown config field\(s\) \['dqn.nofield'\]"),
    ({"dqn": {"lr": -1.0}}, ValueError, "dqn.lr must be a finite number"),
])
def test_config_overrides_refuse_what_no_config_has(overrides, error, match):
    with pytest.raises(error, match=match):
        engine.Config().with_overrides(overrides)
    assert engine.Config().with_overrides({"dqn": {"lr": 1e-4}}).dqn.lr == 1e-4
