"""Triton kernels of the masked-weight matmul: ``y = x (W*M)^T + b`` and its backward, for linear and conv layers.

One idea throughout: the mask is applied where the weight tile is loaded, in
registers (``tl.where(mask, w, 0)``), so no ``W*M`` tensor is ever written;
the weight gradient is masked in the epilogue, before it is stored; the bias is
added in the forward epilogue and its gradient is summed inside the weight
gradient kernel. Masks are read as bytes (``mask.view(torch.uint8)`` costs
nothing); a pruned weight is replaced, not multiplied, so inf or NaN in pruned
weights never reach the output. Accumulation is in float32 (float64 for float64
inputs); outputs have the input dtype. float32 uses TF32 only where torch allows
it (``torch.backends.cuda.matmul.allow_tf32`` for linear layers,
``torch.backends.cudnn.allow_tf32`` for convs, the flags torch's own linear and
conv obey) and never under the interpreter.

The masked weight is always the *left* operand A of ``C = A @ B``: the outputs
of the forward and input-gradient products are computed transposed (``y^T =
(W*M) x^T``, ``dX^T = (W*M)^T dY^T``) and stored through strides. On Hopper,
``wgmma`` takes A from registers, where the mask was just applied, and B from
shared memory; a masked B would have to be written back to shared memory
first (checked on the sm_90 TTGIR: a masked B adds a ``local_alloc`` round
trip per K step, a masked A does not).

Linear (``masked_linear_forward`` / ``masked_linear_backward``): one strided
GEMM kernel serves all three products by the strides it is given, so
transposes are never copied:

    forward  y^T  = (W*M) @ x^T      A = W   (masked on load), B = x^T,  bias in the epilogue (per row of C)
    input    dX^T = (W*M)^T @ dY^T   A = W^T (masked on load), B = dY^T
    weight   dW   = (dY^T @ x) * M   A = dY^T, B = x, mask in the epilogue, db = row sums of A

Conv (``masked_conv2d_forward`` / ``masked_conv2d_backward``): implicit GEMM,
not ``F.unfold`` + GEMM. The unfolded input of a 3x3 conv is 9 times the input
(for a VGG layer, batch 64 at 56x56x256 in bfloat16: 103 MB of input, 925 MB of
columns), written once and read back once more in every pass: that alone is
more traffic than the whole cuDNN conv, and more peak memory than the torch
way, so it could be neither within 1.10x of the dense conv's time nor lower in
peak memory than the torch way, the two targets of these kernels.
The implicit GEMM computes each operand element's input address from its
(batch, row, column) and (channel, kernel row, kernel column) indices in the
tile load, with padding handled by the load mask, so nothing but the output is
written. Three kernels, one per product:

    forward  y[n, o, p, q]   C[o, (n,p,q)] = (W*M)[o, (c,r,s)] @ im2col(x)[(c,r,s), (n,p,q)], bias per o
    input    dX[n, c, h, w]  C[c, (n,h,w)] = (W*M)^T[c, (o,r,s)] @ dY gathered as a transposed conv
             (taps whose output position is off the stride grid load as zero)
    weight   dW[o, c, r, s]  C[o, (c,r,s)] = dY[o, (n,p,q)] @ im2col(x)^T, mask in the epilogue, db = row sums

Groups are the grid's second axis, so there is no Python loop over groups. The
input-gradient kernel does stride^2 times the useful work on strided convs (the
off-grid taps still pass through the tensor cores); those are a handful of
downsampling layers in a ResNet. The speed and memory claims above are
arguments, not measurements: this module is verified for correctness under the
Triton interpreter, and compiles for sm_90; the GPU numbers come from
``bench/bench_masked_linear.py`` on a GPU.

Weight gradients with a small output and a long reduction (conv layers: 64x576
outputs, 200k-long sums) split the reduction over a third grid axis
(``SPLIT_K``) into a float32 workspace that is summed after, so the GPU is not
left with a few dozen busy programs.

float64: Triton 3.8's sm_90 backend cannot feed a float64 ``tl.dot`` from a
register-modified operand (an assertion in its MMAv2 lowering: "fp64 don't
support largeK MMA"), which is exactly the masked operand. float64 therefore
multiplies with a broadcast-and-sum on the CUDA cores (``FMA``), on every
device, interpreter included, so the tests run the GPU's code path. It is a
correctness path for float64 research code, not a fast one.

Tiles: ``@triton.autotune`` over the usual GEMM tiles on a GPU (keyed on the
problem sizes, the operand layout and dtypes); small tiles for float64. Under
``TRITON_INTERPRET=1`` autotuning is skipped for one fixed small tile, and
bfloat16 operands are widened to float32 before ``tl.dot`` because the
interpreter's ``tl.dot`` gets bfloat16 wrong (products of bfloat16 values are
exact in float32, so the numbers are those of the GPU path).
``TRITON_INTERPRET`` must be set before this module is imported: Triton decides
when the kernels are defined whether they are interpreted. The tiles, their
launch and the tile functions shared with :mod:`lth_sparse.kernels.interpolate`
are in ``kernels/_tiles.py``.

Index arithmetic is 32-bit unless a tensor spans 2**31 elements, then 64-bit.
0-size problems return without launching.
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
# Device functions of the split-K reduction
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _k_tile_range(pid_k, K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """The K tiles of split ``pid_k`` (all of them when SPLIT_K == 1); a split may get none."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    start = pid_k * per_split
    return start, tl.minimum(start + per_split, k_tiles)


