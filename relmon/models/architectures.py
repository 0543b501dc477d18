"""Architectures of the embedded default models (1x28x28 inputs, 10 classes).

Both are plain stacks of layers relmon's LRP supports (convolutions, BatchNorm after a
convolution, ReLU, max-pooling, linear layers), built from ``nn.Sequential`` so that zennit's
``SequentialMergeBatchNorm`` canonizer finds every BatchNorm right after its convolution.
"""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two convolutions and one linear layer; about 20k parameters."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, num_classes, bias=bias))

    def forward(self, x):
        return self.classifier(self.features(x))


def _vgg_block(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, kernel_size=3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class SmallVGG(nn.Module):
    """VGG-style: two blocks of two 3x3 convolutions with BatchNorm, then a two-layer classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(*_vgg_block(in_channels, 16), *_vgg_block(16, 32))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
