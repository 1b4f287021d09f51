"""Each notebook's summary: the markdown its results give for the README and the site, written by the
notebook itself (its last cell calls write_summary) so that readme.py only places it.

A summary is results/summaries/<notebook>.json, {"notebook": name, "blocks": {block name: markdown}}: the
README's `<!-- generated: NAME -->` blocks are these blocks, verbatim. Every number and comparison in them
is computed here from the notebook's results files; tests/test_readme.py re-renders each committed summary
from the committed results and compares. Notebook 04 writes the headline (from its primary tests only);
notebook 06 writes the "which to use" table, which reads notebook 04's results beside its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

import rlr_engine as engine
import rlr_methods as registry
import rlr_report as report
import rlr_results as results_io
import rlr_study as study

SUMMARY_FOLDER = "summaries"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def one_run_markdown(results: Path) -> str:
    """Notebooks 01-03: the table, the original's ratio beside ours, the verdicts, what the agents did."""
    comparison = read_json(results / "comparison.json")
    table = pd.DataFrame(comparison["table"])
    shown = report.formatted(table, {"final MSE": ".2e", "median last 100": ".2e", "optimiser steps": ",d",
                                     "passes over data": ",d"}).drop(columns=["seeds", "wall seconds per run"])
    original = study.ORIGINAL_RESULT
    ratios = comparison["ratios"]
    ratio_rows = pd.DataFrame([
        {"comparison": "same passes over the data (the original's)", "described agent": report.fold(ratios['same_passes_described']),
         "as-coded agent": report.fold(ratios['same_passes_as_coded'])},
        {"comparison": "same optimiser steps (full-batch Adam at 1e-3)", "described agent": report.fold(ratios['same_steps_described']),
         "as-coded agent": report.fold(ratios['same_steps_as_coded'])}])
    agents = {label: results_io.load_results(results / f"{name}.json")
              for label, name in (("Described agent", "rl_described"), ("As-coded agent", "rl_as_coded"))}
    grid_size = len(engine.Config().schedule.lr_grid)
    return "\n\n".join([
        f"Seed {comparison['seeds'][0]}, the original's settings (notebooks 01-03):",
        report.markdown_table(shown),
        f"The original reported a baseline MSE of {original['baseline_final_mse']:.2e} and an agent MSE of "
        f"{original['agent_final_mse']:.2e}: the agent's final MSE "
        f"{report.fold(original['baseline_final_mse'] / original['agent_final_mse'])} (\"two times more accurate\"). "
        "The agent's final MSE against the baseline's here:",
        report.markdown_table(ratio_rows),
        *[f"- {verdict}" for verdict in comparison["verdicts"].values()],
        *[report.describe_agent_run(runs, grid_size, label) for label, runs in agents.items()]])


def verdict_markdown(results: Path) -> str:
    """Notebook 04: the protocol, tuning with the budget curves and margins, the primary tests with their
    power and compute, the per-method tables, the descriptive comparisons and the reading."""
    summary = read_json(results / "benchmark_summary.json")
    setup = summary["study"]
    claims = pd.DataFrame(summary["claims"])
    references = {"baseline": study.BASELINE, "tuned constant": study.TUNED}
    tables = {metric: pd.DataFrame(rows).set_index("method") for metric, rows in summary["summaries"].items()}
    curves = pd.read_csv(results / "benchmark_budget_curves.csv")
    return "\n\n".join([
        f"{setup['n_eval_seeds']} evaluation seeds ({setup['first_eval_seed']}-"
        f"{setup['first_eval_seed'] + setup['n_eval_seeds'] - 1}), each with its own data, initial weights, "
        f"validation and test sets ({setup['n_heldout_examples']} polynomials each); every tuned family got a pool "
        f"of {setup['tuning_budget']} configurations (its own Sobol draw) on {setup['n_tuning_seeds']} tuning seeds "
        f"({setup['first_tuning_seed']}-{setup['first_tuning_seed'] + setup['n_tuning_seeds'] - 1}), chosen on "
        f"validation MSE; {setup['steps']:,} optimiser steps.",
        report.tuning_markdown(summary["chosen"], summary["edges"], setup["tuning_budget"]),
        "Budget curves: per family, the best validation MSE k trials find / the tuning-seed test MSE of their pick "
        "(`results/benchmark_budget_curves.csv`):",
        report.budget_markdown(curves, (1, setup["shown_budget"], setup["tuning_budget"])),
        f"Each reference is picked by {summary['selection_rule']}:",
        report.margins_markdown(summary["picks"]),
        "**The primary tests** (pre-registered; Holm over these 8; the CI inverts the same test at its Holm level):",
        report.primary_markdown(pd.DataFrame(summary["primary"])),
        "What each method paid in optimiser steps: per evaluated run, and once before (tuning, training):",
        report.compute_markdown(pd.DataFrame(summary["compute"]).set_index("method")),
        "Test MSE after the same optimiser steps (descriptive):",
        report.summary_markdown(tables["test_mse"], "test_mse", references),
        "Training MSE (median of the last 100 losses) after the same optimiser steps (descriptive):",
        report.summary_markdown(tables["train_median_last_100"], "train_median_last_100", references),
        "Descriptive comparisons (the agent's MSE against each reference, paired by seed; Holm over this family "
        "of its own, not the verdict):",
        report.claims_markdown(claims),
        summary["reading"],
        summary["headroom"]["reading"],
        *controller_parts(summary),
        summary["seed_zero"]])


