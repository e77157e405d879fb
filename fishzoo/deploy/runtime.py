"""The bottom layer of deployment: the names an exported folder uses, the optional-module check, and
running an exported folder (``config.json`` + ``model.onnx`` for onnxruntime, ``openvino_model.xml`` /
``.bin`` for OpenVINO, ``model.pte`` for ExecuTorch, ``model.tflite`` for LiteRT) with the preprocessing and
labels of the model it was exported from.

``fishzoo predict FOLDER --backend onnx|openvino|executorch|litert``, the exports' checks and the int8
accuracy checks call models through a :data:`Runner`: a function from a float32 image batch (N, C, H, W) to
logits (numpy).
Everything else in :mod:`fishzoo.deploy` imports from here; this module imports none of them.
"""
import importlib.util
import json
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from fishzoo.errors import FishzooError, ModelLoadError, describe
from fishzoo.hub_folder import read_hub_config

INPUT_NAME, OUTPUT_NAME = 'pixel_values', 'logits'  # the exported graphs' input and output (transformers' names)
ONNX_FILE = 'model.onnx'
OPENVINO_FILE = 'openvino_model.xml'  # with openvino_model.bin beside it (optimum-intel's names)
EXECUTORCH_FILE = 'model.pte'  # an ExecuTorch program, XNNPACK-delegated, fixed input shape (batch 1)
LITERT_FILE = 'model.tflite'  # a LiteRT (TensorFlow Lite) flatbuffer, fixed input shape (batch 1)
BACKEND_FILES = {'onnx': ONNX_FILE, 'openvino': OPENVINO_FILE, 'executorch': EXECUTORCH_FILE, 'litert': LITERT_FILE}
BACKENDS = ('torch', 'onnx', 'openvino', 'executorch', 'litert')

Runner = Callable[[np.ndarray], np.ndarray]


class RuntimeFailure(FishzooError, RuntimeError):
    """onnxruntime or OpenVINO failed while running an exported model; the message names the file."""


def require(module: str, extra: str, what: str, error: type = ModelLoadError) -> None:
    """Raise ``error`` naming the extra to install when ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise error(f"{what} needs {module}: pip install 'fishzoo[{extra}]'")


def openvino_reason(error: BaseException, limit: int = 300) -> str:
    """The reason in an OpenVINO error: its messages start with lines naming the C++ source that threw
    (``Exception from src/inference/src/cpp/core.cpp:84:``), which say nothing to a user."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not (line.startswith('Exception from ') or line.startswith('Check '))]
    return (' '.join(reasons) or describe(error))[:limit]


