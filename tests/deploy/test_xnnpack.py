"""fishzoo.deploy.xnnpack: export-time forms XNNPACK runs, equal to the layers they replace."""
import collections

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from fishzoo.deploy import executorch, litert
from fishzoo.deploy.xnnpack import ChannelSumConv, ConcatUpsample2x, NearestUpsample2x, SigmoidMish, for_xnnpack
from fishzoo.models.fishnet import ChannelSqueeze
from tests.helpers.models import set_bn_statistics


def test_sigmoid_mish_is_mish():
    x = torch.cat([torch.linspace(-30, 30, 200_001), torch.tensor([-100.0, -1e-7, 0.0, 1e-7, 100.0])])
    torch.testing.assert_close(SigmoidMish()(x), F.mish(x), rtol=1e-5, atol=2e-6)
    x64 = x.double()  # the algebra is exact: in float64 only rounding is left
    torch.testing.assert_close(SigmoidMish()(x64), F.mish(x64), rtol=1e-12, atol=1e-14)


def test_channel_sums_and_upsampling_are_exact():
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(ChannelSumConv(12, 3)(x), ChannelSqueeze(3)(x), rtol=1e-6, atol=1e-6)
    for up in (NearestUpsample2x(12), ConcatUpsample2x()):
        for like in (torch.empty(1, 1, 10, 14), torch.empty(1, 1, 11, 15)):  # twice the size, and odd (interpolated)
            expected = F.interpolate(x, size=like.shape[-2:], mode='nearest')
            torch.testing.assert_close(up(x, like), expected, rtol=0, atol=0)


@pytest.mark.parametrize('name, size, runtime', [
    ('fishnet_s64', 64, 'executorch'), ('fishnet_s64', 37, 'executorch'), ('fishnet99', 64, 'executorch'),
    ('mobilenetv2_dual_050', 64, 'executorch'), ('fishnet_s64', 64, 'litert'), ('fishnet_s64', 37, 'litert')])
def test_swapped_model_computes_the_same(name, size, runtime):
    model = set_bn_statistics(timm.create_model(name, num_classes=7), affine=True).eval()
    swapped = for_xnnpack(model, {'executorch': executorch.RUNTIME, 'litert': litert.RUNTIME}[runtime].upsample)
    kinds = collections.Counter(type(m).__name__ for m in swapped.modules())
    assert not kinds['Mish'] and not any(isinstance(m, ChannelSqueeze) and m.k > 1 for m in swapped.modules())
    if name.startswith('fishnet'):
        # every body stage up-samples; the two that narrow the trunk sum channel pairs (the first keeps its width)
        upsampling = 'NearestUpsample2x' if runtime == 'executorch' else 'ConcatUpsample2x'
        assert kinds['ChannelSumConv'] == 2 and kinds[upsampling] == 3
    else:
        assert kinds['SigmoidMish'] and all(b.shortcut_stride == 1 for b in swapped.modules()
                                            if hasattr(b, 'shortcut_stride'))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, out = model(x), swapped(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert any(isinstance(m, nn.Mish) for m in model.modules()) == name.startswith('mobilenet')  # original untouched


@pytest.mark.deploy
@pytest.mark.slow
@pytest.mark.parametrize('name, size', [('mobilenetv2_dual_050', 96)])
def test_every_op_runs_in_xnnpack(name, size):
    """Lowered with ExecuTorch's XNNPACK partitioner, nothing is left for the portable kernels: one delegate
    call (before the swaps: 207 ops outside in 37 partitions). FishNet-s64's exports assert the same in
    tests/deploy/test_executorch.py (fp32 and int8; before the swaps: 5 ops outside)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    swapped = for_xnnpack(timm.create_model(name, num_classes=7))
    program = torch.export.export(swapped, (torch.randn(1, 3, size, size),))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    calls = collections.Counter(str(n.target).split('::')[-1].split('(')[0].split('.')[-1]
                                for n in lowered.exported_program().graph_module.graph.nodes
                                if n.op == 'call_function' and 'getitem' not in str(n.target))
    assert dict(calls) == {'executorch_call_delegate': 1}, dict(calls)
