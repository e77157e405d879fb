"""int8 accuracy, shared by every int8 path: the measurement against fp32 on held-out images, the damage
measure that ranks activations, and the one accuracy-aware search that keeps layers out of int8.

The search is the same for an ONNX file (onnxruntime's quantizer), a PT2E graph (``fishzoo.quantize``,
ExecuTorch, LiteRT): every activation the quantized model quantizes is ranked by its own quantize/dequantize
damage (per-channel signal-to-quantization-noise ratio on calibration images); the layers around the worst
1, 2, 4, ... of them are left in floating point, the model quantized again without them and measured, until
the held-out drop fits ``max_drop``. Each int8 path supplies the ranking and how to quantize without a set of
layers; :func:`keep_in_fp32_until_it_fits` runs the loop.

The metric is top-1 (single-label) or micro-F1 (multi-label), in percent; the drop is in points. A drop is
judged no finer than the validation set can resolve: on 78 images one image is 1.28 points, so a
``max_drop`` of 0.5 there is judged at one image (:attr:`Int8Accuracy.allowed`) instead of demanding that no
decision change at all.
"""
import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Generic, List, Sequence, Tuple, TypeVar

import numpy as np

from fishzoo.metrics import agreement, score

from .calibration import LabelledImages
from .runner import Runner

_logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.5  # points of top-1 / micro-F1


@dataclass
class Int8Accuracy:
    """What the int8 model was measured at, on ``images`` held-out images."""
    metric: str  # 'top1' | 'f1_micro'
    fp32: float
    int8: float
    agreement: float  # % of images where both decide the same
    images: int
    max_drop: float
    layers_in_fp32: List[str] = field(default_factory=list)  # kept out of int8 by the search
    quantized_layers: int = 0
    total_layers: int = 0
    reference: str = 'fp32'  # what the float model it is compared with computed in (the folder's own precision)

    @property
    def drop(self) -> float:
        return self.fp32 - self.int8

    @property
    def resolution(self) -> float:
        """Points one image is worth on this many images: the finest drop the measurement can tell."""
        return 100.0 / max(self.images, 1)

    @property
    def allowed(self) -> float:
        """The drop judged acceptable: ``max_drop``, or one image's worth where the set cannot resolve it."""
        return max(self.max_drop, self.resolution)

    @property
    def fits(self) -> bool:
        return self.drop <= self.allowed + 1e-9

    def as_dict(self) -> Dict:
        return {**asdict(self), 'drop': round(self.drop, 3), 'allowed': round(self.allowed, 3)}


def resolution_note(accuracy: Int8Accuracy) -> str:
    """One sentence when ``max_drop`` is finer than the validation set resolves; '' otherwise."""
    if accuracy.allowed <= accuracy.max_drop:
        return ''
    return (f'on {accuracy.images} validation images one image is {accuracy.resolution:.2f} points, so a drop of '
            f'{accuracy.max_drop:g} cannot be told from no change: judged at one image ({accuracy.allowed:.2f} '
            f'points); give more --val-data images to judge finer')


def predict_all(run: Runner, data: LabelledImages, batch_size: int = 32):
    """Logits and targets of every validation image."""
    logits, targets = [], []
    for images, target in data.loader(batch_size):
        logits.append(run(images.numpy()))
        targets.append(target.numpy())
    return np.concatenate(logits), np.concatenate(targets)


def measure(fp32: Runner, int8: Runner, data: LabelledImages, max_drop: float, thresholds=0.5,
            reference: str = 'fp32') -> Int8Accuracy:
    """``int8`` against the float model ``fp32`` (run in ``reference`` precision) on ``data``."""
    _logger.info('measuring int8 against %s on %d held-out images', reference, len(data))
    reference_logits, targets = predict_all(fp32, data)
    quantized, _ = predict_all(int8, data)
    return Int8Accuracy(
        reference=reference,
        metric='f1_micro' if data.multilabel else 'top1',
        fp32=score(reference_logits, targets, data.multilabel, thresholds),
        int8=score(quantized, targets, data.multilabel, thresholds),
        agreement=agreement(quantized, reference_logits, data.multilabel, thresholds),
        images=len(targets), max_drop=max_drop)


