"""The learning-rate schedule of a run: timm's schedulers, torch's one-cycle and plateau, one interface."""
from typing import Optional

import torch
from timm.scheduler import create_scheduler_v2

from fishzoo.errors import ConfigError


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
            try:
                self.timm, _ = create_scheduler_v2(
                    optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
                    decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
                    warmup_epochs=args.warmup_epochs, patience_epochs=args.patience_epochs,
                    step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)
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
