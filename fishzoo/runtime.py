"""Running an exported folder: ``config.json`` + ``model.onnx`` (onnxruntime) or ``openvino_model.xml`` /
``.bin`` (OpenVINO), with the preprocessing and labels of the model it was exported from.

``fishzoo predict FOLDER --backend onnx|openvino`` and the int8 accuracy checks call models through
:func:`load_runner`, which returns a function from a float32 image batch (N, C, H, W) to logits (numpy).
"""
import importlib.util
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from fishzoo.errors import ModelLoadError, describe

ONNX_FILE = 'model.onnx'
OPENVINO_FILE = 'openvino_model.xml'  # with openvino_model.bin beside it (optimum-intel's names)
BACKEND_FILES = {'onnx': ONNX_FILE, 'openvino': OPENVINO_FILE}
BACKENDS = ('torch', 'onnx', 'openvino')
EXTRAS = {'onnx': ('onnxruntime', 'onnx'), 'openvino': ('openvino', 'deploy')}

Runner = Callable[[np.ndarray], np.ndarray]


def require(module: str, extra: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(f"{what} needs {module}: pip install 'fishzoo[{extra}]'")


def detect_backend(folder: Union[str, Path]) -> str:
    """The backend a folder is for: torch for weights (``model.safetensors``), else the exported file it holds."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / 'model.safetensors').is_file():
        return 'torch'
    for backend, name in BACKEND_FILES.items():
        if (folder / name).is_file():
            return backend
    return 'torch'


def openvino_runner(xml: Union[str, Path], threads: Optional[int] = None, hint: str = 'LATENCY',
                    precision: Optional[str] = None) -> Runner:
    """An OpenVINO CPU model as a function; ``hint`` is OpenVINO's PERFORMANCE_HINT (LATENCY: one stream
    on every core; THROUGHPUT: parallel streams, for batches); ``precision`` its INFERENCE_PRECISION_HINT
    ('f32'; None: OpenVINO's default, bf16 on CPUs that have it)."""
    require('openvino', 'deploy', 'the openvino backend')
    import openvino as ov
    config = {'PERFORMANCE_HINT': hint}
    if precision:
        config['INFERENCE_PRECISION_HINT'] = precision
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    try:
        compiled = ov.Core().compile_model(str(xml), 'CPU', config)
    except Exception as e:
        raise ModelLoadError(f'{xml}: OpenVINO could not load it ({describe(e, 200)})') from None
    output = compiled.output(0)

    def run(images: np.ndarray) -> np.ndarray:
        return compiled(np.ascontiguousarray(images, dtype=np.float32))[output]
    return run


def onnx_runner(path: Union[str, Path], threads: Optional[int] = None) -> Runner:
    require('onnxruntime', 'onnx', 'the onnx backend')
    from fishzoo.export import INPUT_NAME, OUTPUT_NAME, onnx_session
    try:
        session = onnx_session(path, threads)
    except Exception as e:
        raise ModelLoadError(f'{path}: onnxruntime could not load it ({describe(e, 200)})') from None

    def run(images: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
    return run


def torch_runner(model: torch.nn.Module) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).float().numpy()
    return run


def load_runner(folder: Union[str, Path], backend: str) -> Runner:
    """The exported model in ``folder`` for ``backend`` ('onnx' or 'openvino') as a function."""
    folder = Path(folder)
    path = folder / BACKEND_FILES[backend]
    if not path.is_file():
        others = [b for b, name in BACKEND_FILES.items() if (folder / name).is_file()]
        hint = (f'it holds a {others[0]} export (--backend {others[0]})' if others else
                f'make one with `fishzoo export MODEL --format {backend} -o {folder}`')
        raise ModelLoadError(f'{folder}: no {BACKEND_FILES[backend]} for --backend {backend}; {hint}')
    if backend == 'onnx':
        return onnx_runner(path)
    record = read_export_config(folder).get('export') or {}
    precision = record.get('inference_precision')
    return openvino_runner(path, precision=precision if precision in ('f32', 'bf16', 'f16') else None)


def read_export_config(folder: Union[str, Path]) -> dict:
    """``folder/config.json`` of an exported folder, checked like a hub folder's."""
    from fishzoo.errors import HubFolderError
    from fishzoo.models._hub_folder import read_hub_config
    try:
        return read_hub_config(folder)
    except HubFolderError as e:
        raise ModelLoadError(str(e)) from None
