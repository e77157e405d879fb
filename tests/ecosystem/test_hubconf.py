import importlib.util
from pathlib import Path

import torch

import fishzoo

REPO = Path(__file__).resolve().parents[2]


def test_every_model_has_an_entry_point():
    spec = importlib.util.spec_from_file_location('fishzoo_hubconf', REPO / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ['torch', 'timm']
    for name in fishzoo.list_models():
        assert callable(getattr(hubconf, name)), name
        assert getattr(hubconf, name).__doc__


def test_load_local():
    model = torch.hub.load(str(REPO), 'fishnet_s64', source='local', pretrained=False, num_classes=10)
    assert model.num_classes == 10
    assert model.pretrained_cfg['architecture'] == 'fishnet_s64'
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_load_a_folder(tmp_path):
    import timm

    from fishzoo.hub import save_pretrained
    model = timm.create_model('fishnet_s64', num_classes=3).eval()
    save_pretrained(model, tmp_path / 'folder', label_names=['a', 'b', 'c'])
    loaded = torch.hub.load(str(REPO), 'load_folder', str(tmp_path / 'folder'), source='local')
    x = torch.randn(1, 3, 32, 32)
    assert not loaded.training and torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg['label_names'] == ['a', 'b', 'c']
