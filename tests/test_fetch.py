"""covidnext.fetch against a loopback HTTP server and a local git repository: never the real internet."""
import hashlib, io, os, re, shutil, subprocess, sys, threading, zipfile
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from pathlib import Path

import pytest

from covidnext.fetch import (SOURCES, SUMS_FILE, COVIDX_FILES, ChecksumError, FetchError, download, extract_kermany,
                             fetch, fetch_cli, fetch_cohen, fetch_file, kermany_ready, read_sums)

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = [f'{s}/{c}/{s}-{c}-{i}.jpeg' for s in ('train', 'test') for c in ('NORMAL', 'PNEUMONIA') for i in range(2)]
SPLITS = {'train_split_v2.txt': b'1 a.png COVID-19\n2 b.jpeg normal\n', 'test_split_v2.txt': b'3 c.png viral\n'}


def make_zip(names, extra=()):
    "A zip holding a tiny file for each name (bytes differ per name), plus `extra` members."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for n in [*names, *extra]: z.writestr(n, n.encode() * 3)
    return buf.getvalue()


class Server:
    "A loopback HTTP server with Range support; bounded: daemon thread, socket time-outs, stops itself after 60 s."
    def __init__(self):
        self.files, self.log, self.ranges, self.drop_after = {}, [], True, {}
        srv = self
        class Handler(BaseHTTPRequestHandler):
            timeout = 10
            def log_message(self, *a): pass
            def do_GET(self):
                rng = self.headers.get('Range')
                srv.log.append((self.path, rng))
                body = srv.files.get(self.path)
                if body is None: return self.send_error(404)
                start = 0
                if rng and srv.ranges:
                    m = re.fullmatch(r'bytes=(\d+)-', rng)
                    if not m: return self.send_error(400)
                    start = int(m[1])
                    if start >= len(body):
                        self.send_response(416); self.send_header('Content-Range', f'bytes */{len(body)}')
                        self.send_header('Content-Length', '0'); return self.end_headers()
                self.send_response(206 if start else 200)
                if start: self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
                self.send_header('Content-Length', str(len(body) - start)); self.end_headers()
                k = srv.drop_after.pop(self.path, None)  # once: send K bytes, then drop the connection
                self.wfile.write(body[start:] if k is None else body[start:start + k])
                if k is not None: self.close_connection = True
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.timeout = 1
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()
        self.timer = threading.Timer(60, self.httpd.shutdown); self.timer.daemon = True; self.timer.start()

    def close(self):
        self.timer.cancel(); self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(5)


@pytest.fixture
def server(request):
    s = Server()
    request.addfinalizer(s.close)
    return s


def sha(b): return hashlib.sha256(b).hexdigest()


