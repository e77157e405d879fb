"""fishzoo.data: image conversion, every data source, splits, and clear errors for bad data."""
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fishzoo
from fishzoo import data
from fishzoo.cli import main as cli_main
from fishzoo.data import DataError
from fishzoo.hub import save_pretrained
from fishzoo.images import load_image
from fishzoo.train import main as train_main
from tests.conftest import TRAIN_ARGS
from tests.helpers.hostile import (
    class_tree,
    one_line,
    walk_in_a_subprocess,
)
from tests.helpers.images import FORMATS, class_image, make_image_folder, make_multilabel_csv, make_train_val


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('mode', ['L', 'RGB'])
def test_every_format_converts(tmp_path, fmt, mode):
    from tests.helpers.images import save_as
    path = save_as(class_image(0, 0), tmp_path / 'img', fmt)
    img = load_image(path, mode)
    assert img.mode == mode and img.size == (40, 40)
    # the bright bar survives every conversion
    array = np.asarray(img.convert('L'), dtype=np.float32)
    assert array[8:16].mean() > array[20:].mean() + 30


def test_16bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / 'g16.png')
    assert np.asarray(load_image(tmp_path / 'g16.png', 'L')).max() == 128


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new('RGB', (30, 10), 'white')
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / 'rot.jpg', exif=exif)
    assert load_image(tmp_path / 'rot.jpg').size == (10, 30)


def test_transparent_pixels_become_white(tmp_path):
    Image.new('RGBA', (4, 4), (0, 0, 0, 0)).save(tmp_path / 't.png')
    assert np.asarray(load_image(tmp_path / 't.png', 'RGB')).min() == 255


def test_digits_split_is_stratified_and_fixed():
    a, b = data.digits_data(0.2, seed=0), data.digits_data(0.2, seed=0)
    assert len(a.train) + len(a.val) == 1797 and len(a.val) == 360
    assert a.val.targets == b.val.targets
    assert np.bincount(a.val.targets).min() >= 35  # every digit ~36 times
    image, target = a.train[0]
    assert image.mode == 'L' and image.size == (8, 8) and 0 <= target < 10


def test_image_folder_train_val(tmp_path):
    d = data.image_folder_data(make_train_val(tmp_path / 'ds'))
    assert d.class_names == ['cat', 'dog', 'fish'] and len(d.train) == 24 and len(d.val) == 12
    assert sorted(set(d.val.targets)) == [0, 1, 2]


