"""The output folder of a run: refused when it holds another run, metrics written as training goes, and at
the end a hub folder (weights, config, card) with the curves, optionally uploaded.

    OUTPUT_DIR/model.safetensors, config.json, README.md   the hub folder (timm local-dir:)
    OUTPUT_DIR/metrics.json, curves.png                    one record per epoch, and its plot
    OUTPUT_DIR/thresholds.json                             multi-label threshold tuning
    OUTPUT_DIR/checkpoints/                                see fishzoo.train.checkpoints
    OUTPUT_DIR/.fishzoo-train.lock                         held while a run uses the folder
"""
import argparse
import errno
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: runs are not locked against each other there
    fcntl = None

import matplotlib
import torch.nn as nn
from accelerate import PartialState

from fishzoo.errors import ConfigError
from fishzoo.hub import HUB_FILES, push_to_hub, write_hub_folder
from fishzoo.hub.atomic import staged_folder, write_file

matplotlib.use('Agg')  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

_logger = logging.getLogger('fishzoo.train')

# what a publish replaces together: the hub folder, the metrics and their curves
PUBLISHED_FILES = HUB_FILES + ('metrics.json', 'curves.png')
RUN_FILES = PUBLISHED_FILES + ('thresholds.json', 'train_images.csv', 'val_images.csv')


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, replacing the old file only once the new one is complete on disk (and never
    writing through a link at ``path``: :func:`fishzoo.hub.atomic.write_file`)."""
    write_file(path, json.dumps(obj, indent=2))


LOCK_FILE = '.fishzoo-train.lock'


class OutputDirLock:
    """One run per output folder: an exclusive ``flock`` on ``OUTPUT_DIR/.fishzoo-train.lock``, taken by the
    main process for the whole run. The kernel drops the lock when the process ends however it ends
    (``kill -9`` included), so a stale file never blocks; the file holds the holder's process id for the
    message a second run gets."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> 'OutputDirLock':
        if fcntl is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f'--output-dir {self.path.parent}: cannot create it ({e.strerror or e})') from None
        while True:
            try:  # never through a link someone left at the lock's name (it would truncate where it points)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0), 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ConfigError(f'--output-dir {self.path.parent}: {self.path.name} is a symbolic link; '
                                      'remove it (a run writes its lock there)') from None
                raise ConfigError(f'--output-dir {self.path.parent}: cannot write there ({e.strerror or e})') \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise ConfigError(f'--output-dir {self.path.parent} is in use by another fishzoo-train run '
                                  f'(process {holder}, lock file {self.path}); wait for it to end or choose '
                                  'another --output-dir') from None
            try:  # a run ending between our open and flock removed the file: lock the current one instead
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> 'OutputDirLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def prepare_output_dir(args: argparse.Namespace, state: PartialState) -> Path:
    """Refuse a folder holding another run unless resuming or overwriting (then the main process clears it)."""
    output_dir = Path(args.output_dir)
    previous = [n for n in RUN_FILES if (output_dir / n).exists()] + \
        (['checkpoints/'] if (output_dir / 'checkpoints').is_dir() else [])
    if previous and not args.resume and not args.overwrite:
        raise ConfigError(f'--output-dir {output_dir} holds another run ({", ".join(previous)}); '
                          'pass --resume auto to continue it or --overwrite to replace it')
    state.wait_for_everyone()  # every process has looked before anything is removed
    if state.is_main_process:
        try:
            if previous and not args.resume:
                for name in previous:
                    target = output_dir / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f'--output-dir {output_dir}: cannot write there ({e.strerror or e})') from None
    state.wait_for_everyone()
    return output_dir


