"""The study runner (`covidnext.plan`, `covidnext.execute`, `covidnext.study`): its plan for every profile and flag, its executor with a stand-in, the number of
runs side by side; one real quick study (as `make study` runs it on a CPU: papermill, tiny training, the age-shortcut
step) and its resumption, in a scratch copy; and the agreement of the comparison table with the evaluation outputs and
with the README."""
from __future__ import annotations
import importlib.util, json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest

from covidnext.plan import Step, load_profile, plan, plan_text
from covidnext.execute import execute
from covidnext.study import default_parallel, device_info, study_cli
from conftest import SRC

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
ENV = {'OMP_NUM_THREADS': '2', **os.environ, 'COVIDNEXT_SOURCES': str(SRC.resolve())}


def names(steps) -> list: return [s.name for s in steps]


def cfg(step) -> dict:
    "A training step's config (11_train's one parameter); another step's parameters."
    return step.params.get('config', step.params)


def by_name(steps, chosen=None, pick=None) -> dict:
    """The plan's steps by name, with those after the screen for the choice `chosen`, and after a choice step inside
    them (a profile with public_settings) those for `pick` (default: its first candidate)."""
    more = [x for s in steps if s.branches and chosen for x in s.branches[chosen]]
    more += [x for s in more if s.branches for x in s.branches[pick or next(iter(s.branches))]]
    return {s.name: s for s in steps + more}


def stand_in(steps, chosen, parallel=1) -> tuple:
    "Execute the plan with a stand-in that runs nothing and whose screen chooses `chosen`: (the steps started, the log)."
    log = []
    ran = execute(steps, parallel, run=lambda s: chosen if s.kind == 'screen' else None, log=log.append)
    return ran, '\n'.join(log)


# ------------------------------------------------------------------------------------------------------------------
# The plan: what each profile and flag runs, with which parameters (a pure function: nothing runs).
# ------------------------------------------------------------------------------------------------------------------

def test_quick_plan_runs_every_step_seed_by_seed():
    steps = plan(load_profile('quick'), sources='S')
    assert names(steps) == ['dataset', 'train resnet18 seed 0', 'evaluate resnet18 seed 0', 'train resnet18 seed 1',
                            'evaluate resnet18 seed 1', 'compare', 'split covidx-v1-adult', 'split covidx-v1-public',
                            'resnet18 adult seed 0', 'resnet18 adult-all seed 0', 'screen']
    s = by_name(steps, 'adult-all')
    assert s['dataset'].params == dict(sources='S', out='out/covidx-v1') and s['dataset'].output == 'reports/quick/10_dataset.ipynb'
    assert s['train resnet18 seed 1'].params == {'config': dict(arch='resnet18', seed=1, out='runs/quick/resnet18-seed1',
                                                                 split_csv='out/covidx-v1/split.csv', sources='S', epochs=1, size=32,
                                                                 subset=64, batch_size=16, ema=0.9, test_log=True)}
    assert s['evaluate resnet18 seed 1'].params['checkpoint'] == 'runs/quick/resnet18-seed1/best.pt'
    assert s['compare'].params == dict(reports='reports/quick')
    assert s['split covidx-v1-adult'].params == dict(sources='S', split_files='S/covidx-v1-splits', out='out/covidx-v1-adult',
                                                      adult_normals=True)
    assert by_name(steps, 'adult')['release'].params['models'] == 'runs/quick/models'
    assert s['resnet18 adult-all seed 0'].params == {'config': dict(arch='resnet18', seed=0, out='runs/quick/shortcut/adult-all/resnet18-seed0',
                                                                     split_csv='out/covidx-v1-adult/split.csv', sources='S', epochs=1,
                                                                     size=32, subset=64, batch_size=16, ema=0.9, resize_mode='pad',
                                                                     harmonize='equalize', source_aug=0.5)}
    assert list(s['screen'].params['candidates']) == ['v1', 'adult', 'adult-all']
    assert names(steps[-1].branches['adult-all']) == ['resnet18 adult-all seed 1', 'shortcut', 'resnet18 public-all seed 0',
                                                  'resnet18 public-all seed 1', 'external', 'release', 'html']
    assert s['split covidx-v1-public'].params == dict(sources='S', split_files='S/covidx-v1-splits', out='out/covidx-v1-public',
                                                       adult_normals=True, more_covid=True, external=True)
    pub = s['resnet18 public-all seed 1'].params['config']
    assert (pub['out'], pub['split_csv'], pub['resize_mode'], pub['harmonize']) == ('runs/quick/public-all/resnet18-seed1',
                                                                                    'out/covidx-v1-public/split.csv', 'pad', 'equalize')
    assert 'test_log' not in pub                                                        # the seed's protocol: the variants only
    assert s['external'].params['runs_public'] == 'runs/quick/public-all/resnet18-seed*/best.pt'
    assert s['release'].params['models'] == 'runs/quick/models'                        # quick never touches the shipped model
    assert s['shortcut'].params['label_adult'] == 'chosen on validation: adult-all'
    assert s['shortcut'].params['runs_adult'] == 'runs/quick/shortcut/adult-all/resnet18-seed*/best.pt'
    assert all(x.output.startswith('reports/quick/') for x in s.values() if x.output and x.kind != 'release')  # never the full profile's
    assert s['release'].output == 'runs/quick/models/covidnext.onnx'                    # ... nor the shipped model


