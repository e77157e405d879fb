"""Train any timm model with Accelerate, from one CPU to many GPUs, into a hub folder.

    accelerate launch scripts/train.py                      # the embedded digits, a low-res FishNet
    accelerate launch scripts/train.py --data-dir DIR --model fishnet99 --pretrained --num-classes 10
    accelerate launch --multi_gpu --num_processes 2 -m fishzoo.train --config configs/digits.yaml
    fishzoo-train --help

Accelerate places the model, runs DDP, mixed precision and gradient accumulation, and saves and restores
the training state; timm gives the optimizer, scheduler, losses, Mixup/CutMix and EMA. Flags follow
timm's train.py; ``--config FILE.yaml`` takes the same keys (with - or _). Command line beats config,
config beats the defaults; with no data flags the defaults are the embedded digits recipe
(``configs/digits.yaml``).

The output directory receives ``model.safetensors``, ``config.json`` and ``README.md`` (a hub folder
for ``timm.create_model('local-dir:DIR', pretrained=True)``), ``metrics.json`` (one record per epoch),
``curves.png`` and ``checkpoints/`` (Accelerate state, written under a temporary name and renamed
when complete, so ``--resume auto`` always finds a whole one).
"""
import argparse
import json
import logging
import math
import os
import pickle
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

logger = logging.getLogger('fishzoo.train')

# the embedded default: scikit-learn's digits, upscaled to 32 px, a small low-resolution FishNet
DIGITS_RECIPE: Dict[str, Any] = dict(
    model='fishnet_s64', img_size=32, in_chans=1, epochs=8, batch_size=64, opt='adamw', lr=3e-3,
    weight_decay=0.05, sched='cosine', warmup_epochs=0, scale=[0.8, 1.0], ratio=[0.9, 1.1], hflip=0.0,
    color_jitter=0.0, val_split=0.2,
)
RUN_FILES = ('model.safetensors', 'config.json', 'README.md', 'metrics.json', 'curves.png', 'thresholds.json')
STATE_FILE = 'fishzoo_state.pt'  # fishzoo's part of a checkpoint, next to Accelerate's files


