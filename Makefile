# The two commands of the README: `make reproduce` (the study) and `make test` (the tests).
# Both create the virtual environment .venv from requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
# The notebooks in run order: rlr_provenance derives them from notebooks/[0-9][0-9]_*.ipynb (standard library
# only, so the system python3 lists them before the venv exists); `=`: listed only when a recipe uses it.
NOTEBOOKS = $(shell $(PYTHON) rlr_provenance.py list)
FORCE ?=  # make reproduce FORCE=1: re-run every notebook, changed or not

.PHONY: venv test reproduce site lab clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade-strategy only-if-needed -r requirements.txt
	# A .pth file puts the repository root on the venv's path: notebooks (and their temp copies in
	# the tests) import rlr_core from anywhere, with no package build step.
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "rlr_scheduler.pth").write_text("$(CURDIR)\n")'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

# Executes, in order, in place, at its default (full, original) parameters, every notebook whose inputs
# changed since its results were made, then writes the README's generated blocks from the results. A
# notebook's inputs (its code cells, the project modules it imports, requirements.txt, the results of
# earlier notebooks it reads) are hashed by rlr_provenance: results/provenance/<notebook>.json records the
# hash after each run, and a notebook whose hash is unchanged is skipped. FORCE=1 re-runs all of them.
# needs-run exits 0 (run), 1 (unchanged) or 2 (error): an error stops the target, never reads as unchanged.
reproduce: venv
	@dirty=0; if [ -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then dirty=1; \
		echo "!!!!!!!! WARNING: uncommitted changes: the results will record git_dirty=true, and their commit will"; \
		echo "!!!!!!!! not name the code they ran. Each notebook's results carry a hash of its inputs"; \
		echo "!!!!!!!! (results/provenance/), which the tests check against the tree: commit the code first."; \
	fi; \
	if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks: '$(PYTHON) rlr_provenance.py list' failed or found none"; exit 1; fi; \
	for notebook in $(NOTEBOOKS); do \
		why=$$(FORCE="$(FORCE)" $(PY) rlr_provenance.py needs-run $$notebook); needed=$$?; \
		if [ $$needed -eq 1 ]; then echo "unchanged: $$notebook"; continue; fi; \
		if [ $$needed -ne 0 ]; then exit $$needed; fi; \
		echo "running $$why"; \
		(cd notebooks && RLR_TREE_DIRTY=$$dirty $(PY) -m papermill --cwd . $$notebook.ipynb $$notebook.ipynb) || exit 1; \
		$(PY) rlr_provenance.py record $$notebook || exit 1; \
	done
	$(PY) readme.py

# The study as a static site (README + executed notebooks, nothing re-executed) in build/site/.
site: venv
	$(PY) build_site.py

# The notebooks in JupyterLab, with a kernel that imports the project's modules (.venv, see above).
lab: venv
	$(PY) -m jupyter lab --notebook-dir=notebooks --ServerApp.allow_root=True

clean-venv:
	rm -rf $(VENV)
