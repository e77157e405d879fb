"""int8 post-training quantization of exported models, with an accuracy check and an accuracy-aware search.

- OpenVINO: NNCF's ``nncf.quantize`` (calibration images through the model's eval transform); with
  validation data, ``nncf.quantize_with_accuracy_control``, which reverts the most sensitive layers to
  higher precision until the metric drop fits ``max_drop``.
- ONNX: onnxruntime's ``quantize_static`` (QDQ, int8 weights per channel, uint8 activations: the VNNI
  kernels' format). The accuracy-aware search is fishzoo's own: the activations whose quantization damages
  them most (per-channel signal-to-quantization-noise ratio on calibration images) stay in fp32 with the
  layers around them, 1, 2, 4, ... of them, until the drop fits.

The metric is top-1 (single-label) or micro-F1 (multi-label), in percent; the drop is in points.
"""
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from fishzoo.errors import QuantizeError, describe
from fishzoo.metrics import agreement, score

from .calibration import LabelledImages
from .runtime import INPUT_NAME, Runner, onnx_runner, openvino_reason, openvino_runner, require

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

    @property
    def drop(self) -> float:
        return self.fp32 - self.int8

    def as_dict(self) -> Dict:
        return {**asdict(self), 'drop': round(self.drop, 3)}


def predict_all(run: Runner, data: LabelledImages, batch_size: int = 32):
    """Logits and targets of every validation image."""
    logits, targets = [], []
    for images, target in data.loader(batch_size):
        logits.append(run(images.numpy()))
        targets.append(target.numpy())
    return np.concatenate(logits), np.concatenate(targets)


def measure(fp32: Runner, int8: Runner, data: LabelledImages, max_drop: float, thresholds=0.5) -> Int8Accuracy:
    reference, targets = predict_all(fp32, data)
    quantized, _ = predict_all(int8, data)
    return Int8Accuracy(
        metric='f1_micro' if data.multilabel else 'top1',
        fp32=score(reference, targets, data.multilabel, thresholds),
        int8=score(quantized, targets, data.multilabel, thresholds),
        agreement=agreement(quantized, reference, data.multilabel, thresholds),
        images=len(targets), max_drop=max_drop)


# --- OpenVINO ------------------------------------------------------------------------------------

def _quantized_convolutions(ov_model) -> tuple:
    """(convolutions fed by a FakeQuantize, all convolutions and matmuls) of an OpenVINO model."""
    kinds = ('Convolution', 'GroupConvolution', 'MatMul')
    ops = [op for op in ov_model.get_ops() if op.get_type_name() in kinds]
    quantized = 0
    for op in ops:
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ('Convert', 'Multiply', 'Subtract', 'Reshape'):
            weight = weight.input_value(0).get_node()
        if op.input_value(0).get_node().get_type_name() == 'FakeQuantize' or weight.get_type_name() == 'FakeQuantize' \
                or weight.get_element_type().get_type_name() in ('i8', 'u8'):
            quantized += 1
    return quantized, len(ops)


def openvino_int8(ov_model, calibration: LabelledImages, validation: Optional[LabelledImages] = None,
                  fp32_runner: Optional[Runner] = None, max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5):
    """An int8 OpenVINO model (NNCF), and its measured accuracy when ``validation`` is given."""
    require('nncf', 'deploy', 'OpenVINO int8')
    import nncf
    import openvino as ov
    nncf_logger = logging.getLogger('nncf')
    nncf_logger.setLevel(logging.WARNING)
    batches = [b.numpy() for b in calibration.batches(1)]
    calib = nncf.Dataset(batches)
    try:
        quantized = nncf.quantize(ov_model, calib, subset_size=len(batches))
    except Exception as e:
        raise QuantizeError(f'OpenVINO int8 quantization failed ({openvino_reason(e)})') from None
    if validation is None:
        return quantized, None

    def checked(candidate) -> Int8Accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(candidate, f'{tmp}/m.xml')
            result = measure(fp32_runner, openvino_runner(f'{tmp}/m.xml'), validation, max_drop, thresholds)
        result.quantized_layers, result.total_layers = _quantized_convolutions(candidate)
        return result

    accuracy = checked(quantized)
    if accuracy.drop <= max_drop:  # the common case: no search, no repeated validation
        return quantized, accuracy
    val = nncf.Dataset([(x.numpy(), y.numpy()) for x, y in validation.loader(1)])

    def validate(compiled, items) -> float:
        logits = np.concatenate([compiled(x)[0] for x, _ in items])
        targets = np.concatenate([y for _, y in items])
        return score(logits, targets, validation.multilabel, thresholds)

    try:
        quantized = nncf.quantize_with_accuracy_control(
            ov_model, calib, val, validation_fn=validate, max_drop=max_drop, subset_size=len(batches))
    except Exception as e:
        raise QuantizeError(f'OpenVINO int8 accuracy-aware quantization failed ({openvino_reason(e)})') from None
    accuracy = checked(quantized)
    return quantized, accuracy


# --- ONNX ----------------------------------------------------------------------------------------

