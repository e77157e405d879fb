#!/usr/bin/env python3
"""The default training recipe (embedded digits) for 10 epochs: img/s and seconds per epoch, so a run that
slows down epoch after epoch shows at once.

    python benchmarks/training_speed.py [--epochs 10] [--json out.json] [-- extra fishzoo-train flags]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fishzoo.info import machine_summary
from fishzoo.train import main as train_main


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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--json', help='also write the result as JSON')
    parser.add_argument('extra', nargs='*', help='further fishzoo-train flags (after --)')
    args = parser.parse_args(argv)
    result = train_benchmark(args.epochs, extra_args=args.extra)
    print(train_benchmark_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
