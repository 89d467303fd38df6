"""The model that ships with the package, models/covidnext.onnx: `covidnext-predict` without `--checkpoint` predicts
real PNG, JPEG and DICOM films with it and draws its maps, in a process that never imports torch; a built wheel carries
it as covidnext/models/covidnext.onnx; the README's light install (no torch) is all that prediction needs. Skipped
where the checkout has no models/covidnext.onnx."""
from __future__ import annotations
import csv, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SRC
from test_predict import write_dicom

ROOT = Path(__file__).parents[1]
MODEL = ROOT / 'models' / 'covidnext.onnx'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason='models/covidnext.onnx (the released model) is not in this checkout')

# covidnext-predict through its console-script entry point, given its arguments (so that it returns instead of ending
# the process with os._exit), then whether torch was imported, on standard error
WRAPPER = ("import atexit, sys; from importlib.metadata import entry_points; "
           "main = entry_points(group='console_scripts')['covidnext-predict'].load(); sys.argv[0] = 'covidnext-predict'; "
           "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)); "
           "main(sys.argv[1:])")


@pytest.fixture(scope='module')
def films(tmp_path_factory) -> list:
    "A real PNG film, a real JPEG film, and a DICOM file holding a third real film's pixels (the sources have no DICOM)."
    from covidnext.io import load_xray
    d = tmp_path_factory.mktemp('films')
    png = SRC / 'covid-chestxray-dataset' / 'images' / '000001-3.png'
    jpeg = SRC / 'kermany-chest-xray-224' / 'chest_xray' / 'test' / 'NORMAL' / 'IM-0001-0001.jpeg'
    dcm = write_dicom(load_xray(SRC / 'kermany-chest-xray-224' / 'chest_xray' / 'test' / 'NORMAL' / 'IM-0003-0001.jpeg'), d / 'scan.dcm')
    return [png, jpeg, dcm]


def predict(*args) -> subprocess.CompletedProcess:
    "covidnext-predict ARGS... --no-progress in a fresh process, through its entry point."
    return subprocess.run([sys.executable, '-c', WRAPPER, *map(str, args), '--no-progress'], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)


def test_predict_without_checkpoint_uses_the_shipped_model_without_torch(films, tmp_path):
    r = predict(*films, '--out', tmp_path / 'preds.csv')
    assert r.returncode == 0 and 'no torch' in r.stderr, r.stderr
    rows = list(csv.DictReader(open(tmp_path / 'preds.csv', newline='')))
    from covidnext.infer import OnnxPredictor, default_model
    assert default_model().stat().st_size == MODEL.stat().st_size    # this checkout's model, or its installed copy
    pred = OnnxPredictor.default()
    assert [row['path'] for row in rows] == [str(f) for f in films] and all(row['error'] == '' for row in rows)
    probs = np.array([[float(row[f'prob_{c}']) for c in pred.classes] for row in rows])
    assert np.abs(probs.sum(1) - 1).max() <= 1e-4
    assert np.abs(probs - pred.predict(films)).max() <= 1e-5          # the shipped model's probabilities
    assert [row['pred'] for row in rows] == [pred.classes[i] for i in probs.argmax(1)]


def test_explain_with_the_shipped_model_draws_overlays_without_torch(films, tmp_path):
    r = predict(*films, '--explain', tmp_path / 'maps', '--out', tmp_path / 'preds.csv')
    assert r.returncode == 0 and 'no torch' in r.stderr, r.stderr
    rows = list(csv.DictReader(open(tmp_path / 'preds.csv', newline='')))
    assert [Path(row['gradcam']).name for row in rows] == ['000001-3_gradcam.png', 'IM-0001-0001_gradcam.png', 'scan_gradcam.png']
    from PIL import Image
    for row in rows:
        with Image.open(row['gradcam']) as im:
            assert im.format == 'PNG' and im.size == (400, 450)
            a = np.asarray(im.convert('RGB')).astype(int)
        assert (np.abs(a[..., 0] - a[..., 2]) > 40).mean() > 0.05, f"{row['gradcam']}: no colour overlay"


