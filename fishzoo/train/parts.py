"""The parts of a training run, built from its resolved configuration: data, model, transforms, loaders,
optimizer, schedule, loss, Mixup and EMA.

Each ``create_*`` / ``load_*`` function reads its settings (a :class:`~.run_config.RunConfig`, or the argparse
namespace in a notebook) and changes none of them. :func:`build_parts` returns the parts of a
:class:`~.resolve.ResolvedRun` ready for ``Accelerator.prepare``; the :class:`~fishzoo.train.trainer.Trainer`
takes them as they are, so a test (or a notebook) can hand it parts of its own.
"""
import logging
import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchvision import transforms as T

from fishzoo import data, shards
from fishzoo.errors import CheckpointError, ConfigError, describe
from fishzoo.finetune import classifier_names
from fishzoo.images import image_mode
from fishzoo.loading import load_model

from .loader import dataloader_kwargs
from .run_config import RunConfig
from .schedule import LRSchedule

_logger = logging.getLogger('fishzoo.train')


@dataclass
class TrainingParts:
    """Everything a run trains with, before ``Accelerator.prepare``, and the configuration it was built from."""
    config: RunConfig
    model: nn.Module
    data: data.TrainValData
    data_config: Dict[str, Any]  # input size, interpolation, mean/std, crop: what the hub folder records
    train_loader: Any  # a DataLoader, or a shards.StreamLoader over streamed shards
    val_loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mixup: Optional[Mixup] = None
    ema: Optional[ModelEmaV3] = None

    @property
    def num_classes(self) -> int:
        return len(self.data.class_names)

    @property
    def multilabel(self) -> bool:
        return self.data.multilabel


def load_initial_checkpoint(model: nn.Module, path: str) -> None:
    """``--initial-checkpoint``: weights read safely (safetensors or plain tensors) into the built model."""
    try:
        if path.endswith('.safetensors'):
            state = load_file(path)
        else:
            state = torch.load(path, map_location='cpu', weights_only=True)
            for key in ('state_dict_ema', 'state_dict', 'model'):  # timm's and common checkpoint wrappers
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
                    break
        state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
        expected = model.state_dict()
        wrong = [f'{k} {list(v.shape)} vs {list(expected[k].shape)}' for k, v in state.items()
                 if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if wrong or missing or unexpected:
            raise CheckpointError('does not fit the model: ' + '; '.join(
                f'{what} ({", ".join(keys[:3])}{", ..." if len(keys) > 3 else ""})' for what, keys in (
                    ('shape mismatches, checkpoint vs model', wrong), ('missing keys', missing),
                    ('unexpected keys', unexpected)) if keys))
        model.load_state_dict(state)
    except FileNotFoundError:
        raise ConfigError(f'--initial-checkpoint {path}: no such file') from None
    except (CheckpointError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, SafetensorError,
            AttributeError) as e:
        raise ConfigError(f'--initial-checkpoint {path}: {e if isinstance(e, CheckpointError) else describe(e)}') \
            from None


def load_data(config: RunConfig) -> data.TrainValData:
    """The data source the flags name (the embedded digits when none), multi-hot when ``--multilabel``."""
    mode = image_mode(config.in_chans)
    if config.train_csv:
        loaded = data.csv_data(config.train_csv, config.val_csv, config.image_root, config.classes, config.val_split,
                               config.seed, mode, config.strict_images)
    elif config.dataset and config.streaming:
        loaded = shards.shard_data(shards.hf_stream_manifest(config.dataset, config.data_dir, config.val_split),
                                   mode, config.seed)
    elif config.dataset:
        loaded = data.hf_data(config.dataset, config.data_dir, config.val_split, config.seed, mode)
    elif config.data_dir and shards.is_shard_folder(config.data_dir):
        loaded = shards.shard_data(config.data_dir, mode, config.seed)
    elif config.data_dir:
        loaded = data.image_folder_data(config.data_dir, config.val_split, config.seed, mode, config.strict_images)
    else:
        classes = [c.strip() for c in config.digits.split(',')] if config.digits else None
        loaded = data.digits_data(config.val_split or 0.2, config.seed, mode, classes)
    for image, reason in loaded.skipped[:5]:
        _logger.warning('skipped %s: %s', image, reason)
    if loaded.skipped:
        _logger.warning('skipped %d unreadable images in all (--strict-images makes this an error)',
                        len(loaded.skipped))
    if config.num_classes and config.num_classes != len(loaded.class_names):
        raise ConfigError(f'--num-classes {config.num_classes} does not match the {len(loaded.class_names)} '
                          'classes of the data')
    if config.multilabel and not loaded.multilabel:
        if isinstance(loaded.train, shards.ShardStream):
            raise ConfigError(f'--multilabel: the shards of --data-dir {config.data_dir} are single-label; write '
                              'them from a multi-label CSV (fishzoo shards --train-csv)')
        for split in (loaded.train, loaded.val):
            split.targets = data.one_hot_targets(split.targets, len(loaded.class_names))
        loaded.multilabel = True
    return loaded


def create_model(config: RunConfig, num_classes: int, class_names: Optional[List[str]] = None) -> nn.Module:
    """The model with a head for ``num_classes``; a pretrained head for other classes is re-initialised."""
    model = load_model(config.model, pretrained=config.pretrained, label=f'--model {config.model}',
                       num_classes=num_classes, in_chans=config.in_chans, drop_rate=config.drop,
                       drop_path_rate=config.drop_path)
    if config.pretrained:
        source_classes = model.pretrained_cfg.get('num_classes')
        source_names = model.pretrained_cfg.get('label_names')
        other_labels = source_names is not None and class_names is not None and \
            [str(n) for n in source_names] != [str(n) for n in class_names]
        if source_classes != num_classes or other_labels:
            if source_classes == num_classes:  # same size, other classes: timm kept the old head
                model.reset_classifier(num_classes)
            why = f' (labels {",".join(map(str, source_names))} -> {",".join(class_names)})' if other_labels else ''
            _logger.info('replaced the classifier: %s -> %d classes%s; re-initialised %s', source_classes,
                         num_classes, why, ', '.join(classifier_names(model)))
    if config.initial_checkpoint:
        load_initial_checkpoint(model, config.initial_checkpoint)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_transforms(config: RunConfig, data_config: Dict[str, Any]):
    """timm's training (augmenting) and evaluation transforms for the model's data config."""
    train_tf = create_transform(
        data_config['input_size'], is_training=True, no_aug=config.no_aug, scale=config.scale, ratio=config.ratio,
        train_crop_mode=config.train_crop_mode, hflip=config.hflip, vflip=config.vflip,
        color_jitter=config.color_jitter, auto_augment=config.aa, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], re_prob=config.reprob, re_mode=config.remode)
    if config.rotate and not config.no_aug:
        train_tf = T.Compose([T.RandomRotation(config.rotate), train_tf])
    val_tf = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])
    return train_tf, data.bounded_eval_transform(val_tf, data_config)


