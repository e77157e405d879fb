"""FishNet family: sizes, every variant's forward/backward, any input size, down-sampling options."""
import pytest
import timm
import torch
import torch.nn as nn

import fishzoo
from fishzoo.models.fishnet import FishNet

ALL = ['fishnet99', 'fishnet150', 'fishnet201', 'fishnext150', 'fishnet_s64', 'fishnet_m64', 'fishnet_l64']


def _params(name, **kwargs):
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())


def test_registered_with_timm():
    assert sorted(fishzoo.list_models('fish*')) == sorted(ALL)
    assert set(ALL) <= set(timm.list_models('fish*'))


@pytest.mark.parametrize('name, expected', [
    ('fishnet99', 16_628_904), ('fishnet150', 24_959_400), ('fishnet201', 44_584_552)])
def test_authors_parameter_counts_exact(name, expected):
    assert _params(name) == expected


def test_fishnext150_within_5_percent_of_paper():
    assert abs(_params('fishnext150') / 26.2e6 - 1) <= 0.05
    convs = [m for m in timm.create_model('fishnext150').modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.groups > 1]
    assert convs and all(m.groups == 32 for m in convs)


@pytest.mark.parametrize('name, target', [('fishnet_s64', 0.67e6), ('fishnet_m64', 1.03e6), ('fishnet_l64', 1.80e6)])
def test_lowres_parameter_counts(name, target):
    assert abs(_params(name, num_classes=200) / target - 1) <= 0.15


@pytest.mark.parametrize('name', ALL)
@pytest.mark.parametrize('size', [(64, 64), (65, 97)])
def test_forward_backward(name, size):
    model = timm.create_model(name, num_classes=5).train()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('size', [(225, 257), (97, 131), (32, 32), (33, 47), (224, 160)])
