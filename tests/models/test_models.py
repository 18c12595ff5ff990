"""The model registry: shapes, masking, parameter counts, initialisation, errors."""

import math

import pytest
import torch
import torch.nn as nn

from lth_sparse.models import available_models, create_model, initialize
from lth_sparse.nn import MaskedConv2d, MaskedLinear

# A fitting input for each model, and a second, different one where the model takes it.
CASES = {
    "lenet300": [(1, 28, 28), (40,)],
    "mlp": [(40,), (3, 8, 8)],
    "lenet5": [(1, 28, 28), (3, 32, 32)],
    "conv2": [(3, 32, 32), (1, 28, 28)],
    "conv4": [(3, 32, 32), (1, 8, 8)],
    "conv6": [(3, 32, 32), (1, 28, 28)],
    "vgg11": [(3, 32, 32), (1, 28, 28)],
    "vgg16": [(3, 16, 16)],
    "vgg19": [(3, 16, 16)],
    "resnet20": [(3, 32, 32), (1, 8, 8)],
    "resnet18": [(1, 28, 28)],
    "resnet34": [(3, 8, 8)],
    "resnet50": [(3, 8, 8)],
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_has_a_case():
    assert set(available_models()) == set(CASES)


@pytest.mark.parametrize("name, shape", [(n, s) for n, shapes in CASES.items() for s in shapes])
def test_forward_gives_logits_and_every_layer_is_masked(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, num_classes=7)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers and all(isinstance(m, (MaskedLinear, MaskedConv2d)) for m in layers)
    for layer in layers:
        assert layer.mask.dtype == torch.bool and layer.mask.shape == layer.weight.shape and layer.mask.all()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.input_shape == shape and model.num_classes == 7
    output_layer = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert output_layer.out_features == 7


@pytest.mark.parametrize(
    "name, shape, classes, expected",
    [
        ("lenet300", (1, 28, 28), 10, 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
        ("lenet5", (1, 28, 28), 10, 60_074),  # 60 + 880 + 48,120 + 10,164 + 850
        ("conv2", (3, 32, 32), 10, 4_301_642),  # Frankle & Carbin: 4.3M
        ("conv4", (3, 32, 32), 10, 2_425_930),  # 2.4M
        ("conv6", (3, 32, 32), 10, 2_262_602),
        ("vgg11", (3, 32, 32), 10, 9_231_114),
        ("vgg16", (3, 32, 32), 10, 14_728_266),  # OpenLTH cifar_vgg_16
        ("vgg19", (3, 32, 32), 10, 20_040_522),  # Frankle & Carbin: 20.0M
        ("resnet20", (3, 32, 32), 10, 272_474),  # OpenLTH cifar_resnet_20 (projection shortcuts)
        ("resnet18", (3, 32, 32), 10, 11_173_962),  # the CIFAR ResNet-18 (3x3 stem, no max-pool)
        ("mlp", (40,), 10, 40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
    ],
)
def test_parameter_counts_match_the_known_numbers(name, shape, classes, expected):
    assert n_params(create_model(name, shape, classes)) == expected


def test_lenet5_is_the_pret_a_porter_lenet():
    model = create_model("lenet5", (1, 28, 28), 10)
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert shapes == [(6, 1, 3, 3), (16, 6, 3, 3), (120, 400), (84, 120), (10, 84)]
    assert create_model("lenet5", (3, 32, 32), 100).fc1.in_features == 16 * 6 * 6


@pytest.mark.parametrize(
    "name, expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)]
)
def test_imagenet_resnets_match_torchvision(name, expected):
    ours = create_model(name, (3, 224, 224), 1000)
    assert n_params(ours) == expected  # torchvision's published counts
    tv_models = pytest.importorskip("torchvision.models")
    theirs = getattr(tv_models, name)(weights=None)
    assert sorted(tuple(p.shape) for p in ours.parameters()) == sorted(tuple(p.shape) for p in theirs.parameters())


def test_stem_follows_the_input_size():
    assert create_model("resnet18", (3, 64, 64), 10).conv1.kernel_size == (3, 3)
    big = create_model("resnet18", (3, 96, 96), 10)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert create_model("resnet18", (3, 32, 32), 10, stem="imagenet").conv1.stride == (2, 2)


def test_options_change_the_architecture():
    deep = create_model("mlp", (40,), 10, depth=4, width=32)
    assert [m.out_features for m in deep.modules() if isinstance(m, nn.Linear)] == [32, 32, 32, 32, 10]
    assert [m.out_features for m in create_model("mlp", (40,), 3, depth=0).modules() if isinstance(m, nn.Linear)] == [3]
    wide = create_model("resnet20", (3, 32, 32), 10, width=32)
    assert wide.conv1.out_channels == 32 and wide.fc.in_features == 128


def test_creation_is_deterministic_under_manual_seed():
    torch.manual_seed(0)
    a = create_model("resnet20", (3, 32, 32), 10).state_dict()
    torch.manual_seed(0)
    b = create_model("resnet20", (3, 32, 32), 10).state_dict()
    torch.manual_seed(1)
    c = create_model("resnet20", (3, 32, 32), 10).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_initialisation_is_kaiming_normal_with_unit_batchnorm():
    torch.manual_seed(0)
    model = create_model("lenet300", (1, 28, 28), 10)
    weight = model.fc1.weight  # 300 x 784: plenty of samples
    assert weight.mean().item() == pytest.approx(0.0, abs=0.002)
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    bound = 1 / math.sqrt(784)  # biases keep torch's default, uniform in +-1/sqrt(fan_in), as OpenLTH
    assert model.fc1.bias.abs().max().item() <= bound
    vgg = create_model("vgg11", (3, 32, 32), 10)
    assert torch.equal(vgg.bn1.weight, torch.ones(64)) and torch.equal(vgg.bn1.bias, torch.zeros(64))
    assert vgg.conv8.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)


def test_initialize_supports_glorot():
    torch.manual_seed(0)
    model = create_model("lenet300", (1, 28, 28), 10, init="xavier_normal")
    assert model.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / (784 + 300)), rel=0.02)
    with pytest.raises(ValueError, match="unknown init 'orthogonal'"):
        initialize(nn.Linear(2, 2), "orthogonal")


@pytest.mark.parametrize("name", ["lenet5", "conv2", "conv6", "vgg16", "resnet20", "resnet50"])
def test_conv_model_on_vectors_is_a_value_error_naming_model_and_shape(name):
    with pytest.raises(ValueError, match=rf"'{name}'.*\(40,\)"):
        create_model(name, (40,), 10)


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 8, 8)), ("vgg11", (1, 8, 8)), ("conv6", (3, 4, 4))])
def test_images_too_small_for_the_model_are_a_value_error(name, shape):
    with pytest.raises(ValueError, match=rf"'{name}'.*at least"):
        create_model(name, shape, 10)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown model 'alexnet2'.*lenet300.*resnet20"):
        create_model("alexnet2", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet300", (1, 28, 28), 0)
    with pytest.raises(ValueError, match="input_shape"):
        create_model("lenet300", (), 10)
    with pytest.raises(ValueError, match="depth"):
        create_model("mlp", (40,), 10, depth=-1)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet20", (3, 32, 32), 10, width=0)
    with pytest.raises(TypeError, match="width"):
        create_model("lenet300", (1, 28, 28), 10, width=4)
