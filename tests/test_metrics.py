"""fishzoo.metrics: multi-label metrics and thresholds, and the fp32-vs-int8 comparisons."""
import numpy as np
import pytest

from fishzoo import metrics
from fishzoo.errors import ConfigError


def test_tune_thresholds_finds_the_separating_values():
    rng = np.random.default_rng(0)
    targets = rng.random((200, 2)) < 0.4
    probs = np.where(targets, [0.45, 0.8], [0.3, 0.6]) + rng.normal(0, 0.01, (200, 2))
    per_class = metrics.tune_thresholds(probs, targets, 'per-class')
    assert 0.31 < per_class[0] <= 0.44 and 0.61 < per_class[1] <= 0.79
    assert metrics.multilabel_metrics(probs, targets, per_class)['f1_micro'] == 1.0
    assert metrics.multilabel_metrics(probs, targets)['f1_micro'] < 1.0  # 0.5 misses class 0
    global_ = metrics.tune_thresholds(probs, targets, 'global')
    assert len(set(global_)) == 1
    with pytest.raises(ConfigError, match="'global' or 'per-class'"):
        metrics.tune_thresholds(probs, targets, 'weird')


def test_multilabel_metrics_match_hand_computed():
    targets = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.1], [0.8, 0.4]])
    m = metrics.multilabel_metrics(probs, targets)
    # predicted: [1,0],[1,1],[0,0],[1,0]: tp 3, fp 1, fn 1 -> micro F1 0.75; exact rows 0 and 2 -> 0.5
    assert m['f1_micro'] == pytest.approx(0.75) and m['subset_acc'] == pytest.approx(0.5)
    assert m['f1_macro'] == pytest.approx((0.8 + 2 / 3) / 2)


def test_score_and_agreement():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.score(logits, np.array([0, 1, 1]), False) == pytest.approx(200 / 3)
    assert metrics.agreement(logits, logits[:, ::-1], False) == 0
    multi = np.array([[3.0, -3.0], [-3.0, -3.0]])
    assert metrics.score(multi, np.array([[1, 0], [0, 0]]), True) == 100
    assert metrics.agreement(multi, np.array([[3.0, 3.0], [-3.0, -3.0]]), True) == 50


def test_single_label_metrics_cap_top5_at_the_class_count():
    import torch
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    m = metrics.single_label_metrics(logits, torch.tensor([1, 2]))
    assert m['top1'] == pytest.approx(50) and m['top5'] == pytest.approx(100)
