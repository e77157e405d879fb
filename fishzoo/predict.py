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
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

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
from fishzoo.precision_probe import ProbeWork


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
    model = load_model(model_or_dir, pretrained=True).eval()
    work = ProbeWork(model, tuple(model.pretrained_cfg.get('input_size', (3, 224, 224))), batch=16)
    decided = precision_policy.for_torch(precision, 'cpu', work=work)
    if decided.autocast_dtype is None:
        return model, model

    def run(batch: torch.Tensor) -> torch.Tensor:
        with decided.autocast():
            return model(batch).float()
    return run, model


def _loader(model_or_dir: str, backend: Optional[str], precision: str):
    """(logits function, label names, thresholds or None, transform, image mode) for ``predict``."""
    precision = precision_policy.parse(precision)
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
    names = cfg.get('label_names')
    names = list(names) if names else [str(i) for i in range(num_classes)]
    return model, names, thresholds, eval_transform(cfg), image_mode(cfg.get('input_size', (3,))[0])


def _read(image: str, transform, mode: str) -> torch.Tensor:
    if not Path(image).is_file():
        raise PredictError(f'{image}: no such image file')
    try:
        return transform(load_image(image, mode))
    except DataError:  # names the image already: unreadable, or refused as a decompression bomb
        raise
    except (OSError, ValueError) as e:
        raise PredictError(f'{image}: unreadable image ({first_line(e)})') from None


# images decoded at once, next to the model's work on the batch before (PIL and the resize release the GIL)
DECODE_THREADS = min(4, os.cpu_count() or 1)


def iter_predictions(
        model_or_dir: str,
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
        batch_size: int = 16,
        backend: Optional[str] = None,
        precision: str = 'auto',
) -> Iterator[List[Dict]]:
    """:func:`predict`'s results a batch at a time, as they are produced (``images`` already expanded): the
    next batch is decoded by :data:`DECODE_THREADS` threads while the model runs this one, so a caller can
    write each batch out, show progress and keep what finished if it is interrupted."""
    model, names, thresholds, transform, mode = _loader(model_or_dir, backend, precision)
    images = [str(i) for i in images]
    chunks = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        pending = [pool.submit(_read, image, transform, mode) for image in chunks[0]]
        for index, chunk in enumerate(chunks):
            batch = [future.result() for future in pending]
            pending = [pool.submit(_read, image, transform, mode)
                       for image in (chunks[index + 1] if index + 1 < len(chunks) else ())]
            with torch.no_grad():
                logits = model(torch.stack(batch))
            if logits.dim() != 2 or logits.shape[1] != len(names):
                raise PredictError(f'{model_or_dir}: the model gives {list(logits.shape)[1:]} scores per image but '
                                   f'{len(names)} labels are named (label_names / num_classes in its config)')
            results = []
            for image, row in zip(chunk, logits):
                if thresholds is not None:
                    probs = row.sigmoid()
                    picked = [i for i in range(len(names)) if probs[i] >= thresholds[i]]
                    picked.sort(key=lambda i: -probs[i].item())
                else:
                    probs = row.softmax(-1)
                    picked = probs.topk(min(top_k, len(names))).indices.tolist()
                results.append(dict(image=image, labels=[(names[i], probs[i].item()) for i in picked]))
            yield results


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
    run fp32). :func:`iter_predictions` gives them a batch at a time."""
    return [result for batch in iter_predictions(model_or_dir, expand_images(images), top_k, batch_size, backend,
                                                 precision) for result in batch]


def as_json(result: Dict) -> Dict:
    """A result as ``--json`` prints it and a ``.jsonl`` output holds it: ``{image, labels, scores}``."""
    return dict(image=result['image'], labels=[label for label, _ in result['labels']],
                scores=[round(score, 6) for _, score in result['labels']])


class ResultsFile:
    """``--output``: results appended as they are produced, flushed after every batch, so an interrupted
    run keeps what it finished. ``.jsonl`` / ``.ndjson``: one JSON object per line (``{image, labels,
    scores}``, as ``--json`` prints them); otherwise CSV rows ``image,rank,label,probability`` (an image with
    no label over its thresholds gets one row with the label empty). The file is written in place (appended
    to, not staged): what finished must be there at any instant. With ``resume`` an existing file is kept:
    its images are :attr:`done`, and its last image, which a kill may have cut short, is written again."""

    def __init__(self, path: Union[str, Path], resume: bool = False):
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() in ('.jsonl', '.ndjson')
        self.done: set = set()
        if resume and self.path.is_file():
            self._keep_complete()
        else:
            self.path.write_text('' if self.jsonl else 'image,rank,label,probability\n')
        self.count = len(self.done)  # images in the file
        self.file = self.path.open('a', newline='', encoding='utf-8')
        self.writer = None if self.jsonl else csv.writer(self.file)

    def _keep_complete(self) -> None:
        """Reads the images already written and cuts the file back to before the last one."""
        text = self.path.read_text(encoding='utf-8')
        lines = text.splitlines(keepends=True)
        if not self.jsonl:
            if not lines or lines[0].strip() != 'image,rank,label,probability':
                raise PredictError(f'--output {self.path}: not a fishzoo predict CSV (its first line is not '
                                   'image,rank,label,probability); --resume continues a file predict wrote')
            rows = [(line, next(csv.reader([line]), [''])[0]) for line in lines[1:] if line.endswith('\n')]
            images = [image for _, image in rows]
            last = images[-1] if images else None
            kept = [line for line, image in rows if image != last]
            self.done = set(images) - {last}
            self.path.write_text(lines[0] + ''.join(kept), encoding='utf-8')
            return
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.endswith('\n'):
                break  # cut short by a kill: predicted again
            try:
                image = json.loads(line)['image']
            except (ValueError, KeyError, TypeError):
                raise PredictError(f'--output {self.path}: line {number} is not a fishzoo predict result; '
                                   '--resume continues a file predict wrote') from None
            kept.append(line)
            self.done.add(image)
        self.path.write_text(''.join(kept), encoding='utf-8')

    def write(self, results: List[Dict]) -> None:
        for result in results:
            if self.jsonl:
                self.file.write(json.dumps(as_json(result)) + '\n')
            elif not result['labels']:
                self.writer.writerow([result['image'], '', '', ''])
            else:
                for rank, (label, prob) in enumerate(result['labels'], start=1):
                    self.writer.writerow([result['image'], rank, label, f'{prob:.6f}'])
        self.file.flush()
        self.count += len(results)

    def close(self) -> None:
        self.file.close()


def write_csv(results: List[Dict], path: Union[str, Path]) -> None:
    """All of ``results`` as :class:`ResultsFile`'s CSV (or JSON lines for a ``.jsonl`` path)."""
    out = ResultsFile(path)
    try:
        out.write(results)
    finally:
        out.close()
