"""Masked linear and conv layers on the CPU, forward + backward: dense torch, the torch way, and ours.

Timed in one process on the same tensors, float32; the ways take turns in every repeat (15 repeats,
the order rotated each time); times are medians over the repeats, ratios the medians of the ratios
measured within each repeat, dense/ours with its quartiles over the repeats (the machine's noise):

- dense: ``F.linear(x, w, b)`` / ``F.conv2d`` with no mask at all (MKL / oneDNN): the bar to beat;
- torch way: ``F.linear(x, w * m, b)``: what a user writes to mask a layer (dW masked by autograd);
- ours: ``lth_sparse.ops.masked_linear`` / ``masked_conv2d`` as shipped (``auto``: the C++ backend
  picks its dense or sparse path per call);
- ours dense / ours sparse: the C++ backend held on one path, to find the crossover sparsity;
- floor (linear layers and the whole net): the same step with no product at all, the leaves only
  summed (``x.sum() + w.sum() + b.sum()``): what the autograd engine, the leaves' gradients and
  the timing loop cost whatever the layer does. ``dense / floor`` bounds the speed-up any masked
  layer could show against dense torch on that shape.

The weights hold +0.0 at their pruned entries, as a masked layer's weights do after every optimizer
step (``enforce_masks``); the dense path then uses the weight as it is instead of forming a masked copy.

Shapes: the LeNet-300-100 layers at batch 60, and the whole network; a 1024x1024 layer at
batch 256; two Conv-4 style 3x3 convs at batch 60. Sparsities 0% to 99%. Prints the ratios dense /
ours (above 1: ours is faster) and writes ``bench/results/masked_cpu-cpu.json`` with the crossover
sparsity per shape (the lowest sparsity from which the sparse path beats the dense one).

    python bench/bench_masked_cpu.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402
from lth_sparse.ops import _cpu, masked_conv2d, masked_linear  # noqa: E402

SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
# (name, kind, shape): linear (batch, in, out); conv (batch, C_in, C_out, size)
SHAPES = [
    ("lenet300 fc1 784->300, batch 60", "linear", (60, 784, 300)),
    ("lenet300 fc2 300->100, batch 60", "linear", (60, 300, 100)),
    ("lenet300 fc3 100->10, batch 60", "linear", (60, 100, 10)),
    ("lenet300 whole net, batch 60", "lenet", (60,)),
    ("1024x1024, batch 256", "linear", (256, 1024, 1024)),
    ("conv 3x3 64->64 @32, batch 60", "conv", (60, 64, 64, 32)),
    ("conv 3x3 128->128 @16, batch 60", "conv", (60, 128, 128, 16)),
]


def _time_interleaved(steps: dict, budget_s: float, repeats: int = 15) -> tuple[dict, list[dict]]:
    """Seconds per step of each way: (the medians over the repeats, the samples of every repeat).

    The ways take turns within every repeat, in an order rotated from one repeat to the next, so a
    machine that drifts (turbo, other load) drifts for all of them alike; ratios are taken per
    repeat (see ``_paired_ratio``)."""
    calls = {}
    for name, (step, path) in steps.items():
        with _cpu.held_on(path):
            for _ in range(3):
                step()
            start = time.perf_counter()
            step()
        once = max(time.perf_counter() - start, 1e-6)
        calls[name] = max(1, int(budget_s / repeats / len(steps) / once))
    names = list(steps)
    samples = []
    for r in range(repeats):
        sample = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step, path = steps[name]
            with _cpu.held_on(path):
                start = time.perf_counter()
                for _ in range(calls[name]):
                    step()
                sample[name] = (time.perf_counter() - start) / calls[name]
        samples.append(sample)
    return {name: statistics.median(s[name] for s in samples) for name in names}, samples


def _paired_ratio(samples: list[dict], over: str, under: str) -> float:
    """The median over repeats of over/under measured in the same repeat: steadier than a ratio of
    medians when the machine drifts between repeats."""
    return statistics.median(s[over] / s[under] for s in samples)


def _paired_quartiles(samples: list[dict], over: str, under: str) -> tuple[float, float]:
    """The first and third quartiles of the per-repeat ratios over/under: how far the machine's
    noise moves a ratio (a ratio near a target whose quartiles straddle it is not a clear result)."""
    ratios = [s[over] / s[under] for s in samples]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, q3


def _layer(kind: str, shape, sparsity: float, seed: int = 0):
    """(inputs and parameters requiring grad, mask(s), the three ways as functions of them)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        batch, fin, fout = shape
        x = torch.randn(batch, fin, generator=g)
        w = torch.randn(fout, fin, generator=g) * fin**-0.5
        b = torch.zeros(fout)
        m = torch.rand(fout, fin, generator=g) >= sparsity
        w = torch.where(m, w, 0)  # +0.0 where pruned (w * m would leave -0.0)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        ways = {
            "dense": lambda x, w, b: F.linear(x, w, b),
            "torch": lambda x, w, b: F.linear(x, w * m, b),
            "ours": lambda x, w, b: masked_linear(x, w, m, b),
            "floor": _floor,
        }
        return leaves, ways
    if kind == "conv":
        batch, cin, cout, size = shape
        x = torch.randn(batch, cin, size, size, generator=g)
        w = torch.randn(cout, cin, 3, 3, generator=g) * (cin * 9) ** -0.5
        b = torch.zeros(cout)
        m = torch.rand(w.shape, generator=g) >= sparsity
        w = torch.where(m, w, 0)  # +0.0 where pruned (w * m would leave -0.0)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        ways = {
            "dense": lambda x, w, b: F.conv2d(x, w, b, 1, 1),
            "torch": lambda x, w, b: F.conv2d(x, w * m, b, 1, 1),
            "ours": lambda x, w, b: masked_conv2d(x, w, m, b, 1, 1),
        }
        return leaves, ways
    # the whole LeNet-300-100: x -> 300 -> 100 -> 10, ReLU between
    (batch,) = shape
    dims = [(784, 300), (300, 100), (100, 10)]
    x = torch.randn(batch, 784, generator=g)
    ws = [torch.randn(o, i, generator=g) * i**-0.5 for i, o in dims]
    bs = [torch.zeros(o) for _, o in dims]
    ms = [torch.rand(w.shape, generator=g) >= sparsity for w in ws]
    ws = [torch.where(m, w, 0) for w, m in zip(ws, ms)]
    leaves = [t.requires_grad_() for t in (x, *ws, *bs)]

    def net(fn):
        def run(x, *params):
            h = x
            for i in range(3):
                h = fn(h, params[i], params[3 + i], ms[i])
                h = torch.relu(h) if i < 2 else h
            return h

        return run

    ways = {
        "dense": net(lambda h, w, b, m: F.linear(h, w, b)),
        "torch": net(lambda h, w, b, m: F.linear(h, w * m, b)),
        "ours": net(lambda h, w, b, m: masked_linear(h, w, m, b)),
        "floor": _floor,
    }
    return leaves, ways