def test_full_and_cpu_profiles():
    full = by_name(plan(load_profile('full'), sources='S'), 'adult')
    trains = [n for n in full if n.startswith('train ')]
    assert trains == [f'train {a} seed {s}' for s in (0, 1, 2) for a in ('covidnext50', 'resnext50_32x4d', 'resnet18', 'covidnext50-frozen')]
    fr = full['train covidnext50-frozen seed 2']
    assert fr.params == {'config': dict(arch='covidnext50', freeze_backbone=True, seed=2, out='runs/covidnext50-frozen-seed2',
                                        split_csv='out/covidx-v1/split.csv', sources='S', epochs=30, size=224, test_log=True)}
    assert fr.output == 'reports/11_train_covidnext50-frozen_seed2.ipynb'
    assert full['evaluate covidnext50-frozen seed 2'].params['checkpoint'] == 'runs/covidnext50-frozen-seed2/best.pt'
    assert full['split covidx-v1-adult-covid'].params['more_covid'] is True            # a plus setting is screened
    assert full['split covidx-v1-adult-covid'].after == ('split covidx-v1-adult',)
    assert list(full['screen'].params['candidates']) == ['v1', 'adult', 'adult-pad', 'adult-equalize', 'adult-srcaug', 'adult-all',
                                                         'v1-all', 'plus', 'plus-equalize']
    assert full['resnet18 plus-equalize seed 0'].params['config']['split_csv'] == 'out/covidx-v1-adult-covid/split.csv'
    assert full['resnet18 v1-all seed 0'].params['config']['split_csv'] == 'out/covidx-v1/split.csv'
    assert [n for n in full if n.startswith('resnet18 adult seed')] == ['resnet18 adult seed 0', 'resnet18 adult seed 1', 'resnet18 adult seed 2']
    cpu = by_name(plan(load_profile('cpu'), sources='S'), 'adult-equalize')
    assert [n for n in cpu if n.startswith('train ')] == ['train resnet18 seed 0', 'train resnet18 seed 1', 'train resnet18 seed 2']
    assert cpu['train resnet18 seed 2'].params == {'config': dict(arch='resnet18', seed=2, out='runs/cpu/resnet18-seed2',
                                                                   split_csv='out/covidx-v1/split.csv', sources='S', epochs=8, size=64,
                                                                   ema=0.99, cpu_bf16=True, test_log=True)}
    assert full['release'].params['models'] == cpu['release'].params['models'] == 'models'     # the shipped model


