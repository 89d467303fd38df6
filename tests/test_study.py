"""The study notebooks, run by papermill in the quick profile (as `make study` does on a CPU), in a scratch copy of
the study; and the agreement of the comparison table with the evaluation outputs and with the README."""
from __future__ import annotations
import importlib.util, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
SRC = Path(os.environ.get('COVIDNEXT_SOURCES', ROOT / '..' / 'shared' / 'data')).resolve()
BIN = Path(sys.executable).parent


def run_study(w: Path, **env) -> subprocess.CompletedProcess:
    "scripts/study.sh in the quick profile, in the scratch copy `w`, without the age-shortcut step; `env` adds to it."
    env = {**os.environ, 'PROFILE': 'quick', 'BIN': str(BIN), 'COVIDNEXT_SOURCES': str(SRC), 'SHORTCUT': '0',
           'OMP_NUM_THREADS': '2', **env}
    return subprocess.run(['bash', 'scripts/study.sh'], cwd=w, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def quick(tmp_path_factory) -> Path:
    "A scratch copy of the study, run end to end in the quick profile."
    w = tmp_path_factory.mktemp('study')
    shutil.copytree(ROOT / 'nbs' / 'study', w / 'nbs' / 'study')
    shutil.copytree(ROOT / 'scripts', w / 'scripts')
    r = run_study(w, SEEDS='0 1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return w


def test_quick_profile_writes_every_report(quick):
    rq = quick / 'reports' / 'quick'
    for name in ('11_train_resnet18_seed0', '11_train_resnet18_seed1', '12_evaluate_resnet18_seed0',
                 '12_evaluate_resnet18_seed1', '13_compare_covidnet'):
        assert (rq / f'{name}.ipynb').is_file() and (rq / f'{name}.html').is_file(), name
    assert (rq / '10_dataset.ipynb').is_file() and (rq / '10_dataset.html').is_file()
    assert not list((quick / 'reports').glob('1[0-4]_*'))            # quick never writes the full profile's reports
    for seed in (0, 1):                                                 # each run's logs beside its reports
        logs, run = rq / 'training_logs' / f'resnet18-seed{seed}', quick / 'runs' / 'quick' / f'resnet18-seed{seed}'
        assert (logs / 'summary.json').read_text() == (run / 'summary.json').read_text()
        assert (logs / 'log.csv').read_text() == (run / 'log.csv').read_text()


def test_parameters_and_device_recorded(quick):
    nb = json.loads((quick / 'reports' / 'quick' / '11_train_resnet18_seed1.ipynb').read_text())
    params = nb['metadata']['papermill']['parameters']
    assert params['arch'] == 'resnet18' and params['seed'] == 1 and params['size'] == 32
    out = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'device: cpu' in out
    for c in nb['cells']:
        assert not any(o.get('output_type') == 'error' for o in c.get('outputs', []))


def _check_table(reports: Path):
    "The comparison JSON agrees with the evaluation JSONs it was made from."
    from covidnext.study import compare_runs
    cmp = json.loads((reports / '13_compare_covidnet.json').read_text())
    for v in cmp['variants']:
        per = [json.loads((reports / f"12_evaluate_{v['arch']}_seed{s}" / 'test_results.json').read_text()) for s in v['seeds']]
        for k in ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall'):
            assert abs(v['test_mean'][k] - sum(p[k] for p in per) / len(per)) < 1e-12, k
            assert [r[k] for r in v['per_seed_test']] == [p[k] for p in per]
    again = compare_runs(reports, [dict(name=v['arch'], params=v['params'], gmacs=v['gmacs']) for v in cmp['variants']],
                         n_boot=cmp_boot(reports))
    assert again['variants'] == cmp['variants'] and again['headline'] == cmp['headline']
    assert again.get('combined') == cmp.get('combined')
    if cmp.get('combined'):                     # every end-to-end run, averaged
        c = cmp['combined']
        assert c['n_seeds'] == sum(v['n_seeds'] for v in cmp['variants'] if v['arch'] in c['members'])


def cmp_boot(reports: Path) -> int:
    nb = json.loads((reports / '13_compare_covidnet.ipynb').read_text())
    return int(nb['metadata']['papermill']['parameters'].get('n_boot', 1000))


def test_comparison_equals_evaluation_outputs_quick(quick):
    _check_table(quick / 'reports' / 'quick')


GPU_REPORTS = ROOT / 'reports'


@pytest.mark.skipif(not (GPU_REPORTS / '13_compare_covidnet.json').is_file(), reason='no GPU study reports yet')
def test_comparison_equals_evaluation_outputs_gpu():
    _check_table(GPU_REPORTS)


@pytest.mark.skipif(not (GPU_REPORTS / '13_compare_covidnet.md').is_file(), reason='no GPU study reports yet')
def test_readme_table_equals_comparison():
    readme = (ROOT / 'README.md').read_text()
    m = re.search(r'<!-- comparison:begin -->\n(.*?)<!-- comparison:end -->', readme, re.S)
    assert m, 'README has no comparison table between the markers'
    md = (GPU_REPORTS / '13_compare_covidnet.md').read_text()             # its links are relative to reports/
    assert '](12_evaluate_' in md
    spec = importlib.util.spec_from_file_location('readme_table', ROOT / 'scripts' / 'readme_table.py')
    rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt)
    assert m.group(1) == rt.readme_table(md)                                 # the same table, links re-rooted


@pytest.mark.skipif(not (GPU_REPORTS / '13_compare_covidnet.md').is_file(), reason='no GPU study reports yet')
def test_readme_table_script_copies_the_comparison(tmp_path):
    "scripts/readme_table.py puts the comparison into a README whose table is stale, and then --check agrees."
    readme = tmp_path / 'README.md'
    readme.write_text('# x\n\n<!-- comparison:begin -->\n| stale |\n<!-- comparison:end -->\n\nafter\n')
    script = [sys.executable, str(ROOT / 'scripts' / 'readme_table.py'), '--readme', str(readme)]
    assert subprocess.run(script + ['--check'], capture_output=True, text=True).returncode == 1
    assert subprocess.run(script, capture_output=True, text=True).returncode == 0
    assert subprocess.run(script + ['--check'], capture_output=True, text=True).returncode == 0
    text = readme.read_text()
    assert '| stale |' not in text and '](reports/12_evaluate_' in text and text.endswith('<!-- comparison:end -->\n\nafter\n')


def test_resume_picks_up_a_stopped_study(quick, tmp_path):
    "RESUME=1 keeps every evaluated run, continues a run whose evaluation is missing from its last.pt, and adds new seeds."
    w = tmp_path / 'w'
    shutil.copytree(quick, w, symlinks=True)
    rq = w / 'reports' / 'quick'
    (rq / '12_evaluate_resnet18_seed1' / 'test_results.json').unlink()     # stopped before its evaluation finished
    kept = (rq / '11_train_resnet18_seed0.ipynb').stat().st_mtime_ns
    (rq / '11_train_resnet18_seed0.html').unlink()                       # stopped between its evaluation and its HTML
    hist1 = json.loads((w / 'runs' / 'quick' / 'resnet18-seed1' / 'summary.json').read_text())['history']
    r = run_study(w, SEEDS='0 1 2', DATASET='0', RESUME='1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert 'resnet18 seed 0: evaluated already, kept (RESUME=1)' in r.stdout
    assert (rq / '11_train_resnet18_seed0.ipynb').stat().st_mtime_ns == kept
    assert (rq / '11_train_resnet18_seed0.html').is_file()               # ... and its HTML made from the kept report
    nb = json.loads((rq / '11_train_resnet18_seed1.ipynb').read_text())
    assert nb['metadata']['papermill']['parameters']['resume'] is True
    # the finished run was not trained again: same history, read back from its last.pt
    assert json.loads((w / 'runs' / 'quick' / 'resnet18-seed1' / 'summary.json').read_text())['history'] == hist1
    assert (rq / '12_evaluate_resnet18_seed1' / 'test_results.json').is_file()
    cmp = json.loads((rq / '13_compare_covidnet.json').read_text())
    assert cmp['variants'][0]['seeds'] == [0, 1, 2]
    _check_table(rq)


@pytest.mark.parametrize('profile,gib,want', [('full', '79', '6'), ('full', '139', '11'), ('full', '24', '2'), ('full', '11', '1'),
                                              ('full', '0', '1'), ('full', 'boom', '1'), ('quick', '80', '1'), ('cpu', '80', '1')])
def test_default_parallel_follows_profile_and_gpu_memory(tmp_path, profile, gib, want):
    "scripts/parallel.sh: in the full profile, one run per 12 GiB of GPU memory (at least 1); 1 where that is unknown."
    py = tmp_path / 'python'
    py.write_text('#!/usr/bin/env bash\n' + ('exit 1\n' if gib == 'boom' else f'echo {gib}\n'))
    py.chmod(0o755)
    r = subprocess.run(['bash', '-c', f'source scripts/parallel.sh; default_parallel {profile} $(gpu_gib {py})'], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == want, (r.stdout, r.stderr)
