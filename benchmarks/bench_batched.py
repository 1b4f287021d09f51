"""Reference loop vs batched engine: seed-steps per second, side by side in one process, on 1 thread.

    .venv/bin/python benchmarks/bench_batched.py [--steps 300] [--ks 1 8 32 128] [--repeats 2] [--kernels]

For each run type (the DQN-scheduled run in both variants, and the mini-batch baseline) and each K, it
times K seeds through rlr_batched and min(K, --reference-seeds) seeds through rlr_core's loop (the
reference's speed does not depend on K; it runs one seed at a time). Times are the training loops'
own wall_seconds (setup excluded on both sides; the batched call's total, setup included, is in the
JSON), best of --repeats. Prints a markdown table and writes it atomically to
benchmarks/results/bench_batched.json. Other processes on the machine slow both sides; the load
average is recorded with the results.

--kernels also times one MaclaurinNet forward + backward (full batch) per run three ways: the engine's
(StackedModel: vmap(functional_call) forward, autograd backward), batched matmuls written out under
autograd, and torch.func's vmap(grad): the measurement behind the engine's choice.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: E402

import rlr_batched  # noqa: E402
import rlr_stacked  # noqa: E402
import rlr_core as rc  # noqa: E402
import rlr_engine as engine  # noqa: E402
import rlr_results as results_io  # noqa: E402

RUN_TYPES = ("rl_described", "rl_as_coded", "baseline_minibatch")


def make_config(run_type: str, steps: int) -> tuple[engine.Config, int]:
    """The config of a short run, and how many optimiser steps (seed-steps per seed) it takes."""
    if run_type == "baseline_minibatch":
        batches_per_epoch = math.ceil(rc.TaskConfig().n_examples / engine.BaselineConfig().batch_size)
        epochs = math.ceil(steps / batches_per_epoch)
        return engine.Config(baseline=engine.BaselineConfig(epochs=epochs)), epochs * batches_per_epoch
    variant = run_type.removeprefix("rl_")
    return engine.Config(schedule=rc.ScheduleConfig(steps=steps), dqn=rc.DQNConfig(variant=variant)), steps


def reference_seconds(run_type: str, config: engine.Config, seeds: list[int]) -> float:
    """Loop seconds of rlr_core's single runs, summed over seeds."""
    train = engine.train_baseline if run_type == "baseline_minibatch" else engine.train_rl_scheduled
    return sum(train(dataclasses.replace(config, seed=seed)).wall_seconds for seed in seeds)


def batched_seconds(run_type: str, config: engine.Config, seeds: list[int]) -> tuple[float, float]:
    """(loop seconds, whole-call seconds with setup) of one rlr_batched call over all seeds."""
    train = rlr_batched.train_baseline if run_type == "baseline_minibatch" else rlr_batched.train_rl_scheduled
    started = time.perf_counter()
    results = train(config, seeds)
    total = time.perf_counter() - started
    return results[0].wall_seconds * len(seeds), total  # wall_seconds is the amortised share


