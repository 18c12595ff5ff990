"""Triton kernels of batched interpolated evaluation, forward: a layer at every point of a linear path.

For each of the A values ``alphas[i]`` the layer is evaluated with ``W(alpha) = (1 - alpha) W_a + alpha W_b``
(bias likewise), as :func:`lth_sparse.ops.interpolate.interpolated_linear` and ``interpolated_conv2d``
define it. The input is either one per alpha (first dimension A) or shared by all (first dimension 1).
The backward stays the op's torch one (it is two products with ``W_a`` and ``W_b`` by linearity).

Two kernels, each with two modes chosen by the constexpr ``SHARED``:

- per-alpha inputs (``input.shape[0] == A``, A = 1 included): one batched GEMM with the alpha as a
  grid axis. Each program loads a ``W_a`` and a ``W_b`` tile and forms its alpha's weight tile
  ``(1 - a) W_a + a W_b`` in registers (in float32, or float64, rounded once to the input dtype for
  the tensor cores), so no interpolated weight is ever written, let alone A of them; the bias is
  interpolated in the epilogue. The formed weight is the *left* operand, as the masked weight is in
  :mod:`lth_sparse.kernels.masked_matmul` (on Hopper ``wgmma`` takes A from registers, where it was
  just formed): outputs are computed transposed, ``y_i^T = W(a_i) x_i^T``, and stored through strides.
- a shared input (``input.shape[0] == 1 < A``): the output is linear in alpha, so one kernel keeps
  two accumulators over the same loaded input tile, ``W_a x^T`` and ``W_b x^T``, adds ``b_a`` and
  ``b_b``, and its epilogue writes all A outputs as ``(1 - a_i) y_a + a_i y_b``. The input is read in
  one pass (not A), the two weights once each, nothing but the A outputs is written, and
  no ``y_a``/``y_b`` intermediate goes through memory. At ``alpha`` 0 and 1 the lerp is exact.

Linear (``interpolated_linear_forward``): a strided GEMM ``C[a] = W(a) @ x[a]^T`` with M = out
features, N = rows (all leading batch dimensions), K = in features. Conv
(``interpolated_conv2d_forward``): implicit GEMM, ``C[a][o, (n,p,q)] = W(a)[o, (c,r,s)] @ im2col(x[a])``,
each input element's address computed from its indices in the tile load and zero padding done by
the load mask (no ``F.unfold``), exactly as ``masked_matmul``'s conv forward; groups are grid axis 1,
alphas grid axis 2.

Precision, tiles and launch follow :mod:`lth_sparse.kernels.masked_matmul` and share its pieces
(``kernels/_tiles.py``):
float32 accumulation (float64 for float64, multiplied on the CUDA cores, ``FMA``, because Triton's
sm_90 float64 ``tl.dot`` rejects a register-formed operand); output in the input dtype; float32 uses
TF32 only where torch allows it (``torch.backends.cuda.matmul.allow_tf32`` for linear,
``torch.backends.cudnn.allow_tf32`` for conv) and never under the interpreter; bfloat16 is widened
before ``tl.dot`` under the interpreter only. Alphas of any floating dtype are converted to the
accumulation dtype (A numbers). Autotuned tiles on a GPU, ``masked_matmul``'s set; the shared mode
holds two accumulators, so it is tuned only over the tiles where both fit in registers (see
``_fits_two_accumulators``). Under ``TRITON_INTERPRET=1`` (set before import) one fixed small tile
runs on CPU tensors, which is how CI tests these kernels. With per-alpha inputs A is a CUDA grid
axis, so at most 65535 alphas (a shared input has no limit: its epilogue loops over them). Index
arithmetic is 32-bit unless a tensor spans 2**31 elements; the per-alpha output offset is 64-bit.
Empty problems launch nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lth_sparse.kernels._tiles import (
    accumulator_dtype,
    conv_allows_tf32,
    conv_geometry,
    conv_output_size,
    dtype_options,
    im2col_tile,
    index,
    launch,
    linear_allows_tf32,
    mma,
    tile_coords,
)

# ---------------------------------------------------------------------------------------------------------------
# Shared device functions
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _lerp_weight(w_a, w_b, alpha, ACC_DTYPE: tl.constexpr):
    """(1 - alpha) w_a + alpha w_b, formed in ACC_DTYPE and rounded once to the weights' dtype."""
    return ((1 - alpha) * w_a.to(ACC_DTYPE) + alpha * w_b.to(ACC_DTYPE)).to(w_a.dtype)


