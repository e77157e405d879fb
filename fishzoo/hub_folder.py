"""Reading a hub folder (``config.json`` + ``model.safetensors``) safely, before any model is built.

Both timm's ``local-dir:`` / ``hf-hub:`` loading of fishzoo's models (through ``_builder.build_model``) and
fishzoo's own loading path (``fishzoo.loading``) check a folder here first, and refuse with one sentence
naming the file and key:

- a broken or foreign ``config.json``, or ``model_args`` the architecture does not take (``_model_args``);
- missing weights, or weights that differ from the SHA-256 recorded when the folder was saved;
- a config that describes another model than the weights hold: the model is built on the ``meta`` device
  (no memory) and its shapes compared with the ``model.safetensors`` header (read without the tensors),
  so ``num_classes: 1000000000`` is refused before anything is allocated.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError, safe_open

from fishzoo.errors import HubFolderError, describe
from fishzoo.models._model_args import model_args_problem

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
    if not timm.is_model(arch.split('.')[0]):
        raise HubFolderError(f'{path}: unknown architecture {arch!r} (not a timm or fishzoo model)')
    num_classes = config.get('num_classes', 0)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 0 <= num_classes <= 1_000_000:
        raise HubFolderError(f'{path}: "num_classes" must be a non-negative integer up to 1000000, got {num_classes!r}')
    for key in ('pretrained_cfg', 'model_args'):
        if key in config and not isinstance(config[key], dict):
            raise HubFolderError(f'{path}: "{key}" must be a JSON object')
    problem = model_args_problem(arch.split('.')[0], config.get('model_args', {})) or preprocessing_problem(config)
    if problem:
        raise HubFolderError(f'{path}: {problem}')
    return config


INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming', 'random')
CROP_MODES = ('center', 'squash', 'border')
MAX_INPUT_SIDE = 4096  # px: a side above this is no model's input size, and would make every image huge
MAX_RESIZE_SIDE = 8192  # px: the short side an image is resized to before the center crop (size / crop_pct)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def preprocessing_problem(config: dict) -> Optional[str]:
    """What is wrong with a config's preprocessing and labels, or None: wrong types would fail deep in the
    transforms, and the input size and crop fraction decide how much memory reading one image takes."""
    cfg = config.get('pretrained_cfg') or {}
    size = cfg.get('input_size')
    channels = None
    if size is not None:
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in size)
                and 1 <= size[0] <= 4 and all(8 <= v <= MAX_INPUT_SIDE for v in size[1:])):
            return (f'"pretrained_cfg.input_size" must be [channels 1-4, height, width] with sides from 8 to '
                    f'{MAX_INPUT_SIDE} px, got {size!r}')
        channels = size[0]
    for key in ('mean', 'std'):
        value = cfg.get(key)
        if value is None:
            continue
        if not (isinstance(value, list) and value and all(_number(v) for v in value)
                and (channels is None or len(value) == channels) and (key == 'mean' or min(value) > 0)):
            return (f'"pretrained_cfg.{key}" must be {channels or "one or more"} '
                    f'{"positive " if key == "std" else ""}numbers (one per channel), got {value!r}')
    interpolation = cfg.get('interpolation')
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        return f'"pretrained_cfg.interpolation" must be one of {", ".join(INTERPOLATIONS)}, got {interpolation!r}'
    crop_pct = cfg.get('crop_pct')
    if crop_pct is not None and not (_number(crop_pct) and 0.1 <= crop_pct <= 2.0):
        return f'"pretrained_cfg.crop_pct" must be a number from 0.1 to 2, got {crop_pct!r}'
    if crop_pct is not None and channels is not None and max(size[1:]) / crop_pct > MAX_RESIZE_SIDE:
        return (f'"pretrained_cfg" resizes every image to {max(size[1:]) / crop_pct:.0f} px before cropping '
                f'(input_size {size}, crop_pct {crop_pct}); at most {MAX_RESIZE_SIDE} px')
    crop_mode = cfg.get('crop_mode')
    if crop_mode is not None and crop_mode not in CROP_MODES:
        return f'"pretrained_cfg.crop_mode" must be one of {", ".join(CROP_MODES)}, got {crop_mode!r}'
    labels = config.get('label_names', cfg.get('label_names'))
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, (str, int)) and
                                                                     not isinstance(n, bool) for n in labels)):
        return f'"label_names" must be a list of names, got {type(labels).__name__}'
    thresholds = config.get('thresholds')
    if thresholds is not None and not (isinstance(thresholds, list) and all(_number(t) and 0 <= t <= 1
                                                                            for t in thresholds)):
        return '"thresholds" must be a list of numbers between 0 and 1'
    return None


def class_count_problem(config: dict) -> Optional[str]:
    """The class counts a config states (top level, ``model_args``, ``pretrained_cfg``, the label names, the
    thresholds) disagree, or None: one of them would be silently ignored (timm drops a pretrained head whose
    class count differs from the one asked for, leaving a randomly initialised classifier)."""
    cfg = config.get('pretrained_cfg') or {}
    labels = config.get('label_names', cfg.get('label_names'))
    thresholds = config.get('thresholds')
    counts = {'num_classes': config.get('num_classes'),
              'model_args.num_classes': (config.get('model_args') or {}).get('num_classes'),
              'pretrained_cfg.num_classes': cfg.get('num_classes'),
              'label_names': len(labels) if labels is not None else None,
              'thresholds': len(thresholds) if thresholds is not None else None}
    stated = {k: v for k, v in counts.items() if v is not None}
    if len(set(stated.values())) > 1:
        return ('its class counts disagree (' + ', '.join(f'{k} {v}' for k, v in stated.items())
                + '); a model loaded from it would get a classifier the weights do not hold')
    return None


def safetensors_shapes(path: Path) -> Dict[str, Tuple[int, ...]]:
    """Every tensor's shape from a safetensors file's header; the tensors themselves are not read."""
    try:
        with safe_open(str(path), framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise HubFolderError(f'{path}: not a readable safetensors file ({describe(e)})') from None


def _describe_args(config: dict) -> str:
    args = dict(config.get('model_args', {}))
    args.setdefault('num_classes', config.get('num_classes'))
    return ', '.join(f'{k}={v!r}' for k, v in sorted(args.items()) if v is not None)


def check_weights_fit(config: dict, weights: Path, config_path: Path) -> None:
    """Refuse a config that describes another model than ``weights`` holds, before anything is allocated.

    The model is built on the meta device from the config alone; shapes of the tensors both have are
    compared, and a model far larger than the file is refused too (weights saved under other names).
    """
    arch = config['architecture'].split('.')[0]
    model_args = dict(config.get('model_args', {}))
    model_args.setdefault('num_classes', config.get('num_classes', 1000))
    try:
        with torch.device('meta'):
            expected = {k: tuple(v.shape) for k, v in
                        timm.create_model(arch, pretrained=False, **model_args).state_dict().items()}
    except Exception as e:  # a constructor refusing its arguments: TypeError, ValueError, AssertionError, ...
        raise HubFolderError(f'{config_path}: "model_args" do not build {arch} ({describe(e)})') from None
    if weights.suffix == '.safetensors':
        shapes = safetensors_shapes(weights)
        for key, shape in expected.items():
            if key in shapes and shapes[key] != shape:
                raise HubFolderError(
                    f'{config_path} does not describe the model in {weights.name}: {key} is '
                    f'{list(shapes[key])} in the weights but {list(shape)} by the config ({_describe_args(config)})')
        held = sum(_numel(s) for s in shapes.values())
    else:  # a pickle can't be inspected without loading it: its size bounds the model (2 bytes a value)
        held = os.path.getsize(weights) // 2
    wanted = sum(_numel(s) for s in expected.values())
    if wanted > 2 * held + 1_000_000:
        raise HubFolderError(f'{config_path} describes a model of {wanted:,} values but {weights.name} holds '
                             f'{held:,} ({_describe_args(config)})')


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def hub_repo_folder(repo_id: str) -> Path:
    """The local snapshot folder of a Hub repo's config.json and weights (downloaded unless cached or offline).

    ``repo_id`` may end in ``@revision`` as in timm's ``hf-hub:`` names.
    """
    repo, _, revision = repo_id.partition('@')
    config = Path(hf_hub_download(repo, 'config.json', revision=revision or None))
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo, name, revision=revision or None)
            break
        except EntryNotFoundError:  # not in this repo (offline: not in the cache); try the next name
            continue
    return config.parent


_checked: Dict[Tuple, dict] = {}  # folders already checked, by the state of their files


def _state(folder: Path) -> Tuple:
    return tuple((n, st.st_size, st.st_mtime_ns) for n in ('config.json',) + WEIGHT_FILES
                 for st in [_stat(folder / n)] if st is not None)


def _stat(path: Path):
    try:
        return os.stat(path)
    except OSError:
        return None


def check_hub_folder(folder: Union[str, Path]) -> dict:
    """Refuse a folder whose config is broken, whose weights are missing, or whose weights do not match
    the SHA-256 recorded by ``fishzoo.hub.save_pretrained`` (a truncated or bit-flipped file). Returns the
    config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f'{folder}: no such directory')
    key = (str(folder.resolve()), _state(folder))
    if key in _checked:  # fishzoo's loading path checks before timm, and the build checks again
        return _checked[key]
    config = read_hub_config(folder)
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise HubFolderError(f'{folder}: no weights (expected model.safetensors next to config.json)')
    expected = config.get('weights_sha256')
    if expected and weights.name == 'model.safetensors' and sha256_file(weights) != expected:
        raise HubFolderError(f'{weights}: corrupted (its SHA-256 differs from weights_sha256 in config.json)')
    check_weights_fit(config, weights, folder / 'config.json')
    problem = class_count_problem(config)
    if problem:
        raise HubFolderError(f'{folder / "config.json"}: {problem}')
    _checked[key] = config
    return config
