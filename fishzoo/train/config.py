"""A run's configuration, resolved once: :class:`RunConfig` holds every setting, read-only.

What the user typed (flags over a ``--config`` file over the defaults, :func:`~.args.parse_args`) is not yet
what the run trains with: the model source implies ``--pretrained`` and ``--in-chans``, data without a
validation split gets a default hold-out, and the recipe of :mod:`.recipes` fills in what the user left to
it once the data and the model are known. :func:`resolve_run` makes those decisions, each a function that
returns the settings it decides, and combines them into one :class:`RunConfig`; nothing later changes it.
Finding the learning rate (``--lr auto``) is one more explicit step (:func:`.lr_find.find_lr`), whose result
enters through :meth:`RunConfig.replace`.
"""
import argparse
import dataclasses
import logging
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
from timm.data import resolve_input_data_config

from fishzoo import data
from fishzoo.cpu_features import cpu_features
from fishzoo.errors import ConfigError, FishzooError
from fishzoo.finetune import freeze_backbone
from fishzoo.hub_folder import check_hub_folder, hub_repo_folder
from fishzoo.loading import resolve_source

from .parts import build_transforms, create_model, load_data
from .recipes import Situation, choose_recipe, min_positives, recipe_settings

_logger = logging.getLogger('fishzoo.train')

DEFAULT_HOLD_OUT = 0.2


class RunConfig:
    """Every setting of a run, read like the argparse namespace it comes from (``config.lr``), and read-only:
    :meth:`replace` returns a changed copy."""
    __slots__ = ('_values',)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, '_values', MappingProxyType(dict(values)))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'RunConfig':
        return cls(vars(args))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f'the run configuration has no setting {name!r}') from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f'the run configuration is read-only: use .replace({name}=...)')

    def __delattr__(self, name: str) -> None:
        raise AttributeError('the run configuration is read-only')

    def replace(self, **changes: Any) -> 'RunConfig':
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise AttributeError(f'the run configuration has no setting {unknown[0]!r}')
        return RunConfig({**self._values, **changes})

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.as_dict() == other.as_dict()

    __hash__ = None  # mutable values (lists) inside

    def __repr__(self) -> str:
        return f'RunConfig({", ".join(f"{k}={v!r}" for k, v in sorted(self._values.items()))})'


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """The resolved configuration with what resolving it built: the data (transforms set) and the model."""
    config: RunConfig
    data: data.TrainValData
    model: nn.Module
    data_config: Dict[str, Any]  # input size, interpolation, mean/std, crop: what the hub folder records

    def replace_config(self, **changes: Any) -> 'ResolvedRun':
        return dataclasses.replace(self, config=self.config.replace(**changes))


def model_source_settings(settings) -> Dict[str, Any]:
    """``pretrained`` and ``in_chans`` as ``--model`` implies them, said in the log.

    A folder or hub model, and any ``--finetune``, load the weights (fine-tuning a random backbone is never
    what was meant); ``--in-chans`` defaults to the folder model's own, and a different value is logged as
    the stem adaptation it is.
    """
    source = resolve_source(settings.model)
    decided: Dict[str, Any] = {}
    if not settings.pretrained and (source.has_weights or settings.finetune):
        why = f'--finetune {settings.finetune}' if settings.finetune and not source.has_weights \
            else f'--model {settings.model}'
        _logger.info('loading the weights of %s (implied by %s)', settings.model, why)
        decided['pretrained'] = True
    source_chans = None
    if source.has_weights:
        try:
            folder = source.folder if source.kind == 'folder' else hub_repo_folder(source.location)
            config = check_hub_folder(folder)
        except (FishzooError, OSError) as e:
            raise ConfigError(f'--model {settings.model}: {e}') from None
        input_size = config.get('pretrained_cfg', {}).get('input_size') or [None]
        source_chans = config.get('model_args', {}).get('in_chans', input_size[0])
    if settings.in_chans is None:
        decided['in_chans'] = source_chans or 3
    elif source_chans and settings.in_chans != source_chans:
        _logger.info('--in-chans %d: adapting the stem of %s from %d to %d input channels (timm adapt_input_conv)',
                     settings.in_chans, settings.model, source_chans, settings.in_chans)
    return decided


