"""The README: its figures exist, its numbers are the committed ones, its code runs as printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_readme_embeds_only_figures_that_exist():
    readme = (ROOT / "README.md").read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert embedded, "the README should embed the figures"
    missing = [path for path in embedded if not (ROOT / path).exists()]
    assert not missing, f"README embeds missing figures {missing}"


def test_readme_quotes_the_committed_comparison():
    """The README's ratios are the ones the committed notebook 03 wrote (regenerate both together)."""
    readme = (ROOT / "README.md").read_text()
    comparison = json.loads((ROOT / "results" / "comparison.json").read_text())
    for key, ratio in comparison["ratios"].items():
        assert f"{ratio:.2f}" in readme, f"README lacks the committed ratio {key} = {ratio:.2f}"
    finals = {row["method"]: row["final MSE"] for row in comparison["table"]}
    for method, value in finals.items():
        assert f"{value:.2e}" in readme, f"README lacks the committed final MSE of {method}"
    assert np.isfinite(list(finals.values())).all()


def test_readme_training_loop_example_runs_verbatim_and_changes_the_lr():
    code = re.search(r"```python\n(.*?)```", readme_section("Use it in your own training loop"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    scheduler, grid = namespace["scheduler"], namespace["rc"].ScheduleConfig().lr_grid
    assert scheduler.last_epoch == 201, "one step(L_0) plus one per training step"
    assert scheduler.get_last_lr()[0] in grid
    assert len(scheduler.agent.replay) == 200, "every transition was stored"


def test_readme_quotes_the_committed_benchmark_and_transfer_results():
    """The many-seed numbers in the README are those of the committed notebooks 04 and 05."""
    section = readme_section("What we found")
    benchmark = json.loads((ROOT / "results" / "benchmark_summary.json").read_text())
    for row in benchmark["verdict"]:
        if row["against"].startswith("original baseline") and row["agent"] in ("DQN as described", "DQN as coded (original)"):
            quoted = f"{row['ratio']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], {row['seeds_reaching_2']}/{row['seeds']}"
            assert quoted in section, f"README lacks {row['budget']} / {row['agent']} / {row['metric']}: {quoted}"
    for row in benchmark["summaries"]["same optimiser steps"]:
        if not row["method"].startswith("constant lr"):
            assert f"{row['geometric mean']:.2e} [{row['gm CI low']:.2e}, {row['gm CI high']:.2e}]" in section, row["method"]
    transfer = json.loads((ROOT / "results" / "transfer_summary.json").read_text())
    for task, methods in transfer["test_mse"].items():
        for method, row in methods.items():
            assert f"{row['geometric mean']:.2e} [{row['gm CI low']:.2e}, {row['gm CI high']:.2e}]" in section, (task, method)
