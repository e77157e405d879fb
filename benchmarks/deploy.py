#!/usr/bin/env python3
"""CPU deployment paths in one process, interleaved: the fast path in fp32 and in fishzoo's auto precision,
torch bf16 by hand, int8 (torchao), onnxruntime and OpenVINO, each as a user does it by hand with the
library's defaults (the peers; OpenVINO's ``compile_model`` defaults run bf16 on CPUs with bf16 units) and as
fishzoo's export does it. Batch throughput (img/s) and batch-1 latency (median and p90), as ratios to the
fp32 fast path; the CPU's features head the table, and the convolution kernels the int8 and 16-bit paths
ran (AMX tiles or not) are named from oneDNN's verbose output and OpenVINO's per-layer profile.

    python benchmarks/deploy.py [--quick] [--models fishnet150 ...] [--json out.json] [--markdown docs/deployment.md]
    python benchmarks/deploy.py --mobile [--json out.json] [--markdown docs/deployment.md]

``--mobile`` measures the phone runtimes on this CPU instead: batch-1 latency (median, p90) of ExecuTorch and
LiteRT, fp32 and int8, as ``fishzoo export`` writes them, against the torch eager model and the fp32 fast
path, for mobilenetv2_dual_050 at 224 and fishnet_s64 at 64 (about 15 minutes; needs
``pip install 'fishzoo[deploy,mobile,litert]'``).

Random weights: these rows are about speed; int8 accuracy on trained models is ``studies/int8_accuracy.py``,
bf16 accuracy ``studies/precision.py``. Needs ``pip install 'fishzoo[deploy,onnx]'``. The full run takes
about 40 minutes on 2 CPU cores (compiling and calibrating FishNet-150 is most of it).
"""
import argparse
import copy
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
from fishzoo.cpu_features import cpu_features
from fishzoo.deploy.calibration import LabelledImages
from fishzoo.deploy.export import export_folder
from fishzoo.deploy.fast_path import optimize_for_inference, select_fast_path
from fishzoo.deploy.formats import load_runner
from fishzoo.deploy.int8_torch import quantize
from fishzoo.deploy.onnx import export_onnx
from fishzoo.deploy.onnx import runner as onnx_runner
from fishzoo.deploy.openvino import compiled_precision
from fishzoo.info import machine_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import describe_kernels, log, onednn_conv_kernels, openvino_conv_kernels, publish  # noqa: E402

README_START, README_END = '<!-- deploy-benchmark:start -->', '<!-- deploy-benchmark:end -->'
BASELINE = "optimize_for_inference(precision='fp32')"
AUTO = 'optimize_for_inference() (auto: {})'
TORCH_AUTO = "optimize_for_inference(backend='torch') ({})"
BF16_HAND = 'torch.compile + autocast bf16, channels_last'
OV_DEFAULTS = 'OpenVINO compile_model, defaults ({})'
OV_INT8_HAND = 'OpenVINO int8 (nncf.quantize defaults)'
MODELS = {'fishnet150': 224, 'mobilenetv2_dual_100': 224, 'fishnet_s64': 64}
MOBILE_MODELS = {'mobilenetv2_dual_050': 224, 'fishnet_s64': 64}
MOBILE_START, MOBILE_END = '<!-- mobile-benchmark:start -->', '<!-- mobile-benchmark:end -->'
EAGER = 'torch eager (model.eval(), fp32)'


