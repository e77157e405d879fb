"""Mobile exports: ExecuTorch programs for the XNNPACK delegate (``model.pte``), fp32 or int8.

The model is exported in its XNNPACK forms (:mod:`fishzoo.deploy.xnnpack`) at batch 1 and one image size,
as phones run it, and lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``;
what the delegate does not take is counted by name (for the FishNets and the dual MobileNetV2: nothing).

int8 is ExecuTorch's PT2E flow: ``XNNPACKQuantizer`` (int8 activations per tensor, weights per channel,
symmetric), calibrated on the given images, converted, and lowered: the delegate runs the quantized
convolutions, adds and concatenations in int8. With validation images it is accuracy-aware
(:func:`fishzoo.deploy.pt2e.quantize_with_accuracy`), and every candidate is measured as the program it
lowers to, with ExecuTorch's runtime: XNNPACK's int8 kernels round unlike PT2E's reference graph (FishNet-s64
on the digits: within 0.5 points as a PT2E graph, 0.56 points down as a program).
"""
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from fishzoo.errors import ExportError, describe

from . import pt2e
from .calibration import LabelledImages
from .int8_exported import DEFAULT_MAX_DROP, Int8Accuracy
from .runtime import executorch_runner, require, torch_runner
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
    if excluded:  # its set_module_name takes no None: a filter keeps those modules' nodes out instead
        quantizer.set_filter_function(pt2e.outside_modules(excluded))
    return quantizer


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
    swapped = for_xnnpack(model)
    example = torch.randn(1, *input_size)
    path = Path(path)
    if calibration is None:
        outside = _lower_into(swapped, example, path)
        return outside, None
    captured = pt2e.capture(swapped, example, dynamic=False)
    batches = list(calibration.batches(1))[:CALIBRATION_IMAGES]
    lowered = {}  # each candidate is measured as the program XNNPACK runs: its kernels round unlike PT2E's

    def program_runner(graph):
        lowered['outside'] = _lower_into(graph, example, path)
        return executorch_runner(path)

    fp32_run = torch_runner(model) if validation is not None else None
    graph, accuracy, _ = pt2e.quantize_with_accuracy(captured, xnnpack_quantizer, batches, validation, fp32_run,
                                                     max_drop, thresholds, runner_for=program_runner)
    if validation is None:
        lowered['outside'] = _lower_into(graph, example, path)
    return lowered['outside'], accuracy


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
    run = executorch_runner(path)
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(x)
    out = torch.from_numpy(run(x.numpy()))
    rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    if out.shape != reference.shape or not rel <= tolerance:
        raise ExportError(f'{path}: ExecuTorch differs from PyTorch by {rel:.2e} (relative) at input '
                          f'{list(x.shape)}, more than {tolerance:g}')
    return {'x'.join(map(str, (1, *input_size))): rel}
