"""Render the study as a static site: the README as the home page, then the executed notebooks in order.

    .venv/bin/python build_site.py      # writes build/site/ (make site); open build/site/index.html

Nothing is re-executed: the pages show what `make reproduce` committed (outputs, figures, tables,
generated readings). nbconvert renders the notebooks (figures are embedded in the pages, tables stay
HTML); mistune (nbconvert's own markdown renderer) renders the README and docs/original.md. The pages
load nothing from the network: the notebook template's script tags for require.js and MathJax, which
point to a CDN, are removed (no notebook here uses either).
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune

from readme import NOTEBOOKS  # the notebooks, in order: one list for the README and the site

ROOT = Path(__file__).resolve().parent
SOURCES = {
    "headline": ("04_benchmark", "Reading"),
    "one-run": ("03_comparison", None),
    "verdict": ("04_benchmark", "The-pre-registered-comparisons"),
    "transfer": ("05_transfer", "Reading"),
    "durations": (None, None),
    "performance": (None, None),
}
"""Each generated README block -> the notebook (and section anchor) whose outputs it reports."""

STYLE = """<style>
nav.site { font-family: sans-serif; padding: 0.6em 1em; background: #f3f3f3; border-bottom: 1px solid #ccc; }
nav.site a { margin-right: 1.2em; } nav.site a.here { font-weight: bold; text-decoration: none; color: #000; }
main.page { max-width: 1000px; margin: 1em auto; font-family: sans-serif; line-height: 1.45; padding: 0 1em; }
main.page table { border-collapse: collapse; font-size: 0.85em; } main.page td, main.page th { border: 1px solid #ccc; padding: 2px 6px; }
main.page img { max-width: 100%; } p.source { font-size: 0.85em; color: #555; }
</style>"""


def title_of(name: str) -> str:
    return name.replace("_", " ", 1).replace("_", " ")


def navigation(current: str) -> str:
    """Links to the home page and every notebook, in order; the current page in bold."""
    links = [("index", "home: the verdict")] + [(name, title_of(name)) for name in NOTEBOOKS] + \
        [("original", "the original experiment")]
    here = ' class="here"'
    return '<nav class="site">' + "".join(
        f'<a href="{target}.html"{here if target == current else ""}>{html.escape(label)}</a>'
        for target, label in links) + "</nav>"


def offline(page: str) -> str:
    """The page without script tags that load from the network (require.js, MathJax)."""
    return re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", page)


def site_links(page: str) -> str:
    """Links between the repository's documents rewritten as links between the site's pages."""
    page = re.sub(r'href="(?:\.\./)?docs/original\.md(#[^"]*)?"', lambda m: f'href="original.html{m.group(1) or ""}"', page)
    page = re.sub(r'href="(?:\.\./)?README\.md(#[^"]*)?"', lambda m: f'href="index.html{m.group(1) or ""}"', page)
    return re.sub(r'href="(?:\.\./)?(?:notebooks/)?(\d\d_\w+)\.ipynb(#[^"]*)?"',
                  lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', page)


def notebook_page(name: str) -> str:
    """One executed notebook as HTML (nbconvert's lab template), with the site navigation on top.
    Saved widget state (a notebook progress bar) is dropped: rendering it would fetch the widget manager
    from a CDN; each widget output keeps its plain-text form."""
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    notebook.metadata.pop("widgets", None)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    body = site_links(offline(body)).replace("</head>", STYLE + "</head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda match: match.group(1) + navigation(name), body, count=1)


def github_anchors(content: str) -> str:
    """Each heading also gets the anchor a code host gives it (lowercase, punctuation dropped, spaces as
    dashes), so that links written for the repository (README.md#...) work on the site too."""
    def add(match: re.Match) -> str:
        text = re.sub(r"<[^>]+>", "", match.group(3)).replace("¶", "")
        slug = re.sub(r"[^\w\- ]", "", html.unescape(text).strip().lower()).replace(" ", "-")
        return f'{match.group(1)}<a id="{html.escape(slug)}"></a>{match.group(3)}{match.group(4)}'
    return re.sub(r"(<h([1-6])[^>]*>)(.*?)(</h\2>)", add, content, flags=re.S)


def markdown_page(markdown: str, current: str, title: str) -> str:
    """A markdown document as a standalone page; links to .md files become links to their pages."""
    content = github_anchors(site_links(markdown2html_mistune(markdown)))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{STYLE}</head>"
            f"<body>{navigation(current)}<main class=\"page\">{content}</main></body></html>\n")


def with_sources(markdown: str) -> str:
    """The README with a line after each generated block naming the notebook section it comes from."""
    def source(match: re.Match) -> str:
        name = match.group(1)
        notebook, anchor = SOURCES.get(name, (None, None))
        if notebook is None:
            return match.group(0)
        target = f"{notebook}.html" + (f"#{anchor}" if anchor else "")
        where = title_of(notebook) + (f", section \"{anchor.replace('-', ' ')}\"" if anchor else "")
        return f'{match.group(0)}\n\n<p class="source">Source: <a href="{target}">{where}</a></p>\n'
    return re.sub(r"<!-- end: ([\w-]+) -->", source, markdown)


def build(output: Path) -> list[Path]:
    """Write the whole site under output (emptied first); return the pages written."""
    missing = [name for name in NOTEBOOKS if not (ROOT / "notebooks" / f"{name}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"notebooks {missing} are missing: run `make reproduce` first")
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    shutil.copytree(ROOT / "figures", output / "figures")
    shutil.copytree(ROOT / "docs", output / "docs", ignore=shutil.ignore_patterns("*.md"))  # the screenshots
    pages = {"index": markdown_page(with_sources((ROOT / "README.md").read_text()), "index", "RLR Scheduler"),
             "original": markdown_page((ROOT / "docs" / "original.md").read_text(), "original", "The original"),
             **{name: notebook_page(name) for name in NOTEBOOKS}}
    written = []
    for name, page in pages.items():
        path = output / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "site", help="folder to write (emptied first)")
    args = parser.parse_args()
    pages = build(args.output)
    print(f"wrote {len(pages)} pages to {args.output}; open {args.output / 'index.html'} "
          f"or run: python -m http.server --directory {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
