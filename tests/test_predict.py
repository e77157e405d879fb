"""fishzoo predict: labels and probabilities from a trained hub folder, CSV output, clear errors."""
import csv
import json

import pytest
import timm
from PIL import Image

from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.helpers.hostile import one_line


def test_predict_uses_label_names_and_data_config(trained_run, image_dataset):
    images = sorted((image_dataset / 'val' / 'dog').iterdir())[:2]
    results = predict(str(trained_run), images, top_k=3)
    assert [r['image'] for r in results] == [str(p) for p in images]
    for r in results:
        labels = [label for label, _ in r['labels']]
        assert sorted(labels) == ['cat', 'dog', 'fish']
        probs = [p for _, p in r['labels']]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def test_cli_prints_and_writes_csv(trained_run, image_dataset, tmp_path, capsys):
    image = next((image_dataset / 'val' / 'cat').iterdir())
    out = tmp_path / 'pred.csv'
    assert main(['predict', str(trained_run), str(image), '--top-k', '2', '--output', str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f'{image}: ') and printed.count('(') == 2
    rows = list(csv.DictReader(out.open()))
    assert [r['rank'] for r in rows] == ['1', '2'] and rows[0]['label'] in ('cat', 'dog', 'fish')


def test_cli_errors(trained_run, tmp_path, capsys):
    assert main(['predict', str(trained_run), str(tmp_path / 'nope.png')]) == 2
    assert 'nope.png: no such image file' in capsys.readouterr().err
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    assert main(['predict', str(trained_run), str(tmp_path / 'bad.png')]) == 2
    assert 'bad.png: unreadable image' in capsys.readouterr().err
    assert main(['predict', str(tmp_path / 'no-model'), str(tmp_path / 'bad.png')]) == 2
    assert 'could not load the model' in capsys.readouterr().err


def test_folders_globs_and_json(trained_run, image_dataset, capsys):
    import json
    val = image_dataset / 'val'
    assert main(['predict', str(trained_run), str(val / 'cat'), str(val / 'dog' / '*.png'), '--json']) == 0
    records = json.loads(capsys.readouterr().out)
    cats = sorted(str(p) for p in (val / 'cat').iterdir())
    dogs = sorted(str(p) for p in (val / 'dog').glob('*.png'))
    assert [r['image'] for r in records] == cats + dogs and dogs
    for r in records:
        assert set(r) == {'image', 'labels', 'scores'} and len(r['labels']) == len(r['scores']) == 3
        assert set(r['labels']) == {'cat', 'dog', 'fish'} and r['scores'] == sorted(r['scores'], reverse=True)
    assert main(['predict', str(trained_run), str(image_dataset / '**' / '*.jpg'), '--json']) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(list(image_dataset.rglob('*.jpg')))


def test_errors_name_the_model_and_the_pattern(trained_run, tmp_path, capsys):
    (tmp_path / 'x.png').write_bytes(b'')
    assert main(['predict', 'fishnet_s64', str(tmp_path / 'x.png')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('fishzoo predict: fishnet_s64: fishnet_s64 has no pretrained weights') and '  ' not in err
    assert main(['predict', str(trained_run), str(tmp_path / '*.jpg')]) == 2
    assert '*.jpg: the pattern matches no image file' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert main(['predict', str(trained_run), str(tmp_path / 'empty')]) == 2
    assert 'empty: a folder without image files' in capsys.readouterr().err


def test_precision_auto_follows_the_cpu(trained_run, image_dataset, fake_cpu, capsys):
    """auto = bf16 autocast where the CPU has AMX-BF16 (faked here both ways), fp32 elsewhere; the labels agree."""
    import pytest
    images = sorted((image_dataset / 'val' / 'dog').iterdir())[:4]
    exact = predict(str(trained_run), images, top_k=3, precision='fp32')
    results = {}
    for amx in (False, True):
        fake_cpu('amx' if amx else 'avx512_bf16')
        results[amx] = predict(str(trained_run), images, top_k=3)
    assert results[False] == exact  # fp32: the same numbers
    for bf16, fp32 in zip(results[True], exact):
        assert bf16['labels'][0][0] == fp32['labels'][0][0]
        assert bf16['labels'][0][1] == pytest.approx(fp32['labels'][0][1], abs=0.03)
    assert any(b['labels'] != f['labels'] for b, f in zip(results[True], exact))  # bf16 really ran
    assert main(['predict', str(trained_run), str(images[0]), '--precision', 'fp16']) == 2
    assert "--precision must be one of auto, fp32, bf16, got 'fp16'" in capsys.readouterr().err
    assert main(['predict', str(trained_run), str(images[0]), '--precision', 'F32']) == 0  # OpenVINO's name


def test_onnx_has_no_bf16(tmp_path, capsys):
    model = tmp_path / 'm.onnx'
    model.write_bytes(b'')
    assert main(['predict', str(model), str(tmp_path / 'x.png'), '--backend', 'onnx', '--precision', 'bf16']) == 2
    assert '--precision bf16 is for torch and OpenVINO' in capsys.readouterr().err


def test_image_bombs_in_predict(hub_folder, bombs, capsys):
    _, folder = hub_folder
    for bomb in bombs:
        assert main(['predict', str(folder), str(bomb)]) == 2
        one_line(capsys, f'{bomb}: refused as a decompression bomb')


def _exported_onnx_folder(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    folder = save_pretrained(model, tmp_path / 'model', label_names=['a', 'b', 'c'])
    assert main(['export', str(folder), '--format', 'onnx', '-o', str(tmp_path / 'onnx')]) == 0
    from PIL import Image
    Image.new('RGB', (70, 60), (10, 120, 200)).save(tmp_path / 'x.png')
    return tmp_path / 'onnx', tmp_path / 'x.png'


@pytest.mark.deploy
def test_exported_models_that_disagree_or_fail_get_one_sentence(tmp_path, capsys, monkeypatch):
    """An export whose outputs do not match its labels gave an IndexError; onnxruntime failing at run time
    gave its traceback."""
    folder, image = _exported_onnx_folder(tmp_path)
    capsys.readouterr()
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps({**config, 'label_names': ['a', 'b', 'c', 'd'], 'num_classes': 4,
                                                    'pretrained_cfg': {**config['pretrained_cfg'], 'num_classes': 4}}))
    assert main(['predict', str(folder), str(image)]) == 2
    one_line(capsys, f'{folder}: the model gives [3] scores per image but 4 labels are named')
    (folder / 'config.json').write_text(json.dumps(config))

    import onnxruntime

    def fails(self, *args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException('simulated kernel failure')
    monkeypatch.setattr(onnxruntime.InferenceSession, 'run', fails)
    assert main(['predict', str(folder), str(image)]) == 2
    one_line(capsys, f'{folder / "model.onnx"}: onnxruntime failed on a batch of shape [1, 3, 64, 64] '
                      '(RuntimeException: simulated kernel failure)')


@pytest.mark.deploy
def test_predict_with_the_single_onnx_file_export_wrote(tmp_path, capsys):
    """`fishzoo export -o FILE.onnx` then `fishzoo predict FILE.onnx IMG` said "no such folder"."""
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    folder = save_pretrained(model, tmp_path / 'model', label_names=['cat', 'dog', 'fish'])
    assert main(['export', str(folder), '-o', str(tmp_path / 'm.onnx')]) == 0
    from PIL import Image
    Image.new('RGB', (70, 60), (10, 120, 200)).save(tmp_path / 'x.png')
    capsys.readouterr()
    assert main(['predict', str(folder), str(tmp_path / 'x.png'), '--json', '--precision', 'fp32']) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(['predict', str(tmp_path / 'm.onnx'), str(tmp_path / 'x.png'), '--json']) == 0
    got = json.loads(capsys.readouterr().out)
    assert got[0]['labels'] == expected[0]['labels']
    assert got[0]['scores'] == pytest.approx(expected[0]['scores'], abs=1e-4)


def test_thresholds_make_a_folder_multi_label_for_every_reader(tmp_path):
    """thresholds without multilabel: true: predict thresholded sigmoids, the demo page showed softmax, and
    transformers read problem_type: three answers. One rule now: per-class thresholds mean multi-label."""
    from fishzoo.hub import read_hub_config
    from fishzoo.space_app import FolderClassifier
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    thresholds = [0.2, 0.5, 0.9]
    folder = save_pretrained(model, tmp_path / 'm', label_names=['a', 'b', 'c'],
                             extra_config=dict(thresholds=thresholds))
    image = tmp_path / 'x.png'
    Image.new('RGB', (64, 64), (90, 20, 160)).save(image)
    ours = dict(predict(str(folder), [str(image)], precision='fp32')[0]['labels'])
    assert FolderClassifier(folder)(Image.open(image)) == pytest.approx(ours)
    assert all(p >= thresholds['abc'.index(label)] for label, p in ours.items())
    assert read_hub_config(folder)['problem_type'] == 'multi_label_classification'
    assert '.sigmoid()' in (folder / 'README.md').read_text()
