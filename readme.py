"""Write the README's generated blocks from the committed results, so that its numbers are data.

Every block between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in README.md is produced here,
from results/ (the notebooks' output), the executed notebooks' own records (papermill durations) and
benchmarks/results/ (the timing scripts' output); prose outside the blocks states no measured number
(tests/test_readme.py checks both).

    .venv/bin/python readme.py           # rewrite the blocks (make reproduce runs this last)
    .venv/bin/python readme.py --check   # exit 1 when README.md differs from what the results give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd

import rlr_engine as engine
import rlr_methods as registry
import rlr_provenance as provenance
import rlr_report as report
import rlr_results as results_io
import rlr_study as study

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = provenance.notebook_names(ROOT)  # notebooks/[0-9][0-9]_*.ipynb in order: the one list (Makefile, site)
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def one_run_block(root: Path) -> str:
    """Notebooks 01-03: the table, the original's ratio beside ours, the verdicts, what the agents did."""
    comparison = read_json(root / "results" / "comparison.json")
    table = pd.DataFrame(comparison["table"])
    shown = report.formatted(table, {"final MSE": ".2e", "median last 100": ".2e", "optimiser steps": ",d",
                                     "passes over data": ",d"}).drop(columns=["seeds", "wall seconds per run"])
    original = study.ORIGINAL_RESULT
    ratios = comparison["ratios"]
    ratio_rows = pd.DataFrame([
        {"comparison": "same passes over the data (the original's)", "described agent": f"{ratios['same_passes_described']:.2f}",
         "as-coded agent": f"{ratios['same_passes_as_coded']:.2f}"},
        {"comparison": "same optimiser steps (full-batch Adam at 1e-3)", "described agent": f"{ratios['same_steps_described']:.2f}",
         "as-coded agent": f"{ratios['same_steps_as_coded']:.2f}"}])
    agents = {label: results_io.load_results(root / "results" / f"{name}.json")
              for label, name in (("Described agent", "rl_described"), ("As-coded agent", "rl_as_coded"))}
    grid_size = len(engine.Config().schedule.lr_grid)
    return "\n\n".join([
        f"Seed {comparison['seeds'][0]}, the original's settings (notebooks 01-03):",
        report.markdown_table(shown),
        f"The original reported baseline MSE / agent MSE = {original['baseline_final_mse']:.2e} / "
        f"{original['agent_final_mse']:.2e} = {original['baseline_final_mse'] / original['agent_final_mse']:.2f} "
        "(\"two times more accurate\"). The same ratio here, on the final values (above 1: the agent is better):",
        report.markdown_table(ratio_rows),
        *[f"- {verdict}" for verdict in comparison["verdicts"].values()],
        *[report.describe_agent_run(runs, grid_size, label) for label, runs in agents.items()]])


def verdict_block(root: Path) -> str:
    """Notebook 04: tuning, the per-method tables, the pre-registered comparisons and the reading."""
    summary = read_json(root / "results" / "benchmark_summary.json")
    setup = summary["study"]
    claims = pd.DataFrame(summary["claims"])
    references = {"baseline": study.BASELINE, "tuned constant": study.TUNED}
    tables = {metric: pd.DataFrame(rows).set_index("method") for metric, rows in summary["summaries"].items()}
    return "\n\n".join([
        f"{setup['n_eval_seeds']} evaluation seeds ({setup['first_eval_seed']}-"
        f"{setup['first_eval_seed'] + setup['n_eval_seeds'] - 1}), each with its own data, initial weights, "
        f"validation and test sets ({setup['n_heldout_examples']} polynomials each); every tuned family got "
        f"{setup['tuning_budget']} configurations on {setup['n_tuning_seeds']} tuning seeds "
        f"({setup['first_tuning_seed']}-{setup['first_tuning_seed'] + setup['n_tuning_seeds'] - 1}), chosen on "
        f"validation MSE; {setup['steps']:,} optimiser steps.",
        report.tuning_markdown(summary["chosen"], summary["edges"], setup["tuning_budget"]),
        "Test MSE after the same optimiser steps:",
        report.summary_markdown(tables["test_mse"], "test_mse", references),
        "Training MSE (median of the last 100 losses) after the same optimiser steps:",
        report.summary_markdown(tables["train_median_last_100"], "train_median_last_100", references),
        "The pre-registered comparisons (ratio = reference MSE / agent MSE, paired by seed; above 1: the agent "
        "is better; Holm-adjusted Wilcoxon signed-rank tests over all of them):",
        report.claims_markdown(claims),
        summary["headroom"]["reading"],
        *controller_parts(summary),
        summary["seed_zero"]])


