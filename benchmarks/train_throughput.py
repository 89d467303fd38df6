"""Training throughput of covidnext against the seed's pipeline and against the ceiling, in one run on one device.

Same model (default covidnext50, 4 classes), same image side (the cache's, 224 px for the GPU figures), same batch
size and optimizer (Adam, lr 1e-3, weight decay 5e-4, made by `covidnext.train.make_optimizer`: fused on CUDA) in all three:

(a) seed-style: the seed's pipeline. PIL decode of the source files (`--sources`), the per-image torchvision v2
    training transforms in DataLoader workers (default: as many as the machine has cores), fp32, contiguous memory.
    The file list is the cache's index (`index.csv`, paths relative to `--sources`), train split; only the rows whose
    file exists under `--sources` are read, so a machine with a subset of the sources can run it (see
    `--pack-sources`). The sampler draws one long shuffled stream, so no DataLoader restarts at epoch ends fall in the
    timed window (this flatters (a) slightly). Skipped without `--sources`: its figures are then null.
(b) covidnext: `covidnext.train.fit` as `covidnext-train` runs it: the cache decoded once onto the device, batched
    augmentation on the device, bf16 autocast (CUDA only), channels_last; real training with validation after each
    epoch, with torch.compile off and/or on (`--compile`). Its figure is the median over the epochs after the first
    (warm-up, and compilation when on) of `train_one_epoch`'s images/s: images trained / perf_counter seconds from
    the epoch's first step to a final `torch.cuda.synchronize()`; validation and checkpoint writes fall outside it.
    What falls outside it is recorded too: fit's `timing` (`fit_timing`) and the seconds per epoch outside the training
    steps (`epoch_overhead_s`: validation, logging and the wait for checkpoints), which the study's wall time pays.
(c) ceiling: the same model, precision, memory format, optimizer and batch size on random uint8 images already on
    the device; no data pipeline, no augmentation. With (a), also at (a)'s fp32 and contiguous memory
    (`img_s_ceiling_fp32`): (a) over it (`seed_style_vs_fp32_ceiling`) says whether the seed's pipeline is held back
    by its data (well below 1) or by its own model's precision (near 1).

(d) checkpoint wait: (b)'s checkpoint state (the weights, their average and AdamW's moments, on the device), written
    by `CheckpointWriter` synchronously (the baseline: torch.save and fsync in the training loop) and in the background
    (covidnext-train's default: a host copy, then a thread writes it), `--repeats` times each with a pause between
    writes like an epoch's; the median seconds the loop waits per checkpoint (`checkpoint`).

(a) and (c) warm up, then time `--repeats` blocks of `--steps` steps each, with CUDA events on a GPU (perf_counter on
a CPU), and report the median block. Prints images/s and the ratios b/c (`ratio_vs_ceiling`) and b/a
(`ratio_vs_seed`). The JSON is rewritten after every measurement, so a run cut short keeps what it measured
(`complete` says whether it finished). The headline keys (`img_s_covidnext`, `img_s_ceiling`, `ratio_*`) are those
of torch.compile off, covidnext-train's default (or on, when only on was measured: `headline_compile` says which);
the compiled figures carry the suffix `_compiled`.

Without CUDA (or with `--tiny`) it runs a tiny version (the cache's size, a small subset, few steps, compile off) so
that CI exercises it; its JSON goes to reports/quick/, never over the GPU figures. Not a test of speed.

    # on a GPU: everything, into reports/benchmarks.json
    python benchmarks/train_throughput.py --cache .cache/v1-224 --sources ../shared/data
    # a subset of the sources that (a) needs, for a machine without them (copied with their relative paths)
    python benchmarks/train_throughput.py --cache .cache/v1-224 --sources ../shared/data \\
        --pack-sources .cache/seed-sources --seed-images 800
    # where (b) loses time: torch.profiler over 2 epochs of fit, into reports/benchmarks_profile.{txt,json}
    python benchmarks/train_throughput.py --cache .cache/v1-224 --compile off --profile
"""
from __future__ import annotations
import argparse, gc, json, os, platform, shutil, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

OPT = dict(lr=1e-3, weight_decay=5e-4)                 # covidnext-train's defaults, the seed's Adam
FULL = dict(batch_size=64, epochs=4, subset=0, steps=50, repeats=3, warmup=10)
TINY = dict(batch_size=8, epochs=2, subset=48, steps=2, repeats=2, warmup=1)


