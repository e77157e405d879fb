"""Training data as WebDataset shards: a class-folder tree or a multi-label CSV written as tar shards with a
manifest (``fishzoo shards``), and read back as a stream that the processes and loader workers of a run
divide exactly.

A shard is a plain tar in WebDataset's layout: each sample is the files sharing a key, ``KEY.png`` (or the
source file's own ``.jpg``, ``.webp``, ...) and ``KEY.cls`` (the class index as text) or, multi-label,
``KEY.json`` (``{"labels": [class indices]}``), so webdataset, timm's ``wds/`` reader and Hugging Face
``datasets`` read them too. ``manifest.json`` beside the shards names the classes and counts each shard's
samples; the shards may sit on any file system fsspec reaches (a local folder, ``hf://datasets/...``,
``s3://...``, ``https://...``), named by the manifest's location.

Why fishzoo reads them itself (on :mod:`tarfile` and fsspec) rather than through webdataset or ``datasets``
streaming: a run here needs every sample exactly once per epoch across processes and workers, every
process the same number of steps (DDP), and a resume inside an epoch that repeats nothing; webdataset splits
whole shards between nodes (uneven or repeated) and neither library keeps a resumable position across
loader workers. With the manifest's counts each epoch has a plan (:func:`epoch_plan`): the epoch's shard
order, cut into one contiguous run of samples per process and loader worker, and the batches each worker
yields; a resume replays the plan and skips, without decoding, what the checkpoint's batch count says was
used.
"""
import bisect
import io
import json
import math
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from fishzoo.errors import DataError, describe
from fishzoo.hub.atomic import write_file

MANIFEST = 'manifest.json'
FORMAT = 'fishzoo-shards/1'
SHUFFLE_BUFFER = 1000  # samples a worker mixes over (held as their encoded bytes: ~110 MB of ImageNet JPEGs)
DEFAULT_SHARD_BYTES = 256 * 2 ** 20
MAX_FILE_BYTES = 256 * 2 ** 20  # one file of a sample (an image, a label): larger is refused, not read
IMAGE_SUFFIXES = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'tif', 'tiff', 'gif')


# --- writing -------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'256MB', '1GB', '500k' or a number of bytes."""
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*', str(text).lower())
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * 1024 ** ' kmgt'.index(match.group(2) or ' '))


parse_size.kind = "a size such as 256MB or 1GB"


def _encoded(source) -> Tuple[str, bytes]:
    """(suffix, bytes) of one sample's image: a file's own bytes (no re-encoding), an in-memory image as PNG."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format='PNG')
        return 'png', buffer.getvalue()
    if isinstance(source, dict):  # a Hugging Face image cell (decode=False)
        if source.get('bytes'):
            suffix = Path(source.get('path') or 'image.png').suffix.lstrip('.').lower() or 'png'
            return suffix, source['bytes']
        source = source['path']
    path = Path(source)
    suffix = path.suffix.lstrip('.').lower()
    return (suffix if suffix in IMAGE_SUFFIXES else 'img'), path.read_bytes()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # no mtime: the same data writes the same shards
    tar.addfile(info, io.BytesIO(payload))


def write_split_shards(samples, out_dir: Path, split: str, multilabel: bool, max_bytes: int, max_count: int,
                       seed: int) -> Tuple[List[str], List[int]]:
    """``samples`` (an :class:`~fishzoo.data.ImageSamples`) as ``SPLIT-NNNNNN.tar`` shards in ``out_dir``, in an
    order shuffled once with ``seed`` (a shard then holds every class); returns the shard names and counts."""
    order = list(range(len(samples.targets)))
    random.Random(seed).shuffle(order)
    names: List[str] = []
    counts: List[int] = []
    tar, size = None, 0
    for position, index in enumerate(order):
        suffix, payload = _encoded(samples.sources[index])
        target = samples.targets[index]
        label = json.dumps({'labels': np.flatnonzero(np.asarray(target)).tolist()}).encode() if multilabel \
            else str(int(target)).encode()
        if tar is None or counts[-1] >= max_count or (counts[-1] and size + len(payload) > max_bytes):
            if tar is not None:
                tar.close()
            names.append(f'{split}-{len(names):06d}.tar')
            counts.append(0)
            tar, size = tarfile.open(out_dir / names[-1], 'w', format=tarfile.USTAR_FORMAT), 0
        key = f'{split}{position:09d}'
        _add(tar, f'{key}.{suffix}', payload)
        _add(tar, f"{key}.{'json' if multilabel else 'cls'}", label)
        counts[-1] += 1
        size += len(payload) + 1536  # two headers and the padding
    if tar is not None:
        tar.close()
    return names, counts


def write_shards(loaded, out_dir: Union[str, Path], max_bytes: int = DEFAULT_SHARD_BYTES, max_count: int = 10000,
                 seed: int = 0, source: str = '', val_split: Optional[float] = None) -> Path:
    """A :class:`~fishzoo.data.TrainValData` (its train and val splits as loaded) written as shards plus
    ``manifest.json`` in ``out_dir``; returns the manifest's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists() or any(out_dir.glob('*.tar')):
        raise DataError(f'--output-dir {out_dir}: already holds shards; choose an empty folder')
    splits = {}
    for split in ('train', 'val'):
        samples = getattr(loaded, split)
        names, counts = write_split_shards(samples, out_dir, split, loaded.multilabel, max_bytes, max_count, seed)
        per_class = np.zeros(len(loaded.class_names), dtype=np.int64)
        for target in samples.targets:
            if loaded.multilabel:
                per_class += np.asarray(target, dtype=np.int64)
            else:
                per_class[int(target)] += 1
        splits[split] = dict(shards=names, counts=counts, samples=sum(counts), class_counts=per_class.tolist())
    manifest = dict(format=FORMAT, name=loaded.name, source=source, class_names=list(loaded.class_names),
                    multilabel=bool(loaded.multilabel), seed=seed, val_split=val_split, splits=splits)
    # written last, and whole or not at all: a folder without it is not shards yet
    return write_file(out_dir / MANIFEST, json.dumps(manifest, indent=1) + '\n')


