"""Building a model whose pretrained weights may have to be downloaded, failing fast and clearly.

timm downloads ``pretrained_cfg['url']`` weights with ``torch.hub``, which waits on a dead network for
as long as the operating system lets it and then shows a long urllib traceback. fishzoo's models go
through ``build_model`` instead: when the weights are not in torch.hub's cache and the machine is
offline (``HF_HUB_OFFLINE=1``), or the download fails, the user gets one message that names the
address and shows how to load a local copy.
"""
import http.client
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from timm.models import build_model_with_cfg
from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

DOWNLOAD_TIMEOUT_S = 30


class PretrainedWeightsUnavailable(RuntimeError):
    """The pretrained weights could not be found locally nor downloaded."""


def is_offline() -> bool:
    """huggingface_hub's offline switch, which fishzoo honours for every download."""
    return os.environ.get('HF_HUB_OFFLINE', '').strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def _weights_to_download(variant: str, kwargs: dict) -> Optional[Tuple[str, str]]:
    """(model name with tag, url) of weights timm would download for this build; None if nothing is downloaded."""
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    load_from, location = _resolve_pretrained_source(cfg.to_dict())
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


def build_model(model_cls, variant: str, pretrained: bool = False, **kwargs):
    """``timm.models.build_model_with_cfg`` that fails fast, with one clear message, when weights can't be had."""
    download = _weights_to_download(variant, kwargs) if pretrained else None
    if download is None:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    name, url = download
    if is_offline():
        raise PretrainedWeightsUnavailable(unavailable_message(name, url, 'offline: HF_HUB_OFFLINE is set'))
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', None) or e
        raise PretrainedWeightsUnavailable(unavailable_message(name, url, f'download failed: {reason}')) from None
