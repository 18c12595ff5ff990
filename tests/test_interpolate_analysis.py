"""lth_sparse.analysis.interpolate: the batched path against loading each interpolated state dict, in every
batch-norm mode (each against its own loop reference), masked and plain, inside and outside [0, 1]."""

import copy
import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lth_sparse.analysis import PathResult, error_barrier, interpolate, loss_barrier
from lth_sparse.analysis.interpolate import recompute_batches
from lth_sparse.data import Dataset, Split
from lth_sparse.models import create_model
from lth_sparse.nn import masked
from lth_sparse.nn.modules import MaskedMixin
from lth_sparse.nn.path import PathNetwork
from lth_sparse.train.loop import evaluate

ATOL, RTOL = 2e-5, 1e-4  # float32 through a few layers, summed over a split


def conv_bn(shape=(3, 8, 8), classes=10) -> nn.Module:
    """A small conv net with BatchNorm2d after each conv and BatchNorm1d in the classifier."""
    c = shape[0]
    return masked(
        nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(c, 8, 3, padding=1),
                bn1=nn.BatchNorm2d(8),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(8, 8, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(8),
                relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(8 * (shape[1] // 2) * (shape[2] // 2), 16),
                bn3=nn.BatchNorm1d(16),
                relu3=nn.ReLU(),
                fc2=nn.Linear(16, classes),
            )
        )
    )


def build(name):
    if name == "lenet300":
        return create_model("lenet300", (1, 28, 28), 10), (1, 28, 28)
    if name == "conv_bn":
        return conv_bn(), (3, 8, 8)
    if name == "resnet20":
        return create_model("resnet20", (3, 8, 8), 10, width=4), (3, 8, 8)
    raise KeyError(name)


def endpoints(name, seed_b=1):
    """A model, its state (a) and another draw's state (b) with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    model, shape = build(name)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed_b)
    other, _ = build(name)
    state_b = copy.deepcopy(other.state_dict())
    for key, value in state_b.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean"):
            value.normal_()
    return model, state_a, state_b, shape


def data_for(shape, n_train=48, n_test=40, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "train": Split(torch.randn(n_train, *shape, generator=g), torch.randint(0, 10, (n_train,), generator=g)),
        "test": Split(torch.randn(n_test, *shape, generator=g), torch.randint(0, 10, (n_test,), generator=g)),
    }


# ------------------------------------------------------------------------------------- the loop reference


def masked_prefixes(model):
    return {f"{name}." if name else "" for name, m in model.named_modules() if isinstance(m, MaskedMixin)}


def interpolated_state(model, state_a, state_b, alpha):
    """The state dict at alpha: floating tensors lerped; a masked layer's weight is the lerp of W_a * M_a and
    W_b * M_b under the union of the masks; other tensors are state_a's."""
    prefixes = masked_prefixes(model)
    state = {}
    for key, a in state_a.items():
        b = state_b[key]
        prefix = key[: key.rfind(".") + 1]
        if prefix in prefixes and key == f"{prefix}weight":
            ma, mb = state_a[f"{prefix}mask"], state_b[f"{prefix}mask"]
            state[key] = torch.lerp(a * ma, b * mb, alpha)
        elif prefix in prefixes and key == f"{prefix}mask":
            state[key] = a | b
        elif a.is_floating_point():
            state[key] = torch.lerp(a, b, alpha)
        else:
            state[key] = a.clone()
    return state


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def loop_reference(model, state_a, state_b, alphas, splits, bn, bn_inputs=(), batch_size=1000):
    """{split: (losses, accuracies)}: for each alpha a copy of the model loaded with the interpolated state;
    bn="recompute": running statistics reset, momentum=None, a train-mode forward over each of ``bn_inputs``,
    then eval; bn="train-mode": batch norm in training mode over batches of ``batch_size``."""
    out = {name: ([], []) for name in splits}
    for alpha in alphas:
        m = copy.deepcopy(model)
        m.load_state_dict(interpolated_state(model, state_a, state_b, torch.tensor(float(alpha))))
        m.eval()
        if bn == "recompute":
            for norm in batch_norms(m):
                norm.reset_running_stats()
                norm.momentum = None
                norm.train()
            for x in bn_inputs:
                m(x)
            m.eval()
        elif bn == "train-mode":
            for norm in batch_norms(m):
                norm.train()
        for name, split in splits.items():
            loss = correct = 0.0
            for start in range(0, len(split), batch_size):
                x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
                logits = m(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
            out[name][0].append(loss / len(split))
            out[name][1].append(correct / len(split))
    return out


def assert_matches(result, reference):
    for name, (losses, accs) in reference.items():
        curve = result.curve(name)
        torch.testing.assert_close(
            torch.tensor(curve.loss, dtype=torch.float64),
            torch.tensor(losses, dtype=torch.float64),
            atol=ATOL,
            rtol=RTOL,
        )
        assert curve.accuracy == pytest.approx(accs, abs=1e-12)
        assert curve.error == pytest.approx([1 - a for a in accs], abs=1e-12)


# ------------------------------------------------------------------------------------------ equal the loop


@pytest.mark.parametrize("name", ["lenet300", "conv_bn", "resnet20"])
@pytest.mark.parametrize("bn", ["recompute", "interpolate", "train-mode"])
def test_batched_path_equals_the_loop_over_interpolated_state_dicts(name, bn):
    model, state_a, state_b, shape = endpoints(name)
    data = data_for(shape)
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    result = interpolate(
        model, state_a, state_b, data, alphas=alphas, bn=bn, bn_batches=3, bn_batch_size=12, batch_size=16
    )
    bn_inputs = recompute_batches(data["train"], 3, 12, seed=0)
    has_bn = bool(batch_norms(model))
    assert result.bn == bn and result.alphas == alphas and result.splits == ["train", "test"]
    assert (result.bn_batches, result.bn_examples) == ((3, 36) if bn == "recompute" and has_bn else (0, 0))
    assert [result.curve(s).examples for s in ("train", "test")] == [48, 40]
    assert_matches(result, loop_reference(model, state_a, state_b, alphas, data, bn, bn_inputs, batch_size=16))


def test_the_bn_modes_differ_on_a_batch_norm_network():
    """The three modes are three different measurements (a test that they are not one code path)."""
    model, state_a, state_b, shape = endpoints("conv_bn")
    data = data_for(shape)
    losses = {
        bn: interpolate(model, state_a, state_b, data, alphas=5, bn=bn, bn_batches=2, batch_size=16)
        .curve("test")
        .loss[2]
        for bn in ("recompute", "interpolate", "train-mode")
    }
    assert len({round(v, 6) for v in losses.values()}) == 3, losses


@pytest.mark.parametrize("order", [True, False])
def test_recomputed_statistics_are_the_same_folded_or_one_alpha_at_a_time(order):
    model, state_a, state_b, shape = endpoints("resnet20")
    data = data_for(shape)
    alphas = [0.0, 0.3, 0.6, 1.0]
    result = interpolate(
        model,
        state_a,
        state_b,
        data,
        alphas=alphas,
        bn="recompute",
        bn_batches=2,
        bn_batch_size=16,
        splits=["test"],
        one_alpha_at_a_time=order,
    )
    bn_inputs = recompute_batches(data["train"], 2, 16, seed=0)
    assert_matches(
        result, loop_reference(model, state_a, state_b, alphas, {"test": data["test"]}, "recompute", bn_inputs)
    )


class TwiceNormed(nn.Module):
    """One BatchNorm1d module called twice in a forward, with a layer between the calls, then a head."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2, self.head = nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 6), nn.Linear(6, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1))))))))


@pytest.mark.parametrize("order", [True, False])
@pytest.mark.parametrize("name", ["conv_bn", "twice"])
def test_estimating_forwards_stop_after_the_last_batch_norm_and_keep_the_loops_statistics(order, name):
    """Only the first estimating forward runs the layers after the last batch-norm call (the classifier
    head); every recomputed statistic is still the loop's, also for a batch norm called twice a forward."""
    if name == "twice":
        torch.manual_seed(0)
        model, shape = TwiceNormed(), (12,)
        state_a = copy.deepcopy(model.state_dict())
        state_b = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state_a.items()}
    else:
        model, state_a, state_b, shape = endpoints(name)
    data = data_for(shape)
    path = PathNetwork(model, state_a, state_b, bn="recompute")
    head = path.net.head if name == "twice" else path.net.fc2
    calls = []
    head.register_forward_hook(lambda module, inputs, output: calls.append(output.shape[0]))
    bn_inputs = recompute_batches(data["train"], 3, 12, seed=0)
    alphas = torch.tensor([0.0, 0.4, 1.0])
    path.recompute_bn_statistics(bn_inputs, alphas, one_alpha_at_a_time=order)
    assert len(calls) == 1, "the head ran in the first estimating forward only"
    result = interpolate(
        model,
        state_a,
        state_b,
        data,
        alphas=alphas.tolist(),
        bn="recompute",
        bn_batches=3,
        bn_batch_size=12,
        batch_size=16,
        one_alpha_at_a_time=order,
    )
    assert_matches(
        result, loop_reference(model, state_a, state_b, alphas.tolist(), data, "recompute", bn_inputs, batch_size=16)
    )


@pytest.mark.parametrize("name", ["lenet300", "conv_bn"])
def test_the_curves_endpoints_are_each_endpoint_models_own_evaluation(name):
    model, state_a, state_b, shape = endpoints(name)
    data = data_for(shape)
    result = interpolate(model, state_a, state_b, data, alphas=[1.0, 0.5, 0.0], bn="interpolate")
    for alpha, state in ((0.0, state_a), (1.0, state_b)):
        m = copy.deepcopy(model)
        m.load_state_dict(state)
        i = result.alphas.index(alpha)
        for split in ("train", "test"):
            loss, accuracy = evaluate(m, data[split])
            assert result.curve(split).loss[i] == pytest.approx(loss, rel=1e-5, abs=1e-6)
            assert result.curve(split).accuracy[i] == accuracy


@pytest.mark.parametrize("bn", ["recompute", "interpolate"])
def test_a_model_against_itself_has_barrier_zero(bn):
    model, state_a, _, shape = endpoints("conv_bn")
    result = interpolate(model, state_a, copy.deepcopy(state_a), data_for(shape), bn=bn, bn_batches=2)
    assert len(result.alphas) == 21 and result.alphas[0] == 0.0 and result.alphas[-1] == 1.0
    for kind in ("max-mean", "midpoint", "lerp"):
        for metric in ("error", "loss"):
            assert abs(result.barrier("test", kind, metric).value) < 1e-6
    assert max(result.curve("test").loss) - min(result.curve("test").loss) < 1e-5


def test_different_networks_have_the_barriers_of_their_curves():
    model, state_a, state_b, shape = endpoints("conv_bn")
    result = interpolate(model, state_a, state_b, data_for(shape), alphas=11, bn="interpolate")
    curve = result.curve("test")
    assert result.barrier() == error_barrier(curve.error, result.alphas)
    assert result.barrier("train", "lerp", "loss") == loss_barrier(result.curve("train").loss, result.alphas, "lerp")
    loss = result.barrier(metric="loss")
    assert (loss.at_0, loss.at_1) == (curve.loss[0], curve.loss[-1])
    assert loss.value == pytest.approx(max(curve.loss) - (curve.loss[0] + curve.loss[-1]) / 2)


# ---------------------------------------------------------------------------------------------------- masks


def masked_endpoints(shared: bool):
    model, state_a, state_b, shape = endpoints("conv_bn")
    g = torch.Generator().manual_seed(5)
    for prefix in masked_prefixes(model):
        mask = torch.rand(state_a[f"{prefix}mask"].shape, generator=g) < 0.4
        state_a[f"{prefix}mask"] = mask
        state_b[f"{prefix}mask"] = mask.clone() if shared else torch.rand(mask.shape, generator=g) < 0.6
    return model, state_a, state_b, shape


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "different"])
@pytest.mark.parametrize("bn", ["recompute", "interpolate"])
def test_masked_endpoints_equal_the_loop_over_masked_weights(shared, bn):
    model, state_a, state_b, shape = masked_endpoints(shared)
    data = data_for(shape)
    alphas = [0.0, 0.4, 1.0]
    result = interpolate(model, state_a, state_b, data, alphas=alphas, bn=bn, bn_batches=2, bn_batch_size=16)
    assert result.masks == ("shared" if shared else "different")
    bn_inputs = recompute_batches(data["train"], 2, 16, seed=0)
    assert_matches(result, loop_reference(model, state_a, state_b, alphas, data, bn, bn_inputs))
    # the weights under the masks matter, those outside do not
    state_b_noise = {
        k: (v + 100 * ~state_b[k[:-6] + "mask"] if k.endswith("weight") and k[:-6] + "mask" in state_b else v)
        for k, v in state_b.items()
    }
    again = interpolate(model, state_a, state_b_noise, data, alphas=alphas, bn=bn, bn_batches=2, bn_batch_size=16)
    assert again.curve("test").loss == pytest.approx(result.curve("test").loss, rel=1e-6)