def git(*args, cwd=None):
    return subprocess.run(['git', *map(str, args)], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def cohen_origin(tmp_path):
    "A bare repository with two commits of metadata.csv + images/; returns (path, [sha1, sha2])."
    origin, work = tmp_path/'cohen.git', tmp_path/'cohen-work'
    git('init', '--quiet', '--bare', '--initial-branch=master', origin)
    git('init', '--quiet', work)
    (work/'images').mkdir(); (work/'images/x.png').write_bytes(b'\x89PNG x')
    shas = []
    for i, rows in enumerate(['patientid,finding,filename\n1,COVID-19,x.png\n',
                              'patientid,finding,filename\n1,COVID-19,x.png\n2,SARS,y.png\n']):
        (work/'metadata.csv').write_text(rows)
        if i: (work/'images/y.png').write_bytes(b'\x89PNG y')
        git('add', '.', cwd=work)
        git('-c', 'user.name=t', '-c', 'user.email=t@example.org', 'commit', '--quiet', '-m', f'commit {i}', cwd=work)
        shas.append(git('rev-parse', 'HEAD', cwd=work))
    git('push', '--quiet', origin, 'HEAD:refs/heads/master', cwd=work)
    return origin, shas


# --- downloads -------------------------------------------------------------------------------------------------

def test_download_full(server, tmp_path):
    data = os.urandom(100_000); server.files['/f.bin'] = data
    assert download(server.url + '/f.bin', tmp_path/'f.bin', sha256=sha(data), backoff=0) == sha(data)
    assert (tmp_path/'f.bin').read_bytes() == data and not (tmp_path/'f.bin.part').exists()
    assert server.log == [('/f.bin', None)]


def test_resume_from_part(server, tmp_path):
    data = os.urandom(100_000); server.files['/f.bin'] = data
    (tmp_path/'f.bin.part').write_bytes(data[:40_000])
    download(server.url + '/f.bin', tmp_path/'f.bin', sha256=sha(data), backoff=0)
    assert server.log == [('/f.bin', 'bytes=40000-')]
    assert (tmp_path/'f.bin').read_bytes() == data


def test_resume_after_dropped_connection(server, tmp_path, capsys):
    data = os.urandom(200_000); server.files['/f.bin'] = data; server.drop_after['/f.bin'] = 70_000
    download(server.url + '/f.bin', tmp_path/'f.bin', sha256=sha(data), backoff=0)
    assert (tmp_path/'f.bin').read_bytes() == data
    assert server.log[0] == ('/f.bin', None)
    assert server.log[1] == ('/f.bin', 'bytes=70000-')  # the retry asked for the rest only
    assert 'try 1 of 3 failed' in capsys.readouterr().err


def test_server_ignoring_range_restarts(server, tmp_path, capsys):
    data = os.urandom(50_000); server.files['/f.bin'] = data; server.ranges = False
    (tmp_path/'f.bin.part').write_bytes(b'junk' * 1000)
    download(server.url + '/f.bin', tmp_path/'f.bin', sha256=sha(data), backoff=0)
    assert (tmp_path/'f.bin').read_bytes() == data
    assert 'ignored the Range request' in capsys.readouterr().out


def test_complete_part_416(server, tmp_path):
    data = os.urandom(10_000); server.files['/f.bin'] = data
    (tmp_path/'f.bin.part').write_bytes(data)
    download(server.url + '/f.bin', tmp_path/'f.bin', sha256=sha(data), backoff=0)
    assert server.log == [('/f.bin', 'bytes=10000-')] and (tmp_path/'f.bin').read_bytes() == data


def test_checksum_mismatch(server, tmp_path):
    data = os.urandom(10_000); server.files['/f.bin'] = data
    with pytest.raises(ChecksumError) as e: download(server.url + '/f.bin', tmp_path/'f.bin', sha256='ab' * 32, backoff=0)
    msg = str(e.value)
    assert 'f.bin' in msg and 'ab' * 32 in msg and sha(data) in msg and 'f.bin.bad' in msg
    assert (tmp_path/'f.bin.bad').read_bytes() == data
    assert not (tmp_path/'f.bin').exists() and not (tmp_path/'f.bin.part').exists()


def test_http_errors(server, tmp_path):
    with pytest.raises(FetchError, match='/missing: HTTP 404'):
        download(server.url + '/missing', tmp_path/'m.bin', backoff=0)
    assert len(server.log) == 1  # a 404 is not retried
    port = server.httpd.server_address[1]
    server.close()  # nothing listens any more: every try fails
    with pytest.raises(FetchError, match='download failed after 2 tries'):
        download(f'http://127.0.0.1:{port}/f.bin', tmp_path/'f.bin', tries=2, timeout=2, backoff=0)


def test_sums_recorded_and_enforced(server, tmp_path, capsys):
    data = os.urandom(5_000); server.files['/f.bin'] = data
    fetch_file(server.url + '/f.bin', tmp_path, 'sub/f.bin', backoff=0)
    assert read_sums(tmp_path/SUMS_FILE) == {'sub/f.bin': sha(data)}
    assert f'recorded {sha(data)}' in capsys.readouterr().out
    fetch_file(server.url + '/f.bin', tmp_path, 'sub/f.bin', backoff=0)  # present and verified: no request
    assert len(server.log) == 1
    (tmp_path/'sub/f.bin').unlink(); server.files['/f.bin'] = data[::-1]  # the source changed
    with pytest.raises(ChecksumError, match='sub/f.bin: sha256 mismatch'):
        fetch_file(server.url + '/f.bin', tmp_path, 'sub/f.bin', backoff=0)


# --- extraction -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('prefix', ['chest_xray/', 'ChestXRay2017/chest_xray/', ''])
def test_extract_layouts(tmp_path, prefix):
    (tmp_path/'k.zip').write_bytes(make_zip([prefix + n for n in LAYOUT],
                                            ['__MACOSX/chest_xray/train/._a.jpeg', prefix + 'train/.DS_Store']))
    root = extract_kermany(tmp_path/'k.zip', tmp_path/'out')
    assert root == tmp_path/'out/chest_xray' and kermany_ready(tmp_path/'out')
    got = sorted(p.relative_to(root).as_posix() for p in root.rglob('*') if p.is_file())
    assert got == sorted(LAYOUT)
    assert (root/LAYOUT[0]).read_bytes() == (prefix + LAYOUT[0]).encode() * 3
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['chest_xray']


@pytest.mark.parametrize('evil', ['../evil.txt', 'chest_xray/../../evil.txt', '/evil.txt', 'C:/evil.txt'])
def test_zip_slip_refused(tmp_path, evil):
    (tmp_path/'k.zip').write_bytes(make_zip(['chest_xray/' + n for n in LAYOUT], [evil]))
    with pytest.raises(FetchError, match=re.escape(repr(evil))):
        extract_kermany(tmp_path/'k.zip', tmp_path/'out')
    assert not (tmp_path/'out/chest_xray').exists() and not (tmp_path/'evil.txt').exists()


def test_not_kermany(tmp_path):
    (tmp_path/'k.zip').write_bytes(make_zip(['chest_xray/train/NORMAL/a.jpeg']))
    with pytest.raises(FetchError, match='test/NORMAL'): extract_kermany(tmp_path/'k.zip', tmp_path/'out')
    (tmp_path/'k.zip').write_bytes(make_zip(['readme.txt']))
    with pytest.raises(FetchError, match='no train/ or test/'): extract_kermany(tmp_path/'k.zip', tmp_path/'out')


# --- git ---------------------------------------------------------------------------------------------------------

def test_cohen_pinned_then_updated(tmp_path, cohen_origin):
    origin, shas = cohen_origin
    repo = fetch_cohen(tmp_path/'src', str(origin), shas[0])
    assert repo == tmp_path/'src/covid-chestxray-dataset'
    assert git('rev-parse', 'HEAD', cwd=repo) == shas[0]
    assert (repo/'metadata.csv').read_text().count('\n') == 2 and not (repo/'images/y.png').exists()
    fetch_cohen(tmp_path/'src', str(origin), shas[1])  # an existing clone: fetch + checkout, no new clone
    assert git('rev-parse', 'HEAD', cwd=repo) == shas[1] and (repo/'images/y.png').exists()
    fetch_cohen(tmp_path/'src', str(origin), 'master')  # a branch name works too
    assert git('rev-parse', 'HEAD', cwd=repo) == shas[1]


def test_cohen_partial_clone(tmp_path, cohen_origin):
    "Over a transport that filters (as GitHub does), only the pinned commit's files are downloaded, at checkout."
    origin, shas = cohen_origin
    git('config', 'uploadpack.allowFilter', 'true', cwd=origin)
    git('config', 'uploadpack.allowAnySHA1InWant', 'true', cwd=origin)
    repo = fetch_cohen(tmp_path/'src', origin.as_uri(), shas[0])
    assert git('config', 'remote.origin.promisor', cwd=repo) == 'true'
    assert git('rev-parse', 'HEAD', cwd=repo) == shas[0] and (repo/'images/x.png').read_bytes() == b'\x89PNG x'
    missing = git('rev-list', '--objects', '--missing=print', '--all', cwd=repo)
    assert '?' in missing  # y.png of the later commit was never downloaded


def test_cohen_errors(tmp_path, cohen_origin, monkeypatch):
    origin, shas = cohen_origin
    with pytest.raises(FetchError, match=r'git clone .* failed \(exit \d+\):\n.*'):
        fetch_cohen(tmp_path/'a', str(tmp_path/'no-such-repo.git'), shas[0])
    with pytest.raises(FetchError, match='0' * 40):
        fetch_cohen(tmp_path/'b', str(origin), '0' * 40)
    (tmp_path/'c/covid-chestxray-dataset').mkdir(parents=True); (tmp_path/'c/covid-chestxray-dataset/x').write_text('')
    with pytest.raises(FetchError, match='not a git repository'): fetch_cohen(tmp_path/'c', str(origin), shas[0])
    empty = tmp_path/'empty-bin'; empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))
    with pytest.raises(FetchError, match='git is not installed'): fetch_cohen(tmp_path/'d', str(origin), shas[0])


