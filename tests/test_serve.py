"""covidnext-serve in a real browser: Debian's chromium driven by Playwright (the browser from the system's package
manager, `make browser`; never downloaded by Playwright) uploads four files and reads the page as a person sees it."""
from __future__ import annotations
import contextlib, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from conftest import SRC
from test_predict import write_dicom

CHROMIUM = shutil.which('chromium')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make browser` installs Debian's")


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    "covidnext-serve with the shipped model on a free port, as a process, taking uploads of 1 MB at most: its address."
    from covidnext.infer import default_model
    default_model()
    port = free_port()
    log = tmp_path_factory.mktemp('serve') / 'serve.log'
    with open(log, 'w') as f:
        proc = subprocess.Popen([sys.executable, '-c', 'import sys; from covidnext.serve import serve_cli; sys.argv[0] = "covidnext-serve"; serve_cli()',
                                 '--port', str(port), '--max-mb', '1'], stdout=f, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    for _ in range(600):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read(); break
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    yield url
    proc.terminate(); proc.wait(30)


@pytest.fixture
def films(tmp_path) -> list:
    "A normal film, a COVID-19 film, a DICOM film made from a real one, and a text file named .png."
    from covidnext.io import load_xray
    normal = next((SRC / 'covid19-radiography-normal-224').rglob('*.png'))
    covid = next((SRC / 'covid19-radiography-covid-224').rglob('*.png'))
    out = [tmp_path / 'normal.png', tmp_path / 'covid.png', tmp_path / 'film.dcm', tmp_path / 'notes.png']
    out[0].write_bytes(normal.read_bytes()); out[1].write_bytes(covid.read_bytes())
    write_dicom(load_xray(sorted((SRC / 'covid19-radiography-normal-224').rglob('*.png'))[1]), out[2])
    out[3].write_text('these are chest X-rays')
    return out


def test_the_page_in_a_real_browser(server, films, tmp_path):
    from playwright.sync_api import sync_playwright
    from covidnext.predict import predict_files
    with open(os.devnull, 'w') as null, contextlib.redirect_stderr(null):
        cli = predict_files([str(f) for f in films], out=str(tmp_path / 'cli.csv'), progress=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox'])
        page = browser.new_page(accept_downloads=True)
        page.goto(server)
        assert 'not for clinical use' in page.inner_text('#notice')
        page.set_input_files('#files', [str(f) for f in films])
        page.wait_for_function("document.querySelectorAll('.card[data-state=done]').length == 4", timeout=60_000)
        cards = page.query_selector_all('.card')
        assert [c.query_selector('h3').inner_text() for c in cards] == [f.name for f in films]
        for card, row in zip(cards[:3], cli[:3]):                    # the class the command gives, its map behind a button
            assert card.query_selector('.pred').inner_text().startswith(row['pred'] + ':'), card.inner_text()
            assert len(card.query_selector_all('.bar')) == 4 and not card.query_selector('img.map').is_visible()
            card.query_selector('button.toggle').click()
            assert card.query_selector('img.map').is_visible() and card.query_selector('img.film').is_visible()
        assert cards[3].query_selector('.error').inner_text() == cli[3]['error'] and cli[3]['error'].startswith('not an image')
        assert cards[3].query_selector('.pred') is None
        with page.expect_download() as dl: page.click('#csv')
        got = Path(dl.value.path()).read_text()
        browser.close()
    assert got == (tmp_path / 'cli.csv').read_text().replace(f'{films[0].parent}/', '')   # the command's CSV for the same files


def test_bad_uploads_get_the_commands_messages_and_the_server_keeps_serving(server, tmp_path):
    "A CT slice, a truncated JPEG, an upload over the limit: each answered in words; the page is still there after them."
    import json
    from pydicom.data import get_testdata_file

    def post(name, data):
        b = '----covidnext'
        body = (f'--{b}\r\nContent-Disposition: form-data; name="film"; filename="{name}"\r\n'
                'Content-Type: application/octet-stream\r\n\r\n').encode() + data + f'\r\n--{b}--\r\n'.encode()
        req = urllib.request.Request(server + 'predict', body, {'Content-Type': f'multipart/form-data; boundary={b}'})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())
    ct = post('CT_small.dcm', Path(get_testdata_file('CT_small.dcm')).read_bytes())
    assert ct['error'].startswith('not a radiograph: DICOM Modality CT (computed tomography)') and 'pred' not in ct
    jpg = next((SRC / 'covid19-radiography-normal-224').rglob('*.png'))
    from PIL import Image
    Image.open(jpg).convert('L').save(tmp_path / 'x.jpg', quality=90)
    cut = post('cut.jpg', (tmp_path / 'x.jpg').read_bytes()[:1500])
    assert cut['error'].startswith('truncated image data'), cut
    big = post('big.png', b'\0' * (2 * 2**20))
    assert big['error'] == "upload too large: 2.0 MB, over the page's limit of 1 MB (covidnext-serve --max-mb)"
    assert 'not for clinical use' in urllib.request.urlopen(server, timeout=10).read().decode()
