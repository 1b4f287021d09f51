"""The README: its figures exist, its numbers are the committed ones, its code runs as printed.

The numbers are read from the README's markdown tables cell by cell (row by its label, column by its
header), so a value quoted in the wrong row or column, or only in the prose, fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def markdown_tables(section_text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of the text, in order: one dict (header -> stripped cell) per body row.

    A table is a run of lines starting with '|': the first is the header, the second the |---| rule.
    """
    tables, block = [], []
    for line in section_text.splitlines() + [""]:
        if line.strip().startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if block:
            header, rule, *rows = block
            assert all(set(cell) <= set("-: ") and cell for cell in rule), f"not a table rule: {rule}"
            for row in rows:
                assert len(row) == len(header), f"row {row} has {len(row)} cells, the header {len(header)}"
            tables.append([dict(zip(header, row)) for row in rows])
            block = []
    return tables


def table_with(tables: list[list[dict[str, str]]], *headers: str) -> list[dict[str, str]]:
    """The one table whose header has all of the given column names."""
    found = [table for table in tables if table and all(header in table[0] for header in headers)]
    assert len(found) == 1, f"expected one table with columns {headers}, found {len(found)}"
    return found[0]


def row_where(table: list[dict[str, str]], **cells: str) -> dict[str, str]:
    """The one row whose cells equal the given values (column header = cell)."""
    found = [row for row in table if all(row[column] == value for column, value in cells.items())]
    assert len(found) == 1, f"expected one row with {cells}, found {len(found)}"
    return found[0]


def test_markdown_tables_parses_rows_by_header():
    text = "intro | not a table\n\n| a | b c |\n|---|:-:|\n| 1 | x |\n|  2 |  y z |\nprose\n| k |\n|---|\n| v |\n"
    assert markdown_tables(text) == [[{"a": "1", "b c": "x"}, {"a": "2", "b c": "y z"}], [{"k": "v"}]]
    with pytest.raises(AssertionError, match="cells"):
        markdown_tables("| a | b |\n|---|---|\n| 1 |\n")