def test_train_defaults_are_the_study_recipe():
    """`covidnext-train --split-csv ... --arch resnet18 --size 64 --epochs 8` with no other flag trains the study's recipe:
    its resolved config differs from the cpu profile's run of seed 0 only where the profile or the plan say so (the run's
    place, the sources, the test log and the cpu profile's shorter weight average), never in the recipe."""
    from dataclasses import asdict
    from covidnext.train import TrainConfig, train_config
    cli = asdict(train_config(['--split-csv', 'out/covidx-v1/split.csv', '--arch', 'resnet18', '--size', '64', '--epochs', '8']))
    step = by_name(plan(load_profile('cpu'), sources='S'), 'adult')['train resnet18 seed 0']
    study = asdict(TrainConfig.from_dict({'progress': False, **step.params['config']}))      # as 11_train builds it
    differ = {k for k in cli if cli[k] != study[k]}
    assert differ == {'out', 'sources', 'test_log', 'progress', 'ema', 'cpu_bf16'}, differ   # cpu_bf16: the cpu profile's bf16 steps
    assert load_profile('cpu')['train']['ema'] == study['ema'] == 0.99 and cli['ema'] == TrainConfig().ema
    recipe = ('optimizer', 'lr', 'weight_decay', 'scheduler', 'sampler', 'label_smoothing', 'batch_size', 'augment')
    assert {k: cli[k] for k in recipe} == {k: study[k] for k in recipe} == dict(optimizer='adamw', lr=1e-3, weight_decay=0.05,
        scheduler='onecycle', sampler='balanced', label_smoothing=0.1, batch_size=64, augment=True)


def test_flags_replace_the_profile():
    p = load_profile('quick', archs=['resnet18', 'covidnext50-frozen'], seeds=[3], epochs=2, mitigations=['plus'], shortcut_arch='resnet18')
    s = by_name(plan(p, sources='S', dataset=False, out='o'), 'plus')
    assert 'dataset' not in s and s['train covidnext50-frozen seed 3'].after == ()
    assert s['train resnet18 seed 3'].params['config']['epochs'] == 2 and s['train resnet18 seed 3'].params['config']['split_csv'] == 'o/covidx-v1/split.csv'
    assert [n for n in s if n.startswith('split')] == ['split covidx-v1-adult', 'split covidx-v1-adult-covid', 'split covidx-v1-public']
    assert names(plan(p, sources='S', dataset=False)[-1].branches['plus']) == ['shortcut', 'resnet18 public seed 3', 'external',
                                                                           'release', 'html']   # one seed: nothing more to train
    assert names(plan(p, sources='S', dataset=False, external=False)[-1].branches['plus']) == ['shortcut', 'html']
    # no variant: no comparison; the shortcut step trains its own COVIDx-v1 reference, as the setting v1
    s = by_name(plan(load_profile('quick', archs=[]), sources='S'), 'adult')
    assert 'compare' not in s and s['split covidx-v1-adult'].after == ('dataset',)
    assert [n for n in s if 'v1 seed' in n] == ['resnet18 v1 seed 0', 'resnet18 v1 seed 1']
    assert s['resnet18 v1 seed 1'].params['config']['out'] == 'runs/quick/shortcut/v1/resnet18-seed1'
    assert s['screen'].params['candidates']['v1'] == 'runs/quick/shortcut/v1/resnet18-seed0/best.pt'
    assert s['shortcut'].params['runs_v1'] == 'runs/quick/shortcut/v1/resnet18-seed*/best.pt'
    assert names(plan(load_profile('quick'), shortcut=False))[-2:] == ['compare', 'html']
    with pytest.raises(ValueError, match="unknown mitigation setting 'adult-blur'"):
        plan(load_profile('quick', mitigations=['adult-blur']))


