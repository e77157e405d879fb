"""fishzoo export: folders for every format, int8 checked on held-out images, mistakes in one sentence, and the folder
written whole."""
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import fishzoo
from fishzoo.cli import main
from fishzoo.deploy.calibration import LabelledImages
from fishzoo.errors import ExportError
from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.deploy.conftest import LABELS
from tests.helpers.hostile import one_line

pytestmark = pytest.mark.deploy


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
    assert record['format'] == fmt and record['weights'] == 'int8' and record['file'] == model_file
    assert record['calibration']['images'] == 48
    acc = record['accuracy']
    assert acc['metric'] == 'top1' and acc['images'] == 48 and acc['fp32'] == 100.0
    assert acc['int8'] == pytest.approx(acc['agreement'])  # labels are fp32's decisions
    assert 0 < acc['quantized_layers'] <= acc['total_layers']
    assert f"{acc['reference']} 100.00, int8 {acc['int8']:.2f}" in printed  # the float model as the folder runs
    card = (out / 'README.md').read_text()
    assert '| top-1 (%) | 100.00 |' in card and f'--backend {fmt}' in card
    # the folder runs with the source model's preprocessing and labels, as the torch folder does
    exported = predict(str(out), [str(p) for p in trained['paths'][:8]], top_k=1, backend=fmt)
    reference = predict(str(trained['folder']), [str(p) for p in trained['paths'][:8]], top_k=1)
    assert [r['image'] for r in exported] == [r['image'] for r in reference]
    agree = sum(e['labels'][0][0] == r['labels'][0][0] for e, r in zip(exported, reference))
    assert agree >= 6
    assert predict(str(out), [str(trained['paths'][0])], top_k=3)[0]['labels'][0][0] in LABELS  # auto-detected


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
    # each long step says when it starts (an int8 export printed nothing for minutes)
    printed = capsys.readouterr().out
    for step in ('exporting', 'as openvino (int8), calibrated on 24 images', 'checking against PyTorch at',
                 'NNCF: quantizing on 24 calibration images', 'measuring int8 against'):
        assert step in printed, printed
    # 12 images cannot resolve 0.5 points: judged at one image, and said
    assert record['accuracy']['allowed'] == pytest.approx(8.333, abs=1e-3)
    assert 'on 12 validation images one image is 8.33 points' in printed
    # the run folder's name, not this machine's path to it (the folder travels; the card is public)
    assert record['accuracy']['source'] == record['calibration']['source'] == trained_run.name
    assert str(trained_run.parent) not in (out / 'README.md').read_text() + (out / 'config.json').read_text()


def test_an_int8_export_that_misses_its_target_leaves_nothing(hub_folder, tmp_path, monkeypatch):
    """exit 1 left a folder whose card said "(openvino, int8)" for a model that missed --max-drop."""
    import dataclasses

    import fishzoo.deploy.export as export_module
    from fishzoo.deploy.accuracy import Int8Accuracy
    _, folder = hub_folder
    onnx = export_module.get_format('onnx')

    def write_a_bad_int8_model(model, stage, request, record):
        onnx.write(model, stage, dataclasses.replace(request, int8=False, calibration=None, validation=None), record)
        return Int8Accuracy('top1', fp32=90.0, int8=80.0, agreement=85.0, images=300, max_drop=request.max_drop,
                            quantized_layers=40, total_layers=64)
    monkeypatch.setattr(export_module, 'get_format',
                        lambda name: dataclasses.replace(onnx, write=write_a_bad_int8_model))
    model = fishzoo.load_model(str(folder))
    images = LabelledImages(torch.utils.data.TensorDataset(torch.rand(4, 3, 64, 64), torch.zeros(4, dtype=torch.long)),
                            multilabel=False)
    out = tmp_path / 'int8'
    with pytest.raises(ExportError) as error:
        export_module.export_folder(model, out, 'onnx', (3, 64, 64), int8=True, calib_data=images, val_data=images)
    message = str(error.value)
    assert message.startswith(f'{out}: not written: int8 loses 10.00 points of top-1 on 300 held-out images')
    assert 'more than the 0.50 allowed (--max-drop)' in message
    assert not out.exists()  # nothing that looks like a result
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(ExportError, match='not written'):
        export_module.export_folder(model, out, 'onnx', (3, 64, 64), int8=True, calib_data=images, val_data=images,
                                    overwrite=True)
    assert [p.name for p in out.iterdir()] == ['keep.txt']  # an --overwrite that fails leaves the old folder


def test_export_into_a_folder_holding_files_is_refused(hub_folder, tmp_path, capsys):
    """README.md and config.json of the folder were silently overwritten, model files unlinked."""
    _, folder = hub_folder
    other = save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'other')
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(other)]) == 2
    line = one_line(capsys, f'-o {other}: holds README.md, app.py, config.json, model.safetensors')
    assert '--overwrite' in line
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before  # untouched
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(folder), '--overwrite']) == 2
    one_line(capsys, 'is the folder of the model being exported')
    # --overwrite replaces the hub folder whole: its model.safetensors survived next to the export's config, and
    # predict answered with the old weights under the new labels
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(other), '--overwrite']) == 0
    assert sorted(p.name for p in other.iterdir()) == ['README.md', 'config.json', 'model.onnx']
    image = tmp_path / 'x.png'
    Image.new('RGB', (64, 64), (200, 30, 30)).save(image)
    ours = predict(str(other), [str(image)], top_k=3, precision='fp32')[0]['labels']
    expected = predict(str(folder), [str(image)], top_k=3, precision='fp32')[0]['labels']
    assert [label for label, _ in ours] == [label for label, _ in expected]


def test_export_never_writes_through_a_link_in_the_folder(hub_folder, tmp_path):
    """export -o DIR --overwrite wrote config.json and README.md in place, through a DIR/config.json that
    linked outside the folder."""
    _, folder = hub_folder
    target = tmp_path / 'outside.json'
    target.write_text('not yours')
    out = tmp_path / 'out'
    out.mkdir()
    os.symlink(target, out / 'config.json')
    os.symlink(target, out / 'README.md')
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(out), '--overwrite', '--no-verify']) == 0
    assert target.read_text() == 'not yours'
    assert not (out / 'config.json').is_symlink() and json.loads((out / 'config.json').read_text())['export']


_EXPORT = ['-m', 'fishzoo.cli', 'export', '--format', 'onnx', '--overwrite', '--no-verify']


@pytest.mark.slow
def test_a_kill_at_any_instant_of_an_export_leaves_the_old_or_the_new_folder(hub_folder, tmp_path):
    """It removed the old model files first and wrote config.json and README.md last: a kill in between left a
    config with no model, or the new model under the old config."""
    _, folder = hub_folder
    out = tmp_path / 'out'
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(out), '--img-size', '48']) == 0
    image = tmp_path / 'x.png'
    Image.new('RGB', (64, 64), (20, 90, 200)).save(image)
    rng = random.Random(0)
    for size in ('40', '56'):
        proc = subprocess.Popen([sys.executable, *_EXPORT, str(folder), '-o', str(out), '--img-size', size],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 9.0))  # start-up, loading, exporting or writing: wherever it is
        proc.kill()
        proc.wait()
        config = json.loads((out / 'config.json').read_text())
        assert config['export']['input_size'][1] in (48, 40, 56)
        assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.onnx']
        assert predict(str(out), [str(image)], top_k=1)[0]['labels']
