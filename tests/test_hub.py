"""Hub folders: what save_pretrained writes, the local-dir round trip, and uploads with only the network replaced."""
import json
import re

import huggingface_hub.hf_api
import numpy as np
import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from safetensors.torch import load_file

import fishzoo  # noqa: F401
from fishzoo.hub import HubUploadError, push_to_hub, save_pretrained

TOKEN = 'hf_FishzooTestTokenDoNotLeak1234'


@pytest.fixture
def folder(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3, in_chans=1, downsample='avg2').eval()
    save_pretrained(model, tmp_path / 'out', label_names=['zero', 'one', 'two'], dataset=('digits', 'Digits'),
                    metrics={'top1': 97.5}, tags=('digits',))
    return model, tmp_path / 'out'


def test_folder_files_and_config(folder):
    model, out = folder
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'app.py', 'config.json', 'model.safetensors',
                                                     'requirements.txt']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'fishnet_s64'
    assert config['num_classes'] == 3
    assert config['label_names'] == ['zero', 'one', 'two']
    assert config['pretrained_cfg']['input_size'] == [1, 64, 64]
    assert config['model_args']['downsample'] == 'avg2'
    assert set(load_file(out / 'model.safetensors')) == set(model.state_dict())


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
    assert (out / 'model.safetensors').stat().st_mode & 0o777 == 0o666 & ~_umask()  # not safetensors' 0600


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def test_local_dir_round_trip_identical_logits(folder):
    model, out = folder
    restored = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(2, 1, 48, 56)
    assert torch.equal(restored(x), model(x))
    assert restored.pretrained_cfg['label_names'] == ('zero', 'one', 'two') or \
        list(restored.pretrained_cfg['label_names']) == ['zero', 'one', 'two']


def test_label_names_must_match_classes(tmp_path):
    model = timm.create_model('fishnet_s64', num_classes=3)
    with pytest.raises(ValueError, match='label_names has 2 names but the model has 3 classes'):
        save_pretrained(model, tmp_path, label_names=['a', 'b'])


class FakeHub:
    """Stands in for the HfApi calls that reach the network; the rest is huggingface_hub's own code.

    huggingface_hub streams through hf_xet when it is installed; the fixture takes its plain commit
    path, where create_repo, _validate_yaml (of README.md) and create_commit talk to the Hub.
    """

    def __init__(self, fail_with=None):
        self.fail_with = fail_with
        self.sent = {}
        self.tokens = []

    def create_repo(self, api, repo_id, **kwargs):
        self.tokens.append(api.token)
        if self.fail_with:
            raise self.fail_with
        return RepoUrl(f'https://huggingface.co/{repo_id}')

    def validate_yaml(self, api, content, **kwargs):
        self.validated = content

    def create_commit(self, api, repo_id, operations, **kwargs):
        for op in operations:
            with op.as_file() as f:
                self.sent[op.path_in_repo] = f.read()
        return CommitInfo(commit_url=f'https://huggingface.co/{repo_id}/commit/1', commit_message='',
                          commit_description='', oid='1' * 40)


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(HfApi, 'create_repo', lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(huggingface_hub.hf_api, 'is_xet_available', lambda: False)
    monkeypatch.setattr(HfApi, '_validate_yaml', lambda api, content, **kw: hub.validate_yaml(api, content, **kw))
    monkeypatch.setattr(HfApi, 'create_commit', lambda api, repo_id, operations, **kw: hub.create_commit(
        api, repo_id, operations, **kw))
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    return hub


def test_push_sends_exactly_the_folder(folder, fake_hub):
    _, out = folder
    (out / 'checkpoints').mkdir()
    (out / 'checkpoints' / 'state.bin').write_bytes(b'training state')
    (out / '.fishzoo-train.lock').write_text('1234\n')
    saved_card = (out / 'README.md').read_text()
    url = push_to_hub(out, 'someone/fishnet_s64-digits')
    # the card saved without a repo id now names the repo, on the Hub and in the folder
    card = fake_hub.sent['README.md'].decode()
    assert "local-dir:path/to/this/folder" in saved_card and 'local-dir:path/to/this/folder' not in card
    assert "timm.create_model('hf-hub:someone/fishnet_s64-digits', pretrained=True)" in card
    assert card.splitlines()[card.splitlines().index('---', 1) + 2] == '# fishnet_s64-digits'
    assert url.endswith('/commit/1')
    assert sorted(fake_hub.sent) == ['README.md', 'app.py', 'config.json', 'model.safetensors', 'requirements.txt']
    assert ModelCard(card).data.library_name == 'timm'  # (the real create_commit validates the YAML itself)
    for name, content in fake_hub.sent.items():
        assert content == (out / name).read_bytes()
        assert TOKEN.encode() not in content
    assert fake_hub.tokens == [None]  # huggingface_hub resolves HF_TOKEN itself; fishzoo never holds it


def test_push_without_token(folder, monkeypatch, tmp_path):
    _, out = folder
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty-hf-home'))
    with pytest.raises(HubUploadError, match='no Hugging Face token: set HF_TOKEN or run `hf auth login`'):
        push_to_hub(out, 'someone/x')


@pytest.mark.parametrize('error', [
    ConnectionError(f'network is down (Authorization: Bearer {TOKEN})'),
    RuntimeError(f'401 Unauthorized: invalid token {TOKEN}'),
])
def test_push_failure_keeps_folder_and_hides_token(folder, fake_hub, error, caplog):
    _, out = folder
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fake_hub.fail_with = error
    with pytest.raises(HubUploadError) as err:
        push_to_hub(out, 'someone/x')
    message = str(err.value)
    assert TOKEN not in message and '***' in message
    assert f'retry with `fishzoo push {out} someone/x`' in message and 'intact' in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert TOKEN not in caplog.text


def test_push_refuses_a_non_hub_folder(tmp_path, fake_hub):
    with pytest.raises(HubUploadError, match='is not a hub folder: config.json, model.safetensors missing'):
        push_to_hub(tmp_path, 'someone/x')


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


def test_save_pretrained_names_an_unknown_card_fact(tmp_path):
    from fishzoo.errors import ConfigError
    with pytest.raises(ConfigError, match="save_pretrained: .*'lisence'"):
        save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'x', lisence='mit')
