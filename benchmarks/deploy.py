#!/usr/bin/env python3
"""CPU deployment paths in one process, interleaved: fp32 fast path, int8 (torchao), onnxruntime and
OpenVINO, each as a user does it by hand with the library's defaults (the peers) and as fishzoo's export
does it. Batch throughput (img/s) and batch-1 latency (median and p90), as ratios to the fp32 fast path.

    python benchmarks/deploy.py [--quick] [--json out.json] [--markdown docs/deployment.md]

Random weights: these rows are about speed; int8 accuracy on trained models is ``studies/int8_accuracy.py``.
Needs ``pip install 'fishzoo[deploy,onnx]'``. The full run takes about 17 minutes on 2 CPU cores
(compiling and calibrating FishNet-150 is most of it).
"""
import argparse
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import timm
import torch

import fishzoo  # noqa: F401  (registers the models)
from fishzoo.deploy.calibration import LabelledImages
from fishzoo.deploy.export import export_folder, export_onnx
from fishzoo.deploy.fast_path import optimize_for_inference
from fishzoo.deploy.int8_torch import quantize
from fishzoo.deploy.runtime import load_runner, onnx_runner
from fishzoo.info import machine_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import log, publish  # noqa: E402

README_START, README_END = '<!-- deploy-benchmark:start -->', '<!-- deploy-benchmark:end -->'
BASELINE = 'fp32 fast path (optimize_for_inference)'


@dataclass
class Row:
    model: str
    name: str  # what runs, as the table shows it
    by: str  # 'fishzoo' | 'by hand'
    run: Callable[[np.ndarray], object] = field(repr=False)
    setup_seconds: float = 0.0
    throughput: List[float] = field(default_factory=list)  # img/s at the batch size, one per round
    latency_ms: List[float] = field(default_factory=list)  # batch-1 calls, all rounds

    def as_dict(self) -> Dict:
        return dict(model=self.model, name=self.name, by=self.by, setup_seconds=self.setup_seconds,
                    throughput=self.throughput, img_per_s=statistics.median(self.throughput),
                    latency_median_ms=statistics.median(self.latency_ms),
                    latency_p90_ms=float(np.percentile(self.latency_ms, 90)))


def _torch_run(module):
    def run(x: np.ndarray):
        with torch.inference_mode():
            return module(torch.from_numpy(x))
    return run


def _images(n: int, size: int, seed: int) -> LabelledImages:
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return LabelledImages(torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long)), multilabel=False)


def build_rows(name: str, size: int, batch: int, calib_images: int, work: Path) -> List[Row]:
    """Every path for one model; the fp32 fast path first (the baseline).

    The compiled torch paths get one static graph per input shape (dynamo's automatic dynamic shapes off):
    after a second batch size dynamo would otherwise recompile one graph for every batch size, and a user
    serving one batch size gets the static one; the peers' runtimes plan per shape too."""
    torch._dynamo.config.automatic_dynamic_shapes = False
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    calib = _images(calib_images, size, 1)
    x = torch.randn(batch, 3, size, size)
    rows = []

    def add(label: str, by: str, build: Callable[[], Callable]):
        start = time.perf_counter()
        run = build()
        for _ in range(2):  # both shapes compiled / planned before timing (inductor marks the batch dynamic)
            run(x.numpy())
            run(x[:1].numpy())
        rows.append(Row(name, label, by, run, time.perf_counter() - start))
        log(f'  {name}: {label} ({by}) ready in {rows[-1].setup_seconds:.0f} s')

    add(BASELINE, 'fishzoo', lambda: _torch_run(optimize_for_inference(model)))
    add('int8, torchao PT2E + inductor (fishzoo.quantize)', 'fishzoo',
        lambda: _torch_run(quantize(model, calib)))

    # by hand: torch.onnx.export of the model as it is, a default session, quantize_static's defaults
    onnx_path = work / f'{name}.onnx'
    export_onnx(model, onnx_path, (3, size, size))
    add('onnxruntime fp32', 'by hand', lambda: onnx_runner(onnx_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{'pixel_values': b.numpy()} for b in calib.batches(batch)][:4])

        def get_next(self):
            return next(self.items, None)
    onnx_int8 = work / f'{name}-int8.onnx'
    quantize_static(str(onnx_path), str(onnx_int8), Reader())
    add('onnxruntime int8 (quantize_static defaults)', 'by hand', lambda: onnx_runner(onnx_int8))

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ov_model = ov.convert_model(model, example_input=x)
    core = ov.Core()
    add('OpenVINO fp32 (default precision)', 'by hand', lambda: _ov_call(core.compile_model(ov_model, 'CPU')))
    ov_int8 = nncf.quantize(ov_model, nncf.Dataset([b.numpy() for b in calib.batches(batch)][:4]))
    add('OpenVINO int8 (nncf.quantize defaults)', 'by hand', lambda: _ov_call(core.compile_model(ov_int8, 'CPU')))

    # fishzoo's exports, run the way fishzoo predict runs them
    for fmt, int8 in (('onnx', True), ('openvino', False), ('openvino', True)):
        folder = work / f'{name}-{fmt}-{"int8" if int8 else "fp32"}'
        export_folder(model, folder, fmt, (3, size, size), int8=int8, calib_data=calib if int8 else None,
                      verify=False)
        label = f'fishzoo export --format {fmt}' + (' --int8' if int8 else '')
        add(label, 'fishzoo', lambda folder=folder, fmt=fmt: load_runner(folder, fmt))
    return rows


