"""Dual-path MobileNetV2 with Mish: structure, sizes, forward/backward (the interface is in test_interface)."""
import pytest
import timm
import torch

import fishzoo
from fishzoo.models.mobilenetv2_dual import DualPathBlock

NAMES = ['mobilenetv2_dual_100', 'mobilenetv2_dual_050']


def test_registered():
    assert fishzoo.list_models('mobilenetv2_dual*') == sorted(NAMES)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('size', [(64, 64), (65, 97)])
def test_forward_backward(name, size):
    model = timm.create_model(name, num_classes=10).train()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 10)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('name', NAMES)
def test_mish_everywhere_no_relu(name):
    modules = list(timm.create_model(name).modules())
    assert any(isinstance(m, torch.nn.Mish) for m in modules)
    assert not any(isinstance(m, (torch.nn.ReLU6, torch.nn.ReLU)) for m in modules)


def test_table_and_three_paths():
    model = timm.create_model('mobilenetv2_dual_100')
    stages = list(model.blocks)
    # MobileNetV2's (t, c, n, s) table after a 32-channel stride-2 stem, then a 1x1 conv to 1280
    assert model.conv_stem.conv.out_channels == 32 and model.conv_stem.conv.stride == (2, 2)
    assert [len(s) for s in stages] == [1, 2, 3, 4, 3, 3, 1]
    assert [s[-1].bottleneck[-1].conv.out_channels for s in stages] == [16, 24, 32, 64, 96, 160, 320]
    assert model.num_features == 1280
    assert model.feature_info[-1]['reduction'] == 32
    assert [f['reduction'] for f in model.feature_info] == [2, 4, 8, 16, 32]
    for stage, stride in zip(stages, [1, 2, 2, 2, 1, 2, 1]):
        first = stage[0]
        assert first.bottleneck[1].conv.stride == first.inverted[1].conv.stride == (stride, stride)
    block = stages[2][1]
    assert isinstance(block, DualPathBlock) and isinstance(block.shortcut, torch.nn.Identity)
    # both conv paths share the intermediate width in_chs * 6; the inverted one is depthwise
    mid = block.bottleneck[0].conv.out_channels
    assert mid == 6 * 32 == block.inverted[0].conv.out_channels
    assert block.inverted[1].conv.groups == mid and block.bottleneck[1].conv.groups == 1
    # every convolution is followed by BatchNorm
    for m in model.modules():
        if isinstance(m, timm.layers.ConvNormAct):
            assert isinstance(m.bn, torch.nn.BatchNorm2d)


def test_block_sums_three_paths():
    block = DualPathBlock(16, 16, expansion=6).eval()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x + block.bottleneck(x) + block.inverted(x))


def test_width_050_is_smaller():
    def params(name):
        with torch.device('meta'):
            return sum(p.numel() for p in timm.create_model(name).parameters())
    assert params('mobilenetv2_dual_050') < params('mobilenetv2_dual_100') / 2


def test_channels_last_training_keeps_the_heap_intact():
    """Regression: a strided 1x1 shortcut conv corrupted the heap in channels_last training (torch 2.14's
    oneDNN backward); glibc aborts the process at the next malloc_trim when that happens. One step at 112 px
    is enough: the code before the fix dies there with SIGSEGV (checked against it when this was shrunk from
    3 steps at 224 px)."""
    import subprocess
    import sys
    code = '''
import ctypes, torch, timm, fishzoo
m = timm.create_model('mobilenetv2_dual_050').train().to(memory_format=torch.channels_last)
x = torch.randn(2, 3, 112, 112).contiguous(memory_format=torch.channels_last)
trim = ctypes.CDLL('libc.so.6').malloc_trim
out = m(x)
trim(0)
out.sum().backward()
trim(0)
print('ok')
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]
