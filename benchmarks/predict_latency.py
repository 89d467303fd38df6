"""Latency of a single-image prediction on the CPU: `covidnext-predict IMAGE --checkpoint CKPT`, model load included.

For each architecture (default: covidnext50 and resnet18 at 224 px), a checkpoint with random weights is written in
exactly the shape `covidnext.train.fit` writes (its `_state`, with an Adam optimizer and the plateau scheduler), then

(a) the command, run as a fresh process `--runs` times after one warm-up run: wall time, median (and min/max);
(b) in a fresh process: the imports, `Predictor.from_checkpoint` (load + build) and `predict` (first and second
    call) timed separately;
(c) the imports of the prediction path by `python -X importtime`: cumulative seconds of the heavy packages;
(d) with onnxruntime installed: the same model exported (`covidnext.export.export_onnx`), run in a fresh process
    that imports no torch (import onnxruntime, load the session, run one preprocessed image), and
(e) the command itself with that `.onnx` model (`covidnext-predict IMAGE --checkpoint model.onnx`), which never
    imports torch: wall time, median of `--runs`.

With `--shipped`, for the model that ships with the package (`models/covidnext.onnx`, `covidnext.infer.default_model`):

(f) one film end to end, `covidnext-predict IMAGE` without `--checkpoint`, as a fresh process (model load included):
    wall time, median of `--runs` after one warm-up run;
(g) with `--films N`, films per second over N real films listed from `--films-from` (a split.csv: its test rows,
    then its train rows; paths under `--sources`, nothing copied), batched (`--batch-size`), in one run for the
    shipped ONNX model and for a PyTorch checkpoint of the same model: `--pt-checkpoint`, else a checkpoint of the
    shipped model's architecture, size, geometry and harmonization with random weights, written as `fit` writes one
    (the same computation, so the same speed). Each is the command as a fresh process writing its CSV, so the figure
    includes start-up, model load, decoding and resizing; `--films-runs` runs of each, the median reported.

The goal is 1.0 s or less for (a). Not a test: figures depend on the machine and on what else runs on it.

    python benchmarks/predict_latency.py --out reports/benchmarks/predict_latency_cpu.json
    python benchmarks/predict_latency.py --archs none --shipped --films 1000 --out reports/benchmarks/predict_shipped_cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CLI = 'import sys; from covidnext.predict import predict_cli; sys.argv[0] = "covidnext-predict"; predict_cli()'  # the console entry point

IN_PROCESS = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from covidnext.predictor import Predictor
import covidnext.model  # what from_checkpoint imports on first use
t2 = time.perf_counter()
p = Predictor.from_checkpoint(sys.argv[1])
t3 = time.perf_counter()
p.predict([sys.argv[2]])
t4 = time.perf_counter()
p.predict([sys.argv[2]])
t5 = time.perf_counter()
print(json.dumps(dict(import_torch_s=t1 - t0, import_rest_s=t2 - t1, load_s=t3 - t2, predict_first_s=t4 - t3,
                      predict_second_s=t5 - t4, threads=torch.get_num_threads())))
'''

ONNX = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np, onnxruntime as ort
t1 = time.perf_counter()
s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])
t2 = time.perf_counter()
p = s.run(['probs'], {'image': np.load(sys.argv[2])})[0]
t3 = time.perf_counter()
print(json.dumps(dict(onnx_import_s=t1 - t0, onnx_session_s=t2 - t1, onnx_run_s=t3 - t2, torch_imported='torch' in sys.modules)))
'''

HEAVY = ('torch', 'torch._dynamo', 'torchvision', 'torchvision.models', 'torchvision.transforms', 'sklearn', 'scipy',
         'pandas', 'matplotlib', 'tensorboard', 'torch.utils.tensorboard', 'PIL.Image', 'numpy', 'pydicom', 'tqdm',
         'fastcore.script', 'covidnext.predict', 'covidnext.predictor', 'covidnext.checkpoint', 'covidnext.infer',
         'covidnext.model', 'covidnext.io')


def make_checkpoint(arch: str, size: int, path: Path, resize_mode: str = 'squash', harmonize: str = 'none') -> Path:
    "A checkpoint of `arch` with random weights, written as `fit` writes one."
    import torch
    from covidnext.model import create_model
    from covidnext.checkpoint import save_checkpoint
    from covidnext.train import TrainConfig, _state, make_optimizer, make_scheduler
    torch.manual_seed(0)
    cfg = TrainConfig.recipe('seed', arch=arch, size=size, resize_mode=resize_mode, harmonize=harmonize, device='cpu', out=str(path.parent))
    model = create_model(arch, input_size=size, harmonize=harmonize)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, 1)
    st = _state(model, opt, sched, cfg, 0, 1, 1, torch.Generator(), [], dict(epoch=0, macro_f1=0.0))
    return save_checkpoint(st, path)


def an_image(folder: Path) -> Path:
    "A real chest X-ray from $COVIDNEXT_SOURCES when there is one, else a synthetic 1024x1024 PNG."
    src = os.environ.get('COVIDNEXT_SOURCES')
    if src and (Path(src) / 'kermany-chest-xray-224').is_dir():
        return sorted((Path(src) / 'kermany-chest-xray-224').rglob('*.jpeg'))[0]
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(folder / 'synthetic.png')
    return folder / 'synthetic.png'


def walls(cmd: list, env, runs: int, warmup: bool = True) -> list:
    "Wall seconds of `runs` runs of `cmd` as a fresh process (after one untimed warm-up run)."
    if warmup: subprocess.run(cmd, capture_output=True, env=env, check=True)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        out.append(time.perf_counter() - t)
    return out


def film_list(split_csv: Path, sources: Path, n: int) -> list:
    "The first `n` films of `split_csv`'s test rows, then its train rows, as paths under `sources` (all must exist)."
    import pandas as pd
    t = pd.read_csv(split_csv)
    t = pd.concat([t[t.split == 'test'], t[t.split == 'train']])
    files = [sources / p for p in t.path[:n]]
    if len(files) < n: raise SystemExit(f"{split_csv}: {len(files)} test and train rows, fewer than --films {n}")
    if missing := [str(f) for f in files if not f.is_file()]:
        raise SystemExit(f"{len(missing)} of the films are missing under {sources}, e.g. {missing[0]}")
    return files


def shipped(a, env, img: Path, d: Path) -> dict:
    "(f) the shipped model on one film, end to end, and (g) films per second for it and for a PyTorch checkpoint of it."
    from covidnext.infer import OnnxPredictor, default_model
    model = default_model()
    op = OnnxPredictor(model)
    mc = json.loads(op.meta.get('model_config') or 'null') or {}
    out = dict(model=os.path.relpath(model), model_mb=round(model.stat().st_size / 2**20, 1), arch=op.meta.get('arch'),
               size=op.size, resize_mode=op.resize_mode, weights=op.meta.get('weights', 'float32'), cam=op.has_cam,
               source_checkpoint=op.meta.get('source_checkpoint'))
    w = walls([sys.executable, '-c', CLI, str(img), '--no-progress'], env, a.runs)
    out.update(cli_wall_median_s=round(statistics.median(w), 3), cli_wall_min_s=round(min(w), 3), cli_wall_max_s=round(max(w), 3))
    print(f"shipped model ({out['arch']}, {out['size']} px, {out['model_mb']} MiB): covidnext-predict IMAGE without --checkpoint "
          f"{out['cli_wall_median_s']:.2f} s median of {a.runs}", flush=True)
    if not a.films: return out
    import numpy as np, pandas as pd
    sources = Path(a.sources or os.environ.get('COVIDNEXT_SOURCES') or '../shared/data')
    files = film_list(Path(a.films_from), sources, a.films)
    for f in files: f.read_bytes()   # the files in the page cache for both models alike
    if a.pt_checkpoint: ck, how = Path(a.pt_checkpoint), 'given'
    else:
        ck = make_checkpoint(mc.get('name') or out['arch'], op.size, d / 'shipped' / 'last.pt', op.resize_mode, mc.get('harmonize', 'none'))
        how = "random weights, the shipped model's architecture, size, geometry and harmonization"
    g = dict(n=len(files), batch_size=a.batch_size, runs=a.films_runs, films_from=os.path.relpath(a.films_from),
             pt_checkpoint=how if not a.pt_checkpoint else os.path.relpath(ck))
    for name, extra in (('onnx', []), ('pytorch', ['--checkpoint', str(ck)])):
        csv_out = d / f'films_{name}.csv'
        cmd = [sys.executable, '-c', CLI, *map(str, files), *extra, '--batch-size', str(a.batch_size), '--no-progress', '--out', str(csv_out)]
        w = walls(cmd, env, a.films_runs, warmup=False)
        rows = pd.read_csv(csv_out)
        if rows.error.notna().any(): raise SystemExit(f"{name}: {int(rows.error.notna().sum())} films failed, e.g. {rows.error.dropna().iloc[0]}")
        g[name] = dict(wall_median_s=round(statistics.median(w), 2), walls_s=[round(x, 2) for x in w],
                       films_s=round(len(files) / statistics.median(w), 2))
        g.setdefault('_probs', {})[name] = rows[[c for c in rows.columns if c.startswith('prob_')]].to_numpy()
    p = g.pop('_probs')
    # the same model's probabilities differ by its float16 weights only; a stand-in checkpoint's are another model's
    g['max_abs_prob_diff'] = float(np.abs(p['onnx'] - p['pytorch']).max()) if a.pt_checkpoint else None
    g['onnx_vs_pytorch_films_s'] = round(g['onnx']['films_s'] / g['pytorch']['films_s'], 2)
    print(f"{len(files)} films, batch {a.batch_size}: shipped ONNX model {g['onnx']['films_s']:.1f} films/s "
          f"({g['onnx']['wall_median_s']:.1f} s), PyTorch checkpoint {g['pytorch']['films_s']:.1f} films/s "
          f"({g['pytorch']['wall_median_s']:.1f} s)" + (f"; max |prob diff| {g['max_abs_prob_diff']:.2g}" if a.pt_checkpoint else ''), flush=True)
    out['films'] = g
    return out


def importtime(env) -> dict:
    "Cumulative import seconds of the heavy modules on the prediction path (`python -X importtime`)."
    r = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'from covidnext.predictor import Predictor; '
                        'import covidnext.model'], capture_output=True, text=True, env=env, check=True)
    cum = {}
    for line in r.stderr.splitlines():
        if not line.startswith('import time:') or '|' not in line: continue
        _, c, name = line.split('|')
        if c.strip().isdigit(): cum[name.strip()] = int(c) / 1e6
    return {k: round(cum[k], 3) for k in HEAVY if k in cum}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', default='covidnext50,resnet18', help='comma-separated architectures')
    p.add_argument('--size', type=int, default=224, help='image side of the checkpoints')
    p.add_argument('--runs', type=int, default=5, help='timed runs of the command per architecture (after one warm-up)')
    p.add_argument('--image', default=None, help='the image to predict (default: a Kermany image, or a synthetic PNG)')
    p.add_argument('--no-onnx', dest='onnx', action='store_false', help='skip (d), the onnxruntime figures')
    p.add_argument('--shipped', action='store_true', help="(f): the shipped model on one film, the command without --checkpoint")
    p.add_argument('--films', type=int, default=0, help='(g), with --shipped: films per second over this many real films (0: skip)')
    p.add_argument('--films-from', default='out/covidx-v1/split.csv', help='(g): the split.csv whose test, then train rows list the films')
    p.add_argument('--sources', default=None, help='(g): the folder the split paths are under (default: $COVIDNEXT_SOURCES, else ../shared/data)')
    p.add_argument('--batch-size', type=int, default=32, help='(g): images per forward pass')
    p.add_argument('--films-runs', type=int, default=1, help='(g): timed runs of each model over the films (the median is reported)')
    p.add_argument('--pt-checkpoint', default=None, help="(g): the PyTorch checkpoint the shipped model was exported from "
                                                         "(default: one of its architecture with random weights)")
    p.add_argument('--out', default=None, help='also write the results as JSON here')
    a = p.parse_args(argv)
    archs = [x for x in a.archs.split(',') if x and x != 'none']
    if a.films and not a.shipped: p.error('--films measures the shipped model: add --shipped')
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    res = dict(machine=dict(python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                            cores=os.cpu_count(), load_avg=os.getloadavg() if hasattr(os, 'getloadavg') else None),
               size=a.size, runs=a.runs, archs={})
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        img = Path(a.image) if a.image else an_image(d)
        res['image'] = img.name
        if a.shipped: res['shipped'] = shipped(a, env, img, d)
        for arch in archs:
            ck = make_checkpoint(arch, a.size, d / arch / 'last.pt')
            cmd = [sys.executable, '-c', CLI, str(img), '--checkpoint', str(ck), '--no-progress']
            subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm-up: file caches
            walls = []
            for _ in range(a.runs):
                t = time.perf_counter()
                subprocess.run(cmd, capture_output=True, env=env, check=True)
                walls.append(time.perf_counter() - t)
            cli_walls = walls
            inproc = json.loads(subprocess.run([sys.executable, '-c', IN_PROCESS, str(ck), str(img)], capture_output=True,
                                               text=True, env=env, check=True).stdout)
            if a.onnx:
                import numpy as np
                from covidnext.predictor import Predictor
                from covidnext.export import export_onnx
                export_onnx(ck, d / arch / 'model.onnx')
                np.save(d / arch / 'x.npy', Predictor.from_checkpoint(ck).preprocess(img)[None, None])
                cmd = [sys.executable, '-c', ONNX, str(d / arch / 'model.onnx'), str(d / arch / 'x.npy')]
                walls = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    o = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)
                    walls.append(time.perf_counter() - t)
                inproc.update(o, onnx_wall_median_s=statistics.median(walls))
                cmd = [sys.executable, '-c', CLI, str(img), '--checkpoint', str(d / arch / 'model.onnx'), '--no-progress']
                subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm-up
                walls = []
                for _ in range(a.runs):
                    t = time.perf_counter()
                    subprocess.run(cmd, capture_output=True, env=env, check=True)
                    walls.append(time.perf_counter() - t)
                inproc.update(cli_onnx_wall_median_s=statistics.median(walls), cli_onnx_wall_min_s=min(walls))
            res['archs'][arch] = dict(checkpoint_mb=round(ck.stat().st_size / 2**20, 1),
                                      cli_wall_median_s=round(statistics.median(cli_walls), 3),
                                      cli_wall_min_s=round(min(cli_walls), 3), cli_wall_max_s=round(max(cli_walls), 3),
                                      **{k: round(v, 3) if isinstance(v, float) else v for k, v in inproc.items()})
            print(f"{arch}: command {res['archs'][arch]['cli_wall_median_s']:.2f} s median of {a.runs}; in process: "
                  f"import torch {inproc['import_torch_s']:.2f} s, other imports {inproc['import_rest_s']:.2f} s, "
                  f"load {inproc['load_s']:.2f} s, predict {inproc['predict_first_s']:.2f} s (first), "
                  f"{inproc['predict_second_s']:.2f} s (second)"
                  + (f"; onnxruntime without torch {inproc['onnx_wall_median_s']:.2f} s; the command with the .onnx model "
                     f"{inproc['cli_onnx_wall_median_s']:.2f} s" if a.onnx else ''), flush=True)
    res['importtime_cumulative_s'] = importtime(env)
    res['python_startup_s'] = round(min(_t([sys.executable, '-c', 'pass'], env) for _ in range(3)), 3)
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


def _t(cmd, env) -> float:
    t = time.perf_counter(); subprocess.run(cmd, capture_output=True, env=env, check=True)
    return time.perf_counter() - t


if __name__ == '__main__':
    main()
