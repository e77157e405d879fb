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
    """auto = bf16 autocast where the CPU has bf16 instructions (AMX-BF16 faked here; the suite decides by the
    measured table), fp32 on a CPU without them; the labels agree."""
    import pytest
    images = sorted((image_dataset / 'val' / 'dog').iterdir())[:4]
    exact = predict(str(trained_run), images, top_k=3, precision='fp32')
    results = {}
    for amx in (False, True):
        fake_cpu('amx' if amx else 'vnni')
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


@pytest.fixture
def many_images(tmp_path):
    """50 small images in a folder: a folder predicted in batches."""
    import random
    folder = tmp_path / 'many'
    folder.mkdir()
    rng = random.Random(0)
    for i in range(50):
        Image.new('RGB', (40, 40), tuple(rng.randrange(256) for _ in range(3))).save(folder / f'{i:03d}.png')
    return folder


@pytest.mark.parametrize('suffix', ['.csv', '.jsonl'])
def test_an_interrupted_folder_keeps_what_finished_and_resumes(saved_hub_folder, many_images, tmp_path, capsys,
                                                               monkeypatch, suffix):
    """5,000 images: nothing for ten minutes, every result in memory until the end, an interrupt lost it all."""
    import fishzoo.predict as predict_module
    _, folder = saved_hub_folder
    reference = {r['image']: [label for label, _ in r['labels']] for r in predict(str(folder), [many_images])}
    out = tmp_path / f'results{suffix}'
    real = predict_module.iter_predictions

    def interrupted_after_three_batches(*args, **kwargs):
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 3:
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(predict_module, 'iter_predictions', interrupted_after_three_batches)
    args = ['predict', str(folder), str(many_images), '--output', str(out), '--batch-size', '8', '--top-k', '2']
    assert main(args) == 130
    assert f'interrupted: {out} holds the 24 images finished; --resume continues' in capsys.readouterr().err
    assert len(_images_in(out)) == 24
    # a kill in the middle of writing: the last image cut short is predicted again
    text = out.read_text()
    out.write_text(text[:-7])
    monkeypatch.setattr(predict_module, 'iter_predictions', real)
    assert main([*args, '--resume']) == 0
    assert '--resume: 23 of 50 images are in' in capsys.readouterr().err
    written = _images_in(out)
    assert sorted(written) == sorted(reference) and len(written) == len(set(written))  # each image once
    for image, labels in _labels_in(out).items():
        assert labels == reference[image][:2]


def _images_in(path):
    if path.suffix == '.jsonl':
        return [json.loads(line)['image'] for line in path.read_text().splitlines()]
    return list(dict.fromkeys(row['image'] for row in csv.DictReader(path.open())))


def _labels_in(path):
    if path.suffix == '.jsonl':
        return {r['image']: r['labels'] for r in map(json.loads, path.read_text().splitlines())}
    labels = {}
    for row in csv.DictReader(path.open()):
        labels.setdefault(row['image'], []).append(row['label'])
    return labels


def test_progress_lines_where_the_output_is_a_log(saved_hub_folder, many_images, capsys, monkeypatch):
    monkeypatch.setattr('fishzoo.progress.LOG_EVERY_S', 0.0)
    _, folder = saved_hub_folder
    assert main(['predict', str(folder), str(many_images), '--batch-size', '16']) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(' images')[0] for line in err] == ['16/50', '32/50', '48/50'], err


def test_resume_mistakes_get_one_sentence(saved_hub_folder, many_images, tmp_path, capsys):
    _, folder = saved_hub_folder
    assert main(['predict', str(folder), str(many_images), '--resume']) == 2
    one_line(capsys, '--resume continues an --output file; give --output FILE')
    other = tmp_path / 'other.csv'
    other.write_text('name,score\nx,1\n')
    assert main(['predict', str(folder), str(many_images), '--output', str(other), '--resume']) == 2
    one_line(capsys, f'--output {other}: not a fishzoo predict CSV')
    assert other.read_text() == 'name,score\nx,1\n'  # someone else's file is left alone
    assert main(['predict', str(folder), str(many_images), '--batch-size', '0']) == 2
    one_line(capsys, '--batch-size must be from 1 to 1024, got 0')


def test_compile_pays_only_where_the_images_left_are_many():
    from fishzoo.predict import COMPILE_SECONDS, compile_pays
    assert not compile_pays(1_797, 1 / 578)  # the digits at the folded model's rate: 3 s of work
    assert compile_pays(100_000, 1 / 578)
    assert not compile_pays(0, 1.0)
    needed = COMPILE_SECONDS * 1.6 / 0.6  # seconds of eager work where compiling starts to pay
    assert compile_pays(int(needed * 1.05), 1.0) and not compile_pays(int(needed * 0.95), 1.0)
    # where this machine measured the model's fast path: its own start-up and rate decide
    assert compile_pays(8_000, 1 / 762, start_seconds=3.7, fast_seconds_per_image=1 / 2017)
    assert not compile_pays(4_000, 1 / 762, start_seconds=3.7, fast_seconds_per_image=1 / 2017)
    assert not compile_pays(10 ** 6, 1 / 762, start_seconds=1.0, fast_seconds_per_image=1 / 700)


