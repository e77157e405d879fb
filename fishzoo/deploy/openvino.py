"""OpenVINO: ``openvino_model.xml`` / ``.bin`` (optimum-intel's names), run by OpenVINO on the CPU, with
dynamic batch, height and width; int8 by NNCF.

The folded model is converted with ``openvino.convert_model``. A folder runs in the precision its export
recorded: OpenVINO's own default for the CPU unless asked otherwise (:func:`fishzoo.precision.for_runtime`).
int8 is ``nncf.quantize`` on calibration images; with validation images
``nncf.quantize_with_accuracy_control``, which reverts the most sensitive layers to higher precision until
the drop fits ``max_drop``.
"""
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.errors import ExportError, ModelLoadError, QuantizeError, describe
from fishzoo.metrics import score
from fishzoo.precision import Precision, from_record

from .accuracy import DEFAULT_MAX_DROP, Int8Accuracy, measure, resolution_note
from .calibration import LabelledImages
from .runner import ExportRequest, Format, Runner, RuntimeFailure, check_against_torch, check_shapes, require

_logger = logging.getLogger(__name__)

FILES = ('openvino_model.xml', 'openvino_model.bin')


def reason(error: BaseException, limit: int = 300) -> str:
    """The reason in an OpenVINO error: its messages start with lines naming the C++ source that threw
    (``Exception from src/inference/src/cpp/core.cpp:84:``), which say nothing to a user."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not (line.startswith('Exception from ') or line.startswith('Check '))]
    return (' '.join(reasons) or describe(error))[:limit]


def compiled_precision(compiled) -> str:
    """What a compiled OpenVINO model computes in, by fishzoo's name: 'fp32', 'bf16' or 'fp16'."""
    ran = compiled.get_property('INFERENCE_PRECISION_HINT')
    return from_record(getattr(ran, 'get_type_name', lambda: str(ran))())


def _hint_config(precision: Optional[Precision]) -> Dict:
    hint = precision.openvino_hint if precision is not None else None
    return {'INFERENCE_PRECISION_HINT': hint} if hint else {}


def runner(source, precision: Optional[Precision] = None, threads: Optional[int] = None) -> Runner:
    """An OpenVINO CPU model (``source``: its .xml file, or an ``ov.Model`` in memory) as a function, computing in
    ``precision`` (None, or the runtime default: OpenVINO's own choice for the CPU); ``run.precision`` is what it
    computes in ('fp32', 'bf16').

    A single image runs on one stream over every core (PERFORMANCE_HINT LATENCY). A batch is split over
    the parallel streams OpenVINO picks for THROUGHPUT (one per core here) and run asynchronously: each
    stream keeps its own core busy instead of every layer being split over all cores (``benchmarks/deploy.py``
    measures it).
    """
    require('openvino', 'deploy', 'the openvino backend')
    import openvino as ov
    config = _hint_config(precision)
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    core = ov.Core()
    from_file = isinstance(source, (str, Path))
    xml = source if from_file else 'the OpenVINO model'  # what errors name
    try:
        model = core.read_model(str(source)) if from_file else source
        latency = core.compile_model(model, 'CPU', {**config, 'PERFORMANCE_HINT': 'LATENCY'})
        throughput = core.compile_model(model, 'CPU', {**config, 'PERFORMANCE_HINT': 'THROUGHPUT'})
    except Exception as e:
        raise ModelLoadError(f'{xml}: OpenVINO could not load it ({reason(e)})') from None
    if len(latency.outputs) != 1:
        raise ModelLoadError(f'{xml}: has {len(latency.outputs)} outputs; a classifier exported by fishzoo has one '
                             '(the logits)')
    output = latency.output(0)
    streams = int(throughput.get_property('NUM_STREAMS'))
    # one request per stream, started and then waited on: no Python callback runs on OpenVINO's threads
    # (AsyncInferQueue's callback needs the GIL while wait_all waits, which hung a test run once)
    requests = [throughput.create_infer_request() for _ in range(streams)] if streams > 1 else []

    def run(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        try:
            if not requests or len(images) < streams:
                return latency(images)[output]
            for request, chunk in zip(requests, np.array_split(images, streams)):
                request.start_async({0: chunk})
            outputs = []
            for request in requests:
                request.wait()
                outputs.append(request.get_output_tensor(0).data.copy())
            return np.concatenate(outputs)
        except Exception as e:
            raise RuntimeFailure(f'{xml}: OpenVINO failed on a batch of shape {list(images.shape)} '
                                 f'({reason(e)})') from None
    run.precision = compiled_precision(latency)
    return run


# --- writing -------------------------------------------------------------------------------------

def export_openvino(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)):
    """The folded model as an OpenVINO ``ov.Model`` with dynamic batch, height and width (in memory)."""
    require('openvino', 'deploy', 'OpenVINO export', ExportError)
    import openvino as ov
    folded = reparameterize_model(model.eval(), inplace=False).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')  # the tracer's notes on the input-size check, which it drops
            return ov.convert_model(folded, example_input=torch.randn(2, *input_size),
                                    input=[ov.PartialShape([-1, input_size[0], -1, -1])])
    except Exception as e:
        raise ExportError(f'OpenVINO export failed ({reason(e)})') from None