def test_any_input_size(size):
    """The authors' code crashes in torch.cat unless H and W are multiples of 32; this one does not."""
    model = timm.create_model('fishnet99', num_classes=10).eval()
    with torch.no_grad():
        _, levels = model.forward_intermediates(torch.randn(1, 3, *size))
    assert model(torch.randn(1, 3, *size)).shape == (1, 10)
    # every level is half the size of the one before it (rounded down)
    for finer, coarser in zip(levels[1:], levels[2:]):
        assert coarser.shape[-2:] == (finer.shape[-2] // 2, finer.shape[-1] // 2)


def test_upsampling_matches_fixed_factor_at_multiples_of_32():
    """Resizing to the branch's size is exactly the authors' nn.Upsample(scale_factor=2) where theirs runs."""
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    body = [s for s in model.stages if getattr(s, 'upsample', False)]
    captured = []
    hooks = [s.blocks.register_forward_hook(lambda m, i, o: captured.append(o)) for s in body]
    outputs = []
    hooks += [s.register_forward_hook(lambda m, i, o: outputs.append(o)) for s in body]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for trunk, out in zip(captured, outputs):
        fixed = torch.nn.Upsample(scale_factor=2)(trunk)
        torch.testing.assert_close(out[:, :trunk.shape[1]], fixed, rtol=0, atol=0)


def test_imagenet_stem_feature_strides():
    """Every level by default, as timm's CNNs: a detector or segmenter gets the stride 2/4/8/16/32 maps."""
    features = timm.create_model('fishnet99', features_only=True)
    assert features.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert features.feature_info.channels() == [64, 320, 832, 1600, 2112]


def test_lowres_keeps_resolution():
    model = timm.create_model('fishnet_m64')
    assert model.pretrained_cfg['input_size'] == (3, 64, 64)
    levels = model.forward_intermediates(torch.randn(2, 3, 64, 64), intermediates_only=True)
    # the fish starts at the full 64x64 (the ImageNet stem would leave 16x16) and ends at 8x8; one level per stride
    assert [lvl.shape[-1] for lvl in levels] == [64, 32, 16, 8]
    assert timm.create_model('fishnet_m64', features_only=True).feature_info.reduction() == [1, 2, 4, 8]


@pytest.mark.parametrize('name', ['fishnet99', 'fishnext150'])
@pytest.mark.parametrize('output_stride, strides', [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                     (8, [2, 4, 8, 8, 8])])
def test_output_stride(name, output_stride, strides):
    """The deepest maps stop at output_stride; the weights are the same; 32 is the default model exactly."""
    x = torch.randn(1, 3, 96, 128)
    default = timm.create_model(name, features_only=True).eval()
    model = timm.create_model(name, features_only=True, output_stride=output_stride).eval()
    assert model.feature_info.reduction() == strides
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}
    model.load_state_dict(default.state_dict())
    with torch.no_grad():
        outs, ref = model(x), default(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(96 // s, 128 // s) for s in strides]
    # the stem's map never changes; at 32 nothing does
    for out, r in zip(outs, ref) if output_stride == 32 else [(outs[0], ref[0])]:
        torch.testing.assert_close(out, r, rtol=0, atol=0)
    if output_stride < 32:
        assert not torch.allclose(outs[-1][..., ::32 // output_stride, ::32 // output_stride], ref[-1])


@pytest.mark.parametrize('output_stride', [16, 4])
def test_output_stride_dilates_like_a_trous(output_stride):
    """With the strided-convolution down-sampling, dropping a step for dilation is the a trous algorithm: the
    dilated tail computes the strided tail's map exactly, at every (32 / output_stride)-th pixel, and the
    score map the bridge builds on it too."""
    strided = timm.create_model('fishnet_s64', num_classes=3, downsample='conv', stem_stride=4).eval()
    dilated = timm.create_model('fishnet_s64', num_classes=3, downsample='conv', stem_stride=4,
                                output_stride=output_stride).eval()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 128, 96)

    def tail_and_score(model):
        h = model.stem(x)
        for stage in model.stages[:3]:
            h = stage(h)
        bridge = model.stages[3]
        return h, bridge.score_fc(bridge.score(h))

    step = 32 // output_stride
    with torch.no_grad():
        for ref, out in zip(tail_and_score(strided), tail_and_score(dilated)):
            assert out.shape[-2:] == (128 // output_stride, 96 // output_stride)
            torch.testing.assert_close(out[..., ::step, ::step], ref, rtol=1e-5, atol=1e-5)


def test_output_stride_refused_clearly():
    with pytest.raises(ValueError, match='output_stride must be one of 4, 8, 16, 32, 64 .*got 12'):
        timm.create_model('fishnet99', output_stride=12)
    with pytest.raises(ValueError, match='output_stride must be one of 2, 4, 8, 16, 32, 64 .*got 1'):
        timm.create_model('mobilenetv2_dual_050', output_stride=1)


@pytest.mark.parametrize('downsample', ['max2', 'max3', 'avg2', 'conv'])
def test_downsample_options(downsample):
    model = timm.create_model('fishnet_s64', num_classes=3, downsample=downsample)
    for size in (64, 37):
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 3)
        out.sum().backward()
    pools = {'max2': torch.nn.MaxPool2d, 'max3': torch.nn.MaxPool2d, 'avg2': torch.nn.AvgPool2d}
    down = model.stages[0].downsample
    if downsample == 'conv':
        assert any(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in down.modules())
        assert _params('fishnet_s64', downsample='conv') > _params('fishnet_s64')
    else:
        kernel = 3 if downsample == 'max3' else 2
        assert isinstance(down, pools[downsample]) and down.kernel_size in (kernel, (kernel, kernel))


def test_bad_arguments_and_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="downsample must be one of 'max2', 'max3', 'avg2', 'conv', got 'max4'"):
        timm.create_model('fishnet_s64', downsample='max4')
    with pytest.raises(ValueError, match='stage_chs needs 3n \\+ 1'):
        FishNet(stage_chs=(8, 8))
    model = timm.create_model('fishnet99', num_classes=3).eval()
    with pytest.raises(ValueError, match='expected 3 input channels, got 1'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='expected a 4-D image batch'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='at least 32x32 px, got 31x64'):
        model(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize('k', [2, 4])
def test_channel_squeeze_keeps_channels_last(k):
    """Same sums in either layout, and a channels_last input stays channels_last (no mixed layouts after it)."""
    from fishzoo.models.fishnet import channel_squeeze
    x = torch.randn(2, 8, 5, 7)
    nchw = channel_squeeze(x, k)
    nhwc = channel_squeeze(x.contiguous(memory_format=torch.channels_last), k)
    assert torch.equal(nchw, nhwc) and nchw.shape == (2, 8 // k, 5, 7)
    assert nchw.is_contiguous() and nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nchw, x.reshape(2, 8 // k, k, 5, 7).sum(2), rtol=0, atol=0)


def test_channels_last_model_has_no_channels_first_activations():
    model = timm.create_model('fishnet_s64').eval().to(memory_format=torch.channels_last)
    mixed = []

    def hook(module, inputs, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[1:]) > 1 \
                and not out.is_contiguous(memory_format=torch.channels_last):
            mixed.append(type(module).__name__)
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    for h in handles:
        h.remove()
    assert mixed == []


def test_fish_layout_of_fishnet150():
    """The pure layout arithmetic: kinds, branch joins, dilations, strides and output widths per stage."""
    from fishzoo.models.fishnet import fish_layout
    specs = fish_layout((128, 256, 512, 512, 512, 384, 256, 320, 832, 1600), stem_chs=64, stem_stride=4)
    assert [s.kind for s in specs] == ['tail'] * 3 + ['bridge'] + ['body'] * 3 + ['head'] * 3
    assert [s.reduction for s in specs] == [8, 16, 32, 32, 16, 8, 4, 8, 16, 32]
    assert [s.dilation for s in specs] == [1, 1, 1, 1, 1, 2, 4, 1, 1, 1]
    assert [s.branch_index for s in specs] == [-1, -1, -1, -1, 2, 1, 0, 6, 5, 4]
    # a body stage joins its mirror tail stage's input, a head stage its mirror body stage's input
    assert [s.branch_chs for s in specs[4:]] == [256, 128, 64, 512, 768, 512]
    assert specs[-1].output_chs == 2112  # FishNet-150's feature width
    assert [s.is_feature for s in specs] == [False] * 6 + [True] * 4
    assert all(b.in_chs == a.output_chs for a, b in zip(specs, specs[1:]))


def test_fish_layout_at_output_stride_8():
    """Each stage's convolutions dilate by the stride they lost; the steps past stride 8 are dropped."""
    from fishzoo.models.fishnet import fish_layout
    specs = fish_layout((128, 256, 512, 512, 512, 384, 256, 320, 832, 1600), 64, 4, output_stride=8)
    assert [s.reduction for s in specs] == [8, 8, 8, 8, 8, 8, 4, 8, 8, 8]
    assert [s.resamples for s in specs[:3] + specs[4:]] == [True, False, False] + [False, False, True] + [
        True, False, False]
    # tail blocks at 4, 8, 16; bridge at 32; body blocks at 32, 16, 8 (times 1, 2, 4); head blocks at 4, 8, 16
    assert [s.dilation for s in specs] == [1, 1, 2, 4, 4, 4, 4, 1, 1, 2]
    # transfer blocks on branches at 16, 8, 4 (body) and 8, 16, 32 (head)
    assert [s.transfer_dilation for s in specs[4:]] == [2, 1, 1, 1, 2, 4]
    assert fish_layout((8,) * 10, 8, 4, output_stride=32) == fish_layout((8,) * 10, 8, 4)


@pytest.mark.parametrize('name', ['fishnet_s64', 'mobilenetv2_dual_050'])
def test_norm_act_device_dtype_reach_every_layer(name):
    kwargs = dict(num_classes=3, device='meta', dtype=torch.float64)
    if name.startswith('fishnet'):
        kwargs.update(norm_layer='layernorm2d', act_layer='silu')
    model = timm.create_model(name, **kwargs)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    if name.startswith('fishnet'):
        assert any(isinstance(m, nn.LayerNorm) for m in model.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert any(isinstance(m, nn.SiLU) for m in model.modules())
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
