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
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from fishzoo import precision as precision_policy
from fishzoo.data import eval_transform
from fishzoo.deploy.backend_choice import cached_figures
from fishzoo.deploy.fast_path import optimize_for_inference
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

_logger = logging.getLogger(__name__)


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


class TorchPredictor:
    """A torch model as ``predict`` runs it: BatchNorm folded, channels_last, in the precision
    :mod:`fishzoo.precision` decides (:func:`fishzoo.optimize_for_inference` without compiling: under a second of
    start-up), then, once the images left would take long enough to pay for it, the compiled fast path (or
    OpenVINO, where the one call measures it faster), the last batch padded to the batch size so that no second
    shape compiles.

    ``compile``: None decides from the folded model's measured rate (:func:`compile_pays`), True compiles from
    the first batch, False never compiles."""

    def __init__(self, model: torch.nn.Module, precision: str, images: int, batch_size: int,
                 compile: Optional[bool] = None):
        self.model, self.images, self.batch_size = model, images, batch_size
        # 'auto' probes the model (seconds for FishNet-150) only where there are images enough to gain from it;
        # a few images take the measured table's precision for this CPU
        work = ProbeWork(model, self._input_size(), batch=batch_size) if images >= PROBE_FROM else None
        self.precision = precision_policy.for_torch(precision, 'cpu', work=work).compute
        self.compile = compile
        self.done = 0
        self.eager_seconds, self.eager_images = 0.0, 0  # timed batches after the first (which builds kernels)
        self.fast = None
        self.folded = None if compile else optimize_for_inference(model, compile=False, precision=self.precision,
                                                                  backend='torch', batch_size=batch_size)
        if compile:
            self._build_fast_path('asked for (--compile always)')

    def _input_size(self) -> tuple:
        return tuple(self.model.pretrained_cfg.get('input_size', (3, 224, 224)))

    def _fast_path_figures(self) -> tuple:
        """(seconds to ready the fast path, its seconds per image) as measured on this machine for this model
        (:func:`fishzoo.deploy.backend_choice.cached_figures`), or (None, None)."""
        figures = cached_figures(ProbeWork(self.model, self._input_size(), batch=self.batch_size), self.precision)
        if figures is None:
            return None, None
        backend = figures['backend']
        rate, start = figures.get(f'{backend}_img_s'), figures.get(f'{backend}_start_s')
        return (start, 1 / rate) if rate and start is not None else (None, None)

    def _build_fast_path(self, why: str) -> None:
        _logger.info('predict: compiling the fast path: %s', why)
        self.fast = optimize_for_inference(self.model, precision=self.precision, batch_size=self.batch_size)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fast is None and self.compile is None and self.eager_images:
            left = self.images - self.done
            per_image = self.eager_seconds / self.eager_images
            start_s, fast_per_image = self._fast_path_figures()
            if compile_pays(left, per_image, start_s, fast_per_image):
                self._build_fast_path(f'{left} images left, {per_image * left:.0f} s at the folded model\'s '
                                      f'{1 / per_image:.0f} img/s')
            else:
                self.compile = False  # decided: the images left only get fewer
        count = len(batch)
        if self.fast is not None:
            if count < self.batch_size:  # one shape for the compiled graph
                batch = torch.cat([batch, batch.new_zeros(self.batch_size - count, *batch.shape[1:])])
            out = self.fast(batch)[:count]
        else:
            start = time.perf_counter()
            out = self.folded(batch)
            if self.done:
                self.eager_seconds += time.perf_counter() - start
                self.eager_images += count
        self.done += count
        return out


# compile_pays' figures where this machine has none for the model yet (fishzoo.deploy.backend_choice caches
# them once the fast path was measured): the compiled fast path against the folded model run eagerly, and
# what readying it costs the first time (compiling, converting to OpenVINO, timing both: 45 s for FishNet-150
# on 2 AMD EPYC cores; the digits model 1.6x at 32 px, b64)
COMPILED_SPEEDUP = 1.6
COMPILE_SECONDS = 60.0
PROBE_FROM = 64  # images from which 'auto' measures the model's precision (fishzoo.precision_probe)


