"""fishzoo: the FishNet family and related architectures as timm models.

Importing fishzoo registers every architecture with timm's registry, so ``timm.create_model``,
``timm.list_models('fishnet*')`` and timm's scripts find them.
"""
from . import models  # registers the architectures
from .deploy.fast_path import optimize_for_inference
from .errors import FishzooError
from .loading import load_model
from .models import list_models
from .version import __version__


def quantize(model, calibration, compile: bool = True, max_batches: int = 32, val_data=None, max_drop: float = 0.5,
             thresholds=0.5):
    """An int8 copy of ``model`` for x86 CPUs (torchao PT2E), calibrated on ``calibration`` images and, with
    ``val_data``, accuracy-aware (int8 within ``max_drop`` points of fp32); see
    :func:`fishzoo.deploy.int8_torch.quantize`. Needs ``pip install 'fishzoo[deploy]'``; torchao is imported
    only here."""
    from .deploy.int8_torch import quantize as _quantize
    return _quantize(model, calibration, compile=compile, max_batches=max_batches, val_data=val_data,
                     max_drop=max_drop, thresholds=thresholds)


__all__ = ['FishzooError', 'list_models', 'load_model', 'models', 'optimize_for_inference', 'quantize',
           '__version__']
