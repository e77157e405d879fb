"""The timm model interface, item by item, for every fishzoo architecture family.

Each family is represented by small, fast configurations; the family-specific files check that
every registered variant builds and trains.
"""
import re
from typing import List, Tuple

import pytest
import timm
import torch
from timm.models import create_feature_extractor, group_parameters
from timm.optim import create_optimizer_v2, param_groups_layer_decay

import fishzoo  # noqa: F401

# (model name, input size): an ImageNet-stem and a low-resolution FishNet, the dual-path MobileNetV2
MODELS = [('fishnet_s64', 64), ('fishnet99', 64), ('mobilenetv2_dual_050', 64)]
NAMES = [name for name, _ in MODELS]


def _input(size, batch=2, chans=3):
    return torch.randn(batch, chans, size, size)


def _size(name):
    return dict(MODELS)[name]


@pytest.mark.parametrize('name', NAMES)
def test_pretrained_cfg(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'num_classes',
                'first_conv', 'classifier', 'paper_ids', 'license'):
        assert cfg.get(key) not in (None, ''), key
    assert cfg['num_classes'] == model.num_classes
    first = model.get_submodule(cfg['first_conv'])
    assert isinstance(first, torch.nn.Conv2d) and first.in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert timm.data.resolve_data_config({}, model=model)['input_size'] == cfg['input_size']


@pytest.mark.parametrize('name', NAMES)
def test_features_only(name):
    size = _size(name)
    model = timm.create_model(name)
    levels = model.feature_info
    assert [f['reduction'] for f in levels] == sorted(f['reduction'] for f in levels)
    features = timm.create_model(name, features_only=True).eval()
    outs = features(_input(size))
    assert len(outs) == len(features.feature_info.channels()) >= 4
    for out, chs, red in zip(outs, features.feature_info.channels(), features.feature_info.reduction()):
        assert out.shape == (2, chs, size // red, size // red)
    picked = timm.create_model(name, features_only=True, out_indices=(0, 2)).eval()
    assert [o.shape[1] for o in picked(_input(size))] == [levels[0]['num_chs'], levels[2]['num_chs']]


@pytest.mark.parametrize('name', NAMES)
def test_feature_extractor_uses_every_parameter(name):
    """features_only keeps only what computes the levels: DDP (detection, segmentation) refuses parameters no
    forward uses, so the classifier's score block / head conv goes with the classifier."""
    features = timm.create_model(name, features_only=True).train()
    sum(o.mean() for o in features(_input(_size(name)))).backward()
    unused = [n for n, p in features.named_parameters() if p.grad is None]
    assert not unused, unused[:5]


@pytest.mark.parametrize('name', NAMES)
def test_forward_intermediates(name):
    size = _size(name)
    model = timm.create_model(name).eval()
    x = _input(size)
    final, intermediates = model.forward_intermediates(x)
    assert len(intermediates) == len(model.feature_info)
    for out, info in zip(intermediates, model.feature_info):
        assert out.shape[1] == info['num_chs']
        assert out.shape[-1] == size // info['reduction']
    torch.testing.assert_close(final, model.forward_features(x))
    early = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early, intermediates[1:3])

    features = timm.create_model(name, features_only=True, out_indices=(1, 2, 3)).eval()
    missing, _ = features.load_state_dict(
        {f'model.{k}': v for k, v in model.state_dict().items()}, strict=False)
    assert not missing
    torch.testing.assert_close(features(x), intermediates[1:4])


@pytest.mark.parametrize('name', NAMES)
def test_forward_head_and_features(name):
    size = _size(name)
    model = timm.create_model(name, num_classes=7).eval()
    x = _input(size)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize('name', NAMES)
