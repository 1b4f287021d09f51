"""Notebook 06's comparisons: Population Based Training against its peers, with compute on the table.

A PBT population pays `population` runs of optimiser steps per task. Its fair peers at equal compute are
per-seed picks among as many runs of a family, each picked on the seed's validation set: the constant lr
and the best schedule family of notebook 04, each at the first `population` configurations of its own
pool (no tuning seeds used, as PBT uses none). Notebook 04's tuned methods (one run per seed, tuned once)
are compared too, each comparison labelled with its compute ratio. The comparisons are one pre-registered
family (rlr_stats.primary_tests: Holm over them, CIs at the matching levels), declared in PBT_COMPARISONS
before any run.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

import rlr_report as report
import rlr_stats as stats
import rlr_study as study
from rlr_engine import Config, RunResult

METRIC = "test_mse"
GROUP = "PBT's comparisons"
"""The budget label the tests group every row under: the sides pay different compute, so each test row
states its own (compute_statement), never "same optimiser steps"."""

PBT_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("PBT", "best schedule, best of P per seed"),
    ("PBT", "constant lr, best of P per seed"),
    ("PBT", "best schedule"),
    ("PBT", "tuned constant lr"),
    ("PBT", "best learning-rate-free optimiser"),
    ("best learned controller", "PBT"),
    ("best tuned agent", "PBT"),
)
"""Notebook 06's pre-registered family (method role, reference role), all on test MSE: PBT against the
two equal-compute per-seed picks (the first two: the question the compute asks), against notebook 04's
references at one run per seed, and the best RL methods of notebook 04 against PBT."""

FAMILY = tuple((GROUP, method, reference, METRIC) for method, reference in PBT_COMPARISONS)
"""PBT_COMPARISONS in rlr_study's form (budget, method role, reference role, metric)."""


def per_seed_label(family_label: str, population: int) -> str:
    """The label of a family's per-seed pick among `population` of its configurations."""
    return f"{family_label}, best of {population} per seed (validation)"


def runs_per_seed_label(population: int) -> str:
    """The budget label of the rows that pay `population` runs per seed."""
    return f"{population} runs per seed"


def picked_per_seed(name: str, config: Config, setup: study.StudyConfig, budget: int,
                    progress: bool = False) -> tuple[list[RunResult], list[str]]:
    """Per evaluation seed, the run with the lowest validation MSE among the family's first `budget`
    configurations of its own pool (one batch of budget x seeds): a per-run choice that pays `budget`
    runs, the equal-compute peer of a PBT population of that size. Also returns the configuration picked
    per seed."""
    pool = study.family_configurations(name, budget, setup.search_seed)
    runs = study.family(name).run_pool(pool, config, setup.eval_seeds, setup.steps, progress)
    labelled = {", ".join(f"{key} {value:.3g}" for key, value in params.items()): pool_runs
                for params, pool_runs in zip(pool, runs)}
    return study.pick_per_seed(labelled, "validation", setup.n_heldout_examples)


def comparison_labels(population: int, benchmark: dict) -> dict[str, str]:
    """role -> method label of PBT_COMPARISONS, from notebook 04's summary (its validation-picked references)."""
    best_schedule = benchmark["best_schedule"]
    return {"PBT": study.pbt_label(population),
            "best schedule, best of P per seed": per_seed_label(study.family(best_schedule).label, population),
            "constant lr, best of P per seed": study.equal_compute_label(population),
            "best schedule": best_schedule, "tuned constant lr": study.TUNED,
            "best learning-rate-free optimiser": benchmark["lr_free"],
            "best learned controller": benchmark["controllers"]["best"], "best tuned agent": benchmark["best_agent"]}


def comparison_family(labels: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """PBT_COMPARISONS with their roles as labels (rlr_study.primary_family)."""
    return study.primary_family(labels, FAMILY)


def compute_statement(method_steps: int, reference_steps: int) -> str:
    """Both sides' optimiser steps per evaluated run, and their ratio in the fold convention."""
    if method_steps == reference_steps:
        return f"the same optimiser steps per run ({method_steps:,})"
    return (f"{method_steps:,} optimiser steps per run against {reference_steps:,} (the reference "
            f"{report.compute_words(reference_steps / method_steps)})")


def pbt_tests(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The family's tests (rlr_study.primary_table: roles, both sides' optimiser steps, compute ratio) on
    rows of every budget grouped together, with each row's compute statement (as 'budget', the column the
    claims tables print), wins with a Wilson CI, and primary=True."""
    tests = study.primary_table(table.assign(budget=GROUP), labels, FAMILY)
    tests["budget"] = [compute_statement(own, other) for own, other in zip(tests["method steps"], tests["reference steps"])]
    wilson = [stats.wilson_interval(int(wins), int(seeds)) if seeds else (float("nan"), float("nan"))
              for wins, seeds in zip(tests["wins"], tests["seeds"])]
    tests["win_ci_low"], tests["win_ci_high"] = zip(*wilson)
    tests["primary"] = True
    return tests


def pbt_reading(tests: pd.DataFrame, summary: pd.DataFrame, pbt: str, population: int) -> str:
    """Notebook 06 in sentences, from its tests: PBT's test MSE, each comparison (the method's test MSE
    against the reference's, k times lower/higher, with its compute), and what the seeds can resolve."""
    row = summary.loc[pbt]
    lines = [f"**{pbt}** reaches a test MSE of {report.interval(*row[['geometric mean', 'gm CI low', 'gm CI high']], '.2e')} "
             f"over {int(row['seeds'])} seeds ({int(row['diverged'])} diverged), paying {population} runs of optimiser "
             "steps per seed."]
    for _, test in tests.iterrows():
        lines.append(f"- {test['method']} against {test['against']} ({test['budget']}): test MSE "
                     f"{report.fold_interval(test['ratio'], test['ci_low'], test['ci_high'])} at the Holm level "
                     f"({test['confidence']:.1%}), {test['wins']} of {test['seeds']} seeds better: {report.outcome(test)}.")
    detectable = tests["detectable_ratio"].dropna()
    smallest = stats.smallest_holm_p(int(row["seeds"]), len(tests))
    lines.append(f"With {int(row['seeds'])} seeds and {len(tests)} tests, the smallest Holm-adjusted p-value possible is "
                 f"{smallest:.2g} (every seed one way)"
                 + (f"; at 80% power these seeds detect ratios of {detectable.min():.2f} to {detectable.max():.2f} times."
                    if len(detectable) else "."))
    return "\n".join(lines)


def cost_table(table: pd.DataFrame, methods: Sequence[str], benchmark: dict) -> pd.DataFrame:
    """Per method compared: its optimiser steps per evaluated run and what was paid once before (a tuned
    family's pool on notebook 04's tuning seeds; a controller's training and tuning), beside its test MSE
    (geometric mean): rlr_study.compute_table on these rows."""
    tuning = study.StudyConfig(**benchmark["study"]).pool_steps()
    tuned = {study.tuned_label(name): tuning for name in benchmark["chosen"]}
    controller_costs = pd.DataFrame(benchmark["controllers"]["cost"]).set_index("method")
    rows = table[table["method"].isin(methods)]
    cost = study.compute_table(rows, tuned, controller_costs).reindex(list(methods))
    finished = rows[rows["diverged_at"].isna()]
    cost["test MSE (geometric mean)"] = [stats.geometric_mean(finished.loc[finished["method"] == method, METRIC])
                                         for method in cost.index]
    return cost
