"""fishzoo.hub.card: the model card a hub folder carries, its snippets executed."""
import re

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard

import fishzoo  # noqa: F401
from fishzoo.hub import save_pretrained


def test_model_card(folder):
    _, out = folder
    card = ModelCard.load(out / 'README.md')
    assert card.data.library_name == 'timm'
    assert {'timm', 'fishzoo', 'fishnet_s64', 'digits', 'image-classification'} <= set(card.data.tags)
    assert card.data.license is None and '- License: none chosen' in card.text  # none was given
    assert card.data.datasets == ['digits']
    assert '## Classes' in card.text and '`zero`, `one`, `two`' in card.text
    assert '## Intended use and limitations' in card.text
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_name, result.metric_value, result.dataset_name) == \
        ('accuracy', 'Top-1 accuracy', 97.5, 'Digits')
    usage = card.text[card.text.index('## Usage'):]
    # fishzoo is not on the package index: the card must not tell users to pip install it from there
    assert 'pip install fishzoo' not in card.text and 'pip install timm /path/to/fishzoo' in usage
    assert 'REPO_ID' not in card.text and "timm.create_model('local-dir:path/to/this/folder'" in usage
    assert 'features_only=True' in usage and 'num_classes=0' in usage
    assert re.search(r'- GMACs: \d+\.\d\d, activations: \d+\.\d\dM \(one 64x64 image\)', card.text)
    assert '@inproceedings{sun2018fishnet' in card.text
    assert ".convert('L')" in usage  # the folder's model reads 1 channel


def test_card_metrics_rounded_with_hub_types_and_base_model(tmp_path):
    model = timm.create_model('resnet18', num_classes=3)
    save_pretrained(model, tmp_path / 'r', metrics={'top1': 99.44444274902344, 'f1_micro': 0.912345, 'map': 0.8},
                    dataset='shapes', base_model='timm/resnet18.a1_in1k')
    card = ModelCard.load(tmp_path / 'r' / 'README.md')
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == \
        [('accuracy', 99.44), ('f1', 91.23), ('map', 80.0)]
    assert card.data.base_model == 'timm/resnet18.a1_in1k'
    assert 'pip install timm\n' in card.text and 'fishzoo registers' not in card.text
    assert 'sun2018fishnet' not in card.text  # a timm architecture: no FishNet citation


@pytest.mark.parametrize('multilabel', [False, True])
def test_card_snippets_run(tmp_path, monkeypatch, multilabel):
    """The card's Python blocks, run as a user pastes them (the folder path filled in)."""
    from PIL import Image
    model = timm.create_model('fishnet_s64', num_classes=3, in_chans=1)
    extra = dict(multilabel=True, thresholds=[0.3, 0.5, 0.7]) if multilabel else None
    out = save_pretrained(model, tmp_path / 'card', extra_config=extra)
    monkeypatch.chdir(tmp_path)
    # a gray photo saved as RGB (as scans often are): the grayscale model reads the same pixels through both
    # paths (timm's convert('L'), transformers' RGB -> luma); a colour photo differs by 8-bit rounding (~1e-3)
    gray = np.random.default_rng(0).integers(0, 256, (70, 80), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / 'image.png')
    text = (out / 'README.md').read_text().replace('path/to/this/folder', str(out)).replace('image.jpg', 'image.png')
    blocks = [b.split('\n', 1)[1] for b in text.split('```')[1::2] if b.startswith('python')]
    scope = dict(x=torch.randn(2, 1, 64, 64))
    for block in blocks:
        exec(block, scope)
    assert scope['probs'].shape == (1, 3)
    assert ('labels' in scope) == multilabel
    assert scope['embedding'].shape == (2, model.num_features) and len(scope['feature_maps']) == 4
    # the transformers block: the pipeline's scores for the same image, sigmoid ones for a multi-label model
    assert [s['score'] for s in scope['scores']] == pytest.approx(sorted(scope['probs'][0].tolist(), reverse=True),
                                                                  abs=1e-5)


def test_card_headline_is_what_the_published_model_decides_with(tmp_path):
    """Multi-label: micro-F1 at the tuned thresholds first (marked as tuned), the 0.5 figure next to it, the
    thresholds with their class names; top-5 only with more than 5 classes; the license only as given."""
    model = timm.create_model('fishnet_s64', num_classes=4)
    names = ['cat', 'dog', 'fish', 'bird']
    save_pretrained(model, tmp_path / 'ml', label_names=names, license='mit',
                    extra_config=dict(multilabel=True, thresholds=[0.3, 0.45, 0.5, 0.62]),
                    dataset='you/pets', metrics={'f1_micro_tuned': 0.735, 'f1_micro': 0.486, 'top5': 1.0},
                    train_images=800, val_images=200, validation='20% of the data held out, stratified by class')
    card = ModelCard.load(tmp_path / 'ml' / 'README.md')
    assert card.data.license == 'mit' and card.data.datasets == ['you/pets']
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == \
        [('Micro F1 at the published thresholds', 73.5), ('Micro F1', 48.6)]  # no top-5 with 4 classes
    results = card.text[card.text.index('## Results'):]
    assert results.index('Micro F1 at the published thresholds') < results.index('| Micro F1 (%) | 48.60 |')
    assert 'chosen on the same validation split' in results and 'Top-5' not in card.text
    assert '| cat | 0.300 |' in card.text and '| bird | 0.620 |' in card.text
    assert 'Trained on 800 images (a small data set); measured on 200 validation images (20% of the data' \
        in card.text
    assert 'the pipeline does not apply' in card.text  # how thresholds reach a transformers user

    many = timm.create_model('fishnet_s64', num_classes=10)
    save_pretrained(many, tmp_path / 'ten', metrics={'top1': 90.0, 'top5': 99.0}, dataset='you/ten')
    card = ModelCard.load(tmp_path / 'ten' / 'README.md')
    assert [r.metric_name for r in card.data.eval_results] == ['Top-1 accuracy', 'Top-5 accuracy']


HOSTILE_LABELS = ['a|b', 'two\nlines', '<script>alert(1)</script>', '<img src=x onerror=alert(1)>', 'back`tick']


@pytest.mark.parametrize('multilabel', [False, True])
def test_label_names_stay_text_in_the_card(tmp_path, multilabel):
    """Class names with |, newlines, <script> or <img onerror> broke the card's class table and put HTML in it."""
    import markdown
    model = timm.create_model('fishnet_s64', num_classes=len(HOSTILE_LABELS)).eval()
    extra = dict(multilabel=True, thresholds=[0.5] * len(HOSTILE_LABELS)) if multilabel else None
    save_pretrained(model, tmp_path / 'out', label_names=HOSTILE_LABELS, extra_config=extra)
    card = ModelCard.load(tmp_path / 'out' / 'README.md').text
    classes = card.split('## Classes', 1)[1].split('\n## ', 1)[0]
    html = markdown.markdown(classes, extensions=['tables'])
    assert '<script' not in html and '<img' not in html
    if multilabel:
        assert html.count('<tr>') == len(HOSTILE_LABELS) + 1  # one row a class, under the header
        assert '<td>a|b</td>' in html and '<td>two lines</td>' in html
    else:
        assert html.count('<code>') == len(HOSTILE_LABELS)
        assert '<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>' in html and '<code>back`tick</code>' in html
