"""A network evaluated at many points of the linear path between two weight sets, in one batched pass.

``W(alpha) = (1 - alpha) W_a + alpha W_b`` for every parameter and buffer (batch-norm
statistics too), as in the instability analysis of Frankle et al. (2020), "Linear
Mode Connectivity and the Lottery Ticket Hypothesis". Instead of loading a state
dict per alpha, :class:`PathNetwork` runs the model once per batch with the A
alphas folded into the batch dimension: every tensor between layers is
``(A * N, ...)``, so any forward code (residual additions, ``torch.flatten(x, 1)``,
pooling, activations) works unchanged, and only the layers with parameters
unfold it to ``(A, N, ...)``:

- Linear / Conv2d (masked or not) call :func:`lth_sparse.ops.interpolated_linear`
  / :func:`~lth_sparse.ops.interpolated_conv2d`; the first such layer sees the
  shared input ``(N, ...)`` and costs two products instead of A;
- BatchNorm (eval mode) applies the per-alpha affine map of its interpolated
  statistics and parameters.

Masked layers use each endpoint's masked weight (``W_a * M_a``, ``W_b * M_b``).

On the CPU (the ``cpp`` and ``torch`` backends of those ops) a pass also:

- keeps every alpha's interpolated weights from one pass to the next (up to 64 MB a layer), and a
  shared-input layer's two ends stacked as one weight of twice the outputs (one product);
- lets a Linear/Conv2d apply the ReLU that follows it in an ``nn.Sequential`` (the ReLU becomes an
  identity): for a shared input on the ``cpp`` backend, each alpha's lerp of the two ends, its bias
  and the ReLU are one pass of the C++ kernel ``lerp_relu_`` (LeNet-300-100, 21 alphas on 10,000
  examples, 1 thread: 1.26-1.41x faster than applying the ReLU apart).

Each is equal, to float rounding, to the plain-torch order it replaces (tested against it and
against the loop over state dicts).

``forward(x, alphas, one_alpha_at_a_time=True)`` runs the network once per alpha on ``(N, ...)``
tensors instead, each layer at its interpolated weight, except that a layer whose input is ``x``
itself still computes both ends' outputs once per pass and each alpha's as their lerp. On the CPU
that order is the faster one for conv nets (:func:`evaluate_path` picks it): after the first layer
every conv is one conv per alpha in either order, the same multiply-adds as a loop over alphas, and
one alpha's activations of a pass stay in the caches where all alphas' (176 MB for Conv-4 on 32
examples) do not.

Batch norm has three modes (``PathNetwork(..., bn=...)``), each equal to a loop over the
interpolated state dicts:

- ``interpolate``: the running statistics interpolated like every other tensor (loading each
  interpolated state dict and evaluating in eval mode);
- ``recompute``: statistics re-estimated for every alpha by
  :meth:`PathNetwork.recompute_bn_statistics` over training batches, all alphas in the same passes:
  each batch-norm layer normalises each alpha's activations by their own batch statistics and
  averages, per alpha, the batch means and unbiased batch variances over the batches (over its
  calls, for a module a forward calls twice: what ``reset_running_stats()``, ``momentum=None`` and
  train-mode forwards over the same batches leave in the running statistics); the forwards that
  estimate them stop after the last batch norm;
- ``train-mode``: every pass normalised by its own batch statistics, per alpha (batch norm in
  training mode; each batch of the caller is one pass, never cut).

Any other layer with parameters (or floating buffers) of its own and none in its sub-modules
(``LayerNorm``, ``PReLU``, a custom scale) runs through :func:`torch.func.functional_call` over its
tensors interpolated per alpha, vmapped over the alphas.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import choose_backend
from lth_sparse.nn.modules import MaskedMixin, resolve_conv_padding
from lth_sparse.ops import interpolate
from lth_sparse.ops._checks import pair_list
from lth_sparse.ops.interpolate import interpolated_conv2d_op, interpolated_linear_op

# The op of each kind of path layer. The layers call the custom ops themselves: their inputs are (A or 1, ...),
# one per alpha or one shared, as this module passes them (the public functions ask for the convention by keyword).
_OP_NAMES = {"linear": "interpolated_linear", "conv": "interpolated_conv2d"}


class _PathState:
    """What every interpolating layer of one PathNetwork shares: the alphas of the running forward and the
    batch size; one alpha at a time, also the network's input and a count of the passes."""

    def __init__(self, bn: str = "interpolate") -> None:
        self.alphas: Tensor | None = None
        self.batch: int = 0
        self.source: Tensor | None = None  # one alpha at a time: the input all alphas share
        self.passes: int = 0  # one alpha at a time: which pass a layer's kept endpoint outputs are from
        self.bn = bn  # the batch-norm mode (see BN_MODES)
        self.estimating = False  # recompute_bn_statistics at work: batch statistics, accumulated per alpha
        # which of the alphas of the recomputed statistics the running forward evaluates (one alpha at a time:
        # one of them)
        self.alpha_index = slice(None)
        # while estimating: the batch-norm calls of the running forward, and after how many of them the
        # estimating forwards stop (what comes after the last batch norm does not change any statistics)
        self.bn_calls = 0
        self.stop_after: int | None = None

    def is_source(self, x: Tensor) -> bool:
        """Whether ``x`` is the pass's input or a view of it (one alpha at a time). Anything else
        counts as per-alpha: right either way, only slower for a shared input made anew."""
        source = self.source
        return source is not None and x.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()

    def unfold(self, x: Tensor) -> Tensor:
        """(A*N, ...) -> (A, N, ...); the shared input (N, ...) -> (1, N, ...)."""
        num_alphas = self.alphas.shape[0]
        if x.shape[0] == self.batch and num_alphas > 1:
            return x.unsqueeze(0)
        if x.shape[0] != num_alphas * self.batch:
            raise RuntimeError(
                f"PathNetwork: a layer got a batch of {x.shape[0]}, expected {self.batch} (the input) "
                f"or {num_alphas * self.batch} (alphas x batch)"
            )
        return x.reshape(num_alphas, self.batch, *x.shape[1:])