def test_classifier_reset_and_num_classes_zero(name):
    size = _size(name)
    model = timm.create_model(name).eval()
    assert model.get_classifier().out_features == model.pretrained_cfg['num_classes']
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(_input(size)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(_input(size)).shape == (2, model.num_features)

    pooled = timm.create_model(name, num_classes=0).eval()
    x = _input(size)
    out = pooled(x)
    assert out.shape == (2, pooled.num_features)
    torch.testing.assert_close(out, pooled.forward_head(pooled.forward_features(x), pre_logits=True))


@pytest.mark.parametrize('name', fishzoo.list_models())
def test_reset_classifier_keeps_pooling_device_and_dtype(name):
    """timm's contract (its CNNs keep them): a model built with max pooling keeps it through
    ``reset_classifier(n)``; a float64 model's new head is float64; the head follows the model's mode."""
    with torch.device('meta'):  # every registered model, nothing allocated
        model = timm.create_model(name, num_classes=3, global_pool='max').to(torch.float64).train()
        model.reset_classifier(7)
    head = model.get_classifier()
    assert model.global_pool.pool_type == 'max' and model.num_classes == 7 and head.out_features == 7
    assert head.weight.dtype == torch.float64 and head.weight.device.type == 'meta' and head.training
    model.eval().reset_classifier(4, 'avg')  # asked for: changed
    assert model.global_pool.pool_type == 'avg' and not model.get_classifier().training


@pytest.mark.parametrize('name', NAMES)
def test_a_float64_model_runs_after_reset_classifier(name):
    model = timm.create_model(name, num_classes=3, global_pool='max').double().eval()
    model.reset_classifier(5)
    assert model(_input(_size(name)).double()).dtype == torch.float64


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('chans', [1, 4])
def test_in_chans(name, chans):
    model = timm.create_model(name, in_chans=chans, num_classes=3).eval()
    assert model.get_submodule(model.pretrained_cfg['first_conv']).in_channels == chans
    assert model(_input(_size(name), chans=chans)).shape == (2, 3)


@pytest.mark.parametrize('name', NAMES)
def test_drop_rate_and_drop_path(name):
    size = _size(name)
    plain = timm.create_model(name, num_classes=4)
    dropped = timm.create_model(name, num_classes=4, drop_rate=0.5, drop_path_rate=0.3)
    dropped.load_state_dict(plain.state_dict())
    rates = [m.drop_prob for m in dropped.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.3) and rates == sorted(rates)
    x = _input(size, batch=4)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(x), plain(x))
    dropped.train()
    assert not torch.allclose(dropped(x), dropped(x))


def _saved_bytes(fn):
    """Bytes of tensors autograd keeps for the backward pass while running fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize('name', NAMES)
def test_grad_checkpointing(name):
    size = _size(name)
    model = timm.create_model(name, num_classes=4).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _input(size)

    out_ref, saved_ref = _saved_bytes(lambda: model(x))
    out_ref.square().sum().backward()
    grads_ref = [p.grad.clone() for p in model.parameters()]

    model.load_state_dict(state)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out, saved = _saved_bytes(lambda: model(x))
    out.square().sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads_ref):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    assert saved < saved_ref / 2, (saved, saved_ref)


@pytest.mark.parametrize('name', NAMES)
def test_group_matcher_layer_decay(name):
    model = timm.create_model(name)
    matcher = model.group_matcher()
    assert set(matcher) == {'stem', 'blocks'}
    groups = group_parameters(model, matcher)
    assert all(re.match(matcher['stem'], n) for n in groups[0])
    assert len(groups) > 4
    grouped = {n for names in groups.values() for n in names}
    assert grouped == {n for n, _ in model.named_parameters()}
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert 2 < len(coarse) < len(groups)

    param_groups = param_groups_layer_decay(model, layer_decay=0.5, weight_decay=0.01)
    scales = {g['lr_scale'] for g in param_groups}
    assert min(scales) < 0.01 and max(scales) == 1.0
    stem_scale = next(g['lr_scale'] for g in param_groups if any(
        p is model.get_parameter(n) for p in g['params'] for n in groups[0]))
    assert stem_scale == min(scales)
    create_optimizer_v2(model, 'adamw', lr=1e-3, layer_decay=0.7)


@pytest.mark.parametrize('name', NAMES)
def test_torchscript(name):
    model = timm.create_model(name, num_classes=3).eval()
    x = _input(_size(name))
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name', fishzoo.list_models())
def test_torchscript_features_only_every_model(name):
    """timm scripts its CNNs' feature extractors: so is every registered fishzoo model's (compiled on the meta
    device; the numbers are checked below and at the other output strides)."""
    with torch.device('meta'):
        model = timm.create_model(name, features_only=True)
    scripted = torch.jit.script(model)
    assert scripted.forward.schema.returns[0].type.annotation_str == 'List[Tensor]'


@pytest.mark.parametrize('name, output_stride', [('fishnet_s64', None), ('fishnet99', 16), ('fishnet99', 8),
                                                 ('mobilenetv2_dual_050', 16), ('mobilenetv2_dual_050', 8)])
def test_torchscript_features_only_computes_the_same(name, output_stride):
    kwargs = dict(output_stride=output_stride) if output_stride else {}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    x = _input(_size(name))
    with torch.no_grad():
        for ours, expected in zip(torch.jit.script(model)(x), model(x)):
            torch.testing.assert_close(ours, expected)


class _Intermediates(torch.nn.Module):
    """forward_intermediates with its classifier-side output, as a scripted caller uses it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        out = self.model.forward_intermediates(x, indices=2)
        assert torch.jit.isinstance(out, Tuple[torch.Tensor, List[torch.Tensor]])
        return out