# --- the manifest --------------------------------------------------------------------------------

def _fs(location: str):
    import fsspec
    return fsspec.core.url_to_fs(location)


def manifest_location(data: str) -> str:
    """``--data-dir`` naming a shard folder (or its manifest.json), local or remote: the manifest's location."""
    data = str(data)
    return data if data.endswith('.json') else data.rstrip('/') + '/' + MANIFEST


def is_shard_folder(data: Union[str, Path]) -> bool:
    """Whether ``--data-dir`` names shards: a manifest there, or a remote URL (only shards are read remotely)."""
    data = str(data)
    if '://' in data:
        return True
    return Path(manifest_location(data)).is_file()


@dataclass(frozen=True)
class Manifest:
    """What a run needs to know of its shards before reading them: each split's shard URLs and sample counts,
    the class names and how a shard is read (``tar``: WebDataset; ``parquet``: a Hugging Face dataset's data
    files, ``columns`` naming its image and label columns)."""
    location: str  # where it was read (or the dataset it describes)
    class_names: List[str]
    multilabel: bool
    splits: Dict[str, Dict]  # split -> {urls, counts, class_counts}
    name: str
    reader: str = 'tar'
    columns: Tuple[str, str] = ('', '')

    def urls(self, split: str) -> List[str]:
        return list(self.splits[split]['urls'])

    def counts(self, split: str) -> List[int]:
        return list(self.splits[split]['counts'])

    def samples(self, url: str, skip: int = 0) -> Iterator[Tuple[str, Dict[str, bytes]]]:
        """(key, {suffix: bytes}) of each sample of one shard from sample ``skip`` on, front to back."""
        return tar_samples(url, skip) if self.reader == 'tar' else parquet_samples(url, *self.columns, skip)


def read_manifest(data: Union[str, Path]) -> Manifest:
    location = manifest_location(str(data))
    try:
        fs, path = _fs(location)
        with fs.open(path, 'rb') as f:
            raw = json.loads(f.read().decode())
    except FileNotFoundError:
        raise DataError(f'--data-dir {data}: no {MANIFEST} (write shards with `fishzoo shards`)') from None
    except Exception as e:  # an unreachable host, a malformed file: one sentence
        raise DataError(f'--data-dir {data}: {MANIFEST} could not be read ({describe(e)})') from None
    try:
        if raw.get('format') != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
        class_names = [str(c) for c in raw['class_names']]
        splits = {}
        for split in ('train', 'val'):
            entry = raw['splits'][split]
            names, counts = [str(n) for n in entry['shards']], [int(c) for c in entry['counts']]
            # a shard is a name beside the manifest or a URL with a scheme (an index of shards elsewhere): never
            # a path that climbs out of the manifest's folder
            if len(names) != len(counts) or any(c < 0 for c in counts) \
                    or any('://' not in n and ('/' in n or '\\' in n or n.startswith('.')) for n in names):
                raise ValueError(f'the {split} shards and counts do not match')
            class_counts = [int(c) for c in entry.get('class_counts') or []]
            base = location.rsplit('/', 1)[0]
            splits[split] = dict(urls=[n if '://' in n else f'{base}/{n}' for n in names], counts=counts,
                                 class_counts=class_counts)
        if not class_names:
            raise ValueError('no class names')
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f'{location}: not a fishzoo shard manifest ({describe(e)})') from None
    return Manifest(location, class_names, bool(raw.get('multilabel')), splits, str(raw.get('name') or data))


