#!/usr/bin/env python3
"""Transfer on the embedded digits: a low-resolution FishNet pretrained on digits 0-4, then trained on digits
5-9 from that hub folder with each fine-tuning mode, and from random initialisation, at the same budget.

    python studies/transfer_digits.py [--work-dir output/transfer] [--epochs 3] [--json result.json]

About 2 minutes on 2 CPU cores; the transfer table of docs/training.md is its output.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from fishzoo.info import machine_summary
from fishzoo.train import main as train_main

COMMON = ['--model', 'fishnet_s64', '--img-size', '32', '--in-chans', '1', '--opt', 'adamw', '--weight-decay', '0.05',
          '--batch-size', '64', '--hflip', '0', '--color-jitter', '0', '--scale', '0.8', '1.0', '--ratio', '0.9', '1.1',
          '--overwrite']


def _train(argv: List[str], what: str) -> List[Dict]:
    out = Path(argv[argv.index('--output-dir') + 1])
    if train_main(argv) != 0:
        raise SystemExit(f'{what} failed')
    return json.loads((out / 'metrics.json').read_text())


def transfer_study(work_dir: str, pretrain_epochs: int = 6, epochs: int = 3, lr: float = 3e-3,
                   freeze_epochs: int = 1) -> Dict:
    work = Path(work_dir)
    pretrained = work / 'digits0-4'
    source = _train([*COMMON, '--digits', '0,1,2,3,4', '--epochs', str(pretrain_epochs), '--lr', '3e-3',
                     '--output-dir', str(pretrained)], 'pretraining')
    runs = [('random init', []), ('frozen', ['--finetune', 'frozen']), ('full', ['--finetune', 'full']),
            ('gradual', ['--finetune', 'gradual', '--freeze-epochs', str(freeze_epochs)])]
    rows = []
    for name, extra in runs:
        model = ['--model', 'fishnet_s64'] if name == 'random init' else \
            ['--model', f'local-dir:{pretrained}', '--pretrained']
        start = time.perf_counter()
        history = _train([*COMMON, *model, '--digits', '5,6,7,8,9', '--epochs', str(epochs), '--lr', str(lr),
                          '--output-dir', str(work / f'digits5-9-{name.replace(" ", "-")}'), *extra], name)
        rows.append(dict(mode=name, val_top1=history[-1]['val_top1'],
                         trainable_params=max(r['trainable_params'] for r in history),
                         trainable_params_first_epoch=history[1]['trainable_params'],
                         seconds=time.perf_counter() - start))
    return dict(machine=machine_summary(), source_val_top1=source[-1]['val_top1'], epochs=epochs, lr=lr, rows=rows)


def transfer_table(result: Dict) -> str:
    lines = ['| digits 5-9 | val top-1 (%) | trainable params (first epoch / most) | seconds |',
             '|---|---:|---:|---:|']
    for r in result['rows']:
        lines.append(f"| {r['mode']} | {r['val_top1']:.2f} | {r['trainable_params_first_epoch']:,} / "
                     f"{r['trainable_params']:,} | {r['seconds']:.0f} |")
    lines.append('')
    lines.append(f"Pretrained on digits 0-4 (val top-1 {result['source_val_top1']:.2f}%), then {result['epochs']} "
                 f"epochs on digits 5-9 for every row, AdamW lr {result['lr']}. Machine: {result['machine']}.")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='output/transfer')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--json', help='also write the result as JSON')
    args = parser.parse_args(argv)
    result = transfer_study(args.work_dir, epochs=args.epochs)
    print(transfer_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
