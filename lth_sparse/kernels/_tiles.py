"""What the Triton kernels of this package share: the interpreter switch and launch, GEMM tiles, tile functions.

- :data:`INTERPRETED` and :func:`check_device`: whether the kernels were defined for Triton's
  interpreter, and so run on CPU tensors only (``TRITON_INTERPRET=1`` must be set before the kernel
  modules are imported: Triton decides when a kernel is defined whether it is interpreted);
- the GEMM tiles of :mod:`~lth_sparse.kernels.masked_matmul` and
  :mod:`~lth_sparse.kernels.interpolate`: the autotuned sets (:data:`TENSOR_CORE_CONFIGS`, and
  :data:`FMA_CONFIGS` for float64, which multiplies on the CUDA cores), the one small tile of the
  interpreter (:data:`INTERPRETER_TILE`), and :func:`launch`, which runs a kernel on either;
- the device functions of their tiles: :func:`tile_coords` (grouped tile order), :func:`mma` (the
  multiply-accumulate), :func:`index` (32- or 64-bit offsets), :func:`im2col_tile` (a conv's
  unfolded input, loaded in place);
- the launch options that follow from the dtype and torch's TF32 flags (:func:`dtype_options`), and
  a conv's output size and geometry arguments.

Their contracts are those described in ``masked_matmul``'s module docstring.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

# Whether the kernels were defined for the interpreter (Triton decides at decoration time).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(device: torch.device) -> None:
    """Raise ``RuntimeError`` unless the kernels can run on ``device`` in this process: CUDA tensors when
    they are compiled, CPU tensors when they are interpreted."""
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError(
                "lth_sparse.kernels was imported with TRITON_INTERPRET=1; "
                "its kernels run on CPU tensors only in this process"
            )
    elif not INTERPRETED:
        raise RuntimeError(
            f"Triton kernels run on CPU tensors only when TRITON_INTERPRET=1 is set before "
            f"lth_sparse.kernels is imported; these tensors are on {device}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------------------------


def _config(m, n, k, stages, warps, group=8):
    return triton.Config(
        {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": group}, num_stages=stages, num_warps=warps
    )


# The tutorial matmul's set, plus narrow tiles for skinny problems (LeNet: 300 x 60 x 784). Configs that do
# not fit in shared memory (large float32 tiles) are dropped by the autotuner.
TENSOR_CORE_CONFIGS = [
    _config(128, 256, 64, 3, 8),
    _config(256, 128, 64, 3, 8),
    _config(128, 128, 64, 4, 8),
    _config(128, 128, 32, 4, 4),
    _config(64, 256, 32, 4, 4),
    _config(128, 64, 32, 4, 4),
    _config(64, 128, 32, 4, 4),
    _config(64, 64, 64, 4, 4),
    _config(128, 32, 32, 4, 4),
    _config(32, 64, 32, 5, 2),
    _config(64, 32, 32, 5, 2),
    _config(32, 32, 64, 5, 2),
]
# float64 multiplies on the CUDA cores: the (BLOCK_M, BLOCK_K, BLOCK_N) product lives in registers.
FMA_CONFIGS = [_config(32, 32, 8, 2, 4), _config(64, 32, 8, 2, 4), _config(64, 64, 8, 2, 8)]

# One small tile under the interpreter: tl.dot needs >= 16 on every side.
INTERPRETER_TILE = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2}


@functools.cache
def autotuned(kernel, key: tuple[str, ...], fma: bool, keep: Callable[[triton.Config, bool], bool] | None = None):
    """``kernel`` autotuned on the problem's ``key`` over the tiles of its multiply (``FMA_CONFIGS`` or
    ``TENSOR_CORE_CONFIGS``), only those for which ``keep(config, fma)`` holds when given; one autotuner
    for each set of arguments."""
    configs = FMA_CONFIGS if fma else TENSOR_CORE_CONFIGS
    if keep is not None:
        configs = [c for c in configs if keep(c, fma)]
    return triton.autotune(configs=configs, key=list(key))(kernel)


def launch(
    kernel,
    key: tuple[str, ...],
    grid,
    args: tuple,
    kwargs: dict,
    device: torch.device,
    keep: Callable[[triton.Config, bool], bool] | None = None,
) -> None:
    """Run ``kernel`` autotuned on a GPU (see :func:`autotuned`; ``kwargs["FMA"]`` picks the tiles), or with
    the fixed small tile under the interpreter. ``grid(meta)`` gives the grid of a tile's ``meta``."""
    check_device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            autotuned(kernel, key, kwargs["FMA"], keep)[grid](*args, **kwargs)
        return
    kernel[grid(INTERPRETER_TILE)](*args, **kwargs, **INTERPRETER_TILE)


