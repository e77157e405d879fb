"""``fishzoo export MODEL --format onnx``: an ONNX file with dynamic batch and spatial size, checked
against onnxruntime.

The model is exported BatchNorm-folded (what ``optimize_for_inference`` runs) through torch's dynamo
exporter (``torch.onnx.export(dynamo=True)``, onnxscript), so data-dependent sizes such as the body's
up-sampling to its branch's exact size stay symbolic and any input size >= the model's minimum works.
"""
import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.errors import ExportError, describe

DEFAULT_OPSET = 18  # onnxscript's native opset; 17 is the lowest the issue allows
INPUT_NAME, OUTPUT_NAME = 'pixel_values', 'logits'


def _require(*modules: str) -> None:
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'fishzoo[onnx]'")


def export_onnx(
        model: nn.Module,
        path: Union[str, Path],
        input_size: Tuple[int, int, int] = (3, 224, 224),
        opset: int = DEFAULT_OPSET,
        dynamic: bool = True,
) -> Path:
    """Write ``model`` (folded, eval) to ``path`` as one self-contained ONNX file; returns the path."""
    _require('onnx', 'onnxscript')
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
    describe_onnx(path, model)
    return path


def describe_onnx(path: Path, model: nn.Module) -> None:
    """Name the dynamic axes ``batch``, ``height``, ``width`` (the exporter calls them ``s77``...) and store
    what a user needs to feed the model in the file's metadata: labels, mean/std, input size, crop."""
    import onnx
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {d.dim_param: name for d, name in zip(dims, ('batch', None, 'height', 'width')) if name and d.dim_param}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    cfg = model.pretrained_cfg or {}
    facts = dict(architecture=cfg.get('architecture'), label_names=cfg.get('label_names'), mean=cfg.get('mean'),
                 std=cfg.get('std'), input_size=cfg.get('input_size'), interpolation=cfg.get('interpolation'),
                 crop_pct=cfg.get('crop_pct'), num_classes=getattr(model, 'num_classes', None))
    for key, value in facts.items():
        if value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(list(value) if isinstance(value, tuple) else value)
    onnx.save(proto, str(path))


def onnx_session(path: Union[str, Path], threads: Optional[int] = None):
    """An onnxruntime CPU session with every graph optimisation, on ``threads`` intra-op threads."""
    _require('onnxruntime')
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def verify_onnx(
        path: Union[str, Path],
        model: nn.Module,
        shapes: Sequence[Tuple[int, int, int, int]],
        tolerance: float = 1e-4,
) -> Dict[str, float]:
    """Max relative difference between onnxruntime and PyTorch at each input shape; raises above ``tolerance``."""
    session = onnx_session(path)
    model = model.eval()
    errors = {}
    g = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            reference = model(x)
        out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        if out.shape != reference.shape:
            raise ExportError(f'{path}: onnxruntime gave shape {tuple(out.shape)} for input {shape}, '
                              f'PyTorch {tuple(reference.shape)}')
        rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
        errors['x'.join(map(str, shape))] = rel
        if not rel <= tolerance:
            raise ExportError(f'{path}: onnxruntime differs from PyTorch by {rel:.2e} (relative) at input {shape}, '
                              f'more than {tolerance:g}')
    return errors


def check_shapes(input_size: Tuple[int, int, int]) -> Tuple[Tuple[int, int, int, int], ...]:
    """Shapes the export is checked at: the export size, another batch, and an odd non-square size."""
    c, h, w = input_size
    return (1, c, h, w), (3, c, h + 32, max(w - 32, 32)), (2, c, h + 1, w + 33)


def export_and_verify(model: nn.Module, path: Union[str, Path], input_size: Tuple[int, int, int],
                      opset: int = DEFAULT_OPSET, dynamic: bool = True, verify: bool = True) -> Dict:
    start = time.perf_counter()
    export_onnx(model, path, input_size, opset=opset, dynamic=dynamic)
    result = dict(path=str(path), seconds=time.perf_counter() - start, opset=opset, dynamic=dynamic)
    if verify:
        shapes = check_shapes(input_size) if dynamic else ((2, *input_size),)
        result['max_rel_diff'] = verify_onnx(path, model, shapes)
    return result
