"""A fishzoo hub folder in transformers (TimmWrapper): AutoConfig, AutoModel, AutoModelForImageClassification,
AutoImageProcessor and pipeline('image-classification') give the labels and probabilities fishzoo predict gives,
for an RGB, a grayscale and a multi-label folder; older folders load after `fishzoo upgrade`."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

import fishzoo
from fishzoo.cli import main
from fishzoo.hub import save_pretrained
from fishzoo.predict import predict
from tests.helpers.models import set_bn_statistics

LABELS = ['cat', 'dog', 'fish', 'bird']


def _images(root, gray: bool, count: int = 3):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (70 + 9 * i, 90 - 7 * i) + (() if gray else (3,)), dtype=np.uint8)
        image = Image.fromarray(np.stack([pixels] * 3, -1) if gray else pixels)  # a gray scan stored as RGB
        paths.append(root / f'{i}.png')
        image.save(paths[-1])
    return [str(p) for p in paths]


def _folder(tmp_path, kind):
    in_chans = 1 if kind == 'gray' else 3
    model = set_bn_statistics(timm.create_model('fishnet_s64', num_classes=4, in_chans=in_chans), affine=True)
    with torch.no_grad():  # probabilities well apart from 0 and 1, so their order is not decided by rounding
        model.get_classifier().weight.mul_(0.02)
    extra = dict(multilabel=True, thresholds=[0.3, 0.45, 0.5, 0.62]) if kind == 'multilabel' else None
    folder = save_pretrained(model.eval(), tmp_path / kind, label_names=LABELS, extra_config=extra)
    return folder, _images(tmp_path / f'{kind}-images', gray=kind == 'gray')


@pytest.fixture(scope='module', params=['rgb', 'gray', 'multilabel'])
def folder(request, tmp_path_factory):
    return request.param, *_folder(tmp_path_factory.mktemp('hf'), request.param)


def test_auto_classes_read_the_folder(folder):
    kind, path, images = folder
    config = AutoConfig.from_pretrained(path)
    assert type(config).__name__ == 'TimmWrapperConfig' and config.id2label == dict(enumerate(LABELS))
    assert config.problem_type == ('multi_label_classification' if kind == 'multilabel' else None)
    processor = AutoImageProcessor.from_pretrained(path)
    pixels = processor(Image.open(images[0]).convert('RGB'), return_tensors='pt')['pixel_values']
    assert tuple(pixels.shape) == (1, 3, 64, 64)  # RGB: the grayscale model converts it (luma) itself
    hf = AutoModelForImageClassification.from_pretrained(path).eval()
    ours = fishzoo.load_model(str(path)).eval()
    with torch.no_grad():
        assert torch.allclose(hf(pixels).logits, ours(pixels), atol=1e-5)
        hidden = AutoModel.from_pretrained(path).eval()(pixels, output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [80, 208, 400, 528]  # every level (strides 1, 2, 4, 8)


def test_pipeline_gives_what_predict_gives(folder):
    kind, path, images = folder
    classifier = pipeline('image-classification', model=str(path))
    for image, ours in zip(images, predict(str(path), images, top_k=4, precision='fp32')):
        theirs = classifier(image, top_k=4)
        scores = {s['label']: s['score'] for s in theirs}
        assert list(scores)[0] == max(scores, key=scores.get)
        if kind == 'multilabel':  # sigmoid scores; predict lists the labels over their thresholds
            thresholds = dict(zip(LABELS, [0.3, 0.45, 0.5, 0.62]))
            assert sorted(label for label, score in scores.items() if score >= thresholds[label]) == \
                sorted(label for label, _ in ours['labels'])
            assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)  # not a softmax
        else:
            assert [label for label, _ in ours['labels']] == list(scores)
        for label, probability in ours['labels']:
            assert scores[label] == pytest.approx(probability, abs=1e-5)


def test_pipeline_in_a_fresh_interpreter_without_importing_fishzoo(tmp_path):
    """What the Hub's snippet does: transformers first, fishzoo found through timm by the autoload hook."""
    path, images = _folder(tmp_path, 'gray')
    code = ('import json, sys; from transformers import pipeline; '
            f"p = pipeline('image-classification', model={str(path)!r}); "
            f"print(json.dumps(p({images[0]!r}, top_k=4))); print('fishzoo' in sys.modules)")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd='/',
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores, imported = proc.stdout.strip().splitlines()[-2:]
    ours = predict(str(path), images[:1], top_k=4, precision='fp32')[0]['labels']
    assert [(s['label'], pytest.approx(s['score'], abs=1e-5)) for s in json.loads(scores)] == ours
    assert imported == 'True'


def test_an_older_folder_keeps_loading_and_upgrades_for_transformers(tmp_path, capsys):
    path, images = _folder(tmp_path, 'rgb')
    config = json.loads((path / 'config.json').read_text())
    config['model_args']['num_classes'] = 4  # what fishzoo wrote before (timm's save_for_hf does)
    (path / 'config.json').write_text(json.dumps(config))
    before = predict(str(path), images[:1])
    assert timm.create_model(f'local-dir:{path}', pretrained=True).num_classes == 4  # still loads everywhere
    with pytest.raises(TypeError, match="multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(path)
    assert main(['upgrade', str(path)]) == 0
    assert 'model_args.num_classes removed' in capsys.readouterr().out
    assert main(['upgrade', str(path)]) == 0 and 'up to date' in capsys.readouterr().out
    AutoModelForImageClassification.from_pretrained(path)
    assert predict(str(path), images[:1]) == before  # the weights and their checksum are untouched


@pytest.mark.parametrize('model_args, message', [
    ({'stage_chs': [4096 * 64] * 10}, 'fishnet_s64: stage_chs has an item that must be from 1 to 4096'),
    ({'in_chans': 10 ** 6}, 'fishnet_s64: in_chans must be from 1 to 1024, got 1000000'),
    ({'drop_path_rate': 7}, 'fishnet_s64: drop_path_rate must be from 0 to 1, got 7'),
])
def test_the_transformers_route_checks_sizes_at_fishzoos_entry_point(tmp_path, model_args, message):
    """AutoModelForImageClassification passes config.json's model_args straight to the model's entry point:
    enormous stages ended in a traceback from the meta device, or took the memory. The entry point checks what
    it receives, whoever calls it (what it cannot check, transformers' own reading, is in docs/safety.md)."""
    folder = save_pretrained(timm.create_model('fishnet_s64', num_classes=4).eval(), tmp_path / 'f',
                             label_names=LABELS)
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'] = {**config.get('model_args', {}), **model_args}
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoModelForImageClassification.from_pretrained(folder)