@pytest.mark.parametrize('name', NAMES)
def test_torchscript_forward_intermediates(name):
    model = timm.create_model(name, num_classes=3).eval()
    x = _input(_size(name))
    with torch.no_grad():
        final, levels = torch.jit.script(_Intermediates(model))(x)
        expected_final, expected_levels = model.forward_intermediates(x, indices=2)
    torch.testing.assert_close(final, expected_final)
    assert len(levels) == 2
    for ours, expected in zip(levels, expected_levels):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize('name', NAMES)
def test_fx_trace(name):
    model = timm.create_model(name, num_classes=3).eval()
    x = _input(_size(name))
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), model(x))
    last_level = model.feature_info[-1]['module']
    extractor = create_feature_extractor(model, return_nodes=[last_level])
    assert extractor(x)[last_level].shape[1] == model.feature_info[-1]['num_chs']


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.slow
def test_torch_compile_fullgraph(name):
    """The whole forward is one dynamo graph (aot_eager keeps the test free of C++ codegen time)."""
    model = timm.create_model(name, num_classes=3).eval()
    x = _input(_size(name))
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(x), model(x))


def test_other_channel_counts_get_their_own_mean_and_std(caplog):
    """timm would average a 3-value mean itself and log a warning each time; fishzoo's models carry theirs."""
    model = timm.create_model('fishnet_s64', in_chans=1)
    assert model.pretrained_cfg['mean'] == (0.449,) and len(model.pretrained_cfg['std']) == 1
    with caplog.at_level('WARNING'):
        config = timm.data.resolve_model_data_config(model)
    assert config['mean'] == (0.449,) and 'does not match' not in caplog.text
    assert timm.create_model('fishnet_s64').pretrained_cfg['mean'] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize('name', ['fishnet_s64', 'fishnet99', 'mobilenetv2_dual_050'])
@pytest.mark.parametrize('shape, message', [
    ((1, 1, 64, 64), 'expected 3 input channels, got 1'),
    ((64, 64), 'expected a 4-D image batch'),
    ((1, 1, 3, 64, 64), 'expected a 4-D image batch'),
])
def test_bad_model_inputs(name, shape, message):
    model = timm.create_model(name, num_classes=2).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))
    too_small = model.min_input_size - 1
    with pytest.raises(ValueError, match=f'at least {model.min_input_size}x{model.min_input_size} px'):
        model(torch.randn(1, 3, too_small, 64))
    with pytest.raises(ValueError, match='expected 3 input channels'):
        model.forward_intermediates(torch.randn(1, 4, 64, 64))
