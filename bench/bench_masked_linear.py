"""Masked-weight linear and conv, forward + backward, on a GPU: dense, the torch way, and our Triton kernels.

Three ways, timed in the same process on the same tensors (``triton.testing.do_bench``, median):

- dense: ``F.linear(x, w, b)`` / ``F.conv2d`` without a mask (cuBLAS / cuDNN): the floor;
- torch way: ``F.linear(x, w * m, b)``: materialises ``w * m`` forward, and its backward masks dW;
- ours: ``lth_sparse.ops.masked_linear`` / ``masked_conv2d`` with ``LTH_SPARSE_BACKEND=triton``
  (the mask applied on load, dW masked in the epilogue, bias fused).

Shapes: LeNet-300-100 layers at batch 60, VGG/ResNet 3x3 convs (64-512 channels) both
as convs and as the GEMMs an im2col would give, and a transformer MLP (4096 x 16384, 8192 tokens);
float32 (TF32 off, as torch's default for matmul), bfloat16, float16; density 0.2 (80% pruned).
Prints a table with the target ratios (ours / dense <= 1.10, torch way / ours >= 1.3 where
memory-bound) and the peak memory of one step, and writes ``bench/results/masked_linear-<gpu>.json``.

    python bench/bench_masked_linear.py [--only linear|conv] [--dtypes float32,bfloat16,float16] [--quick]
    TRITON_INTERPRET=1 python bench/bench_masked_linear.py --interpret-smoke   # no GPU: proves the script runs

Without a GPU it says so and exits 0. ``--interpret-smoke`` runs one tiny linear and one tiny conv
through the interpreter on the CPU: its times are of the interpreter, meaningless, and not written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--interpret-smoke" in sys.argv:  # Triton decides when kernels are defined whether they are interpreted
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402

DENSITY = 0.2

# (name, tokens, in_features, out_features)
LINEAR_SHAPES = [
    ("lenet300 fc1", 60, 784, 300),
    ("lenet300 fc2", 60, 300, 100),
    ("vgg conv 64 @56 as GEMM", 32 * 56 * 56, 64 * 9, 64),
    ("resnet conv 128 @28 as GEMM", 32 * 28 * 28, 128 * 9, 128),
    ("vgg conv 256 @28 as GEMM", 32 * 28 * 28, 256 * 9, 256),
    ("resnet conv 512 @7 as GEMM", 32 * 7 * 7, 512 * 9, 512),
    ("mlp up 4096->16384", 8192, 4096, 16384),
    ("mlp down 16384->4096", 8192, 16384, 4096),
]
# (name, batch, channels in, channels out, spatial size, stride)
CONV_SHAPES = [
    ("conv 3x3 64->64 @56", 32, 64, 64, 56, 1),
    ("conv 3x3 128->128 @28", 32, 128, 128, 28, 1),
    ("conv 3x3 256->256 @14", 32, 256, 256, 14, 1),
    ("conv 3x3 512->512 @7", 32, 512, 512, 7, 1),
    ("conv 3x3 128->256 @28 s2", 32, 128, 256, 28, 2),
]
QUICK = {"lenet300 fc1", "vgg conv 64 @56 as GEMM", "mlp up 4096->16384", "conv 3x3 64->64 @56", "conv 3x3 512->512 @7"}


def masked_linear_ours():
    """Our masked linear behind the op's dispatch (run with ``LTH_SPARSE_BACKEND=triton``)."""
    from lth_sparse.ops.masked_linear import masked_linear

    return masked_linear, "lth_sparse.ops.masked_linear (LTH_SPARSE_BACKEND=triton)"


def masked_conv2d_ours():
    """Our masked conv behind the op's dispatch (run with ``LTH_SPARSE_BACKEND=triton``)."""
    from lth_sparse.ops.masked_conv2d import masked_conv2d

    return masked_conv2d, "lth_sparse.ops.masked_conv2d (LTH_SPARSE_BACKEND=triton)"