def _floor(*leaves):
    """No product: the leaves summed, so the backward reaches every one of them."""
    return sum(t.sum() for t in leaves)


def _step(fn, leaves):
    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves).sum().backward()

    return step


def _check_same(ways, leaves) -> None:
    """The ways compute the same function (guards the benchmark against timing a wrong result)."""
    out_ref = ways["torch"](*leaves)
    for path in ("dense", "sparse"):
        with _cpu.held_on(path):
            out = ways["ours"](*leaves)
        torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)


def run(quick: bool = False, threads: int | None = None) -> tuple[list[dict], dict]:
    if threads:
        torch.set_num_threads(threads)
    budget = 0.15 if quick else 0.5
    shapes = [s for s in SHAPES if not quick or s[0].startswith(("lenet300 fc1", "lenet300 whole", "1024"))]
    sparsities = [0.0, 0.9, 0.95, 0.99] if quick else SPARSITIES
    rows, crossover = [], {}
    for name, kind, shape in shapes:
        sparse_wins = []
        for sparsity in sparsities:
            leaves, ways = _layer(kind, shape, sparsity)
            _check_same(ways, leaves)
            row = {"shape": name, "sparsity": sparsity}
            steps = {
                "dense_ms": (_step(ways["dense"], leaves), "auto"),
                "torch_way_ms": (_step(ways["torch"], leaves), "auto"),
                **{f"ours_{path}_ms": (_step(ways["ours"], leaves), path) for path in ("auto", "dense", "sparse")},
            }
            if "floor" in ways:
                steps["floor_ms"] = (_step(ways["floor"], leaves), "auto")
            medians, samples = _time_interleaved(steps, 5 * budget)
            row.update({k: v * 1e3 for k, v in medians.items()})
            row["dense_over_ours"] = _paired_ratio(samples, "dense_ms", "ours_auto_ms")
            row["dense_over_ours_q1"], row["dense_over_ours_q3"] = _paired_quartiles(
                samples, "dense_ms", "ours_auto_ms"
            )
            row["torch_way_over_ours"] = _paired_ratio(samples, "torch_way_ms", "ours_auto_ms")
            row["sparse_over_dense_path"] = _paired_ratio(samples, "ours_sparse_ms", "ours_dense_ms")
            if "floor_ms" in medians:
                row["dense_over_floor"] = _paired_ratio(samples, "dense_ms", "floor_ms")
            sparse_wins.append((sparsity, row["sparse_over_dense_path"] < 1))
            rows.append(row)
            print(
                f"{name:34s} {sparsity:5.0%}  dense {row['dense_ms']:8.3f} ms  torch way {row['torch_way_ms']:8.3f}  "
                f"ours {row['ours_auto_ms']:8.3f} (dense path {row['ours_dense_ms']:.3f}, sparse path "
                f"{row['ours_sparse_ms']:.3f})  dense/ours {row['dense_over_ours']:.2f}x "
                f"(quartiles {row['dense_over_ours_q1']:.2f}-{row['dense_over_ours_q3']:.2f})"
                + (f" (bound: dense/floor {row['dense_over_floor']:.2f}x)" if "dense_over_floor" in row else ""),
                flush=True,
            )
        # the lowest sparsity from which the sparse path wins at every sparsity measured above it
        wins_from = None
        for sparsity, wins in reversed(sparse_wins):
            if not wins:
                break
            wins_from = sparsity
        crossover[name] = wins_from
    return rows, crossover


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and sparsities; writes nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    rows, crossover = run(args.quick, args.threads)
    print()
    print_table(
        [
            ("shape", "shape", ""),
            ("sparsity", "sparsity", ".0%"),
            ("dense_ms", "dense ms", ".3f"),
            ("torch_way_ms", "torch way ms", ".3f"),
            ("ours_auto_ms", "ours ms", ".3f"),
            ("dense_over_ours", "dense/ours", ".2f"),
            ("dense_over_ours_q1", "q1", ".2f"),
            ("dense_over_ours_q3", "q3", ".2f"),
            ("torch_way_over_ours", "torch way/ours", ".2f"),
            ("sparse_over_dense_path", "sparse/dense path", ".2f"),
            ("dense_over_floor", "dense/floor (bound)", ".2f"),
        ],
        rows,
    )
    print("\ncrossover (sparse path faster from this sparsity on):")
    for name, value in crossover.items():
        print(f"  {name}: {'never' if value is None else f'{value:.0%}'}")
    if not args.quick:
        write_results("masked_cpu", "cpu", rows, extra={"policy": _cpu.policy(), "crossover_sparsity": crossover})
    return rows


if __name__ == "__main__":
    main()