def expand_braces(pattern: str) -> List[str]:
    """WebDataset's shard patterns: ``train-{000..099}.tar`` (a zero-padded range) and ``{a,b}`` (a list),
    expanded left to right."""
    match = re.search(r'\{([^{}]*)\}', pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    span = re.fullmatch(r'(\d+)\.\.(\d+)', body)
    if span:
        first, last = span.groups()
        if int(last) < int(first):
            raise DataError(f'{pattern}: the range {{{body}}} runs backwards')
        items = [str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]
    else:
        items = body.split(',')
    return [expanded for item in items for expanded in expand_braces(head + item + tail)]


def _absolute(url: str) -> str:
    """A shard's location as a URL with a scheme (a local path as file://...), as an index records it."""
    return url if '://' in url else Path(url).resolve().as_uri()


def index_shards(train: str, val: str, out_dir: Union[str, Path], classes: Optional[Sequence[str]] = None) -> Path:
    """``fishzoo shards --train-shards``: a manifest for WebDataset shards written by another tool, local or remote, so
    that fishzoo-train streams them. ``train`` and ``val`` are shard patterns (``.../train-{000000..000099}.tar``);
    every shard is read once to count its samples and collect its labels (a remote shard is streamed whole,
    a local one is walked by its headers). The class names are ``classes`` or the class indices found."""
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists():
        raise DataError(f'--output-dir {out_dir}: already holds a {MANIFEST}; choose an empty folder')
    splits, highest, multilabel = {}, -1, False
    for split, pattern in (('train', train), ('val', val)):
        urls = [_absolute(u) for u in expand_braces(pattern)]
        counts, class_counts = [], {}
        for url in urls:
            count = 0
            for key, files in tar_samples(url):
                label_suffix = 'json' if 'json' in files else 'cls' if 'cls' in files else None
                if label_suffix is None:
                    raise DataError(f'{url} sample {key}: no .cls or .json label (found {", ".join(sorted(files))})')
                multilabel = multilabel or label_suffix == 'json'
                for index in _label_indices(files[label_suffix], label_suffix, f'{url} sample {key}'):
                    class_counts[index] = class_counts.get(index, 0) + 1
                    highest = max(highest, index)
                count += 1
            counts.append(count)
        splits[split] = dict(urls=urls, counts=counts, class_counts=class_counts)
    class_names = list(classes) if classes else [str(i) for i in range(highest + 1)]
    if highest >= len(class_names):
        raise DataError(f'--classes names {len(class_names)} classes; the shards hold class index {highest}')
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dict(format=FORMAT, name=out_dir.name, source=f'{train} + {val}', class_names=class_names,
                    multilabel=multilabel, splits={
                        split: dict(shards=entry['urls'], counts=entry['counts'], samples=sum(entry['counts']),
                                    class_counts=[entry['class_counts'].get(i, 0) for i in range(len(class_names))])
                        for split, entry in splits.items()})
    return write_file(out_dir / MANIFEST, json.dumps(manifest, indent=1) + '\n')


def hf_stream_manifest(name: str, data_dir: Optional[str] = None, val_split: Optional[str] = None) -> Manifest:
    """``--dataset NAME --streaming``: the dataset's train and validation data files (as ``datasets`` resolves
    them, ``hf://`` on the Hub) with their row counts from the parquet footers; nothing is downloaded whole."""
    try:
        import datasets
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError('--dataset needs the Hugging Face datasets library: pip install "fishzoo[hf]"') from None
    try:
        builder = datasets.load_dataset_builder(name, data_dir=data_dir)
        files = {str(split): [str(f) for f in found] for split, found in (builder.config.data_files or {}).items()}
    except Exception as e:  # network, missing dataset, malformed folder: one sentence, no traceback
        raise DataError(f'--dataset {name}: could not be loaded ({describe(e)})') from None
    val_name = val_split if isinstance(val_split, str) else next(
        (s for s in ('validation', 'val', 'test') if s in files), None)
    if 'train' not in files or val_name not in files:
        raise DataError(f'--dataset {name} --streaming needs a train split and a validation split (--val-split NAME); '
                        f'its data files are split as {", ".join(files) or "nothing"}')
    odd = sorted({f.rsplit('.', 1)[-1] for split in ('train', val_name) for f in files[split]} - {'parquet'})
    if odd:
        raise DataError(f'--dataset {name} --streaming reads parquet data files (every Hub dataset has them); this '
                        f'one has .{", .".join(odd)}: write it as shards with fishzoo shards instead')
    splits, features = {}, None
    for split, source in (('train', 'train'), ('val', val_name)):
        counts = []
        for url in files[source]:
            fs, path = _fs(url)
            with fs.open(path, 'rb') as f:
                parquet = pq.ParquetFile(f)
                counts.append(parquet.metadata.num_rows)
                features = features or datasets.Features.from_arrow_schema(parquet.schema_arrow)
        splits[split] = dict(urls=files[source], counts=counts, class_counts=[])
    image_column = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    label_column = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_column is None or label_column is None:
        raise DataError(f'--dataset {name}: expected an image column and a class-label column, '
                        f'got {", ".join(features)}')
    return Manifest(name, list(features[label_column].names), False, splits, name, 'parquet',
                    (image_column, label_column))


# --- reading -------------------------------------------------------------------------------------

def _label_indices(payload: bytes, suffix: str, where: str) -> List[int]:
    """The class indices of a ``.cls`` (one index as text) or ``.json`` (``{"labels": [...]}``) label file."""
    try:
        text = payload.decode()
        indices = [int(text.strip())] if suffix == 'cls' else [int(i) for i in json.loads(text)['labels']]
        if any(i < 0 for i in indices):
            raise ValueError(f'negative class {min(indices)}')
        return indices
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f'{where}: bad label ({describe(e)})') from None


