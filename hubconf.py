"""torch.hub entry points: one per fishzoo model.

    model = torch.hub.load('OWNER/fishzoo', 'fishnet150', pretrained=False, num_classes=10)
    model = torch.hub.load('/path/to/fishzoo', 'fishnet_m64', source='local')
    model = torch.hub.load('/path/to/fishzoo', 'load_folder', 'output/train', source='local')   # a hub folder

Keyword arguments go to ``timm.create_model`` (``num_classes``, ``in_chans``, ``drop_path_rate``,
``pretrained_cfg_overlay``, ...).
"""
dependencies = ['torch', 'timm']

import timm as _timm  # noqa: E402

import fishzoo as _fishzoo  # noqa: E402  (registers the architectures with timm)


def _entry_point(name):
    def create(pretrained=False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f'fishzoo {name}: ``timm.create_model({name!r}, pretrained=pretrained, **kwargs)``.'
    return create


globals().update({_name: _entry_point(_name) for _name in _fishzoo.list_models()})


def load_folder(spec, **kwargs):
    """A trained or converted model with its weights: a hub folder, ``local-dir:PATH`` or ``hf-hub:REPO_ID``
    (``fishzoo.load_model(spec, pretrained=True, **kwargs)``), in eval mode."""
    return _fishzoo.load_model(spec, pretrained=True, **kwargs).eval()