class ConfigError(ValueError):
    """A bad flag, config key or value; the message names it."""


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (a signal) or by a fault it reports in one sentence; ``exit_code`` for main."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# --- arguments -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='fishzoo-train', description='Train a timm model with Accelerate into a hub folder.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--config', metavar='FILE.yaml', help='YAML file with the same keys as these flags')

    g = p.add_argument_group('data (none given: the embedded digits)')
    g.add_argument('--data-dir', help='class-folder tree: train/ and val/, or one tree with --val-split')
    g.add_argument('--dataset', help="a Hugging Face dataset name, or 'imagefolder' with --data-dir")
    g.add_argument('--train-csv', help='multi-label CSV with columns image,labels (labels space-separated)')
    g.add_argument('--val-csv', help='validation CSV (else --val-split of --train-csv)')
    g.add_argument('--image-root', help="folder the CSV image paths are relative to (default: the CSV's)")
    g.add_argument('--classes', help='class list: comma-separated or a text file, one per line')
    g.add_argument('--val-split', type=float, help='fraction held out for validation when no val set is given')
    g.add_argument('--digits', help='embedded digits: keep these classes only, e.g. 0,1,2,3,4')
    g.add_argument('--multilabel', action='store_true',
                   help='multi-label: BCE with logits, sigmoid outputs, F1 / mAP metrics (implied by --train-csv)')
    g.add_argument('--strict-images', action='store_true', help='stop at an unreadable image instead of skipping it')
    g.add_argument('-j', '--workers', type=int, default=0, help='data loading worker processes')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='fishnet_s64', help="timm name, 'local-dir:PATH' or 'hf-hub:REPO_ID'")
    g.add_argument('--pretrained', action='store_true', help="load the model's pretrained weights")
    g.add_argument('--num-classes', type=int, help='classifier size (default: the number of classes in the data)')
    g.add_argument('--in-chans', type=int, default=3, help='image channels: 1 (grayscale), 3 or 4')
    g.add_argument('--img-size', type=int, help="input size (default: the model's data config)")
    g.add_argument('--drop', type=float, default=0.0, help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate')
    g.add_argument('--grad-checkpointing', action='store_true')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--compile', action='store_true', help='torch.compile the model (inductor)')

    g = p.add_argument_group('fine-tuning')
    g.add_argument('--finetune', choices=('frozen', 'full', 'gradual'),
                   help='frozen: classifier only (BN statistics frozen); full: everything; '
                        'gradual: classifier for --freeze-epochs, then one stage more per epoch from the top')
    g.add_argument('--freeze-epochs', type=int, default=1, help='gradual: epochs training the classifier only')
    g.add_argument('--threshold-tuning', default='none', choices=('none', 'global', 'per-class'),
                   help='multi-label: pick decision thresholds on the validation set after training')

    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default='sgd', help="timm optimizer name ('sgd', 'adamw', 'lamb', ...)")
    g.add_argument('--lr', type=float, default=0.05)
    g.add_argument('--weight-decay', type=float, default=1e-4)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--layer-decay', type=float, help='layer-wise LR decay (from the model group_matcher)')
    g.add_argument('--clip-grad', type=float, help='clip the gradient norm to this value')

    g = p.add_argument_group('schedule')
    g.add_argument('--sched', default='cosine',
                   help="timm scheduler ('cosine', 'step', ...), 'plateau' (on the val metric) or 'onecycle'")
    g.add_argument('--epochs', type=int, default=30)
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--decay-epochs', type=float, default=10, help='step: epochs between decays')
    g.add_argument('--decay-rate', type=float, default=0.1, help='step / plateau: LR factor')
    g.add_argument('--patience-epochs', type=int, default=2, help='plateau: epochs without improvement')
    g.add_argument('--pct-start', type=float, default=0.3, help='onecycle: fraction of steps rising to --lr')

    g = p.add_argument_group('augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', help='no training augmentation')
    g.add_argument('--scale', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop area range')
    g.add_argument('--ratio', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop aspect range')
    g.add_argument('--train-crop-mode', help="timm train crop: 'rrc' (default), 'rkrc', 'rkrr'")
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.0)
    g.add_argument('--rotate', type=float, default=0.0, help='random rotation range in degrees (+-)')
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', help="timm auto-augment policy, e.g. 'rand-m9-mstd0.5'")
    g.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    g.add_argument('--remode', default='pixel', help='random erasing mode')
    g.add_argument('--smoothing', type=float, default=0.0, help='label smoothing')
    g.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (saved as the model)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)

    g = p.add_argument_group('training')
    g.add_argument('-b', '--batch-size', type=int, default=64, help='per process')
    g.add_argument('--validation-batch-size', type=int, help='default: --batch-size')
    g.add_argument('--grad-accum-steps', type=int, default=1)
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--mixed-precision', choices=('no', 'fp16', 'bf16'), help="default: accelerate's config")

    g = p.add_argument_group('output')
    g.add_argument('--output-dir', default='output/train')
    g.add_argument('--checkpoint-every', type=int, default=1, help='epochs between checkpoints')
    g.add_argument('--keep-checkpoints', type=int, default=2, help='checkpoints kept (newest)')
    g.add_argument('--resume', help="'auto' (newest complete checkpoint in --output-dir) or a checkpoint folder")
    g.add_argument('--overwrite', action='store_true', help='replace the run in --output-dir')
    g.add_argument('--push-to-hub', metavar='REPO_ID', help='upload the finished folder')
    g.add_argument('--report-to', default='none', choices=('none', 'tensorboard', 'trackio'))
    return p


def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """The keys of a YAML recipe, checked against the flags, as argparse defaults."""
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f'--config {path}: no such file')
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'--config {path}: not valid YAML ({str(e).splitlines()[0]})') from None
    if not isinstance(cfg, dict):
        raise ConfigError(f'--config {path}: expected a mapping of flag names to values')
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in cfg.items():
        dest = str(key).replace('-', '_')
        if dest not in actions or dest in ('help', 'config'):
            raise ConfigError(f'--config {path}: unknown key {key!r} (keys are the flags, e.g. lr, batch-size)')
        action = actions[dest]
        if action.type is not None and value is not None:
            try:
                value = [action.type(v) for v in value] if action.nargs else action.type(value)
            except (TypeError, ValueError):
                raise ConfigError(f'--config {path}: {key}: {value!r} is not a valid {action.type.__name__}') from None
        if action.choices and value not in action.choices:
            raise ConfigError(f'--config {path}: {key} must be one of {", ".join(action.choices)}, got {value!r}')
        out[dest] = value
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    config = load_config(pre.config, parser) if pre.config else {}
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    if not (args.data_dir or args.dataset or args.train_csv):
        # no data given: the embedded digits recipe fills in what neither the command line nor the config set
        parser.set_defaults(**{**DIGITS_RECIPE, **config})
        args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    positive = dict(epochs=args.epochs, batch_size=args.batch_size, grad_accum_steps=args.grad_accum_steps,
                    checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints)
    for name, value in positive.items():
        if value is None or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise ConfigError(f'--lr must be a positive number, got {args.lr}')
    if args.val_csv and not args.train_csv:
        raise ConfigError('--val-csv needs --train-csv')
    if args.dataset and args.train_csv:
        raise ConfigError('give either --dataset or --train-csv, not both')
    if args.digits and (args.data_dir or args.dataset or args.train_csv):
        raise ConfigError('--digits selects classes of the embedded digits; it does not go with other data')
    if args.threshold_tuning != 'none' and not (args.multilabel or args.train_csv):
        raise ConfigError('--threshold-tuning is for multi-label training (--multilabel or --train-csv)')
    if args.freeze_epochs < 0:
        raise ConfigError(f'--freeze-epochs must be 0 or more, got {args.freeze_epochs}')
    if args.report_to != 'none':
        from accelerate import utils
        if not getattr(utils, f'is_{args.report_to}_available')():
            raise ConfigError(f'--report-to {args.report_to}: the {args.report_to} package is not installed '
                              f'(pip install {args.report_to})')


