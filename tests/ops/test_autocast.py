"""The masked layers and ops under ``torch.autocast``: what ``nn.Linear`` / ``nn.Conv2d`` do with the weight pre-masked.

Under autocast torch's layers cast input, weight and bias to the autocast dtype,
compute in it, and return the weight's gradient to the float32 parameter in
float32. The masked ones must do the same on every backend, their weight gradient
zero at pruned entries; on the CPU for bf16 and fp16, on a GPU (``-m gpu``) in
training steps with fp16 and a ``GradScaler``, and with bf16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lth_sparse.nn import MaskedConv2d, MaskedLinear
from lth_sparse.ops import interpolate, interpolated_conv2d, interpolated_linear, masked_conv2d, masked_linear
from lth_sparse.ops.masked_conv2d import IMPLEMENTED as CONV_IMPLEMENTED
from lth_sparse.ops.masked_linear import IMPLEMENTED as LINEAR_IMPLEMENTED
from tests.conftest import available_backends, backend_variants
from tests.tolerances import assert_close


def kinds_and_backends(device: str = "cpu") -> list[tuple[str, str]]:
    """(layer kind, backend variant) for each backend of each op that can run on ``device`` here."""
    return [
        (kind, backend)
        for kind, implemented in (("linear", LINEAR_IMPLEMENTED), ("conv", CONV_IMPLEMENTED))
        for backend in backend_variants(implemented, device)
    ]


CPU_DTYPES = [torch.bfloat16, torch.float16]
DENSITIES = [1.0, 0.5, 0.0]  # nothing pruned (torch's own dense layer on the C++ path), half, everything


def random_mask(shape, density: float, seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def premasked(layer: nn.Module) -> nn.Module:
    """The torch layer of a masked one: ``nn.Linear`` / ``nn.Conv2d`` holding the weight with pruned entries zero."""
    if isinstance(layer, MaskedLinear):
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:
        plain = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    plain = plain.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(torch.where(layer.mask, layer.weight, 0))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
    return plain


def make_layer(kind: str, density: float, seed: int = 0, device="cpu") -> tuple[nn.Module, torch.Tensor]:
    """A masked layer and an input for it (float32)."""
    torch.manual_seed(seed)
    if kind == "linear":
        layer, x = MaskedLinear(19, 7), torch.randn(2, 5, 19)
    else:
        layer, x = MaskedConv2d(4, 6, 3, stride=2, padding=1), torch.randn(3, 4, 9, 8)
    layer.set_mask(random_mask(layer.weight.shape, density, seed + 1))
    return layer.to(device), x.to(device)


def run(module, x, grad, dtype, backward_inside):
    """Output and (input, weight, bias) gradients of ``module`` on ``x`` under autocast to ``dtype``."""
    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=dtype):
        y = module(x)
        if backward_inside:
            y.backward(grad)
    if not backward_inside:
        y.backward(grad)
    return y, x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize("kind, backend", kinds_and_backends())
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("backward_inside", [False, True], ids=["backward_after", "backward_inside"])
def test_masked_layer_under_cpu_autocast_matches_the_torch_layer_premasked(
    kind, backend, dtype, density, backward_inside, use_backend
):
    use_backend(backend)
    layer, x = make_layer(kind, density)
    plain = premasked(layer)
    with torch.autocast("cpu", dtype=dtype):
        grad = torch.randn_like(plain(x))  # in the reference's output dtype
    y, dx, dw, db = run(layer, x, grad, dtype, backward_inside)
    y_ref, dx_ref, dw_ref, db_ref = run(plain, x, grad, dtype, backward_inside)
    assert y.dtype == y_ref.dtype == dtype
    assert_close(y.float(), y_ref.float(), dtype=dtype)
    assert dx.dtype == dw.dtype == db.dtype == torch.float32, "gradients reach the float32 leaves in float32"
    assert not dw[~layer.mask].any(), "pruned weights must get exactly zero gradient"
    assert_close(dw, torch.where(layer.mask, dw_ref, 0), dtype=dtype, scale=4)
    assert_close(dx, dx_ref, dtype=dtype, scale=4)
    assert_close(db, db_ref, dtype=dtype, scale=4)
    assert layer.weight.dtype == torch.float32 and layer.mask.dtype == torch.bool


def functional_case(kind: str, density: float):
    """(masked op, its args with the weight as a leaf, the torch op, its args with the weight pre-masked)."""
    layer, x = make_layer(kind, density, seed=3)
    w, m, b = layer.weight.detach(), layer.mask, layer.bias.detach()
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.clone().requires_grad_() for t in (x, torch.where(m, w, 0), b)]
    if kind == "linear":
        return masked_linear, (leaves[0], leaves[1], m, leaves[2]), F.linear, tuple(refs), leaves, refs, m
    geometry = dict(stride=2, padding=1)
    return (
        lambda *a: masked_conv2d(*a, **geometry),
        (leaves[0], leaves[1], m, leaves[2]),
        lambda *a: F.conv2d(*a, **geometry),
        tuple(refs),
        leaves,
        refs,
        m,
    )


@pytest.mark.parametrize("kind, backend", kinds_and_backends())
@pytest.mark.parametrize("density", [1.0, 0.5])
def test_functional_op_under_cpu_autocast_matches_the_torch_op_premasked(kind, backend, density, use_backend):
    use_backend(backend)
    op, args, ref_op, ref_args, leaves, refs, mask = functional_case(kind, density)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = op(*args), ref_op(*ref_args)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y.float(), y_ref.float(), dtype=torch.bfloat16)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    assert all(t.grad.dtype == torch.float32 for t in leaves)
    assert not leaves[1].grad[~mask].any()
    refs[1].grad[~mask] = 0
    for ours, theirs in zip(leaves, refs):
        assert_close(ours.grad, theirs.grad, dtype=torch.bfloat16, scale=4)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("via", ["torch.ops", "torch.compile"])
def test_custom_op_under_cpu_autocast_casts_like_the_plain_eager_path(kind, via):
    # the dispatcher's path (its autocast kernel), which torch.compile and direct torch.ops calls take
    op, args, _, _, leaves, _, mask = functional_case(kind, 0.5)
    if via == "torch.ops":
        if kind == "linear":

            def fn(*a):
                return torch.ops.lth_sparse.masked_linear(*a)
        else:

            def fn(*a):
                return torch.ops.lth_sparse.masked_conv2d(*a, [2, 2], [1, 1], [1, 1], 1)
    else:
        fn = torch.compile(op, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(*args)
        y_eager = op(*[a.detach() if a.is_floating_point() else a for a in args])
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_eager, atol=0, rtol=0)  # the same casts and kernels, so the same bits
    y.float().sum().backward()
    assert leaves[1].grad.dtype == torch.float32 and leaves[0].grad.dtype == torch.float32
    assert not leaves[1].grad[~mask].any()


def test_autocast_off_leaves_float32_untouched():
    layer, x = make_layer("linear", 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        y = layer(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, premasked(layer)(x), atol=1e-5, rtol=1e-5)


def test_float64_is_not_cast_as_torch_does_not_cast_it():
    layer, x = make_layer("linear", 0.5)
    layer.double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = layer(x.double()), premasked(layer)(x.double())
    assert y.dtype == y_ref.dtype == torch.float64
    assert_close(y, y_ref)


def interpolation_case(kind: str):
    g = torch.Generator().manual_seed(5)
    alphas = torch.linspace(0, 1, 3)
    if kind == "linear":
        x, wa, wb = torch.randn(1, 4, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    else:
        x, wa, wb = (
            torch.randn(3, 2, 3, 6, 6, generator=g),
            torch.randn(4, 3, 3, 3, generator=g),
            torch.randn(4, 3, 3, 3, generator=g),
        )
    ba, bb = torch.randn(wa.shape[0], generator=g), torch.randn(wa.shape[0], generator=g)
    return x, wa, wb, alphas, ba, bb


def interpolation_reference(kind, x, wa, wb, alphas, ba, bb):
    """The torch layer at each alpha, under the caller's autocast."""
    layer = F.linear if kind == "linear" else (lambda x, w, b: F.conv2d(x, w, b, padding=1))
    return torch.stack(
        [
            layer(x[0 if x.shape[0] == 1 else i], torch.lerp(wa, wb, a), torch.lerp(ba, bb, a))
            for i, a in enumerate(alphas.tolist())
        ]
    )


