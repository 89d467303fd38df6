"""Acceptance tests of covidnext.evaluate: metrics checked by hand and against scikit-learn, the patient-level
bootstrap, calibration, and covidnext-evaluate end to end on a tiny model trained on real Kermany images."""
from __future__ import annotations
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from covidnext.core import CLASSES, jsonable
from covidnext.metrics import (bootstrap_metrics, calibration, classification_metrics, confusion_metrics, covidnet_rates,
                               evaluate_probs, patient_codes, patient_draws, percentile_ci, roc_auc, weighted_auc)
from covidnext.evaluate import evaluate_checkpoint, evaluate_cli
from conftest import run_cli

SRC = Path(os.environ.get('COVIDNEXT_SOURCES', Path(__file__).parents[1] / '..' / 'shared' / 'data'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
CLI = [sys.executable, '-c', 'import sys; from covidnext.evaluate import evaluate_cli; sys.argv[0] = "covidnext-evaluate"; evaluate_cli()']

CM = np.array([[50, 5, 3, 2],    # rows: true normal, bacteria, viral, COVID-19; columns: predicted
               [4, 40, 6, 0],
               [3, 7, 30, 0],
               [0, 1, 1, 8]])


def from_confusion(cm):
    "(y_true, y_pred) whose confusion matrix is `cm`."
    pairs = [(t, p) for (t, p), n in np.ndenumerate(np.asarray(cm)) for _ in range(n)]
    return np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])


