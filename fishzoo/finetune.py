"""Fine-tuning helpers for any timm model: a new head, a frozen backbone, gradual unfreezing, thresholds.

In a notebook::

    import timm
    from fishzoo import finetune

    model = timm.create_model('resnet34', pretrained=True)
    finetune.new_head(model, num_classes=14)          # names the re-initialised tensors
    finetune.freeze_backbone(model)                   # only the classifier trains; BN statistics stay put
    optimizer = timm.optim.create_optimizer_v2(model, 'sgd', lr=0.01)   # skips frozen parameters

    # or: classifier only for 2 epochs, then one stage more per epoch from the top (fastai style);
    # the optimizer comes first, so that it holds the parameters that are unfrozen later
    model = timm.create_model('fishnet99', pretrained=True, num_classes=14)
    optimizer = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3)
    unfreezer = finetune.GradualUnfreezer(model, freeze_epochs=2, optimizer=optimizer)
    for epoch in range(epochs):
        unfreezer.set_epoch(epoch)                    # before model.train() and the epoch's batches
        ...

Modes of ``fishzoo-train --finetune``: ``frozen`` (the backbone frozen with timm's ``freeze``, BatchNorm
turned into ``FrozenBatchNorm2d``), ``full`` (everything trains, ``--layer-decay`` optional) and
``gradual`` (:class:`GradualUnfreezer`). Gradual unfreezing cannot replace modules the way timm's
``freeze`` / ``unfreeze`` do, since the optimizer (and DDP) hold the original parameters; it switches
``requires_grad`` and keeps the BatchNorm layers of frozen stages in eval mode instead.

Multi-label metrics and threshold tuning live in :mod:`fishzoo.metrics`.
"""
import logging
from typing import List, Optional

import torch
import torch.nn as nn
from timm.models import group_parameters
from timm.utils import freeze

from fishzoo.errors import ConfigError

_logger = logging.getLogger(__name__)

MODES = ('frozen', 'full', 'gradual')
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def classifier_names(model: nn.Module) -> List[str]:
    """Names of the classifier's parameters (timm's ``pretrained_cfg['classifier']``)."""
    classifier = model.get_classifier()
    ids = {id(p) for p in classifier.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def new_head(model: nn.Module, num_classes: int) -> List[str]:
    """Replace the classifier by a new one for ``num_classes`` (timm's ``reset_classifier``).

    Returns the names of the re-initialised tensors, which are also logged.
    """
    before = model.get_classifier()
    old = getattr(before, 'out_features', None) or getattr(before, 'out_channels', None) or 0
    model.reset_classifier(num_classes)
    names = classifier_names(model)
    _logger.info('new classifier: %d -> %d classes (re-initialised %s)', old, num_classes, ', '.join(names))
    return names


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _backbone_modules(model: nn.Module) -> List[str]:
    """The largest submodules that hold no classifier parameter (the classifier path is kept trainable)."""
    keep = set(classifier_names(model))
    out = []

    def visit(module: nn.Module, prefix: str):
        for name, child in module.named_children():
            full = f'{prefix}{name}'
            names = {f'{full}.{n}' for n, _ in child.named_parameters()}
            if not names & keep:
                if any(True for _ in child.parameters()) or any(isinstance(m, _BN_TYPES) for m in child.modules()):
                    out.append(full)
            else:
                visit(child, f'{full}.')
    visit(model, '')
    return out


def freeze_backbone(model: nn.Module) -> List[str]:
    """Freeze everything but the classifier with timm's ``freeze``; returns the frozen submodules.

    BatchNorm layers become ``FrozenBatchNorm2d``, so their running statistics never move, in train mode too.
    """
    modules = _backbone_modules(model)
    freeze(model, modules, include_bn_running_stats=True)
    _logger.info('froze the backbone (%s); %d trainable parameters remain',
                 ', '.join(modules), trainable_parameters(model))
    return modules


def stage_groups(model: nn.Module) -> List[List[str]]:
    """Parameter names per stage, from the stem to the head, by the model's coarse ``group_matcher``.

    The last group holds the classifier (timm puts unmatched head parameters last).
    """
    groups = group_parameters(model, model.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    if not set(classifier_names(model)) <= set(ordered[-1]):
        raise ConfigError(f'{type(model).__name__}: the classifier is not in the last group of its group_matcher')
    return ordered


class GradualUnfreezer:
    """Classifier only for ``freeze_epochs`` epochs, then one more stage per epoch from the top.

    Frozen stages get ``requires_grad=False`` and their BatchNorm layers stay in eval mode (a forward
    pre-hook), so their running statistics do not move however often ``model.train()`` is called.
    Build the optimizer first and pass it: an optimizer built afterwards (timm's skips parameters without
    gradients) would never update the stages unfrozen later.
    """

    def __init__(self, model: nn.Module, freeze_epochs: int = 1, optimizer: Optional[torch.optim.Optimizer] = None):
        if freeze_epochs < 0:
            raise ConfigError(f'freeze_epochs must be >= 0, got {freeze_epochs}')
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group['params']}
            missing = [n for n, p in model.named_parameters() if id(p) not in held]
            if missing:
                raise ConfigError(f'the optimizer does not hold {len(missing)} parameters (first: {missing[0]}); '
                                 'create it over all parameters before the GradualUnfreezer')
        self.model = model
        self.freeze_epochs = freeze_epochs
        self.groups = stage_groups(model)
        self._params = dict(model.named_parameters())
        module_of = {}
        for name, module in model.named_modules():
            for pname, _ in module.named_parameters(prefix=name, recurse=False):
                module_of[pname] = module
        self._bn_of_group = [
            [module_of[n] for n in group if n in module_of and isinstance(module_of[n], _BN_TYPES)]
            for group in self.groups]
        self._hooks = {}
        self.trainable_groups = -1
        self.set_epoch(0)

    def groups_trainable_at(self, epoch: int) -> int:
        """How many groups, counted from the head, train during ``epoch`` (0-based)."""
        return min(len(self.groups), 1 + max(0, epoch - self.freeze_epochs + 1))

    def set_epoch(self, epoch: int) -> List[int]:
        """Apply the schedule for ``epoch``; returns the indices of groups unfrozen by this call."""
        count = self.groups_trainable_at(epoch)
        if count == self.trainable_groups:
            return []
        first_trainable = len(self.groups) - count
        previous_first = len(self.groups) - max(self.trainable_groups, 0)
        newly = list(range(first_trainable, previous_first))
        for index, group in enumerate(self.groups):
            trainable = index >= first_trainable
            for name in group:
                self._params[name].requires_grad_(trainable)
            for bn in self._bn_of_group[index]:
                hook = self._hooks.pop(id(bn), None)
                if hook is not None:
                    hook.remove()
                if not trainable:
                    self._hooks[id(bn)] = bn.register_forward_pre_hook(_stay_in_eval)
        self.trainable_groups = count
        if epoch > 0 or first_trainable > 0:
            _logger.info('epoch %d: %d of %d parameter groups train (%d parameters)', epoch + 1, count,
                         len(self.groups), trainable_parameters(self.model))
        return newly


def _stay_in_eval(module, args):
    module.train(False)
