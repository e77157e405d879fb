"""Training data: the embedded digits, ImageFolder trees, multi-label CSV files and Hugging Face datasets.

Every source becomes an :class:`ImageSamples` dataset: a list of image sources (file paths or in-memory
PIL images) with class indices (single-label) or multi-hot vectors (multi-label), decoded by
:func:`load_image` and transformed by timm's transforms built from the model's data config.

A user's mistake raises :class:`DataError` with one sentence naming the file, folder or flag.
"""
import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.utils.misc import natural_key

from fishzoo.errors import DataError, describe
from fishzoo.hub.atomic import write_file
from fishzoo.images import IMAGE_EXTENSIONS, LimitResize, drop_unreadable, image_files, load_image

_logger = logging.getLogger(__name__)


class ImageSamples(torch.utils.data.Dataset):
    """Images with single-label class indices or multi-label multi-hot targets."""

    def __init__(
            self,
            sources: Sequence,
            targets: Sequence,
            transform: Optional[Callable] = None,
            mode: str = 'RGB',
    ):
        assert len(sources) == len(targets)
        self.sources = sources
        self.targets = targets
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = load_image(self.sources[index], self.mode)
        if self.transform is not None:
            img = self.transform(img)
        target = self.targets[index]
        if isinstance(target, (int, np.integer)):
            return img, int(target)
        return img, torch.as_tensor(target, dtype=torch.float32)

    def subset(self, indices: Sequence[int]) -> 'ImageSamples':
        return ImageSamples([self.sources[i] for i in indices], [self.targets[i] for i in indices],
                            self.transform, self.mode)


@dataclass
class TrainValData:
    """What training needs from a data source."""
    train: ImageSamples
    val: ImageSamples
    class_names: List[str]
    multilabel: bool = False
    name: str = ''
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (image, reason) left out as unreadable


SPLIT_FILES = {'train': 'train_images.csv', 'val': 'val_images.csv'}  # a run's split, in its output folder


def write_split(loaded: TrainValData, folder: Union[str, Path]) -> List[Path]:
    """The run's training and validation images as ``train_images.csv`` / ``val_images.csv`` (``image,labels``,
    absolute paths) in ``folder``, so that ``fishzoo export --calib-data FOLDER --val-data FOLDER`` calibrates on
    the training images and measures on images the model never trained on. Data held in memory (the embedded
    digits, a Hugging Face dataset) has no files to list: nothing is written."""
    written = []
    for split, name in SPLIT_FILES.items():
        sources = getattr(getattr(loaded, split), 'sources', None)  # streamed shards list none
        if sources is None or not all(isinstance(s, (str, Path)) for s in sources):
            return []
        rows = []
        for source, target in zip(sources, getattr(loaded, split).targets):
            label = ' '.join(loaded.class_names[i] for i in np.flatnonzero(np.asarray(target))) \
                if loaded.multilabel else loaded.class_names[int(target)]  # a class folder's name may hold spaces
            rows.append([str(Path(source).resolve()), label])
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(['image', 'labels' if loaded.multilabel else 'label'])
        writer.writerows(rows)
        written.append(write_file(Path(folder) / name, text.getvalue()))
    return written


def read_split(folder: Union[str, Path], split: str) -> Optional[List[Tuple[str, List[str]]]]:
    """``(image, labels)`` of a run's ``train`` or ``val`` split (:func:`write_split`), or None when
    ``folder`` holds none."""
    path = Path(folder) / SPLIT_FILES[split]
    if not path.is_file():
        return None
    with open(path, newline='') as f:
        reader = csv.reader(f)
        header = next(reader, [])
        single = header[1:2] == ['label']
        return [(image, [label] if single else label.split()) for image, label in reader]


# --- splitting -----------------------------------------------------------------------------------

