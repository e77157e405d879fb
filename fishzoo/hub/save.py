"""Writing hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``, saved the timm way, and
older folders brought up to date.

A hub folder is what timm's ``save_for_hf`` writes (``config.json`` with the architecture, num_classes,
label names, pretrained_cfg and the model's constructor arguments, and ``model.safetensors``) plus a
model card and the demo page a Space runs. timm restores it with
``timm.create_model('local-dir:PATH', pretrained=True)``, or ``'hf-hub:REPO_ID'`` once pushed (:mod:`.push`).
"""
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from timm.models import save_for_hf

from fishzoo.errors import ConfigError

from .atomic import staged_folder
from .card import CardFacts, describe_saved_weights, model_card
from .config import for_every_reader, read_hub_config
from .folder import sha256_file

# the demo page a hub folder carries as app.py (fishzoo demo FOLDER serves it)
SPACE_APP = Path(__file__).resolve().parents[1] / 'space_app.py'

# what app.py needs on a Space; fishzoo's own architectures also need fishzoo, which is not on PyPI
SPACE_REQUIREMENTS = '''timm>=1.0.31
safetensors
gradio
torch
# fishnet* / fishnext* / mobilenetv2_dual* folders also need fishzoo, installed from its source tree
'''


def upgrade_folder(folder: Union[str, Path]) -> List[str]:
    """Rewrite an older hub folder's ``config.json`` by :func:`for_every_reader` (the weights are untouched);
    returns what changed (nothing when it is up to date)."""
    folder = Path(folder)
    config = read_hub_config(folder)
    upgraded = for_every_reader(config)
    changes = []
    if 'num_classes' in (config.get('model_args') or {}) and 'num_classes' not in upgraded['model_args']:
        changes.append('model_args.num_classes removed (transformers passes num_classes itself)')
    if upgraded.get('problem_type') != config.get('problem_type'):
        changes.append('problem_type: multi_label_classification (transformers gives sigmoid scores)')
    if changes:  # staged: a link planted at the config's name is replaced, never written through
        with staged_folder(folder, ('config.json',)) as stage:
            (stage / 'config.json').write_text(json.dumps(upgraded, indent=2))
    return changes


def save_pretrained(model: torch.nn.Module, save_dir: Union[str, Path], **kwargs) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to ``save_dir``.

    The keyword arguments are :func:`write_hub_folder`'s: ``label_names`` (one per class) and
    ``extra_config`` go into ``config.json``; ``data_config`` overrides the preprocessing recorded in its
    pretrained_cfg; the rest are what the card says, the fields of :class:`fishzoo.hub.card.CardFacts`
    (``repo_id``, ``dataset``, ``metrics``, ``metrics_source``, ``license``, ``tags``, ``description``,
    ``base_model``, ``train_images``, ``val_images``, ``validation``). An existing folder's files are
    replaced all at once (:func:`fishzoo.hub.atomic.staged_folder`): a kill at any instant leaves the old folder or
    the new one, and a failed write (a full disk) leaves it as it was.
    """
    with staged_folder(save_dir, HUB_FILES, order=('model.safetensors', 'config.json')) as stage:
        write_hub_folder(model, stage, **kwargs)
    return Path(save_dir)


# the files save_pretrained writes (replaced together); anything else in the folder is kept
HUB_FILES = ('model.safetensors', 'config.json', 'README.md', 'app.py', 'requirements.txt')


def write_hub_folder(
        model: torch.nn.Module,
        save_dir: Union[str, Path],
        *,
        label_names: Optional[Sequence[str]] = None,
        label_descriptions: Optional[Dict[str, str]] = None,
        data_config: Optional[dict] = None,
        extra_config: Optional[dict] = None,
        **card_facts,
) -> Path:
    """What :func:`save_pretrained` writes, written in place (into a folder of one's own, such as a stage)."""
    try:
        facts = CardFacts(**card_facts)
    except TypeError as e:
        raise ConfigError(f'save_pretrained: {e}') from None
    save_dir = Path(save_dir)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ConfigError(f'label_names has {len(label_names)} names but the model has {model.num_classes} classes')
    model_config = dict(extra_config or {})
    if label_names is not None:
        model_config['label_names'] = list(label_names)
    if label_descriptions:
        model_config['label_descriptions'] = dict(label_descriptions)
    save_for_hf(model, save_dir, model_config=model_config, data_config=data_config, safe_serialization=True)
    # safetensors writes through a private temporary file (mode 0600): give the weights a file's usual mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(save_dir / 'model.safetensors', 0o666 & ~umask)
    hub_config = for_every_reader(json.loads((save_dir / 'config.json').read_text()))
    hub_config['pretrained_cfg'] = describe_saved_weights(hub_config.get('pretrained_cfg') or {}, facts)
    # lets check_hub_folder tell a truncated or bit-flipped weights file from a good one
    hub_config['weights_sha256'] = sha256_file(save_dir / 'model.safetensors')
    (save_dir / 'config.json').write_text(json.dumps(hub_config, indent=2))
    card = model_card(model, hub_config, facts)
    (save_dir / 'README.md').write_text(card, encoding='utf-8')
    # the demo page: the folder runs as a Gradio Space as it is (fishzoo demo FOLDER serves it locally)
    shutil.copyfile(SPACE_APP, save_dir / 'app.py')
    (save_dir / 'requirements.txt').write_text(SPACE_REQUIREMENTS)
    return save_dir
