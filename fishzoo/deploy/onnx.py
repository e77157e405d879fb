"""ONNX: ``model.onnx``, run by onnxruntime on the CPU, with dynamic batch and spatial size; int8 by
onnxruntime's ``quantize_static``.

The folded model goes through torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, onnxscript), so
data-dependent sizes such as the body's up-sampling to its branch's exact size stay symbolic and any input
size >= the model's minimum works. The file carries its model's labels and preprocessing as metadata
(:func:`fishzoo.hub.config.metadata`), so ``fishzoo export -o FILE.onnx`` writes one file that predicts alone.

int8 is QDQ with int8 weights per channel and uint8 activations (the VNNI kernels' format). Its
accuracy-aware search (:func:`fishzoo.deploy.accuracy.keep_in_fp32_until_it_fits`) ranks the activations by
their own quantize/dequantize damage and leaves the nodes around the worst ones unquantized.
"""
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.errors import ExportError, ModelLoadError, QuantizeError, describe
from fishzoo.hub.config import config_from_metadata, metadata
from fishzoo.precision import Precision

from .accuracy import DEFAULT_MAX_DROP, Int8Accuracy, channel_sqnr, count_layers, keep_in_fp32_until_it_fits
from .calibration import LabelledImages
from .runner import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportRequest,
    Format,
    Runner,
    RuntimeFailure,
    check_against_torch,
    check_shapes,
    require,
)

_logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # onnxscript's native opset; 17 is the lowest the exporter supports well
FILE = 'model.onnx'


def session(path: Union[str, Path], threads: Optional[int] = None, error: type = ModelLoadError):
    """An onnxruntime CPU session with every graph optimisation, on ``threads`` intra-op threads."""
    require('onnxruntime', 'onnx', 'the onnx backend', error)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def runner(path: Union[str, Path], precision: Optional[Precision] = None, threads: Optional[int] = None) -> Runner:
    """An ONNX file run by onnxruntime (fp32: onnxruntime runs an fp32 model in fp32 on the CPU)."""
    try:
        opened = session(path, threads)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f'{path}: onnxruntime could not load it ({describe(e, 200)})') from None

    def run(images: np.ndarray) -> np.ndarray:
        try:
            return opened.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
        except Exception as e:  # onnxruntime's own failures (a kernel, memory, a shape it cannot take)
            raise RuntimeFailure(f'{path}: onnxruntime failed on a batch of shape {list(images.shape)} '
                                 f'({describe(e, 200)})') from None
    return run


def file_config(path: Union[str, Path]) -> dict:
    """The hub-folder-like config (architecture, labels, preprocessing, class count) a single ``.onnx`` file
    written by ``fishzoo export -o FILE.onnx`` carries in its metadata, checked like a ``config.json``."""
    require('onnx', 'onnx', 'an .onnx file')
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f'{path}: not a readable ONNX file ({describe(e, 200)})') from None
    return config_from_metadata({entry.key: entry.value for entry in proto.metadata_props}, path)


# --- writing -------------------------------------------------------------------------------------

def export_onnx(
        model: nn.Module,
        path: Union[str, Path],
        input_size: Tuple[int, int, int] = (3, 224, 224),
        opset: int = DEFAULT_OPSET,
        dynamic: bool = True,
) -> Path:
    """Write ``model`` (folded, eval) to ``path`` as one self-contained ONNX file; returns the path."""
    for module in ('onnx', 'onnxscript'):
        require(module, 'onnx', 'ONNX export', ExportError)
    if opset < 17:
        raise ExportError(f'--opset must be 17 or later, got {opset}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = reparameterize_model(model.eval(), inplace=False).eval()
    example = torch.randn(2, *input_size)
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim.DYNAMIC  # raises instead of silently fixing a size the model pins
        dynamic_shapes = ({0: dim, 2: dim, 3: dim},)
    try:
        program = torch.onnx.export(
            folded, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, verbose=False)
    except Exception as e:
        raise ExportError(f'ONNX export failed ({describe(e)})') from None
    program.save(str(path), external_data=False)
    written = _describe(path, model)
    if written != opset:  # the exporter writes its own opset for one it does not support, without a word
        path.unlink(missing_ok=True)
        raise ExportError(f'--opset {opset}: torch\'s exporter wrote opset {written} instead (it falls back for an '
                          f'opset it cannot write); ask for one it writes, such as {DEFAULT_OPSET}')
    return path


def _describe(path: Path, model: nn.Module) -> int:
    """Name the dynamic axes ``batch``, ``height``, ``width`` (the exporter calls them ``s77``...) and store
    what a user needs to feed the model in the file's metadata: labels, mean/std, input size, crop. Returns the
    file's opset."""
    import onnx
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {d.dim_param: name for d, name in zip(dims, ('batch', None, 'height', 'width')) if name and d.dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    for key, value in metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))


