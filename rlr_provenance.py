"""Which committed results come from which inputs: per-notebook content hashes, so that `make reproduce`
re-runs only the notebooks whose inputs changed and the tests can tell a stale result from a fresh one.

A notebook's inputs are what its results are a function of:

- the source of its code cells, in order (its `parameters` cell included: it holds the defaults that
  `make reproduce` runs; the `injected-parameters` cell papermill adds is not: outputs, execution counts
  and metadata are not either, so executing a notebook does not change its hash);
- every project module (a top-level *.py of the repository) it imports, transitively (ast, not regexes);
- requirements.txt (the pinned versions of everything else it runs on);
- the bytes of every results file it reads that an earlier notebook wrote (found in its code: see
  `results_read`); so re-running notebook 04 makes 05 and 06 stale, and `make reproduce`, which runs the
  notebooks in order, re-runs them after it.

Each input is hashed on its own (sha256 of its bytes; paths relative to the repository root, so the hash
does not depend on where the checkout lies) and the notebook's hash is the sha256 of that table. After a
notebook runs, `record` writes results/provenance/<notebook>.json: {"notebook", "input_hash", "inputs":
{path: sha256}, "recorded_at"}; the per-input hashes say what changed since.

    python rlr_provenance.py list              # the notebooks, in order (notebooks/[0-9][0-9]_*.ipynb)
    python rlr_provenance.py status            # per notebook: fresh or stale, and which inputs changed
    python rlr_provenance.py needs-run NAME    # exit 0: NAME must run (no record, or stale, or FORCE=1); 1: not
    python rlr_provenance.py record NAME       # after running NAME: write its record

Standard library only, and no side effects on import: readme.py (and the Makefile, before the virtual
environment's packages matter) import or run it without loading torch.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import fnmatch
import hashlib
import json
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parent
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
"""The study's notebooks, run in the sorted order of their names: the one definition of the list."""
RESULTS_FOLDER = "results"
PROVENANCE_FOLDER = "results/provenance"
REQUIREMENTS = "requirements.txt"
INJECTED_TAG = "injected-parameters"
FILE_NAME = re.compile(r"[\w.-]+\.(?:json|csv|npz|pt|parquet)")
"""What a string in the code must look like to name a results file that is not on disk yet."""
EXIT_MUST_RUN, EXIT_UNCHANGED, EXIT_ERROR = 0, 1, 2


# ---------------------------------------------------------------------------------------------------
# The notebooks and their code
# ---------------------------------------------------------------------------------------------------

def notebook_names(root: Path = ROOT) -> list[str]:
    """The notebooks' names (no folder, no suffix) in run order: derived from the files, so the Makefile,
    the README and the site never hold a list of their own that could fall behind."""
    return sorted(path.stem for path in (Path(root) / "notebooks").glob(NOTEBOOK_GLOB))


def notebook_path(name: str, root: Path = ROOT) -> Path:
    """notebooks/<name>.ipynb; ValueError naming the notebook when it is not one of the study's."""
    names = notebook_names(root)
    if name not in names:
        raise ValueError(f"unknown notebook {name!r}: the notebooks are {names}")
    return Path(root) / "notebooks" / f"{name}.ipynb"


def code_cells(name: str, root: Path = ROOT) -> list[str]:
    """The source of the notebook's code cells, in order, without papermill's injected-parameters cell:
    `make reproduce` runs the defaults (the parameters cell), and a cell papermill added for another run
    must not make the committed result look stale."""
    path = notebook_path(name, root)
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"notebook {name}: {path.name} is not a notebook's JSON: {error}") from error
    sources = []
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code" or INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell.get("source", "")
        sources.append("".join(source) if isinstance(source, list) else source)
    return sources


def parse_cell(source: str) -> ast.Module:
    """A code cell as Python: IPython's line magics and shell escapes (% and ! lines) become blank lines."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def notebook_trees(name: str, root: Path = ROOT) -> list[ast.Module]:
    """The notebook's code cells, parsed; ValueError naming the notebook and the cell when one is not Python."""
    trees = []
    for index, source in enumerate(code_cells(name, root)):
        try:
            trees.append(parse_cell(source))
        except SyntaxError as error:
            raise ValueError(f"notebook {name}: code cell {index} is not Python: {error}") from error
    return trees


