"""Benchmarks: measured in scripts, never in timed unit tests.

``train_benchmark`` runs the default training recipe (the embedded digits) for a number of epochs and
reports throughput and time per epoch, so a run that slows down epoch after epoch shows at once.
"""
import json
import platform
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return (f'{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, '
            f'{"CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"}')


def train_benchmark(epochs: int = 10, output_dir: Optional[str] = None, extra_args: List[str] = ()) -> Dict:
    """The default recipe for ``epochs`` epochs; returns the per-epoch records and a summary."""
    from fishzoo.train import main
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(output_dir or tmp) / 'benchmark_train'
        code = main(['--epochs', str(epochs), '--output-dir', str(out), '--overwrite', *extra_args])
        if code != 0:
            raise SystemExit(code)
        history = json.loads((out / 'metrics.json').read_text())
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


def transfer_study(work_dir: str, pretrain_epochs: int = 6, epochs: int = 3, lr: float = 3e-3,
                   freeze_epochs: int = 1) -> Dict:
    """Pretrain a low-resolution FishNet on digits 0-4, then train on digits 5-9 at the same budget:
    from that hub folder with each fine-tuning mode, and from random initialisation."""
    import time
    from fishzoo.train import main
    work = Path(work_dir)
    common = ['--model', 'fishnet_s64', '--img-size', '32', '--in-chans', '1', '--opt', 'adamw',
              '--weight-decay', '0.05', '--batch-size', '64', '--hflip', '0', '--color-jitter', '0',
              '--scale', '0.8', '1.0', '--ratio', '0.9', '1.1', '--overwrite']
    pretrained = work / 'digits0-4'
    if main([*common, '--digits', '0,1,2,3,4', '--epochs', str(pretrain_epochs), '--lr', '3e-3',
             '--output-dir', str(pretrained)]) != 0:
        raise SystemExit('pretraining failed')
    source_top1 = json.loads((pretrained / 'metrics.json').read_text())[-1]['val_top1']
    runs = [('random init', []), ('frozen', ['--finetune', 'frozen']), ('full', ['--finetune', 'full']),
            ('gradual', ['--finetune', 'gradual', '--freeze-epochs', str(freeze_epochs)])]
    rows = []
    for name, extra in runs:
        out = work / f'digits5-9-{name.replace(" ", "-")}'
        model = ['--model', 'fishnet_s64'] if name == 'random init' else \
            ['--model', f'local-dir:{pretrained}', '--pretrained']
        start = time.perf_counter()
        if main([*common, *model, '--digits', '5,6,7,8,9', '--epochs', str(epochs), '--lr', str(lr),
                 '--output-dir', str(out), *extra]) != 0:
            raise SystemExit(f'{name} failed')
        history = json.loads((out / 'metrics.json').read_text())
        rows.append(dict(mode=name, val_top1=history[-1]['val_top1'],
                         trainable_params=max(r['trainable_params'] for r in history),
                         trainable_params_first_epoch=history[1]['trainable_params'],
                         seconds=time.perf_counter() - start))
    return dict(machine=machine_summary(), source_val_top1=source_top1, epochs=epochs, lr=lr, rows=rows)


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
