#!/usr/bin/env python3
"""Streamed shards against the data they were written from: the same held-out accuracy?

    python studies/shards_accuracy.py [--epochs 10] [--seeds 0 1] [--work DIR] [--json result.json]

For each seed, four fishzoo-train runs with the defaults (the recipe chooses the rest), the same ``--seed``
and ``--epochs``:

* the embedded digits, held in memory (the main job), against ``fishzoo shards --digits`` streamed with the
  main job's recipe (``--config configs/digits.yaml``);
* the digits written as a user's RGB class-folder tree (32 px PNGs, ``fishzoo.data.write_digits_folder``)
  against ``fishzoo shards --data-dir`` of that tree, streamed.

``fishzoo shards`` holds out the images training would (same ``--seed``), so each pair validates on the same
images; what differs is the order training reads them in (a per-epoch permutation against shards shuffled at
writing, a per-epoch shard order and a 1,000-sample shuffle buffer). About 40 minutes on 2 CPU cores with the
defaults; docs/performance.md's shards table is its output.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(argv, cwd=None):
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f'{" ".join(argv)} failed:\n{proc.stderr[-3000:]}')
    return proc


def best_top1(out: Path) -> float:
    history = json.loads((out / 'metrics.json').read_text())
    return max(r['val_top1'] for r in history if r['epoch'] > 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--work', help='keep the data and runs here (default: a temporary folder)')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix='shards-study-'))
    py = sys.executable
    folder = work / 'digits-rgb'
    if not folder.exists():
        run([py, '-c', f'from fishzoo.data import write_digits_folder; write_digits_folder({str(folder)!r})'])
    rows = []
    for seed in args.seeds:
        sources = {
            'digits in memory': [],
            # the embedded job's own recipe (32 px, one channel, its optimizer), from the shards
            'digits shards': ['--config', str(REPO / 'configs' / 'digits.yaml'),
                              '--data-dir', str(work / f'digits-shards-{seed}')],
            'RGB class folders': ['--data-dir', str(folder)],
            'RGB folder shards': ['--data-dir', str(work / f'folder-shards-{seed}')],
        }
        for written, source in ((work / f'digits-shards-{seed}', ['--digits']),
                                (work / f'folder-shards-{seed}', ['--data-dir', str(folder)])):
            if not (written / 'manifest.json').exists():
                run([py, '-m', 'fishzoo.cli', 'shards', *source, '--output-dir', str(written), '--seed', str(seed),
                     '--shard-count', '500'])
        for name, data in sources.items():
            out = work / f'run-{name.replace(" ", "-")}-{seed}'
            run([py, '-m', 'fishzoo.train', *data, '--seed', str(seed), '--epochs', str(args.epochs),
                 '--output-dir', str(out), '--overwrite'])
            history = json.loads((out / 'metrics.json').read_text())
            rows.append(dict(source=name, seed=seed, best_val_top1=best_top1(out),
                             last_val_top1=history[-1]['val_top1'], img_per_s=history[-1]['img_per_s']))
            print(f"{name:<20} seed {seed}: best val top-1 {rows[-1]['best_val_top1']:.2f}  last "
                  f"{rows[-1]['last_val_top1']:.2f}  ({rows[-1]['img_per_s']:.0f} img/s)", flush=True)
    print('\n| source | ' + ' | '.join(f'seed {s}' for s in args.seeds) + ' | mean |')
    print('|---|' + '---:|' * (len(args.seeds) + 1))
    for name in dict.fromkeys(r['source'] for r in rows):
        values = [r['last_val_top1'] for r in rows if r['source'] == name]
        print(f'| {name} | ' + ' | '.join(f'{v:.2f}' for v in values) + f' | {sum(values) / len(values):.2f} |')
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + '\n')


if __name__ == '__main__':
    main()