def _endpoint(state: Mapping[str, Tensor], prefix: str, name: str) -> Tensor | None:
    return state.get(f"{prefix}{name}")


def _masked_weight(state, prefix, module) -> Tensor:
    weight = state[f"{prefix}weight"]
    mask = state.get(f"{prefix}mask")
    if mask is None and isinstance(module, MaskedMixin):
        mask = module.mask
    return weight if mask is None else torch.where(mask.to(weight.device), weight, 0)


class _PathLayer(nn.Module):
    """A weight layer's two endpoints (masked weight and bias of each)."""

    def __init__(self, shared: _PathState, a: dict, b: dict) -> None:
        super().__init__()
        self.shared = shared
        self.register_buffer("weight_a", a["weight"])
        self.register_buffer("weight_b", b["weight"])
        self.register_buffer("bias_a", a.get("bias"))
        self.register_buffer("bias_b", b.get("bias"))
        self._result: Tensor | None = None  # the last result on the CPU, reused by the next pass
        self._weights: dict = {}  # on the CPU, every alpha's interpolated weights, kept across passes
        self._ends_pass = -1  # one alpha at a time: the pass whose both ends' outputs _result holds
        # the ReLU that follows the layer, applied by it (see _fuse_relus): for a shared input, in the
        # pass that forms each alpha's output from the two ends'
        self.relu = False

    def _interpolated(self, op, kind: str, x: Tensor, alphas: Tensor, *conv_args, relu: bool = False) -> Tensor:
        """(A, N, ...): the op on x (1 or A, N, ...), clamped at 0 with ``relu``; on the CPU into the last
        result when it can."""
        args = (x, self.weight_a, self.weight_b, alphas, self.bias_a, self.bias_b)
        if x.device.type == "cpu" and (
            (backend := choose_backend(_OP_NAMES[kind], x.device, interpolate.IMPLEMENTED)) in ("cpp", "torch")
        ):
            self._result = interpolate.cpu_forward_into(
                self._result, kind, *args, *conv_args, cache=self._weights, relu=relu, backend=backend
            )
            return self._result
        out = op(*args, *conv_args)
        return out.relu_() if relu else out

    def _run(self, op, kind: str, x: Tensor, *conv_args) -> Tensor:
        if self.shared.source is None:
            return self._interpolated(
                op, kind, self.shared.unfold(x), self.shared.alphas, *conv_args, relu=self.relu
            ).flatten(0, 1)
        alpha = self.shared.alphas[0]
        if self.shared.is_source(x):
            # both ends' outputs once per pass (two products), each alpha's a lerp of them
            if self._ends_pass != self.shared.passes:
                ends = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
                self._interpolated(op, kind, x.unsqueeze(0), ends, *conv_args)
                self._ends_pass = self.shared.passes
            out = torch.lerp(self._result[0], self._result[1], alpha)
        else:
            weight = torch.lerp(self.weight_a, self.weight_b, alpha)
            bias = None if self.bias_a is None else torch.lerp(self.bias_a, self.bias_b, alpha)
            out = self._layer_at(x, weight, bias, *conv_args)
        return out.relu_() if self.relu else out