def cpu_model() -> str:
    "The CPU's model name from /proc/cpuinfo (or what platform knows)."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def machine(dev: torch.device) -> dict:
    info = dict(device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu: {cpu_model()}',
                torch=torch.__version__, cuda=torch.version.cuda if dev.type == 'cuda' else None,
                python=platform.python_version(), cores=os.cpu_count(), cpu=cpu_model())
    if dev.type == 'cuda':
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu_memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    return info


def time_blocks(step, steps: int, repeats: int, batch: int, dev: torch.device, warmup: int) -> list[float]:
    "Images/s of `repeats` blocks of `steps` calls of `step()` after `warmup` calls: CUDA events on a GPU, perf_counter on a CPU."
    for _ in range(warmup): step()
    rates = []
    for _ in range(repeats):
        if dev.type == 'cuda':
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev); a.record()
            for _ in range(steps): step()
            b.record(); torch.cuda.synchronize(dev); dt = a.elapsed_time(b) / 1000
        else:
            t = time.perf_counter()
            for _ in range(steps): step()
            dt = time.perf_counter() - t
        rates.append(steps * batch / dt)
    return rates


def ceiling(arch: str, size: int, batch: int, dev: torch.device, amp: bool, channels_last: bool, compile: bool,
            steps: int, repeats: int, warmup: int) -> list[float]:
    "(c) Images/s of bare training steps on random uint8 images already on the device, per timed block."
    from covidnext.model import create_model
    from covidnext.model import autocast
    from covidnext.train import TrainConfig, make_optimizer
    torch.manual_seed(0)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch, input_size=size).to(dev, memory_format=mf).train()
    opt = make_optimizer(TrainConfig.recipe('seed', optimizer='adam', **OPT), model)   # as fit makes it (fused on CUDA)
    run = torch.compile(model) if compile else model
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=dev).contiguous(memory_format=mf)
    y = torch.randint(0, 4, (batch,), device=dev)

    def step():
        with autocast(dev, amp): loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    return time_blocks(step, steps, repeats, batch, dev, warmup)


def fit_config(cache: str, arch: str, size: int, batch: int, epochs: int, compile: bool, out: Path, subset: int,
               drop_sources: str = ''):
    "(b)'s training config: `covidnext-train`'s defaults on the cache, quiet."
    from covidnext.train import TrainConfig
    return TrainConfig.recipe('seed', cache=cache, arch=arch, size=size, batch_size=batch, epochs=epochs, compile=compile,
                       out=str(out), progress=False, subset=subset, device='auto', log_images=False,
                       drop_sources=drop_sources)


def covidnext(cache: str, arch: str, size: int, batch: int, epochs: int, compile: bool, out: Path, subset: int,
              drop_sources: str = '') -> dict:
    "(b) `fit` on the cache; the median images/s of its epochs after the first, and what goes with it."
    from covidnext.train import fit
    cfg = fit_config(cache, arch, size, batch, epochs, compile, out, subset, drop_sources)
    t0 = time.perf_counter()
    s = fit(cfg)
    wall = time.perf_counter() - t0
    per_epoch = [h['img_s'] for h in s['history']]
    t = s['timing']
    return dict(img_s=statistics.median(per_epoch[1:] or per_epoch), epoch_img_s=per_epoch, train_wall_s=wall,
                val_macro_f1_last=s['history'][-1]['val_macro_f1'], fit_timing=t,
                epoch_overhead_s=round((t['loop_s'] - t['train_s']) / max(len(per_epoch), 1), 3))


