"""Parameter sweeps of a notebook: every point of a grid runs with papermill as one Ray task.

    .venv/bin/python sweep.py notebooks/02_rlr_agent.ipynb sweeps/example.yaml [--seeds-per-task 2]
        [--name NAME] [--address HOST:PORT] [--num-cpus N] [--output-root results/sweeps] [--retries 1]

The grid file (YAML) gives a list of values per notebook parameter and a range of seeds:

    parameters:
      steps: [1500, 3000]
    seeds: {first: 0, count: 4}
    seeds_per_task: 2          # optional; one task runs seeds first .. first+n_seeds-1 (vectorised)

A point is one combination of parameter values and one block of seeds (parameters seed, n_seeds). Its
folder results/sweeps/<name>/<point>/ holds the executed notebook (notebook.ipynb), what it wrote
(results/, figures/: the notebook's results_dir and figures_dir) and point.json, written last, once
the point succeeded. A point whose point.json exists with the same key (a hash of the notebook's code
cells and the parameters) is skipped, so an interrupted or partly failed sweep resumes where it stopped.
A failed point is retried once, then reported with its error and its partial notebook; the sweep goes
on. At the end: table.csv (one row per run of every JSON result with a "runs" list) and sweep.json
(every point's status), both written atomically; exit code 0 if every point succeeded, 1 otherwise.

Ray: without --address (or RAY_ADDRESS) a local instance starts, with all CPUs or --num-cpus. With an
address the same command runs on that cluster; its nodes need this checkout (and .venv) at the same path
and the output folder on a shared file system. Each task asks for one CPU and runs torch on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parent
DEFAULT_OUTPUT_ROOT = ROOT / "results" / "sweeps"
POINT_FILE = "point.json"
"""written last in a point's folder, only when the point succeeded: the marker that makes it skippable"""


@dataclass
class SweepSpec:
    """What to run: a notebook, a grid of parameter values and a seed range split into blocks."""

    notebook: Path
    """the notebook to execute (it runs with its own folder as the working directory)"""
    name: str
    """folder name under the output root"""
    parameters: dict[str, list]
    """notebook parameter -> the values to sweep (the grid is their Cartesian product)"""
    first_seed: int | None = None
    """first seed of the range; None when the grid sweeps no seeds"""
    n_seeds: int = 1
    """number of seeds in the range"""
    seeds_per_task: int = 1
    """seeds one task runs at once through the notebook's vectorised n_seeds parameter"""


@dataclass
class Point:
    """One task: a notebook run with these parameters, in its own folder."""

    parameters: dict[str, Any]
    """the swept parameters, seed and n_seeds included (not the output folders)"""
    key: str
    """hash of the notebook's code and the parameters: the identity of the result"""
    folder: Path

    @property
    def notebook_path(self) -> Path:
        return self.folder / "notebook.ipynb"

    @property
    def results_dir(self) -> Path:
        return self.folder / "results"

    @property
    def figures_dir(self) -> Path:
        return self.folder / "figures"


@dataclass
class SweepReport:
    """What a sweep did: points run, skipped and failed, and where the table is."""

    done: list[Point] = field(default_factory=list)
    skipped: list[Point] = field(default_factory=list)
    failed: list[tuple[Point, str]] = field(default_factory=list)
    """(point, error message); the partial notebook is point.notebook_path"""
    wall_seconds: float = 0.0
    table_path: Path | None = None
    n_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


# ---------------------------------------------------------------------------------------------------
# The grid: from a YAML file to points with stable keys and folders.
# ---------------------------------------------------------------------------------------------------