def forward_backward_timings(ks: list[int], repeats: int = 6) -> list[dict]:
    """Microseconds per run for one full-batch MaclaurinNet loss + gradient, three implementations."""
    task, rows = rc.TaskConfig(), []
    for k in ks:
        models = [rc.make_model(task, seed) for seed in range(k)]
        inputs, targets = torch.randn(k, task.n_examples, task.n_points), torch.randn(k, task.n_examples, 5)
        net = rlr_stacked.StackedModel(models, torch.float32, torch.device("cpu"))
        weights = [block.clone().requires_grad_() for name, block in net.tensors.items() if name.endswith("weight")]
        biases = [block.clone().requires_grad_() for name, block in net.tensors.items() if name.endswith("bias")]

        def autograd_bmm() -> tuple[torch.Tensor, ...]:
            hidden = inputs
            for layer, (weight, bias) in enumerate(zip(weights, biases)):
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
                hidden = hidden.relu() if layer < len(weights) - 1 else hidden
            return torch.autograd.grad(((hidden - targets) ** 2).mean(dim=(1, 2)).sum(), weights + biases)

        params, _ = stack_module_state(models)
        template = copy.deepcopy(models[0]).to("meta")
        def loss_of(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(functional_call(template, p, (x,)), y)

        vmapped_grad = vmap(grad(loss_of))
        candidates = {"engine (vmap forward, autograd)": lambda: rlr_stacked.mse_loss_and_grad(net, inputs, targets),
                      "autograd bmm": autograd_bmm,
                      "torch.func vmap(grad)": lambda: vmapped_grad(params, inputs, targets)}
        best = dict.fromkeys(candidates, math.inf)
        for _ in range(repeats):  # interleaved, best of repeats
            for name, run in candidates.items():
                calls = max(3, 128 // k)
                run()
                started = time.perf_counter()
                for _ in range(calls):
                    run()
                best[name] = min(best[name], (time.perf_counter() - started) / calls / k * 1e6)
        rows.append({"K": k, **{f"{name} us/run": value for name, value in best.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per seed")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128], help="seeds per batched call")
    parser.add_argument("--reference-seeds", type=int, default=2, help="seeds timed through the reference")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings, both sides")
    parser.add_argument("--run-types", nargs="+", default=list(RUN_TYPES), choices=RUN_TYPES)
    parser.add_argument("--kernels", action="store_true",
                        help="also time MaclaurinNet forward+backward: the engine vs autograd bmm vs vmap(grad)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rlr_stacked.reuse_freed_memory()  # an entry point's allocator setting (see its docstring)
    kernel_rows = forward_backward_timings(args.ks) if args.kernels else []
    rows = []
    for run_type in args.run_types:
        config, seed_steps = make_config(run_type, args.steps)
        warm_config, _ = make_config(run_type, 20)
        reference_seconds(run_type, warm_config, [0])
        batched_seconds(run_type, warm_config, [0, 1])
        for k in args.ks:
            seeds = list(range(k))
            reference_seeds = seeds[:max(1, min(k, args.reference_seeds))]
            reference, batched, batched_total = math.inf, math.inf, math.inf
            for _ in range(args.repeats):  # interleaved, so both sides see the same machine
                reference = min(reference, reference_seconds(run_type, config, reference_seeds))
                loop, total = batched_seconds(run_type, config, seeds)
                batched, batched_total = min(batched, loop), min(batched_total, total)
            reference_rate = len(reference_seeds) * seed_steps / reference
            batched_rate = k * seed_steps / batched
            rows.append({"run": run_type, "K": k, "steps_per_seed": seed_steps,
                         "reference_seed_steps_per_s": reference_rate, "batched_seed_steps_per_s": batched_rate,
                         "ratio": batched_rate / reference_rate,
                         "reference_us_per_seed_step": 1e6 / reference_rate,
                         "batched_us_per_seed_step": 1e6 / batched_rate,
                         "batched_call_seconds_with_setup": batched_total,
                         "reference_seeds_timed": len(reference_seeds)})
            print(f"{run_type} K={k}: ratio {rows[-1]['ratio']:.1f}x", file=sys.stderr, flush=True)
    load = os.getloadavg()
    lines = ["| run | K | reference seed-steps/s | batched seed-steps/s | ratio | reference us/seed-step "
             "| batched us/seed-step |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['K']} | {row['reference_seed_steps_per_s']:.0f} | "
                     f"{row['batched_seed_steps_per_s']:.0f} | {row['ratio']:.1f}x | "
                     f"{row['reference_us_per_seed_step']:.0f} | {row['batched_us_per_seed_step']:.0f} |")
    lines.append(f"\n{args.steps} steps per seed, 1 torch thread, best of {args.repeats}; "
                 f"load average at the end: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min).")
    if kernel_rows:
        names = [name for name in kernel_rows[0] if name != "K"]
        lines += ["", "MaclaurinNet full-batch loss + gradient, microseconds per run:", "",
                  "| K | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {row['K']} | " + " | ".join(f"{row[name]:.0f}" for name in names) + " |"
                  for row in kernel_rows]
    table = "\n".join(lines)
    print(table)
    readme = (f"**The vectorised engine** (`benchmarks/bench_batched.py`, {args.steps} steps per seed, one thread, best "
              f"of {args.repeats}; load average " + ", ".join(f"{value:.1f}" for value in load) + "):\n\n" + table)
    results_io.atomic_write_text(ROOT / "benchmarks" / "results" / "bench_batched.json",
                         json.dumps({"rows": rows, "forward_backward": kernel_rows, "table_markdown": table,
                                     "readme_markdown": readme, "args": vars(args), "load_average": load,
                                     "versions": results_io.package_versions()}, indent=1))


if __name__ == "__main__":
    main()
