"""The shape of the code: layers import downward only, library code has no global side effects, no
library function is long, and RLRScheduler is a real torch LRScheduler."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import rlr_core as rc
import rlr_engine as engine
import rlr_env

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "rlr_config": 1, "rlr_core": 1, "rlr_stats": 1,
    "rlr_results": 2, "rlr_engine": 2, "rlr_stacked": 2, "rlr_batched": 2, "rlr_tasks": 2,
    "rlr_env": 3, "rlr_peers": 3,
    "rlr_report": 4, "rlr_methods": 4, "rlr_study": 4, "rlr_controllers": 4, "rlr_curves": 4, "rlr_oracle": 4, "rlr_mnist1d": 4,
    "rlr_summaries": 5, "rlr_pbt": 5, "sweep": 5, "readme": 5, "build_site": 5, "rlr_provenance": 5,
}
"""Each library module's layer (README, Layout); entry points (notebooks, benchmarks, sweep) are 5."""

WITHIN_LAYER = {("rlr_engine", "rlr_results"), ("rlr_batched", "rlr_engine"), ("rlr_batched", "rlr_results"),
                ("rlr_stacked", "rlr_engine"), ("rlr_batched", "rlr_stacked"),
                ("rlr_tasks", "rlr_results"), ("rlr_tasks", "rlr_stacked"), ("rlr_tasks", "rlr_batched"),
                ("rlr_controllers", "rlr_study"), ("build_site", "readme"),
                ("rlr_core", "rlr_config"), ("rlr_study", "rlr_methods"), ("rlr_controllers", "rlr_methods"),
                ("readme", "rlr_provenance"), ("rlr_curves", "rlr_controllers"), ("rlr_curves", "rlr_study"),
                ("rlr_oracle", "rlr_controllers"), ("rlr_mnist1d", "rlr_methods"), ("rlr_mnist1d", "rlr_report")}
"""The allowed imports inside one layer (the other direction would be a cycle). In layer 4 the protocol
(rlr_study) and the report (rlr_report) know nothing of each other, the learned controllers
(rlr_controllers) build on the protocol, which never imports them, and the oracle of the controllers'
policy class (rlr_oracle) builds on the controllers. In layer 2 MNIST-1D's task (rlr_tasks) builds on the
polynomial engine's stacked runs and optimisers (rlr_batched), which never imports it."""