# --- everything, and the command line ----------------------------------------------------------------------------

@pytest.fixture
def sources(server, cohen_origin):
    "The options that point every source at the loopback server and the local repository."
    server.files['/kermany/ChestXRay2017.zip'] = make_zip(['chest_xray/' + n for n in LAYOUT], ['__MACOSX/x'])
    for n, b in SPLITS.items(): server.files[f'/covidnet/{n}'] = b
    origin, shas = cohen_origin
    return dict(cohen_url=str(origin), cohen_ref=shas[0], kermany_url=server.url + '/kermany/ChestXRay2017.zip',
                covidx_url=server.url + '/covidnet')


def check_dest(dest, shas):
    assert git('rev-parse', 'HEAD', cwd=dest/'covid-chestxray-dataset') == shas[0]
    assert kermany_ready(dest/'kermany-chest-xray')
    assert not (dest/'kermany-chest-xray/ChestXRay2017.zip').exists()
    for saved, remote in COVIDX_FILES.items(): assert (dest/'covidx-v1-splits'/saved).read_bytes() == SPLITS[remote]
    assert sorted(read_sums(dest/SUMS_FILE)) == ['covidx-v1-splits/test_split.txt', 'covidx-v1-splits/train_split.txt',
                                                'kermany-chest-xray/ChestXRay2017.zip']


