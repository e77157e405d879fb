"""``--lr-find``: an LR range test (Smith 2015, as fastai's ``lr_find``), and ``--lr auto``, which trains with its
suggestion.

The learning rate rises exponentially from ``start_lr`` to ``end_lr`` over at most ``steps`` updates on the
training data, with the model, optimizer (layer decay included), loss and Mixup the run is configured with;
the loss is smoothed and the sweep stops once it diverges. The model's weights and buffers are restored
afterwards, so the run itself starts from the same initialisation. The suggestion is the learning rate of
the smoothed loss's minimum divided by 10: the last rate where the loss still falls steadily, and the
rule fastai's ``lr_min`` and Smith's paper use.
"""
import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn as nn

_logger = logging.getLogger('fishzoo.train')


@dataclass
class LRFindResult:
    lrs: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)  # smoothed, bias-corrected
    lr_at_min: float = math.nan
    suggestion: float = math.nan
    seconds: float = 0.0

    def write(self, output_dir: Path) -> None:
        """``lr_find.json`` (every step) and ``lr_find.png`` (loss against log LR, suggestion marked)."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / 'lr_find.json').write_text(json.dumps(asdict(self), indent=2))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, color='C1', linestyle='--', label=f'suggested lr {self.suggestion:.2e}')
        ax.set(xscale='log', xlabel='learning rate', ylabel='training loss (smoothed)', title='LR range test')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / 'lr_find.png', dpi=100)
        plt.close(fig)


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
        result.suggestion = result.lr_at_min / 10
    result.seconds = time.perf_counter() - start
    return result