def _ov_call(compiled):
    output = compiled.output(0)
    return lambda x: compiled(x)[output]


def measure_rows(rows: Sequence[Row], batch: int, size: int, rounds: int, min_seconds: float) -> None:
    """Interleaved: each round runs every row for ``min_seconds`` at the batch size, then 10 batch-1 calls."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    one = x[:1].copy()
    for r in range(rounds):
        for row in rows:
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds or n < 2:
                row.run(x)
                n += 1
            row.throughput.append(batch * n / (time.perf_counter() - start))
            for _ in range(10):
                t = time.perf_counter()
                row.run(one)
                row.latency_ms.append(1000 * (time.perf_counter() - t))
        log(f'  round {r + 1}/{rounds} done')


def markdown(result: Dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}; `python3 benchmarks/deploy.py` "
             f"(batch {result['batch']} throughput; batch-1 latency over {result['rounds']} rounds x 10 calls).", '']
    for model, rows in result['models'].items():
        base = next(r for r in rows if r['name'] == BASELINE)
        lines += [f"**{model}** at {rows[0]['size']} px", '',
                  '| path | by | img/s | vs fp32 fast path | batch-1 median ms | p90 ms | vs fp32 median | setup s |',
                  '|---|---|---:|---:|---:|---:|---:|---:|']
        for r in rows:
            lines.append(f"| {r['name']} | {r['by']} | {r['img_per_s']:.1f} | {r['img_per_s'] / base['img_per_s']:.2f} "
                         f"| {r['latency_median_ms']:.1f} | {r['latency_p90_ms']:.1f} "
                         f"| {r['latency_median_ms'] / base['latency_median_ms']:.2f} | {r['setup_seconds']:.0f} |")
        lines.append('')
    lines += ['| target | measured | met |', '|---|---:|---|']
    lines += [f"| {t['target']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |" for t in result['targets']]
    return '\n'.join(lines)


def targets(rows: List[Dict]) -> List[Dict]:
    """The issue's targets on the main model's rows."""
    base = next(r for r in rows if r['name'] == BASELINE)
    int8 = [r for r in rows if r['by'] == 'fishzoo' and 'int8' in r['name']]
    fastest = max(int8, key=lambda r: r['img_per_s'])
    lowest = min(int8, key=lambda r: r['latency_median_ms'])
    ov_hand = next(r for r in rows if r['name'].startswith('OpenVINO int8'))
    ao = next(r for r in rows if 'torchao' in r['name'])
    checks = [
        (f"fastest fishzoo int8 ({fastest['name']}) vs fp32 fast path, >= 3.5",
         fastest['img_per_s'] / base['img_per_s'], 3.5, True),
        ("fastest fishzoo int8 vs OpenVINO int8 by hand, >= 1.0",
         fastest['img_per_s'] / ov_hand['img_per_s'], 1.0, True),
        ('fishzoo.quantize vs fp32 fast path, >= 2.5', ao['img_per_s'] / base['img_per_s'], 2.5, True),
        (f"batch-1 median, lowest fishzoo int8 ({lowest['name']}) / fp32 fast path, <= 0.35",
         lowest['latency_median_ms'] / base['latency_median_ms'], 0.35, False),
    ]
    return [dict(target=t, measured=m, met=(m >= v if higher else m <= v)) for t, m, v, higher in checks]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fishnet_s64 alone, short rounds (a smoke run)')
    parser.add_argument('--json', help='write the measurements here')
    parser.add_argument('--markdown', '--readme', dest='readme', metavar='FILE',
                        help='replace the table between the deploy-benchmark markers in this Markdown file '
                             '(docs/deployment.md)')
    args = parser.parse_args(argv)
    models = [('fishnet_s64', 64)] if args.quick else [('fishnet150', 224), ('fishnet_s64', 64)]
    batch, rounds, min_seconds = (8, 1, 0.5) if args.quick else (8, 3, 3.0)
    result = dict(date=time.strftime('%Y-%m-%d'), machine=machine_summary(), batch=batch, rounds=rounds, models={})
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in models:
            log(f'{name} at {size} px: building every path')
            rows = build_rows(name, size, batch, 32, Path(tmp))
            measure_rows(rows, batch, size, rounds, min_seconds)
            result['models'][name] = [dict(r.as_dict(), size=size) for r in rows]
            del rows
    result['targets'] = targets(result['models'][models[0][0]])
    publish(markdown(result), result, args.json, args.readme, README_START, README_END)
    return 0


if __name__ == '__main__':
    sys.exit(main())
