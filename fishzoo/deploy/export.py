"""``fishzoo export MODEL --format FORMAT [--int8]``: a deployment folder (or one ONNX file), checked against
PyTorch, for any format of :data:`fishzoo.deploy.formats.FORMATS`.

The model is exported BatchNorm-folded (what ``optimize_for_inference`` runs) by its format's writer. A folder
holds the model file, the source model's ``config.json`` (preprocessing, label names, thresholds) with an
``export`` record of how it was made, and a README card (:mod:`fishzoo.deploy.card`); ``fishzoo predict
FOLDER`` runs it. ``--int8`` quantizes (calibrated on ``--calib-data``) and, with ``--val-data``, is
accuracy-aware. The folder is written in a stage and put in place at once (:func:`fishzoo.hub.atomic.staged_folder`):
a kill at any instant leaves the old folder or the new one, and ``--overwrite`` replaces the folder whole.
"""
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch.nn as nn

from fishzoo.errors import ExportError
from fishzoo.hub.atomic import staged_folder
from fishzoo.hub.config import export_config, is_multilabel
from fishzoo.precision import for_runtime

from .accuracy import DEFAULT_MAX_DROP
from .calibration import LabelledImages, calibration_images, validation_images
from .card import export_card
from .formats import FORMATS, get_format
from .onnx import DEFAULT_OPSET, export_and_verify, export_onnx  # noqa: F401  (the single-file export)
from .runner import ExportRequest

_logger = logging.getLogger(__name__)


def check_output_dir(output_dir: Path, overwrite: bool, source_folder: Optional[Path] = None) -> None:
    """Refuse a folder that holds files unless ``overwrite`` (its contents are then replaced, whole), and the
    folder of the model being exported, always."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f'-o {output_dir}: exists and is not a folder')
    if source_folder is not None and output_dir.exists() and output_dir.resolve() == Path(source_folder).resolve():
        raise ExportError(f'-o {output_dir}: is the folder of the model being exported; give another folder')
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        held = sorted(p.name for p in output_dir.iterdir())
        raise ExportError(f'-o {output_dir}: holds {", ".join(held[:4])}{", ..." if len(held) > 4 else ""}; '
                          'give an empty or new folder, or --overwrite to replace its contents')


def _check_options(int8: bool, calib_data, val_data, max_drop: float) -> None:
    if not 0 <= max_drop <= 100:
        raise ExportError(f'--max-drop is in points between 0 and 100, got {max_drop}')
    if int8 and calib_data is None:
        raise ExportError('--int8 needs --calib-data: a folder or CSV of a few hundred images like the ones the '
                          'model will see (digits: the embedded demo data)')
    if val_data is not None and not int8:
        raise ExportError('--val-data checks an int8 export: add --int8 and --calib-data')


def _images(model: nn.Module, config: dict, int8: bool, calib_data, val_data
            ) -> Tuple[Optional[LabelledImages], Optional[LabelledImages]]:
    """The calibration and validation images, read with the model's eval transform."""
    cfg = config.get('pretrained_cfg') or model.pretrained_cfg
    multilabel = is_multilabel(config)
    calibration = validation = None
    if int8:
        calibration = calib_data if isinstance(calib_data, LabelledImages) else calibration_images(calib_data, cfg)
    if isinstance(val_data, LabelledImages):
        validation = val_data
    elif val_data is not None:
        validation = validation_images(val_data, cfg, config.get('label_names'), model.num_classes, multilabel)
    return calibration, validation


def _source_name(data) -> str:
    """What the record and card call the images: a folder's or file's own name, never the exporting machine's
    path to it (the folder travels; the path means nothing elsewhere and says where someone keeps data)."""
    return 'images given in Python' if isinstance(data, LabelledImages) else Path(str(data)).name or str(data)


