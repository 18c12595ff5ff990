"""Batched evaluation along the linear path between two weight sets.

``interpolated_linear`` and ``interpolated_conv2d`` evaluate a layer at every
point ``W(alpha) = (1 - alpha) W_a + alpha W_b`` (bias likewise) of a 1-D tensor
``alphas`` in one call, as used to measure error barriers (linear mode
connectivity, Frankle et al. 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis"). The output is linear in alpha for a fixed input, so:

- a shared input (first dimension 1) costs two products, ``x W_a^T`` and
  ``x W_b^T``, combined per alpha (``torch.lerp``) instead of A products;
- per-alpha inputs are evaluated in blocks of alphas with one batched product,
  each interpolated weight formed for its block only, never A at once.

The backward uses the same linearity: every gradient is two products with
``W_a`` and ``W_b`` of the alpha-weighted output gradients.

Backends of the forward: ``torch``, torch's ops alone (the reference order);
``cpp``, the same products with the passes over the result that follow them (the
lerp of a shared input's two ends, each alpha's bias, the ReLU of
:class:`lth_sparse.nn.path.PathNetwork`) fused by the C++ kernels of
``csrc/cpu/path.cpp``; ``triton``, the kernels of
``kernels/interpolate.py`` (opt-in until verified on a GPU). The backward is
torch's on every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import choose_backend, cpp_extension, triton_kernel
from lth_sparse.ops import _autocast, _checks
from lth_sparse.ops._checks import check_conv_geometry, conv_output_size, pair_list

IMPLEMENTED = ("triton", "cpp", "torch")

# The Triton forward kernels (``kernels/interpolate.py``): the interpolated weight
# formed on load, or two products combined in the epilogue for a shared input.
# The backward is the torch one below in every case: it is made of plain products.
_TRITON_LINEAR = triton_kernel("interpolate", "interpolated_linear_forward")
_TRITON_CONV = triton_kernel("interpolate", "interpolated_conv2d_forward")

# At most this many bytes of interpolated weights exist at once (one buffer, reused by every block
# of a call: kept under glibc's 32 MB mmap threshold, a Conv-4 fc layer's 8 blocks of 67 MB had
# each come back as fresh pages), and at most _MAX_BLOCK alphas share one batched product.
_WEIGHT_BLOCK_BYTES = 16 << 20
_MAX_BLOCK = 8


def _alpha_blocks(num_alphas: int, weight: Tensor):
    per_alpha = max(1, weight.numel() * weight.element_size())
    size = max(1, min(_MAX_BLOCK, _WEIGHT_BLOCK_BYTES // per_alpha))
    for start in range(0, num_alphas, size):
        yield slice(start, min(num_alphas, start + size))


def _alpha_view(alphas: Tensor, ndim: int) -> Tensor:
    """alphas (A,) shaped to broadcast over an (A, ...) tensor of ``ndim`` dims."""
    return alphas.reshape(-1, *([1] * (ndim - 1)))


class _Linear:
    """The bias-free product of a linear layer and its two gradients."""

    @staticmethod
    def product(x, w):
        return F.linear(x, w)

    @staticmethod
    def grad_input(g, w, x_shape):
        return g.matmul(w)

    @staticmethod
    def grad_weight(x, g, w_shape):
        rows = g.shape[:-1].numel()
        return g.reshape(rows, w_shape[0]).t().matmul(x.reshape(rows, w_shape[1]))

    @staticmethod
    def grad_bias(g):
        return g.reshape(g.shape[:-1].numel(), g.shape[-1]).sum(0)

    @staticmethod
    def add_bias(y, b):
        return y + b

    channel_dim = -1  # of an output (N, ..., out)


def _channels_last(x: Tensor) -> Tensor:
    """x (N, C, H, W) in channels_last on the CPU: oneDNN's direct layout for these convs. In NCHW
    every call reorders its input and output through fresh buffers: a 64->64 3x3 conv of 32 examples
    at 32x32 took 25-35 ms and 2,000-3,000 page faults in NCHW, 18 ms and none in channels_last."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def _per_alpha_result(num_alphas: int, y: Tensor, shape=None) -> Tensor:
    """An empty (A, *shape) result like ``y`` (shape: y's by default); on the CPU each alpha's
    (N, C, H, W) slice is channels_last, so the next layer reads it without a reorder."""
    shape = tuple(y.shape if shape is None else shape)
    if y.device.type == "cpu" and len(shape) == 4:
        n, c, h, w = shape
        return y.new_empty(num_alphas, n, h, w, c).permute(0, 1, 4, 2, 3)
    return y.new_empty(num_alphas, *shape)


