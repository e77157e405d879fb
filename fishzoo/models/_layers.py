"""Layers and helpers shared by fishzoo's model families: the input check, frozen BatchNorm and output
stride arguments, BatchNorm folding, weight init."""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, FrozenBatchNormAct2d, LayerType, register_notrace_function
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from fishzoo._timm import FeatureGetterNet


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int, min_size: int) -> torch.Tensor:
    """The input the network takes, or a ValueError that says what was expected.

    An RGB batch given to a grayscale model (``in_chans=1``) is converted with ITU-R 601-2 luma weights, as
    PIL's ``convert('L')`` does (the conversion is linear, so it commutes with a normalisation whose mean and
    std are the same for every channel): RGB pipelines such as transformers' image-classification pipeline then
    run grayscale models, and a gray image given as RGB gives exactly its grayscale result. Every other
    mismatch is refused. A few integer comparisons: no cost on the forward path. Strings are concatenated
    (no f-strings) so that TorchScript compiles it.
    """
    if x.dim() != 4:
        raise ValueError(
            'expected a 4-D image batch (N, C, H, W), got a tensor of shape ' + str(list(x.shape)))
    if in_chans == 1 and x.shape[1] == 3:
        # ITU-R 601-2 luma, the weights of PIL's convert('L'): what a grayscale model was trained on
        x = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    if x.shape[1] != in_chans:
        raise ValueError(
            'expected ' + str(in_chans) + ' input channels, got ' + str(x.shape[1])
            + ' (input shape ' + str(list(x.shape)) + '); build the model with in_chans=' + str(x.shape[1]))
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            'expected an input of at least ' + str(min_size) + 'x' + str(min_size) + ' px, got '
            + str(x.shape[2]) + 'x' + str(x.shape[3]))
    return x


# a leaf for torch.fx.symbolic_trace too (register_notrace_function covers timm's own tracer); fx patches
# a wrapped function by name in the module that calls it, so each model file wraps it again
torch.fx.wrap('check_input')


def split_frozen_norm(norm_layer: LayerType) -> Tuple[LayerType, bool]:
    """(the norm layer to build with, whether to freeze it once built) for a model's ``norm_layer``.

    Detection code asks for frozen BatchNorm by class (torchvision's ``FrozenBatchNorm2d``, timm's
    ``FrozenBatchNormAct2d``) or by name (``'frozenbatchnorm2d'``). timm's norm-act factory knows neither, so
    such a model is built with BatchNorm and converted by timm's own ``freeze_batch_norm_2d``: the same
    modules and state dict as freezing a trained model afterwards.
    """
    if isinstance(norm_layer, str):
        frozen = norm_layer.replace('_', '').lower() in ('frozenbatchnorm2d', 'frozenbatchnorm', 'frozenbn')
    else:
        frozen = isinstance(norm_layer, type) and issubclass(norm_layer, (FrozenBatchNorm2d, FrozenBatchNormAct2d))
    return ('batchnorm2d', True) if frozen else (norm_layer, False)


def check_output_stride(output_stride: Optional[int], natural: int, finest: int) -> int:
    """The stride of the deepest feature map, or a ValueError naming what ``output_stride`` may be."""
    if output_stride is None:
        return natural
    allowed = [s for s in (1, 2, 4, 8, 16, 32, 64) if finest <= s]
    if isinstance(output_stride, bool) or output_stride not in allowed:
        raise ValueError(
            f'output_stride must be one of {", ".join(map(str, allowed))} (the deepest map\'s stride; {natural} '
            f'and more changes nothing), got {output_stride!r}')
    return min(output_stride, natural)


def fold_conv_bn_act(conv: nn.Conv2d, bn: nn.Module) -> Tuple[nn.Conv2d, nn.Module]:
    """A conv followed by BN + activation -> (the conv with the BN folded in, the activation alone).

    Frozen BatchNorms (timm's and torchvision's) fold the same way. Anything else (already folded, or
    another norm layer) is returned unchanged.
    """
    if isinstance(bn, nn.BatchNorm2d):
        return fuse_conv_bn_eval(conv.eval(), bn.eval()), getattr(bn, 'act', nn.Identity())
    if isinstance(bn, (FrozenBatchNormAct2d, FrozenBatchNorm2d)):
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight, fused.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        return fused.eval(), getattr(bn, 'act', nn.Identity())
    return conv, bn


class FoldableConvNormAct(ConvNormAct):
    """timm's ConvNormAct (same state dict) whose BatchNorm folds into the conv for inference.

    timm's ``reparameterize_model`` calls ``reparameterize()``; the folded module computes the same
    function with one op fewer (the BatchNorm becomes its activation alone).
    """

    def reparameterize(self):
        self.conv, self.bn = fold_conv_bn_act(self.conv, self.bn)


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit-scale zero-shift BatchNorms: both families' initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FeatureLevels(FeatureGetterNet):
    """timm's ``features_only`` wrapper over ``forward_intermediates``, with a forward TorchScript can type:
    ``forward_intermediates`` returns a list or a (features, list) tuple depending on an argument, and code
    around a scripted feature extractor (smp's encoders) iterates what it returns."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                    output_fmt=self.output_fmt, intermediates_only=True)
        if not torch.jit.is_scripting():  # eager, fx, dynamo and export: the list as it is
            return features
        assert torch.jit.isinstance(features, List[torch.Tensor])  # narrows the union for TorchScript
        return features
