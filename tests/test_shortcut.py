"""The age shortcut on the real sources (`COVIDNEXT_SOURCES`, `../shared/data` in CI): the adult normals' reader, the
`covidx-v1-adult` split (COVIDx-v1 untouched, adult films split by patient, duplicates of COVIDx images kept out), and
`nbs/study/14_shortcut.ipynb` run by papermill in a quick configuration in a scratch copy of the study."""
from __future__ import annotations
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli
from covidnext.covidx import build_cli, build_split, find_leaks
from covidnext.sources import read_radiography

ROOT = Path(__file__).parents[1]
SRC = Path(os.environ.get('COVIDNEXT_SOURCES', ROOT / '..' / 'shared' / 'data')).resolve()
RAD = SRC / 'covid19-radiography-normal-224'
BIN = Path(sys.executable).parent
if not (RAD.is_dir() and (SRC / 'covidx-v1-splits').is_dir()):
    pytest.fail(f"the public sources with the adult normals are needed: set COVIDNEXT_SOURCES (no {RAD})", pytrace=False)
V1_TEST = {'normal': 234, 'bacteria': 246, 'viral': 149, 'COVID-19': 10}


def test_reader_real_adult_normals():
    r = read_radiography(RAD)
    assert len(r) == 1000 and r.patient_id.nunique() == 1000
    assert set(r.label) == {'normal'} and set(r.finding) == {'rsna_adult'} and set(r.source) == {'radiography'}
    assert all(Path(p).is_file() for p in r.path)


