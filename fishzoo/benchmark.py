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