def toy_probs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    p = rng.dirichlet(np.ones(4), n); p[np.arange(n), y] += 0.3
    return y, p / p.sum(1, keepdims=True), rng.integers(0, n // 3, n).astype(str)


# ---------------------------------------------------------------- metrics

def test_covidnet_sensitivity_and_ppv_by_hand_and_sklearn():
    sens, ppv = covidnet_rates(CM)
    np.testing.assert_allclose(sens, [50 / 60, 40 / 50, 30 / 40, 8 / 10], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ppv, [50 / 57, 40 / 53, 30 / 40, 8 / 10], rtol=0, atol=1e-12)
    yt, yp = from_confusion(CM)
    np.testing.assert_allclose(sens, recall_score(yt, yp, average=None), atol=1e-12)
    np.testing.assert_allclose(ppv, precision_score(yt, yp, average=None), atol=1e-12)
    m = confusion_metrics(CM)
    assert m['accuracy'] == pytest.approx(128 / 160, abs=1e-12)
    assert m['macro_recall'] == pytest.approx(np.mean([50 / 60, 40 / 50, 30 / 40, 8 / 10]), abs=1e-12)
    assert m['macro_precision'] == pytest.approx(np.mean([50 / 57, 40 / 53, 30 / 40, 8 / 10]), abs=1e-12)
    f1 = [2 * 50 / (60 + 57), 2 * 40 / (50 + 53), 2 * 30 / (40 + 40), 2 * 8 / (10 + 10)]
    assert m['macro_f1'] == pytest.approx(np.mean(f1), abs=1e-12)
    assert m['macro_f1'] == pytest.approx(f1_score(yt, yp, average='macro'), abs=1e-12)
    cm = classification_metrics(yt, np.eye(4)[yp])
    for k in ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall'): assert m[k] == pytest.approx(cm[k], abs=1e-12)


def test_undefined_rates_are_nan_and_results_say_null():
    y = np.array([0, 0, 1, 1, 2]); p = np.eye(4)[[0, 1, 1, 1, 0]]          # no COVID-19 image, viral never predicted
    r = evaluate_probs(y, p, ['a', 'b', 'c', 'd', 'e'], n_boot=50)
    assert np.isnan(r['sensitivity']['COVID-19']) and np.isnan(r['ppv']['COVID-19']) and np.isnan(r['ppv']['viral'])
    assert np.isnan(r['auc']['COVID-19']) and np.isfinite(r['macro_auc'])
    j = json.loads(json.dumps(jsonable(r), allow_nan=False))
    assert j['sensitivity']['COVID-19'] is None and j['ci']['ppv_COVID-19'] == {'low': None, 'high': None, 'n': 0}


def test_roc_auc_matches_sklearn_and_skips_absent_classes():
    y, p, _ = toy_probs()
    auc, macro = roc_auc(y, p)
    assert macro == pytest.approx(roc_auc_score(y, p, multi_class='ovr', average='macro'), abs=1e-12)
    for k in range(4): assert auc[k] == pytest.approx(roc_auc_score(y == k, p[:, k]), abs=1e-12)
    auc3, macro3 = roc_auc(np.where(y == 3, 0, y), p)
    assert np.isnan(auc3[3]) and macro3 == pytest.approx(np.mean(auc3[:3]), abs=1e-12)


def test_weighted_auc_is_auc_of_repeated_images_ties_included():
    y, p, _ = toy_probs()
    s = np.round(p[:, 0], 1)
    w = np.random.default_rng(1).integers(0, 4, (5, len(y)))
    got = weighted_auc(y == 0, s, w)
    for b in range(5):
        rep = np.repeat(np.arange(len(y)), w[b])
        assert got[b] == pytest.approx(roc_auc_score(y[rep] == 0, s[rep]), abs=1e-12)


# ---------------------------------------------------------------- bootstrap

def test_each_resample_equals_the_materialized_resample():
    y, p, pids = toy_probs()
    bm = bootstrap_metrics(y, p, pids, n_boot=15, seed=7, chunk=4)
    codes, P = patient_codes(pids)
    draws = patient_draws(P, 15, 7)
    for b in range(15):
        rep = np.repeat(np.arange(len(y)), draws[b][codes])
        m = classification_metrics(y[rep], p[rep])
        for k in ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall'): assert bm[k][b] == pytest.approx(m[k], abs=1e-12)
        assert bm['macro_auc'][b] == pytest.approx(roc_auc_score(y[rep], p[rep], multi_class='ovr'), abs=1e-12)
        for i, c in enumerate(CLASSES):
            assert bm[f'sensitivity_{c}'][b] == pytest.approx(recall_score(y[rep], p[rep].argmax(1), average=None)[i], abs=1e-12)
            assert bm[f'ppv_{c}'][b] == pytest.approx(precision_score(y[rep], p[rep].argmax(1), average=None)[i], abs=1e-12)


def test_perfect_classifier_ci_is_one_one():
    y, _, pids = toy_probs()
    r = evaluate_probs(y, np.eye(4)[y], pids, n_boot=1000)
    for k in ['accuracy', 'macro_f1', 'macro_precision', 'macro_recall', 'macro_auc'] + \
             [f'{m}_{c}' for m in ('sensitivity', 'ppv') for c in CLASSES]:
        assert (r['ci'][k]['low'], r['ci'][k]['high']) == (1.0, 1.0), k
        assert r['ci'][k]['n'] >= 990, k


def test_ci_narrows_with_ten_times_more_patients():
    def quarter_wrong(n_pat):                      # 2 images a patient; a quarter of the patients wrong on both
        y = np.zeros(2 * n_pat, int); p = np.eye(4)[np.where(np.arange(2 * n_pat) < n_pat // 2, 1, 0)]
        return y, p, np.arange(2 * n_pat) // 2
    w = []
    for n in (40, 400):
        r = evaluate_probs(*quarter_wrong(n), n_boot=1000, seed=0)
        assert r['accuracy'] == 0.75 and r['ci']['accuracy']['low'] < 0.75 < r['ci']['accuracy']['high']
        w.append(r['ci']['accuracy']['high'] - r['ci']['accuracy']['low'])
    assert w[1] < w[0] / 2, w                      # about sqrt(10) narrower


def test_bootstrap_resamples_whole_patients():
    # one patient with 10 images, all wrong; 9 patients with one right image each
    y, p = np.zeros(19, int), np.eye(4)[[1] * 10 + [0] * 9]
    pids = ['bad'] * 10 + [f'p{i}' for i in range(9)]
    acc = bootstrap_metrics(y, p, pids, n_boot=2000, seed=0)['accuracy']
    possible = np.array([k / (k + 10 * (10 - k)) for k in range(11)])
    assert np.abs(acc[:, None] - possible[None]).min(1).max() < 1e-12   # never e.g. 18/19, as image resampling gives
    assert len(np.unique(np.round(acc, 12))) > 5
    # the images of a patient move together: equal multiplicities in every resample
    codes, P = patient_codes(pids)
    w = patient_draws(P, 100, 0)[:, codes]
    assert (w[:, :10] == w[:, :1]).all() and (w.sum(1) != 19).any() and (patient_draws(P, 100, 0).sum(1) == P).all()
    # and the same seed gives the same intervals
    r1, r2 = evaluate_probs(y, p, pids, n_boot=300, seed=5), evaluate_probs(y, p, pids, n_boot=300, seed=5)
    assert r1['ci'] == r2['ci']


def test_undefined_resamples_are_skipped():
    y = np.r_[np.zeros(20, int), [3, 3]]; pids = np.r_[np.arange(20), [99, 99]]
    bm = bootstrap_metrics(y, np.eye(4)[y], pids, n_boot=1000)
    lo, hi, n = percentile_ci(bm['sensitivity_COVID-19'])
    assert (lo, hi) == (1.0, 1.0) and 550 < n < 750          # P(COVID patient not drawn) = (20/21)^21 ~ 0.36
    assert percentile_ci(bm['macro_f1'])[2] == n and percentile_ci(bm['accuracy'])[2] == 1000


def test_bootstrap_speed_1000_resamples_639_images():
    rng = np.random.default_rng(0)
    y, p, pids = rng.integers(0, 4, 639), rng.dirichlet(np.ones(4), 639), rng.integers(0, 434, 639)
    t0 = time.perf_counter(); evaluate_probs(y, p, pids, n_boot=1000); dt = time.perf_counter() - t0
    assert dt < 5, dt


# ---------------------------------------------------------------- calibration

def _toy(conf, correct):
    p = np.repeat(((1 - conf) / 3)[:, None], 4, 1)
    p[np.arange(len(conf)), np.where(correct, 0, 1)] = conf
    return np.zeros(len(conf), int), p


def test_ece_of_calibrated_toy_is_zero():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1, 200_000)
    assert calibration(*_toy(conf, rng.random(len(conf)) < conf))['ece'] < 0.005
    assert calibration(*_toy(np.full(1000, 0.8), np.arange(1000) < 800))['ece'] == pytest.approx(0, abs=1e-12)
    c = calibration(*_toy(np.full(1000, 0.9), np.arange(1000) < 600))
    assert c['ece'] == pytest.approx(0.3, abs=1e-12) and c['n_bins'] == 15 and sum(c['count']) == 1000
    assert c['count'][13] == 1000 and c['accuracy'][13] == pytest.approx(0.6) and np.isnan(c['accuracy'][0])


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A resnet18 trained for 1 epoch at 32 px on whole Kermany patients (train/val/test), and its split.csv."
    from covidnext.sources import read_kermany
    from covidnext.train import TrainConfig, fit
    d = tmp_path_factory.mktemp('eval')
    k = read_kermany(SRC / 'kermany-chest-xray-224'); k = k[k.source_split == 'train']
    pats = k.drop_duplicates('patient_id').groupby('label').sample(16, random_state=0)
    rank = pats.groupby('label').cumcount() / 16
    part = dict(zip(pats.patient_id, np.where(rank < 0.5, 'train', np.where(rank < 0.75, 'val', 'test'))))
    k = k[k.patient_id.isin(part)].assign(split=lambda t: t.patient_id.map(part))
    k['path'] = [os.path.relpath(p, SRC) for p in k.path]
    k[['path', 'patient_id', 'label', 'source', 'split']].to_csv(d / 'split.csv', index=False)
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        fit(TrainConfig.recipe('seed', split_csv=str(d / 'split.csv'), sources=str(SRC), cache_root=str(d / 'cache'), size=32,
                        arch='resnet18', epochs=1, batch_size=16, augment=False, out=str(d / 'run'), progress=False,
                        device='cpu', log_images=False))
    finally: torch.set_num_threads(threads)
    return d


def cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)


def test_cli_end_to_end_files_match_recomputation(trained):
    d = trained
    r = cli('--checkpoint', d / 'run' / 'best.pt', '--split-csv', d / 'split.csv', '--split', 'test', '--out', d / 'out',
            '--sources', SRC, '--cache-root', d / 'cache', '--n-boot', 1000, '--seed', 3, '--device', 'cpu')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'macro_f1' in r.stdout and '95% CI' in r.stdout and 'sensitivity_COVID-19' in r.stdout
    names = {p.name for p in (d / 'out').iterdir()}
    assert names == {f'test_{k}' for k in ('results.json', 'predictions.csv', 'metrics.csv', 'confusion.png', 'roc.png',
                                           'reliability.png')}
    for f in ('confusion', 'roc', 'reliability'): assert (d / 'out' / f'test_{f}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    js = json.loads((d / 'out' / 'test_results.json').read_text())
    split = pd.read_csv(d / 'split.csv'); test = split[split.split == 'test']
    preds = pd.read_csv(d / 'out' / 'test_predictions.csv')
    assert list(preds.columns) == ['path', 'patient_id', 'source', 'label', 'pred'] + [f'prob_{c}' for c in CLASSES]
    assert sorted(preds.path) == sorted(test.path) and len(preds) == js['n'] == len(test)
    probs = preds[[f'prob_{c}' for c in CLASSES]].to_numpy()
    assert (preds.pred == [CLASSES[i] for i in probs.argmax(1)]).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    # the preprocessing came from the checkpoint: a 32 px squash cache
    assert (js['meta']['size'], js['meta']['resize_mode'], js['meta']['split']) == (32, 'squash', 'test')
    assert '-32-squash-' in Path(js['meta']['cache']).name
    # every number in the JSON is what the predictions file gives
    y = np.array([CLASSES.index(l) for l in preds.label])
    again = jsonable(evaluate_probs(y, probs, preds.patient_id.to_numpy(), n_boot=1000, seed=3))
    assert {k: js[k] for k in again} == again
    assert js['n_patients'] == test.patient_id.nunique() and js['bootstrap']['n_boot'] == 1000
    assert js['per_source']['kermany']['accuracy'] == pytest.approx((preds.pred == preds.label).mean(), abs=1e-12)
    assert js['sensitivity']['COVID-19'] is None and js['auc']['COVID-19'] is None    # no COVID-19 here: null, no crash
    # the metrics table is the JSON's
    mt = pd.read_csv(d / 'out' / 'test_metrics.csv').set_index('metric')
    assert list(mt.columns) == ['value', 'ci_low', 'ci_high']
    for k in ('accuracy', 'macro_f1', 'macro_precision', 'macro_recall', 'macro_auc'):
        assert mt.loc[k, 'value'] == pytest.approx(js[k], abs=1e-12)
        assert (mt.loc[k, 'ci_low'], mt.loc[k, 'ci_high']) == pytest.approx((js['ci'][k]['low'], js['ci'][k]['high']), abs=1e-12)
    assert mt.loc['sensitivity_viral', 'value'] == pytest.approx(js['sensitivity']['viral'], abs=1e-12)
    assert np.isnan(mt.loc['ppv_COVID-19', 'value']) and mt.loc['ece', 'value'] == pytest.approx(js['ece'], abs=1e-12)


def test_cli_errors_name_the_file(trained):
    "In this process (the command itself runs in the test above)."
    d = trained
    def cli(*args): return run_cli(evaluate_cli, *args, prog='covidnext-evaluate')
    r = cli('--checkpoint', d / 'missing.pt', '--split-csv', d / 'split.csv', '--out', d / 'x')
    assert r.returncode != 0 and 'missing.pt: checkpoint not found' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli('--checkpoint', d / 'run' / 'best.pt', '--split-csv', d / 'split.csv', '--split', 'holdout', '--out', d / 'x')
    assert r.returncode != 0 and "split.csv: no images in split 'holdout'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli('--checkpoint', d / 'run' / 'best.pt', '--split-csv', d / 'nosuch.csv', '--out', d / 'x')
    assert r.returncode != 0 and 'nosuch.csv: split file not found' in r.stderr
    assert not (d / 'x').exists()
    h = cli('--help')
    for opt in ('--checkpoint', '--split-csv', '--split', '--out', '--sources', '--cache-root', '--n-boot', '--seed', '--device'):
        assert opt in h.stdout, opt


def test_given_cache_must_match_checkpoint_geometry(trained):
    from covidnext.cache import build_cache
    from covidnext.core import DataError
    d = trained
    c64 = build_cache(d / 'split.csv', SRC, d / 'cache', size=64, progress=False, workers=1)
    with pytest.raises(DataError, match='checkpoint was trained on 32px squash'):
        evaluate_checkpoint(d / 'run' / 'best.pt', cache=c64, device='cpu', n_boot=10)
    c32 = build_cache(d / 'split.csv', SRC, d / 'cache', size=32, progress=False, workers=1)
    res, preds = evaluate_checkpoint(d / 'run' / 'best.pt', 'val', cache=c32, device='cpu', n_boot=10)
    assert res['meta']['split'] == 'val' and len(preds) == (pd.read_csv(d / 'split.csv').split == 'val').sum()