def make_step(forward, leaves, grad):
    def step():
        forward().backward(grad)

    return step


def measure(step, leaves, device, timer) -> tuple[float, float]:
    """(median ms of one forward + backward, peak MB above what was allocated before)."""
    step()  # autotune and compile outside the timing
    for t in leaves:
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        for t in leaves:
            t.grad = None
    else:
        peak = float("nan")
    return timer(step, leaves), peak


def max_relative_error(ours, theirs, leaves, grad) -> float:
    """Largest |ours - theirs| / max|theirs| over the output and the gradients: the rows time correct kernels."""
    results = []
    for forward in (ours, theirs):
        for t in leaves:
            t.grad = None
        y = forward()
        y.backward(grad)
        results.append([y.detach().double()] + [t.grad.double() for t in leaves])
    for t in leaves:
        t.grad = None
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(*results))


def gpu_timer(step, leaves):
    import triton.testing

    return triton.testing.do_bench(step, grad_to_none=leaves, return_mode="median")


def cpu_timer(step, leaves, repeats=3):
    times = []
    for _ in range(repeats):
        for t in leaves:
            t.grad = None
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def linear_row(name, tokens, fin, fout, dtype, device, timer, ours):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, fin, device=device, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(fout, fin, device=device, dtype=dtype, generator=g) / fin**0.5).requires_grad_()
    b = torch.zeros(fout, device=device, dtype=dtype).requires_grad_()
    m = torch.rand(fout, fin, device=device, generator=g) < DENSITY
    grad = torch.randn(tokens, fout, device=device, dtype=dtype, generator=g)
    leaves = [x, w, b]
    ways = {
        "dense": lambda: F.linear(x, w, b),
        "torch_way": lambda: F.linear(x, w * m, b),
        "ours": lambda: ours(x, w, m, b),
    }
    out = {
        "kind": "linear",
        "shape": name,
        "M": tokens,
        "K": fin,
        "N": fout,
        "dtype": str(dtype).split(".")[-1],
        "flops": 6 * tokens * fin * fout,
    }
    for way, fwd in ways.items():
        out[f"{way}_ms"], out[f"{way}_peak_mb"] = measure(make_step(fwd, leaves, grad), leaves, device, timer)
    out["max_rel_err_vs_torch_way"] = max_relative_error(ways["ours"], ways["torch_way"], leaves, grad)
    return add_ratios(out)


def conv_row(name, batch, cin, cout, size, stride, dtype, device, timer, ours):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, cin, size, size, device=device, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(cout, cin, 3, 3, device=device, dtype=dtype, generator=g) / (9 * cin) ** 0.5).requires_grad_()
    b = torch.zeros(cout, device=device, dtype=dtype).requires_grad_()
    m = torch.rand(cout, cin, 3, 3, device=device, generator=g) < DENSITY
    out_size = (size + 2 - 3) // stride + 1
    grad = torch.randn(batch, cout, out_size, out_size, device=device, dtype=dtype, generator=g)
    leaves = [x, w, b]
    ways = {
        "dense": lambda: F.conv2d(x, w, b, stride, 1),
        "torch_way": lambda: F.conv2d(x, w * m, b, stride, 1),
        "ours": lambda: ours(x, w, m, b, stride, 1),
    }
    out = {
        "kind": "conv",
        "shape": name,
        "M": batch * out_size**2,
        "K": cin * 9,
        "N": cout,
        "dtype": str(dtype).split(".")[-1],
        "flops": 6 * batch * out_size**2 * cin * 9 * cout,
    }
    for way, fwd in ways.items():
        out[f"{way}_ms"], out[f"{way}_peak_mb"] = measure(make_step(fwd, leaves, grad), leaves, device, timer)
    out["max_rel_err_vs_torch_way"] = max_relative_error(ways["ours"], ways["torch_way"], leaves, grad)
    return add_ratios(out)


