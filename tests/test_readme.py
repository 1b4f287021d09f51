"""The README: its numbers are generated from the committed results, its prose states none by hand, its
figures exist, its code runs as printed, and the committed notebooks ran under papermill (that the
committed results come from the current code is tests/test_provenance.py's)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

import readme
import rlr_summaries as summaries
import rlr_engine as engine
import rlr_study as study

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in readme.documents(ROOT)}
"""README.md and the docs/*.md pages the detail lives on: the generated-claims rule covers them all."""
WRITTEN = {name: text for name, text in DOCUMENTS.items() if name != "docs/original.md"}
"""The documents of our own results (docs/original.md is the account of the original's, its numbers included)."""


def readme_section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def prose(text: str) -> str:
    """The text without fenced code, generated blocks, inline code, links' targets and table rows."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = readme.BLOCK.sub("", text)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))


MEASURED = re.compile(r"\d+\.\d+|\d+(?:\.\d+)?e[-+]?\d+|\d+\s?%|\b\d+(?:\.\d+)?x\b|\b\d+ (?:of|out of) \d+\b|"
                      r"\b\d+ (?:s|ms|µs|seconds|minutes)\b")
"""What a measured number looks like in prose: decimals, scientific notation, percentages, 'Nx', 'k of n',
durations."""


def test_readme_generated_blocks_are_what_the_committed_files_give():
    """Every block the files give is placed in some document, and every document is up to date."""
    names = {match.group("name") for text in DOCUMENTS.values() for match in readme.BLOCK.finditer(text)}
    assert names == set(readme.blocks()), f"blocks placed {sorted(names)}"
    for name, text in DOCUMENTS.items():
        assert readme.render(text) == text, f"stale numbers in {name}: run `.venv/bin/python readme.py`"


def test_the_readme_is_a_front_page():
    """At most 200 lines; the answer (the generated headline) and the summary figure on its first screen;
    the detail one click away, on docs pages that exist."""
    lines = README.splitlines()
    assert len(lines) <= 200, f"README has {len(lines)} lines"
    first_screen = "\n".join(lines[:40])
    assert "<!-- generated: headline -->" in first_screen and "<!-- end: headline -->" in first_screen
    assert re.search(r"!\[[^\]]*\]\(figures/[^)]+\.png\)", first_screen), "the summary figure on the first screen"
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    assert linked == {name for name in DOCUMENTS if name.startswith("docs/")}, "every docs page is linked from the README"


@pytest.mark.parametrize("notebook", sorted(summaries.SUMMARIES))
def test_each_committed_summary_is_what_the_committed_results_give(notebook):
    """The claims are data: every block a notebook wrote is re-rendered here from the results it read
    (a notebook declared stale, whose results predate its renderer, waits for its next run)."""
    from test_provenance import KNOWN_STALE

    if notebook in KNOWN_STALE:
        pytest.xfail(f"{notebook}: {KNOWN_STALE[notebook]}")
    committed = json.loads(summaries.summary_path(notebook, ROOT / "results").read_text())
    assert committed["notebook"] == notebook
    assert committed["blocks"] == summaries.render_summary(notebook, ROOT / "results"), \
        f"results/summaries/{notebook}.json is stale: re-run the notebook (make reproduce)"


def test_the_summaries_and_the_readme_change_when_a_result_changes(tmp_path):
    """The checks above can fail: a changed committed number changes the rendered summary, and a changed
    summary changes the placed README."""
    for folder in ("results", "notebooks", "benchmarks/results"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    path = tmp_path / "results" / "comparison.json"
    comparison = json.loads(path.read_text())
    comparison["ratios"]["same_steps_described"] *= 3.0
    path.write_text(json.dumps(comparison))
    assert summaries.render_summary("03_comparison", tmp_path / "results") != \
        summaries.render_summary("03_comparison", ROOT / "results")
    summaries.write_summary("03_comparison", tmp_path / "results")
    page = DOCUMENTS["docs/one-run.md"]  # where the one-run block is placed
    assert readme.render(page, tmp_path) != page


def test_readme_refuses_a_block_no_file_gives_and_a_block_two_summaries_give(tmp_path):
    for folder in ("results", "notebooks", "benchmarks/results"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    with pytest.raises(ValueError, match="'nowhere' that no file gives"):
        readme.render("<!-- generated: nowhere -->\nold\n<!-- end: nowhere -->\n", tmp_path)
    twice = tmp_path / "results" / "summaries" / "99_extra.json"
    twice.write_text(json.dumps({"notebook": "99_extra", "blocks": {"one-run": "again"}}))
    with pytest.raises(ValueError, match="given by another summary too"):
        readme.render(README, tmp_path)


def test_summaries_refuse_an_unknown_notebook_and_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="notebook: '01_baseline' writes no summary"):
        summaries.render_summary("01_baseline", ROOT / "results")
    with pytest.raises(ValueError, match="results: .* is not a folder"):
        summaries.render_summary("03_comparison", tmp_path / "absent")


def test_readme_prose_states_no_measured_number_by_hand():
    found = {name: MEASURED.findall(prose(text)) for name, text in WRITTEN.items()}
    assert not any(found.values()), f"numbers in prose, outside the generated blocks: {found}"


def settings_and_original_numbers() -> set[str]:
    """Numbers prose may state because they are settings (the configs' defaults, checked here against
    the code) or the original's printed result (rlr_study.ORIGINAL_RESULT), in the usual spellings."""
    config = engine.Config()
    values = [config.baseline.lr, config.dqn.gamma, config.dqn.tau, config.dqn.lr, config.dqn.epsilon_start,
              config.dqn.epsilon_end, config.dqn.epsilon_start - config.dqn.epsilon_end, *config.task.coeff_scale,
              *config.schedule.lr_grid, *study.ORIGINAL_RESULT.values(),
              study.ORIGINAL_RESULT["baseline_final_mse"] / study.ORIGINAL_RESULT["agent_final_mse"]]
    spellings = {format(value, spec) for value in values for spec in ("g", ".2f", ".3g", ".2e", ".1e", ".0e")}
    spellings |= {re.sub(r"e([-+])0*(\d)", r"e\1\2", spelling) for spelling in spellings}  # 1e-03 as 1e-3
    spellings |= {spelling.split("e")[0] for spelling in spellings}  # the mantissa of 9.80e-07 reads as 9.80
    return spellings | {"95%"}  # the confidence level of every interval


def test_notebook_prose_states_no_measured_number_by_hand():
    """Markdown cells describe the method; numbers come from the cells' outputs (generated readings)."""
    allowed, found = settings_and_original_numbers(), {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        hits = [hit for cell in cells if cell.cell_type == "markdown" for hit in MEASURED.findall(prose(cell.source))]
        hits = [hit for hit in hits if hit not in allowed]
        if hits:
            found[path.name] = hits
    assert not found, found


def test_readme_embeds_only_figures_that_exist():
    embedded = {name: re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text) for name, text in DOCUMENTS.items()}
    assert embedded["README.md"], "the README should embed the summary figure"
    missing = [path for name, paths in embedded.items() for path in paths if not ((ROOT / name).parent / path).exists()]
    assert not missing, f"documents embed missing figures {missing}"


def test_readme_controller_example_runs_verbatim_on_a_model_the_project_never_trains(monkeypatch):
    """The learned controller in your own loop, as printed: the committed controllers file, a classifier."""
    monkeypatch.chdir(ROOT)
    code = re.search(r"```python\n(.*?)```", readme_section("A learned controller in your own loop"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    scheduler = namespace["scheduler"]
    assert scheduler.last_epoch == 301 and scheduler.schedule.steps == 300
    low, high = scheduler.schedule.lr_grid[0], scheduler.schedule.lr_grid[-1]
    assert low <= scheduler.get_last_lr()[0] <= high


def test_readme_training_loop_example_runs_verbatim_and_changes_the_lr():
    code = re.search(r"```python\n(.*?)```", readme_section("The RL scheduler in your own loop"), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    scheduler, grid = namespace["scheduler"], namespace["rc"].ScheduleConfig().lr_grid
    assert scheduler.last_epoch == 201, "one step(L_0) plus one per training step"
    assert scheduler.get_last_lr()[0] in grid
    assert len(scheduler.agent.replay) == 200, "every transition was stored"


@pytest.mark.parametrize("name", readme.NOTEBOOKS)
def test_committed_notebooks_were_run_by_papermill_with_their_duration(name):
    from test_provenance import KNOWN_STALE

    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    if name in KNOWN_STALE and "papermill" not in notebook.metadata:
        pytest.xfail(f"declared stale and never run: {KNOWN_STALE[name]}")
    metadata = notebook.metadata["papermill"]
    assert metadata["duration"] > 0 and metadata["exception"] in (None, False)


FOLDED = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:x| times)(?!\w)")
"""A ratio in prose: '1.40 times', '2x' (the lr factors 'x0.5' put the x before, and are not ratios)."""


def ratios_below_one(text: str) -> list[str]:
    return [match.group(0) for match in FOLDED.finditer(text) if float(match.group(1)) < 1]


def test_the_ratio_check_catches_a_ratio_below_one():
    assert ratios_below_one("its MSE is 0.63 times the constant's, 0.5x; actions x0.5/x1/x2") == ["0.63 times", "0.5x"]
    assert ratios_below_one("1.40 times lower test MSE than cosine, 2x the steps") == []


def test_every_ratio_in_the_readme_and_the_summaries_is_at_least_one():
    """One convention everywhere: 'k times lower / higher', k >= 1 (README, and every summary the site shows;
    the blocks of notebooks declared stale wait for their next run)."""
    from test_provenance import KNOWN_STALE

    stale_blocks = {block for notebook in KNOWN_STALE for block in summaries.SUMMARIES.get(notebook, {})}
    current = {name: readme.BLOCK.sub(lambda match: "" if match.group("name") in stale_blocks else match.group(0), text)
               for name, text in WRITTEN.items()}
    texts = {**current, **{f"results/summaries/{path.name}": path.read_text()
                                      for path in (ROOT / "results" / "summaries").glob("*.json")
                                      if path.stem not in KNOWN_STALE}}
    offending = {name: ratios_below_one(text) for name, text in texts.items()}
    assert not any(offending.values()), offending


def verdict_is_fresh() -> bool:
    import rlr_provenance

    return rlr_provenance.is_fresh("04_verdict")


def test_same_optimiser_steps_is_only_said_of_rows_of_equal_compute():
    """A budget called 'same optimiser steps' holds rows of one optimiser-step count; a per-seed pick among
    N runs is a budget of its own, labelled with its ratio."""
    if not verdict_is_fresh():
        pytest.xfail("notebook 04's committed results predate its current protocol (tests/test_provenance.py)")
    import pandas as pd

    table = pd.read_csv(ROOT / "results" / "benchmark_runs.csv")
    same = table[table["budget"] == study.SAME_STEPS]
    assert same["optimiser_steps"].nunique() == 1, same.groupby("method")["optimiser_steps"].max()
    primary = pd.DataFrame(json.loads((ROOT / "results" / "benchmark_summary.json").read_text())["primary"])
    assert (primary.loc[primary["budget"] == study.SAME_STEPS, "compute ratio"] == 1).all()


def test_the_headline_is_at_most_eight_lines_and_names_the_power_and_scope():
    if not verdict_is_fresh():
        pytest.xfail("notebook 04's committed results predate its current protocol (tests/test_provenance.py)")
    import rlr_report

    headline = summaries.render_summary("04_verdict", ROOT / "results")["headline"]
    lines = [line.removeprefix("- ") for line in headline.splitlines() if line.strip()]  # one list item a line
    assert len(lines) <= rlr_report.HEADLINE_LINES == 8, lines
    assert any(line.startswith("Power:") for line in lines) and any(line.startswith("Scope:") for line in lines)
    assert readme.BLOCK.search(README) and headline in README


def test_notebook_07s_committed_summary_is_what_its_results_give():
    """Notebook 07's blocks are rendered by rlr_mnist1d (not rlr_summaries.SUMMARIES, this round): the
    committed summary equals a re-render from the committed results."""
    import rlr_mnist1d

    committed = json.loads((ROOT / "results" / "summaries" / f"{rlr_mnist1d.NOTEBOOK}.json").read_text())
    assert committed == {"notebook": rlr_mnist1d.NOTEBOOK, "blocks": rlr_mnist1d.summary_blocks(ROOT / "results")}, \
        "results/summaries/07_mnist1d.json is stale: re-run notebook 07 (make reproduce)"
