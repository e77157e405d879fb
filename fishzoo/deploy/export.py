"""``fishzoo export MODEL --format onnx|openvino|executorch|litert [--int8]``: a deployment folder (or one ONNX
file), checked against PyTorch; ONNX and OpenVINO with dynamic batch and spatial size, ExecuTorch and LiteRT at
one fixed shape.

The model is exported BatchNorm-folded (what ``optimize_for_inference`` runs). ONNX goes through torch's
dynamo exporter (``torch.onnx.export(dynamo=True)``, onnxscript), so data-dependent sizes such as the body's
up-sampling to its branch's exact size stay symbolic and any input size >= the model's minimum works.
OpenVINO converts the folded model with ``openvino.convert_model`` (batch, height and width dynamic).
ExecuTorch (``model.pte``) and LiteRT (``model.tflite``) get the model in its export-time forms at batch 1 and
the export's size (:mod:`fishzoo.deploy.mobile`); the record counts the ops left outside XNNPACK.

A folder holds the model file (``model.onnx`` or ``openvino_model.xml``/``.bin``), the source model's
``config.json`` (preprocessing, label names, thresholds) with an ``export`` record, and a README card with
the measured int8 accuracy; ``fishzoo predict FOLDER`` runs it. ``--int8`` quantizes after export (ONNX,
OpenVINO: :mod:`fishzoo.deploy.int8_exported`) or before lowering (ExecuTorch, LiteRT: PT2E), calibrated on
``--calib-data`` and, with ``--val-data``, accuracy-aware.
"""
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.card import export_card
from fishzoo.errors import ExportError, describe

from .calibration import LabelledImages, calibration_images, validation_images
from .int8_exported import onnx_int8, openvino_int8
from .mobile import export_executorch, export_litert, verify_executorch, verify_litert
from .runtime import (
    BACKEND_FILES,
    INPUT_NAME,
    OPENVINO_HINTS,
    OUTPUT_NAME,
    onnx_runner,
    onnx_session,
    openvino_precision,
    openvino_reason,
    openvino_runner,
    require,
)

DEFAULT_OPSET = 18  # onnxscript's native opset; 17 is the lowest the issue allows
FORMATS = ('onnx', 'openvino', 'executorch', 'litert')


def _require(*modules: str, extra: str = 'onnx', what: str = 'ONNX export') -> None:
    for module in modules:
        require(module, extra, what, ExportError)


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


def verify_onnx(
        path: Union[str, Path],
        model: nn.Module,
        shapes: Sequence[Tuple[int, int, int, int]],
        tolerance: float = 1e-4,
) -> Dict[str, float]:
    """Max relative difference between onnxruntime and PyTorch at each input shape; raises above ``tolerance``."""
    session = onnx_session(path, error=ExportError)
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


# --- OpenVINO ------------------------------------------------------------------------------------

def export_openvino(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)):
    """The folded model as an OpenVINO ``ov.Model`` with dynamic batch, height and width (in memory)."""
    _require('openvino', extra='deploy', what='OpenVINO export')
    import openvino as ov
    folded = reparameterize_model(model.eval(), inplace=False).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')  # the tracer's notes on the input-size check, which it drops
            return ov.convert_model(folded, example_input=torch.randn(2, *input_size),
                                    input=[ov.PartialShape([-1, input_size[0], -1, -1])])
    except Exception as e:
        raise ExportError(f'OpenVINO export failed ({openvino_reason(e)})') from None


# how far a 16-bit run may be from PyTorch's fp32 logits: bf16 keeps 8 bits of mantissa, and FishNet-150 on
# random weights measured 0.6%; trained models' logits are spread wider, so the check allows 5%
TOLERANCE = {'f32': 1e-4, 'bf16': 5e-2, 'f16': 5e-2}


def verify_openvino(ov_model, model: nn.Module, shapes: Sequence[Tuple[int, int, int, int]],
                    hint: Optional[str] = 'f32') -> Tuple[Dict[str, float], str]:
    """Max relative difference between OpenVINO and PyTorch (fp32) at each shape, run with the precision
    ``hint`` (None: OpenVINO's default, bf16 on CPUs with AVX512-BF16 or AMX), and the precision it ran in
    ('f32', 'bf16'); the difference must be within that precision's :data:`TOLERANCE`."""
    import openvino as ov
    compiled = ov.Core().compile_model(ov_model, 'CPU', {'INFERENCE_PRECISION_HINT': hint} if hint else {})
    ran = openvino_precision(compiled)
    tolerance = TOLERANCE.get(ran, TOLERANCE['bf16'])
    errors = {}
    g = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            reference = model.eval()(x)
        out = torch.from_numpy(compiled(x.numpy())[0])
        rel = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
        errors['x'.join(map(str, shape))] = rel
        if out.shape != reference.shape or not rel <= tolerance:
            raise ExportError(f'OpenVINO ({ran}) differs from PyTorch by {rel:.2e} (relative) at input {shape}, '
                              f'more than {tolerance:g}')
    return errors, ran