class _Reader:
    """onnxruntime's CalibrationDataReader protocol over image batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]):
        self.input_name, self.batches, self.position = input_name, list(batches), 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0

    def __iter__(self):  # qdq_loss_debug iterates the reader instead
        return iter([{self.input_name: b} for b in self.batches])


def _quantize_onnx(src: Path, dst: Path, batches: List[np.ndarray], exclude: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    # quantize_static logs a pre-processing hint on the root logger: the exporter already folded BatchNorm
    # and inferred shapes, which is what that pre-processing does
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
            quantize_static(str(src), str(dst), _Reader(INPUT_NAME, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), extra_options={'ActivationSymmetric': False})
    finally:
        root.setLevel(level)


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


def _activation_damage(quantized: Path, batches: List[np.ndarray]) -> List[str]:
    """The activations ``quantized`` quantizes, most damaged by their own quantize/dequantize first
    (per-channel SQNR of each QuantizeLinear input against its DequantizeLinear output, on up to 8
    calibration batches; weights are quantized per channel and left out)."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(quantized))
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == 'Constant' for o in n.output}
    quantize_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == 'QuantizeLinear'}
    pairs = [(quantize_of[n.input[0]], n.output[0]) for n in graph.node
             if n.op_type == 'DequantizeLinear' and n.input[0] in quantize_of
             and quantize_of[n.input[0]] not in constants and quantize_of[n.input[0]] != INPUT_NAME]
    pairs = list(dict(pairs).items())  # one dequantized copy per activation
    existing = {o.name for o in graph.output}
    for name in {t for pair in pairs for t in pair} - existing:
        graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Q/DQ pair
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    collected = {name: [] for name in names}
    for batch in batches[:8]:
        for name, value in zip(names, session.run(names, {INPUT_NAME: batch})):
            collected[name].append(value)
    damage = sorted((channel_sqnr(collected[pre], collected[post]), pre) for pre, post in pairs)
    return [name for _, name in damage]


# activations onnxruntime quantizes together with the convolution before them (one shared scale)
_FUSED_ACTIVATIONS = ('Relu', 'Clip', 'LeakyRelu', 'Sigmoid', 'HardSigmoid', 'HardSwish')


def _nodes_around(graph, producers: Dict, tensor: str) -> List[str]:
    """Nodes to leave unquantized so that ``tensor`` stays fp32: its producer (and, for an activation, the
    layer feeding it) and its consumers; ``producers`` maps each tensor to the node writing it."""
    nodes = [n.name for n in graph.node if tensor in n.input]
    producer = producers.get(tensor)
    while producer is not None:
        nodes.append(producer.name)
        if producer.op_type not in _FUSED_ACTIVATIONS or not producer.input:
            break
        producer = producers.get(producer.input[0])
    return nodes


def doubling(n: int) -> List[int]:
    """1, 2, 4, ... up to and including ``n``."""
    counts = [1]
    while counts[-1] < n:
        counts.append(min(2 * counts[-1], n))
    return counts if n else []


def onnx_int8(src: Union[str, Path], dst: Union[str, Path], calibration: LabelledImages,
              validation: Optional[LabelledImages] = None, fp32_runner: Optional[Runner] = None,
              max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5) -> Optional[Int8Accuracy]:
    """Quantize the ONNX file ``src`` to ``dst`` (QDQ); with ``validation``, keep the most damaged activations
    (and the layers around them) in fp32, 1, 2, 4, ... of them, until the drop fits ``max_drop``; returns the
    measured accuracy."""
    require('onnxruntime', 'onnx', 'ONNX int8')
    import onnx
    src, dst = Path(src), Path(dst)
    batches = [b.numpy() for b in calibration.batches(8)]
    try:
        _quantize_onnx(src, dst, batches)
    except Exception as e:
        raise QuantizeError(f'ONNX int8 quantization failed ({describe(e, 200)})') from None
    if validation is None:
        return None
    accuracy = measure(fp32_runner, onnx_runner(dst), validation, max_drop, thresholds)
    graph = onnx.load(str(src)).graph
    layers = [n.name for n in graph.node if n.op_type in ('Conv', 'Gemm', 'MatMul')]
    if accuracy.drop > max_drop:
        ranked = _activation_damage(dst, batches)
        producers = {out: node for node in graph.node for out in node.output}
        for count in doubling(len(ranked)):
            exclude = list(dict.fromkeys(n for t in ranked[:count] for n in _nodes_around(graph, producers, t)))
            _quantize_onnx(src, dst, batches, exclude)
            accuracy = measure(fp32_runner, onnx_runner(dst), validation, max_drop, thresholds)
            accuracy.layers_in_fp32 = [n for n in exclude if n in layers]
            _logger.info('ONNX int8: %d activations (%d layers) in fp32: drop %.2f points', count,
                         len(accuracy.layers_in_fp32), accuracy.drop)
            if accuracy.drop <= max_drop:
                break
        else:
            _logger.warning('ONNX int8: the drop stays %.2f points even with every quantized activation in fp32',
                            accuracy.drop)
    accuracy.total_layers = len(layers)
    accuracy.quantized_layers = len(layers) - len(accuracy.layers_in_fp32)
    return accuracy
