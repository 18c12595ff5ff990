"""Evaluation along the linear path between two networks: one batched pass against the loop over alphas.

The torch way: for each alpha, build the interpolated state dict, load it into the
model and evaluate (``loop``). For models with convs a second loop, the one a careful
user would write on the CPU: model and inputs in ``channels_last``, the layout the
batched pass gives oneDNN (``loop_cl``). Ours: :func:`lth_sparse.nn.path.evaluate_path`:
the first layer's input is shared by all alphas (two products instead of A); on the
CPU Conv-4 runs one alpha at a time in cache-sized passes (see ``lth_sparse/nn/path.py``).
All ways in the same run, with the same inputs, taking turns in rotated order; the
results are checked equal; times are medians over the repeats.

    python bench/bench_interpolate.py            # LeNet-300-100 on 10,000 examples, Conv-4 on 160, 21 alphas
    python bench/bench_interpolate.py --conv4-examples 10000 --repeats 1   # Conv-4 on the target's 10,000
    python bench/bench_interpolate.py --quick    # smaller, seconds
    python bench/bench_interpolate.py --device cuda   # the GPU targets (see below)

On a GPU (``--device cuda``): an MLP (LeNet-300-100) and ResNet-20, each on 10,000 examples, 21
alphas; the loop, the batched pass on the backend ``auto`` picks, and the batched pass with each GPU
backend of the interpolation ops forced (``LTH_SPARSE_BACKEND=triton``), its results checked against
the loop's. Every call is synchronised; writes ``bench/results/interpolate-cuda.json`` with the GPU.

Batch norm recomputed (rows with ``"bn": "recompute"``; the rows above are ``"interpolate"``): the loop
loads each alpha's state dict, resets its batch-norm statistics (``momentum=None``), re-estimates them
with a train-mode forward over each of the same training batches, then evaluates (and its channels_last
twin for convs); ours is :func:`lth_sparse.analysis.interpolate` with ``bn="recompute"`` (statistics of
all alphas in the same passes, then the batched evaluation), the whole call with its checks.
LeNet-300-100 (no batch norm: nothing to re-estimate, the loop skips it too) on 10,000 examples,
Conv-2 and Conv-4 with a BatchNorm2d after every conv (``lth_sparse.models``' conv nets have no batch
norm option; ``conv2_bn`` / ``conv4_bn`` are built here) on ``--bn-examples`` examples and
``--bn-batches`` training batches of ``--bn-batch-size``:

    python bench/bench_interpolate.py --modes recompute --bn-examples 10000 --bn-batches 10 --repeats 1
    python bench/bench_interpolate.py --modes recompute --bf16   # also ours with precision="bf16"
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402


@torch.no_grad()
def load_at(model, state_a, state_b, alpha, bn_inputs=None):
    """The user's way to one point of the path: load the interpolated state dict into ``model``; with
    ``bn_inputs`` (training batches), reset its batch-norm statistics (``momentum=None``) and re-estimate them
    with a train-mode forward per batch. Leaves ``model`` in eval mode."""
    model.load_state_dict(
        {
            k: torch.lerp(state_a[k], state_b[k], alpha) if state_a[k].is_floating_point() else state_a[k]
            for k in state_a
        }
    )
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bn_inputs is not None and norms:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        for xb in bn_inputs:
            model(xb)
    model.eval()


@torch.no_grad()
def loop_over_alphas(model, state_a, state_b, alphas, x, y, batch_size, bn_inputs=None):
    """Loss and accuracy per alpha, loading each interpolated state dict into ``model``. ``bn_inputs``: the
    training batches each alpha's batch-norm statistics are re-estimated on (reset, ``momentum=None``,
    a train-mode forward of the batch-norm layers per batch); None: the interpolated statistics."""
    losses, accs = [], []
    for alpha in alphas:
        load_at(model, state_a, state_b, alpha, bn_inputs)
        loss = correct = 0.0
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start : start + batch_size])
            loss += F.cross_entropy(out, y[start : start + batch_size], reduction="sum").item()
            correct += (out.argmax(1) == y[start : start + batch_size]).sum().item()
        losses.append(loss / x.shape[0])
        accs.append(correct / x.shape[0])
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


CPU = torch.device("cpu")


def timed(fn, device=CPU):
    """(seconds, fn()) with the device synchronised around the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def median_of(ways: dict, repeats: int, device=CPU, timer=timed) -> dict:
    """{name: (median seconds, last result, every run's seconds)}: each way of ``ways`` (name -> function)
    run ``repeats`` times, the ways taking turns in rotated order so that all see the same drift of a
    shared machine."""
    times, results = {name: [] for name in ways}, {}
    names = list(ways)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, results[name] = timer(ways[name], device)
            times[name].append(seconds)
    return {name: (statistics.median(times[name]), results[name], times[name]) for name in names}