def controller_parts(summary: dict) -> list[str]:
    """Notebook 04's learned controllers: every controller trained with its validation MSE, their cost,
    the generated reading, and (where the summary has them) the learning curves' and the oracle's reading
    with the oracle's table."""
    controllers = summary["controllers"]
    tuning = pd.DataFrame(controllers["tuning"])
    cost = pd.DataFrame(controllers["cost"])
    return [f"**Learned controllers** (a decision every {controllers['config']['decision_interval']} optimiser steps, "
            f"trained on {controllers['config']['n_envs']} tasks at once, {controllers['config']['training_rounds']} "
            "episodes each, then frozen). Every controller trained, with its validation MSE on the tuning seeds:",
            report.markdown_table(report.formatted(tuning, {"validation MSE": ".3g", "training seconds": ".0f",
                                                            "dqn.lr": ".2e", "dqn.horizon": ".3g",
                                                            "dqn.epsilon_decay": ".3g", "dqn.undiscounted": ".0f",
                                                            "controller.validation_state": ".0f",
                                                            "controller.validation_reward": ".0f"}).fillna("-")),
            "What each controller cost (its training, its tuning, one frozen run):",
            report.markdown_table(report.formatted(cost, {"training optimiser steps": ",d", "training seconds": ".0f",
                                                          "tuning: optimiser steps": ",d", "tuning: seconds": ".0f",
                                                          "seconds per frozen run": ".2f"}).fillna("-")),
            controllers["reading"]] + curve_parts(controllers)


def curve_parts(controllers: dict) -> list[str]:
    """The learning curves' reading and the oracle's table, for summaries written since they exist."""
    if "curve_reading" not in controllers:
        return []
    oracle = pd.DataFrame(controllers["oracle"]).set_index("method")
    return [f"**Trained to a plateau?** The chosen DQN configuration trained for {controllers['curve']['episodes']} "
            f"episodes by {len(controllers['curve']['agent_seeds'])} agent seeds, and the oracle of the policy class "
            "(the best schedule cloned into the controllers' actions):",
            report.markdown_table(report.formatted(oracle, {"validation MSE (tuning seeds)": ".3g",
                                                            "test MSE (evaluation seeds)": ".3g"}).reset_index()),
            controllers["curve_reading"]]


def headline_markdown(results: Path) -> str:
    """The verdict first, in at most rlr_report.HEADLINE_LINES lines: notebook 04's headline, which says
    only what its primary tests say."""
    headline = read_json(results / "benchmark_summary.json")["headline"]
    return "\n".join(f"- {line}" if line.strip() else line for line in headline.splitlines())  # a line each, rendered


def peers_markdown(results: Path) -> str:
    """Notebook 06: PBT beside notebook 04's methods on its seeds, the comparisons, the cost and the reading."""
    summary = read_json(results / "pbt_summary.json")
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


