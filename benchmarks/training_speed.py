#!/usr/bin/env python3
"""Training speed on the CPU.

The default: the default training recipe (embedded digits) for 10 epochs, img/s and seconds per epoch, so a
run that slows down epoch after epoch shows at once. ``--steps``: one training step (SGD, channels_last,
eager) of FishNet-150 and the dual MobileNetV2 at 224 px in fp32 and in bf16 autocast (what
``--mixed-precision`` gives), interleaved in one process, as img/s and the bf16/fp32 ratio, with the CPU's
features and what ``--mixed-precision auto`` picks for each model here (the precision probe's measured
training step, :mod:`fishzoo.precision_probe`, cached per machine).

    python benchmarks/training_speed.py [--epochs 10] [--json out.json] [-- extra fishzoo-train flags]
    python benchmarks/training_speed.py --steps [--models fishnet150 mobilenetv2_dual_100] [--markdown FILE]
"""
import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch

import fishzoo  # noqa: F401  (registers the models)
from fishzoo.cpu_features import cpu_features
from fishzoo.info import machine_summary
from fishzoo.precision import cpu_auto
from fishzoo.precision_probe import ProbeWork
from fishzoo.train import main as train_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import publish  # noqa: E402

STEPS_START, STEPS_END = '<!-- training-steps:start -->', '<!-- training-steps:end -->'


def train_benchmark(epochs: int = 10, output_dir: Optional[str] = None, extra_args: Sequence[str] = ()) -> Dict:
    """The default recipe for ``epochs`` epochs; returns the per-epoch records and a summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(output_dir or tmp) / 'benchmark_train'
        code = train_main(['--epochs', str(epochs), '--output-dir', str(out), '--overwrite', *extra_args])
        if code != 0:
            raise SystemExit(code)
        history = json.loads((out / 'metrics.json').read_text())[1:]  # epoch 0 is the untrained head
    seconds = [r['epoch_seconds'] for r in history]
    rest = seconds[1:] or seconds
    return dict(
        machine=machine_summary(),
        epochs=[dict(epoch=r['epoch'], img_per_s=r['img_per_s'], epoch_seconds=r['epoch_seconds'],
                     val_top1=r['val_top1']) for r in history],
        # flat means the last epochs take as long as the early ones (the first includes warm-up effects)
        last_over_second=rest[-1] / rest[0],
        final_val_top1=history[-1]['val_top1'],
    )


def train_benchmark_table(result: Dict) -> str:
    rows = ['| epoch | img/s | seconds | val top-1 (%) |', '|---:|---:|---:|---:|']
    rows += [f"| {r['epoch']} | {r['img_per_s']:.0f} | {r['epoch_seconds']:.1f} | {r['val_top1']:.2f} |"
             for r in result['epochs']]
    rows.append('')
    rows.append(f"Last epoch / second epoch time: {result['last_over_second']:.2f} "
                f"(1.00 = flat). Machine: {result['machine']}.")
    return '\n'.join(rows)


def _train_step(model, optimizer, x, y, dtype):
    def step():
        with torch.autocast('cpu', dtype=dtype) if dtype else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def step_benchmark(models: Sequence[str], batch: int = 16, size: int = 224, rounds: int = 3,
                   min_seconds: float = 5.0) -> Dict:
    """img/s of one SGD step per model in fp32 and bf16 autocast, interleaved rounds (median)."""
    torch.manual_seed(0)
    cases, auto = [], {}
    for name in models:
        probed = timm.create_model(name, num_classes=1000)
        auto[name] = cpu_auto(ProbeWork(probed, (3, size, size), batch=batch, training=True), training=True)
        del probed
        for label, dtype in (('fp32', None), ('bf16 autocast', torch.bfloat16)):
            model = timm.create_model(name, num_classes=1000).train().to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 1000, (batch,))
            step = _train_step(model, optimizer, x, y, dtype)
            step()  # warm-up: oneDNN primitives, optimizer state
            cases.append(dict(model=name, precision=label, step=step, img_per_s=[]))
    for _ in range(rounds):
        for case in cases:
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds or n < 2:
                case['step']()
                n += 1
            case['img_per_s'].append(batch * n / (time.perf_counter() - start))
    rows = [dict(model=c['model'], precision=c['precision'], img_per_s=statistics.median(c['img_per_s']),
                 rounds=c['img_per_s'], auto=c['precision'].split()[0] == auto[c['model']]) for c in cases]
    return dict(date=time.strftime('%Y-%m-%d'), machine=machine_summary(), cpu_features=cpu_features().summary(),
                auto=auto, batch=batch, size=size, rounds=rounds, rows=rows)


def step_table(result: Dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}; `python3 benchmarks/training_speed.py --steps` "
             f"(SGD step, batch {result['batch']}, {result['size']} px, channels_last, eager; median of "
             f"{result['rounds']} interleaved rounds). CPU features: {result['cpu_features']}; "
             "`--mixed-precision auto` picks the row marked *auto* (the precision probe, measured per model).", '',
             '| model | precision | img/s | vs fp32 |', '|---|---|---:|---:|']
    for r in result['rows']:
        base = next(b for b in result['rows'] if b['model'] == r['model'] and b['precision'] == 'fp32')
        mark = ' (*auto*)' if r.get('auto') else ''
        lines.append(f"| {r['model']} | {r['precision']}{mark} | {r['img_per_s']:.1f} | "
                     f"{r['img_per_s'] / base['img_per_s']:.2f} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--steps', action='store_true', help='fp32 vs bf16 training steps instead of the recipe')
    parser.add_argument('--models', nargs='+', default=['fishnet150', 'mobilenetv2_dual_100'], help='--steps: models')
    parser.add_argument('--json', help='also write the result as JSON')
    parser.add_argument('--markdown', metavar='FILE', help='--steps: replace the table between the training-steps '
                                                           'markers in this Markdown file (docs/performance.md)')
    parser.add_argument('extra', nargs='*', help='further fishzoo-train flags (after --)')
    args = parser.parse_args(argv)
    if args.steps:
        result = step_benchmark(args.models)
        publish(step_table(result), result, args.json, args.markdown, STEPS_START, STEPS_END)
        return 0
    result = train_benchmark(args.epochs, extra_args=args.extra)
    print(train_benchmark_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
