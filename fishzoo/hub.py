"""Hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``, saved and pushed the timm way.

A hub folder is what timm's ``save_for_hf`` writes (``config.json`` with the architecture, num_classes,
label names, pretrained_cfg and the model's constructor arguments, and ``model.safetensors``) plus a
model card. timm restores it with ``timm.create_model('local-dir:PATH', pretrained=True)``, or
``'hf-hub:REPO_ID'`` once pushed.

timm's ``push_to_hf_hub`` writes its own card and saves the model again, so ``push_to_hub`` here
uploads the folder as it is with huggingface_hub's ``HfApi.upload_folder``. The token comes from the
``HF_TOKEN`` environment variable or ``hf auth login`` only, never from an argument, and is never
written to a file, a log line or an error message.
"""
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from huggingface_hub import CommitOperationAdd, HfApi, get_token
from timm.models import save_for_hf

from fishzoo.atomic import staged_folder
from fishzoo.card import CardFacts, model_card, retarget_card
from fishzoo.errors import ConfigError, HubFolderError, HubUploadError, describe  # noqa: F401  (users catch them from here)
from fishzoo.hub_folder import WEIGHT_FILES, check_hub_folder, read_hub_config, sha256_file  # noqa: F401
from fishzoo.version import __version__

_logger = logging.getLogger(__name__)

# what app.py needs on a Space; fishzoo's own architectures also need fishzoo, which is not on PyPI
SPACE_REQUIREMENTS = '''timm>=1.0.31
safetensors
gradio
torch
# fishnet* / fishnext* / mobilenetv2_dual* folders also need fishzoo, installed from its source tree
'''

# what a hub folder uploads; checkpoints/ and hidden files (the training lock) stay local
UPLOAD_PATTERNS = ['*.json', '*.safetensors', '*.md', '*.png', 'app.py', 'requirements.txt']


def for_every_reader(config: dict) -> dict:
    """A hub folder's ``config.json`` that timm, fishzoo and transformers' TimmWrapper all read the same way.

    - ``model_args`` without ``num_classes``: timm's ``save_for_hf`` writes it there too, and TimmWrapper
      passes ``model_args`` to ``timm.create_model`` next to its own ``num_classes`` (a ``TypeError``); the
      top-level ``num_classes`` says the same for every reader.
    - multi-label folders say ``problem_type: multi_label_classification``, so transformers' pipeline gives
      sigmoid scores, as ``fishzoo predict`` does (the thresholds stay in ``thresholds``).
    """
    config = dict(config)
    model_args = dict(config.get('model_args') or {})
    if 'num_classes' in model_args and model_args['num_classes'] == config.get('num_classes'):
        del model_args['num_classes']
    if 'model_args' in config:
        config['model_args'] = model_args
    if config.get('multilabel') or config.get('thresholds') is not None:
        config['problem_type'] = 'multi_label_classification'
    return config


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
    if changes:
        tmp = folder / '.config.json.tmp'
        tmp.write_text(json.dumps(upgraded, indent=2))
        os.replace(tmp, folder / 'config.json')
    return changes


def save_pretrained(model: torch.nn.Module, save_dir: Union[str, Path], **kwargs) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to ``save_dir``.

    The keyword arguments are :func:`write_hub_folder`'s: ``label_names`` (one per class) and
    ``extra_config`` go into ``config.json``; ``data_config`` overrides the preprocessing recorded in its
    pretrained_cfg; the rest are what the card says, the fields of :class:`fishzoo.card.CardFacts`
    (``repo_id``, ``dataset``, ``metrics``, ``metrics_source``, ``license``, ``tags``, ``description``,
    ``base_model``, ``train_images``, ``val_images``, ``validation``). An existing folder's files are
    replaced all at once (:func:`fishzoo.atomic.staged_folder`): a kill at any instant leaves the old folder or
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
    # lets check_hub_folder tell a truncated or bit-flipped weights file from a good one
    hub_config['weights_sha256'] = sha256_file(save_dir / 'model.safetensors')
    (save_dir / 'config.json').write_text(json.dumps(hub_config, indent=2))
    card = model_card(model, hub_config, facts)
    (save_dir / 'README.md').write_text(card, encoding='utf-8')
    # the demo page: the folder runs as a Gradio Space as it is (fishzoo demo FOLDER serves it locally)
    shutil.copyfile(Path(__file__).with_name('space_app.py'), save_dir / 'app.py')
    (save_dir / 'requirements.txt').write_text(SPACE_REQUIREMENTS)
    return save_dir


def _scrub(text: str, secrets: List[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return re.sub(r'hf_[A-Za-z0-9]{8,}', '***', text)


def _upload_operations(folder: Path, card: Optional[str]) -> List[CommitOperationAdd]:
    """The folder's hub files (weights, config, card, curves, demo app): top level only, no hidden files."""
    names = sorted({p.name for pattern in UPLOAD_PATTERNS for p in folder.glob(pattern)
                    if p.is_file() and not p.name.startswith('.')})
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=card.encode('utf-8') if name == 'README.md'
                               and card is not None else str(folder / name)) for name in names]


def push_to_hub(
        folder: Union[str, Path],
        repo_id: str,
        *,
        private: bool = False,
        commit_message: str = 'Upload with fishzoo',
        revision: Optional[str] = None,
        create_pr: bool = False,
) -> str:
    """Upload a hub folder written by :func:`save_pretrained` to ``repo_id``; returns the commit url.

    The token is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``). On any failure the folder is
    left as it was and :class:`HubUploadError` says why and how to retry, without the token.
    """
    folder = Path(folder)
    missing = [f for f in ('config.json', 'model.safetensors') if not (folder / f).is_file()]
    if missing:
        raise HubUploadError(f'{folder} is not a hub folder: {", ".join(missing)} missing')
    retry = (f'the folder {folder} is intact; retry with `fishzoo push {folder} {repo_id}`')
    token = get_token()
    if not token:
        raise HubUploadError(
            f'no Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry ({retry})')
    api = HfApi(library_name='fishzoo', library_version=__version__)
    # the card's title and snippets name the repo it goes to (a card saved before knowing it names none)
    card = retarget_card((folder / 'README.md').read_text(encoding='utf-8'), repo_id) \
        if (folder / 'README.md').is_file() else None
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_url.repo_id, operations=_upload_operations(folder, card), commit_message=commit_message,
            revision=revision, create_pr=create_pr)
    except Exception as e:  # a network boundary: every failure becomes one clear, token-free sentence
        reason = _scrub(describe(e), [token])
        raise HubUploadError(f'upload of {folder} to {repo_id} failed ({reason}); {retry}') from None
    if card is not None:  # the folder now matches what the Hub holds
        (folder / 'README.md').write_text(card, encoding='utf-8')
    _logger.info('uploaded %s to %s', folder, repo_id)
    return str(getattr(commit, 'commit_url', commit))
