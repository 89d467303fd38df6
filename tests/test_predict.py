"""Prediction through its command lines and API (covidnext.predict, covidnext.predictor, covidnext.export, covidnext.infer): a real checkpoint
(resnet18, one epoch on real Kermany images), a folder of good and bad files, --help, a pickled-object checkpoint,
Grad-CAM overlays and on a toy, ONNX parity, and an ONNX prediction that never imports torch. Each command runs as a
process at least once; the other tests of its messages and exit status run its function in this process."""
from __future__ import annotations
import csv, json, os, shutil, subprocess, sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from covidnext.io import load_xray
from covidnext.predictor import Predictor, gradcam
from covidnext.export import export_cli
from conftest import SRC, kermany_split, run_cli
from covidnext.predict import predict_cli
from covidnext.checkpoint import load_checkpoint, save_checkpoint
from covidnext.train import TrainConfig, fit

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
CLASSES = ['normal', 'bacteria', 'viral', 'COVID-19']


def cli(module: str, func: str, prog: str, *args, ok=(0,)) -> subprocess.CompletedProcess:
    "Run a console-script function as its command would (the entry points may not be installed yet)."
    code = f'import sys; from covidnext.{module} import {func}; sys.argv[0]="{prog}"; {func}()'
    r = subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=ENV)
    assert r.returncode in ok, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    return r


def predict(*args, ok=(0,), process=False) -> subprocess.CompletedProcess:
    "covidnext-predict with `args`: its function in this process, or with `process` the command as a process."
    if process: return cli('predict', 'predict_cli', 'covidnext-predict', '--no-progress', *args, ok=ok)
    r = run_cli(predict_cli, '--no-progress', *args, prog='covidnext-predict')
    assert r.returncode in ok, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    return r


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    "A real checkpoint (resnet18, 64 px, one epoch on 48 Kermany images) and a few held-out real images."
    d = tmp_path_factory.mktemp('predict')
    k = pd.read_csv(kermany_split(d, ('normal', 'bacteria'), 32, ['train'] * 24 + ['val'] * 8, seed=1))
    torch.manual_seed(0)
    fit(TrainConfig.recipe('seed', split_csv=str(d / 'split.csv'), sources=str(SRC), cache_root=str(d / 'cache'), size=64, arch='resnet18',
                    epochs=1, batch_size=8, augment=False, out=str(d / 'run'), progress=False, log_images=False, device='cpu'))
    return dict(dir=d, ckpt=d / 'run' / 'last.pt', images=[SRC / p for p in k.path[k.split == 'val']][:6])