def plot_curves(history: List[Dict[str, float]], path: Path, multilabel: bool = False, top5: bool = True) -> None:
    epochs = [r['epoch'] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))

    def series(key):
        return [math.nan if r.get(key) is None else r[key] for r in history]
    ax_loss.plot(epochs, series('train_loss'), 'o-', label='train')
    ax_loss.plot(epochs, series('val_loss'), 'o-', label='val')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
    keys = [('val_f1_micro', 'val @0.5'), ('val_f1_micro_best', 'val @best threshold')] if multilabel else \
        [('train_top1', 'train top-1'), ('val_top1', 'val top-1')] + ([('val_top5', 'val top-5')] if top5 else [])
    for key, label in keys:
        if any(r.get(key) is not None for r in history):
            ax_acc.plot(epochs, series(key), 'o-', label=label)
    ax_acc.set(xlabel='epoch', ylabel='micro F1' if multilabel else 'accuracy (%)',
               title='micro F1' if multilabel else 'accuracy')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_record(record: Dict[str, Any], epochs: int) -> str:
    """One epoch's line in the log."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key, fmt in (('train_loss', '.4f'), ('val_loss', '.4f'), ('val_top1', '.2f'), ('val_top5', '.2f'),
                     ('val_f1_micro', '.4f'), ('val_f1_micro_best', '.4f'), ('val_map', '.4f'),
                     ('ema_val_top1', '.2f'), ('lr', '.2e'),
                     ('trainable_params', ',d'), ('img_per_s', '.0f'), ('epoch_seconds', '.1f')):
        value = record.get(key)
        if value is not None:
            # a rate below 10 keeps two figures: 0.66 img/s is not "1"
            parts.append(f'{key} {value:.2g}' if key == 'img_per_s' and value < 10 else f'{key} {value:{fmt}}')
    return '  '.join(parts)


class RunFolder:
    """What the main process writes into ``output_dir`` while and after training."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir)

    def write_metrics(self, history: List[Dict[str, Any]]) -> None:
        write_json_atomic(self.path / 'metrics.json', history)

    def write_thresholds(self, mode: str, before: float, after: float, class_names: Sequence[str],
                         thresholds: Sequence[float]) -> None:
        write_json_atomic(self.path / 'thresholds.json', dict(
            mode=mode, f1_micro_before=before, f1_micro_after=after,
            thresholds=dict(zip(class_names, thresholds))))

    def publish(self, model: nn.Module, history: List[Dict[str, Any]], *, class_names: Sequence[str],
                data_config: Mapping[str, Any], metrics: Mapping[str, float], multilabel: bool,
                extra_config: Optional[dict], dataset: Optional[str], description: str, epoch: int,
                base_model: Optional[str] = None, push_to: Optional[str] = None, commit_message: str = '',
                chosen_on_validation: bool = False, **card_facts) -> None:
        """The hub folder (weights, config, card: ``card_facts`` are more :class:`fishzoo.hub.card.CardFacts`),
        ``metrics.json`` and the curves, replaced together (a kill at any instant leaves the previous set or this
        one; a full disk leaves the previous one and says so), and, with ``push_to``, the upload."""
        with staged_folder(self.path, PUBLISHED_FILES, order=('model.safetensors', 'config.json')) as stage:
            write_hub_folder(
                model, stage, label_names=class_names, extra_config=dict(extra_config or {}, published_epoch=epoch),
                data_config={k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')},
                repo_id=push_to, dataset=dataset, metrics=metrics,
                metrics_source=f'measured by fishzoo-train on the validation split after epoch {epoch} '
                               f'(the published weights) of {history[-1]["epoch"]}'
                               + ('; that epoch was chosen as the best on this same split, so the figures read a '
                                  'little high' if chosen_on_validation else ''),
                tags=('fishzoo-train',), description=description, base_model=base_model, **card_facts)
            write_json_atomic(stage / 'metrics.json', history)
            plot_curves(history, stage / 'curves.png', multilabel, top5=len(class_names) > 5)
        _logger.info('wrote %s', self.path)
        if push_to:
            push_to_hub(self.path, push_to, commit_message=commit_message)