def test_a_large_folder_switches_to_the_fast_path_with_one_batch_shape(saved_hub_folder, many_images, monkeypatch,
                                                                         caplog):
    """Decided after the folded model's second batch; the compiled model then only ever sees full batches (the
    last one padded), so it compiles one shape; the results are the folded model's."""
    import logging

    import fishzoo.deploy.fast_path as fast_path
    _, folder = saved_hub_folder
    reference = predict(str(folder), [many_images], batch_size=8, compile=False)
    shapes, real = [], fast_path.optimize_for_inference

    def recording(model, **kwargs):
        if kwargs.get('compile', True) is False:
            return real(model, **kwargs)
        assert kwargs['batch_size'] == 8
        folded = real(model, **{**kwargs, 'compile': False})

        def run(x):
            shapes.append(tuple(x.shape))
            return folded(x)
        return run
    monkeypatch.setattr('fishzoo.predict.optimize_for_inference', recording)
    monkeypatch.setattr('fishzoo.predict.compile_pays', lambda left, per_image, *figures: left == 34)
    with caplog.at_level(logging.INFO, logger='fishzoo.predict'):
        results = predict(str(folder), [many_images], batch_size=8)
    assert 'predict: compiling the fast path: 34 images left' in caplog.text
    assert shapes == [(8, 3, 64, 64)] * 5  # 50 images: 2 folded batches, then 4 full and 2 padded to 8
    assert [r['image'] for r in results] == [r['image'] for r in reference]
    for got, expected in zip(results, reference):
        assert got['labels'][0][0] == expected['labels'][0][0]
        assert got['labels'][0][1] == pytest.approx(expected['labels'][0][1], abs=1e-5)
    shapes.clear()
    predict(str(folder), [many_images], batch_size=8, compile=False)
    assert shapes == []
    monkeypatch.setattr('fishzoo.predict.compile_pays', lambda left, per_image, *figures: False)
    predict(str(folder), [many_images], batch_size=8)
    assert shapes == []


@pytest.mark.slow
def test_compiled_predict_agrees_with_the_folded_model(saved_hub_folder, many_images, capsys):
    _, folder = saved_hub_folder
    folded = predict(str(folder), [many_images], batch_size=16, compile=False, precision='fp32')
    assert main(['predict', str(folder), str(many_images), '--batch-size', '16', '--compile', 'always',
                 '--precision', 'fp32', '--json']) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert [r['image'] for r in compiled] == [r['image'] for r in folded]
    for got, expected in zip(compiled, folded):
        assert got['labels'][0] == expected['labels'][0][0]
        assert got['scores'][0] == pytest.approx(expected['labels'][0][1], abs=1e-4)


@pytest.mark.parametrize('mode, size', [('RGB', (40, 40)), ('L', (23, 57)), ('RGBA', (64, 48))])
def test_batches_are_the_eval_transform_per_image(tmp_path, mode, size):
    """BatchReader does the transform's ToTensor and Normalize on the stacked batch: the same numbers as the
    whole transform image by image, for every channel count and an image the resize and crop change."""
    import numpy as np
    import torch

    from fishzoo.data import eval_transform
    from fishzoo.predict import BatchReader, _read
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        path = tmp_path / f'{i}.png'
        Image.fromarray(pixels.squeeze(-1) if mode == 'L' else pixels, mode=mode).save(path)
        paths.append(str(path))
    channels = {'L': 1, 'RGB': 3, 'RGBA': 4}[mode]
    cfg = dict(input_size=(channels, 32, 32), mean=(0.4,) * channels, std=(0.2,) * channels, crop_pct=0.875,
               interpolation='bilinear')
    transform = eval_transform(cfg)
    reader = BatchReader(transform, mode)
    assert reader.pil_steps is not None
    batch = reader.collate(reader.read_many(paths))
    expected = torch.stack([_read(p, transform, mode) for p in paths])
    assert batch.shape == expected.shape == (3, channels, 32, 32)
    assert torch.equal(batch, expected)


def test_a_transform_of_another_shape_runs_whole_per_image(tmp_path):
    import torch
    from torchvision import transforms as T

    from fishzoo.predict import BatchReader
    path = tmp_path / 'a.png'
    Image.new('RGB', (20, 20), (10, 200, 30)).save(path)
    transform = T.Compose([T.Resize(16), T.ToTensor(), T.Lambda(lambda x: x * 2)])  # something after ToTensor
    reader = BatchReader(transform, 'RGB')
    assert reader.pil_steps is None
    assert torch.equal(reader.collate(reader.read_many([str(path)])), transform(Image.open(path).convert('RGB'))[None])
