"""Images for int8 calibration and for checking an int8 model's accuracy, read with the model's own eval
transform (:func:`fishzoo.data.eval_transform`, as ``fishzoo predict`` reads them).

- Calibration needs images only: a folder (every image under it), a CSV with an ``image`` column, a
  training run's output folder (its training images, ``train_images.csv``), or ``digits`` (the embedded demo
  data, for the models the README's first command trains).
- Validation needs labels: a class-folder tree (sub-folder names are the model's label names), the
  training CSV format (``image,labels``), a training run's output folder (its held-out images,
  ``val_images.csv``: images the model never trained on), or ``digits`` (the demo's held-out split).

A CSV's image paths are relative to the CSV's folder; absolute paths and ``..`` are read as written (the CSV
is the user's own file, like the folders given on the command line).

Unreadable images are skipped and counted; a source with none left is refused in one sentence.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from fishzoo.data import (
    ImageSamples,
    digits_data,
    eval_transform,
    folder_samples,
    multi_hot,
    read_label_csv,
    read_split,
)
from fishzoo.errors import DataError, QuantizeError
from fishzoo.images import IMAGE_EXTENSIONS, drop_unreadable, image_files, image_mode

_logger = logging.getLogger(__name__)

DIGITS = 'digits'  # the embedded demo data as a source name
# fishzoo-train's default split of the digits (--val-split 0.2, --seed 42): 'digits' calibrates on its
# training part and validates on its held-out part
DIGITS_VAL_FRACTION, DIGITS_SEED = 0.2, 42
DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size


@dataclass
class LabelledImages:
    """Transformed images with targets: class indices (single-label) or multi-hot rows (multi-label)."""
    dataset: torch.utils.data.Dataset
    multilabel: bool
    skipped: int = 0

    def batches(self, batch_size: int = 16) -> Iterator[torch.Tensor]:
        """The images alone, in batches (for calibration)."""
        for images, _ in self.loader(batch_size):
            yield images

    def loader(self, batch_size: int = 16) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=0)

    def __len__(self) -> int:
        return len(self.dataset)


def _subsample(items: Sequence, limit: Optional[int]) -> List:
    """An evenly spread subset (class folders are sorted, so the first N would be one class)."""
    if limit is None or len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _digits(pretrained_cfg: dict, split: str):
    data = digits_data(DIGITS_VAL_FRACTION, DIGITS_SEED, mode=image_mode(pretrained_cfg.get('input_size', (1,))[0]))
    return data.train if split == 'train' else data.val, data.class_names


def _readable(samples, pretrained_cfg: dict, multilabel: bool, flag: str, source) -> LabelledImages:
    """``(path, target)`` samples whose images decode, read with the eval transform; unreadable ones are
    skipped and counted, and a source with none left is refused."""
    kept, bad = drop_unreadable(samples, strict=False)
    if not kept:
        raise QuantizeError(f'{flag} {source}: none of its {len(bad)} images could be read '
                            f'(first: {bad[0][0]}: {bad[0][1]})')
    if bad:
        _logger.warning('%s %s: skipped %d unreadable images of %d', flag, source, len(bad), len(bad) + len(kept))
    mode = image_mode(pretrained_cfg.get('input_size', (3,))[0])
    dataset = ImageSamples([p for p, _ in kept], [t for _, t in kept], eval_transform(pretrained_cfg), mode)
    return LabelledImages(dataset, multilabel, len(bad))


def calibration_images(source: Union[str, Path], pretrained_cfg: dict, flag: str = '--calib-data',
                       limit: Optional[int] = DEFAULT_CALIBRATION_IMAGES) -> LabelledImages:
    """Up to ``limit`` images from ``source`` (folder, CSV or ``digits``) with dummy targets."""
    if str(source) == DIGITS:
        samples, _ = _digits(pretrained_cfg, 'train')
        samples = samples.subset(_subsample(range(len(samples)), limit))
        samples.transform = eval_transform(pretrained_cfg)
        return LabelledImages(samples, multilabel=False)
    path = Path(source)
    split = read_split(path, 'train') if path.is_dir() else None
    if split is not None:  # a training run's folder: its training images
        files = [image for image, _ in split]
    elif path.is_dir():
        files = [str(f) for f in image_files(path)]
        if not files:
            raise QuantizeError(f'{flag} {path}: no image files under it ({", ".join(IMAGE_EXTENSIONS)})')
    elif path.is_file() and path.suffix.lower() == '.csv':
        try:
            files = [image for image, _ in read_label_csv(path)]
        except DataError as e:
            raise QuantizeError(f'{flag} {e}') from None
    else:
        raise QuantizeError(f'{flag} {source}: expected a folder of images, a CSV with an image column, '
                            f'or "{DIGITS}" for the embedded demo data')
    return _readable([(f, 0) for f in _subsample(files, limit)], pretrained_cfg, False, flag, source)


def validation_images(source: Union[str, Path], pretrained_cfg: dict, label_names: Optional[Sequence[str]],
                      num_classes: int, multilabel: bool, flag: str = '--val-data') -> LabelledImages:
    """Labelled images from a class-folder tree, a CSV (``image,labels``) or ``digits``, indexed by the
    model's label names (or, without names, by the sorted class folders)."""
    names = list(label_names) if label_names else None
    if str(source) == DIGITS:
        samples, digit_names = _digits(pretrained_cfg, 'val')
        if names is not None and names != digit_names or num_classes != len(digit_names):
            raise QuantizeError(f'{flag} {DIGITS}: the model was not trained on the 10 digits '
                                f'({num_classes} classes{", " + ",".join(names[:5]) if names else ""})')
        samples.transform = eval_transform(pretrained_cfg)
        return LabelledImages(samples, multilabel=False)
    path = Path(source)
    split = read_split(path, 'val') if path.is_dir() else None  # a training run's folder: its held-out images
    if split is not None or (path.is_file() and path.suffix.lower() == '.csv'):
        try:
            rows = split if split is not None else read_label_csv(path)
            names = names or sorted({label for _, labels in rows for label in labels})
            targets = multi_hot(rows, names, path)
        except DataError as e:
            raise QuantizeError(f'{flag} {e}') from None
        if not multilabel:  # a single-label model checked on a CSV: one label per row
            if any(t.sum() != 1 for t in targets):
                raise QuantizeError(f'{flag} {path}: a single-label model needs exactly one label per row')
            targets = [int(t.argmax()) for t in targets]
        samples = [(image, t) for (image, _), t in zip(rows, targets)]
    elif path.is_dir():
        if multilabel:
            raise QuantizeError(f'{flag} {path}: a multi-label model is checked on a CSV (image,labels), '
                                'not on class folders')
        found, class_to_idx = folder_samples(path, flag)
        folders = sorted(class_to_idx, key=class_to_idx.get)
        if names is None:
            names = folders
        unknown = sorted(set(folders) - set(names))
        if unknown:
            raise QuantizeError(f'{flag} {path}: class folders the model has no label for: {", ".join(unknown[:5])} '
                                f'(its labels: {", ".join(names[:10])})')
        index = {name: i for i, name in enumerate(names)}
        samples = [(image, index[folders[t]]) for image, t in found]
    else:
        raise QuantizeError(f'{flag} {source}: expected a class-folder tree, a CSV (image,labels) '
                            f'or "{DIGITS}" for the embedded demo data')
    if len(names) != num_classes:
        raise QuantizeError(f'{flag} {source}: {len(names)} classes, but the model has {num_classes}')
    return _readable(samples, pretrained_cfg, multilabel, flag, source)