# ---------------------------------------------------------------------------------------------------------------
# Linear: one strided GEMM for y^T, dX^T and dW
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _masked_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    a_mask_ptr,
    c_mask_ptr,
    row_sum_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_amm,
    stride_amk,
    stride_cs,
    stride_cm,
    stride_cn,
    stride_cmm,
    stride_cmn,
    stride_rs,
    HAS_BIAS: tl.constexpr,
    MASK_A: tl.constexpr,
    MASK_C: tl.constexpr,
    ROW_SUM: tl.constexpr,
    SPLIT_K: tl.constexpr,
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
    """C[s] = (A * Ma)[:, Ks] @ B[Ks, :] (+ bias[:, None]) (* Mc); optionally row_sum[s] = A[:, Ks].sum(1)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    a_rows = a_ptr + offs_m[:, None] * stride_am
    b_cols = b_ptr + offs_n[None, :] * stride_bn
    if MASK_A:
        mask_rows = a_mask_ptr + offs_m[:, None] * stride_amm

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if ROW_SUM:
        row_sum = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    k_start, k_end = _k_tile_range(pid_k, K, BLOCK_K, SPLIT_K)
    for kt in range(k_start, k_end):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        a_bounds = in_m[:, None] & in_k[None, :]
        a = tl.load(a_rows + offs_k[None, :] * stride_ak, mask=a_bounds, other=0.0)
        if MASK_A:
            keep = tl.load(mask_rows + offs_k[None, :] * stride_amk, mask=a_bounds, other=0)
            a = tl.where(keep != 0, a, 0.0)
        b = tl.load(b_cols + offs_k[:, None] * stride_bk, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if ROW_SUM:
            if pid_n == 0:  # one column of programs sums, the others skip the extra reduction
                row_sum += tl.sum(a.to(ACC_DTYPE), axis=1)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST, FMA)

    c_bounds = in_m[:, None] & in_n[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_m, mask=in_m, other=0.0).to(ACC_DTYPE)[:, None]
    if MASK_C:
        keep_c = tl.load(
            c_mask_ptr + offs_m[:, None] * stride_cmm + offs_n[None, :] * stride_cmn, mask=c_bounds, other=0
        )
        acc = tl.where(keep_c != 0, acc, 0.0)
    c_ptrs = c_ptr + pid_k * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_bounds)
    if ROW_SUM:
        if pid_n == 0:
            tl.store(row_sum_ptr + pid_k * stride_rs + offs_m, row_sum.to(row_sum_ptr.dtype.element_ty), mask=in_m)


# ---------------------------------------------------------------------------------------------------------------
# Conv: implicit GEMM, one kernel per product; the grid's second axis is the group
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _conv_forward_kernel(
    x_ptr,
    w_ptr,
    w_mask_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K,  # C_out/groups, batch*OH*OW, C_in/groups*KH*KW
    C_G,
    H,
    W,
    OH,
    OW,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
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
    """y[n, g*M + o, p, q] = sum_{c, r, s} (W*M)[g*M + o, c, r, s] * x[n, g*C_G + c, p*st - pad + r*dil, ...] + b."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    out_channel = group * M + offs_m
    w_rows = out_channel[:, None] * sw_o  # weight and mask are contiguous: (C_out, C_G*KH*KW)
    out_w = offs_n % OW
    out_h = (offs_n // OW) % OH
    batch = offs_n // (OW * OH)
    h0 = out_h * STRIDE_H - PAD_H
    w0 = out_w * STRIDE_W - PAD_W
    x_cols = x_ptr + batch * sx_n + (group * C_G) * sx_c + h0 * sx_h + w0 * sx_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        a_bounds = in_m[:, None] & in_k[None, :]
        w_offsets = w_rows + offs_k[None, :]
        a = tl.load(w_ptr + w_offsets, mask=a_bounds, other=0.0)
        keep = tl.load(w_mask_ptr + w_offsets, mask=a_bounds, other=0)
        a = tl.where(keep != 0, a, 0.0)
        b = im2col_tile(x_cols, offs_k, in_k, in_n, h0, w0, H, W, sx_c, sx_h, sx_w, DIL_H, DIL_W, KH, KW)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST, FMA)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + out_channel, mask=in_m, other=0.0).to(ACC_DTYPE)[:, None]
    y_ptrs = y_ptr + (out_channel * sy_c)[:, None] + (batch * sy_n + out_h * sy_h + out_w * sy_w)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])