def checkpoint_wait(arch: str, size: int, dev: torch.device, repeats: int, dest: Path, pause: float | None = None) -> dict:
    """(d) Seconds the training loop waits per checkpoint of `arch`'s fit state on `dev`: `CheckpointWriter`
    synchronous (the baseline) and in the background (the default), median of `repeats` writes each. Between writes a
    pause stands in for an epoch's training (default: 1.5 x the slowest synchronous write, so a background write can
    finish, as it does when epochs outlast writes)."""
    import shutil
    from covidnext.model import create_model
    from covidnext.checkpoint import CheckpointWriter
    from covidnext.train import EMA, TrainConfig, _state, make_optimizer
    torch.manual_seed(0)
    model = create_model(arch, n_classes=4, input_size=size).to(dev)
    cfg = TrainConfig.recipe('seed', optimizer='adamw', arch=arch, size=size)
    opt = make_optimizer(cfg, model)
    model(torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8, device=dev)).float().sum().backward()
    opt.step()                                                             # Adam's moments exist, as after a step
    ema = EMA(model, 0.999)
    state = _state(model, opt, None, cfg, 0, 0, 1, torch.Generator(), [], dict(epoch=0, macro_f1=0.0), None, ema)
    dest.mkdir(parents=True, exist_ok=True)
    res = {}
    try:
        for mode in ('sync', 'background'):
            w, waits = CheckpointWriter(background=mode == 'background'), []
            for r in range(repeats):
                t = time.perf_counter()
                w.save(state, dest / 'last.pt', best=dest / 'best.pt' if r == 0 else None)
                waits.append(time.perf_counter() - t)
                time.sleep(pause if pause is not None else 1.5 * max(res.get('sync_waits_s', waits)) + 0.1)
            t = time.perf_counter(); w.close(); final = time.perf_counter() - t
            res[f'{mode}_waits_s'] = [round(x, 4) for x in waits]
            res[f'{mode}_wait_s'] = round(statistics.median(waits), 4)
            if mode == 'background': res['background_final_wait_s'] = round(final, 4)
        res['checkpoint_mib'] = round((dest / 'last.pt').stat().st_size / 2**20, 1)
        res['sync_over_background'] = round(res['sync_wait_s'] / max(res['background_wait_s'], 1e-9), 1)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    print(f"(d) checkpoint of {arch} ({res.get('checkpoint_mib')} MiB): the loop waits {res.get('sync_wait_s')} s written "
          f"in it, {res.get('background_wait_s')} s in the background", flush=True)
    return res


def sample_train_rows(table, n: int, seed: int = 0):
    "The train rows of an index/split table; with n > 0, a seeded sample of n of them, stratified by source and label."
    import numpy as np
    tab = table[table.split == 'train']
    if n <= 0 or n >= len(tab): return tab
    groups = list(tab.groupby(['source', 'label'], sort=True))
    quota = np.array([len(g) for _, g in groups], float) * n / len(tab)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind='stable')[:n - take.sum()]: take[i] += 1   # largest remainders
    take = np.maximum(take, [1 if len(g) else 0 for _, g in groups])                        # every stratum appears
    parts = [g.sample(min(k, len(g)), random_state=seed) for (_, g), k in zip(groups, take)]
    import pandas as pd
    return pd.concat(parts).sort_index()


def seed_rows(cache: str, split_csv: str | None, sources: str, n: int, drop_sources: str = ''):
    "(rows of the train split found under `sources`, number listed): the file list of (a)."
    import pandas as pd
    tab = pd.read_csv(split_csv or Path(cache) / 'index.csv')
    drop = [x.strip() for x in drop_sources.split(',') if x.strip()]
    tab = sample_train_rows(tab[~tab.source.isin(drop)], n)                  # --drop-sources: (a)'s list too
    found = tab[[(Path(sources) / p).is_file() for p in tab.path]]
    return found, len(tab)


def pack_sources(cache: str, split_csv: str | None, sources: str, dest: str, n: int, drop_sources: str = '') -> dict:
    "Copy the source files (a) reads (n of the train split, stratified) into `dest`, with their relative paths."
    rows, listed = seed_rows(cache, split_csv, sources, n, drop_sources)
    if len(rows) < listed: raise SystemExit(f"{listed - len(rows)} of the {listed} files are missing from {sources}")
    total = 0
    for p in rows.path:
        d = Path(dest) / p; d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(sources) / p, d); total += d.stat().st_size
    by = rows.groupby('source').size().to_dict()
    print(f"{len(rows)} train images ({', '.join(f'{k} {v}' for k, v in by.items())}), {total / 2**20:.1f} MiB "
          f"copied into {dest}; measure (a) with --sources {dest}")
    return dict(images=len(rows), bytes=total, by_source=by)


def seed_style(rows, sources: str, arch: str, size: int, batch: int, dev: torch.device, workers: int, steps: int,
               repeats: int, warmup: int) -> list[float]:
    "(a) Images/s of the seed's pipeline per timed block: per-image decode and v2 transforms in DataLoader workers, fp32."
    from torch.utils.data import DataLoader, RandomSampler
    from covidnext.model import create_model
    from covidnext.train import SeedStyleDataset, TrainConfig, make_optimizer
    ds = SeedStyleDataset(rows, sources, size, True)
    n = (warmup + steps * repeats + 2) * batch
    sampler = RandomSampler(ds, num_samples=n, generator=torch.Generator().manual_seed(0))  # one long shuffled stream
    dl = DataLoader(ds, batch, sampler=sampler, num_workers=workers, pin_memory=dev.type == 'cuda', drop_last=True)
    torch.manual_seed(0)
    model = create_model(arch, input_size=size).to(dev).train()
    opt = make_optimizer(TrainConfig.recipe('seed', optimizer='adam', **OPT), model)
    it = iter(dl)

    def step():
        xb, yb = next(it)
        loss = F.cross_entropy(model(xb.to(dev, non_blocking=True)), yb.to(dev, non_blocking=True))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    try: return time_blocks(step, steps, repeats, batch, dev, warmup)
    finally: del it