def verify_onnx(path: Union[str, Path], model: nn.Module, shapes: Sequence[Tuple[int, int, int, int]],
                tolerance: float = 1e-4) -> Dict[str, float]:
    """Max relative difference between onnxruntime and PyTorch at each input shape; raises above ``tolerance``."""
    opened = session(path, error=ExportError)

    def run(images: np.ndarray) -> np.ndarray:
        return opened.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    return check_against_torch(run, model, shapes, tolerance, f'{path}: onnxruntime')


def export_and_verify(model: nn.Module, path: Union[str, Path], input_size: Tuple[int, int, int],
                      opset: int = DEFAULT_OPSET, dynamic: bool = True, verify: bool = True) -> Dict:
    """One fp32 ONNX file (``fishzoo export -o FILE.onnx``), checked against PyTorch."""
    start = time.perf_counter()
    export_onnx(model, path, input_size, opset=opset, dynamic=dynamic)
    result = dict(path=str(path), seconds=time.perf_counter() - start, opset=opset, dynamic=dynamic)
    if verify:
        shapes = check_shapes(input_size) if dynamic else ((2, *input_size),)
        result['max_rel_diff'] = verify_onnx(path, model, shapes)
    return result


def write(model: nn.Module, folder: Path, request: ExportRequest, record: Dict) -> Optional[Int8Accuracy]:
    """``model.onnx`` in ``folder``: fp32, or int8 through a temporary fp32 file; returns the measured int8
    accuracy."""
    target = folder / FILE
    fp32_path = target if not request.int8 else folder / '.model-fp32.onnx'
    export_onnx(model, fp32_path, request.input_size, opset=request.opset)
    if request.verify:
        record['max_rel_diff_fp32'] = verify_onnx(fp32_path, model, check_shapes(request.input_size))
    record['opset'] = request.opset
    if not request.int8:
        return None
    fp32_run = runner(fp32_path) if request.validation is not None else None
    try:
        return onnx_int8(fp32_path, target, request.calibration, request.validation, fp32_run, request.max_drop,
                         request.thresholds)
    finally:
        fp32_path.unlink(missing_ok=True)


# --- int8 ----------------------------------------------------------------------------------------

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


def _quantize(src: Path, dst: Path, batches: List[np.ndarray], exclude: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # quantize_static logs a pre-processing hint on the root logger: the exporter already folded BatchNorm
    # and inferred shapes, which is what that pre-processing does
    _logger.info('onnxruntime: quantizing on %d calibration images%s', len(batches),
                 f' ({len(exclude)} nodes kept in fp32)' if exclude else '')
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(dst), _Reader(INPUT_NAME, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), extra_options={'ActivationSymmetric': False})
    finally:
        root.setLevel(level)


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
    opened = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    names = [o.name for o in opened.get_outputs()]
    collected = {name: [] for name in names}
    for batch in batches[:8]:
        for name, value in zip(names, opened.run(names, {INPUT_NAME: batch})):
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


def onnx_int8(src: Union[str, Path], dst: Union[str, Path], calibration: LabelledImages,
              validation: Optional[LabelledImages] = None, fp32_runner: Optional[Runner] = None,
              max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5) -> Optional[Int8Accuracy]:
    """Quantize the ONNX file ``src`` to ``dst`` (QDQ); with ``validation``, keep the most damaged activations
    (and the nodes around them) in fp32 until the drop fits ``max_drop``; returns the measured accuracy."""
    require('onnxruntime', 'onnx', 'ONNX int8')
    import onnx
    src, dst = Path(src), Path(dst)
    batches = [b.numpy() for b in calibration.batches(8)]

    def quantize_without(exclude: List[str]):
        try:
            _quantize(src, dst, batches, exclude)
        except Exception as e:
            raise QuantizeError(f'ONNX int8 quantization failed ({describe(e, 200)})') from None
        return dst, runner(dst)

    first = quantize_without([])
    if validation is None:
        return None
    graph = onnx.load(str(src)).graph
    layers = [n.name for n in graph.node if n.op_type in ('Conv', 'Gemm', 'MatMul')]
    producers = {out: node for node in graph.node for out in node.output}

    def ranked():
        return [_nodes_around(graph, producers, tensor) for tensor in _activation_damage(dst, batches)]

    result = keep_in_fp32_until_it_fits(first, ranked, quantize_without, fp32_runner, validation, max_drop,
                                        thresholds, what='ONNX int8')
    return count_layers(result.accuracy, layers, [n for n in result.excluded if n in layers])


FORMAT = Format(
    name='onnx', runtime='onnxruntime', runs_in='onnxruntime', files=(FILE,), extra='onnx',
    help='onnx (onnxruntime; pip install "fishzoo[onnx]")',
    int8_method="onnxruntime's quantize_static (QDQ, int8 weights per channel, uint8 activations)",
    fixed_shape=False, write=write, runner=runner, single_file='.onnx', file_config=file_config)