def test_plan_from_one_adult_cache():
    """Where the sources are absent (as on a GPU machine), from one covidx-v1-adult cache: the COVIDx-v1 runs and their
    evaluation leave the adult films out (drop_sources=radiography), the age-shortcut step screens its settings on the
    same cache; a `plus` setting trains from the covidx-v1-adult-covid cache (--plus-cache)."""
    p = load_profile('quick', archs=['resnet18'], seeds=[0, 1], mitigations=['adult', 'v1-equalize', 'plus'])
    steps = plan(p, sources='no-sources', dataset=False, adult_cache='c/adult-32', plus_cache='c/plus-32', public_cache='c/public-32')
    s = by_name(steps, 'plus')
    ref = s['train resnet18 seed 0'].params['config']
    assert ref['drop_sources'] == 'radiography' and ref['cache'] == 'c/adult-32' and 'sources' not in ref
    assert s['evaluate resnet18 seed 0'].params == dict(name='resnet18_seed0', checkpoint='runs/quick/resnet18-seed0/best.pt',
                                                              out='reports/quick', cache='c/adult-32', drop_sources='radiography')
    assert 'compare' in s and not [n for n in s if n.startswith('split')]            # no build: the caches serve every step
    assert list(s['screen'].params['candidates']) == ['v1', 'adult', 'v1-equalize', 'plus']
    assert s['screen'].params == dict(candidates=s['screen'].params['candidates'], split_csv='out/covidx-v1-adult/split.csv',
                                      cache='c/adult-32', out='reports/quick/14_screen.json')
    assert cfg(s['resnet18 plus seed 0'])['cache'] == 'c/plus-32' and 'drop_sources' not in cfg(s['resnet18 plus seed 0'])
    assert cfg(s['resnet18 adult seed 0'])['cache'] == 'c/adult-32' and 'drop_sources' not in cfg(s['resnet18 adult seed 0'])
    eq = cfg(s['resnet18 v1-equalize seed 0'])
    assert (eq['harmonize'], eq['cache'], eq['drop_sources']) == ('equalize', 'c/adult-32', 'radiography')
    assert s['shortcut'].params == dict(runs_v1='runs/quick/resnet18-seed*/best.pt', runs_adult='runs/quick/shortcut/plus/resnet18-seed*/best.pt',
                                             label_adult='chosen on validation: plus', screen='reports/quick/14_screen.json',
                                             cache='c/adult-32', out='reports/quick')
    assert all(s[f'resnet18 {m} seed 0'].html == (f'reports/quick/11_train_shortcut_{m}_resnet18_seed0.ipynb',)
               for m in ('adult', 'v1-equalize', 'plus'))
    assert s['html'].params == dict(reports='reports/quick/1[345]_*.ipynb')              # the comparison, 14_shortcut, 15_external
    assert cfg(s['resnet18 public seed 0'])['cache'] == s['external'].params['cache'] == s['release'].params['cache'] == 'c/public-32'
    ran, log = stand_in(steps, 'plus', parallel=2)
    assert names(ran)[-3:] == ['external', 'release', 'html'] and names(ran).index('screen') < names(ran).index('resnet18 plus seed 1')


def test_resume_where_the_reports_are_kept_but_not_the_checkpoints():
    """Resumed where the runs' reports are kept but not their checkpoints (another machine's study): the step trains its
    COVIDx-v1 reference as the setting v1, under runs/.../shortcut/v1, and leaves the study's own reports alone."""
    p = load_profile('quick', archs=['resnet18'], seeds=[0, 1], mitigations=['adult'])
    there = {f'reports/quick/12_evaluate_resnet18_seed{s}/test_results.json' for s in (0, 1)} | {
        'runs/quick/shortcut/adult/resnet18-seed0/summary.json'}
    steps = plan(p, dataset=False, adult_cache='c/adult-32', plus_cache='c/plus-32', resume=True, exists=there.__contains__)
    ran, log = stand_in(steps, 'adult')
    assert 'resnet18 seed 1: evaluated already, kept (--resume)' in log and 'resnet18 adult seed 0: trained already' in log
    assert not [n for n in names(ran) if n.startswith(('train resnet18', 'evaluate resnet18'))]     # the study's own reports stay
    s = by_name(ran)
    assert s['resnet18 seed 0'].html == ('reports/quick/11_train_resnet18_seed0.ipynb', 'reports/quick/12_evaluate_resnet18_seed0.ipynb')
    assert s['resnet18 v1 seed 1'].output == 'reports/quick/11_train_shortcut_v1_resnet18_seed1.ipynb'
    assert cfg(s['resnet18 v1 seed 1'])['resume'] is True and cfg(s['resnet18 v1 seed 1'])['out'] == 'runs/quick/shortcut/v1/resnet18-seed1'
    assert s['shortcut'].params['runs_v1'] == 'runs/quick/shortcut/v1/resnet18-seed*/best.pt'
    assert list(s['screen'].params['candidates'])[:2] == ['v1', 'adult']
    assert s['screen'].params['candidates']['v1'] == 'runs/quick/shortcut/v1/resnet18-seed0/best.pt'
    assert s['resnet18 adult seed 1'].kind == 'notebook'                               # the choice's other seed is trained
    # with the checkpoints there, the study's own runs are the reference again
    there |= {f'runs/quick/resnet18-seed{s}/best.pt' for s in (0, 1)}
    steps = plan(p, dataset=False, adult_cache='c/adult-32', resume=True, exists=there.__contains__)
    assert not [n for n in names(steps) if ' v1 seed' in n] and steps[-1].params['candidates']['v1'] == 'runs/quick/resnet18-seed0/best.pt'


