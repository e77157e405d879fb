"""The parts of a training run, built from its arguments: data, model, transforms, loaders, optimizer,
schedule, loss, Mixup and EMA.

:func:`build_parts` returns them ready for ``Accelerator.prepare``; the :class:`~fishzoo.train.trainer.Trainer`
takes them as they are, so a test (or a notebook) can hand it parts of its own.
"""
import argparse
import json
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data import Mixup, create_transform, resolve_input_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchvision import transforms as T

from fishzoo import data
from fishzoo.errors import CheckpointError, ConfigError, FishzooError, describe
from fishzoo.finetune import classifier_names, freeze_backbone, one_hot_targets
from fishzoo.hub_folder import check_hub_folder, hub_repo_folder
from fishzoo.loading import load_model, resolve_source

from .lr_find import lr_range_test
from .recipes import Situation, apply_recipe, choose_recipe, min_positives
from .schedule import LRSchedule

_logger = logging.getLogger('fishzoo.train')


@dataclass
class TrainingParts:
    """Everything a run trains with, before ``Accelerator.prepare``."""
    model: nn.Module
    data: data.TrainValData
    data_config: Dict[str, Any]  # input size, interpolation, mean/std, crop: what the hub folder records
    train_loader: torch.utils.data.DataLoader
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


def settle_model_source(args: argparse.Namespace) -> None:
    """Fill ``--pretrained`` and ``--in-chans`` from what ``--model`` is, saying so in the log.

    A folder or hub model, and any ``--finetune``, load the weights (fine-tuning a random backbone is never
    what was meant); ``--in-chans`` defaults to the folder model's own, and a different value is logged as
    the stem adaptation it is.
    """
    source = resolve_source(args.model)
    if not args.pretrained and (source.has_weights or args.finetune):
        why = f'--finetune {args.finetune}' if args.finetune and not source.has_weights else f'--model {args.model}'
        _logger.info('loading the weights of %s (implied by %s)', args.model, why)
        args.pretrained = True
    source_chans = None
    if source.has_weights:
        try:
            folder = source.folder if source.kind == 'folder' else hub_repo_folder(source.location)
            config = check_hub_folder(folder)
        except (FishzooError, OSError) as e:
            raise ConfigError(f'--model {args.model}: {e}') from None
        input_size = config.get('pretrained_cfg', {}).get('input_size') or [None]
        source_chans = config.get('model_args', {}).get('in_chans', input_size[0])
    if args.in_chans is None:
        args.in_chans = source_chans or 3
    elif source_chans and args.in_chans != source_chans:
        _logger.info('--in-chans %d: adapting the stem of %s from %d to %d input channels (timm adapt_input_conv)',
                     args.in_chans, args.model, source_chans, args.in_chans)


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


def hold_out_by_default(args: argparse.Namespace, why: str, fraction: float = 0.2) -> None:
    args.val_split = fraction
    _logger.info('%s: holding out %d%% of the training data for validation, stratified by class '
                 '(--val-split sets the fraction)', why, round(100 * fraction))


def load_data(args: argparse.Namespace) -> data.TrainValData:
    """The data source the flags name (the embedded digits when none), multi-hot when ``--multilabel``."""
    mode = data.image_mode(args.in_chans)
    if args.train_csv:
        if args.val_split is None and not args.val_csv:
            hold_out_by_default(args, 'no --val-csv given')
        loaded = data.csv_data(args.train_csv, args.val_csv, args.image_root, args.classes, args.val_split,
                               args.seed, mode, args.strict_images)
    elif args.dataset:
        loaded = data.hf_data(args.dataset, args.data_dir, args.val_split, args.seed, mode)
    elif args.data_dir:
        if args.val_split is None and not data.has_train_val_folders(args.data_dir):
            hold_out_by_default(args, f'--data-dir {args.data_dir} has no train/ and val/ sub-folders')
        loaded = data.image_folder_data(args.data_dir, args.val_split, args.seed, mode, args.strict_images)
    else:
        classes = [c.strip() for c in args.digits.split(',')] if args.digits else None
        loaded = data.digits_data(args.val_split or 0.2, args.seed, mode, classes)
    for image, reason in loaded.skipped[:5]:
        _logger.warning('skipped %s: %s', image, reason)
    if loaded.skipped:
        _logger.warning('skipped %d unreadable images in all (--strict-images makes this an error)',
                        len(loaded.skipped))
    if args.num_classes and args.num_classes != len(loaded.class_names):
        raise ConfigError(f'--num-classes {args.num_classes} does not match the {len(loaded.class_names)} '
                          'classes of the data')
    if args.multilabel and not loaded.multilabel:
        for split in (loaded.train, loaded.val):
            split.targets = one_hot_targets(split.targets, len(loaded.class_names))
        loaded.multilabel = True
    return loaded


def create_model(args: argparse.Namespace, num_classes: int, class_names: Optional[List[str]] = None) -> nn.Module:
    """The model with a head for ``num_classes``; a pretrained head for other classes is re-initialised."""
    model = load_model(args.model, pretrained=args.pretrained, label=f'--model {args.model}',
                       num_classes=num_classes, in_chans=args.in_chans, drop_rate=args.drop,
                       drop_path_rate=args.drop_path)
    if args.pretrained:
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
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def build_transforms(args: argparse.Namespace, data_config: Dict[str, Any]):
    """timm's training (augmenting) and evaluation transforms for the model's data config."""
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


