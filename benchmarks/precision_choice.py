#!/usr/bin/env python3
"""What 'auto' picks on this CPU, and whether it was the right pick: the precision probe's figure and decision
for each model, then the one-call fast path with no options (which measures torch against OpenVINO where it is
installed and keeps the faster) against torch's fp32 and bf16 fast paths and against OpenVINO's
``compile_model`` defaults (the peer a user reaches for by hand), batch 8 throughput in one process,
interleaved rounds, as ratios to the fp32 fast path. The training step likewise: the probe's decision for
``fishzoo-train --mixed-precision auto`` against fp32 and bf16 SGD steps.

    python benchmarks/precision_choice.py [--models fishnet150 mobilenetv2_dual_100] [--rounds 3] [--json F]

Random weights (the rows are about speed); bf16's accuracy is ``studies/precision.py``. The probe's cache is
bypassed (a fresh one in a temporary folder) so the figure is measured in this run. About 3 minutes per model
on 2 CPU cores, most of it compiling.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import timm
import torch

import fishzoo  # noqa: F401  (registers the models)
from fishzoo import precision
from fishzoo.deploy.fast_path import optimize_for_inference
from fishzoo.info import machine_summary
from fishzoo.precision_probe import ProbeWork, bf16_speedup


def rate(run, x, seconds: float = 2.0) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 2:
        run(x)
        calls += 1
    return calls * x.shape[0] / (time.perf_counter() - start)


def openvino_defaults(model, x):
    try:
        import openvino as ov
    except ImportError:
        return None, None
    from fishzoo.deploy.openvino import compiled_precision, export_openvino
    compiled = ov.Core().compile_model(export_openvino(model, tuple(x.shape[1:])), 'CPU')
    request = compiled.create_infer_request()
    return (lambda batch: request.infer({0: batch.numpy()})), compiled_precision(compiled)


def inference_rows(name: str, batch: int, rounds: int):
    model = timm.create_model(name).eval()
    size = tuple(model.pretrained_cfg['input_size'])
    x = torch.randn(batch, *size)
    start = time.perf_counter()
    speedup = bf16_speedup(ProbeWork(model, size, batch=batch))
    probe_s = time.perf_counter() - start
    start = time.perf_counter()
    auto = optimize_for_inference(model)  # measures torch against OpenVINO where OpenVINO is installed
    choice_s = time.perf_counter() - start
    paths = {f'optimize_for_inference() (auto: {auto.backend}, {auto.precision})': auto,
             "optimize_for_inference(precision='fp32', backend='torch')":
                 optimize_for_inference(model, precision='fp32', backend='torch'),
             "optimize_for_inference(precision='bf16', backend='torch')":
                 optimize_for_inference(model, precision='bf16', backend='torch')}
    ov_run, ov_precision = openvino_defaults(model, x)
    if ov_run is not None:
        paths[f'OpenVINO compile_model, defaults ({ov_precision})'] = ov_run
    for run in paths.values():  # compile and warm up
        run(x)
        run(x)
    rates = {key: [] for key in paths}
    for _ in range(rounds):
        for key, run in paths.items():
            rates[key].append(rate(run, x))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    base = medians["optimize_for_inference(precision='fp32', backend='torch')"]
    return dict(model=name, input=list(size), batch=batch, probe=speedup.describe() if speedup else 'no bf16',
                probe_seconds=round(probe_s, 1), auto=f'{auto.backend}, {auto.precision}',
                backend_reason=getattr(auto, 'reason', 'torch'), choice_seconds=round(choice_s, 1),
                rows=[dict(path=key, img_per_s=round(v, 1), vs_fp32=round(v / base, 2)) for key, v in medians.items()])


def training_rows(name: str, batch: int, rounds: int):
    model = timm.create_model(name, num_classes=10)
    size = tuple(model.pretrained_cfg['input_size'])
    work = ProbeWork(model, size, batch=batch, training=True)
    decided = precision.for_training('auto', 'cpu', work=work, log=False)
    x, y = torch.randn(batch, *size), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()

    def step(dtype):
        def run(_):
            with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run
    paths = {'SGD step fp32': step(None), 'SGD step bf16 autocast': step(torch.bfloat16)}
    for run in paths.values():
        run(x)
    rates = {key: [] for key in paths}
    for _ in range(rounds):
        for key, run in paths.items():
            rates[key].append(rate(run, x, seconds=3.0))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    base = medians['SGD step fp32']
    return dict(model=name, input=list(size), batch=batch, auto=decided.compute, probe=decided.reason,
                rows=[dict(path=key, img_per_s=round(v, 1), vs_fp32=round(v / base, 2)) for key, v in medians.items()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['fishnet150', 'mobilenetv2_dual_100'])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--no-training', action='store_true')
    parser.add_argument('--json', help='write the measurements here')
    args = parser.parse_args()
    os.environ['FISHZOO_PRECISION_PROBE'] = 'on'
    os.environ['FISHZOO_CACHE'] = tempfile.mkdtemp(prefix='fishzoo-probe-')  # measured in this run
    print(f'# {machine_summary()}')
    results = []
    for name in args.models:
        result = inference_rows(name, args.batch, args.rounds)
        results.append(result)
        print(f"\n{name} inference, batch {args.batch} at {result['input'][1]} px; probe "
              f"({result['probe_seconds']} s): {result['probe']} -> auto = {result['auto']}; runtime: "
              f"{result['backend_reason']} (the call took {result['choice_seconds']} s)")
        print('| path | img/s | vs fp32 |\n|---|---:|---:|')
        for row in result['rows']:
            print(f"| {row['path']} | {row['img_per_s']} | {row['vs_fp32']:.2f} |")
        if not args.no_training:
            result = training_rows(name, 16, args.rounds)
            results.append(result)
            print(f"\n{name} training step, batch 16 at {result['input'][1]} px: {result['probe']} -> "
                  f"--mixed-precision auto = {result['auto']}")
            print('| step | img/s | vs fp32 |\n|---|---:|---:|')
            for row in result['rows']:
                print(f"| {row['path']} | {row['img_per_s']} | {row['vs_fp32']:.2f} |")
        sys.stdout.flush()
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine_summary(), results=results), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
