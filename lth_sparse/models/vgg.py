"""CIFAR-style VGG with BatchNorm, as OpenLTH's ``cifar_vgg`` (Frankle et al.).

The classifier is a single linear layer on the global average of the last 512
channels (no 4096-wide fully connected layers), as in the lottery-ticket papers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from .registry import image_shape, register_model

__all__ = ["VGG_PLANS"]

# Channels of each 3x3 convolution; "M" is a 2x2 max-pool.
VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


def _vgg(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    plan = VGG_PLANS[name]
    pools = plan.count("M")
    channels, _, _ = image_shape(name, input_shape, min_size=2**pools)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    conv = pool = 0
    for spec in plan:
        if spec == "M":
            pool += 1
            layers[f"pool{pool}"] = nn.MaxPool2d(2)
            continue
        conv += 1
        # The convolution keeps its bias, as OpenLTH's does, although BatchNorm follows.
        layers[f"conv{conv}"] = nn.Conv2d(channels, int(spec), kernel_size=3, padding=1)
        layers[f"bn{conv}"] = nn.BatchNorm2d(int(spec))
        layers[f"relu{conv}"] = nn.ReLU()
        channels = int(spec)
    # OpenLTH averages the 2x2 map left from 32x32 inputs; an adaptive pool is the same
    # there and lets other input sizes through.
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(layers)


@register_model("vgg11")
def vgg11(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-11 with BatchNorm, CIFAR style (9,231,114 parameters on CIFAR-10).
    Needs images of at least 16x16."""
    return _vgg("vgg11", input_shape, num_classes)


@register_model("vgg16")
def vgg16(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-16 with BatchNorm, CIFAR style (14,728,266 parameters on CIFAR-10).
    Needs images of at least 16x16."""
    return _vgg("vgg16", input_shape, num_classes)


@register_model("vgg19")
def vgg19(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-19 with BatchNorm, CIFAR style (20,040,522 parameters on CIFAR-10).
    Needs images of at least 16x16."""
    return _vgg("vgg19", input_shape, num_classes)