class _Conv:
    """The bias-free product of a conv layer and its two gradients; inputs are (N, C, H, W)."""

    def __init__(self, stride, padding, dilation, groups):
        self.args = (stride, padding, dilation, groups)

    def product(self, x, w):
        return F.conv2d(_channels_last(x), w, None, *self.args)

    def grad_input(self, g, w, x_shape):
        return torch.nn.grad.conv2d_input(x_shape, w, g, *self.args)

    def grad_weight(self, x, g, w_shape):
        return torch.nn.grad.conv2d_weight(x, w_shape, g, *self.args)

    @staticmethod
    def grad_bias(g):
        return g.sum((0, 2, 3))

    @staticmethod
    def add_bias(y, b):
        return y + b.reshape(-1, 1, 1)

    channel_dim = 1  # of an output (N, C, H, W)


def _backward(layer, grad, input, weight_a, weight_b, alphas, bias_a, bias_b, needs):
    """Gradients of the interpolated layer for (input, weight_a, weight_b, alphas, bias_a, bias_b).

    ``grad``: (A, *batch, *out); ``input``: (A or 1, *batch, *in). The inner
    ``layer`` functions take one flat batch, so the alpha dimension is folded into it.
    """
    need_input, need_wa, need_wb, need_alpha, need_ba, need_bb = needs
    num_alphas = alphas.shape[0]
    shared = input.shape[0] == 1 and num_alphas > 1
    coef_b = _alpha_view(alphas, grad.dim()).to(grad.dtype)  # as in the forward: alphas may be wider (autocast)
    coef_a = 1 - coef_b
    if shared:
        x = input[0]
        grad_a, grad_b = (coef_a * grad).sum(0), (coef_b * grad).sum(0)
    else:
        x = input.flatten(0, 1)
        grad_a, grad_b = (coef_a * grad).flatten(0, 1), (coef_b * grad).flatten(0, 1)
    out = [None] * 6
    if need_input:
        grad_input = layer.grad_input(grad_a, weight_a, x.shape) + layer.grad_input(grad_b, weight_b, x.shape)
        out[0] = grad_input.reshape(input.shape)
    if need_wa:
        out[1] = layer.grad_weight(x, grad_a, weight_a.shape)
    if need_wb:
        out[2] = layer.grad_weight(x, grad_b, weight_b.shape)
    if need_alpha:
        # d out_i / d alpha_i = x_i (W_b - W_a)^T + (b_b - b_a)
        direction = layer.product(x, weight_b - weight_a)
        direction = direction.reshape(grad.shape[1:] if shared else grad.shape)
        if bias_a is not None:
            direction = layer.add_bias(direction, bias_b - bias_a)
        out[3] = (grad * direction).reshape(num_alphas, -1).sum(1)
    if need_ba:
        out[4] = layer.grad_bias(grad_a)
    if need_bb:
        out[5] = layer.grad_bias(grad_b)
    return out