@dataclass
class Row:
    model: str
    name: str  # what runs, as the table shows it
    by: str  # 'fishzoo' | 'by hand'
    run: Callable[[np.ndarray], object] = field(repr=False)
    setup_seconds: float = 0.0
    kernels: str = '-'  # the convolution kernels it ran: 'AMX 150/150 conv', or the ISA
    throughput: List[float] = field(default_factory=list)  # img/s at the batch size, one per round
    latency_ms: List[float] = field(default_factory=list)  # batch-1 calls, all rounds

    def as_dict(self) -> Dict:
        return dict(model=self.model, name=self.name, by=self.by, setup_seconds=self.setup_seconds,
                    kernels=self.kernels, throughput=self.throughput,
                    img_per_s=statistics.median(self.throughput) if self.throughput else None,
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

    def add(label: str, by: str, build: Callable[[], Callable], kernels: Optional[Callable[[Callable], str]] = None):
        start = time.perf_counter()
        run = build()
        for _ in range(2):  # both shapes compiled / planned before timing (inductor marks the batch dynamic)
            run(x.numpy())
            run(x[:1].numpy())
        rows.append(Row(name, label, by, run, time.perf_counter() - start))
        if kernels is not None:
            rows[-1].kernels = kernels(run)
        log(f'  {name}: {label} ({by}) ready in {rows[-1].setup_seconds:.0f} s; conv kernels: {rows[-1].kernels}')

    def torch_kernels(run):
        return describe_kernels(onednn_conv_kernels(lambda: run(x.numpy())))

    add(BASELINE, 'fishzoo', lambda: _torch_run(optimize_for_inference(model, precision='fp32')), torch_kernels)
    auto = optimize_for_inference(model)  # on first use per machine it measures torch against OpenVINO
    add(AUTO.format(f'{auto.backend}, {auto.precision}'), 'fishzoo', lambda: _torch_run(auto),
        torch_kernels if auto.backend == 'torch' else None)
    if auto.backend != 'torch':
        add(TORCH_AUTO.format(select_fast_path('cpu').precision), 'fishzoo',
            lambda: _torch_run(optimize_for_inference(model, backend='torch')), torch_kernels)
    add(BF16_HAND, 'by hand', lambda: _torch_bf16(model), torch_kernels)
    add('int8, torchao PT2E + inductor (fishzoo.quantize)', 'fishzoo',
        lambda: _torch_run(quantize(model, calib)), torch_kernels)

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

    def ov_kernels(ov_model, config=None):
        return lambda run: describe_kernels(openvino_conv_kernels(ov_model, x.numpy(), config))
    ov_default = compiled_precision(core.compile_model(ov_model, 'CPU'))
    add(OV_DEFAULTS.format(f'{ov_default} here'), 'by hand', lambda: _ov_call(core.compile_model(ov_model, 'CPU')),
        ov_kernels(ov_model))
    f32 = {'INFERENCE_PRECISION_HINT': 'f32'}
    add('OpenVINO f32 (INFERENCE_PRECISION_HINT f32)', 'by hand',
        lambda: _ov_call(core.compile_model(ov_model, 'CPU', f32)), ov_kernels(ov_model, f32))
    ov_int8 = nncf.quantize(ov_model, nncf.Dataset([b.numpy() for b in calib.batches(batch)][:4]))
    add(OV_INT8_HAND, 'by hand', lambda: _ov_call(core.compile_model(ov_int8, 'CPU')), ov_kernels(ov_int8))

    # fishzoo's exports, run the way fishzoo predict runs them
    for fmt, int8 in (('onnx', True), ('openvino', False), ('openvino', True)):
        folder = work / f'{name}-{fmt}-{"int8" if int8 else "fp32"}'
        export_folder(model, folder, fmt, (3, size, size), int8=int8, calib_data=calib if int8 else None,
                      verify=False)
        label = f'fishzoo export --format {fmt}' + (' --int8' if int8 else ' (runs in OpenVINO\'s default)'
                                                      if fmt == 'openvino' else '')
        kernels = ov_kernels(core.read_model(str(folder / 'openvino_model.xml'))) if fmt == 'openvino' else None
        add(label, 'fishzoo', lambda folder=folder, fmt=fmt: load_runner(folder, fmt), kernels)
    return rows


def _torch_bf16(model):
    """What a torch user writes for bf16 on the CPU: channels_last, torch.compile, autocast (no folding,
    no freezing)."""
    compiled = torch.compile(copy.deepcopy(model).to(memory_format=torch.channels_last))

    def run(x: np.ndarray):
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            return compiled(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float()
    return run


def _ov_call(compiled):
    output = compiled.output(0)
    return lambda x: compiled(x)[output]


def measure_rows(rows: Sequence[Row], batch: int, size: int, rounds: int, min_seconds: float) -> None:
    """Interleaved: each round runs every row for ``min_seconds`` at the batch size, then 10 batch-1 calls."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    one = x[:1].copy()
    # warm every row again first: torchao's convert_pt2e (fishzoo.quantize) resets dynamo's caches, so the
    # torch rows built before it recompile at their next call, which must not land in a timed round
    for row in rows:
        row.run(x)
        row.run(one)
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
             f"(batch {result['batch']} throughput; batch-1 latency over {result['rounds']} rounds x 10 calls). "
             f"CPU features: {result['cpu_features']}.", '']
    for model, rows in result['models'].items():
        base = next(r for r in rows if r['name'] == BASELINE)
        lines += [f"**{model}** at {rows[0]['size']} px", '',
                  '| path | by | img/s | vs fp32 fast path | batch-1 median ms | p90 ms | vs fp32 median | '
                  'conv kernels | setup s |',
                  '|---|---|---:|---:|---:|---:|---:|---|---:|']
        for r in rows:
            lines.append(f"| {r['name']} | {r['by']} | {r['img_per_s']:.1f} | {r['img_per_s'] / base['img_per_s']:.2f} "
                         f"| {r['latency_median_ms']:.1f} | {r['latency_p90_ms']:.1f} "
                         f"| {r['latency_median_ms'] / base['latency_median_ms']:.2f} | {r.get('kernels', '-')} "
                         f"| {r['setup_seconds']:.0f} |")
        lines.append('')
    lines += ['| target | measured | met |', '|---|---:|---|']
    lines += [f"| {t['target']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |" for t in result['targets']]
    return '\n'.join(lines)


def targets(rows: List[Dict]) -> List[Dict]:
    """The issue's targets on the main model's rows: the one call at least as fast as every other float path,
    int8 against the peers."""
    def row(prefix):
        return next(r for r in rows if r['name'].startswith(prefix))
    base = row(BASELINE)
    auto = row(AUTO.split('(auto')[0])
    int8 = [r for r in rows if r['by'] == 'fishzoo' and 'int8' in r['name']]
    fastest = max(int8, key=lambda r: r['img_per_s'])
    lowest = min(int8, key=lambda r: r['latency_median_ms'])
    ov_hand, ov_default = row(OV_INT8_HAND), row(OV_DEFAULTS.split('(')[0])
    ao = row('int8, torchao')
    checks = [
        (f"fastest fishzoo int8 ({fastest['name']}) vs OpenVINO int8 by hand, >= 1.2",
         fastest['img_per_s'] / ov_hand['img_per_s'], 1.2, True),
        ("fastest fishzoo int8 vs fp32 fast path, >= 3.5", fastest['img_per_s'] / base['img_per_s'], 3.5, True),
        ('fishzoo.quantize vs fp32 fast path, >= 2.5', ao['img_per_s'] / base['img_per_s'], 2.5, True),
        (f"batch-1 median, lowest fishzoo int8 ({lowest['name']}) / fp32 fast path, <= 0.35",
         lowest['latency_median_ms'] / base['latency_median_ms'], 0.35, False),
    ]
    # the one call with no options against the best of the other ways to run the float model
    best = max((base, row(BF16_HAND), ov_default), key=lambda r: r['img_per_s'])
    checks.insert(0, (f"optimize_for_inference() auto vs the best float path ({best['name']}), >= 1.0",
                      auto['img_per_s'] / best['img_per_s'], 1.0, True))
    return [dict(target=t, measured=m, met=(m >= v if higher else m <= v)) for t, m, v, higher in checks]


def build_mobile_rows(name: str, size: int, calib_images: int, work: Path) -> List[Row]:
    """The phone runtimes' exports, fp32 and int8 (calibrated on random images: these rows are about speed),
    and the two torch rows they are measured against."""
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    calib = _images(calib_images, size, 1)
    one = torch.randn(1, 3, size, size).numpy()
    rows = []

    def add(label: str, by: str, build: Callable[[], Callable], note: str = '-'):
        start = time.perf_counter()
        run = build()
        for _ in range(3):
            run(one)
        rows.append(Row(name, label, by, run, time.perf_counter() - start, kernels=note))
        log(f'  {name}: {label} ready in {rows[-1].setup_seconds:.0f} s ({note})')

    add(EAGER, 'by hand', lambda: _torch_run(model))
    add(BASELINE, 'fishzoo', lambda: _torch_run(optimize_for_inference(model, precision='fp32')))
    for fmt, runtime in (('executorch', 'ExecuTorch'), ('litert', 'LiteRT')):
        for int8 in (False, True):
            folder = work / f'{name}-{fmt}-{"int8" if int8 else "fp32"}'
            record = export_folder(model, folder, fmt, (3, size, size), int8=int8, calib_data=calib if int8 else None,
                                   verify=False)
            outside = record['ops_outside_delegate']
            note = 'all ops in XNNPACK' if not outside else f'{sum(outside.values())} ops outside XNNPACK'
            add(f'{runtime} {"int8" if int8 else "fp32"} (fishzoo export --format {fmt}{" --int8" if int8 else ""})',
                'fishzoo', lambda folder=folder, fmt=fmt: load_runner(folder, fmt), note)
    return rows


def measure_latency(rows: Sequence[Row], size: int, rounds: int, min_seconds: float) -> None:
    """Interleaved: each round makes batch-1 calls of every row for ``min_seconds``."""
    one = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    for row in rows:  # convert_pt2e resets dynamo: the compiled fast path compiles again here, untimed
        row.run(one)
    for r in range(rounds):
        for row in rows:
            start = time.perf_counter()
            while time.perf_counter() - start < min_seconds:
                t = time.perf_counter()
                row.run(one)
                row.latency_ms.append(1000 * (time.perf_counter() - t))
        log(f'  round {r + 1}/{rounds} done')


def mobile_markdown(result: Dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}; `python3 benchmarks/deploy.py --mobile` "
             f"(batch-1 calls, {result['rounds']} interleaved rounds of {result['min_seconds']:g} s per path; "
             f"{result['threads']} threads each). CPU features: {result['cpu_features']}.", '']
    for model, rows in result['models'].items():
        eager = next(r for r in rows if r['name'] == EAGER)
        base = next(r for r in rows if r['name'] == BASELINE)
        lines += [f"**{model}** at {rows[0]['size']} px", '',
                  '| path | by | batch-1 median ms | p90 ms | vs torch eager | vs fp32 fast path | delegate |',
                  '|---|---|---:|---:|---:|---:|---|']
        for r in rows:
            lines.append(f"| {r['name']} | {r['by']} | {r['latency_median_ms']:.2f} | {r['latency_p90_ms']:.2f} "
                         f"| {r['latency_median_ms'] / eager['latency_median_ms']:.2f} "
                         f"| {r['latency_median_ms'] / base['latency_median_ms']:.2f} | {r.get('kernels', '-')} |")
        lines.append('')
    lines += ['| target | measured | met |', '|---|---:|---|']
    lines += [f"| {t['target']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |" for t in result['targets']]
    return '\n'.join(lines)


def mobile_targets(models: Dict[str, List[Dict]]) -> List[Dict]:
    """#26's targets, per model: ExecuTorch int8 at most 0.5x ExecuTorch fp32, fp32 at most 1.0x torch eager."""
    checks = []
    for model, rows in models.items():
        def median(prefix, rows=rows):
            return next(r['latency_median_ms'] for r in rows if r['name'].startswith(prefix))
        et_fp32, et_int8 = median('ExecuTorch fp32'), median('ExecuTorch int8')
        checks += [(f'{model}: ExecuTorch int8 / ExecuTorch fp32 batch-1 median, <= 0.5', et_int8 / et_fp32, 0.5),
                   (f'{model}: ExecuTorch fp32 / torch eager batch-1 median, <= 1.0', et_fp32 / median(EAGER), 1.0)]
    return [dict(target=t, measured=m, met=m <= v) for t, m, v in checks]


def main_mobile(args) -> int:
    rounds, min_seconds = args.rounds or 5, 2.0
    result = dict(date=time.strftime('%Y-%m-%d'), machine=machine_summary(), cpu_features=cpu_features().summary(),
                  rounds=rounds, min_seconds=min_seconds, threads=torch.get_num_threads(), models={})
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in MOBILE_MODELS.items():
            log(f'{name} at {size} px: exporting for the phone runtimes')
            rows = build_mobile_rows(name, size, 32, Path(tmp))
            measure_latency(rows, size, rounds, min_seconds)
            result['models'][name] = [dict(r.as_dict(), size=size) for r in rows]
    result['targets'] = mobile_targets(result['models'])
    publish(mobile_markdown(result), result, args.json, args.readme, MOBILE_START, MOBILE_END)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fishnet_s64 alone, short rounds (a smoke run)')
    parser.add_argument('--mobile', action='store_true',
                        help='ExecuTorch and LiteRT batch-1 latency against torch eager and the fp32 fast path')
    parser.add_argument('--models', nargs='+', choices=sorted(MODELS), help=f'default: {" ".join(MODELS)}')
    parser.add_argument('--rounds', type=int, help='measurement rounds (default 3; --quick 1)')
    parser.add_argument('--json', help='write the measurements here')
    parser.add_argument('--markdown', '--readme', dest='readme', metavar='FILE',
                        help='replace the table between the deploy-benchmark markers in this Markdown file '
                             '(docs/deployment.md)')
    args = parser.parse_args(argv)
    if args.mobile:
        return main_mobile(args)
    names = ['fishnet_s64'] if args.quick else args.models or list(MODELS)
    batch, rounds, min_seconds = (8, 1, 0.5) if args.quick else (8, 3, 3.0)
    rounds = args.rounds or rounds
    features = cpu_features()
    result = dict(date=time.strftime('%Y-%m-%d'), machine=machine_summary(), cpu_features=features.summary(),
                  batch=batch, rounds=rounds, models={})
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            size = MODELS[name]
            log(f'{name} at {size} px: building every path')
            rows = build_rows(name, size, batch, 32, Path(tmp))
            measure_rows(rows, batch, size, rounds, min_seconds)
            result['models'][name] = [dict(r.as_dict(), size=size) for r in rows]
            del rows
    result['targets'] = targets(result['models'][names[0]])
    publish(markdown(result), result, args.json, args.readme, README_START, README_END)
    return 0


if __name__ == '__main__':
    sys.exit(main())
