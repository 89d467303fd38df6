"""Films as hospitals store them: every transfer syntax of pydicom's own test files that the installed pixel plugins
decode, the gates before the model on those files, and one film saved in 8 and in 16 bit predicted alike."""
from __future__ import annotations
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from covidnext.core import DataError
from covidnext.io import load_xray, read_film

# Single-frame files of pydicom's test set, one or more per transfer syntax: the codings of CR and DX films.
DECODED = {
    'JPEG Baseline (Process 1)': ['SC_rgb_jpeg_dcmtk.dcm', 'SC_jpeg_no_color_transform.dcm'],
    'JPEG Extended (Process 2 and 4)': ['JPGExtended.dcm'],                           # 12 bit
    'JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])': ['SC_rgb_jpeg_gdcm.dcm'],
    'JPEG-LS Lossless Image Compression': ['MR_small_jpeg_ls_lossless.dcm'],
    'JPEG-LS Lossy (Near-Lossless) Image Compression': ['JPEGLSNearLossless_16.dcm'],
    'JPEG 2000 Image Compression (Lossless Only)': ['MR_small_jp2klossless.dcm'],
    'JPEG 2000 Image Compression': ['JPEG2000.dcm'],
    'RLE Lossless': ['MR_small_RLE.dcm'],
    'Deflated Explicit VR Little Endian': ['image_dfl.dcm'],
    'Explicit VR Big Endian': ['MR_small_bigendian.dcm'],
    'Implicit VR Little Endian': ['MR_small_implicit.dcm'],
    'Explicit VR Little Endian': ['CT_small.dcm'],
}
# Two files of the set that no decoder reads as they are (a JPEG scan header outside the sequential process, an
# item delimiter inside the JPEG 2000 fragments): not corrupt in any way a user could see, so never called so.
UNDECODABLE = {'JPEG-lossy.dcm': 'JPEG Extended (Process 2 and 4)', 'JPEG2000-embedded-sequence-delimiter.dcm': 'JPEG 2000 Image Compression'}


def transfer_syntax(name: str) -> str:
    return pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID.name


@pytest.mark.parametrize('ts,name', [(ts, n) for ts, names in DECODED.items() for n in names])
def test_every_transfer_syntax_is_decoded(ts, name):
    assert transfer_syntax(name) == ts
    a = read_film(get_testdata_file(name), gates=False).image
    assert a.ndim == 2 and a.dtype == np.uint8 and a.size > 0 and a.max() > a.min()


def test_an_undecodable_file_names_its_transfer_syntax_and_is_not_called_corrupt():
    for name, ts in UNDECODABLE.items():
        with pytest.raises(DataError) as e: load_xray(get_testdata_file(name))
        assert e.value.reason.startswith(f'DICOM pixel data in {ts} could not be decoded (') and 'corrupt' not in e.value.reason


def test_a_coding_no_plugin_decodes_is_named(tmp_path):
    ds = pydicom.dcmread(get_testdata_file('JPGExtended.dcm'))
    ds.file_meta.TransferSyntaxUID = '1.2.840.10008.1.2.4.100'       # MPEG-2 video: no pixel plugin decodes it
    ds.save_as(tmp_path / 'video.dcm')
    with pytest.raises(DataError, match=r'video.dcm: DICOM pixel data in MPEG2 Main Profile / Main Level \(1.2.840.10008.1.2.4.100\), '
                                        'which no DICOM pixel decoder reads'):
        load_xray(tmp_path / 'video.dcm')


@pytest.mark.parametrize('name,reason', [
    ('CT_small.dcm', 'DICOM Modality CT (computed tomography)'), ('693_J2KI.dcm', 'DICOM Modality CT'),
    ('MR_small.dcm', 'DICOM Modality MR (magnetic resonance)'), ('MR_small_jpeg_ls_lossless.dcm', 'DICOM Modality MR'),
    ('ExplVR_BigEnd.dcm', 'DICOM Modality US (ultrasound)'), ('examples_jpeg2k.dcm', 'DICOM Modality US'),
    ('JPEG2000.dcm', 'DICOM Modality NM (nuclear medicine)'), ('JPEG-lossy.dcm', 'DICOM Modality NM'),
    ('SC_rgb_rle_2frame.dcm', 'multi-frame DICOM (2 frames)'), ('examples_ybr_color.dcm', 'DICOM Modality US'),
])
def test_the_gates_refuse_what_is_not_one_radiograph(name, reason):
    with pytest.raises(DataError, match=reason.replace('(', r'\(').replace(')', r'\)')): read_film(get_testdata_file(name))


def test_no_error_on_the_test_files_says_corrupt_but_for_truncated_or_broken_ones():
    "Every file of pydicom's test set read with the gates off: 'corrupt' only where the data is cut or a header value is not a number."
    import glob, os
    said = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for f in sorted(glob.glob(os.path.join(os.path.dirname(get_testdata_file('CT_small.dcm')), '*.dcm'))):
            try: read_film(f, gates=False)
            except DataError as e: said[os.path.basename(f)] = e.reason
    corrupt = sorted(n for n, r in said.items() if 'corrupt' in r)
    assert corrupt == ['MR_truncated.dcm', 'badVR.dcm'], said
    assert 'fewer' in said['MR_truncated.dcm'] or 'less than expected' in said['MR_truncated.dcm']


def test_a_film_in_8_and_in_16_bit_gets_the_same_probabilities(tmp_path):
    "One real film as an 8-bit PNG, a 16-bit PNG (x 257), and 8- and 16-bit DICOM: the shipped model's probabilities agree within 0.02."
    from conftest import SRC
    from covidnext.infer import OnnxPredictor, default_model
    try: model = default_model()
    except FileNotFoundError: pytest.skip('no shipped model')
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation, generate_uid
    film = load_xray(next((SRC / 'covid19-radiography-normal-224').rglob('*.png')))
    film = (40 + film.astype(np.float32) * 0.6).astype(np.uint8)          # a film that does not span 0..255
    Image.fromarray(film).save(tmp_path / 'f8.png')
    Image.fromarray(film.astype(np.uint16) * 257).save(tmp_path / 'f16.png')
    for bits, arr in ((8, film), (16, film.astype(np.uint16) * 257)):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DigitalXRayImageStorageForPresentation, generate_uid(), 'DX'
        ds.SamplesPerPixel, ds.PhotometricInterpretation, (ds.Rows, ds.Columns) = 1, 'MONOCHROME2', arr.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.WindowCenter, ds.WindowWidth = (2 ** bits) / 2, 2 ** bits                 # the file's own window: its whole range
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID, ds.file_meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(tmp_path / f'f{bits}.dcm', enforce_file_format=True)
    p = OnnxPredictor(model).predict([tmp_path / n for n in ('f8.png', 'f16.png', 'f8.dcm', 'f16.dcm')])
    assert np.abs(p - p[0]).max() <= 0.02, p
