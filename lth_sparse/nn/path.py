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

``forward(x, alphas, one_alpha_at_a_time=True)`` runs the network once per alpha on ``(N, ...)``
tensors instead, each layer at its interpolated weight, except that a layer whose input is ``x``
itself still computes both ends' outputs once per pass and each alpha's as their lerp. On the CPU
that order is the faster one for conv nets (:func:`evaluate_path` picks it): after the first layer
every conv is one conv per alpha in either order, the same multiply-adds as a loop over alphas, and
one alpha's activations of a pass stay in the caches where all alphas' (176 MB for Conv-4 on 32
examples) do not.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from lth_sparse._dispatch import choose_backend
from lth_sparse.nn.modules import MaskedMixin, resolve_conv_padding
from lth_sparse.ops import interpolate
# The custom ops themselves: their inputs are (A or 1, ...), one per alpha or one shared, as this module
# passes them (the public functions ask for the convention by keyword).
from lth_sparse.ops.interpolate import _interpolated_conv2d as interpolated_conv2d
from lth_sparse.ops.interpolate import _interpolated_linear as interpolated_linear


class _PathState:
    """What every interpolating layer of one PathNetwork shares: the alphas of the running forward and the
    batch size; one alpha at a time, also the network's input and a count of the passes."""

    def __init__(self) -> None:
        self.alphas: Tensor | None = None
        self.batch: int = 0
        self.source: Tensor | None = None  # one alpha at a time: the input all alphas share
        self.passes: int = 0  # one alpha at a time: which pass a layer's kept endpoint outputs are from

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
            raise RuntimeError(f"PathNetwork: a layer got a batch of {x.shape[0]}, expected {self.batch} (the input) "
                               f"or {num_alphas * self.batch} (alphas x batch)")
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
        self._ends_pass = -1  # one alpha at a time: the pass whose both ends' outputs _result holds

    def _interpolated(self, op, kind: str, x: Tensor, alphas: Tensor, *conv_args) -> Tensor:
        """(A, N, ...): the op on x (1 or A, N, ...), on the CPU into the last result when it can."""
        args = (x, self.weight_a, self.weight_b, alphas, self.bias_a, self.bias_b)
        if x.device.type == "cpu" and choose_backend(f"interpolated_{kind}", x.device, interpolate.IMPLEMENTED) == "torch":
            self._result = interpolate.cpu_forward_into(self._result, kind, *args, *conv_args)
            return self._result
        return op(*args, *conv_args)

    def _run(self, op, kind: str, x: Tensor, *conv_args) -> Tensor:
        if self.shared.source is None:
            return self._interpolated(op, kind, self.shared.unfold(x), self.shared.alphas, *conv_args).flatten(0, 1)
        alpha = self.shared.alphas[0]
        if self.shared.is_source(x):
            # both ends' outputs once per pass (two products), each alpha's a lerp of them
            if self._ends_pass != self.shared.passes:
                ends = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
                self._interpolated(op, kind, x.unsqueeze(0), ends, *conv_args)
                self._ends_pass = self.shared.passes
            return torch.lerp(self._result[0], self._result[1], alpha)
        weight = torch.lerp(self.weight_a, self.weight_b, alpha)
        bias = None if self.bias_a is None else torch.lerp(self.bias_a, self.bias_b, alpha)
        return self._layer_at(x, weight, bias, *conv_args)


