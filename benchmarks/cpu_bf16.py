"""bf16 training steps on the CPU against float32, in the same run: the lever of the cpu profile's `cpu_bf16`.

covidnext's own `train_one_epoch` trains resnet18 at 64 px (the cpu profile's model and size) with the study's batch
(64), AdamW, channels_last and the seed's augmentations on the batch, on uint8 batches drawn once (speed does not
depend on the pixels), torch threads = cores. Each setting runs `--steps` steps after a warm-up epoch, alternating
float32 and bf16 `--repeats` times so that both see the same machine load; the figure is images/s of the median
repeat, and their ratio. Writes reports/benchmarks/cpu_bf16.json. Not a test: figures depend on the machine.

    python benchmarks/cpu_bf16.py
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, time
from pathlib import Path

import torch
from covidnext.augment import AugmentConfig, GpuAugment
from covidnext.model import create_model
from covidnext.train import TrainConfig, train_one_epoch


def one(bf16: bool, steps: int, batch: int, size: int, seed: int = 0) -> float:
    "images/s of `steps` training steps after one warm-up pass."
    torch.manual_seed(seed)
    cfg = TrainConfig.recipe('study', batch_size=batch, size=size, cpu_bf16=bf16, progress=False, device='cpu')
    model = create_model('resnet18', input_size=size).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch * steps, 1, size, size), dtype=torch.uint8)
    y = torch.arange(len(x)) % 4
    aug, loss = GpuAugment(AugmentConfig.seed_plus()), torch.nn.CrossEntropyLoss()
    order = torch.arange(len(x))
    train_one_epoch(model, opt, loss, x[:batch * 2], y[:batch * 2], order[:batch * 2], cfg, 0, aug, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    train_one_epoch(model, opt, loss, x, y, order, cfg, 0, aug, torch.Generator().manual_seed(0))
    return len(x) / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=20, help='timed training steps per repeat')
    p.add_argument('--repeats', type=int, default=3, help='float32 / bf16 pairs, alternating')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--out', default='reports/benchmarks/cpu_bf16.json')
    a = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    runs = {'float32': [], 'bf16': []}
    for _ in range(a.repeats):
        runs['float32'].append(one(False, a.steps, a.batch, a.size)); runs['bf16'].append(one(True, a.steps, a.batch, a.size))
    med = {k: statistics.median(v) for k, v in runs.items()}
    flags = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').is_file() else ''
    res = dict(what='resnet18 training steps (train_one_epoch), 64 px, batch 64, AdamW, channels_last, seed augmentations',
               machine=dict(cores=os.cpu_count(), cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                            avx512_bf16='avx512_bf16' in flags, amx_bf16='amx_bf16' in flags),
               steps=a.steps, repeats=a.repeats, img_s=runs, median_img_s=med, bf16_over_float32=med['bf16'] / med['float32'])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(dict(median_img_s=med, bf16_over_float32=round(res['bf16_over_float32'], 3))))


if __name__ == '__main__':
    main()
