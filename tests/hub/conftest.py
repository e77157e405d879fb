"""What the hub tests share: a small grayscale hub folder saved with card facts."""
import pytest
import timm

from fishzoo.hub import save_pretrained


@pytest.fixture
def folder(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3, in_chans=1, downsample='avg2').eval()
    save_pretrained(model, tmp_path / 'out', label_names=['zero', 'one', 'two'], dataset=('digits', 'Digits'),
                    metrics={'top1': 97.5}, tags=('digits',))
    return model, tmp_path / 'out'
