"""What every deployment format shares: a model called as a :data:`Runner`, the optional-module check, the
one check of an exported model against PyTorch, and what a :class:`Format` is.

A :data:`Runner` is a function from a float32 image batch (N, C, H, W, numpy) to logits (numpy): the exports'
checks, the int8 accuracy measurements and ``fishzoo predict --backend`` call every runtime through one.
Of :mod:`fishzoo.deploy` this module imports only the calibration images; the format modules import it.
"""
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from fishzoo.errors import ExportError, FishzooError, ModelLoadError
from fishzoo.precision import Precision

from .calibration import LabelledImages

_logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = 'pixel_values', 'logits'  # the exported graphs' input and output (transformers' names)

Runner = Callable[[np.ndarray], np.ndarray]


class RuntimeFailure(FishzooError, RuntimeError):
    """A runtime failed while running an exported model; the message names the file."""


def require(module: str, extra: str, what: str, error: type = ModelLoadError) -> None:
    """Raise ``error`` naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise error(f"{what} needs {module}: pip install 'fishzoo[{extra}]'")


def torch_runner(model: nn.Module) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).float().numpy()
    return run


def fixed_shape_runner(path: Union[str, Path], expected: Tuple[int, ...], run_one: Runner) -> Runner:
    """A runner for a model exported at one shape (batch 1, as phones run it): a batch runs image by image,
    another image size is refused in one sentence."""
    def run(images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != tuple(expected[1:]):
            raise RuntimeFailure(f'{path}: exported for input {list(expected[1:])} (C, H, W), got '
                                 f'{list(images.shape[1:])}; export again with --img-size for this size')
        images = np.ascontiguousarray(images, dtype=np.float32)
        return np.concatenate([run_one(images[i:i + 1]) for i in range(len(images))])
    return run


def check_shapes(input_size: Tuple[int, int, int], dynamic: bool = True) -> Tuple[Tuple[int, ...], ...]:
    """Shapes an export is checked at: for dynamic shapes the export size, another batch, and an odd
    non-square size; for a fixed-shape export, two images at its size."""
    c, h, w = input_size
    if not dynamic:
        return (2, c, h, w),
    return (1, c, h, w), (3, c, h + 32, max(w - 32, 32)), (2, c, h + 1, w + 33)


def check_against_torch(run: Runner, model: nn.Module, shapes: Sequence[Tuple[int, ...]], tolerance: float,
                        what: str) -> Dict[str, float]:
    """Max relative difference between ``run`` (an exported model) and ``model`` (PyTorch, fp32) on random
    images of each shape, by shape ('1x3x64x64'); ``what`` ('model.onnx (onnxruntime)') names it when the
    outputs differ in shape or by more than ``tolerance``."""
    model = model.eval()
    errors = {}
    _logger.info('checking against PyTorch at %s', ', '.join('x'.join(map(str, s)) for s in shapes))
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            reference = model(x).float()
        out = torch.from_numpy(np.asarray(run(x.numpy()), dtype=np.float32))
        if out.shape != reference.shape:
            raise ExportError(f'{what} gave shape {tuple(out.shape)} for input {tuple(shape)}, '
                              f'PyTorch {tuple(reference.shape)}')
        rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
        errors['x'.join(map(str, shape))] = rel
        if not rel <= tolerance:
            raise ExportError(f'{what} differs from PyTorch by {rel:.2e} (relative) at input {tuple(shape)}, '
                              f'more than {tolerance:g}')
    return errors



# --- what a format is --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRequest:
    """What an export is asked for, as every format's writer reads it."""
    input_size: Tuple[int, int, int]
    precision: Precision  # what the exported folder computes in (the policy's decision for this runtime)
    int8: bool = False
    calibration: Optional[LabelledImages] = None
    validation: Optional[LabelledImages] = None
    max_drop: float = 0.5
    thresholds: Union[float, Sequence[float]] = 0.5
    opset: int = 18
    verify: bool = True


@dataclass(frozen=True)
class Format:
    """One deployment format: how a model is written to it (fp32 or int8, checked against PyTorch), how the
    written file runs, and what a folder, the card and the command line say of it. Each runtime's module
    defines one; :data:`fishzoo.deploy.formats.FORMATS` lists them."""
    name: str  # --format and --backend, the export record's 'format'
    runtime: str  # what runs it, in a sentence: 'onnxruntime'
    runs_in: str  # the card's words for where it runs: "ExecuTorch's XNNPACK delegate"
    files: Tuple[str, ...]  # the model's files in a folder; the first is the one a folder is recognised by
    extra: str  # pip install 'fishzoo[EXTRA]' brings the runtime
    help: str  # --format's help for it
    int8_method: str  # the card's words for how its int8 is made
    fixed_shape: bool  # written at batch 1 and one image size (as phones run it), else batch and size dynamic
    # (model, folder to write into, request, the export record to fill) -> the measured int8 accuracy, if any
    write: Callable[[nn.Module, Path, ExportRequest, Dict], Optional[Any]]
    # (the model file, the precision to run in) -> a runner
    runner: Callable[[Path, Precision], Runner]
    # a single file that predicts on its own (its config in its metadata): its suffix and config reader
    single_file: Optional[str] = None
    file_config: Optional[Callable[[Path], dict]] = None

    @property
    def file(self) -> str:
        return self.files[0]
