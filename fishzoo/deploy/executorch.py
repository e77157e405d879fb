"""ExecuTorch: ``model.pte``, a program lowered to the XNNPACK delegate, at batch 1 and one image size as
phones run it; run here by ExecuTorch's Python runtime. int8 is ExecuTorch's PT2E flow with its
``XNNPACKQuantizer`` (int8 activations per tensor, weights per channel, symmetric).

The model is lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` in its
XNNPACK forms (:mod:`fishzoo.deploy.phone`); what the delegate does not take is counted by name (for the
FishNets and the dual MobileNetV2: nothing).
"""
import contextlib
import io
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from fishzoo.errors import ExportError, ModelLoadError, describe
from fishzoo.precision import Precision

from . import pt2e
from .phone import PhoneRuntime, phone_writer
from .runner import Format, Runner, RuntimeFailure, fixed_shape_runner, require
from .xnnpack import NearestUpsample2x

FILE = 'model.pte'


def runner(path: Union[str, Path], precision: Optional[Precision] = None) -> Runner:
    """An ExecuTorch program through ExecuTorch's Python runtime (fp32 or int8, as written). Its input shape is
    fixed at export (batch 1): a batch runs image by image; another image size is refused."""
    require('executorch', 'mobile', 'the executorch backend')
    from executorch.runtime import Runtime
    with open(path, 'rb') as f:
        header = f.read(8)
    # ExecuTorch's runtime verifies a program's flatbuffer, but on bytes without its identifier it aborted the
    # process (SIGABRT while logging the error): those are refused here first
    if len(header) < 8 or header[4:6] != b'ET' or not header[6:8].isdigit():
        raise ModelLoadError(f'{path}: not an ExecuTorch program (no ET identifier in its header); export it '
                             'again with fishzoo export --format executorch')
    try:
        with _native_stderr_silenced():  # its C++ log line would come before the sentence below
            method = Runtime.get().load_program(Path(path)).load_method('forward')
    except Exception as e:
        raise ModelLoadError(f'{path}: ExecuTorch cannot load it ({describe(e)})') from None

    def run_one(image: np.ndarray) -> np.ndarray:
        try:
            return method.execute([torch.from_numpy(image)])[0].numpy()
        except Exception as e:
            raise RuntimeFailure(f'{path}: ExecuTorch failed ({describe(e)})') from None
    return fixed_shape_runner(path, tuple(method.metadata.input_tensor_meta(0).sizes()), run_one)


@contextlib.contextmanager
def _native_stderr_silenced():
    """stderr silenced for a block, at both levels its log lines reach (ExecuTorch's C++ logging writes to file
    descriptor 2, and through Python's sys.stderr where pybind11 routes it)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quantizer(excluded=()):
    """ExecuTorch's XNNPACK quantizer (per-channel weights), leaving the modules ``excluded`` in fp32."""
    pt2e.quiet_torchao()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    built = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    # its set_module_name takes no None: a filter keeps those modules' nodes out instead. Mish stays fp32 too:
    # the quantizer would take its multiplications (not its sigmoid, subtraction and division), converting to
    # and from int8 around each, which is slower than fp32 (benchmarks/deploy.py --mobile)
    outside = pt2e.outside_modules(excluded)
    built.set_filter_function(lambda node: outside(node) and not _in_mish(node))
    return built


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


def _write(graph: nn.Module, example: torch.Tensor, path: Path, int8: bool) -> Dict[str, int]:
    require('executorch', 'mobile', 'ExecuTorch export', ExportError)
    try:
        buffer, outside = _lower(graph, example)
    except Exception as e:
        raise ExportError(f'ExecuTorch export failed ({describe(e)})') from None
    path.write_bytes(buffer)
    return outside


RUNTIME = PhoneRuntime('executorch', 'ExecuTorch', 'executorch', 'mobile', NearestUpsample2x, _write, runner,
                       quantizer)


FORMAT = Format(
    name='executorch', runtime='ExecuTorch', runs_in="ExecuTorch's XNNPACK delegate", files=(FILE,), extra='mobile',
    help='executorch (model.pte for the XNNPACK delegate, batch 1 at the export size; '
         'pip install "fishzoo[mobile]")',
    int8_method="ExecuTorch's XNNPACKQuantizer (PT2E; int8 weights per channel, int8 activations)",
    fixed_shape=True, write=phone_writer(RUNTIME, FILE), runner=runner)