def create_loss(args: argparse.Namespace, multilabel: bool) -> nn.Module:
    if multilabel:
        return nn.BCEWithLogitsLoss()
    if args.mixup > 0 or args.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup makes (smoothed) soft targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def create_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    try:
        return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                   momentum=args.momentum, layer_decay=args.layer_decay)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f'--opt {args.opt}: {str(e).strip() or "unknown optimizer"} '
                          f'(with --lr {args.lr}, --momentum {args.momentum}, '
                          f'--weight-decay {args.weight_decay})') from None


def find_lr(args: argparse.Namespace, model: nn.Module, loader, loss_fn, mixup, device) -> None:
    """``--lr-find`` / ``--lr auto``: the LR range test on this run's parts; its files go to --output-dir, and
    with ``--lr auto`` its suggestion becomes ``args.lr``."""
    previous = Path(args.output_dir) / 'lr_find.json'
    if args.resume and args.lr == 'auto' and previous.is_file():  # a resumed run keeps the rate it started with
        args.lr = float(f"{json.loads(previous.read_text())['suggestion']:.3g}")
        _logger.info('--lr auto: lr %g from %s (resuming)', args.lr, previous)
        return

    def make_optimizer(m):
        return create_optimizer(argparse.Namespace(**{**vars(args), 'lr': 1e-7}), m)
    found = lr_range_test(model, loader, loss_fn, make_optimizer, torch.device(device), mixup=mixup,
                          steps=args.lr_find_steps)
    if not math.isfinite(found.suggestion):
        raise ConfigError('--lr-find: the loss was not finite from the first step; check the data and --opt')
    if PartialState().is_main_process:
        found.write(Path(args.output_dir))
    _logger.info('LR range test: %d steps in %.0f s; suggested lr %.2e, the middle of the loss\'s longest fall '
                 '(fastai\'s valley; lowest loss at %.2e, a tenth of it %.2e) (%s)', len(found.lrs), found.seconds,
                 found.suggestion, found.lr_at_min, found.lr_min, Path(args.output_dir) / 'lr_find.png')
    if args.lr == 'auto':
        args.lr = float(f'{found.suggestion:.3g}')
        _logger.info('--lr auto: training with lr %g', args.lr)


def build_parts(args: argparse.Namespace, num_processes: int = 1, device='cpu') -> TrainingParts:
    """Every part of the run the flags describe; ``num_processes`` splits the batches and the schedule, and
    ``device`` is where an LR range test (``--lr-find``, ``--lr auto``) runs."""
    settle_model_source(args)
    loaded = load_data(args)
    model = create_model(args, len(loaded.class_names), loaded.class_names)
    if args.finetune == 'frozen':
        freeze_backbone(model)
    # adapts mean/std to the model's channels
    data_config = resolve_input_data_config(model, args=dict(img_size=args.img_size) if args.img_size else {})
    if args.recipe is None:
        situation = Situation(
            finetuning=bool(args.pretrained or args.finetune or args.initial_checkpoint), multilabel=loaded.multilabel,
            train_images=len(loaded.train), input_size=max(data_config['input_size'][1:]), epochs=args.epochs,
            global_batch=args.batch_size * num_processes * args.grad_accum_steps,
            min_val_positives=min_positives(loaded.val.targets) if loaded.multilabel else None,
            batch_given='batch_size' in args.given, batch_divisor=num_processes * args.grad_accum_steps)
        apply_recipe(args, choose_recipe(situation))
        args.recipe = situation.describe()
    else:
        _logger.info('recipe: %s', args.recipe)
    loaded.train.transform, loaded.val.transform = build_transforms(args, data_config)

    if args.batch_size * num_processes > len(loaded.train):
        raise ConfigError(f'--batch-size {args.batch_size} (x {num_processes} processes) is larger than the training '
                          f'set ({len(loaded.train)} images)')
    train_loader = torch.utils.data.DataLoader(
        loaded.train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0)
    val_loader = torch.utils.data.DataLoader(
        loaded.val, batch_size=args.validation_batch_size or args.batch_size, shuffle=False,
        num_workers=args.workers)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    mixup = None
    if (args.mixup > 0 or args.cutmix > 0) and not loaded.multilabel:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                      num_classes=len(loaded.class_names))
    loss_fn = create_loss(args, loaded.multilabel)
    if args.lr_find or args.lr == 'auto':
        find_lr(args, model, train_loader, loss_fn, mixup, device)
    optimizer = create_optimizer(args, model)
    updates_per_epoch = math.ceil(len(train_loader) / num_processes / args.grad_accum_steps)
    return TrainingParts(
        model=model, data=loaded, data_config=data_config, train_loader=train_loader, val_loader=val_loader,
        optimizer=optimizer, schedule=LRSchedule(optimizer, args, updates_per_epoch),
        loss_fn=loss_fn, mixup=mixup,
        ema=ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None)
