"""Source-breaking augmentation: what its JPEG step costs a training step, before and after it moved onto the device.

`source_aug` (covidnext-train) adds a random resized crop, blur, noise and a JPEG re-compression to the seed's
augmentations. The JPEG step used to be libjpeg through torchvision.io, image by image on the CPU: every step copied
the chosen images to the host, waited for the GPU to finish the work queued before that copy, re-compressed them and
copied them back. It is now a grayscale JPEG round trip in batched tensor ops on the batch's device
(`covidnext.augment.jpeg_batch`). This script measures both in one run, on the same device, images and model:

  seed        the seed's augmentations only (source_aug 0): the reference
  tensor      source_aug P with the JPEG step as covidnext runs it now
  libjpeg     source_aug P with the previous JPEG step (reproduced below as `jpeg_libjpeg`, put in its place)

each twice: the augmentation alone (`augment`), and the augmentation followed by one training step of `--arch`
(bf16 autocast and channels_last on CUDA, Adam), as `train_one_epoch` does (`train`); and for the two JPEG steps,
the step alone on a batch with every other image chosen, at qualities drawn from AugmentConfig's range (`jpeg`). Images: the train split of a
built cache (`--cache`, decoded onto the device once), batches drawn at random from it. After `--warmup` calls,
`--repeats` blocks of `--steps` calls are timed with CUDA events on a GPU (perf_counter on a CPU); the figure is
images/s of the median block. The host's own seconds per call (perf_counter without a final synchronize) are recorded
too: on a GPU they show whether the host waits for the device (libjpeg) or runs ahead of it (tensor).

Writes reports/benchmarks_augment.json on a GPU, reports/benchmarks_augment_cpu.json on a CPU (`--out` overrides).
Not a test: figures depend on the machine and on what else runs on it.

    python benchmarks/augment_throughput.py --cache out/covidx-v1/cache-224-squash-q90
"""
from __future__ import annotations
import argparse, json, statistics, time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, HERE / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def jpeg_libjpeg(x: torch.Tensor, which: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    "The previous `jpeg_batch`: libjpeg (torchvision.io) image by image on the CPU, a copy to the host and back."
    from torchvision.io import encode_jpeg, decode_jpeg
    idx = which.nonzero().flatten().tolist()
    if not idx: return x
    u8 = x.dtype == torch.uint8
    src = (x[idx] if u8 else (x[idx] * 255).round().clamp(0, 255).to(torch.uint8)).cpu()
    dec = torch.stack([decode_jpeg(encode_jpeg(img, quality=int(quality[i]))) for img, i in zip(src, idx)])
    y = x.clone()
    y[idx] = (dec if u8 else dec.to(x.dtype) / 255).to(x.device)
    return y


class jpeg_step:
    "Context: `covidnext.augment` runs its JPEG step with `fn` inside it."
    def __init__(self, fn): self.fn = fn
    def __enter__(self):
        import covidnext.augment as A
        self.old, A.jpeg_batch = A.jpeg_batch, self.fn
    def __exit__(self, *exc):
        import covidnext.augment as A
        A.jpeg_batch = self.old


def host_seconds(call, n: int) -> float:
    "Median host seconds per call over `n` calls, without waiting for the device at the end of each."
    ts = []
    for _ in range(n):
        t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cache', required=True, help="a built cache folder (covidnext-cache); its train split is used")
    ap.add_argument('--arch', default='resnet18', help="the model of the training step (default: the age-shortcut step's)")
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--source-aug', type=float, default=0.5, help="probability of each source-breaking augmentation")
    ap.add_argument('--images', type=int, default=1024, help="train images decoded onto the device and drawn from")
    ap.add_argument('--steps', type=int, default=None, help="calls per timed block (default 50 on CUDA, 3 on a CPU)")
    ap.add_argument('--repeats', type=int, default=3, help="timed blocks; the median is reported")
    ap.add_argument('--warmup', type=int, default=None, help="untimed calls first (default 10 on CUDA, 1 on a CPU)")
    ap.add_argument('--device', default='auto', help="auto (CUDA when available), cuda or cpu")
    ap.add_argument('--out', default=None, help="the JSON (default reports/benchmarks_augment.json on CUDA, "
                                                "reports/benchmarks_augment_cpu.json on a CPU)")
    a = ap.parse_args(argv)
    tt = _load('train_throughput')
    from covidnext.augment import AugmentConfig, GpuAugment
    from covidnext.cache import Cache
    from covidnext.model import create_model
    from covidnext.model import autocast

    dev = torch.device('cuda' if a.device == 'auto' and torch.cuda.is_available() else ('cpu' if a.device == 'auto' else a.device))
    cuda = dev.type == 'cuda'
    steps, warmup = a.steps or (50 if cuda else 3), a.warmup if a.warmup is not None else (10 if cuda else 1)
    out = Path(a.out or ('reports/benchmarks_augment.json' if cuda else 'reports/benchmarks_augment_cpu.json'))
    cache = Cache(a.cache)
    rows = cache.indices('train')[:a.images]
    x = cache.images(rows, device=dev)
    size = x.shape[-1]
    torch.manual_seed(0)
    mf = torch.channels_last if cuda else torch.contiguous_format
    model = create_model(a.arch, input_size=size).to(dev, memory_format=mf).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.randint(0, 4, (a.batch_size,), device=dev)
    gen = torch.Generator().manual_seed(0)
    pick = torch.Generator(device=dev).manual_seed(1)

    res = dict(tt.machine(dev), cache=Path(a.cache).name, images=len(rows), size=size, arch=a.arch, batch=a.batch_size,
               source_aug=a.source_aug, steps=steps, repeats=a.repeats, warmup=warmup, results={}, complete=False)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + '\n')

    import covidnext.augment as A
    variants = [('seed', AugmentConfig(), A.jpeg_batch), ('tensor', AugmentConfig.seed_plus(a.source_aug), A.jpeg_batch),
                ('libjpeg', AugmentConfig.seed_plus(a.source_aug), jpeg_libjpeg)]
    for name, cfg, fn in variants:
        aug = GpuAugment(cfg)

        def augment():
            idx = torch.randint(0, len(x), (a.batch_size,), generator=pick, device=dev)
            return aug(x[idx], generator=gen)

        def train():
            xb = augment().contiguous(memory_format=mf)
            with autocast(dev, cuda): loss = F.cross_entropy(model(xb).float(), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

        which = torch.arange(a.batch_size) % 2 == 0
        quality = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (a.batch_size,), generator=torch.Generator().manual_seed(2))
        xj = x[:a.batch_size]

        def jpeg():
            return fn(xj, which, quality)

        r = {}
        with jpeg_step(fn):
            for kind, call in (('jpeg', jpeg), ('augment', augment), ('train', train)):
                if kind == 'jpeg' and name == 'seed': continue
                blocks = tt.time_blocks(call, steps, a.repeats, a.batch_size, dev, warmup)
                if cuda: torch.cuda.synchronize(dev)
                host = host_seconds(call, steps)
                if cuda: torch.cuda.synchronize(dev)
                r[kind] = dict(img_s=round(statistics.median(blocks), 1), blocks=[round(b, 1) for b in blocks],
                               host_ms_per_call=round(host * 1000, 3))
                print(f"{name:8s} {kind:8s} {r[kind]['img_s']:10.1f} img/s   host {r[kind]['host_ms_per_call']:8.3f} ms/call",
                      flush=True)
        res['results'][name] = r
        save()
    R = res['results']
    res['train_tensor_vs_libjpeg'] = round(R['tensor']['train']['img_s'] / R['libjpeg']['train']['img_s'], 3)
    res['train_tensor_vs_seed'] = round(R['tensor']['train']['img_s'] / R['seed']['train']['img_s'], 3)
    res['train_libjpeg_vs_seed'] = round(R['libjpeg']['train']['img_s'] / R['seed']['train']['img_s'], 3)
    res['jpeg_tensor_vs_libjpeg'] = round(R['tensor']['jpeg']['img_s'] / R['libjpeg']['jpeg']['img_s'], 3)
    res['complete'] = True
    save()
    print(f"training step with source_aug {a.source_aug}: tensor JPEG / libjpeg = {res['train_tensor_vs_libjpeg']}; "
          f"against the seed's augmentations alone: tensor {res['train_tensor_vs_seed']}, libjpeg "
          f"{res['train_libjpeg_vs_seed']}; written to {out}")
    return res


if __name__ == '__main__':
    main()