def test_plan_from_the_plus_cache_alone():
    """One covidx-v1-adult-covid cache serves every step: without its added films (cohen-unlisted) it is
    covidx-v1-adult, without the adult films as well COVIDx-v1 (tests/test_shortcut.py checks both on a real cache)."""
    p = load_profile('quick', archs=['resnet18'], seeds=[0], mitigations=['adult', 'plus'])
    s = by_name(plan(p, sources='no-sources', dataset=False, plus_cache='c/plus-32', public_cache='c/public-32'), 'adult')
    assert (cfg(s['train resnet18 seed 0'])['drop_sources'], cfg(s['resnet18 adult seed 0'])['drop_sources'],
            cfg(s['resnet18 plus seed 0']).get('drop_sources', '')) == ('radiography,cohen-unlisted', 'cohen-unlisted', '')
    assert s['evaluate resnet18 seed 0'].params['drop_sources'] == 'radiography,cohen-unlisted'
    assert list(s['screen'].params['candidates']) == ['v1', 'adult', 'plus'] and s['screen'].params['cache'] == 'c/plus-32'
    assert s['shortcut'].params['cache'] == 'c/plus-32' and 'drop_sources' not in s['shortcut'].params   # held-out splits: no added film
    assert not [n for n in s if n.startswith('split')]


def test_pad_settings_need_the_sources():
    "A letterboxed setting (-pad, -all) trains from the sources even where a squash cache is given."
    p = load_profile('quick', mitigations=['adult-pad', 'v1-all', 'plus-all'])
    s = by_name(plan(p, sources='S', adult_cache='c/a', plus_cache='c/p'), 'adult-pad')
    assert cfg(s['resnet18 adult-pad seed 0'])['split_csv'] == 'out/covidx-v1-adult/split.csv' and 'cache' not in cfg(s['resnet18 adult-pad seed 0'])
    assert cfg(s['resnet18 v1-all seed 0'])['split_csv'] == 'out/covidx-v1/split.csv'
    assert cfg(s['resnet18 plus-all seed 0'])['split_csv'] == 'out/covidx-v1-adult-covid/split.csv'
    assert s['shortcut'].params['sources'] == 'S' and 'cache' not in s['shortcut'].params
    with pytest.raises(SystemExit, match='no/such/folder: the sources folder does not exist'):   # caught before anything runs
        study_cli(['--adult-cache', 'c/a', '--no-dataset', '--sources', 'no/such/folder', '--mitigations', 'adult-pad', '--archs'])


