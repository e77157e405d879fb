"""OpenVINO folders: the precision they run in, int8 with NNCF accuracy control, failures in one sentence."""
import json
import shutil

import numpy as np
import pytest
import timm
from PIL import Image

from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.helpers.hostile import one_line
from tests.helpers.models import ColourNet, colour_data

pytestmark = pytest.mark.deploy


def test_fp32_openvino_export_with_precision_fp32_is_exact(trained, capsys):
    out = trained['root'] / 'openvino-fp32'
    assert main(['export', str(trained['folder']), '--format', 'openvino', '-o', str(out), '--precision', 'f32']) == 0
    printed = capsys.readouterr().out
    assert printed.count('openvino (fp32) vs PyTorch at') == 3 and 'runs in fp32' in printed
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['weights'] == 'fp32' and record['compute'] == 'fp32' and record['checked_in'] == 'fp32'
    assert max(record['max_rel_diff_fp32'].values()) < 1e-4
    assert 'run in fp32, matches PyTorch within' in (out / 'README.md').read_text()
    paths = [str(p) for p in trained['paths'][:6]]
    exported = predict(str(out), paths, top_k=3, backend='openvino')
    reference = predict(str(trained['folder']), paths, top_k=3, precision='fp32')
    for e, r in zip(exported, reference):
        assert [label for label, _ in e['labels']] == [label for label, _ in r['labels']]
        assert np.allclose([p for _, p in e['labels']], [p for _, p in r['labels']], atol=1e-4)


def test_openvino_export_runs_in_openvinos_default_precision(trained, capsys):
    """By default the folder runs as OpenVINO would with no options (bf16 on CPUs with bf16 units), checked at
    that precision's tolerance; predict --precision fp32 still gets the exact numbers out of it."""
    out = trained['root'] / 'openvino-default'
    assert main(['export', str(trained['folder']), '--format', 'openvino', '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['compute'] == 'runtime default' and "OpenVINO's default precision" in printed
    from fishzoo.deploy.openvino import TOLERANCE
    assert record['checked_in'] in ('bf16', 'fp32') and printed.count(f"openvino ({record['checked_in']})") == 3
    assert max(record['max_rel_diff_fp32'].values()) <= TOLERANCE[record['checked_in']]
    assert "OpenVINO's default precision for the CPU it runs on" in (out / 'README.md').read_text()
    paths = [str(p) for p in trained['paths'][:6]]
    reference = predict(str(trained['folder']), paths, top_k=3, precision='fp32')
    default = predict(str(out), paths, top_k=3)
    exact = predict(str(out), paths, top_k=3, precision='fp32')
    assert [e['labels'][0][0] for e in default] == [r['labels'][0][0] for r in reference]
    for e, r in zip(exact, reference):
        assert np.allclose([p for _, p in e['labels']], [p for _, p in r['labels']], atol=1e-4)
    if record['checked_in'] == 'bf16':  # the default really ran in 16 bits
        assert not all(np.allclose([p for _, p in d['labels']], [p for _, p in r['labels']], atol=1e-5)
                       for d, r in zip(default, reference))


def test_openvino_accuracy_control_restores_the_crushed_layers(tmp_path):
    import openvino as ov

    from fishzoo.deploy.openvino import export_openvino, openvino_int8
    from fishzoo.deploy.openvino import runner as openvino_runner
    from fishzoo.precision import for_runtime
    model = ColourNet().eval()
    _, _, data = colour_data()
    ov.save_model(export_openvino(model, (3, 8, 8)), str(tmp_path / 'fp32.xml'))
    fp32 = openvino_runner(tmp_path / 'fp32.xml', for_runtime('fp32', 'openvino'))
    _, plain = openvino_int8(ov.Core().read_model(str(tmp_path / 'fp32.xml')), data, data, fp32, max_drop=100)
    assert plain.drop > 20  # NNCF's defaults lose the colours too
    _, restored = openvino_int8(ov.Core().read_model(str(tmp_path / 'fp32.xml')), data, data, fp32, max_drop=0.5)
    assert restored.drop <= 0.5 and restored.agreement >= 99
    assert restored.quantized_layers < plain.quantized_layers


def test_openvino_failures_say_why(tmp_path, capsys):
    """OpenVINO's messages start with the C++ file that threw; the sentence was cut to that line."""
    folder = tmp_path / 'ov'
    folder.mkdir()
    shutil.copyfile(save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'm') / 'config.json',
                    folder / 'config.json')
    (folder / 'openvino_model.xml').write_text('<net>not a model')
    (folder / 'openvino_model.bin').write_bytes(b'')
    image = tmp_path / 'x.png'
    Image.new('RGB', (40, 40)).save(image)
    assert main(['predict', str(folder), str(image), '--backend', 'openvino']) == 2
    line = one_line(capsys, 'OpenVINO could not load it (Unable to read the model')
    assert 'Exception from src' not in line


def test_a_model_without_outputs_is_one_sentence(tmp_path, capsys):
    """An openvino_model.xml whose graph has no output gave a traceback from OpenVINO."""
    import openvino as ov
    import openvino.opset13 as ops
    folder = tmp_path / 'ov'
    folder.mkdir()
    shutil.copyfile(save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'm') / 'config.json',
                    folder / 'config.json')
    x = ops.parameter([1, 3, 32, 32], ov.Type.f32, name='pixel_values')
    ov.save_model(ov.Model([], [x], 'no outputs'), str(folder / 'openvino_model.xml'))
    Image.new('RGB', (40, 40)).save(tmp_path / 'x.png')
    assert main(['predict', str(folder), str(tmp_path / 'x.png'), '--backend', 'openvino']) == 2
    one_line(capsys, 'openvino_model.xml: has 0 outputs; a classifier exported by fishzoo has one')