# how far a 16-bit run may be from PyTorch's fp32 logits, relative to their largest: bf16 keeps 8 bits of
# mantissa (about 1% on random weights), but a briefly trained model's logits on the check's random images
# are small and close together, and its bf16 run differed by 9.7% (FishNet-s64, 3 epochs, 32 px); another
# model or a broken conversion is off by the logits' whole size, so 15% still tells them apart
TOLERANCE = {'fp32': 1e-4, 'bf16': 0.15, 'fp16': 0.15}


def verify_openvino(ov_model, model: nn.Module, shapes: Sequence[Tuple[int, int, int, int]],
                    precision: Optional[Precision] = None) -> Tuple[Dict[str, float], str]:
    """Max relative difference between OpenVINO and PyTorch (fp32) at each shape, run in ``precision`` (None:
    OpenVINO's default, bf16 on CPUs with AVX512-BF16 or AMX), and what it ran in ('fp32', 'bf16'); the
    difference must be within that precision's :data:`TOLERANCE`."""
    import openvino as ov
    compiled = ov.Core().compile_model(ov_model, 'CPU', _hint_config(precision))
    ran = compiled_precision(compiled)
    errors = check_against_torch(lambda images: compiled(images)[0], model, shapes,
                                 TOLERANCE.get(ran, TOLERANCE['bf16']), f'OpenVINO ({ran})')
    return errors, ran


def write(model: nn.Module, folder: Path, request: ExportRequest, record: Dict) -> Optional[Int8Accuracy]:
    """``openvino_model.xml`` / ``.bin`` in ``folder`` (fp32, or NNCF int8), computing in the request's
    precision; returns the measured int8 accuracy."""
    ov_model = export_openvino(model, request.input_size)  # checks that openvino is installed
    import openvino as ov
    if request.verify:
        record['max_rel_diff_fp32'], record['checked_in'] = verify_openvino(
            ov_model, model, check_shapes(request.input_size), request.precision)
    accuracy = None
    if request.int8 and request.validation is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(ov_model, f'{tmp}/m.xml')
            # the float reference runs in the folder's own precision, as the int8 model's float layers will:
            # a bf16 remainder moves decisions by itself, which is not int8's doing
            float_run = runner(f'{tmp}/m.xml', request.precision)
            ran = record.get('checked_in') or compiled_precision(
                ov.Core().compile_model(ov_model, 'CPU', _hint_config(request.precision)))
            ov_model, accuracy = openvino_int8(ov_model, request.calibration, request.validation, float_run,
                                               request.max_drop, request.thresholds, request.precision, ran)
    elif request.int8:
        ov_model, _ = openvino_int8(ov_model, request.calibration)
    ov.save_model(ov_model, str(folder / FILES[0]), compress_to_fp16=False)
    return accuracy


# --- int8 ----------------------------------------------------------------------------------------

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
                  fp32_runner: Optional[Runner] = None, max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5,
                  precision: Optional[Precision] = None, reference: str = 'fp32'):
    """An int8 OpenVINO model (NNCF), and its measured accuracy when ``validation`` is given: run in
    ``precision`` against ``fp32_runner``, the float model in the same precision (named ``reference``)."""
    require('nncf', 'deploy', 'OpenVINO int8')
    import nncf
    import openvino as ov
    logging.getLogger('nncf').setLevel(logging.WARNING)
    batches = [b.numpy() for b in calibration.batches(1)]
    calib = nncf.Dataset(batches)
    _logger.info('NNCF: quantizing on %d calibration images', len(batches))
    try:
        quantized = nncf.quantize(ov_model, calib, subset_size=len(batches))
    except Exception as e:
        raise QuantizeError(f'OpenVINO int8 quantization failed ({reason(e)})') from None
    if validation is None:
        return quantized, None

    def checked(candidate) -> Int8Accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(candidate, f'{tmp}/m.xml')
            result = measure(fp32_runner, runner(f'{tmp}/m.xml', precision), validation, max_drop, thresholds,
                             reference)
        result.quantized_layers, result.total_layers = _quantized_convolutions(candidate)
        return result

    accuracy = checked(quantized)
    note = resolution_note(accuracy)
    if note:
        _logger.warning('OpenVINO int8: %s', note)
    if accuracy.fits:  # the common case: no search, no repeated validation
        return quantized, accuracy
    val = nncf.Dataset([(x.numpy(), y.numpy()) for x, y in validation.loader(1)])

    def validate(compiled, items) -> float:
        logits = np.concatenate([compiled(x)[0] for x, _ in items])
        targets = np.concatenate([y for _, y in items])
        return score(logits, targets, validation.multilabel, thresholds)

    _logger.info('NNCF: the drop is %.2f points, above %.2f: searching for the layers to keep in float '
                 '(this measures the model many times)', accuracy.drop, accuracy.allowed)
    try:
        quantized = nncf.quantize_with_accuracy_control(
            ov_model, calib, val, validation_fn=validate, max_drop=accuracy.allowed, subset_size=len(batches))
    except Exception as e:
        raise QuantizeError(f'OpenVINO int8 accuracy-aware quantization failed ({reason(e)})') from None
    return quantized, checked(quantized)


FORMAT = Format(
    name='openvino', runtime='OpenVINO', runs_in='OpenVINO', files=FILES, extra='deploy',
    help='openvino (IR .xml/.bin; pip install "fishzoo[deploy]")', int8_method='NNCF post-training quantization',
    fixed_shape=False, write=write, runner=runner)
