"""Stacked training: K masked networks of one architecture trained in lockstep as one set of stacked parameters.

A small network spends most of a training step in Python, autograd and the optimizer's per-tensor work, not in
arithmetic. :func:`train_stacked` trains K such networks (the members: other seeds, masks, learning rates,
data orders) as one network whose every parameter has the members side by side, so that one step of the stack
costs about what one step of one member does while doing the work of K.

The stacked network is the members' own module tree with its layers replaced:

- every ``Linear`` (masked or not) by :class:`StackedLinear`: a ``(K, out, in)`` weight, one ``torch.baddbmm``;
- every ``Conv2d`` (masked or not) by an ``nn.Conv2d`` of ``K`` times the channels and groups: a grouped
  convolution in which group ``k`` is member ``k``'s convolution;
- every ``BatchNorm2d`` by a ``BatchNorm2d`` of ``K`` times the channels: per-channel statistics are the
  per-member statistics, running ones included.

Activations travel member-major along dimension 1, ``(B, K * C, ...)``: member ``k``'s channels (or features)
are the ``k``-th block, so that ReLU, pooling, flattening and residual additions act on each member as they
act on one network, and a model's own ``forward`` runs unchanged. A ``StackedLinear`` takes such a
``(B, K * in)`` input, or the ``(K, B, in)`` output of another ``StackedLinear``, and returns ``(K, B, out)``;
the model's output is then member ``k``'s output at ``[k]``. The contract: every ``Linear`` of a member takes
``(B, in)`` inputs, every parameter or buffer sits in a ``Linear``, ``Conv2d`` or ``BatchNorm2d``, and the
model's output is that of a ``Linear`` (so it is for every model of :mod:`lth_sparse.models`).

The masks are read once, when the stack is built. Pruned weights are set to zero then, and their gradient is
set to zero after every backward pass, so they stay exactly zero under every optimizer (the optimizers' own
updates of a zero weight with a zero gradient and zero state are zero). :class:`StackedOptimizer` computes
torch.optim's SGD, Adam and AdamW updates on the stacked tensors with each member's learning rate, momentum
and weight decay: the same floating-point operations as torch's single-tensor implementation, so a member's
update equals its own optimizer's bit for bit given the same gradient.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lth_sparse.data import Dataset, Split, batches
from lth_sparse.masks import Masks
from lth_sparse.nn import MaskedMixin
from lth_sparse.train.loop import (
    LossFn,
    TrainConfig,
    TrainResult,
    TrainStep,
    ValidationRecords,
    epoch_generators,
    evaluate,
    progress_bar,
    training_span,
)

__all__ = [
    "StackedLinear",
    "StackedNetwork",
    "StackedOptimizer",
    "available_memory",
    "check_members",
    "member_inputs",
    "recommended_stack",
    "stack_inputs",
    "stack_memory",
    "stacked_batches",
    "stacked_linear",
    "train_stacked",
]

# What members may set apart: the optimizer's per-member hyperparameters. Every other field of TrainConfig
# (epochs, batch size, optimizer kind, schedule, precision, ...) must agree.
PER_MEMBER_OPTIONS = ("lr", "momentum", "weight_decay")
# A weight with fewer kept entries than this fraction has them alone in the optimizer's vector: gathering them
# and copying them back costs less than updating the whole weight from there down (measured on the CPU: about 1
# pass over the kept entries against the optimizer's 4 to 8 over all of them).
GATHERED_BELOW = 0.5


class _StackedLinearFunction(torch.autograd.Function):
    """``baddbmm(bias, input, weight^T)`` with the backward of ``F.linear`` member by member: the weight's
    gradient as ``grad^T @ input`` (``(out, B) @ (B, in)``), the orientation torch's linear backward computes,
    so that member ``k``'s gradients are those of its own dense layer bit for bit (bmm's own backward would
    compute ``input^T @ grad`` and transpose it: another summation order)."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(input, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), input, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        input, weight = ctx.saved_tensors
        grad_input = grad.bmm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.transpose(1, 2).bmm(input) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias


