"""COVIDx-v1 built from the real public sources (`COVIDNEXT_SOURCES`, `../shared/data` in CI): the exact published
split, the patient-level regeneration, the command line, and the compact cache."""
from __future__ import annotations
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import SRC, run_cli
from covidnext.covidx import COVIDNET_TEST_PATIENTS, build_cli, build_split, find_leaks

if not (SRC / 'covidx-v1-splits').is_dir():
    pytest.fail(f"the public sources are needed: set COVIDNEXT_SOURCES (no {SRC / 'covidx-v1-splits'})", pytrace=False)


@pytest.fixture(scope='module')
def published(covidx_v1):
    "The published split as `covidnext-build --split-files` writes it (built once per test run: tests/conftest.py)."
    return covidx_v1


@pytest.fixture(scope='module')
def regenerated(tmp_path_factory):
    "A patient-level regeneration with seed 0: (its folder, the build report)."
    out = tmp_path_factory.mktemp('regenerated')
    return out, build_split(SRC, out, seed=0, progress=False)


def test_published_split(published):
    out, r = published
    df = pd.read_csv(out / 'split.csv')
    assert list(df.columns[:5]) == ['path', 'patient_id', 'label', 'source', 'split']
    test = df[df.split == 'test'].label.value_counts().to_dict()
    assert test == {'normal': 234, 'bacteria': 246, 'viral': 149, 'COVID-19': 10}
    rep = json.loads((out / 'report.json').read_text())
    assert rep['published'] == {'train': {'listed': 5310, 'found': 5293}, 'test': {'listed': 639, 'found': 639}}
    assert (df.split.isin(['train', 'val'])).sum() == 5293          # validation is carved from the published train
    assert 0.08 < (df.split == 'val').sum() / 5293 < 0.12
    missing = [d['file'] for d in rep['dropped']]
    assert len(missing) == 17 and 'NORMAL2-IM-1440-0001.jpeg' in missing and any('covid-19-pneumonia-14-PA' in m for m in missing)
    assert all(m in (out / 'report.md').read_text() for m in missing)  # each missing file named in the report
    assert len(find_leaks(df)) == 0
    assert not any(Path(p).is_absolute() for p in df.path)
    assert '17 rows dropped' in r.stdout


def test_regenerated_split_has_no_leaks(regenerated):
    out, rep = regenerated
    df = pd.read_csv(out / 'split.csv')
    assert rep['leaks'] == []
    for col in ('patient_id', 'pixel_hash'):                        # zero patients and zero identical images shared
        assert (df.groupby(col).split.nunique() > 1).sum() == 0, col
    kept = df[df.patient_id.isin(COVIDNET_TEST_PATIENTS)]
    assert set(kept.patient_id) == set(COVIDNET_TEST_PATIENTS) and set(kept.split) == {'test'}
    assert set(df[(df.source == 'kermany') & df.path.str.contains('/test/')].split) == {'test'}
    assert {'train', 'val', 'test'} == set(df.split)
    assert df.label.isin(['normal', 'bacteria', 'viral', 'COVID-19']).all()   # `other` never enters a split
    other = [d for d in rep['dropped'] if d['reason'].startswith('label other')]
    assert len(other) > 0                                            # ...and is counted in the report


def test_regenerated_split_is_seeded(regenerated, tmp_path):
    a_dir, a = regenerated                                          # seed 0
    build_split(SRC, tmp_path / 'b', seed=0, progress=False)
    assert (a_dir / 'split.csv').read_bytes() == (tmp_path / 'b' / 'split.csv').read_bytes()
    c = build_split(SRC, tmp_path / 'c', seed=4, progress=False)
    assert a['counts']['test'] == c['counts']['test'] and a['counts']['val'] != c['counts']['val']


def test_build_cli_help_and_errors(tmp_path):
    "In this process (the `published` fixture runs the command itself)."
    h = run_cli(build_cli, '--help', prog='covidnext-build').stdout
    for opt in ('--sources', '--out', '--split-files', '--seed', '--val-frac', '--allow-leaks'): assert opt in h
    r = run_cli(build_cli, '--sources', tmp_path / 'nowhere', '--out', tmp_path / 'o', prog='covidnext-build')
    assert r.returncode != 0 and 'does not exist' in r.stderr


def test_cache_of_published_split(published, tmp_path):
    from covidnext.cache import Cache, build_cache
    out, _ = published
    c = Cache(build_cache(out / 'split.csv', SRC, tmp_path, size=224, progress=False))
    assert len(c) == 5932 and c.meta['bytes'] < 50 * 2**20          # travels to a GPU machine
    x = c.images(c.indices('test')[:8])
    assert tuple(x.shape) == (8, 1, 224, 224)