def load_spec(notebook: str | Path, grid_file: str | Path, name: str | None = None,
              seeds_per_task: int | None = None) -> SweepSpec:
    """Read and check a grid file; command-line options (name, seeds_per_task) override the file."""
    grid = yaml.safe_load(Path(grid_file).read_text()) or {}
    if not isinstance(grid, dict):
        raise ValueError(f"{grid_file}: expected a mapping with 'parameters' and 'seeds'")
    unknown = set(grid) - {"parameters", "seeds", "seeds_per_task", "name"}
    if unknown:
        raise ValueError(f"{grid_file}: unknown keys {sorted(unknown)}")
    parameters = grid.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{grid_file}: 'parameters' must map each parameter to a list of values")
    parameters = {str(key): list(values) if isinstance(values, list) else [values]
                  for key, values in parameters.items()}
    for key, values in parameters.items():
        if not values:
            raise ValueError(f"{grid_file}: parameter {key!r} has no values")
    per_task = seeds_per_task if seeds_per_task is not None else grid.get("seeds_per_task", 1)
    check_int("seeds_per_task", per_task, 1)
    spec = SweepSpec(notebook=Path(notebook), name=check_sweep_name(name or grid.get("name") or Path(grid_file).stem),
                     parameters=parameters, seeds_per_task=int(per_task))
    seeds = grid.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, dict) or set(seeds) != {"first", "count"}:
            raise ValueError(f"{grid_file}: 'seeds' must be {{first: <int>, count: <int>}}, got {seeds!r}")
        check_int("seeds.first", seeds["first"], 0)
        check_int("seeds.count", seeds["count"], 1)
        spec.first_seed, spec.n_seeds = int(seeds["first"]), int(seeds["count"])
    check_spec(spec)
    return spec


def check_spec(spec: SweepSpec) -> None:
    """Refuse a grid the notebook cannot take, before any task starts."""
    import papermill
    if not spec.notebook.is_file():
        raise ValueError(f"no notebook at {spec.notebook}")
    check_sweep_name(spec.name)
    if spec.seeds_per_task < 1 or spec.n_seeds < 1:
        raise ValueError(f"seeds_per_task and seeds.count must be >= 1, got {spec.seeds_per_task}, {spec.n_seeds}")
    accepted = set(papermill.inspect_notebook(str(spec.notebook)))
    swept = set(spec.parameters) | ({"seed", "n_seeds"} if spec.first_seed is not None else set())
    unknown = swept - accepted
    if unknown:
        raise ValueError(f"{spec.notebook.name} has no parameters {sorted(unknown)} (it takes {sorted(accepted)})")
    reserved = set(spec.parameters) & {"seed", "n_seeds", "results_dir", "figures_dir", "progress"}
    if reserved:
        raise ValueError(f"set {sorted(reserved)} through 'seeds' / the sweep, not in 'parameters'")


def check_int(name: str, value: Any, minimum: int) -> int:
    """value if it is an int >= minimum (a bool, float or string is refused, never truncated)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_sweep_name(name: Any) -> str:
    """A sweep name is one plain folder name: letters, digits, '_', '-' and '.', starting with a letter, a
    digit or '_' (so never '.', '..' or a hidden folder); ValueError naming it otherwise."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"sweep name {name!r}: one folder name of letters, digits, '_', '-', '.', starting "
                         "with a letter, a digit or '_' (not '.', '..' or a path)")
    return name


def sweep_folder(output_root: str | Path, name: str) -> Path:
    """The sweep's folder, resolved: output_root/name, checked to be a direct child of the resolved output
    root (every path a sweep writes lies under it)."""
    root = Path(output_root).resolve()
    folder = (root / check_sweep_name(name)).resolve()
    if folder.parent != root:
        raise ValueError(f"sweep name {name!r} leads outside the output root {root} (to {folder})")
    return folder


def inside(folder: Path, path: Path) -> Path:
    """path, resolved, if it lies inside folder (resolved); ValueError otherwise: the last check before a write."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()) or resolved == folder.resolve():
        raise ValueError(f"{path} is not inside {folder}: the sweep writes only inside its own folder")
    return resolved


def seed_blocks(first_seed: int, n_seeds: int, seeds_per_task: int) -> list[tuple[int, int]]:
    """(seed, n_seeds) per task: the range first_seed .. first_seed+n_seeds-1 cut into blocks."""
    return [(start, min(seeds_per_task, first_seed + n_seeds - start))
            for start in range(first_seed, first_seed + n_seeds, seeds_per_task)]


def notebook_code_hash(notebook: Path) -> str:
    """Hash of the cells' types and sources: outputs and execution counts do not change what runs."""
    import nbformat
    content = nbformat.read(notebook, as_version=4)
    cells = [[cell.cell_type, cell.source] for cell in content.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def point_key(code_hash: str, parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([code_hash, parameters], sort_keys=True).encode()).hexdigest()


def point_folder_name(parameters: dict[str, Any], key: str) -> str:
    """Readable and unique: 'steps=1500_seed=0_n_seeds=2-<12 hex of the key>'."""
    readable = "_".join(f"{name}={value}" for name, value in parameters.items())
    readable = re.sub(r"[^A-Za-z0-9_.=+-]", "-", readable)[:100]
    return f"{readable}-{key[:12]}"


def expand_points(spec: SweepSpec, output_root: Path) -> list[Point]:
    """Every combination of parameter values and seed blocks, in grid order."""
    code_hash = notebook_code_hash(spec.notebook)
    folder = sweep_folder(output_root, spec.name)
    blocks = (seed_blocks(spec.first_seed, spec.n_seeds, spec.seeds_per_task)
              if spec.first_seed is not None else [None])
    points = []
    for values in itertools.product(*spec.parameters.values()):
        for block in blocks:
            parameters = dict(zip(spec.parameters, values))
            if block is not None:
                parameters.update(seed=block[0], n_seeds=block[1])
            key = point_key(code_hash, parameters)
            points.append(Point(parameters, key, inside(folder, folder / point_folder_name(parameters, key))))
    return points


def is_done(point: Point) -> bool:
    marker = point.folder / POINT_FILE
    if not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text())
        return isinstance(content, dict) and content.get("key") == point.key
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------
# One point as a Ray task.
# ---------------------------------------------------------------------------------------------------