def test_a_plain_torch_model_has_no_masks_and_matches_the_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10))
    state_a = copy.deepcopy(model.state_dict())
    state_b = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state_a.items()}
    state_b = {k: v.abs() if k.endswith("running_var") else v for k, v in state_b.items()}
    data = data_for((3, 8, 8))
    result = interpolate(model, state_a, state_b, data, alphas=[0.0, 0.5, 1.0], bn_batches=2, bn_batch_size=16)
    assert result.masks == "none" and result.bn == "recompute" and result.bn_layers == 1
    assert_matches(
        result,
        loop_reference(
            model, state_a, state_b, [0.0, 0.5, 1.0], data, "recompute", recompute_batches(data["train"], 2, 16)
        ),
    )


# --------------------------------------------------------------------------------------------- extrapolation


@pytest.mark.parametrize("name,bn", [("lenet300", "interpolate"), ("conv_bn", "recompute"), ("resnet20", "train-mode")])
def test_extrapolated_alphas_match_the_loop(name, bn):
    model, state_a, state_b, shape = endpoints(name)
    data = data_for(shape)
    alphas = [-0.5, 0.0, 0.5, 1.0, 1.5]
    result = interpolate(
        model, state_a, state_b, data, alphas=alphas, bn=bn, bn_batches=2, bn_batch_size=16, batch_size=16
    )
    assert result.alphas == alphas
    bn_inputs = recompute_batches(data["train"], 2, 16)
    assert_matches(result, loop_reference(model, state_a, state_b, alphas, data, bn, bn_inputs, batch_size=16))
    assert result.barrier().at_0 == result.curve("test").error[1]  # the barrier uses alphas in [0, 1]