def eval_transform(pretrained_cfg: dict) -> Callable:
    """The eval transform a model's ``pretrained_cfg`` describes (resize, center crop, normalize): how
    ``fishzoo predict``, the exports' calibration and their accuracy checks read an image. Memory is bounded
    by what the resize computes (:class:`~fishzoo.images.LimitResize`)."""
    config = resolve_data_config(pretrained_cfg=pretrained_cfg)
    return bounded_eval_transform(create_transform(**{
        k: config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')}), config)


def bounded_eval_transform(transform: Callable, data_config: dict) -> Callable:
    """``transform`` (timm's resize-then-crop eval transform for ``data_config``) after a
    :class:`~fishzoo.images.LimitResize` for the short side it resizes to."""
    from torchvision import transforms as T
    short_side = math.floor(max(data_config['input_size'][1:]) / (data_config.get('crop_pct') or 1.0))
    return T.Compose([LimitResize(short_side), transform])


def _split_by_class(indices: np.ndarray, labels: np.ndarray, val_size: int, seed: int) -> Tuple[List[int], List[int]]:
    """``val_size`` of ``indices`` for validation, spread over the classes in proportion to their size, and at
    least one image of every class kept for training (every class here has two or more)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * val_size / counts.sum()
    take = np.minimum(np.floor(share).astype(int), counts - 1)
    # the remaining places go to the classes with the largest remainders that still keep a training image
    order = np.argsort(-(share - take) + rng.random(len(classes)) * 1e-9)
    for i in order:
        if take.sum() >= val_size:
            break
        if take[i] < counts[i] - 1:
            take[i] += 1
    train, val = [], []
    for cls, k in zip(classes, take):
        members = rng.permutation(indices[labels == cls])
        val += members[:k].tolist()
        train += members[k:].tolist()
    return train, val


def stratified_split(targets: Sequence, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Train/val indices: stratified for class indices, iterative-stratified for multi-hot targets."""
    if not 0 < val_fraction < 1:
        raise DataError(f'--val-split must be between 0 and 1, got {val_fraction}')
    indices = np.arange(len(targets))
    if len(targets) and not isinstance(targets[0], (int, np.integer)):
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train_idx, val_idx = next(splitter.split(indices, np.asarray(targets)))
        return sorted(train_idx.tolist()), sorted(val_idx.tolist())
    from sklearn.model_selection import train_test_split
    labels = np.asarray(targets, dtype=np.int64)
    counts = np.bincount(labels)
    single = counts[labels] == 1
    if single.any():
        # a class of one image cannot be split; left to chance (no stratification) whole classes landed only in
        # validation, never trained: 2,000 one-image classes lost 400. They train; the rest splits stratified.
        _logger.warning('%d classes have a single image: each is trained on and none is validated',
                        int((counts == 1).sum()))
        rest = indices[~single]
        val_size = min(max(1, round(val_fraction * len(targets))), len(rest) - len(np.unique(labels[rest])))
        if val_size < 1:
            raise DataError(f'cannot hold out validation images from {len(targets)} images: no class has more '
                            'images than one for training needs; give more images per class, or a validation '
                            'set of its own (a val/ folder, --val-csv)')
        train_rest, val_idx = _split_by_class(rest, labels[rest], val_size, seed)
        return sorted([*indices[single].tolist(), *train_rest]), sorted(val_idx)
    try:
        train_idx, val_idx = train_test_split(indices, test_size=val_fraction, stratify=targets, random_state=seed)
    except ValueError as e:
        raise DataError(f'cannot split {len(targets)} images with --val-split {val_fraction}: {e}') from None
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


# --- sources -------------------------------------------------------------------------------------

def _digit_images():
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (digits.images * (255.0 / 16.0)).round().astype(np.uint8), digits.target.astype(int)


def digits_data(
        val_fraction: float = 0.2,
        seed: int = 0,
        mode: str = 'L',
        classes: Optional[Sequence[int]] = None,
) -> TrainValData:
    """scikit-learn's handwritten digits: 1,797 real 8x8 scans of 10 classes, shipped inside scikit-learn.

    The 8x8 images (values 0-16) become 8-bit images; the transforms upscale them to the model's size.
    ``classes`` keeps only those digits (their class indices follow the given order).
    """
    arrays, labels = _digit_images()
    classes = list(range(10)) if classes is None else [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
        raise DataError(f'--digits must list distinct digits 0-9, got {",".join(map(str, classes))}')
    index = {digit: i for i, digit in enumerate(classes)}
    keep = [i for i, t in enumerate(labels) if t in index]
    images = [Image.fromarray(arrays[i], mode='L') for i in keep]
    targets = [index[int(labels[i])] for i in keep]
    data = ImageSamples(images, targets, mode=mode)
    train_idx, val_idx = stratified_split(targets, val_fraction, seed)
    name = 'sklearn digits' if len(classes) == 10 else f'sklearn digits {",".join(map(str, classes))}'
    return TrainValData(data.subset(train_idx), data.subset(val_idx), [str(d) for d in classes], name=name)


def write_digits_folder(root: Union[str, Path], size: int = 32, mode: str = 'RGB') -> Path:
    """The embedded digits as a class-folder tree, ``root/DIGIT/NNNN.png``: what a user's own data looks like.

    Each 8x8 scan is upscaled to ``size`` px (bilinear) and saved in ``mode``.
    """
    root = Path(root)
    arrays, labels = _digit_images()
    for i, (array, label) in enumerate(zip(arrays, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(array, mode='L').resize((size, size), Image.BILINEAR).convert(mode)
        image.save(root / str(label) / f'{i:04d}.png')
    return root


def write_digits_multilabel(root: Union[str, Path], images: int = 600, empty_slot: float = 0.84,
                            seed: int = 0) -> Path:
    """A multi-label set made from the embedded digits: ``root/labels.csv`` and ``root/images/*.png``.

    Each 16x16 image has four 8x8 quadrants, each empty with probability ``empty_slot`` or else a real
    digit scan; its labels are the digits it shows (about half the images show none, as in the
    multi-label study).
    """
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    arrays, labels = _digit_images()
    rng = np.random.default_rng(seed)
    rows = ['image,labels']
    for i in range(images):
        canvas = np.zeros((16, 16), np.uint8)
        shown = set()
        for slot in range(4):
            if rng.random() >= empty_slot:
                j = int(rng.integers(len(arrays)))
                y, x = 8 * (slot // 2), 8 * (slot % 2)
                canvas[y:y + 8, x:x + 8] = arrays[j]
                shown.add(str(labels[j]))
        Image.fromarray(canvas, mode='L').save(root / 'images' / f'{i:04d}.png')
        rows.append(f'images/{i:04d}.png,{" ".join(sorted(shown))}')
    (root / 'labels.csv').write_text('\n'.join(rows) + '\n')
    return root / 'labels.csv'


def folder_samples(folder: Path, flag: str, class_to_idx=None):
    """``(image, class index)`` of a class-folder tree (an image's class is the name of the folder holding it,
    as timm's ImageFolder reads it), walked safely (:func:`~fishzoo.images.image_files`)."""
    if not folder.is_dir():
        raise DataError(f'{flag} {folder}: no such directory')
    files = [f for f in image_files(folder) if f.parent != folder]  # an image outside a class folder has no class
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(sorted({f.parent.name for f in files}, key=natural_key))}
    samples = [(str(f), class_to_idx[f.parent.name]) for f in sorted(files, key=lambda f: natural_key(str(f)))
               if f.parent.name in class_to_idx]
    if not samples:
        raise DataError(f'{flag} {folder}: no images found in class sub-folders '
                        f'(expected {folder}/CLASS_NAME/IMAGE with extensions {", ".join(IMAGE_EXTENSIONS)})')
    return samples, class_to_idx


def _class_folders(folder: Path) -> List[str]:
    return sorted({f.parent.name for f in image_files(folder) if f.parent != folder})


def _val_folder(data_dir: Path) -> Optional[Path]:
    return next((data_dir / n for n in ('val', 'validation') if (data_dir / n).is_dir()), None)


def has_train_val_folders(data_dir: Union[str, Path]) -> bool:
    """``data_dir`` holds ``train/`` and ``val/`` (or ``validation/``) trees rather than one to split."""
    return (Path(data_dir) / 'train').is_dir() and _val_folder(Path(data_dir)) is not None


def image_folder_data(
        data_dir: Union[str, Path],
        val_fraction: Optional[float] = None,
        seed: int = 0,
        mode: str = 'RGB',
        strict: bool = False,
) -> TrainValData:
    """``data_dir/train`` and ``data_dir/val`` (or ``validation``) class-folder trees, or one tree split by
    ``val_fraction``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f'--data-dir {data_dir}: no such directory')
    train_dir = data_dir / 'train'
    val_dir = _val_folder(data_dir)
    if train_dir.is_dir() and val_dir is not None:
        train_classes, val_classes = _class_folders(train_dir), _class_folders(val_dir)
        if train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DataError(f'the class folders of {train_dir} and {val_dir} differ: '
                            f'only in train: {only_train or "none"}; only in val: {only_val or "none"}')
        train, class_to_idx = folder_samples(train_dir, '--data-dir')
        val, _ = folder_samples(val_dir, '--data-dir', class_to_idx)
    else:
        if val_fraction is None:
            raise DataError(f'--data-dir {data_dir} has no train/ and val/ sub-folders; '
                            'give --val-split to split a single class-folder tree')
        samples, class_to_idx = folder_samples(train_dir if train_dir.is_dir() else data_dir, '--data-dir')
        train_idx, val_idx = stratified_split([t for _, t in samples], val_fraction, seed)
        train, val = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    train, bad_train = drop_unreadable(train, strict)
    val, bad_val = drop_unreadable(val, strict)
    names = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    return TrainValData(
        ImageSamples([p for p, _ in train], [t for _, t in train], mode=mode),
        ImageSamples([p for p, _ in val], [t for _, t in val], mode=mode),
        names, name=data_dir.name, skipped=bad_train + bad_val)


def _parse_classes(classes: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if classes is None or isinstance(classes, (list, tuple)):
        return list(classes) if classes is not None else None
    if os.path.isfile(classes):
        return [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()]
    return [c.strip() for c in classes.split(',') if c.strip()]


def read_label_csv(path: Union[str, Path], image_root: Union[str, Path, None] = None):
    """Rows of a multi-label CSV with columns ``image,labels`` (labels separated by spaces, empty: none).

    Returns ``[(image path, [labels])]``; a duplicated image is kept once (with a warning when its labels
    differ, the first row wins).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f'{path}: no such CSV file')
    root = Path(image_root) if image_root else path.parent
    rows, seen, conflicts = [], {}, []
    try:
        with path.open(newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {'image', 'labels'} <= set(reader.fieldnames):
                raise DataError(f'{path}: expected a header with the columns image,labels, '
                                f'got {",".join(reader.fieldnames or []) or "nothing"}')
            for line, row in enumerate(reader, start=2):
                image = (row.get('image') or '').strip()
                if not image:
                    raise DataError(f'{path} line {line}: the image field is empty')
                labels = sorted(set((row.get('labels') or '').split()))
                if image in seen:
                    if seen[image] != labels:
                        conflicts.append((line, image))
                    continue
                seen[image] = labels
                rows.append((line, root / image, labels))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f'{path}: not a readable CSV file ({e})') from None
    if not rows:
        raise DataError(f'{path}: no rows')
    if conflicts:  # one warning, not one a line (170,000 repeated rows printed 169,999 lines)
        shown = '; '.join(f'line {line}: {image}' for line, image in conflicts[:3])
        _logger.warning('%s: %d rows list an image again with other labels; keeping the first row of each (%s%s)',
                        path, len(conflicts), shown, ', ...' if len(conflicts) > 3 else '')
    for line, image, _ in rows:
        if not image.is_file():
            raise DataError(f'{path} line {line}: image {image} not found (image paths are relative to '
                            f'--image-root, default the CSV\'s folder)')
    return [(str(image), labels) for _, image, labels in rows]


MAX_MULTI_HOT_VALUES = 200_000_000  # images x classes of the multi-hot targets held in memory (800 MB)


def one_hot_targets(targets: Sequence[int], num_classes: int) -> List[np.ndarray]:
    """Class indices as one-hot vectors: single-label data trained with a multi-label loss (``--multilabel``)."""
    eye = np.eye(num_classes, dtype=np.float32)
    return [eye[t] for t in targets]


def multi_hot(rows, class_names: List[str], path) -> List[np.ndarray]:
    """One 0/1 vector over ``class_names`` per ``(image, labels)`` row; refused when the table would not fit
    (a labels column that is not space-separated label names gives as many classes as rows)."""
    if len(rows) * len(class_names) > MAX_MULTI_HOT_VALUES:
        raise DataError(f'{path}: {len(class_names):,} distinct labels in {len(rows):,} rows would take '
                        f'{len(rows) * len(class_names) * 4 / 1e9:.1f} GB of targets; the labels column holds '
                        'label names separated by spaces (is it another column, or free text?)')
    index = {c: i for i, c in enumerate(class_names)}
    targets = []
    for image, labels in rows:
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise DataError(f'{path}: {image} has labels not in --classes: {", ".join(unknown)}')
        vector = np.zeros(len(class_names), dtype=np.float32)
        vector[[index[label] for label in labels]] = 1
        targets.append(vector)
    return targets


def csv_data(
        train_csv: Union[str, Path],
        val_csv: Union[str, Path, None] = None,
        image_root: Union[str, Path, None] = None,
        classes: Union[None, str, Sequence[str]] = None,
        val_fraction: Optional[float] = None,
        seed: int = 0,
        mode: str = 'RGB',
        strict: bool = False,
) -> TrainValData:
    """Multi-label data from CSV files (``image,labels``); one file is split iterative-stratified."""
    train_rows = read_label_csv(train_csv, image_root)
    val_rows = read_label_csv(val_csv, image_root) if val_csv else None
    class_names = _parse_classes(classes)
    if class_names is None:
        class_names = sorted({label for _, labels in train_rows + (val_rows or []) for label in labels})
    if not class_names:
        raise DataError(f'{train_csv}: no labels in any row; give the class list with --classes')
    train_targets = multi_hot(train_rows, class_names, train_csv)
    if val_rows is None:
        if val_fraction is None:
            raise DataError('give --val-csv, or --val-split to split --train-csv')
        train_idx, val_idx = stratified_split(train_targets, val_fraction, seed)
        val_rows, val_targets = [train_rows[i] for i in val_idx], [train_targets[i] for i in val_idx]
        train_rows, train_targets = [train_rows[i] for i in train_idx], [train_targets[i] for i in train_idx]
    else:
        val_targets = multi_hot(val_rows, class_names, val_csv)
    train, bad_train = drop_unreadable([(p, t) for (p, _), t in zip(train_rows, train_targets)], strict)
    val, bad_val = drop_unreadable([(p, t) for (p, _), t in zip(val_rows, val_targets)], strict)
    return TrainValData(
        ImageSamples([p for p, _ in train], [t for _, t in train], mode=mode),
        ImageSamples([p for p, _ in val], [t for _, t in val], mode=mode),
        class_names, multilabel=True, name=Path(train_csv).stem, skipped=bad_train + bad_val)


class _HFColumn:
    """Lazy access to one column of a Hugging Face dataset."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[int(index)][self.column]


def hf_data(
        name: str,
        data_dir: Union[str, Path, None] = None,
        val_fraction: Union[float, str, None] = None,
        seed: int = 0,
        mode: str = 'RGB',
) -> TrainValData:
    """A Hugging Face dataset with an image column and a ClassLabel column (``imagefolder`` + ``--data-dir`` too)."""
    try:
        import datasets
    except ImportError:
        raise DataError('--dataset needs the Hugging Face datasets library: pip install "fishzoo[hf]"') from None
    if name == 'imagefolder' and not data_dir:
        raise DataError('--dataset imagefolder needs --data-dir')
    try:
        loaded = datasets.load_dataset(name, data_dir=str(data_dir) if data_dir else None)
    except Exception as e:  # network, missing dataset, malformed folder: one sentence, no traceback
        raise DataError(f'--dataset {name}: could not be loaded ({describe(e)})') from None
    train = loaded['train'] if 'train' in loaded else None
    if train is None:
        raise DataError(f'--dataset {name} has no train split (splits: {", ".join(loaded)})')
    features = train.features
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise DataError(f'--dataset {name}: expected an image column and a class-label column, '
                        f'got {", ".join(features)}')
    # decoded by fishzoo.images (bomb check, one sentence per bad file) instead of by datasets
    loaded = loaded.cast_column(image_col, datasets.Image(decode=False))
    train = loaded['train']
    if isinstance(val_fraction, str):  # --val-split NAME: that split validates
        if val_fraction not in loaded:
            raise DataError(f'--val-split {val_fraction}: --dataset {name} has no such split '
                            f'(splits: {", ".join(loaded)})')
        val = loaded[val_fraction]
    else:
        val = next((loaded[s] for s in ('validation', 'val', 'test') if s in loaded), None)
    if val is None:
        if val_fraction is None:
            raise DataError(f'--dataset {name} has no validation split; give --val-split')
        train_idx, val_idx = stratified_split(list(train[label_col]), val_fraction, seed)
        train, val = train.select(train_idx), train.select(val_idx)
    return TrainValData(
        ImageSamples(_HFColumn(train, image_col), list(train[label_col]), mode=mode),
        ImageSamples(_HFColumn(val, image_col), list(val[label_col]), mode=mode),
        list(features[label_col].names), name=name)
