"""Training recipes chosen by situation: the optimizer, schedule and augmentation a run uses for every
setting the user did not give (on the command line or in ``--config``).

The situation is read from the run itself once its data and model are known:

- **fine-tuning** (pretrained weights: ``--pretrained``, a folder or hub model, ``--finetune``,
  ``--initial-checkpoint``) or **from scratch**;
- **multi-label** (``--train-csv``, ``--multilabel``) or single-label;
- **small data** (fewer than ``SMALL_DATA`` training images) or large;
- **low resolution** (input side at most ``LOW_RESOLUTION`` px) or normal.

What each situation gets, and why (the "Recipes" table of docs/training.md says the same, with the study that chose it):

- AdamW with weight decay 0.05 and a cosine schedule everywhere: it trains from scratch and fine-tunes
  without the per-dataset LR search SGD needs (timm's recipes for modern CNNs, fastai's default). Peak LR
  3e-3 from scratch and 2e-3 fine-tuning (fastai's ``fine_tune`` base rate) for a global batch of 64, scaled
  by the square root of the global batch otherwise (timm's ``--lr-base-scale sqrt`` for Adam-family
  optimizers). One warmup epoch when there are 4 or more, and the schedule stepped every update (timm's
  ``--sched-on-updates``): stepped per epoch, the warmup epoch would train at ``--warmup-lr`` (1e-5)
  throughout, an eighth of an 8-epoch run spent learning nothing.
- Small data (under ``SMALL_DATA`` images) trains at global batch 32 unless ``-b`` is given: 8 epochs of
  1,600 images are only 200 updates at 64, and the study's fine-tune went from micro-F1 0.87 to 0.97 on
  twice the updates.
- No discriminative (layer-decay) rates by default: on the study's fine-tune, the stem at a tenth of the
  head's rate cost 0.15 micro-F1 and at a third 0.08; ``--layer-decay`` sets them.
- Crops: multi-label images keep most of the picture (random-resized-crop of 70-100% of the area), since a
  crop that cuts out a labelled object trains the model on a label it cannot see; no flips or rotations
  either, as they may change what a label means (left/right, text), unless asked for. Low-resolution images
  keep 80-100% (a 32 px image cropped to 8% of its area is 9 px of content; CIFAR's pad-4 crop keeps about
  77%). Normal-resolution single-label data keeps timm's ImageNet crop (8-100%) when large and from
  scratch, and 35-100% otherwise (fastai's fine-tuning crop), with horizontal flips.
- Large single-label data from scratch adds RandAugment and label smoothing 0.1 (timm's ResNet
  strikes-back recipes, scaled down); small data does not, as it needs its few epochs to fit, and
  multi-label data does not, as RandAugment rotates and shears.
- Multi-label decision thresholds are tuned on the validation set after training: per class when every
  class has at least ``PER_CLASS_POSITIVES`` positive validation images, else one global threshold
  (per-class thresholds on a handful of positives overfit the validation set).

The embedded digits job (no data flags) has its own fixed recipe, ``configs/digits.yaml``.
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

_logger = logging.getLogger('fishzoo.train')

SMALL_DATA = 10_000  # training images
LOW_RESOLUTION = 64  # px, the input's longer side
PER_CLASS_POSITIVES = 25  # positive validation images per class for per-class thresholds
SCRATCH_LR = 3e-3  # AdamW peak LR at REFERENCE_BATCH, from scratch
FINETUNE_LR = 2e-3  # and fine-tuning (fastai's fine_tune base rate)
REFERENCE_BATCH = 64  # the global batch the recipe LRs are for
SMALL_DATA_BATCH = 32  # small data: the global batch, for twice the updates per epoch of batch 64

# the flags a recipe may set (listed in fishzoo-train --help); anything else keeps its flag default
RECIPE_KEYS = ('batch_size', 'opt', 'lr', 'weight_decay', 'sched', 'warmup_epochs', 'sched_on_updates', 'scale',
               'ratio', 'hflip', 'rotate', 'aa', 'smoothing', 'threshold_tuning')
ADAMW_KEYS = ('lr', 'weight_decay')  # rates tuned for AdamW: not applied to another --opt


@dataclass(frozen=True)
class Situation:
    finetuning: bool
    multilabel: bool
    train_images: int
    input_size: int  # px, the longer side
    epochs: int
    global_batch: int  # the batch the flags give (per process x processes x accumulation)
    min_val_positives: Optional[int] = None  # multi-label: the rarest class's positive validation images
    batch_given: bool = True  # -b/--batch-size set by the user (else small data gets SMALL_DATA_BATCH)
    batch_divisor: int = 1  # processes x gradient accumulation steps: the global batch per per-process one

    @property
    def small_data(self) -> bool:
        return self.train_images < SMALL_DATA

    @property
    def low_resolution(self) -> bool:
        return self.input_size <= LOW_RESOLUTION

    def describe(self) -> str:
        return ', '.join([
            'fine-tuning' if self.finetuning else 'from scratch',
            'multi-label' if self.multilabel else 'single-label',
            f'{"small" if self.small_data else "large"} data ({self.train_images:,} training images)',
            f'{"low" if self.low_resolution else "normal"} resolution ({self.input_size} px)',
        ])


@dataclass
class Recipe:
    situation: Situation
    values: Dict[str, Any] = field(default_factory=dict)
    reasons: Dict[str, str] = field(default_factory=dict)  # a value's key -> why

    def set(self, reason: str, **values) -> None:
        self.values.update(values)
        for key in values:
            self.reasons[key] = reason


def choose_recipe(situation: Situation) -> Recipe:
    """The optimizer, schedule and augmentation values for ``situation`` (see the module docstring)."""
    s = situation
    recipe = Recipe(s)
    global_batch = s.global_batch
    if s.small_data and not s.batch_given:
        per_process = max(1, SMALL_DATA_BATCH // s.batch_divisor)
        global_batch = per_process * s.batch_divisor
        recipe.set(f'small data: more updates per epoch (global batch {global_batch})', batch_size=per_process)
    base_lr = FINETUNE_LR if s.finetuning else SCRATCH_LR
    lr = float(f'{base_lr * math.sqrt(global_batch / REFERENCE_BATCH):.3g}')
    batch_note = '' if global_batch == REFERENCE_BATCH else \
        f', sqrt-scaled from {base_lr:g} at batch {REFERENCE_BATCH}'
    recipe.set(f'AdamW {"fine-tuning" if s.finetuning else "from scratch"}{batch_note}',
               opt='adamw', lr=lr, weight_decay=0.05)
    recipe.set('cosine decay' + (', one warmup epoch' if s.epochs >= 4 else '') + ', stepped every update',
               sched='cosine', warmup_epochs=1 if s.epochs >= 4 else 0, sched_on_updates=True)
    if s.multilabel:
        recipe.set('multi-label: crops keep most of the image, no flips or rotations (label-safe)',
                   scale=[0.7, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.0, rotate=0.0)
        per_class = (s.min_val_positives or 0) >= PER_CLASS_POSITIVES
        recipe.set(f'every class has {PER_CLASS_POSITIVES}+ positive val images' if per_class else
                   f'a class has fewer than {PER_CLASS_POSITIVES} positive val images',
                   threshold_tuning='per-class' if per_class else 'global')
    elif s.low_resolution:
        recipe.set('low resolution: crops keep 80-100% of the image', scale=[0.8, 1.0], ratio=[0.9, 1.1],
                   hflip=0.5)
    elif not s.finetuning and not s.small_data:
        recipe.set("large data from scratch: timm's ImageNet crop", scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3],
                   hflip=0.5)
    else:
        recipe.set('crops keep 35-100% of the image', scale=[0.35, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5)
    if not s.finetuning and not s.small_data and not s.multilabel:
        recipe.set('large data from scratch: RandAugment and label smoothing', aa='rand-m7-mstd0.5-inc1',
                   smoothing=0.1)
    return recipe


def min_positives(targets: Sequence) -> Optional[int]:
    """The rarest class's count of positives in multi-hot ``targets`` (None when there are none)."""
    if not len(targets):
        return None
    return int(np.stack([np.asarray(t) for t in targets]).sum(axis=0).min())


