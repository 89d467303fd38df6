"""benchmarks/train_throughput.py end to end in its tiny CPU version, on a small cache of real Kermany images, with
the seed-style pipeline (a) reading a packed subset of the sources. Checks what the JSON holds, never the speed."""
from __future__ import annotations
import importlib.util, json, math, os, subprocess, sys
from pathlib import Path

import pytest

from covidnext.cache import build_cache
from conftest import SRC, kermany_split

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '2', 'PYTHONUNBUFFERED': '1'}
REQUIRED = ('device', 'torch', 'img_s_seed_style', 'img_s_covidnext', 'img_s_ceiling', 'ratio_vs_ceiling', 'ratio_vs_seed')


def _module():
    spec = importlib.util.spec_from_file_location('train_throughput', ROOT / 'benchmarks' / 'train_throughput.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


@pytest.fixture(scope='module')
def cache(tmp_path_factory) -> Path:
    "36 real Kermany images (24 train, 12 val; normal, bacterial, viral) and their 32 px cache."
    d = tmp_path_factory.mktemp('bench')
    split = kermany_split(d, ('normal', 'bacteria', 'viral'), 12, ['train'] * 8 + ['val'] * 4)
    return build_cache(split, SRC, d / 'cache', size=32, workers=2, progress=False)


def test_pack_sources_copies_a_stratified_sample(cache, tmp_path):
    tt = _module()
    info = tt.pack_sources(str(cache), None, str(SRC), str(tmp_path / 'src'), 12)
    assert info['images'] == 12
    copied = sorted(str(p.relative_to(tmp_path / 'src')) for p in (tmp_path / 'src').rglob('*') if p.is_file())
    rows, listed = tt.seed_rows(str(cache), None, str(tmp_path / 'src'), 0)
    assert listed == 24 and sorted(rows.path) == copied                 # (a) finds exactly the packed files
    assert rows.label.value_counts().to_dict() == {'normal': 4, 'bacteria': 4, 'viral': 4}
    assert (rows.split == 'train').all()


def test_tiny_throughput_writes_the_json(cache, tmp_path):
    tt = _module()
    tt.pack_sources(str(cache), None, str(SRC), str(tmp_path / 'src'), 16)   # (a) on a machine with part of the sources
    out = tmp_path / 'benchmarks.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'train_throughput.py'), '--tiny', '--cache', str(cache),
                        '--arch', 'resnet18', '--subset', '16', '--sources', str(tmp_path / 'src'), '--workers', '1', '--out', str(out),
                        '--run-dir', str(tmp_path / 'run')], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())
    for k in REQUIRED: assert k in res, k
    assert res['complete'] and res['mode'] == 'tiny' and res['size'] == 32 and res['arch'] == 'resnet18'
    for k in REQUIRED[2:]: assert isinstance(res[k], float) and math.isfinite(res[k]) and res[k] > 0, k
    assert math.isclose(res['ratio_vs_ceiling'], res['img_s_covidnext'] / res['img_s_ceiling'])
    assert math.isclose(res['ratio_vs_seed'], res['img_s_covidnext'] / res['img_s_seed_style'])
    assert res['img_s_ceiling_fp32'] > 0 and len(res['ceiling_fp32_block_img_s']) == res['repeats']   # (c) at (a)'s precision
    assert math.isclose(res['seed_style_vs_fp32_ceiling'], res['img_s_seed_style'] / res['img_s_ceiling_fp32'])
    assert res['seed_style']['images_read'] == 16 and res['seed_style']['images_listed'] == 24
    assert any('16 of the 24' in n for n in res['notes'])
    assert 'b/c' in r.stdout and 'b/a' in r.stdout
    t = res['fit_timing']                                   # what (b)'s figure leaves out is on record
    assert t['train_s'] > 0 and t['loop_s'] >= t['train_s'] + t['val_s'] and res['epoch_overhead_s'] >= 0
    ck = res['checkpoint']                                  # (d): the loop's wait per checkpoint, both ways
    assert ck['checkpoint_mib'] > 10 and len(ck['sync_waits_s']) == len(ck['background_waits_s']) == res['repeats']
    assert ck['sync_wait_s'] > 0 and ck['background_wait_s'] > 0 and not list(tmp_path.glob('run_checkpoint*'))


def test_profile_writes_the_busiest_ops_and_the_host_waits(cache, tmp_path):
    out = tmp_path / 'prof.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'train_throughput.py'), '--tiny', '--cache', str(cache),
                        '--arch', 'resnet18', '--subset', '16', '--profile', '--out', str(out), '--run-dir', str(tmp_path / 'run')],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())
    fit_summary = json.loads((tmp_path / 'run_profile' / 'summary.json').read_text())
    assert res['epochs'] == fit_summary['epochs_run'] == 2 and res['steps'] == fit_summary['global_step'] > 0
    assert res['host_sync_calls'] == {} and res['host_sync_calls_per_step'] == 0   # no GPU: nothing to wait for
    table = (tmp_path / 'prof.txt').read_text()
    assert 'aten::convolution' in table and 'Self CPU' in table
    assert 'calls per step' in r.stdout


