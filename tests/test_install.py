"""The light install as a user gets it: the wheel built from this checkout, installed with its dependencies into a fresh
environment without torch, predicts a PNG and a JPEG-LS DICOM with the shipped model and with a model that carries
OOD statistics, and says whether each film is familiar."""
from __future__ import annotations
import csv, io, os, shutil, subprocess, sys, venv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import SRC, kermany_split

ROOT = Path(__file__).parents[1]


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    return r


@pytest.fixture(scope='module')
def light(tmp_path_factory) -> Path:
    "A fresh environment (no system packages) with the wheel of this checkout and its dependencies: its bin/ folder."
    d = tmp_path_factory.mktemp('light')
    src = d / 'src'                                   # what the wheel is built from, copied: no stale build/ of the checkout's
    for folder in ('covidnext', 'models'): shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('setup.py', 'settings.ini', 'README.md', 'MANIFEST.in'): shutil.copy(ROOT / f, src / f)
    run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', d / 'dist', src)
    wheel, = (d / 'dist').glob('covidnext-*.whl')
    venv.create(d / 'env', with_pip=True)
    run(d / 'env' / 'bin' / 'python', '-m', 'pip', 'install', '-q', wheel)
    return d / 'env' / 'bin'


def test_the_light_install_has_no_torch_and_carries_the_model(light):
    r = subprocess.run([light / 'python', '-c', 'import torch'], capture_output=True, text=True)
    assert r.returncode != 0 and 'No module named' in r.stderr
    code = 'from covidnext.infer import default_model; print(default_model())'
    shipped = Path(run(light / 'python', '-c', code, cwd=light).stdout.strip())
    assert shipped.is_file() and 'site-packages' in str(shipped) and shipped.stat().st_size == (ROOT / 'models' / 'covidnext.onnx').stat().st_size


def test_the_light_install_predicts_png_and_jpeg_ls_dicom_with_the_ood_columns(light, tmp_path):
    import torch
    from covidnext.export import export_onnx
    from covidnext.ood import with_ood
    from covidnext.train import TrainConfig, fit
    film = next((SRC / 'covid19-radiography-normal-224').rglob('*.png'))
    ds = pydicom.dcmread(get_testdata_file('MR_small_jpeg_ls_lossless.dcm'))    # JPEG-LS coded, 64 x 64
    assert ds.file_meta.TransferSyntaxUID.name == 'JPEG-LS Lossless Image Compression'
    ds.Modality = 'CR'                                                           # marked a radiograph: through the gates
    ds.save_as(tmp_path / 'jls.dcm')
    split = kermany_split(tmp_path, ('normal', 'bacteria'), 16, ['train'] * 12 + ['val'] * 4)
    torch.manual_seed(0)
    fit(TrainConfig.recipe('seed', split_csv=str(split), sources=str(SRC), cache_root=str(tmp_path / 'cache'), size=64, arch='resnet18',
                           epochs=1, batch_size=8, augment=False, out=str(tmp_path / 'run'), progress=False, log_images=False, device='cpu'))
    with_ood(tmp_path / 'run' / 'last.pt', tmp_path / 'ood.pt', cache_root=tmp_path / 'cache', sources=SRC, device='cpu')
    export_onnx(tmp_path / 'ood.pt', tmp_path / 'ood.onnx')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    for model in ([], ['--checkpoint', tmp_path / 'ood.onnx']):
        r = run(light / 'covidnext-predict', film, tmp_path / 'jls.dcm', '--no-progress', *model, cwd=tmp_path, env=env)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert [Path(x['path']).name for x in rows] == [film.name, 'jls.dcm'] and all(x['pred'] and not x['error'] for x in rows), r.stdout
        assert {'ood_score', 'unfamiliar', 'warning'} <= set(rows[0])
        if model:                                                                # the model with OOD statistics scores both
            assert all(np.isfinite(float(x['ood_score'])) and x['unfamiliar'] in ('True', 'False') for x in rows), rows
