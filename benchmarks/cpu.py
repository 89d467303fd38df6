"""covidnext on the CPU: the cache build, batch inference and the single-file `covidnext-predict` command.

(1) cache build: the COVIDx-v1 published split is built once (`covidnext.covidx.build_split` from the sources'
    `covidx-v1-splits`, timed too: it reads and hashes every image), then `covidnext.cache.build_cache` (224 px,
    squash, JPEG 90, one process per core) into a fresh temporary root, `--repeats` times; images/s = images / wall
    seconds of the whole call (content key over every source file, decode, resize, encode, write), median of the
    repeats. The sources are in the page cache after the split build, so this is the build from warm files.
(2) inference: `Predictor.probs` (the prediction path's model call: fp32, eval, no_grad) of covidnext50 and resnet18
    (random weights; speed does not depend on them) at 224 px on random uint8 batches of 1 and 32 images, torch threads
    = cores; after warm-up calls, `--repeats` timed blocks, images/s of the median block. Decoding and resizing the
    image files are not in it.
(3) `covidnext-predict IMAGE --checkpoint CKPT`: wall time of the command as a fresh process, model load included,
    on a checkpoint written as `fit` writes one (random weights), one warm-up run then `--runs` runs, median
    (benchmarks/predict_latency.py's method; it has the breakdown into imports, load and predict).
(4) checkpoint wait: the seconds `fit`'s loop waits per checkpoint of covidnext50 (weights, their average, AdamW's
    moments: about 1 GB), written in the loop (the baseline) and in the background (`CheckpointWriter`, the default),
    `--repeats` writes each; train_throughput.py's (d), here on the CPU and its disk.

Writes reports/benchmarks_cpu.json: the machine (cores, CPU model, memory, torch) and, per run, the figures with the
load average before and after it (other work on the machine slows every figure, and with torch threads = cores a
busy core stalls the other: compare within a run). Each run is appended to the file's `runs` (`--fresh` starts a new
file), and `summary` holds the median over the runs of each headline figure. Not a test: figures depend on the
machine and on what else runs on it.

    python benchmarks/cpu.py --sources ../shared/data
"""
from __future__ import annotations
import argparse, importlib.util, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def machine() -> dict:
    import torch
    tt = _load('train_throughput')
    mem = None
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemTotal:'): mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError: pass
    return dict(cpu=tt.cpu_model(), cores=os.cpu_count(), memory_gib=mem, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), python=platform.python_version(), platform=platform.platform(),
                load_avg_start=[round(x, 2) for x in os.getloadavg()])


def _busy() -> tuple[float, float]:
    "(CPU seconds all processes spent busy, CPU seconds this process and its children spent), for the other work's share."
    t = os.times()
    mine = t.user + t.system + t.children_user + t.children_system
    try:
        f = [int(x) for x in Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]]
        busy = (sum(f[:8]) - f[3] - f[4]) / os.sysconf('SC_CLK_TCK')            # all but idle and iowait
    except (OSError, ValueError, IndexError): busy = float('nan')
    return busy, mine


def cache_build(sources: Path, repeats: int, size: int, workers: int) -> dict:
    "(1) Wall seconds of the published split's build (once) and of its cache build (`repeats` times, fresh roots)."
    from covidnext.covidx import build_split
    from covidnext.cache import build_cache
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter()
        build_split(sources, d / 'covidx-v1', sources / 'covidx-v1-splits', progress=False, workers=workers)
        split_s = time.perf_counter() - t
        n = sum(1 for _ in open(d / 'covidx-v1' / 'split.csv')) - 1
        walls = []
        for r in range(repeats):
            t = time.perf_counter()
            c = build_cache(d / 'covidx-v1' / 'split.csv', sources, d / f'root{r}', size=size, workers=workers, progress=False)
            walls.append(time.perf_counter() - t)
            mib = json.loads((c / 'meta.json').read_text())['bytes'] / 2**20
            print(f"cache build {r + 1}/{repeats}: {n} images in {walls[-1]:.1f} s ({n / walls[-1]:.0f} img/s)", flush=True)
    med = statistics.median(walls)
    return dict(images=n, size=size, workers=workers, split_build_s=round(split_s, 2), cache_wall_s=[round(w, 2) for w in walls],
                cache_wall_median_s=round(med, 2), img_s=round(n / med, 1), cache_mib=round(mib, 1))


