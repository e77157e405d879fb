"""fishzoo: the FishNet family and related architectures as timm models.

Importing fishzoo registers every architecture with timm's registry, so ``timm.create_model``,
``timm.list_models('fishnet*')`` and timm's scripts find them.
"""
from typing import List

__version__ = '0.1.0'

from . import models  # noqa: E402  (registers the architectures)
from .errors import FishzooError  # noqa: E402, F401
from .inference import optimize_for_inference  # noqa: E402, F401
from .loading import load_model  # noqa: E402, F401


def list_models(pattern: str = '', pretrained: bool = False) -> List[str]:
    """fishzoo's own model names (optionally filtered by a wildcard ``pattern``)."""
    import timm
    own = set(timm.list_models(module=list(models.MODEL_MODULES)))
    names = timm.list_models(pattern or '', pretrained=pretrained)
    if pretrained:
        return [n for n in names if n.split('.')[0] in own]
    return [n for n in names if n in own]


def quantize(model, calibration, compile: bool = True, max_batches: int = 32):
    """An int8 copy of ``model`` for x86 CPUs (torchao PT2E), calibrated on ``calibration`` images; see
    :func:`fishzoo.quantization.quantize`. Needs ``pip install 'fishzoo[deploy]'``; torchao is imported only here."""
    from .quantization import quantize as _quantize
    return _quantize(model, calibration, compile=compile, max_batches=max_batches)