def _target(payload: bytes, suffix: str, num_classes: int, multilabel: bool, where: str):
    """A class index (single-label) or a multi-hot vector of ``num_classes`` from a label file."""
    indices = _label_indices(payload, suffix, where)
    if max(indices, default=0) >= num_classes:
        raise DataError(f'{where}: bad label (class {max(indices)} of {num_classes})')
    if not multilabel and suffix == 'cls':
        return indices[0]
    hot = np.zeros(num_classes, np.float32)
    hot[indices] = 1
    return hot


def tar_samples(url: str, skip: int = 0) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """(key, {suffix: bytes}) of each sample of one shard from sample ``skip`` on, front to back. The samples
    before ``skip`` are not read: a local shard seeks past them, a remote one streams past."""
    from fsspec.implementations.local import LocalFileSystem
    fs, path = _fs(url)
    try:
        with fs.open(path, 'rb') as f, \
                tarfile.open(fileobj=f, mode='r:' if isinstance(fs, LocalFileSystem) else 'r|') as tar:
            key, files, index = None, {}, -1
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, suffix = member.name.rsplit('/', 1)[-1].partition('.')
                if stem != key:
                    if key is not None and index >= skip:
                        yield key, files
                    key, files, index = stem, {}, index + 1
                if index >= skip:
                    if member.size > MAX_FILE_BYTES:  # read into memory: a hostile shard could ask for any size
                        raise DataError(f'{url}: {member.name} holds {member.size:,} bytes, more than the '
                                        f'{MAX_FILE_BYTES:,} a sample file may')
                    files[suffix.lower()] = tar.extractfile(member).read()
            if key is not None and index >= skip:
                yield key, files
    except (OSError, tarfile.TarError) as e:
        raise DataError(f'{url}: unreadable shard ({describe(e)})') from None


