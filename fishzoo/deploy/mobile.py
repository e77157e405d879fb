"""Mobile exports, fp32 or int8, both run by XNNPACK on the phone's CPU: ExecuTorch programs (``model.pte``)
and LiteRT models (``model.tflite``).

The model is exported in its XNNPACK forms (:mod:`fishzoo.deploy.xnnpack`) at batch 1 and one image size,
as phones run it, and lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``;
what the delegate does not take is counted by name (for the FishNets and the dual MobileNetV2: nothing).

int8 is ExecuTorch's PT2E flow: ``XNNPACKQuantizer`` (int8 activations per tensor, weights per channel,
symmetric), calibrated on the given images, converted, and lowered: the delegate runs the quantized
convolutions, adds and concatenations in int8. With validation images it is accuracy-aware
(:func:`fishzoo.deploy.pt2e.quantize_with_accuracy`), and every candidate is measured as the program it
lowers to, with ExecuTorch's runtime: XNNPACK's int8 kernels round unlike PT2E's reference graph (FishNet-s64
on the digits: within 0.5 points as a PT2E graph, 0.56 points down as a program).

LiteRT is litert-torch's converter on the same export-time forms (nearest up-sampling in LiteRT's form), run
by ai-edge-litert's interpreter, whose default XNNPACK delegate takes every op of the FishNets and the dual
MobileNetV2. Its int8 is litert-torch's own PT2E quantizer (int8 weights per channel, int8 activations),
calibrated and searched as above.
"""
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from fishzoo.errors import ExportError, describe

from . import pt2e
from .calibration import LabelledImages
from .int8_exported import DEFAULT_MAX_DROP, Int8Accuracy
from .runtime import Runner, executorch_runner, litert_interpreter, litert_runner, require, torch_runner
from .xnnpack import for_xnnpack

CALIBRATION_IMAGES = 256  # batch-1 graphs calibrate image by image


def xnnpack_quantizer(excluded=()):
    """ExecuTorch's XNNPACK quantizer (per-channel weights), leaving the modules ``excluded`` in fp32."""
    pt2e.quiet_torchao()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    # its set_module_name takes no None: a filter keeps those modules' nodes out instead. Mish stays fp32 too:
    # the quantizer would take its multiplications (not its sigmoid, subtraction and division), converting to
    # and from int8 around each (the dual MobileNetV2 at 224 px: 23.0 ms a call that way, 19.9 in fp32)
    outside = pt2e.outside_modules(excluded)
    quantizer.set_filter_function(lambda node: outside(node) and not _in_mish(node))
    return quantizer


def _in_mish(node) -> bool:
    return any(getattr(kind, '__name__', str(kind)).endswith('SigmoidMish')
               for _, kind in (node.meta.get('nn_module_stack') or {}).values())


def edge_op_name(node) -> str:
    """``aten.upsample_nearest2d.vec`` for an edge-dialect op (``<EdgeOpOverload: aten.x.y>: schema = ...``)."""
    name = getattr(node.target, '__name__', None) or str(node.target)
    return name.split(':')[-1].split('>')[0].strip().split('(')[0] if name.startswith('<') else name


