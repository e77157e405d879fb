"""``--lr-find``: an LR range test (Smith 2015, as fastai's ``lr_find``), and ``--lr auto``, which trains with its
suggestion.

The learning rate rises exponentially from ``start_lr`` to ``end_lr`` over at most ``steps`` updates on the
training data, with the model, optimizer (layer decay included), loss and Mixup the run is configured with;
the loss is smoothed and the sweep stops once it diverges. The model's weights and buffers are restored
afterwards, so the run itself starts from the same initialisation. The suggestion is fastai's default rule
(``valley``): the middle of the longest stretch over which the smoothed loss keeps falling. The older rule,
the minimum's rate divided by 10 (Smith's, fastai's ``lr_min``), is kept in ``lr_find.json`` as ``lr_min``; on
a flat curve such as AdamW from scratch it lands too high (0.089 on the class-folder digits at batch 64, 2
points below the recipe's 0.003; ``valley`` said 0.0034).
"""
import copy
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn as nn
from accelerate import PartialState

from fishzoo.errors import ConfigError
from fishzoo.hub.atomic import write_file

from .parts import create_loss, create_mixup, create_optimizer, create_train_loader

_logger = logging.getLogger('fishzoo.train')


@dataclass
class LRFindResult:
    lrs: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)  # smoothed, bias-corrected
    lr_at_min: float = math.nan
    lr_min: float = math.nan  # lr_at_min / 10
    suggestion: float = math.nan  # valley
    seconds: float = 0.0

    def write(self, output_dir: Path) -> None:
        """``lr_find.json`` (every step) and ``lr_find.png`` (loss against log LR, suggestion marked)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        write_file(output_dir / 'lr_find.json', json.dumps(asdict(self), indent=2))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color='C1', linestyle='--', label=f'suggested lr {self.suggestion:.2e} (valley)')
        ax.axvline(self.lr_min, color='C2', linestyle=':', label=f'lowest loss / 10: {self.lr_min:.2e}')
        ax.set(xscale='log', xlabel='learning rate', ylabel='training loss (smoothed)', title='LR range test')
        # the divergence at the end would flatten the part that matters: show the loss up to a little above
        # its start
        lowest, first = min(self.losses), self.losses[0]
        ax.set_ylim(lowest - 0.05 * (first - lowest + 1e-8), first + 0.5 * (first - lowest + 1e-8))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format='png', dpi=100)
        plt.close(fig)
        write_file(output_dir / 'lr_find.png', png.getvalue())


def valley(losses: List[float]) -> int:
    """The index halfway along the longest falling stretch of ``losses`` (fastai's ``valley``).

    "Falling" is a longest decreasing subsequence, so a noisy bump does not end the stretch; the run starts
    where the subsequence's length says it must. O(n^2) on the ~100 steps of a sweep.
    """
    n = len(losses)
    run = [1] * n  # run[i]: the longest decreasing subsequence ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end = i
    start = end - run[end]  # as fastai counts it: one step before the subsequence's first element
    return max(0, start) + (end - start) // 2


def lr_range_test(
        model: nn.Module,
        loader,
        loss_fn: Callable,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        device: torch.device,
        mixup: Optional[Callable] = None,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        steps: int = 100,
        smoothing: float = 0.98,
        diverge: float = 4.0,
) -> LRFindResult:
    """Sweep the learning rate over ``steps`` updates (cycling ``loader`` as needed); ``model`` is restored."""
    import time
    start = time.perf_counter()
    saved = copy.deepcopy(model.state_dict())
    model.to(device).train()
    optimizer = make_optimizer(model)
    result, average, best = LRFindResult(), 0.0, math.inf
    batches = iter(loader)
    for step in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
        for group in optimizer.param_groups:  # timm's layer decay keeps its per-group scale
            group['lr'] = lr * group.get('lr_scale', 1.0)
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        images, targets = images.to(device), targets.to(device)
        if mixup is not None:
            images, targets = mixup(images, targets)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        average = smoothing * average + (1 - smoothing) * value
        smoothed = average / (1 - smoothing ** (step + 1))
        result.lrs.append(lr)
        result.losses.append(smoothed)
        best = min(best, smoothed)
        if step > 10 and smoothed > diverge * best:
            break
    model.load_state_dict(saved)
    if result.losses:
        at_min = min(range(len(result.losses)), key=result.losses.__getitem__)
        result.lr_at_min = result.lrs[at_min]
        result.lr_min = result.lr_at_min / 10
        result.suggestion = result.lrs[valley(result.losses)]
    result.seconds = time.perf_counter() - start
    return result


def find_lr(run, device='cpu') -> float:
    """The LR range test on a :class:`~.resolve.ResolvedRun`'s own model, data, loss, Mixup and optimizer
    (``--lr-find``, ``--lr auto``); writes ``lr_find.json`` / ``.png`` to the output folder (main process) and
    returns the suggested rate. A resumed ``--lr auto`` run returns the rate it started with."""
    config = run.config
    output_dir = Path(config.output_dir)
    previous = output_dir / 'lr_find.json'
    if config.resume and config.lr == 'auto' and previous.is_file():
        suggestion = json.loads(previous.read_text())['suggestion']
        _logger.info('--lr auto: lr %.3g from %s (resuming)', suggestion, previous)
        return suggestion
    found = lr_range_test(
        run.model, create_train_loader(config, run.data.train, device), create_loss(config, run.data.multilabel),
        lambda m: create_optimizer(config.replace(lr=1e-7), m), torch.device(device),
        mixup=create_mixup(config, run.data.multilabel, len(run.data.class_names)), steps=config.lr_find_steps)
    if not math.isfinite(found.suggestion):
        raise ConfigError('--lr-find: the loss was not finite from the first step; check the data and --opt')
    if PartialState().is_main_process:
        found.write(output_dir)
    _logger.info('LR range test: %d steps in %.0f s; suggested lr %.2e, the middle of the loss\'s longest fall '
                 '(fastai\'s valley; lowest loss at %.2e, a tenth of it %.2e) (%s)', len(found.lrs), found.seconds,
                 found.suggestion, found.lr_at_min, found.lr_min, output_dir / 'lr_find.png')
    return found.suggestion