@pytest.fixture(scope='module')
def splits(covidx_v1, tmp_path_factory):
    """The published COVIDx-v1 split (built once per test run: tests/conftest.py) and its covidx-v1-adult(-covid)
    variants, built with the command line."""
    out = tmp_path_factory.mktemp('splits')
    (out / 'covidx-v1').symlink_to(covidx_v1[0], target_is_directory=True)
    for name, extra in (('covidx-v1-adult', ['--adult-normals']), ('covidx-v1-adult-covid', ['--adult-normals', '--more-covid'])):
        r = subprocess.run([BIN / 'covidnext-build', '--sources', SRC, '--split-files', SRC / 'covidx-v1-splits',
                            '--out', out / name, *extra], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_adult_split_keeps_covidx_v1(splits):
    v1, ad = pd.read_csv(splits / 'covidx-v1' / 'split.csv'), pd.read_csv(splits / 'covidx-v1-adult' / 'split.csv')
    assert ad[ad.split == 'test'].label.value_counts().to_dict() == V1_TEST      # 639, exactly COVIDx-v1's test
    assert (ad.split == 'test').sum() == 639 and set(ad[ad.split == 'test'].source) == {'cohen', 'kermany'}
    pd.testing.assert_frame_equal(ad[ad.source != 'radiography'].reset_index(drop=True), v1)   # same rows, same splits


def test_adult_normals_split_by_patient(splits):
    ad = pd.read_csv(splits / 'covidx-v1-adult' / 'split.csv')
    a = ad[ad.source == 'radiography']
    assert a.split.value_counts().to_dict() == {'train': 800, 'val': 100, 'test_adult': 100}
    assert set(a.label) == {'normal'} and a.patient_id.nunique() == 1000
    for col in ('path', 'patient_id', 'pixel_hash'):                   # no film, patient or image in two splits
        assert (ad.groupby(col).split.nunique() > 1).sum() == 0, col
    assert len(find_leaks(ad)) == 0
    rep = json.loads((splits / 'covidx-v1-adult' / 'report.json').read_text())
    assert rep['variant'] == 'covidx-v1-adult' and rep['params']['adult_normals'] is True
    assert rep['counts']['test_adult'] == {'COVID-19': 0, 'bacteria': 0, 'normal': 100, 'viral': 0}
    assert 'test_adult' in (splits / 'covidx-v1-adult' / 'report.md').read_text()


def test_adult_split_is_seeded(splits, tmp_path):
    build_split(SRC, tmp_path / 'a', SRC / 'covidx-v1-splits', seed=0, progress=False, adult_normals=True)
    assert (tmp_path / 'a' / 'split.csv').read_bytes() == (splits / 'covidx-v1-adult' / 'split.csv').read_bytes()


def test_adult_copy_of_a_kermany_image_is_kept_out(tmp_path):
    "An 'adult' film that is pixel-identical to a COVIDx image (a Kermany copy the origin file missed) never enters a split."
    src = tmp_path / 'sources'; src.mkdir()
    for d in ('covid-chestxray-dataset', 'kermany-chest-xray-224', 'covidx-v1-splits'): (src / d).symlink_to(SRC / d)
    nd = src / 'covid19-radiography-normal-224' / 'COVID-19_Radiography_Dataset' / 'Normal'; nd.mkdir(parents=True)
    adults = read_radiography(RAD).head(20)
    for p in adults.path: (nd / Path(p).name).symlink_to(p)
    kid = SRC / 'kermany-chest-xray-224' / 'chest_xray' / 'test' / 'NORMAL' / 'IM-0001-0001.jpeg'
    Image.fromarray(np.asarray(Image.open(kid).convert('L'))).save(nd / 'Normal-99999.png')
    names = [Path(p).name for p in adults.path] + ['Normal-99999.png']
    pd.DataFrame(dict(file=names, inferred_origin='rsna_adult')).to_csv(nd.parents[1] / 'origin_inference.csv', index=False)
    rep = build_split(src, tmp_path / 'out', src / 'covidx-v1-splits', progress=False, adult_normals=True)
    df = pd.read_csv(tmp_path / 'out' / 'split.csv')
    assert rep['adult']['used'] == 20 and not df.path.str.contains('Normal-99999').any()
    why = [d for d in rep['dropped'] if 'Normal-99999' in d['file']]
    assert len(why) == 1 and 'IM-0001-0001.jpeg' in why[0]['reason'], why
    assert rep['leaks'] == [] and df[df.split == 'test'].label.value_counts().to_dict() == V1_TEST


def test_build_cli_has_adult_option():
    h = run_cli(build_cli, '--help', prog='covidnext-build').stdout
    assert '--adult-normals' in h and 'test_adult' in h and '--more-covid' in h


def test_more_covid_adds_to_train_only(splits):
    """covidx-v1-adult-covid: covidx-v1-adult row for row, plus Cohen's COVID-19 films (PA/AP) that the split files do
    not list, all in train; no added film shares a patient, pixels or a near-duplicate with a held-out film."""
    from covidnext.covidx import NEAR_BITS, dhash_bits, nearest_hash, read_split_file
    ad, pl = pd.read_csv(splits / 'covidx-v1-adult' / 'split.csv'), pd.read_csv(splits / 'covidx-v1-adult-covid' / 'split.csv')
    pd.testing.assert_frame_equal(pl[pl.path.isin(set(ad.path))].reset_index(drop=True), ad)
    added = pl[~pl.path.isin(set(ad.path))]
    assert len(added) >= 200 and set(added.split) == {'train'} and set(added.label) == {'COVID-19'} and set(added.source) == {'cohen-unlisted'}
    meta = pd.read_csv(SRC / 'covid-chestxray-dataset' / 'metadata.csv').set_index('filename')
    names = added.path.map(lambda p: Path(p).name)
    assert set(meta.view[names]) <= {'PA', 'AP'} and meta.finding[names].str.startswith('COVID-19').all()
    listed = set(pd.concat([read_split_file(SRC / 'covidx-v1-splits' / f'{s}_split.txt') for s in ('train', 'test')]).filename)
    assert not set(names) & listed
    held = pl[pl.split != 'train']
    assert not set(added.patient_id) & set(held.patient_id) and not set(added.pixel_hash) & set(held.pixel_hash)
    d = nearest_hash(dhash_bits([SRC / p for p in added.path]), dhash_bits([SRC / p for p in held.path]))[1]
    assert d.min() > NEAR_BITS and len(find_leaks(pl)) == 0
    rep = json.loads((splits / 'covidx-v1-adult-covid' / 'report.json').read_text())
    assert rep['variant'] == 'covidx-v1-adult-covid' and rep['params']['more_covid'] is True
    assert rep['more_covid']['used'] == len(added) and rep['more_covid']['patients'] == added.patient_id.nunique()
    assert rep['counts']['train']['COVID-19'] == len(added) + (ad[ad.split == 'train'].label == 'COVID-19').sum()


def test_more_covid_keeps_copies_of_held_out_films_out(splits, tmp_path):
    """A later film that re-publishes a held-out COVID-19 film under a new patient id, re-encoded and resized (a
    near-duplicate), or with identical pixels, is dropped with a reason that names the held-out film."""
    src = tmp_path / 'sources'; src.mkdir()
    for d in ('kermany-chest-xray-224', 'covidx-v1-splits'): (src / d).symlink_to(SRC / d)
    coh = src / 'covid-chestxray-dataset'; (coh / 'images').mkdir(parents=True)
    for f in (SRC / 'covid-chestxray-dataset' / 'images').iterdir(): (coh / 'images' / f.name).symlink_to(f)
    v1 = pd.read_csv(splits / 'covidx-v1' / 'split.csv')
    test_film = v1[(v1.split == 'test') & (v1.label == 'COVID-19')].path.iloc[0]
    val_film = v1[(v1.split == 'val') & (v1.label == 'COVID-19')].path.iloc[0]
    im = Image.open(SRC / test_film).convert('L')
    im.resize((im.width * 9 // 10, im.height * 9 // 10)).save(coh / 'images' / 'planted-near-copy.jpg', quality=75)
    Image.open(SRC / val_film).convert('L').save(coh / 'images' / 'planted-same-pixels.png')
    meta = pd.read_csv(SRC / 'covid-chestxray-dataset' / 'metadata.csv')
    row = meta[meta.filename == Path(test_film).name].iloc[0]
    new = pd.DataFrame([row.to_dict() | dict(patientid='9001', filename='planted-near-copy.jpg', view='PA'),
                        row.to_dict() | dict(patientid='9002', filename='planted-same-pixels.png', view='PA')])
    pd.concat([meta, new]).to_csv(coh / 'metadata.csv', index=False)
    rep = build_split(src, tmp_path / 'out', src / 'covidx-v1-splits', progress=False, more_covid=True)
    df = pd.read_csv(tmp_path / 'out' / 'split.csv')
    assert not df.path.str.contains('planted').any() and rep['leaks'] == []
    why = {Path(d['file']).name: d['reason'] for d in rep['dropped'] if 'planted' in d['file']}
    assert why['planted-near-copy.jpg'].startswith('near-duplicate of test image') and Path(test_film).name in why['planted-near-copy.jpg']
    assert why['planted-same-pixels.png'].startswith('tied to val image') and Path(val_film).name in why['planted-same-pixels.png']
    assert rep['variant'] == 'covidx-v1-covid' and rep['more_covid']['used'] == json.loads(
        (splits / 'covidx-v1-adult-covid' / 'report.json').read_text())['more_covid']['used']


def test_more_covid_needs_the_split_files(tmp_path):
    r = run_cli(build_cli, '--sources', SRC, '--out', tmp_path, '--more-covid', prog='covidnext-build')
    assert r.returncode != 0 and 'more_covid adds to the published split: give split_files' in r.stderr


# ------------------------------------------------------------------------------------------------------------------
# The study notebook, quick configuration: two seeds per training set, 32 px, 64 images per split, one epoch.
# ------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def study(quick_study, tmp_path_factory):
    """A scratch copy of the study with quick models trained on both splits, and 14_shortcut run by papermill. The
    models are the quick study's (tests/conftest.py: its COVIDx-v1 runs, and its adult and adult-all
    settings, trained alike), linked with its splits and image caches; the adult setting's seed 1, which that study
    trains only when its screen chooses adult, is trained here where it is missing, as its seed 0 was."""
    import torch
    from covidnext.train import TrainConfig, fit
    w = tmp_path_factory.mktemp('shortcut')
    shutil.copytree(ROOT / 'nbs' / 'study', w / 'nbs' / 'study')
    for d in ('out', '.cache'): shutil.copytree(quick_study / d, w / d, copy_function=os.link)
    q, runs = quick_study / 'runs' / 'quick', w / 'runs' / 'quick'
    for src, dst in [(q / f'resnet18-seed{s}', runs / f'resnet18-seed{s}') for s in (0, 1)] + [
            (q / 'shortcut' / 'adult' / f'resnet18-seed{s}', runs / 'covidx-v1-adult' / f'resnet18-seed{s}') for s in (0, 1)] + [
            (q / 'shortcut' / 'adult-all' / 'resnet18-seed0', runs / 'shortcut' / 'adult-all' / 'resnet18-seed0')]:
        if src.is_dir(): shutil.copytree(src, dst, copy_function=os.link)
    torch.set_num_threads(2)
    t0 = time.time()
    if not (runs / 'covidx-v1-adult' / 'resnet18-seed1').is_dir():
        cfg = json.loads((runs / 'covidx-v1-adult' / 'resnet18-seed0' / 'config.json').read_text())
        fit(TrainConfig.recipe('seed', **{**cfg, 'seed': 1, 'split_csv': str(w / 'out' / 'covidx-v1-adult' / 'split.csv'), 'cache_root': str(w / '.cache'),
                           'out': str(runs / 'covidx-v1-adult' / 'resnet18-seed1'), 'log_images': False}))
    train_s = time.time() - t0
    env = {**os.environ, 'COVIDNEXT_SOURCES': str(SRC), 'OMP_NUM_THREADS': '2'}
    (w / 'reports' / 'quick').mkdir(parents=True)
    t0 = time.time()
    r = subprocess.run([BIN / 'covidnext-screen', '--runs', 'v1=runs/quick/resnet18-seed0/best.pt',
                        'adult=runs/quick/covidx-v1-adult/resnet18-seed*/best.pt', 'adult-all=runs/quick/shortcut/adult-all/resnet18-seed0/best.pt',
                        '--split-csv', 'out/covidx-v1-adult/split.csv', '--out', 'reports/quick/14_screen.json', '--cache-root', '.cache'],
                       cwd=w, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    (w / 'chosen.txt').write_text(r.stdout.strip().splitlines()[-1])
    r = subprocess.run([BIN / 'papermill', '-k', 'python3', '--cwd', '.', '--no-progress-bar', 'nbs/study/14_shortcut.ipynb',
                        'reports/quick/14_shortcut.ipynb', '-p', 'runs_v1', 'runs/quick/resnet18-seed*/best.pt',
                        '-p', 'runs_adult', 'runs/quick/covidx-v1-adult/resnet18-seed*/best.pt', '-p', 'n_boot', '200',
                        '-p', 'screen', 'reports/quick/14_screen.json', '-p', 'out', 'reports/quick'],
                       cwd=w, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    print(f"quick model trained in {train_s:.0f} s; 14_shortcut ran in {time.time() - t0:.0f} s")
    return w


def test_shortcut_json(study):
    rq = study / 'reports' / 'quick'
    s = json.loads((rq / '14_shortcut.json').read_text())
    assert set(s['variants']) == {'COVIDx-v1', 'COVIDx-v1 + adult normals'}
    for name, v in s['variants'].items():
        assert v['n_models'] == 2 and v['seeds'] == [0, 1] and len(v['models']) == 2
        for m in v['models'] + [v['ensemble']]:
            fc = m['false_covid']
            assert fc['n'] == 100 and sum(fc['called'].values()) == 100
            assert fc['ci_low'] <= fc['rate'] <= fc['ci_high'] and fc['ci_low'] <= fc['ci_high']
            assert m['test']['accuracy']['low'] <= m['test']['accuracy']['value'] <= m['test']['accuracy']['high']
            src = {(r['source'], r['label']): r['n'] for r in m['per_source']}
            assert src[('radiography', 'normal')] == 100 and sum(n for (sc, _), n in src.items() if sc != 'radiography') == 639
    runs = s['runs']
    assert all('covidx-v1-adult' in r['trained_on'] for r in runs['COVIDx-v1 + adult normals'])
    assert not any('covidx-v1-adult' in r['trained_on'] for r in runs['COVIDx-v1'])
    p = s['paired_covid_calls']['COVIDx-v1 + adult normals']
    assert p['n'] == 100 and p['only_a'] + p['only_b'] + p['both'] + p['neither'] == 100 and 0 <= p['p_value'] <= 1
    assert len(s['probes']) == 3                                         # two trained models and the untrained control
    for d in s['probes'].values():
        assert set(d) == {'all sources', 'normal films only'}
        assert d['all sources']['sources'] == ['cohen', 'kermany', 'radiography'] and d['all sources']['n'] == 739
        assert d['normal films only']['sources'] == ['kermany', 'radiography'] and d['normal films only']['n'] == 334
        assert 0 <= d['all sources']['balanced_accuracy'] <= 1 and abs(d['all sources']['chance'] - 1 / 3) < 1e-12
    assert len(s['gradcam']) == 6 and (rq / '14_shortcut_gradcam.png').is_file()
    assert (rq / '14_shortcut.md').read_text().startswith('| trained on |')


def test_shortcut_notebook_records_parameters(study):
    nb = json.loads((study / 'reports' / 'quick' / '14_shortcut.ipynb').read_text())
    assert nb['metadata']['papermill']['parameters']['n_boot'] == 200
    out = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'device: cpu' in out
    assert not any(o.get('output_type') == 'error' for c in nb['cells'] for o in c.get('outputs', []))


def test_screen_chooses_on_validation(study):
    "covidnext-screen measures each setting on the covidx-v1-adult val split (100 adult normals) and picks the best mean macro-F1."
    sc = json.loads((study / 'reports' / 'quick' / '14_screen.json').read_text())
    runs = pd.DataFrame(sc['runs'])
    assert runs.setting.tolist() == ['v1', 'adult', 'adult', 'adult-all'] and (runs.val_adult_n == 100).all()
    best = runs.groupby('setting').val_macro_f1.mean().idxmax()
    assert sc['chosen'] == best == (study / 'chosen.txt').read_text()
    allm = runs[runs.setting == 'adult-all'].iloc[0]
    assert (allm.resize_mode, allm.harmonize, allm.source_aug) == ('pad', 'equalize', 0.5)
    s = json.loads((study / 'reports' / 'quick' / '14_shortcut.json').read_text())
    assert s['screen']['chosen'] == sc['chosen'] and len(s['screen']['runs']) == 4
    for r in s['screen']['runs']:                                         # every setting's held-out numbers, after the choice
        assert 0 <= r['test_adult_false_covid'] <= 1 and 0 <= r['test_macro_f1'] <= 1


def _rows(cache, split: str, drop: str) -> list:
    "The paths of the cache's rows that a run of `split` uses, leaving out the sources `drop` names."
    from covidnext.cache import Cache
    from covidnext.train import TrainConfig, load_split
    c = Cache(cache)
    return c.table.path.values[load_split(c, split, TrainConfig.recipe('seed', size=32, drop_sources=drop), 'cpu')[2]].tolist()


def test_study_from_one_adult_cache(quick_study):
    """One covidx-v1-adult cache serves the COVIDx-v1 runs and their evaluation where the sources are absent (as on a
    GPU machine): without its adult films (drop_sources=radiography) it is COVIDx-v1, row for row (val 530, test 639).
    The quick study's own squash cache of covidx-v1-adult is such a cache; tests/test_study.py checks that the study's
    plan passes it on (--adult-cache), and the screen's settings from it."""
    cache, = (quick_study / '.cache').glob('covidx-v1-adult-32-squash-*')
    want = pd.read_csv(quick_study / 'out' / 'covidx-v1' / 'split.csv')
    for split, n in (('val', 530), ('test', 639)):                        # COVIDx-v1's own splits, no adult film
        rows = _rows(cache, split, 'radiography')
        assert len(rows) == n and rows == want.path[want.split == split].tolist(), (split, len(rows))
    assert len(_rows(cache, 'val', '')) == 630                           # ... and with them, the screen's 100 adult normals


def test_study_from_the_plus_cache_alone(splits, tmp_path):
    """One covidx-v1-adult-covid cache serves every step: without its added films (source cohen-unlisted) it is
    covidx-v1-adult row for row, and without the adult films as well it is COVIDx-v1; the plus settings train from
    all of it. So a machine without the sources can screen every squash setting from that one file (tests/test_study.py
    checks that the study's plan passes it on, --plus-cache, with these drop_sources)."""
    from covidnext.cache import build_cache
    from covidnext.evaluate import trained_on
    plus = build_cache(splits / 'covidx-v1-adult-covid' / 'split.csv', SRC, tmp_path / '.cache', 32, progress=False)
    for drop, name in (('cohen-unlisted', 'covidx-v1-adult'), ('radiography,cohen-unlisted', 'covidx-v1')):
        want = pd.read_csv(splits / name / 'split.csv')
        for split in ('train', 'val', 'test'):
            assert _rows(plus, split, drop) == want.path[want.split == split].tolist(), (name, split)
    assert len(_rows(plus, 'test', 'radiography,cohen-unlisted')) == 639
    assert len(_rows(plus, 'val', '')) == 630                            # the screen's val split: adult's, no added film
    assert trained_on({'cache': str(plus), 'drop_sources': 'radiography,cohen-unlisted'}) == \
        f'covidx-v1-adult-covid (cache {plus.name}) without radiography,cohen-unlisted'
