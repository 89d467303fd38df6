# covidnext: `make test` and `make study` do all set-up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
NBDEV_PINS := nbdev==2.4.14 "fastcore<2" "execnb<0.2" "ghapi<2"
# The public sources: a folder given here or in the environment; `make study` fetches them when neither exists.
COVIDNEXT_SOURCES ?= ../shared/data
export COVIDNEXT_SOURCES
OUT ?= out
# quick (tiny images, subset, 1 epoch; writes reports/quick/) on CPU, full on CUDA
PROFILE ?= $(shell $(BIN)/python -c "import torch; print('full' if torch.cuda.is_available() else 'quick')" 2>/dev/null || echo quick)
REPORTS := $(if $(filter full,$(PROFILE)),reports,reports/quick)

.PHONY: env test study lab export clean-nbs check-sync

env: $(BIN)/.installed

$(BIN)/.installed: settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS) $(NBDEV_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# Fails when the notebooks and the exported package disagree, or when a notebook in nbs/ carries outputs.
check-sync: env
	@before=$$(git status --porcelain -- covidnext nbs; git diff -- covidnext nbs | md5sum); \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	after=$$(git status --porcelain -- covidnext nbs; git diff -- covidnext nbs | md5sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export/nbdev_clean changed covidnext/ or nbs/: export and clean the notebooks, then commit." >&2; \
	  git status --short -- covidnext nbs >&2; exit 1; fi

# Tests run with an absolute sources path, since notebooks execute in nbs/.
test: check-sync
	COVIDNEXT_SOURCES="$(abspath $(COVIDNEXT_SOURCES))" $(BIN)/nbdev_test --n_workers 2
	COVIDNEXT_SOURCES="$(abspath $(COVIDNEXT_SOURCES))" $(BIN)/python -m pytest -q tests

# The study: build COVIDx-v1 (split.csv + build report) and render the dataset report.
# Later steps (train, evaluate, compare) join here.
study: env
	@if [ ! -d "$(COVIDNEXT_SOURCES)" ]; then \
	  echo "No sources at $(COVIDNEXT_SOURCES): fetching the public sources there."; \
	  $(BIN)/covidnext-fetch --dest "$(COVIDNEXT_SOURCES)"; fi
	mkdir -p $(REPORTS) $(OUT)
	@# the dataset report does not depend on the profile: it always goes to reports/
	$(BIN)/papermill nbs/study/10_dataset.ipynb reports/10_dataset.ipynb -k python3 --cwd . \
	  -p sources "$(COVIDNEXT_SOURCES)" -p out "$(OUT)/covidx-v1"
	$(BIN)/jupyter nbconvert --to html reports/10_dataset.ipynb

lab: env
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs --no-browser