def as_batches(calibration: Union[torch.Tensor, Iterable, LabelledImages], batch_size: int = 16
               ) -> List[torch.Tensor]:
    """Calibration input as a list of image batches: a tensor (N, C, H, W), a loader or iterable of tensors
    or of ``(images, targets)`` pairs, or :class:`LabelledImages`."""
    if isinstance(calibration, LabelledImages):
        batches = list(calibration.batches(batch_size))
    elif isinstance(calibration, torch.Tensor):
        if calibration.dim() != 4:
            raise QuantizeError('calibration images must be a (N, C, H, W) tensor, '
                                f'got shape {tuple(calibration.shape)}')
        batches = list(calibration.split(batch_size))
    elif isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes, Path)):
        batches = []
        for item in calibration:
            images = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(images, torch.Tensor) or images.dim() != 4:
                raise QuantizeError('calibration batches must be (N, C, H, W) image tensors or (images, targets) '
                                    f'pairs, got {type(images).__name__}')
            batches.append(images)
    else:
        raise QuantizeError('calibration must be images (a tensor, a loader, or '
                            'fishzoo.deploy.calibration.calibration_images), '
                            f'got {type(calibration).__name__}')
    if not batches or not sum(len(b) for b in batches):
        raise QuantizeError('no calibration images: give a few hundred images like the ones the model will see')
    return batches