def channel_sqnr(pre: Sequence[np.ndarray], post: Sequence[np.ndarray]) -> float:
    """Mean over channels of each channel's signal-to-quantization-noise ratio (dB). A tensor-wide SQNR
    misses the usual int8 failure: one channel with a large range sets the scale and the other channels are
    left a few levels, while the large channel still dominates the tensor's signal."""
    a = np.concatenate([np.asarray(x, dtype=np.float64) for x in pre])
    b = np.concatenate([np.asarray(x, dtype=np.float64) for x in post])
    if a.ndim < 2:
        return float('inf')
    axes = tuple(i for i in range(a.ndim) if i != 1)
    signal = (a ** 2).sum(axes)
    noise = ((a - b) ** 2).sum(axes)
    with np.errstate(divide='ignore'):
        sqnr = np.where(noise > 0, 10 * np.log10(signal / np.maximum(noise, 1e-300)), 100.0)  # exact: undamaged
    return float(np.clip(sqnr, -20, 100).mean())


def doubling(n: int) -> List[int]:
    """1, 2, 4, ... up to and including ``n``."""
    counts = [1]
    while counts[-1] < n:
        counts.append(min(2 * counts[-1], n))
    return counts if n else []


Quantized = TypeVar('Quantized')


@dataclass
class SearchResult(Generic[Quantized]):
    """The int8 model the search ended on, its measured accuracy, and the layers it left in floating point."""
    model: Quantized
    accuracy: Int8Accuracy
    excluded: List[str]


def keep_in_fp32_until_it_fits(
        first: Tuple[Quantized, Runner],
        ranked: Callable[[], Sequence[Sequence[str]]],
        quantize_without: Callable[[List[str]], Tuple[Quantized, Runner]],
        fp32: Runner,
        validation: LabelledImages,
        max_drop: float = DEFAULT_MAX_DROP,
        thresholds=0.5,
        what: str = 'int8',
) -> SearchResult:
    """The accuracy-aware search: ``first`` (the fully quantized model and its runner) is measured against
    ``fp32`` on ``validation``; while the drop exceeds ``max_drop``, the layers ``ranked()`` names for the
    1, 2, 4, ... most damaged activations (most damaged first; computed only when needed) stay in floating
    point, and ``quantize_without(layers)`` quantizes again. Ends at the first fit, or with every ranked
    activation kept out (warned)."""
    model, run = first
    accuracy = measure(fp32, run, validation, max_drop, thresholds)
    excluded: List[str] = []
    note = resolution_note(accuracy)
    if note:
        _logger.warning('%s: %s', what, note)
    if accuracy.fits:  # the common case: one measurement
        return SearchResult(model, accuracy, excluded)
    order = list(ranked())
    for count in doubling(len(order)):
        excluded = list(dict.fromkeys(name for names in order[:count] for name in names))
        model, run = quantize_without(excluded)
        accuracy = measure(fp32, run, validation, max_drop, thresholds)
        _logger.info('%s: %d activations (%d layers) kept in floating point: drop %.2f points', what, count,
                     len(excluded), accuracy.drop)
        if accuracy.fits:
            break
    else:
        if order:
            _logger.warning('%s: the drop stays %.2f points even with every quantized activation in floating '
                            'point', what, accuracy.drop)
    return SearchResult(model, accuracy, excluded)


def count_layers(accuracy: Int8Accuracy, layers: Sequence[str], in_fp32: Sequence[str]) -> Int8Accuracy:
    """``accuracy`` with the model's convolution/linear ``layers`` counted: in int8, and kept in fp32."""
    accuracy.layers_in_fp32 = list(in_fp32)
    accuracy.total_layers = len(layers)
    accuracy.quantized_layers = len(layers) - len(accuracy.layers_in_fp32)
    return accuracy
