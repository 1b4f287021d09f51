"""Place the generated blocks of README.md and the pages under docs/: what the notebooks and the timing
scripts wrote, verbatim.

Every block between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in README.md or a docs/*.md page
(DOCUMENTS: the front page, and the pages the detail moved to) comes from a file:

- a notebook's summary, results/summaries/<notebook>.json, which the notebook's last cell writes
  (rlr_summaries renders it from the notebook's results; tests/test_readme.py re-renders and compares);
- `durations`: papermill's record of each committed notebook's run time (rlr_provenance.durations_markdown);
- `performance`: the timing scripts' own README parts, benchmarks/results/*.json "readme_markdown".

This script renders nothing and writes no sentence of its own, and imports neither torch nor pandas (a
test checks sys.modules): prose outside the blocks states no measured number (tests/test_readme.py).

    .venv/bin/python readme.py           # rewrite the blocks (make reproduce runs this last)
    .venv/bin/python readme.py --check   # exit 1 when a document differs from what the files give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

import rlr_provenance as provenance

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = provenance.notebook_names(ROOT)  # notebooks/[0-9][0-9]_*.ipynb in order: the one list (Makefile, site)
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
SUMMARIES = "results/summaries"
BENCHMARKS = ("bench_engines", "bench_batched", "bench_threads", "bench_sweep", "bench_vector_env", "bench_lr_free",
              "bench_mnist1d")
"""The timing scripts whose README parts make the performance block, in this order."""


def documents(root: Path = ROOT) -> list[Path]:
    """The documents whose generated blocks this script places: README.md, then every docs/*.md page."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read a JSON object ({error})") from error


def summary_blocks(root: Path) -> dict[str, str]:
    """Block name -> markdown, from every notebook's summary; a block two summaries give is an error."""
    blocks: dict[str, str] = {}
    for path in sorted((root / SUMMARIES).glob("*.json")):
        summary = read_json(path)
        if not isinstance(summary.get("blocks"), dict):
            raise ValueError(f"{path}: a summary needs a 'blocks' object")
        for name, markdown in summary["blocks"].items():
            if name in blocks:
                raise ValueError(f"{path}: block {name!r} is given by another summary too")
            if not isinstance(markdown, str):
                raise ValueError(f"{path}: block {name!r} is not text")
            blocks[name] = markdown
    return blocks


def performance_markdown(root: Path) -> str:
    """The timing scripts' README parts, in BENCHMARKS order (a script not yet run is left out)."""
    paths = [root / "benchmarks" / "results" / f"{name}.json" for name in BENCHMARKS]
    return "\n\n".join(read_json(path)["readme_markdown"].strip() for path in paths if path.exists())


def blocks(root: Path = ROOT) -> dict[str, Callable[[], str]]:
    """Every block this checkout can give, by name (read when placed)."""
    given: dict[str, Callable[[], str]] = {name: (lambda text=text: text) for name, text in summary_blocks(root).items()}
    given["durations"] = lambda: provenance.durations_markdown(root)
    given["performance"] = lambda: performance_markdown(root)
    return given


def render(readme: str, root: Path = ROOT) -> str:
    """README text with every generated block replaced by what the files under root give."""
    given = blocks(root)

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in given:
            raise ValueError(f"README names a generated block {name!r} that no file gives (given: {sorted(given)})")
        return f"{match.group(1)}{given[name]().strip()}\n{match.group(4)}"
    return BLOCK.sub(fill, readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a document is stale")
    args = parser.parse_args()
    stale = []
    for path in documents():
        current = path.read_text()
        rendered = render(current)
        if args.check:
            stale += [path.relative_to(ROOT)] if rendered != current else []
        elif rendered != current:
            provenance.write_text_atomically(path, rendered)
            print(f"rewrote {len(BLOCK.findall(current))} generated blocks of {path.relative_to(ROOT)}")
    if args.check:
        if stale:
            print(f"generated blocks differ from the files in {[str(path) for path in stale]}: run `.venv/bin/python readme.py`")
            return 1
        print("every document's generated blocks match the files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