def test_cpu_benchmark_appends_runs(tmp_path):
    "benchmarks/cpu.py, inference only at a tiny size: each run is added to `runs` and `summary` is their median."
    spec = importlib.util.spec_from_file_location('cpu_bench', ROOT / 'benchmarks' / 'cpu.py')
    cpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(cpu)
    out = tmp_path / 'cpu.json'
    args = ['--skip', 'cache,predict,checkpoint', '--archs', 'resnet18', '--batches', '1', '--size', '32', '--blocks', '1',
            '--threads', '1', '--out', str(out)]
    import torch
    threads = torch.get_num_threads()                                    # main sets torch's threads for this process
    try: cpu.main(args); res = cpu.main(args)
    finally: torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == res and len(res['runs']) == 2
    assert res['machine']['cores'] == os.cpu_count() and res['machine']['torch']
    s = res['summary']['inference_img_s']['resnet18']['batch_1']
    assert s['n_runs'] == 2 and s['median'] > 0 and 0 <= res['runs'][1]['other_cpu_share']


def test_study_wall_records_each_run(tmp_path, monkeypatch, capfd):
    "covidnext-study --time around a stand-in study: one record per run, failures and interruptions included."
    import covidnext.study as run
    out, seen = tmp_path / 'wall.json', {}
    with monkeypatch.context() as m:                                      # what the command would time
        m.setattr(run, 'time_study', lambda cmd, rec, path: seen.update(cmd=cmd, rec=rec, path=path) or 0)
        assert run.study(profile='full', archs=['resnet18'], seeds=[0, 1], epochs=30, cache='somewhere/v1-224', time=True,
                         wall_json=str(out), sources=str(SRC)) == 0
    passed = json.loads(seen['cmd'][-1])                                  # the study itself, untimed, as it was asked for
    assert (passed['profile'], passed['archs'], passed['cache'], passed['time'], passed['parallel']) == ('full', ['resnet18'], 'somewhere/v1-224', False, 1)
    assert seen['path'] == str(out)
    rec = seen['rec']
    study = [sys.executable, '-c', 'import sys, time; time.sleep(float(sys.argv[1])); print("study", sys.argv[2:]); sys.exit(int(sys.argv[2]))']
    assert run.time_study(study + ['0', '0', '--x'], rec, out) == 0
    assert "study ['0', '--x']" in capfd.readouterr().out
    assert run.time_study(study + ['0', '3'], rec, out) == 3
    pid = tmp_path / 'pid'
    p = subprocess.Popen([sys.executable, '-c', 'import json, sys; from covidnext.study import time_study; '   # a process to signal
                          'sys.exit(time_study(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]))',
                          json.dumps(['bash', '-c', f'echo $$ > {pid}; sleep 60']), json.dumps(rec), str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    for _ in range(100):
        if pid.is_file() and pid.read_text().strip(): break
        time.sleep(0.1)
    p.terminate(); p.communicate(timeout=60)
    assert p.returncode == 143
    for _ in range(100):                                                  # a loaded machine may take a moment to end it
        try: os.kill(int(pid.read_text()), 0)
        except ProcessLookupError: break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError): os.kill(int(pid.read_text()), 0)   # the study's whole process group is stopped
    adult = run.wall_record(run.load_profile('full', archs=['resnet18'], seeds=[0, 1]), run.device_info(), 1,
                            dict(adult_cache='there/adult-224', dataset=True))
    run.add_record(out, {**adult, 'status': 'ok', 'wall_s': 0.0, 'started_utc': 'now'})
    recs = json.loads(out.read_text())
    assert (recs[-1]['cache'], recs[-1]['data_build']) == ('adult-224', False)   # one adult cache: no data build either
    recs = recs[:-1]
    assert [x['status'] for x in recs] == ['ok', 'failed (exit 3)', 'interrupted']
    a = recs[0]
    assert (a['profile'], a['archs'], a['seeds'], a['epochs'], a['cache'], a['data_build']) == ('full', ['resnet18'], [0, 1], 30, 'v1-224', False)
    assert a['device'] and a['torch'] and a['wall_s'] >= 0 and recs[2]['wall_s'] < 60
    assert a['parallel'] == 1 and passed['parallel'] == 1      # no GPU: one run at a time, passed on and recorded
    assert list(a) == ['profile', 'archs', 'seeds', 'epochs', 'size', 'device', 'torch', 'cores', 'data_build', 'cache', 'parallel',
                       'shortcut', 'mitigations', 'status', 'wall_s', 'started_utc', 'commit', 'uncommitted_changes']
    w = tmp_path / 'w'; w.mkdir()                      # and the command itself, timing a study with nothing to train
    r = subprocess.run([Path(sys.executable).parent / 'covidnext-study', '--time', '--no-dataset', '--no-shortcut', '--archs',
                        '--wall-json', 'wall.json', '--rev', 'abc1234'], cwd=w, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'study done in' in r.stdout and 'study_wall: ok after' in r.stdout, r.stdout + r.stderr
    rec = json.loads((w / 'wall.json').read_text())[-1]
    assert (rec['status'], rec['profile'], rec['archs'], rec['commit'], rec['shortcut'], rec['data_build']) == ('ok', 'quick', [], 'abc1234', False, False)


def test_augment_throughput_compares_the_jpeg_steps(cache, tmp_path):
    "benchmarks/augment_throughput.py, tiny: the three variants in one run, and the previous JPEG step restored after."
    spec = importlib.util.spec_from_file_location('augment_throughput', ROOT / 'benchmarks' / 'augment_throughput.py')
    at = importlib.util.module_from_spec(spec); spec.loader.exec_module(at)
    import torch
    import covidnext.augment as A
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    which, q = torch.tensor([True, False, True, False]), torch.tensor([30, 30, 60, 60])
    current = A.jpeg_batch
    with at.jpeg_step(at.jpeg_libjpeg):
        assert A.jpeg_batch is at.jpeg_libjpeg
        old = A.augment_batch(x, {**A.sample_params(4, 32, 32, A.AugmentConfig.off()), 'jpeg': which, 'quality': q})
    assert A.jpeg_batch is current                                       # put back
    assert torch.equal(old[~which], x[~which]) and not torch.equal(old[which], x[which])
    out = tmp_path / 'augment.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'augment_throughput.py'), '--cache', str(cache),
                        '--batch-size', '8', '--images', '24', '--steps', '1', '--repeats', '1', '--warmup', '0',
                        '--out', str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res['complete'] and res['size'] == 32 and res['images'] == 24 and res['arch'] == 'resnet18'
    assert set(res['results']) == {'seed', 'tensor', 'libjpeg'} and 'jpeg' not in res['results']['seed']
    for v in ('tensor', 'libjpeg'): assert res['results'][v]['jpeg']['img_s'] > 0
    for v in res['results'].values():
        for kind in ('augment', 'train'): assert v[kind]['img_s'] > 0 and v[kind]['host_ms_per_call'] > 0
    assert math.isclose(res['train_tensor_vs_libjpeg'],
                        res['results']['tensor']['train']['img_s'] / res['results']['libjpeg']['train']['img_s'], rel_tol=1e-2)


def test_gpu_script_runs_its_stages_with_their_arguments(cache, tmp_path):
    "benchmarks/gpu.sh's wiring, with a stand-in python that records its arguments (the scripts it calls are tested above)."
    log, stub = tmp_path / 'calls.txt', tmp_path / 'python'
    stub.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo h100; else echo "$@" >> {log}; fi\n')
    stub.chmod(0o755)
    env = {**ENV, 'PYTHON': str(stub), 'CACHE': str(cache), 'STAGES': 'throughput profile augment',
           'DROP_SOURCES': 'radiography', 'SEED_SOURCES': 'seed-src'}
    r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert calls == [f'benchmarks/train_throughput.py --cache {cache} --sources seed-src --drop-sources radiography --compile off '
                     f'--out reports/benchmarks/train_throughput_h100_{rev}.json',
                     f'benchmarks/train_throughput.py --cache {cache} --drop-sources radiography --compile off --profile '
                     f'--out reports/benchmarks/profile_h100_{rev}.json',
                     f'benchmarks/augment_throughput.py --cache {cache} --out reports/benchmarks/augment_h100_{rev}.json']
    log.unlink()                                   # the study stage: covidnext-study --time from the cache, within the limit
    r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True,
                       env={**env, 'STAGES': 'study'}, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and log.read_text().splitlines() == [
        f'-m covidnext.study --profile full --no-dataset --no-shortcut --adult-cache {cache} --time '
        f'--wall-json reports/benchmarks/study_wall_h100_{rev}.json --rev {rev}'], r.stderr
    log.unlink()
    r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True,
                       env={**env, 'STAGES': 'study', 'SHORTCUT': '1', 'DROP_SOURCES': ''}, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and log.read_text().split()[:7] == ['-m', 'covidnext.study', '--profile', 'full', '--no-dataset', '--cache', str(cache)]
    log.unlink()                                   # the whole study: the external steps from the public cache
    r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True,
                       env={**env, 'STAGES': 'study', 'SHORTCUT': '1', 'DROP_SOURCES': 'radiography,cohen-unlisted', 'PUBLIC_CACHE': 'pub'},
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and log.read_text().split()[4:9] == ['--no-dataset', '--public-cache', 'pub', '--plus-cache', str(cache)]
    log.unlink()                                   # REV names the files where the copy has no (or a stale) git history
    r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True,
                       env={**env, 'STAGES': 'augment', 'REV': 'abc1234'}, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and log.read_text().split()[-1] == 'reports/benchmarks/augment_h100_abc1234.json', r.stderr
    for bad, msg in (({'STAGES': 'nope'}, "unknown stage 'nope'"), ({'CACHE': str(tmp_path / 'none')}, 'is not a folder'),
                     ({'DROP_SOURCES': 'kermany'}, 'DROP_SOURCES=kermany')):
        r = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu.sh')], capture_output=True, text=True,
                           env={**env, **bad}, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)
