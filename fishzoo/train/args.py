"""fishzoo-train's command line: the flags (timm's train.py names), YAML recipes with the same keys, checks.

Command line beats config, config beats the defaults; with no data flags the defaults are the embedded
digits recipe (``configs/digits.yaml``).
"""
import argparse
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import accelerate.utils
import torch
import yaml

from fishzoo.errors import ConfigError, first_line
from fishzoo.finetune import MODES
from fishzoo.hub.atomic import write_file
from fishzoo.hub.schema import MAX_INPUT_SIDE

from .loader import workers_value
from .recipes import RECIPE_KEYS

# the embedded default: scikit-learn's digits, upscaled to 32 px, a small low-resolution FishNet
DIGITS_RECIPE: Dict[str, Any] = dict(
    model='fishnet_s64', img_size=32, in_chans=1, epochs=8, batch_size=64, opt='adamw', lr=3e-3,
    weight_decay=0.05, sched='cosine', warmup_epochs=0, scale=[0.8, 1.0], ratio=[0.9, 1.1], hflip=0.0,
    color_jitter=0.0, val_split=0.2,
)


RECIPE_HELP = (
    'Recipes: with your own data, the batch, optimizer, schedule and augmentation flags you do not set ('
    + ', '.join(f"--{key.replace('_', '-')}" for key in RECIPE_KEYS)
    + ') are chosen for the run: from scratch or fine-tuning, single- or multi-label, small or large data, low or '
    'normal resolution. The log names the recipe and why; OUTPUT_DIR/train_config.yaml holds every value (rerun '
    'it with --config). The defaults shown for those flags apply only where no recipe sets them.')


def val_split(text: str):
    """--val-split: a fraction (a number) or the name of a dataset split."""
    try:
        return float(text)
    except ValueError:
        return text


def lr_value(text: str):
    """--lr: a number, or 'auto' (the LR range test's suggestion)."""
    return 'auto' if str(text).strip().lower() == 'auto' else float(text)


lr_value.kind = "float (or 'auto')"


class RecipeDefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, saying for the flags a recipe sets that the recipe's value comes first
    (--help listed SGD at 0.05 where a run on your own data trains with AdamW at 3e-3)."""

    def _get_help_string(self, action):
        if action.dest in RECIPE_KEYS:
            return (action.help or '') + " (default: the recipe's choice for your data, named in the log; " \
                '%(default)s where no recipe sets it)'
        return super()._get_help_string(action)


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='fishzoo-train', description='Train a timm model with Accelerate into a hub folder.',
        formatter_class=RecipeDefaultsHelpFormatter, epilog=RECIPE_HELP)
    p.add_argument('-c', '--config', metavar='FILE.yaml', help='YAML file with the same keys as these flags')

    g = p.add_argument_group('data (none given: the embedded digits)')
    g.add_argument('--data-dir', help='class-folder tree: train/ and val/, or one tree with --val-split')
    g.add_argument('--dataset', help="a Hugging Face dataset name, or 'imagefolder' with --data-dir")
    g.add_argument('--streaming', action='store_true',
                   help='--dataset: stream its parquet data files (each process and loader worker reads its own part; '
                        'nothing is downloaded whole) instead of loading it with datasets.load_dataset')
    g.add_argument('--train-csv', help='multi-label CSV with columns image,labels (labels space-separated)')
    g.add_argument('--val-csv', help='validation CSV (else --val-split of --train-csv)')
    g.add_argument('--image-root', help="folder the CSV image paths are relative to (default: the CSV's)")
    g.add_argument('--classes', help='class list: comma-separated or a text file, one per line')
    g.add_argument('--val-split', type=val_split,
                   help='a fraction (0.2) held out for validation when no val set is given, or, with --dataset, '
                        "the name of the split to validate on (timm's meaning: 'validation', 'test')")
    g.add_argument('--digits', help='embedded digits: keep these classes only, e.g. 0,1,2,3,4')
    g.add_argument('--multilabel', action='store_true',
                   help='multi-label: BCE with logits, sigmoid outputs, F1 / mAP metrics (implied by --train-csv)')
    g.add_argument('--strict-images', action='store_true', help='stop at an unreadable image instead of skipping it')
    g.add_argument('-j', '--workers', type=workers_value, default='auto',
                   help='loader worker processes per training process; auto: none for images held in memory, '
                        'else all cores but one beside an accelerator, half the cores of a CPU run from 4 cores '
                        '(logged, and written to train_config.yaml)')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='fishnet_s64',
                   help="timm name, a folder, 'local-dir:PATH' or 'hf-hub:REPO_ID' (folders and hub repos load "
                        'their weights)')
    g.add_argument('--pretrained', action='store_true',
                   help="load the model's pretrained weights (implied by a folder or hub model and by --finetune)")
    g.add_argument('--initial-checkpoint', metavar='FILE',
                   help='load these weights into the model after creating it (safetensors or a plain state dict)')
    g.add_argument('--num-classes', type=int, help='classifier size (default: the number of classes in the data)')
    g.add_argument('--in-chans', type=int,
                   help="image channels: 1 (grayscale), 3 or 4 (default: a folder model's own, else 3)")
    g.add_argument('--img-size', type=int, help="input size (default: the model's data config)")
    g.add_argument('--drop', type=float, default=0.0, help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate')
    g.add_argument('--grad-checkpointing', action='store_true',
                   help='recompute activations in the backward pass: less memory, about 30%% more time')
    g.add_argument('--channels-last', action='store_true', help='channels_last memory format (faster convolutions)')
    g.add_argument('--compile', '--torchcompile', nargs='?', const='inductor', metavar='BACKEND',
                   help="torch.compile the model (alias --torchcompile as in timm; backend default 'inductor')")

    g = p.add_argument_group('fine-tuning')
    g.add_argument('--finetune', choices=MODES,
                   help='frozen: classifier only (BN statistics frozen); full: everything; '
                        'gradual: classifier for --freeze-epochs, then one stage more per epoch from the top')
    g.add_argument('--freeze-epochs', type=int, default=1, help='gradual: epochs training the classifier only')
    g.add_argument('--threshold-tuning', default='none', choices=('none', 'global', 'per-class'),
                   help='multi-label: pick decision thresholds on the validation set after training')

    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default='sgd', help="timm optimizer name ('sgd', 'adamw', 'lamb', ...)")
    g.add_argument('--lr', type=lr_value, default=0.05,
                   help="peak learning rate, or 'auto': the suggestion of an LR range test run first (--lr-find)")
    g.add_argument('--lr-find', action='store_true',
                   help='run an LR range test, write lr_find.png/json to --output-dir, print the suggested LR and '
                        'stop (with --lr auto: train with it)')
    g.add_argument('--lr-find-steps', type=int, default=100,
                   help="updates the LR range test sweeps over (fastai's num_it)")
    g.add_argument('--weight-decay', type=float, default=1e-4, help='weight decay (not applied to norms and biases)')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--layer-decay', type=float, help='layer-wise LR decay (from the model group_matcher)')
    g.add_argument('--clip-grad', type=float, help='clip the gradient norm to this value')

    g = p.add_argument_group('schedule')
    g.add_argument('--sched', default='cosine',
                   help="timm scheduler ('cosine', 'step', ...), 'plateau' (on the val metric) or 'onecycle'")
    g.add_argument('--epochs', type=int, default=30, help='epochs to train')
    g.add_argument('--warmup-epochs', type=int, default=0, help='epochs rising linearly from --warmup-lr to --lr')
    g.add_argument('--warmup-lr', type=float, default=1e-5, help='learning rate at the start of the warmup')
    g.add_argument('--sched-on-updates', action='store_true',
                   help="timm's schedulers step every update rather than every epoch (a warmup epoch then ramps "
                        'up within the epoch instead of spending it at --warmup-lr)')
    g.add_argument('--min-lr', type=float, default=0.0, help='lowest learning rate of the schedule')
    g.add_argument('--decay-epochs', type=float, default=10, help='step: epochs between decays')
    g.add_argument('--decay-rate', type=float, default=0.1, help='step / plateau: LR factor')
    g.add_argument('--patience-epochs', type=int, default=2, help='plateau: epochs without improvement')
    g.add_argument('--pct-start', type=float, default=0.3, help='onecycle: fraction of steps rising to --lr')

    g = p.add_argument_group('augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', help='no training augmentation')
    g.add_argument('--scale', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop area range')
    g.add_argument('--ratio', type=float, nargs=2, metavar=('MIN', 'MAX'), help='random-resized-crop aspect range')
    g.add_argument('--train-crop-mode', help="timm train crop: 'rrc' (default), 'rkrc', 'rkrr'")
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--vflip', type=float, default=0.0, help='vertical flip probability')
    g.add_argument('--rotate', type=float, default=0.0, help='random rotation range in degrees (+-)')
    g.add_argument('--color-jitter', type=float, default=0.4, help='color jitter strength')
    g.add_argument('--aa', help="timm auto-augment policy, e.g. 'rand-m9-mstd0.5'")
    g.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    g.add_argument('--remode', default='pixel', help='random erasing mode')
    g.add_argument('--smoothing', type=float, default=0.0, help='label smoothing')
    g.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    g.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix instead of mixup')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (saved as the model)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay per update')

    g = p.add_argument_group('training')
    g.add_argument('-b', '--batch-size', type=int, default=64, help='per process')
    g.add_argument('--validation-batch-size', type=int, help='default: --batch-size')
    g.add_argument('--grad-accum-steps', type=int, default=1, help='batches per optimizer step')
    g.add_argument('--seed', type=int, default=42, help='seed of the split, initialisation and data order')
    g.add_argument('--mixed-precision', choices=('auto', 'no', 'fp16', 'bf16'), default='auto',
                   help="auto: on the CPU bf16 where it pays (`fishzoo info` says) and fp32 elsewhere, unless "
                        "accelerate's config asks for fp16/bf16; on GPUs accelerate's config")
    g.add_argument('--amp', action='store_true',
                   help='mixed precision as in timm: --mixed-precision from --amp-dtype (bf16 on CPU)')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'),
                   help='--amp: lower-precision dtype (float16 needs a GPU; on CPU bfloat16 is used)')

    g = p.add_argument_group('output')
    g.add_argument('--output-dir', default='output/train', help='the run folder: hub folder, metrics, checkpoints')
    g.add_argument('--checkpoint-every', type=int, default=1, help='epochs between checkpoints')
    g.add_argument('--checkpointing-steps', type=int, default=0, metavar='N',
                   help='also a checkpoint every N optimizer updates inside an epoch (0: none), so that a run '
                        'killed mid-epoch (kill -9, a lost node) resumes there: streamed epochs are long')
    g.add_argument('--keep-checkpoints', '--checkpoint-hist', type=int, default=2,
                   help="checkpoints kept, newest first (alias --checkpoint-hist as in timm)")
    g.add_argument('--save-last', action='store_true',
                   help="publish the last epoch's weights instead of the best epoch's (by the validation metric)")
    g.add_argument('--dataset-name', metavar='HUB_DATASET_ID',
                   help="the Hub dataset id the model card's `datasets:` names (default: --dataset, if it is one; "
                        'a local folder or CSV is never named there)')
    g.add_argument('--license', metavar='LICENSE_ID',
                   help='the license of the published weights, as a Hub license id (apache-2.0, mit, cc-by-4.0, '
                        '...); without it the card says none was chosen')
    g.add_argument('--resume', help="'auto' (newest complete checkpoint in --output-dir) or a checkpoint folder")
    g.add_argument('--overwrite', action='store_true', help='replace the run in --output-dir')
    g.add_argument('--push-to-hub', metavar='REPO_ID', help='upload the finished folder')
    g.add_argument('--report-to', default='none', choices=('none', 'tensorboard', 'trackio', 'wandb'),
                   help='experiment tracker (through Accelerate)')
    g.add_argument('--log-wandb', action='store_true', help="timm's flag: the same as --report-to wandb")
    return p


def load_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """The keys of a YAML recipe, checked against the flags, as argparse defaults."""
    if not os.path.isfile(path):
        raise ConfigError(f'--config {path}: no such file')
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'--config {path}: not valid YAML ({first_line(e)})') from None
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
                kind = getattr(action.type, 'kind', action.type.__name__)
                raise ConfigError(f'--config {path}: {key}: {value!r} is not a valid {kind}') from None
        if action.choices and value not in action.choices:
            raise ConfigError(f'--config {path}: {key} must be one of {", ".join(action.choices)}, got {value!r}')
        out[dest] = value
    return out


def given_flags(argv: Optional[List[str]]) -> Set[str]:
    """The destinations of the flags ``argv`` sets (a parser whose defaults are all suppressed)."""
    parser = build_train_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return set(vars(given))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The flags, over the ``--config`` recipe, over the defaults; ``args.given`` names what the user set
    (the situational recipe of :mod:`.recipes` fills in the rest once the data and model are known)."""
    parser = build_train_parser()
    pre, _ = parser.parse_known_args(argv)
    config = load_config(pre.config, parser) if pre.config else {}
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    args.given = given_flags(argv) | set(config)
    args.recipe = None
    if not (args.data_dir or args.dataset or args.train_csv):
        # no data given: the embedded digits recipe fills in what neither the command line nor the config set
        parser.set_defaults(**{**DIGITS_RECIPE, **config})
        given = args.given
        args = parser.parse_args(argv)
        args.given = given | set(DIGITS_RECIPE)
        args.recipe = 'embedded digits (configs/digits.yaml)'
    check_args(args)
    return args