def _forward(
    layer,
    input,
    weight_a,
    weight_b,
    alphas,
    bias_a,
    bias_b,
    batched_per_alpha,
    ext,
    out=None,
    interpolated=None,
    relu=False,
):
    """The (A, ...) result, written into ``out`` when given (the result's shape and layout, from an
    earlier call: see ``cpu_forward_into``). ``ext``: the C++ extension whose kernels fuse the passes
    over the result (the ``cpp`` backend), or None for torch's ops alone (the ``torch`` backend).
    ``interpolated`` (see ``_cached_weights``): for per-alpha inputs every alpha's weight and bias
    formed already, (A, ...) and (A, out) or None; for a shared input both ends' weights stacked along
    the outputs, (2 * out, ...), and every alpha's bias, (A, out) or None. ``relu``: the result clamped
    at 0 (the ReLU after the layer, in the same pass for a shared input)."""
    num_alphas = alphas.shape[0]
    if input.shape[0] == 1:
        biases = None
        if interpolated is not None:  # both ends stacked as one layer of twice the outputs: one product
            stacked, biases = interpolated
            y = layer.product(input[0], stacked)
            size = weight_a.shape[0]
            y_a, y_b = y.narrow(layer.channel_dim, 0, size), y.narrow(layer.channel_dim, size, size)
        else:
            y_a, y_b = layer.product(input[0], weight_a), layer.product(input[0], weight_b)
            if bias_a is not None:
                y_a, y_b = layer.add_bias(y_a, bias_a), layer.add_bias(y_b, bias_b)
        return _lerp_ends(
            y_a,
            y_b,
            alphas,
            _per_alpha_result(num_alphas, y_a) if out is None else out,
            relu,
            layer.channel_dim,
            ext,
            biases,
        )
    if interpolated is not None:
        weights, biases = interpolated
        if (
            layer is _Linear
            and biases is not None
            and ext is not None
            and input.dtype in (torch.float32, torch.float64)
        ):
            # the product alone, then each alpha's bias (and the ReLU) in one pass over the result: baddbmm
            # would first copy the biases into every row of it
            out = batched_per_alpha(input, weights, None, out, slice(0, num_alphas), num_alphas)
            ext.bias_relu_(out.view(num_alphas, -1, out.shape[-1]), biases, relu)
            return out
        out = batched_per_alpha(input, weights, biases, out, slice(0, num_alphas), num_alphas)
        return out.relu_() if relu else out
    blocks = list(_alpha_blocks(num_alphas, weight_a))
    buffer = weight_a.new_empty(blocks[0].stop - blocks[0].start, *weight_a.shape)
    for block in blocks:
        coef = alphas[block].reshape(-1, *([1] * weight_a.dim())).to(weight_a.dtype)
        weights = torch.lerp(weight_a.unsqueeze(0), weight_b.unsqueeze(0), coef, out=buffer[: coef.shape[0]])
        biases = (
            None if bias_a is None else torch.lerp(bias_a.unsqueeze(0), bias_b.unsqueeze(0), coef.flatten(1)[:, :1])
        )
        out = batched_per_alpha(input[block], weights, biases, out, block, num_alphas)
    return out.relu_() if relu else out


def _rows(t: Tensor, channel_dim: int, lead: int = 0) -> Tensor | None:
    """A view (*lead dims, rows, channels) with unit channel stride of a layer's output (``lead`` leading
    dims, then (N, ..., C), or a conv's (N, C, H, W) stored channels_last), or None where its layout has
    none."""
    if channel_dim == 1 and t.dim() == lead + 4:
        t = t.permute(*range(lead + 1), lead + 2, lead + 3, lead + 1)
    if t.dim() == lead or (t.stride(-1) != 1 and t.shape[-1] > 1):
        return None
    try:
        return t.view(*t.shape[:lead], -1, t.shape[-1])
    except RuntimeError:
        return None


def _lerp_ends(
    y_a: Tensor,
    y_b: Tensor,
    alphas: Tensor,
    out: Tensor,
    relu: bool,
    channel_dim: int,
    ext,
    biases: Tensor | None = None,
) -> Tensor:
    """``out`` (A, ...) = ``torch.lerp(y_a, y_b, alphas[i])`` (+ ``biases[i]``, (A, channels)) for each alpha,
    clamped at 0 with ``relu``: in one pass of the C++ extension ``ext``'s kernel where it is given and
    the layouts allow it (without bias, to the last bit torch.lerp's values; with the ReLU,
    LeNet-300-100's first layer, 21 alphas, 254 examples: 0.38 ms against torch's lerp and relu_,
    0.64 ms), else torch.lerp, add_ and relu_."""
    if (
        ext is not None
        and y_a.device.type == "cpu"
        and y_a.dtype in (torch.float32, torch.float64)
        and y_a.dtype == y_b.dtype == out.dtype
        and y_a.shape == y_b.shape
    ):
        a_rows, b_rows, out_rows = _rows(y_a, channel_dim), _rows(y_b, channel_dim), _rows(out, channel_dim, 1)
        if a_rows is not None and b_rows is not None and out_rows is not None and a_rows.stride() == b_rows.stride():
            if out_rows.is_contiguous():
                ext.lerp_relu_(out_rows, a_rows, b_rows, alphas, biases, relu)
                return out
    coef = _alpha_view(alphas, y_a.dim() + 1).to(y_a.dtype)
    torch.lerp(y_a.unsqueeze(0), y_b.unsqueeze(0), coef, out=out)
    if biases is not None:  # (A, C) against (A, N, ..., C), or a conv's (A, N, C, H, W)
        shape = [biases.shape[0]] + [1] * (out.dim() - 1)
        shape[channel_dim + 1 if channel_dim >= 0 else out.dim() + channel_dim] = biases.shape[1]
        out.add_(biases.view(shape))
    return out.relu_() if relu else out


