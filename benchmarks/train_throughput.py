"""Training throughput of covidnext's pipeline against the ceiling of the same model on the same device.

(b) covidnext: `covidnext.train.fit` on a cache (images resident on the device, batched augmentation, bf16 autocast,
    channels_last), real training with validation; its per-epoch images/s after the first (warm-up) epoch.
(c) ceiling: the same model, precision, memory format, optimizer and batch size on random uint8 tensors already on
    the device, no augmentation, timed with CUDA events (median of repeats).
(a) seed-style (optional, `--sources`): the per-image PIL + DataLoader pipeline in fp32, as the seed trained.

Writes a JSON with the figures and their ratios. On a CPU it runs a tiny version (small images, few steps).

    python benchmarks/train_throughput.py --cache .cache/v1-224-squash-XXXX --out reports/benchmarks.json
"""
from __future__ import annotations
import argparse, json, platform, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F


def ceiling(arch: str, size: int, batch: int, dev: torch.device, amp: bool, channels_last: bool, compile: bool,
            steps: int, repeats: int, lr: float = 1e-3) -> float:
    "Images/s of bare training steps on random uint8 images already on the device."
    from covidnext.model import create_model
    from covidnext.train import autocast
    torch.manual_seed(0)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch, input_size=size).to(dev, memory_format=mf).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    run = torch.compile(model) if compile else model
    x = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=dev).contiguous(memory_format=mf)
    y = torch.randint(0, 4, (batch,), device=dev)

    def step():
        with autocast(dev, amp): loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    for _ in range(max(3, steps // 5)): step()
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
    return statistics.median(rates)


def covidnext(cache: str, arch: str, size: int, batch: int, epochs: int, compile: bool, out: Path, subset: int,
              device: str) -> tuple[float, dict]:
    "Median images/s of `fit`'s training epochs after the first, and the run's summary."
    from covidnext.train import TrainConfig, fit
    cfg = TrainConfig(cache=cache, arch=arch, size=size, batch_size=batch, epochs=epochs, compile=compile,
                      out=str(out), progress=False, subset=subset, device=device, log_images=False)
    s = fit(cfg)
    rates = [h['img_s'] for h in s['history'][1:]] or [s['history'][0]['img_s']]
    return statistics.median(rates), s


def seed_style(split_csv: str, sources: str, arch: str, size: int, batch: int, dev: torch.device, workers: int,
               steps: int) -> float:
    "Images/s of the seed's pipeline: per-image decode and v2 transforms in DataLoader workers, fp32."
    import pandas as pd
    from torch.utils.data import DataLoader
    from covidnext.model import create_model
    from covidnext.train import SeedStyleDataset
    tab = pd.read_csv(split_csv); tab = tab[tab.split == 'train']
    dl = DataLoader(SeedStyleDataset(tab, sources, size, True), batch, shuffle=True, num_workers=workers,
                    pin_memory=dev.type == 'cuda', drop_last=True, persistent_workers=workers > 0)
    model = create_model(arch, input_size=size).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    n, t, it = 0, None, iter(dl)
    for i in range(steps + 3):
        try: xb, yb = next(it)
        except StopIteration: it = iter(dl); xb, yb = next(it)
        if i == 3:
            if dev.type == 'cuda': torch.cuda.synchronize(dev)
            t = time.perf_counter()
        loss = F.cross_entropy(model(xb.to(dev, non_blocking=True)), yb.to(dev, non_blocking=True))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if i >= 3: n += len(yb)
    if dev.type == 'cuda': torch.cuda.synchronize(dev)
    return n / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cache', required=True, help='a built cache folder (covidnext-cache)')
    p.add_argument('--arch', default='covidnext50', help='model name')
    p.add_argument('--size', type=int, default=None, help='image side (default: 224 on CUDA, the cache size on CPU)')
    p.add_argument('--batch-size', type=int, default=64, help='images per step')
    p.add_argument('--epochs', type=int, default=4, help='training epochs of (b); the first is warm-up')
    p.add_argument('--subset', type=int, default=0, help='images per split for (b) (0: all)')
    p.add_argument('--steps', type=int, default=50, help='timed steps per repeat of (c)')
    p.add_argument('--repeats', type=int, default=3, help='repeats of (c); the median is reported')
    p.add_argument('--compile', choices=['off', 'on', 'both'], default='off', help='torch.compile for (b) and (c)')
    p.add_argument('--sources', default=None, help='sources folder: also measure (a), the seed-style pipeline')
    p.add_argument('--split-csv', default=None, help='split.csv for (a) (default: the cache index)')
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers of (a) (default: all cores)')
    p.add_argument('--out', default='reports/benchmarks.json', help='JSON output')
    p.add_argument('--run-dir', default='runs/benchmark', help='run folder of (b)')
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev = torch.device('cuda' if cuda else 'cpu')
    meta = json.loads((Path(a.cache) / 'meta.json').read_text())
    size = a.size or meta['size']
    res = dict(device=torch.cuda.get_device_name(dev) if cuda else platform.processor() or 'cpu', torch=torch.__version__,
               python=platform.python_version(), arch=a.arch, size=size, batch_size=a.batch_size, precision='bf16' if cuda else 'fp32',
               channels_last=True, images_in_cache=meta['n'])
    modes = {'off': [False], 'on': [True], 'both': [False, True]}[a.compile]
    for comp in modes:
        tag = '_compiled' if comp else ''
        t0 = time.perf_counter()
        b, s = covidnext(a.cache, a.arch, size, a.batch_size, a.epochs, comp, Path(a.run_dir + tag), a.subset, 'auto')
        res[f'img_s_covidnext{tag}'] = b
        res[f'train_wall_s{tag}'] = time.perf_counter() - t0
        res[f'val_macro_f1_last{tag}'] = s['history'][-1]['val_macro_f1']
        res[f'epoch_img_s{tag}'] = [h['img_s'] for h in s['history']]
        c = ceiling(a.arch, size, a.batch_size, dev, cuda, True, comp, a.steps, a.repeats)
        res[f'img_s_ceiling{tag}'] = c
        res[f'ratio_vs_ceiling{tag}'] = b / c
        print(f"compile={comp}: covidnext {b:.0f} img/s, ceiling {c:.0f} img/s, ratio {b / c:.3f}", flush=True)
    if a.sources:
        import os
        sp = a.split_csv or str(Path(a.cache) / 'index.csv')
        res['img_s_seed_style'] = seed_style(sp, a.sources, a.arch, size, a.batch_size, dev, a.workers or os.cpu_count(), a.steps)
        res['ratio_vs_seed'] = res['img_s_covidnext'] / res['img_s_seed_style']
        print(f"seed-style {res['img_s_seed_style']:.0f} img/s; covidnext/seed {res['ratio_vs_seed']:.2f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