def controller_parts(summary: dict) -> list[str]:
    """Notebook 04's learned controllers: every controller trained with its validation MSE, their cost,
    and the generated reading."""
    controllers = summary["controllers"]
    tuning = pd.DataFrame(controllers["tuning"])
    cost = pd.DataFrame(controllers["cost"])
    return [f"**Learned controllers** (a decision every {controllers['config']['decision_interval']} optimiser steps, "
            f"trained on {controllers['config']['n_envs']} tasks at once, {controllers['config']['training_rounds']} "
            "episodes each, then frozen). Every controller trained, with its validation MSE on the tuning seeds:",
            report.markdown_table(report.formatted(tuning, {"validation MSE": ".3g", "training seconds": ".0f",
                                                            "dqn.lr": ".2e", "dqn.horizon": ".3g",
                                                            "dqn.epsilon_decay": ".3g"}).fillna("-")),
            "What each controller cost (its training, its tuning, one frozen run):",
            report.markdown_table(report.formatted(cost, {"training optimiser steps": ",d", "training seconds": ".0f",
                                                          "tuning: optimiser steps": ",d", "tuning: seconds": ".0f",
                                                          "seconds per frozen run": ".2f"}).fillna("-")),
            controllers["reading"]]


def headline_block(root: Path) -> str:
    """The verdict first: notebook 04's generated reading, its headroom (the ceiling of a per-run choice) and
    the best learned controller's reading, then notebook 06's reading on PBT against the tuned constant
    (its first two lines)."""
    benchmark = read_json(root / "results" / "benchmark_summary.json")
    pbt_lines = read_json(root / "results" / "pbt_summary.json")["reading"].split("\n")
    controller = benchmark["controllers"]["reading"].split("\n\n")
    return "\n\n".join([benchmark["reading"], f"Headroom: {benchmark['headroom']['reading']}",
                         f"Learned controllers (notebook 04, best picked on validation): {controller[0]}",
                         *controller[1:],
                         f"Population Based Training (notebook 06): {pbt_lines[0]} {pbt_lines[1].removeprefix('- ')}"])


def peers_block(root: Path) -> str:
    """Notebook 06: PBT beside notebook 04's methods on its seeds, the comparisons, the cost and the reading."""
    summary = read_json(root / "results" / "pbt_summary.json")
    setup, pbt, labels = summary["study"], summary["pbt"], summary["labels"]
    references = {"tuned constant": labels["tuned"], "PBT": labels["pbt"]}
    test = pd.DataFrame(summary["summaries"]["test_mse"]).set_index("method")
    cost = pd.DataFrame(summary["cost"]).set_index("method")
    exploits = sum(summary["exploits_per_seed"].values())
    return "\n\n".join([
        f"Seeds {setup['first_eval_seed']}-{setup['first_eval_seed'] + setup['n_eval_seeds'] - 1} (the first "
        f"{setup['n_eval_seeds']} of notebook 04's); a population of {pbt['population']} per seed, an exploit/explore "
        f"round every {pbt['perturbation_interval']:,} steps ranked on validation MSE, {exploits} exploits in all; "
        f"one population took {min(summary['population_seconds']):.0f}-{max(summary['population_seconds']):.0f} s on "
        "local Ray. Test MSE beside notebook 04's methods on the same seeds:",
        report.summary_markdown(test, "test_mse", references),
        "Optimiser steps paid per evaluated run and once for tuning:",
        report.markdown_table(report.formatted(cost.reset_index(), {"optimiser steps per run": ",d", "tuning, once": ",d",
                                                                    "test MSE (geometric mean)": ".2e"})),
        "The pre-registered comparisons of notebook 06:",
        report.claims_markdown(pd.DataFrame(summary["claims"])),
        summary["reading"]])


