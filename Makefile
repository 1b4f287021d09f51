# The two commands of the README: `make reproduce` (the study) and `make test` (the tests).
# Both create the virtual environment .venv from requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
NOTEBOOKS := 01_baseline 02_rlr_agent 03_comparison 04_benchmark 05_transfer

.PHONY: venv test reproduce clean-venv

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

# Executes every notebook in order, in place, at its default (full, original) parameters.
reproduce: venv
	cd notebooks && for notebook in $(NOTEBOOKS); do \
		$(PY) -m papermill --cwd . $$notebook.ipynb $$notebook.ipynb || exit 1; \
	done

clean-venv:
	rm -rf $(VENV)
