"""LRControlVectorEnv (K tasks on the batched engine) against K single LRControlEnvs: env-steps per second.

    .venv/bin/python benchmarks/bench_vector_env.py [--ks 1 8 32 128] [--decisions 200] [--repeats 2]

For each K, random actions drive K tasks for --decisions env steps twice: through one LRControlVectorEnv
and through K LRControlEnvs stepped one after another (what gymnasium's SyncVectorEnv does), both in
this process on one torch thread, with the controller's schedule (control features, a decision every
--interval optimiser steps) and the original's (a decision every step). Reported: env-steps per second
(one env step of one task = one decision) and optimiser steps per second, best of --repeats. Writes
benchmarks/results/bench_vector_env.json atomically, with the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rlr_stacked  # noqa: E402
import rlr_core as rc  # noqa: E402
import rlr_env  # noqa: E402
import rlr_results as results_io  # noqa: E402


def schedules(interval: int, decisions: int) -> dict[str, rc.ScheduleConfig]:
    """The two schedules timed, each long enough that no episode ends during the timing."""
    return {f"control, a decision every {interval} steps": rc.ScheduleConfig(
                steps=interval * (decisions + 1), decision_interval=interval, features="control",
                lr_factors=(0.5, 1.0, 2.0)),
            "original (raw features, a decision every step)": rc.ScheduleConfig(steps=decisions + 1)}


def time_vector(schedule: rc.ScheduleConfig, k: int, actions: np.ndarray) -> float:
    env = rlr_env.LRControlVectorEnv(k, schedule=schedule)
    env.reset(seed=0)
    started = time.perf_counter()
    for row in actions:
        env.step(row)
    return time.perf_counter() - started


def time_singles(schedule: rc.ScheduleConfig, k: int, actions: np.ndarray) -> float:
    envs = [rlr_env.LRControlEnv(schedule=schedule) for _ in range(k)]
    for index, env in enumerate(envs):
        env.reset(seed=index)
    started = time.perf_counter()
    for row in actions:
        for env, action in zip(envs, row):
            env.step(int(action))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128], help="tasks per vector env")
    parser.add_argument("--decisions", type=int, default=200, help="env steps timed per K")
    parser.add_argument("--interval", type=int, default=10, help="optimiser steps per decision (controller)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings, both sides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rlr_stacked.reuse_freed_memory()  # an entry point's allocator setting (see its docstring)
    rows = []
    for label, schedule in schedules(args.interval, args.decisions).items():
        for k in args.ks:
            actions = np.random.default_rng(k).integers(0, schedule.n_actions, (args.decisions, k))
            time_vector(schedule, k, actions[:5]), time_singles(schedule, min(k, 2), actions[:5, :2])  # warm
            vector, singles = math.inf, math.inf
            for _ in range(args.repeats):  # interleaved, so both sides see the same machine
                vector = min(vector, time_vector(schedule, k, actions))
                singles = min(singles, time_singles(schedule, k, actions))
            env_steps = k * args.decisions
            rows.append({"schedule": label, "K": k, "vector_env_steps_per_s": env_steps / vector,
                         "single_envs_env_steps_per_s": env_steps / singles, "speedup": singles / vector,
                         "vector_optimiser_steps_per_s": env_steps * schedule.decision_interval / vector})
            print(f"{label} K={k}: {rows[-1]['speedup']:.1f}x", file=sys.stderr, flush=True)
    load = os.getloadavg()
    lines = ["| schedule | K | vector env: env-steps/s | K single envs: env-steps/s | speed-up | vector env: "
             "optimiser steps/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['schedule']} | {row['K']} | {row['vector_env_steps_per_s']:.0f} | "
              f"{row['single_envs_env_steps_per_s']:.0f} | {row['speedup']:.1f}x | "
              f"{row['vector_optimiser_steps_per_s']:.0f} |" for row in rows]
    table = "\n".join(lines)
    print(table)
    readme = (f"**The vector environment** (`benchmarks/bench_vector_env.py`, {args.decisions} env steps of random "
              f"actions per K, one thread, best of {args.repeats}; load average "
              + ", ".join(f"{value:.1f}" for value in load) + "):\n\n" + table)
    results_io.atomic_write_text(ROOT / "benchmarks" / "results" / "bench_vector_env.json",
                                 json.dumps({"rows": rows, "table_markdown": table, "readme_markdown": readme,
                                             "args": vars(args),
                                             "load_average": load, "versions": results_io.package_versions()},
                                            indent=1))


if __name__ == "__main__":
    main()
