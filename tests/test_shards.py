"""fishzoo.shards: shards written with a manifest, read by other WebDataset readers too, divided between
processes and loader workers so that every sample is used exactly once per epoch, resumable mid-epoch."""
import json
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fishzoo import data, shards
from fishzoo.cli import main as cli_main
from fishzoo.errors import DataError
from tests.helpers.hostile import REPO
from tests.helpers.images import make_image_folder, make_multilabel_csv, make_parquet_dataset


@pytest.fixture(scope='module')
def digit_shards(tmp_path_factory):
    """The embedded digits as shards of at most 100 samples (15 train shards, 4 val)."""
    out = tmp_path_factory.mktemp('shards') / 'digits'
    assert cli_main(['shards', '--digits', '--output-dir', str(out), '--shard-count', '100']) == 0
    return out


def stream_of(folder, **kwargs) -> shards.ShardStream:
    stream = shards.ShardStream(shards.read_manifest(folder), 'train', mode='L',
                                transform=lambda image: torch.from_numpy(np.asarray(image, np.float32)), **kwargs)
    stream.with_keys = True
    return stream


def epoch_keys(stream, epoch: int = 0, resume: int = 0):
    """Each batch's keys as one process's loader yields them, read in this process (no worker processes)."""
    loader = shards.StreamLoader(stream, 'cpu', 0)
    loader.set_epoch(epoch)
    loader.resume_at(resume)
    return [keys for _, _, keys in loader]


def worker_epochs(*jobs):
    """:func:`epoch_keys` with real loader worker processes, forked from a fresh interpreter
    (``tests/helpers/stream_keys.py``): one list of batches per job."""
    proc = subprocess.run([sys.executable, '-m', 'tests.helpers.stream_keys', json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_manifest_counts_and_split(digit_shards):
    manifest = json.loads((digit_shards / shards.MANIFEST).read_text())
    reference = data.digits_data(0.2, 0)  # what fishzoo-train holds out with the same seed
    train, val = manifest['splits']['train'], manifest['splits']['val']
    assert train['samples'] == len(reference.train) == sum(train['counts']) == 1437
    assert val['samples'] == len(reference.val) == 360 and max(train['counts']) == 100
    assert val['class_counts'] == np.bincount(reference.val.targets, minlength=10).tolist()
    assert manifest['class_names'] == [str(d) for d in range(10)]
    # shuffled once when written: the first shard already holds every class
    first = [t for _, t in shards.tar_samples(str(digit_shards / train['shards'][0]))]
    assert len({int(files['cls']) for files in first}) == 10


def test_other_webdataset_readers_read_them(digit_shards):
    """The layout is WebDataset's: Hugging Face datasets' webdataset builder reads images and classes."""
    datasets = pytest.importorskip('datasets')
    files = sorted(str(p) for p in digit_shards.glob('train-*.tar'))
    ds = datasets.load_dataset('webdataset', data_files={'train': files}, split='train')
    assert len(ds) == 1437 and ds[0]['png'].size == (8, 8) and 0 <= ds[0]['cls'] < 10


def test_held_out_images_match_training(tmp_path):
    """Shards of class folders hold out the images fishzoo-train holds out with the same --seed and --val-split,
    and list them (val_images.csv) as a run does."""
    folder = make_image_folder(tmp_path / 'folder', per_class=10)
    out = tmp_path / 'shards'
    assert cli_main(['shards', '--data-dir', str(folder), '--output-dir', str(out), '--seed', '3',
                     '--val-split', '0.3']) == 0
    expected = data.image_folder_data(folder, 0.3, 3)
    listed = [row.split(',')[0] for row in (out / 'val_images.csv').read_text().splitlines()[1:]]
    assert sorted(listed) == sorted(str(Path(p).resolve()) for p in expected.val.sources)
    loaded = shards.shard_data(out)
    assert len(loaded.train) == len(expected.train) and len(loaded.val) == len(expected.val)
    # the image bytes are the files' own: no re-encoding
    key_files = dict(shards.tar_samples(str(out / 'val-000000.tar')))
    payloads = {Path(p).read_bytes() for p in expected.val.sources}
    assert all(next(v for k, v in files.items() if k != 'cls') in payloads for files in key_files.values())


def test_multilabel_csv_shards(tmp_path):
    csv = make_multilabel_csv(tmp_path / 'ml')
    out = tmp_path / 'shards'
    assert cli_main(['shards', '--train-csv', str(csv), '--output-dir', str(out), '--val-split', '0.25']) == 0
    expected = data.csv_data(csv, val_fraction=0.25)
    loaded = shards.shard_data(out)
    assert loaded.multilabel and loaded.class_names == expected.class_names
    images, targets = loaded.val[0]
    assert targets.dtype == torch.float32 and targets.shape == (len(expected.class_names),)
    val_targets = sorted(tuple(loaded.val[i][1].tolist()) for i in range(len(loaded.val)))
    assert val_targets == sorted(tuple(np.asarray(t, np.float32).tolist()) for t in expected.val.targets)


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=6), world=st.integers(1, 4),
       workers=st.integers(1, 4), batch=st.integers(1, 9), epoch=st.integers(0, 3), data=st.data())
