"""Shared model arguments: frozen BatchNorm the way detection code asks for it, and its folding."""
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d
from timm.utils.model import reparameterize_model

import fishzoo  # noqa: F401  (registers the models)

FAMILIES = ['fishnet_s64', 'mobilenetv2_dual_050']
FROZEN = ['frozenbatchnorm2d', 'FrozenBatchNorm2d', torchvision.ops.FrozenBatchNorm2d, FrozenBatchNormAct2d]


def _bn_counts(model):
    return (sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
            sum(isinstance(m, FrozenBatchNormAct2d) for m in model.modules()))


@pytest.mark.parametrize('name', FAMILIES)
@pytest.mark.parametrize('norm_layer', FROZEN, ids=lambda v: getattr(v, '__module__', 'str').split('.')[0] + '-' + str(
    getattr(v, '__name__', v)))
def test_frozen_norm_layer_by_name_or_class(name, norm_layer, tmp_path):
    """The torchvision habit (norm_layer=FrozenBatchNorm2d) and timm's names build a model whose every BatchNorm
    is frozen; it computes what the trainable model computes, and a trained model's checkpoint (with its batch
    counters) loads into it through timm's pretrained path."""
    trained = timm.create_model(name).train()  # the default head: timm keeps a head of the same size
    with torch.no_grad():  # give the statistics something to hold
        trained(torch.randn(4, 3, 64, 64))
    trained.eval()
    assert any(k.endswith('num_batches_tracked') for k in trained.state_dict())
    save_file(trained.state_dict(), tmp_path / 'trained.safetensors')

    frozen = timm.create_model(name, norm_layer=norm_layer, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'trained.safetensors')))
    plain_bns, frozen_bns = _bn_counts(trained)
    assert _bn_counts(frozen) == (0, plain_bns) and frozen_bns == 0
    frozen.train()  # frozen statistics do not move in train mode, and there is nothing to learn in them
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), trained(x), rtol=1e-4, atol=1e-4)  # x * scale + shift vs batch_norm
    assert not any('bn' in n and p.requires_grad for n, p in frozen.named_parameters())


@pytest.mark.parametrize('name', FAMILIES)
def test_timm_freeze_batch_norm_and_folding(name):
    """timm's freeze_batch_norm_2d works on a built model, and the inference folding folds frozen BatchNorm too."""
    model = timm.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        frozen = freeze_batch_norm_2d(model)
        assert _bn_counts(frozen)[0] == 0 and _bn_counts(frozen)[1] > 0
        torch.testing.assert_close(frozen(x), ref, rtol=1e-4, atol=1e-4)
        folded = reparameterize_model(frozen)
        assert _bn_counts(folded)[1] < _bn_counts(frozen)[1]
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4)