def mixed_precision_setting(requested: Optional[str], device: torch.device) -> Optional[str]:
    """What ``Accelerator(mixed_precision=...)`` gets for ``--mixed-precision requested`` on ``device``, said in
    the log when fishzoo decides it.

    'auto' on the CPU is bf16 where the CPU has AMX-BF16 (a FishNet-150 step is 2.25x fp32 there) and 'no'
    elsewhere (without AMX bf16 convolutions are slower than fp32), unless accelerate's own configuration asks
    for 16 bits (``ACCELERATE_MIXED_PRECISION``, which ``accelerate launch`` sets from its config: 'no' is its
    default, so it does not count as a choice). On GPUs 'auto' leaves it to accelerate's configuration (None).
    """
    if requested not in (None, 'auto'):
        return requested
    configured = os.environ.get('ACCELERATE_MIXED_PRECISION', 'no').lower()
    if device.type != 'cpu' or configured not in ('no', ''):
        return None
    features = cpu_features()
    chosen = 'bf16' if features.fast_precision == 'bf16' else 'no'
    _logger.info('mixed precision: %s on the CPU, as %s (--mixed-precision %s overrides)',
                 'bf16 autocast' if chosen == 'bf16' else 'none (fp32)', features.why(),
                 'no' if chosen == 'bf16' else 'bf16')
    return chosen


def hold_out_settings(settings) -> Dict[str, Any]:
    """``val_split`` when the data has no validation part of its own and none was asked for: 20%, said in
    the log (class folders without train/ and val/, or a --train-csv without --val-csv)."""
    if settings.val_split is not None:
        return {}
    if settings.train_csv and not settings.val_csv:
        if not Path(settings.train_csv).is_file():
            return {}  # loading the data says what is wrong, before anything is said about holding out
        why = 'no --val-csv given'
    elif settings.data_dir and not settings.dataset and not settings.train_csv \
            and Path(settings.data_dir).is_dir() and not data.has_train_val_folders(settings.data_dir):
        why = f'--data-dir {settings.data_dir} has no train/ and val/ sub-folders'
    else:
        return {}
    _logger.info('%s: holding out %d%% of the training data for validation, stratified by class '
                 '(--val-split sets the fraction)', why, round(100 * DEFAULT_HOLD_OUT))
    return dict(val_split=DEFAULT_HOLD_OUT)


def resolve_run(args: argparse.Namespace, num_processes: int = 1) -> ResolvedRun:
    """The run's every setting decided once (model source, hold-out, recipe), with its data and model.

    ``num_processes`` splits the global batch the recipe chooses. ``lr`` may still be ``'auto'``: find it
    with :func:`.lr_find.find_lr` and :meth:`ResolvedRun.replace_config` before :func:`.parts.build_parts`.
    """
    config = RunConfig.from_args(args)
    config = config.replace(**model_source_settings(config))
    config = config.replace(**hold_out_settings(config))
    loaded = load_data(config)
    model = create_model(config, len(loaded.class_names), loaded.class_names)
    if config.finetune == 'frozen':
        freeze_backbone(model)
    # adapts mean/std to the model's channels
    data_config = resolve_input_data_config(model, args=dict(img_size=config.img_size) if config.img_size else {})
    if config.recipe is None:
        situation = Situation(
            finetuning=bool(config.pretrained or config.finetune or config.initial_checkpoint),
            multilabel=loaded.multilabel, train_images=len(loaded.train),
            input_size=max(data_config['input_size'][1:]), epochs=config.epochs,
            global_batch=config.batch_size * num_processes * config.grad_accum_steps,
            min_val_positives=min_positives(loaded.val.targets) if loaded.multilabel else None,
            batch_given='batch_size' in config.given, batch_divisor=num_processes * config.grad_accum_steps)
        config = config.replace(**recipe_settings(config, choose_recipe(situation)), recipe=situation.describe())
    else:
        _logger.info('recipe: %s', config.recipe)
    if config.batch_size * num_processes > len(loaded.train):
        raise ConfigError(f'--batch-size {config.batch_size} (x {num_processes} processes) is larger than the '
                          f'training set ({len(loaded.train)} images)')
    loaded.train.transform, loaded.val.transform = build_transforms(config, data_config)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ResolvedRun(config, loaded, model, data_config)


def settled_lr(suggestion: float) -> float:
    """The rate ``--lr auto`` trains with: the range test's suggestion to 3 significant digits."""
    return float(f'{suggestion:.3g}')


