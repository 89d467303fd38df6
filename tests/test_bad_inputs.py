"""Bad and odd inputs: each one is either handled, or refused with a `DataError` whose message names the file and the reason.

Sections:
1. Fabricators and fixtures, at module level and shared by every section: all inputs are made in `tmp_path`.
2. Image files: `covidnext.io.load_xray`.
3. Split files and the cache: a listed file that is missing, an unknown label, `../` paths, a patient or an image in
   two splits, a corrupt image (dropped by the split build; named by the cache build, from its worker processes), a
   cache damaged after its build (the row and its source file named by covidnext-train).
"""
from __future__ import annotations
import struct, subprocess, sys, zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from covidnext.core import DataError
from covidnext.io import load_xray, pixel_hash


# ======================================================================================================
# 1. Fabricators and fixtures
# ======================================================================================================

def png_bytes(w: int, h: int, rows: int | None = None) -> bytes:
    "An all-black 8-bit grayscale PNG of `w`x`h`, compressed row by row so the pixels never exist in memory; `rows`: write only so many."
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    z = zlib.compressobj(9)
    idat = b''.join(z.compress(bytes(w + 1)) for _ in range(h if rows is None else rows)) + z.flush()
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


def write_dicom(path: Path, frames, photometric='MONOCHROME1', bits=12, slope=2, intercept=-100, preamble=True) -> Path:
    "A minimal valid DICOM file (16 bits allocated, `bits` stored) of `frames`, stored values (H, W) or (N, H, W)."
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    frames = np.asarray(frames, dtype='<u2')
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, generate_uid(), 'CR'
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = frames.shape[-2:]
    if frames.ndim == 3: ds.NumberOfFrames = frames.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None: ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = frames.tobytes()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
    else: ds.save_as(path, implicit_vr=True, little_endian=True)  # a bare data set: no preamble, no 'DICM'
    return path


@pytest.fixture
def pixels() -> np.ndarray:
    "A 32x48 8-bit grayscale picture using the full 0..255 range."
    x = np.random.default_rng(0).integers(0, 256, (32, 48), dtype=np.uint8)
    x[0, :2] = 0, 255
    return x


@pytest.fixture
def png_file(tmp_path, pixels) -> Path:
    "`pixels` as a valid 8-bit PNG."
    Image.fromarray(pixels).save(tmp_path / 'good.png')
    return tmp_path / 'good.png'


@pytest.fixture
def jpg_file(tmp_path, pixels) -> Path:
    "`pixels` as a valid JPEG."
    Image.fromarray(pixels).save(tmp_path / 'good.jpg', quality=95)
    return tmp_path / 'good.jpg'


def flip_bytes(data: bytes, start: int, n: int = 40) -> bytes:
    "`data` with `n` bytes from `start` scrambled."
    b = bytearray(data)
    b[start:start + n] = bytes(c ^ 0x5A for c in b[start:start + n])
    return bytes(b)


# ======================================================================================================
# 2. Image files: load_xray
# ======================================================================================================

# Each maker takes (tmp_path, png_file, jpg_file) and returns the path of the bad input it wrote.
def _write(name, data):
    "A maker writing `data(png_file, jpg_file)` to `name`."
    def make(d, png, jpg):
        (d / name).write_bytes(data(png, jpg))
        return d / name
    return make