def recipe_settings(config, recipe: Recipe) -> Dict[str, Any]:
    """The recipe values for every setting the user did not give (``config.given``), logged with why.

    The AdamW rates are not applied to another ``--opt``: that optimizer then runs with the flags' own
    defaults, as in timm. ``config`` is read, not changed.
    """
    given = set(getattr(config, 'given', ()))
    other_opt = 'opt' in given and str(config.opt).lower() != recipe.values['opt']
    applied = {key: value for key, value in recipe.values.items()
               if key not in given and not (other_opt and key in ADAMW_KEYS)}
    _logger.info('recipe for %s (flags you give win; every value is in train_config.yaml):',
                 recipe.situation.describe())
    by_reason: Dict[str, List[str]] = {}
    for key, value in applied.items():
        by_reason.setdefault(recipe.reasons[key], []).append(f'{key.replace("_", "-")} {_show(value)}')
    for reason, values in by_reason.items():
        _logger.info('  %s: %s', ', '.join(values), reason)
    kept = sorted(k for k in recipe.values if k in given)
    if kept:
        _logger.info('  yours: %s', ', '.join(f'{k.replace("_", "-")} {_show(getattr(config, k))}' for k in kept))
    if other_opt:
        _logger.info('  --opt %s: the recipe LR and weight decay are for AdamW; using --lr %s, --weight-decay %s',
                     config.opt, _show(config.lr), _show(config.weight_decay))
    return applied


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ' '.join(_show(v) for v in value)
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)
