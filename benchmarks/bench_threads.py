"""How many torch threads suit these tiny models? Times the three single-run loops at 1 and 2 threads.

    .venv/bin/python benchmarks/bench_threads.py [--epochs 500] [--steps 2000]

Prints a markdown table (seconds per epoch / per step, and the speed-up of 1 thread over 2) and writes
it to benchmarks/results/bench_threads.json. Each configuration runs in a fresh subprocess, because
torch.set_num_threads does not fully undo thread-pool start-up within one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlr_results as results_io  # noqa: E402

ONE_RUN = """
import json, sys
import torch
import rlr_core as rc
import rlr_engine as engine
mode, threads, epochs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)  # an entry point's job: the library never sets it
config = engine.Config(baseline=engine.BaselineConfig(epochs=epochs), schedule=rc.ScheduleConfig(steps=steps))
if mode == "baseline":
    result, units = engine.train_baseline(config), epochs
elif mode == "full_batch":
    result, units = engine.train_full_batch(config, 1e-3, steps), steps
else:
    result, units = engine.train_rl_scheduled(config), steps
print(json.dumps({"seconds": result.wall_seconds, "units": units}))
"""


def time_one(mode: str, threads: int, epochs: int, steps: int) -> float:
    """Seconds per epoch (baseline) or per step (others), measured in a fresh process."""
    output = subprocess.run([sys.executable, "-c", ONE_RUN, mode, str(threads), str(epochs), str(steps)],
                            capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    return measured["seconds"] / measured["units"]


RESULTS = ROOT / "benchmarks" / "results" / "bench_threads.json"


def readme_markdown(measured: dict) -> str:
    """The README's part of these results (readme.py places it as written)."""
    lines = [f"**Threads** (`benchmarks/bench_threads.py`, {measured['args']['epochs']} epochs / "
             f"{measured['args']['steps']} steps, each setting in a fresh process):", "",
             "| run | ms, 1 thread | ms, 2 threads | 1 thread faster by |", "|---|---|---|---|"]
    lines += [f"| {row['run']} (per {row['unit']}) | {row['ms_per_unit_1_thread']:.3f} | "
              f"{row['ms_per_unit_2_threads']:.3f} | {row['speedup_of_1_thread']:.2f}x |" for row in measured["rows"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="baseline epochs per measurement")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch / agent steps per measurement")
    parser.add_argument("--markdown-only", action="store_true",
                        help="measure nothing: rewrite the stored results' README part (readme_markdown)")
    args = parser.parse_args()
    if args.markdown_only:
        results_io.save_benchmark(RESULTS, json.loads(RESULTS.read_text()), readme_markdown)
        return
    rows = []
    for mode, unit, full in (("baseline", "epoch", 10_000), ("full_batch", "step", 10_000),
                             ("agent", "step", 10_000)):
        per_unit = {threads: time_one(mode, threads, args.epochs, args.steps) for threads in (1, 2)}
        rows.append({"run": mode, "unit": unit, "ms_per_unit_1_thread": 1e3 * per_unit[1],
                     "ms_per_unit_2_threads": 1e3 * per_unit[2], "speedup_of_1_thread": per_unit[2] / per_unit[1],
                     "projected_full_run_seconds_1_thread": per_unit[1] * full})
    print("| run | ms per unit, 1 thread | 2 threads | 1 thread faster by | full run (10 000), 1 thread |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} (per {row['unit']}) | {row['ms_per_unit_1_thread']:.3f} | "
              f"{row['ms_per_unit_2_threads']:.3f} | {row['speedup_of_1_thread']:.2f}x | "
              f"{row['projected_full_run_seconds_1_thread']:.0f} s |")
    measured = {"rows": rows, "args": {"epochs": args.epochs, "steps": args.steps},
                "versions": results_io.package_versions()}
    results_io.save_benchmark(RESULTS, measured, readme_markdown)


if __name__ == "__main__":
    main()
