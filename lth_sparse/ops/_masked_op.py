"""What ``masked_linear`` and ``masked_conv2d`` share: their custom ops, autograd, autocast and eager Function.

Both ops compute ``layer(input, W * M, bias, *geometry)`` with the weight gradient masked, and differ
only in their formulas, which each op's module keeps and hands to :func:`define`: the argument checks,
each backend's forward and backward kernels, the output's shape and how a bias broadcasts over the
output. ``geometry`` is what follows ``bias`` in the op's arguments (nothing for the linear layer;
stride, padding, dilation, groups for the conv), passed through to the op's own functions as it is.

From them :func:`define` makes, the same way for both ops:

- the custom op ``lth_sparse::<name>``: checks, then the forward kernel of the backend
  ``choose_backend`` picks; its fake kernel; its autograd formula, which saves input, weight and
  mask; its autocast kernel (input, weight and bias cast: ``CAST_ARGS``, see ``ops/_autocast.py``);
- its backward as a custom op of its own, ``lth_sparse::<name>_backward``, so that faster backends
  replace the backward too, with its fake kernel;
- ``_Eager<Name>``, the plain autograd Function that runs the same kernels and checks without the
  custom-op machinery, for plain eager mode (see ``_dispatch.plain_eager``), with forward-mode AD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from lth_sparse._dispatch import choose_backend
from lth_sparse.ops import _autocast

# The arguments cast under autocast, as F.linear / F.conv2d cast theirs: input, weight and bias (the mask stays bool).
CAST_ARGS = (0, 1, 3)


def define(
    name: str,
    *,
    implemented: tuple[str, ...],
    geometry_schema: Sequence[str],
    check: Callable,
    forward: Mapping[str, Callable],
    backward: Mapping[str, Callable],
    output_shape: Callable,
    bias_view: Callable[[Tensor], Tensor],
) -> tuple[torch.library.CustomOpDef, type[torch.autograd.Function]]:
    """The custom op ``lth_sparse::<name>`` (with its backward op) and the eager Function of a masked op.

    implemented: the backends with kernels for the op (``choose_backend``'s ``implemented``).
    geometry_schema: the schema of each geometry argument, e.g. ``"SymInt[] stride"``.
    check(input, weight, mask, bias, *geometry): raises on arguments the op refuses.
    forward[backend](input, weight, mask, bias, *geometry) -> output.
    backward[backend](grad, input, weight, mask, *geometry, need_input, need_weight, need_bias) ->
    (grad_input, grad_weight, grad_bias), each an empty tensor where not needed.
    output_shape(input, weight, *geometry) -> the output's shape.
    bias_view(bias) -> the bias shaped to broadcast over the output.
    Returns (custom op, eager Function).
    """
    geometry_args = "".join(f", {arg}" for arg in geometry_schema)
    no_geometry_grads = (None,) * len(geometry_schema)

    def run_forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, *geometry) -> Tensor:
        check(input, weight, mask, bias, *geometry)
        return forward[choose_backend(name, input.device, implemented)](input, weight, mask, bias, *geometry)

    def run_backward(grad: Tensor, input: Tensor, weight: Tensor, mask: Tensor, *geometry_and_needs):
        return backward[choose_backend(name, grad.device, implemented)](grad, input, weight, mask, *geometry_and_needs)

    def fake_forward(input, weight, mask, bias, *geometry):
        check(input, weight, mask, bias, *geometry)
        return input.new_empty(output_shape(input, weight, *geometry))

    def fake_backward(grad, input, weight, mask, *geometry_and_needs):
        need_input, need_weight, need_bias = geometry_and_needs[-3:]
        return (
            input.new_empty(input.shape) if need_input else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_weight else grad.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_bias else grad.new_empty(0),
        )

    def save(ctx, input, weight, mask, bias, *geometry):
        ctx.save_for_backward(input, weight, mask)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None

    def setup_context(ctx, inputs, output):
        save(ctx, *inputs)

    def backward_with(backward_op):
        def backward(ctx, grad):
            if _autocast.active(grad) is not None:
                # a backward run inside the autocast region: the forward ran with autocast off, so does this
                with torch.autocast(grad.device.type, enabled=False):
                    return backward(ctx, grad)
            input, weight, mask = ctx.saved_tensors
            need_input, need_weight, _, need_bias = ctx.needs_input_grad[:4]
            need_bias = bool(need_bias and ctx.has_bias)
            grad_input, grad_weight, grad_bias = backward_op(
                grad, input, weight, mask, *ctx.geometry, need_input, need_weight, need_bias
            )
            return (
                grad_input if need_input else None,
                grad_weight if need_weight else None,
                None,
                grad_bias if need_bias else None,
                *no_geometry_grads,
            )

        return backward

    op = torch.library.custom_op(
        f"lth_sparse::{name}",
        run_forward,
        mutates_args=(),
        schema=f"(Tensor input, Tensor weight, Tensor mask, Tensor? bias{geometry_args}) -> Tensor",
    )
    op.register_fake(fake_forward)
    backward_op = torch.library.custom_op(
        f"lth_sparse::{name}_backward",
        run_backward,
        mutates_args=(),
        schema=f"(Tensor grad, Tensor input, Tensor weight, Tensor mask{geometry_args}, bool need_input, "
        "bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)",
    )
    backward_op.register_fake(fake_backward)
    op.register_autograd(backward_with(backward_op), setup_context=setup_context)
    _autocast.register(op, cast_args=CAST_ARGS)

    # forward(ctx, ...), not setup_context: with setup_context, apply() binds the arguments through
    # inspect.signature on every call (~50 us).
    def eager_forward(ctx, input, weight, mask, bias, *geometry):
        save(ctx, input, weight, mask, bias, *geometry)
        ctx.save_for_forward(input, weight, mask)  # for jvp (forward gets the primals: dual-ness is not seen here)
        return run_forward(input, weight, mask, bias, *geometry)

    def jvp(ctx, d_input, d_weight, d_mask, d_bias, *_):
        """Forward-mode AD, by linearity: d layer(x, W*M) + b = layer(dx, W*M) + layer(x, dW*M) + db."""
        input, weight, mask = ctx.saved_tensors
        geometry = ctx.geometry
        out = None
        if d_input is not None:
            out = run_forward(d_input, weight, mask, None, *geometry)
        if d_weight is not None:
            term = run_forward(input, d_weight, mask, None, *geometry)
            out = term if out is None else out + term
        shape = output_shape(input, weight, *geometry)
        if d_bias is not None:
            out = bias_view(d_bias).expand(shape) if out is None else out + bias_view(d_bias)
        return out if out is not None else input.new_zeros(shape)

    eager_name = "_Eager" + "".join(part.capitalize() for part in name.split("_"))
    eager = type(torch.autograd.Function)(
        eager_name,
        (torch.autograd.Function,),
        {
            "__doc__": f"``{name}`` without the custom-op machinery, for plain eager mode "
            "(see ``_dispatch.plain_eager``).",
            "__module__": __name__,
            "forward": staticmethod(eager_forward),
            "backward": staticmethod(backward_with(run_backward)),
            "jvp": staticmethod(jvp),
        },
    )
    return op, eager
