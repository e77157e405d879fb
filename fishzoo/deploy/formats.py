"""The deployment formats, one row each: what ``fishzoo export --format``, ``fishzoo predict --backend``,
the export card and :func:`fishzoo.deploy.export.export_folder` read.

A new runtime is one module (how its file is written, checked, quantized and run, ending in a
:class:`~fishzoo.deploy.runner.Format`) and one row in :data:`FORMATS`.
"""
from pathlib import Path
from typing import Dict, Optional, Union

from fishzoo.errors import ConfigError, ModelLoadError
from fishzoo.hub.config import read_hub_config
from fishzoo.precision import Precision, for_runtime

from . import executorch, litert, onnx, openvino
from .runner import Format, Runner

FORMATS: Dict[str, Format] = {f.name: f for f in (
    onnx.FORMAT,
    openvino.FORMAT,
    executorch.FORMAT,
    litert.FORMAT,
)}
TORCH = 'torch'  # the backend of a hub folder (weights, run by torch)
BACKENDS = (TORCH, *FORMATS)


def get_format(name: str, flag: str = '--format') -> Format:
    """The format called ``name``; anything else is one sentence naming ``flag``."""
    if name not in FORMATS:
        raise ConfigError(f'{flag} must be one of {", ".join(FORMATS)}, got {name!r}')
    return FORMATS[name]


def single_file_format(path: Union[str, Path]) -> Optional[Format]:
    """The format of a single exported file that predicts on its own (``fishzoo export -o FILE.onnx``)."""
    path = Path(path)
    if not path.is_file():
        return None
    return next((f for f in FORMATS.values() if f.single_file and path.suffix == f.single_file), None)


def detect_backend(folder: Union[str, Path]) -> str:
    """The backend a folder is for: torch for weights (``model.safetensors``), else the exported file it holds."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / 'model.safetensors').is_file():
        return TORCH
    return next((f.name for f in FORMATS.values() if (folder / f.file).is_file()), TORCH)


def export_record(config: dict) -> dict:
    """The ``export`` record of an exported folder's config (empty for a hub folder)."""
    record = config.get('export')
    return record if isinstance(record, dict) else {}


def runtime_precision(fmt: Format, asked: str, config: dict, flag: str = '--precision') -> Precision:
    """What ``fmt`` computes in for ``asked``, given what the folder's export recorded (older fishzoo wrote
    OpenVINO's names under ``inference_precision``)."""
    record = export_record(config)
    recorded = record.get('compute', record.get('inference_precision'))
    return for_runtime(asked, fmt.name, recorded=recorded, flag=flag, runtime_name=fmt.runtime)


def load_runner(folder: Union[str, Path], backend: str, precision: str = 'auto') -> Runner:
    """The exported model in ``folder`` for ``backend`` as a runner, in the precision its export recorded
    unless ``precision`` ('fp32', 'bf16') says otherwise."""
    folder = Path(folder)
    fmt = get_format(backend, '--backend')
    path = folder / fmt.file
    if not path.is_file():
        others = [f.name for f in FORMATS.values() if (folder / f.file).is_file()]
        hint = (f'it holds a {others[0]} export (--backend {others[0]})' if others else
                f'make one with `fishzoo export MODEL --format {backend} -o {folder}`')
        raise ModelLoadError(f'{folder}: no {fmt.file} for --backend {backend}; {hint}')
    return fmt.runner(path, runtime_precision(fmt, precision, read_hub_config(folder)))