class _PathLinear(_PathLayer):
    def forward(self, x: Tensor) -> Tensor:
        return self._run(interpolated_linear, "linear", x)

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
        return self._run(interpolated_conv2d, "conv", x, list(_pair(conv.stride)), list(_pair(padding)),
                         list(_pair(conv.dilation)), conv.groups)

    @staticmethod
    def _layer_at(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups) -> Tensor:
        if x.device.type == "cpu":  # oneDNN's direct layout, as the batched op uses (see its _channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class _PathBatchNorm(nn.Module):
    def __init__(self, shared: _PathState, a: dict, b: dict, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.shared = shared
        self.eps = bn.eps
        for side, state in (("a", a), ("b", b)):
            self.register_buffer(f"mean_{side}", state["running_mean"])
            self.register_buffer(f"var_{side}", state["running_var"])
            self.register_buffer(f"weight_{side}", state.get("weight", torch.ones_like(state["running_mean"])))
            self.register_buffer(f"bias_{side}", state.get("bias", torch.zeros_like(state["running_mean"])))

    def forward(self, x: Tensor) -> Tensor:
        alphas = self.shared.alphas.reshape(-1, 1)
        lerp = lambda a, b: torch.lerp(a.unsqueeze(0), b.unsqueeze(0), alphas.to(a.dtype))  # noqa: E731
        scale = lerp(self.weight_a, self.weight_b) / torch.sqrt(lerp(self.var_a, self.var_b) + self.eps)
        shift = lerp(self.bias_a, self.bias_b) - lerp(self.mean_a, self.mean_b) * scale
        unfolded = self.shared.unfold(x)
        if unfolded.shape[0] == 1:
            unfolded = unfolded.expand(alphas.shape[0], *unfolded.shape[1:])
        view = (alphas.shape[0], 1, -1) + (1,) * (unfolded.dim() - 3)
        return (unfolded * scale.reshape(view) + shift.reshape(view)).flatten(0, 1)


def _relu_in_place(net: nn.Module) -> None:
    """A ReLU right after an interpolating layer in an ``nn.Sequential`` works in place: its input is
    that layer's fresh output, which nothing else sees. Saves a pass's largest allocation (fresh
    pages for 16 MB of activations cost as much as computing them)."""
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for prev, name in zip(names, names[1:]):
            if type(seq._modules[name]) is nn.ReLU and isinstance(seq._modules[prev], (_PathLayer, _PathBatchNorm)):
                seq._modules[name] = nn.ReLU(inplace=True)


class PathNetwork(nn.Module):
    """``model`` at every alpha of the path from ``state_a`` to ``state_b``, in one forward.

    state_a/state_b: state dicts of ``model`` (masks included for masked layers).
    ``forward(x, alphas, one_alpha_at_a_time=False)``: x (N, ...) one batch shared by all alphas,
    alphas (A,) -> logits (A, N, classes), the same whichever order (see the module's docstring).
    The model is copied; evaluation mode only.
    Raises ValueError for a module with parameters it cannot interpolate.
    """

    def __init__(self, model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> None:
        super().__init__()
        missing = set(state_a) ^ set(state_b)
        if missing:
            raise KeyError(f"state_a and state_b differ in their keys: {sorted(missing)}")
        self.shared = _PathState()
        net = copy.deepcopy(model).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = self._convert(net, state_a, state_b)
        _relu_in_place(self.net)

    def _convert(self, net: nn.Module, state_a, state_b) -> nn.Module:
        replacements = []
        for name, module in net.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, (nn.Linear, nn.Conv2d)) and type(module) in (nn.Linear, nn.Conv2d) or \
                    isinstance(module, MaskedMixin):
                ends = [{"weight": _masked_weight(s, prefix, module), "bias": _endpoint(s, prefix, "bias")}
                        for s in (state_a, state_b)]
                ends = [{k: v for k, v in e.items() if v is not None} for e in ends]
                new = (_PathLinear(self.shared, *ends) if isinstance(module, nn.Linear)
                       else _PathConv2d(self.shared, *ends, module))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if not module.track_running_stats:
                    raise ValueError(f"{name}: batch norm without running statistics cannot be interpolated")
                ends = [{k: s[f"{prefix}{k}"] for k in ("running_mean", "running_var", "weight", "bias")
                         if f"{prefix}{k}" in s} for s in (state_a, state_b)]
                new = _PathBatchNorm(self.shared, *ends, module)
            else:
                if any(True for _ in module.parameters(recurse=False)):
                    raise ValueError(f"{name}: {type(module).__name__} has parameters PathNetwork cannot interpolate")
                continue
            replacements.append((name, new))
        for name, new in replacements:
            if not name:
                return new
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, new)
        return net

    @torch.no_grad()
    def forward(self, x: Tensor, alphas: Tensor, one_alpha_at_a_time: bool = False) -> Tensor:
        if alphas.dim() != 1 or alphas.numel() == 0:
            raise ValueError(f"alphas must be a non-empty 1-D tensor, got shape {tuple(alphas.shape)}")
        alphas = alphas.to(x.device, x.dtype)
        self.shared.batch = x.shape[0]
        if one_alpha_at_a_time:
            return self._one_alpha_at_a_time(x, alphas)
        self.shared.alphas = alphas
        out = self.net(x)
        if out.shape[0] == x.shape[0] and alphas.shape[0] > 1:  # no layer with parameters: the same for all alphas
            out = out.unsqueeze(0).expand(alphas.shape[0], *out.shape)
        # a copy: the layers' results are reused by the next pass on the CPU
        return out.reshape(alphas.shape[0], x.shape[0], *out.shape[1:]).clone()

    def _one_alpha_at_a_time(self, x: Tensor, alphas: Tensor) -> Tensor:
        """The network once per alpha on (N, ...) tensors; a layer whose input is ``x`` itself computes
        both ends' outputs once (two products) and each alpha's as their lerp, as in the batched pass."""
        self.shared.source = x
        self.shared.passes += 1
        result = None
        try:
            for i in range(alphas.shape[0]):
                self.shared.alphas = alphas[i:i + 1]
                out = self.net(x)
                if result is None:
                    result = out.new_empty(alphas.shape[0], *out.shape)
                result[i] = out
        finally:
            self.shared.source = None
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