# --- pieces --------------------------------------------------------------------------------------

def load_data(args):
    from fishzoo import data
    mode = data.image_mode(args.in_chans)
    if args.train_csv:
        return data.csv_data(args.train_csv, args.val_csv, args.image_root, args.classes, args.val_split,
                             args.seed, mode, args.strict_images)
    if args.dataset:
        return data.hf_data(args.dataset, args.data_dir, args.val_split, args.seed, mode)
    if args.data_dir:
        return data.image_folder_data(args.data_dir, args.val_split, args.seed, mode, args.strict_images)
    classes = [c.strip() for c in args.digits.split(',')] if args.digits else None
    return data.digits_data(args.val_split or 0.2, args.seed, mode, classes)


def create_model(args, num_classes: int, class_names: Optional[List[str]] = None):
    """The model with a head for ``num_classes``; a pretrained head for other classes is re-initialised."""
    import timm
    from fishzoo.hub import HubFolderError, check_hub_folder
    from fishzoo.models._pretrained import CheckpointError
    kwargs = dict(num_classes=num_classes, in_chans=args.in_chans, drop_rate=args.drop,
                  drop_path_rate=args.drop_path)
    try:
        if args.model.startswith('local-dir:'):
            check_hub_folder(args.model[len('local-dir:'):])
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except (HubFolderError, CheckpointError) as e:
        raise ConfigError(f'--model {args.model}: {e}') from None
    except pickle.UnpicklingError as e:
        raise ConfigError(f'--model {args.model}: refused to load a pickle that is not plain weights '
                          f'({str(e).splitlines()[0][:200]})') from None
    except RuntimeError as e:
        if str(e).startswith('Unknown model'):
            raise ConfigError(f'--model {args.model}: unknown model (`fishzoo list` and timm.list_models() '
                              'show the names; or give local-dir:PATH / hf-hub:REPO_ID)') from None
        raise ConfigError(f'--model {args.model}: {str(e).splitlines()[0]}') from None
    except (OSError, ValueError) as e:
        raise ConfigError(f'--model {args.model}: could not be loaded ({str(e).splitlines()[0]})') from None
    if args.pretrained:
        from fishzoo.finetune import classifier_names
        source_classes = model.pretrained_cfg.get('num_classes')
        source_names = model.pretrained_cfg.get('label_names')
        other_labels = source_names is not None and class_names is not None and \
            [str(n) for n in source_names] != [str(n) for n in class_names]
        if source_classes != num_classes or other_labels:
            if source_classes == num_classes:  # same size, other classes: timm kept the old head
                model.reset_classifier(num_classes)
            why = f' (labels {",".join(map(str, source_names))} -> {",".join(class_names)})' if other_labels else ''
            logger.info('replaced the classifier: %s -> %d classes%s; re-initialised %s', source_classes,
                        num_classes, why, ', '.join(classifier_names(model)))
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_transforms(args, data_config):
    from timm.data import create_transform
    from torchvision import transforms as T
    train_tf = create_transform(
        data_config['input_size'], is_training=True, no_aug=args.no_aug, scale=args.scale, ratio=args.ratio,
        train_crop_mode=args.train_crop_mode, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], re_prob=args.reprob, re_mode=args.remode)
    if args.rotate and not args.no_aug:
        train_tf = T.Compose([T.RandomRotation(args.rotate), train_tf])
    val_tf = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])
    return train_tf, val_tf