# ---------------------------------------------------------------------------------------------------
# The project modules a notebook imports, transitively
# ---------------------------------------------------------------------------------------------------

def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """The project's own modules (top-level *.py of the repository) by module name: only these are hashed
    as code; installed packages are pinned by requirements.txt."""
    return {path.stem: path for path in sorted(Path(root).glob("*.py"))}


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of the modules an import statement anywhere in tree imports (function-level ones
    too: a lazy import still runs that code). Relative imports name no top-level module and are skipped."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def module_tree(path: Path) -> ast.Module:
    """A project module parsed, for its imports and its definitions."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def modules_imported(name: str, root: Path = ROOT) -> list[str]:
    """The project modules the notebook imports, directly or through another project module, sorted:
    a change to any of them can change the notebook's results."""
    modules = project_modules(root)
    pending = set()
    for tree in notebook_trees(name, root):
        pending |= imported_modules(tree) & set(modules)
    found: set[str] = set()
    while pending:
        module = pending.pop()
        found.add(module)
        pending |= (imported_modules(module_tree(modules[module])) & set(modules)) - found
    return sorted(found)


# ---------------------------------------------------------------------------------------------------
# The results files a notebook reads: named by strings in its code and in the project code it uses
# ---------------------------------------------------------------------------------------------------

