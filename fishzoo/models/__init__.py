"""fishzoo architectures; importing this module registers them with timm."""
from .fishnet import FishNet

__all__ = ['FishNet']
