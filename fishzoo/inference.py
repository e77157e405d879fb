"""``optimize_for_inference``: one call to the fastest inference form of a model on this machine.

BatchNorm folded into the preceding convolutions (timm's ``reparameterize_model``, which calls the
blocks' ``reparameterize()``), channels_last memory format, and ``torch.compile`` with inductor's
``freezing`` (weights treated as constants, so the folding and layout changes are baked in). Where
compilation is unavailable or fails (no C++ compiler, an unsupported platform), the folded eager model
runs instead, with one warning.
"""
import logging
import warnings

import torch
import torch.nn as nn
from timm.models import reparameterize_model

_logger = logging.getLogger(__name__)


class InferenceModel(nn.Module):
    """A folded model, compiled when possible; falls back to eager on the first compile failure."""

    def __init__(self, model: nn.Module, compiled=None, channels_last: bool = True):
        super().__init__()
        self.model = model
        self._compiled = compiled
        self.channels_last = channels_last

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as e:  # compilation happens at the first call; any failure -> eager
                warnings.warn(f'torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                              'running the folded model eagerly', RuntimeWarning, stacklevel=2)
                self._compiled = None
        return self.model(x)


def optimize_for_inference(model: nn.Module, channels_last: bool = True, compile: bool = True) -> InferenceModel:
    """The model (a deep copy) in eval mode with BN folded, channels_last and compiled with freezing."""
    folded = reparameterize_model(model.eval(), inplace=False).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    compiled = None
    if compile:
        try:
            compiled = torch.compile(folded, options={'freezing': True})
        except Exception as e:
            warnings.warn(f'torch.compile unavailable ({type(e).__name__}: {e}); running the folded model eagerly',
                          RuntimeWarning, stacklevel=2)
    return InferenceModel(folded, compiled, channels_last)
