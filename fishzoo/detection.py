"""Any model fishzoo loads as a torchvision detection backbone: feature pyramid, Faster R-CNN, Mask R-CNN.

torchvision's own ``BackboneWithFPN`` takes the maps out of a network by module name
(``IntermediateLayerGetter``), which works for a chain of stages such as a ResNet but not for a FishNet,
whose body and head join earlier maps by concatenation. Here the maps come from the model's timm
feature interface (``forward_intermediates``, through timm's ``FeatureGetterNet``), so the same code serves
FishNets, the dual MobileNetV2 and timm's own CNNs, from a timm name, a hub folder or an ``hf-hub:`` repo
(:func:`fishzoo.load_model`), or a model already in memory such as a fine-tuned classifier.

What is frozen follows torchvision's detection builders: with trained weights, BatchNorm is frozen and the
first layers (stem and first stage) are not trained; from random weights, everything trains with
ordinary BatchNorm. ``trainable_layers`` counts the model's coarse layer groups (timm's
``group_matcher(coarse=True)``: for a ResNet the stem and ``layer1``..``layer4``, exactly torchvision's
count; for FishNet-99 the stem and its ten stages) from the last.
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.data import resolve_data_config
from timm.layers import freeze_batch_norm_2d
from timm.models import group_modules
from timm.utils.model import freeze
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fishzoo.errors import ConfigError
from fishzoo.loading import load_model, resolve_source
from fishzoo.models._layers import FeatureLevels

__all__ = ['FpnBackbone', 'backbone_with_fpn', 'fasterrcnn_fpn', 'maskrcnn_fpn']

NORMS = ('auto', 'frozen', 'batchnorm')
# torchvision's detection default: stem and first stage frozen (trainable_layers=3 of a ResNet's 5)
FROZEN_BY_DEFAULT = 2


class FpnBackbone(nn.Module):
    """A feature extractor with torchvision's feature pyramid on top: what torchvision's detectors take.

    ``forward`` returns an ordered dict of ``out_channels``-wide maps named ``'0'``, ``'1'``, ... (one per
    returned level, finest first) and ``'pool'`` (the last one max-pooled), as ``BackboneWithFPN`` does;
    ``strides`` gives each map's stride.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        info = body.feature_info
        self.fpn = FeaturePyramidNetwork(info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.featmap_names = [str(i) for i in range(len(info.channels()))]
        self.strides = info.reduction() + [info.reduction()[-1] * 2]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict(zip(self.featmap_names, self.body(x))))


def _classifier(model: Union[str, nn.Module], pretrained: Optional[bool], model_kwargs: dict):
    """(the model, whether it carries trained weights)."""
    if isinstance(model, str):
        trained = resolve_source(model).has_weights if pretrained is None else pretrained
        return load_model(model, pretrained=pretrained, **model_kwargs), trained
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f'model must be a model name, folder, hf-hub: repo or an nn.Module, got {type(model).__name__}')
    if model_kwargs or pretrained is not None:
        raise ConfigError('pretrained and model arguments apply to a model given by name; '
                          f'this one is already built ({type(model).__name__})')
    # a copy: the feature wrapper prunes the classifier and freezing replaces BatchNorms, in place
    return copy.deepcopy(model), True


def _levels(info: List[dict], returned_levels: Optional[Sequence[int]], label: str) -> List[int]:
    if returned_levels is None:
        # the last four, as torchvision's returned_layers=[1, 2, 3, 4]: strides 4-32 for the ImageNet CNNs
        # (a stride-2 stem map is large and shallow), 1-8 for the low-resolution FishNets
        return list(range(max(0, len(info) - 4), len(info)))
    levels = list(returned_levels)
    if not levels or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(info) for i in levels) \
            or levels != sorted(set(levels)):
        raise ConfigError(
            f'returned_levels must be increasing feature levels of {label}, from 0 to {len(info) - 1} '
            f'(strides {[f["reduction"] for f in info]}), got {returned_levels!r}')
    return levels


