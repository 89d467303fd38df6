"""The training engine through its command line: exact resume after SIGKILL, torchrun with two CPU processes (gloo),
TensorBoard events, the NaN guard, and checkpoints that load with weights_only=True. Real Kermany images, tiny sizes.
The command runs as a process where that is what a test proves (the killed and resumed run, torchrun), else its function
runs in this process."""
from __future__ import annotations
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SRC, kermany_split, run_cli
from covidnext.checkpoint import RESUME_KEYS, load_checkpoint, read_checkpoint
from covidnext.train import train_cli

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
SIZE = 32  # pixels: the step counts below follow from the image and batch counts alone


@pytest.fixture(scope='module')
def split_csv(tmp_path_factory) -> Path:
    "96 train + 32 val real Kermany images (normal vs bacterial); their cache is built by the first run."
    return kermany_split(tmp_path_factory.mktemp('data'), ('normal', 'bacteria'), 64, ['train'] * 48 + ['val'] * 16)


def train_args(split_csv, out, *extra) -> list:
    return [BIN / 'covidnext-train', '--split-csv', split_csv, '--sources', SRC, '--cache-root', split_csv.parent / 'cache',
            '--size', SIZE, '--arch', 'resnet18', '--epochs', '2', '--batch-size', '8', '--device', 'cpu',
            '--deterministic', '--no-progress', '--recipe', 'seed', '--out', out, *extra]


def run(args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, **kw)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def run_here(args, check=True) -> subprocess.CompletedProcess:
    """`args` (a covidnext-train command line) run by `train_cli` in this process, on one thread as `run` runs it; torch's
    thread count and determinism switch restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try: r = run_cli(train_cli, *args[1:], prog='covidnext-train')
    finally: torch.set_num_threads(threads); torch.use_deterministic_algorithms(deterministic)
    assert r.returncode == 0 or not check, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope='module')
def one_epoch(split_csv, tmp_path_factory) -> Path:
    "The run folder of one epoch of `train_args`, in this process."
    out = tmp_path_factory.mktemp('one-epoch') / 'R'
    run_here(train_args(split_csv, out, '--epochs', '1'))
    return out


def weights(path) -> dict:
    return load_checkpoint(path)['model']


def test_resume_after_sigkill_is_exact(split_csv, tmp_path):
    ema = ('--ema', '0.99')                                       # the weight average must resume exactly too
    every = ('--ckpt-every', '6')                                  # 12 steps an epoch: one mid-epoch checkpoint each
    run_here(train_args(split_csv, tmp_path / 'A', *every, *ema))  # the reference, uninterrupted
    full = read_checkpoint(tmp_path / 'A' / 'last.pt')
    assert full.resume['global_step'] == 24 and full.epoch == 1
    # the same run, killed with SIGKILL as soon as its first mid-epoch checkpoint exists
    p = subprocess.Popen([str(a) for a in train_args(split_csv, tmp_path / 'B', *every, *ema)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / 'B' / 'last.pt'
    t0 = time.time()
    while not last.exists() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    killed = read_checkpoint(last)                               # never half-written: it loads
    assert killed.resume['global_step'] < 24, "the run ended before it could be killed"
    (tmp_path / 'B' / '.last.pt.x1y2.tmp').write_bytes(b'half a checkpoint')   # as a kill during a write leaves
    run(train_args(split_csv, tmp_path / 'B', *every, '--resume', *ema))
    assert not list((tmp_path / 'B').glob('*.tmp'))                 # the resumed run cleared it
    resumed = read_checkpoint(last)
    assert resumed.resume['global_step'] == 24
    for a, b in ((full.model, resumed.model), (full.resume['model_raw'], resumed.resume['model_raw'])):  # the average and the trained weights
        assert a.keys() == b.keys()
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
        assert diff <= 1e-6, diff
    assert [round(h['val_macro_f1'], 6) for h in full.resume['history']] == [round(h['val_macro_f1'], 6) for h in resumed.resume['history']]


def test_checkpoint_is_complete_and_safe(one_epoch):
    raw = torch.load(one_epoch / 'best.pt', weights_only=True)
    for k in ('schema_version', 'model', 'epoch', 'config', 'model_config', 'classes', 'metrics', 'ood', 'resume'):
        assert k in raw, k
    for k in ('optimizer', 'scheduler', 'step_in_epoch', 'global_step', 'aug_generator', 'torch_rng', 'history', 'best'):
        assert k in raw['resume'], k
    assert set(raw['resume']) <= set(RESUME_KEYS)
    ck = read_checkpoint(one_epoch / 'best.pt')
    assert ck.classes == ['normal', 'bacteria', 'viral', 'COVID-19'] and ck.config['arch'] == 'resnet18'
    assert ck.preprocess['scale'] == 'unit' and ck.preprocess['input_size'] == SIZE
    assert json.loads((one_epoch / 'config.json').read_text())['size'] == SIZE
    assert not list(one_epoch.glob('*.tmp'))


def test_tensorboard_events_parse(one_epoch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(one_epoch / 'tb')); ea.Reload()
    tags = ea.Tags()
    for t in ('train/loss', 'val/macro_f1', 'val/loss', 'lr', 'val/sens_COVID-19'): assert t in tags['scalars'], (t, tags)
    assert 'train/augmented_inputs' in tags['images'] and 'val/confusion' in tags['images']
    rows = pd.read_csv(one_epoch / 'log.csv')
    assert len(rows) == 1 and {'train_loss', 'val_macro_f1', 'val_accuracy'} <= set(rows.columns)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(split_csv, tmp_path):
    out = tmp_path / 'N'
    r = run_here(train_args(split_csv, out, '--optimizer', 'sgd', '--lr', '1e30', '--ckpt-every', '1'), check=False)
    assert r.returncode != 0
    assert 'loss is' in r.stderr and 'at epoch 0, step' in r.stderr and 'last good checkpoint is intact' in r.stderr
    if (out / 'last.pt').exists():
        ck = load_checkpoint(out / 'last.pt')
        assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())


def test_torchrun_two_cpu_processes(split_csv, tmp_path):
    out = tmp_path / 'D'
    args = [BIN / 'torchrun', '--standalone', '--nproc_per_node=2', '--no-python', *train_args(split_csv, out, '--epochs', '1')]
    r = run(args, timeout=600)
    s = json.loads((out / 'summary.json').read_text())
    assert s['world'] == 2 and s['global_step'] == 6              # 96 images, 2 processes, batch 8: 6 steps each
    assert sorted(p.name for p in out.iterdir()) == ['best.pt', 'config.json', 'last.pt', 'log.csv', 'summary.json', 'tb']
    assert len(list((out / 'tb').iterdir())) == 1                # one event file: rank 0 alone logs
    assert len(pd.read_csv(out / 'log.csv')) == 1
    assert read_checkpoint(out / 'last.pt').resume['global_step'] == 6


def test_train_help_explains_every_option():
    h = run_cli(train_cli, '--help').stdout
    from dataclasses import fields
    from covidnext.train import TrainConfig
    for f in fields(TrainConfig):
        assert '--' + f.name.replace('_', '-') in h, f.name
    assert 'torchrun' in h