@triton.jit
def _store_outputs(
    acc,
    acc_b,
    y_ptrs,
    bounds,
    out_rows,
    in_m,
    bias_a_ptr,
    bias_b_ptr,
    alphas_ptr,
    pid_a,
    NUM_ALPHAS,
    stride_ya,
    HAS_BIAS: tl.constexpr,
    SHARED: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """The epilogue. SHARED: y[i] = (1 - a_i)(acc + b_a) + a_i (acc_b + b_b) for every alpha i; otherwise
    y[pid_a] = acc + (1 - a) b_a + a b_b (acc_b unused). ``y_ptrs`` address alpha 0's tile; biases are per row."""
    if HAS_BIAS:
        bias_a = tl.load(bias_a_ptr + out_rows, mask=in_m, other=0.0).to(ACC_DTYPE)[:, None]
        bias_b = tl.load(bias_b_ptr + out_rows, mask=in_m, other=0.0).to(ACC_DTYPE)[:, None]
    if SHARED:
        if HAS_BIAS:
            acc += bias_a
            acc_b += bias_b
        for i in range(0, NUM_ALPHAS):
            alpha = tl.load(alphas_ptr + i)
            tl.store(y_ptrs, ((1 - alpha) * acc + alpha * acc_b).to(y_ptrs.dtype.element_ty), mask=bounds)
            y_ptrs += stride_ya  # pointer arithmetic is 64-bit: no int32 overflow over many alphas
    else:
        alpha = tl.load(alphas_ptr + pid_a)
        if HAS_BIAS:
            acc += (1 - alpha) * bias_a + alpha * bias_b
        tl.store(y_ptrs + pid_a.to(tl.int64) * stride_ya, acc.to(y_ptrs.dtype.element_ty), mask=bounds)


# ---------------------------------------------------------------------------------------------------------------
# Linear: C[a] (out, rows) = W(a) @ x[a]^T, stored into y[a] (rows, out) through transposed strides
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _interpolated_gemm_kernel(
    w_a_ptr,
    w_b_ptr,
    x_ptr,
    y_ptr,
    bias_a_ptr,
    bias_b_ptr,
    alphas_ptr,
    M,
    N,
    K,
    NUM_ALPHAS,  # out_features, rows, in_features, A
    stride_wm,
    stride_xa,
    stride_xn,
    stride_xk,
    stride_ya,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    SHARED: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    FMA: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y[a][n, m] = sum_k W(alpha_a)[m, k] x[a][n, k] + b(alpha_a)[m]; see the module docstring for SHARED."""
    pid = tl.program_id(0)
    pid_a = tl.program_id(1)  # 0 in the SHARED mode, whose grid has one alpha column
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    w_rows = offs_m[:, None] * stride_wm  # both weights contiguous (out, in)
    x_cols = x_ptr + index(pid_a, INDEX_64) * stride_xa + offs_n[None, :] * stride_xn
    if not SHARED:
        alpha = tl.load(alphas_ptr + pid_a)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if SHARED:
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        w_bounds = in_m[:, None] & in_k[None, :]
        w_a = tl.load(w_a_ptr + w_rows + offs_k[None, :], mask=w_bounds, other=0.0)
        w_b = tl.load(w_b_ptr + w_rows + offs_k[None, :], mask=w_bounds, other=0.0)
        x = tl.load(x_cols + offs_k[:, None] * stride_xk, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if SHARED:
            acc = mma(w_a, x, acc, INPUT_PRECISION, UPCAST, FMA)
            acc_b = mma(w_b, x, acc_b, INPUT_PRECISION, UPCAST, FMA)
        else:
            acc = mma(_lerp_weight(w_a, w_b, alpha, ACC_DTYPE), x, acc, INPUT_PRECISION, UPCAST, FMA)

    if not SHARED:
        acc_b = acc
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    _store_outputs(
        acc,
        acc_b,
        y_ptrs,
        in_m[:, None] & in_n[None, :],
        offs_m,
        in_m,
        bias_a_ptr,
        bias_b_ptr,
        alphas_ptr,
        pid_a,
        NUM_ALPHAS,
        stride_ya,
        HAS_BIAS,
        SHARED,
        ACC_DTYPE,
    )


# ---------------------------------------------------------------------------------------------------------------
# Conv: implicit GEMM; grid axis 1 is the group, axis 2 the alpha
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _interpolated_conv_kernel(
    x_ptr,
    w_a_ptr,
    w_b_ptr,
    bias_a_ptr,
    bias_b_ptr,
    alphas_ptr,
    y_ptr,
    M,
    N,
    K,
    NUM_ALPHAS,  # C_out/groups, batch*OH*OW, C_in/groups*KH*KW, A
    C_G,
    H,
    W,
    OH,
    OW,
    sx_a,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    sy_a,
    sy_n,
    sy_c,
    sy_h,
    sy_w,
    sw_o,
    STRIDE_H,
    STRIDE_W,
    PAD_H,
    PAD_W,
    DIL_H,
    DIL_W,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SHARED: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    FMA: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """y[a][n, g*M + o, p, q] = sum_{c, r, s} W(alpha_a)[g*M + o, c, r, s] * x[a][n, g*C_G + c, p*st - pad + r*dil,
    q*st - pad + s*dil] + b(alpha_a)[g*M + o]; see the module docstring for SHARED."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    pid_a = tl.program_id(2)  # 0 in the SHARED mode
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    out_channel = group * M + offs_m
    w_rows = out_channel[:, None] * sw_o  # both weights contiguous: (C_out, C_G*KH*KW)
    out_w = offs_n % OW
    out_h = (offs_n // OW) % OH
    batch = offs_n // (OW * OH)
    h0 = out_h * STRIDE_H - PAD_H
    w0 = out_w * STRIDE_W - PAD_W
    x_cols = x_ptr + index(pid_a, INDEX_64) * sx_a + batch * sx_n + (group * C_G) * sx_c + h0 * sx_h + w0 * sx_w
    if not SHARED:
        alpha = tl.load(alphas_ptr + pid_a)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if SHARED:
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        w_bounds = in_m[:, None] & in_k[None, :]
        w_a = tl.load(w_a_ptr + w_rows + offs_k[None, :], mask=w_bounds, other=0.0)
        w_b = tl.load(w_b_ptr + w_rows + offs_k[None, :], mask=w_bounds, other=0.0)
        x = im2col_tile(x_cols, offs_k, in_k, in_n, h0, w0, H, W, sx_c, sx_h, sx_w, DIL_H, DIL_W, KH, KW)
        if SHARED:
            acc = mma(w_a, x, acc, INPUT_PRECISION, UPCAST, FMA)
            acc_b = mma(w_b, x, acc_b, INPUT_PRECISION, UPCAST, FMA)
        else:
            acc = mma(_lerp_weight(w_a, w_b, alpha, ACC_DTYPE), x, acc, INPUT_PRECISION, UPCAST, FMA)

    if not SHARED:
        acc_b = acc
    y_ptrs = y_ptr + (out_channel * sy_c)[:, None] + (batch * sy_n + out_h * sy_h + out_w * sy_w)[None, :]
    _store_outputs(
        acc,
        acc_b,
        y_ptrs,
        in_m[:, None] & in_n[None, :],
        out_channel,
        in_m,
        bias_a_ptr,
        bias_b_ptr,
        alphas_ptr,
        pid_a,
        NUM_ALPHAS,
        sy_a,
        HAS_BIAS,
        SHARED,
        ACC_DTYPE,
    )


# ---------------------------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------------------------


def _fits_two_accumulators(config: triton.Config, fma: bool) -> bool:
    """Whether the shared mode's two accumulators fit this tile without spilling (checked with ptxas on sm_90).

    Tensor cores: at most 128 float32 accumulator registers a thread for both (so 128 x 128 needs 8 warps).
    FMA (float64): the (BLOCK_M, BLOCK_K, BLOCK_N) product is in registers too; only 32 x 32 fits.
    """
    outputs = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
    if fma:
        return outputs <= 32 * 32
    return 2 * outputs <= 128 * 32 * config.num_warps


# CUDA's limit on grid axes 1 and 2, which hold the alphas of the per-alpha mode.
_MAX_GRID_ALPHAS = 65535


def _check_alpha_grid(num_alphas: int, shared: bool, device: torch.device) -> None:
    if not shared and device.type == "cuda" and num_alphas > _MAX_GRID_ALPHAS:
        raise ValueError(
            f"the Triton kernels take at most {_MAX_GRID_ALPHAS} alphas with per-alpha inputs "
            f"(a CUDA grid axis), got {num_alphas}"
        )


def _bias_only(
    shape: tuple[int, ...], alphas: Tensor, bias_a: Tensor | None, bias_b: Tensor | None, like: Tensor, bias_dim: int
) -> Tensor:
    """The output of a problem with an empty reduction (or nothing to compute): the interpolated bias, or zeros.
    ``bias_dim`` is the output dimension that holds the channels."""
    y = like.new_zeros(shape)
    if bias_a is not None and y.numel():
        coef = alphas.to(accumulator_dtype(like.dtype))[:, None]
        bias = (1 - coef) * bias_a.to(coef.dtype) + coef * bias_b.to(coef.dtype)  # (A, out)
        y += bias.reshape(
            bias.shape[0], *([1] * (bias_dim - 1)), bias.shape[1], *([1] * (len(shape) - bias_dim - 1))
        ).to(like.dtype)
    return y


# ---------------------------------------------------------------------------------------------------------------
# Public launch functions
# ---------------------------------------------------------------------------------------------------------------


def interpolated_linear_forward(
    input: Tensor, weight_a: Tensor, weight_b: Tensor, alphas: Tensor, bias_a: Tensor | None, bias_b: Tensor | None
) -> Tensor:
    """For each alpha i: ``F.linear(x_i, (1 - a_i) W_a + a_i W_b, (1 - a_i) b_a + a_i b_b)``, in one launch.

    input: (A, *, in) (one input per alpha) or (1, *, in) (shared); weight_a, weight_b: (out, in);
    alphas: (A,), any floating dtype; biases: (out,) or both None. Tensors one dtype (float16,
    bfloat16, float32, float64) and one device (CUDA, or CPU under TRITON_INTERPRET=1), as the op
    checks. Returns (A, *, out), contiguous, in the input's dtype.
    """
    num_alphas = alphas.shape[0]
    n_out, k_in = weight_a.shape
    batch = input.shape[1:-1]
    rows = batch.numel()
    out_shape = (num_alphas, *batch, n_out)
    if rows == 0 or n_out == 0 or k_in == 0:
        return _bias_only(out_shape, alphas, bias_a, bias_b, input, len(out_shape) - 1)
    shared = input.shape[0] == 1 and num_alphas > 1
    _check_alpha_grid(num_alphas, shared, input.device)
    x = input.reshape(input.shape[0], rows, k_in)
    weight_a, weight_b = weight_a.contiguous(), weight_b.contiguous()
    bias_a = bias_a.contiguous() if bias_a is not None else None
    bias_b = bias_b.contiguous() if bias_b is not None else None
    coefs = alphas.to(accumulator_dtype(input.dtype)).contiguous()
    y = torch.empty(out_shape, dtype=input.dtype, device=input.device)
    M, N, K = n_out, rows, k_in

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), 1 if shared else num_alphas)

    # C[a] = y[a]^T: its (m, n) element is y[a, n, m]
    args = (
        weight_a,
        weight_b,
        x,
        y,
        bias_a,
        bias_b,
        coefs,
        M,
        N,
        K,
        num_alphas,
        weight_a.stride(0),
        x.stride(0),
        x.stride(1),
        x.stride(2),
        rows * n_out,
        1,
        n_out,
    )
    kwargs = dict(
        HAS_BIAS=bias_a is not None, SHARED=shared, **dtype_options(input.dtype, linear_allows_tf32(), x, y, weight_a)
    )
    launch(
        _interpolated_gemm_kernel,
        ("M", "N", "K", "NUM_ALPHAS", "stride_xk"),
        grid,
        args,
        kwargs,
        input.device,
        _fits_two_accumulators if shared else None,
    )
    return y


def interpolated_conv2d_forward(
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
    """For each alpha i: ``conv2d(x_i, (1 - a_i) W_a + a_i W_b, (1 - a_i) b_a + a_i b_b, stride, padding,
    dilation, groups)`` (zero padding) as one implicit GEMM.

    input: (A or 1, N, C, H, W), any strides; weight_a, weight_b: (C_out, C/groups, kH, kW); alphas:
    (A,). Returns (A, N, C_out, OH, OW), contiguous, in the input's dtype. Contract otherwise as in
    :func:`interpolated_linear_forward`.
    """
    num_alphas = alphas.shape[0]
    c_out, c_g, kh, kw = weight_a.shape
    oh, ow = conv_output_size(input, weight_a, stride, padding, dilation)
    _, nb, _, h, w = input.shape
    out_shape = (num_alphas, nb, c_out, oh, ow)
    M, N, K = c_out // groups, nb * oh * ow, c_g * kh * kw
    if M == 0 or N == 0 or K == 0:
        return _bias_only(out_shape, alphas, bias_a, bias_b, input, 2)
    shared = input.shape[0] == 1 and num_alphas > 1
    _check_alpha_grid(num_alphas, shared, input.device)
    weight_a, weight_b = weight_a.contiguous(), weight_b.contiguous()
    bias_a = bias_a.contiguous() if bias_a is not None else None
    bias_b = bias_b.contiguous() if bias_b is not None else None
    coefs = alphas.to(accumulator_dtype(input.dtype)).contiguous()
    y = torch.empty(out_shape, dtype=input.dtype, device=input.device)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), groups, 1 if shared else num_alphas)

    args = (
        input,
        weight_a,
        weight_b,
        bias_a,
        bias_b,
        coefs,
        y,
        M,
        N,
        K,
        num_alphas,
        c_g,
        h,
        w,
        oh,
        ow,
        *input.stride(),
        *y.stride(),
        weight_a.stride(0),
        *conv_geometry(stride, padding, dilation),
    )
    kwargs = dict(
        KH=kh,
        KW=kw,
        HAS_BIAS=bias_a is not None,
        SHARED=shared,
        **dtype_options(input.dtype, conv_allows_tf32(), input, y, weight_a),
    )
    launch(
        _interpolated_conv_kernel,
        ("M", "N", "K", "NUM_ALPHAS", "KH", "KW", "STRIDE_H", "STRIDE_W"),
        grid,
        args,
        kwargs,
        input.device,
        _fits_two_accumulators if shared else None,
    )
    return y


__all__ = ["interpolated_linear_forward", "interpolated_conv2d_forward"]
