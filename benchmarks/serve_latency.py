"""How long the web page takes to answer one upload: covidnext-serve with the shipped model on this machine, a real film
posted as the page posts it (multipart form, field `film`) `--runs` times after a warm-up; each answer is the whole
card (prediction, the film and its map as PNGs, the CSV line). Beside it, in the same run, the predictor alone on the
same film in this process (`OnnxPredictor.results`, no HTTP, no pictures). The goal is 1 s or less per upload on 2 cores.
Not a test: figures depend on the machine and on what else runs on it.

    COVIDNEXT_SOURCES=../shared/data python benchmarks/serve_latency.py --out reports/benchmarks/serve_latency_cpu.json
"""
from __future__ import annotations
import argparse, contextlib, json, os, platform, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path


def post(url: str, name: str, data: bytes) -> dict:
    b = '----covidnext'
    body = (f'--{b}\r\nContent-Disposition: form-data; name="film"; filename="{name}"\r\n'
            'Content-Type: application/octet-stream\r\n\r\n').encode() + data + f'\r\n--{b}--\r\n'.encode()
    req = urllib.request.Request(url + 'predict', body, {'Content-Type': f'multipart/form-data; boundary={b}'})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs', type=int, default=20, help='timed uploads (after one warm-up)')
    p.add_argument('--film', default=None, help='the film to upload (default: the first normal film of the radiography source)')
    p.add_argument('--out', default=None, help='also write the results as JSON here')
    a = p.parse_args()
    src = Path(os.environ.get('COVIDNEXT_SOURCES', '../shared/data'))
    film = Path(a.film) if a.film else sorted((src / 'covid19-radiography-normal-224').rglob('*.png'))[0]
    data = film.read_bytes()
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, '-c', 'from covidnext.serve import serve_cli; serve_cli()', '--port', str(port)],
                            stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(600):
            with contextlib.suppress(OSError): urllib.request.urlopen(url, timeout=1).read(); break
            time.sleep(0.1)
        assert not post(url, film.name, data)['error']                      # warm-up
        walls = []
        for _ in range(a.runs):
            t = time.perf_counter(); r = post(url, film.name, data); walls.append(time.perf_counter() - t)
    finally: proc.terminate(); proc.wait(30)
    from covidnext.infer import OnnxPredictor
    pred = OnnxPredictor.default()
    list(pred.results([film], explain=True))
    alone = []
    for _ in range(a.runs):
        t = time.perf_counter(); list(pred.results([film], explain=True)); alone.append(time.perf_counter() - t)
    res = dict(film=film.name, film_bytes=len(data), runs=a.runs, pred=r['pred'],
               upload_answered_median_s=round(statistics.median(walls), 4), upload_answered_max_s=round(max(walls), 4),
               predictor_alone_median_s=round(statistics.median(alone), 4),
               machine=dict(python=platform.python_version(), cores=os.cpu_count(), load_avg=os.getloadavg()))
    print(json.dumps(res, indent=1))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1) + '\n')


if __name__ == '__main__': main()