def _contiguous_weights(models, weights, output_dir):
    """Accelerate save-state hook: safetensors refuses channels_last (non-contiguous) weights."""
    for i, state in enumerate(weights):
        weights[i] = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class LRSchedule:
    """timm's schedulers, torch's OneCycleLR (with momentum cycling) and ReduceLROnPlateau behind one interface.

    'plateau' is torch's ReduceLROnPlateau on the validation metric rather than timm's, whose state is not
    checkpointed (a resumed run would restart its patience); 'onecycle' steps every update.
    """

    def __init__(self, optimizer, args, updates_per_epoch: int):
        self.onecycle = None
        self.plateau = None
        self.timm = None
        if args.sched == 'plateau':
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode='max', factor=args.decay_rate, patience=args.patience_epochs, min_lr=args.min_lr)
        elif args.sched == 'onecycle':
            has_momentum = 'momentum' in optimizer.defaults or 'betas' in optimizer.defaults
            self.onecycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[args.lr * g.get('lr_scale', 1.0) for g in optimizer.param_groups],
                total_steps=args.epochs * updates_per_epoch, pct_start=args.pct_start,
                cycle_momentum=has_momentum, base_momentum=0.85, max_momentum=0.95)
        else:
            from timm.scheduler import create_scheduler_v2
            try:
                self.timm, _ = create_scheduler_v2(
                    optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
                    decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                    warmup_epochs=args.warmup_epochs, patience_epochs=args.patience_epochs,
                    updates_per_epoch=updates_per_epoch)
            except (AssertionError, ValueError, KeyError):
                raise ConfigError(f'--sched {args.sched}: unknown scheduler') from None
            if self.timm is None:
                raise ConfigError(f'--sched {args.sched}: unknown scheduler')

    @property
    def _scheduler(self):
        return self.onecycle or self.plateau or self.timm

    def step_update(self, num_updates: int):
        if self.onecycle is not None:
            self.onecycle.step()
        elif self.timm is not None:
            self.timm.step_update(num_updates)

    def step_epoch(self, epoch: int, metric: Optional[float]):
        if self.plateau is not None:
            self.plateau.step(metric)
        elif self.timm is not None:
            self.timm.step(epoch, metric)

    def state_dict(self):
        return self._scheduler.state_dict()

    def load_state_dict(self, state):
        self._scheduler.load_state_dict(state)


def create_loss(args, multilabel: bool):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if multilabel:
        return nn.BCEWithLogitsLoss()
    if args.mixup > 0 or args.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup makes (smoothed) soft targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def single_label_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    from timm.utils import accuracy
    k = min(5, logits.shape[1])
    top1, top5 = accuracy(logits, targets, topk=(1, k))
    return dict(loss=nn.functional.cross_entropy(logits, targets).item(), top1=top1.item(), top5=top5.item())


# --- checkpoints ---------------------------------------------------------------------------------

def _checkpoint_position(path: Path):
    """(epochs done, batches into the next epoch) from 'epoch_0003' or 'epoch_0003_batch_000012'."""
    parts = path.name.split('_')
    try:
        return int(parts[1]), int(parts[3]) if len(parts) == 4 and parts[2] == 'batch' else 0
    except (IndexError, ValueError):
        return None


