"""optimize_for_inference and BN folding: same outputs, fewer BatchNorms, a clean eager fallback."""
import pytest
import timm
import torch
from timm.utils import reparameterize_model

import fishzoo


def _with_statistics(name):
    """A model in eval mode whose BatchNorms are not the identity (so folding has something to get wrong)."""
    model = timm.create_model(name, num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _batchnorms(model):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize('name', ['fishnet_s64', 'fishnet99', 'fishnext150'])
def test_timm_reparameterize_folds_batchnorm(name):
    model = _with_statistics(name)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        reference = model(x)
        folded = reparameterize_model(model)
        assert _rel(folded(x), reference) <= 1e-4
    assert _batchnorms(folded) < _batchnorms(model) / 2  # bn2/bn3 of every block, score and stem BNs
    assert _batchnorms(model) == _batchnorms(_with_statistics(name))  # the original is untouched
    with torch.no_grad():
        assert _rel(reparameterize_model(folded)(x), reference) <= 1e-4  # folding twice changes nothing


def test_optimize_for_inference_eager():
    model = _with_statistics('fishnet_s64')
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    fast = fishzoo.optimize_for_inference(model, compile=False)
    assert not fast.compiled
    out = fast(x)
    assert _rel(out, reference) <= 1e-4 and not out.requires_grad
    assert fast.model.stem.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError('no C++ compiler here')
        return run
    monkeypatch.setattr(torch, 'compile', broken_compile)
    model = _with_statistics('fishnet_s64')
    fast = fishzoo.optimize_for_inference(model)
    assert fast.compiled
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(RuntimeWarning, match='torch.compile failed .*no C\\+\\+ compiler here.*eagerly'):
        out = fast(x)
    assert not fast.compiled
    with torch.no_grad():
        assert _rel(out, model(x)) <= 1e-4
