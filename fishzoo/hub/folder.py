"""Checking a hub folder (``config.json`` + ``model.safetensors``) before any model is built from it.

Both timm's ``local-dir:`` / ``hf-hub:`` loading of fishzoo's models (through ``models._builder.build_model``)
and fishzoo's own loading path (``fishzoo.loading``) check a folder here first, and refuse with one sentence
naming the file and key:

- a broken or foreign ``config.json`` (:mod:`.schema`, read by :func:`.config.read_hub_config`);
- missing weights, or weights that differ from the SHA-256 recorded when the folder was saved;
- a config that describes another model than the weights hold: the model is built on the ``meta`` device
  (no memory) and its shapes compared with the ``model.safetensors`` header (read without the tensors),
  so ``num_classes: 1000000000`` is refused before anything is allocated.
"""
import contextlib
import hashlib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import timm
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError, safe_open

from fishzoo.errors import HubFolderError, describe

from .config import read_hub_config
from .schema import class_count_problem

# the weight files timm's local-dir loader looks for, in its order of preference
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors')


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


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


# the folder whose check the caller has just made (fishzoo.loading around timm's build of it): the build's own
# check, in models._builder, is then not made twice
_checked_by_caller: ContextVar[Optional[Path]] = ContextVar('fishzoo_checked_folder', default=None)


@contextlib.contextmanager
def checked_folder(folder: Union[str, Path]) -> Iterator[dict]:
    """:func:`check_hub_folder`, then a block in which building from that folder does not check it again."""
    config = check_hub_folder(folder)
    token = _checked_by_caller.set(Path(folder).resolve())
    try:
        yield config
    finally:
        _checked_by_caller.reset(token)


def check_hub_folder(folder: Union[str, Path]) -> dict:
    """Refuse a folder whose config is broken, whose weights are missing, or whose weights do not match
    the SHA-256 recorded by ``fishzoo.hub.save_pretrained`` (a truncated or bit-flipped file). Returns the
    config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f'{folder}: no such directory')
    if _checked_by_caller.get() == folder.resolve():
        return read_hub_config(folder)
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
    return config
