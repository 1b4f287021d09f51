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
