"""fishzoo.quantize: torchao PT2E int8 on the FishNets and the dual MobileNetV2, called like the original."""
import re

import pytest
import timm
import torch
import torch.nn as nn

from fishzoo.deploy.int8_torch import QuantizedModel, quantization_report, quantize
from fishzoo.errors import QuantizeError

pytestmark = pytest.mark.deploy


def _relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope='module')
def mobilenet():
    torch.manual_seed(0)
    return timm.create_model('mobilenetv2_dual_050', num_classes=5).eval()


@pytest.fixture(scope='module')
def quantized_mobilenet(mobilenet):
    calibration = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return quantize(mobilenet, calibration, compile=False)


def test_mobilenet_int8_close_to_fp32_at_any_size(mobilenet, quantized_mobilenet):
    assert isinstance(quantized_mobilenet, QuantizedModel)
    for shape in [(4, 3, 64, 64), (1, 3, 96, 80)]:  # batch and spatial size stay dynamic
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            reference = mobilenet(x)
        out = quantized_mobilenet(x)
        assert out.shape == reference.shape
        assert _relative(out, reference) < 0.25
    assert quantized_mobilenet.pretrained_cfg['architecture'] == 'mobilenetv2_dual_050'
    assert quantized_mobilenet.eval() is quantized_mobilenet  # as code written for the fp32 model calls it
    with pytest.raises(QuantizeError, match='runs inference only'):
        quantized_mobilenet.train()
    assert quantized_mobilenet.num_classes == 5


def test_report_names_what_stays_fp32(quantized_mobilenet):
    report = quantized_mobilenet.report
    assert report['int8']['conv2d'] >= 50 and report['int8']['linear'] == 1
    # Mish has no int8 pattern in the x86 quantizer: it runs in fp32 between dequantize and quantize
    assert report['fp32'].get('mish_', 0) + report['fp32'].get('mish', 0) >= 10
    assert 'conv2d' not in report['fp32']
    assert 'int8 ops=' in repr(quantized_mobilenet)


def test_calibration_from_a_loader_of_pairs(mobilenet):
    images = torch.randn(8, 3, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(8)), batch_size=4)
    q = quantize(mobilenet, loader, compile=False)
    assert q(images[:2]).shape == (2, 5)


class _SmallNet(nn.Module):
    def __init__(self, in_chans=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def test_compiled_int8_matches_the_converted_graph():
    """The compiled model (inductor, freezing: oneDNN int8 kernels) gives the converted graph's numbers."""
    torch.manual_seed(0)
    model = _SmallNet().eval()
    x = torch.randn(8, 3, 16, 16)
    q = quantize(model, x, compile=True)
    assert q.compiled
    out = q(x)
    assert q.compiled, 'compilation fell back to eager'
    with torch.no_grad():
        eager = q.model(x.contiguous(memory_format=torch.channels_last))
    assert _relative(out, eager) < 0.02
    assert _relative(out, model(x).detach()) < 0.1


def test_grayscale_stem_stays_compiled():
    """An int8 convolution over one input channel broke inductor's layout plan (the first call fell back to
    eager); such a convolution stays fp32 and the rest compiles."""
    torch.manual_seed(0)
    model = _SmallNet(in_chans=1).eval()
    q = quantize(model, torch.randn(8, 1, 16, 16), compile=True)
    for batch in (8, 8, 3):
        q(torch.randn(batch, 1, 16, 16))
    assert q.compiled, 'compilation fell back to eager'
    assert q.report['fp32']['conv2d'] == 1 and q.report['int8']['conv2d'] == 1


def test_no_calibration_images(mobilenet):
    with pytest.raises(QuantizeError, match='no calibration images'):
        quantize(mobilenet, [], compile=False)
    with pytest.raises(QuantizeError, match=r'\(N, C, H, W\) tensor'):
        quantize(mobilenet, torch.randn(3, 64, 64), compile=False)
    with pytest.raises(QuantizeError, match='calibration must be images'):
        quantize(mobilenet, 'photos/', compile=False)
    with pytest.raises(QuantizeError, match=re.escape('1 channel(s), the model takes 3')):
        quantize(mobilenet, torch.randn(2, 1, 64, 64), compile=False)


class _DataDependent(nn.Module):
    """Control flow on tensor values: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            return y.mean((2, 3))
        return -y.mean((2, 3))


def test_a_model_the_quantizer_cannot_handle():
    with pytest.raises(QuantizeError, match='_DataDependent cannot be captured for int8 quantization') as info:
        quantize(_DataDependent(), torch.randn(2, 3, 8, 8), compile=False)
    assert '\n' not in str(info.value)


def test_report_counts_a_fused_relu_as_int8():
    model = _SmallNet().eval()
    q = quantize(model, torch.randn(4, 3, 16, 16), compile=False)
    report = quantization_report(q.model)
    assert report['int8']['conv2d'] == 2 and report['int8']['linear'] == 1
    assert report['int8'].get('relu', 0) + report['int8'].get('relu_', 0) == 2
