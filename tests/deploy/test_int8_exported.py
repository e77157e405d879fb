"""int8 exports (OpenVINO + NNCF, onnxruntime QDQ), the accuracy check and search, and running exported
folders with ``fishzoo predict --backend``: on a tiny FishNet and images the tests write."""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.helpers.models import ColourNet, colour_data, set_bn_statistics

pytestmark = pytest.mark.deploy


LABELS = ['cat', 'dog', 'fish']
SIZE = 32


def _model():
    torch.manual_seed(0)
    model = timm.create_model('fishnet_s64', num_classes=3, pretrained_cfg_overlay=dict(
        input_size=(3, SIZE, SIZE), crop_pct=1.0, label_names=LABELS)).eval()
    return set_bn_statistics(model)  # the exports fold them


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A hub folder, 48 images, and class folders + a CSV labelled with the fp32 model's own top-1 (so fp32
    scores 100% and every int8 mistake is a disagreement)."""
    root = tmp_path_factory.mktemp('int8')
    model = _model()
    folder = save_pretrained(model, root / 'model', label_names=LABELS)
    rng = np.random.default_rng(0)
    images = root / 'images'
    images.mkdir()
    paths = []
    for i in range(48):
        pixels = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        paths.append(images / f'{i:02d}.png')
        Image.fromarray(pixels).save(paths[-1])
    results = predict(str(folder), [str(p) for p in paths], top_k=1)
    val = root / 'val'
    rows = ['image,labels']
    for path, result in zip(paths, results):
        label = result['labels'][0][0]
        (val / label).mkdir(parents=True, exist_ok=True)
        (val / label / path.name).write_bytes(path.read_bytes())
        rows.append(f'images/{path.name},{label}')
    (root / 'val.csv').write_text('\n'.join(rows) + '\n')
    return dict(root=root, folder=folder, images=images, val=val, csv=root / 'val.csv', model=model, paths=paths)


@pytest.mark.parametrize('fmt, model_file', [('onnx', 'model.onnx'), ('openvino', 'openvino_model.xml')])
@pytest.mark.slow
def test_int8_export_checked_on_held_out_images(trained, fmt, model_file, capsys):
    out = trained['root'] / f'{fmt}-int8'
    calib = trained['images'] if fmt == 'onnx' else trained['csv']  # a folder, or a CSV's image column
    code = main(['export', str(trained['folder']), '--format', fmt, '--int8', '--calib-data', str(calib),
                 '--val-data', str(trained['val']), '--max-drop', '100', '-o', str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / model_file).is_file() and not (out / 'model.safetensors').exists()
    config = json.loads((out / 'config.json').read_text())
    record = config['export']
    assert config['label_names'] == LABELS and 'weights_sha256' not in config
    assert record['format'] == fmt and record['precision'] == 'int8' and record['file'] == model_file
    assert record['calibration']['images'] == 48
    acc = record['accuracy']
    assert acc['metric'] == 'top1' and acc['images'] == 48 and acc['fp32'] == 100.0
    assert acc['int8'] == pytest.approx(acc['agreement'])  # labels are fp32's decisions
    assert 0 < acc['quantized_layers'] <= acc['total_layers']
    assert f"fp32 100.00, int8 {acc['int8']:.2f}" in printed
    card = (out / 'README.md').read_text()
    assert '| top-1 (%) | 100.00 |' in card and f'--backend {fmt}' in card
    # the folder runs with the source model's preprocessing and labels, as the torch folder does
    exported = predict(str(out), [str(p) for p in trained['paths'][:8]], top_k=1, backend=fmt)
    reference = predict(str(trained['folder']), [str(p) for p in trained['paths'][:8]], top_k=1)
    assert [r['image'] for r in exported] == [r['image'] for r in reference]
    agree = sum(e['labels'][0][0] == r['labels'][0][0] for e, r in zip(exported, reference))
    assert agree >= 6
    assert predict(str(out), [str(trained['paths'][0])], top_k=3)[0]['labels'][0][0] in LABELS  # auto-detected


def test_fp32_openvino_export_with_precision_fp32_is_exact(trained, capsys):
    out = trained['root'] / 'openvino-fp32'
    assert main(['export', str(trained['folder']), '--format', 'openvino', '-o', str(out), '--precision', 'f32']) == 0
    printed = capsys.readouterr().out
    assert printed.count('openvino (f32) vs PyTorch at') == 3 and 'runs in f32' in printed
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['precision'] == 'fp32' and record['inference_precision'] == 'f32' and record['checked_in'] == 'f32'
    assert max(record['max_rel_diff_fp32'].values()) < 1e-4
    assert 'run in f32, matches PyTorch within' in (out / 'README.md').read_text()
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
    assert record['inference_precision'] == 'default' and "OpenVINO's default precision" in printed
    from fishzoo.deploy.export import TOLERANCE
    assert record['checked_in'] in ('bf16', 'f32') and printed.count(f"openvino ({record['checked_in']})") == 3
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


@pytest.mark.slow
def test_multilabel_export_is_judged_by_micro_f1_at_its_thresholds(trained, tmp_path):
    from fishzoo.data import eval_transform
    from fishzoo.images import load_image
    model = trained['model']
    transform = eval_transform(model.pretrained_cfg)
    with torch.no_grad():
        probs = model(torch.stack([transform(load_image(p)) for p in trained['paths']])).sigmoid()
    # half the images carry each label; the threshold sits between two images, none on it
    thresholds = probs.sort(0).values[23:25].mean(0).tolist()
    folder = save_pretrained(model, tmp_path / 'multilabel', label_names=LABELS,
                             extra_config=dict(multilabel=True, thresholds=thresholds))
    rows = ['image,labels'] + [f'images/{p.name},'
                               + ' '.join(LABELS[c] for c in range(3) if probs[i, c] >= thresholds[c])
                               for i, p in enumerate(trained['paths'])]
    csv = trained['root'] / 'multilabel.csv'
    csv.write_text('\n'.join(rows) + '\n')
    out = tmp_path / 'exported'
    assert main(['export', str(folder), '--format', 'onnx', '--int8', '--calib-data', str(trained['images']),
                 '--val-data', str(csv), '--max-drop', '100', '-o', str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    acc = config['export']['accuracy']
    assert acc['metric'] == 'f1_micro' and acc['fp32'] == pytest.approx(100.0)
    assert config['thresholds'] == thresholds and 'micro-F1 (%)' in (out / 'README.md').read_text()
    picked = predict(str(out), [str(trained['paths'][0])], backend='onnx')[0]['labels']
    assert all(prob >= thresholds[LABELS.index(label)] for label, prob in picked)  # the folder's thresholds


def test_accuracy_aware_search_keeps_sensitive_layers_in_fp32(tmp_path):
    from fishzoo.deploy.export import export_onnx
    from fishzoo.deploy.int8_exported import onnx_int8
    from fishzoo.deploy.runtime import onnx_runner
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


def test_openvino_accuracy_control_restores_the_crushed_layers(tmp_path):
    import openvino as ov

    from fishzoo.deploy.export import export_openvino
    from fishzoo.deploy.int8_exported import openvino_int8
    from fishzoo.deploy.runtime import openvino_runner
    model = ColourNet().eval()
    _, _, data = colour_data()
    ov.save_model(export_openvino(model, (3, 8, 8)), str(tmp_path / 'fp32.xml'))
    fp32 = openvino_runner(tmp_path / 'fp32.xml', precision='f32')
    _, plain = openvino_int8(ov.Core().read_model(str(tmp_path / 'fp32.xml')), data, data, fp32, max_drop=100)
    assert plain.drop > 20  # NNCF's defaults lose the colours too
    _, restored = openvino_int8(ov.Core().read_model(str(tmp_path / 'fp32.xml')), data, data, fp32, max_drop=0.5)
    assert restored.drop <= 0.5 and restored.agreement >= 99
    assert restored.quantized_layers < plain.quantized_layers


def test_mistakes_get_one_sentence(trained, tmp_path, capsys):
    folder = str(trained['folder'])
    cases = [
        (['--int8'], '--int8 needs --calib-data'),
        (['--int8', '--calib-data', str(tmp_path / 'none')], 'expected a folder of images, a CSV'),
        (['--val-data', str(trained['val'])], '--val-data checks an int8 export'),
        (['--int8', '--calib-data', str(trained['images']), '--max-drop', '-1'], '--max-drop is in points'),
        (['-o', str(tmp_path / 'x.onnx'), '--int8'], 'a .onnx file holds an fp32 ONNX export'),
    ]
    for extra, message in cases:
        argv = ['export', folder, '--format', 'onnx', *extra]
        if '-o' not in extra:
            argv += ['-o', str(tmp_path / 'out')]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count('\n') == 1, err
    unreadable = tmp_path / 'broken'
    unreadable.mkdir()
    for i in range(3):
        (unreadable / f'{i}.jpg').write_bytes(b'not an image')
    assert main(['export', folder, '--int8', '--calib-data', str(unreadable), '-o', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'none of its 3 images could be read' in err and err.count('\n') == 1
    other = tmp_path / 'other'
    (other / 'horse').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(other / 'horse' / 'a.png')
    assert main(['export', folder, '--int8', '--calib-data', str(trained['images']), '--val-data', str(other),
                 '-o', str(tmp_path / 'out')]) == 2
    assert 'class folders the model has no label for: horse' in capsys.readouterr().err


def test_predict_backend_mistakes(trained, tmp_path, capsys):
    image = str(trained['paths'][0])
    assert main(['predict', str(trained['folder']), image, '--backend', 'onnx']) == 2
    assert 'no model.onnx for --backend onnx' in capsys.readouterr().err
    assert main(['predict', 'fishnet_s64', image, '--backend', 'openvino']) == 2
    assert 'runs an exported folder' in capsys.readouterr().err


def test_a_run_folder_calibrates_and_validates_on_its_own_split(trained_run, image_dataset, tmp_path, capsys):
    """--val-data could not use the run's held-out images (only digits could): a run writes its split, and
    --calib-data / --val-data RUN_FOLDER read its training and validation images."""
    import csv as csv_module

    from fishzoo.images import image_files
    rows = list(csv_module.DictReader((trained_run / 'val_images.csv').open()))
    assert sorted(Path(r['image']).relative_to(image_dataset / 'val').as_posix() for r in rows) == \
        sorted(p.relative_to(image_dataset / 'val').as_posix() for p in image_files(image_dataset / 'val'))
    assert {r['label'] for r in rows} == {'cat', 'dog', 'fish'}
    out = tmp_path / 'ov'
    assert main(['export', str(trained_run), '--format', 'openvino', '--int8', '--calib-data', str(trained_run),
                 '--val-data', str(trained_run), '-o', str(out)]) == 0
    record = json.loads((out / 'config.json').read_text())['export']
    assert record['calibration']['images'] == 24 and record['accuracy']['images'] == 12
    assert record['accuracy']['source'] == str(trained_run)
