"""What the deployment tests share: every runtime installed (a missing one fails here instead of the tests
that need it being skipped), and a small hub folder with images labelled by its own fp32 decisions."""
import nncf  # noqa: F401
import numpy as np
import onnx  # noqa: F401
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401
import openvino  # noqa: F401
import pytest
import timm
import torch
import torchao  # noqa: F401
from PIL import Image

from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.helpers.models import set_bn_statistics

LABELS = ['cat', 'dog', 'fish']
SIZE = 32


def _model():
    torch.manual_seed(0)
    model = timm.create_model('fishnet_s64', num_classes=3, pretrained_cfg_overlay=dict(
        input_size=(3, SIZE, SIZE), crop_pct=1.0, label_names=LABELS)).eval()
    return set_bn_statistics(model)  # the exports fold them


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """A hub folder, 48 images, and class folders + a CSV labelled with the fp32 model's own top-1 (so fp32
    scores 100% and every int8 mistake is a disagreement)."""
    root = tmp_path_factory.mktemp('int8')
    model = _model()
    folder = save_pretrained(model, root / 'model', label_names=LABELS)
    rng = np.random.default_rng(0)
    images = root / 'images'
    images.mkdir()
    paths = []
    for i in range(48):
        pixels = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        paths.append(images / f'{i:02d}.png')
        Image.fromarray(pixels).save(paths[-1])
    results = predict(str(folder), [str(p) for p in paths], top_k=1)
    val = root / 'val'
    rows = ['image,labels']
    for path, result in zip(paths, results):
        label = result['labels'][0][0]
        (val / label).mkdir(parents=True, exist_ok=True)
        (val / label / path.name).write_bytes(path.read_bytes())
        rows.append(f'images/{path.name},{label}')
    (root / 'val.csv').write_text('\n'.join(rows) + '\n')
    return dict(root=root, folder=folder, images=images, val=val, csv=root / 'val.csv', model=model, paths=paths)