def _half(f): return f.read_bytes()[:f.stat().st_size // 2]

def _cut_dicom(d, png, jpg):
    full = write_dicom(d / 'full.dcm', [[1, 2, 3, 4]]).read_bytes()
    (d / 'cut.dcm').write_bytes(full[:-3])
    return d / 'cut.dcm'

TEXT = b'patient list, not pixels\n' * 20

IMAGE_ERRORS = [  # (maker, load_xray keyword arguments, the reason the message must contain)
    pytest.param(lambda d, png, jpg: d / 'missing.png', {}, 'no such file', id='missing'),
    pytest.param(_write('empty.png', lambda png, jpg: b''), {}, 'empty file', id='empty'),
    pytest.param(_write('notes.png', lambda png, jpg: TEXT), {}, 'not an image', id='text'),
    pytest.param(_write('notes.dcm', lambda png, jpg: TEXT), {}, 'not an image', id='text-named-dcm'),
    pytest.param(_write('corrupt.png', lambda png, jpg: flip_bytes(png.read_bytes(), png.stat().st_size // 2)), {},
                 'corrupt image data', id='corrupt'),
    pytest.param(_write('header.png', lambda png, jpg: flip_bytes(png.read_bytes(), 12)), {}, 'corrupt PNG header',
                 id='corrupt-header'),
    pytest.param(_write('cut.png', lambda png, jpg: _half(png)), {}, 'truncated image data', id='truncated-png'),
    pytest.param(_write('cut.jpg', lambda png, jpg: _half(jpg)), {}, 'truncated image data', id='truncated-jpg'),
    pytest.param(_cut_dicom, {}, 'corrupt DICOM', id='truncated-dicom'),
    pytest.param(_write('huge.png', lambda png, jpg: png_bytes(9000, 9000)), {}, 'image too large: 9000x9000', id='huge'),
    pytest.param(_write('huge_head.png', lambda png, jpg: png_bytes(9000, 9000, rows=0)), {}, 'image too large: 9000x9000',
                 id='huge-header-only'),  # no pixel data at all: refused before decoding
    pytest.param(_write('bomb.png', lambda png, jpg: png_bytes(30000, 30000, rows=0)), {'max_pixels': None}, 'image too large',
                 id='pil-bomb-guard'),
    pytest.param(lambda d, png, jpg: png, {'max_pixels': 1000}, 'image too large: 48x32 = 1,536 pixels', id='over-max_pixels'),
]


@pytest.mark.parametrize('make,kwargs,reason', IMAGE_ERRORS)
def test_image_refused(tmp_path, png_file, jpg_file, make, kwargs, reason):
    path = make(tmp_path, png_file, jpg_file)
    with pytest.raises(DataError) as e: load_xray(path, **kwargs)
    msg = str(e.value)
    assert path.name in msg and reason in msg, msg
    assert e.value.path == path


def test_huge_png_is_small_on_disk():
    assert len(png_bytes(9000, 9000)) < 100_000  # the bomb costs nothing to make; the refusal must cost nothing to check


def test_dicom_without_pydicom(tmp_path, png_file, pixels, monkeypatch):
    dcm = write_dicom(tmp_path / 'x.dcm', [[1, 2]])
    monkeypatch.setitem(sys.modules, 'pydicom', None)  # as if pydicom were not installed
    assert (load_xray(png_file) == pixels).all()  # pictures still load
    with pytest.raises(DataError, match='x.dcm: DICOM file, but pydicom is not installed'): load_xray(dcm)


# Odd inputs that must load. Each maker returns (path, the expected array or a check of the result).
def _sixteen_bit(d, x):
    ramp = np.linspace(0, 4095, x.size).astype(np.uint16).reshape(x.shape)  # 12-bit values in a 16-bit PNG
    Image.fromarray(ramp).save(d / 'r16.png')
    def check(r): assert r.min() == 0 and r.max() == 255 and (np.diff(r.ravel().astype(int)) >= 0).all()
    return d / 'r16.png', check

def _sixteen_bit_full(d, x):
    Image.fromarray(x.astype(np.uint16) * 257).save(d / 'f16.png')
    return d / 'f16.png', x

def _rgba(d, x):
    a = np.stack([x, x, x, np.full_like(x, 255)], -1)
    a[:, :24, 3] = 0  # left half transparent: composited onto black
    Image.fromarray(a).save(d / 'rgba.png')
    return d / 'rgba.png', np.where(np.arange(x.shape[1]) < 24, 0, x).astype(np.uint8)

def _rgb(d, x):
    Image.fromarray(np.stack([x, x, x], -1)).save(d / 'rgb.png')
    return d / 'rgb.png', x

def _palette(d, x):
    p = Image.fromarray(x).convert('RGB').quantize(16)
    p.save(d / 'p.png')
    return d / 'p.png', np.array(p.convert('L'))

def _palette_transparent(d, x):
    p = Image.fromarray(x).convert('RGB').quantize(16)
    idx = int(np.asarray(p)[0, 0])
    p.save(d / 'pt.png', transparency=idx)
    return d / 'pt.png', np.where(np.asarray(p) == idx, 0, np.array(p.convert('L'))).astype(np.uint8)

def _png_named_jpg(d, x):
    Image.fromarray(x).save(d / 'real.png')
    (d / 'fake.jpg').write_bytes((d / 'real.png').read_bytes())
    return d / 'fake.jpg', x

def _exif_rotated(d, x):
    exif = Image.Exif(); exif[0x0112] = 6  # "rotate 90"
    Image.fromarray(x).save(d / 'rot.jpg', exif=exif)
    def check(r): assert r.shape == x.shape[::-1]
    return d / 'rot.jpg', check

def _monochrome1(d, x):
    # 12 bits stored, slope 2, intercept -100; 0xF000|7 has stray high bits and counts as 7
    return write_dicom(d / 'm1.dcm', [[0, 100, 4095, 0xF000 | 7]]), np.array([[255, 249, 0, 255]], np.uint8)

def _dicom_bare(d, x):
    return write_dicom(d / 'bare.dcm', [[0, 100, 4095, 7]], preamble=False), np.array([[255, 249, 0, 255]], np.uint8)

def _dicom_frames(d, x):
    return write_dicom(d / 'mf.dcm', [[[0, 4095]], [[4095, 0]]], 'MONOCHROME2'), np.array([[0, 255]], np.uint8)

IMAGE_HANDLED = [pytest.param(f, id=f.__name__.strip('_').replace('_', '-')) for f in
                 (_sixteen_bit, _sixteen_bit_full, _rgb, _rgba, _palette, _palette_transparent, _png_named_jpg,
                  _exif_rotated, _monochrome1, _dicom_bare, _dicom_frames)]


@pytest.mark.parametrize('make', IMAGE_HANDLED)
def test_image_handled(tmp_path, pixels, make):
    path, expect = make(tmp_path, pixels)
    r = load_xray(path)
    assert r.ndim == 2 and r.dtype == np.uint8
    if callable(expect): expect(r)
    else: np.testing.assert_array_equal(r, expect)


def test_monochrome1_brightest_stored_is_darkest(tmp_path):
    stored = np.array([[10, 2000, 4000], [300, 4095, 50]])
    r = load_xray(write_dicom(tmp_path / 'inv.dcm', stored))
    assert r.flat[stored.argmax()] == 0 and r.flat[stored.argmin()] == 255


def test_same_pixels_same_hash(tmp_path, pixels, png_file):
    fake = tmp_path / 'copy.jpg'
    fake.write_bytes(png_file.read_bytes())
    assert pixel_hash(load_xray(png_file)) == pixel_hash(load_xray(fake))
    other = pixels.copy(); other[5, 5] ^= 1
    assert pixel_hash(pixels) != pixel_hash(other)


# ======================================================================================================
# 3. Split files
# ======================================================================================================
# A tiny sources folder in the real layouts (Cohen `metadata.csv` + `images/`, Kermany `chest_xray/`), and split
# files that go wrong in each way: a line naming a missing file, an unknown label, a `../` path, a patient in two
# splits, a corrupt image.

from covidnext.covidx import build_split, read_split_file


@pytest.fixture
def sources(tmp_path) -> Path:
    src = tmp_path / 'sources'
    (src / 'covid-chestxray-dataset' / 'images').mkdir(parents=True)
    rows = ['patientid,finding,view,modality,folder,filename']
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(src / 'covid-chestxray-dataset' / 'images' / f'c{i}.png')
        rows.append(f'{i // 2},COVID-19,PA,X-ray,images,c{i}.png')
    (src / 'covid-chestxray-dataset' / 'metadata.csv').write_text('\n'.join(rows) + '\n')
    for split in ('train', 'test'):
        d = src / 'kermany-chest-xray' / 'chest_xray' / split / 'NORMAL'
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f'IM-{i:04d}-0001.jpeg')
    return src


def write_splits(src: Path, train: list[str], test: list[str]) -> Path:
    d = src / 'splits'
    d.mkdir(exist_ok=True)
    (d / 'train_split.txt').write_text(''.join(l + '\n' for l in train))
    (d / 'test_split.txt').write_text(''.join(l + '\n' for l in test))
    return d


GOOD_TRAIN = ['0 c0.png COVID-19', '0 c1.png COVID-19', '1 c2.png COVID-19', '1 c3.png COVID-19'] + \
             [f'{i} IM-{i:04d}-0001.jpeg normal' for i in range(4)]
GOOD_TEST = ['2 c4.png COVID-19', '2 c5.png COVID-19'] + [f'{i} IM-{i:04d}-0001.jpeg normal' for i in range(4)]


def test_split_good(sources, tmp_path):
    rep = build_split(sources, tmp_path / 'out', write_splits(sources, GOOD_TRAIN, GOOD_TEST), workers=1, progress=False)
    assert rep['published'] == {'train': {'listed': 8, 'found': 8}, 'test': {'listed': 6, 'found': 6}}
    assert rep['dropped'] == [] and rep['leaks'] == []


def test_split_line_naming_missing_file(sources, tmp_path):
    d = write_splits(sources, GOOD_TRAIN + ['9 not-there.png COVID-19'], GOOD_TEST)
    rep = build_split(sources, tmp_path / 'out', d, workers=1, progress=False)
    assert rep['published']['train'] == {'listed': 9, 'found': 8}
    (drop,) = rep['dropped']
    assert drop['file'] == 'not-there.png' and 'train_split.txt line 9' in drop['reason']
    assert 'not-there.png' in (tmp_path / 'out' / 'report.md').read_text()


def test_split_unknown_label(sources, tmp_path):
    d = write_splits(sources, GOOD_TRAIN[:2] + ['1 c2.png pneumonia'], GOOD_TEST)
    with pytest.raises(DataError, match=r"train_split.txt:3: unknown label 'pneumonia'"):
        build_split(sources, tmp_path / 'out', d, workers=1, progress=False)


@pytest.mark.parametrize('name', ['../../etc/passwd', '/etc/passwd', 'images/../../x.png'])
def test_split_path_escape(sources, tmp_path, name):
    d = write_splits(sources, GOOD_TRAIN[:1] + [f'1 {name} normal'], GOOD_TEST)
    with pytest.raises(DataError, match=r"train_split.txt:2: file name .* leaves the source folder"):
        read_split_file(d / 'train_split.txt')


def test_split_patient_in_two_splits(sources, tmp_path):
    d = write_splits(sources, GOOD_TRAIN, GOOD_TEST[2:] + ['0 c4.png COVID-19'])
    (sources / 'covid-chestxray-dataset' / 'metadata.csv').write_text(
        (sources / 'covid-chestxray-dataset' / 'metadata.csv').read_text().replace('2,COVID-19,PA,X-ray,images,c4.png',
                                                                                    '0,COVID-19,PA,X-ray,images,c4.png'))
    with pytest.raises(DataError, match=r"leaks 1 patients/images across splits"):
        build_split(sources, tmp_path / 'out', d, workers=1, progress=False)
    assert 'cohen:0' in (tmp_path / 'out' / 'report.md').read_text()          # the offender is named
    rep = build_split(sources, tmp_path / 'out2', d, allow_leaks=True, workers=1, progress=False)
    assert [l['key'] for l in rep['leaks']] == ['cohen:0']


def test_split_identical_image_in_two_splits(sources, tmp_path):
    imgs = sources / 'covid-chestxray-dataset' / 'images'
    (imgs / 'c4.png').write_bytes((imgs / 'c0.png').read_bytes())              # same pixels, another patient
    with pytest.raises(DataError, match='leaks'):
        build_split(sources, tmp_path / 'out', write_splits(sources, GOOD_TRAIN, GOOD_TEST), workers=1, progress=False)


def test_split_corrupt_image_dropped(sources, tmp_path):
    bad = sources / 'covid-chestxray-dataset' / 'images' / 'c1.png'
    bad.write_bytes(bad.read_bytes()[:40])
    rep = build_split(sources, tmp_path / 'out', write_splits(sources, GOOD_TRAIN, GOOD_TEST), workers=1, progress=False)
    (drop,) = rep['dropped']
    assert drop['file'].endswith('c1.png') and drop['reason'].startswith('unreadable:')
    assert rep['published']['train']['found'] == 7


def test_cache_names_an_image_corrupted_after_the_split(sources, tmp_path):
    build_split(sources, tmp_path / 'out', write_splits(sources, GOOD_TRAIN, GOOD_TEST), workers=1, progress=False)
    bad = sources / 'covid-chestxray-dataset' / 'images' / 'c2.png'
    bad.write_bytes(bad.read_bytes()[:40])
    r = subprocess.run([Path(sys.executable).parent / 'covidnext-cache', '--split-csv', tmp_path / 'out' / 'split.csv',
                        '--sources', sources, '--root', tmp_path / 'cache', '--size', '16', '--workers', '2'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and f'covidnext-cache: {bad}: ' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and not list((tmp_path / 'cache').glob('*'))


def test_train_names_a_damaged_cache_row(sources, tmp_path):
    from covidnext.cache import Cache, build_cache
    build_split(sources, tmp_path / 'out', write_splits(sources, GOOD_TRAIN, GOOD_TEST), workers=1, progress=False)
    c = Cache(build_cache(tmp_path / 'out' / 'split.csv', sources, tmp_path / 'cache', size=16, workers=1, progress=False))
    i = int(c.indices('train')[1])
    with open(c.path / 'images.bin', 'r+b') as f: f.seek(int(c.table.offset[i])); f.write(b'\0' * 4)   # damaged after the build
    from covidnext.train import train_cli          # its function in this process: tests/test_train.py runs the command
    r = run_cli(train_cli, '--cache', c.path, '--size', '16', '--arch', 'resnet18', '--epochs', '1', '--device', 'cpu',
                '--out', tmp_path / 'run', '--no-progress')
    assert r.returncode != 0 and f"covidnext-train: {c.path / 'images.bin'}: row {i} ({c.table.path[i]}) does not decode" in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
