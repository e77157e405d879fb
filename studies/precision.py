#!/usr/bin/env python3
"""bf16 against fp32 on trained networks: training with ``--mixed-precision bf16`` vs ``no``, and inference
with ``optimize_for_inference(precision='bf16')`` vs ``'fp32'``.

    python studies/precision.py [--seeds 42 43 44] [--own-data] [--work-dir output/precision]
                                [--json result.json] [--markdown docs/performance.md]

1. The default job (``scripts/train.py``: fishnet_s64 on the embedded digits) trained in fp32 and in bf16 autocast
   with each seed, each run in its own process (Accelerate keeps one precision per process): the published
   (best) val top-1 and the training img/s. Target: the bf16 mean within 0.5 points of fp32, and within
   fp32's own run-to-run spread.
2. The seed-42 models of 1 (the seed of fishzoo-train's split, so the 360 scans are held out) and FishNet-150
   at 64 px (6 epochs, fp32) run on the held-out scans in fp32 and in bf16 through the compiled fast path.
   Targets: bf16 top-1 within 0.2 points of fp32, and at least 99.5% of the scans decided as fp32 decides.
3. ``--own-data``: ``studies/own_data.py`` (class folders, multi-label CSV, ``--lr auto``) with
   ``--mixed-precision no`` and ``bf16``; its rows side by side.

Where the CPU has no AMX-BF16, bf16 still runs (slower): the numerics are the same. About 12 minutes on 2
cores with AMX (25 with ``--own-data``); exits 1 when a target is missed.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import fishzoo
from fishzoo.cpu_features import cpu_features
from fishzoo.deploy.accuracy import predict_all
from fishzoo.deploy.calibration import DIGITS, validation_images
from fishzoo.deploy.runner import torch_runner
from fishzoo.info import machine_summary
from fishzoo.metrics import agreement, score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from measure import log, publish  # noqa: E402

README_START, README_END = '<!-- precision-study:start -->', '<!-- precision-study:end -->'
MAX_TRAIN_GAP, MAX_INFERENCE_DROP, MIN_AGREEMENT = 0.5, 0.2, 99.5
PRECISIONS = ('no', 'bf16')


def _run(argv: List[str], what: str) -> None:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}')


def train_runs(work: Path, seeds: Sequence[int]) -> List[Dict]:
    """The default job per precision and seed: published val top-1 and mean img/s after the first epoch."""
    runs = []
    for seed in seeds:
        for precision in PRECISIONS:
            out = work / f'default-{precision}-seed{seed}'
            start = time.perf_counter()
            _run(['scripts/train.py', '--output-dir', str(out), '--overwrite', '--seed', str(seed),
                  '--mixed-precision', precision], f'the default job ({precision}, seed {seed})')
            history = json.loads((out / 'metrics.json').read_text())[1:]
            runs.append(dict(precision=precision, seed=seed, folder=str(out), seconds=time.perf_counter() - start,
                             top1=max(r['val_top1'] for r in history),
                             img_per_s=statistics.mean(r['img_per_s'] for r in history[1:] or history)))
            log(f"  default job, {precision}, seed {seed}: top-1 {runs[-1]['top1']:.2f}, "
                f"{runs[-1]['img_per_s']:.0f} img/s")
    return runs


def inference_rows(folders: Dict[str, Path]) -> List[Dict]:
    """Held-out top-1 of each trained model in fp32 and bf16 (compiled fast path), and their agreement."""
    rows = []
    for name, folder in folders.items():
        model = fishzoo.load_model(str(folder)).eval()
        cfg = model.pretrained_cfg
        val = validation_images(DIGITS, cfg, cfg.get('label_names'), model.num_classes, multilabel=False)
        logits = {}
        for precision in ('fp32', 'bf16'):
            fast = fishzoo.optimize_for_inference(model, precision=precision, backend='torch')  # torch's bf16
            logits[precision], targets = predict_all(torch_runner(fast), val)
        fp32, bf16 = score(logits['fp32'], targets, False), score(logits['bf16'], targets, False)
        rel = float(abs(logits['bf16'] - logits['fp32']).max() / abs(logits['fp32']).max())
        rows.append(dict(model=name, images=len(targets), fp32=fp32, bf16=bf16, drop=fp32 - bf16,
                         agreement=agreement(logits['bf16'], logits['fp32'], False), max_rel_logit_diff=rel))
        log(f"  {name}: fp32 {fp32:.2f}, bf16 {bf16:.2f}, agreement {rows[-1]['agreement']:.2f}%")
    return rows


def own_data_rows(work: Path) -> Dict[str, List[Dict]]:
    result = {}
    for precision in PRECISIONS:
        out = work / f'own_data-{precision}.json'
        proc = subprocess.run([sys.executable, 'studies/own_data.py', '--work-dir', str(work / f'own_data-{precision}'),
                               '--mixed-precision', precision, '--json', str(out)], cwd=ROOT, capture_output=True,
                              text=True)
        if not out.is_file():
            raise SystemExit(f'studies/own_data.py --mixed-precision {precision} failed: {proc.stderr[-2000:]}')
        result[precision] = json.loads(out.read_text())['rows']
        log(f'  own data, {precision}: ' + ', '.join(f"{r['value']:.3g}" for r in result[precision]))
    return result


def summarise(runs: List[Dict]) -> Dict:
    by = {p: [r for r in runs if r['precision'] == p] for p in PRECISIONS}
    top1 = {p: [r['top1'] for r in by[p]] for p in PRECISIONS}
    speed = {p: statistics.mean(r['img_per_s'] for r in by[p]) for p in PRECISIONS}
    spread = max(top1['no']) - min(top1['no'])
    gap = statistics.mean(top1['no']) - statistics.mean(top1['bf16'])
    return dict(mean_fp32=statistics.mean(top1['no']), mean_bf16=statistics.mean(top1['bf16']), gap=gap,
                fp32_spread=spread, speedup=speed['bf16'] / speed['no'],
                met=gap <= MAX_TRAIN_GAP and (gap <= spread or abs(gap) <= 0.1))


def markdown(result: Dict) -> str:
    s = result['training']
    lines = [f"Measured {result['date']} on {result['machine']}; `python3 studies/precision.py` "
             f"({result['seconds'] / 60:.0f} min). CPU features: {result['cpu_features']}.", '',
             '| the default job (`scripts/train.py`) | seeds | val top-1 (%) per seed | mean | img/s |',
             '|---|---|---|---:|---:|']
    for precision, label in (('no', 'fp32 (`--mixed-precision no`)'), ('bf16', 'bf16 autocast')):
        runs = [r for r in result['runs'] if r['precision'] == precision]
        lines.append(f"| {label} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{', '.join('%.2f' % r['top1'] for r in runs)} | "
                     f"{statistics.mean(r['top1'] for r in runs):.2f} | "
                     f"{statistics.mean(r['img_per_s'] for r in runs):.0f} |")
    lines += ['', f"bf16 vs fp32: {s['gap']:+.2f} points (fp32's own spread over the seeds: {s['fp32_spread']:.2f}), "
                  f"{s['speedup']:.2f}x the img/s; target within {MAX_TRAIN_GAP} points: "
                  f"{'met' if s['met'] else 'missed'}.", '',
              '| trained model, held-out digits | images | fp32 top-1 | bf16 top-1 | drop | same top-1 as fp32 | '
              'max logit diff | met |', '|---|---:|---:|---:|---:|---:|---:|---|']
    for r in result['inference']:
        met = r['drop'] <= MAX_INFERENCE_DROP and r['agreement'] >= MIN_AGREEMENT
        lines.append(f"| {r['model']} | {r['images']} | {r['fp32']:.2f} | {r['bf16']:.2f} | {r['drop']:.2f} | "
                     f"{r['agreement']:.2f}% | {100 * r['max_rel_logit_diff']:.2f}% | {'yes' if met else 'no'} |")
    if result.get('own_data'):
        lines += ['', '| own data (`studies/own_data.py`) | measure | fp32 | bf16 |', '|---|---|---:|---:|']
        for fp32, bf16 in zip(result['own_data']['no'], result['own_data']['bf16']):
            lines.append(f"| {fp32['case']} | {fp32['metric']} | {fp32['value']:.3g} | {bf16['value']:.3g} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[42, 43, 44])
    parser.add_argument('--own-data', action='store_true', help='also studies/own_data.py in both precisions')
    parser.add_argument('--work-dir', default='output/precision')
    parser.add_argument('--json', help='write the result here')
    parser.add_argument('--markdown', metavar='FILE', help='replace the table between the precision-study markers '
                                                           'in this Markdown file (docs/performance.md)')
    args = parser.parse_args(argv)
    work, start = Path(args.work_dir), time.perf_counter()
    torch.manual_seed(0)
    log('training the default job in fp32 and bf16')
    runs = train_runs(work, args.seeds)
    log('FishNet-150 at 64 px for the inference rows')
    _run(['-m', 'fishzoo.train', '--model', 'fishnet150', '--img-size', '64', '--epochs', '6', '--mixed-precision',
          'no', '--output-dir', str(work / 'fishnet150_64px'), '--overwrite'], 'FishNet-150 at 64 px')
    seed = 42 if 42 in args.seeds else args.seeds[0]
    folders = {'fishnet_s64 (32 px, default job, fp32-trained)': work / f'default-no-seed{seed}',
               'fishnet_s64 (32 px, default job, bf16-trained)': work / f'default-bf16-seed{seed}',
               'fishnet150 (64 px, 6 epochs, fp32-trained)': work / 'fishnet150_64px'}
    log('inference in fp32 and bf16')
    inference = inference_rows(folders)
    own = own_data_rows(work) if args.own_data else None
    result = dict(date=time.strftime('%Y-%m-%d'), machine=machine_summary(), cpu_features=cpu_features().summary(),
                  runs=runs, training=summarise(runs), inference=inference, own_data=own,
                  seconds=time.perf_counter() - start)
    publish(markdown(result), result, args.json, args.markdown, README_START, README_END)
    met = result['training']['met'] and all(r['drop'] <= MAX_INFERENCE_DROP and r['agreement'] >= MIN_AGREEMENT
                                            for r in inference)
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