def tuned_family_rows(bench: dict) -> list[dict]:
    """Every tuned family of notebook 04 at its chosen configuration: label, test MSE (geometric mean over the
    evaluation seeds), the tuned constant's over it, and its one line of usage; best first."""
    test = pd.DataFrame(bench["summaries"]["test_mse"]).set_index("method")["geometric mean"]
    return sorted(({"method": study.tuned_label(family), "test MSE": test[study.tuned_label(family)],
                    "vs tuned constant": test[study.TUNED] / test[study.tuned_label(family)],
                    "use it": study.family(family).usage_line(params)} for family, params in bench["chosen"].items()),
                  key=lambda row: row["test MSE"])


def which_to_use_markdown(results: Path) -> str:
    """The front page's short table: which method to use when, for this task family (one row per need: the
    best schedule, the best learning-rate-free optimiser, PBT, the RL scheduler, a learned controller), each
    with its test MSE against the tuned constant lr's and its usage, all from notebooks 04 and 06's results."""
    bench, pbt = read_json(results / "benchmark_summary.json"), read_json(results / "pbt_summary.json")
    test = pd.DataFrame(bench["summaries"]["test_mse"]).set_index("method")["geometric mean"]
    rows = tuned_family_rows(bench)
    free = [row for row in rows if row["method"].removesuffix(", tuned") in {registry.get(key).label for key in registry.keys("lr_free")}]
    agents = [row for row in rows if row["method"] in study.FAMILIES and study.FAMILIES[row["method"]].kind == "agent"]
    pbt_test = pd.DataFrame(pbt["summaries"]["test_mse"]).set_index("method")["geometric mean"]
    pbt_label, controller = pbt["labels"]["pbt"], bench["controllers"]["best"]
    pbt_tuned = pbt_test[pbt["labels"]["tuned"]]
    table = pd.DataFrame([
        {"when": "one run per task, tune once", "method": rows[0]["method"], "test MSE": rows[0]["test MSE"],
         "ratio of geometric means to the tuned constant lr": report.fold(rows[0]["vs tuned constant"]), "use": rows[0]["use it"]},
        {"when": "no schedule to design", "method": free[0]["method"], "test MSE": free[0]["test MSE"],
         "ratio of geometric means to the tuned constant lr": report.fold(free[0]["vs tuned constant"]), "use": free[0]["use it"]},
        {"when": f"{pbt['pbt']['population']} runs' compute per task", "method": pbt_label,
         "test MSE": pbt_test[pbt_label],
         "ratio of geometric means to the tuned constant lr": report.fold(pbt_tuned / pbt_test[pbt_label]) + f" (its {pbt['study']['n_eval_seeds']} seeds)",
         "use": f"`rlr_peers.run_pbt(config, steps, rlr_peers.PBTConfig(population={pbt['pbt']['population']}))` after "
                "`rlr_peers.start_ray()`"},
        {"when": "an RL scheduler learning within the run", "method": agents[0]["method"], "test MSE": agents[0]["test MSE"],
         "ratio of geometric means to the tuned constant lr": report.fold(agents[0]["vs tuned constant"]), "use": agents[0]["use it"]},
        {"when": "a controller trained once, reused frozen", "method": controller, "test MSE": test[controller],
         "ratio of geometric means to the tuned constant lr": report.fold(test[study.TUNED] / test[controller]),
         "use": "`rlr_controllers.load_controller(\"results/controllers.pt\").scheduler(optimizer, steps)`, stepped "
                "with the loss (and the validation loss where its state reads it)"}])
    table["test MSE"] = table["test MSE"].map(lambda value: f"{value:.2e}")
    return report.markdown_table(table)


def tuned_families_markdown(results: Path) -> str:
    """Every tuned family of notebook 04 with the configuration it chose and its usage (the usage page)."""
    rows = tuned_family_rows(read_json(results / "benchmark_summary.json"))
    table = pd.DataFrame([{**row, "test MSE": f"{row['test MSE']:.2e}", "vs tuned constant": report.fold(row['vs tuned constant'])}
                          for row in rows])
    return report.markdown_table(table)