class _PathLinear(_PathLayer):
    def forward(self, x: Tensor) -> Tensor:
        return self._run(interpolated_linear_op, "linear", x)

    @staticmethod
    def _layer_at(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


class _PathConv2d(_PathLayer):
    def __init__(self, shared: _PathState, a: dict, b: dict, conv: nn.Conv2d) -> None:
        super().__init__(shared, a, b)
        self.conv = conv  # geometry and padding mode

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        x, padding = resolve_conv_padding(conv, x)
        return self._run(
            interpolated_conv2d_op,
            "conv",
            x,
            pair_list(conv.stride),
            pair_list(padding),
            pair_list(conv.dilation),
            conv.groups,
        )

    @staticmethod
    def _layer_at(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups) -> Tensor:
        if x.device.type == "cpu":  # oneDNN's direct layout, as the batched op uses (see its _channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class _FusedReLU(nn.Identity):
    """Where a ReLU stood that the interpolating layer before it applies (see ``_fuse_relus``)."""


class _StatisticsDone(Exception):
    """Raised by the last batch norm of an estimating forward: nothing after it changes a statistic."""


class _PathBatchNorm(nn.Module):
    """Batch norm on the path: the per-alpha affine map of interpolated (``bn="interpolate"``), recomputed
    (``"recompute"``) or batch (``"train-mode"``, and while statistics are recomputed) statistics, with the
    interpolated weight and bias."""

    def __init__(self, shared: _PathState, a: dict, b: dict, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.shared = shared
        self.eps = bn.eps
        for side, state in (("a", a), ("b", b)):
            self.register_buffer(f"mean_{side}", state["running_mean"])
            self.register_buffer(f"var_{side}", state["running_var"])
            self.register_buffer(f"weight_{side}", state.get("weight", torch.ones_like(state["running_mean"])))
            self.register_buffer(f"bias_{side}", state.get("bias", torch.zeros_like(state["running_mean"])))
        # bn="recompute": (A, C) statistics per alpha, and while they are estimated the float64 sums of the
        # batches' means and unbiased variances
        self.register_buffer("recomputed_mean", None)
        self.register_buffer("recomputed_var", None)
        self._sum_mean: Tensor | None = None
        self._sum_var: Tensor | None = None
        self._calls: Tensor | None = None  # per alpha, how many calls the sums hold

    def start_estimate(self, num_alphas: int) -> None:
        self._sum_mean = self.mean_a.new_zeros(num_alphas, self.mean_a.shape[0], dtype=torch.float64)
        self._sum_var = torch.zeros_like(self._sum_mean)
        self._calls = self.mean_a.new_zeros(num_alphas, 1, dtype=torch.float64)

    def finish_estimate(self) -> None:
        """The statistics: per alpha, the mean over this layer's calls (a batch each, or more for a module a
        forward calls more than once) of their means and unbiased variances, as torch's cumulative average
        (``momentum=None``) over the same calls."""
        calls = self._calls.clamp_min(1)
        self.recomputed_mean = (self._sum_mean / calls).to(self.mean_a.dtype)
        self.recomputed_var = (self._sum_var / calls).to(self.var_a.dtype)
        self._sum_mean = self._sum_var = self._calls = None

    def _accumulate(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """While estimating: add a call's (A, C) mean and unbiased variance to this pass's alphas' sums."""
        index = self.shared.alpha_index
        self._sum_mean[index] += mean.double()
        self._sum_var[index] += unbiased_var.double()
        self._calls[index] += 1

    def _batch_statistics(self, unfolded: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and biased variance per alpha and channel of (A or 1, N, C, *) activations, (A or 1, C); while
        estimating, the batch's mean and unbiased variance are added to this alpha's sums."""
        dims = (1, *range(3, unfolded.dim()))
        count = unfolded.numel() // (unfolded.shape[0] * unfolded.shape[2])
        if count < 2:
            raise ValueError(
                f"batch norm on batch statistics needs more than 1 value per channel, got input of "
                f"shape {tuple(unfolded.shape[1:])}"
            )
        var, mean = torch.var_mean(unfolded, dim=dims, correction=0)
        if self.shared.estimating:
            self._accumulate(mean, var * (count / (count - 1)))
        return mean, var

    def _one_alpha(self, x: Tensor, batch_statistics: bool) -> Tensor:
        """One alpha's pass (x: (N, C, *)) through torch's own batch norm, the kernel a loaded model runs
        (and fast on channels_last activations, where a broadcast affine map on the CPU is not)."""
        shared = self.shared
        alpha = shared.alphas.to(self.weight_a.dtype)
        weight, bias = torch.lerp(self.weight_a, self.weight_b, alpha), torch.lerp(self.bias_a, self.bias_b, alpha)
        if batch_statistics:
            if x.numel() // x.shape[1] < 2:
                raise ValueError(
                    f"batch norm on batch statistics needs more than 1 value per channel, got input "
                    f"of shape {tuple(x.shape)}"
                )
            if not shared.estimating:
                return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
            # momentum 1: the running statistics become the batch's mean and unbiased variance, as torch
            # computes them for a model in training mode
            mean, var = torch.zeros_like(self.mean_a), torch.ones_like(self.var_a)
            out = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.eps)
            self._accumulate(mean.unsqueeze(0), var.unsqueeze(0))
            return out
        if shared.bn == "recompute":
            mean, var = self.recomputed_mean[shared.alpha_index][0], self.recomputed_var[shared.alpha_index][0]
        else:
            mean, var = torch.lerp(self.mean_a, self.mean_b, alpha), torch.lerp(self.var_a, self.var_b, alpha)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        out = self._forward(x)
        shared = self.shared
        if shared.estimating:
            shared.bn_calls += 1
            if shared.stop_after is not None and shared.bn_calls >= shared.stop_after:
                raise _StatisticsDone
        return out

    def _forward(self, x: Tensor) -> Tensor:
        shared = self.shared
        batch_statistics = shared.estimating or shared.bn == "train-mode"
        if shared.bn == "recompute" and not batch_statistics and self.recomputed_mean is None:
            raise RuntimeError(
                "bn='recompute': call PathNetwork.recompute_bn_statistics(batches, alphas) before evaluating"
            )
        if shared.alphas.shape[0] == 1:
            return self._one_alpha(x, batch_statistics)
        alphas = shared.alphas.reshape(-1, 1)
        lerp = lambda a, b: torch.lerp(a.unsqueeze(0), b.unsqueeze(0), alphas.to(a.dtype))  # noqa: E731
        unfolded = shared.unfold(x)
        if batch_statistics:
            mean, var = self._batch_statistics(unfolded)
        elif shared.bn == "recompute":
            mean = self.recomputed_mean[shared.alpha_index]
            var = self.recomputed_var[shared.alpha_index]
        else:
            mean, var = lerp(self.mean_a, self.mean_b), lerp(self.var_a, self.var_b)
        scale = lerp(self.weight_a, self.weight_b) / torch.sqrt(var + self.eps)
        shift = lerp(self.bias_a, self.bias_b) - mean * scale
        if unfolded.shape[0] == 1:
            unfolded = unfolded.expand(alphas.shape[0], *unfolded.shape[1:])
        view = (alphas.shape[0], 1, -1) + (1,) * (unfolded.dim() - 3)
        # one kernel for the affine map (a broadcast multiply, then add, is 3-4x slower on the CPU)
        return torch.addcmul(shift.reshape(view), unfolded, scale.reshape(view)).flatten(0, 1)


class _PathFunctional(nn.Module):
    """Any other layer with tensors of its own to interpolate (parameters, floating buffers) and none in
    its sub-modules: ``torch.func.functional_call`` of the layer with its tensors at each alpha, vmapped
    over the alphas (non-floating buffers: state_a's, as loading each interpolated state dict leaves them).
    Tensor arguments are the folded (A*N, ...) or shared (N, ...) batch; other arguments pass as they are."""

    def __init__(self, shared: _PathState, module: nn.Module, a: dict, b: dict) -> None:
        super().__init__()
        self.shared = shared
        self.module = module
        self.names = [k for k in a if a[k].is_floating_point()]
        self.fixed = {k: a[k] for k in a if not a[k].is_floating_point()}
        for i, k in enumerate(self.names):
            self.register_buffer(f"end_a_{i}", a[k])
            self.register_buffer(f"end_b_{i}", b[k])

    def forward(self, *args, **kwargs):
        shared = self.shared
        alphas = shared.alphas
        tensors = {}
        for i, name in enumerate(self.names):
            end_a, end_b = getattr(self, f"end_a_{i}"), getattr(self, f"end_b_{i}")
            coef = alphas.to(end_a.dtype).reshape(-1, *([1] * end_a.dim()))
            tensors[name] = torch.lerp(end_a.unsqueeze(0), end_b.unsqueeze(0), coef)
        fixed = {k: v.to(alphas.device) for k, v in self.fixed.items()}
        positions = [i for i, arg in enumerate(args) if isinstance(arg, Tensor)]
        inputs = [shared.unfold(args[i]) for i in positions]
        dims = [0 if x.shape[0] == alphas.shape[0] else None for x in inputs]
        inputs = [x if d == 0 else x[0] for x, d in zip(inputs, dims)]

        def call(per_alpha: dict, *xs):
            call_args = list(args)
            for i, x in zip(positions, xs):
                call_args[i] = x
            return torch.func.functional_call(self.module, {**per_alpha, **fixed}, tuple(call_args), kwargs)

        out = torch.func.vmap(call, in_dims=(0, *dims))(tensors, *inputs)
        return torch.utils._pytree.tree_map(lambda t: t.flatten(0, 1) if isinstance(t, Tensor) else t, out)


def _runs_in_order(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Sequential`` whose forward is Sequential's own (each child fed the one
    before it), not a subclass's that could feed them otherwise."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _fuse_relus(net: nn.Module) -> None:
    """A ReLU right after an interpolating layer in an ``nn.Sequential`` sees only that layer's fresh
    output: a Linear/Conv2d applies it itself (``_PathLayer.relu``; the ReLU becomes an Identity), for
    a shared input in the same pass that forms each alpha's output, and after a BatchNorm it works in
    place. Saves a pass over a pass's largest activation (and its allocation: fresh pages for 16 MB
    of activations cost as much as computing them)."""
    for seq in net.modules():
        if not _runs_in_order(seq):
            continue
        names = list(seq._modules)
        for prev, name in zip(names, names[1:]):
            before = seq._modules[prev]
            if type(seq._modules[name]) is not nn.ReLU:
                continue
            if isinstance(before, _PathLayer) and not before.relu:
                before.relu = True
                seq._modules[name] = _FusedReLU()
            elif isinstance(before, _PathBatchNorm):
                seq._modules[name] = nn.ReLU(inplace=True)


BN_MODES = ("interpolate", "recompute", "train-mode")


def _own_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The parameters and buffers of ``module`` itself (not of its sub-modules), by name."""
    return {
        **dict(module.named_parameters(recurse=False)),
        **{k: v for k, v in module.named_buffers(recurse=False) if v is not None},
    }


class PathNetwork(nn.Module):
    """``model`` at every alpha of the path from ``state_a`` to ``state_b``, in one forward.

    state_a/state_b: state dicts of ``model`` (masks included for masked layers).
    ``forward(x, alphas, one_alpha_at_a_time=False)``: x (N, ...) one batch shared by all alphas,
    alphas (A,) -> logits (A, N, classes), the same whichever order (see the module's docstring).
    ``bn``: the batch-norm mode, one of ``BN_MODES`` (see the module's docstring); with ``"recompute"``,
    :meth:`recompute_bn_statistics` runs before any forward.
    The model is copied; evaluation mode only (dropout off in every mode).
    Raises ValueError for an unknown ``bn`` and for a module with tensors it cannot interpolate (its own
    and its sub-modules' at once: the sub-modules would see the folded batch, the module its alpha's).
    """

    def __init__(
        self, model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], bn: str = "interpolate"
    ) -> None:
        super().__init__()
        missing = set(state_a) ^ set(state_b)
        if missing:
            raise KeyError(f"state_a and state_b differ in their keys: {sorted(missing)}")
        if bn not in BN_MODES:
            raise ValueError(f"unknown bn mode {bn!r}; choose one of {', '.join(BN_MODES)}")
        self.shared = _PathState(bn)
        net = copy.deepcopy(model).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        for name, buffer in net.named_buffers():  # what is not interpolated is state_a's, as in a loaded state
            if not buffer.is_floating_point() and name in state_a and state_a[name].shape == buffer.shape:
                buffer.copy_(state_a[name])
        self.net = self._convert(net, state_a, state_b)
        _fuse_relus(self.net)
        self._bn_alphas: Tensor | None = None  # the alphas recompute_bn_statistics estimated for
        self._has_batch_norm = bool(self._batch_norms())

    @property
    def bn(self) -> str:
        """The batch-norm mode."""
        return self.shared.bn

    def _convert(self, net: nn.Module, state_a, state_b) -> nn.Module:
        replacements = []
        inside_functional = ()
        for name, module in net.named_modules():
            prefix = f"{name}." if name else ""
            if inside_functional and name.startswith(inside_functional):
                continue
            if (
                isinstance(module, (nn.Linear, nn.Conv2d))
                and type(module) in (nn.Linear, nn.Conv2d)
                or isinstance(module, MaskedMixin)
            ):
                ends = [
                    {"weight": _masked_weight(s, prefix, module), "bias": _endpoint(s, prefix, "bias")}
                    for s in (state_a, state_b)
                ]
                ends = [{k: v for k, v in e.items() if v is not None} for e in ends]
                new = (
                    _PathLinear(self.shared, *ends)
                    if isinstance(module, nn.Linear)
                    else _PathConv2d(self.shared, *ends, module)
                )
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if not module.track_running_stats:
                    raise ValueError(f"{name}: batch norm without running statistics cannot be interpolated")
                ends = [
                    {
                        k: s[f"{prefix}{k}"]
                        for k in ("running_mean", "running_var", "weight", "bias")
                        if f"{prefix}{k}" in s
                    }
                    for s in (state_a, state_b)
                ]
                new = _PathBatchNorm(self.shared, *ends, module)
            else:
                own = {
                    k: v
                    for k, v in _own_tensors(module).items()
                    if v.is_floating_point() or isinstance(v, nn.Parameter)
                }
                if not own:
                    continue
                below = [
                    f"{prefix}{k}"
                    for k, v in [*module.named_parameters(), *module.named_buffers()]
                    if "." in k and v.is_floating_point()
                ]
                if below:
                    raise ValueError(
                        f"{name or 'the model'}: {type(module).__name__} has tensors of its own and "
                        f"sub-modules with tensors ({below[0]}); PathNetwork cannot interpolate it"
                    )
                ends = [
                    {k: s.get(f"{prefix}{k}", v) for k, v in _own_tensors(module).items()} for s in (state_a, state_b)
                ]
                new = _PathFunctional(self.shared, module, *ends)
                inside_functional = (prefix,) if name else ("",)
            replacements.append((name, new))
        for name, new in replacements:
            if not name:
                return new
            net.set_submodule(name, new)
        return net

    def _batch_norms(self) -> list[_PathBatchNorm]:
        return [m for m in self.net.modules() if isinstance(m, _PathBatchNorm)]

    @torch.no_grad()
    def forward(self, x: Tensor, alphas: Tensor, one_alpha_at_a_time: bool = False) -> Tensor:
        if alphas.dim() != 1 or alphas.numel() == 0:
            raise ValueError(f"alphas must be a non-empty 1-D tensor, got shape {tuple(alphas.shape)}")
        alphas = alphas.to(x.device, x.dtype)
        if self.bn == "recompute" and not self.shared.estimating and self._has_batch_norm:
            if self._bn_alphas is None:
                raise RuntimeError("bn='recompute': call recompute_bn_statistics(batches, alphas) before evaluating")
            if self._bn_alphas.shape != alphas.shape or not torch.equal(self._bn_alphas.to(alphas), alphas):
                raise ValueError(
                    f"bn='recompute': the statistics were recomputed for alphas "
                    f"{self._bn_alphas.tolist()}, not {alphas.tolist()}"
                )
        self.shared.batch = x.shape[0]
        if one_alpha_at_a_time:
            return self._one_alpha_at_a_time(x, alphas)
        self.shared.alphas = alphas
        self.shared.alpha_index = slice(None)
        out = self._run_net(x)
        if out is None:  # an estimating forward that stopped after its last batch norm
            return None
        if out.shape[0] == x.shape[0] and alphas.shape[0] > 1:  # no layer with parameters: the same for all alphas
            out = out.unsqueeze(0).expand(alphas.shape[0], *out.shape)
        # a copy: the layers' results are reused by the next pass on the CPU
        return out.reshape(alphas.shape[0], x.shape[0], *out.shape[1:]).clone()

    @torch.no_grad()
    def recompute_bn_statistics(
        self, batches: Iterable[Tensor], alphas: Tensor, one_alpha_at_a_time: bool | None = None
    ) -> int:
        """Re-estimate every batch-norm layer's statistics at each alpha from ``batches`` (inputs (N, ...),
        each one pass, never cut), for ``bn="recompute"``: per alpha, the mean over the batches (over the
        calls, for a layer a forward calls more than once) of the batch means and of the unbiased batch
        variances, each batch normalised by its own statistics on the way (what
        ``reset_running_stats()``, ``momentum=None`` and a train-mode forward per batch leave in the
        running statistics of the model loaded at that alpha). After the first batch the forwards stop
        at the last batch-norm call (see ``_run_net``). Returns the number of batches.

        ``one_alpha_at_a_time``: the order of each pass (see ``forward``); None picks it as
        :func:`evaluate_path` does, from the activations of the batch's size.
        Raises ValueError for a mode other than ``"recompute"`` or no batch.
        """
        if self.bn != "recompute":
            raise ValueError(f"recompute_bn_statistics is for bn='recompute', this path has bn={self.bn!r}")
        norms = self._batch_norms()
        count = 0
        alphas = alphas.detach()
        for norm in norms:
            norm.start_estimate(alphas.shape[0])
        self.shared.estimating = True
        self.shared.stop_after = None
        try:
            order = one_alpha_at_a_time
            for x in batches:
                if order is None:
                    order = _pass_order(self, x, alphas, x.shape[0], whole_batches=True)[0]
                if norms:
                    self(x, alphas, one_alpha_at_a_time=order)
                count += 1
        finally:
            self.shared.estimating = False
            self.shared.stop_after = None
        if count == 0:
            raise ValueError("recompute_bn_statistics needs at least one batch")
        for norm in norms:
            norm.finish_estimate()
        self._bn_alphas = alphas.clone()
        return count

    @torch.no_grad()
    def evaluate(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        alphas: Tensor,
        batch_size: int = 1000,
        one_alpha_at_a_time: bool | None = None,
    ) -> tuple[Tensor, Tensor, int]:
        """Sums over ``batches`` of (x (N, ...), y (N,) class indices) of the cross-entropy loss and of the
        correct predictions at each alpha, two float64 (A,) tensors, and the number of examples.

        A pass evaluates all alphas on at most ``batch_size`` examples of a batch, fewer when the activations
        would overflow ``_ACTIVATION_BYTES`` (see :func:`evaluate_path`); with ``bn="train-mode"`` each batch
        is one pass whatever its size (its statistics are the batch's).
        """
        num_alphas = alphas.shape[0]
        loss = correct = None
        examples = 0
        order = None
        whole = self.bn == "train-mode"
        for x, y in batches:
            if loss is None:
                loss = torch.zeros(num_alphas, dtype=torch.float64, device=x.device)
                correct = torch.zeros(num_alphas, dtype=torch.float64, device=x.device)
            if x.shape[0] == 0:
                continue
            if order is None:
                order, pass_size = _pass_order(self, x, alphas, batch_size, whole, one_alpha_at_a_time)
            step = x.shape[0] if whole else pass_size
            for start in range(0, x.shape[0], step):
                xb, yb = x[start : start + step], y[start : start + step]
                logits = self(xb, alphas, one_alpha_at_a_time=order)
                if logits.dtype in (torch.bfloat16, torch.float16):  # under autocast: the losses from float32
                    logits = logits.float()
                targets = yb.unsqueeze(0).expand(num_alphas, -1)
                pass_loss, pass_correct = _loss_and_correct_sums(logits, targets)
                loss += pass_loss
                correct += pass_correct
            examples += x.shape[0]
        if loss is None:
            loss = torch.zeros(num_alphas, dtype=torch.float64, device=alphas.device)
            correct = torch.zeros_like(loss)
        return loss, correct, examples

    def _run_net(self, x: Tensor) -> Tensor | None:
        """The network on ``x``. While statistics are estimated, the first forward counts its batch-norm
        calls and the later ones stop after that many (None): the layers after the last batch norm change
        no statistic (Conv-2 + BN: its three linear layers, a tenth of the estimation's time). Assumes what
        the path assumes everywhere: every forward calls the same layers in the same order."""
        shared = self.shared
        if not shared.estimating:
            return self.net(x)
        shared.bn_calls = 0
        try:
            out = self.net(x)
        except _StatisticsDone:
            return None
        if shared.stop_after is None and shared.bn_calls:
            shared.stop_after = shared.bn_calls
        return out

    def _one_alpha_at_a_time(self, x: Tensor, alphas: Tensor) -> Tensor:
        """The network once per alpha on (N, ...) tensors; a layer whose input is ``x`` itself computes
        both ends' outputs once (two products) and each alpha's as their lerp, as in the batched pass."""
        self.shared.source = x
        self.shared.passes += 1
        result = None
        try:
            for i in range(alphas.shape[0]):
                self.shared.alphas = alphas[i : i + 1]
                self.shared.alpha_index = slice(i, i + 1)
                out = self._run_net(x)
                if out is None:  # an estimating forward that stopped after its last batch norm
                    continue
                if result is None:
                    result = out.new_empty(alphas.shape[0], *out.shape)
                result[i] = out
        finally:
            self.shared.source = None
            self.shared.alpha_index = slice(None)
        return result


# Bytes of the largest activation of one pass (all alphas of a chunk of examples) on the CPU: above
# this, passes fall out of the caches. LeNet-300-100, 21 alphas, 10k examples: 0.31 s at 16 MB (640
# examples per pass), 0.40 s at 128 MB (1000), 0.44 s at 4 MB (160). Conv-4, 21 alphas: 1.4 GB
# activations at 250 examples per pass ran 1.3x slower than the loop over alphas.
_ACTIVATION_BYTES = 16 << 20
# ... and on a GPU, where no cache is that small and larger passes fill the device better: a bound on
# memory only (not yet tuned on a GPU).
_GPU_ACTIVATION_BYTES = 1 << 30
# ... but a pass has at least this many examples (as many as batch_size allows): Conv-4's
# activations (5.5 MB per example over 21 alphas) would otherwise give passes of 2 examples, whose
# 84 small convs each cost more than the cache saves (7.9 s per 100 examples, 6.1 s at 23).
_MIN_PASS_EXAMPLES = 32
# One alpha at a time (see evaluate_path), the activation of one alpha's pass is held to this: Conv-4
# on 256 examples, 21 alphas, one thread: 16-20 s at 32 examples per pass, 19-20 s at 64, 22 s at 128.
_ONE_ALPHA_ACTIVATION_BYTES = 8 << 20


def _loss_and_correct_sums(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The cross-entropy of logits (A, N, K) against class indices (A, N), summed over N, and the number of
    correct predictions (argmax, the first largest logit on ties): two (A,) float64 tensors.

    ``logsumexp - logit of the target`` from the one pass that finds each example's largest logit and its
    index (the shift of the log-sum-exp, as torch.logsumexp's: an infinite largest logit shifts by 0),
    the same value as ``F.cross_entropy`` to float rounding. F.cross_entropy's log-softmax over 10
    classes cost 6x as much on the CPU, and logsumexp and argmax apart 1.5x (LeNet-300-100's 21 alphas
    x 254 examples: 0.21 ms against 0.33 ms per pass)."""
    top, predicted = logits.max(-1)
    shift = torch.where(top.isfinite(), top, torch.zeros((), dtype=top.dtype, device=top.device))
    log_sum_exp = (logits - shift.unsqueeze(-1)).exp_().sum(-1).log_().add_(shift)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_sum_exp - picked).sum(1, dtype=torch.float64), (predicted == targets).sum(1, dtype=torch.float64)


def _activation_bytes(path: PathNetwork, x: Tensor, alphas: Tensor) -> tuple[int, int]:
    """Bytes per example of the largest module output of ``path`` that is each alpha's own (per alpha), and
    of the largest that all alphas share (the input, and what is computed from it alone, such as its
    flattening), probed on one example at two alphas (on interpolated batch-norm statistics whatever
    the path's mode: one example has no batch statistics, and the probe must not count towards
    recomputed ones)."""
    per_alpha = [0]
    shared = [x[:1].numel() * x.element_size()]

    def record(module, inputs, output):
        if not isinstance(output, Tensor) or output.dim() == 0:
            return
        if output.shape[0] == 1:
            shared[0] = max(shared[0], output.numel() * output.element_size())
        else:
            per_alpha[0] = max(per_alpha[0], output[0].numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in path.net.modules()]
    shared_state = path.shared
    saved = shared_state.bn, shared_state.estimating
    shared_state.bn, shared_state.estimating = "interpolate", False
    try:
        path(x[:1], alphas[:1].expand(2))
    finally:
        shared_state.bn, shared_state.estimating = saved
        for h in handles:
            h.remove()
    return per_alpha[0], shared[0]


def _pass_order(
    path: PathNetwork,
    x: Tensor,
    alphas: Tensor,
    batch_size: int,
    whole_batches: bool,
    one_alpha_at_a_time: bool | None = None,
) -> tuple[bool, int]:
    """(one alpha at a time?, examples per pass) for passes over batches like ``x`` at ``alphas``.

    Cut passes (``whole_batches`` false): at most ``batch_size`` examples, fewer (down to
    ``_MIN_PASS_EXAMPLES``) when the largest activation of the pass (all alphas' own activations, or
    one all alphas share: see ``_activation_bytes``) would exceed ``_ACTIVATION_BYTES``
    (``_GPU_ACTIVATION_BYTES`` off the CPU); all alphas folded into the batch, or (on the CPU, where all
    alphas of ``_MIN_PASS_EXAMPLES`` examples overflow that budget: Conv-4, ResNet-20) one alpha at a time.
    Whole batches (batch statistics: recomputing them, ``bn="train-mode"``): one alpha at a time where all
    alphas of a whole batch would overflow the budget. ``one_alpha_at_a_time`` forces the order.
    """
    num_alphas = alphas.shape[0]
    per_alpha, shared = _activation_bytes(path, x, alphas)
    cpu = x.device.type == "cpu"
    budget = _ACTIVATION_BYTES if cpu else _GPU_ACTIVATION_BYTES
    all_alphas = max(per_alpha * num_alphas, shared)  # bytes per example of all alphas' largest activation
    if one_alpha_at_a_time is None:
        if whole_batches:
            one_alpha_at_a_time = all_alphas * x.shape[0] > budget
        else:
            one_alpha_at_a_time = cpu and all_alphas * _MIN_PASS_EXAMPLES > budget
    if one_alpha_at_a_time:
        per_example = max(per_alpha, shared)
        budget = _ONE_ALPHA_ACTIVATION_BYTES if cpu else budget
    else:
        per_example = all_alphas
    return bool(one_alpha_at_a_time), max(1, min(batch_size, max(_MIN_PASS_EXAMPLES, budget // max(1, per_example))))


@torch.no_grad()
def evaluate_path(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    alphas: Tensor,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    one_alpha_at_a_time: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Cross-entropy loss and accuracy of ``model`` at each alpha of the path, over (x, y): two (A,) tensors.

    Batch norm on interpolated statistics (``bn="interpolate"``; :func:`lth_sparse.analysis.interpolate`
    has the other modes). Each pass evaluates all alphas on at most ``batch_size`` examples, fewer (down to
    ``_MIN_PASS_EXAMPLES``) when the largest activation of the pass would exceed ``_ACTIVATION_BYTES``
    (``_GPU_ACTIVATION_BYTES`` off the CPU). A pass runs all alphas folded into the batch, or (on the
    CPU, where all alphas of ``_MIN_PASS_EXAMPLES`` examples overflow that budget: Conv-4, ResNet-20)
    one alpha at a time (see ``PathNetwork.forward``); ``one_alpha_at_a_time`` forces either order.
    """
    path = PathNetwork(model, state_a, state_b).to(x.device)
    loss, correct, examples = path.evaluate([(x, y)], alphas, batch_size, one_alpha_at_a_time)
    n = max(1, examples)
    return loss / n, correct / n
