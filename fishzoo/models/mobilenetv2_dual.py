"""Dual-path MobileNetV2 with Mish, from an ImageNette study.

Every block sums three paths:

* the identity;
* a ResNet-style bottleneck: 1x1 conv, 3x3 conv, 1x1 conv;
* MobileNetV2's inverted residual: 1x1 expansion, depthwise 3x3, linear 1x1 projection.

Both convolution paths use the same intermediate width (``in_chs * t``, t = 6 except in the first
block), every convolution is followed by BatchNorm, and every activation is Mish instead of ReLU6.
The backbone follows MobileNetV2's table (t, c, n, s) after a 32-channel 3x3 stride-2 stem, and ends
with a 1x1 conv to 1280 channels and global average pooling. On ImageNette, trained from scratch, the
study reports 89% top-1 against 87% for ResNet-50; dropout and BlurPool did not help, so the default
``drop_rate`` is 0 and there is no anti-aliasing.

Choices where the description leaves room:

* **Down-sampling.** As in MobileNetV2, the first block of each stage has the stride ``s``. Inside it,
  the 3x3 convolutions of both paths stride, so no 1x1 convolution discards pixels and both paths stay
  aligned.
* **Shortcut when the shape changes.** The identity path becomes a 1x1 conv (stride ``s``) + BN
  projection, ResNet's usual choice, so every block keeps its three paths. A plain identity is used
  whenever the shape is unchanged.
* **Expansion 1.** With t = 1 the inverted residual has no expansion conv (MobileNetV2's first block);
  the bottleneck path still has its 1x1 reduction conv, at width ``in_chs``.
* **After the sum.** No activation: both convolution paths end in BatchNorm without activation (the
  linear bottleneck of MobileNetV2), and the sum is passed on as is.
* **Width multiplier.** Channels are ``make_divisible(c * width, 8)``; the 1280-channel head is kept
  for widths below 1 (as MobileNetV2 does) and scaled above 1.
* **Stochastic depth.** ``drop_path_rate`` drops the two convolution paths together, never the identity.

Cost: taken literally, "the same number of intermediate channels" puts a full 3x3 convolution at the
6x-expanded width in every ResNet path, which dominates the model: 45.9M parameters and 5.84 GMACs at
width 1.0 (12.7M / 1.63 GMACs at width 0.5), more than ResNet-50's 25.6M / 4.1 GMACs.
"""
from math import prod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerType,
    calculate_drop_path_rates,
    create_classifier,
    freeze_batch_norm_2d,
    get_device_dtype,
    make_divisible,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from fishzoo._timm import feature_take_indices
from fishzoo.hub.schema import NAME, Arg, Float, Int, declare_model_args

from ._builder import build_model, validate_state_dict
from ._layers import (
    FeatureLevels,
    FoldableConvNormAct,
    check_input,
    check_output_stride,
    init_weights,
    split_frozen_norm,
)

torch.fx.wrap('check_input')  # fx patches a wrapped function by name in each calling module

__all__ = ['MobileNetV2Dual']

# MobileNetV2's table: expansion t, channels c, repeats n, first stride s
MOBILENETV2_ARCH = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))