def parquet_samples(url: str, image_column: str, label_column: str, skip: int = 0
                    ) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """(key, {suffix: bytes}) of each row of one parquet data file of a Hugging Face dataset from row ``skip`` on
    (an image cell is its encoded bytes, or a path), read a row group at a time; whole row groups before ``skip``
    are not read."""
    import pyarrow.parquet as pq
    fs, path = _fs(url)
    stem = url.rsplit('/', 1)[-1].split('.')[0]
    try:
        with fs.open(path, 'rb') as f:
            table = pq.ParquetFile(f)
            row = 0
            for group in range(table.num_row_groups):
                rows = table.metadata.row_group(group).num_rows
                if row + rows <= skip:
                    row += rows
                    continue
                columns = table.read_row_group(group, columns=[image_column, label_column]).to_pydict()
                for cell, label in zip(columns[image_column], columns[label_column]):
                    if row < skip:
                        row += 1
                        continue
                    cell = cell or {}
                    payload = cell.get('bytes')
                    if payload is None and cell.get('path'):  # a path: absolute, or beside the data file
                        where = cell['path'] if cell['path'].startswith('/') \
                            else f"{path.rsplit('/', 1)[0]}/{cell['path']}"
                        with fs.open(where, 'rb') as image_file:
                            payload = image_file.read()
                    suffix = (cell.get('path') or '.img').rsplit('.', 1)[-1].lower()
                    yield f'{stem}-{row:09d}', {suffix if suffix in IMAGE_SUFFIXES else 'img': payload or b'',
                                                'cls': str(label).encode()}
                    row += 1
    except (OSError, ValueError) as e:
        raise DataError(f'{url}: unreadable parquet file ({describe(e)})') from None


def decode_sample(key: str, files: Dict[str, bytes], url: str, num_classes: int, multilabel: bool, mode: str):
    """(PIL image, target) of one sample's files."""
    from fishzoo.images import load_image
    image_suffix = next((s for s in files if s in IMAGE_SUFFIXES or s == 'img'), None)
    label_suffix = 'json' if 'json' in files else 'cls' if 'cls' in files else None
    where = f'{url} sample {key}'
    if image_suffix is None or label_suffix is None:
        raise DataError(f'{where}: expected an image and a .cls or .json label, found {", ".join(sorted(files))}')
    image = load_image({'bytes': files[image_suffix], 'path': f'{where}.{image_suffix}'}, mode)
    return image, _target(files[label_suffix], label_suffix, num_classes, multilabel, where)


