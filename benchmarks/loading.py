#!/usr/bin/env python3
"""The training loader's rate: 224 px JPEGs decoded and augmented, by source and loader worker count, beside the
training step's own rate, in one process.

``--images`` synthetic photos (500x375 JPEGs at quality 90, ~ImageNet's average size and bytes) in 8 classes,
written three ways and read with timm's training transform at 224 px (RandomResizedCrop, flip, normalize), batches
of ``--batch-size``:

- class folders, through a DataLoader over ``fishzoo.data.ImageSamples`` (fishzoo-train --data-dir FOLDER);
- ``fishzoo shards`` (WebDataset tars), streamed by ``fishzoo.shards.StreamLoader`` (--data-dir SHARDS);
- a Hugging Face dataset's parquet files, streamed the same way (--dataset NAME --streaming).

Each row is an epoch's images/s past the first batch (worker start-up excluded) with ``--workers`` loader worker
processes. Then FishNet-150's training step at 224 px on this CPU (fp32 and bf16 autocast, ``--step-batch``),
and the loader cores that published GPU training rates would need at the measured rate per worker.

    python benchmarks/loading.py [--images 512] [--workers 0 1 2] [--json F]
"""
import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform

import fishzoo  # noqa: F401  (registers the models)
from fishzoo import data, shards
from fishzoo.info import machine_summary

# published training rates (timm's results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv: AMP, 224 px, one
# RTX 3090); FishNet-150 (6.4 GMACs) sits between the two. Newer GPUs train faster still.
PUBLISHED_GPU_TRAIN = (('ResNet-50, RTX 3090, AMP (timm, published)', 826.06),
                       ('ResNet-101, RTX 3090, AMP (timm, published)', 568.98))


def write_photos(root: Path, count: int, classes: int = 8, seed: int = 0) -> Path:
    """Class folders of 500x375 JPEGs: smooth colour fields with texture, so they compress like photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(count):
        folder = root / f'class{i % classes}'
        folder.mkdir(parents=True, exist_ok=True)
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
        base = np.stack([np.sin(fx * x + phase + c) * np.cos(fy * y - c) for c in range(3)], -1)
        pixels = 127 + 90 * base + rng.normal(0, 18, base.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f'{i:05d}.jpg', quality=90)
    return root


def write_parquet(loaded: data.TrainValData, root: Path) -> Path:
    """The same images as a Hugging Face dataset's parquet data files (train, validation)."""
    import datasets
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=loaded.class_names)})
    (root / 'data').mkdir(parents=True)
    for split, samples in (('train', loaded.train), ('validation', loaded.val)):
        cells = [{'bytes': Path(s).read_bytes(), 'path': Path(s).name} for s in samples.sources]  # as the Hub has them
        ds = datasets.Dataset.from_dict({'image': cells, 'label': list(samples.targets)}, features=features)
        ds.to_parquet(str(root / 'data' / f'{split}-00000-of-00001.parquet'))
    return root


def epoch_rate(loader) -> float:
    """Images/s of one pass over ``loader`` past its first batch."""
    count, start = 0, None
    for images, _targets, *_ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        count += images.shape[0]
    if not count:
        raise SystemExit('one batch only: give more --images or a smaller --batch-size')
    return count / (time.perf_counter() - start)


def train_step_rate(batch: int, autocast: bool, steps: int = 3) -> float:
    model = timm.create_model('fishnet150', num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--step-batch', type=int, default=16, help="FishNet-150's training step batch")
    parser.add_argument('--no-step', action='store_true', help='skip the training step rows')
    parser.add_argument('--json')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix='loading-'))
    try:
        folder = write_photos(work / 'folder', args.images)
        loaded = data.image_folder_data(folder, max(0.1, 10 / args.images), 0)  # every class in val
        shards.write_shards(loaded, work / 'shards', max_count=128)
        transform = create_transform(224, is_training=True)
        loaded.train.transform = transform
        sources = {'class folders': None, 'fishzoo shards': shards.read_manifest(work / 'shards')}
        try:
            sources['HF parquet streaming'] = shards.hf_stream_manifest(str(write_parquet(loaded, work / 'hf')))
        except ImportError:
            print('(no Hugging Face datasets: its row is left out)')
        mb = sum(f.stat().st_size for f in folder.rglob('*.jpg')) / 2 ** 20
        print(f'{machine_summary()}; {len(loaded.train)} training JPEGs of 500x375 ({mb / args.images * 1024:.0f} '
              f'KB each), 224 px training transform, batch {args.batch_size}')
        rows = []
        for name, manifest in sources.items():
            for workers in args.workers:
                if manifest is None:
                    loader = torch.utils.data.DataLoader(loaded.train, batch_size=args.batch_size, shuffle=True,
                                                         num_workers=workers, drop_last=True)
                else:
                    stream = shards.ShardStream(manifest, 'train', transform=transform, batch_size=args.batch_size)
                    loader = shards.StreamLoader(stream, 'cpu', workers)
                rate = epoch_rate(loader)
                rows.append(dict(source=name, workers=workers, img_per_s=rate))
                print(f'{name:<22} workers {workers}: {rate:7.1f} img/s', flush=True)
        steps = []
        if not args.no_step:
            for label, autocast in (('fp32', False), ('bf16 autocast', True)):
                steps.append(dict(precision=label, img_per_s=train_step_rate(args.step_batch, autocast)))
                print(f'FishNet-150 training step, {label}, batch {args.step_batch}: '
                      f"{steps[-1]['img_per_s']:.1f} img/s", flush=True)
        # cores a GPU's step needs: the best per-worker rate measured with one worker (decoding in its own process)
        one = [r['img_per_s'] for r in rows if r['workers'] == 1] or [r['img_per_s'] for r in rows]
        per_core = max(one)
        print(f'\nloader rate per worker (best source, 1 worker): {per_core:.0f} img/s')
        for label, rate in PUBLISHED_GPU_TRAIN:
            print(f'{label}: {rate:.0f} img/s -> about {math.ceil(rate / per_core)} loader cores at this rate')
        if args.json:
            Path(args.json).write_text(json.dumps(dict(machine=machine_summary(), rows=rows, steps=steps,
                                                       per_core=per_core), indent=1) + '\n')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
