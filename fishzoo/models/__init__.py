"""fishzoo architectures; importing this package registers them with timm."""
from .fishnet import FishNet
from .mobilenetv2_dual import MobileNetV2Dual

# timm registry module names of fishzoo's model files (fishzoo.list_models filters on them)
MODEL_MODULES = ('fishnet', 'mobilenetv2_dual')

__all__ = ['FishNet', 'MobileNetV2Dual', 'MODEL_MODULES']
