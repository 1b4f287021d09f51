"""The learning-rate-free optimisers batched (rlr_batched.train_own_optimizers: one forward and backward
pass for K runs, one optimiser instance per run) against the reference loop (rlr_engine.train_full_batch,
one run at a time), on one thread, at the study's knobs' middle values.

    .venv/bin/python benchmarks/bench_lr_free.py [--steps 1000] [--ks 8 16 32]

Prints a markdown table (milliseconds per run, and the speed-up) and writes it to
benchmarks/results/bench_lr_free.json. The reference is timed over 4 seeds, each batch once.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import rlr_batched  # noqa: E402
import rlr_engine as engine  # noqa: E402
import rlr_methods as methods  # noqa: E402
import rlr_results as results_io  # noqa: E402

KNOBS = {"schedule_free": {"lr": 3e-3, "warmup_fraction": 0.05}, "prodigy": {"d_coef": 1.0},
         "d_adaptation": {"lr": 1.0}}
"""Middle-of-the-range knobs (the timing does not depend on them unless a run diverges)."""


def seconds_per_run(run, n_runs: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / n_runs


def measure(steps: int, ks: list[int]) -> dict:
    config, rows = engine.Config(), []
    for key in methods.keys("lr_free"):
        make = methods.get(key).optimizer(KNOBS[key], steps)
        reference = seconds_per_run(lambda: [engine.train_full_batch(config.with_seed(seed), 1.0, steps, key,
                                                                     make_optimizer=make) for seed in range(4)], 4)
        for k in ks:
            batched = seconds_per_run(lambda: rlr_batched.train_own_optimizers(config, range(k), make, steps, key), k)
            rows.append({"optimiser": methods.get(key).label, "K": k, "reference ms per run": 1e3 * reference,
                         "batched ms per run": 1e3 * batched, "speed-up": reference / batched})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {"steps": steps, "rows": rows, "machine": f"{platform.machine()}, cpu, 1 thread",
            "git_commit": commit, "git_dirty": dirty}


def readme_markdown(measured: dict) -> str:
    rows = measured["rows"]
    lines = ["| optimiser | K | reference loop, ms per run | batched, ms per run | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['optimiser']} | {r['K']} | {r['reference ms per run']:.0f} | {r['batched ms per run']:.0f} | "
              f"{r['speed-up']:.1f}x |" for r in rows]
    low, high = min(r["speed-up"] for r in rows), max(r["speed-up"] for r in rows)
    return (f"**The learning-rate-free optimisers, batched** (`benchmarks/bench_lr_free.py`, {measured['steps']} "
            f"steps, {measured['machine']}): K runs share one forward and backward pass, each with its own "
            f"optimiser instance from its package; {low:.1f}x to {high:.1f}x the reference loop's speed.\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()
    if args.steps < 1 or any(k < 1 for k in args.ks):
        parser.error("--steps and every --ks must be >= 1")
    torch.set_num_threads(1)  # an entry point's job: the library never sets it
    measured = measure(args.steps, args.ks)
    path = results_io.save_benchmark(ROOT / "benchmarks/results/bench_lr_free.json", measured, readme_markdown)
    print(readme_markdown(measured))
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
