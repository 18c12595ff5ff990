"""Global selection across all layers: ``kth_smallest`` and ``prune_lowest`` against the torch way.

The weights of VGG-16, ResNet-18 and LeNet-300-100 (60 tensors; channel widths scaled so that the
total is ``--size`` float32 values, 70M by default; Kaiming-normal, seeded) are pruned globally by
magnitude: the scores are ``|w|`` and k is 20% of them. Timed in one process, on the same tensors,
with ``torch.utils.benchmark.Timer`` (warm-up, median; all torch threads) on CPU, and
``triton.testing.do_bench`` (median) on CUDA, in rounds that take every case in turn (so that a
shared machine's load falls on all of them alike):

- ``torch.cat + kthvalue``: the torch way to the global threshold (a full copy, then a selection);
- ``sum()`` over the same tensors: one read of the data, the bound for any exact selection;
  on CUDA also the time to read the data once at the bandwidth of a device-to-device copy;
- ``kth_smallest`` (ours): the same threshold without concatenating;
- the torch way to the masks (``cat + kthvalue``, then ``score > threshold`` per tensor), and
  ``prune_lowest`` (ours, exact k with position tie-breaks) without and with masks (an IMP round 2:
  20% of the entries that survived a first 20% round), the latter also through the extension
  alone, which shows what the op's own argument checks cost.

Ours are the public ops ``lth_sparse.ops.kth_smallest`` / ``prune_lowest`` with
``LTH_SPARSE_BACKEND=cpp`` (``cuda`` on a GPU), or the raw extension functions where ``lth_sparse.ops``
is not importable. Prints one table (time, ratio to cat+kthvalue, ratio to sum(), GB/s of the bytes
that must move: the scores once, plus the masks read and written for prune_lowest) and writes
``bench/results/select-<device>.json`` (``select-cpu.json``, or the GPU's name).

    python bench/bench_select.py               # 70M values, about a minute on 2 cores
    python bench/bench_select.py --quick       # 5M values, seconds
    python bench/bench_select.py --size 20000000 [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results  # noqa: E402

SEED = 0
PRUNE_FRACTION = 0.2
QUICK_SIZE = 5_000_000
DEFAULT_SIZE = 70_000_000


def _vgg16(w: float) -> list[tuple[int, ...]]:
    """VGG-16 weights and biases; the classifier as on 2x2 feature maps (fc6: 2048 -> 4096)."""
    c = lambda n: max(1, round(n * w))  # noqa: E731
    shapes, cin = [], 3
    for cout in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512):
        shapes += [(c(cout), cin, 3, 3), (c(cout),)]
        cin = c(cout)
    for fin, fout in ((cin * 4, c(4096)), (c(4096), c(4096)), (c(4096), 1000)):
        shapes += [(fout, fin), (fout,)]
    return shapes


def _resnet18(w: float) -> list[tuple[int, ...]]:
    """ResNet-18 conv weights (with the three 1x1 downsamples) and the fc layer."""
    c = lambda n: max(1, round(n * w))  # noqa: E731
    shapes, cin = [(c(64), 3, 7, 7)], c(64)
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            shapes += [(c(cout), cin, 3, 3), (c(cout), c(cout), 3, 3)]
            if block == 0 and stage > 0:
                shapes.append((c(cout), cin, 1, 1))
            cin = c(cout)
    return shapes + [(1000, cin), (1000,)]


def _lenet300(w: float) -> list[tuple[int, ...]]:
    c = lambda n: max(1, round(n * w))  # noqa: E731
    return [(c(300), 784), (c(300),), (c(100), c(300)), (c(100),), (10, c(100)), (10,)]


def model_shapes(size: int) -> list[tuple[int, ...]]:
    """The 60 weight shapes, channel widths scaled by one factor so that they hold about ``size`` values."""
    shapes_at = lambda w: _vgg16(w) + _resnet18(w) + _lenet300(w)  # noqa: E731
    numel = lambda shapes: sum(torch.Size(s).numel() for s in shapes)  # noqa: E731
    width = 1.0
    for _ in range(4):  # the count grows about as width**2
        width *= (size / numel(shapes_at(width))) ** 0.5
    return shapes_at(width)


def make_weights(size: int, device: torch.device) -> list[torch.Tensor]:
    """Kaiming-normal weights (std sqrt(2 / fan_in)), small biases; seeded."""
    g = torch.Generator().manual_seed(SEED)
    weights = []
    for shape in model_shapes(size):
        fan_in = torch.Size(shape[1:]).numel() if len(shape) > 1 else 100
        t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        weights.append(t.to(device))
    return weights


def our_ops(device: torch.device):
    """(kth_smallest, prune_lowest, description): the public ops on the compiled backend, else the extension."""
    backend, ext_name = ("cpp", "_C") if device.type == "cpu" else ("cuda", "_cuda")
    os.environ["LTH_SPARSE_BACKEND"] = backend  # read by the dispatch at every call
    try:
        from lth_sparse.ops import kth_smallest, prune_lowest
        return kth_smallest, prune_lowest, f"lth_sparse.ops with LTH_SPARSE_BACKEND={backend}"
    except ImportError:
        ext = importlib.import_module(f"lth_sparse.{ext_name}")
        return ext.kth_smallest, ext.prune_lowest, f"lth_sparse.{ext_name} directly (lth_sparse.ops not importable)"


def raw_extension(device: torch.device):
    try:
        return importlib.import_module("lth_sparse._C" if device.type == "cpu" else "lth_sparse._cuda")
    except ImportError:
        return None


def kernel_info(device: torch.device) -> dict | None:
    ext = raw_extension(device)
    return ext.kernel_info() if ext is not None and hasattr(ext, "kernel_info") else None


def sample_seconds(fn, device: torch.device, min_run_time: float) -> list[float]:
    """Times of single calls of fn (a CUDA median from do_bench; on CPU a blocked_autorange's blocks)."""
    if device.type == "cuda":
        import triton.testing
        return [triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_run_time * 1000)),
                                        return_mode="median") / 1e3]
    from torch.utils.benchmark import Timer
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def median_seconds_interleaved(cases: dict, device: torch.device, rounds: int,
                               min_run_time: dict) -> dict[str, float]:
    """Median time of each case, measured in `rounds` rounds that take every case in turn, so that all
    cases see the same machine load (this machine may be shared)."""
    for fn in cases.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            times[key] += sample_seconds(fn, device, min_run_time[key])
    return {key: sorted(t)[len(t) // 2] for key, t in times.items()}


def check_masks(scores: list[torch.Tensor], before: list[torch.Tensor] | None, after: list[torch.Tensor],
                k: int) -> None:
    """Exactly k active entries pruned, nothing revived, and no kept score below a pruned one."""
    pruned = [(b if b is not None else torch.ones_like(a)) & ~a for a, b in
              zip(after, before if before is not None else [None] * len(after))]
    assert sum(int(p.sum()) for p in pruned) == k, "prune_lowest did not prune exactly k entries"
    if before is not None:
        assert all(not bool((a & ~b).any()) for a, b in zip(after, before)), "prune_lowest revived an entry"
    highest_pruned = max(float(s[p].max()) for s, p in zip(scores, pruned) if p.any())
    lowest_kept = min(float(s[a].min()) for s, a in zip(scores, after) if a.any())
    assert highest_pruned <= lowest_kept, "a kept score is below a pruned one"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="total float32 values (default 70M)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE // 10**6}M values, a few seconds")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per case and round (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases (default 3)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; nothing measured")
        return 0
    size = QUICK_SIZE if args.quick else args.size
    min_run_time = args.min_run_time or (0.2 if args.quick else 1.0)

    kth_smallest, prune_lowest, how = our_ops(device)
    weights = make_weights(size, device)
    scores = [w.abs() for w in weights]
    n = sum(s.numel() for s in scores)
    k = int(PRUNE_FRACTION * n)
    print(f"{len(scores)} tensors, {n / 1e6:.1f}M float32 values ({4 * n / 1e9:.2f} GB), k = {k} (20%); "
          f"{torch.get_num_threads()} threads; ours: {how}")

    # Correctness on these tensors first: the same threshold, exactly k pruned.
    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
    assert torch.equal(kth_smallest(scores, k).cpu(), threshold.cpu()), "kth_smallest differs from cat+kthvalue"
    round1 = prune_lowest(scores, None, k)
    check_masks(scores, None, round1, k)
    k2 = int(PRUNE_FRACTION * sum(int(m.sum()) for m in round1))
    check_masks(scores, round1, prune_lowest(scores, round1, k2), k2)
    print("checks: kth_smallest == cat+kthvalue; prune_lowest prunes exactly k, lowest scores first")

    def cat_kthvalue():
        return torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values

    def torch_masks():
        t = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
        return [s > t for s in scores]

    def read_all():
        return sum(s.sum() for s in scores)

    score_bytes = 4 * n
    cases = [  # (key, what, function, bytes that must move)
        ("cat_kthvalue", "torch.cat + kthvalue", cat_kthvalue, score_bytes),
        ("sum", "sum() over the tensors (one read)", read_all, score_bytes),
        ("kth_smallest", "kth_smallest (ours)", lambda: kth_smallest(scores, k), score_bytes),
        ("torch_masks", "torch way masks: cat+kthvalue, s > t", torch_masks, score_bytes + n),
        ("prune_lowest", "prune_lowest (ours)", lambda: prune_lowest(scores, None, k), score_bytes + n),
        ("prune_lowest_masked", "prune_lowest (ours), masks, IMP round 2",
         lambda: prune_lowest(scores, round1, k2), score_bytes + 2 * n),
    ]
    ext = raw_extension(device)
    if ext is not None and ext.prune_lowest is not prune_lowest:  # what the op adds to the kernel
        cases.append(("prune_lowest_masked_kernel", "  the same, extension kernel alone",
                      lambda: ext.prune_lowest(scores, round1, k2), score_bytes + 2 * n))
    if device.type == "cuda":
        flat = torch.empty(n, device=device)
        copy = torch.empty_like(flat)
        t_copy = median_seconds_interleaved({"copy": lambda: copy.copy_(flat)}, device, 1, {"copy": min_run_time})["copy"]
        del flat, copy
    seconds = median_seconds_interleaved(
        {key: fn for key, _, fn, _ in cases}, device, args.rounds,
        {key: (2 if key in ("cat_kthvalue", "torch_masks") else 1) * min_run_time for key, *_ in cases})
    rows = [{"case": key, "what": what, "ms": seconds[key] * 1e3, "gb_per_s": moved / seconds[key] / 1e9}
            for key, what, _, moved in cases]
    t = {r["case"]: r["ms"] for r in rows}
    for r in rows:
        r["speedup_vs_cat_kthvalue"] = t["cat_kthvalue"] / r["ms"]
        r["times_sum"] = r["ms"] / t["sum"]
    if device.type == "cuda":
        read_once_ms = t_copy / 2 * 1e3  # a copy reads and writes the data
        rows.append({"case": "read_once_at_copy_bandwidth", "what": "read once at D2D copy bandwidth",
                     "ms": read_once_ms, "gb_per_s": score_bytes / read_once_ms / 1e6,
                     "speedup_vs_cat_kthvalue": t["cat_kthvalue"] / read_once_ms,
                     "times_sum": read_once_ms / t["sum"]})

    print()
    print_table([("what", "case", "s"), ("ms", "time [ms]", ".2f"),
                 ("speedup_vs_cat_kthvalue", "cat+kthvalue / this", ".1f"),
                 ("times_sum", "this / sum()", ".2f"), ("gb_per_s", "GB/s", ".1f")], rows)
    passes = ("kth_smallest: 1 pass over the data (a 64K-position sample first; the ~1% of keys between the "
              "sampled pivots kept and selected in 2 passes over them); prune_lowest: that select + 1 write "
              "pass (+ a rewrite of the few chunks holding kept ties, if any)")
    print(f"\npasses: {passes}")
    if args.quick:  # a smoke-sized run never replaces the recorded results
        return rows
    write_results("select", device, rows, {
        "values": n, "tensors": len(scores), "shapes": [list(s.shape) for s in scores], "dtype": "float32",
        "k": k, "k_round2": k2, "seed": SEED, "ours": how, "kernel_info": kernel_info(device),
        "timer": (f"median over {args.rounds} interleaved rounds of " +
                  ("triton.testing.do_bench medians" if device.type == "cuda"
                   else f"torch.utils.benchmark.Timer blocked_autorange blocks (min_run_time {min_run_time}s)")),
        "passes": passes,
    })
    return rows


if __name__ == "__main__":
    main()
