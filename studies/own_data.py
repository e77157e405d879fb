#!/usr/bin/env python3
"""Training on your own data with the defaults alone: the embedded digits written out as a user's data would
be, trained with nothing but the data, the model and the epochs, checked against #14's targets.

    python studies/own_data.py [--work-dir output/own_data] [--mixed-precision auto|no|bf16] [--json result.json]

1. class folders: the 1,797 digit scans as RGB 32 px PNGs in one class-folder tree,
   ``--model fishnet_s64 --data-dir DIR --img-size 32 --epochs 8`` (target: 93% val top-1);
2. multi-label: 2,000 images of four 8x8 slots, each a digit or empty, labels in a CSV, fine-tuned from
   run 1's folder with ``--epochs 8`` (target: micro-F1 0.85 after threshold tuning);
3. ``--lr-find`` on run 1's data (target: under a minute), then run 1 again with ``--lr auto``
   (target: within 1 point of run 1, whose LR is the recipe's).

About 8 minutes on 2 CPU cores; the "Recipes" table of docs/training.md is its output. Exits 1 when a target is missed.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from fishzoo.data import write_digits_folder, write_digits_multilabel
from fishzoo.info import machine_summary
from fishzoo.train import main as train_main


def _train(argv: List[str], what: str) -> Dict:
    """One ``fishzoo-train`` run; its last epoch, the published epoch and the wall time."""
    out = Path(argv[argv.index('--output-dir') + 1])
    start = time.perf_counter()
    if train_main([*argv, '--overwrite']) != 0:
        raise SystemExit(f'{what} failed: fishzoo-train {" ".join(argv)}')
    history = json.loads((out / 'metrics.json').read_text())
    thresholds = out / 'thresholds.json'
    return dict(argv=argv, history=history, seconds=time.perf_counter() - start,
                thresholds=json.loads(thresholds.read_text()) if thresholds.is_file() else None,
                train_config=(out / 'train_config.yaml').read_text())


def own_data_study(work_dir: str, epochs: int = 8, mixed_precision: str = 'auto') -> Dict:
    work = Path(work_dir)
    folders = write_digits_folder(work / 'digits_rgb32', size=32, mode='RGB')
    csv = write_digits_multilabel(work / 'digits_multilabel', images=2000, empty_slot=0.5, seed=0)

    precision = ['--mixed-precision', mixed_precision]
    common = ['--model', 'fishnet_s64', '--data-dir', str(folders), '--img-size', '32', '--epochs', str(epochs),
              *precision]
    folder_run = _train([*common, '--output-dir', str(work / 'class_folders')], 'class folders')
    multilabel_run = _train(['--model', str(work / 'class_folders'), '--train-csv', str(csv), '--epochs', str(epochs),
                             '--output-dir', str(work / 'multilabel'), *precision], 'multi-label')

    start = time.perf_counter()
    if train_main([*common, '--lr-find', '--output-dir', str(work / 'lr_find'), '--overwrite']) != 0:
        raise SystemExit('--lr-find failed')
    find_seconds = time.perf_counter() - start
    found = json.loads((work / 'lr_find' / 'lr_find.json').read_text())
    auto_run = _train([*common, '--lr', 'auto', '--output-dir', str(work / 'lr_auto')], '--lr auto')

    def best(run, key):
        return max(r[key] for r in run['history'] if r['epoch'] > 0)

    folder_top1 = best(folder_run, 'val_top1')
    auto_top1 = best(auto_run, 'val_top1')
    ml_f1 = (multilabel_run['thresholds'] or {}).get('f1_micro_after')
    rows = [
        dict(case='class folders, RGB 32 px (`--data-dir DIR --img-size 32 --epochs 8`)', metric='val top-1 (%)',
             value=folder_top1, target=93.0, seconds=folder_run['seconds'], met=folder_top1 >= 93.0),
        dict(case='multi-label CSV, fine-tuned from that folder (`--train-csv labels.csv --epochs 8`)',
             metric='micro-F1, tuned thresholds', value=ml_f1, target=0.85, seconds=multilabel_run['seconds'],
             met=ml_f1 is not None and ml_f1 >= 0.85),
        dict(case='`--lr-find` on the class folders', metric='seconds', value=find_seconds, target=60.0,
             seconds=find_seconds, met=find_seconds < 60.0),
        dict(case=f"`--lr auto` (suggested lr {found['suggestion']:.2e}) vs the recipe's lr",
             metric='val top-1 (%), difference', value=auto_top1 - folder_top1, target=-1.0,
             seconds=auto_run['seconds'], met=auto_top1 >= folder_top1 - 1.0),
    ]
    return dict(machine=machine_summary(), epochs=epochs, mixed_precision=mixed_precision, rows=rows,
                lr_suggestion=found['suggestion'],
                auto_top1=auto_top1, multilabel_history=multilabel_run['history'],
                multilabel_train_config=multilabel_run['train_config'], folder_train_config=folder_run['train_config'])


def own_data_table(result: Dict) -> str:
    lines = ['| your data, defaults only | measure | result | target | seconds |', '|---|---|---:|---:|---:|']
    for r in result['rows']:
        value = 'n/a' if r['value'] is None else f"{r['value']:.3g}" if abs(r['value']) < 1 else f"{r['value']:.2f}"
        target = f"{'≥' if r['metric'] != 'seconds' else '<'} {r['target']:g}"
        lines.append(f"| {r['case']} | {r['metric']} | {value}{'' if r['met'] else ' (missed)'} | {target} | "
                     f"{r['seconds']:.0f} |")
    lines.append('')
    lines.append(f"Best epoch of {result['epochs']}; machine: {result['machine']}.")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='output/own_data')
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--mixed-precision', default='auto', choices=('auto', 'no', 'bf16'),
                        help="fishzoo-train's --mixed-precision for every run (studies/precision.py compares them)")
    parser.add_argument('--json', help='also write the result as JSON')
    args = parser.parse_args(argv)
    result = own_data_study(args.work_dir, epochs=args.epochs, mixed_precision=args.mixed_precision)
    print(own_data_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(r['met'] for r in result['rows']) else 1


if __name__ == '__main__':
    sys.exit(main())