def test_readme_embeds_only_figures_that_exist():
    readme = (ROOT / "README.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert embedded, "the README should embed the figures"
    missing = [path for path in embedded if not (ROOT / path).exists()]
    assert not missing, f"README embeds missing figures {missing}"


COMPARISON_RATIOS = {"same_passes_described": ("same passes over the data", "described agent"),
                     "same_steps_described": ("same optimiser steps", "described agent"),
                     "same_passes_as_coded": ("same passes over the data", "as-coded agent"),
                     "same_steps_as_coded": ("same optimiser steps", "as-coded agent")}
"""comparison.json's ratio key -> (start of the README row's 'comparison' cell, the README column)."""


def test_readme_quotes_the_committed_comparison():
    """The README's single-run table and ratios are the ones the committed notebook 03 wrote (regenerate
    both together): each method's row has its final MSE and median of the last 100, each ratio its cell."""
    tables = markdown_tables(readme_section("What we found"))
    comparison = json.loads((ROOT / "results" / "comparison.json").read_text())
    runs = table_with(tables, "method", "final MSE", "median of last 100")
    assert [row["method"] for row in runs] == [row["method"] for row in comparison["table"]]
    for row in comparison["table"]:
        cells = row_where(runs, method=row["method"])
        assert cells["final MSE"] == f"{row['final MSE']:.2e}", row["method"]
        assert cells["median of last 100"] == f"{row['median last 100']:.2e}", row["method"]
        assert np.isfinite(row["final MSE"])
    ratios = table_with(tables, "comparison", "described agent", "as-coded agent")
    assert set(comparison["ratios"]) == set(COMPARISON_RATIOS)
    for key, ratio in comparison["ratios"].items():
        budget, column = COMPARISON_RATIOS[key]
        cells = [row for row in ratios if row["comparison"].startswith(budget)]
        assert len(cells) == 1, budget
        assert cells[0][column] == f"{ratio:.2f}", f"README's {key} is not the committed {ratio:.2f}"


def test_readme_training_loop_example_runs_verbatim_and_changes_the_lr():
    code = re.search(r"```python\n(.*?)```", readme_section("Use it in your own training loop"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    scheduler, grid = namespace["scheduler"], namespace["rc"].ScheduleConfig().lr_grid
    assert scheduler.last_epoch == 201, "one step(L_0) plus one per training step"
    assert scheduler.get_last_lr()[0] in grid
    assert len(scheduler.agent.replay) == 200, "every transition was stored"


VERDICT_AGENTS = {"DQN as described": "as described", "DQN as coded (original)": "as coded"}
"""benchmark_summary.json's agent label -> the README verdict table's 'agent' cell."""
VERDICT_METRICS = {"train_final": "training MSE (the original's metric)", "test_mse": "test MSE"}
"""benchmark_summary.json's metric -> the README verdict table's column."""
TRANSFER_COLUMNS = {"tuned constant lr": "tuned constant lr", "cosine annealing": "cosine",
                    "scale-free DQN (log features, x0.5/x1/x2)": "scale-free DQN (log features, x0.5/x1/x2), frozen",
                    "DQN as described (raw features)": "DQN as described, frozen"}
"""transfer_summary.json's method -> the README transfer table's column."""


def interval(row: dict) -> str:
    return f"{row['geometric mean']:.2e} [{row['gm CI low']:.2e}, {row['gm CI high']:.2e}]"


def test_readme_quotes_the_committed_benchmark_and_transfer_results():
    """The many-seed numbers in the README's tables are those of the committed notebooks 04 and 05."""
    tables = markdown_tables(readme_section("What we found"))
    benchmark = json.loads((ROOT / "results" / "benchmark_summary.json").read_text())

    verdict = table_with(tables, "budget", "agent", *VERDICT_METRICS.values())
    quoted = 0
    for row in benchmark["verdict"]:
        if row["against"].startswith("original baseline") and row["agent"] in VERDICT_AGENTS:
            cells = [cells for cells in verdict if cells["agent"] == VERDICT_AGENTS[row["agent"]]
                     and re.fullmatch(re.escape(row["budget"]) + r"( \(.*\))?", cells["budget"])]
            assert len(cells) == 1, (row["budget"], row["agent"])
            expected = f"{row['ratio']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], " \
                       f"{row['seeds_reaching_2']}/{row['seeds']}"
            assert cells[0][VERDICT_METRICS[row["metric"]]] == expected, (row["budget"], row["agent"], row["metric"])
            quoted += 1
    assert quoted == len(verdict) * len(VERDICT_METRICS), "every cell of the verdict table is a committed number"

    methods = table_with(tables, "method", "test MSE, geometric mean [95% CI]", "wins vs baseline",
                         "wins vs tuned constant")
    summaries = [row for row in benchmark["summaries"]["same optimiser steps"]
                 if not row["method"].startswith("constant lr")]
    labels = {"tuned constant lr": f"tuned constant lr ({benchmark['tuned_lr']:.2e})"}
    assert sorted(row["method"] for row in methods) == sorted(labels.get(row["method"], row["method"])
                                                              for row in summaries)
    for row in summaries:
        cells = row_where(methods, method=labels.get(row["method"], row["method"]))
        assert cells["test MSE, geometric mean [95% CI]"] == interval(row), row["method"]
        for column, reference in (("wins vs baseline", "original baseline"), ("wins vs tuned constant", "tuned constant lr")):
            expected = "-" if row["method"].startswith(reference) else f"{row[column]:.0%}"
            assert cells[column] == expected, (row["method"], column)

    transfer = json.loads((ROOT / "results" / "transfer_summary.json").read_text())
    tasks = table_with(tables, "task", *TRANSFER_COLUMNS.values())
    assert [row["task"] for row in tasks] == list(transfer["test_mse"])
    for task, results in transfer["test_mse"].items():
        assert set(results) == set(TRANSFER_COLUMNS), task
        cells = row_where(tasks, task=task)
        for method, row in results.items():
            assert cells[TRANSFER_COLUMNS[method]] == interval(row), (task, method)