class DualPathBlock(nn.Module):
    """identity + ResNet bottleneck + MobileNetV2 inverted residual, summed."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            dilation: int = 1,
            expansion: int = 6,
            act_layer: LayerType = 'mish',
            norm_layer: LayerType = 'batchnorm2d',
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        mid_chs = in_chs * expansion
        # every conv + BN folds into one conv for inference (timm's reparameterize_model)
        conv_act = dict(act_layer=act_layer, norm_layer=norm_layer, **dd)
        linear = dict(apply_act=False, norm_layer=norm_layer, **dd)
        # ResNet-style bottleneck path
        self.bottleneck = nn.Sequential(
            FoldableConvNormAct(in_chs, mid_chs, 1, **conv_act),
            FoldableConvNormAct(mid_chs, mid_chs, 3, stride=stride, dilation=dilation, **conv_act),
            FoldableConvNormAct(mid_chs, out_chs, 1, **linear),
        )
        # MobileNetV2 inverted residual path
        self.inverted = nn.Sequential(
            FoldableConvNormAct(in_chs, mid_chs, 1, **conv_act) if expansion != 1 else nn.Identity(),
            FoldableConvNormAct(mid_chs, mid_chs, 3, stride=stride, dilation=dilation, groups=mid_chs, **conv_act),
            FoldableConvNormAct(mid_chs, out_chs, 1, **linear),
        )
        if stride != 1 or in_chs != out_chs:
            # A 1x1 conv with stride s equals subsampling by s, then the conv at stride 1. It is written that
            # way because oneDNN's backward of a strided 1x1 conv with a channels_last input and a contiguous
            # gradient corrupted the heap (test_channels_last_training_keeps_the_heap_intact guards it).
            self.shortcut = FoldableConvNormAct(in_chs, out_chs, 1, **linear)
        else:
            self.shortcut = nn.Identity()
        self.shortcut_stride = stride
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_stride
        shortcut = self.shortcut(x[:, :, ::s, ::s] if s > 1 else x)
        return shortcut + self.drop_path(self.bottleneck(x) + self.inverted(x))


class MobileNetV2Dual(nn.Module):
    """MobileNetV2 backbone whose blocks merge identity, bottleneck and inverted-residual paths.

    Args:
        width: channel multiplier of the MobileNetV2 table.
        arch: (t, c, n, s) rows.
        stem_chs: stem width before the multiplier.
        head_chs: width of the final 1x1 conv (kept for width < 1).
        act_layer: activation of every conv (Mish).
        norm_layer: BatchNorm; frozen BatchNorm by name (``'frozenbatchnorm2d'``) or class (torchvision's
            ``FrozenBatchNorm2d``, timm's ``FrozenBatchNormAct2d``) as detection code asks for it.
        output_stride: stride of the deepest map, 8 or 16 for dense prediction: the stages past it keep the
            resolution and dilate their 3x3 convolutions instead, as timm's MobileNetV2 does (same weights).
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate, device, dtype: as in timm.
    """

    def __init__(
            self,
            width: float = 1.0,
            arch: Sequence[Tuple[int, int, int, int]] = MOBILENETV2_ARCH,
            stem_chs: int = 32,
            head_chs: int = 1280,
            act_layer: LayerType = 'mish',
            norm_layer: LayerType = 'batchnorm2d',
            output_stride: Optional[int] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        natural_stride = 2 * prod(s for *_, s in arch)
        self.output_stride = check_output_stride(output_stride, natural_stride, 2)
        self.min_input_size = self.output_stride  # the deepest map is at least 1 px
        norm_layer, freeze_norm = split_frozen_norm(norm_layer)

        stem_chs = make_divisible(stem_chs * width)
        self.conv_stem = FoldableConvNormAct(
            in_chans, stem_chs, 3, stride=2, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.feature_info = []

        dpr = iter(calculate_drop_path_rates(drop_path_rate, sum(n for _, _, n, _ in arch)))
        in_chs, reduction, dilation = stem_chs, 2, 1
        stages = []
        for stage_idx, (t, c, n, s) in enumerate(arch):
            out_chs = make_divisible(c * width)
            # past output_stride a stage keeps the resolution: its first block runs at stride 1 with the
            # dilation so far, the others with the dilation the lost stride adds (timm's rule)
            stride, first_dilation = s, dilation
            if reduction * s > self.output_stride:
                stride, dilation = 1, dilation * s
            blocks = []
            for i in range(n):
                blocks.append(DualPathBlock(
                    in_chs, out_chs, stride=stride if i == 0 else 1, dilation=first_dilation if i == 0 else dilation,
                    expansion=t, act_layer=act_layer, norm_layer=norm_layer, drop_path=next(dpr), **dd))
                in_chs = out_chs
            reduction *= stride
            stages.append(nn.Sequential(*blocks))
            # a level is the last stage at each stride
            is_last_at_stride = stage_idx == len(arch) - 1 or arch[stage_idx + 1][3] != 1
            if is_last_at_stride:
                self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'blocks.{stage_idx}'))
        self.blocks = nn.Sequential(*stages)
        self._level_stage = [int(f['module'].split('.')[1]) for f in self.feature_info]

        self.num_features = self.head_hidden_size = make_divisible(head_chs * max(1.0, width))
        self.conv_head = FoldableConvNormAct(
            in_chs, self.num_features, 1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.global_pool, self.classifier = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd)
        init_weights(self)
        if freeze_norm:
            freeze_batch_norm_2d(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv_stem',
            blocks=r'^blocks\.(\d+)' if coarse else [
                (r'^blocks\.(\d+)\.(\d+)', None),
                (r'^conv_head', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """A new classifier for ``num_classes`` (0: none), on the model's device and dtype, in its train/eval
        mode; the pooling stays as it is unless ``global_pool`` names another (timm's contract)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                          **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.classifier.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns the stride 2/4/8/16/32 levels of ``feature_info``.

        Args:
            x: input images.
            indices: take last n levels if int, all if None, the given levels if a sequence.
            norm: unused (no final norm layer).
            stop_early: stop after the last level asked for.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the levels.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        x = check_input(x, self.in_chans, self.min_input_size)
        # the level count from _level_stage, not feature_info (a list of dicts TorchScript cannot type)
        take_indices, max_index = feature_take_indices(len(self._level_stage), indices)
        take_stages = [self._level_stage[i] for i in take_indices]
        last_stage = self._level_stage[max_index] if stop_early else len(self.blocks) - 1
        intermediates: List[torch.Tensor] = []
        x = self.conv_stem(x)
        for i, stage in enumerate(self.blocks):
            if i <= last_stage:  # no slice by a runtime value: TorchScript unrolls this loop
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint_seq(stage, x)
                else:
                    x = stage(x)
                if i in take_stages:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if last_stage == len(self.blocks) - 1:
            x = self.conv_head(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head conv / classifier) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.blocks = self.blocks[:self._level_stage[max_index] + 1]
        if prune_head or max_index < len(self.feature_info) - 1:
            # the head conv belongs to the classifier (and is sized for the last stage only), as in timm's
            # EfficientNet: a feature extractor that kept it would carry parameters no forward uses
            self.conv_head = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.in_chans, self.min_input_size)
        x = self.conv_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return self.conv_head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: MobileNetV2Dual) -> Dict[str, torch.Tensor]:
    """fishzoo's own checkpoints, checked to fit (one message for another architecture or size)."""
    state_dict = state_dict.get('state_dict', state_dict)
    return validate_state_dict(state_dict, model)