SYNC_CALLS = ('cudaStreamSynchronize', 'cudaDeviceSynchronize', 'cudaEventSynchronize', 'cudaMemcpy')  # the host waits for the GPU
# (an asynchronous copy from pinned memory, cudaMemcpyAsync, does not; a blocking .to() is cudaMemcpyAsync + cudaStreamSynchronize)


def profile_fit(cache: str, arch: str, size: int, batch: int, subset: int, out: Path, compile: bool,
                drop_sources: str = '') -> dict:
    "(b) under torch.profiler: `fit` for 2 epochs (the first is warm-up); the busiest ops and the host's waits on the GPU."
    from torch.profiler import ProfilerActivity, profile
    from covidnext.train import fit
    cfg = fit_config(cache, arch, size, batch, 2, compile, out, subset, drop_sources)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof: s = fit(cfg)
    ev = prof.key_averages()
    steps = s['global_step']
    sort = 'self_cuda_time_total' if torch.cuda.is_available() else 'self_cpu_time_total'
    syncs = {e.key: dict(calls=e.count, host_ms=round(e.cpu_time_total / 1000, 3)) for e in ev if e.key in SYNC_CALLS}
    return dict(steps=steps, epochs=2, sort=sort, table=ev.table(sort_by=sort, row_limit=25),
                host_sync_calls=syncs, host_sync_calls_per_step=round(sum(v['calls'] for v in syncs.values()) / max(steps, 1), 3))


