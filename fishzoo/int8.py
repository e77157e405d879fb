"""int8 post-training quantization of exported models, with an accuracy check and an accuracy-aware search.

- OpenVINO: NNCF's ``nncf.quantize`` (calibration images through the model's eval transform); with
  validation data, ``nncf.quantize_with_accuracy_control``, which reverts the most sensitive layers to
  higher precision until the metric drop fits ``max_drop``.
- ONNX: onnxruntime's ``quantize_static`` (QDQ, int8 weights per channel, uint8 activations: the VNNI
  kernels' format). The accuracy-aware search is fishzoo's own: every quantized convolution's output is
  compared with the fp32 model's (signal-to-quantization-noise ratio, onnxruntime's ``qdq_loss_debug``), and
  the noisiest 1, 2, 4, ... convolutions stay in fp32 until the drop fits.

The metric is top-1 (single-label) or micro-F1 (multi-label), in percent; the drop is in points.
"""
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from fishzoo.calibration import LabelledImages, agreement, score
from fishzoo.errors import QuantizeError, describe
from fishzoo.runtime import Runner, require

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
        if validation is None:
            quantized = nncf.quantize(ov_model, calib, subset_size=len(batches))
        else:
            val = nncf.Dataset([(x.numpy(), y.numpy()) for x, y in validation.loader(1)])

            def validate(compiled, items) -> float:
                logits = np.concatenate([compiled(x)[0] for x, _ in items])
                targets = np.concatenate([y for _, y in items])
                return score(logits, targets, validation.multilabel, thresholds)

            quantized = nncf.quantize_with_accuracy_control(
                ov_model, calib, val, validation_fn=validate, max_drop=max_drop, subset_size=len(batches))
    except Exception as e:
        raise QuantizeError(f'OpenVINO int8 quantization failed ({describe(e, 200)})') from None
    accuracy = None
    if validation is not None:
        from fishzoo.runtime import openvino_runner
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(quantized, f'{tmp}/m.xml')
            accuracy = measure(fp32_runner, openvino_runner(f'{tmp}/m.xml'), validation, max_drop, thresholds)
        accuracy.quantized_layers, accuracy.total_layers = _quantized_convolutions(quantized)
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


def _quantize_onnx(src: Path, dst: Path, batches: List[np.ndarray], exclude: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from fishzoo.export import INPUT_NAME
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


def _conv_sensitivity(src: Path, quantized: Path, batches: List[np.ndarray]) -> List[str]:
    """The quantized model's convolutions, noisiest first: output SQNR against the fp32 model's, on up to
    8 calibration batches (onnxruntime's qdq_loss_debug)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug
    from fishzoo.export import INPUT_NAME
    with tempfile.TemporaryDirectory() as tmp:
        fp32_aug, qdq_aug = f'{tmp}/fp32.onnx', f'{tmp}/qdq.onnx'
        debug.modify_model_output_intermediate_tensors(str(src), fp32_aug)
        debug.modify_model_output_intermediate_tensors(str(quantized), qdq_aug)
        sample = batches[:8]
        float_acts = debug.collect_activations(fp32_aug, _Reader(INPUT_NAME, sample))
        qdq_acts = debug.collect_activations(qdq_aug, _Reader(INPUT_NAME, sample))
    errors = debug.compute_activation_error(debug.create_activation_matching(qdq_acts, float_acts))
    convs = {out: node.name for node in onnx.load(str(src)).graph.node if node.op_type in ('Conv', 'Gemm', 'MatMul')
             for out in node.output}
    ranked = sorted((err['xmodel_err'], convs[name]) for name, err in errors.items()
                    if name in convs and np.isfinite(err.get('xmodel_err', np.nan)))
    return [node for _, node in ranked]  # lowest SQNR (most noise) first


def onnx_int8(src: Union[str, Path], dst: Union[str, Path], calibration: LabelledImages,
              validation: Optional[LabelledImages] = None, fp32_runner: Optional[Runner] = None,
              max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5) -> Optional[Int8Accuracy]:
    """Quantize the ONNX file ``src`` to ``dst`` (QDQ); with ``validation``, keep the noisiest convolutions
    in fp32 until the drop fits ``max_drop`` and return the measured accuracy."""
    require('onnxruntime', 'onnx', 'ONNX int8')
    from fishzoo.runtime import onnx_runner
    src, dst = Path(src), Path(dst)
    batches = [b.numpy() for b in calibration.batches(8)]
    try:
        _quantize_onnx(src, dst, batches)
    except Exception as e:
        raise QuantizeError(f'ONNX int8 quantization failed ({describe(e, 200)})') from None
    if validation is None:
        return None
    accuracy = measure(fp32_runner, onnx_runner(dst), validation, max_drop, thresholds)
    total = len(_conv_sensitivity_names(src))
    if accuracy.drop > max_drop:
        ranked = _conv_sensitivity(src, dst, batches)
        count = 1
        while accuracy.drop > max_drop and count <= len(ranked):
            exclude = ranked[:count]
            _quantize_onnx(src, dst, batches, exclude)
            accuracy = measure(fp32_runner, onnx_runner(dst), validation, max_drop, thresholds)
            accuracy.layers_in_fp32 = list(exclude)
            _logger.info('ONNX int8: %d convolutions in fp32: drop %.2f points', count, accuracy.drop)
            count = min(count * 2, len(ranked)) if count < len(ranked) else count + 1
        if accuracy.drop > max_drop:
            _logger.warning('ONNX int8: the drop stays %.2f points even with every convolution in fp32', accuracy.drop)
    accuracy.total_layers = total
    accuracy.quantized_layers = total - len(accuracy.layers_in_fp32)
    return accuracy


def _conv_sensitivity_names(src: Path) -> List[str]:
    import onnx
    return [n.name for n in onnx.load(str(src)).graph.node if n.op_type in ('Conv', 'Gemm', 'MatMul')]
