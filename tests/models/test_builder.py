"""fishzoo.models._builder: pretrained weights from files other people made, refused in one sentence."""
import pytest
import timm
import torch

from fishzoo.errors import CheckpointError
from tests.helpers.hostile import evil_checkpoint


def test_payload_via_file_overlay(tmp_path, marker):
    path = evil_checkpoint(tmp_path / 'evil.tar', marker)
    with pytest.raises(CheckpointError, match=f'{path}: cannot be loaded .*weights_only'):
        timm.create_model('fishnet99', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_other_architecture(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(err.value)
    assert message.startswith(f'{path}: the checkpoint does not fit fishnet_s64')
    assert 'missing keys (stem.conv1.conv.weight' in message and 'unexpected keys (conv1.weight' in message
    assert len(message) < 600 and '\n' not in message
    mobilenet = tmp_path / 'mobilenet.pth'
    torch.save(timm.create_model('mobilenetv2_dual_050').state_dict(), mobilenet)
    with pytest.raises(CheckpointError, match='does not fit fishnet_s64'):
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=dict(file=str(mobilenet)))
    with pytest.raises(CheckpointError, match='does not fit mobilenetv2_dual_100'):
        timm.create_model('mobilenetv2_dual_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_other_number_of_classes(tmp_path):
    path = tmp_path / 'five.pth'
    five = timm.create_model('fishnet_s64', num_classes=5)
    torch.save(five.state_dict(), path)
    overlay = dict(file=str(path))
    # not asked for: an error naming the head
    with pytest.raises(CheckpointError, match=r'shape mismatches .*fc.weight \[5, 264\] vs \[200, 264\].*num_classes'):
        timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=overlay)
    # asked for: the head is re-initialised, the rest loaded
    seven = timm.create_model('fishnet_s64', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=7)
    assert seven.fc.out_features == 7
    assert torch.equal(seven.stem.conv1.conv.weight, five.stem.conv1.conv.weight)
