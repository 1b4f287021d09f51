"""MNIST-1D's batched loop (rlr_tasks.train_mnist1d_batched: K runs on stacked parameters) against its
reference loop (rlr_tasks.train_mnist1d, one run at a time), on one thread, for each model.

    .venv/bin/python benchmarks/bench_mnist1d.py [--steps 500] [--ks 8 16] [--save]

Prints a markdown table of milliseconds per run (the loops' own wall_seconds: the data are built, and
memoised, before the clock starts) and the speed-up; --save also writes it to
benchmarks/results/bench_mnist1d.json. The reference is timed over 2 seeds, each batch once.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import rlr_results as results_io  # noqa: E402
import rlr_tasks as tasks  # noqa: E402

MODELS = {"paper MLP (residual)": {"model": "mlp"}, "plain MLP": {"model": "mlp", "residual": False},
          "paper CNN": {"model": "cnn"}}
"""The architectures timed: the paper's two, and the plain MLP that StackedModel runs as batched matmuls."""


def measure(steps: int, ks: list[int]) -> dict:
    rows = []
    for seed in range(max(ks)):
        tasks.mnist1d_data(seed)  # memoised: the generator's ~2 s a seed stay out of the timings
    for label, fields in MODELS.items():
        config = tasks.MNIST1DConfig(steps=steps, **fields)
        reference = sum(tasks.train_mnist1d(seed, config).wall_seconds for seed in range(2)) / 2
        for k in ks:
            batched = tasks.train_mnist1d_batched(range(k), config)[0].wall_seconds
            rows.append({"model": label, "K": k, "reference ms per run": 1e3 * reference,
                         "batched ms per run": 1e3 * batched, "speed-up": reference / batched})
    return {"steps": steps, "rows": rows, "machine": f"{platform.machine()}, cpu, 1 thread"}


def readme_markdown(measured: dict) -> str:
    lines = ["| model | K | reference loop, ms per run | batched, ms per run | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['K']} | {r['reference ms per run']:.0f} | {r['batched ms per run']:.0f} | "
              f"{r['speed-up']:.1f}x |" for r in measured["rows"]]
    return (f"**MNIST-1D, batched** (`benchmarks/bench_mnist1d.py`, {measured['steps']} steps of batch 100, "
            f"{measured['machine']}):\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/bench_mnist1d.json")
    args = parser.parse_args()
    if args.steps < 1 or any(k < 1 for k in args.ks):
        parser.error("--steps and every --ks must be >= 1")
    torch.set_num_threads(1)  # an entry point's job: the library never sets it
    measured = measure(args.steps, args.ks)
    print(readme_markdown(measured))
    if args.save:
        path = results_io.save_benchmark(ROOT / "benchmarks/results/bench_mnist1d.json", measured, readme_markdown)
        print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
