"""Render the study as a static site: the README as the home page, the pages of docs/, then the executed
notebooks in order.

    .venv/bin/python build_site.py      # writes build/site/ (make site); open build/site/index.html

Nothing is re-executed: the pages show what `make reproduce` committed (outputs, figures, tables,
generated readings). nbconvert renders the notebooks (figures are embedded in the pages, tables stay
HTML); mistune (nbconvert's own markdown renderer) renders the README and the docs/*.md pages (the detail the
README links to: the verdict, the transfer, the peers, usage, performance, reproducibility, the original). The pages
load nothing from the network: the notebook template's script tags for require.js and MathJax, which
point to a CDN, are removed (no notebook here uses either).

What a page shows is sanitised (nh3, a well-kept HTML sanitiser): markdown cells, outputs (text/html
included) and the README keep their text, tables, figures and links, but no script, event handler,
style element, form or javascript: URL reaches the reader; each page's Content-Security-Policy forbids
scripts altogether. The builder empties its output folder only when the folder is empty or holds the marker
file a previous build wrote there; it refuses any other folder.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from pathlib import Path

import nbformat
import nh3
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune

from readme import NOTEBOOKS  # the notebooks, in order: one list for the README and the site

ROOT = Path(__file__).resolve().parent
SOURCES = {
    "headline": ("04_verdict", "Reading"),
    "one-run": ("03_comparison", None),
    "verdict": ("04_verdict", "The-primary-tests"),
    "transfer": ("05_transfer", "Reading"),
    "peers": ("06_pbt", None),
    "which-to-use": ("06_pbt", None),
    "tuned-families": ("06_pbt", None),
    "mnist1d": ("07_mnist1d", "Reading"),
    "mnist1d-headline": ("07_mnist1d", "The-pre-registered-tests"),
    "durations": (None, None),
    "performance": (None, None),
}
"""Each generated block -> the notebook (and section anchor) whose outputs it reports."""


def doc_pages(root: Path = ROOT) -> list[str]:
    """The docs/*.md pages by name, in the order the README first links them (its list is the one order;
    a page it does not link comes after, by name); docs/original.md is the site's last page."""
    names = [path.stem for path in sorted((root / "docs").glob("*.md")) if path.stem != "original"]
    linked = re.findall(r"\]\(docs/([\w-]+)\.md", (root / "README.md").read_text())
    order = {name: index for index, name in enumerate(dict.fromkeys(linked))}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))


def doc_title(name: str, root: Path = ROOT) -> str:
    """A docs page's navigation label: its first heading."""
    first = (root / "docs" / f"{name}.md").read_text().splitlines()[0]
    return first.lstrip("# ").strip() or name

STYLE = """<style>
nav.site { font-family: sans-serif; padding: 0.6em 1em; background: #f3f3f3; border-bottom: 1px solid #ccc; }
nav.site a { margin-right: 1.2em; } nav.site a.here { font-weight: bold; text-decoration: none; color: #000; }
main.page { max-width: 1000px; margin: 1em auto; font-family: sans-serif; line-height: 1.45; padding: 0 1em; }
main.page table { border-collapse: collapse; font-size: 0.85em; } main.page td, main.page th { border: 1px solid #ccc; padding: 2px 6px; }
main.page img { max-width: 100%; } p.source { font-size: 0.85em; color: #555; }
</style>"""


SITE_MARKER = ".rlr-site"
"""written into every folder the builder fills: the only kind of non-empty folder it will empty"""

CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                           "font-src 'self' data:; script-src 'none'; object-src 'none'; base-uri 'none'; "
                           "form-action 'none'")
"""No script of any kind runs on a page; images, styles and fonts come from the page or the site itself."""

ALLOWED_TAGS = set(nh3.ALLOWED_TAGS) | {"main", "section"}
ALLOWED_ATTRIBUTES = {**{tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()},
                      "a": {"href", "title"}, "img": {"src", "alt", "width", "height", "title"},
                      "th": set(nh3.ALLOWED_ATTRIBUTES["th"]) | {"title"}}
IMAGE_DATA = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*", re.I)


def keep_attribute(element: str, attribute: str, value: str) -> str | None:
    """nh3's attribute filter: a data: URL only as an image's own bitmap (PNG, JPEG, GIF, WebP), never as a
    link or an SVG (which can carry script)."""
    if value.strip().lower().startswith("data:") and not (element == "img" and attribute == "src"
                                                          and IMAGE_DATA.fullmatch(value.strip())):
        return None
    return value


def sanitised(fragment: str) -> str:
    """An HTML fragment with only the tags, attributes and URL schemes a study page needs (nh3): scripts,
    event handlers, style elements, iframes, forms and javascript: URLs are dropped."""
    return nh3.clean(fragment, tags=ALLOWED_TAGS, attributes={**ALLOWED_ATTRIBUTES, "*": {"class", "id"}},
                     url_schemes={"http", "https", "mailto", "data"}, attribute_filter=keep_attribute,
                     link_rel="noopener noreferrer", strip_comments=True)


def page_head(title: str, styles: str = "") -> str:
    """A page's head: charset, the Content-Security-Policy, the title (escaped), the template's styles, ours."""
    return (f'<head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
            f'content="{CONTENT_SECURITY_POLICY}"><title>{html.escape(title)}</title>{styles}{STYLE}</head>')


def title_of(name: str) -> str:
    return name.replace("_", " ", 1).replace("_", " ")


def navigation(current: str) -> str:
    """Links to the home page, every docs page and every notebook, in order; the current page in bold."""
    links = [("index", "home: the answer")] + [(name, doc_title(name)) for name in doc_pages()] + \
        [(name, title_of(name)) for name in NOTEBOOKS] + [("original", "the original experiment")]
    here = ' class="here"'
    return '<nav class="site">' + "".join(
        f'<a href="{target}.html"{here if target == current else ""}>{html.escape(label)}</a>'
        for target, label in links) + "</nav>"


def site_links(page: str) -> str:
    """Links between the repository's documents rewritten as links between the site's pages."""
    page = re.sub(r'href="(?:\.\./)?(?:docs/)?(\w[\w-]*)\.md(#[^"]*)?"',
                  lambda m: f'href="{"index" if m.group(1) == "README" else m.group(1)}.html{m.group(2) or ""}"', page)
    page = re.sub(r'src="\.\./figures/', 'src="figures/', page)  # a docs page's figures, from the site's root
    return re.sub(r'href="(?:\.\./)?(?:notebooks/)?(\d\d_\w+)\.ipynb(#[^"]*)?"',
                  lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', page)


def notebook_page(name: str, root: Path = ROOT) -> str:
    """One executed notebook as HTML (nbconvert's lab template), with the site navigation on top. The body
    is sanitised; the head is the site's own with the template's style sheets (the template's scripts,
    require.js and MathJax from a CDN, are dropped: no notebook here uses them). Saved widget state (a
    notebook progress bar) is dropped too: rendering it would fetch the widget manager from a CDN; each
    widget output keeps its plain-text form."""
    notebook = nbformat.read(root / "notebooks" / f"{name}.ipynb", as_version=4)
    notebook.metadata.pop("widgets", None)
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    head = page[page.index("<head"):page.index("</head>")]
    styles = "".join(re.findall(r"<style[^>]*>.*?</style>", head, flags=re.S))
    body = re.search(r"<body([^>]*)>(.*)</body>", page, flags=re.S)
    body_class = re.search(r'class="([\w\s-]*)"', body.group(1))
    return (f"<!DOCTYPE html>\n<html>{page_head(title_of(name), styles)}"
            f"<body{' class=' + chr(34) + body_class.group(1) + chr(34) if body_class else ''}>{navigation(name)}"
            f"{site_links(sanitised(body.group(2)))}</body></html>\n")


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
    content = github_anchors(site_links(sanitised(markdown2html_mistune(markdown))))
    return (f"<!DOCTYPE html>\n<html>{page_head(title)}"
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


def prepare_output(output: Path) -> None:
    """An empty output folder with the site marker in it. An existing folder is emptied only if it is empty
    already or holds SITE_MARKER (a folder this builder filled); a file, a link, the checkout, a folder
    above it or any other folder is refused with a ValueError, and nothing is deleted."""
    output = Path(output)
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ValueError(f"--output {output}: not a folder (a file or a link); give a folder for the site")
    resolved = output.resolve()
    if resolved == ROOT or resolved in ROOT.parents or resolved == Path.home().resolve():
        raise ValueError(f"--output {output}: the checkout, a folder above it or the home folder; give a folder "
                         "of its own (default build/site)")
    if output.exists() and any(output.iterdir()):
        marker = output / SITE_MARKER
        if not marker.is_file() or marker.is_symlink():
            raise ValueError(f"--output {output} is not empty and was not written by build_site.py (no "
                             f"{SITE_MARKER} in it): refusing to delete it; give a new or empty folder")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / SITE_MARKER).write_text("written by build_site.py: the builder may empty this folder\n")


def build(output: Path, root: Path = ROOT) -> list[Path]:
    """Write the whole site under output (see prepare_output) from the checkout at root; return the pages."""
    missing = [name for name in NOTEBOOKS if not (root / "notebooks" / f"{name}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"notebooks {missing} are missing: run `make reproduce` first")
    clashing = set(doc_pages(root)) & {"index", "original", *NOTEBOOKS}
    if clashing:
        raise ValueError(f"docs pages {sorted(clashing)} would overwrite the site's page of the same name: rename them")
    prepare_output(output)
    shutil.copytree(root / "figures", output / "figures")
    shutil.copytree(root / "docs", output / "docs", ignore=shutil.ignore_patterns("*.md"))  # the screenshots
    pages = {"index": markdown_page(with_sources((root / "README.md").read_text()), "index", "RLR Scheduler"),
             **{name: markdown_page(with_sources((root / "docs" / f"{name}.md").read_text()), name, doc_title(name, root))
                for name in doc_pages(root)},
             "original": markdown_page((root / "docs" / "original.md").read_text(), "original", "The original"),
             **{name: notebook_page(name, root) for name in NOTEBOOKS}}
    written = []
    for name, page in pages.items():
        path = output / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "site", help="folder to write: new, empty, or one an earlier build wrote (emptied first)")
    args = parser.parse_args()
    try:
        pages = build(args.output)
    except ValueError as error:
        print(f"build_site.py: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(pages)} pages to {args.output}; open {args.output / 'index.html'} "
          f"or run: python -m http.server --directory {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