class StackedLinear(nn.Module):
    """K linear layers side by side: ``out[k] = x[k] @ weight[k]^T + bias[k]``, one ``torch.baddbmm``.

    weight: ``(K, out_features, in_features)``; bias: ``(K, out_features)`` or None. The input is either
    member-major ``(B, K * in_features)`` (member ``k``'s features the ``k``-th block, as flattening a stacked
    activation gives) or ``(K, B, in_features)``; the output is ``(K, B, out_features)``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, input: Tensor) -> Tensor:
        members, _, in_features = self.weight.shape
        return stacked_linear(member_inputs(input, members, in_features), self.weight, self.bias)

    def extra_repr(self) -> str:
        members, out_features, in_features = self.weight.shape
        bias = self.bias is not None
        return f"members={members}, in_features={in_features}, out_features={out_features}, bias={bias}"


def stacked_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``out[k] = input[k] @ weight[k]^T + bias[k]``: ``input`` ``(K, B, in)``, ``weight`` ``(K, out, in)``, ``bias``
    ``(K, out)`` or None; one ``baddbmm``, with member ``k``'s gradients those of its own ``F.linear`` (the
    function of :class:`StackedLinear`)."""
    return _StackedLinearFunction.apply(input, weight, bias)


def member_inputs(input: Tensor, members: int, in_features: int) -> Tensor:
    """A stacked linear layer's input as ``(K, B, in)``: member-major ``(B, K * in)`` features (as flattening a
    stacked activation gives) viewed so, without a copy; a ``(K, B, in)`` input as it is; else a ValueError."""
    if input.dim() == 2:  # member-major features: a strided (K, B, in) view, no copy
        input = input.view(input.shape[0], members, in_features).transpose(0, 1)
    if input.dim() != 3 or input.shape[0] != members or input.shape[2] != in_features:
        raise ValueError(
            f"a stacked linear layer of {members} members and {in_features} inputs takes (B, {members} * "
            f"{in_features}) or ({members}, B, {in_features}) inputs, got {tuple(input.shape)}"
        )
    return input


def stack_inputs(inputs: Sequence[Tensor]) -> Tensor:
    """The members' input batches ``(B, C, ...)`` as one member-major batch ``(B, K * C, ...)``."""
    return torch.stack(list(inputs), dim=1).flatten(1, 2)