def write_dicom(arr: np.ndarray, path: Path) -> Path:
    "An 8-bit MONOCHROME2 DICOM file holding a 2-D uint8 array."
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, generate_uid(), 'CR'
    ds.SamplesPerPixel, ds.PhotometricInterpretation, (ds.Rows, ds.Columns) = 1, 'MONOCHROME2', arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(arr, np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def read_csv(path) -> list:
    with open(path, newline='') as f: return list(csv.DictReader(f))


def test_folder_of_good_and_bad_files(data, tmp_path):
    inp = tmp_path / 'in'; (inp / 'sub').mkdir(parents=True)
    shutil.copy(data['images'][0], inp / 'good.jpeg')
    write_dicom(load_xray(data['images'][1]), inp / 'sub' / 'scan.dcm')
    (inp / 'broken.jpg').write_bytes(data['images'][2].read_bytes()[:1500])
    (inp / 'notes.txt').write_text('not an X-ray\n')
    (inp / '.hidden.png').write_bytes(b'junk')
    r = predict(inp, '--checkpoint', data['ckpt'], '--out', tmp_path / 'preds.csv', '--batch-size', '3', ok=(1,), process=True)
    rows = {Path(x['path']).name: x for x in read_csv(tmp_path / 'preds.csv')}
    assert list(read_csv(tmp_path / 'preds.csv')[0]) == ['path', 'pred', *[f'prob_{c}' for c in CLASSES], 'ood_score', 'unfamiliar', 'warning', 'error']
    assert set(rows) == {'good.jpeg', 'scan.dcm', 'broken.jpg', 'notes.txt'}
    for name in ('good.jpeg', 'scan.dcm'):
        x = rows[name]
        assert x['error'] == '' and x['pred'] in CLASSES
        assert abs(sum(float(x[f'prob_{c}']) for c in CLASSES) - 1) < 1e-4
    assert rows['broken.jpg']['error'].startswith('truncated image data') and rows['broken.jpg']['pred'] == ''
    assert rows['notes.txt']['error'].startswith('not an image')
    assert 'broken.jpg: truncated image data' in r.stderr and 'notes.txt: not an image' in r.stderr
    assert 'not for clinical use' in r.stderr
    # the CLI's numbers are the API's
    want = Predictor.from_checkpoint(data['ckpt']).predict([inp / 'good.jpeg', inp / 'sub' / 'scan.dcm'])
    got = np.array([[float(rows[n][f'prob_{c}']) for c in CLASSES] for n in ('good.jpeg', 'scan.dcm')])
    assert np.abs(got - want).max() < 1e-5


def test_all_good_exits_zero_and_prints_csv(data, tmp_path):
    r = predict(data['images'][0], '--checkpoint', data['ckpt'], data['images'][1])  # options between paths
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('path,pred,prob_normal') and len(lines) == 3


def test_glob_and_missing_paths(data, tmp_path):
    for i, p in enumerate(data['images'][:3]): shutil.copy(p, tmp_path / f'im{i}.jpeg')
    r = predict(str(tmp_path / '*.jpeg'), tmp_path / 'nope.png', str(tmp_path / '*.gif'), '--checkpoint', data['ckpt'], ok=(1,))
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert sorted(Path(x['path']).name for x in rows if not x['error']) == ['im0.jpeg', 'im1.jpeg', 'im2.jpeg']
    assert {x['error'] for x in rows if x['error']} == {'no such file or folder', 'no file matches this pattern'}


def test_help_describes_every_option(data):
    h = predict('--help').stdout
    for o in ('PATH', '--checkpoint', '--out', '--explain', '--device', '--batch-size', '--no-progress'): assert o in h, o
    assert 'glob' in h and 'recursively' in h and 'Grad-CAM' in h and 'not for clinical use' in h
    from covidnext.core import cli_parser
    from covidnext.predict import predict_files
    assert all(a.help for a in cli_parser(predict_files)._actions), "an option without a description"
    h = run_cli(export_cli, '--help', prog='covidnext-export').stdout
    for o in ('checkpoint', '--opset', '--no-check', 'out', 'parity check'): assert o in h, o
    assert h.split('\n\n')[0].split()[-2:] == ['checkpoint', 'out'] and '--onnx' not in h, h  # covidnext-export CKPT OUT.onnx
    assert '--fp16-weights' in h and '--no-cam' in h


def test_pickled_object_checkpoint_is_refused(data, tmp_path):
    marker = tmp_path / 'ran'
    class Evil:                                                 # unpickled, it would touch `marker`
        def __reduce__(self): return (Path.touch, (marker,))
    torch.save({'model': {}, 'model_config': {}, 'x': Evil()}, tmp_path / 'evil.pt')
    r = predict(data['images'][0], '--checkpoint', tmp_path / 'evil.pt', ok=(1,))
    assert 'refused: the file needs pickled Python objects' in r.stderr and 'weights_only=True' in r.stderr
    r = run_cli(export_cli, tmp_path / 'evil.pt', tmp_path / 'x.onnx', prog='covidnext-export')
    assert r.returncode == 1
    assert 'refused' in r.stderr and not (tmp_path / 'x.onnx').exists()
    assert not marker.exists(), "the checkpoint's code ran"


def test_a_checkpoint_of_the_previous_format_still_predicts_and_exports(data, tmp_path):
    """A checkpoint of schema version 1 (written before the schema had a number: the resume entries at the top, a copy
    of the preprocessing beside the model config) is read as it is: the same predictions, and an export that says so."""
    from covidnext.checkpoint import RESUME_KEYS, read_checkpoint
    from covidnext.release import onnx_meta
    ck = load_checkpoint(data['ckpt'])
    v1 = {k: v for k, v in ck.items() if k not in ('schema_version', 'resume', 'ood')}
    v1 = {**v1, **ck['resume'], 'preprocess': read_checkpoint(ck).preprocess}
    assert set(ck['resume']) <= set(RESUME_KEYS) and 'schema_version' not in v1
    save_checkpoint(v1, tmp_path / 'v1.pt')
    old, new = Predictor.from_checkpoint(tmp_path / 'v1.pt'), Predictor.from_checkpoint(data['ckpt'])
    assert old.checkpoint.version == 1 and new.checkpoint.version == 2
    assert np.array_equal(old.predict(data['images'][:3]), new.predict(data['images'][:3]))
    assert run_cli(export_cli, tmp_path / 'v1.pt', tmp_path / 'v1.onnx', prog='covidnext-export').returncode == 0
    assert onnx_meta(tmp_path / 'v1.onnx')['checkpoint_schema'] == '1'


def test_preprocessing_and_classes_come_from_the_checkpoint(data, tmp_path):
    ck = load_checkpoint(data['ckpt'])
    ck['classes'] = ['w', 'x', 'y', 'z']
    ck['config']['resize_mode'] = 'pad'
    save_checkpoint(ck, tmp_path / 'renamed.pt')
    p = Predictor.from_checkpoint(tmp_path / 'renamed.pt')
    assert (p.classes, p.size, p.resize_mode) == (['w', 'x', 'y', 'z'], 64, 'pad')
    wide = np.full((50, 100), 255, np.uint8)
    assert p.preprocess(wide)[0, 32] == 0 and p.preprocess(wide)[32, 32] == 255  # letterboxed
    df = p.predict_df(data['images'][:2])
    assert list(df.columns) == ['path', 'pred', 'prob_w', 'prob_x', 'prob_y', 'prob_z', 'ood_score', 'unfamiliar', 'warning', 'error']
    assert set(df.pred) <= set('wxyz')


def test_explain_writes_overlays_named_after_inputs(data, tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir(); shutil.copy(data['images'][0], tmp_path / sub / 'chest.jpeg')
    shutil.copy(data['images'][1], tmp_path / 'a' / 'other.jpeg')
    predict(tmp_path / 'a', tmp_path / 'b', '--checkpoint', data['ckpt'], '--explain', tmp_path / 'cams', '--out', tmp_path / 'p.csv')
    names = sorted(p.name for p in (tmp_path / 'cams').iterdir())
    assert names == ['chest_2_gradcam.png', 'chest_gradcam.png', 'other_gradcam.png']
    rows = read_csv(tmp_path / 'p.csv')
    assert [Path(r['gradcam']).name for r in rows] == ['chest_gradcam.png', 'other_gradcam.png', 'chest_2_gradcam.png']
    from PIL import Image
    with Image.open(tmp_path / 'cams' / 'chest_gradcam.png') as im:
        assert im.format == 'PNG' and im.size[0] >= 200
        a = np.asarray(im.convert('RGB')).astype(int)
    assert (np.abs(a[..., 0] - a[..., 2]) > 40).mean() > 0.1, "no colour overlay"


def test_gradcam_on_the_real_model(data):
    p = Predictor.from_checkpoint(data['ckpt'])
    x = torch.from_numpy(np.stack([p.preprocess(f) for f in data['images'][:4]]))[:, None]
    for target in (None, 0, torch.tensor([3, 2, 1, 0])):
        m = gradcam(p.model, x, target)
        assert m.shape == (4, 64, 64) and m.dtype == torch.float32
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert all(q.grad is None for q in p.model.parameters())
    p.model.backbone.requires_grad_(False)  # a frozen backbone still gets maps
    assert gradcam(p.model, x).amax((1, 2)).gt(0).any()
    p.model.requires_grad_(True)


class TinyNet(nn.Module):
    "conv-relu-conv(layer4)-relu-GAP-linear: the shape of covidnext's models, small enough to train in seconds."
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 8, 3, padding=1), relu=nn.ReLU(),
                                                  layer4=nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())))
        self.fc = nn.Linear(8, 2)
    def forward(self, x): return self.fc(self.backbone(x.float() / 255).mean((2, 3)))