def test_plan_uses_every_sample_once_in_equal_steps(counts, world, workers, batch, epoch, data):
    total = sum(counts)
    if total < world:
        return
    steps, covered = set(), []
    for rank in range(world):
        _, plans = shards.epoch_plan(counts, world, rank, workers, batch, epoch, 0, True)
        steps.add(sum(len(p.batch_sizes) for p in plans))
        assert all(0 < size <= batch + 1 for p in plans for size in p.batch_sizes)
        covered += [i for p in plans for i in range(p.start, p.stop)]
        for p in plans:
            assert sum(p.batch_sizes) == p.stop - p.start and p.skip == 0
    assert len(steps) == 1  # every process the same number of steps (DDP)
    assert sorted(covered) == list(range(total))
    # resumed after some batches: the remaining batches are the rest of the same plan
    rank = data.draw(st.integers(0, world - 1))
    _, plans = shards.epoch_plan(counts, world, rank, workers, batch, epoch, 0, True)
    sizes = [None] * sum(len(p.batch_sizes) for p in plans)
    for w, p in enumerate(plans):
        sizes[w::workers] = p.batch_sizes
    resume = data.draw(st.integers(0, len(sizes)))
    _, later = shards.epoch_plan(counts, world, rank, workers, batch, epoch, 0, True, resume)
    left = [None] * (len(sizes) - resume)
    for w, p in enumerate(later):
        left[w::workers] = p.batch_sizes
        assert p.skip + sum(p.batch_sizes) == p.stop - p.start
    assert left == sizes[resume:]


def test_two_processes_with_workers_see_each_sample_once(digit_shards):
    """Counted: 2 processes x 2 loader worker processes, and 3 processes x 1 (1,437 does not divide): every
    train sample once per epoch, the same number of batches in every process, another order next epoch."""
    job = dict(source=str(digit_shards), batch=32)
    runs = worker_epochs(*[dict(job, world=2, rank=r, workers=2) for r in range(2)], dict(job, world=2, workers=2),
                         dict(job, world=2, workers=2, epoch=1))
    three = [epoch_keys(stream_of(digit_shards, batch_size=32, rank=r, world=3)) for r in range(3)]
    for per_rank in (runs[:2], three):
        assert len({len(batches) for batches in per_rank}) == 1
        keys = [k for batches in per_rank for batch in batches for k in batch]
        assert len(keys) == len(set(keys)) == 1437
    assert runs[2] == runs[0] and runs[3] != runs[0]  # the same epoch again; the next epoch in another order


def test_resume_inside_an_epoch_repeats_nothing(digit_shards):
    """The batches after a resume at batch 7 are the uninterrupted epoch's batches 7..., with 2 workers."""
    job = dict(source=str(digit_shards), batch=16, workers=2, epoch=1)
    whole, rest, rest_again = worker_epochs(job, dict(job, resume=7), dict(job, resume=10))
    assert rest == whole[7:] and rest_again == whole[10:]
    assert epoch_keys(stream_of(digit_shards, batch_size=16), epoch=1, resume=7) == \
        epoch_keys(stream_of(digit_shards, batch_size=16), epoch=1)[7:]


def test_resume_refuses_another_split(digit_shards):
    loader = shards.StreamLoader(stream_of(digit_shards, batch_size=16), 'cpu', 2)
    with pytest.raises(DataError, match=r'\(workers 1 -> 2\); resume with the same processes'):
        loader.resume_at(3, dict(processes=1, workers=1, batch_size=16, samples=1437))


