"""Small convolutional networks: the pret-a-porter LeNet and Conv-2/4/6."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from .registry import image_shape, register_model

__all__: list[str] = []


@register_model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The conv LeNet of Paganini & Forde (pret-a-porter tickets, App. H.1):
    ``conv3x3(6) -> ReLU -> maxpool2 -> conv3x3(16) -> ReLU -> maxpool2 ->
    fc 400 -> 120 -> 84 -> num_classes`` (ReLU between), unpadded convolutions.

    The flattened size is computed from ``input_shape``: 16 * 5 * 5 = 400 for 28x28.
    60,074 parameters for (1, 28, 28) and 10 classes. Needs images of at least 10x10.
    """
    channels, height, width = image_shape("lenet5", input_shape, min_size=10)

    def after_features(size: int) -> int:
        return ((size - 2) // 2 - 2) // 2

    flat = 16 * after_features(height) * after_features(width)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 6, kernel_size=3),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, kernel_size=3),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, num_classes),
        )
    )


def _conv_net(name: str, input_shape: tuple[int, ...], num_classes: int, pairs: int) -> nn.Module:
    """Frankle & Carbin (2019), Fig. 2: ``pairs`` blocks of two 3x3 convolutions
    ('same' padding, ReLU) of 64, 128, 256 channels, each block followed by 2x2
    max-pooling; then fc 256 -> 256 -> num_classes."""
    channels, height, width = image_shape(name, input_shape, min_size=2**pairs)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    conv = 0
    for block in range(pairs):
        out = 64 * 2**block
        for _ in range(2):
            conv += 1
            layers[f"conv{conv}"] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
            layers[f"relu{conv}"] = nn.ReLU()
            channels = out
        layers[f"pool{block + 1}"] = nn.MaxPool2d(2)
        height, width = height // 2, width // 2
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(channels * height * width, 256)
    layers["relu_fc1"] = nn.ReLU()
    layers["fc2"] = nn.Linear(256, 256)
    layers["relu_fc2"] = nn.ReLU()
    layers["fc3"] = nn.Linear(256, num_classes)
    return nn.Sequential(layers)


@register_model("conv2")
def conv2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-2 of Frankle & Carbin: conv 64, 64, pool, fc 256, 256, out
    (4,301,642 parameters on CIFAR-10)."""
    return _conv_net("conv2", input_shape, num_classes, pairs=1)


@register_model("conv4")
def conv4(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-4 of Frankle & Carbin: conv 64, 64, pool, 128, 128, pool, fc 256, 256, out
    (2,425,930 parameters on CIFAR-10)."""
    return _conv_net("conv4", input_shape, num_classes, pairs=2)


@register_model("conv6")
def conv6(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Conv-6 of Frankle & Carbin: conv 64, 64, pool, 128, 128, pool, 256, 256, pool,
    fc 256, 256, out (2,262,602 parameters on CIFAR-10)."""
    return _conv_net("conv6", input_shape, num_classes, pairs=3)
