"""``fishzoo predict MODEL_OR_DIR IMAGES...``: top-k labels (or, for multi-label models, the labels over
their thresholds) with the folder's label names and data config.

MODEL_OR_DIR is a hub folder (what fishzoo-train and fishzoo convert write), ``local-dir:PATH``,
``hf-hub:REPO_ID`` or a timm name with pretrained weights, or a folder ``fishzoo export`` wrote (run by its
format's runtime, :mod:`fishzoo.deploy.formats`). ``--precision`` is :mod:`fishzoo.precision`'s: 'auto' runs
torch models as that policy decides for this CPU, and exported folders as their export recorded.
"""
import csv
import glob
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from fishzoo import precision as precision_policy
from fishzoo.data import eval_transform
from fishzoo.deploy.formats import (
    BACKENDS,
    TORCH,
    detect_backend,
    get_format,
    load_runner,
    runtime_precision,
    single_file_format,
)
from fishzoo.errors import DataError, PredictError, first_line
from fishzoo.hub.config import read_hub_config
from fishzoo.hub.schema import class_count_problem
from fishzoo.images import IMAGE_EXTENSIONS, image_files, image_mode, load_image
from fishzoo.loading import load_model, resolve_source


def read_thresholds(model_or_dir: str, num_classes: int) -> Optional[List[float]]:
    """Per-class decision thresholds of a multi-label folder (config.json 'thresholds'), if any."""
    if single_file_format(model_or_dir) is not None:
        return None  # a single exported file: its metadata has labels and preprocessing only
    folder = resolve_source(model_or_dir).folder
    path = folder / 'config.json' if folder is not None else None
    if path is None or not path.is_file():
        return None
    thresholds = json.loads(path.read_text()).get('thresholds')
    if thresholds is None:
        return None
    if not isinstance(thresholds, list) or len(thresholds) != num_classes or \
            not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds):
        raise PredictError(f'{path}: "thresholds" must be {num_classes} numbers between 0 and 1')
    return [float(t) for t in thresholds]


def expand_images(items: Sequence[Union[str, Path]]) -> List[str]:
    """Files as given, folders as the image files under them (sorted), globs (``'**'`` too) as their matches."""
    found: List[str] = []
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            files = [str(f) for f in image_files(path)]
            if not files:
                raise PredictError(f'{item}: a folder without image files ({", ".join(IMAGE_EXTENSIONS)})')
            found += files
        elif not path.exists() and glob.has_magic(item):
            files = sorted(f for f in glob.glob(item, recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise PredictError(f'{item}: the pattern matches no image file')
            found += files
        else:
            found.append(item)
    return found


def _exported(model_or_dir: str, backend: str, precision: str):
    """(logits function, config.json) of an exported folder for ``backend``, or of a single exported file
    (``fishzoo export -o FILE.onnx``), whose metadata holds the labels and preprocessing."""
    fmt = get_format(backend, '--backend')
    single = single_file_format(model_or_dir)
    if single is not None and single.name == fmt.name:
        decided = runtime_precision(fmt, precision, {})  # a single file records no precision: decided first
        config = single.file_config(Path(model_or_dir))
        run = fmt.runner(Path(model_or_dir), decided)
        return (lambda batch: torch.from_numpy(run(batch.numpy()))), config
    folder = resolve_source(model_or_dir).folder
    if folder is None or not folder.is_dir():
        raise PredictError(f'{model_or_dir}: --backend {backend} runs an exported folder '
                           f'(`fishzoo export MODEL --format {backend} -o DIR`), not a model name')
    config = read_hub_config(folder)
    problem = class_count_problem(config)
    if problem:
        raise PredictError(f'{folder / "config.json"}: {problem}')
    run = load_runner(folder, backend, precision)
    return (lambda batch: torch.from_numpy(run(batch.numpy()))), config


def _torch_model(model_or_dir: str, precision: str):
    """(logits function, model) of a torch model, in the precision :func:`fishzoo.precision.for_torch` decides."""
    decided = precision_policy.for_torch(precision, 'cpu')
    model = load_model(model_or_dir, pretrained=True).eval()
    if decided.autocast_dtype is None:
        return model, model

    def run(batch: torch.Tensor) -> torch.Tensor:
        with decided.autocast():
            return model(batch).float()
    return run, model


def predict(
        model_or_dir: str,
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
        batch_size: int = 16,
        backend: Optional[str] = None,
        precision: str = 'auto',
) -> List[Dict]:
    """One dict per image: ``{'image', 'labels': [(label, probability), ...]}``; ``images`` may hold
    folders and glob patterns (:func:`expand_images`). ``backend``: 'torch' or a format of
    :data:`fishzoo.deploy.formats.FORMATS` (an exported folder); None picks what the folder holds.
    ``precision``: 'auto', 'fp32' or 'bf16' (:mod:`fishzoo.precision`: torch and OpenVINO; the other runtimes
    run fp32)."""
    precision = precision_policy.parse(precision)
    images = expand_images(images)
    if backend is None:
        single = single_file_format(model_or_dir)
        backend = single.name if single is not None else \
            detect_backend(resolve_source(model_or_dir).folder or model_or_dir)
    if backend not in BACKENDS:
        raise PredictError(f'--backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    if backend == TORCH:
        model, loaded = _torch_model(model_or_dir, precision)
        num_classes, cfg = loaded.num_classes, loaded.pretrained_cfg
    else:
        model, folder_config = _exported(model_or_dir, backend, precision)
        num_classes, cfg = folder_config.get('num_classes'), folder_config.get('pretrained_cfg') or {}
        cfg = dict(cfg, label_names=folder_config.get('label_names') or cfg.get('label_names'))
    thresholds = read_thresholds(model_or_dir, num_classes)
    transform = eval_transform(cfg)
    names = cfg.get('label_names')
    names = list(names) if names else [str(i) for i in range(num_classes)]
    mode = image_mode(cfg.get('input_size', (3,))[0])
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = []
        for image in chunk:
            if not Path(image).is_file():
                raise PredictError(f'{image}: no such image file')
            try:
                batch.append(transform(load_image(image, mode)))
            except DataError:  # names the image already: unreadable, or refused as a decompression bomb
                raise
            except (OSError, ValueError) as e:
                raise PredictError(f'{image}: unreadable image ({first_line(e)})') from None
        with torch.no_grad():
            logits = model(torch.stack(batch))
        if logits.dim() != 2 or logits.shape[1] != len(names):
            raise PredictError(f'{model_or_dir}: the model gives {list(logits.shape)[1:]} scores per image but '
                               f'{len(names)} labels are named (label_names / num_classes in its config)')
        for image, row in zip(chunk, logits):
            if thresholds is not None:
                probs = row.sigmoid()
                picked = [i for i in range(len(names)) if probs[i] >= thresholds[i]]
                picked.sort(key=lambda i: -probs[i].item())
            else:
                probs = row.softmax(-1)
                picked = probs.topk(min(top_k, len(names))).indices.tolist()
            results.append(dict(image=str(image), labels=[(names[i], probs[i].item()) for i in picked]))
    return results


def write_csv(results: List[Dict], path: Union[str, Path]) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['image', 'rank', 'label', 'probability'])
        for result in results:
            for rank, (label, prob) in enumerate(result['labels'], start=1):
                writer.writerow([result['image'], rank, label, f'{prob:.6f}'])