def test_remote_shards_through_fsspec(digit_shards):
    """Shards on another file system (fsspec's in-memory one stands in for s3://, hf://, https://)."""
    fs = fsspec.filesystem('memory')
    for path in digit_shards.iterdir():
        fs.pipe(f'/remote/{path.name}', path.read_bytes())
    assert shards.is_shard_folder('memory://remote')
    loaded = shards.shard_data('memory://remote', mode='L')
    assert len(loaded.train) == 1437 and loaded.val[5][0].size == (8, 8)
    stream = stream_of('memory://remote', batch_size=100)
    assert sum(len(k) for k in epoch_keys(stream)) == 1437


def test_bad_shard_folders_get_one_sentence(digit_shards, tmp_path):
    with pytest.raises(DataError, match='no manifest.json'):
        shards.read_manifest(tmp_path)
    (tmp_path / shards.MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(DataError, match='not a fishzoo shard manifest'):
        shards.read_manifest(tmp_path)
    manifest = json.loads((digit_shards / shards.MANIFEST).read_text())
    manifest['splits']['train']['shards'][0] = '../../etc/passwd'
    (tmp_path / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match='do not match'):
        shards.read_manifest(tmp_path)
    short = tmp_path / 'short'
    short.mkdir()
    manifest = json.loads((digit_shards / shards.MANIFEST).read_text())
    manifest['splits']['train']['counts'][0] += 5  # the manifest promises more than the shard holds
    (short / shards.MANIFEST).write_text(json.dumps(manifest))
    for path in digit_shards.glob('*.tar'):
        (short / path.name).write_bytes(path.read_bytes())
    with pytest.raises(DataError, match='train-000000.tar: 100 samples, the manifest says 105'):
        epoch_keys(stream_of(short, batch_size=64, shuffle=False))
    with pytest.raises(DataError, match='already holds shards'):
        shards.write_shards(data.digits_data(), digit_shards)


def test_oversized_sample_files_are_refused_unread(digit_shards, monkeypatch):
    monkeypatch.setattr(shards, 'MAX_FILE_BYTES', 64)  # the digits' PNGs are ~90 bytes
    with pytest.raises(DataError, match=r'train-000000.tar: train000000000.png holds \d+ bytes, more than the 64'):
        next(shards.tar_samples(str(digit_shards / 'train-000000.tar')))


def test_memory_stays_flat_with_ten_times_the_data(tmp_path):
    """Peak RSS of a streamed epoch (transform, batches) over 10x the samples stays within a few MB: what a
    process holds is the shuffle buffer (50 samples here, 1,000 by default), never the data."""
    rng = np.random.default_rng(0)
    small = data.ImageSamples([data.Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)) for _ in range(40)],
                              [i % 4 for i in range(40)])
    for name, repeat in (('small', 1), ('large', 10)):
        samples = data.ImageSamples(list(small.sources) * repeat, list(small.targets) * repeat)
        loaded = data.TrainValData(samples, small, ['a', 'b', 'c', 'd'], name=name)
        shards.write_shards(loaded, tmp_path / name, max_count=50)
    script = ('import resource, sys, torch; from fishzoo import shards; from torchvision import transforms as T\n'
              'loaded = shards.shard_data(sys.argv[1])\n'
              'stream = loaded.train; stream.transform = T.Compose([T.RandomResizedCrop(32), T.ToTensor()])\n'
              'stream.batch_size, stream.buffer = 16, 50\n'
              'n = sum(len(t) for _, t in shards.StreamLoader(stream, "cpu", 0))\n'
              'print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
    peaks = {}
    for name in ('small', 'large'):
        out = subprocess.run([sys.executable, '-c', script, str(tmp_path / name)], capture_output=True, text=True,
                             check=True).stdout.split()
        peaks[name] = int(out[1]) / 1024
        assert int(out[0]) == {'small': 40, 'large': 400}[name]
    assert peaks['large'] < peaks['small'] + 8, peaks


@pytest.fixture(scope='module')
def parquet_dataset(tmp_path_factory):
    pytest.importorskip('datasets')
    return make_parquet_dataset(tmp_path_factory.mktemp('hf') / 'shapes')


def test_hugging_face_streaming_reads_parquet_parts(parquet_dataset):
    manifest = shards.hf_stream_manifest(str(parquet_dataset))
    assert manifest.class_names == ['ant', 'bee', 'cow'] and manifest.counts('train') == [15, 16, 7]
    assert manifest.counts('val') == [9]
    loaded = shards.shard_data(manifest)
    image, label = loaded.val[4]
    assert image.size == (24, 20) and label == (38 + 4) % 3
    runs = worker_epochs(*[dict(source=f'hf:{parquet_dataset}', batch=4, world=2, rank=r, workers=2)
                           for r in range(2)])
    keys = [k for batches in runs for batch in batches for k in batch]
    assert len(keys) == len(set(keys)) == 38


def test_hugging_face_streaming_refusals(parquet_dataset, tmp_path):
    with pytest.raises(DataError, match='needs a train split and a validation split'):
        shards.hf_stream_manifest(str(parquet_dataset), val_split='nope')
    for split in ('train', 'validation'):
        (tmp_path / f'{split}.csv').write_text('x,y\n1,2\n')
    with pytest.raises(DataError, match=r'reads parquet data files .* this one has \.csv'):
        shards.hf_stream_manifest(str(tmp_path))


def test_readers_start_inside_a_shard(digit_shards, parquet_dataset):
    """A run that starts inside a shard gets the same samples as reading it whole, local (seeking past the
    rest), remote (streaming past) or parquet (whole row groups passed over)."""
    url = str(digit_shards / 'train-000003.tar')
    whole = list(shards.tar_samples(url))
    assert len(whole) == 100 and list(shards.tar_samples(url, 37)) == whole[37:]
    fsspec.filesystem('memory').pipe('/skip/a.tar', Path(url).read_bytes())
    assert list(shards.tar_samples('memory://skip/a.tar', 99)) == whole[99:]
    import pyarrow.parquet as pq
    source = parquet_dataset / 'data' / 'train-00001-of-00003.parquet'
    small_groups = parquet_dataset.parent / 'groups.parquet'
    pq.write_table(pq.read_table(source), small_groups, row_group_size=3)
    rows = list(shards.parquet_samples(str(small_groups), 'image', 'label'))
    assert len(rows) == 16 and [k for k, _ in shards.parquet_samples(str(small_groups), 'image', 'label', 7)] == \
        [k for k, _ in rows[7:]]


def test_shards_written_elsewhere_are_indexed_where_they_are(digit_shards, tmp_path):
    """fishzoo shards --train-shards PATTERN: WebDataset shards another tool wrote (here: on another file system,
    with brace patterns) get a manifest naming them by URL; training streams them from there."""
    assert shards.expand_braces('s3://b/train-{008..011}.tar') == [f's3://b/train-{i:03d}.tar' for i in range(8, 12)]
    assert shards.expand_braces('{a,b}-{1..2}') == ['a-1', 'a-2', 'b-1', 'b-2']
    fs = fsspec.filesystem('memory')
    for path in digit_shards.glob('*.tar'):
        fs.pipe(f'/elsewhere/{path.name}', path.read_bytes())
    out = tmp_path / 'index'
    assert cli_main(['shards', '--train-shards', 'memory://elsewhere/train-{000000..000014}.tar', '--val-shards',
                     'memory://elsewhere/val-{000000..000003}.tar', '--output-dir', str(out)]) == 0
    manifest = shards.read_manifest(out)
    assert manifest.urls('train')[0] == 'memory://elsewhere/train-000000.tar'
    assert sum(manifest.counts('train')) == 1437 and manifest.class_names == [str(i) for i in range(10)]
    written = json.loads((digit_shards / shards.MANIFEST).read_text())
    assert json.loads((out / shards.MANIFEST).read_text())['splits']['val']['class_counts'] == \
        written['splits']['val']['class_counts']
    keys = [k for batch in epoch_keys(stream_of(out, batch_size=64)) for k in batch]
    assert len(set(keys)) == 1437
    # a local pattern is recorded as file:// URLs; a name that climbs out of the folder is still refused
    local = tmp_path / 'local'
    assert cli_main(['shards', '--train-shards', str(digit_shards / 'train-00000{0..1}.tar'), '--val-shards',
                     str(digit_shards / 'val-000000.tar'), '--output-dir', str(local), '--classes',
                     ','.join('zero one two three four five six seven eight nine'.split())]) == 0
    assert shards.read_manifest(local).class_names[:2] == ['zero', 'one']
    assert shards.read_manifest(local).urls('val') == [(digit_shards / 'val-000000.tar').as_uri()]
    assert sum(len(k) for k in epoch_keys(stream_of(local, batch_size=50))) == 200
    with pytest.raises(DataError, match='names 2 classes; the shards hold class index 9'):
        shards.index_shards(str(digit_shards / 'val-000000.tar'), str(digit_shards / 'val-000000.tar'),
                            tmp_path / 'few', ['a', 'b'])