@triton.jit
def _conv_input_grad_kernel(
    dy_ptr,
    w_ptr,
    w_mask_ptr,
    dx_ptr,
    M,
    N,
    K,  # C_in/groups, batch*H*W, C_out/groups*KH*KW
    C_OG,
    H,
    W,
    OH,
    OW,
    sy_n,
    sy_c,
    sy_h,
    sy_w,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    sw_o,
    STRIDE_H,
    STRIDE_W,
    PAD_H,
    PAD_W,
    DIL_H,
    DIL_W,
    KH: tl.constexpr,
    KW: tl.constexpr,
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
    """dx[n, g*M + c, h, w] = sum_{o, r, s} (W*M)[g*C_OG + o, c, r, s] * dy[n, g*C_OG + o, p, q]
    over the taps with p*st = h + pad - r*dil (and likewise q): a transposed conv as a GEMM."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    w_rows = (offs_m * (KH * KW))[:, None]
    pos_w = offs_n % W
    pos_h = (offs_n // W) % H
    batch = offs_n // (W * H)
    dy_cols = dy_ptr + batch * sy_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        tap_w = offs_k % KW
        tap_h = (offs_k // KW) % KH
        out_channel = group * C_OG + offs_k // (KW * KH)
        a_bounds = in_m[:, None] & in_k[None, :]
        w_offsets = w_rows + (out_channel * sw_o + tap_h * KW + tap_w)[None, :]
        a = tl.load(w_ptr + w_offsets, mask=a_bounds, other=0.0)
        keep = tl.load(w_mask_ptr + w_offsets, mask=a_bounds, other=0)
        a = tl.where(keep != 0, a, 0.0)
        h_num = pos_h[None, :] + PAD_H - (tap_h * DIL_H)[:, None]
        w_num = pos_w[None, :] + PAD_W - (tap_w * DIL_W)[:, None]
        # negative h_num are masked; their (then meaningless) quotients are never dereferenced
        p = h_num // STRIDE_H
        q = w_num // STRIDE_W
        on_grid = (h_num >= 0) & (w_num >= 0) & (h_num % STRIDE_H == 0) & (w_num % STRIDE_W == 0) & (p < OH) & (q < OW)
        b = tl.load(
            dy_cols[None, :] + (out_channel * sy_c)[:, None] + p * sy_h + q * sy_w,
            mask=in_k[:, None] & in_n[None, :] & on_grid,
            other=0.0,
        )
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST, FMA)

    in_channel = group * M + offs_m
    dx_ptrs = dx_ptr + (in_channel * sx_c)[:, None] + (batch * sx_n + pos_h * sx_h + pos_w * sx_w)[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=in_m[:, None] & in_n[None, :])


@triton.jit
def _conv_weight_grad_kernel(
    dy_ptr,
    x_ptr,
    w_mask_ptr,
    dw_ptr,
    db_ptr,
    M,
    N,
    K,  # C_out/groups, C_in/groups*KH*KW, batch*OH*OW
    C_G,
    H,
    W,
    OH,
    OW,
    sy_n,
    sy_c,
    sy_h,
    sy_w,
    sx_n,
    sx_c,
    sx_h,
    sx_w,
    sw_o,
    stride_ws,
    stride_bs,
    STRIDE_H,
    STRIDE_W,
    PAD_H,
    PAD_W,
    DIL_H,
    DIL_W,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ROW_SUM: tl.constexpr,
    SPLIT_K: tl.constexpr,
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
    """dW[g*M + o, j] = Mask[g*M + o, j] * sum_{n, p, q} dy[n, g*M + o, p, q] * im2col(x)[(n, p, q), j] over
    split s of the (n, p, q) sum; db[g*M + o] = the same sum of dy alone."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    pid_k = tl.program_id(2)
    pid_m, pid_n = tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = index(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INDEX_64)
    offs_n = index(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INDEX_64)
    in_m = offs_m < M
    in_n = offs_n < N
    out_channel = group * M + offs_m
    dy_rows = dy_ptr + out_channel * sy_c
    tap_w = offs_n % KW
    tap_h = (offs_n // KW) % KH
    in_channel = group * C_G + offs_n // (KW * KH)
    x_cols = x_ptr + in_channel * sx_c + tap_h * DIL_H * sx_h + tap_w * DIL_W * sx_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if ROW_SUM:
        row_sum = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    k_start, k_end = _k_tile_range(pid_k, K, BLOCK_K, SPLIT_K)
    for kt in range(k_start, k_end):
        offs_k = index(kt * BLOCK_K + tl.arange(0, BLOCK_K), INDEX_64)
        in_k = offs_k < K
        out_w = offs_k % OW
        out_h = (offs_k // OW) % OH
        batch = offs_k // (OW * OH)
        a = tl.load(
            dy_rows[:, None] + (batch * sy_n + out_h * sy_h + out_w * sy_w)[None, :],
            mask=in_m[:, None] & in_k[None, :],
            other=0.0,
        )
        h0 = out_h * STRIDE_H - PAD_H
        w0 = out_w * STRIDE_W - PAD_W
        h = h0[:, None] + (tap_h * DIL_H)[None, :]
        w = w0[:, None] + (tap_w * DIL_W)[None, :]
        inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
        b = tl.load(
            x_cols[None, :] + (batch * sx_n + h0 * sx_h + w0 * sx_w)[:, None],
            mask=in_k[:, None] & in_n[None, :] & inside,
            other=0.0,
        )
        if ROW_SUM:
            if pid_n == 0:
                row_sum += tl.sum(a.to(ACC_DTYPE), axis=1)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST, FMA)

    bounds = in_m[:, None] & in_n[None, :]
    w_offsets = out_channel[:, None] * sw_o + offs_n[None, :]
    keep = tl.load(w_mask_ptr + w_offsets, mask=bounds, other=0)
    acc = tl.where(keep != 0, acc, 0.0)
    tl.store(dw_ptr + pid_k * stride_ws + w_offsets, acc.to(dw_ptr.dtype.element_ty), mask=bounds)
    if ROW_SUM:
        if pid_n == 0:
            tl.store(db_ptr + pid_k * stride_bs + out_channel, row_sum.to(db_ptr.dtype.element_ty), mask=in_m)


# ---------------------------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------------------------


def _as_bytes(mask: Tensor) -> Tensor:
    return mask.view(torch.uint8)


def _split_k(tiles: int, k_size: int, device: torch.device) -> int:
    """How many ways to split a long reduction so that a GPU with few output tiles is kept busy."""
    if device.type != "cuda" or k_size < 4096:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if tiles >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, tiles), k_size // 2048, 64))


def _nominal_tiles(m: int, n: int) -> int:
    return triton.cdiv(m, 128) * triton.cdiv(n, 128)


def _masked_gemm(
    a: Tensor,
    a_strides: tuple[int, int],
    b: Tensor,
    b_strides: tuple[int, int],
    c_strides: tuple[int, int],
    M: int,
    N: int,
    K: int,
    out_shape: tuple[int, ...],
    *,
    a_mask: Tensor | None = None,
    a_mask_strides=(0, 0),
    c_mask: Tensor | None = None,
    c_mask_strides=(0, 0),
    bias: Tensor | None = None,
    row_sum: bool = False,
    split_k: int | None = None,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``C = (A * a_mask) @ B (+ bias[:, None]) (* c_mask)`` for strided A (M, K), B (K, N).

    C is a new contiguous tensor of ``out_shape`` in A's dtype, written through ``c_strides`` (its
    strides for the (M, N) view; a transposed view stores C^T). Returns C and, when ``row_sum``, A's
    row sums (M,). ``split_k`` (default: by ``_split_k``) splits the K loop over a grid axis into a
    float32 workspace, which is only done for C's own layout (``c_strides == (N, 1)``).
    """
    dtype, device = a.dtype, a.device
    if M == 0 or N == 0 or K == 0:
        c = a.new_zeros(out_shape)
        if bias is not None and N:
            c.as_strided((M, N), c_strides).add_(bias[:, None])
        sums = None
        if row_sum:  # an empty C (N == 0) still has the row sums of A
            sums = a.as_strided((M, K), a_strides).sum(1) if M and K else a.new_zeros(M)
        return c, sums
    if split_k is None:
        split_k = 1 if bias is not None else _split_k(_nominal_tiles(M, N), K, device)
    if split_k != 1 and (bias is not None or tuple(c_strides) != (N, 1)):
        raise ValueError("split_k > 1 needs no bias and C in its own (M, N) layout")
    if split_k == 1:
        c = torch.empty(out_shape, dtype=dtype, device=device)
        c_split_stride = 0
        sums = torch.empty(1, M, dtype=dtype, device=device) if row_sum else None
    else:
        c = torch.empty(split_k, M, N, dtype=accumulator_dtype(dtype), device=device)
        c_split_stride = c.stride(0)
        sums = torch.empty(split_k, M, dtype=accumulator_dtype(dtype), device=device) if row_sum else None

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), split_k)

    args = (
        a,
        b,
        c,
        bias,
        _as_bytes(a_mask) if a_mask is not None else None,
        _as_bytes(c_mask) if c_mask is not None else None,
        sums,
        M,
        N,
        K,
        a_strides[0],
        a_strides[1],
        b_strides[0],
        b_strides[1],
        a_mask_strides[0],
        a_mask_strides[1],
        c_split_stride,
        c_strides[0],
        c_strides[1],
        c_mask_strides[0],
        c_mask_strides[1],
        sums.stride(0) if sums is not None else 0,
    )
    kwargs = dict(
        HAS_BIAS=bias is not None,
        MASK_A=a_mask is not None,
        MASK_C=c_mask is not None,
        ROW_SUM=row_sum,
        SPLIT_K=split_k,
        **dtype_options(dtype, allow_tf32, a, b, c, a_mask, c_mask),
    )
    key = ("M", "N", "K", "stride_ak", "stride_bn", "stride_cm", "MASK_A", "MASK_C", "SPLIT_K")
    launch(_masked_gemm_kernel, key, grid, args, kwargs, device)
    if split_k > 1:
        c = c.sum(0).to(dtype).reshape(out_shape)
        sums = sums.sum(0, keepdim=True).to(dtype) if sums is not None else None
    return c, (sums[0] if sums is not None else None)


# ---------------------------------------------------------------------------------------------------------------
# Public launch functions: masked_linear
# ---------------------------------------------------------------------------------------------------------------


def masked_linear_forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor:
    """``input @ (weight * mask)^T + bias`` with the mask applied on load, the bias in the epilogue.

    input: (*, K); weight: (N, K); mask: bool (N, K); bias: (N,) or None; one dtype (float16, bfloat16,
    float32, float64), one device (CUDA, or CPU under TRITON_INTERPRET=1). Returns (*, N), contiguous,
    in that dtype.
    """
    n_out, k_in = weight.shape
    x = input.reshape(input.shape[:-1].numel(), k_in)
    rows = x.shape[0]
    bias = bias.contiguous() if bias is not None else None
    # y^T = (W*M) @ x^T, stored into y (rows, N) through transposed strides
    y, _ = _masked_gemm(
        weight,
        weight.stride(),
        x,
        (x.stride(1), x.stride(0)),
        (1, n_out),
        n_out,
        rows,
        k_in,
        (rows, n_out),
        a_mask=mask,
        a_mask_strides=mask.stride(),
        bias=bias,
        allow_tf32=linear_allows_tf32(),
    )
    return y.reshape(*input.shape[:-1], n_out)


def masked_linear_backward(
    grad: Tensor, input: Tensor, weight: Tensor, mask: Tensor, need_input: bool, need_weight: bool, need_bias: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad @ (W*M), (grad^T @ input) * M, grad summed over leading dims)``; unneeded ones are empty.

    grad: (*, N); input: (*, K); weight, mask: (N, K). The bias gradient is summed in the weight-gradient
    kernel when both are needed.
    """
    n_out, k_in = weight.shape
    g = grad.reshape(grad.shape[:-1].numel(), n_out)
    rows = g.shape[0]
    allow_tf32 = linear_allows_tf32()
    grad_input = grad_weight = grad_bias = grad.new_empty(0)
    if need_input:
        # dX^T = (W*M)^T @ dY^T, stored into dX (rows, K) through transposed strides
        w_t, m_t = (weight.stride(1), weight.stride(0)), (mask.stride(1), mask.stride(0))
        dx, _ = _masked_gemm(
            weight,
            w_t,
            g,
            (g.stride(1), g.stride(0)),
            (1, k_in),
            k_in,
            rows,
            n_out,
            (rows, k_in),
            a_mask=mask,
            a_mask_strides=m_t,
            allow_tf32=allow_tf32,
        )
        grad_input = dx.reshape(input.shape)
    if need_weight:
        x = input.reshape(rows, k_in)
        grad_weight, sums = _masked_gemm(
            g,
            (g.stride(1), g.stride(0)),
            x,
            x.stride(),
            (k_in, 1),
            n_out,
            k_in,
            rows,
            (n_out, k_in),
            c_mask=mask,
            c_mask_strides=mask.stride(),
            row_sum=need_bias,
            allow_tf32=allow_tf32,
        )
        if need_bias:
            grad_bias = sums
    if need_bias and not need_weight:
        grad_bias = g.sum(0) if rows else g.new_zeros(n_out)
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------------------------
# Public launch functions: masked_conv2d
# ---------------------------------------------------------------------------------------------------------------


def masked_conv2d_forward(
    input: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """``conv2d(input, weight * mask, bias, stride, padding, dilation, groups)`` as an implicit GEMM.

    input: (N, C, H, W) or (C, H, W), any strides; weight, mask: (C_out, C/groups, kH, kW). Returns
    (N, C_out, OH, OW) (or (C_out, OH, OW)), contiguous, in the input's dtype.
    """
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    c_out, c_g, kh, kw = weight.shape
    oh, ow = conv_output_size(x, weight, stride, padding, dilation)
    nb, _, h, w = x.shape
    weight, mask = weight.contiguous(), mask.contiguous()
    bias = bias.contiguous() if bias is not None else None
    M, N, K = c_out // groups, nb * oh * ow, c_g * kh * kw
    if M == 0 or N == 0 or K == 0:
        y = x.new_zeros(nb, c_out, oh, ow)
        if bias is not None:
            y += bias[:, None, None]
    else:
        y = torch.empty(nb, c_out, oh, ow, dtype=x.dtype, device=x.device)

        def grid(meta):
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), groups)

        args = (
            x,
            weight,
            _as_bytes(mask),
            bias,
            y,
            M,
            N,
            K,
            c_g,
            h,
            w,
            oh,
            ow,
            *x.stride(),
            *y.stride(),
            weight.stride(0),
            *conv_geometry(stride, padding, dilation),
        )
        kwargs = dict(
            KH=kh, KW=kw, HAS_BIAS=bias is not None, **dtype_options(x.dtype, conv_allows_tf32(), x, y, weight)
        )
        launch(_conv_forward_kernel, ("M", "N", "K", "KH", "KW", "STRIDE_H", "STRIDE_W"), grid, args, kwargs, x.device)
    return y.squeeze(0) if unbatched else y