def export_folder(
        model: nn.Module,
        output_dir: Union[str, Path],
        fmt: str = 'onnx',
        input_size: Tuple[int, int, int] = (3, 224, 224),
        int8: bool = False,
        calib_data=None,
        val_data=None,
        max_drop: float = DEFAULT_MAX_DROP,
        opset: int = DEFAULT_OPSET,
        source_folder: Optional[Path] = None,
        verify: bool = True,
        overwrite: bool = False,
        precision: str = 'auto',
) -> Dict:
    """Export ``model`` to ``output_dir`` as ``fmt`` (fp32, or int8 with ``calib_data``: a folder, CSV or
    'digits' as for the command line, or :class:`fishzoo.deploy.calibration.LabelledImages`; ``val_data``
    likewise); returns the ``export`` record written to its config.json (file, weights, compute precision,
    checks, measured accuracy). A folder that holds files is refused unless ``overwrite``. ``precision`` is
    what the folder computes in (:func:`fishzoo.precision.for_runtime`: 'auto' is the runtime's own choice
    where it makes one, as OpenVINO does; 'fp32' exact; 'bf16' where the runtime runs it)."""
    output_dir = Path(output_dir)
    form = get_format(fmt)
    compute = for_runtime(precision, form.name, runtime_name=form.runtime)
    _check_options(int8, calib_data, val_data, max_drop)
    check_output_dir(output_dir, overwrite, source_folder)
    config = export_config(model, source_folder)
    calibration, validation = _images(model, config, int8, calib_data, val_data)
    request = ExportRequest(tuple(input_size), compute, int8=int8, calibration=calibration, validation=validation,
                            max_drop=max_drop, thresholds=config.get('thresholds') or 0.5, opset=opset,
                            verify=verify)
    start = time.perf_counter()
    _logger.info('exporting %s as %s (%s)%s', output_dir, form.name, 'int8' if int8 else 'fp32',
                 f', calibrated on {len(calibration)} images' if calibration is not None else '')
    record = dict(format=form.name, weights='int8' if int8 else 'fp32', compute=compute.compute,
                  input_size=list(input_size))
    held = [p.name for p in output_dir.iterdir()] if output_dir.is_dir() else []
    new_files = [*form.files, 'config.json', 'README.md', 'thresholds.json']
    with staged_folder(output_dir, replaces=sorted({*held, *new_files}), order=form.files) as stage:
        accuracy = form.write(model, stage, request, record)
        if accuracy is not None and not accuracy.fits:
            # raised inside the stage: nothing is published that looks like a result (old content stays)
            name = 'top-1' if accuracy.metric == 'top1' else 'micro-F1'
            raise ExportError(
                f'{output_dir}: not written: int8 loses {accuracy.drop:.2f} points of {name} on {accuracy.images} '
                f'held-out images ({accuracy.reference} {accuracy.fp32:.2f} -> int8 {accuracy.int8:.2f}), more than '
                f'the {accuracy.allowed:.2f} allowed (--max-drop), with {accuracy.quantized_layers} of '
                f'{accuracy.total_layers} layers left in int8 by the search; allow more with --max-drop, '
                'calibrate on more images (--calib-data), or export without --int8')
        record['file'] = form.file
        record['seconds'] = round(time.perf_counter() - start, 1)
        if calibration is not None:
            record['calibration'] = dict(source=_source_name(calib_data), images=len(calibration),
                                         skipped=calibration.skipped)
        if accuracy is not None:
            record['accuracy'] = dict(accuracy.as_dict(), source=_source_name(val_data), skipped=validation.skipped)
        config['export'] = record
        (stage / 'config.json').write_text(json.dumps(config, indent=2))
        (stage / 'README.md').write_text(export_card(config), encoding='utf-8')
        if source_folder is not None and (Path(source_folder) / 'thresholds.json').is_file():
            shutil.copyfile(Path(source_folder) / 'thresholds.json', stage / 'thresholds.json')
    return record


__all__ = ['FORMATS', 'DEFAULT_OPSET', 'check_output_dir', 'export_folder', 'export_and_verify', 'export_onnx']
