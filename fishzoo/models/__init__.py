"""fishzoo architectures; importing this package registers them with timm."""
from typing import List

import timm

from .fishnet import FishNet
from .mobilenetv2_dual import MobileNetV2Dual

# timm registry module names of fishzoo's model files (list_models filters on them)
MODEL_MODULES = ('fishnet', 'mobilenetv2_dual')


def list_models(pattern: str = '', pretrained: bool = False) -> List[str]:
    """fishzoo's own model names (optionally filtered by a wildcard ``pattern``); with ``pretrained``, the
    ``name.tag`` entries that have weights."""
    own = set(timm.list_models(module=list(MODEL_MODULES)))
    names = timm.list_models(pattern or '', pretrained=pretrained)
    if pretrained:
        return [n for n in names if n.split('.')[0] in own]
    return [n for n in names if n in own]


__all__ = ['FishNet', 'MobileNetV2Dual', 'MODEL_MODULES', 'list_models']