def run_point(notebook: str, point: Point, accepted: list[str]) -> dict:
    """Execute the notebook for one point (inside a Ray worker); returns {'ok', 'error', ...}, never raises
    for a notebook error, so the driver can report it and go on."""
    import papermill
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the kernel inherits the worker's env
    point.results_dir.mkdir(parents=True, exist_ok=True)
    point.figures_dir.mkdir(parents=True, exist_ok=True)
    parameters = dict(point.parameters)
    outputs = {"results_dir": str(point.results_dir), "figures_dir": str(point.figures_dir), "progress": False}
    parameters.update({name: value for name, value in outputs.items() if name in accepted})
    start = time.perf_counter()
    try:
        papermill.execute_notebook(notebook, str(point.notebook_path), parameters=parameters,
                                   cwd=str(Path(notebook).parent), progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as error:
        return {"ok": False, "error": f"{error.ename}: {error.evalue}"}
    except Exception as error:  # noqa: BLE001 - a kernel that died, a missing module...: report, go on
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "wall_seconds": time.perf_counter() - start, "host": os.uname().nodename,
            "omp_num_threads": os.environ["OMP_NUM_THREADS"]}


def _write_point_marker(point: Point, outcome: dict, attempts: int, notebook: Path) -> None:
    import rlr_results as results_io
    results_io.atomic_write_text(point.folder / POINT_FILE, json.dumps(results_io.json_ready({
        "key": point.key, "notebook": str(notebook), "parameters": point.parameters,
        "attempts": attempts, **{k: v for k, v in outcome.items() if k != "ok"}}), indent=1))


# ---------------------------------------------------------------------------------------------------
# The table: one row per run of every results JSON with a "runs" list.
# ---------------------------------------------------------------------------------------------------