# --------------------------------------------------------------------------------------------- data forms


def test_data_as_a_dataset_a_mapping_of_pairs_and_of_loaders_give_the_same_curves():
    model, state_a, state_b, shape = endpoints("conv_bn")
    data = data_for(shape)
    val = Split(data["test"].x[:8], data["test"].y[:8])
    dataset = Dataset("toy", data["train"], val, data["test"], 10, shape, None)
    kwargs = dict(alphas=[0.0, 0.5, 1.0], bn_batches=2, bn_batch_size=16)
    from_dataset = interpolate(model, state_a, state_b, dataset, **kwargs)
    assert from_dataset.splits == ["train", "test"]
    pairs = {k: (v.x, v.y) for k, v in data.items()}
    from_pairs = interpolate(model, state_a, state_b, pairs, **kwargs)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data["test"].x, data["test"].y), batch_size=7)
    from_loader = interpolate(
        model,
        state_a,
        state_b,
        {"test": loader},
        splits=["test"],
        **kwargs,
        train_data=[(x, None) for x in recompute_batches(data["train"], 2, 16)],
    )
    for other in (from_pairs, from_loader):
        assert other.curve("test").loss == pytest.approx(from_dataset.curve("test").loss, rel=1e-5)
        assert other.curve("test").accuracy == from_dataset.curve("test").accuracy
    only_val = interpolate(model, state_a, state_b, dataset, splits=["val"], **kwargs)
    assert only_val.splits == ["val"] and only_val.curve("val").examples == 8
    first = interpolate(model, state_a, state_b, dataset, splits=["test"], examples=8, **kwargs)
    assert first.curve("test").loss == pytest.approx(only_val.curve("val").loss, rel=1e-5)


