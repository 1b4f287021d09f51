"""What does a sweep on Ray cost and gain? Speed-up of a 2-worker local sweep over the same points run one
after another, and the per-task overhead of Ray + papermill.

    .venv/bin/python benchmarks/bench_sweep.py [--steps 1500] [--points 4] [--workers 2]

Runs notebook 02 at `points` seeds (one seed per point) three ways on this machine: one after another
with papermill (no Ray), as a sweep on a local Ray instance with `workers` CPUs, and, for the overhead,
a 1-step point as a sweep task, with papermill directly, and as a plain Python script of the notebook's
code cells (no kernel). Prints a markdown table and writes benchmarks/results/bench_sweep.json
(atomically). Everything is written under a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
import papermill  # noqa: E402
import ray  # noqa: E402

import rlr_peers  # noqa: E402
import rlr_results as results_io  # noqa: E402
import sweep  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "02_rlr_agent.ipynb"


def run_papermill(steps: int, seed: int, folder: Path) -> float:
    """Seconds to execute the notebook once with papermill, as a sweep task does, without Ray."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK), str(folder / "notebook.ipynb"), cwd=str(NOTEBOOK.parent),
                               parameters={"steps": steps, "seed": seed, "n_seeds": 1, "progress": False,
                                           "results_dir": str(folder), "figures_dir": str(folder)},
                               progress_bar=False, log_output=False)
    return time.perf_counter() - start


def run_as_script(steps: int, folder: Path) -> float:
    """Seconds to run the notebook's code cells as one Python script in a fresh process (no kernel)."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]
    cells[0] = (f"seed, n_seeds, steps, device = 0, 1, {steps}, 'cpu'\nprogress = False\n"
                f"results_dir = figures_dir = {str(folder)!r}")
    script = folder / "notebook.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + "\n\n".join(cells))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script)], cwd=NOTEBOOK.parent, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def write_grid(folder: Path, steps: int, points: int) -> Path:
    grid = folder / f"grid_{steps}.yaml"
    grid.write_text(f"parameters:\n  steps: [{steps}]\nseeds: {{first: 0, count: {points}}}\nseeds_per_task: 1\n")
    return grid


RESULTS = ROOT / "benchmarks" / "results" / "bench_sweep.json"


def readme_markdown(measured: dict) -> str:
    """The README's part of these results (readme.py places it as written)."""
    return "\n".join([
        f"**Sweeps on Ray** (`benchmarks/bench_sweep.py`, {measured['points']} points of notebook 02, "
        f"{measured['steps']} steps each):", "", "| what | seconds |", "|---|---|",
        f"| {measured['points']} points one after another (papermill, no Ray) | {measured['sequential_seconds']:.1f} |",
        f"| the same points as a sweep on {measured['workers']} local Ray workers | {measured['sweep_seconds']:.1f} "
        f"({measured['speedup']:.2f}x) |",
        f"| starting the local Ray instance (once per sweep) | {measured['ray_start_seconds']:.1f} (with it: "
        f"{measured['speedup_with_ray_start']:.2f}x) |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="agent steps per point (default 1500)")
    parser.add_argument("--points", type=int, default=4, help="points (one seed each, default 4)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="measure nothing: rewrite the stored results' README part (readme_markdown)")
    args = parser.parse_args()
    if args.markdown_only:
        results_io.save_benchmark(RESULTS, json.loads(RESULTS.read_text()), readme_markdown)
        return
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as temp:
        work = Path(temp)
        sequential = [run_papermill(args.steps, seed, work / f"sequential_{seed}") for seed in range(args.points)]
        start = time.perf_counter()
        rlr_peers.start_ray(num_cpus=args.workers)
        ray_start = time.perf_counter() - start
        try:
            spec = sweep.load_spec(NOTEBOOK, write_grid(work, args.steps, args.points), name="bench")
            report = sweep.run_sweep(spec, work / "sweeps", progress=False)
            assert report.ok and len(report.done) == args.points
            tiny = sweep.run_sweep(sweep.load_spec(NOTEBOOK, write_grid(work, 1, 1), name="tiny"),
                                   work / "sweeps", progress=False)
            assert tiny.ok
        finally:
            ray.shutdown()
        tiny_papermill = run_papermill(1, 0, work / "tiny_papermill")
        tiny_script = run_as_script(1, work / "tiny_script")
    measured = {
        "steps": args.steps, "points": args.points, "workers": args.workers, "cpus": os.cpu_count(),
        "sequential_seconds": sum(sequential), "sweep_seconds": report.wall_seconds,
        "ray_start_seconds": ray_start,
        "speedup": sum(sequential) / report.wall_seconds,
        "speedup_with_ray_start": sum(sequential) / (report.wall_seconds + ray_start),
        "tiny_point_sweep_seconds": tiny.wall_seconds, "tiny_point_papermill_seconds": tiny_papermill,
        "tiny_point_script_seconds": tiny_script,
        "ray_overhead_seconds": tiny.wall_seconds - tiny_papermill,
        "papermill_overhead_seconds": tiny_papermill - tiny_script,
        "versions": {**results_io.package_versions(), "ray": ray.__version__, "papermill": papermill.__version__},
    }
    measured = results_io.json_ready(measured)
    results_io.save_benchmark(RESULTS, measured, readme_markdown)
    print(f"| what | seconds |\n|---|---|\n"
          f"| {args.points} points x {args.steps} steps, one after another (papermill) | {sum(sequential):.1f} |\n"
          f"| same points, sweep on {args.workers} Ray workers (Ray already started) | {report.wall_seconds:.1f} |\n"
          f"| local Ray start-up (once per sweep) | {ray_start:.1f} |\n"
          f"| 1-step point: sweep task / papermill / plain script | {tiny.wall_seconds:.1f} / "
          f"{tiny_papermill:.1f} / {tiny_script:.1f} |\n\n"
          f"speed-up {measured['speedup']:.2f}x ({measured['speedup_with_ray_start']:.2f}x with Ray start-up); "
          f"overhead per task: Ray {measured['ray_overhead_seconds']:.1f} s, "
          f"papermill {measured['papermill_overhead_seconds']:.1f} s")


if __name__ == "__main__":
    main()
