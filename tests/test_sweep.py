"""sweep.py: a small grid of notebook 02 on a local Ray instance (2 CPUs), its artefacts, resuming, and a
failing point that is reported without stopping the sweep. About a minute: Ray start-up and one kernel
per point dominate."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import rlr_peers
import rlr_results as results_io
import sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_rlr_agent.ipynb"
SUMMARY_FIELDS = ["final_loss", "median_last_100", "wall_seconds", "diverged_at"]


def write_grid(folder: Path, steps: list[int]) -> Path:
    path = folder / "grid.yaml"
    path.write_text(f"parameters:\n  steps: {steps}\nseeds: {{first: 0, count: 2}}\nseeds_per_task: 2\n")
    return path


def sweep_args(grid: Path, output_root: Path) -> list[str]:
    return [str(NOTEBOOK), str(grid), "--name", "small", "--output-root", str(output_root), "--no-progress"]


# --- the grid, without Ray --------------------------------------------------------------------------


def test_seed_range_is_cut_into_blocks_that_cover_it_once():
    assert sweep.seed_blocks(3, 5, 2) == [(3, 2), (5, 2), (7, 1)]
    blocks = sweep.seed_blocks(0, 10, 4)
    assert [seed for start, count in blocks for seed in range(start, start + count)] == list(range(10))


def test_point_key_follows_code_and_parameters_not_outputs(tmp_path):
    content = nbformat.read(NOTEBOOK, as_version=4)
    for cell in content.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    stripped = tmp_path / "stripped.ipynb"
    nbformat.write(content, stripped)
    code = sweep.notebook_code_hash(NOTEBOOK)
    assert sweep.notebook_code_hash(stripped) == code, "outputs do not change what runs"
    content.cells[2].source += "\n# edited"
    nbformat.write(content, tmp_path / "edited.ipynb")
    assert sweep.notebook_code_hash(tmp_path / "edited.ipynb") != code
    assert sweep.point_key(code, {"steps": 20, "seed": 0}) != sweep.point_key(code, {"steps": 30, "seed": 0})
    assert sweep.point_key(code, {"steps": 20, "seed": 0}) == sweep.point_key(code, {"seed": 0, "steps": 20})


def test_example_grid_expands_to_one_point_per_value_and_seed_block(tmp_path):
    spec = sweep.load_spec(NOTEBOOK, ROOT / "sweeps" / "example.yaml")
    points = sweep.expand_points(spec, tmp_path)
    assert [point.parameters for point in points] == [
        {"steps": steps, "seed": seed, "n_seeds": 2} for steps in (1500, 3000) for seed in (0, 2)]
    assert len({point.folder for point in points}) == 4
    assert all(point.folder.parent == tmp_path / "agent_steps" for point in points)


def test_grid_with_a_parameter_the_notebook_lacks_is_refused_before_running(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("parameters:\n  stepz: [20]\n")
    with pytest.raises(ValueError, match="stepz"):
        sweep.load_spec(NOTEBOOK, grid)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(NOTEBOOK), str(grid)])
    assert exit_info.value.code == 2


# --- a real sweep on a local Ray instance --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    import ray  # a requirement (requirements.txt): these tests never skip
    assert rlr_peers.start_ray(num_cpus=2), "the tests start their own Ray instance"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def first_sweep(local_ray, tmp_path_factory):
    """steps [20, 30] x seeds 0-1 in blocks of 2: two points, one task each."""
    folder = tmp_path_factory.mktemp("sweep")
    exit_code = sweep.main(sweep_args(write_grid(folder, [20, 30]), folder / "out"))
    return folder, exit_code


def point_folders(sweep_folder: Path) -> list[Path]:
    return sorted(path for path in sweep_folder.iterdir() if path.is_dir())


def test_sweep_writes_every_point_and_a_table_of_every_run(first_sweep):
    folder, exit_code = first_sweep
    assert exit_code == 0
    sweep_folder = folder / "out" / "small"
    points = point_folders(sweep_folder)
    assert [json.loads((point / "point.json").read_text())["parameters"] for point in points] == \
        [{"steps": 20, "seed": 0, "n_seeds": 2}, {"steps": 30, "seed": 0, "n_seeds": 2}]
    expected_rows = []
    for point in points:
        marker = json.loads((point / "point.json").read_text())
        assert marker["omp_num_threads"] == "1" and marker["attempts"] == 1
        executed = nbformat.read(point / "notebook.ipynb", as_version=4)
        assert executed.metadata["papermill"]["parameters"]["results_dir"] == str(point / "results")
        assert (point / "figures" / "02_described_vs_as_coded.png").is_file()
        for name in ["rl_described", "rl_as_coded"]:
            runs = results_io.load_results(point / "results" / f"{name}.json")
            assert [run.seed for run in runs] == [0, 1]
            assert all(len(run.series["loss"]) == marker["parameters"]["steps"] for run in runs)
            expected_rows += [(point.name, name, run.seed, float(run.series["loss"][-1])) for run in runs]
    table = pd.read_csv(sweep_folder / "table.csv")
    assert set(SUMMARY_FIELDS + ["point", "param_steps", "result", "method", "seed"]) <= set(table.columns)
    got_rows = sorted(zip(table["point"], table["result"], table["seed"], table["final_loss"]))
    expected_rows.sort()
    assert [row[:3] for row in got_rows] == [row[:3] for row in expected_rows] and len(got_rows) == 8
    assert [row[3] for row in got_rows] == pytest.approx([row[3] for row in expected_rows], rel=1e-12)
    status = json.loads((sweep_folder / "sweep.json").read_text())
    assert status["counts"] == {"done": 2, "skipped": 0, "failed": 0}


def test_sweep_run_again_recomputes_nothing(first_sweep, capsys):
    folder, _ = first_sweep
    sweep_folder = folder / "out" / "small"
    written = {path: path.stat().st_mtime_ns for point in point_folders(sweep_folder)
               for path in point.rglob("*") if path.is_file()}
    assert sweep.main(sweep_args(folder / "grid.yaml", folder / "out")) == 0
    assert "2 points, 0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert len(pd.read_csv(sweep_folder / "table.csv")) == 8


def test_failing_point_is_retried_reported_with_its_notebook_and_the_sweep_goes_on(first_sweep, capsys):
    folder, _ = first_sweep
    grid = write_grid(folder, [20, 30, 0])  # steps 0: the notebook's config check raises ValueError
    assert sweep.main(sweep_args(grid, folder / "out")) == 1
    out = capsys.readouterr().out
    assert "3 points, 0 done, 2 skipped, 1 failed" in out
    assert "ValueError: schedule.steps must be >= 1, got 0" in out
    status = json.loads((folder / "out" / "small" / "sweep.json").read_text())
    [failed] = [point for point in status["points"] if point["status"] == "failed"]
    assert failed["parameters"]["steps"] == 0 and "schedule.steps" in failed["error"]
    assert failed["attempts"] == 2, "retried once"
    partial = nbformat.read(failed["partial_notebook"], as_version=4)
    assert any(output.get("ename") == "ValueError" for cell in partial.cells
               for output in cell.get("outputs", []))
    assert not (Path(failed["partial_notebook"]).parent / "point.json").exists(), "not marked done"
    assert len(pd.read_csv(folder / "out" / "small" / "table.csv")) == 8, "the good points stay in the table"


def test_the_table_skips_a_malformed_results_file_with_a_warning_naming_it(tmp_path):
    """One truncated or hand-edited JSON in a point's results must not abort the whole sweep's table."""
    point = sweep.Point(parameters={"seed": 0}, key="abc", folder=tmp_path / "point")
    point.results_dir.mkdir(parents=True)
    (point.results_dir / "good.json").write_text(json.dumps({"runs": [{"method": "m", "seed": 0, "summary": {"final_mse": 1.0}}]}))
    (point.results_dir / "truncated.json").write_text('{"runs": [{"method"')
    (point.results_dir / "odd_run.json").write_text(json.dumps({"runs": [3, {"method": "m", "seed": 1, "summary": 2}]}))
    with pytest.warns(UserWarning) as caught:
        count = sweep.gather_table([point], tmp_path / "table.csv")
    messages = " ".join(str(warning.message) for warning in caught)
    assert "truncated.json: not a readable JSON file" in messages
    assert "odd_run.json: run 0 is not an object" in messages and "odd_run.json: run 1" in messages
    assert count == 1
    assert pd.read_csv(tmp_path / "table.csv")["final_mse"].tolist() == [1.0]
