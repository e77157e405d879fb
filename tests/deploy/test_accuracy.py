"""fishzoo.deploy.accuracy: a drop judged no finer than the validation set resolves."""
import logging

import pytest

from fishzoo.deploy.accuracy import Int8Accuracy, keep_in_fp32_until_it_fits, resolution_note


def accuracy(images, fp32, int8, max_drop=0.5):
    return Int8Accuracy('top1', fp32=fp32, int8=int8, agreement=99.0, images=images, max_drop=max_drop)


def test_one_image_of_78_is_judged_at_one_image():
    """A user's 6-class run: 80.77 -> 79.49 on 78 images is one image; --max-drop 0.5 could only be met by
    changing no decision, and the search kept 63 of 64 layers out of int8 chasing it."""
    one_image = accuracy(78, 80.77, 79.49)
    assert one_image.resolution == pytest.approx(1.282, abs=1e-3) and one_image.allowed == one_image.resolution
    assert one_image.fits
    assert not accuracy(78, 80.77, 78.21).fits  # two images
    assert 'on 78 validation images one image is 1.28 points' in resolution_note(one_image)
    assert one_image.as_dict()['allowed'] == pytest.approx(1.282, abs=1e-3)


def test_a_large_set_is_judged_at_max_drop():
    large = accuracy(10_000, 80.0, 79.4)
    assert large.allowed == 0.5 and not large.fits and resolution_note(large) == ''
    assert accuracy(10_000, 80.0, 79.6).fits


def test_the_search_stops_at_what_the_set_resolves(caplog):
    calls = []

    def quantize_without(layers):
        calls.append(layers)
        return 'model', 'runner'

    import fishzoo.deploy.accuracy as module
    measured = iter([accuracy(78, 80.77, 79.49)])
    original = module.measure
    module.measure = lambda *a, **k: next(measured)
    try:
        with caplog.at_level(logging.WARNING):
            result = keep_in_fp32_until_it_fits(('model', 'runner'), lambda: [['a'], ['b']], quantize_without,
                                                'fp32', None)
    finally:
        module.measure = original
    assert result.excluded == [] and calls == []  # no layer kept out for a drop of one image
    assert 'judged at one image' in caplog.text
