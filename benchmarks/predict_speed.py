#!/usr/bin/env python3
"""``fishzoo predict`` over a folder against the fast path's batch rate, in one process.

A hub folder of the default job's model (fishnet_s64, one channel, 32 px, 10 classes; random weights: these
rows are about speed) and the embedded digits written as PNG files, repeated to ``--images``; with ``--model``
that model (3 channels, 10 classes) and the digits as RGB PNGs at ``--size``. Rows:

- the fast path (``optimize_for_inference()``, what predict compiles to) on ready tensors at the batch size;
- ``predict(compile=True)``: the rate past its first batch (which compiles), decoding included;
- ``predict(compile=False)``: the folded model, eagerly: what a small folder gets;
- ``predict()`` as it decides for this many images (``compile_pays``), and what the whole run took;
- ``fishzoo predict FOLDER ONE.png`` start-up, a fresh process, wall time.

    python benchmarks/predict_speed.py [--images 8000] [--batch-size 64] [--json F]
    python benchmarks/predict_speed.py --model fishnet150 --size 224 --images 512 --batch-size 32
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import fishzoo  # noqa: F401  (registers the models)
from fishzoo.data import write_digits_folder
from fishzoo.deploy.fast_path import optimize_for_inference
from fishzoo.hub.save import save_pretrained
from fishzoo.info import machine_summary
from fishzoo.predict import compile_pays, expand_images, iter_predictions


def predict_rate(folder: str, images, batch_size: int, compile):
    """(img/s past the first batch, seconds to the first batch, whole seconds)."""
    start = time.perf_counter()
    first = None
    done = 0
    for batch in iter_predictions(folder, images, batch_size=batch_size, compile=compile):
        if first is None:
            first = time.perf_counter()
            first_count = len(batch)
        done += len(batch)
    end = time.perf_counter()
    return (done - first_count) / (end - first), first - start, end - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=8000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--model', help='a timm name instead of the default job\'s model')
    parser.add_argument('--size', type=int, default=224, help='--model: the images\' size')
    parser.add_argument('--json')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix='predict-speed-'))
    try:
        torch.manual_seed(0)
        if args.model:
            model = timm.create_model(args.model, num_classes=10).eval()
            digits = write_digits_folder(work / 'digits', size=args.size, mode='RGB')
        else:
            model = timm.create_model('fishnet_s64', in_chans=1, num_classes=10).eval()
            model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(1, 32, 32), mean=(0.449,), std=(0.226,),
                                        crop_pct=1.0, interpolation='bilinear')
            digits = write_digits_folder(work / 'digits', mode='L')
        folder = str(save_pretrained(model, work / 'model'))
        files = expand_images([digits])
        images = [files[i % len(files)] for i in range(args.images)]
        size = tuple(model.pretrained_cfg['input_size'])
        print(f"# {machine_summary()}\n# {args.model or 'fishnet_s64 (the default job)'}, {args.images} images "
              f"(PNG, {args.size if args.model else 32} px), batch {args.batch_size}")

        fast = optimize_for_inference(model, batch_size=args.batch_size)
        x = torch.randn(args.batch_size, *size)
        for _ in range(3):
            fast(x)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < 5 or calls < 3:
            fast(x)
            calls += 1
        fast_rate = calls * args.batch_size / (time.perf_counter() - start)

        rows = [dict(path=f'optimize_for_inference() ({fast.backend}, {fast.precision}), tensors ready',
                     img_per_s=fast_rate, first_s=None, total_s=None)]
        for label, compile in (('predict(compile=True)', True), ('predict(compile=False)', False),
                               ('predict() (decides)', None)):
            rate, first_s, total_s = predict_rate(folder, images, args.batch_size, compile)
            rows.append(dict(path=label, img_per_s=rate, first_s=first_s, total_s=total_s))
        env = dict(os.environ, HF_HUB_OFFLINE='1')
        start = time.perf_counter()
        subprocess.run([sys.executable, '-m', 'fishzoo.cli', 'predict', folder, files[0]], check=True,
                       capture_output=True, env=env)
        startup = time.perf_counter() - start

        print('\n| path | img/s past the first batch | vs fast path | first batch s | whole run s |')
        print('|---|---:|---:|---:|---:|')
        for row in rows:
            first = f"{row['first_s']:.1f}" if row['first_s'] is not None else '-'
            total = f"{row['total_s']:.1f}" if row['total_s'] is not None else '-'
            print(f"| {row['path']} | {row['img_per_s']:.0f} | {row['img_per_s'] / fast_rate:.2f} | {first} | "
                  f"{total} |")
        print(f'\n`fishzoo predict FOLDER ONE.png` in a fresh process: {startup:.1f} s')
        eager = next(r for r in rows if r['path'].startswith('predict(compile=False)'))
        print(f"compile_pays({args.images}, 1/{eager['img_per_s']:.0f}): "
              f"{compile_pays(args.images, 1 / eager['img_per_s'])}")
        if args.json:
            Path(args.json).write_text(json.dumps(dict(machine=machine_summary(), images=args.images,
                                                       batch=args.batch_size, rows=rows, startup_s=startup),
                                                  indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
