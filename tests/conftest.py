"""What several test files share: the public sources (`COVIDNEXT_SOURCES`, `../shared/data` beside the checkout),
small splits of real Kermany images, the published COVIDx-v1 split and one real quick study (each built once per test
run), a way to run a command's function in this process, and the grouping of the tests for pytest-xdist."""
from __future__ import annotations
import inspect, io, os, shutil, subprocess, sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest

SRC = Path(os.environ.get('COVIDNEXT_SOURCES', Path(__file__).parents[1] / '..' / 'shared' / 'data'))
BIN = Path(sys.executable).parent
# Under pytest-xdist (`make test` runs `pytest -n 2`) each worker, and each command it starts, uses one thread: the
# workers fill the cores instead of fighting over them (two threads a process on two busy cores run several times slower).
if os.environ.get('PYTEST_XDIST_WORKER'): os.environ['OMP_NUM_THREADS'] = '1'


def kermany_split(dest: Path, labels: tuple, per_class: int, pattern: list, seed: int = 0) -> Path:
    "Write `dest/split.csv`: `per_class` seeded Kermany images of each of `labels`, split by `pattern` within each class."
    from covidnext.sources import read_kermany
    k = read_kermany(SRC / 'kermany-chest-xray-224')
    k = pd.concat([g.sample(per_class, random_state=seed) for _, g in k[k.label.isin(labels)].groupby('label')])
    k['split'] = pattern * len(labels)
    k['path'] = [os.path.relpath(p, SRC) for p in k.path]
    k[['path', 'patient_id', 'label', 'source', 'split']].to_csv(dest / 'split.csv', index=False)
    return dest / 'split.csv'


def run_cli(main, *args, prog: str | None = None) -> subprocess.CompletedProcess:
    """Run a command's function in this process as the command runs with its output piped: its exit status, what it
    printed (help 80 columns wide), and the message of a `SystemExit` on stderr, as Python prints it. `main` takes
    `argv`, or reads `sys.argv` (`call_cli`)."""
    argv, out, err = [str(a) for a in args], io.StringIO(), io.StringIO()
    with mock.patch.object(sys, 'argv', [prog or main.__name__, *argv]), mock.patch.dict(os.environ, COLUMNS='80'), \
            redirect_stdout(out), redirect_stderr(err):
        try: code = main(argv) if 'argv' in inspect.signature(main).parameters else main()
        except SystemExit as e: code = e.code
    if not (code is None or isinstance(code, int)): print(code, file=err); code = 1
    return subprocess.CompletedProcess([prog, *argv], code if isinstance(code, int) else 0, out.getvalue(), err.getvalue())


@pytest.fixture(scope='session')
def covidx_v1(tmp_path_factory) -> tuple:
    "The published COVIDx-v1 split built by `covidnext-build --split-files`: (its folder `covidx-v1`, the command's result)."
    out = tmp_path_factory.mktemp('published') / 'covidx-v1'
    src = SRC.resolve()
    r = subprocess.run([BIN / 'covidnext-build', '--sources', src, '--split-files', src / 'covidx-v1-splits', '--out', out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.fixture(scope='session')
def quick_study(tmp_path_factory) -> Path:
    """One real quick study, as `make study` runs it on a CPU (`covidnext-study --profile quick`: papermill, tiny
    training, the age-shortcut step), in a scratch copy of the study notebooks; its log is in study.log there."""
    w = tmp_path_factory.mktemp('quick-study')
    shutil.copytree(Path(__file__).parents[1] / 'nbs' / 'study', w / 'nbs' / 'study')
    env = {'OMP_NUM_THREADS': '2', **os.environ, 'COVIDNEXT_SOURCES': str(SRC.resolve())}   # one thread under xdist
    r = subprocess.run([Path(sys.executable).parent / 'covidnext-study', '--profile', 'quick'], cwd=w, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    (w / 'study.log').write_text(r.stdout)
    return w


# pytest-xdist (`make test`: -n 2 --dist loadgroup): the tests that use a costly session fixture form one group, run by
# one worker, so the fixture is built once; every other test is grouped with its file, whose module fixtures are then
# built once too. The longest groups start first, so that none starts last on an otherwise idle machine.
SHARED = {'quick_study': 'study', 'covidx_v1': 'covidx-v1'}
FIRST = ('study', 'test_train', 'test_install', 'covidx-v1', 'test_benchmarks', 'test_predict', 'test_covidx', 'test_evaluate')


def xdist_group(item) -> str:
    "The group of a test: that of the first costly session fixture it uses, else its file's."
    return next((g for f, g in SHARED.items() if f in item.fixturenames), item.module.__name__)


def pytest_configure(config):
    config.addinivalue_line('markers', 'xdist_group(name): tests that one pytest-xdist worker runs together')


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items: item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    rank = {g: i for i, g in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(xdist_group(item), len(FIRST)))