def checkpoint_dirs(output_dir: Path) -> List[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed from its .tmp name)."""
    root = output_dir / 'checkpoints'
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith('epoch_') and (p / STATE_FILE).is_file()
             and _checkpoint_position(p) is not None]
    return sorted(found, key=_checkpoint_position)


def find_resume_checkpoint(output_dir: Path, resume: str) -> Optional[Path]:
    if resume == 'auto':
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f'--resume {resume}: not a complete fishzoo checkpoint folder (no {STATE_FILE})')
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- the run -------------------------------------------------------------------------------------

def distributed_on_cpu() -> bool:
    """Launched as several processes (torchrun / accelerate launch) on a machine without CUDA.

    Accelerate then needs cpu=True to join the processes with gloo; otherwise each runs alone.
    """
    launched = int(os.environ.get('WORLD_SIZE', '1')) > 1 or int(os.environ.get('LOCAL_RANK', '-1')) != -1
    return launched and not torch.cuda.is_available()


def prepare_output_dir(args) -> Path:
    """Refuse a folder holding another run unless resuming or overwriting (then the main process clears it)."""
    from accelerate import PartialState
    state = PartialState(cpu=distributed_on_cpu())
    output_dir = Path(args.output_dir)
    previous = [n for n in RUN_FILES if (output_dir / n).exists()] + \
        (['checkpoints/'] if (output_dir / 'checkpoints').is_dir() else [])
    if previous and not args.resume and not args.overwrite:
        raise ConfigError(f'--output-dir {output_dir} holds another run ({", ".join(previous)}); '
                          'pass --resume auto to continue it or --overwrite to replace it')
    state.wait_for_everyone()  # every process has looked before anything is removed
    if state.is_main_process:
        if previous and not args.resume:
            for name in previous:
                target = output_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    return output_dir


def plot_curves(history: List[Dict[str, float]], path: Path, multilabel: bool = False) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [r['epoch'] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    def series(key):
        return [math.nan if r.get(key) is None else r[key] for r in history]
    ax_loss.plot(epochs, series('train_loss'), 'o-', label='train')
    ax_loss.plot(epochs, series('val_loss'), 'o-', label='val')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
    keys = [('train_f1_micro', 'train'), ('val_f1_micro', 'val')] if multilabel else \
        [('train_top1', 'train top-1'), ('val_top1', 'val top-1'), ('val_top5', 'val top-5')]
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
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key, fmt in (('train_loss', '.4f'), ('val_loss', '.4f'), ('val_top1', '.2f'), ('val_top5', '.2f'),
                     ('val_f1_micro', '.4f'), ('val_map', '.4f'), ('ema_val_top1', '.2f'), ('lr', '.2e'),
                     ('trainable_params', ',d'), ('img_per_s', '.0f'),
                     ('epoch_seconds', '.1f')):
        if record.get(key) is not None:
            parts.append(f'{key} {record[key]:{fmt}}')
    return '  '.join(parts)


class Trainer:
    """One training run: data, model and optimizer prepared by Accelerate, epochs, checkpoints, outputs."""

    def __init__(self, args: argparse.Namespace):
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import DistributedDataParallelKwargs, set_seed
        self.args = args
        self.output_dir = Path(args.output_dir)
        # gradual unfreezing switches requires_grad after DDP is built: frozen parameters are "unused"
        ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=args.finetune == 'gradual')
        self.accelerator = Accelerator(
            kwargs_handlers=[ddp_kwargs],
            gradient_accumulation_steps=args.grad_accum_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.report_to == 'none' else args.report_to,
            project_dir=str(self.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            dynamo_backend='inductor' if args.compile else 'no',
            cpu=distributed_on_cpu(),
        )
        set_seed(args.seed)
        if self.accelerator.device.type == 'cpu':
            # launchers set OMP_NUM_THREADS=1; on CPU each local process should get its share of the cores
            local_processes = int(os.environ.get('LOCAL_WORLD_SIZE', self.accelerator.num_processes))
            share = max(1, len(os.sched_getaffinity(0)) // local_processes)
            torch.set_num_threads(max(torch.get_num_threads(), share))
        self.data = load_data(args)
        for image, reason in self.data.skipped[:5]:
            logger.warning('skipped unreadable image %s (%s)', image, reason)
        if self.data.skipped:
            logger.warning('skipped %d unreadable images in all (--strict-images makes this an error)',
                           len(self.data.skipped))
        self.num_classes = args.num_classes or len(self.data.class_names)
        if self.num_classes != len(self.data.class_names):
            raise ConfigError(f'--num-classes {args.num_classes} does not match the {len(self.data.class_names)} '
                              'classes of the data')
        self.multilabel = self.data.multilabel or args.multilabel
        if self.multilabel and not self.data.multilabel:
            from fishzoo.finetune import one_hot_targets
            for split in (self.data.train, self.data.val):
                split.targets = one_hot_targets(split.targets, self.num_classes)
        model = create_model(args, self.num_classes, self.data.class_names)
        if args.finetune == 'frozen':
            from fishzoo.finetune import freeze_backbone
            freeze_backbone(model)
        self.data_config = self._data_config(model)
        train_tf, val_tf = build_transforms(args, self.data_config)
        self.data.train.transform, self.data.val.transform = train_tf, val_tf

        world = self.accelerator.num_processes
        if args.batch_size * world > len(self.data.train):
            raise ConfigError(f'--batch-size {args.batch_size} (x {world} processes) is larger than the training '
                              f'set ({len(self.data.train)} images)')
        train_loader = torch.utils.data.DataLoader(
            self.data.train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
            persistent_workers=args.workers > 0)
        val_loader = torch.utils.data.DataLoader(
            self.data.val, batch_size=args.validation_batch_size or args.batch_size, shuffle=False,
            num_workers=args.workers)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)

        from timm.optim import create_optimizer_v2
        try:
            optimizer = create_optimizer_v2(
                model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                layer_decay=args.layer_decay)
        except (ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f'--opt {args.opt}: {str(e).strip() or "unknown optimizer"} '
                              f'(with --lr {args.lr}, --momentum {args.momentum}, '
                              f'--weight-decay {args.weight_decay})') from None
        updates_per_epoch = math.ceil(len(train_loader) / world / args.grad_accum_steps)
        self.schedule = LRSchedule(optimizer, args, updates_per_epoch)
        self.loss_fn = create_loss(args, self.multilabel)
        self.mixup = None
        if (args.mixup > 0 or args.cutmix > 0) and not self.multilabel:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                               switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                               num_classes=self.num_classes)
        self.ema = None
        if args.model_ema:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=args.model_ema_decay)
        self.model, self.optimizer, self.train_loader, self.val_loader = self.accelerator.prepare(
            model, optimizer, train_loader, val_loader)
        self.accelerator.register_save_state_pre_hook(_contiguous_weights)
        self.unfreezer = None
        if args.finetune == 'gradual':
            from fishzoo.finetune import GradualUnfreezer
            self.unfreezer = GradualUnfreezer(self.accelerator.unwrap_model(self.model), args.freeze_epochs,
                                              self.optimizer.optimizer)
        self.thresholds: Optional[List[float]] = None
        self.partial: Optional[Dict[str, Any]] = None  # a mid-epoch checkpoint's progress, when resuming one
        self.stop_signal: Optional[int] = None
        self.epoch = 0
        self.num_updates = 0
        self.history: List[Dict[str, Any]] = []

    def _data_config(self, model) -> Dict[str, Any]:
        from timm.data import resolve_input_data_config  # adapts mean/std to the model's channels
        return resolve_input_data_config(model, args=dict(img_size=self.args.img_size) if self.args.img_size else {})

    # checkpoint state -------------------------------------------------------------------------
    def save_checkpoint(self, partial: Optional[Dict[str, Any]] = None) -> Path:
        """Accelerate's state plus fishzoo's, written under a .tmp name and renamed when complete.

        ``partial`` (mid-epoch, on a signal) holds the batches done in the running epoch and its sums.
        A failed write (a full disk) removes the .tmp folder and leaves the previous checkpoint as it was.
        """
        acc = self.accelerator
        root = self.output_dir / 'checkpoints'
        name = f'epoch_{self.epoch:04d}' + (f'_batch_{partial["batches"]:06d}' if partial else '')
        final, tmp = root / name, root / f'.{name}.tmp'
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if acc.is_main_process:
                state = dict(epoch=self.epoch, num_updates=self.num_updates, history=self.history,
                             schedule=self.schedule.state_dict(),
                             ema=self.ema.state_dict() if self.ema is not None else None, partial=partial)
                torch.save(state, tmp / STATE_FILE)
                for f in tmp.iterdir():
                    with open(f, 'rb') as fh:
                        os.fsync(fh.fileno())
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = checkpoint_dirs(self.output_dir)
            kept = f'the previous checkpoint {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'
            raise TrainingStopped(f'could not write checkpoint {final} ({e.strerror or e}); {kept}; '
                                  'free space and continue with --resume auto') from None
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_dir(root)
            for old in checkpoint_dirs(self.output_dir)[:-self.args.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Everything is read with safetensors or torch.load(weights_only=True) (Accelerate's loader included):
        a checkpoint file that would run code when unpickled is refused."""
        from safetensors import SafetensorError
        try:
            # Accelerate logs and skips random-state files it cannot read; a resume without them would not
            # be exact, so they are read (weights_only, as Accelerate does) and refused here first
            from accelerate.utils import load as accelerate_load
            for rng_file in sorted(path.glob('random_states_*.pkl')):
                accelerate_load(rng_file)
            self.accelerator.load_state(str(path))
            state = torch.load(path / STATE_FILE, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConfigError(f'--resume {path}: refused a file that is not plain tensors and numbers '
                              f'({str(e).splitlines()[0][:200]})') from None
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, SafetensorError) as e:
            raise ConfigError(f'--resume {path}: the checkpoint cannot be loaded ({type(e).__name__}: '
                              f'{str(e).strip().splitlines()[0][:200] if str(e).strip() else "corrupted"})') from None
        self.epoch, self.num_updates, self.history = state['epoch'], state['num_updates'], state['history']
        self.partial = state.get('partial')
        self.schedule.load_state_dict(state['schedule'])
        if self.ema is not None and state.get('ema') is not None:
            self.ema.load_state_dict(state['ema'])
        logger.info('resumed from %s (epoch %d done)', path, self.epoch)

    # epochs -----------------------------------------------------------------------------------
    def train_one_epoch(self) -> Dict[str, float]:
        from tqdm.auto import tqdm
        acc, args = self.accelerator, self.args
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=acc.device)
        correct = torch.zeros((), device=acc.device)
        seen, batches, elapsed = 0, 0, 0.0
        loader = self.train_loader
        if self.partial:  # resuming a checkpoint written mid-epoch: same data order, the done batches skipped
            batches, seen, elapsed = self.partial['batches'], self.partial['seen'], self.partial['seconds']
            loss_sum += self.partial['loss_sum']
            correct += self.partial['correct']
            loader = acc.skip_first_batches(self.train_loader, batches)
            self.partial = None
        start = time.perf_counter() - elapsed
        bar = tqdm(loader, desc=f'epoch {self.epoch + 1} train', leave=False, mininterval=1.0,
                   disable=None if acc.is_local_main_process else True)  # None: off when not a terminal
        for images, targets in bar:
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with acc.accumulate(self.model):
                hard_targets = targets
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
                with acc.autocast():
                    logits = self.model(images)
                    loss = self.loss_fn(logits, targets)
                if not torch.isfinite(loss):
                    good = checkpoint_dirs(self.output_dir)
                    raise TrainingStopped(
                        f'the loss became {loss.item()} at epoch {self.epoch + 1}, batch {batches + 1} '
                        f'(update {self.num_updates + 1}); stopped without saving; '
                        + (f'the last good checkpoint is {good[-1]}' if good else 'no checkpoint was written yet'))
                acc.backward(loss)
                if acc.sync_gradients and args.clip_grad:
                    acc.clip_grad_norm_(self.model.parameters(), args.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad()
                if acc.sync_gradients:
                    self.num_updates += 1
                    self.schedule.step_update(self.num_updates)
                    if self.ema is not None:
                        self.ema.update(acc.unwrap_model(self.model), step=self.num_updates)
            # keep tensors on device: a .item() per batch would sync, a kept graph would grow every epoch
            loss_sum += loss.detach() * images.shape[0]
            if not self.multilabel and self.mixup is None:
                correct += (logits.detach().argmax(1) == hard_targets).sum()
            seen += images.shape[0]
            batches += 1
            if acc.sync_gradients and self._stop_requested():
                self.save_checkpoint(partial=dict(
                    batches=batches, seen=seen, seconds=time.perf_counter() - start,
                    loss_sum=loss_sum.item(), correct=correct.item()))
                signum = self.stop_signal
                raise TrainingStopped(
                    f'stopped by {signal.Signals(signum).name} in epoch {self.epoch + 1} after {batches} batches; '
                    'checkpoint saved, continue with --resume auto', exit_code=130 if signum == signal.SIGINT else 0)
        seconds = time.perf_counter() - start
        totals = acc.reduce(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=acc.device)]), 'sum')
        record = dict(train_loss=(totals[0] / totals[2]).item(), img_per_s=totals[2].item() / seconds)
        if not self.multilabel and self.mixup is None:
            record['train_top1'] = 100.0 * (totals[1] / totals[2]).item()
        return record

    def _stop_requested(self) -> bool:
        """Whether a signal arrived, agreed by every process so that all of them save the same checkpoint."""
        flag = self.stop_signal is not None
        if self.accelerator.num_processes > 1:
            flag = bool(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device),
                                                'max').item())
            if flag and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM
        return flag

    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.stop_signal = signum
        logger.warning('%s received: saving a checkpoint at the end of this batch', signal.Signals(signum).name)

    @torch.no_grad()
    def predict(self, model, loader):
        """Logits and targets of the whole loader, gathered from every process without duplicates."""
        from tqdm.auto import tqdm
        acc = self.accelerator
        model.eval()
        all_logits, all_targets = [], []
        for images, targets in tqdm(loader, desc='val', leave=False,
                                    disable=None if acc.is_local_main_process else True):
            if self.args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with acc.autocast():
                logits = model(images)
            logits, targets = acc.gather_for_metrics((logits.float(), targets))
            all_logits.append(logits.cpu())
            all_targets.append(targets.cpu())
        return torch.cat(all_logits), torch.cat(all_targets)

    def evaluate(self, model, prefix: str = 'val') -> Dict[str, float]:
        logits, targets = self.predict(model, self.val_loader)
        if self.multilabel:
            from fishzoo.finetune import multilabel_metrics
            metrics = multilabel_metrics(logits.sigmoid().numpy(), targets.numpy())
            metrics['loss'] = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
        else:
            metrics = single_label_metrics(logits, targets)
        metrics['samples'] = len(targets)  # gathered from every process: each val image exactly once
        return {f'{prefix}_{k}': v for k, v in metrics.items()}

    def tune_thresholds(self) -> None:
        """Multi-label: thresholds picked on the validation set; F1 before and after goes to the log and metrics."""
        from fishzoo.finetune import multilabel_metrics, tune_thresholds
        logits, targets = self.predict(self.final_model(), self.val_loader)
        probs, targets = logits.sigmoid().numpy(), targets.numpy()
        before = multilabel_metrics(probs, targets)['f1_micro']
        self.thresholds = tune_thresholds(probs, targets, self.args.threshold_tuning)
        after = multilabel_metrics(probs, targets, self.thresholds)['f1_micro']
        self.history[-1].update(val_f1_micro_tuned=after)
        if self.accelerator.is_main_process:
            logger.info('threshold tuning (%s): val micro-F1 %.4f at 0.5 -> %.4f with tuned thresholds',
                        self.args.threshold_tuning, before, after)
            write_json_atomic(self.output_dir / 'thresholds.json', dict(
                mode=self.args.threshold_tuning, f1_micro_before=before, f1_micro_after=after,
                thresholds=dict(zip(self.data.class_names, self.thresholds))))
            write_json_atomic(self.output_dir / 'metrics.json', self.history)

    def run(self) -> Dict[str, Any]:
        import threading
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> Dict[str, Any]:
        acc, args = self.accelerator, self.args
        if args.resume:
            checkpoint = find_resume_checkpoint(self.output_dir, args.resume)
            if checkpoint is not None:
                self.load_checkpoint(checkpoint)
            else:
                logger.info('--resume auto: no checkpoint in %s, starting from scratch', self.output_dir)
        if args.report_to != 'none':
            acc.init_trackers('fishzoo', config={k: v for k, v in vars(args).items()
                                                 if isinstance(v, (int, float, str, bool))})
        if acc.is_main_process:
            logger.info('training %s on %s: %d train / %d val images, %d classes, %d processes',
                        args.model, self.data.name, len(self.data.train), len(self.data.val), self.num_classes,
                        acc.num_processes)
        if self.epoch == 0 and not self.history:
            # epoch 0: the untrained head, a sanity check of the metrics before any update
            record = dict(epoch=0, **self.evaluate(self.model), trainable_params=self._trainable())
            self.history.append(record)
            if acc.is_main_process:
                print(format_record(record, args.epochs), flush=True)
        while self.epoch < args.epochs:
            start = time.perf_counter()
            if self.unfreezer is not None:
                self.unfreezer.set_epoch(self.epoch)
            record = dict(epoch=self.epoch + 1, trainable_params=self._trainable())
            record.update(self.train_one_epoch())
            record.update(self.evaluate(self.model))
            if self.ema is not None:
                record.update(self.evaluate(self.ema.module, prefix='ema_val'))
            record['lr'] = max(g['lr'] for g in self.optimizer.param_groups)
            record['epoch_seconds'] = time.perf_counter() - start
            self.epoch += 1
            self.schedule.step_epoch(self.epoch, record.get('val_top1', record.get('val_f1_micro')))
            self.history.append(record)
            acc.log({k: v for k, v in record.items() if k != 'epoch'}, step=record['epoch'])
            if acc.is_main_process:
                print(format_record(record, args.epochs), flush=True)
                write_json_atomic(self.output_dir / 'metrics.json', self.history)
            if self.epoch % args.checkpoint_every == 0 or self.epoch == args.epochs:
                self.save_checkpoint()
        if self.multilabel and args.threshold_tuning != 'none':
            self.tune_thresholds()
        self.finish()
        acc.end_training()
        return self.history[-1] if self.history else {}

    def _trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def final_model(self):
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    def finish(self) -> None:
        """The hub folder, the curves and (optionally) the upload, from the main process."""
        acc, args = self.accelerator, self.args
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        from fishzoo.hub import push_to_hub, save_pretrained
        last = self.history[-1]
        prefix = 'ema_val' if self.ema is not None else 'val'
        names = ('f1_micro', 'f1_macro', 'map', 'subset_acc') if self.multilabel else ('top1', 'top5')
        metrics = {k: last[f'{prefix}_{k}'] for k in names if f'{prefix}_{k}' in last}
        extra_config = None
        if self.multilabel:
            # fishzoo predict applies these (sigmoid outputs, one decision threshold per class)
            extra_config = dict(multilabel=True, threshold_tuning=args.threshold_tuning,
                                thresholds=self.thresholds or [0.5] * self.num_classes)
        model = self.final_model().float().eval().to(memory_format=torch.contiguous_format)
        save_pretrained(
            model, self.output_dir, label_names=self.data.class_names, extra_config=extra_config,
            data_config={k: self.data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')},
            repo_id=args.push_to_hub, dataset=self.data.name, metrics=metrics,
            metrics_source=f'measured by fishzoo-train on the validation split after {last["epoch"]} epochs',
            tags=('fishzoo-train',),
            description=f'`{args.model}` trained with fishzoo-train on {self.data.name} '
                        f'({len(self.data.train)} training images, {self.num_classes} classes).')
        plot_curves(self.history, self.output_dir / 'curves.png', self.multilabel)
        logger.info('wrote %s', self.output_dir)
        if args.push_to_hub:
            push_to_hub(self.output_dir, args.push_to_hub, commit_message=f'fishzoo-train: {args.model}')


def main(argv: Optional[List[str]] = None) -> int:
    from fishzoo.data import DataError
    from fishzoo.hub import HubUploadError
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    logging.getLogger('fishzoo').setLevel(logging.INFO)
    try:
        args = parse_args(argv)
        prepare_output_dir(args)
        Trainer(args).run()
    except TrainingStopped as e:
        print(f'fishzoo-train: {e}', file=sys.stderr)
        return e.exit_code
    except (ConfigError, DataError, HubUploadError) as e:
        print(f'fishzoo-train: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
