"""fishzoo.hub.save: what save_pretrained writes, and the local-dir round trip."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import fishzoo  # noqa: F401
from fishzoo.hub import save_pretrained


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
    assert (out / 'model.safetensors').stat().st_mode & 0o777 == 0o666 & ~_umask()  # not safetensors' 0600


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def test_save_pretrained_names_an_unknown_card_fact(tmp_path):
    from fishzoo.errors import ConfigError
    with pytest.raises(ConfigError, match="save_pretrained: .*'lisence'"):
        save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'x', lisence='mit')


def test_saved_weights_are_described_as_what_they_are(tmp_path):
    """A saved random-init fishnet99 got a card saying "ImageNet-1k weights released by the FishNet authors ...
    top-1 77.41%", and every trained folder's config.json said license apache-2.0 while its card said none."""
    random_init = save_pretrained(timm.create_model('fishnet99', num_classes=2), tmp_path / 'random')
    card = (random_init / 'README.md').read_text()
    cfg = json.loads((random_init / 'config.json').read_text())['pretrained_cfg']
    assert 'FishNet authors' not in card and '77.41' not in card and 'A `fishnet99` image classifier' in card
    assert not {'tag', 'license', 'description', 'notes'} & set(cfg)
    assert cfg['origin_url'] == 'https://github.com/kevin-ssy/FishNet'  # the architecture's facts stay
    chosen = save_pretrained(timm.create_model('fishnet_s64', num_classes=2), tmp_path / 'mit', license='mit',
                             description='Mine.')
    cfg = json.loads((chosen / 'config.json').read_text())['pretrained_cfg']
    assert cfg['license'] == 'mit' and cfg['description'] == 'Mine.'
    assert timm.create_model(f'local-dir:{chosen}', pretrained=True).pretrained_cfg['license'] == 'mit'