def squares(n: int, g: torch.Generator) -> tuple:
    "Dark noise; class 1 has a bright 8x8 square somewhere in the top-left quadrant, class 0 has none."
    x = torch.randint(0, 80, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, 9, (2,), generator=g).tolist()
            x[i, 0, r:r + 8, c:c + 8] = 220
    return x, y


def test_gradcam_on_a_trained_toy_peaks_in_the_evidence():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        x, y = squares(32, g)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    x, y = squares(16, torch.Generator().manual_seed(1))
    assert (net(x).argmax(1) == y).float().mean() >= 0.9
    x1 = x[y == 1]
    m = gradcam(net, x1, target=1)
    assert m.shape == (len(x1), 32, 32) and torch.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
    for img, cam in zip(x1, m):
        r, c = np.unravel_index(int(cam.argmax()), cam.shape)
        assert r < 16 and c < 16, (r, c)                          # inside the top-left quadrant
        assert img[0, r, c] == 220 or cam[img[0] == 220].mean() > 0.5  # on (or around) the bright square


@pytest.fixture(scope='module')
def exported(data) -> dict:
    "The checkpoint exported by `covidnext-export CKPT OUT.onnx`, and what the command printed."
    r = cli('export', 'export_cli', 'covidnext-export', data['ckpt'], data['dir'] / 'model.onnx')
    return dict(onnx=data['dir'] / 'model.onnx', stdout=r.stdout)