def test_image_folder_single_tree_split(tmp_path):
    d = data.image_folder_data(make_image_folder(tmp_path / 'ds', per_class=10), val_fraction=0.3, seed=1)
    assert len(d.train) == 21 and len(d.val) == 9
    assert np.bincount(d.val.targets).tolist() == [3, 3, 3]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match=f'--data-dir {tmp_path / "nope"}: no such directory'):
        data.image_folder_data(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no train/ and val/ sub-folders; give --val-split'):
        data.image_folder_data(tmp_path / 'empty')
    with pytest.raises(DataError, match='no images found in class sub-folders'):
        data.image_folder_data(tmp_path / 'empty', val_fraction=0.2)
    root = make_train_val(tmp_path / 'ds')
    (root / 'val' / 'fish').rename(root / 'val' / 'bird')
    with pytest.raises(DataError, match=r"differ: only in train: \['fish'\]; only in val: \['bird'\]"):
        data.image_folder_data(root)


def test_unreadable_images_are_skipped_and_counted_or_fatal(tmp_path):
    root = make_train_val(tmp_path / 'ds')
    (root / 'train' / 'cat' / 'empty.png').write_bytes(b'')
    good = (root / 'train' / 'cat').glob('*.jpg').__next__().read_bytes()
    (root / 'train' / 'cat' / 'cut.jpg').write_bytes(good[:len(good) // 2])
    d = data.image_folder_data(root)
    assert len(d.train) == 24 and sorted(p.rsplit('/', 1)[1] for p, _ in d.skipped) == ['cut.jpg', 'empty.png']
    with pytest.raises(DataError, match='unreadable image .*--strict-images'):
        data.image_folder_data(root, strict=True)


def test_multilabel_csv(tmp_path):
    csv_path = make_multilabel_csv(tmp_path, rows=40)
    d = data.csv_data(csv_path, val_fraction=0.25, seed=0)
    assert d.multilabel and d.class_names == ['blue', 'green', 'red']
    assert len(d.train) + len(d.val) == 40
    targets = np.stack(d.train.targets + d.val.targets)
    assert (targets.sum(1) == 0).sum() == 5  # rows 0, 8, 16, 24, 32 carry no label
    image, target = d.val[0]
    assert isinstance(target, torch.Tensor) and target.shape == (3,)
    # iterative stratification keeps each label's share in both parts
    val_share = np.stack(d.val.targets).mean(0)
    assert np.all(np.abs(val_share - targets.mean(0)) < 0.15)
    given = data.csv_data(csv_path, val_csv=csv_path, classes='red,green,blue,yellow')
    assert given.class_names == ['red', 'green', 'blue', 'yellow'] and len(given.val) == 40


def test_csv_errors(tmp_path):
    csv_path = make_multilabel_csv(tmp_path, rows=8)
    text = csv_path.read_text()
    (tmp_path / 'missing.csv').write_text(text + 'nope.png,red\n')
    with pytest.raises(DataError, match=r'missing.csv line 10: image .*nope.png not found'):
        data.csv_data(tmp_path / 'missing.csv', val_fraction=0.5)
    with pytest.raises(DataError, match='has labels not in --classes: blue'):
        data.csv_data(csv_path, val_csv=csv_path, classes=['red', 'green'])
    (tmp_path / 'header.csv').write_text('file,tags\na.png,red\n')
    with pytest.raises(DataError, match='expected a header with the columns image,labels, got file,tags'):
        data.csv_data(tmp_path / 'header.csv', val_fraction=0.5)
    with pytest.raises(DataError, match='give --val-csv, or --val-split'):
        data.csv_data(csv_path)


def test_hf_imagefolder(tmp_path):
    import datasets  # noqa: F401  (the test extra brings it: missing is a failure, not a skip)
    d = data.hf_data('imagefolder', make_train_val(tmp_path / 'ds'))
    assert d.class_names == ['cat', 'dog', 'fish'] and len(d.train) == 24 and len(d.val) == 12
    image, target = d.train[0]
    assert image.mode == 'RGB' and target in (0, 1, 2)
    with pytest.raises(DataError, match='--dataset imagefolder needs --data-dir'):
        data.hf_data('imagefolder')


def test_image_bombs_in_training_data_are_skipped_and_counted(bombs, tmp_path, capsys, caplog):
    from tests.helpers.images import make_multilabel_csv, make_train_val
    root = make_train_val(tmp_path / 'ds')
    for bomb in bombs:
        shutil.copy(bomb, root / 'train' / 'cat' / bomb.name)
    with caplog.at_level('WARNING', logger='fishzoo'):
        assert train_main(['--data-dir', str(root), '--output-dir', str(tmp_path / 'o'), '--epochs', '1',
                     *TRAIN_ARGS]) == 0
    assert 'skipped 2 unreadable images in all' in caplog.text
    assert 'bomb.png: refused as a decompression bomb' in caplog.text
    assert train_main(['--data-dir', str(root), '--output-dir', str(tmp_path / 's'), '--strict-images',
                       *TRAIN_ARGS]) == 2
    one_line(capsys, 'refused as a decompression bomb')

    csv_path = make_multilabel_csv(tmp_path / 'csv', rows=12)
    for bomb in bombs:
        shutil.copy(bomb, csv_path.parent / 'images' / bomb.name)
    csv_path.write_text(csv_path.read_text() + 'images/bomb.png,red\nimages/big.png,blue\n')
    loaded = data.csv_data(csv_path, val_fraction=0.25)
    assert len(loaded.train) + len(loaded.val) == 12
    assert sorted(Path(p).name for p, _ in loaded.skipped) == ['big.png', 'bomb.png']
    assert all('decompression bomb' in reason for _, reason in loaded.skipped)


def test_csv_duplicate_rows(tmp_path, caplog):
    from tests.helpers.images import make_multilabel_csv
    csv_path = make_multilabel_csv(tmp_path, rows=8)
    lines = csv_path.read_text().splitlines()
    csv_path.write_text('\n'.join(lines + [lines[3], lines[4].split(',')[0] + ',red green blue']) + '\n')
    with caplog.at_level('WARNING', logger='fishzoo.data'):
        rows = data.read_label_csv(csv_path)
    assert len(rows) == 8
    assert 'list an image again with other labels; keeping the first row' in caplog.text


csv_cells = st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=15)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(csv_cells, csv_cells), max_size=6),
       header=st.sampled_from(['image,labels', 'labels,image', 'file,tags', '', 'image']),
       raw=st.binary(max_size=60))