def onnx_session(path: Union[str, Path], threads: Optional[int] = None, error: type = ModelLoadError):
    """An onnxruntime CPU session with every graph optimisation, on ``threads`` intra-op threads."""
    require('onnxruntime', 'onnx', 'the onnx backend', error)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def detect_backend(folder: Union[str, Path]) -> str:
    """The backend a folder is for: torch for weights (``model.safetensors``), else the exported file it holds."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / 'model.safetensors').is_file():
        return 'torch'
    for backend, name in BACKEND_FILES.items():
        if (folder / name).is_file():
            return backend
    return 'torch'


# --precision -> OpenVINO's INFERENCE_PRECISION_HINT (None: OpenVINO's default, bf16 on CPUs with bf16 units)
OPENVINO_HINTS = {'auto': None, 'fp32': 'f32', 'bf16': 'bf16'}


def openvino_precision(compiled) -> str:
    """What a compiled OpenVINO model computes in: 'f32', 'bf16' or 'f16' (its resolved precision hint)."""
    ran = compiled.get_property('INFERENCE_PRECISION_HINT')
    return getattr(ran, 'get_type_name', lambda: str(ran))()


def openvino_runner(xml: Union[str, Path], threads: Optional[int] = None, precision: Optional[str] = None) -> Runner:
    """An OpenVINO CPU model as a function; ``precision`` is OpenVINO's INFERENCE_PRECISION_HINT ('f32';
    None: OpenVINO's default, bf16 on CPUs that have it).

    A single image runs on one stream over every core (PERFORMANCE_HINT LATENCY). A batch is split over
    the parallel streams OpenVINO picks for THROUGHPUT (one per core here) and run asynchronously: each
    stream keeps its own core busy instead of every layer being split over all cores, +8-10% img/s on
    FishNet-150 int8 at batch 8 on 2 cores (``benchmarks/deploy.py``).
    """
    require('openvino', 'deploy', 'the openvino backend')
    import openvino as ov
    config = {}
    if precision:
        config['INFERENCE_PRECISION_HINT'] = precision
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    core = ov.Core()
    try:
        model = core.read_model(str(xml))
        latency = core.compile_model(model, 'CPU', {**config, 'PERFORMANCE_HINT': 'LATENCY'})
        throughput = core.compile_model(model, 'CPU', {**config, 'PERFORMANCE_HINT': 'THROUGHPUT'})
    except Exception as e:
        raise ModelLoadError(f'{xml}: OpenVINO could not load it ({openvino_reason(e)})') from None
    output = latency.output(0)
    streams = int(throughput.get_property('NUM_STREAMS'))
    # one request per stream, started and then waited on: no Python callback runs on OpenVINO's threads
    # (AsyncInferQueue's callback needs the GIL while wait_all waits, which hung a test run once)
    requests = [throughput.create_infer_request() for _ in range(streams)] if streams > 1 else []

    def run(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        try:
            if not requests or len(images) < streams:
                return latency(images)[output]
            for request, chunk in zip(requests, np.array_split(images, streams)):
                request.start_async({0: chunk})
            outputs = []
            for request in requests:
                request.wait()
                outputs.append(request.get_output_tensor(0).data.copy())
            return np.concatenate(outputs)
        except Exception as e:
            raise RuntimeFailure(f'{xml}: OpenVINO failed on a batch of shape {list(images.shape)} '
                                 f'({openvino_reason(e)})') from None
    return run


def onnx_runner(path: Union[str, Path], threads: Optional[int] = None) -> Runner:
    require('onnxruntime', 'onnx', 'the onnx backend')
    try:
        session = onnx_session(path, threads)
    except Exception as e:
        raise ModelLoadError(f'{path}: onnxruntime could not load it ({describe(e, 200)})') from None

    def run(images: np.ndarray) -> np.ndarray:
        try:
            return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
        except Exception as e:  # onnxruntime's own failures (a kernel, memory, a shape it cannot take)
            raise RuntimeFailure(f'{path}: onnxruntime failed on a batch of shape {list(images.shape)} '
                                 f'({describe(e, 200)})') from None
    return run


def onnx_file_config(path: Union[str, Path]) -> dict:
    """A hub-folder-like config from the metadata ``fishzoo export -o FILE.onnx`` writes into the file
    (architecture, label names, preprocessing, class count), for predicting with the file alone."""
    require('onnx', 'onnx', 'an .onnx file')
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelLoadError(f'{path}: not a readable ONNX file ({describe(e, 200)})') from None
    meta = {}
    for entry in proto.metadata_props:
        try:
            meta[entry.key] = json.loads(entry.value)
        except ValueError:
            continue
    if 'input_size' not in meta or 'mean' not in meta:
        raise ModelLoadError(f'{path}: no preprocessing in its metadata (not written by fishzoo export); export '
                             'it again with fishzoo export, or give the folder of the model it came from')
    cfg = {k: meta[k] for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct') if k in meta}
    return dict(architecture=meta.get('architecture'), num_classes=meta.get('num_classes'),
                label_names=meta.get('label_names'), pretrained_cfg=cfg)


def executorch_runner(path: Union[str, Path]) -> Runner:
    """An ExecuTorch program (``model.pte``) through ExecuTorch's Python runtime. Its input shape is fixed at
    export (batch 1, as phones run it): a batch runs image by image; another image size is refused."""
    require('executorch', 'mobile', 'the executorch backend')
    from executorch.runtime import Runtime
    try:
        method = Runtime.get().load_program(Path(path)).load_method('forward')
    except Exception as e:
        raise ModelLoadError(f'{path}: ExecuTorch cannot load it ({describe(e)})') from None
    expected = tuple(method.metadata.input_tensor_meta(0).sizes())

    def run(images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != expected[1:]:
            raise RuntimeFailure(f'{path}: exported for input {list(expected[1:])} (C, H, W), got '
                                 f'{list(images.shape[1:])}; export again with --img-size for this size')
        images = np.ascontiguousarray(images, dtype=np.float32)
        try:
            return np.concatenate([method.execute([torch.from_numpy(images[i:i + 1])])[0].numpy()
                                   for i in range(len(images))])
        except Exception as e:
            raise RuntimeFailure(f'{path}: ExecuTorch failed ({describe(e)})') from None
    return run


def litert_interpreter(path: Union[str, Path], threads: Optional[int] = None, error: type = ModelLoadError):
    """ai-edge-litert's interpreter for ``path`` with its default XNNPACK delegate, tensors allocated."""
    require('ai_edge_litert', 'litert', 'the litert backend', error)
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or torch.get_num_threads())
        interpreter.allocate_tensors()
    except Exception as e:
        raise error(f'{path}: LiteRT cannot load it ({describe(e)})') from None
    return interpreter


