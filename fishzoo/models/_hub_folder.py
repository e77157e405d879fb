"""Reading a hub folder (``config.json`` + ``model.safetensors``) safely, before any model is built.

Both timm's ``local-dir:`` loading of fishzoo's models (through ``_builder.build_model``) and fishzoo's own
loading path (``fishzoo.loading``) check a folder here first: a broken or foreign ``config.json``, missing
weights, or weights that differ from the SHA-256 recorded when the folder was saved are refused with one
sentence naming the file.
"""
import hashlib
import json
from pathlib import Path
from typing import Union

import timm

from fishzoo.errors import HubFolderError

# the weight files timm's local-dir loader looks for, in its order of preference
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors')


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_hub_config(folder: Union[str, Path]) -> dict:
    """``folder/config.json``, checked: valid JSON, an object, naming an architecture timm knows."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise HubFolderError(f'{path}: no such file; a hub folder holds config.json and model.safetensors')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubFolderError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(config, dict):
        raise HubFolderError(f'{path}: expected a JSON object, got {type(config).__name__}')
    arch = config.get('architecture')
    if not isinstance(arch, str) or not arch:
        raise HubFolderError(f'{path}: no "architecture" name')
    if arch.split('.')[0] not in timm.list_models():
        raise HubFolderError(f'{path}: unknown architecture {arch!r} (not a timm or fishzoo model)')
    num_classes = config.get('num_classes', 0)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise HubFolderError(f'{path}: "num_classes" must be a non-negative integer, got {num_classes!r}')
    for key in ('pretrained_cfg', 'model_args'):
        if key in config and not isinstance(config[key], dict):
            raise HubFolderError(f'{path}: "{key}" must be a JSON object')
    return config


def check_hub_folder(folder: Union[str, Path]) -> dict:
    """Refuse a folder whose config is broken, whose weights are missing, or whose weights do not match
    the SHA-256 recorded by ``fishzoo.hub.save_pretrained`` (a truncated or bit-flipped file). Returns the
    config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f'{folder}: no such directory')
    config = read_hub_config(folder)
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise HubFolderError(f'{folder}: no weights (expected model.safetensors next to config.json)')
    expected = config.get('weights_sha256')
    if expected and weights.name == 'model.safetensors' and sha256_file(weights) != expected:
        raise HubFolderError(f'{weights}: corrupted (its SHA-256 differs from weights_sha256 in config.json)')
    return config