def _largest_activation(path: PathNetwork, x: Tensor, alphas: Tensor) -> int:
    """Bytes of the largest module output of ``path`` for one example and one alpha."""
    largest = [x[:1].numel() * x.element_size()]

    def record(module, inputs, output):
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in path.net.modules()]
    try:
        path(x[:1], alphas[:1])
    finally:
        for h in handles:
            h.remove()
    return largest[0]


@torch.no_grad()
def evaluate_path(model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], alphas: Tensor,
                  x: Tensor, y: Tensor, batch_size: int = 1000,
                  one_alpha_at_a_time: bool | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy loss and accuracy of ``model`` at each alpha of the path, over (x, y): two (A,) tensors.

    Each pass evaluates all alphas on at most ``batch_size`` examples, fewer (down to
    ``_MIN_PASS_EXAMPLES``) when the largest activation of the pass would exceed ``_ACTIVATION_BYTES``
    (``_GPU_ACTIVATION_BYTES`` off the CPU). A pass runs all alphas folded into the batch, or (on the
    CPU, where all alphas of ``_MIN_PASS_EXAMPLES`` examples overflow that budget: Conv-4, ResNet-20)
    one alpha at a time (see ``PathNetwork.forward``); ``one_alpha_at_a_time`` forces either order.
    """
    path = PathNetwork(model, state_a, state_b).to(x.device)
    num_alphas = alphas.shape[0]
    if x.shape[0]:
        per_alpha = _largest_activation(path, x, alphas)
        budget = _ACTIVATION_BYTES if x.device.type == "cpu" else _GPU_ACTIVATION_BYTES
        if one_alpha_at_a_time is None:
            one_alpha_at_a_time = x.device.type == "cpu" and per_alpha * num_alphas * _MIN_PASS_EXAMPLES > budget
        if one_alpha_at_a_time:
            per_example = per_alpha
            budget = _ONE_ALPHA_ACTIVATION_BYTES if x.device.type == "cpu" else budget
        else:
            per_example = per_alpha * num_alphas
        batch_size = max(1, min(batch_size, max(_MIN_PASS_EXAMPLES, budget // per_example)))
    loss = torch.zeros(num_alphas, dtype=torch.float64, device=x.device)
    correct = torch.zeros(num_alphas, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = path(xb, alphas, one_alpha_at_a_time=bool(one_alpha_at_a_time))
        targets = yb.unsqueeze(0).expand(num_alphas, -1)
        loss += F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="none") \
            .reshape(num_alphas, -1).sum(1).double()
        correct += (logits.argmax(-1) == targets).sum(1).double()
    n = max(1, x.shape[0])
    return loss / n, correct / n