def which_block(root: Path) -> str:
    """Which method to use when, for this task family: every tuned family of notebook 04 by test MSE with
    its one line of usage, then PBT and the learning-rate-free choice, all from the results."""
    bench, pbt = read_json(root / "results" / "benchmark_summary.json"), read_json(root / "results" / "pbt_summary.json")
    test = pd.DataFrame(bench["summaries"]["test_mse"]).set_index("method")["geometric mean"]
    tuned = test[study.TUNED]
    rows = sorted(({"method": study.tuned_label(family), "test MSE": test[study.tuned_label(family)],
                    "vs tuned constant": tuned / test[study.tuned_label(family)],
                    "use it": report.usage_line(family, params)} for family, params in bench["chosen"].items()),
                  key=lambda row: row["test MSE"])
    free = [row for row in rows if row["method"].removesuffix(", tuned") in {registry.get(key).label for key in registry.keys("lr_free")}]
    agents = [row for row in rows if row["method"] in study.FAMILIES and study.FAMILIES[row["method"]].kind == "agent"]
    pbt_test = pd.DataFrame(pbt["summaries"]["test_mse"]).set_index("method")["geometric mean"]
    labels = pbt["labels"]
    lines = [
        f"- **One run per task, tune once**: **{rows[0]['method']}** had the lowest test MSE here "
        f"({rows[0]['test MSE']:.2e}, {rows[0]['vs tuned constant']:.2f}x the tuned constant lr's accuracy: its test MSE "
        f"over this one's). Use: {rows[0]['use it']}.",
        f"- **No learning-rate schedule to design**: of the learning-rate-free optimisers, **{free[0]['method']}** did "
        f"best ({free[0]['test MSE']:.2e}, {free[0]['vs tuned constant']:.2f}x the tuned constant's accuracy), with its "
        f"knobs tuned like every family's. Use: {free[0]['use it']}.",
        f"- **Several runs' compute per task**: {labels['pbt']} reached {pbt_test[labels['pbt']]:.2e} on "
        f"{pbt['study']['n_eval_seeds']} seeds, where the {labels['equal_compute']} reached "
        f"{pbt_test[labels['equal_compute']]:.2e} for the same compute. Use: `rlr_peers.start_ray()`, then "
        f"`rlr_peers.run_pbt(config, steps, rlr_peers.PBTConfig(population={pbt['pbt']['population']}))` (Ray Tune's "
        "PopulationBasedTraining on a local Ray; `start_ray(address)` or `RAY_ADDRESS` for a cluster).",
        f"- **The RL scheduler**: the best tuned agent, **{agents[0]['method']}**, reached {agents[0]['test MSE']:.2e}, "
        f"{agents[0]['vs tuned constant']:.2f}x the tuned constant's accuracy (the verdict above has the tests). "
        f"Use: {agents[0]['use it']}.",
        f"- **A learned controller**, trained once over many tasks and reused frozen: the best one picked on "
        f"validation, **{bench['controllers']['best']}**, reached {test[bench['controllers']['best']]:.2e}, "
        f"{tuned / test[bench['controllers']['best']]:.2f}x the tuned constant's accuracy (the verdict above has the "
        "tests and its cost). Use: `controller = rlr_controllers.load_controllers(\"results/controllers.pt\")[label]`, then "
        "`rlr_controllers.run_policy(rlr_engine.Config.from_dict(controller.run_config), controller.act(), seeds)`."]
    table = pd.DataFrame([{**row, "test MSE": f"{row['test MSE']:.2e}", "vs tuned constant": f"{row['vs tuned constant']:.2f}x"}
                          for row in rows])
    return "\n\n".join(["\n".join(lines), "Every tuned family of notebook 04 with the configuration it chose "
                         "(geometric-mean test MSE over the evaluation seeds; \"vs tuned constant\" above 1 is better):",
                         report.markdown_table(table)])


def transfer_block(root: Path) -> str:
    """Notebook 05: test MSE per held-out task, the reading and the training returns."""
    summary = read_json(root / "results" / "transfer_summary.json")
    parameters = summary["parameters"]
    references = {reference: reference for reference in (study.TUNED_CONSTANT, study.COSINE)}
    parts = [f"Agents trained over {parameters['n_training_episodes']} episodes of {parameters['episode_steps']:,} "
             f"steps on training seeds {parameters['first_training_seed']}-"
             f"{parameters['first_training_seed'] + parameters['n_training_episodes'] - 1}, frozen, then evaluated "
             f"on {parameters['n_eval_seeds']} held-out seeds of each task; the tuned constant lr and cosine "
             "annealing were tuned on the training task only. Test MSE:"]
    for task, methods in summary["test_mse"].items():
        table = pd.DataFrame([{"method": method, **row} for method, row in methods.items()]).set_index("method")
        parts += [f"**{task}**", report.summary_markdown(table, "test_mse", references)]
    controllers = summary["controllers"]
    parts += [summary["reading"], summary["training_reading"],
              f"Notebook 04's learned controllers, frozen, on the held-out tasks ({controllers['steps']:,} steps, "
              "against notebook 04's tuned constant lr and cosine annealing). Test MSE:"]
    for task, methods in controllers["test_mse"].items():
        table = pd.DataFrame([{"method": method, **row} for method, row in methods.items()]).set_index("method")
        parts += [f"**{task}**", report.summary_markdown(table, "test_mse", references)]
    return "\n\n".join([*parts, controllers["reading"]])


