"""The front page's summary figure (notebook 08): its rows come from notebooks 04 and 06's results, every
kind is drawn in its colour, and bad rows are refused before anything is drawn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

import rlr_report as report  # noqa: E402
import rlr_study as study  # noqa: E402
import rlr_summaries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_rows_are_the_verdicts_methods_and_pbt_with_their_kinds():
    rows = rlr_summaries.summary_figure_rows(ROOT / "results")
    bench = json.loads((ROOT / "results" / "benchmark_summary.json").read_text())
    kinds = dict(zip(rows["method"], rows["kind"]))
    for name, family in study.FAMILIES.items():
        assert kinds[study.tuned_label(name)] == family.kind
    assert all(kinds[label] == "controller" for label in bench["controllers"]["labels"])
    assert kinds[study.BASELINE] == "original" and kinds["DQN as coded (original)"] == "original"
    test = pd.DataFrame(bench["summaries"]["test_mse"]).set_index("method")
    for _, row in rows[rows["kind"] != "pbt"].iterrows():  # the verdict's own numbers, not recomputed ones
        assert row["geometric mean"] == test.loc[row["method"], "geometric mean"]
    assert rows["method"].is_unique and len(rows[rows["kind"] == "pbt"]) == 1


def test_the_figure_colours_each_kind_and_marks_the_references():
    rows = rlr_summaries.summary_figure_rows(ROOT / "results")
    headroom = rlr_summaries.summary_figure_headroom(ROOT / "results")
    assert headroom["low"] < headroom["high"]
    fig = report.plot_summary(rows, [study.TUNED, "one-cycle, tuned"], headroom, "title")
    ax = fig.axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert {label for label, _ in report.SUMMARY_KINDS.values()} <= set(legend)
    assert f"reference: {study.TUNED}" in legend and headroom["label"] in legend
    bold = {tick.get_text() for tick in ax.get_yticklabels() if tick.get_fontweight() == "bold"}
    assert bold == {study.TUNED, "one-cycle, tuned"}


def test_bad_rows_and_missing_results_are_refused_by_name(tmp_path):
    rows = rlr_summaries.summary_figure_rows(ROOT / "results")
    with pytest.raises(ValueError, match="unknown kind"):
        report.plot_summary(rows.assign(kind="mystery"), [study.TUNED], None, "title")
    with pytest.raises(ValueError, match="references"):
        report.plot_summary(rows, ["no such method"], None, "title")
    shutil.copy(ROOT / "results" / "benchmark_summary.json", tmp_path / "benchmark_summary.json")
    with pytest.raises(FileNotFoundError, match="pbt_summary.json is missing: run notebook 06_pbt"):
        rlr_summaries.summary_figure_rows(tmp_path)
