# The two commands of the README: `make reproduce` (the study) and `make test` (the tests).
# Both create the virtual environment .venv from requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
NOTEBOOKS := 01_baseline 02_rlr_agent 03_comparison 04_benchmark 05_transfer 06_pbt

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

# Executes every notebook in order, in place, at its default (full, original) parameters, then writes the
# README's generated blocks from the results. Results record the git commit and whether the tree was
# clean: committed results must come from one run on a clean tree, so a dirty tree gets a loud warning.
reproduce: venv
	@dirty=0; if [ -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then dirty=1; \
		echo "!!!!!!!! WARNING: uncommitted changes: the results will record git_dirty=true and the tests"; \
		echo "!!!!!!!! that check the committed results will fail. Commit first, then make reproduce."; \
	fi; \
	cd notebooks && for notebook in $(NOTEBOOKS); do \
		RLR_TREE_DIRTY=$$dirty $(PY) -m papermill --cwd . $$notebook.ipynb $$notebook.ipynb || exit 1; \
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