def durations_block(root: Path) -> str:
    """How long each committed notebook ran (papermill's record) and the whole study."""
    durations = {name: nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4).metadata["papermill"]["duration"]
                 for name in NOTEBOOKS}
    rows = pd.DataFrame([{"notebook": f"{name}.ipynb", "seconds": f"{seconds:.0f}"} for name, seconds in durations.items()])
    total = sum(durations.values())
    return "\n\n".join([report.markdown_table(rows),
                        f"All {len(durations)}: {total / 60:.1f} minutes of notebook execution in the committed `make reproduce` "
                        f"(papermill's own record in each notebook)."])


def performance_block(root: Path) -> str:
    """The timing scripts' tables (benchmarks/results), with the machine load they recorded."""
    batched = read_json(root / "benchmarks" / "results" / "bench_batched.json")
    threads = read_json(root / "benchmarks" / "results" / "bench_threads.json")
    sweep = read_json(root / "benchmarks" / "results" / "bench_sweep.json")
    thread_rows = pd.DataFrame([{"run": f"{row['run']} (per {row['unit']})", "ms, 1 thread": f"{row['ms_per_unit_1_thread']:.3f}",
                                 "ms, 2 threads": f"{row['ms_per_unit_2_threads']:.3f}",
                                 "1 thread faster by": f"{row['speedup_of_1_thread']:.2f}x"} for row in threads["rows"]])
    sweep_rows = pd.DataFrame([
        {"what": f"{sweep['points']} points one after another (papermill, no Ray)", "seconds": f"{sweep['sequential_seconds']:.1f}"},
        {"what": f"the same points as a sweep on {sweep['workers']} local Ray workers", "seconds": f"{sweep['sweep_seconds']:.1f} "
         f"({sweep['speedup']:.2f}x)"},
        {"what": "starting the local Ray instance (once per sweep)", "seconds": f"{sweep['ray_start_seconds']:.1f} (with it: "
         f"{sweep['speedup_with_ray_start']:.2f}x)"}])
    load = ", ".join(f"{value:.1f}" for value in batched["load_average"])
    vector_path = root / "benchmarks" / "results" / "bench_vector_env.json"
    vector = read_json(vector_path) if vector_path.exists() else None
    vector_parts = [] if vector is None else [
        f"**The vector environment** (`benchmarks/bench_vector_env.py`, {vector['args']['decisions']} env steps of "
        f"random actions per K, one thread, best of {vector['args']['repeats']}; load average "
        + ", ".join(f"{value:.1f}" for value in vector["load_average"]) + "):", vector["table_markdown"]]
    engines_path = root / "benchmarks" / "results" / "bench_engines.json"
    engine_parts = [read_json(engines_path)["readme_markdown"]] if engines_path.exists() else []
    return "\n\n".join([
        *engine_parts,
        f"**The vectorised engine** (`benchmarks/bench_batched.py`, {batched['args']['steps']} steps per seed, one "
        f"thread, best of {batched['args']['repeats']}; load average {load}):",
        batched["table_markdown"],
        f"**Threads** (`benchmarks/bench_threads.py`, {threads['args']['epochs']} epochs / {threads['args']['steps']} "
        "steps, each setting in a fresh process):",
        report.markdown_table(thread_rows),
        f"**Sweeps on Ray** (`benchmarks/bench_sweep.py`, {sweep['points']} points of notebook 02, {sweep['steps']} steps each):",
        report.markdown_table(sweep_rows), *vector_parts])


BLOCKS = {"headline": headline_block, "one-run": one_run_block, "verdict": verdict_block, "transfer": transfer_block,
          "peers": peers_block, "which-to-use": which_block, "durations": durations_block,
          "performance": performance_block}


def render(readme: str, root: Path = ROOT) -> str:
    """README text with every generated block rewritten from the results under root."""
    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise ValueError(f"README names an unknown generated block {name!r} (known: {sorted(BLOCKS)})")
        return f"{match.group(1)}{BLOCKS[name](root).strip()}\n{match.group(4)}"
    return BLOCK.sub(fill, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = parser.parse_args()
    path = ROOT / "README.md"
    current = path.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md's generated blocks differ from the results: run `.venv/bin/python readme.py`")
            return 1
        print("README.md's generated blocks match the results")
        return 0
    results_io.atomic_write_text(path, rendered)
    print(f"rewrote {len(BLOCK.findall(current))} generated blocks of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