def backbone_with_fpn(
        model: Union[str, nn.Module],
        trainable_layers: Optional[int] = None,
        norm: str = 'auto',
        returned_levels: Optional[Sequence[int]] = None,
        out_channels: int = 256,
        pretrained: Optional[bool] = None,
        **model_kwargs,
) -> FpnBackbone:
    """A torchvision detection backbone (``out_channels`` set) from any model with timm's feature interface.

    Args:
        model: a timm name (``'fishnet99'``), a hub folder or ``local-dir:PATH``, ``hf-hub:REPO_ID``, or a
            built model (a fine-tuned classifier: a copy of it, without its classifier, is used).
        trainable_layers: how many of the model's coarse layer groups, counted from the last, train; the
            others are frozen (weights and BatchNorm). Default: all but the stem and the first stage with
            trained weights (torchvision's default), all from random weights.
        norm: ``'frozen'`` (every BatchNorm frozen, torchvision's choice for trained weights),
            ``'batchnorm'`` (the trainable layers keep ordinary BatchNorm) or ``'auto'``: frozen with trained
            weights, BatchNorm from random ones.
        returned_levels: the feature levels (indices of ``model.feature_info``) the pyramid is built on;
            default: the last four (FishNet-99: 1-4, strides 4-32; the low-resolution FishNets: strides 1-8).
        out_channels: width of every pyramid map.
        pretrained: for a model given by name, as :func:`fishzoo.load_model` (default: the weights of a
            folder or hub repo; a bare timm name loads them with ``pretrained=True``).
        model_kwargs: more :func:`fishzoo.load_model` arguments (``output_stride``, ``drop_path_rate``, ...).
    """
    if norm not in NORMS:
        raise ConfigError(f'norm must be one of {", ".join(NORMS)}, got {norm!r}')
    label = model if isinstance(model, str) else type(model).__name__
    classifier, trained = _classifier(model, pretrained, model_kwargs)
    if not hasattr(classifier, 'forward_intermediates') or not isinstance(getattr(classifier, 'feature_info', None),
                                                                          list):
        raise ConfigError(f'{label} has no timm feature interface (forward_intermediates and a feature_info list); '
                          'build it with timm.create_model')
    levels = _levels(classifier.feature_info, returned_levels, label)
    body = FeatureLevels(classifier, out_indices=levels)  # prunes the classifier and later stages

    groups = list(group_modules(body.model, body.model.group_matcher(coarse=True)).values())
    if trainable_layers is None:
        trainable_layers = max(len(groups) - FROZEN_BY_DEFAULT, 0) if trained else len(groups)
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) \
            or not 0 <= trainable_layers <= len(groups):
        raise ConfigError(f'trainable_layers must be from 0 to {len(groups)} (the layer groups of {label}), '
                          f'got {trainable_layers!r}')
    frozen = [name for group in groups[:len(groups) - trainable_layers] for name in group]
    if frozen:
        freeze(body.model, frozen)  # timm: no gradients, and frozen BatchNorm in those layers
    if norm == 'frozen' or (norm == 'auto' and trained):
        freeze_batch_norm_2d(body.model)
    return FpnBackbone(body, out_channels)


def _rcnn_parts(backbone: FpnBackbone, kwargs: dict) -> dict:
    """Anchors sized for each map (8x its stride: torchvision's 32-512 px on strides 4-64), RoI pooling over
    the backbone's maps, and the input normalisation the model was trained with."""
    parts = {}
    if 'rpn_anchor_generator' not in kwargs:
        sizes = tuple((8 * s,) for s in backbone.strides)
        parts['rpn_anchor_generator'] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    if 'box_roi_pool' not in kwargs:
        parts['box_roi_pool'] = MultiScaleRoIAlign(backbone.featmap_names, output_size=7, sampling_ratio=2)
    model = backbone.body.model
    if 'image_mean' not in kwargs and 'image_std' not in kwargs:
        data_config = resolve_data_config({}, model=model)
        parts.update(image_mean=list(data_config['mean']), image_std=list(data_config['std']))
    return {**parts, **kwargs}


def _rcnn_fpn(
        detector: type,
        model: Union[str, nn.Module],
        num_classes: int,
        *,
        trainable_layers: Optional[int] = None,
        norm: str = 'auto',
        returned_levels: Optional[Sequence[int]] = None,
        pretrained: Optional[bool] = None,
        model_kwargs: Optional[dict] = None,
        **detector_kwargs,
):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f'num_classes counts the background too: 2 or more (the background and one object '
                          f'class), got {num_classes!r}')
    backbone = backbone_with_fpn(model, trainable_layers, norm, returned_levels, pretrained=pretrained,
                                 **(model_kwargs or {}))
    parts = _rcnn_parts(backbone, detector_kwargs)
    if detector is MaskRCNN:
        parts.setdefault('mask_roi_pool', MultiScaleRoIAlign(backbone.featmap_names, output_size=14, sampling_ratio=2))
    return detector(backbone, num_classes, **parts)


def fasterrcnn_fpn(model: Union[str, nn.Module], num_classes: int, **kwargs) -> FasterRCNN:
    """torchvision's Faster R-CNN on :func:`backbone_with_fpn` (``num_classes`` counts the background).

    Keywords: ``trainable_layers``, ``norm``, ``returned_levels``, ``pretrained`` as :func:`backbone_with_fpn`;
    ``model_kwargs`` for :func:`fishzoo.load_model`; everything else goes to torchvision's ``FasterRCNN``
    (``min_size``, ``max_size``, ``rpn_anchor_generator``, ``box_score_thresh``, ...).
    """
    return _rcnn_fpn(FasterRCNN, model, num_classes, **kwargs)


def maskrcnn_fpn(model: Union[str, nn.Module], num_classes: int, **kwargs) -> MaskRCNN:
    """torchvision's Mask R-CNN on :func:`backbone_with_fpn`; keywords as :func:`fasterrcnn_fpn` (the rest go to
    ``MaskRCNN``)."""
    return _rcnn_fpn(MaskRCNN, model, num_classes, **kwargs)