def test_fuzz_csv_reader(tmp_path, rows, header, raw):
    folder = tmp_path / 'csvfuzz'
    (folder / 'img').mkdir(parents=True, exist_ok=True)
    (folder / 'img' / 'a.png').write_bytes(b'')
    path = folder / 'labels.csv'
    import csv as csv_module
    import io
    buffer = io.StringIO()
    writer = csv_module.writer(buffer)
    if header:
        buffer.write(header + '\n')
    for image, labels in rows:
        writer.writerow([image, labels])
    path.write_bytes(buffer.getvalue().encode('utf-8', 'surrogatepass') + raw)
    try:
        parsed = data.read_label_csv(path)
    except data.DataError as e:
        assert str(path) in str(e)
    else:
        assert all(Path(image).is_file() for image, _ in parsed)


def test_class_folder_walks_skip_special_files_and_stay_in_the_root(tmp_path):
    root = class_tree(tmp_path / 'data', per_class=4)
    os.mkfifo(root / 'cat' / 'evil.png')  # opening it would block forever
    os.symlink('..', root / 'cat' / 'l1')  # two links to .. made the walk exponential
    os.symlink('..', root / 'cat' / 'l2')
    os.symlink('.', root / 'dog' / 'self')  # loaded the folder again as a phantom class 'self'
    outside = class_tree(tmp_path / 'elsewhere', classes=('secret',))
    os.symlink(outside / 'secret', root / 'secret')  # a class from outside the data root
    os.symlink(outside / 'secret' / '0.png', root / 'dog' / 'stolen.png')
    assert walk_in_a_subprocess(root) == [8, ['cat', 'dog']]


@pytest.mark.slow
def test_training_on_a_folder_with_a_fifo_finishes(tmp_path):
    root = class_tree(tmp_path / 'data', per_class=6)
    os.mkfifo(root / 'dog' / 'evil.png')
    proc = subprocess.run(['fishzoo-train', '--data-dir', str(root), '--output-dir', str(tmp_path / 'run'),
                           '--epochs', '1', *TRAIN_ARGS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_image_format_pil_reads_is_found(tmp_path, capsys):
    """WebP and BMP files were silently left out of class folders and predict folders."""
    root = class_tree(tmp_path / 'mixed', formats=('jpg', 'png', 'webp', 'bmp'), per_class=8)
    assert walk_in_a_subprocess(root) == [16, ['cat', 'dog']]
    folder = save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'm', label_names=['a', 'b'])
    assert cli_main(['predict', str(folder), str(root), '--json']) == 0
    assert len(json.loads(capsys.readouterr().out)) == 16


def test_a_csv_with_a_label_per_row_is_refused_before_gigabytes_are_allocated(tmp_path):
    """10^5 distinct labels made a 40 GB multi-hot table (numpy's _ArrayMemoryError)."""
    images = tmp_path / 'images'
    images.mkdir()
    rows = ['image,labels']
    for i in range(20_000):
        (images / f'{i}.png').touch()
        rows.append(f'images/{i}.png,caption-{i}')
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    with pytest.raises(fishzoo.FishzooError, match=r'labels.csv: 20,000 distinct labels in 20,000 rows would take '
                                                    r'1.6 GB of targets; the labels column holds label names'):
        data.csv_data(tmp_path / 'labels.csv', val_fraction=0.2)


def test_repeated_csv_rows_give_one_warning(tmp_path, caplog):
    """A CSV listing one image 170,000 times with other labels printed a warning line for every row."""
    from tests.helpers.images import make_multilabel_csv
    csv_path = make_multilabel_csv(tmp_path, rows=4)
    first = csv_path.read_text().splitlines()[1].split(',')[0]
    csv_path.write_text(csv_path.read_text() + ''.join(f'{first},label{i}\n' for i in range(1000)))
    with caplog.at_level('WARNING', logger='fishzoo.data'):
        rows = data.read_label_csv(csv_path)
    assert len(rows) == 4 and len(caplog.records) == 1
    assert '1000 rows list an image again with other labels' in caplog.text


def test_one_image_classes_are_trained_and_the_rest_split_stratified(caplog):
    """2,000 one-image classes were split without stratification: 400 classes only in validation, never trained."""
    targets = list(range(2000)) + [2000] * 60 + [2001] * 40 + [2002] * 2
    with caplog.at_level(logging.WARNING):
        train, val = data.stratified_split(targets, 0.2, seed=0)
    assert '2000 classes have a single image' in caplog.text
    assert sorted(train + val) == list(range(len(targets))) and not set(train) & set(val)
    trained = {targets[i] for i in train}
    assert trained == set(targets)  # every class is trained on
    assert all(targets[i] >= 2000 for i in val)  # only classes with images to spare are validated
    assert len(val) == 99  # 20% of all would be 420: all that the 102 can spare, one per class kept
    assert data.stratified_split(targets, 0.2, seed=0) == (train, val)  # repeatable
    with pytest.raises(DataError, match='cannot hold out validation images from 3 images'):
        data.stratified_split([0, 1, 2], 0.2, seed=0)