def project_imports(module: str) -> set[str]:
    """The rlr_* / sweep modules a module imports anywhere in its file (also inside functions)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name in LAYERS}


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down_the_layers(module: str) -> None:
    for imported in project_imports(module):
        assert (LAYERS[imported] < LAYERS[module]
                or (module, imported) in WITHIN_LAYER), f"{module} (layer {LAYERS[module]}) imports {imported}"


def test_the_statistics_import_no_project_module_and_only_entry_points_import_the_controllers() -> None:
    """rlr_stats is a leaf anything may use; rlr_controllers sits on the protocol and is used by the
    notebooks, benchmarks and entry points alone (neither rlr_study nor rlr_report may import it), and by
    rlr_curves and rlr_oracle, whose subjects are the controllers' training and policy class (and which
    nothing in layer 4 imports)."""
    assert project_imports("rlr_stats") == set()
    importers = {module for module in LAYERS if "rlr_controllers" in project_imports(module)}
    assert importers <= {module for module, layer in LAYERS.items() if layer == 5} | {"rlr_curves", "rlr_oracle"}, \
        importers
    for leaf in ("rlr_curves", "rlr_oracle"):
        leaf_importers = {module for module in LAYERS if leaf in project_imports(module)}
        assert leaf_importers <= {module for module, layer in LAYERS.items() if layer == 5}, leaf_importers


def test_every_top_level_module_has_a_layer() -> None:
    modules = {path.stem for path in ROOT.glob("*.py")}
    assert modules == set(LAYERS), "a new module needs a layer here and in the Layout of docs/reproducibility.md"


def test_readme_layout_names_every_module() -> None:
    layout = (ROOT / "docs" / "reproducibility.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    for module in LAYERS:
        assert f"{module}.py" in layout, module


@pytest.mark.parametrize("module", sorted(set(LAYERS) - {"sweep", "readme", "build_site"}))
def test_no_library_function_is_longer_than_60_lines(module: str) -> None:
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, f"{module}: {long}"


def test_building_models_agents_schedulers_and_runs_leaves_global_torch_state_alone() -> None:
    """The library never reseeds the caller's RNG or changes torch's thread count (entry points do)."""
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    rng_before = torch.get_rng_state()
    model = rc.make_model(rc.TaskConfig(), seed=7)
    agent = rc.DQNAgent(2, 3, seed=5)
    scheduler = rc.RLRScheduler(torch.optim.Adam(model.parameters()), seed=3)
    scheduler.step(1.0)
    env = rlr_env.LRControlEnv(schedule=rc.ScheduleConfig(steps=3))
    env.reset(seed=0)
    env.step(1)
    config = engine.Config(schedule=rc.ScheduleConfig(steps=5), baseline=engine.BaselineConfig(epochs=1))
    engine.train_rl_scheduled(config)
    engine.train_baseline(config)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads
    # The seeded weights are still those that torch.manual_seed(seed) followed by construction gives.
    torch.manual_seed(5)
    expected = rc.QNetwork(2, 3)
    assert all(torch.equal(a, b) for a, b in zip(agent.policy_net.state_dict().values(),
                                                 expected.state_dict().values()))
    assert agent.replay.size == 0


def test_rlr_scheduler_initialises_what_torch_schedulers_have() -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.5)
    scheduler = rc.RLRScheduler(optimizer, seed=0, lr_grid=[1e-3, 1e-2, 1e-1])
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    assert scheduler.base_lrs == [1e-2, 1e-2]
    assert [group["initial_lr"] for group in optimizer.param_groups] == [1e-2, 1e-2]
    assert [group["lr"] for group in optimizer.param_groups] == [1e-2, 1e-2]
    assert scheduler.last_epoch == 0 and scheduler.get_last_lr() == [1e-2, 1e-2]
    for loss in (1.0, 0.9, 0.7):
        scheduler.step(loss)
    assert scheduler.last_epoch == 3
    assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups]
    assert scheduler.get_lr() == scheduler.get_last_lr()
    state = scheduler.state_dict()
    other = rc.RLRScheduler(torch.optim.SGD(model.parameters(), lr=0.5), seed=9, lr_grid=[1e-3, 1e-2, 1e-1])
    other.load_state_dict(state)
    assert other.last_epoch == 3 and other.base_lrs == [1e-2, 1e-2]
    assert other.get_last_lr()[0] == scheduler.get_last_lr()[0]


def test_rlr_scheduler_refuses_an_agent_and_a_seed_together() -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="either agent= .* or seed="):
        rc.RLRScheduler(optimizer, agent=rc.DQNAgent(2, 3), seed=1)
    rc.RLRScheduler(optimizer, agent=rc.DQNAgent(2, 3))  # the agent alone is fine


def test_rlr_scheduler_refuses_a_state_saved_with_another_grid() -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    state = rc.RLRScheduler(optimizer, lr_grid=[1e-3, 1e-2]).state_dict()
    with pytest.raises(ValueError, match="saved with schedule"):
        rc.RLRScheduler(optimizer, lr_grid=[1e-3, 1e-1]).load_state_dict(state)


@pytest.mark.parametrize("module, heavy", [("rlr_env", {"stable_baselines3", "ray"}), ("rlr_core", {"stable_baselines3", "ray", "gymnasium"}),
                                           ("rlr_stats", {"torch", "matplotlib", "stable_baselines3", "ray", "gymnasium"}),
                                           ("readme", {"torch", "pandas", "matplotlib", "stable_baselines3", "ray"}),
                                           ("build_site", {"torch", "pandas", "matplotlib", "stable_baselines3", "ray"})])
def test_light_modules_import_no_heavy_package(module: str, heavy: set[str]) -> None:
    """Checked in a fresh interpreter: gymnasium.make needs `import rlr_env`, which must stay light."""
    import subprocess
    import sys
    code = f"import sys, {module}; print(sorted(name for name in {sorted(heavy)!r} if name in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"import {module} imported {run.stdout.strip()}"


def test_models_built_with_a_seed_leave_the_global_rng_alone_and_match_make_model() -> None:
    """MaclaurinNet(task, seed) and QNetwork(..., seed=) are seeded like make_model and DQNAgent; without
    a seed they draw from torch's global RNG, as every nn.Module does (documented, and checked here)."""
    torch.manual_seed(99)
    before = torch.get_rng_state()
    seeded = rc.MaclaurinNet(rc.TaskConfig(), seed=4)
    q_network = rc.QNetwork(2, 3, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(seeded.parameters(), rc.make_model(rc.TaskConfig(), 4).parameters()))
    torch.manual_seed(4)
    assert all(torch.equal(a, b) for a, b in zip(q_network.parameters(), rc.QNetwork(2, 3).parameters()))
    rc.MaclaurinNet(rc.TaskConfig())  # no seed: the global stream moves, as nn.Linear's does
    assert not torch.equal(torch.get_rng_state(), before)
    with pytest.raises(TypeError, match="seed"):
        rc.QNetwork(2, 3, seed="four")