def test_onnx_export_parity(data, exported):
    assert 'onnxruntime matches PyTorch' in exported['stdout']
    import onnx
    from covidnext.export import onnx_probs
    model = exported['onnx']
    md = {p.key: p.value for p in onnx.load(model).metadata_props}
    assert json.loads(md['classes']) == CLASSES and md['size'] == '64' and md['resize_mode'] == 'squash'
    assert 'uint8' in md['input'] and json.loads(md['preprocess'])['scale'] == 'unit'
    p = Predictor.from_checkpoint(data['ckpt'])
    x = np.stack([p.preprocess(f) for f in data['images'][:5]])[:, None]
    got = onnx_probs(model, x)   # batch 5: the export used 2
    assert got.shape == (5, 4)
    diff = np.abs(got - p.probs(torch.from_numpy(x)).numpy()).max()
    assert diff <= 1e-4, diff
    assert np.abs(onnx_probs(model, x[:1]) - got[:1]).max() <= 1e-5


def test_onnx_prediction_never_imports_torch(data, exported):
    "covidnext.infer alone, and the covidnext-predict command with an .onnx model, predict without importing torch."
    img, want = data['images'][0], Predictor.from_checkpoint(data['ckpt']).predict(data['images'][:1])[0]
    code = ("import json, sys; from covidnext.infer import OnnxPredictor; p = OnnxPredictor(sys.argv[1]).predict([sys.argv[2]]); "
            "print(json.dumps(dict(probs=p[0].tolist(), torch='torch' in sys.modules)))")
    r = subprocess.run([sys.executable, '-c', code, str(exported['onnx']), str(img)], capture_output=True, text=True, env=ENV, check=True)
    out = json.loads(r.stdout)
    assert out['torch'] is False
    assert np.abs(np.array(out['probs']) - want).max() <= 1e-4
    code = ("import atexit, sys; from covidnext.predict import predict_cli; sys.argv[0] = 'covidnext-predict'; "
            "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)); "
            "predict_cli(sys.argv[1:])")
    r = subprocess.run([sys.executable, '-c', code, str(img), '--checkpoint', str(exported['onnx']), '--no-progress'],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and 'no torch' in r.stderr, r.stderr
    row, = csv.DictReader(r.stdout.splitlines())
    assert abs(float(row['prob_normal']) - want[0]) <= 1e-4
