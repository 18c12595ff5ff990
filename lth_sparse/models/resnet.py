"""Residual networks: the CIFAR ResNet-20 (He et al., 2016, Sec. 4.2, as OpenLTH's
``cifar_resnet``) and the ImageNet ResNet-18/34/50 (as torchvision's, v1.5:
stride on the 3x3 convolution of a bottleneck).

All convolutions are bias-free and followed by BatchNorm; a shortcut that changes
shape is a 1x1 convolution with BatchNorm (projection shortcut).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .registry import image_shape, register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "ResNet"]


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand x4) convolutions with BatchNorm and a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: a 3x3 stem of ``width`` channels, three stages of ``n``
    basic blocks with ``width``, ``2 width``, ``4 width`` channels (stride 2 at the
    start of the last two), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages = []
        channels = width
        for stage in range(3):
            out = width * 2**stage
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ResNet(nn.Module):
    """ImageNet-style ResNet: a stem, four stages of 64, 128, 256, 512 (x expansion)
    channels, global average pooling, linear classifier.

    ``small_stem``: a 3x3 stride-1 convolution and no max-pool instead of the 7x7
    stride-2 convolution and 3x3 stride-2 max-pool, for small images.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int,
        num_classes: int,
        small_stem: bool,
    ):
        super().__init__()
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        channels = 64
        stages = []
        for stage, count in enumerate(layers):
            width = 64 * 2**stage
            blocks = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> nn.Module:
    """CIFAR ResNet-20 (three stages of three basic blocks), ``width`` channels in the
    first stage (default 16: 272,474 parameters on CIFAR-10).

    Raises:
        ValueError: ``width < 1``.
    """
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"resnet20: width must be an integer >= 1, got {width!r}")
    channels, _, _ = image_shape("resnet20", input_shape)
    return CifarResNet(channels, num_classes, blocks_per_stage=3, width=int(width))


SMALL_IMAGE_SIZE = 64


def _imagenet_resnet(name, block, layers, input_shape, num_classes, stem: str) -> nn.Module:
    channels, height, width = image_shape(name, input_shape)
    if stem not in ("auto", "imagenet", "small"):
        raise ValueError(f"{name}: stem must be 'auto', 'imagenet' or 'small', got {stem!r}")
    small = max(height, width) <= SMALL_IMAGE_SIZE if stem == "auto" else stem == "small"
    return ResNet(block, layers, channels, num_classes, small_stem=small)


@register_model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto") -> nn.Module:
    """ResNet-18 (basic blocks 2, 2, 2, 2). ``stem="auto"``: the 3x3 stride-1 stem
    without max-pool for inputs of 64 pixels or less (CIFAR, Tiny ImageNet,
    MNIST), else the ImageNet stem; ``"imagenet"`` / ``"small"`` force one.
    11,689,512 parameters at 224x224 with 1000 classes, 11,173,962 on CIFAR-10."""
    return _imagenet_resnet("resnet18", BasicBlock, (2, 2, 2, 2), input_shape, num_classes, stem)


@register_model("resnet34")
def resnet34(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto") -> nn.Module:
    """ResNet-34 (basic blocks 3, 4, 6, 3); ``stem`` as for resnet18.
    21,797,672 parameters at 224x224 with 1000 classes."""
    return _imagenet_resnet("resnet34", BasicBlock, (3, 4, 6, 3), input_shape, num_classes, stem)


@register_model("resnet50")
def resnet50(input_shape: tuple[int, ...], num_classes: int, *, stem: str = "auto") -> nn.Module:
    """ResNet-50 (bottleneck blocks 3, 4, 6, 3); ``stem`` as for resnet18.
    25,557,032 parameters at 224x224 with 1000 classes."""
    return _imagenet_resnet("resnet50", Bottleneck, (3, 4, 6, 3), input_shape, num_classes, stem)
