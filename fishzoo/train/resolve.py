"""Resolving a run: the settings decided once, the data loaded and the model built.

What the user typed (flags over a ``--config`` file over the defaults, :func:`~.args.parse_args`) is not yet
what the run trains with: the model source implies ``--pretrained`` and ``--in-chans``, data without a
validation split gets a default hold-out, and the recipe of :mod:`.recipes` fills in what the user left to
it once the data and the model are known. :func:`resolve_run` makes those decisions, each a function that
returns the settings it decides, and combines them into one :class:`~.run_config.RunConfig`; nothing later
changes it.
Finding the learning rate (``--lr auto``) is one more explicit step (:func:`.lr_find.find_lr`), whose result
enters through :meth:`RunConfig.replace`.
"""
import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn as nn
from timm.data import resolve_input_data_config

from fishzoo import data
from fishzoo.errors import ConfigError, FishzooError
from fishzoo.finetune import freeze_backbone
from fishzoo.hub.folder import check_hub_folder, hub_repo_folder
from fishzoo.loading import resolve_source
from fishzoo.shards import is_shard_folder

from .loader import loader_settings
from .parts import build_transforms, create_model, load_data
from .recipes import Situation, choose_recipe, min_positives, recipe_settings
from .run_config import RunConfig

_logger = logging.getLogger('fishzoo.train')

DEFAULT_HOLD_OUT = 0.2


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """The resolved configuration with what resolving it built: the data (transforms set) and the model."""
    config: RunConfig
    data: data.TrainValData
    model: nn.Module
    data_config: Dict[str, Any]  # input size, interpolation, mean/std, crop: what the hub folder records

    def replace_config(self, **changes: Any) -> 'ResolvedRun':
        return dataclasses.replace(self, config=self.config.replace(**changes))


def model_source_settings(config: RunConfig) -> Dict[str, Any]:
    """``pretrained`` and ``in_chans`` as ``--model`` implies them, said in the log.

    A folder or hub model, and any ``--finetune``, load the weights (fine-tuning a random backbone is never
    what was meant); ``--in-chans`` defaults to the folder model's own, and a different value is logged as
    the stem adaptation it is.
    """
    source = resolve_source(config.model)
    decided: Dict[str, Any] = {}
    if not config.pretrained and (source.has_weights or config.finetune):
        why = f'--finetune {config.finetune}' if config.finetune and not source.has_weights \
            else f'--model {config.model}'
        _logger.info('loading the weights of %s (implied by %s)', config.model, why)
        decided['pretrained'] = True
    source_chans = None
    if source.has_weights:
        try:
            folder = source.folder if source.kind == 'folder' else hub_repo_folder(source.location)
            folder_config = check_hub_folder(folder)
        except (FishzooError, OSError) as e:
            raise ConfigError(f'--model {config.model}: {e}') from None
        input_size = folder_config.get('pretrained_cfg', {}).get('input_size') or [None]
        source_chans = folder_config.get('model_args', {}).get('in_chans', input_size[0])
    if config.in_chans is None:
        decided['in_chans'] = source_chans or 3
    elif source_chans and config.in_chans != source_chans:
        _logger.info('--in-chans %d: adapting the stem of %s from %d to %d input channels (timm adapt_input_conv)',
                     config.in_chans, config.model, source_chans, config.in_chans)
    return decided


def hold_out_settings(config: RunConfig) -> Dict[str, Any]:
    """``val_split`` when the data has no validation part of its own and none was asked for: 20%, said in
    the log (class folders without train/ and val/, or a --train-csv without --val-csv)."""
    if config.val_split is not None:
        return {}
    if config.train_csv and not config.val_csv:
        if not Path(config.train_csv).is_file():
            return {}  # loading the data says what is wrong, before anything is said about holding out
        why = 'no --val-csv given'
    elif config.data_dir and not config.dataset and not config.train_csv and Path(config.data_dir).is_dir() \
            and not data.has_train_val_folders(config.data_dir) and not is_shard_folder(config.data_dir):
        why = f'--data-dir {config.data_dir} has no train/ and val/ sub-folders'
    else:
        return {}
    _logger.info('%s: holding out %d%% of the training data for validation, stratified by class '
                 '(--val-split sets the fraction)', why, round(100 * DEFAULT_HOLD_OUT))
    return dict(val_split=DEFAULT_HOLD_OUT)


def resolve_run(args: argparse.Namespace, num_processes: int = 1, device='cpu') -> ResolvedRun:
    """The run's every setting decided once (model source, hold-out, recipe, loader workers), with its data
    and model.

    ``num_processes`` splits the global batch the recipe chooses; ``device`` (where the model trains) sets
    ``--workers auto``. ``lr`` may still be ``'auto'``: find it
    with :func:`.lr_find.find_lr` and :meth:`ResolvedRun.replace_config` before :func:`.parts.build_parts`.
    """
    config = RunConfig.from_args(args)
    config = config.replace(**model_source_settings(config))
    config = config.replace(**hold_out_settings(config))
    loaded = load_data(config)
    model = create_model(config, len(loaded.class_names), loaded.class_names)
    minimum = getattr(model, 'min_input_size', 1)
    if config.img_size and config.img_size < minimum:
        raise ConfigError(f'--img-size {config.img_size}: {config.model} takes images of at least {minimum} px')
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
            min_val_positives=(min(loaded.val.class_counts) if hasattr(loaded.val, 'class_counts')
                               else min_positives(loaded.val.targets)) if loaded.multilabel else None,
            batch_given='batch_size' in config.given, batch_divisor=num_processes * config.grad_accum_steps)
        config = config.replace(**recipe_settings(config, choose_recipe(situation)), recipe=situation.describe())
    else:
        _logger.info('recipe: %s', config.recipe)
    if config.batch_size * num_processes > len(loaded.train):
        processes = f'{num_processes} process' + ('es' if num_processes != 1 else '')
        raise ConfigError(f'--batch-size {config.batch_size} (x {processes}) is larger than the '
                          f'training set ({len(loaded.train)} images)')
    config = config.replace(**loader_settings(config, loaded.train, device))
    loaded.train.transform, loaded.val.transform = build_transforms(config, data_config)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ResolvedRun(config, loaded, model, data_config)


def settled_lr(suggestion: float) -> float:
    """The rate ``--lr auto`` trains with: the range test's suggestion to 3 significant digits."""
    return float(f'{suggestion:.3g}')


