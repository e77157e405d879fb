"""Classification metrics, in one place: what training reports, what threshold tuning maximises, and what
the int8 checks compare.

- Single-label: loss, top-1 and top-5 (timm's ``accuracy``).
- Multi-label: micro/macro F1, mean average precision and subset accuracy (scikit-learn) at decision
  thresholds, and :func:`tune_thresholds`, which picks those thresholds on validation probabilities.
- Comparing two models (fp32 against int8): :func:`score` (top-1 or micro-F1 in percent) and
  :func:`agreement` (how often both decide the same).

scikit-learn is imported inside the functions that use it: it comes with the ``[train]`` extra.
"""
from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn
from timm.utils import accuracy

from fishzoo.errors import ConfigError

THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.005), 3)
THRESHOLD_MODES = ('global', 'per-class')


def single_label_metrics(logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy in percent (top-k with k = the class count when fewer)."""
    k = min(5, logits.shape[1])
    top1, top5 = accuracy(logits, targets, topk=(1, k))
    return dict(loss=nn.functional.cross_entropy(logits, targets).item(), top1=top1.item(), top5=top5.item())


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, thresholds=0.5) -> Dict[str, float]:
    """Micro/macro F1, mean average precision and subset accuracy (scikit-learn) at ``thresholds``."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score
    predicted = probs >= np.asarray(thresholds)
    present = targets.sum(0) > 0  # AP is undefined for a class without positives
    return dict(
        f1_micro=float(f1_score(targets, predicted, average='micro', zero_division=0)),
        f1_macro=float(f1_score(targets, predicted, average='macro', zero_division=0)),
        map=float(average_precision_score(targets[:, present], probs[:, present], average='macro'))
        if present.any() else float('nan'),
        subset_acc=float(accuracy_score(targets, predicted)),
    )


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mode: str = 'global') -> List[float]:
    """Decision thresholds that maximise F1 on (validation) probabilities.

    ``global``: one threshold for every class, maximising micro F1. ``per-class``: each class's own,
    maximising that class's F1 (classes without positives keep 0.5).
    """
    from sklearn.metrics import f1_score
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold tuning must be 'global' or 'per-class', got {mode!r}")
    targets = targets.astype(bool)
    if mode == 'global':
        scores = [f1_score(targets, probs >= t, average='micro', zero_division=0) for t in THRESHOLD_GRID]
        return [float(THRESHOLD_GRID[int(np.argmax(scores))])] * probs.shape[1]
    out = []
    for c in range(probs.shape[1]):
        if not targets[:, c].any():
            out.append(0.5)
            continue
        predicted = probs[:, c][None, :] >= THRESHOLD_GRID[:, None]
        tp = (predicted & targets[:, c]).sum(1)
        f1 = 2 * tp / (predicted.sum(1) + targets[:, c].sum())
        out.append(float(THRESHOLD_GRID[int(np.argmax(f1))]))
    return out


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))


def score(logits: np.ndarray, targets: np.ndarray, multilabel: bool, thresholds=0.5) -> float:
    """Top-1 accuracy in percent (single-label) or micro-F1 in percent (multi-label, at ``thresholds``)."""
    if multilabel:
        return 100 * multilabel_metrics(_sigmoid(logits), targets, thresholds)['f1_micro']
    return 100 * float((logits.argmax(1) == targets).mean())


def agreement(logits: np.ndarray, reference: np.ndarray, multilabel: bool, thresholds=0.5) -> float:
    """How often two models decide the same, in percent: same top-1 class, or same label set."""
    if multilabel:
        t = np.asarray(thresholds)
        same = ((_sigmoid(logits) >= t) == (_sigmoid(reference) >= t)).all(1)
        return 100 * float(same.mean())
    return 100 * float((logits.argmax(1) == reference.argmax(1)).mean())