def create_loss(config: RunConfig, multilabel: bool) -> nn.Module:
    if multilabel:
        return nn.BCEWithLogitsLoss()
    if config.mixup > 0 or config.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup makes (smoothed) soft targets
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()


def create_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    try:
        return create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                   momentum=config.momentum, layer_decay=config.layer_decay)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f'--opt {config.opt}: {str(e).strip() or "unknown optimizer"} '
                          f'(with --lr {config.lr}, --momentum {config.momentum}, '
                          f'--weight-decay {config.weight_decay})') from None


def create_mixup(config: RunConfig, multilabel: bool, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup/CutMix when asked for (single-label only: a mixed multi-hot target is no label set)."""
    if (config.mixup > 0 or config.cutmix > 0) and not multilabel:
        return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                     switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing, num_classes=num_classes)
    return None


def create_train_loader(config: RunConfig, dataset, device='cpu', num_processes: int = 1, rank: int = 0):
    """The training loader: shuffled batches of ``--batch-size`` (the last partial one dropped), or, for
    streamed shards, this process's part of every epoch (:class:`~fishzoo.shards.StreamLoader`)."""
    if isinstance(dataset, shards.ShardStream):
        dataset.batch_size, dataset.rank, dataset.world, dataset.seed = \
            config.batch_size, rank, num_processes, config.seed
        return shards.StreamLoader(dataset, device, config.workers, torch.device(device).type == 'cuda')
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                       **dataloader_kwargs(config.workers, device))


def build_parts(run, num_processes: int = 1, device='cpu', rank: int = 0) -> TrainingParts:
    """Every part of a :class:`~.resolve.ResolvedRun` (its ``lr`` settled: see :func:`.lr_find.find_lr`);
    ``num_processes`` splits the batches and the schedule; ``device`` is where the model trains (pinned
    memory for CUDA), ``rank`` this process's place among them (for streamed shards)."""
    config, loaded, model = run.config, run.data, run.model
    if config.lr == 'auto':
        raise ConfigError('--lr auto: find the learning rate first (fishzoo.train.lr_find.find_lr)')
    train_loader = create_train_loader(config, loaded.train, device, num_processes, rank)
    val_loader = torch.utils.data.DataLoader(
        loaded.val, batch_size=config.validation_batch_size or config.batch_size, shuffle=False,
        **dataloader_kwargs(config.workers, device))
    optimizer = create_optimizer(config, model)
    # a DataLoader counts every process's batches (Accelerate shards them); a stream counts this process's
    batches = len(train_loader) if isinstance(train_loader, shards.StreamLoader) else len(train_loader) / num_processes
    updates_per_epoch = math.ceil(batches / config.grad_accum_steps)
    return TrainingParts(
        config=config, model=model, data=loaded, data_config=run.data_config, train_loader=train_loader,
        val_loader=val_loader, optimizer=optimizer, schedule=LRSchedule(optimizer, config, updates_per_epoch),
        loss_fn=create_loss(config, loaded.multilabel),
        mixup=create_mixup(config, loaded.multilabel, len(loaded.class_names)),
        ema=ModelEmaV3(model, decay=config.model_ema_decay) if config.model_ema else None)
