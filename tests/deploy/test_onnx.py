"""ONNX: the file (dynamic batch and spatial size, opset >= 17, onnxruntime agrees with PyTorch within 1e-4), its int8
with the accuracy-aware search, and the single-file export."""
import json

import onnx
import pytest
import timm
import torch

from fishzoo.cli import main
from fishzoo.deploy.onnx import export_onnx, verify_onnx
from fishzoo.deploy.onnx import session as onnx_session
from fishzoo.deploy.runner import INPUT_NAME, OUTPUT_NAME
from fishzoo.errors import ExportError
from tests.helpers.models import ColourNet, colour_data, set_bn_statistics

pytestmark = pytest.mark.deploy


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    model = set_bn_statistics(timm.create_model('fishnet_s64', num_classes=7).eval())  # the export folds them
    path = export_onnx(model, tmp_path_factory.mktemp('onnx') / 'fishnet_s64.onnx', (3, 64, 64))
    return model, path


def test_dynamic_axes_and_opset(exported):
    _, path = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert dims[1].dim_value == 3
    assert out.type.tensor_type.shape.dim[0].dim_param == 'batch'
    meta = {e.key: json.loads(e.value) for e in graph.metadata_props}
    assert meta['architecture'] == 'fishnet_s64' and meta['num_classes'] == 7
    assert meta['mean'] == [0.485, 0.456, 0.406] and meta['input_size'] == [3, 64, 64]


@pytest.mark.parametrize('shape', [(1, 3, 64, 64), (5, 3, 96, 64), (2, 3, 65, 97), (1, 3, 33, 47)])
def test_onnxruntime_matches_pytorch(exported, shape):
    model, path = exported
    errors = verify_onnx(path, model, [shape])
    assert list(errors.values())[0] <= 1e-4


def test_verify_catches_a_different_model(exported):
    model, path = exported
    other = timm.create_model('fishnet_s64', num_classes=7).eval()
    with pytest.raises(ExportError, match='onnxruntime differs from PyTorch by .* more than 0.0001'):
        verify_onnx(path, other, [(1, 3, 64, 64)])


def test_onnx_session_threads(exported):
    _, path = exported
    session = onnx_session(path, threads=1)
    assert session.get_inputs()[0].name == INPUT_NAME


@pytest.mark.slow
def test_cli_export(tmp_path, capsys):
    out = tmp_path / 'mnv2.onnx'
    assert main(['export', 'mobilenetv2_dual_050', '--format', 'onnx', '-o', str(out), '--img-size', '64']) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and 'dynamic batch and spatial size' in printed
    assert printed.count('onnxruntime vs PyTorch at') == 3


def test_cli_export_mistakes(tmp_path, capsys):
    assert main(['export', 'fishnet_s64', '--opset', '13', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert '--opset must be 17 or later, got 13' in capsys.readouterr().err
    # was recorded as 99 in the folder's config.json, though the file held opset 18
    assert main(['export', 'fishnet_s64', '--opset', '99', '-o', str(tmp_path / 'o'), '--img-size', '32']) == 2
    assert "--opset 99: torch's exporter wrote opset 18 instead" in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()
    assert main(['export', 'no_such_model', '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'no_such_model' in capsys.readouterr().err
    assert main(['export', 'fishnet_s64', '--img-size', '1', '2', '3']) == 2
    assert '--img-size takes one or two positive numbers' in capsys.readouterr().err
    for size in ('1', '100000'):  # a raw exporter message; a 240 GB allocation and an empty output folder
        assert main(['export', 'fishnet_s64', '--img-size', size, '-o', str(tmp_path / 'x')]) == 2
        assert f'--img-size {size}: fishnet_s64 exports at sides from 8 to 4096 px' in capsys.readouterr().err
        assert not (tmp_path / 'x').exists()


def test_accuracy_aware_search_keeps_sensitive_layers_in_fp32(tmp_path):
    from fishzoo.deploy.onnx import export_onnx, onnx_int8
    from fishzoo.deploy.onnx import runner as onnx_runner
    model = ColourNet().eval()
    images, labels, data = colour_data()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).all()
    src = export_onnx(model, tmp_path / 'colour.onnx', (3, 8, 8))
    fp32 = onnx_runner(src)
    plain = onnx_int8(src, tmp_path / 'plain.onnx', data, data, fp32, max_drop=100)
    assert plain.drop > 20 and not plain.layers_in_fp32  # every activation in int8: the colours are lost
    searched = onnx_int8(src, tmp_path / 'searched.onnx', data, data, fp32, max_drop=0.5)
    assert searched.drop <= 0.5 and searched.agreement >= 99
    assert searched.layers_in_fp32 and len(searched.layers_in_fp32) < searched.total_layers
    assert searched.quantized_layers == searched.total_layers - len(searched.layers_in_fp32)
