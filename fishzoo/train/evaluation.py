"""Validation: logits gathered from every process (each image once), and the metrics a run reports.

Single-label: loss, top-1 and top-5 (timm's ``accuracy``). Multi-label: loss, micro/macro F1, mAP and
subset accuracy (:mod:`fishzoo.metrics`).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator
from tqdm.auto import tqdm

from fishzoo.metrics import multilabel_metrics, single_label_metrics, tune_thresholds


@torch.no_grad()
def predict_loader(accelerator: Accelerator, model: nn.Module, loader, channels_last: bool = False
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the whole loader, gathered from every process without duplicates."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc='val', leave=False,
                                disable=None if accelerator.is_local_main_process else True):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(images)
        logits, targets = accelerator.gather_for_metrics((logits.float(), targets))
        all_logits.append(logits.cpu())
        all_targets.append(targets.cpu())
    return torch.cat(all_logits), torch.cat(all_targets)


def metrics_of(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> Dict[str, float]:
    """The run's validation metrics for gathered logits (``samples``: how many images were counted)."""
    if multilabel:
        probs, hot = logits.sigmoid().numpy(), targets.numpy()
        metrics = multilabel_metrics(probs, hot)
        # micro-F1 at 0.5 alone misleads while the outputs are still low: also at the best global threshold
        best = tune_thresholds(probs, hot, 'global')[0]
        metrics['f1_micro_best'] = multilabel_metrics(probs, hot, best)['f1_micro']
        metrics['best_threshold'] = float(best)
        metrics['loss'] = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    else:
        metrics = single_label_metrics(logits, targets)
    metrics['samples'] = len(targets)
    return metrics
