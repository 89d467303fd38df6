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

.PHONY: env test sources study study-wall lab check-sync browser

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

# Tests run with an absolute sources path, since notebooks execute in nbs/. pytest runs on two pytest-xdist workers of
# one thread each; tests/conftest.py groups the tests so that each costly fixture is built once, longest groups first
# (settings.ini pins pytest<9.2: on 9.2, xdist's loadgroup silently ignores the groups, pytest-xdist issue 1386).
# The tests' temporary files (the notebooks' runs, caches and checkpoints: gigabytes) go to .test-tmp/, emptied before
# and removed after a run that passes; a failed run leaves them there to look at.
TEST_TMP := $(CURDIR)/.test-tmp
test: check-sync browser
	rm -rf "$(TEST_TMP)" && mkdir -p "$(TEST_TMP)"
	TMPDIR="$(TEST_TMP)" COVIDNEXT_SOURCES="$(abspath $(COVIDNEXT_SOURCES))" $(BIN)/nbdev_test --n_workers 2
	TMPDIR="$(TEST_TMP)" COVIDNEXT_SOURCES="$(abspath $(COVIDNEXT_SOURCES))" $(BIN)/python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=10 tests
	rm -rf "$(TEST_TMP)"

# The browser of the web page's test (tests/test_serve.py): Debian's chromium, from the system's package manager; where it
# cannot be installed, that test is skipped and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the web page's browser test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } \
	  || echo "could not install chromium: tests/test_serve.py will be skipped"; }

# The public sources, fetched when the folder is not there.
sources: env
	@if [ ! -d "$(COVIDNEXT_SOURCES)" ]; then \
	  echo "No sources at $(COVIDNEXT_SOURCES): fetching the public sources there."; \
	  $(BIN)/covidnext-fetch --dest "$(COVIDNEXT_SOURCES)"; fi

# The study (covidnext-study; `covidnext-study --help` is its manual): PROFILE=full (the default on CUDA) trains every
# variant with 3 seeds, 30 epochs at 224 px, into reports/; PROFILE=quick (the default on CPU) runs tiny images, a
# subset and 1 epoch into reports/quick/, never touching the GPU reports; PROFILE=cpu is a real study at CPU scale
# (reports/cpu/). STUDY_ARGS adds flags, e.g. STUDY_ARGS="--seeds 0 --no-shortcut" or "--resume".
STUDY_ARGS ?=
study: env sources
	$(BIN)/covidnext-study --profile $(PROFILE) --out $(OUT) $(STUDY_ARGS)

# The study as `make study` runs it, timed end to end (covidnext-study --time): one record per run in
# reports/study_wall.json (PROFILE=quick: reports/quick/study_wall.json, cpu: reports/cpu/study_wall.json).
study-wall: env sources
	$(BIN)/covidnext-study --profile $(PROFILE) --out $(OUT) --time $(STUDY_ARGS)

lab: env
	$(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs --no-browser