def test_dry_run_prints_one_line_per_step(capsys):
    assert study_cli(['--profile', 'quick', '--dry-run', '--sources', str(SRC)]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = plan(load_profile('quick'), sources=str(SRC))
    branches = steps[-1].branches                   # every choice of the screen, none invented
    assert out == plan_text(steps).splitlines() and len(out) == len(steps) + sum(1 + len(b) for b in branches.values())
    assert out[1].startswith('notebook train resnet18 seed 0: nbs/study/11_train.ipynb -> reports/quick/11_train_resnet18_seed0.ipynb')
    assert [line for line in out if line.startswith('then, ')] == [f'then, if the screen chooses {c}:' for c in ('v1', 'adult', 'adult-all')]


def test_help_explains_profiles_and_flags():
    r = subprocess.run([BIN / 'covidnext-study', '--help'], capture_output=True, text=True)
    assert r.returncode == 0
    for s in ('--profile', '--resume', '--adult-cache', '--no-shortcut', '--time', 'quick', 'cpu', 'full', 'seeds 0 1 2',
              'drop_sources=radiography', 'study_wall.json'):
        assert s in r.stdout, s


# ------------------------------------------------------------------------------------------------------------------
# Runs side by side
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('profile,gib,want', [('full', '79', 6), ('full', '139', 11), ('full', '24', 2), ('full', '11', 1),
                                              ('full', '0', 1), ('full', 'boom', 1), ('quick', '80', 1), ('cpu', '80', 1)])
def test_default_parallel_follows_profile_and_gpu_memory(tmp_path, profile, gib, want):
    "In the full profile, one run per 12 GiB of GPU memory (at least 1); 1 where that is unknown (a failing query)."
    py = tmp_path / 'python'
    py.write_text('#!/usr/bin/env bash\n' + ('exit 1\n' if gib == 'boom' else f'echo "NVIDIA X|2.11|{gib}"\n'))
    py.chmod(0o755)
    assert default_parallel(load_profile(profile), device_info(str(py))[2]) == want


# ------------------------------------------------------------------------------------------------------------------
# One real quick study (`quick_study`, built once per test run: tests/conftest.py), then resumed.
# ------------------------------------------------------------------------------------------------------------------

def test_quick_profile_writes_every_report(quick_study):
    rq = quick_study / 'reports' / 'quick'
    for name in ('11_train_resnet18_seed0', '11_train_resnet18_seed1', '12_evaluate_resnet18_seed0',
                 '12_evaluate_resnet18_seed1', '13_compare_covidnet', '14_shortcut', '15_external'):
        assert (rq / f'{name}.ipynb').is_file() and (rq / f'{name}.html').is_file(), name
    assert (rq / '10_dataset.ipynb').is_file() and (rq / '10_dataset.html').is_file()
    assert not list((quick_study / 'reports').glob('1[0-5]_*'))          # quick never writes the full profile's reports
    for seed in (0, 1):                                                 # each run's logs beside its reports
        logs, run = rq / 'training_logs' / f'resnet18-seed{seed}', quick_study / 'runs' / 'quick' / f'resnet18-seed{seed}'
        assert (logs / 'summary.json').read_text() == (run / 'summary.json').read_text()
        assert (logs / 'log.csv').read_text() == (run / 'log.csv').read_text()
    out = (quick_study / 'study.log').read_text()
    assert '== train resnet18 seed 1 (' in out and 'study done in' in out
    assert 'its numbers mean nothing' in out.lower() and '`covidnext-study --profile cpu`' in out    # said plainly at the end


def test_parameters_and_device_recorded(quick_study):
    nb = json.loads((quick_study / 'reports' / 'quick' / '11_train_resnet18_seed1.ipynb').read_text())
    params = nb['metadata']['papermill']['parameters']
    assert params['config']['arch'] == 'resnet18' and params['config']['seed'] == 1 and params['config']['size'] == 32
    out = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'device: cpu' in out
    for c in nb['cells']:
        assert not any(o.get('output_type') == 'error' for o in c.get('outputs', []))


def test_quick_study_shortcut_step(quick_study):
    "The age-shortcut step for real: the screen's choice, a return value, flows into the chosen setting's runs and 14_shortcut."
    rq = quick_study / 'reports' / 'quick'
    sc = json.loads((rq / '14_screen.json').read_text())
    assert [x['setting'] for x in sc['runs']] == ['v1', 'adult', 'adult-all'] and all(x['val_adult_n'] == 100 for x in sc['runs'])
    assert f"== chosen on validation: {sc['chosen']}" in (quick_study / 'study.log').read_text()
    s = json.loads((rq / '14_shortcut.json').read_text())
    assert s['screen']['chosen'] == sc['chosen'] and s['variants']['COVIDx-v1']['n_models'] == 2
    nb = json.loads((rq / '14_shortcut.ipynb').read_text())['metadata']['papermill']['parameters']
    assert nb['label_adult'] == f"chosen on validation: {sc['chosen']}"
    if sc['chosen'] != 'v1':
        assert nb['runs_adult'] == f"runs/quick/shortcut/{sc['chosen']}/resnet18-seed*/best.pt"
        assert (quick_study / 'runs' / 'quick' / 'shortcut' / sc['chosen'] / 'resnet18-seed1' / 'best.pt').is_file()
    assert all((rq / f'11_train_shortcut_{m}_resnet18_seed0.html').is_file() for m in ('adult', 'adult-all'))
    assert (rq / 'split_covidx-v1-adult.md').is_file() and (rq / '14_shortcut.html').is_file()
    assert json.loads((quick_study / 'runs' / 'quick' / 'shortcut' / 'adult-all' / 'resnet18-seed0' / 'config.json').read_text())['harmonize'] == 'equalize'


def test_quick_study_external_step_and_release(quick_study, monkeypatch):
    """15_external scores every training set on the four test sets of covidx-v1-public, and the release exports the public
    run validation picks to the quick profile's own models folder with its card; released again, nothing changes."""
    from covidnext.core import file_hash
    from covidnext.release import model_card, release
    rq, models = quick_study / 'reports' / 'quick', quick_study / 'runs' / 'quick' / 'models'
    e = json.loads((rq / '15_external.json').read_text())
    labels = e['params']['labels']
    assert list(e['ensembles']) == [f'{l}, 2-seed ensemble' for l in labels] and len(e['models']) == 6
    for r in e['ensembles'].values():
        assert (r['test']['n'], r['test_adult']['n'], r['test_external']['n'], r['test_external_neg']['n']) == (639, 100, 955, 30)
        assert r['covid_vs_normals']['n_pos'] == 955 and r['covid_vs_normals']['n_neg'] == 100
    assert e['in_collection'] and all(k.startswith(labels[2]) for k in e['in_collection'])    # the public rows only
    assert len(e['targets']) == 4 and e['headline'] == 'resnet18' and set(e['paired_test']) == {labels[0], labels[2]}
    assert 'every cell of it touches the border' in e['borders']['left_out'] and len(e['probe']) == 4   # 32 px: a 1 x 1 map, no border figure
    assert (rq / '15_external.html').is_file() and (rq / '15_external_gradcam.png').is_file()
    chosen = json.loads((rq / '14_screen.json').read_text())['chosen']
    pub = 'public' + ('-' + chosen.partition('-')[2] if '-' in chosen else '')
    params = json.loads((rq / '15_external.ipynb').read_text())['metadata']['papermill']['parameters']
    assert params['runs_public'] == f'runs/quick/{pub}/resnet18-seed*/best.pt' and params['split_csv'] == 'out/covidx-v1-public/split.csv'
    rel = json.loads((rq / 'release.json').read_text())
    assert rel['checkpoint'].startswith(f'runs/quick/{pub}/') and rel['profile'] == 'quick'
    assert rel['sha256'] == file_hash(models / 'covidnext.onnx') and rel['parity']['n'] == 639 and rel['parity']['same_class'] >= 0.995
    assert rel['size_bytes'] <= 25_000_000 and not (quick_study / 'models').exists()      # quick never touches the shipped model
    monkeypatch.chdir(quick_study)
    assert (models / 'README.md').read_text() == model_card('reports/quick')
    mtime = (models / 'covidnext.onnx').stat().st_mtime_ns
    assert 'unchanged' in release(f'runs/quick/{pub}/resnet18-seed*/best.pt', 'reports/quick', 'runs/quick/models', 'quick',
                                  'out/covidx-v1-public/split.csv')
    assert (models / 'covidnext.onnx').stat().st_mtime_ns == mtime


def _check_table(reports: Path):
    "The comparison JSON agrees with the evaluation JSONs it was made from."
    from covidnext.compare import compare_runs
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


def test_comparison_equals_evaluation_outputs_quick(quick_study):
    _check_table(quick_study / 'reports' / 'quick')


def _check_seed_protocol(reports: Path, runs: Path, cache: Path):
    """13_compare_covidnet's `seed_protocol`: a row for every variant and run, and at the chosen epoch the test log's
    macro-F1 is 12_evaluate's, on the test films the run scored (a run trained on a `subset` scored only its own)."""
    import numpy as np
    import pandas as pd
    from covidnext.cache import Cache
    from covidnext.core import CLASSES
    from covidnext.metrics import classification_metrics
    from covidnext.train import TrainConfig, usable_rows
    cmp = json.loads((reports / '13_compare_covidnet.json').read_text())
    sp = cmp['seed_protocol']
    assert [v['arch'] for v in sp['variants']] == [v['arch'] for v in cmp['variants']]
    assert [(r['arch'], r['seed']) for r in sp['runs']] == [(v['arch'], s) for v in cmp['variants'] for s in v['seeds']]
    c = Cache(cache)
    for r in sp['runs']:
        cfg = TrainConfig.from_dict(json.loads((runs / f"{r['arch']}-seed{r['seed']}" / 'config.json').read_text()))
        rows = usable_rows(c, cfg)
        films = set(c.table.path.values[rows[c.table.split.values[rows] == 'test']])
        pred = pd.read_csv(reports / f"12_evaluate_{r['arch']}_seed{r['seed']}" / 'test_predictions.csv')
        pred = pred[pred.path.isin(films)]
        assert len(pred) == len(films) > 0
        m = classification_metrics(np.array([CLASSES.index(x) for x in pred.label]), pred[[f'prob_{k}' for k in CLASSES]].to_numpy(), CLASSES)
        assert abs(r['chosen_macro_f1'] - m['macro_f1']) < 1e-6 and abs(r['chosen_accuracy'] - m['accuracy']) < 1e-6, r
        if cfg.subset == 0: assert abs(r['chosen_macro_f1'] - r['evaluated_macro_f1']) < 1e-6, r    # every test film: the same number
        assert r['test_best_macro_f1'] >= r['chosen_macro_f1'] and r['gain_macro_f1_pts'] >= 0


def test_seed_protocol_quick(quick_study):
    _check_seed_protocol(quick_study / 'reports' / 'quick', quick_study / 'runs' / 'quick',
                         next((quick_study / '.cache').glob('covidx-v1-32-squash-*')))


def test_resume_picks_up_a_stopped_study(quick_study, tmp_path):
    "--resume keeps every evaluated run, continues a run whose evaluation is missing from its last.pt, and adds new seeds."
    w = tmp_path / 'w'
    shutil.copytree(quick_study, w, symlinks=True)
    rq = w / 'reports' / 'quick'
    (rq / '12_evaluate_resnet18_seed1' / 'test_results.json').unlink()     # stopped before its evaluation finished
    kept = (rq / '11_train_resnet18_seed0.ipynb').stat().st_mtime_ns
    (rq / '11_train_resnet18_seed0.html').unlink()                       # stopped between its evaluation and its HTML
    hist1 = json.loads((w / 'runs' / 'quick' / 'resnet18-seed1' / 'summary.json').read_text())['history']
    r = subprocess.run([BIN / 'covidnext-study', '--profile', 'quick', '--seeds', '0', '1', '2', '--no-dataset', '--no-shortcut', '--resume'],
                       cwd=w, env=ENV, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert 'resnet18 seed 0: evaluated already, kept (--resume)' in r.stdout
    assert (rq / '11_train_resnet18_seed0.ipynb').stat().st_mtime_ns == kept
    assert (rq / '11_train_resnet18_seed0.html').is_file()               # ... and its HTML made from the kept report
    nb = json.loads((rq / '11_train_resnet18_seed1.ipynb').read_text())
    assert nb['metadata']['papermill']['parameters']['config']['resume'] is True
    # the finished run was not trained again: same history, read back from its last.pt
    assert json.loads((w / 'runs' / 'quick' / 'resnet18-seed1' / 'summary.json').read_text())['history'] == hist1
    assert (rq / '12_evaluate_resnet18_seed1' / 'test_results.json').is_file()
    cmp = json.loads((rq / '13_compare_covidnet.json').read_text())
    assert cmp['variants'][0]['seeds'] == [0, 1, 2]
    _check_table(rq)


def test_failed_step_stops_the_study_and_names_it(tmp_path):
    "A step that fails (here: papermill finds no study notebook) stops the study; the message names the step and its report."
    r = subprocess.run([BIN / 'covidnext-study', '--profile', 'quick', '--no-dataset', '--no-shortcut'], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "step 'train resnet18 seed 0' failed (FileNotFoundError" in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'see reports/quick/11_train_resnet18_seed0.ipynb' in r.stderr and 'evaluate resnet18 seed 0' not in r.stdout
    assert '== train resnet18 seed 1' not in r.stdout                  # nothing starts after a failure


# ------------------------------------------------------------------------------------------------------------------
# The comparison of the GPU study, and the README's table.
# ------------------------------------------------------------------------------------------------------------------

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