def test_fetch_all_and_rerun(tmp_path, server, sources, cohen_origin):
    dest = fetch(tmp_path/'dest', **sources, backoff=0)
    check_dest(dest, cohen_origin[1])
    n = len(server.log)
    fetch(tmp_path/'dest', **sources, backoff=0)  # everything is there: no download at all
    assert len(server.log) == n


def test_only_and_dry_run(tmp_path, server, sources, capsys):
    fetch(tmp_path/'dry', **sources, dry_run=True)
    out = capsys.readouterr().out
    assert not (tmp_path/'dry').exists() and server.log == []
    assert 'would clone' in out and 'would download' in out and 'covidx-v1-splits/train_split.txt' in out
    fetch(tmp_path/'one', only='covidx', **sources, backoff=0)
    assert sorted(p.name for p in (tmp_path/'one').iterdir()) == [SUMS_FILE, 'covidx-v1-splits']
    with pytest.raises(FetchError, match='unknown source'): fetch(tmp_path/'x', only='kermany,rsna')


def test_sha256_kermany_option(tmp_path, sources, server):
    with pytest.raises(SystemExit, match='ChestXRay2017.zip: sha256 mismatch'):
        fetch_cli(dest=str(tmp_path/'d'), only='kermany', sha256_kermany='cd' * 32, **sources)
    good = sha(server.files['/kermany/ChestXRay2017.zip'])
    fetch_cli(dest=str(tmp_path/'d'), only='kermany', sha256_kermany=good, **sources)
    assert kermany_ready(tmp_path/'d/kermany-chest-xray')


def cli(*args):
    "Run the `covidnext-fetch` command: the installed script, else what its entry point runs."
    exe = Path(sys.executable).parent/'covidnext-fetch'
    cmd = [str(exe)] if exe.exists() else [
        sys.executable, '-c', 'import sys; from covidnext.fetch import fetch_cli; sys.argv[0] = "covidnext-fetch"; sys.exit(fetch_cli())']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


def test_cli_help():
    r = cli('--help')
    assert r.returncode == 0, r.stderr
    for o in ['--dest', '--only', '--cohen-url', '--cohen-ref', '--kermany-url', '--sha256-kermany', '--covidx-url',
              '--keep-archive', '--tries', '--timeout', '--dry-run']: assert o in r.stdout, o
    assert SOURCES['cohen']['ref'] in r.stdout and 'SHA256SUMS' in r.stdout
    r = cli()
    assert r.returncode == 2 and '--dest' in r.stderr


def test_cli_end_to_end(tmp_path, server, sources, cohen_origin):
    opts = [x for k, v in sources.items() for x in (f"--{k.replace('_', '-')}", v)]
    r = cli('--dest', tmp_path/'dest', *opts, '--tries', 2)
    assert r.returncode == 0, r.stderr
    check_dest(tmp_path/'dest', cohen_origin[1])
    assert f"Pass --sources {tmp_path/'dest'} to covidnext-build" in r.stdout
    assert 'no published sha256; recorded' in r.stdout
    r = cli('--dest', tmp_path/'dest2', '--only', 'covidx', '--covidx_url', sources['covidx_url'], '--dry_run')
    assert r.returncode == 0 and 'would download' in r.stdout and not (tmp_path/'dest2').exists()
    server.files['/covidnet/test_split_v2.txt'] = b'changed\n'
    (tmp_path/'dest/covidx-v1-splits/test_split.txt').unlink()
    r = cli('--dest', tmp_path/'dest', '--only', 'covidx', '--covidx-url', sources['covidx_url'])
    assert r.returncode == 1 and 'covidnext-fetch: error:' in r.stderr and 'test_split.txt: sha256 mismatch' in r.stderr