def test_recompute_batches_are_full_batches_of_one_seeded_permutation():
    split = Split(torch.arange(50.0).reshape(50, 1), torch.zeros(50, dtype=torch.long))
    xs = recompute_batches(split, 3, 16, seed=4)
    assert [x.shape[0] for x in xs] == [16, 16, 16]
    values = torch.cat(xs).flatten()
    assert values.unique().numel() == 48 and not torch.equal(values, torch.arange(48.0))
    assert all(torch.equal(a, b) for a, b in zip(xs, recompute_batches(split, 3, 16, seed=4)))
    assert not torch.equal(torch.cat(xs), torch.cat(recompute_batches(split, 3, 16, seed=5)))
    assert [x.shape[0] for x in recompute_batches(split, 10, 16)] == [16, 16, 16]  # as many full ones as there are
    assert [x.shape[0] for x in recompute_batches(split, 2, 64)] == [50]  # fewer than a batch: all, once


def test_train_mode_statistics_are_each_evaluation_batchs():
    model, state_a, state_b, shape = endpoints("conv_bn")
    data = {"test": data_for(shape)["test"]}
    small = interpolate(model, state_a, state_b, data, alphas=[0.5], bn="train-mode", batch_size=10)
    large = interpolate(model, state_a, state_b, data, alphas=[0.5], bn="train-mode", batch_size=40)
    assert small.curve("test").loss != pytest.approx(large.curve("test").loss, rel=1e-4)
    assert small.batch_size == 10
    assert_matches(large, loop_reference(model, state_a, state_b, [0.5], data, "train-mode", batch_size=40))