def compile_pays(images_left: int, eager_seconds_per_image: float, start_seconds: Optional[float] = None,
                 fast_seconds_per_image: Optional[float] = None) -> bool:
    """Readying the fast path (``start_seconds``, default :data:`COMPILE_SECONDS`) and running the images left at
    its speed (``fast_seconds_per_image``, default :data:`COMPILED_SPEEDUP` x the folded model's) takes less
    time than the folded model would."""
    start = COMPILE_SECONDS if start_seconds is None else start_seconds
    fast = eager_seconds_per_image / COMPILED_SPEEDUP if fast_seconds_per_image is None else fast_seconds_per_image
    return images_left * (eager_seconds_per_image - fast) > start


def _torch_model(model_or_dir: str, precision: str, images: int, batch_size: int, compile: Optional[bool]):
    """(predictor, model) of a torch model: :class:`TorchPredictor`."""
    model = load_model(model_or_dir, pretrained=True).eval()
    return TorchPredictor(model, precision, images, batch_size, compile), model


def _loader(model_or_dir: str, backend: Optional[str], precision: str, images: int = 1, batch_size: int = 16,
            compile: Optional[bool] = None):
    """(logits function, label names, thresholds or None, transform, image mode) for ``predict``."""
    precision = precision_policy.parse(precision)
    if backend is None:
        single = single_file_format(model_or_dir)
        backend = single.name if single is not None else \
            detect_backend(resolve_source(model_or_dir).folder or model_or_dir)
    if backend not in BACKENDS:
        raise PredictError(f'--backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    if backend == TORCH:
        model, loaded = _torch_model(model_or_dir, precision, images, batch_size, compile)
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


def _steps(transform) -> List:
    from torchvision import transforms as T
    if isinstance(transform, T.Compose):
        return [step for inner in transform.transforms for step in _steps(inner)]
    return [transform]


class BatchReader:
    """Images to a batch: the eval transform's steps on PIL images (resize, crop) per image, in threads, and its
    ToTensor and Normalize once per batch on the stacked 8-bit pixels (the same arithmetic, a third of the time
    per image: on 32 px digits the per-image tensor steps were most of the reading). A transform of another
    shape runs whole per image."""

    def __init__(self, transform, mode: str):
        from torchvision import transforms as T
        self.transform, self.mode = transform, mode
        steps = _steps(transform)
        to_tensor = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
        after = steps[to_tensor + 1:] if to_tensor is not None else []
        self.pil_steps = None
        if to_tensor is not None and len(after) == 1 and isinstance(after[0], T.Normalize):
            self.pil_steps = T.Compose(steps[:to_tensor])
            self.mean = torch.as_tensor(after[0].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(after[0].std, dtype=torch.float32).view(1, -1, 1, 1)

    def read(self, image: str) -> torch.Tensor:
        """One image: its 8-bit pixels (H, W[, C]; ``load_image`` gives 'L', 'RGB' or 'RGBA') where the batch
        finishes the transform, else the transform's tensor."""
        if self.pil_steps is None:
            return _read(image, self.transform, self.mode)
        return torch.from_numpy(np.array(_read(image, self.pil_steps, self.mode), dtype=np.uint8))

    def read_many(self, images: Sequence[str]) -> List[torch.Tensor]:
        return [self.read(image) for image in images]

    def collate(self, items: List[torch.Tensor]) -> torch.Tensor:
        if self.pil_steps is None:
            return torch.stack(items)
        pixels = torch.stack(items)
        if pixels.dim() == 3:  # one channel: (B, H, W)
            pixels = pixels.unsqueeze(-1)
        batch = pixels.permute(0, 3, 1, 2).float().div_(255)
        return batch.sub_(self.mean).div_(self.std)


# threads reading the next batch while the model runs this one: a quarter of the cores, one on 2 cores (two
# threads read the 32 px digits at 4,400 img/s against one's 7,700: the per-image Python holds the GIL; PIL's
# decoding and resize of large images release it, where more cores can use more threads)
DECODE_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))


