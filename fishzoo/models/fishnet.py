"""FishNet: a versatile backbone for image, region and pixel level prediction.

Sun et al., NeurIPS 2018 (arXiv:1901.03495). Authors' code: https://github.com/kevin-ssy/FishNet

A FishNet is a fish of three parts joined by concatenation:

* the **tail** halves the resolution after every stage, like a ResNet;
* the **bridge** turns the lowest-resolution feature into a score map and gates it with an
  SE-style attention vector;
* the **body** doubles the resolution after every stage and concatenates each up-sampled trunk
  with the (transferred) input of the tail stage of the same resolution;
* the **head** halves the resolution again and concatenates with the input of the body stage of
  the same resolution, so every resolution ends up with high-level semantics.

All residual blocks are pre-activation bottlenecks. The first block of a body stage has no 1x1
shortcut: its identity sums ``k`` adjacent channels ("channel squeeze") down to the stage width.
Body blocks use dilation 1, 2, 4; down-sampling is 2x2 max pooling, up-sampling nearest-neighbour.

Layout of ``FishNet.stages`` for ``n`` down-sampling steps (the authors' models have n = 3), with
the authors' stage indices so their checkpoints map one to one:

    stages[0:n]         tail   -> FishTailStage
    stages[n]           bridge -> FishBridge
    stages[n+1:2n+1]    body   -> FishRefineStage(upsample=True)
    stages[2n+1:3n+1]   head   -> FishRefineStage(upsample=False)

Differences from the authors' code, none of which changes a result where theirs runs:

* any input of at least 32x32 px works (theirs needs multiples of 32): the body up-samples its trunk
  to the exact size of the feature it is concatenated with instead of by a fixed factor of 2;
* the 1x1-conv classifier on the pooled map is an equivalent ``nn.Linear`` (``fc``), so timm's
  head handling (``reset_classifier``, ``num_classes=0``, ``pre_logits``) applies unchanged;
* BatchNorm + ReLU pairs are timm ``BatchNormAct2d`` modules (same state-dict keys as BatchNorm2d).

Variants beyond the authors' releases:

* ``fishnext150``: FishNet-150 with ResNeXt-style bottlenecks, following ResNeXt-50 (32x4d)'s rule
  for turning a ResNet bottleneck into a ResNeXt one: every bottleneck is twice as wide as FishNet's
  (``mid = out_chs // 2`` instead of ``out_chs // 4``) and its 3x3 convolution has 32 groups. Depths,
  1x1 shortcuts, bridge and score blocks are FishNet-150's. 25.21M parameters at 1000 classes,
  3.8% under the paper's 26.2M (the paper does not give its exact rule).
* ``fishnet_s64`` / ``fishnet_m64`` / ``fishnet_l64``: low-resolution FishNets for 32-64 px data.
  Their stem keeps full resolution (stride-1 convolutions, no max-pool), so a 64 px image enters the
  fish at 64x64 rather than 16x16. All three use the authors' channel plan divided by 4 and differ in
  depth: s64 one block per stage, m64 FishNet-99's depths, l64 FishNet-150's with a deeper last stage.
* ``downsample`` chooses the down-sampling of the paper's Table 2 ablation: ``'max2'`` (default),
  ``'max3'`` (3x3 max-pool, stride 2), ``'avg2'`` (2x2 average pool) or ``'conv'`` (a pre-activation
  3x3 convolution with stride 2, channels unchanged).
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerType,
    calculate_drop_path_rates,
    create_act_layer,
    create_classifier,
    freeze_batch_norm_2d,
    get_device_dtype,
    get_norm_act_layer,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from fishzoo._timm import feature_take_indices
from fishzoo.hub.schema import NAME, Choice, Float, Int, Ints, declare_model_args

from ._builder import CheckpointError, build_model, validate_state_dict
from ._layers import (
    FeatureLevels,
    FoldableConvNormAct,
    check_input,
    check_output_stride,
    fold_conv_bn_act,
    init_weights,
    split_frozen_norm,
)

__all__ = ['FishNet', 'FishStageSpec', 'fish_layout']

DOWNSAMPLE_TYPES = ('max2', 'max3', 'avg2', 'conv')
# the authors' network_planes[1:]: output widths of the tail, bridge, body and head stages
AUTHORS_STAGE_CHS = (128, 256, 512, 512, 512, 384, 256, 320, 832, 1600)

torch.fx.wrap('check_input')  # fx patches a wrapped function by name in each calling module


def channel_squeeze(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sum each group of ``k`` adjacent channels, keeping the input's memory format.

    Summed over a channels-first view, a channels_last input came out channels-first, and every op after
    it in the body then ran on mixed layouts; summing over the innermost (channel) axis of the NHWC view
    keeps it channels_last. The additions are the same either way.
    """
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.permute(0, 2, 3, 1).reshape(n, h, w, c // k, k).sum(-1).permute(0, 3, 1, 2)
    return x.reshape(n, c // k, k, h, w).sum(2)


torch.fx.wrap('channel_squeeze')  # a layout test is control flow that symbolic tracing cannot follow


class ChannelSqueeze(nn.Module):
    """Identity of an up-sampling block: sums each group of ``k`` adjacent channels."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return x
        return channel_squeeze(x, self.k)


class PreActShortcut(nn.Module):
    """BN-ReLU-1x1 conv projection used when a block changes its channel count."""

    def __init__(self, in_chs: int, out_chs: int, norm_act_layer: LayerType, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        self.bn = norm_act_layer(in_chs, **dd)
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: (BN-ReLU-conv) x 3 on the residual path.

    ``squeeze=k`` (k >= 1) makes it the first block of a body stage, whose identity sums k adjacent
    channels of the input instead of projecting it.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            norm_act_layer: LayerType,
            dilation: int = 1,
            squeeze: int = 0,
            bottle_ratio: float = 0.25,
            groups: int = 1,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        mid_chs = int(out_chs * bottle_ratio)
        self.bn1 = norm_act_layer(in_chs, **dd)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)
        self.bn2 = norm_act_layer(mid_chs, **dd)
        self.conv2 = nn.Conv2d(
            mid_chs, mid_chs, 3, padding=dilation, dilation=dilation, groups=groups, bias=False, **dd)
        self.bn3 = norm_act_layer(mid_chs, **dd)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd)
        if squeeze:
            if in_chs != out_chs * squeeze:
                raise ValueError(f'channel squeeze needs in_chs == {squeeze} * out_chs, got {in_chs} -> {out_chs}')
            self.shortcut = ChannelSqueeze(squeeze)
        elif in_chs != out_chs:
            self.shortcut = PreActShortcut(in_chs, out_chs, norm_act_layer, **dd)
        else:
            self.shortcut = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def reparameterize(self):
        """Fold bn2 into conv1 and bn3 into conv2 for inference (timm's reparameterize_model calls this).

        bn1 normalises the block input, a sum of two paths, and cannot be folded backwards; it stays.
        """
        self.conv1, self.bn2 = fold_conv_bn_act(self.conv1, self.bn2)
        self.conv2, self.bn3 = fold_conv_bn_act(self.conv2, self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.bn2(out))
        out = self.conv3(self.bn3(out))
        return self.drop_path(out) + self.shortcut(x)


class ScoreBlock(nn.Module):
    """BN-ReLU-1x1 conv-BN-ReLU that halves the channels: the paper's score transform."""

    def __init__(self, in_chs: int, norm_act_layer: LayerType, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        self.bn1 = norm_act_layer(in_chs, **dd)
        self.conv = nn.Conv2d(in_chs, in_chs // 2, 1, bias=False, **dd)
        self.bn2 = norm_act_layer(in_chs // 2, **dd)

    def reparameterize(self):
        """Fold bn2 into the conv for inference; bn1 precedes the conv and stays."""
        self.conv, self.bn2 = fold_conv_bn_act(self.conv, self.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv(self.bn1(x)))


class BridgeAttention(nn.Module):
    """SE-style gate of the bridge: BN-ReLU, global pool, 1x1 squeeze/excite, sigmoid."""

    def __init__(self, in_chs: int, out_chs: int, norm_act_layer: LayerType, act_layer: LayerType,
                 device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        super().__init__()
        self.bn = norm_act_layer(in_chs, **dd)
        self.fc1 = nn.Conv2d(in_chs, out_chs // 16, 1, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(out_chs // 16, out_chs, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x).mean((2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(self.act(self.fc1(x))))


def create_downsample(kind: str, chs: int, norm_act_layer: LayerType, stride: int = 2, dilation: int = 1,
                      device=None, dtype=None) -> nn.Module:
    """The down-sampling step of a tail or head stage; ``stride=1`` where ``output_stride`` stops it: the pools
    become identities, the convolution keeps its weights and runs at stride 1, dilated like the blocks before it."""
    if kind not in DOWNSAMPLE_TYPES:
        raise ValueError(f"downsample must be one of {', '.join(map(repr, DOWNSAMPLE_TYPES))}, got {kind!r}")
    if kind == 'conv':
        return nn.Sequential(
            norm_act_layer(chs, device=device, dtype=dtype),
            nn.Conv2d(chs, chs, 3, stride=stride, padding=dilation, dilation=dilation, bias=False,
                      device=device, dtype=dtype))
    if stride == 1:
        return nn.Identity()
    if kind == 'max2':
        return nn.MaxPool2d(2, stride=2)
    if kind == 'max3':
        return nn.MaxPool2d(3, stride=2, padding=1)
    return nn.AvgPool2d(2, stride=2)


class NearestResize(nn.Module):
    """Nearest-neighbour resize of the trunk to the size of the branch it joins (a module so that an export can
    swap in another form of the same function: :mod:`fishzoo.deploy.xnnpack`).

    Identical to the authors' ``scale_factor=2`` when the branch's size is even, and also correct for odd
    sizes, where their fixed factor fails in ``torch.cat``.
    """

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode='nearest')


class FishBlocks(nn.Sequential):
    """A run of residual blocks (an ``nn.Sequential``: same state dict) that can checkpoint its activations."""

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        for block in self:
            x = block(x)
        return x


def make_blocks(in_chs: int, out_chs: int, depth: int, dprs: Sequence[float], squeeze: int = 0,
                **block_kwargs) -> FishBlocks:
    """``depth`` bottlenecks; only the first one takes ``squeeze`` and changes the width."""
    return FishBlocks(*[
        PreActBottleneck(in_chs if i == 0 else out_chs, out_chs, squeeze=squeeze if i == 0 else 0,
                         drop_path=dprs[i], **block_kwargs)
        for i in range(depth)])


class FishTailStage(nn.Module):
    """Tail stage: residual blocks, then down-sampling."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: str, dprs: Sequence[float],
                 dilation: int = 1, downsample_stride: int = 2, **block_kwargs):
        super().__init__()
        self.branch_index = -1
        self.blocks = make_blocks(in_chs, out_chs, depth, dprs, dilation=dilation, **block_kwargs)
        self.downsample = create_downsample(
            downsample, out_chs, block_kwargs['norm_act_layer'], downsample_stride, dilation,
            block_kwargs.get('device'), block_kwargs.get('dtype'))

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.downsample(self.blocks(x))


class FishBridge(nn.Module):
    """Bridge between tail and body: score map, SE-style attention, residual blocks.

    Computes ``blocks(s) * a + a`` where ``s`` is the score map of the tail output and ``a`` the
    attention vector of ``s``.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, dprs: Sequence[float], act_layer: LayerType,
                 dilation: int = 1, **block_kwargs):
        super().__init__()
        norm_act_layer = block_kwargs['norm_act_layer']
        dd = dict(device=block_kwargs.get('device'), dtype=block_kwargs.get('dtype'))
        self.branch_index = -1
        self.score = ScoreBlock(in_chs, norm_act_layer, **dd)
        self.score_fc = nn.Conv2d(in_chs // 2, out_chs * 2, 1, **dd)
        self.blocks = make_blocks(out_chs * 2, out_chs, depth, dprs, dilation=dilation, **block_kwargs)
        self.attn = BridgeAttention(out_chs * 2, out_chs, norm_act_layer, act_layer, **dd)

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.score_fc(self.score(x))
        attn = self.attn(x)
        return self.blocks(x) * attn + attn


class FishRefineStage(nn.Module):
    """Body (up-sampling) or head (down-sampling) stage.

    The trunk runs through the residual blocks and is resampled to the size of ``branch``, the
    feature this stage is joined with; the branch runs through the transfer blocks; the two are
    concatenated along channels.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            branch_chs: int,
            branch_index: int,
            depth: int,
            transfer_depth: int,
            upsample: bool,
            downsample: str,
            dilation: int,
            dprs: Sequence[float],
            transfer_dilation: int = 1,
            resample: bool = True,
            **block_kwargs,
    ):
        super().__init__()
        self.branch_index = branch_index
        self.out_chs = out_chs
        self.upsample = upsample
        self.resample = resample  # False where output_stride keeps the trunk on the branch's grid already
        squeeze = in_chs // out_chs if upsample else 0
        self.blocks = make_blocks(
            in_chs, out_chs, depth, dprs[:depth], squeeze=squeeze, dilation=dilation, **block_kwargs)
        self.transfer = make_blocks(
            branch_chs, branch_chs, transfer_depth, dprs[depth:], dilation=transfer_dilation, **block_kwargs)
        self.resize = NearestResize()  # used by body stages only (TorchScript wants it on every stage)
        if upsample:
            self.downsample = nn.Identity()
        else:
            self.downsample = create_downsample(
                downsample, out_chs, block_kwargs['norm_act_layer'], 2 if resample else 1, dilation,
                block_kwargs.get('device'), block_kwargs.get('dtype'))

    def forward(self, x: torch.Tensor, branch: Optional[torch.Tensor] = None) -> torch.Tensor:
        assert branch is not None
        x = self.blocks(x)
        branch = self.transfer(branch)
        if self.upsample:
            if self.resample:
                x = self.resize(x, branch)
        else:
            x = self.downsample(x)
        return torch.cat([x, branch], dim=1)


@dataclass(frozen=True)
class FishStageSpec:
    """Where one stage of the fish sits: its widths, the earlier feature it joins, its strides and dilations."""
    kind: str  # 'tail' | 'bridge' | 'body' | 'head'
    in_chs: int  # trunk channels entering the stage
    out_chs: int  # trunk channels after its blocks (the authors' network_planes entry)
    branch_index: int  # the stage whose *input* this stage concatenates (-1: none)
    branch_chs: int  # channels of that branch (0: none)
    dilation: int  # of the 3x3 convolutions of the stage's blocks
    reduction: int  # output stride of the stage's output
    is_feature: bool  # a pyramid level of feature_info
    transfer_dilation: int = 1  # of the transfer blocks that run on the branch
    resamples: bool = True  # halves (tail, head) or doubles (body) the resolution; False where output_stride stops it

    @property
    def output_chs(self) -> int:
        return self.out_chs + self.branch_chs


def fish_layout(stage_chs: Sequence[int], stem_chs: int, stem_stride: int,
                output_stride: Optional[int] = None) -> List[FishStageSpec]:
    """The ``3n + 1`` stages of a fish with ``n`` down-sampling steps, from the stage widths alone.

    A body stage joins the input of its mirror tail stage, a head stage that of its mirror body stage;
    body stages are dilated 1, 2, 4, ... as in the authors' code; the finest body stage and every head
    stage are the pyramid levels.

    ``output_stride`` (a power of two, at most the fish's natural ``stem_stride * 2**n``) caps the
    resolution the way timm's ResNet does: every down-sampling step that would go past it is dropped and
    the 3x3 convolutions that used to run on the coarser grid are dilated by the factor they lost
    (``natural stride / output_stride``), on top of the body's own dilation. That touches the tail's
    last steps, the bridge, the body blocks that run before their up-sampling, the head's last steps
    and the transfer blocks on branches that were coarser. The body's up-sampling needs no change: it
    resizes to the size of the branch, which is then the same grid (a no-op).
    """
    n = (len(stage_chs) - 1) // 3
    natural = stem_stride * 2 ** n
    cap = natural if output_stride is None else min(output_stride, natural)

    def lost(stride: int) -> int:  # the dilation a conv running at this natural stride gets
        return max(1, stride // cap)

    specs: List[FishStageSpec] = []
    stage_in_chs = [stem_chs]  # stage_in_chs[i]: channels entering stage i
    for i, out_chs in enumerate(stage_chs):
        transfer_dilation, resamples = 1, True
        if i < n:  # blocks at stem_stride * 2**i, then down-sampling
            kind, branch_index, runs_at, reduction = 'tail', -1, stem_stride * 2 ** i, stem_stride * 2 ** (i + 1)
            dilation, resamples = lost(runs_at), reduction <= cap
        elif i == n:
            kind, branch_index, reduction = 'bridge', -1, natural
            dilation = lost(natural)
        elif i <= 2 * n:  # blocks at the coarser stride, then up-sampling to the branch
            j = i - n - 1
            kind, branch_index, reduction = 'body', n - 1 - j, stem_stride * 2 ** (n - 1 - j)
            dilation = 2 ** j * lost(stem_stride * 2 ** (n - j))
            transfer_dilation, resamples = lost(reduction), reduction < cap
        else:  # blocks at the finer stride, then down-sampling to the branch
            j = i - 2 * n - 1
            kind, branch_index, reduction = 'head', 2 * n - j, stem_stride * 2 ** (j + 1)
            dilation, resamples = lost(stem_stride * 2 ** j), reduction <= cap
            transfer_dilation = lost(reduction)
        branch_chs = stage_in_chs[branch_index] if branch_index >= 0 else 0
        spec = FishStageSpec(kind, stage_in_chs[-1], out_chs, branch_index, branch_chs, dilation,
                             min(reduction, cap), is_feature=i >= 2 * n, transfer_dilation=transfer_dilation,
                             resamples=resamples)
        specs.append(spec)
        stage_in_chs.append(spec.output_chs)
    return specs


class FishNet(nn.Module):
    """FishNet classifier with the full timm model interface.

    Args:
        stage_chs: output width of each of the ``3n + 1`` stages (tail, bridge, body, head);
            the authors' ``network_planes[1:]``.
        depths: residual blocks per stage.
        transfer_depths: transfer blocks per body and head stage (``2n`` values).
        stem_chs: width of the stem (the authors' ``network_planes[0]``).
        stem_stride: 4 for the ImageNet stem (stride-2 conv and 3x3 max-pool), 1 for a stem that
            keeps full resolution (low-resolution variants).
        downsample: one of ``'max2'``, ``'max3'``, ``'avg2'``, ``'conv'``.
        bottle_ratio: bottleneck width as a fraction of a block's output width.
        groups: groups (cardinality) of the bottlenecks' 3x3 convolutions.
        norm_layer, act_layer: the normalisation and activation of every pre-activation unit (BatchNorm
            and ReLU in the authors' models; BatchNorm, frozen or not, is what the inference folding applies
            to). Frozen BatchNorm as detection code asks for it: ``'frozenbatchnorm2d'``, torchvision's
            ``FrozenBatchNorm2d`` or timm's ``FrozenBatchNormAct2d``.
        output_stride: stride of the deepest feature map; 8 or 16 trade the coarsest down-sampling steps
            for dilation (:func:`fish_layout`) as dense prediction wants. ``None``: the natural stride (32
            for the ImageNet stem, 8 for the full-resolution one). The weights are the same either way.
        num_classes, in_chans, global_pool, drop_rate, drop_path_rate, device, dtype: as in timm.
    """

    def __init__(
            self,
            stage_chs: Sequence[int] = AUTHORS_STAGE_CHS,
            depths: Sequence[int] = (2, 2, 6, 2, 1, 1, 1, 1, 2, 2),
            transfer_depths: Sequence[int] = (1, 1, 1, 1, 1, 4),
            stem_chs: int = 64,
            stem_stride: int = 4,
            downsample: str = 'max2',
            bottle_ratio: float = 0.25,
            groups: int = 1,
            norm_layer: LayerType = 'batchnorm2d',
            act_layer: LayerType = 'relu',
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
        num_down = (len(stage_chs) - 1) // 3
        if len(stage_chs) != 3 * num_down + 1 or num_down < 1:
            raise ValueError(f'stage_chs needs 3n + 1 entries (tail, bridge, body, head), got {len(stage_chs)}')
        if len(depths) != len(stage_chs) or len(transfer_depths) != 2 * num_down:
            raise ValueError(f'depths needs {len(stage_chs)} entries and transfer_depths {2 * num_down}')
        if downsample not in DOWNSAMPLE_TYPES:
            raise ValueError(f"downsample must be one of {', '.join(map(repr, DOWNSAMPLE_TYPES))}, got {downsample!r}")
        if stem_stride not in (1, 4):
            raise ValueError(f'stem_stride must be 4 (ImageNet stem) or 1 (full-resolution stem), got {stem_stride}')
        self.output_stride = check_output_stride(output_stride, stem_stride * 2 ** num_down, stem_stride)
        norm_layer, freeze_norm = split_frozen_norm(norm_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # smallest input for which the deepest level is still at least 1 px
        self.min_input_size = self.output_stride

        norm_act_layer = get_norm_act_layer(norm_layer, act_layer)
        block_kwargs = dict(bottle_ratio=bottle_ratio, groups=groups, norm_act_layer=norm_act_layer, **dd)
        conv_kwargs = dict(padding=1, norm_layer=norm_layer, act_layer=act_layer, **dd)
        stem_conv_stride = 2 if stem_stride == 4 else 1
        self.stem = nn.Sequential()
        self.stem.add_module('conv1', FoldableConvNormAct(in_chans, stem_chs // 2, 3, stem_conv_stride, **conv_kwargs))
        self.stem.add_module('conv2', FoldableConvNormAct(stem_chs // 2, stem_chs // 2, 3, **conv_kwargs))
        self.stem.add_module('conv3', FoldableConvNormAct(stem_chs // 2, stem_chs, 3, **conv_kwargs))
        self.stem.add_module('pool', nn.MaxPool2d(3, stride=2, padding=1) if stem_stride == 4 else nn.Identity())
        # Pyramid levels, one per stride: the stem's stride-2 map (ImageNet stem only: the full-resolution stem's
        # map has the stride of the finest body stage, which carries the same resolution with deep features),
        # the finest body stage, then every head stage.
        self.feature_info = [dict(num_chs=stem_chs, reduction=stem_conv_stride, module='stem.conv3')] \
            if stem_stride == 4 else []
        self._level_stage = [-1] if stem_stride == 4 else []  # feature level -> index in stages (-1: the stem)

        # stochastic depth rises linearly over all residual blocks in execution order
        dpr = iter(calculate_drop_path_rates(drop_path_rate, sum(depths) + sum(transfer_depths)))
        transfer_depth = iter(transfer_depths)
        stages = []
        layout = fish_layout(stage_chs, stem_chs, stem_stride, self.output_stride)
        for i, (spec, depth) in enumerate(zip(layout, depths)):
            if spec.kind == 'tail':
                stage = FishTailStage(
                    spec.in_chs, spec.out_chs, depth, downsample, [next(dpr) for _ in range(depth)],
                    dilation=spec.dilation, downsample_stride=2 if spec.resamples else 1, **block_kwargs)
            elif spec.kind == 'bridge':
                stage = FishBridge(spec.in_chs, spec.out_chs, depth, [next(dpr) for _ in range(depth)], act_layer,
                                   dilation=spec.dilation, **block_kwargs)
            else:
                transfer = next(transfer_depth)
                stage = FishRefineStage(
                    spec.in_chs, spec.out_chs, spec.branch_chs, spec.branch_index, depth, transfer,
                    upsample=spec.kind == 'body', downsample=downsample, dilation=spec.dilation,
                    dprs=[next(dpr) for _ in range(depth + transfer)], transfer_dilation=spec.transfer_dilation,
                    resample=spec.resamples, **block_kwargs)
            stages.append(stage)
            if spec.is_feature:
                self.feature_info.append(dict(num_chs=spec.output_chs, reduction=spec.reduction, module=f'stages.{i}'))
                self._level_stage.append(i)
        self.stages = nn.ModuleList(stages)

        final_chs = self.feature_info[-1]['num_chs']
        self.score = ScoreBlock(final_chs, norm_act_layer, **dd)
        self.num_features = self.head_hidden_size = final_chs // 2
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        init_weights(self)
        if freeze_norm:
            freeze_batch_norm_2d(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(?:blocks|transfer)\.(\d+)', None),
                (r'^stages\.(\d+)', (0,)),
                (r'^score', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for module in self.modules():
            if isinstance(module, FishBlocks):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """A new classifier for ``num_classes`` (0: none), on the model's device and dtype, in its train/eval
        mode; the pooling stays as it is unless ``global_pool`` names another (timm's contract)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                          **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _run_stages(self, x: torch.Tensor, last_stage: int, take_stages: List[int]) -> Tuple[torch.Tensor,
                                                                                               List[torch.Tensor]]:
        """Route ``x`` through stages 0..``last_stage``, each stage joined with its branch (the input of an
        earlier stage); returns the last output and the outputs of the stages in ``take_stages``."""
        inputs: List[torch.Tensor] = []
        taken: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i <= last_stage:  # no `break`: TorchScript unrolls this loop
                inputs.append(x)
                branch: Optional[torch.Tensor] = None
                if stage.branch_index >= 0:
                    branch = inputs[stage.branch_index]
                x = stage(x, branch)
                if i in take_stages:
                    taken.append(x)
        return x, taken

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns the pyramid levels of ``feature_info``.

        Args:
            x: input images.
            indices: take last n levels if int, all if None, the given levels if a sequence.
            norm: unused (FishNet has no final norm layer).
            stop_early: stop after the last level asked for.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the levels.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        x = check_input(x, self.in_chans, self.min_input_size)
        # the level count from _level_stage, not feature_info (a list of dicts TorchScript cannot type)
        take_indices, max_index = feature_take_indices(len(self._level_stage), indices)
        intermediates: List[torch.Tensor] = []
        x = self.stem.conv3(self.stem.conv2(self.stem.conv1(x)))  # by name: TorchScript slices no Sequential
        take_stages = [self._level_stage[i] for i in take_indices]
        if -1 in take_stages:
            intermediates.append(x)
        x = self.stem.pool(x)
        last_stage = self._level_stage[max_index] if stop_early else len(self.stages) - 1
        body_stages: List[int] = []
        for stage in take_stages:  # a loop, not a filtered comprehension: TorchScript has none
            if stage >= 0:
                body_stages.append(stage)
        x, levels = self._run_stages(x, last_stage, body_stages)
        intermediates.extend(levels)
        if intermediates_only:
            return intermediates
        if last_stage == len(self.stages) - 1:
            x = self.score(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and the final score / classifier) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        keep = self._level_stage[max_index] + 1
        self.stages = self.stages[:keep]
        if keep == 0:  # the stem's map alone
            self.stem.pool = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            # the final score block belongs to the classifier (and is sized for the last level only): a
            # feature extractor that kept it would carry parameters no forward uses, which DDP refuses
            self.score = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.in_chans, self.min_input_size)
        x = self.stem(x)
        x, _ = self._run_stages(x, len(self.stages) - 1, [])
        return self.score(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


# The authors' module paths inside a stage, by stage kind, and where they live here.
_BRIDGE_KEYS = (
    ('0.0.', 'score.bn1.'), ('0.2.', 'score.conv.'), ('0.3.', 'score.bn2.'), ('1.', 'score_fc.'),
    ('2.', 'blocks.'), ('3.0.0.', 'attn.bn.'), ('3.0.3.', 'attn.fc1.'), ('3.0.5.', 'attn.fc2.'),
)
_REFINE_KEYS = (('0.', 'blocks.'), ('1.', 'transfer.'))
_FINAL_KEYS = (('3.0.', 'score.bn1.'), ('3.2.', 'score.conv.'), ('3.3.', 'score.bn2.'), ('4.1.', 'fc.'))


def _replace_prefix(key: str, table) -> Optional[str]:
    """``key`` with the first matching (old prefix, new prefix) of ``table`` applied; None if none matches."""
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _remap_original_key(key: str, num_down: int) -> Optional[str]:
    """Map one key of the authors' state dict to this implementation (None: no counterpart)."""
    m = re.match(r'conv([123])\.([01])\.(.*)', key)
    if m:
        return f"stem.conv{m[1]}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"
    m = re.match(r'fish\.fish\.(\d+)\.(.*)', key)
    if not m:
        return None
    i, rest = int(m[1]), m[2]
    if i == 3 * num_down:  # the last head stage also holds the final score block and the classifier
        final = _replace_prefix(rest, _FINAL_KEYS)
        if final is not None:
            return final
    table = (('0.', 'blocks.'),) if i < num_down else _BRIDGE_KEYS if i == num_down else _REFINE_KEYS
    rest = _replace_prefix(rest, table)
    if rest is None:
        return None
    return f"stages.{i}.{rest.replace('.shortcut.0.', '.shortcut.bn.').replace('.shortcut.2.', '.shortcut.conv.')}"


# pytorchcv's FishNet is the same network with its modules grouped differently: "down1" is the tail,
# "up" the body, "down2" the head, and the "skip" units hold the transfer blocks and the bridge
_PYTORCHCV_BRIDGE_KEYS = (
    ('conv1.bn.', 'score.bn1.'), ('conv1.conv.', 'score.conv.'), ('conv2.bn.', 'score.bn2.'),
    ('conv2.conv.', 'score_fc.'), ('se.bn.', 'attn.bn.'), ('se.conv1.', 'attn.fc1.'), ('se.conv2.', 'attn.fc2.'),
)
_PYTORCHCV_BLOCK_KEYS = (
    ('body.conv1.bn.', 'bn1.'), ('body.conv1.conv.', 'conv1.'), ('body.conv2.bn.', 'bn2.'),
    ('body.conv2.conv.', 'conv2.'), ('body.conv3.bn.', 'bn3.'), ('body.conv3.conv.', 'conv3.'),
    ('identity_conv.bn.', 'shortcut.bn.'), ('identity_conv.conv.', 'shortcut.conv.'),
)


def _remap_pytorchcv_key(key: str, num_down: int) -> Optional[str]:
    """Map one key of a pytorchcv FishNet state dict to this implementation (None: no counterpart)."""
    n = num_down
    m = re.match(r'features\.init_block\.(conv[123]\.(?:conv|bn)\..*)', key)
    if m:
        return f'stem.{m[1]}'
    m = re.match(r'features\.final_block\.(conv1\.bn|conv1\.conv|preactiv\.bn)\.(.*)', key)
    if m:
        return {'conv1.bn': 'score.bn1.', 'conv1.conv': 'score.conv.', 'preactiv.bn': 'score.bn2.'}[m[1]] + m[2]
    m = re.match(r'output\.final_conv\.(.*)', key)
    if m:
        return f'fc.{m[1]}'
    m = re.match(r'features\.hg\.(down1|skip1|up|skip2|down2)_seq\.unit(\d+)\.(.*)', key)
    if not m:
        return None
    seq, unit, rest = m[1], int(m[2]), m[3]
    if seq == 'skip1' and unit == n + 1:  # the bridge
        bridge = _replace_prefix(rest, _PYTORCHCV_BRIDGE_KEYS)
        if bridge is not None:
            return f'stages.{n}.{bridge}'
        stage, part = n, 'blocks'
    else:
        stage, part = {
            'down1': (unit - 1, 'blocks'),  # tail
            'skip1': (2 * n + 1 - unit, 'transfer'),  # transfer of the body stage joined with tail input `unit`
            'up': (n + unit, 'blocks'),  # body
            'skip2': (3 * n + 1 - unit, 'transfer'),  # transfer of the head stage joined with body input `unit`
            'down2': (2 * n + unit, 'blocks'),  # head
        }[seq]
    m = re.match(r'blocks\.block(\d+)\.(.*)', rest)
    if not m:
        return None
    block, rest = int(m[1]) - 1, _replace_prefix(m[2], _PYTORCHCV_BLOCK_KEYS)
    return None if rest is None else f'stages.{stage}.{part}.{block}.{rest}'


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: FishNet) -> Dict[str, torch.Tensor]:
    """Convert a FishNet checkpoint from the authors or from pytorchcv into this implementation's state dict.

    Accepts the authors' ``torch.save`` dict (``{'state_dict': ..., 'epoch': ..., ...}``) or a bare state
    dict, with or without DataParallel's ``module.`` prefix, and pytorchcv's ``fishnet99`` /
    ``fishnet150`` state dicts. A state dict of this implementation passes through unchanged.
    """
    state_dict = state_dict.get('state_dict', state_dict)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    converted = _convert_state_dict(state_dict)
    return validate_state_dict(converted, model) if model is not None else converted


def _convert_state_dict(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    if any(k.startswith('fish.fish.') for k in state_dict):
        source, remap = 'FishNet authors', _remap_original_key
        last_stage = max(int(k.split('.')[2]) for k in state_dict if k.startswith('fish.fish.'))
    elif any(k.startswith('features.hg.') for k in state_dict):
        source, remap = 'pytorchcv', _remap_pytorchcv_key
        head_units = r'features\.hg\.down2_seq\.unit\d+\.blocks\.block1\.body\.conv1\.conv\.weight$'
        last_stage = 3 * sum(1 for k in state_dict if re.match(head_units, k))
    else:
        return state_dict
    num_down = last_stage // 3
    out = {}
    for key, value in state_dict.items():
        new_key = remap(key, num_down)
        if new_key is None:
            raise CheckpointError(f'no counterpart in fishzoo for the {source} FishNet key {key!r}')
        if new_key == 'fc.weight':
            value = value.flatten(1)  # 1x1 conv on the pooled map -> Linear
        out[new_key] = value
    return out


def _create_fishnet(variant: str, pretrained: bool = False, **kwargs) -> FishNet:
    # every level by default, as timm's CNNs: the stem's and n + 1 from the fish (n + 1 with the full-resolution stem)
    num_down = (len(kwargs.get('stage_chs', AUTHORS_STAGE_CHS)) - 1) // 3
    out_indices = kwargs.pop('out_indices', tuple(range(num_down + (2 if kwargs.get('stem_stride', 4) == 4 else 1))))
    return build_model(
        FishNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls=FeatureLevels),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1.conv', 'classifier': 'fc',
        'paper_ids': 'arXiv:1901.03495',
        'paper_name': 'FishNet: A Versatile Backbone for Image, Region, and Pixel Level Prediction',
        'origin_url': 'https://github.com/kevin-ssy/FishNet',
        'license': 'apache-2.0',
        **kwargs,
    }


# ImageNet-1k top-1 / top-5 (%) the authors report for their released checkpoints
REPORTED_ACCURACY = {
    'fishnet99.in1k': (77.41, 93.59),
    'fishnet150.in1k': (78.14, 93.95),
    'fishnet150.in1k_ls': (79.35, 94.75),
    'fishnet201.in1k_ls': (79.71, 94.79),
}


def _authors_cfg(tag: str, url: str, recipe: str) -> Dict[str, Any]:
    top1, top5 = REPORTED_ACCURACY[tag]
    return _cfg(
        url=url,
        license='unknown',
        description=f'ImageNet-1k weights released by the FishNet authors ({recipe}); '
                    f'top-1 {top1:.2f}%, top-5 {top5:.2f}% as reported by the authors.',
        notes=(
            f'Reported ImageNet-1k accuracy: top-1 {top1:.2f}, top-5 {top5:.2f} (authors, not measured by fishzoo).',
            'The authors published no license for their code or weights.',
            'The file is the authors\' torch.save checkpoint; checkpoint_filter_fn converts it on load.',
        ),
    )


_AUTHORS_URL = 'https://www.dropbox.com/s/{}?dl=1'  # ?dl=1: Dropbox's direct-download form

default_cfgs = generate_default_cfgs({
    'fishnet99.in1k': _authors_cfg(
        'fishnet99.in1k', _AUTHORS_URL.format('hvojbdsad5ue7yb/fishnet99_ckpt.tar'), 'step lr, 100 epochs'),
    'fishnet150.in1k': _authors_cfg(
        'fishnet150.in1k', _AUTHORS_URL.format('hjadcef18ln3o2v/fishnet150_ckpt.tar'), 'step lr, 100 epochs'),
    'fishnet150.in1k_ls': _authors_cfg(
        'fishnet150.in1k_ls', _AUTHORS_URL.format('ajy9p6f97y45f1r/fishnet150_ckpt_welltrained.tar'),
        'cosine lr, 200 epochs, label smoothing'),
    'fishnet201.in1k_ls': _authors_cfg(
        'fishnet201.in1k_ls', _AUTHORS_URL.format('kvz2dmxe3fzn10m/fishnet201_ckpt_welltrain.tar'),
        'cosine lr, 200 epochs, label smoothing'),
    'fishnext150': _cfg(origin_url=''),
    'fishnet_s64': _cfg(num_classes=200, input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0, origin_url=''),
    'fishnet_m64': _cfg(num_classes=200, input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0, origin_url=''),
    'fishnet_l64': _cfg(num_classes=200, input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0, origin_url=''),
})

# Depths per stage (tail, bridge, body, head) and transfer depths per body and head stage. The authors'
# three models; the low-resolution variants reuse FishNet-99's (m64) and stretch FishNet-150's (l64).
FISHNET99_DEPTHS = dict(depths=(2, 2, 6, 2, 1, 1, 1, 1, 2, 2), transfer_depths=(1, 1, 1, 1, 1, 4))
FISHNET150_DEPTHS = dict(depths=(2, 4, 8, 4, 2, 2, 2, 2, 2, 4), transfer_depths=(2, 2, 2, 2, 2, 4))
FISHNET201_DEPTHS = dict(depths=(3, 4, 12, 4, 2, 2, 2, 2, 3, 10), transfer_depths=(2, 2, 2, 2, 2, 9))
SMALL_DEPTHS = dict(depths=(1, 1, 2, 1, 1, 1, 1, 1, 1, 1), transfer_depths=(1, 1, 1, 1, 1, 1))
LARGE_LOWRES_DEPTHS = dict(depths=(2, 4, 8, 4, 2, 2, 2, 2, 3, 5), transfer_depths=(2, 2, 2, 2, 2, 5))

# the low-resolution variants share the authors' channel plan (network_planes[1:]) divided by 4 and
# a 16-channel stem; they differ in depth only
LOWRES_ARGS = dict(stage_chs=(32, 64, 128, 128, 128, 96, 64, 80, 208, 400), stem_chs=16, stem_stride=1)


@register_model
def fishnet99(pretrained: bool = False, **kwargs) -> FishNet:
    """FishNet-99 as released by the authors (16.63M params)."""
    return _create_fishnet('fishnet99', pretrained, **{**FISHNET99_DEPTHS, **kwargs})


@register_model
def fishnet150(pretrained: bool = False, **kwargs) -> FishNet:
    """FishNet-150 as released by the authors (24.96M params)."""
    return _create_fishnet('fishnet150', pretrained, **{**FISHNET150_DEPTHS, **kwargs})


@register_model
def fishnet201(pretrained: bool = False, **kwargs) -> FishNet:
    """FishNet-201 as released by the authors (44.58M params)."""
    return _create_fishnet('fishnet201', pretrained, **{**FISHNET201_DEPTHS, **kwargs})


@register_model
def fishnext150(pretrained: bool = False, **kwargs) -> FishNet:
    """FishNeXt-150: FishNet-150 with 2x wider bottlenecks whose 3x3 conv has 32 groups (25.21M params)."""
    model_args = dict(FISHNET150_DEPTHS, bottle_ratio=0.5, groups=32)
    return _create_fishnet('fishnext150', pretrained, **{**model_args, **kwargs})


@register_model
def fishnet_s64(pretrained: bool = False, **kwargs) -> FishNet:
    """Small low-resolution FishNet for 32-64 px inputs (0.67M params at 200 classes)."""
    return _create_fishnet('fishnet_s64', pretrained, **{**SMALL_DEPTHS, **LOWRES_ARGS, **kwargs})


@register_model
def fishnet_m64(pretrained: bool = False, **kwargs) -> FishNet:
    """Medium low-resolution FishNet for 32-64 px inputs: FishNet-99's depths (1.04M params at 200 classes)."""
    return _create_fishnet('fishnet_m64', pretrained, **{**FISHNET99_DEPTHS, **LOWRES_ARGS, **kwargs})


@register_model
def fishnet_l64(pretrained: bool = False, **kwargs) -> FishNet:
    """Large low-resolution FishNet for 32-64 px inputs (1.80M params at 200 classes)."""
    return _create_fishnet('fishnet_l64', pretrained, **{**LARGE_LOWRES_DEPTHS, **LOWRES_ARGS, **kwargs})


# what a hub folder's config.json may set (fishzoo.hub.schema): up to 6 down-sampling steps
declare_model_args(
    ('fishnet99', 'fishnet150', 'fishnet201', 'fishnext150', 'fishnet_s64', 'fishnet_m64', 'fishnet_l64'),
    dict(stage_chs=Ints(1, 4096, 19), depths=Ints(0, 64, 19), transfer_depths=Ints(0, 64, 12),
         stem_chs=Int(2, 1024), stem_stride=Choice(1, 4), downsample=Choice(*DOWNSAMPLE_TYPES),
         bottle_ratio=Float(0.01, 4), groups=Int(1, 1024), norm_layer=NAME, act_layer=NAME))