def test_recompute_on_a_model_without_batch_norm_needs_no_training_data():
    model, state_a, state_b, shape = endpoints("lenet300")
    data = {"test": data_for(shape)["test"]}
    result = interpolate(model, state_a, state_b, data, alphas=3)
    assert result.bn == "recompute" and result.bn_layers == 0 and result.bn_batches == 0
    assert_matches(result, loop_reference(model, state_a, state_b, [0.0, 0.5, 1.0], data, "interpolate"))


# ------------------------------------------------------------------------------------------- the result


def test_the_result_goes_through_json_unchanged():
    model, state_a, state_b, shape = endpoints("conv_bn")
    result = interpolate(model, state_a, state_b, data_for(shape), alphas=[0.0, 0.5, 1.0, 1.25], bn_batches=2)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["bn"] == "recompute" and d["masks"] == "shared" and "alpha = 0 is state_a" in d["convention"]
    assert set(d["curves"]) == {"train", "test"} and set(d["curves"]["test"]) == {
        "loss",
        "error",
        "accuracy",
        "examples",
    }
    back = PathResult.from_dict(d)
    assert back == result
    assert back.barrier("train", "midpoint") == result.barrier("train", "midpoint")


# ------------------------------------------------------------------------------------------- other layers


class Scale(nn.Module):
    """A custom layer with a parameter of its own: PathNetwork has no special case for it."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(n))
        self.register_buffer("offset", torch.randn(n))

    def forward(self, x):
        return x * self.gain + self.offset


@pytest.mark.parametrize("bn", ["recompute", "interpolate"])
def test_layers_without_a_special_case_go_through_functional_call(bn):
    torch.manual_seed(0)
    model = masked(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(48, 20),
            nn.LayerNorm(20),
            nn.PReLU(20),
            Scale(20),
            nn.BatchNorm1d(20),
            nn.Linear(20, 10),
        )
    )
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    state_b = {k: v + torch.randn_like(v) * 0.5 if v.is_floating_point() else v for k, v in state_a.items()}
    state_b = {k: v.abs() + 0.1 if k.endswith("running_var") else v for k, v in state_b.items()}
    data = data_for((3, 4, 4))
    alphas = [-0.5, 0.0, 0.3, 1.0]
    for order in (None, True):
        result = interpolate(
            model,
            state_a,
            state_b,
            data,
            alphas=alphas,
            bn=bn,
            bn_batches=2,
            bn_batch_size=16,
            one_alpha_at_a_time=order,
        )
        assert_matches(
            result, loop_reference(model, state_a, state_b, alphas, data, bn, recompute_batches(data["train"], 2, 16))
        )


class Gated(nn.Module):
    """Tensors of its own and a sub-module with tensors: its forward mixes the two."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.gate = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.inner(x) * self.gate


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_the_first_mismatch_named():
    model, state_a, state_b, shape = endpoints("conv_bn")
    data = data_for(shape)
    missing = {k: v for k, v in state_b.items() if k != "bn2.running_mean"}
    with pytest.raises(ValueError, match=r"state_b has no 'bn2.running_mean'"):
        interpolate(model, state_a, missing, data)
    with pytest.raises(ValueError, match=r"state_a has 'extra.weight', which is not a key"):
        interpolate(model, {**state_a, "extra.weight": torch.ones(1)}, state_b, data)
    wrong = dict(state_b, **{"fc1.weight": torch.zeros(16, 7), "fc2.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'fc1.weight': \(16, 128\) and \(16, 7\)"):
        interpolate(model, state_a, wrong, data)
    for alphas, message in (
        ([], "empty"),
        ([0.0, float("nan")], "finite"),
        (torch.tensor([0.5, float("inf")]), "finite"),
        (1, "at least 2"),
    ):
        with pytest.raises(ValueError, match=message):
            interpolate(model, state_a, state_b, data, alphas=alphas)
    with pytest.raises(ValueError, match="unknown bn mode 'batch'; choose one of interpolate, recompute, train-mode"):
        interpolate(model, state_a, state_b, data, bn="batch")
    with pytest.raises(ValueError, match="bn='recompute' re-estimates"):
        interpolate(model, state_a, state_b, {"test": data["test"]})
    with pytest.raises(ValueError, match="no split 'val' in data; it has train, test"):
        interpolate(model, state_a, state_b, data, splits=["val"])
    with pytest.raises(TypeError, match="data must be"):
        interpolate(model, state_a, state_b, [data["test"]])
    gated = nn.Sequential(Gated(), nn.Linear(4, 2))
    state = gated.state_dict()
    with pytest.raises(ValueError, match=r"0: Gated has tensors of its own and sub-modules with tensors \(0.inner"):
        interpolate(gated, state, state, {"test": (torch.randn(3, 4), torch.zeros(3, dtype=torch.long))})


def test_a_path_evaluates_on_recomputed_statistics_only_for_the_alphas_they_were_recomputed_for():
    from lth_sparse.nn.path import PathNetwork

    model, state_a, state_b, shape = endpoints("conv_bn")
    path = PathNetwork(model, state_a, state_b, bn="recompute")
    x = torch.randn(4, *shape)
    alphas = torch.tensor([0.0, 0.5, 1.0])
    with pytest.raises(RuntimeError, match="recompute_bn_statistics"):
        path(x, alphas)
    assert path.recompute_bn_statistics([torch.randn(6, *shape), torch.randn(6, *shape)], alphas) == 2
    assert path(x, alphas).shape == (3, 4, 10)
    with pytest.raises(ValueError, match=r"recomputed for alphas \[0.0, 0.5, 1.0\], not \[0.0, 1.0\]"):
        path(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="is for bn='recompute'"):
        PathNetwork(model, state_a, state_b).recompute_bn_statistics([x], alphas)


@pytest.mark.parametrize("name", ["lenet300", "conv_bn"])
def test_bf16_precision_is_recorded_and_close_to_fp32(name):
    """precision="bf16": the passes under autocast; the result says so, and its curves stay near the
    float32 ones (bfloat16 keeps 8 bits of mantissa: losses to a few hundredths, accuracies to a few
    examples of 40); float32 is the default and unchanged."""
    model, state_a, state_b, shape = endpoints(name)
    data = data_for(shape)
    alphas = [0.0, 0.5, 1.0]
    kwargs = dict(alphas=alphas, bn="recompute", bn_batches=2, bn_batch_size=12, batch_size=16)
    full = interpolate(model, state_a, state_b, data, **kwargs)
    low = interpolate(model, state_a, state_b, data, precision="bf16", **kwargs)
    assert (full.precision, low.precision) == ("fp32", "bf16")
    for split in ("train", "test"):
        f, b = full.curve(split), low.curve(split)
        assert max(abs(x - y) for x, y in zip(f.loss, b.loss)) < 0.05
        assert max(abs(x - y) for x, y in zip(f.accuracy, b.accuracy)) <= 4 / f.examples
        assert all(math.isfinite(v) for v in b.loss)
    assert full.curve("test").loss != low.curve("test").loss, "the bfloat16 passes ran in bfloat16"
    assert PathResult.from_dict(json.loads(json.dumps(low.to_dict()))) == low
    legacy = {k: v for k, v in full.to_dict().items() if k != "precision"}  # results written before the field
    assert PathResult.from_dict(legacy).precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        interpolate(model, state_a, state_b, data, precision="fp16", **kwargs)