# --- deployment folders --------------------------------------------------------------------------

def _folder_config(model: nn.Module, source_folder: Optional[Path]) -> dict:
    """The source folder's config.json (its weights checksum dropped: no weights here), or timm's config."""
    if source_folder is not None and (source_folder / 'config.json').is_file():
        config = json.loads((source_folder / 'config.json').read_text())
        config.pop('weights_sha256', None)
        return config
    from timm.models._hub import save_config_for_hf
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, Path(tmp) / 'config.json')
        return json.loads((Path(tmp) / 'config.json').read_text())


@dataclass
class _Checks:
    """The images an int8 export is calibrated and checked on, and how the model decides."""
    calibration: Optional[LabelledImages]
    validation: Optional[LabelledImages]
    thresholds: Union[float, Sequence[float]]


def check_output_dir(output_dir: Path, overwrite: bool, source_folder: Optional[Path] = None) -> None:
    """Refuse a folder that holds files unless ``overwrite`` (its README.md and config.json would be replaced
    and its model files removed), and the folder of the model being exported, always."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f'-o {output_dir}: exists and is not a folder')
    if source_folder is not None and output_dir.exists() and output_dir.resolve() == Path(source_folder).resolve():
        raise ExportError(f'-o {output_dir}: is the folder of the model being exported; give another folder')
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        held = sorted(p.name for p in output_dir.iterdir())
        raise ExportError(f'-o {output_dir}: holds {", ".join(held[:4])}{", ..." if len(held) > 4 else ""}; '
                          'give an empty or new folder, or --overwrite to replace its contents')


def _check_options(fmt: str, int8: bool, calib_data, val_data, max_drop: float, precision: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f'--format must be one of {", ".join(FORMATS)}, got {fmt!r}')
    if precision not in OPENVINO_HINTS:
        raise ExportError(f'--precision must be one of {", ".join(OPENVINO_HINTS)}, got {precision!r}')
    if precision == 'bf16' and fmt != 'openvino':
        raise ExportError('--precision bf16 is for --format openvino: onnxruntime runs fp32 models in fp32 on '
                          'the CPU')
    if not 0 <= max_drop <= 100:
        raise ExportError(f'--max-drop is in points between 0 and 100, got {max_drop}')
    if int8 and calib_data is None:
        raise ExportError('--int8 needs --calib-data: a folder or CSV of a few hundred images like the ones the '
                          'model will see (digits: the embedded demo data)')
    if val_data is not None and not int8:
        raise ExportError('--val-data checks an int8 export: add --int8 and --calib-data')


def _read_checks(model: nn.Module, config: dict, int8: bool, calib_data, val_data) -> _Checks:
    cfg = config.get('pretrained_cfg') or model.pretrained_cfg
    multilabel = config.get('thresholds') is not None or bool(config.get('multilabel'))
    calibration = validation = None
    if int8:
        calibration = calib_data if isinstance(calib_data, LabelledImages) else calibration_images(calib_data, cfg)
    if isinstance(val_data, LabelledImages):
        validation = val_data
    elif val_data is not None:
        validation = validation_images(val_data, cfg, config.get('label_names'), model.num_classes, multilabel)
    return _Checks(calibration, validation, config.get('thresholds') or 0.5)


def _onnx_into(model: nn.Module, output_dir: Path, input_size, opset: int, verify: bool, int8: bool,
               checks: _Checks, max_drop: float, record: Dict):
    """``model.onnx`` (fp32, or int8 through a temporary fp32 file); returns the measured int8 accuracy."""
    target = output_dir / BACKEND_FILES['onnx']
    fp32_path = target if not int8 else output_dir / '.model-fp32.onnx'
    export_onnx(model, fp32_path, input_size, opset=opset)
    if verify:
        record['max_rel_diff_fp32'] = verify_onnx(fp32_path, model, check_shapes(input_size))
    record['opset'] = opset
    if not int8:
        return None
    fp32_run = onnx_runner(fp32_path) if checks.validation is not None else None
    try:
        return onnx_int8(fp32_path, target, checks.calibration, checks.validation, fp32_run, max_drop,
                         checks.thresholds)
    finally:
        fp32_path.unlink(missing_ok=True)


def _openvino_into(model: nn.Module, output_dir: Path, input_size, verify: bool, int8: bool, checks: _Checks,
                   max_drop: float, record: Dict, precision: str = 'auto'):
    """``openvino_model.xml`` / ``.bin`` (fp32, or NNCF int8); returns the measured int8 accuracy."""
    ov_model = export_openvino(model, input_size)  # checks that openvino is installed
    import openvino as ov
    # The folder runs in OpenVINO's own default precision unless asked otherwise: bf16 where the CPU has
    # bf16 units (4.5x f32 on FishNet-150 with AMX), f32 elsewhere; --precision fp32 runs f32, exactly.
    hint = OPENVINO_HINTS[precision]
    record['inference_precision'] = hint or 'default'
    if verify:
        record['max_rel_diff_fp32'], record['checked_in'] = verify_openvino(ov_model, model, check_shapes(input_size),
                                                                            hint)
    accuracy = None
    if int8 and checks.validation is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(ov_model, f'{tmp}/m.xml')
            fp32_run = openvino_runner(f'{tmp}/m.xml', precision='f32')
            ov_model, accuracy = openvino_int8(ov_model, checks.calibration, checks.validation, fp32_run, max_drop,
                                               checks.thresholds)
    elif int8:
        ov_model, _ = openvino_int8(ov_model, checks.calibration)
    ov.save_model(ov_model, str(output_dir / BACKEND_FILES['openvino']), compress_to_fp16=False)
    return accuracy


def _mobile_into(fmt: str, model: nn.Module, output_dir: Path, input_size, verify: bool, int8: bool,
                 checks: _Checks, max_drop: float, record: Dict):
    """``model.pte`` (ExecuTorch) or ``model.tflite`` (LiteRT), fp32 or int8, with its shape and the ops left
    outside the XNNPACK delegate; returns the measured int8 accuracy."""
    export, verify_file = {'executorch': (export_executorch, verify_executorch),
                           'litert': (export_litert, verify_litert)}[fmt]
    path = output_dir / BACKEND_FILES[fmt]
    record['input_shape'] = [1, *input_size]
    record['ops_outside_delegate'], accuracy = export(
        model, path, input_size, checks.calibration if int8 else None, checks.validation, max_drop,
        checks.thresholds)
    if verify and not int8:
        record['max_rel_diff_fp32'] = verify_file(path, model, input_size)
    return accuracy


def _source_name(data) -> str:
    return 'images given in Python' if isinstance(data, LabelledImages) else str(data)


def export_folder(
        model: nn.Module,
        output_dir: Union[str, Path],
        fmt: str = 'onnx',
        input_size: Tuple[int, int, int] = (3, 224, 224),
        int8: bool = False,
        calib_data=None,
        val_data=None,
        max_drop: float = 0.5,
        opset: int = DEFAULT_OPSET,
        source_folder: Optional[Path] = None,
        verify: bool = True,
        overwrite: bool = False,
        precision: str = 'auto',
) -> Dict:
    """Export ``model`` to ``output_dir`` as ``fmt`` (fp32, or int8 with ``calib_data``: a folder, CSV or
    'digits' as for the command line, or :class:`fishzoo.deploy.calibration.LabelledImages`; ``val_data``
    likewise); returns the ``export`` record written to its config.json (file, precision, checks, measured
    accuracy). A folder that holds files is refused unless ``overwrite``. ``precision`` is what an OpenVINO
    folder runs in: 'auto' (OpenVINO's default: bf16 on CPUs with bf16 units), 'fp32' (exact) or 'bf16';
    ONNX folders run in fp32."""
    output_dir = Path(output_dir)
    _check_options(fmt, int8, calib_data, val_data, max_drop, precision)
    check_output_dir(output_dir, overwrite, source_folder)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = _folder_config(model, source_folder)
    checks = _read_checks(model, config, int8, calib_data, val_data)
    start = time.perf_counter()
    record = dict(format=fmt, precision='int8' if int8 else 'fp32', input_size=list(input_size))
    for stale in BACKEND_FILES.values():  # a folder re-exported in another format keeps one model file
        for path in (output_dir / stale, (output_dir / stale).with_suffix('.bin')):
            path.unlink(missing_ok=True)
    if fmt == 'onnx':
        accuracy = _onnx_into(model, output_dir, input_size, opset, verify, int8, checks, max_drop, record)
    elif fmt in ('executorch', 'litert'):
        accuracy = _mobile_into(fmt, model, output_dir, input_size, verify, int8, checks, max_drop, record)
    else:
        accuracy = _openvino_into(model, output_dir, input_size, verify, int8, checks, max_drop, record, precision)
    record['file'] = BACKEND_FILES[fmt]
    record['seconds'] = round(time.perf_counter() - start, 1)
    if checks.calibration is not None:
        record['calibration'] = dict(source=_source_name(calib_data), images=len(checks.calibration),
                                     skipped=checks.calibration.skipped)
    if accuracy is not None:
        record['accuracy'] = dict(accuracy.as_dict(), source=_source_name(val_data),
                                  skipped=checks.validation.skipped)
    config['export'] = record
    (output_dir / 'config.json').write_text(json.dumps(config, indent=2))
    (output_dir / 'README.md').write_text(export_card(config), encoding='utf-8')
    if source_folder is not None and (source_folder / 'thresholds.json').is_file():
        shutil.copyfile(source_folder / 'thresholds.json', output_dir / 'thresholds.json')
    return record