def inference(arch: str, size: int, batch: int, repeats: int, threads: int) -> dict:
    "(2) Images/s of `Predictor.probs` on random uint8 batches: median of `repeats` timed blocks after warm-up."
    import torch
    from covidnext.core import CLASSES
    from covidnext.model import create_model
    from covidnext.predictor import Predictor
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = Predictor(create_model(arch, input_size=size), CLASSES, size, 'squash')
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
    calls = max(1, 16 // batch)                    # per timed block: 16 calls at batch 1, one call at batch 32
    for _ in range(2 if batch > 1 else 5): p.probs(x)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls): p.probs(x)
        rates.append(calls * batch / (time.perf_counter() - t))
    med = statistics.median(rates)
    print(f"inference {arch} batch {batch}: {med:.1f} img/s ({1000 * batch / med:.0f} ms per call)", flush=True)
    return dict(img_s=round(med, 2), ms_per_call=round(1000 * batch / med, 1), calls_per_block=calls,
                block_img_s=[round(r, 2) for r in rates])


def predict_command(arch: str, size: int, runs: int, image: str | None) -> dict:
    "(3) Wall seconds of `covidnext-predict IMAGE --checkpoint CKPT` as a fresh process, model load included."
    pl = _load('predict_latency')
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        img = Path(image) if image else pl.an_image(d)
        ck = pl.make_checkpoint(arch, size, d / arch / 'last.pt')
        cmd = [sys.executable, '-c', pl.CLI, str(img), '--checkpoint', str(ck), '--no-progress']
        subprocess.run(cmd, capture_output=True, env=env, check=True)               # warm-up: file caches
        walls = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env, check=True)
            walls.append(time.perf_counter() - t)
        mb = ck.stat().st_size / 2**20
    med = statistics.median(walls)
    print(f"covidnext-predict {arch}: {med:.2f} s median of {runs} (min {min(walls):.2f}, max {max(walls):.2f})", flush=True)
    return dict(wall_median_s=round(med, 3), wall_min_s=round(min(walls), 3), wall_max_s=round(max(walls), 3),
                walls_s=[round(w, 3) for w in walls], checkpoint_mib=round(mb, 1), image=img.name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sources', default=os.environ.get('COVIDNEXT_SOURCES', '../shared/data'), help='the sources folder')
    p.add_argument('--archs', default='covidnext50,resnet18', help='comma-separated architectures of (2) and (3)')
    p.add_argument('--size', type=int, default=224, help='image side')
    p.add_argument('--batches', default='1,32', help='batch sizes of (2)')
    p.add_argument('--repeats', type=int, default=3, help='cache builds of (1)')
    p.add_argument('--blocks', type=int, default=5, help='timed blocks of (2)')
    p.add_argument('--threads', type=int, default=None, help='torch threads of (2) (default: the cores)')
    p.add_argument('--runs', type=int, default=5, help='timed runs of the command (3), after one warm-up run')
    p.add_argument('--image', default=None, help='the image of (3) (default: a Kermany image from the sources)')
    p.add_argument('--skip', default='', help='comma-separated parts to skip: cache, inference, predict, checkpoint')
    p.add_argument('--out', default='reports/benchmarks_cpu.json', help='JSON output')
    p.add_argument('--fresh', action='store_true', help='start a new file instead of adding this run to its runs')
    a = p.parse_args(argv)
    import torch
    cores = os.cpu_count() or 1
    threads = a.threads or cores
    torch.set_num_threads(threads)
    skip = set(filter(None, a.skip.split(',')))
    os.environ.setdefault('COVIDNEXT_SOURCES', a.sources)
    out = Path(a.out)
    mach = machine()
    b0, m0, w0 = *_busy(), time.perf_counter()
    run = dict(started_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), load_avg_start=mach.pop('load_avg_start'),
               repeats=a.repeats, blocks=a.blocks, runs=a.runs, size=a.size, inference_threads=threads)
    old = json.loads(out.read_text()) if out.is_file() and not a.fresh else None
    if old and (old['machine']['cores'], old['machine']['cpu']) != (mach['cores'], mach['cpu']):
        raise SystemExit(f"{out} holds runs of another machine ({old['machine']['cpu']}, {old['machine']['cores']} cores): "
                         "pass --fresh or another --out")
    res = dict(machine=mach, method=dict(
        cache_build="build_split (published COVIDx-v1 split) once, then build_cache into a fresh root; images / wall s, median of repeats",
        inference="Predictor.probs (fp32, eval, no_grad), random weights, random uint8 input; images/s of the median timed block after warm-up; no image decode",
        predict_command="covidnext-predict IMAGE --checkpoint CKPT as a fresh process (model load included); median of runs after one warm-up run",
        checkpoint="seconds fit's loop waits per checkpoint of covidnext50: CheckpointWriter synchronous vs background, median of repeats, a pause of 1.5 x the slowest synchronous write between writes",
        summary="median over runs of each run's figure",
        summary_quiet="the same over the runs where other processes used under 10% of the machine's CPU (other_cpu_share < 0.1)",
        other_cpu_share="CPU time of every other process during the run / (wall time x cores), from /proc/stat"),
        runs=(old or {}).get('runs', []) + [run])

    def save():
        run['load_avg_end'] = [round(x, 2) for x in os.getloadavg()]
        b, m = _busy()
        run['other_cpu_share'] = round(max(0.0, (b - b0) - (m - m0)) / ((time.perf_counter() - w0) * cores), 3)
        res['summary'] = summary(res['runs'])
        res['summary_quiet'] = summary([r for r in res['runs'] if r.get('other_cpu_share', 1) < 0.1])
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(res, indent=1) + '\n')

    if 'cache' not in skip:
        run['cache_build'] = cache_build(Path(a.sources), a.repeats, a.size, cores); save()
    archs, batches = a.archs.split(','), [int(b) for b in a.batches.split(',')]
    if 'inference' not in skip:
        run['inference'] = {arch: {f'batch_{b}': inference(arch, a.size, b, a.blocks, threads) for b in batches} for arch in archs}
        save()
    if 'predict' not in skip:
        run['predict_command'] = {arch: predict_command(arch, a.size, a.runs, a.image) for arch in archs}; save()
    if 'checkpoint' not in skip:
        import torch
        tt = _load('train_throughput')
        with tempfile.TemporaryDirectory(dir='.') as d:         # the working folder's disk, where runs/ goes
            run['checkpoint'] = tt.checkpoint_wait('covidnext50', a.size, torch.device('cpu'), a.repeats, Path(d) / 'ckpt')
        save()
    save()
    print(json.dumps(res['summary'], indent=1))
    print(f"wrote {out} ({len(res['runs'])} runs)")
    return res


def summary(runs: list) -> dict:
    "The median over `runs` of each headline figure, with the number of runs it is over."
    vals = {}
    for r in runs:
        if 'cache_build' in r: vals.setdefault('cache_build_img_s', []).append(r['cache_build']['img_s'])
        for arch, d in r.get('inference', {}).items():
            for b, v in d.items(): vals.setdefault(f'inference_img_s.{arch}.{b}', []).append(v['img_s'])
        for arch, v in r.get('predict_command', {}).items():
            vals.setdefault(f'predict_command_wall_s.{arch}', []).append(v['wall_median_s'])
        if 'checkpoint' in r:
            for k in ('sync_wait_s', 'background_wait_s'): vals.setdefault(f'checkpoint_{k}', []).append(r['checkpoint'][k])
    out = {}
    for k, v in vals.items():
        d = out
        *head, last = k.split('.')
        for h in head: d = d.setdefault(h, {})
        d[last] = dict(median=round(statistics.median(v), 3), n_runs=len(v), values=v)
    return out


if __name__ == '__main__':
    main()
