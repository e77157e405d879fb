"""optimize_for_inference's runtime: OpenVINO where it measures faster on this machine, torch elsewhere, the
figures cached per machine and model; tensors in and out either way."""
import json
import logging

import pytest
import timm
import torch

import fishzoo
from fishzoo.deploy import backend_choice
from fishzoo.deploy.fast_path import OpenVinoInference, select_fast_path
from fishzoo.errors import ConfigError, ExportError
from tests.helpers.models import set_bn_statistics

pytestmark = pytest.mark.deploy
pytest.importorskip('openvino')


def _model(num_classes=10):
    return set_bn_statistics(timm.create_model('fishnet_s64', num_classes=num_classes).eval(), affine=True)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_openvino_backend_takes_and_gives_tensors_at_any_size():
    model = _model()
    fast = fishzoo.optimize_for_inference(model, backend='openvino', precision='fp32', retain_memory=False)
    assert isinstance(fast, OpenVinoInference) and fast.backend == 'openvino' and fast.precision == 'fp32'
    assert 'backend=openvino' in repr(fast)
    for shape in ((1, 3, 64, 64), (3, 3, 96, 80)):
        x = torch.randn(*shape)
        out = fast(x)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (shape[0], 10)
        with torch.no_grad():
            assert _rel(out, model(x)) <= 1e-4
        assert _rel(fast(x.contiguous(memory_format=torch.channels_last)), out) <= 1e-6


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measuring on (the suite turns probes off), a fresh cache, a model that compiles (nothing is compiled:
    the comparison is replaced)."""
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'on')
    monkeypatch.setenv('FISHZOO_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr('fishzoo.deploy.fast_path._cpu_compiler_available', lambda: True)
    return tmp_path / 'cache' / backend_choice.CACHE_FILE


def test_auto_keeps_openvino_where_it_measured_faster_and_remembers(measuring, monkeypatch, caplog):
    monkeypatch.setattr(backend_choice, 'compare',
                        lambda torch_run, openvino_run, work: dict(torch_img_s=10.0, openvino_img_s=20.0,
                                                                   torch_start_s=30.0))
    model = _model()
    with caplog.at_level(logging.INFO, logger='fishzoo.deploy.fast_path'):
        fast = fishzoo.optimize_for_inference(model, precision='fp32', retain_memory=False)
    assert fast.backend == 'openvino'
    assert 'runtime: openvino (measured at 8x3x64x64: torch 10.0 img/s, OpenVINO (fp32) 20.0 img/s' in caplog.text
    cached = json.loads(measuring.read_text())
    assert [v['backend'] for v in cached.values()] == ['openvino']
    figures = backend_choice.cached_figures(backend_choice.ProbeWork(model, (3, 64, 64), batch=8), 'fp32')
    assert figures['torch_start_s'] == 30.0 and 0 < figures['openvino_start_s'] < 60  # what predict's rule reads
    assert backend_choice.cached_figures(backend_choice.ProbeWork(model, (3, 64, 64), batch=16), 'fp32') is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel(fast(x), model(x)) <= 1e-4

    def not_again(*args):
        raise AssertionError('measured again')
    monkeypatch.setattr(backend_choice, 'compare', not_again)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='fishzoo.deploy.fast_path'):
        again = fishzoo.optimize_for_inference(model, precision='fp32', retain_memory=False)
    assert again.backend == 'openvino'
    assert 'runtime: openvino (cached: torch 10.0 img/s, OpenVINO 20.0 img/s' in caplog.text


def test_auto_keeps_torch_unless_openvino_wins_by_the_margin(measuring, monkeypatch):
    monkeypatch.setattr(backend_choice, 'compare',
                        lambda torch_run, openvino_run, work: dict(torch_img_s=20.0, openvino_img_s=20.8,
                                                                   torch_start_s=30.0))
    fast = fishzoo.optimize_for_inference(_model(), precision='fp32', retain_memory=False)
    assert fast.backend == 'torch' and fast.compiled
    assert [v['backend'] for v in json.loads(measuring.read_text()).values()] == ['torch']


def test_a_model_openvino_cannot_run_stays_on_torch_and_is_tried_again(measuring, monkeypatch, caplog):
    def cannot(*args):
        raise ExportError('OpenVINO export failed (an op it does not know)')
    monkeypatch.setattr('fishzoo.deploy.backend_choice.openvino_run', cannot)
    with caplog.at_level(logging.INFO, logger='fishzoo.deploy.fast_path'):
        fast = fishzoo.optimize_for_inference(_model(), precision='fp32', retain_memory=False)
    assert fast.backend == 'torch'
    assert 'runtime: torch (OpenVINO could not run it (OpenVINO export failed (an op it does not know)))' in caplog.text
    assert not measuring.exists()


def test_no_measuring_without_openvino_or_with_probes_off(measuring, monkeypatch):
    def must_not(*args):
        raise AssertionError('measured')
    monkeypatch.setattr(backend_choice, 'compare', must_not)
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'off')
    assert fishzoo.optimize_for_inference(_model(), precision='fp32', retain_memory=False).backend == 'torch'
    monkeypatch.setenv('FISHZOO_PRECISION_PROBE', 'on')
    monkeypatch.setattr(backend_choice, 'openvino_installed', lambda: False)
    assert fishzoo.optimize_for_inference(_model(), precision='fp32', retain_memory=False).backend == 'torch'
    # nothing to compare against an eager model either
    assert fishzoo.optimize_for_inference(_model(), precision='fp32', compile=False,
                                          retain_memory=False).backend == 'torch'


def test_backend_mistakes_get_one_sentence():
    with pytest.raises(ConfigError, match="backend must be one of auto, torch, openvino, got 'onnx'"):
        fishzoo.optimize_for_inference(_model(), backend='onnx')


def test_compare_times_both_interleaved():
    calls = []
    work = backend_choice.ProbeWork(torch.nn.Identity(), (3, 8, 8), batch=4)
    measured = backend_choice.compare(lambda x: calls.append('torch'), lambda x: calls.append('openvino'), work,
                                      rounds=2, seconds=0.01)
    assert measured['torch_img_s'] > 0 and measured['openvino_img_s'] > 0 and measured['torch_start_s'] >= 0
    assert calls[:4] == ['torch', 'torch', 'openvino', 'openvino']  # warm-up (torch compiles) untimed
    assert 'openvino' in calls[4:] and calls[-1] == 'openvino'
    assert select_fast_path('cpu').device == 'cpu'