def _create_mobilenetv2_dual(variant: str, pretrained: bool = False, **kwargs) -> MobileNetV2Dual:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3, 4))
    return build_model(
        MobileNetV2Dual, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls=FeatureLevels),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem.conv', 'classifier': 'classifier',
        'paper_ids': 'arXiv:1801.04381',
        'paper_name': 'MobileNetV2: Inverted Residuals and Linear Bottlenecks (backbone table)',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'mobilenetv2_dual_100': _cfg(),
    'mobilenetv2_dual_050': _cfg(),
})


@register_model
def mobilenetv2_dual_100(pretrained: bool = False, **kwargs) -> MobileNetV2Dual:
    """Dual-path MobileNetV2 with Mish, width 1.0."""
    return _create_mobilenetv2_dual('mobilenetv2_dual_100', pretrained, **dict(dict(width=1.0), **kwargs))


@register_model
def mobilenetv2_dual_050(pretrained: bool = False, **kwargs) -> MobileNetV2Dual:
    """Dual-path MobileNetV2 with Mish, width 0.5."""
    return _create_mobilenetv2_dual('mobilenetv2_dual_050', pretrained, **dict(dict(width=0.5), **kwargs))


# what a hub folder's config.json may set (fishzoo.hub.schema)
declare_model_args(
    ('mobilenetv2_dual_100', 'mobilenetv2_dual_050'),
    dict(width=Float(0.05, 8), arch=Arg('int_rows', 1, 4096, max_len=16), stem_chs=Int(1, 1024),
         head_chs=Int(1, 16384), act_layer=NAME, norm_layer=NAME))