def _stacked_module(module: nn.Module, peers: list[nn.Module]) -> nn.Module | None:
    """The stacked replacement of ``module`` built from the members' modules ``peers`` (``module`` is the first),
    or None for a module without parameters or buffers of its own, which works on stacked activations as it
    is. Raises ValueError for a module with parameters or buffers that cannot be stacked."""
    members = len(peers)
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            weight = torch.stack([p.weight.detach() for p in peers])
            bias = torch.stack([p.bias.detach() for p in peers]) if module.bias is not None else None
            return StackedLinear(weight, bias)
        if isinstance(module, nn.Conv2d):
            stacked = nn.Conv2d(
                members * module.in_channels,
                members * module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=members * module.groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            stacked.weight.copy_(torch.cat([p.weight.detach() for p in peers]))
            if module.bias is not None:
                stacked.bias.copy_(torch.cat([p.bias.detach() for p in peers]))
            return stacked
        if type(module) is nn.BatchNorm2d:
            param = module.weight if module.affine else module.running_mean
            stacked = nn.BatchNorm2d(
                members * module.num_features,
                eps=module.eps,
                momentum=module.momentum,
                affine=module.affine,
                track_running_stats=module.track_running_stats,
                device=param.device if param is not None else None,
            )
            for name, value in stacked.named_parameters(recurse=False):
                value.copy_(torch.cat([getattr(p, name).detach() for p in peers]))
            for name, value in stacked.named_buffers(recurse=False):
                if name == "num_batches_tracked":  # the members step in lockstep: one count for all
                    value.copy_(module.num_batches_tracked)
                else:
                    value.copy_(torch.cat([getattr(p, name) for p in peers]))
            return stacked
    own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
    if own:
        raise ValueError(
            f"stacked training cannot stack a {type(module).__name__} (it holds {', '.join(own)}): it stacks "
            "Linear, Conv2d and BatchNorm2d layers and modules without parameters or buffers of their own"
        )
    return None


def _architecture(model: nn.Module) -> list[tuple]:
    """What must agree between members: every module's name and type, every tensor's name, shape and dtype."""
    modules = [("module", name, type(m).__name__) for name, m in model.named_modules()]
    tensors = [("tensor", name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()]
    return modules + tensors


def check_members(models: Sequence[nn.Module], datas: Sequence[Dataset], cfgs: Sequence[TrainConfig]) -> None:
    """ValueError naming the member and what differs when the members cannot train in one stack."""
    if not models:
        raise ValueError("stacked training needs at least one member")
    if not len(models) == len(datas) == len(cfgs):
        raise ValueError(
            f"one model, data set and config per member: got {len(models)} models, {len(datas)} data sets "
            f"and {len(cfgs)} configs"
        )
    for k, model in enumerate(models):
        for name, module in model.named_modules():
            if isinstance(module, MaskedMixin) and module.mask.shape != module.weight.shape:
                raise ValueError(
                    f"member {k}: the mask of {name or 'the model'} has shape {tuple(module.mask.shape)}, "
                    f"its weight {tuple(module.weight.shape)}"
                )
    shared = [f.name for f in fields(TrainConfig) if f.name not in PER_MEMBER_OPTIONS]
    reference = _architecture(models[0])
    for k in range(1, len(models)):
        for name in shared:
            if getattr(cfgs[k], name) != getattr(cfgs[0], name):
                raise ValueError(
                    f"member {k}'s {name}={getattr(cfgs[k], name)!r} differs from member 0's "
                    f"{getattr(cfgs[0], name)!r}: stacked members share every training option but "
                    f"{', '.join(PER_MEMBER_OPTIONS)}"
                )
        architecture = _architecture(models[k])
        if architecture != reference:
            first = next(
                (a, b) for a, b in zip(architecture + [None], reference + [None]) if a != b
            )  # the lists differ: at an entry, or in length (a None)
            raise ValueError(
                f"member {k}'s architecture differs from member 0's: it has {first[0]}, member 0 has {first[1]}"
            )
        for split in ("train", "val", "test"):
            shape, reference_shape = getattr(datas[k], split).x.shape[1:], getattr(datas[0], split).x.shape[1:]
            if shape != reference_shape:
                raise ValueError(
                    f"member {k}'s {split} inputs have shape {tuple(shape)}, member 0's {tuple(reference_shape)}: "
                    "stacked members take inputs of one shape"
                )
        if len(datas[k].train) != len(datas[0].train):
            raise ValueError(
                f"member {k} has {len(datas[k].train)} training examples, member 0 {len(datas[0].train)}: "
                "stacked members take the same number of steps per epoch"
            )
    if cfgs[0].precision != "fp32":
        raise ValueError(f"stacked training runs fp32 only, got precision {cfgs[0].precision!r}")


class StackedNetwork:
    """The members' networks as one stacked ``module`` (see the module docstring), and the way back.

    ``module``: the stacked network, on the members' device, in training mode. ``kept``: pairs
    ``(stacked weight, its boolean mask)`` of every weight some member prunes (its pruned entries zeroed).
    :meth:`write_back` copies every stacked parameter and buffer into the members' own tensors.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.members = len(models)
        self.module = copy.deepcopy(models[0])
        peers_of = [dict(model.named_modules()) for model in models]
        self._targets: list[tuple[Tensor, list[Tensor]]] = []
        self.kept: list[tuple[Tensor, Tensor]] = []
        for name in [name for name, _ in self.module.named_modules()]:
            peers = [peers[name] for peers in peers_of]
            stacked = _stacked_module(peers[0], peers)
            if stacked is None:
                continue
            self._replace(name, stacked)
            for attr, value in list(stacked.named_parameters(recurse=False)) + list(
                stacked.named_buffers(recurse=False)
            ):
                self._targets.append((value, [getattr(p, attr) for p in peers]))
            if any(isinstance(p, MaskedMixin) for p in peers):
                kept = torch.stack([p.mask for p in peers]).view_as(stacked.weight)
                if not kept.all():
                    with torch.no_grad():
                        stacked.weight.mul_(kept)
                    self.kept.append((stacked.weight, kept))
        self.module.train()

    def _replace(self, name: str, stacked: nn.Module) -> None:
        if not name:
            raise ValueError(f"stacked training needs a model with layers, got a bare {type(stacked).__name__}")
        self.module.set_submodule(name, stacked)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked state (parameters and buffers) into every member's own tensors."""
        for stacked, targets in self._targets:
            if stacked.numel() == targets[0].numel():  # one value for all members: BatchNorm's batch count
                for target in targets:
                    target.copy_(stacked.view_as(target))
                continue
            per_member = stacked.view(self.members, -1)
            for k, target in enumerate(targets):
                target.copy_(per_member[k].view_as(target))


def _add_scaled(x: Tensor, y: Tensor, factor: float | Tensor) -> Tensor:
    """``x += factor * y`` in place, ``factor`` a Python float (torch's ``add_(y, alpha=factor)``) or a tensor of
    per-entry factors (``addcmul_``, which rounds the same)."""
    return x.add_(y, alpha=factor) if isinstance(factor, float) else x.addcmul_(y, factor)


class StackedOptimizer:
    """torch.optim's SGD (momentum, Nesterov, weight decay), Adam or AdamW over stacked parameters
    (leading dimension: the K members), with each member's learning rate, momentum and weight decay.

    The update of member ``k``'s entries is the one torch's single-tensor implementation (the CPU default)
    computes for that member's own parameter, operation by operation: a per-member scalar ``alpha`` of
    ``add(x, alpha=a)`` becomes ``addcmul(x, a_k)`` with ``a_k`` a float32 entry of the member, which rounds the
    same (one fused multiply-add); ``addcdiv(x, y, value=-s)`` becomes ``addcdiv(s_k * x, y)``. ``step(lrs)``
    takes the members' current learning rates (the schedule applied).

    ``kept``: pairs ``(stacked weight, its boolean mask)`` (:attr:`StackedNetwork.kept`), whose pruned entries
    are zero. The optimizer holds the parameters in one flat vector, and so do its state and its scratch space:
    a step gathers the gradients into it, updates it with a few kernels over all parameters at once and
    allocates nothing. A parameter *is* its part of the vector (its storage is moved there), its gradient
    multiplied by its mask on the way in, so that a pruned entry, of zero gradient and zero state, stays exactly
    zero. A sparse weight (fewer than :data:`GATHERED_BELOW` of its entries kept) has its kept entries alone in
    the vector, gathered from its gradient and copied back into it after every step: its pruned entries are
    never read or written. Every parameter must have a gradient at every step (each one of a stacked network's
    layers does).
    """

    def __init__(
        self, params: Sequence[Tensor], cfgs: Sequence[TrainConfig], kept: Sequence[tuple[Tensor, Tensor]] = ()
    ) -> None:
        self.params = list(params)
        self.kind = cfgs[0].optimizer
        self.members = len(cfgs)
        self.nesterov = cfgs[0].nesterov
        self.betas = cfgs[0].betas
        self.eps = 1e-8  # torch's default, which make_optimizer keeps
        self.momentum = [c.momentum for c in cfgs]
        self.weight_decay = [c.weight_decay for c in cfgs]
        if self.kind == "sgd" and self.nesterov and any(m <= 0 for m in self.momentum):
            raise ValueError("Nesterov momentum requires a momentum > 0 in every member")
        self.steps = 0
        if not self.params:
            raise ValueError("stacked training needs a network with trainable parameters")
        like = self.params[0]
        kept_of = {id(weight): mask for weight, mask in kept}
        # (parameter, its mask as 0/1 when it stays whole, positions of its kept entries when they are gathered)
        self._segments: list[tuple[Tensor, Tensor | None, Tensor | None, int, int]] = []
        self._members: list[Tensor | None] = []
        start = 0
        for param in self.params:
            mask = kept_of.get(id(param))
            multiplier = positions = None
            if mask is not None and mask.sum().item() < GATHERED_BELOW * mask.numel():
                positions = mask.reshape(-1).nonzero().squeeze(1)
            elif mask is not None:
                multiplier = mask.reshape(-1).to(param.dtype)
            size = param.numel() if positions is None else len(positions)
            # the member of each gathered entry (a whole parameter's members are its rows)
            per_member = param.numel() // self.members
            self._members.append(None if positions is None else positions.div(per_member, rounding_mode="floor"))
            self._segments.append((param, multiplier, positions, start, start + size))
            start += size
        self.values = torch.empty(start, dtype=like.dtype, device=like.device)
        with torch.no_grad():
            for param, _, positions, lo, hi in self._segments:
                if positions is None:
                    self.values[lo:hi].copy_(param.reshape(-1))
                    param.data = self.values[lo:hi].view_as(param)
                else:
                    torch.index_select(param.reshape(-1), 0, positions, out=self.values[lo:hi])
        self.grad = torch.empty_like(self.values)
        self._scratch = torch.empty_like(self.values)
        self._scale = torch.empty_like(self.values)  # a per-member factor of this step, one entry per entry
        self._momentum = self._factor(self.momentum)
        self._weight_decay = self._factor(self.weight_decay)
        self._learning_rates: tuple[float, ...] | None = None  # the learning rates self._scale holds
        self.state: dict[str, Tensor] = {}

    def _factor(self, values: Sequence[float]) -> float | Tensor:
        """A per-member factor: the Python float that every member shares (as torch's optimizer passes it,
        reading nothing), else each member's value at its entries."""
        return float(values[0]) if len(set(values)) == 1 else self._entries(values)

    def _entries(self, values: Sequence[float], out: Tensor | None = None) -> Tensor:
        """``values`` (one per member, Python floats rounded to the parameters' dtype) at every entry of the
        flat vector: member ``k``'s value at each of member ``k``'s entries; written into ``out`` if given."""
        column = torch.tensor(values, dtype=torch.float64).to(self.values.dtype).to(self.values.device)
        if out is None:
            out = torch.empty_like(self.values)
        for (_, _, _, lo, hi), member in zip(self._segments, self._members):
            if member is None:
                out[lo:hi].view(self.members, -1).copy_(column.view(-1, 1).expand(-1, (hi - lo) // self.members))
            else:
                torch.index_select(column, 0, member, out=out[lo:hi])
        return out

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        self.steps += 1
        for param, multiplier, positions, lo, hi in self._segments:
            if param.grad is None:
                raise RuntimeError(
                    f"a stacked parameter of shape {tuple(param.shape)} has no gradient: stacked training needs "
                    "every parameter to take part in every step"
                )
            grad = param.grad.reshape(-1)
            if multiplier is not None:
                torch.mul(grad, multiplier, out=self.grad[lo:hi])
            elif positions is None:
                self.grad[lo:hi].copy_(grad)
            else:
                torch.index_select(grad, 0, positions, out=self.grad[lo:hi])
        if self.kind == "sgd":
            self._sgd(lrs)
        else:
            self._adam(lrs)
        for param, _, positions, lo, hi in self._segments:
            if positions is not None:
                param.reshape(-1).index_copy_(0, positions, self.values[lo:hi])

    def _sgd(self, lrs: Sequence[float]) -> None:
        p, grad = self.values, self.grad
        if any(self.weight_decay):
            _add_scaled(grad, p, self._weight_decay)
        if any(self.momentum):
            buf = self.state.get("momentum_buffer")
            if buf is None:
                buf = self.state["momentum_buffer"] = grad.clone()
            else:
                buf.mul_(self._momentum).add_(grad)
            if self.nesterov:
                _add_scaled(grad, buf, self._momentum)
            else:
                grad = buf
        if len(set(lrs)) == 1:  # one learning rate: torch's own update, reading no per-entry factor
            p.add_(grad, alpha=-lrs[0])
            return
        if self._learning_rates != tuple(lrs):  # a constant schedule: written once
            self._entries([-lr for lr in lrs], out=self._scale)
            self._learning_rates = tuple(lrs)
        p.addcmul_(grad, self._scale)

    def _adam(self, lrs: Sequence[float]) -> None:
        p, grad = self.values, self.grad
        beta1, beta2 = self.betas
        if not self.state:
            self.state["exp_avg"] = torch.zeros_like(p)
            self.state["exp_avg_sq"] = torch.zeros_like(p)
        if any(self.weight_decay):
            if self.kind == "adamw":
                self._learning_rates = None  # self._scale is overwritten
                p.mul_(self._entries([1 - lr * wd for lr, wd in zip(lrs, self.weight_decay)], out=self._scale))
            else:
                _add_scaled(grad, p, self._weight_decay)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.steps)  # torch keeps a float step count and reads it back as a Python float
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        bias_correction2_sqrt = bias_correction2**0.5
        denom = torch.sqrt(exp_avg_sq, out=self._scratch).div_(bias_correction2_sqrt).add_(self.eps)
        if len(set(lrs)) == 1:  # one learning rate: torch's own update, reading no per-entry factor
            p.addcdiv_(exp_avg, denom, value=-(lrs[0] / bias_correction1))
            return
        self._learning_rates = None  # self._scale is overwritten
        step_sizes = self._entries([-(lr / bias_correction1) for lr in lrs], out=self._scale)
        p.addcdiv_(step_sizes.mul_(exp_avg), denom)


def _member_losses(output: Tensor, targets: Tensor, loss_fn: LossFn | None) -> Tensor:
    """Each member's mean loss over its batch, ``(K,)``: ``output`` ``(K, B, *)``, ``targets`` ``(K, B, *)``.
    The default losses (cross-entropy for class indices, the mean squared error for floating targets) in one
    call for all members; a ``loss_fn`` of the caller's member by member."""
    members, batch = output.shape[:2]
    if loss_fn is not None:
        return torch.stack([loss_fn(output[k], targets[k]) for k in range(members)])
    if targets.is_floating_point():
        losses = F.mse_loss(output, targets.reshape(output.shape), reduction="none")
        return losses.reshape(members, -1).mean(1)
    losses = F.cross_entropy(output.reshape(members * batch, -1), targets.reshape(-1), reduction="none")
    return losses.view(members, batch).mean(1)


def stacked_batches(
    datas: Sequence[Dataset],
    batch_size: int,
    seeds: Sequence[int],
    augment_seeds: Sequence[int | None],
    epoch: int,
) -> Iterator[tuple[Tensor, Tensor, list[Tensor]]]:
    """The members' training batches of epoch ``epoch`` side by side: ``(x, y, indices)``, ``x`` the member-major
    ``(B, K * C, ...)`` inputs (:func:`stack_inputs`), ``y`` the ``(K, B, ...)`` targets, ``indices[k]`` member
    ``k``'s positions in its training split. Member ``k``'s batches are those ``train`` draws for it
    (:func:`~lth_sparse.data.batches` under :func:`~lth_sparse.train.loop.epoch_generators`: its own order, its
    own augmentation). Members of one training split without augmentation are gathered at once: their epochs'
    orders drawn first (as ``batches`` draws them), then one ``index_select`` per batch for all members."""
    members = len(datas)
    device = datas[0].device
    generators = [epoch_generators(seeds[k], augment_seeds[k], epoch, device) for k in range(members)]
    train = datas[0].train
    if all(d.train.x is train.x and d.train.y is train.y and d.augment is None for d in datas):
        n = len(train)
        positions = torch.arange(n, device=train.x.device)
        # one batch of the whole split: its index is the epoch's order, drawn as batches draws it
        orders = torch.stack(
            [
                next(batches(Split(positions, positions), n, shuffle=True, generator=order, with_index=True))[2]
                for order, _ in generators
            ]
        )
        shape = train.x.shape[1:]
        for start in range(0, n, batch_size):
            index = orders[:, start : start + batch_size]
            x = train.x.index_select(0, index.t().reshape(-1))
            yield x.view(index.shape[1], members * shape[0], *shape[1:]), train.y[index], list(index)
        return
    streams = [
        batches(
            data.train,
            batch_size,
            shuffle=True,
            generator=order,
            augment=data.augment,
            augment_generator=augment,
            with_index=True,
        )
        for data, (order, augment) in zip(datas, generators)
    ]
    for member_batches in zip(*streams):
        xs, ys, indices = zip(*member_batches)
        yield stack_inputs(xs), torch.stack(ys), list(indices)


# The measured basis of recommended_stack (bench/bench_stacked.py, docs/stacked.md; CPU, one thread): stacking
# pays where a member's step is mostly Python, autograd and optimizer overhead, not arithmetic.
MOST_MEMBERS = 16  # the stack of the lowest measured cost per member (64 costs as much or more, in 4x the memory)
OVERHEAD_BOUND_FLOPS = 20e6  # a member's training step of fewer floating-point operations than this is overhead


def stack_memory(model: nn.Module, batch_size: int, members: int) -> int:
    """An estimate, in bytes, of what ``members`` stacked trainings of ``model`` at ``batch_size`` hold at once:
    per parameter its weight, gradient, two optimizer states (Adam's; SGD's momentum takes one) and the stacked
    optimizer's three scratch vectors, and per ``Linear`` output feature three activations (output, ReLU,
    gradient) per example. Convolutional activations are not counted (:func:`recommended_stack` does not stack
    convolutional networks)."""
    parameters = sum(p.numel() for p in model.parameters())
    features = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    per_member = 4 * (7 * parameters + 3 * batch_size * features)
    return members * per_member


def recommended_stack(
    model: nn.Module, batch_size: int, device: torch.device | str, *, available_bytes: int | None = None
) -> int:
    """How many trainings of ``model`` (one member's) at ``batch_size`` to stack on ``device``: what a
    pipeline's ``--stack auto`` applies; 1 is "train them separately".

    Measured on the CPU (one thread, bench/bench_stacked.py): a network without convolutions whose training step
    takes fewer than ``OVERHEAD_BOUND_FLOPS`` (2e7) floating-point operations per member (6 x batch x the
    ``Linear`` weights: the planting benchmark's MLPs, 4e6) is overhead-bound, and stacking 16 of them trains
    about 4-5x faster than one by one (64: 3.4-4.3x, in 4x the memory); LeNet-300-100 at batch 128 (2e8) is
    compute-bound and gains about nothing; Conv-2's grouped convolutions gain 1.2x at most (0.76x at K = 64).
    So: on the CPU, ``MOST_MEMBERS`` (16) for an overhead-bound network without convolutions, else 1; on other
    devices, not
    measured yet, 1. Bounded by memory: at most as many members as :func:`stack_memory` fits in
    ``available_bytes`` (default: half the memory the system has available), at least 1.
    """
    if torch.device(device).type != "cpu":
        return 1
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return 1
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    if 6 * batch_size * weights >= OVERHEAD_BOUND_FLOPS:
        return 1
    if available_bytes is None:
        available_bytes = available_memory() // 2
    return max(1, min(MOST_MEMBERS, available_bytes // stack_memory(model, batch_size, 1)))


def available_memory() -> int:
    """The memory the system has available (``MemAvailable`` of /proc/meminfo), in bytes; where it cannot be read,
    what one stack of ``MOST_MEMBERS`` small networks needs many times over (16 GiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * 2**30


def _per_member(value, members: int, what: str) -> list:
    """``value`` (one per member, or None for none) as a list of ``members`` entries."""
    if value is None:
        return [None] * members
    value = list(value)
    if len(value) != members:
        raise ValueError(f"{what} must hold one entry per member ({members}), got {len(value)}")
    return value


def train_stacked(
    models: Sequence[nn.Module],
    datas: Sequence[Dataset],
    cfgs: Sequence[TrainConfig],
    *,
    seeds: Sequence[int],
    augment_seeds: Sequence[int | None] | None = None,
    masks: Sequence[Masks | None] | None = None,
    start_iteration: int = 0,
    end_iteration: int | None = None,
    snapshot_at: Iterable[int] = (),
    on_snapshot: Sequence[Callable[[int, dict], None] | None] | None = None,
    metrics_paths: Sequence[str | os.PathLike | None] | None = None,
    progress: bool | None = None,
    desc: str = "train stacked",
    lr_factor: Callable[[int], float] | None = None,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Sequence[Callable[[TrainStep], None]]] | None = None,
    network: StackedNetwork | None = None,
    optimizer: StackedOptimizer | None = None,
) -> list[TrainResult]:
    """Train ``models[k]`` on ``datas[k]`` with ``cfgs[k]`` and ``seeds[k]`` for every member ``k`` at once, in
    lockstep, as one stacked network; returns each member's :class:`TrainResult`.

    Member ``k`` gets what ``train(models[k], datas[k], cfgs[k], seed=seeds[k], augment_seed=augment_seeds[k],
    ...)`` gives alone: its own initial weights and masks, its own data order and augmentation, its own data set,
    the shared schedule, its own evaluation records (each on its own validation and test splits, by
    :func:`~lth_sparse.train.evaluate` on ``models[k]``), snapshots and metrics file; at the end its trained
    weights (and BatchNorm statistics) are in ``models[k]``. Equal to ``train`` up to float rounding: bit for
    bit where the stacked kernels sum in the same order as the single ones (see docs/stacked.md).

    Members may differ in ``lr``, ``momentum`` and ``weight_decay``; every other option of their configs
    must agree, and so must their architectures (module types, tensor shapes), input shapes and numbers of
    training examples: else a ValueError naming the member and what differs. ``masks[k]``: written into
    ``models[k]`` first (``Masks.apply_to``: a mask of the wrong shape is a ValueError naming the member);
    the masks are then fixed for the whole call. It trains in fp32 only (bf16 and fp16 are a ValueError).

    ``snapshot_at``: the iterations at which ``on_snapshot[k](iteration, state_dict copy)`` is called for
    each member that has one. ``metrics_paths[k]``: member ``k``'s JSONL records. ``callbacks[k]``: called
    with member ``k``'s :class:`TrainStep` after every step. ``lr_factor``, ``loss_fn`` (applied to each
    member's output and targets), ``start_iteration``, ``end_iteration``, ``progress``: as for ``train``.

    ``network``: the stack to train, built from ``models`` by the caller (default: ``StackedNetwork(models)``):
    any object with a :class:`StackedNetwork`'s ``module``, ``kept``, ``parameters()`` and ``write_back()``, e.g.
    one whose trainable parameters are not the members' weights (edge-popup's scores:
    :func:`lth_sparse.prune.edge_popup.edge_popup_together`); ``write_back`` must bring the members' own modules
    up to date, as they are evaluated. ``optimizer``: a :class:`StackedOptimizer` over ``network.parameters()``
    whose state carries on (one training split into several calls, as ``train``'s ``optimizer``); default a
    fresh one. Not here (yet): checkpoints and resuming, DDP.
    """
    members = len(models)
    check_members(models, datas, cfgs)
    seeds = _per_member(seeds, members, "seeds")
    augment_seeds = _per_member(augment_seeds, members, "augment_seeds")
    on_snapshot = _per_member(on_snapshot, members, "on_snapshot")
    metrics_paths = _per_member(metrics_paths, members, "metrics_paths")
    callbacks = [tuple(c or ()) for c in _per_member(callbacks, members, "callbacks")]
    for k, member_masks in enumerate(_per_member(masks, members, "masks")):
        if member_masks is not None:
            try:
                member_masks.apply_to(models[k])
            except (KeyError, ValueError) as exc:
                raise type(exc)(f"member {k}: {exc.args[0] if exc.args else exc}") from exc
    cfg = cfgs[0]
    n_train = len(datas[0].train)
    if n_train == 0:
        raise ValueError("the training split is empty")
    per_epoch, _, end, schedule = training_span(cfg, n_train, start_iteration, end_iteration, lr_factor)
    device = datas[0].device
    for model in models:
        model.train()

    snapshots = set(snapshot_at)
    if start_iteration in snapshots:  # the members' state before any step: their own, as train() copies it
        for k, model in enumerate(models):
            if on_snapshot[k] is not None:
                on_snapshot[k](start_iteration, copy.deepcopy(model.state_dict()))
    if network is None:
        network = StackedNetwork(models)
    elif network.members != members:
        raise ValueError(f"the stacked network holds {network.members} members, the call {members}")
    if optimizer is None:
        optimizer = StackedOptimizer(network.parameters(), cfgs, network.kept)
    base_lrs = [c.lr for c in cfgs]
    lrs = list(base_lrs)
    eval_every = cfg.eval_every or per_epoch
    # float64 sums of the float32 step losses, as train() keeps them
    running = torch.zeros(members, dtype=torch.float64, device=device)
    running_n = 0
    files = [open(path, "a") if path is not None else None for path in metrics_paths]
    records = [ValidationRecords(start_iteration, file) for file in files]

    def evaluation(split: str) -> list[tuple[float, float | None]]:
        # each member by evaluate() on its own model: on the CPU faster than the stack's dense forward pass, for
        # the masked layers' kernels skip the pruned weights (docs/stacked.md)
        network.write_back()
        return [evaluate(m, getattr(d, split), precision=cfg.precision, loss_fn=loss_fn) for m, d in zip(models, datas)]

    def record(it: int) -> None:
        nonlocal running_n
        train_losses = (running / max(1, running_n)).tolist()
        running.zero_()
        running_n = 0
        for k, (val_loss, val_acc) in enumerate(evaluation("val")):
            records[k].add(it, per_epoch, train_losses[k], val_loss, val_acc, lrs[k])

    def snapshot(it: int) -> None:
        if it in snapshots and any(f is not None for f in on_snapshot):
            network.write_back()
            for k, model in enumerate(models):
                if on_snapshot[k] is not None:
                    on_snapshot[k](it, copy.deepcopy(model.state_dict()))

    it = start_iteration
    stacked = network.module
    try:
        with progress_bar(end - it, desc, progress) as bar:
            epoch = it // per_epoch
            while it < end:
                skip = it - epoch * per_epoch  # starting mid-epoch: skip the batches already seen
                for b, (x, targets, indices) in enumerate(
                    stacked_batches(datas, cfg.batch_size, seeds, augment_seeds, epoch)
                ):
                    if b < skip:
                        continue
                    factor = schedule(it)
                    lrs = [lr * factor for lr in base_lrs]
                    for param in optimizer.params:
                        param.grad = None
                    out = stacked(x)
                    if out.dim() < 2 or out.shape[:2] != targets.shape[:2]:
                        raise RuntimeError(
                            f"the stacked network's output has shape {tuple(out.shape)}, not ({members}, "
                            f"{targets.shape[1]}, ...): stacked training needs a model whose output is a Linear "
                            "layer's"
                        )
                    losses = _member_losses(out, targets, loss_fn)
                    losses.sum().backward()
                    optimizer.step(lrs)
                    it += 1
                    running += losses.detach()
                    running_n += 1
                    bar.update(1)
                    if any(callbacks):
                        detached = out.detach()
                        for k in range(members):
                            step = TrainStep(
                                iteration=it,
                                epoch=epoch,
                                index=indices[k],
                                output=detached[k],
                                target=targets[k],
                                loss=losses[k].detach(),
                            )
                            for callback in callbacks[k]:
                                callback(step)
                    if it % eval_every == 0 or it == end:
                        record(it)
                    snapshot(it)
                    if it >= end:
                        break
                epoch += 1
        if not records[0].history or records[0].history[-1]["iteration"] != it:
            record(it)
    finally:
        for file in files:
            if file is not None:
                file.close()
    tests = evaluation("test")
    network.write_back()
    return [records[k].result(it, test_loss, test_acc) for k, (test_loss, test_acc) in enumerate(tests)]
