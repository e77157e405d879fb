"""PT2E int8 with an accuracy-aware search: fishzoo.quantize (x86) and the ExecuTorch export (XNNPACK), on a
network int8 breaks in one known place."""
import pytest
import torch

import fishzoo
from fishzoo.deploy import pt2e
from fishzoo.errors import FishzooError, QuantizeError
from tests.helpers.models import ColourNet, colour_data

pytestmark = pytest.mark.deploy


def test_quantize_keeps_the_crushed_layers_in_fp32():
    model = ColourNet().eval()
    images, labels, data = colour_data()
    plain = fishzoo.quantize(model, images, compile=False, val_data=data, max_drop=100)
    assert plain.accuracy.drop > 20 and not plain.kept_in_fp32  # one int8 scale for the 1000-channel
    searched = fishzoo.quantize(model, images, compile=False, val_data=data, max_drop=0.5)
    assert searched.accuracy.drop <= 0.5 and searched.accuracy.agreement >= 99
    # the reader of the damaged activation stays fp32 (its writer, a ReLU in forward, belongs to no module);
    # the head stays int8
    assert 'conv2' in searched.accuracy.layers_in_fp32 and 'head' not in searched.kept_in_fp32
    assert searched.report['int8'].get('linear') == 1 and searched.report['fp32'].get('conv2d')
    with torch.no_grad():
        assert (searched(images).argmax(1) == labels).float().mean() >= 0.99
    assert fishzoo.quantize(model, images, compile=False).accuracy is None  # no validation: no measurement


def test_quantize_mistakes_get_one_sentence(tmp_path):
    model, (images, _, data) = ColourNet().eval(), colour_data()
    with pytest.raises(QuantizeError, match='val_data must be labelled images'):
        fishzoo.quantize(model, images, compile=False, val_data=images)
    with pytest.raises(QuantizeError, match='max_drop is in points between 0 and 100, got -1'):
        fishzoo.quantize(model, images, compile=False, val_data=data, max_drop=-1)
    with pytest.raises(QuantizeError, match=f'val_data {tmp_path}/missing: expected a class-folder tree'):
        fishzoo.quantize(model, images, compile=False, val_data=str(tmp_path / 'missing'))
    with pytest.raises(FishzooError, match='no images found in class sub-folders'):
        fishzoo.quantize(model, images, compile=False, val_data=tmp_path)


def test_damage_ranks_the_wide_activation_first():
    model = ColourNet().eval()
    images, _, _ = colour_data()
    from fishzoo.deploy.int8_torch import _x86_quantizer
    captured = pt2e.capture(model, images[:2], dynamic=True)
    converted = pt2e.convert(captured, _x86_quantizer(model)(()), [images])
    ranked = pt2e.activation_damage(converted, [images])
    assert 'conv2' in ranked[0][1] and ranked[0][0] < ranked[-1][0]


@pytest.mark.slow
def test_executorch_int8_search_measures_the_program(tmp_path):
    from fishzoo.deploy.executorch import RUNTIME
    from fishzoo.deploy.executorch import runner as executorch_runner
    model = ColourNet().eval()
    images, labels, data = colour_data()
    outside, plain = RUNTIME.export(model, tmp_path / 'plain.pte', (3, 8, 8), data, data, max_drop=100)
    assert 'aten.convolution.default' not in outside and plain.drop > 20
    _, searched = RUNTIME.export(model, tmp_path / 'm.pte', (3, 8, 8), data, data, max_drop=0.5)
    assert searched.drop <= 0.5 and 'head' not in searched.layers_in_fp32
    logits = executorch_runner(tmp_path / 'm.pte')(images.numpy())  # the record is the written program's
    assert (torch.from_numpy(logits).argmax(1) == labels).float().mean() * 100 == pytest.approx(searched.int8)
