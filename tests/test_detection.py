"""fishzoo.detection: torchvision detection backbones, Faster R-CNN and Mask R-CNN from any model fishzoo loads."""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import FrozenBatchNormAct2d
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.ops import FrozenBatchNorm2d

from fishzoo.detection import FpnBackbone, backbone_with_fpn, fasterrcnn_fpn, maskrcnn_fpn
from fishzoo.errors import ConfigError, ModelLoadError
from fishzoo.hub import save_pretrained
from tests.helpers.models import set_bn_statistics


def _frozen_bns(module):
    return sum(isinstance(m, (FrozenBatchNormAct2d, FrozenBatchNorm2d)) for m in module.modules())


def _plain_bns(module):
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _trainable_prefixes(backbone):
    return sorted({n.split('.')[2] for n, p in backbone.body.named_parameters() if p.requires_grad})


def test_fishnet_pyramid_from_a_name():
    backbone = backbone_with_fpn('fishnet99')
    assert isinstance(backbone, FpnBackbone) and backbone.out_channels == 256
    assert backbone.strides == [4, 8, 16, 32, 64]
    out = backbone(torch.randn(1, 3, 96, 128))
    assert list(out) == ['0', '1', '2', '3', 'pool']
    assert [tuple(v.shape) for v in out.values()] == [(1, 256, 96 // s, 128 // s) for s in (4, 8, 16, 32)] + [
        (1, 256, 2, 2)]
    # random weights: everything trains with ordinary BatchNorm, as torchvision does without weights
    assert all(p.requires_grad for p in backbone.parameters()) and _frozen_bns(backbone) == 0


def test_levels_and_output_stride():
    backbone = backbone_with_fpn('fishnet99', returned_levels=[0, 2, 4], output_stride=16)
    assert backbone.strides == [2, 8, 16, 32]
    out = backbone(torch.randn(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [32, 8, 4, 2]
    # the last four levels by default: the low-resolution FishNets keep their full-resolution level
    assert backbone_with_fpn('fishnet_s64').strides == [1, 2, 4, 8, 16]
    assert backbone_with_fpn('fishnet_s64', returned_levels=[2, 3]).strides == [4, 8, 16]


def test_trained_folder_becomes_a_frozen_backbone(tmp_path):
    """A fine-tuned classifier (a hub folder) becomes a detector's backbone with its own weights, BatchNorm frozen
    and its stem and first stage not trained, as torchvision does with trained weights."""
    classifier = set_bn_statistics(timm.create_model('fishnet99', num_classes=4), affine=True).eval()
    folder = save_pretrained(classifier, tmp_path / 'fish')
    backbone = backbone_with_fpn(str(folder))
    assert _plain_bns(backbone.body) == 0 and _frozen_bns(backbone.body) > 0
    assert _trainable_prefixes(backbone) == [str(i) for i in range(1, 10)]  # the stem and stages.0 frozen
    body = backbone.body.model
    torch.testing.assert_close(body.stages[5].blocks[0].conv2.weight, classifier.stages[5].blocks[0].conv2.weight)
    torch.testing.assert_close(body.stages[5].blocks[0].bn2.running_var, classifier.stages[5].blocks[0].bn2.running_var)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():  # in float64: frozen BN's x * scale + shift rounds apart from batch_norm over 99 layers
        levels = classifier.double().forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        torch.testing.assert_close(backbone.body.double().train()(x), levels)  # frozen even in train()
    classifier.float()

    # a model in memory counts as trained; norm='batchnorm' keeps the trainable layers' BatchNorm ordinary
    live = backbone_with_fpn(classifier, trainable_layers=5, norm='batchnorm')
    assert classifier.get_classifier().out_features == 4 and _frozen_bns(classifier) == 0  # a copy was used
    assert all(p.requires_grad for p in classifier.parameters())
    assert _trainable_prefixes(live) == ['5', '6', '7', '8', '9']
    frozen_layers = {n.split('.')[2] for n, m in live.body.named_modules() if isinstance(m, FrozenBatchNormAct2d)}
    assert frozen_layers <= {'0', '1', '2', '3', '4', 'conv1', 'conv2', 'conv3'} and _plain_bns(live.body) > 0


def test_trainable_layers_count_like_torchvision_on_resnet():
    """On a ResNet, the layer groups are torchvision's: trainable_layers=3 trains layer2-layer4."""
    backbone = backbone_with_fpn(timm.create_model('resnet18'), trainable_layers=3)
    trainable = {n.split('.')[1] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {'layer2', 'layer3', 'layer4'}
    assert backbone.strides == [4, 8, 16, 32, 64]


def test_mistakes_get_one_sentence():
    with pytest.raises(ConfigError, match="norm must be one of auto, frozen, batchnorm, got 'sync'"):
        backbone_with_fpn('fishnet_s64', norm='sync')
    with pytest.raises(ConfigError, match=r'returned_levels must be increasing feature levels of fishnet_s64, '
                                          r'from 0 to 3 \(strides \[1, 2, 4, 8\]\), got \[3, 4\]'):
        backbone_with_fpn('fishnet_s64', returned_levels=[3, 4])
    with pytest.raises(ConfigError, match='trainable_layers must be from 0 to 11'):
        backbone_with_fpn('fishnet99', trainable_layers=12)
    with pytest.raises(ConfigError, match='pretrained and model arguments apply to a model given by name'):
        backbone_with_fpn(timm.create_model('fishnet_s64'), output_stride=8)
    with pytest.raises(ConfigError, match='has no timm feature interface'):
        backbone_with_fpn(nn.Conv2d(3, 8, 3))
    with pytest.raises(ModelLoadError, match='pretrained weights for fishnet99.in1k are not on this machine'):
        backbone_with_fpn('fishnet99', pretrained=True)  # offline: one sentence, not a urllib traceback


def _shapes_batch(n=2, size=64, seed=0):
    """Bright squares on noise: images, boxes, labels and masks a detector can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        image = torch.rand(3, size, size, generator=g) * 0.3
        x0, y0 = 6 + 14 * i, 10 + 6 * i
        image[:, y0:y0 + 28, x0:x0 + 28] = 0.9
        mask = torch.zeros(1, size, size, dtype=torch.uint8)
        mask[0, y0:y0 + 28, x0:x0 + 28] = 1
        images.append(image)
        targets.append(dict(boxes=torch.tensor([[x0, y0, x0 + 28, y0 + 28]], dtype=torch.float32),
                            labels=torch.tensor([1]), masks=mask))
    return images, targets


def _train(detector, images, targets, steps):
    """Losses of ``steps`` AdamW steps on one batch (from random weights SGD at detection's usual rates diverges)."""
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    detector.train()
    losses = []
    for _ in range(steps):
        parts = detector(images, targets)
        loss = sum(parts.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        losses.append(loss.item())
    return losses, parts


@pytest.mark.slow
def test_faster_rcnn_loss_falls():
    torch.manual_seed(0)
    detector = fasterrcnn_fpn('fishnet99', num_classes=2, min_size=64, max_size=64)
    assert isinstance(detector, FasterRCNN)
    assert detector.transform.image_mean == list(timm.create_model('fishnet99').pretrained_cfg['mean'])
    images, targets = _shapes_batch()
    losses, _ = _train(detector, images, [{k: v for k, v in t.items() if k != 'masks'} for t in targets], 8)
    assert sum(losses[-2:]) / 2 < 0.5 * losses[0], losses
    detector.eval()
    with torch.no_grad():
        predictions = detector(images)
    assert set(predictions[0]) == {'boxes', 'labels', 'scores'}


@pytest.mark.slow
def test_mask_rcnn_trains_and_predicts_masks():
    torch.manual_seed(0)
    detector = maskrcnn_fpn('mobilenetv2_dual_050', num_classes=2, min_size=64, max_size=64)
    assert isinstance(detector, MaskRCNN)
    images, targets = _shapes_batch()
    losses, parts = _train(detector, images, targets, 5)
    assert 'loss_mask' in parts and losses[-1] < 0.5 * losses[0], losses
    detector.eval()
    with torch.no_grad():
        prediction = detector(images[:1])[0]
    assert prediction['masks'].shape[1:] == (1, 64, 64)


def test_hf_hub_repo_as_backbone(tmp_path):
    """An hf-hub: repo (from the local cache, offline) is a backbone too, with its weights; a fresh interpreter
    because huggingface_hub reads its cache location once."""
    classifier = timm.create_model('fishnet_s64', num_classes=4).eval()
    torch.nn.init.normal_(classifier.stages[8].blocks[0].conv2.weight)
    revision = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hub' / 'models--someone--fishnet-shapes'
    save_pretrained(classifier, repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    torch.save(classifier.stages[8].blocks[0].conv2.weight, tmp_path / 'expected.pt')
    code = textwrap.dedent(f'''
        import torch
        from fishzoo.detection import backbone_with_fpn
        backbone = backbone_with_fpn('hf-hub:someone/fishnet-shapes')
        expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
        assert torch.equal(backbone.body.model.stages[8].blocks[0].conv2.weight, expected)
        assert not backbone.body.model.stem.conv1.conv.weight.requires_grad  # trained weights: stem frozen
        assert list(backbone(torch.randn(1, 3, 64, 64))) == ['0', '1', '2', '3', 'pool']
    ''')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'hub')}
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize('num_classes', [0, 1, -3, 2.5])
def test_a_detector_needs_the_background_and_a_class(num_classes):
    """fasterrcnn_fpn(..., num_classes=0) built a detector that could never detect anything."""
    with pytest.raises(ConfigError, match='num_classes counts the background too: 2 or more'):
        fasterrcnn_fpn('fishnet_s64', num_classes)
