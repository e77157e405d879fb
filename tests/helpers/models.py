"""Models for tests: BatchNorm layers that are not the identity (so BN folding has something to get wrong), and
a network int8 breaks in one known place (for the accuracy-aware searches)."""
import torch

from fishzoo.deploy.calibration import LabelledImages


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


class ColourNet(torch.nn.Module):
    """Tells red, green and blue images apart through a 1x1 convolution, a ReLU, a second 1x1 convolution,
    average pooling and a linear head. One channel of the first convolution sits near 1000 and the second ignores it
    (zero weights): fp32 does not change, but a single int8 scale for that activation leaves the colour
    channels a level or two, so only keeping the layers around it in fp32 restores the accuracy."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 1)
        self.conv2 = torch.nn.Conv2d(4, 3, 1)
        self.head = torch.nn.Linear(3, 3)  # robust: stays int8
        self.pretrained_cfg, self.num_classes = {}, 3
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.copy_(torch.tensor([1000.0, 0.0, 0.0, 0.0]))
            for c in range(3):
                self.conv1.weight[c + 1, c] = 1.0
            self.conv2.weight.copy_(torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).view(3, 4, 1, 1))
            self.conv2.bias.zero_()
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def colour_data():
    """60 8x8 images whose label is their brightest colour channel, as tensors and as LabelledImages."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.rand(60, 3, 8, 8, generator=g) * 0.6
    images[torch.arange(60), labels] += 1.0  # the label's colour is the brightest
    return images, labels, LabelledImages(torch.utils.data.TensorDataset(images, labels), multilabel=False)
