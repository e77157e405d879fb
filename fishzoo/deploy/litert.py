"""LiteRT (TensorFlow Lite): ``model.tflite``, at batch 1 and one image size (NCHW input, as in PyTorch), run
by ai-edge-litert's interpreter with its default XNNPACK delegate, which takes every op of the FishNets and the
dual MobileNetV2. Written by litert-torch's converter from the model's XNNPACK forms (nearest up-sampling in
LiteRT's form); int8 is litert-torch's own PT2E quantizer (int8 weights per channel, int8 activations), and an
int8 file takes and returns int8 tensors, which the runner quantizes and dequantizes with the file's scales.
"""
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from fishzoo.errors import ExportError, ModelLoadError, describe
from fishzoo.precision import Precision

from . import pt2e
from .phone import PhoneRuntime, phone_writer
from .runner import Format, Runner, RuntimeFailure, fixed_shape_runner, require
from .xnnpack import ConcatUpsample2x

FILE = 'model.tflite'


def interpreter(path: Union[str, Path], threads: Optional[int] = None, error: type = ModelLoadError):
    """ai-edge-litert's interpreter for ``path`` with its default XNNPACK delegate, tensors allocated."""
    require('ai_edge_litert', 'litert', 'the litert backend', error)
    from ai_edge_litert.interpreter import Interpreter
    try:
        opened = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
        opened.allocate_tensors()
    except Exception as e:
        raise error(f'{path}: LiteRT cannot load it ({describe(e)})') from None
    return opened


def _quantized(x: np.ndarray, tensor: dict) -> np.ndarray:
    """``x`` in an int8 model's input type (litert-torch's int8 models take int8 images)."""
    if tensor['dtype'] == np.float32:
        return x
    scale, zero_point = tensor['quantization']
    info = np.iinfo(tensor['dtype'])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(tensor['dtype'])


def _dequantized(y: np.ndarray, tensor: dict) -> np.ndarray:
    if tensor['dtype'] == np.float32:
        return y.copy()
    scale, zero_point = tensor['quantization']
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def runner(path: Union[str, Path], precision: Optional[Precision] = None, threads: Optional[int] = None) -> Runner:
    """A LiteRT model through ai-edge-litert's interpreter. Like ExecuTorch's programs its input shape is fixed
    at export (batch 1): a batch runs image by image; another image size is refused."""
    opened = interpreter(path, threads)
    source, = opened.get_input_details()
    target = opened.get_output_details()[0]

    def run_one(image: np.ndarray) -> np.ndarray:
        try:
            opened.set_tensor(source['index'], _quantized(image, source))
            opened.invoke()
            return _dequantized(opened.get_tensor(target['index']), target)
        except Exception as e:
            raise RuntimeFailure(f'{path}: LiteRT failed ({describe(e)})') from None
    return fixed_shape_runner(path, tuple(int(d) for d in source['shape']), run_one)


def outside_ops(path: Union[str, Path]) -> Dict[str, int]:
    """Ops of a ``.tflite`` the interpreter's XNNPACK delegate left to LiteRT's own kernels, by name.

    The interpreter lists the model's ops and, after them, one DELEGATE node per partition. An op runs outside
    when what it writes goes into a partition, out of the model, or into another op running outside, without
    being a partition's own output."""
    opened = interpreter(path, error=ExportError)
    ops = opened._get_ops_details()  # ai-edge-litert's only listing of a model's ops
    partitions = [op for op in ops if op['op_name'] == 'DELEGATE']
    written = {t for op in partitions for t in op['outputs']}
    wanted = {t for op in partitions for t in op['inputs']} | {d['index'] for d in opened.get_output_details()}
    candidates = [op for op in ops if op['op_name'] != 'DELEGATE' and not set(op['outputs']) & written]
    outside: list = []
    while True:
        more = [op for op in candidates if op not in outside and set(op['outputs']) & wanted]
        if not more:
            return dict(Counter(op['op_name'] for op in outside))
        outside += more
        wanted |= {t for op in more for t in op['inputs']}


def _quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def quantizer(excluded=()):
    """litert-torch's quantizer, without the annotations of the modules ``excluded`` (it takes no None config)."""
    pt2e.quiet_torchao()
    return pt2e.without_modules(_quantizer(), excluded) if excluded else _quantizer()


def convert_into(graph: nn.Module, example: torch.Tensor, path: Path, quantizer=None) -> Dict[str, int]:
    """``graph`` (fp32, or PT2E-annotated by ``quantizer``) converted to ``path``; the ops left outside XNNPACK."""
    require('litert_torch', 'litert', 'LiteRT export', ExportError)
    import litert_torch
    from litert_torch import _config
    from litert_torch.quantize.quant_config import QuantConfig
    _config.config.show_progress = False  # its progress lines would interleave with fishzoo's output
    for module in graph.modules():  # a quantized graph is exported, and exported graphs refuse .eval()
        module.training = False
    try:
        converted = litert_torch.convert(graph, (example,),
                                         quant_config=QuantConfig(pt2e_quantizer=quantizer) if quantizer else None)
        converted.export(str(path))
    except Exception as e:
        raise ExportError(f'LiteRT export failed ({describe(e)})') from None
    return outside_ops(path)


def _write(graph: nn.Module, example: torch.Tensor, path: Path, int8: bool) -> Dict[str, int]:
    return convert_into(graph, example, path, _quantizer() if int8 else None)


# litert-torch reads fp32 weights with their quantize ops (fold_quantize=False)
RUNTIME = PhoneRuntime('litert', 'LiteRT', 'litert_torch', 'litert', ConcatUpsample2x, _write, runner, quantizer,
                       fold_quantize=False)


FORMAT = Format(
    name='litert', runtime='LiteRT', runs_in="LiteRT's interpreter (XNNPACK delegate)", files=(FILE,), extra='litert',
    help='litert (model.tflite, batch 1 at the export size; pip install "fishzoo[litert]")',
    int8_method="litert-torch's PT2EQuantizer (int8 weights per channel, int8 activations)",
    fixed_shape=True, write=phone_writer(RUNTIME, FILE), runner=runner)
