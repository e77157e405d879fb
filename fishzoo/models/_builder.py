"""Building fishzoo's models: timm's ``build_model_with_cfg`` with weights that fail fast and clearly.

timm downloads ``pretrained_cfg['url']`` weights with ``torch.hub``, which waits on a dead network for
as long as the operating system lets it and then shows a long urllib traceback. fishzoo's models go
through ``build_model`` instead: when the weights are not in torch.hub's cache and the machine is
offline (``HF_HUB_OFFLINE=1``), or the download fails, the user gets one message that names the
address and shows how to load a local copy.
"""
import http.client
import os
import pickle
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from fishzoo._timm import resolve_pretrained_source
from fishzoo.errors import CheckpointError, ConfigError, PretrainedWeightsUnavailable, describe
from fishzoo.hub.folder import check_hub_folder, hub_repo_folder
from fishzoo.hub.schema import call_problem

__all__ = ['build_model', 'validate_state_dict', 'CheckpointError', 'PretrainedWeightsUnavailable']

DOWNLOAD_TIMEOUT_S = 30


def _short(keys, n=3) -> str:
    keys = list(keys)
    return ', '.join(keys[:n]) + (f', ... ({len(keys)} in all)' if len(keys) > n else '')


def validate_state_dict(state_dict: dict, model) -> dict:
    """Check a (converted) state dict against ``model`` before timm loads it, so a checkpoint of another
    architecture or size gets one message listing the first missing and unexpected keys and shape
    mismatches. The classifier is skipped when the user asked for another ``num_classes`` (timm then
    re-initialises it), the first conv when ``in_chans`` differs (timm adapts it)."""
    expected = model.state_dict()
    cfg = model.pretrained_cfg
    classifier = cfg.get('classifier')
    head = {f'{classifier}.weight', f'{classifier}.bias'} if isinstance(classifier, str) else set()
    skip = head if model.num_classes != cfg.get('num_classes') else set()
    first_conv = cfg.get('first_conv')
    skip_shape = {f'{first_conv}.weight'} if isinstance(first_conv, str) else set()
    missing = [k for k in expected if k not in state_dict and k not in skip]
    # frozen BatchNorm (timm's and torchvision's) has no batch counter and drops it on load itself
    unexpected = [k for k in state_dict if k not in expected and k not in skip
                  and not (k.endswith('.num_batches_tracked') and k.rsplit('.', 1)[0] + '.running_mean' in expected)]
    mismatched = [f'{k} {list(v.shape)} vs {list(expected[k].shape)}' for k, v in state_dict.items()
                  if k in expected and k not in skip and k not in skip_shape
                  and hasattr(v, 'shape') and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys ({_short(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys ({_short(unexpected)})')
        if mismatched:
            parts.append(f'{len(mismatched)} shape mismatches (checkpoint vs model: {_short(mismatched)})')
        head_differs = any(m.split(' ')[0] in head for m in mismatched)
        hint = '; for another number of classes pass num_classes (the checkpoint has a different head)' \
            if head_differs else ''
        raise CheckpointError(f'the checkpoint does not fit {cfg.get("architecture")}: {"; ".join(parts)}{hint}')
    return state_dict


def is_offline() -> bool:
    """huggingface_hub's offline switch, which fishzoo honours for every download."""
    return os.environ.get('HF_HUB_OFFLINE', '').strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def _weights_to_download(variant: str, kwargs: dict) -> Optional[Tuple[str, str]]:
    """(model name with tag, url) of weights timm would download for this build; None if nothing is downloaded."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    load_from, location = resolve_pretrained_source(cfg.to_dict())
    if load_from == 'file' and not os.path.isfile(location):
        # timm raises an empty FileNotFoundError here
        raise FileNotFoundError(f'{location}: no such checkpoint file (given as pretrained_cfg file= for {variant})')
    if load_from != 'url':
        return None
    cache_dir = kwargs.get('cache_dir') or os.path.join(torch.hub.get_dir(), 'checkpoints')
    if (Path(cache_dir) / os.path.basename(urlparse(location).path)).is_file():
        return None
    return (f'{variant}.{cfg.tag}' if cfg.tag else variant), location


def unavailable_message(name: str, url: str, reason: str) -> str:
    filename = os.path.basename(urlparse(url).path)
    return (
        f'pretrained weights for {name} are not on this machine and cannot be downloaded ({reason}). '
        f'Download {url} yourself, then load the file with '
        f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/{filename}'))")


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _load_source(variant: str, kwargs: dict):
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    return resolve_pretrained_source(cfg.to_dict())


def build_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """``timm.models.build_model_with_cfg`` that fails fast, with one clear message, when weights can't be had,
    and names the file when a checkpoint is refused, corrupted or of another model.

    A model built for other than 3 input channels gets a mean/std of that many values (the RGB values'
    average), so timm's data config needs no adaptation and logs no warning about it.
    """
    if pretrained:
        # a folder's own check first: it names config.json and the key, where the call check below can only
        # name the argument
        load_from, location = _load_source(variant, kwargs)
        if load_from in ('local-dir', 'hf-hub'):
            check_hub_folder(location if load_from == 'local-dir' else hub_repo_folder(location))
    problem = call_problem(variant, kwargs)  # whoever calls: a config's model_args through transformers too
    if problem:
        raise ConfigError(f'{variant}: {problem}')
    model = _build_model(model_cls, variant, pretrained, **kwargs)
    cfg, in_chans = model.pretrained_cfg, getattr(model, 'in_chans', 3)
    for key in ('mean', 'std'):
        value = cfg.get(key)
        if isinstance(value, (tuple, list)) and len(value) not in (1, in_chans):
            cfg[key] = (round(sum(value) / len(value), 6),) * in_chans
    return model


def _build_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    download = _weights_to_download(variant, kwargs) if pretrained else None
    if download is None:
        if not pretrained:
            return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
        load_from, location = _load_source(variant, kwargs)
        if not load_from:  # timm would build it with random weights and warn, or fail with a blank name
            raise PretrainedWeightsUnavailable(
                f'{variant} has no pretrained weights (none are published for it; timm.list_pretrained() lists '
                'those that are); build it without pretrained=True, or load a trained folder with local-dir:PATH')
        where = location if load_from in ('file', 'local-dir', 'hf-hub') else f'the {load_from} weights'
        try:
            return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
        except CheckpointError as e:
            raise CheckpointError(f'{where}: {e}') from None
        except FileNotFoundError:
            raise
        except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
            # weights_only refusals, truncated or garbled files (safetensors and pickle alike)
            raise CheckpointError(f'{where}: cannot be loaded ({describe(e)})') from None
    name, url = download
    if is_offline():
        raise PretrainedWeightsUnavailable(unavailable_message(name, url, 'offline: HF_HUB_OFFLINE is set'))
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', None) or e
        raise PretrainedWeightsUnavailable(unavailable_message(name, url, f'download failed: {reason}')) from None