def _labels(logits: torch.Tensor, names: List[str], thresholds: Optional[List[float]], top_k: int) -> List[List]:
    """(label, probability) lists, one per row: the top ``top_k`` by softmax, or those over their thresholds by
    sigmoid, most probable first; computed for the whole batch at once."""
    logits = logits.float()
    if thresholds is None:
        values, indices = logits.softmax(-1).topk(min(top_k, len(names)), dim=1)
        return [[(names[i], v) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices.tolist(),
                                                                                         values.tolist())]
    probs = logits.sigmoid()
    over = (probs >= torch.tensor(thresholds)).tolist()
    rows = []
    for row_probs, row_over in zip(probs.tolist(), over):
        picked = sorted((i for i, keep in enumerate(row_over) if keep), key=lambda i: -row_probs[i])
        rows.append([(names[i], row_probs[i]) for i in picked])
    return rows


def iter_predictions(
        model_or_dir: str,
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
        batch_size: int = 16,
        backend: Optional[str] = None,
        precision: str = 'auto',
        compile: Optional[bool] = None,
) -> Iterator[List[Dict]]:
    """:func:`predict`'s results a batch at a time, as they are produced (``images`` already expanded): the
    next batch is read by :data:`DECODE_THREADS` threads (:class:`BatchReader`) while the model runs this one,
    so a caller can write each batch out, show progress and keep what finished if it is interrupted.
    ``compile``: for torch models, :class:`TorchPredictor`'s."""
    images = [str(i) for i in images]
    model, names, thresholds, transform, mode = _loader(model_or_dir, backend, precision, len(images), batch_size,
                                                        compile)
    reader = BatchReader(transform, mode)
    chunks = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    if not chunks:
        return

    def submit(pool, chunk):  # a few tasks per batch: one per image costs more than a small image's decoding
        parts = max(1, min(DECODE_THREADS, len(chunk)))
        return [pool.submit(reader.read_many, part) for part in np.array_split(np.array(chunk, dtype=object), parts)
                if len(part)]

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        pending = submit(pool, chunks[0])
        for index, chunk in enumerate(chunks):
            batch = [item for future in pending for item in future.result()]
            pending = submit(pool, chunks[index + 1]) if index + 1 < len(chunks) else []
            with torch.no_grad():
                logits = model(reader.collate(batch))
            if logits.dim() != 2 or logits.shape[1] != len(names):
                raise PredictError(f'{model_or_dir}: the model gives {list(logits.shape)[1:]} scores per image but '
                                   f'{len(names)} labels are named (label_names / num_classes in its config)')
            yield [dict(image=image, labels=labels)
                   for image, labels in zip(chunk, _labels(logits, names, thresholds, top_k))]


def predict(
        model_or_dir: str,
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
        batch_size: int = 16,
        backend: Optional[str] = None,
        precision: str = 'auto',
        compile: Optional[bool] = None,
) -> List[Dict]:
    """One dict per image: ``{'image', 'labels': [(label, probability), ...]}``; ``images`` may hold
    folders and glob patterns (:func:`expand_images`). ``backend``: 'torch' or a format of
    :data:`fishzoo.deploy.formats.FORMATS` (an exported folder); None picks what the folder holds.
    ``precision``: 'auto', 'fp32' or 'bf16' (:mod:`fishzoo.precision`: torch and OpenVINO; the other runtimes
    run fp32). ``compile``: None compiles a torch model where the images are many enough to pay for it
    (:func:`compile_pays`), True always, False never. :func:`iter_predictions` gives them a batch at a time."""
    return [result for batch in iter_predictions(model_or_dir, expand_images(images), top_k, batch_size, backend,
                                                 precision, compile) for result in batch]


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