def test_a_built_wheel_holds_the_model(tmp_path):
    "The wheel, built from a copy of the packaging files (no build/ or egg-info lands in the checkout), installs covidnext/models/."
    src = tmp_path / 'src'
    shutil.copytree(ROOT / 'covidnext', src / 'covidnext', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(ROOT / 'models', src / 'models')
    for f in ('setup.py', 'settings.ini', 'pyproject.toml', 'MANIFEST.in', 'README.md'): shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', tmp_path / 'wheel', src],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    wheel, = (tmp_path / 'wheel').glob('covidnext-*.whl')
    with zipfile.ZipFile(wheel) as z:
        assert z.getinfo('covidnext/models/covidnext.onnx').file_size == MODEL.stat().st_size
        assert 'covidnext/infer.py' in z.namelist()
        if (ROOT / 'models' / 'README.md').is_file(): assert 'covidnext/models/README.md' in z.namelist()


def test_model_card_and_release_record_match_the_model(monkeypatch):
    """models/README.md is what `model_card` writes from the reports of the profile the model was released from (its
    metadata says which), and that profile's release.json describes this very file: its sha256, size and parity."""
    import json
    from covidnext.core import file_hash
    from covidnext.release import model_card, onnx_meta
    from covidnext.plan import load_profile
    monkeypatch.chdir(ROOT)                                 # the card names its reports by their relative path
    reports = load_profile(onnx_meta(MODEL)['profile'])['reports']
    rel = json.loads((ROOT / reports / 'release.json').read_text())
    assert rel['sha256'] == file_hash(MODEL) == (ROOT / 'models' / 'covidnext.onnx.sha256').read_text().split()[0]
    assert rel['size_bytes'] == MODEL.stat().st_size <= 25_000_000                       # at most 25 MB
    assert rel['parity']['n'] == 639 and rel['parity']['same_class'] >= 0.995 and rel['parity']['max_abs_diff'] <= 0.01
    assert (ROOT / 'models' / 'README.md').read_text() == model_card(reports)


def test_shipped_model_names_its_checkpoint_schema():
    "The shipped model's metadata names the schema version of the checkpoint it was exported from, one this covidnext reads."
    from covidnext.checkpoint import SCHEMA_VERSION
    from covidnext.release import onnx_meta
    assert int(onnx_meta(MODEL)['checkpoint_schema']) in range(1, SCHEMA_VERSION + 1)


# Runs a script in which a top-level import fails unless it is the standard library, covidnext itself, or a
# distribution the README's light install names (or one those require): a process that has just what that install has.
LIGHT = r'''
import re, sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
names, script = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], *sys.argv[3:]]
want, seen = set(names.split()), set()
while want:
    name = want.pop().lower().replace('_', '-')
    if name in seen: continue
    seen.add(name)
    try: requires = distribution(name).requires or []
    except PackageNotFoundError: continue                  # not installed here, e.g. required only on another platform
    for req in requires:
        if 'extra ==' not in req: want.add(re.match(r'[A-Za-z0-9_.-]+', req).group())
owners = packages_distributions()
class Light:
    def find_spec(self, name, path=None, target=None):
        dists = {d.lower().replace('_', '-') for d in owners.get(name, [])}
        if path is None and dists and not dists & (seen | {'covidnext'}) and name not in sys.stdlib_module_names:
            raise ImportError(f'{name} is not in the light install')
sys.meta_path.insert(0, Light())
exec(script)
'''


def test_the_light_install_is_enough(films, tmp_path):
    "The light install (`pip install .`: settings.ini's requirements, no torch; README.md names it) covers covidnext-predict, --explain and `predict_df`."
    import re
    from configparser import ConfigParser
    assert '`pip install .` installs this light predictor, without torch' in ' '.join((ROOT / 'README.md').read_text().split())
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    names = ' '.join(re.split(r'[<>=]', w)[0] for w in cfg['DEFAULT']['requirements'].split())
    assert 'torch' not in names.split()
    script = ("from covidnext.infer import OnnxPredictor; "
              f"df = OnnxPredictor.default().predict_df({[str(f) for f in films]!r}); "
              "assert df.pred.notna().all(), df; " + WRAPPER)
    r = subprocess.run([sys.executable, '-c', LIGHT, names, script, *map(str, films), '--explain', tmp_path / 'maps',
                        '--out', tmp_path / 'preds.csv', '--no-progress'], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and 'no torch' in r.stderr, r.stderr[-3000:]
    assert len(list((tmp_path / 'maps').glob('*_gradcam.png'))) == 3