def import_aliases(tree: ast.AST, modules: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """The names an import binds to project code: `import rlr_study as study` gives study -> (rlr_study,
    None), `from rlr_engine import Config` gives Config -> (rlr_engine, 'Config')."""
    modules, aliases = set(modules), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = (alias.name, None)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = (node.module, alias.name)
    return aliases


def top_level_definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """A module's functions, classes and assigned constants by name: what a reference to it can reach."""
    definitions: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        definitions[leaf.id] = node
    return definitions


def references(tree: ast.AST, aliases: dict[str, tuple[str, str | None]], module: str | None,
               local: Iterable[str]) -> set[tuple[str, str]]:
    """(module, definition) pairs tree refers to: `study.load_benchmark`, an imported `Config`, or (inside
    a project module) a bare name defined at that module's top level. Calls and plain references both
    count: a function passed to a pool still runs."""
    local, found = set(local), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and target[1] is None:
                found.add((target[0], node.attr))
        elif isinstance(node, ast.Name):
            target = aliases.get(node.id)
            if target is not None and target[1] is not None:
                found.add(target)
            elif module is not None and node.id in local:
                found.add((module, node.id))
    return found


class CodeStrings(ast.NodeVisitor):
    """The strings of some code that could name a file: constants, and f-strings as glob patterns
    (f"transfer_agent_{name}.pt" -> 'transfer_agent_*.pt'). Keys are left out (x["controllers"], dict
    literals' keys, .get("controllers")): they name JSON fields, not files."""

    def __init__(self) -> None:
        self.constants: set[str] = set()
        self.patterns: set[str] = set()
        self._keys: set[int] = set()

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._keys.add(id(node.slice))
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        self._keys.update(id(key) for key in node.keys if key is not None)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop", "setdefault") and node.args:
            self._keys.add(id(node.args[0]))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and id(node) not in self._keys:
            self.constants.add(node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        parts = [value.value if isinstance(value, ast.Constant) else "*" for value in node.values]
        self.patterns.add("".join(parts))
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                self.visit(value)


def definitions_reached(name: str, root: Path = ROOT) -> list[ast.AST]:
    """Every project definition the notebook's code reaches, following references through the project
    modules: 05 reads notebook 04's summary through rlr_study.benchmark_summary, whose body names the file."""
    modules = project_modules(root)
    trees = notebook_trees(name, root)
    notebook_aliases: dict[str, tuple[str, str | None]] = {}
    for tree in trees:
        notebook_aliases.update(import_aliases(tree, modules))
    scopes: dict[str, tuple[dict[str, ast.AST], dict[str, tuple[str, str | None]]]] = {}

    def module_scope(module: str) -> tuple[dict[str, ast.AST], dict[str, tuple[str, str | None]]]:
        if module not in scopes:
            tree = module_tree(modules[module])
            scopes[module] = (top_level_definitions(tree), import_aliases(tree, modules))
        return scopes[module]

    pending = set().union(*(references(tree, notebook_aliases, None, ()) for tree in trees))
    seen: set[tuple[str, str]] = set()
    reached: list[ast.AST] = []
    while pending:
        module, definition = pending.pop()
        seen.add((module, definition))
        definitions, aliases = module_scope(module)
        node = definitions.get(definition)
        if node is None:
            continue  # a submodule or a name the module imports from a package: nothing of ours to read
        reached.append(node)
        pending |= references(node, aliases, module, definitions) - seen
    return reached


def result_files(root: Path = ROOT) -> list[str]:
    """The files directly in results/ (not the provenance records, not hidden temp files), by name."""
    folder = Path(root) / RESULTS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def stem(file_name: str) -> str:
    """'rl_described' for rl_described.json and rl_described.npz: one result, whatever the suffix."""
    return file_name.split(".")[0]


def with_siblings(file_names: Iterable[str], files: Iterable[str]) -> set[str]:
    """The files and those sharing their stems: rl_described.json's runs lie in rl_described.npz, and
    reading one reads the other (rlr_results.load_results)."""
    file_names = set(file_names)
    stems = {stem(file) for file in file_names}
    return file_names | {file for file in files if stem(file) in stems}


def strings_in(trees: Iterable[ast.AST]) -> CodeStrings:
    """The constants and f-string patterns of the trees (keys excluded)."""
    strings = CodeStrings()
    for tree in trees:
        strings.visit(tree)
    return strings


def files_named_in_cells(name: str, root: Path = ROOT) -> set[str]:
    """The results files the notebook's own cells name: a file name ('rl_described.json', also when not on
    disk yet), the stem of files on disk ('baseline_minibatch', joined to '.json' by an f-string over a list
    of stems) or a file-name pattern with a literal start (f"transfer_agent_{name}.pt")."""
    files = result_files(root)
    stems = {stem(file) for file in files}
    own = strings_in(notebook_trees(name, root))
    named = {text for text in own.constants if FILE_NAME.fullmatch(text.rsplit("/", 1)[-1])}
    named = {text.rsplit("/", 1)[-1] for text in named}
    named |= {file for file in files if stem(file) in own.constants & stems}
    for pattern in own.patterns:
        base = pattern.rsplit("/", 1)[-1]
        if not base.startswith("*") and FILE_NAME.fullmatch(base.replace("*", "x")):
            named |= set(fnmatch.filter(files, base))
    return with_siblings(named, files)


def files_mentioned(name: str, root: Path = ROOT) -> set[str]:
    """The results files the notebook's code names: in its own cells (files_named_in_cells) and, in the
    project code those cells reach, the exact name of a file on disk ('benchmark_runs.csv'): there, stems
    and f-strings are method names and labels (train_baseline's 'baseline_minibatch', f"rl_{variant}"),
    not files."""
    files = result_files(root)
    reached = strings_in(definitions_reached(name, root))
    return with_siblings(files_named_in_cells(name, root) | ({text.rsplit("/", 1)[-1] for text in reached.constants}
                                                             & set(files)), files)


def writers(root: Path = ROOT) -> dict[str, str]:
    """file -> the notebook that writes it: the first whose own cells name it, else the first whose code
    reaches it. Project code names files for every notebook (rlr_summaries names each summary's source),
    so a mention through it says only that a notebook may read the file, never that it writes it."""
    names = notebook_names(root)
    writer: dict[str, str] = {}
    for name in names:
        for file in sorted(files_named_in_cells(name, root)):
            writer.setdefault(file, name)
    for name in names:
        for file in sorted(files_mentioned(name, root)):
            writer.setdefault(file, name)
    return writer


def results_read(name: str, root: Path = ROOT) -> list[str]:
    """The results files (relative paths) the notebook reads that another notebook writes: those its code
    mentions whose writer (writers) comes earlier (a notebook cannot read what a later one writes, nor is
    what it writes itself its input). So 03 reads 01's and 02's runs, 05 and 06 notebook 04's summary,
    and 04 none of 05's or 06's summaries, which the summary module it imports names."""
    names = notebook_names(root)
    notebook_path(name, root)  # ValueError for an unknown name
    writer = writers(root)
    position = names.index(name)
    return sorted(f"{RESULTS_FOLDER}/{file}" for file in files_mentioned(name, root)
                  if names.index(writer[file]) < position)


# ---------------------------------------------------------------------------------------------------
# Hashes and records
# ---------------------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The file's bytes as they are (no newline or encoding normalisation); 'missing' when absent, so a
    result that appears later changes the hash."""
    return sha256_bytes(path.read_bytes()) if path.is_file() else "missing"


def input_hashes(name: str, root: Path = ROOT) -> dict[str, str]:
    """{input: sha256} for every input of the notebook, keyed by paths relative to the repository root
    (code cells as '<notebook path>#code-cell-NN', in order): what the record stores and status compares."""
    root = Path(root)
    relative = notebook_path(name, root).relative_to(root).as_posix()
    inputs = {f"{relative}#code-cell-{index:02d}": sha256_bytes(source.encode("utf-8"))
              for index, source in enumerate(code_cells(name, root))}
    for module in modules_imported(name, root):
        inputs[f"{module}.py"] = sha256_file(root / f"{module}.py")
    inputs[REQUIREMENTS] = sha256_file(root / REQUIREMENTS)
    for path in results_read(name, root):
        inputs[path] = sha256_file(root / path)
    return inputs


def combined_hash(inputs: dict[str, str]) -> str:
    """One hash for the whole table: sha256 of its canonical JSON (sorted keys), so it is the same for the
    same inputs on every machine."""
    return sha256_bytes(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def input_hash(name: str, root: Path = ROOT) -> str:
    """The notebook's hash from the current tree: equal to its record's when its results are fresh."""
    return combined_hash(input_hashes(name, root))


def record_path(name: str, root: Path = ROOT) -> Path:
    return Path(root) / PROVENANCE_FOLDER / f"{name}.json"


def write_text_atomically(path: Path, text: str) -> None:
    """Write through a temp file in the same folder and os.replace: a reader (or a killed run) never leaves
    half a record. rlr_results.atomic_write_text does the same, but importing rlr_results imports torch,
    which this module must not (readme.py and the Makefile use it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600; a record is as readable as the results beside it
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def record(name: str, root: Path = ROOT, now: datetime.datetime | None = None) -> Path:
    """Write results/provenance/<name>.json from the current tree: call it right after the notebook ran."""
    inputs = input_hashes(name, root)
    recorded_at = (now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds")
    content = {"notebook": name, "input_hash": combined_hash(inputs), "inputs": inputs, "recorded_at": recorded_at}
    path = record_path(name, root)
    write_text_atomically(path, json.dumps(content, indent=1, sort_keys=True) + "\n")
    return path


def load_record(name: str, root: Path = ROOT) -> dict | None:
    """The notebook's committed record, or None when it has none (it never ran under make reproduce)."""
    path = record_path(notebook_path(name, root).stem, root)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def changed_inputs(name: str, root: Path = ROOT) -> dict[str, list[str]]:
    """What differs between the record and the current tree: {'changed', 'added', 'removed'} input lists
    (all empty when fresh; every current input 'added' when there is no record)."""
    recorded = (load_record(name, root) or {}).get("inputs", {})
    current = input_hashes(name, root)
    return {"changed": sorted(key for key in current.keys() & recorded.keys() if current[key] != recorded[key]),
            "added": sorted(current.keys() - recorded.keys()),
            "removed": sorted(recorded.keys() - current.keys())}


def is_fresh(name: str, root: Path = ROOT) -> bool:
    """Whether the notebook's committed results come from the current tree's inputs."""
    saved = load_record(name, root)
    return saved is not None and saved.get("input_hash") == input_hash(name, root)


def needs_run(name: str, root: Path = ROOT, force: bool = False) -> tuple[bool, str]:
    """(must it run, why): forced, no record, or a stale hash (naming what changed); else unchanged."""
    if force:
        return True, "forced (FORCE=1)"
    if load_record(name, root) is None:
        return True, "no provenance record"
    if is_fresh(name, root):
        return False, "unchanged"
    return True, "stale: " + describe_changes(changed_inputs(name, root))


def describe_changes(changes: dict[str, list[str]]) -> str:
    """changed_inputs as one line for a person."""
    parts = [f"{kind} {', '.join(paths)}" for kind, paths in changes.items() if paths]
    return "; ".join(parts) or "the hash differs"


def status_lines(root: Path = ROOT) -> Iterator[str]:
    """One line per notebook, in order: fresh, stale (with what changed) or never recorded."""
    for name in notebook_names(root):
        if load_record(name, root) is None:
            yield f"{name}: no record (never run under make reproduce)"
        elif is_fresh(name, root):
            yield f"{name}: fresh"
        else:
            yield f"{name}: stale: {describe_changes(changed_inputs(name, root))}"


def durations(root: Path = ROOT) -> dict[str, float | None]:
    """Seconds each committed notebook ran: papermill's own record in the notebook's metadata; None for a
    notebook that make reproduce has not run yet (a new one: no record, no papermill metadata). A record
    without a duration, or a duration that is not a number, is an error."""
    seconds: dict[str, float | None] = {}
    for name in notebook_names(root):
        metadata = json.loads(notebook_path(name, root).read_text()).get("metadata", {})
        if "papermill" not in metadata and load_record(name, root) is None:
            seconds[name] = None
            continue
        duration = metadata.get("papermill", {}).get("duration")
        if not isinstance(duration, (int, float)):
            raise ValueError(f"{name}.ipynb has no papermill duration: it was not executed by make reproduce")
        seconds[name] = float(duration)
    return seconds


def durations_markdown(root: Path = ROOT) -> str:
    """The README's durations block: a table of seconds per notebook and the total of those that ran."""
    seconds = durations(root)
    ran = {name: value for name, value in seconds.items() if value is not None}
    rows = "\n".join(f"| {name}.ipynb | {'not run yet' if value is None else f'{value:.0f}'} |"
                     for name, value in seconds.items())
    return (f"| notebook | seconds |\n|---|---|\n{rows}\n\nAll {len(ran)} that ran: {sum(ran.values()) / 60:.1f} minutes "
            "of notebook execution in the committed `make reproduce` (papermill's own record in each notebook).")


# ---------------------------------------------------------------------------------------------------
# Command line (the Makefile's reproduce target)
# ---------------------------------------------------------------------------------------------------

def forced(environment: dict[str, str] | None = None) -> bool:
    """FORCE=1 (make reproduce FORCE=1) in the environment: re-run every notebook."""
    value = (os.environ if environment is None else environment).get("FORCE", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """The CLI; needs-run's exit status is the answer (0 must run, 1 unchanged), so errors exit 2: a
    failure must never read as 'unchanged' in the Makefile."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the notebooks, in run order")
    commands.add_parser("status", help="fresh or stale, per notebook, and which inputs changed")
    needs = commands.add_parser("needs-run", help="exit 0 when NAME must run (FORCE=1 forces), 1 when not")
    needs.add_argument("name")
    needs.add_argument("--force", action="store_true", help="as FORCE=1")
    recorder = commands.add_parser("record", help="write results/provenance/NAME.json after NAME ran")
    recorder.add_argument("name")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "list":
            print("\n".join(notebook_names(root)))
        elif arguments.command == "status":
            print("\n".join(status_lines(root)))
        elif arguments.command == "needs-run":
            must_run, reason = needs_run(arguments.name, root, arguments.force or forced())
            print(f"{arguments.name}: {reason}")
            return EXIT_MUST_RUN if must_run else EXIT_UNCHANGED
        elif arguments.command == "record":
            path = record(arguments.name, root)
            print(f"recorded {path.relative_to(root).as_posix()}")
    except (ValueError, OSError, SyntaxError) as error:  # an unknown name, an unreadable or unparsable file
        print(f"rlr_provenance: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:  # anything else must not exit 1 either: print it and exit 2
        traceback.print_exc()
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