def _lower(graph: nn.Module, example: torch.Tensor) -> Tuple[bytes, Dict[str, int]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    with torch.no_grad():
        program = torch.export.export(graph, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    outside = Counter(edge_op_name(n) for n in lowered.exported_program().graph_module.graph.nodes
                      if n.op == 'call_function' and edge_op_name(n) not in ('executorch_call_delegate', 'getitem'))
    return lowered.to_executorch().buffer, dict(outside)


@dataclass
class _MobileRuntime:
    """How one phone runtime is written, run and quantized."""
    name: str  # for_xnnpack's runtime
    write: Callable[[nn.Module, torch.Tensor, Path, bool], Dict[str, int]]  # (graph, example, path, int8) -> outside
    runner: Callable[[Path], Runner]
    quantizer_for: pt2e.QuantizerFactory
    fold_quantize: bool = True


def _export(runtime: _MobileRuntime, model: nn.Module, path, input_size, calibration, validation, max_drop,
            thresholds) -> Tuple[Dict[str, int], Optional[Int8Accuracy]]:
    swapped = for_xnnpack(model, runtime=runtime.name)
    example = torch.randn(1, *input_size)
    path = Path(path)
    if calibration is None:
        return runtime.write(swapped, example, path, False), None
    captured = pt2e.capture(swapped, example, dynamic=False)
    batches = list(calibration.batches(1))[:CALIBRATION_IMAGES]
    written = {}  # each candidate is measured as the file its runtime runs: XNNPACK rounds unlike PT2E's graph

    def written_runner(graph):
        written['outside'] = runtime.write(graph, example, path, True)
        return runtime.runner(path)

    fp32_run = torch_runner(model) if validation is not None else None
    graph, accuracy, _ = pt2e.quantize_with_accuracy(captured, runtime.quantizer_for, batches, validation, fp32_run,
                                                     max_drop, thresholds, runner_for=written_runner,
                                                     fold_quantize=runtime.fold_quantize)
    if validation is None:
        written['outside'] = runtime.write(graph, example, path, True)
    return written['outside'], accuracy


def export_executorch(
        model: nn.Module,
        path: Union[str, Path],
        input_size: Tuple[int, int, int],
        calibration: Optional[LabelledImages] = None,
        validation: Optional[LabelledImages] = None,
        max_drop: float = DEFAULT_MAX_DROP,
        thresholds=0.5,
) -> Tuple[Dict[str, int], Optional[Int8Accuracy]]:
    """Write ``model`` as an ExecuTorch program for the XNNPACK delegate (batch 1, ``input_size``) to ``path``:
    fp32, or int8 calibrated on ``calibration`` (accuracy-aware with ``validation``). Returns the ops left
    outside the delegate by name (``{}``: everything runs in XNNPACK) and the int8 accuracy measured on the
    written program (with ``validation``)."""
    require('executorch', 'mobile', 'ExecuTorch export', ExportError)
    return _export(_MobileRuntime('executorch', lambda graph, example, path, int8: _lower_into(graph, example, path),
                                  executorch_runner, xnnpack_quantizer),
                   model, path, input_size, calibration, validation, max_drop, thresholds)


def _lower_into(graph: nn.Module, example: torch.Tensor, path: Path) -> Dict[str, int]:
    try:
        buffer, outside = _lower(graph, example)
    except Exception as e:
        raise ExportError(f'ExecuTorch export failed ({describe(e)})') from None
    path.write_bytes(buffer)
    return outside


def verify_executorch(path: Path, model: nn.Module, input_size: Tuple[int, int, int],
                      tolerance: float = 1e-4) -> Dict[str, float]:
    """Max relative difference between ExecuTorch's runtime and PyTorch at the export's shape (two images)."""
    return _verify(executorch_runner(path), 'ExecuTorch', path, model, input_size, tolerance)


def _verify(run, runtime: str, path: Path, model: nn.Module, input_size: Tuple[int, int, int],
            tolerance: float) -> Dict[str, float]:
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(x)
    out = torch.from_numpy(run(x.numpy()))
    rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    if out.shape != reference.shape or not rel <= tolerance:
        raise ExportError(f'{path}: {runtime} differs from PyTorch by {rel:.2e} (relative) at input '
                          f'{list(x.shape)}, more than {tolerance:g}')
    return {'x'.join(map(str, (1, *input_size))): rel}


# --- LiteRT --------------------------------------------------------------------------------------

def _litert_quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def litert_outside_ops(path: Union[str, Path]) -> Dict[str, int]:
    """Ops of a ``.tflite`` the interpreter's XNNPACK delegate left to LiteRT's own kernels, by name.

    The interpreter lists the model's ops and, after them, one DELEGATE node per partition. An op runs outside
    when what it writes goes into a partition, out of the model, or into another op running outside, without
    being a partition's own output."""
    interpreter = litert_interpreter(path, error=ExportError)
    ops = interpreter._get_ops_details()  # the only listing ai-edge-litert has (2.3)
    partitions = [op for op in ops if op['op_name'] == 'DELEGATE']
    written = {t for op in partitions for t in op['outputs']}
    wanted = {t for op in partitions for t in op['inputs']} | {d['index'] for d in interpreter.get_output_details()}
    candidates = [op for op in ops if op['op_name'] != 'DELEGATE' and not set(op['outputs']) & written]
    outside: list = []
    while True:
        more = [op for op in candidates if op not in outside and set(op['outputs']) & wanted]
        if not more:
            return dict(Counter(op['op_name'] for op in outside))
        outside += more
        wanted |= {t for op in more for t in op['inputs']}


def _litert_into(graph: nn.Module, example: torch.Tensor, path: Path, quantizer=None) -> Dict[str, int]:
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
    return litert_outside_ops(path)


def export_litert(
        model: nn.Module,
        path: Union[str, Path],
        input_size: Tuple[int, int, int],
        calibration: Optional[LabelledImages] = None,
        validation: Optional[LabelledImages] = None,
        max_drop: float = DEFAULT_MAX_DROP,
        thresholds=0.5,
) -> Tuple[Dict[str, int], Optional[Int8Accuracy]]:
    """Write ``model`` as a LiteRT model (batch 1, ``input_size``, NCHW input as in PyTorch) to ``path``: fp32,
    or int8 calibrated on ``calibration`` (accuracy-aware with ``validation``). Returns the ops XNNPACK leaves
    to LiteRT's kernels by name and the int8 accuracy measured on the written model."""
    require('litert_torch', 'litert', 'LiteRT export', ExportError)
    pt2e.quiet_torchao()
    base = _litert_quantizer()

    def write(graph, example, path, int8):
        return _litert_into(graph, example, path, base if int8 else None)

    def quantizer_for(excluded):
        return pt2e.without_modules(base, excluded) if excluded else base

    # litert-torch reads fp32 weights with their quantize ops (fold_quantize=False)
    return _export(_MobileRuntime('litert', write, litert_runner, quantizer_for, fold_quantize=False),
                   model, path, input_size, calibration, validation, max_drop, thresholds)


def verify_litert(path: Path, model: nn.Module, input_size: Tuple[int, int, int],
                  tolerance: float = 1e-4) -> Dict[str, float]:
    """Max relative difference between LiteRT's interpreter and PyTorch at the export's shape (two images)."""
    return _verify(litert_runner(path), 'LiteRT', path, model, input_size, tolerance)