def _even(total: int, parts: int) -> List[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def steps_per_epoch(total: int, world: int, batch_size: int) -> int:
    """Batches each of ``world`` processes yields for ``total`` samples: its fewest samples in batches of at
    most ``batch_size`` (0 when there are fewer samples than processes)."""
    return max(1, math.ceil(min(_even(total, world)) / batch_size)) if total >= world else 0


@dataclass(frozen=True)
class WorkerPlan:
    """One loader worker's share of an epoch: samples ``[start, stop)`` of the epoch's sequence, yielded in
    batches of ``batch_sizes``; ``skip`` of its samples were used before the resume point."""
    start: int
    stop: int
    batch_sizes: List[int]
    skip: int


def epoch_plan(counts: Sequence[int], world: int, rank: int, workers: int, batch_size: int, epoch: int,
               seed: int, shuffle: bool, resume_batch: int = 0) -> Tuple[List[int], List[WorkerPlan]]:
    """The epoch's shard order and, for process ``rank`` of ``world``, each loader worker's plan.

    Every process gets the same number of batches (DDP steps together), ``ceil(N / world / batch_size)``,
    its samples spread evenly over them, so that each of the ``N`` samples is used exactly once. Batch ``j``
    of a process comes from worker ``j % workers`` (the order a DataLoader asks its workers in); a worker's
    batches are one contiguous run of samples. After ``resume_batch`` batches were used, worker ``w`` takes
    over the batches that worker ``(w + resume_batch) % workers`` had, so the loader yields batch
    ``resume_batch`` first and every later one in order.
    """
    order = list(range(len(counts)))
    if shuffle:
        random.Random(f'{seed}-{epoch}').shuffle(order)
    per_rank = _even(sum(counts), world)
    steps = steps_per_epoch(sum(counts), world, batch_size)
    sizes = _even(per_rank[rank], steps) if steps else []
    start = sum(per_rank[:rank])
    stream_plans = []
    for stream in range(workers):
        batches = sizes[stream::workers]
        stream_plans.append((start, start + sum(batches), batches))
        start += sum(batches)
    plans = []
    for worker in range(workers):
        stream = (worker + resume_batch) % workers
        first, last, batches = stream_plans[stream]
        used = len(range(stream, resume_batch, workers))
        plans.append(WorkerPlan(first, last, batches[used:], sum(batches[:used])))
    return order, plans


class ShardStream(torch.utils.data.IterableDataset):
    """One split of a shard folder as batches for process ``rank`` of ``world``: each iteration is one epoch
    (:meth:`set_epoch`), resumable at a batch (:meth:`resume_at`). ``len()`` is the split's sample count;
    :meth:`batches_per_epoch` what each process's loader yields."""

    def __init__(self, manifest: Manifest, split: str, mode: str = 'RGB', transform: Optional[Callable] = None,
                 batch_size: int = 64, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True,
                 buffer: int = SHUFFLE_BUFFER):
        self.manifest, self.split, self.mode, self.transform = manifest, split, mode, transform
        self.urls, self.counts = manifest.urls(split), manifest.counts(split)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.seed, self.shuffle, self.buffer = seed, shuffle, buffer
        self.epoch, self.resume_batch = 0, 0
        self.with_keys = False  # batches end with their samples' keys (what the counting tests read)

    def __len__(self) -> int:
        return sum(self.counts)

    def batches_per_epoch(self) -> int:
        return steps_per_epoch(sum(self.counts), self.world, self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.resume_batch = epoch, 0

    def resume_at(self, batches: int) -> None:
        self.resume_batch = batches

    def _records(self, order: List[int], start: int, stop: int) -> Iterator[Tuple[str, str, Dict[str, bytes]]]:
        """Samples ``[start, stop)`` of the epoch's sequence (shards in ``order``), undecoded."""
        offset = 0
        for shard in order:
            count = self.counts[shard]
            if offset + count <= start:
                offset += count
                continue
            if offset >= stop:
                return
            first, last = max(0, start - offset), min(count, stop - offset)  # this run's part of the shard
            seen = first
            for key, files in self.manifest.samples(self.urls[shard], first):
                if seen >= last:
                    break
                yield self.urls[shard], key, files
                seen += 1
            if seen < last:
                raise DataError(f'{self.urls[shard]}: {seen} samples, the manifest says {count}')
            offset += count

    def _shuffled(self, records: Iterator, rng: random.Random) -> Iterator:
        """``records`` through a shuffle buffer (webdataset's: a random held sample out for each one in)."""
        held: List = []
        for record in records:
            if len(held) < self.buffer:
                held.append(record)
                continue
            index = rng.randrange(len(held))
            held[index], record = record, held[index]
            yield record
        rng.shuffle(held)
        yield from held

    def _batch(self, records: List) -> Tuple[torch.Tensor, torch.Tensor]:
        images, targets, keys = [], [], []
        num_classes, multilabel = len(self.manifest.class_names), self.manifest.multilabel
        for url, key, files in records:
            image, target = decode_sample(key, files, url, num_classes, multilabel, self.mode)
            images.append(self.transform(image) if self.transform is not None else image)
            targets.append(target)
            keys.append(key)
        batch = (torch.stack(images), torch.as_tensor(np.stack(targets), dtype=torch.float32) if multilabel
                 else torch.as_tensor(targets, dtype=torch.long))
        return (*batch, keys) if self.with_keys else batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order, plans = epoch_plan(self.counts, self.world, self.rank, workers, self.batch_size, self.epoch,
                                  self.seed, self.shuffle, self.resume_batch)
        plan = plans[worker]
        if not plan.batch_sizes:
            return
        rng = random.Random(f'{self.seed}-{self.epoch}-{self.rank}-{(worker + self.resume_batch) % workers}')
        records = self._records(order, plan.start, plan.stop)
        if self.shuffle:
            records = self._shuffled(records, rng)
        for _ in range(plan.skip):  # used before the checkpoint: read, not decoded
            next(records)
        for size in plan.batch_sizes:
            yield self._batch([next(records) for _ in range(size)])


class StreamLoader:
    """The training loader over a :class:`ShardStream`: a DataLoader of its batches (the stream batches
    them itself), moved to ``device``; ``set_epoch`` / ``resume_at`` position the stream, ``len()`` counts
    this process's batches. Workers are started per epoch: a persistent worker would keep the epoch it was
    started with."""

    def __init__(self, stream: ShardStream, device: torch.device, workers: int = 0, pin_memory: bool = False):
        self.stream, self.device = stream, torch.device(device)
        self.workers, self.pin_memory = workers, pin_memory

    def __len__(self) -> int:
        return self.stream.batches_per_epoch()

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def plan_key(self) -> Dict[str, int]:
        """What decides which samples a batch holds, saved with a mid-epoch checkpoint."""
        return dict(processes=self.stream.world, workers=max(1, self.workers), batch_size=self.stream.batch_size,
                    samples=len(self.stream))

    def resume_at(self, batches: int, plan_key: Optional[Dict[str, int]] = None) -> None:
        """Start the epoch at batch ``batches``; ``plan_key`` (the checkpoint's) must be this loader's, else the
        batches done would not be the ones skipped."""
        if plan_key is not None and plan_key != self.plan_key():
            differ = ', '.join(f'{k} {plan_key.get(k)} -> {v}' for k, v in self.plan_key().items()
                               if plan_key.get(k) != v)
            raise DataError(f'this checkpoint stopped inside a streamed epoch, which resumes only as it was split '
                            f'({differ}); resume with the same processes, --workers and --batch-size, or from an '
                            'epoch checkpoint (--resume checkpoints/epoch_NNNN)')
        self.stream.resume_at(batches)

    def __iter__(self):
        loader = torch.utils.data.DataLoader(self.stream, batch_size=None, num_workers=self.workers,
                                             pin_memory=self.pin_memory)
        non_blocking = self.pin_memory and self.device.type == 'cuda'
        for images, targets, *keys in loader:
            yield (images.to(self.device, non_blocking=non_blocking),
                   targets.to(self.device, non_blocking=non_blocking), *keys)


def shard_data(data_dir: Union[str, Path, Manifest], mode: str = 'RGB', seed: int = 0):
    """``--data-dir`` naming shards (or a :class:`Manifest`, such as :func:`hf_stream_manifest`'s): the train
    split streamed (:class:`ShardStream`), the val split indexed (:class:`IndexedShards`), as a
    :class:`~fishzoo.data.TrainValData`."""
    from fishzoo.data import TrainValData
    manifest = data_dir if isinstance(data_dir, Manifest) else read_manifest(data_dir)
    for split in ('train', 'val'):
        if not sum(manifest.counts(split)):
            raise DataError(f'{manifest.location}: the {split} split has no samples')
    return TrainValData(ShardStream(manifest, 'train', mode, seed=seed), IndexedShards(manifest, 'val', mode),
                        manifest.class_names, multilabel=manifest.multilabel, name=manifest.name)


# --- validation: the val shards indexed, read by position ---------------------------------------

class IndexedShards(torch.utils.data.Dataset):
    """A split's shards as a map-style dataset (a sample found by its shard and position, read on demand), so
    that validation is Accelerate's usual sharded, gathered loader. Sample ``i`` is placed by the manifest's
    counts; no image is held but the samples of the shard being read."""

    def __init__(self, manifest: Manifest, split: str, mode: str = 'RGB', transform: Optional[Callable] = None):
        self.manifest, self.split, self.mode, self.transform = manifest, split, mode, transform
        self.starts = np.cumsum([0] + manifest.counts(split)).tolist()  # shard s holds samples starts[s]..starts[s+1]
        if manifest.splits[split]['class_counts']:  # per class: what the multi-label recipe reads
            self.class_counts = manifest.splits[split]['class_counts']
        self._cache: Tuple[int, List] = (-1, [])

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self.starts, index) - 1
        position = index - self.starts[shard]
        # validation reads in order: one shard's samples are kept while the reader is inside it
        if self._cache[0] != shard:
            url = self.manifest.urls(self.split)[shard]
            self._cache = (shard, [(url, key, files) for key, files in self.manifest.samples(url)])
        url, key, files = self._cache[1][position]
        image, target = decode_sample(key, files, url, len(self.manifest.class_names), self.manifest.multilabel,
                                      self.mode)
        if self.transform is not None:
            image = self.transform(image)
        if isinstance(target, int):
            return image, target
        return image, torch.as_tensor(target, dtype=torch.float32)


__all__ = ['DEFAULT_SHARD_BYTES', 'FORMAT', 'IndexedShards', 'MANIFEST', 'Manifest', 'ShardStream', 'StreamLoader',
           'epoch_plan', 'expand_braces', 'hf_stream_manifest', 'index_shards', 'is_shard_folder', 'parquet_samples',
           'read_manifest', 'shard_data', 'tar_samples', 'write_shards']