def point_rows(point: Point) -> list[dict]:
    """One row per run of the point's results JSONs. A file that is not JSON, or a run that is not an
    object, is skipped with a warning naming it: one malformed file never aborts the sweep's table."""
    rows = []
    for path in sorted(point.results_dir.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            warnings.warn(f"{path}: not a readable JSON file, left out of the table ({error})", stacklevel=2)
            continue
        if not isinstance(content, dict) or not isinstance(content.get("runs"), list):
            continue
        for index, run in enumerate(content["runs"]):
            if not isinstance(run, dict) or not isinstance(run.get("summary", {}), dict):
                warnings.warn(f"{path}: run {index} is not an object with a summary object, left out of the table",
                              stacklevel=2)
                continue
            row = {"point": point.folder.name, **{f"param_{k}": v for k, v in point.parameters.items()},
                   "result": path.stem, "method": run.get("method"), "seed": run.get("seed")}
            row.update(run.get("summary", {}))
            rows.append(row)
    return rows


def gather_table(points: Sequence[Point], path: Path) -> int:
    """Write the tidy table of every finished point's runs (atomic CSV); returns its number of rows."""
    import pandas as pd

    import rlr_results as results_io
    rows = [row for point in points for row in point_rows(point)]
    table = pd.DataFrame(rows)
    if "diverged_at" in table:
        table["diverged_at"] = table["diverged_at"].astype("Int64")
    results_io.save_table_csv(table, path)
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# The sweep.
# ---------------------------------------------------------------------------------------------------


def run_sweep(spec: SweepSpec, output_root: Path = DEFAULT_OUTPUT_ROOT, retries: int = 1,
              progress: bool = True) -> SweepReport:
    """Run every point not done yet as a Ray task (Ray must be started), retrying failures `retries`
    times; then write table.csv and sweep.json. Never raises for a failed point."""
    import papermill
    import ray
    from tqdm.auto import tqdm

    import rlr_results as results_io
    start = time.perf_counter()
    notebook = spec.notebook.resolve()
    accepted = list(papermill.inspect_notebook(str(notebook)))
    points = expand_points(spec, Path(output_root).resolve())
    report = SweepReport()
    task = ray.remote(num_cpus=1, max_retries=0)(run_point)
    bar = tqdm(total=len(points), desc=f"sweep {spec.name}", unit="point", disable=not progress)
    pending: dict[Any, tuple[Point, int]] = {}
    attempts_of_failed: dict[int, int] = {}
    for point in points:
        if is_done(point):
            report.skipped.append(point)
            bar.update(1)
        else:
            pending[task.remote(str(notebook), point, accepted)] = (point, 1)
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        point, attempt = pending.pop(ready)
        try:
            outcome = ray.get(ready)
        except Exception as error:  # noqa: BLE001 - the worker died (e.g. out of memory)
            outcome = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
        if outcome["ok"]:
            _write_point_marker(point, outcome, attempt, spec.notebook)
            report.done.append(point)
        elif attempt <= retries:
            pending[task.remote(str(notebook), point, accepted)] = (point, attempt + 1)
            continue
        else:
            report.failed.append((point, outcome["error"]))
            attempts_of_failed[id(point)] = attempt
        bar.update(1)
        bar.set_postfix(failed=len(report.failed))
    bar.close()
    folder = sweep_folder(output_root, spec.name)
    finished = [point for point in points if point in report.done or point in report.skipped]
    report.table_path = inside(folder, folder / "table.csv")
    report.n_rows = gather_table(finished, report.table_path)
    report.wall_seconds = time.perf_counter() - start
    failed = {id(point): error for point, error in report.failed}
    results_io.atomic_write_text(inside(folder, folder / "sweep.json"), json.dumps(results_io.json_ready({
        "notebook": str(spec.notebook), "name": spec.name, "wall_seconds": report.wall_seconds,
        "counts": {"done": len(report.done), "skipped": len(report.skipped), "failed": len(report.failed)},
        "points": [{"folder": point.folder.name, "parameters": point.parameters, "key": point.key,
                    "status": ("failed" if id(point) in failed else
                               "skipped" if point in report.skipped else "done"),
                    **({"error": failed[id(point)], "attempts": attempts_of_failed[id(point)],
                        "partial_notebook": str(point.notebook_path)}
                       if id(point) in failed else {})} for point in points],
        "versions": results_io.package_versions()}), indent=1))
    return report


def print_summary(spec: SweepSpec, report: SweepReport) -> None:
    total = len(report.done) + len(report.skipped) + len(report.failed)
    print(f"sweep {spec.name}: {total} points, {len(report.done)} done, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed, in {report.wall_seconds:.1f} s")
    print(f"table: {report.table_path} ({report.n_rows} rows)")
    for point, error in report.failed:
        print(f"FAILED {point.folder.name}: {error}\n    partial notebook: {point.notebook_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path, help="the notebook to run at every point")
    parser.add_argument("grid", type=Path, help="YAML grid: parameters (lists of values), seeds {first, count}")
    parser.add_argument("--name", help="sweep folder name (default: the grid's 'name', else its file name)")
    parser.add_argument("--seeds-per-task", type=int, help="seeds per task (notebook's n_seeds); default 1")
    parser.add_argument("--output-root", type=Path, default=DEFAULT_OUTPUT_ROOT, help="default results/sweeps")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--retries", type=int, default=1, help="retries of a failed point (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.notebook, args.grid, args.name, args.seeds_per_task)
    except (TypeError, ValueError, OSError, yaml.YAMLError) as error:
        parser.error(str(error))
    import ray

    from rlr_peers import start_ray
    started = start_ray(args.address, args.num_cpus)
    try:
        report = run_sweep(spec, args.output_root, args.retries, progress=not args.no_progress)
    finally:
        if started:
            ray.shutdown()
    print_summary(spec, report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
