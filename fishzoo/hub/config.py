"""A hub folder's ``config.json``: read and checked, written so that every reader reads it the same way,
derived for an export folder, and carried inside a single exported file as metadata.

The config is timm's (``save_for_hf``): ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg``
(the preprocessing), ``model_args`` (constructor arguments), plus fishzoo's keys (``weights_sha256``,
``multilabel``, ``thresholds``, an export folder's ``export`` record). What it may hold is :mod:`.schema`'s.
"""
import json
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import torch.nn as nn

from fishzoo._timm import save_config_for_hf
from fishzoo.errors import HubFolderError

from .schema import class_count_problem, config_problem


def read_hub_config(folder: Union[str, Path]) -> dict:
    """``folder/config.json``, checked (:func:`.schema.config_problem`): valid JSON, an object, naming an
    architecture timm knows, with ``model_args``, preprocessing and labels of the right kinds."""
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise HubFolderError(f'{path}: no such file; a hub folder holds config.json and model.safetensors')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubFolderError(f'{path}: not valid JSON ({e})') from None
    problem = config_problem(config)
    if problem:
        raise HubFolderError(f'{path}: {problem}')
    return config


def is_multilabel(config: dict) -> bool:
    """A folder is multi-label when it says so or when it carries per-class thresholds: one rule for predict,
    the card, the demo page, exports and transformers (``problem_type``)."""
    return bool(config.get('multilabel')) or config.get('thresholds') is not None


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
    if is_multilabel(config):
        config['problem_type'] = 'multi_label_classification'
    return config


def model_config(model: nn.Module) -> dict:
    """The ``config.json`` timm's ``save_for_hf`` would write for ``model`` (no weights written)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, Path(tmp) / 'config.json')
        return json.loads((Path(tmp) / 'config.json').read_text())


def export_config(model: nn.Module, source_folder: Optional[Path] = None) -> dict:
    """The ``config.json`` of a folder exported from ``model``: its source folder's (labels, preprocessing,
    thresholds; the weights' checksum dropped, no weights travel), or timm's for a model from a name."""
    if source_folder is not None and (Path(source_folder) / 'config.json').is_file():
        config = read_hub_config(source_folder)
        config.pop('weights_sha256', None)
        return config
    return model_config(model)


# what a single exported file carries of its model's config, so that it predicts alone
METADATA_KEYS = ('architecture', 'num_classes', 'label_names', 'input_size', 'mean', 'std', 'interpolation',
                 'crop_pct')
PREPROCESSING_KEYS = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct')


def metadata(model: nn.Module) -> Dict[str, str]:
    """``model``'s labels and preprocessing as string metadata (JSON values), for a single exported file."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    facts = dict(cfg, num_classes=getattr(model, 'num_classes', None))
    return {key: json.dumps(list(facts[key]) if isinstance(facts[key], tuple) else facts[key])
            for key in METADATA_KEYS if facts.get(key) is not None}


def config_from_metadata(meta: Dict[str, str], path: Union[str, Path]) -> dict:
    """The hub-folder-like config a single exported file's :func:`metadata` describes, checked like a
    ``config.json``; ``path`` names the file in the errors."""
    values = {}
    for key, text in meta.items():
        try:
            values[key] = json.loads(text)
        except ValueError:
            continue
    if 'input_size' not in values or 'mean' not in values:
        raise HubFolderError(f'{path}: no preprocessing in its metadata (not written by fishzoo export); export '
                             'it again with fishzoo export, or give the folder of the model it came from')
    config = dict(architecture=values.get('architecture'), num_classes=values.get('num_classes'),
                  label_names=values.get('label_names'),
                  pretrained_cfg={k: values[k] for k in PREPROCESSING_KEYS if k in values})
    config = {k: v for k, v in config.items() if v is not None}
    problem = config_problem(config) or class_count_problem(config)
    if problem:
        raise HubFolderError(f'{path} (its metadata): {problem}')
    return config
