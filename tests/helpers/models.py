"""Models for tests whose BatchNorm layers are not the identity, so BN folding has something to get wrong."""
import torch


def set_bn_statistics(model: torch.nn.Module, affine: bool = False, seed: int = 0) -> torch.nn.Module:
    """Random running statistics (and, with ``affine``, scale and shift) in every BatchNorm2d; returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model
