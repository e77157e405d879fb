"""Export-time forms of fishzoo's layers that XNNPACK runs (ExecuTorch's and LiteRT's CPU delegate).

The same functions written with other operators: whatever XNNPACK does not take runs in the runtime's slow
portable kernels and splits the graph into many delegate calls (Mish decomposes into ``gt``, ``log1p`` and
``where``; nearest up-sampling and the body's channel sums have no XNNPACK op). :func:`for_xnnpack` swaps
them on a folded copy of the model; the model files keep their meaning. The export tests check that nothing
is left outside the delegate; docs/deployment.md has the counts before these forms.

* **Mish** ``x * tanh(softplus(x))`` with ``s = sigmoid(x)``: ``tanh(log(1 + e^x)) = s (2 - s) / (1 + (1 - s)^2)``
  (exact algebra; within 2e-6 of ``F.mish`` in float32 over [-30, 30]); sigmoid, mul, sub, add and div are all
  XNNPACK ops.
* **nearest 2x up-sampling**, in the form each runtime runs best (its :class:`fishzoo.deploy.phone.PhoneRuntime`
  names it): :class:`NearestUpsample2x`, each channel copied four times by a grouped 1x1 convolution of ones,
  then a pixel shuffle (ExecuTorch, whose delegate leaves concatenations outside); :class:`ConcatUpsample2x`,
  each pixel copied by two concatenations (LiteRT). Both exact; docs/deployment.md has the forms tried and
  their times. Where the branch is not exactly twice the trunk (odd sizes), the interpolation stays.
* **channel sums** (a body stage's shortcut): a 1x1 convolution with 0/1 weights (exact sums, other order).
* **strided shortcut** of the dual MobileNetV2 (a slice, then a 1x1 convolution): the 1x1 convolution with
  that stride, which is the same thing, so no slice copy is left.
"""
import copy
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import reparameterize_model

from fishzoo.models.fishnet import ChannelSqueeze, FishRefineStage
from fishzoo.models.mobilenetv2_dual import DualPathBlock

__all__ = ['SigmoidMish', 'ChannelSumConv', 'NearestUpsample2x', 'ConcatUpsample2x', 'for_xnnpack']


class SigmoidMish(nn.Module):
    """Mish from sigmoid, mul and div: ``x * s (2 - s) / (1 + (1 - s)^2)``, ``s = sigmoid(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        # 1 - (1 - s)^2 without the cancellation where s is tiny; float constants: an int 2 becomes a dtype
        # conversion that XNNPACK leaves outside (two per activation)
        t = s * (2.0 - s)
        return x * t / (2.0 - t)


class ChannelSumConv(nn.Module):
    """Sums of ``k`` adjacent channels as a 1x1 convolution with 0/1 weights."""

    def __init__(self, channels: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels // k, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for j in range(channels // k):
                self.conv.weight[j, j * k:(j + 1) * k] = 1
        self.conv.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NearestUpsample2x(nn.Module):
    """Nearest-neighbour resize to ``like``'s size; where that is exactly twice the input, a 1x1 convolution
    copying each channel four times (groups = channels, weights of ones) and a pixel shuffle putting the four
    copies in each 2x2 block (an export traces one branch: its shapes are fixed)."""

    def __init__(self, channels: int):
        super().__init__()
        self.copy = nn.Conv2d(channels, 4 * channels, 1, groups=channels, bias=False)
        nn.init.ones_(self.copy.weight)
        self.copy.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-2] == 2 * x.shape[-2] and like.shape[-1] == 2 * x.shape[-1]:
            return F.pixel_shuffle(self.copy(x), 2)
        return F.interpolate(x, size=like.shape[-2:], mode='nearest')


class ConcatUpsample2x(nn.Module):
    """Nearest-neighbour resize to ``like``'s size; where that is exactly twice the input, every column and then
    every row written twice by concatenating the map with itself (4-D reshapes only)."""

    def __init__(self, channels: int = 0):  # the same signature as NearestUpsample2x's; nothing to hold
        super().__init__()

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-2] != 2 * x.shape[-2] or like.shape[-1] != 2 * x.shape[-1]:
            return F.interpolate(x, size=like.shape[-2:], mode='nearest')
        n, c, h, w = x.shape
        columns = x.reshape(n, c * h, w, 1)
        x = torch.cat([columns, columns], dim=3).reshape(n, c * h, 1, 2 * w)
        return torch.cat([x, x], dim=2).reshape(n, c, 2 * h, 2 * w)


def for_xnnpack(model: nn.Module, upsample: Callable[[int], nn.Module] = NearestUpsample2x) -> nn.Module:
    """A folded (BatchNorm into convolutions), eval-mode copy of ``model`` with the forms above swapped in,
    the up-sampling as ``upsample(channels)`` builds it (:class:`NearestUpsample2x` or :class:`ConcatUpsample2x`).

    Other models pass through folded and unchanged but for Mish, which any timm model may use.
    """
    model = reparameterize_model(copy.deepcopy(model).eval(), inplace=True).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Mish):
                setattr(module, child_name, SigmoidMish())
            elif isinstance(child, ChannelSqueeze) and child.k > 1:
                first_conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
                setattr(module, child_name, ChannelSumConv(first_conv.in_channels, child.k))
        if isinstance(module, FishRefineStage) and module.upsample:
            module.resize = upsample(module.out_chs)
        if isinstance(module, DualPathBlock) and module.shortcut_stride > 1:
            module.shortcut.conv.stride = (module.shortcut_stride, module.shortcut_stride)
            module.shortcut_stride = 1
    return model.eval()
