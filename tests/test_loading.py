"""fishzoo.loading: one path from what a user types to a model, and one sentence for every failure."""
import pytest
import timm
import torch

from fishzoo import load_model
from fishzoo.errors import FishzooError, ModelLoadError
from fishzoo.hub import save_pretrained
from fishzoo.loading import resolve_source


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp('hub') / 'tiny'
    save_pretrained(timm.create_model('fishnet_s64', num_classes=3), out, label_names=['a', 'b', 'c'])
    return out


def test_resolve_source(folder, tmp_path):
    assert resolve_source('fishnet150').kind == 'timm'
    assert resolve_source(f'local-dir:{folder}').folder == folder
    assert resolve_source(str(folder)).kind == 'folder'  # a bare folder
    hub = resolve_source('hf-hub:me/fish')
    assert (hub.kind, hub.location, hub.timm_name, hub.display_name) == ('hf-hub', 'me/fish', 'hf-hub:me/fish', 'fish')
    assert resolve_source(str(tmp_path / 'nope')).kind == 'timm'  # not a folder: left to timm, which says so
    assert not resolve_source('fishnet150').has_weights and resolve_source(str(folder)).has_weights


@pytest.mark.parametrize('prefix', ['local-dir:', ''])
def test_folder_loads_with_its_weights(folder, prefix):
    model = load_model(f'{prefix}{folder}')
    reference = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert model.num_classes == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_kwargs_reach_timm():
    model = load_model('fishnet_s64', num_classes=7, in_chans=1)
    assert model.num_classes == 7 and model.in_chans == 1


@pytest.mark.parametrize('spec, message', [
    ('fishnet_nope', 'fishnet_nope: unknown model (`fishzoo list`'),
    ('runs/missing', 'runs/missing: could not load the model: no such folder'),
    ('local-dir:/no/such/dir', 'local-dir:/no/such/dir: /no/such/dir: no such directory'),
])
def test_bad_names_get_one_sentence(spec, message):
    with pytest.raises(ModelLoadError) as raised:
        load_model(spec)
    assert str(raised.value).startswith(message) and '\n' not in str(raised.value)
    assert isinstance(raised.value, FishzooError)


def test_damaged_folders(folder, tmp_path):
    import shutil
    no_weights = tmp_path / 'no_weights'
    shutil.copytree(folder, no_weights)
    (no_weights / 'model.safetensors').unlink()
    with pytest.raises(ModelLoadError, match=r'^--model x: .*model\.safetensors'):
        load_model(str(no_weights), label='--model x')
    truncated = tmp_path / 'truncated'
    shutil.copytree(folder, truncated)
    weights = truncated / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match='^truncated: '):
        load_model(str(truncated), label='truncated')
