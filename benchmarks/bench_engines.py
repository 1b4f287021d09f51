"""Today's batched engine against an earlier commit's, side by side: the same workloads, alternating.

    .venv/bin/python benchmarks/bench_engines.py [--before REF] [--ks 32 128] [--rounds 3]

Checks out REF (default: the last commit before the any-model engine, 'd8dd411') into a temporary git
worktree, then runs that tree's benchmarks/bench_batched.py and bench_vector_env.py and this tree's, in
turn, --rounds times (each side's scripts time their own engine; alternating means both see the same
machine). Reported per workload and K: the best batched seed-steps (or env-steps) per second of each
side and their ratio, before / now (above 1: now is slower). Writes benchmarks/results/bench_engines.json
atomically; the worktree is removed afterwards (only the temporary folder this script made).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlr_results as results_io  # noqa: E402

BEFORE = "d8dd411"
"""The last commit with the hand-derived engine (StackedMLP, torch._fused_adam_)."""


def run_benchmarks(tree: Path, ks: list[int], steps: int) -> dict[tuple[str, int], float]:
    """Batched rates of one tree's two benchmarks: (workload, K) -> steps per second."""
    rates: dict[tuple[str, int], float] = {}
    ks_args = [str(k) for k in ks]
    subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_batched.py"), "--ks", *ks_args,
                    "--steps", str(steps), "--repeats", "1", "--reference-seeds", "1"], check=True,
                   capture_output=True, cwd=tree)
    for row in json.loads((tree / "benchmarks" / "results" / "bench_batched.json").read_text())["rows"]:
        rates[(f"bench_batched: {row['run']}", row["K"])] = row["batched_seed_steps_per_s"]
    subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_vector_env.py"), "--ks", *ks_args,
                    "--repeats", "1"], check=True, capture_output=True, cwd=tree)
    for row in json.loads((tree / "benchmarks" / "results" / "bench_vector_env.json").read_text())["rows"]:
        rates[(f"bench_vector_env: {row['schedule']}", row["K"])] = row["vector_env_steps_per_s"]
    return rates


RESULTS = ROOT / "benchmarks" / "results" / "bench_engines.json"


def readme_markdown(measured: dict) -> str:
    """The README's part of these results (readme.py places it as written)."""
    worst = max(measured["rows"], key=lambda row: row["before_over_now"])
    best = min(measured["rows"], key=lambda row: row["before_over_now"])
    return (f"**The any-model engine against the hand-derived one** (`benchmarks/bench_engines.py`: today's "
            f"StackedModel, autograd and torch's functional Adam, against commit {measured['args']['before']}'s "
            f"hand-derived gradients and private fused-Adam call, on the same workloads, alternating): from "
            f"{best['before_over_now']:.2f}x ({best['workload']}, K = {best['K']}) to {worst['before_over_now']:.2f}x "
            f"slower ({worst['workload']}, K = {worst['K']}).\n\n" + measured["table_markdown"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the git ref of the engine compared with")
    parser.add_argument("--ks", type=int, nargs="+", default=[32, 128], help="runs per batched call")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per seed (bench_batched)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations; the best of each side counts")
    parser.add_argument("--markdown-only", action="store_true",
                        help="measure nothing: rewrite the stored results' README part (readme_markdown)")
    args = parser.parse_args()
    if args.markdown_only:
        results_io.save_benchmark(RESULTS, json.loads(RESULTS.read_text()), readme_markdown)
        return
    best: dict[str, dict[tuple[str, int], float]] = {"before": {}, "now": {}}
    with tempfile.TemporaryDirectory(prefix="rlr_engine_before_") as folder:
        before_tree = Path(folder) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
                       check=True, capture_output=True)
        try:
            for _ in range(args.rounds):
                for side, tree in (("before", before_tree), ("now", ROOT)):
                    for key, rate in run_benchmarks(tree, args.ks, args.steps).items():
                        best[side][key] = max(best[side].get(key, 0.0), rate)
                    print(f"round done: {side}", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)],
                           check=False, capture_output=True)
    rows = [{"workload": workload, "K": k, "before_per_s": best["before"][(workload, k)],
             "now_per_s": best["now"][(workload, k)],
             "before_over_now": best["before"][(workload, k)] / best["now"][(workload, k)]}
            for workload, k in best["now"] if (workload, k) in best["before"]]
    load = os.getloadavg()
    lines = [f"| workload | K | {args.before} steps/s | now steps/s | {args.before} / now |", "|---|---|---|---|---|"]
    lines += [f"| {row['workload']} | {row['K']} | {row['before_per_s']:.0f} | {row['now_per_s']:.0f} | "
              f"{row['before_over_now']:.2f} |" for row in rows]
    lines.append(f"\nBest of {args.rounds} alternating rounds, 1 torch thread; load average at the end: "
                 f"{load[0]:.2f} (1 min), {load[1]:.2f} (5 min).")
    table = "\n".join(lines)
    print(table)
    results_io.save_benchmark(RESULTS, {"rows": rows, "table_markdown": table, "load_average": load,
                                        "args": {k: v for k, v in vars(args).items() if k != "markdown_only"},
                                        "versions": results_io.package_versions()}, readme_markdown)


if __name__ == "__main__":
    main()