COLUMNS = [
    ("shape", "shape", "s"),
    ("dtype", "dtype", "s"),
    ("dense_ms", "dense ms", ".3f"),
    ("torch_way_ms", "torch way ms", ".3f"),
    ("ours_ms", "ours ms", ".3f"),
    ("ours_over_dense", "ours/dense", ".2f"),
    ("torch_way_over_ours", "torch way/ours", ".2f"),
    ("ours_tflops", "ours TFLOP/s", ".1f"),
    ("dense_peak_mb", "peak MB dense", ".0f"),
    ("torch_way_peak_mb", "torch way", ".0f"),
    ("ours_peak_mb", "ours", ".0f"),
    ("max_rel_err_vs_torch_way", "rel err", ".1e"),
]


def add_ratios(row: dict) -> dict:
    row["ours_over_dense"] = row["ours_ms"] / row["dense_ms"]
    row["torch_way_over_ours"] = row["torch_way_ms"] / row["ours_ms"]
    row["ours_tflops"] = row["flops"] / (row["ours_ms"] * 1e-3) / 1e12
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the benchmark; returns its rows (none without a GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["linear", "conv"], default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--quick", action="store_true", help="a few shapes only; writes nothing")
    parser.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="one tiny linear and conv under TRITON_INTERPRET=1 on the CPU; nothing is written",
    )
    args = parser.parse_args(argv)
    # read by the dispatch at every call; set here, not on import (python -m bench imports this module
    # and restores the environment after each benchmark)
    os.environ["LTH_SPARSE_BACKEND"] = "triton"

    if args.interpret_smoke:
        device = torch.device("cpu")
        ours_linear, how_linear = masked_linear_ours()
        ours_conv, how_conv = masked_conv2d_ours()
        print(
            f"interpreter smoke run on the CPU (times are the interpreter's, not a measurement): "
            f"{how_linear}; {how_conv}"
        )
        rows = [
            linear_row("smoke linear 24x40->48", 24, 40, 48, torch.float32, device, cpu_timer, ours_linear),
            conv_row("smoke conv 4->6 @6", 2, 4, 6, 6, 1, torch.float32, device, cpu_timer, ours_conv),
        ]
        print_table(COLUMNS, rows)
        return rows

    if not torch.cuda.is_available():
        print(
            "bench_masked_linear.py needs a CUDA GPU (none found); nothing measured. "
            "Use --interpret-smoke to check that the script runs."
        )
        return []

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 in full precision for all three ways
    torch.backends.cudnn.allow_tf32 = False
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    ours_linear, how_linear = masked_linear_ours()
    ours_conv, how_conv = masked_conv2d_ours()
    print(f"{torch.cuda.get_device_name(device)}; density {DENSITY}; ours = {how_linear}, {how_conv}")
    rows = []
    for dtype in dtypes:
        if args.only in (None, "linear"):
            for shape in LINEAR_SHAPES:
                if not args.quick or shape[0] in QUICK:
                    rows.append(linear_row(*shape, dtype, device, gpu_timer, ours_linear))
        if args.only in (None, "conv"):
            for shape in CONV_SHAPES:
                if not args.quick or shape[0] in QUICK:
                    rows.append(conv_row(*shape, dtype, device, gpu_timer, ours_conv))
    print_table(COLUMNS, rows)
    missed = [r for r in rows if r["ours_over_dense"] > 1.10]
    print(
        f"\nours <= 1.10x dense: {len(rows) - len(missed)}/{len(rows)} rows"
        + (
            ""
            if not missed
            else "; missed: " + ", ".join(f"{r['shape']} {r['dtype']} ({r['ours_over_dense']:.2f}x)" for r in missed)
        )
    )
    lower_peak = sum(r["ours_peak_mb"] < r["torch_way_peak_mb"] for r in rows)
    print(f"peak memory below the torch way: {lower_peak}/{len(rows)} rows")
    if not args.quick:  # a quick run never replaces the recorded results
        write_results(
            "masked_linear", "cuda", rows, {"density": DENSITY, "tf32": False, "ours": [how_linear, how_conv]}
        )
    return rows


if __name__ == "__main__":
    main()
