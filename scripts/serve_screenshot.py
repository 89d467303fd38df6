"""The screenshot of covidnext-serve in reports/: the page with three cards (a normal film, a COVID-19 film from a hospital
the study holds out, and a CT slice, refused), the first card's map shown. Debian's chromium, driven by Playwright.

    COVIDNEXT_SOURCES=../shared/data python scripts/serve_screenshot.py --out reports/serve_page.png
"""
from __future__ import annotations
import argparse, contextlib, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='reports/serve_page.png', help='the PNG to write')
    p.add_argument('--sources', default=os.environ.get('COVIDNEXT_SOURCES', '../shared/data'), help='the public sources folder')
    a = p.parse_args()
    from playwright.sync_api import sync_playwright
    from pydicom.data import get_testdata_file
    src = Path(a.sources)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from covidnext.serve import serve_cli; serve_cli()', '--port', str(port)])
    url = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(600):
            with contextlib.suppress(OSError): urllib.request.urlopen(url, timeout=1).read(); break
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as d:
            films = [Path(d) / 'normal_adult.png', Path(d) / 'covid19_other_hospital.png', Path(d) / 'CT_small.dcm']
            shutil.copy(sorted((src / 'covid19-radiography-normal-224').rglob('*.png'))[0], films[0])
            shutil.copy(sorted((src / 'covid19-radiography-covid-224').rglob('*.png'))[0], films[1])
            shutil.copy(get_testdata_file('CT_small.dcm'), films[2])
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=shutil.which('chromium'), args=['--no-sandbox'])
                page = b.new_page(viewport={'width': 1024, 'height': 720})
                page.goto(url)
                page.set_input_files('#files', [str(f) for f in films])
                page.wait_for_function("document.querySelectorAll('.card[data-state=done]').length == 3", timeout=60_000)
                page.query_selector_all('.card')[0].query_selector('button.toggle').click()
                page.screenshot(path=a.out, full_page=True)
                b.close()
    finally: proc.terminate(); proc.wait(30)
    print(f'wrote {a.out}')


if __name__ == '__main__': main()