@pytest.mark.parametrize("backend", available_backends(interpolate.IMPLEMENTED))
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_interpolated_op_under_cpu_autocast_matches_the_torch_layer_at_each_alpha(backend, kind, use_backend):
    use_backend(backend)
    x, wa, wb, alphas, ba, bb = interpolation_case(kind)
    leaves = [t.clone().requires_grad_() for t in (x, wa, wb, alphas, ba, bb)]
    # the linear case's input is shared by every alpha, the conv's one per alpha
    op = (
        (lambda x, *a: interpolated_linear(x[0], *a))
        if kind == "linear"
        else (lambda *a: interpolated_conv2d(*a, padding=1, input_per_alpha=True))
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(*leaves)
        y_ref = interpolation_reference(kind, x, wa, wb, alphas, ba, bb)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y.float(), y_ref.float(), dtype=torch.bfloat16, scale=2)
    y.float().sum().backward()
    assert [t.grad.dtype for t in leaves] == [torch.float32] * 6
    assert alphas.dtype == torch.float32, "alphas are not cast: the path's points stay where they were asked for"


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_cpu_forward_into_under_autocast_computes_in_the_autocast_dtype(kind):
    x, wa, wb, alphas, ba, bb = interpolation_case(kind)
    conv_args = () if kind == "linear" else ([1, 1], [1, 1], [1, 1], 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = interpolate.cpu_forward_into(None, kind, x, wa, wb, alphas, ba, bb, *conv_args)
        again = interpolate.cpu_forward_into(y, kind, x, wa, wb, alphas, ba, bb, *conv_args)
        y_ref = interpolation_reference(kind, x, wa, wb, alphas, ba, bb)
    assert y.dtype == torch.bfloat16
    assert again.data_ptr() == y.data_ptr(), "a bf16 result of the right shape is reused"
    assert_close(again.float(), y_ref.float(), dtype=torch.bfloat16, scale=2)


# ---------------------------------------------------------------------------------------------------------- GPU


def gpu_network(kind: str, masked: bool, seed: int = 0) -> nn.Module:
    """A small masked network (about half of each weight pruned) on the GPU, or the torch network with the
    same weights pre-masked (``masked=False``)."""
    torch.manual_seed(seed)
    if kind == "linear":
        layers = [MaskedLinear(64, 128), nn.ReLU(), MaskedLinear(128, 10)]
    else:
        layers = [
            MaskedConv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            MaskedConv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            MaskedLinear(16 * 8 * 8, 10),
        ]
    for i, layer in enumerate(layers):
        if isinstance(layer, (MaskedLinear, MaskedConv2d)):
            layer.set_mask(random_mask(layer.weight.shape, 0.5, seed + i))
    network = nn.Sequential(*layers).cuda()
    if masked:
        return network
    return nn.Sequential(*[premasked(m) if isinstance(m, (MaskedLinear, MaskedConv2d)) else m for m in network])


def gpu_batches(kind: str, steps: int):
    g = torch.Generator().manual_seed(1)
    shape = (32, 64) if kind == "linear" else (16, 3, 16, 16)
    return [
        (torch.randn(*shape, generator=g).cuda(), torch.randint(0, 10, (shape[0],), generator=g).cuda())
        for _ in range(steps)
    ]


def train_steps(network, batches, dtype, masks):
    """SGD steps under autocast to ``dtype`` (fp16 with a GradScaler); the torch network's weight gradients
    are masked by hand (``masks``: one per weight layer, or None) so both follow the same masked update."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=dtype == torch.float16)
    weights = [m.weight for m in network if isinstance(m, (nn.Linear, nn.Conv2d))]
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = network(x)
            loss = F.cross_entropy(out, y)
        assert out.dtype == dtype
        scaler.scale(loss).backward()
        if masks is not None:
            for w, m in zip(weights, masks):
                w.grad[~m] = 0
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == (2.0**10 if dtype == torch.float16 else 1.0), "no step may overflow and be skipped"
    return weights


@pytest.mark.gpu
@pytest.mark.parametrize("kind, backend", kinds_and_backends("cuda"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_training_under_autocast_matches_the_torch_network_premasked(kind, backend, dtype, use_backend):
    use_backend(backend)
    batches = gpu_batches(kind, steps=4)
    masked, plain = gpu_network(kind, masked=True), gpu_network(kind, masked=False)
    masks = [m.mask for m in masked if isinstance(m, (MaskedLinear, MaskedConv2d))]
    ours = train_steps(masked, batches, dtype, None)
    theirs = train_steps(plain, batches, dtype, masks)
    for w, w_ref, m in zip(ours, theirs, masks):
        assert w.dtype == torch.float32 and w.grad.dtype == torch.float32
        assert not w[~m].any(), "pruned weights stay exactly zero"
        assert not w.grad[~m].any()
        assert_close(w, w_ref, dtype=dtype, scale=2)