# flags that say how this invocation runs rather than what it trains: not part of a repeatable config
INVOCATION_FLAGS = ('config', 'resume', 'overwrite', 'lr_find', 'push_to_hub', 'log_wandb')


def repeatable_config(config) -> Dict[str, Any]:
    """Every training flag's final value in a resolved :class:`~.run_config.RunConfig` (recipe and ``--lr auto``
    included), keyed as ``--config`` reads them."""
    flags = {a.dest for a in build_train_parser()._actions if a.dest != 'help'}
    return {dest.replace('_', '-'): value for dest, value in sorted(config.as_dict().items())
            if dest in flags and dest not in INVOCATION_FLAGS and value is not None}


def check_args(args: argparse.Namespace) -> None:
    positive = dict(epochs=args.epochs, batch_size=args.batch_size, grad_accum_steps=args.grad_accum_steps,
                    checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                    lr_find_steps=args.lr_find_steps)
    for name, value in positive.items():
        if value is None or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.lr != 'auto' and (args.lr <= 0 or not math.isfinite(args.lr)):
        raise ConfigError(f'--lr must be a positive number, got {args.lr}')
    if args.val_csv and not args.train_csv:
        raise ConfigError('--val-csv needs --train-csv')
    if args.streaming and not args.dataset:
        raise ConfigError('--streaming streams a --dataset; shards written by fishzoo shards stream from --data-dir')
    if args.dataset and args.train_csv:
        raise ConfigError('give either --dataset or --train-csv, not both')
    if args.digits and (args.data_dir or args.dataset or args.train_csv):
        raise ConfigError('--digits selects classes of the embedded digits; it does not go with other data')
    if args.threshold_tuning != 'none' and not (args.multilabel or args.train_csv):
        raise ConfigError('--threshold-tuning is for multi-label training (--multilabel or --train-csv)')
    if args.freeze_epochs < 0:
        raise ConfigError(f'--freeze-epochs must be 0 or more, got {args.freeze_epochs}')
    if args.checkpointing_steps < 0:
        raise ConfigError(f'--checkpointing-steps must be 0 (none) or more, got {args.checkpointing_steps}')
    if args.img_size is not None and not 8 <= args.img_size <= MAX_INPUT_SIDE:
        raise ConfigError(f'--img-size must be from 8 to {MAX_INPUT_SIDE} px, got {args.img_size}')
    for flag, value in (('--drop', args.drop), ('--drop-path', args.drop_path)):
        if not 0 <= value < 1:  # also false for nan
            raise ConfigError(f'{flag} is a probability from 0 to below 1, got {value}')
    if args.log_wandb:
        args.report_to = 'wandb'
    if args.amp and args.mixed_precision in (None, 'auto'):
        args.mixed_precision = 'fp16' if args.amp_dtype == 'float16' and torch.cuda.is_available() else 'bf16'
    if args.compile is True:  # compile: true in a YAML recipe
        args.compile = 'inductor'
    if isinstance(args.val_split, str) and not args.dataset:
        raise ConfigError(f'--val-split {args.val_split}: a split name is for --dataset; give a fraction such as 0.2')
    if args.report_to != 'none':
        if not getattr(accelerate.utils, f'is_{args.report_to}_available')():
            raise ConfigError(f'--report-to {args.report_to}: the {args.report_to} package is not installed '
                              f'(pip install {args.report_to})')


TRAIN_CONFIG = 'train_config.yaml'


def write_train_config(config) -> Path:
    """``OUTPUT_DIR/train_config.yaml``: :func:`repeatable_config` with a header saying how to rerun it."""
    path = Path(config.output_dir) / TRAIN_CONFIG
    header = (f'# every setting of this run (recipe: {config.recipe}); repeat it with\n'
              f'#   fishzoo-train --config {path} --output-dir NEW_DIR\n')
    return write_file(path, header + yaml.safe_dump(repeatable_config(config), sort_keys=False))
