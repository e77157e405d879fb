"""fishzoo.hub.push: the folder uploaded as it is; every failure one token-free sentence."""
import huggingface_hub.hf_api
import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, RepoUrl

import fishzoo  # noqa: F401
from fishzoo.cli import main
from fishzoo.hub import HubUploadError, push_to_hub


def test_push_with_the_hub_offline(hub_folder, monkeypatch):
    """The real network path with the network off (HF_HUB_OFFLINE): nothing replaced."""
    _, folder = hub_folder
    token = 'hf_RealLookingTokenValue123456'
    monkeypatch.setenv('HF_TOKEN', token)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(HubUploadError) as err:
        push_to_hub(folder, 'someone/fishnet')
    assert 'offline' in str(err.value).lower() and token not in str(err.value)
    assert f'retry with `fishzoo push {folder} someone/fishnet`' in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


TOKEN = 'hf_FishzooTestTokenDoNotLeak1234'


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


def test_a_bad_repo_id_is_refused_before_the_card_is_touched(folder, fake_hub):
    """`fishzoo push FOLDER 'owner/x\\1'` ended in re.error, after the card had been edited."""
    _, out = folder
    before = (out / 'README.md').read_text()
    assert main(['push', str(out), 'owner/x\\1']) == 2
    assert (out / 'README.md').read_text() == before and not fake_hub.sent