def _free(dev):
    gc.collect()
    if dev.type == 'cuda': torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cache', required=True, help='a built cache folder (covidnext-cache); its size is the image side')
    p.add_argument('--arch', default='covidnext50', help='model name')
    p.add_argument('--size', type=int, default=None, help="image side; must be the cache's (default: the cache's)")
    p.add_argument('--tiny', action='store_true', help='the tiny version (the default without CUDA)')
    p.add_argument('--batch-size', type=int, default=None, help=f"images per step (default {FULL['batch_size']}, tiny {TINY['batch_size']})")
    p.add_argument('--epochs', type=int, default=None, help=f"epochs of (b), the first is warm-up (default {FULL['epochs']}, tiny {TINY['epochs']})")
    p.add_argument('--subset', type=int, default=None, help=f"images per split for (b), 0: all (default {FULL['subset']}, tiny {TINY['subset']})")
    p.add_argument('--steps', type=int, default=None, help=f"timed steps per block of (a) and (c) (default {FULL['steps']}, tiny {TINY['steps']})")
    p.add_argument('--warmup', type=int, default=None, help=f"untimed steps before the blocks of (a) and (c) (default {FULL['warmup']}, tiny {TINY['warmup']})")
    p.add_argument('--repeats', type=int, default=None, help=f"timed blocks of (a) and (c); the median is reported (default {FULL['repeats']}, tiny {TINY['repeats']})")
    p.add_argument('--compile', choices=['off', 'on', 'both'], default=None, help='torch.compile for (b) and (c) (default: both on CUDA, off otherwise)')
    p.add_argument('--sources', default=None, help='sources folder (paths of the index are relative to it): also measure (a)')
    p.add_argument('--split-csv', default=None, help='file list of (a) (default: the cache index)')
    p.add_argument('--seed-images', type=int, default=0, help='(a) reads only a sample of about this many train images, stratified by source and label (0: all found)')
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers of (a) (default: all cores)')
    p.add_argument('--pack-sources', default=None, metavar='DEST', help='only copy the files (a) reads into DEST, then exit')
    p.add_argument('--out', default=None, help='JSON output (default: reports/benchmarks.json; tiny: reports/quick/benchmarks_tiny.json)')
    p.add_argument('--run-dir', default='runs/benchmark', help='run folder of (b)')
    p.add_argument('--drop-sources', default='', help="sources (b) and (a) leave out of the cache, e.g. 'radiography': COVIDx-v1 from a covidx-v1-adult cache")
    p.add_argument('--skip-checkpoint', action='store_true', help='do not measure (d)')
    p.add_argument('--profile', action='store_true', help='only profile (b) with torch.profiler (2 epochs of fit): the busiest ops '
                   'into PROFILE.txt and the waits of the host on the GPU (synchronize and blocking memcpy calls, per training step) into PROFILE.json, '
                   'beside --out (default reports/benchmarks_profile.*; tiny: reports/quick/); then exit')
    a = p.parse_args(argv)
    if a.pack_sources:
        if not a.sources: p.error('--pack-sources needs --sources')
        pack_sources(a.cache, a.split_csv, a.sources, a.pack_sources, a.seed_images, a.drop_sources); return None
    cuda = torch.cuda.is_available()
    dev = torch.device('cuda' if cuda else 'cpu')
    tiny = a.tiny or not cuda
    for k, v in (TINY if tiny else FULL).items():
        if getattr(a, k) is None: setattr(a, k, v)
    compile_modes = {'off': [False], 'on': [True], 'both': [False, True]}[a.compile or ('both' if cuda and not tiny else 'off')]
    out = Path(a.out or ('reports/quick/benchmarks_tiny.json' if tiny else 'reports/benchmarks.json'))
    meta = json.loads((Path(a.cache) / 'meta.json').read_text())
    size = meta['size']
    if a.size is not None and a.size != size: p.error(f"--size {a.size}, but the cache holds {size} px images")
    workers = a.workers if a.workers is not None else (os.cpu_count() or 1)
    if cuda: torch.backends.cudnn.benchmark = True
    if a.profile:
        stem = Path(a.out).with_suffix('') if a.out else Path('reports/quick/benchmarks_profile' if tiny else 'reports/benchmarks_profile')
        prof = profile_fit(a.cache, a.arch, size, a.batch_size, a.subset, Path(a.run_dir + '_profile'), compile_modes[0],
                           a.drop_sources)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix('.txt').write_text(prof.pop('table') + '\n')
        prof.update(machine(dev), arch=a.arch, size=size, batch_size=a.batch_size, subset=a.subset, compile=compile_modes[0])
        stem.with_suffix('.json').write_text(json.dumps(prof, indent=1) + '\n')
        print(f"profile of {prof['steps']} steps: host waits {prof['host_sync_calls']} "
              f"({prof['host_sync_calls_per_step']} calls per step); busiest ops in {stem.with_suffix('.txt')}")
        return prof

    res = dict(machine(dev), mode='tiny' if tiny else 'full', complete=False, arch=a.arch, size=size, n_classes=4,
               batch_size=a.batch_size, optimizer='adam', images_in_cache=meta['n'], cache=Path(a.cache).name, drop_sources=a.drop_sources or None,
               precision=dict(seed_style='fp32', covidnext='bf16 autocast' if cuda else 'fp32', ceiling='bf16 autocast' if cuda else 'fp32',
                              ceiling_fp32='fp32'),
               channels_last=dict(seed_style=False, covidnext=True, ceiling=True, ceiling_fp32=False),
               timing=dict(seed_style=f"median of {a.repeats} blocks of {a.steps} steps after {a.warmup} warm-up steps, "
                                      + ('CUDA events' if cuda else 'perf_counter'),
                           ceiling=f"median of {a.repeats} blocks of {a.steps} steps after {a.warmup} warm-up steps, "
                                   + ('CUDA events' if cuda else 'perf_counter'),
                           covidnext=f"median over epochs 2..{a.epochs} of fit's per-epoch images/s (train_one_epoch: "
                                     "perf_counter from the first step to a final cuda synchronize); epoch 1 is warm-up"),
               epochs=a.epochs, subset=a.subset, steps=a.steps, repeats=a.repeats,
               compile=[('on' if c else 'off') for c in compile_modes], headline_compile=compile_modes[0],
               img_s_seed_style=None, img_s_covidnext=None, img_s_ceiling=None, ratio_vs_ceiling=None,
               ratio_vs_seed=None, notes=[])

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + '\n')

    def ratios():
        for comp in compile_modes:
            tag = '_compiled' if comp else ''
            b, c, s = res.get(f'img_s_covidnext{tag}'), res.get(f'img_s_ceiling{tag}'), res.get('img_s_seed_style')
            res[f'ratio_vs_ceiling{tag}'] = b / c if b and c else None
            res[f'ratio_vs_seed{tag}'] = b / s if b and s else None
        if compile_modes == [True]:                        # only compiled: it is the headline
            for k in ('img_s_covidnext', 'img_s_ceiling', 'ratio_vs_ceiling', 'ratio_vs_seed'): res[k] = res.get(k + '_compiled')
        save()

    print(f"{res['device']}, torch {res['torch']}, {res['mode']}: {a.arch} {size} px, batch {a.batch_size}", flush=True)

    def measure_bc(comp):
        tag = '_compiled' if comp else ''
        b = covidnext(a.cache, a.arch, size, a.batch_size, a.epochs, comp, Path(a.run_dir + tag), a.subset, a.drop_sources)
        res.update({f'img_s_covidnext{tag}': b['img_s'], f'epoch_img_s{tag}': b['epoch_img_s'],
                    f'train_wall_s{tag}': b['train_wall_s'], f'val_macro_f1_last{tag}': b['val_macro_f1_last'],
                    f'fit_timing{tag}': b['fit_timing'], f'epoch_overhead_s{tag}': b['epoch_overhead_s']})
        _free(dev); ratios()
        c = ceiling(a.arch, size, a.batch_size, dev, cuda, True, comp, a.steps, a.repeats, a.warmup)
        res.update({f'img_s_ceiling{tag}': statistics.median(c), f'ceiling_block_img_s{tag}': c})
        _free(dev); ratios()
        print(f"compile {'on' if comp else 'off'}: (b) covidnext {res[f'img_s_covidnext{tag}']:.1f} img/s, "
              f"(c) ceiling {res[f'img_s_ceiling{tag}']:.1f} img/s, b/c {res[f'ratio_vs_ceiling{tag}']:.3f}", flush=True)

    measure_bc(compile_modes[0])
    if not a.skip_checkpoint:
        res['checkpoint'] = checkpoint_wait(a.arch, size, dev, a.repeats, Path(a.run_dir + '_checkpoint'))
        _free(dev); save()
    if a.sources:
        rows, listed = seed_rows(a.cache, a.split_csv, a.sources, a.seed_images, a.drop_sources)
        res['seed_style'] = dict(sources=Path(a.sources).name, images_listed=listed, images_read=len(rows),
                                 by_source=rows.groupby('source').size().to_dict() if len(rows) else {},
                                 workers=workers, sampler='one shuffled stream (no epoch restarts)')
        if len(rows) < a.batch_size:
            res['notes'].append(f"(a) not measured: {len(rows)} of the {listed} listed train images exist under --sources, "
                                f"fewer than a batch")
        else:
            if len(rows) < listed:
                res['notes'].append(f"(a) read {len(rows)} of the {listed} train images (those present under --sources)")
            r = seed_style(rows, a.sources, a.arch, size, a.batch_size, dev, workers, a.steps, a.repeats, a.warmup)
            res.update(img_s_seed_style=statistics.median(r), seed_style_block_img_s=r)
            print(f"(a) seed-style {res['img_s_seed_style']:.1f} img/s ({len(rows)} images, {workers} workers)", flush=True)
            _free(dev)
            # (c) at (a)'s precision and memory format: how far the seed's data pipeline is from its own model's speed
            c32 = ceiling(a.arch, size, a.batch_size, dev, False, False, False, a.steps, a.repeats, a.warmup)
            res.update(img_s_ceiling_fp32=statistics.median(c32), ceiling_fp32_block_img_s=c32,
                       seed_style_vs_fp32_ceiling=res['img_s_seed_style'] / statistics.median(c32))
            print(f"(c) at fp32, contiguous: {res['img_s_ceiling_fp32']:.1f} img/s; (a) reaches "
                  f"{res['seed_style_vs_fp32_ceiling']:.3f} of it", flush=True)
        _free(dev)
    else:
        res['notes'].append('(a) not measured (no --sources): img_s_seed_style and ratio_vs_seed are null')
    ratios()
    for comp in compile_modes[1:]: measure_bc(comp)
    res['complete'] = True
    ratios()
    for comp in compile_modes:
        tag = '_compiled' if comp else ''
        bc, ba, sa = res[f'ratio_vs_ceiling{tag}'], res[f'ratio_vs_seed{tag}'], res['img_s_seed_style']
        print(f"compile {'on' if comp else 'off'}: (b) {res[f'img_s_covidnext{tag}']:.1f}, (c) {res[f'img_s_ceiling{tag}']:.1f}, "
              f"(a) {'-' if sa is None else f'{sa:.1f}'} img/s; b/c {bc:.3f}; b/a {'-' if ba is None else f'{ba:.2f}'}")
    print(f"wrote {out}")
    return res


if __name__ == '__main__':
    main()