def transfer_markdown(results: Path) -> str:
    """Notebook 05: test MSE per held-out task, the reading and the training returns."""
    summary = read_json(results / "transfer_summary.json")
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


FROZEN_AGENT = study.FROZEN_AGENT
"""Notebook 04's described agent replayed frozen: one of the original's methods in the summary figure."""


def summary_figure_rows(results: Path) -> pd.DataFrame:
    """The summary figure's rows from notebooks 04 and 06's results: every method of the verdict at its pick
    (not the smaller budget's), its kind (rlr_report.SUMMARY_KINDS: the original's methods, the registry's
    schedules, learning-rate-free optimisers and agents, the learned controllers, PBT) and a note where it
    paid other compute or ran on other seeds."""
    results = Path(results)
    for name, notebook in (("benchmark_summary.json", "04_verdict"), ("pbt_summary.json", "06_pbt")):
        if not (results / name).is_file():
            raise FileNotFoundError(f"results: {results / name} is missing: run notebook {notebook} first")
    bench, pbt = read_json(results / "benchmark_summary.json"), read_json(results / "pbt_summary.json")
    kinds = {study.BASELINE: "original", FROZEN_AGENT: "original", **{label: "original" for label in study.ORIGINAL_AGENTS},
             **{study.tuned_label(name): family.kind for name, family in study.FAMILIES.items()},
             **{label: "controller" for label in bench["controllers"]["labels"]}}
    columns = ["method", "geometric mean", "gm CI low", "gm CI high", "seeds"]
    test = pd.DataFrame(bench["summaries"]["test_mse"])
    rows = test[test["method"].isin(kinds)][columns].assign(kind=lambda table: table["method"].map(kinds), note="")
    pbt_row = pd.DataFrame(pbt["summaries"]["test_mse"]).set_index("method").loc[[pbt["labels"]["pbt"]]].reset_index()
    pbt_row = pbt_row[columns].assign(kind="pbt", note=f"{pbt['pbt']['population']} times the optimiser steps, "
                                                       f"{int(pbt_row['seeds'].iloc[0])} seeds")
    return pd.concat([rows, pbt_row], ignore_index=True)


def summary_figure_headroom(results: Path) -> dict:
    """Notebook 04's headroom (the per-seed pick among the schedules on validation) as the figure's band."""
    headroom = read_json(Path(results) / "benchmark_summary.json")["headroom"]
    row = pd.DataFrame(headroom["summary"]).set_index("method").loc[headroom["label"]]
    return {"label": f"headroom: {headroom['label']}, that many runs' compute", "low": float(row["gm CI low"]),
            "high": float(row["gm CI high"])}


SUMMARIES: dict[str, dict[str, Callable[[Path], str]]] = {
    "03_comparison": {"one-run": one_run_markdown},
    "04_verdict": {"verdict": verdict_markdown, "headline": headline_markdown},
    "05_transfer": {"transfer": transfer_markdown},
    "06_pbt": {"peers": peers_markdown, "which-to-use": which_to_use_markdown,
               "tuned-families": tuned_families_markdown},
}
"""notebook -> its blocks (block name -> the function that renders it from the results folder)."""


def render_summary(notebook: str, results: Path) -> dict[str, str]:
    """The blocks of one notebook's summary, rendered from the results folder."""
    if notebook not in SUMMARIES:
        raise ValueError(f"notebook: {notebook!r} writes no summary (those that do: {sorted(SUMMARIES)})")
    results = Path(results)
    if not results.is_dir():
        raise ValueError(f"results: {str(results)!r} is not a folder")
    return {name: render(results).strip() for name, render in SUMMARIES[notebook].items()}


def summary_path(notebook: str, results: Path) -> Path:
    return Path(results) / SUMMARY_FOLDER / f"{notebook}.json"


def write_summary(notebook: str, results: Path) -> Path:
    """Render the notebook's summary from its results and write it atomically; return its path."""
    blocks = render_summary(notebook, results)
    path = summary_path(notebook, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    results_io.atomic_write_text(path, json.dumps({"notebook": notebook, "blocks": blocks}, indent=1) + "\n")
    return path