# ---------------------------------------------------------------------------------------------------------------
# Device functions
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row tiles sweep the column tiles together, so B tiles are reused from L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size
    return pid_m, pid_n


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, FMA: tl.constexpr):
    """acc + a @ b: tensor cores, or CUDA-core FMAs for float64 (see ``masked_matmul``'s module docstring)."""
    if FMA:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        if UPCAST:  # interpreter only: its tl.dot mishandles bfloat16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def index(offs, INDEX_64: tl.constexpr):
    """``offs`` widened to 64 bits when INDEX_64 (see :func:`needs_int64`)."""
    if INDEX_64:
        offs = offs.to(tl.int64)
    return offs


@triton.jit
def im2col_tile(
    x_cols, offs_k, in_k, in_n, h0, w0, H, W, sx_c, sx_h, sx_w, DIL_H, DIL_W, KH: tl.constexpr, KW: tl.constexpr
):
    """The (BLOCK_K, BLOCK_N) tile of the unfolded input, loaded in place: row k = (channel, kernel
    row, kernel column), column n = an output position whose input window starts at (h0, w0), at
    ``x_cols``; taps in the padding load as zero."""
    tap_w = offs_k % KW
    tap_h = (offs_k // KW) % KH
    channel = offs_k // (KW * KH)
    h = h0[None, :] + (tap_h * DIL_H)[:, None]
    w = w0[None, :] + (tap_w * DIL_W)[:, None]
    inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return tl.load(
        x_cols[None, :] + (channel * sx_c + tap_h * DIL_H * sx_h + tap_w * DIL_W * sx_w)[:, None],
        mask=in_k[:, None] & in_n[None, :] & inside,
        other=0.0,
    )


# ---------------------------------------------------------------------------------------------------------------
# Launch options
# ---------------------------------------------------------------------------------------------------------------


def dtype_options(dtype: torch.dtype, allow_tf32: bool, *tensors: Tensor | None) -> dict:
    """The constexprs that follow from the dtype, the TF32 setting and the tensors' extents."""
    fp64 = dtype == torch.float64
    return dict(
        ACC_DTYPE=tl.float64 if fp64 else tl.float32,
        INPUT_PRECISION="tf32" if dtype == torch.float32 and allow_tf32 and not INTERPRETED else "ieee",
        UPCAST=INTERPRETED and dtype == torch.bfloat16,
        FMA=fp64,
        INDEX_64=needs_int64(*tensors),
    )


def needs_int64(*tensors: Tensor | None) -> bool:
    """Whether some element offset in these tensors passes int32 (offsets then need 64-bit arithmetic)."""
    for t in tensors:
        if t is not None and sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0) >= 2**31 - 1:
            return True
    return False


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of ``dtype`` values are kept in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear_allows_tf32() -> bool:
    """torch's TF32 flag for matmuls, which its linear layers obey."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def conv_allows_tf32() -> bool:
    """torch's TF32 flag for cuDNN, which its conv layers obey."""
    return bool(torch.backends.cudnn.allow_tf32)


def conv_output_size(input: Tensor, weight: Tensor, stride, padding, dilation) -> tuple[int, int]:
    """(OH, OW) of a conv of ``input`` (..., H, W) with ``weight`` (..., kH, kW); ``ValueError`` when the
    input is too small for the kernel."""
    size = tuple(
        (input.shape[-2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )
    if min(size) <= 0:
        raise ValueError(
            f"input of spatial size {tuple(input.shape[-2:])} is too small for kernel "
            f"{tuple(weight.shape[2:])} with padding {list(padding)} and dilation {list(dilation)}"
        )
    return size


def conv_geometry(stride, padding, dilation) -> tuple[int, ...]:
    """The conv kernels' geometry arguments: STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W."""
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