@contextlib.contextmanager
def backend(name):
    """LTH_SPARSE_BACKEND=name within the block (None: leave it as it is)."""
    saved = os.environ.get("LTH_SPARSE_BACKEND")
    if name is not None:
        os.environ["LTH_SPARSE_BACKEND"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LTH_SPARSE_BACKEND", None)
        else:
            os.environ["LTH_SPARSE_BACKEND"] = saved


def run_case(name, shape, examples, num_alphas, repeats, batch_size, device="cpu", forced=(), options=None):
    """The loop (and on the CPU, for a model with convs, the channels_last loop) against the batched
    pass (``auto``) and the batched pass with each backend in ``forced``."""
    from lth_sparse.models import create_model
    from lth_sparse.nn.path import evaluate_path

    device = torch.device(device)
    options = options or {}
    torch.manual_seed(0)
    model = create_model(name, shape, 10, **options).to(device)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    state_b = copy.deepcopy(create_model(name, shape, 10, **options).to(device).state_dict())
    x = torch.randn(examples, *shape, device=device)
    y = torch.randint(0, 10, (examples,), device=device)
    alphas = torch.linspace(0, 1, num_alphas, device=device)
    ways = {"loop": lambda: loop_over_alphas(copy.deepcopy(model), state_a, state_b, alphas, x, y, batch_size)}
    if device.type == "cpu" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        ways["loop_cl"] = lambda: loop_over_alphas(
            copy.deepcopy(model_cl), state_a, state_b, alphas, x_cl, y, batch_size
        )

    def ours(label):
        def run():
            with backend(None if label == "auto" else label):
                return evaluate_path(model, state_a, state_b, alphas, x, y, batch_size)

        return run

    for label in ("auto", *forced):
        ways[label] = ours(label)
    timings = median_of(ways, repeats, device)
    t_loop, (loss_loop, acc_loop), _ = timings["loop"]
    row = {
        "model": name,
        "device": str(device),
        "examples": examples,
        "alphas": num_alphas,
        "repeats": repeats,
        "loop_s": t_loop,
    }
    if "loop_cl" in timings:
        row["loop_cl_s"] = timings["loop_cl"][0]
    row["all_seconds"] = {way: t[2] for way, t in timings.items()}
    for label in ("auto", *forced):
        t_ours, (loss_ours, acc_ours), _ = timings[label]
        suffix = "" if label == "auto" else f"_{label}"
        row.update({f"ours{suffix}_s": t_ours, f"speedup{suffix}": t_loop / t_ours})
        if "loop_cl" in timings:
            row[f"speedup_cl{suffix}"] = row["loop_cl_s"] / t_ours
        row.update(
            {
                f"max_loss_diff{suffix}": (loss_loop - loss_ours.cpu()).abs().max().item(),
                f"acc_equal{suffix}": bool(torch.allclose(acc_loop, acc_ours.cpu(), atol=2 / examples)),
            }
        )
    return row


def with_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """The Sequential ``model`` with a BatchNorm2d after every conv (``convN`` -> ``bnN``)."""
    layers = OrderedDict()
    for name, module in model.named_children():
        layers[name] = module
        if isinstance(module, torch.nn.Conv2d):
            layers[name.replace("conv", "bn")] = torch.nn.BatchNorm2d(module.out_channels)
    net = torch.nn.Sequential(layers)
    net.input_shape, net.num_classes = model.input_shape, model.num_classes
    return net


def bn_model(name, shape):
    """``lenet300`` as it is; ``conv2_bn`` / ``conv4_bn``: the registered conv net with batch norm."""
    from lth_sparse.models import create_model

    if name.endswith("_bn"):
        return with_batchnorm(create_model(name[:-3], shape, 10))
    return create_model(name, shape, 10)


def run_recompute_case(
    name, shape, examples, num_alphas, repeats, batch_size, bn_batches, bn_batch_size, device="cpu", bf16=False
):
    """BN recomputed at every alpha: the loop (and on the CPU, for convs, its channels_last twin) against
    ``lth_sparse.analysis.interpolate(..., bn="recompute")``, all on the same training batches; with
    ``bf16``, also ours with ``precision="bf16"`` (its losses against the float32 loop's)."""
    from lth_sparse.analysis import interpolate

    device = torch.device(device)
    torch.manual_seed(0)
    model = bn_model(name, shape).to(device)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    state_b = copy.deepcopy(bn_model(name, shape).to(device).state_dict())
    x = torch.randn(examples, *shape, device=device)
    y = torch.randint(0, 10, (examples,), device=device)
    bn_inputs = [torch.randn(bn_batch_size, *shape, device=device) for _ in range(bn_batches)]
    alphas = torch.linspace(0, 1, num_alphas, device=device)
    channels_last = device.type == "cpu" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else None

    def ways_on(x, y, bn_inputs):
        ways = {
            "loop": lambda: loop_over_alphas(
                copy.deepcopy(model), state_a, state_b, alphas, x, y, batch_size, bn_inputs
            )
        }
        if channels_last:
            x_cl = x.contiguous(memory_format=torch.channels_last)
            bn_cl = [b.contiguous(memory_format=torch.channels_last) for b in bn_inputs]
            ways["loop_cl"] = lambda: loop_over_alphas(
                copy.deepcopy(model_cl), state_a, state_b, alphas, x_cl, y, batch_size, bn_cl
            )

        def ours(precision="fp32"):
            result = interpolate(
                model,
                state_a,
                state_b,
                {"test": (x, y)},
                alphas=alphas,
                bn="recompute",
                train_data=bn_inputs,
                bn_batches=len(bn_inputs),
                batch_size=batch_size,
                precision=precision,
            )
            curve = result.curve("test")
            return (
                torch.tensor(curve.loss, dtype=torch.float64),
                torch.tensor(curve.accuracy, dtype=torch.float64),
                result.bn_layers,
            )

        ways["ours"] = ours
        if bf16:
            ways["ours_bf16"] = lambda: ours("bf16")
        return ways

    for warm_up in ways_on(x[:4], y[:4], [b[:4] for b in bn_inputs[:1]]).values():  # first-call costs, untimed
        warm_up()
    timings = median_of(ways_on(x, y, bn_inputs), repeats, device)
    t_loop, (loss_loop, acc_loop), _ = timings["loop"]
    t_ours, (loss_ours, acc_ours, bn_layers), _ = timings["ours"]
    row = {
        "model": name,
        "bn": "recompute",
        "device": str(device),
        "examples": examples,
        "bn_batches": bn_batches if bn_layers else 0,
        "bn_batch_size": bn_batch_size,
        "bn_layers": bn_layers,
        "alphas": num_alphas,
        "repeats": repeats,
        "loop_s": t_loop,
    }
    if "loop_cl" in timings:
        row["loop_cl_s"] = timings["loop_cl"][0]
    row["all_seconds"] = {way: t[2] for way, t in timings.items()}
    row.update({"ours_s": t_ours, "speedup": t_loop / t_ours})
    if "loop_cl" in timings:
        row["speedup_cl"] = row["loop_cl_s"] / t_ours
    row.update(
        {
            "max_loss_diff": (loss_loop - loss_ours).abs().max().item(),
            "acc_equal": bool(torch.allclose(acc_loop, acc_ours, atol=2 / examples)),
        }
    )
    if bf16:
        t_bf16, (loss_bf16, acc_bf16, _), _ = timings["ours_bf16"]
        row.update(
            {
                "ours_bf16_s": t_bf16,
                "speedup_bf16": t_loop / t_bf16,
                "bf16_vs_fp32": t_ours / t_bf16,
                "max_loss_diff_bf16": (loss_loop - loss_bf16).abs().max().item(),
                "max_acc_diff_bf16": (acc_loop - acc_bf16).abs().max().item(),
            }
        )
    return row


def gpu_rows(num_alphas, repeats, quick):
    """The GPU targets: an MLP and ResNet-20 over 10,000 examples, every GPU backend of ours."""
    from lth_sparse._dispatch import backend_status

    forced = tuple(b for b in ("triton",) if backend_status(b, torch.device("cuda"))[0])
    examples = 1000 if quick else 10_000
    return [
        run_case("lenet300", (1, 28, 28), examples, num_alphas, repeats, 1000, "cuda", forced),
        run_case("resnet20", (3, 32, 32), examples, num_alphas, repeats, 1000, "cuda", forced),
    ]


def gpu_recompute_rows(num_alphas, repeats, quick):
    """BN recomputed on the GPU: ResNet-20 (batch norm after every conv) on 10,000 examples, 10 batches of 1000."""
    examples = 1000 if quick else 10_000
    return [
        run_recompute_case(
            "resnet20", (3, 32, 32), examples, num_alphas, repeats, 1000, 2 if quick else 10, 1000, "cuda"
        )
    ]


MODES = ("interpolate", "recompute")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples, one repeat")
    parser.add_argument("--alphas", type=int, default=21)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--conv4-examples",
        type=int,
        default=160,
        help="Conv-4's examples on the CPU (default 160, to keep the default run of both modes "
        "near 4 minutes on 2 cores; the CPU target is set on 10000: about 25 minutes per "
        "repeat of its three ways here)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="batch-norm modes to measure, comma-separated: interpolate (the rows of the plain "
        "path evaluation) and recompute (default: both; the results file of a run of "
        "one mode is named after it)",
    )
    parser.add_argument(
        "--bn-examples",
        type=int,
        default=96,
        help="recompute rows: Conv-2/Conv-4 (with batch norm) evaluation examples on the CPU "
        "(default 96; LeNet-300-100: 10000)",
    )
    parser.add_argument("--bn-batches", type=int, default=2, help="recompute rows: training batches (default 2)")
    parser.add_argument(
        "--bn-batch-size", type=int, default=48, help="recompute rows: examples per training batch (default 48)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="median of this many runs of each way (default 3, quick 1)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="recompute rows on the CPU: also ours with precision='bf16' (the passes under autocast), "
        "timed against the same loop, its losses against the float32 loop's",
    )
    args = parser.parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}, got {args.modes!r}")
    scale = 10 if args.quick else 1
    repeats = args.repeats or (1 if args.quick else 3)
    result_name = "interpolate" if set(modes) == set(MODES) else "interpolate_" + "_".join(modes)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device here")
        rows = gpu_rows(args.alphas, repeats + 1, args.quick) if "interpolate" in modes else []
        if "recompute" in modes:
            rows += gpu_recompute_rows(args.alphas, repeats + 1, args.quick)
        print(f"evaluation at {args.alphas} points of a linear path, {torch.cuda.get_device_name()}")
        columns = [
            ("model", "model", ""),
            ("bn", "bn", ""),
            ("examples", "examples", "d"),
            ("loop_s", "loop (s)", ".4f"),
            ("ours_s", "batched (s)", ".4f"),
            ("speedup", "speed-up", ".2f"),
            ("ours_triton_s", "batched, triton (s)", ".4f"),
            ("speedup_triton", "speed-up, triton", ".2f"),
            ("max_loss_diff", "max |loss diff|", ".1e"),
            ("acc_equal", "same acc", ""),
        ]
        print_table([c for c in columns if any(c[0] in r for r in rows)], rows)
        if not args.quick:
            write_results(result_name, "cuda", rows, {"alphas": args.alphas})
        return rows
    rows = []
    if "interpolate" in modes:
        rows += [
            run_case("lenet300", (1, 28, 28), 10_000 // scale, args.alphas, repeats, 1000),
            run_case("conv4", (3, 32, 32), max(1, args.conv4_examples // scale), args.alphas, repeats, 250),
        ]
        for row in rows:
            row["bn"] = "interpolate"
    if "recompute" in modes:
        bn_examples, bn_batch_size = max(1, args.bn_examples // scale), max(2, args.bn_batch_size // scale)
        rows += [
            run_recompute_case(
                "lenet300",
                (1, 28, 28),
                10_000 // scale,
                args.alphas,
                repeats,
                1000,
                args.bn_batches,
                bn_batch_size,
                bf16=args.bf16,
            )
        ]
        rows += [
            run_recompute_case(
                name,
                (3, 32, 32),
                bn_examples,
                args.alphas,
                repeats,
                250,
                args.bn_batches,
                bn_batch_size,
                bf16=args.bf16,
            )
            for name in ("conv2_bn", "conv4_bn")
        ]
    print(f"evaluation at {args.alphas} points of a linear path, CPU, {torch.get_num_threads()} threads")
    print_table(
        [
            ("model", "model", ""),
            ("bn", "bn", ""),
            ("examples", "examples", "d"),
            ("bn_batches", "bn batches", "d"),
            ("loop_s", "loop (s)", ".3f"),
            ("loop_cl_s", "loop, channels_last (s)", ".3f"),
            ("ours_s", "batched (s)", ".3f"),
            ("speedup", "vs loop", ".2f"),
            ("speedup_cl", "vs channels_last loop", ".2f"),
            ("max_loss_diff", "max |loss diff|", ".1e"),
            ("acc_equal", "same acc", ""),
        ],
        rows,
    )
    if args.bf16 and "recompute" in modes:
        print("with precision='bf16' (recompute rows)")
        print_table(
            [
                ("model", "model", ""),
                ("ours_s", "fp32 (s)", ".3f"),
                ("ours_bf16_s", "bf16 (s)", ".3f"),
                ("bf16_vs_fp32", "bf16 vs fp32", ".2f"),
                ("speedup_bf16", "bf16 vs loop", ".2f"),
                ("max_loss_diff_bf16", "max |loss diff|", ".1e"),
                ("max_acc_diff_bf16", "max |acc diff|", ".3f"),
            ],
            [r for r in rows if "ours_bf16_s" in r],
        )
    if not args.quick:
        write_results(
            result_name,
            "cpu",
            rows,
            {
                "alphas": args.alphas,
                "modes": list(modes),
                "bn_examples": args.bn_examples,
                "bn_batches": args.bn_batches,
                "bn_batch_size": args.bn_batch_size,
            },
        )
    return rows


if __name__ == "__main__":
    main()
