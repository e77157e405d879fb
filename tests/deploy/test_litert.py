"""fishzoo export --format litert and fishzoo predict --backend litert (litert-torch's converter and quantizer,
ai-edge-litert's interpreter with its XNNPACK delegate)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fishzoo.cli import main
from fishzoo.predict import predict
from tests.helpers.models import ColourNet, colour_data

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.litert]


def test_int8_export_is_checked_on_held_out_images(trained_run, image_dataset, tmp_path, capsys):
    out = tmp_path / 'lrt8'
    assert main(['export', str(trained_run), '--format', 'litert', '--int8', '--calib-data', str(trained_run),
                 '--val-data', str(trained_run), '--max-drop', '100', '-o', str(out)]) == 0
    assert 'top-1 on 12 images' in capsys.readouterr().out
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['weights'] == 'int8' and record['ops_outside_delegate'] == {}
    assert "int8 by litert-torch's PT2EQuantizer" in (out / 'README.md').read_text()
    images = sorted(str(p) for p in (image_dataset / 'val').rglob('*.png'))
    ours = predict(str(out), images, top_k=1)  # int8 input and output, (de)quantized by the runner
    reference = predict(str(trained_run), images, top_k=1, precision='fp32')
    same = sum(a['labels'][0][0] == b['labels'][0][0] for a, b in zip(ours, reference))
    assert same / len(images) * 100 == pytest.approx(record['accuracy']['agreement'])


def test_int8_search_keeps_the_crushed_layers_in_fp32(tmp_path):
    """litert-torch's quantizer cannot leave a module out (no None config): its annotations are removed."""
    from fishzoo.deploy.litert import RUNTIME
    model = ColourNet().eval()
    _, _, data = colour_data()
    _, plain = RUNTIME.export(model, tmp_path / 'plain.tflite', (3, 8, 8), data, data, max_drop=100)
    assert plain.drop > 20
    _, searched = RUNTIME.export(model, tmp_path / 'm.tflite', (3, 8, 8), data, data, max_drop=0.5)
    assert searched.drop <= 0.5 and 'conv2' in searched.layers_in_fp32 and 'head' not in searched.layers_in_fp32


class _Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), scale_factor=2, mode='nearest').mean((2, 3))


def test_outside_ops_are_counted(tmp_path):
    """LiteRT's XNNPACK delegate has no nearest resize: the counter names it (the export-time forms avoid it)."""
    from fishzoo.deploy.litert import convert_into, outside_ops
    from fishzoo.deploy.litert import runner as litert_runner
    x, model = torch.randn(1, 3, 8, 8), _Upsampler().eval()
    outside = convert_into(model, x, tmp_path / 'up.tflite')
    assert outside == {'RESIZE_NEAREST_NEIGHBOR': 1} == outside_ops(tmp_path / 'up.tflite')
    with torch.no_grad():
        np.testing.assert_allclose(litert_runner(tmp_path / 'up.tflite')(x.numpy()), model(x).numpy(), atol=1e-5)