def _quantized(x: np.ndarray, tensor: dict) -> np.ndarray:
    """``x`` in an int8 model's input type (litert-torch's int8 models take int8 images)."""
    if tensor['dtype'] == np.float32:
        return x
    scale, zero_point = tensor['quantization']
    info = np.iinfo(tensor['dtype'])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(tensor['dtype'])


def _dequantized(y: np.ndarray, tensor: dict) -> np.ndarray:
    if tensor['dtype'] == np.float32:
        return y.copy()
    scale, zero_point = tensor['quantization']
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def litert_runner(path: Union[str, Path], threads: Optional[int] = None) -> Runner:
    """A LiteRT model (``model.tflite``) through ai-edge-litert's interpreter. Like ExecuTorch's programs its
    input shape is fixed at export (batch 1): a batch runs image by image; another image size is refused."""
    interpreter = litert_interpreter(path, threads)
    source, = interpreter.get_input_details()
    target = interpreter.get_output_details()[0]
    expected = tuple(int(d) for d in source['shape'])

    def run(images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != expected[1:]:
            raise RuntimeFailure(f'{path}: exported for input {list(expected[1:])} (C, H, W), got '
                                 f'{list(images.shape[1:])}; export again with --img-size for this size')
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = []
        try:
            for i in range(len(images)):
                interpreter.set_tensor(source['index'], _quantized(images[i:i + 1], source))
                interpreter.invoke()
                outputs.append(_dequantized(interpreter.get_tensor(target['index']), target))
        except Exception as e:
            raise RuntimeFailure(f'{path}: LiteRT failed ({describe(e)})') from None
        return np.concatenate(outputs)
    return run


def torch_runner(model: torch.nn.Module) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).float().numpy()
    return run


def load_runner(folder: Union[str, Path], backend: str, precision: Optional[str] = None) -> Runner:
    """The exported model in ``folder`` for ``backend`` ('onnx', 'openvino', 'executorch', 'litert') as a
    function. An OpenVINO folder runs in the precision its export recorded unless ``precision`` (an
    INFERENCE_PRECISION_HINT: 'f32', 'bf16') says otherwise."""
    folder = Path(folder)
    path = folder / BACKEND_FILES[backend]
    if not path.is_file():
        others = [b for b, name in BACKEND_FILES.items() if (folder / name).is_file()]
        hint = (f'it holds a {others[0]} export (--backend {others[0]})' if others else
                f'make one with `fishzoo export MODEL --format {backend} -o {folder}`')
        raise ModelLoadError(f'{folder}: no {BACKEND_FILES[backend]} for --backend {backend}; {hint}')
    if backend == 'onnx':
        return onnx_runner(path)
    if backend == 'executorch':
        return executorch_runner(path)
    if backend == 'litert':
        return litert_runner(path)
    if precision is None:
        precision = (read_hub_config(folder).get('export') or {}).get('inference_precision')
    return openvino_runner(path, precision=precision if precision in ('f32', 'bf16', 'f16') else None)