def masked_conv2d_backward(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    mask: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(conv2d_input(grad, W*M), conv2d_weight(input, grad) * M, grad summed over batch and space)``.

    Shapes as in :func:`masked_conv2d_forward`, ``grad`` of the output's shape; unneeded results are empty.
    The bias gradient is summed in the weight-gradient kernel when both are needed.
    """
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    dy = grad.unsqueeze(0) if unbatched else grad
    c_out, c_g, kh, kw = weight.shape
    c_og = c_out // groups
    nb, _, h, w = x.shape
    oh, ow = dy.shape[-2:]
    weight, mask = weight.contiguous(), mask.contiguous()
    geometry = conv_geometry(stride, padding, dilation)
    allow_tf32 = conv_allows_tf32()
    grad_input = grad_weight = grad_bias = grad.new_empty(0)

    if need_input:
        M, N, K = c_g, nb * h * w, c_og * kh * kw
        if M == 0 or N == 0 or K == 0:
            dx = x.new_zeros(x.shape)
        else:
            dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)

            def grid(meta):
                return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), groups)

            args = (
                dy,
                weight,
                _as_bytes(mask),
                dx,
                M,
                N,
                K,
                c_og,
                h,
                w,
                oh,
                ow,
                *dy.stride(),
                *dx.stride(),
                weight.stride(0),
                *geometry,
            )
            kwargs = dict(KH=kh, KW=kw, **dtype_options(x.dtype, allow_tf32, dx, dy, weight))
            launch(
                _conv_input_grad_kernel,
                ("M", "N", "K", "KH", "KW", "STRIDE_H", "STRIDE_W"),
                grid,
                args,
                kwargs,
                x.device,
            )
        grad_input = dx.squeeze(0) if unbatched else dx

    if need_weight:
        grad_weight, sums = _conv_weight_grad(dy, x, mask, groups, geometry, need_bias, allow_tf32)
        if need_bias:
            grad_bias = sums
    if need_bias and not need_weight:
        grad_bias = dy.sum((0, 2, 3)) if dy.numel() else dy.new_zeros(c_out)
    return grad_input, grad_weight, grad_bias


def _conv_weight_grad(
    dy: Tensor,
    x: Tensor,
    mask: Tensor,
    groups: int,
    geometry: tuple[int, ...],
    row_sum: bool,
    allow_tf32: bool,
    split_k: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(conv2d_weight(x, dy) * mask, dy summed per channel or None)``; x, dy: 4-D; mask contiguous."""
    c_out, c_g, kh, kw = mask.shape
    nb, _, h, w = x.shape
    oh, ow = dy.shape[-2:]
    M, N, K = c_out // groups, c_g * kh * kw, nb * oh * ow
    dtype, device = x.dtype, x.device
    if M == 0 or N == 0 or K == 0:
        return x.new_zeros(mask.shape), ((dy.sum((0, 2, 3)) if K else x.new_zeros(c_out)) if row_sum else None)
    if split_k is None:
        split_k = _split_k(_nominal_tiles(M, N) * groups, K, device)
    work_dtype = dtype if split_k == 1 else accumulator_dtype(dtype)
    dw = torch.empty(split_k, *mask.shape, dtype=work_dtype, device=device)
    db = torch.empty(split_k, c_out, dtype=work_dtype, device=device) if row_sum else None

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), groups, split_k)

    args = (
        dy,
        x,
        _as_bytes(mask),
        dw,
        db,
        M,
        N,
        K,
        c_g,
        h,
        w,
        oh,
        ow,
        *dy.stride(),
        *x.stride(),
        N,
        dw.stride(0),
        db.stride(0) if db is not None else 0,
        *geometry,
    )
    kwargs = dict(KH=kh, KW=kw, ROW_SUM=row_sum, SPLIT_K=split_k, **dtype_options(dtype, allow_tf32, dy, x, dw))
    launch(
        _conv_weight_grad_kernel,
        ("M", "N", "K", "KH", "KW", "STRIDE_H", "STRIDE_W", "SPLIT_K"),
        grid,
        args,
        kwargs,
        device,
    )
    if split_k == 1:
        return dw[0], (db[0] if db is not None else None)
    return dw.sum(0).to(dtype), (db.sum(0).to(dtype) if db is not None else None)


__all__ = ["masked_linear_forward", "masked_linear_backward", "masked_conv2d_forward", "masked_conv2d_backward"]
