"""Latency of a single-image prediction on the CPU: `covidnext-predict IMAGE --checkpoint CKPT`, model load included.

For each architecture (default: covidnext50 and resnet18 at 224 px), a checkpoint with random weights is written in
exactly the shape `covidnext.train.fit` writes (its `_state`, with an Adam optimizer and the plateau scheduler), then

(a) the command, run as a fresh process `--runs` times after one warm-up run: wall time, median (and min/max);
(b) in a fresh process: the imports, `Predictor.from_checkpoint` (load + build) and `predict` (first and second
    call) timed separately;
(c) the imports of the prediction path by `python -X importtime`: cumulative seconds of the heavy packages;
(d) with onnxruntime installed: the same model exported (`covidnext.predict.export_onnx`), run in a fresh process
    that imports no torch (import onnxruntime, load the session, run one preprocessed image), and
(e) the command itself with that `.onnx` model (`covidnext-predict IMAGE --checkpoint model.onnx`), which never
    imports torch: wall time, median of `--runs`.

The goal is 1.0 s or less for (a). Not a test: figures depend on the machine and on what else runs on it.

    python benchmarks/predict_latency.py --out reports/benchmarks/predict_latency_cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CLI = 'import sys; from covidnext.command import predict_cli; sys.argv[0] = "covidnext-predict"; predict_cli()'  # the console entry point

IN_PROCESS = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from covidnext.predict import Predictor
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
         'fastcore.script', 'covidnext.command', 'covidnext.predict', 'covidnext.checkpoint', 'covidnext.infer',
         'covidnext.model', 'covidnext.io')


def make_checkpoint(arch: str, size: int, path: Path) -> Path:
    "A checkpoint of `arch` with random weights, written as `fit` writes one."
    import torch
    from covidnext.model import create_model
    from covidnext.checkpoint import save_checkpoint
    from covidnext.train import TrainConfig, _state, make_optimizer, make_scheduler
    torch.manual_seed(0)
    cfg = TrainConfig(arch=arch, size=size, device='cpu', out=str(path.parent))
    model = create_model(arch, input_size=size)
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


def importtime(env) -> dict:
    "Cumulative import seconds of the heavy modules on the prediction path (`python -X importtime`)."
    r = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'from covidnext.predict import Predictor; '
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
    p.add_argument('--out', default=None, help='also write the results as JSON here')
    a = p.parse_args(argv)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    res = dict(machine=dict(python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                            cores=os.cpu_count(), load_avg=os.getloadavg() if hasattr(os, 'getloadavg') else None),
               size=a.size, runs=a.runs, archs={})
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        img = Path(a.image) if a.image else an_image(d)
        res['image'] = img.name
        for arch in a.archs.split(','):
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
                from covidnext.predict import Predictor, export_onnx
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
