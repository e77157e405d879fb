"""What the phone runtimes (ExecuTorch, LiteRT) share: a model exported at batch 1 and one image size, in its
XNNPACK forms (:mod:`fishzoo.deploy.xnnpack`), written by the runtime's own writer; int8 by PT2E, where the
accuracy-aware search measures every candidate as the file the runtime runs: XNNPACK's int8 kernels round
unlike PT2E's reference graph (FishNet-s64 on the digits passed as a PT2E graph and failed as a program).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from fishzoo.errors import ExportError
from fishzoo.precision import for_runtime

from . import pt2e
from .accuracy import DEFAULT_MAX_DROP, Int8Accuracy
from .calibration import LabelledImages
from .runner import ExportRequest, Runner, check_against_torch, check_shapes, require, torch_runner
from .xnnpack import for_xnnpack

CALIBRATION_IMAGES = 256  # batch-1 graphs calibrate image by image


@dataclass(frozen=True)
class PhoneRuntime:
    """How one phone runtime is written, run and quantized."""
    name: str  # the format's name ('executorch', 'litert')
    title: str  # in sentences: 'ExecuTorch'
    module: str  # the converter's module, and the extra that brings it
    extra: str
    upsample: Callable[[int], nn.Module]  # the nearest 2x up-sampling form it runs best (fishzoo.deploy.xnnpack)
    # (graph, example input, path, int8) -> the ops left outside the XNNPACK delegate, by name
    write: Callable[[nn.Module, torch.Tensor, Path, bool], Dict[str, int]]
    runner: Callable[[Path], Runner]
    quantizer_for: pt2e.QuantizerFactory  # (module names left in fp32) -> a PT2E quantizer
    fold_quantize: bool = True  # False: the converter reads fp32 weights with their quantize ops (LiteRT)

    def export(self, model: nn.Module, path: Union[str, Path], input_size: Tuple[int, int, int],
               calibration: Optional[LabelledImages] = None, validation: Optional[LabelledImages] = None,
               max_drop: float = DEFAULT_MAX_DROP, thresholds=0.5) -> Tuple[Dict[str, int], Optional[Int8Accuracy]]:
        """Write ``model`` for this runtime to ``path`` (batch 1, ``input_size``): fp32, or int8 calibrated on
        ``calibration`` (accuracy-aware with ``validation``). Returns the ops left outside the XNNPACK delegate by
        name (``{}``: everything runs in XNNPACK) and the int8 accuracy measured on the written file."""
        require(self.module, self.extra, f'{self.title} export', ExportError)
        request = ExportRequest(tuple(input_size), for_runtime('auto', self.name, log=False),
                                int8=calibration is not None, calibration=calibration, validation=validation,
                                max_drop=max_drop, thresholds=thresholds)
        return export_for_phone(self, model, Path(path), request)


def export_for_phone(runtime: PhoneRuntime, model: nn.Module, path: Path, request: ExportRequest
                     ) -> Tuple[Dict[str, int], Optional[Int8Accuracy]]:
    """Write ``model`` for ``runtime`` to ``path`` at batch 1 and the request's size: fp32, or int8 calibrated
    on the request's images (accuracy-aware with its validation images). Returns the ops left outside the
    delegate by name (``{}``: everything runs in XNNPACK) and the int8 accuracy measured on the written file."""
    swapped = for_xnnpack(model, runtime.upsample)
    example = torch.randn(1, *request.input_size)
    if not request.int8:
        return runtime.write(swapped, example, path, False), None
    captured = pt2e.capture(swapped, example, dynamic=False)
    batches = list(request.calibration.batches(1))[:CALIBRATION_IMAGES]
    written = {}

    def written_runner(graph):
        written['outside'] = runtime.write(graph, example, path, True)
        return runtime.runner(path)

    fp32_run = torch_runner(model) if request.validation is not None else None
    graph, accuracy, _ = pt2e.quantize_with_accuracy(
        captured, runtime.quantizer_for, batches, request.validation, fp32_run, request.max_drop,
        request.thresholds, runner_for=written_runner, fold_quantize=runtime.fold_quantize)
    if request.validation is None:
        written['outside'] = runtime.write(graph, example, path, True)
    return written['outside'], accuracy


def phone_writer(runtime: PhoneRuntime, file: str):
    """A :class:`~fishzoo.deploy.runner.Format` writer for ``runtime``: the file, the export record's input
    shape and ops outside the delegate, and an fp32 file checked against PyTorch in the runtime itself."""
    def write(model: nn.Module, folder: Path, request: ExportRequest, record: Dict) -> Optional[Int8Accuracy]:
        path = folder / file
        record['input_shape'] = [1, *request.input_size]
        record['ops_outside_delegate'], accuracy = export_for_phone(runtime, model, path, request)
        if request.verify and not request.int8:
            record['max_rel_diff_fp32'] = check_against_torch(
                runtime.runner(path), model, check_shapes(request.input_size, dynamic=False), 1e-4,
                f'{path}: {runtime.title}')
        return accuracy
    return write