def _linear_per_alpha(x, weights, biases, out, block, num_alphas):
    """x: (B, *, in), weights: (B, out, in), biases: (B, out) or None; the product lands in
    ``out[block]`` of the (A, *, out) result (allocated by the first block when ``out`` is None)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    if out is None:
        out = x.new_empty(num_alphas, *x.shape[1:-1], weights.shape[1])
    target = out[block].view(x.shape[0], flat.shape[1], weights.shape[1])  # a contiguous slice: written in place
    if biases is None:
        torch.bmm(flat, weights.transpose(1, 2), out=target)
    else:
        torch.baddbmm(biases.unsqueeze(1), flat, weights.transpose(1, 2), out=target)
    return out


def _conv_per_alpha(conv_args):
    stride, padding, dilation, groups = conv_args

    def run(x, weights, biases, out, block, num_alphas):
        """x: (B, N, C, H, W), weights: (B, C_out, C/g, kH, kW) -> ``out[block]`` of the (A, N, C_out, H', W')
        result (allocated by the first block when ``out`` is None).

        On the CPU one conv per alpha: oneDNN's grouped conv of the block measured 1.0-1.35x slower
        than the same convs one by one (Conv-4 layers, 21 alphas, 100 examples); elsewhere one
        grouped conv of the block.
        """
        if x.device.type == "cpu":
            for i in range(x.shape[0]):
                y = F.conv2d(
                    _channels_last(x[i]),
                    weights[i],
                    None if biases is None else biases[i],
                    stride,
                    padding,
                    dilation,
                    groups,
                )
                if out is None:
                    out = _per_alpha_result(num_alphas, y)
                out[block.start + i] = y
            return out
        blocks, n = x.shape[:2]
        stacked = x.transpose(0, 1).reshape(n, blocks * x.shape[2], *x.shape[3:])
        y = F.conv2d(
            stacked,
            weights.flatten(0, 1),
            None if biases is None else biases.flatten(),
            stride,
            padding,
            dilation,
            groups * blocks,
        )
        y = y.reshape(n, blocks, weights.shape[1], *y.shape[2:]).transpose(0, 1)
        if out is None:
            out = y.new_empty(num_alphas, *y.shape[1:])
        out[block] = y
        return out

    return run


def _check_linear(input, weight_a, weight_b, alphas, bias_a, bias_b):
    _checks.check_interpolation_pair(weight_a, weight_b, bias_a, bias_b)
    _checks.check_input_dtype(input, weight_a)
    _checks.check_alphas(alphas, input)
    if weight_a.dim() != 2:
        raise ValueError(f"weight_a must be 2-D (out_features, in_features), got shape {tuple(weight_a.shape)}")
    if input.shape[-1] != weight_a.shape[1]:
        raise ValueError(f"input must be (A or 1, *, in_features={weight_a.shape[1]}), got {tuple(input.shape)}")
    _checks.check_same_device(
        input=input, weight_a=weight_a, weight_b=weight_b, alphas=alphas, bias_a=bias_a, bias_b=bias_b
    )


def _check_conv(input, weight_a, weight_b, alphas, bias_a, bias_b, stride, padding, dilation, groups):
    _checks.check_interpolation_pair(weight_a, weight_b, bias_a, bias_b)
    _checks.check_input_dtype(input, weight_a)
    _checks.check_alphas(alphas, input)
    if input.dim() != 5:
        raise ValueError(f"input must be (A or 1, N, C, H, W), got shape {tuple(input.shape)}")
    check_conv_geometry(input[0], weight_a, stride, padding, dilation, groups)
    _checks.check_same_device(
        input=input, weight_a=weight_a, weight_b=weight_b, alphas=alphas, bias_a=bias_a, bias_b=bias_b
    )


def _extension(backend: str):
    """The C++ extension for the ``cpp`` backend (its kernels fuse passes of the torch order), None for
    ``torch`` (torch's ops alone: the reference order)."""
    return cpp_extension() if backend == "cpp" else None


@torch.library.custom_op("lth_sparse::interpolated_linear", mutates_args=())
def interpolated_linear_op(
    input: Tensor, weight_a: Tensor, weight_b: Tensor, alphas: Tensor, bias_a: Tensor | None, bias_b: Tensor | None
) -> Tensor:
    """The custom op ``torch.ops.lth_sparse.interpolated_linear``: :func:`interpolated_linear` on an input
    (A or 1, *, in) whose first dimension says the convention, one input per alpha or one shared."""
    _check_linear(input, weight_a, weight_b, alphas, bias_a, bias_b)
    backend = choose_backend("interpolated_linear", input.device, IMPLEMENTED)
    if backend == "triton":
        return _TRITON_LINEAR(input, weight_a, weight_b, alphas, bias_a, bias_b)
    return _forward(_Linear, input, weight_a, weight_b, alphas, bias_a, bias_b, _linear_per_alpha, _extension(backend))


@interpolated_linear_op.register_fake
def _(input, weight_a, weight_b, alphas, bias_a, bias_b):
    _check_linear(input, weight_a, weight_b, alphas, bias_a, bias_b)
    return input.new_empty(alphas.shape[0], *input.shape[1:-1], weight_a.shape[0])


def _setup_linear(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_linear(ctx, grad):
    return tuple(_backward(_Linear, grad, *ctx.saved_tensors, ctx.needs_input_grad))


interpolated_linear_op.register_autograd(_backward_linear, setup_context=_setup_linear)
# under autocast: input, weights and biases in the autocast dtype, as F.linear; alphas as they are
_autocast.register(interpolated_linear_op, cast_args=(0, 1, 2, 4, 5))


@torch.library.custom_op("lth_sparse::interpolated_conv2d", mutates_args=())
def interpolated_conv2d_op(
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None,
    bias_b: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """The custom op ``torch.ops.lth_sparse.interpolated_conv2d``: :func:`interpolated_conv2d` on an input
    (A or 1, N, C, H, W) whose first dimension says the convention (see :func:`interpolated_linear_op`),
    zero padding as pairs."""
    _check_conv(input, weight_a, weight_b, alphas, bias_a, bias_b, stride, padding, dilation, groups)
    backend = choose_backend("interpolated_conv2d", input.device, IMPLEMENTED)
    if backend == "triton":
        out = _TRITON_CONV(input, weight_a, weight_b, alphas, bias_a, bias_b, stride, padding, dilation, groups)
        # the layout of the CPU result (see _per_alpha_result) whichever backend ran; a copy only under the interpreter
        return out if out.device.type != "cpu" else _per_alpha_result(out.shape[0], out, out.shape[1:]).copy_(out)
    conv_args = (stride, padding, dilation, groups)
    return _forward(
        _Conv(*conv_args),
        input,
        weight_a,
        weight_b,
        alphas,
        bias_a,
        bias_b,
        _conv_per_alpha(conv_args),
        _extension(backend),
    )


@interpolated_conv2d_op.register_fake
def _(input, weight_a, weight_b, alphas, bias_a, bias_b, stride, padding, dilation, groups):
    _check_conv(input, weight_a, weight_b, alphas, bias_a, bias_b, stride, padding, dilation, groups)
    return _per_alpha_result(
        alphas.shape[0],
        input,
        (input.shape[1], weight_a.shape[0], *conv_output_size(input, weight_a, stride, padding, dilation)),
    )


def _setup_conv(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.conv_args = tuple(inputs[6:])


def _backward_conv(ctx, grad):
    grads = _backward(_Conv(*ctx.conv_args), grad, *ctx.saved_tensors, ctx.needs_input_grad[:6])
    return (*grads, None, None, None, None)


interpolated_conv2d_op.register_autograd(_backward_conv, setup_context=_setup_conv)
_autocast.register(interpolated_conv2d_op, cast_args=(0, 1, 2, 4, 5))


def _storage_users(t: Tensor, ext) -> int:
    """How many tensors use t's storage: t itself, its views and any other, but not the base t is a
    view of; a large number when that cannot be known here (then a buffer is never reused). Counted
    by the C++ extension ``ext`` where given, else by torch."""
    if ext is not None:
        users = ext.storage_use_count(t)
    else:  # torch's private count, where this torch has it
        count = getattr(torch._C, "_storage_Use_Count", None)
        if count is None:
            return 1 << 30
        users = count(t.untyped_storage()._cdata) - 1  # minus the storage object made here
    return users - (t._base is not None)


# PathNetwork's passes meet the same alphas over and over: cpu_forward_into keeps a layer's
# interpolated weights (every alpha's, formed once) across its calls when they take at most this many
# bytes. Forming them anew for every pass had cost LeNet-300-100 (21 alphas, 10k examples, 40 passes)
# 30 of its 250 ms, as much as its first hidden layer's lerp over all the activations.
_CACHED_WEIGHT_BYTES = 64 << 20


def _cached_weights(
    cache: dict,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None,
    bias_b: Tensor | None,
    shared_input: bool,
) -> tuple[Tensor, Tensor | None] | None:
    """(weights, biases) from ``cache`` when it holds them for these alphas and these endpoint tensors
    (unchanged since), else formed and kept there; biases: every alpha's interpolated bias (A, out), or
    None. weights: for per-alpha inputs, every alpha's interpolated weight (A, ...) (None, formed per
    call instead, when they would take more than ``_CACHED_WEIGHT_BYTES``); for a shared input, both
    ends stacked along the outputs (2 * out, ...): one product of twice the outputs runs faster than
    two (LeNet-300-100's first layer on 254 examples: 91 against 86 GMAC/s), and each alpha's bias is
    added in the pass that forms its output (see ``_lerp_ends``)."""
    if not shared_input and alphas.shape[0] * weight_a.numel() * weight_a.element_size() > _CACHED_WEIGHT_BYTES:
        return None
    ends = tuple(
        (t.data_ptr(), t._version, t.dtype, t.device) if t is not None else None
        for t in (weight_a, weight_b, bias_a, bias_b)
    )
    held = cache.get(shared_input)
    if held is None or held[0] != ends or held[1].dtype != alphas.dtype or not torch.equal(held[1], alphas):
        formed = _formed_weights(weight_a, weight_b, alphas, bias_a, bias_b, shared_input)
        cache[shared_input] = held = (ends, alphas.clone(), formed)
    return held[2]


def _formed_weights(
    weight_a: Tensor, weight_b: Tensor, alphas: Tensor, bias_a: Tensor | None, bias_b: Tensor | None, shared_input: bool
) -> tuple[Tensor, Tensor | None]:
    """What ``_cached_weights`` keeps, formed now."""
    coef = alphas.reshape(-1, *([1] * weight_a.dim())).to(weight_a.dtype)
    weights = (
        torch.cat([weight_a, weight_b])
        if shared_input
        else torch.lerp(weight_a.unsqueeze(0), weight_b.unsqueeze(0), coef)
    )
    biases = None if bias_a is None else torch.lerp(bias_a.unsqueeze(0), bias_b.unsqueeze(0), coef.flatten(1)[:, :1])
    return weights, biases


def cpu_forward_into(
    previous: Tensor | None,
    kind: str,
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None,
    bias_b: Tensor | None,
    *conv_args,
    cache: dict | None = None,
    relu: bool = False,
    backend: str | None = None,
) -> Tensor:
    """``interpolated_linear`` (kind "linear") / ``interpolated_conv2d`` (kind "conv", conv_args: stride,
    padding, dilation, groups as pairs) on CPU tensors without autograd, written into ``previous``
    (an earlier result of this call) when it has the result's shape and nothing else refers to it.

    For :class:`lth_sparse.nn.path.PathNetwork`, whose passes make results of the same shapes over
    and over: a fresh result larger than glibc's mmap threshold (32 MB) comes back from the kernel as
    fresh pages, and faulting them in cost 1.5 us per 4 KB, ~70 ms per 176 MB result (Conv-4, 21
    alphas, 32 examples), as much as a quarter of the whole evaluation. Under ``torch.autocast`` it
    computes in the autocast dtype, as the op does. ``cache``: a dict the caller keeps for this
    layer, where every alpha's interpolated weights stay from one call to the next (see
    ``_cached_weights``; not under autocast, whose cast weights are new tensors at every call).
    ``relu``: the result clamped at 0, as the ReLU that follows the layer would (see ``_lerp_ends``).
    ``backend``: ``cpp`` (the C++ extension's kernels fuse passes over the result) or ``torch`` (torch's
    ops alone), as ``choose_backend`` picks it for the op; None: picked here.
    """
    if backend is None:
        backend = choose_backend(
            "interpolated_linear" if kind == "linear" else "interpolated_conv2d", input.device, IMPLEMENTED
        )
    if (autocast := _autocast.active(input)) is not None:
        result = _autocast.run_cast(
            lambda *args: cpu_forward_into(*args, backend=backend),
            autocast,
            (previous, kind, input, weight_a, weight_b, alphas, bias_a, bias_b, *conv_args),
            (2, 3, 4, 6, 7),
        )
        return result.relu_() if relu else result
    ext = _extension(backend)
    if kind == "linear":
        _check_linear(input, weight_a, weight_b, alphas, bias_a, bias_b)
        shape = (alphas.shape[0], *input.shape[1:-1], weight_a.shape[0])
        layer, per_alpha = _Linear, _linear_per_alpha
    else:
        _check_conv(input, weight_a, weight_b, alphas, bias_a, bias_b, *conv_args)
        shape = (
            alphas.shape[0],
            input.shape[1],
            weight_a.shape[0],
            *conv_output_size(input, weight_a, conv_args[0], conv_args[1], conv_args[2]),
        )
        layer, per_alpha = _Conv(*conv_args), _conv_per_alpha(conv_args)
    reuse = (
        previous is not None
        and tuple(previous.shape) == shape
        and previous.dtype == input.dtype
        and previous.device == input.device
        and _storage_users(previous, ext) == 1
    )
    interpolated = None
    shared = input.shape[0] == 1
    # (a grouped conv's two ends do not stack into one conv)
    if cache is not None and (not shared or kind == "linear" or conv_args[3] == 1):
        interpolated = _cached_weights(cache, weight_a, weight_b, alphas, bias_a, bias_b, shared)
    return _forward(
        layer,
        input,
        weight_a,
        weight_b,
        alphas,
        bias_a,
        bias_b,
        per_alpha,
        ext,
        out=previous if reuse else None,
        interpolated=interpolated,
        relu=relu,
    )


def _alpha_inputs(input: Tensor, alphas: Tensor, input_per_alpha: bool) -> Tensor:
    """The custom ops' input layout, (A or 1, ...), from the public functions' explicit convention."""
    if not isinstance(input_per_alpha, bool):
        raise TypeError(f"input_per_alpha must be True or False, got {input_per_alpha!r}")
    if not input_per_alpha:
        return input.unsqueeze(0)
    if not isinstance(alphas, Tensor) or alphas.dim() != 1 or alphas.shape[0] == 0:
        return input  # the op's own checks name what is wrong with alphas
    count = alphas.shape[0]
    if input.dim() == 0 or input.shape[0] != count:
        raise ValueError(
            f"with input_per_alpha=True the input's first dimension is the alpha's, so it must be "
            f"{count} (the number of alphas), got input of shape {tuple(input.shape)}"
        )
    return input


def interpolated_linear(
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None = None,
    bias_b: Tensor | None = None,
    *,
    input_per_alpha: bool = False,
) -> Tensor:
    """A linear layer at every point of the path from (weight_a, bias_a) to (weight_b, bias_b).

    For each of the A values ``alphas[i]``: ``F.linear(x, (1 - a) W_a + a W_b, (1 - a) b_a + a b_b)``.

    input: (*, in), one batch shared by every alpha (read once, never copied), by default; with
    ``input_per_alpha=True``, (A, *, in): ``input[i]`` goes through the layer at ``alphas[i]``
    (the layers after the first of a network on the path). The convention is a keyword, never
    guessed from the shapes: a batch whose size happens to equal A is still one shared batch.
    weight_a/weight_b: (out, in); alphas: (A,); biases: (out,) or both None.
    Returns (A, *, out). Differentiable in every tensor argument.
    """
    return interpolated_linear_op(
        _alpha_inputs(input, alphas, input_per_alpha), weight_a, weight_b, alphas, bias_a, bias_b
    )


def interpolated_conv2d(
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None = None,
    bias_b: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    input_per_alpha: bool = False,
) -> Tensor:
    """``conv2d`` at every point of the path between two weight sets.

    input: (N, C, H, W), shared by every alpha, by default; with ``input_per_alpha=True``
    (A, N, C, H, W), ``input[i]`` for ``alphas[i]`` (see :func:`interpolated_linear`).
    weight_a/weight_b: (C_out, C/groups, kH, kW); alphas: (A,).
    Returns (A, N, C_out, H_out, W_out). Zero padding given as int or pair.
    """
    if isinstance(padding, str):
        raise ValueError("padding must be an int or a pair")
    return interpolated_conv2d_op(
        _alpha_inputs(input, alphas, input_per_alpha),
        weight_a,
        weight_b,
        alphas,
        bias_a,
        bias_b,
        pair_list(stride),
        pair_list(padding),
        pair_list(dilation),
        groups,
    )
