"""Global selection across all layers: ``kth_smallest`` and ``prune_lowest`` against the torch way.

The weights of VGG-16, ResNet-18 and LeNet-300-100 (60 tensors; channel widths scaled so that the
total is ``--size`` float32 values, 70M by default; Kaiming-normal, seeded) are pruned globally by
magnitude: the scores are ``|w|`` and k is 20% of them. Two sections, each timed in one process on
the same tensors, in rounds that take every case in turn (so that a shared machine's load falls on
all of them alike), median reported:

CPU (``torch.utils.benchmark.Timer``, warm-up, all torch threads):

- ``torch.cat + kthvalue``: the torch way to the global threshold (a full copy, then a selection);
- ``sum()`` over the same tensors: one read of the data, the bound for any exact selection;
- ``kth_smallest`` (ours): the same threshold without concatenating;
- the torch way to the masks (``cat + kthvalue``, then ``score > threshold`` per tensor), and
  ``prune_lowest`` (ours, exact k with position tie-breaks) without and with masks (an IMP round 2:
  20% of the entries that survived a first 20% round), the latter also through the extension
  alone, which shows what the op's own argument checks cost.

Ours are the public ops ``lth_sparse.ops.kth_smallest`` / ``prune_lowest`` with ``LTH_SPARSE_BACKEND=cpp``,
or the raw extension functions where ``lth_sparse.ops`` is not importable. Prints one table (time,
ratio to cat+kthvalue, ratio to sum(), GB/s of the bytes that must move: the scores once, plus the
masks read and written for prune_lowest) and writes ``bench/results/select-cpu.json``.

CUDA (only where ``torch.cuda.is_available()``; CUDA events around each call, synchronised): the
same weights made on the GPU, at ``--size`` and once more at ``--huge-size`` (1B values) where the
GPU's free memory allows; the torch way (cat + kthvalue, and the masks from it), a device-to-device
copy of the same bytes (its bandwidth bounds any kernel that must read them: reading once takes at
least half a copy's time), and for each GPU backend of ours, ``cuda`` (``csrc/cuda/select.cu``) and
``triton`` (``lth_sparse/kernels/select.py``), ``kth_smallest``, ``prune_lowest`` and the masked
``prune_lowest`` through the op (``LTH_SPARSE_BACKEND`` set per call), and the masked one through
the kernel alone. A backend's results are checked first (the threshold of cat+kthvalue; exactly k
pruned, lowest scores first; the same masks as the other backend); one that fails is reported and
not timed. Prints a table per size (time, ratio to cat+kthvalue, ratio to the read bound, GB/s)
and writes ``bench/results/select-<gpu>.json``.

    python bench/bench_select.py               # CPU at 70M values (about a minute on 2 cores), then CUDA if any
    python bench/bench_select.py --quick       # 5M values, seconds; nothing is written
    python bench/bench_select.py --device cuda [--size 20000000] [--huge-size 0]
    python bench/bench_select.py --interpret-smoke   # no GPU: runs the CUDA section's code on the CPU
                                                     # through the Triton interpreter (times meaningless)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

if "--interpret-smoke" in sys.argv:  # Triton decides when kernels are defined whether they are interpreted
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results  # noqa: E402

SEED = 0
PRUNE_FRACTION = 0.2
QUICK_SIZE = 5_000_000
DEFAULT_SIZE = 70_000_000
HUGE_SIZE = 1_000_000_000
SMOKE_SIZE = 5_000
GPU_BACKENDS = ("cuda", "triton")
# GPU memory one size needs, per value: the scores (4 bytes), cat+kthvalue's copy (4), the copy case's
# two buffers (8), three generations of masks (3), and slack.
GPU_BYTES_PER_VALUE = 22


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
    """Kaiming-normal weights (std sqrt(2 / fan_in)), small biases; seeded. On CUDA they are drawn on the
    GPU (its own generator, so other values than on the CPU), which keeps 1B values quick to make."""
    weights = []
    if device.type == "cuda":
        g = torch.Generator(device=device).manual_seed(SEED)
        for shape in model_shapes(size):
            fan_in = torch.Size(shape[1:]).numel() if len(shape) > 1 else 100
            weights.append(torch.randn(shape, generator=g, device=device).mul_((2.0 / fan_in) ** 0.5))
        return weights
    g = torch.Generator().manual_seed(SEED)
    for shape in model_shapes(size):
        fan_in = torch.Size(shape[1:]).numel() if len(shape) > 1 else 100
        t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        weights.append(t.to(device))
    return weights


def our_ops():
    """(kth_smallest, prune_lowest, description) on the CPU: the public ops on the C++ backend, else the extension."""
    os.environ["LTH_SPARSE_BACKEND"] = "cpp"  # read by the dispatch at every call
    try:
        from lth_sparse.ops import kth_smallest, prune_lowest

        return kth_smallest, prune_lowest, "lth_sparse.ops with LTH_SPARSE_BACKEND=cpp"
    except ImportError:
        ext = importlib.import_module("lth_sparse._C")
        return ext.kth_smallest, ext.prune_lowest, "lth_sparse._C directly (lth_sparse.ops not importable)"


def raw_extension(device: torch.device):
    try:
        return importlib.import_module("lth_sparse._C" if device.type == "cpu" else "lth_sparse._cuda")
    except ImportError:
        return None


def kernel_info(device: torch.device) -> dict | None:
    ext = raw_extension(device)
    return ext.kernel_info() if ext is not None and hasattr(ext, "kernel_info") else None


def sample_seconds(fn, device: torch.device, min_run_time: float) -> list[float]:
    """Times of single calls of fn: on CUDA, CUDA events around each call (synchronised after it, so a
    call's host-side work and synchronisations count); on the CPU, a blocked_autorange's blocks."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[float] = []
        torch.cuda.synchronize(device)
        stop = time.perf_counter() + min_run_time
        while len(times) < 5 or (time.perf_counter() < stop and len(times) < 1000):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return times
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return list(timer.blocked_autorange(min_run_time=min_run_time).times)


def median_seconds_interleaved(cases: dict, device: torch.device, rounds: int, min_run_time: dict) -> dict[str, float]:
    """Median time of each case, measured in `rounds` rounds that take every case in turn, so that all
    cases see the same machine load (this machine may be shared)."""
    for fn in cases.values():
        fn()  # warm-up (and, for Triton, compilation)
    times: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(rounds):
        for key, fn in cases.items():
            times[key] += sample_seconds(fn, device, min_run_time[key])
    return {key: sorted(t)[len(t) // 2] for key, t in times.items()}


def check_masks(
    scores: list[torch.Tensor], before: list[torch.Tensor] | None, after: list[torch.Tensor], k: int
) -> None:
    """Exactly k active entries pruned, nothing revived, and no kept score below a pruned one."""
    pruned = [
        (b if b is not None else torch.ones_like(a)) & ~a
        for a, b in zip(after, before if before is not None else [None] * len(after))
    ]
    assert sum(int(p.sum()) for p in pruned) == k, "prune_lowest did not prune exactly k entries"
    if before is not None:
        assert all(not bool((a & ~b).any()) for a, b in zip(after, before)), "prune_lowest revived an entry"
    highest_pruned = max(float(s[p].max()) for s, p in zip(scores, pruned) if p.any())
    lowest_kept = min(float(s[a].min()) for s, a in zip(scores, after) if a.any())
    assert highest_pruned <= lowest_kept, "a kept score is below a pruned one"


# ---------------------------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------------------------


def cpu_section(args) -> list[dict]:
    device = torch.device("cpu")
    size = QUICK_SIZE if args.quick else args.size
    min_run_time = args.min_run_time or (0.2 if args.quick else 1.0)

    kth_smallest, prune_lowest, how = our_ops()
    weights = make_weights(size, device)
    scores = [w.abs() for w in weights]
    n = sum(s.numel() for s in scores)
    k = int(PRUNE_FRACTION * n)
    print(
        f"{len(scores)} tensors, {n / 1e6:.1f}M float32 values ({4 * n / 1e9:.2f} GB), k = {k} (20%); "
        f"{torch.get_num_threads()} threads; ours: {how}"
    )

    # Correctness on these tensors first: the same threshold, exactly k pruned.
    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
    assert torch.equal(kth_smallest(scores, k), threshold), "kth_smallest differs from cat+kthvalue"
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
        (
            "prune_lowest_masked",
            "prune_lowest (ours), masks, IMP round 2",
            lambda: prune_lowest(scores, round1, k2),
            score_bytes + 2 * n,
        ),
    ]
    ext = raw_extension(device)
    if ext is not None and ext.prune_lowest is not prune_lowest:  # what the op adds to the kernel
        cases.append(
            (
                "prune_lowest_masked_kernel",
                "  the same, extension kernel alone",
                lambda: ext.prune_lowest(scores, round1, k2),
                score_bytes + 2 * n,
            )
        )
    seconds = median_seconds_interleaved(
        {key: fn for key, _, fn, _ in cases},
        device,
        args.rounds,
        {key: (2 if key in ("cat_kthvalue", "torch_masks") else 1) * min_run_time for key, *_ in cases},
    )
    rows = [
        {"case": key, "what": what, "ms": seconds[key] * 1e3, "gb_per_s": moved / seconds[key] / 1e9}
        for key, what, _, moved in cases
    ]
    t = {r["case"]: r["ms"] for r in rows}
    for r in rows:
        r["speedup_vs_cat_kthvalue"] = t["cat_kthvalue"] / r["ms"]
        r["times_sum"] = r["ms"] / t["sum"]

    print()
    print_table(
        [
            ("what", "case", "s"),
            ("ms", "time [ms]", ".2f"),
            ("speedup_vs_cat_kthvalue", "cat+kthvalue / this", ".1f"),
            ("times_sum", "this / sum()", ".2f"),
            ("gb_per_s", "GB/s", ".1f"),
        ],
        rows,
    )
    passes = (
        "kth_smallest: 1 pass over the data (a 64K-position sample first; the ~1% of keys between the "
        "sampled pivots kept and selected in 2 passes over them); prune_lowest: that select + 1 write "
        "pass (+ a rewrite of the few chunks holding kept ties, if any)"
    )
    print(f"\npasses: {passes}")
    if args.quick:  # a smoke-sized run never replaces the recorded results
        return rows
    write_results(
        "select",
        device,
        rows,
        {
            "values": n,
            "tensors": len(scores),
            "shapes": [list(s.shape) for s in scores],
            "dtype": "float32",
            "k": k,
            "k_round2": k2,
            "seed": SEED,
            "ours": how,
            "kernel_info": kernel_info(device),
            "timer": (
                f"median over {args.rounds} interleaved rounds of torch.utils.benchmark.Timer "
                f"blocked_autorange blocks (min_run_time {min_run_time}s)"
            ),
            "passes": passes,
        },
    )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------------------------

GPU_PASSES = {
    "cuda": "radix select on 11-bit digits: 3 histogram passes over the scores (float32), each followed by a "
    "one-block scan; prune_lowest: + 1 write pass (+ 1 tie-count pass when some ties at the "
    "threshold stay)",
    "triton": "the same passes as the cuda kernel (its Triton twin): 3 histogram passes (float32), a "
    "one-program scan after each; prune_lowest: + 1 write pass (+ 1 tie-count pass when some ties stay)",
}


def gpu_backends(device: torch.device) -> dict[str, tuple]:
    """For each GPU backend of ours: (kth_smallest, prune_lowest, the masked prune_lowest kernel alone,
    description), or the reason it cannot run here."""
    from lth_sparse import _dispatch
    from lth_sparse.ops import kth_smallest, prune_lowest
    from lth_sparse.ops.select import IMPLEMENTED

    def forced(op, backend):
        def call(*args):
            os.environ["LTH_SPARSE_BACKEND"] = backend  # read by the dispatch at every call
            return op(*args)

        return call

    found = {}
    for backend in GPU_BACKENDS:
        ok, why = _dispatch.backend_status(backend, device)
        if backend not in IMPLEMENTED:
            ok, why = False, f"lth_sparse.ops.select has no {backend} kernel"
        if not ok:
            found[backend] = why
            continue
        kernel = (
            _dispatch.cuda_extension().prune_lowest
            if backend == "cuda"
            else importlib.import_module("lth_sparse.kernels.select").prune_lowest
        )
        found[backend] = (
            forced(kth_smallest, backend),
            forced(prune_lowest, backend),
            kernel,
            f"lth_sparse.ops with LTH_SPARSE_BACKEND={backend}",
        )
    return found


def check_backend(kth_smallest, prune_lowest, scores, k, threshold, reference_masks) -> tuple[str | None, list]:
    """(None or what failed, the round-1 masks): the threshold, exact k lowest first, the same masks as another
    backend (one tie rule), and an IMP round 2 on top."""
    try:
        value = kth_smallest(scores, k)
        assert torch.equal(value, threshold), f"kth_smallest {float(value)} != cat+kthvalue {float(threshold)}"
        round1 = prune_lowest(scores, None, k)
        check_masks(scores, None, round1, k)
        if reference_masks is not None:
            assert all(torch.equal(a, b) for a, b in zip(round1, reference_masks)), "masks differ between backends"
        k2 = int(PRUNE_FRACTION * sum(int(m.sum()) for m in round1))
        check_masks(scores, round1, prune_lowest(scores, round1, k2), k2)
        return None, round1
    except (AssertionError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}", []


def gpu_rows(size: int, device: torch.device, args, min_run_time: float) -> tuple[list[dict], dict]:
    """One size: the checks, the timed cases, and their rows; plus what the JSON file says about them."""
    weights = make_weights(size, device)
    scores = [w.abs_() for w in weights]
    del weights
    n = sum(s.numel() for s in scores)
    k = int(PRUNE_FRACTION * n)
    print(
        f"\n{len(scores)} tensors, {n:,} float32 values ({4 * n / 1e9:.2f} GB), k = {k} (20%) on "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device}"
    )

    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
    backends, status, round1 = {}, {}, None
    for name, found in gpu_backends(device).items():
        if isinstance(found, str):
            status[name] = f"not run: {found}"
            print(f"  {name}: not run ({found})")
            continue
        failure, masks = check_backend(found[0], found[1], scores, k, threshold, round1)
        status[name] = "checks passed" if failure is None else f"FAILED: {failure}"
        print(f"  {name}: {status[name]}")
        if failure is None:
            backends[name] = found
            round1 = masks if round1 is None else round1
    k2 = int(PRUNE_FRACTION * sum(int(m.sum()) for m in round1)) if round1 is not None else None

    def cat_kthvalue():
        return torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values

    def torch_masks():
        t = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
        return [s > t for s in scores]

    source = torch.empty(n, device=device)  # the copy case: the same bytes as the scores, read and written once
    target = torch.empty_like(source)
    score_bytes = 4 * n
    cases = [  # (key, what, function, bytes that must move)
        ("cat_kthvalue", "torch.cat + kthvalue", cat_kthvalue, score_bytes),
        ("torch_masks", "torch way masks: cat+kthvalue, s > t", torch_masks, score_bytes + n),
        ("copy", "device-to-device copy of the scores' bytes", lambda: target.copy_(source), 2 * score_bytes),
    ]
    for name, (kth_smallest, prune_lowest, kernel, _) in backends.items():
        cases += [
            (f"kth_smallest[{name}]", f"kth_smallest ({name})", lambda f=kth_smallest: f(scores, k), score_bytes),
            (
                f"prune_lowest[{name}]",
                f"prune_lowest ({name})",
                lambda f=prune_lowest: f(scores, None, k),
                score_bytes + n,
            ),
            (
                f"prune_lowest_masked[{name}]",
                f"prune_lowest ({name}), masks, IMP round 2",
                lambda f=prune_lowest: f(scores, round1, k2),
                score_bytes + 2 * n,
            ),
            (
                f"prune_lowest_masked_kernel[{name}]",
                "  the same, kernel alone (no op checks)",
                lambda f=kernel: f(scores, round1, k2),
                score_bytes + 2 * n,
            ),
        ]
    seconds = median_seconds_interleaved(
        {key: fn for key, _, fn, _ in cases}, device, args.rounds, {key: min_run_time for key, *_ in cases}
    )
    read_bound = seconds["copy"] / 2  # a copy reads and writes the bytes once: reading them takes half of it
    rows = [
        {
            "values": n,
            "case": key,
            "what": what,
            "ms": seconds[key] * 1e3,
            "gb_per_s": moved / seconds[key] / 1e9,
            "speedup_vs_cat_kthvalue": seconds["cat_kthvalue"] / seconds[key],
            "times_read_bound": seconds[key] / read_bound,
        }
        for key, what, _, moved in cases
    ]
    rows.append(
        {
            "values": n,
            "case": "read_bound",
            "what": "one read at the copy's bandwidth (bound)",
            "ms": read_bound * 1e3,
            "gb_per_s": score_bytes / read_bound / 1e9,
            "speedup_vs_cat_kthvalue": seconds["cat_kthvalue"] / read_bound,
            "times_read_bound": 1.0,
        }
    )
    print()
    print_table(
        [
            ("what", "case", "s"),
            ("ms", "time [ms]", ".3f"),
            ("speedup_vs_cat_kthvalue", "cat+kthvalue / this", ".1f"),
            ("times_read_bound", "this / read bound", ".2f"),
            ("gb_per_s", "GB/s", ".1f"),
        ],
        rows,
    )
    if {"cuda", "triton"} <= backends.keys():
        ratios = ", ".join(
            f"{op} {seconds[f'{op}[triton]'] / seconds[f'{op}[cuda]']:.2f}x"
            for op in ("kth_smallest", "prune_lowest", "prune_lowest_masked")
        )
        print(f"\ntriton time / cuda time: {ratios}")
    about = {
        "values": n,
        "tensors": len(scores),
        "k": k,
        "k_round2": k2,
        "backends": status,
        "ours": {name: found[3] for name, found in backends.items()},
        "shapes": [list(s.shape) for s in scores],
    }
    return rows, about


def cuda_section(args, device: torch.device | None = None) -> list[dict]:
    """The GPU benchmark; ``device`` other than CUDA only for --interpret-smoke (times then meaningless)."""
    device = device or torch.device("cuda")
    smoke = device.type != "cuda"
    min_run_time = 0.0 if smoke else (args.min_run_time or (0.2 if args.quick else 0.5))
    sizes = [SMOKE_SIZE if smoke else QUICK_SIZE if args.quick else args.size]
    if not (smoke or args.quick) and args.huge_size:
        sizes.append(args.huge_size)
    rows, about = [], []
    for size in sizes:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if free < GPU_BYTES_PER_VALUE * size:
                print(
                    f"\n{size / 1e6:.0f}M values need about {GPU_BYTES_PER_VALUE * size / 2**30:.0f} GiB of GPU "
                    f"memory, {free / 2**30:.0f} GiB are free: skipped"
                )
                continue
        size_rows, size_about = gpu_rows(size, device, args, min_run_time)
        rows += size_rows
        about.append(size_about)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\npasses: " + "; ".join(f"{name}: {text}" for name, text in GPU_PASSES.items()))
    if smoke or args.quick:  # a smoke-sized run never replaces the recorded results
        return rows
    write_results(
        "select",
        device,
        rows,
        {
            "sizes": about,
            "dtype": "float32",
            "seed": SEED,
            "timer": (
                f"median over {args.rounds} interleaved rounds of single calls timed with CUDA events "
                f"(synchronised after each; at least 5 calls and {min_run_time}s per case and round)"
            ),
            "read_bound": "half the time of a device-to-device copy of the scores' bytes",
            "passes": GPU_PASSES,
        },
    )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="total float32 values (default 70M)")
    parser.add_argument(
        "--huge-size",
        type=int,
        default=HUGE_SIZE,
        help="CUDA only: a second, larger run where memory allows (default 1B; 0: none)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE // 10**6}M values, a few seconds")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): the CPU section, then the CUDA one where a GPU is",
    )
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases (default 3)")
    parser.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="run the CUDA section's code on the CPU through the Triton interpreter",
    )
    args = parser.parse_args(argv)
    if args.interpret_smoke:
        args.rounds = 1
        print(
            "interpreter smoke run of the CUDA section on the CPU (triton only; times are the interpreter's, "
            "not a measurement, and nothing is written)"
        )
        return cuda_section(args, torch.device("cpu"))
    rows = []
    if args.device in ("auto", "cpu"):
        rows += cpu_section(args)
    if args.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            rows += cuda_section(args)
        else:
            print("\nno CUDA device here: the CUDA section is skipped")
    return rows


if __name__ == "__main__":
    main()
