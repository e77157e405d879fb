"""Calibration and validation images for int8: sources, the model's eval transform, label mapping, mistakes."""
import pytest
import torch
from PIL import Image

from fishzoo.data import digits_data
from fishzoo.deploy.calibration import DIGITS, as_batches, calibration_images, validation_images
from fishzoo.errors import QuantizeError

pytestmark = pytest.mark.deploy

CFG = dict(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation='bilinear',
           crop_pct=1.0)


def _tree(root, classes, per_class=3, size=40):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new('RGB', (size, size + i), (40 * i, 90, 200)).save(root / c / f'{i}.png')
    return root


def test_calibration_folder_uses_the_eval_transform_and_spreads_the_subset(tmp_path):
    _tree(tmp_path, ['a', 'b', 'c'], per_class=4)
    (tmp_path / 'a' / 'broken.jpg').write_bytes(b'nope')
    data = calibration_images(tmp_path, CFG, limit=6)
    assert len(data) == 6 and data.skipped in (0, 1)
    batch = next(data.batches(6))
    assert batch.shape == (6, 3, 24, 24)
    folders = {p.split('/')[-2] for p in data.dataset.sources}
    assert folders == {'a', 'b', 'c'}  # not the first six of a sorted listing


def test_digits_validation_is_fishzoo_trains_held_out_split():
    cfg = dict(CFG, input_size=(1, 32, 32), mean=(0.5,), std=(0.5,))
    val = validation_images(DIGITS, cfg, [str(d) for d in range(10)], 10, multilabel=False)
    calib = calibration_images(DIGITS, cfg, limit=None)
    reference = digits_data(0.2, 42)  # fishzoo-train's defaults: --val-split 0.2 --seed 42
    assert len(val) == len(reference.val) == 360 and len(calib) == len(reference.train)
    assert val.dataset.targets == reference.val.targets
    assert next(val.batches(4)).shape == (4, 1, 32, 32)


def test_validation_maps_folders_to_the_model_labels(tmp_path):
    _tree(tmp_path, ['dog', 'cat'])
    data = validation_images(tmp_path, CFG, ['dog', 'cat', 'fish'], 3, multilabel=False)
    paths = data.dataset.sources
    assert [data.dataset.targets[i] for i, p in enumerate(paths) if '/dog/' in p] == [0, 0, 0]
    assert [data.dataset.targets[i] for i, p in enumerate(paths) if '/cat/' in p] == [1, 1, 1]
    with pytest.raises(QuantizeError, match='class folders the model has no label for: dog'):
        validation_images(tmp_path, CFG, ['cat', 'fish'], 2, multilabel=False)
    with pytest.raises(QuantizeError, match='2 classes, but the model has 5'):
        validation_images(tmp_path, CFG, None, 5, multilabel=False)
    with pytest.raises(QuantizeError, match='checked on a CSV'):
        validation_images(tmp_path, CFG, None, 2, multilabel=True)


def test_single_label_validation_csv(tmp_path):
    _tree(tmp_path / 'img', ['x'])
    (tmp_path / 'val.csv').write_text('image,labels\nimg/x/0.png,dog\nimg/x/1.png,cat\n')
    data = validation_images(tmp_path / 'val.csv', CFG, ['cat', 'dog'], 2, multilabel=False)
    assert data.dataset.targets == [1, 0] and not data.multilabel
    calib = calibration_images(tmp_path / 'val.csv', CFG)  # the image column alone
    assert len(calib) == 2


def test_multilabel_validation_csv(tmp_path):
    _tree(tmp_path / 'img', ['x'])
    (tmp_path / 'val.csv').write_text('image,labels\nimg/x/0.png,a b\nimg/x/1.png,\nimg/x/2.png,c\n')
    data = validation_images(tmp_path / 'val.csv', CFG, ['a', 'b', 'c'], 3, multilabel=True)
    images, targets = next(iter(data.loader(3)))
    assert targets.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(QuantizeError, match='exactly one label per row'):
        validation_images(tmp_path / 'val.csv', CFG, ['a', 'b', 'c'], 3, multilabel=False)


def test_as_batches():
    assert [b.shape[0] for b in as_batches(torch.zeros(40, 3, 8, 8), batch_size=16)] == [16, 16, 8]
    with pytest.raises(QuantizeError, match='no calibration images'):
        as_batches(torch.zeros(0, 3, 8, 8))


def test_calibration_csv_paths_are_read_as_written(tmp_path):
    """Documented (docs/safety.md): a CSV's image paths are relative to --image-root or the CSV's folder;
    absolute paths and '..' are read as written, since the CSV is the user's own file."""
    from PIL import Image

    from fishzoo.deploy.calibration import calibration_images
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    Image.new('RGB', (40, 40)).save(outside / 'a.png')
    (tmp_path / 'csvdir').mkdir()
    (tmp_path / 'csvdir' / 'c.csv').write_text(f'image,labels\n{outside / "a.png"},x\n../elsewhere/a.png,x\n')
    cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation='bilinear', crop_pct=1.0)
    assert len(calibration_images(tmp_path / 'csvdir' / 'c.csv', cfg)) == 2
