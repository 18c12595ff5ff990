"""Stacked training against separate trainings: K members trained by one :func:`lth_sparse.train.train_stacked`
call, and the same K members trained by K calls of :func:`lth_sparse.train.train`, in the same run.

Three small networks, as the field trains them many times over (seeds, masks, learning rates):

- ``planting``: the planting benchmark's host MLP (Circle task, depth 5: four layers, width 100), its planted
  ticket's masks (each member planted with its own seed), Adam lr 1e-3, batch 32;
- ``lenet300``: LeNet-300-100 on Fashion-MNIST, random masks of density 0.8 (an early IMP round), SGD lr 0.02
  with momentum 0.9, batch 128 (K = 8 added);
- ``conv2``: Conv-2 on scikit-learn's digits (8x8), random masks of density 0.8, SGD lr 0.01 with momentum 0.9,
  batch 32.

Every training runs ``--steps`` iterations and then evaluates, as ``train`` does, on the validation and test
splits, both cut to their first 1,000 examples (the same evaluation work in both ways). Members differ in
seed (initial weights, masks, data order) and learning rate (lr x (1 + 0.01 k)). Two baselines: the separate
trainings as a pipeline runs them (the masked layers on their default backend, whose kernels skip pruned
weights), and the same with plain dense layers (``LTH_SPARSE_BACKEND=torch``). Reported per (network, K):
seconds of each way, the speed-ups of stacking over both, the peak memory the separate and the stacked way add
(CPU: the peak resident set size, reset before each way through ``/proc/self/clear_refs``; CUDA:
``torch.cuda.max_memory_allocated``) and the largest difference between a member's weights after the separate
(default backend) and the stacked training.

    python bench/bench_stacked.py [--device cpu|cuda] [--steps 40] [--quick]

On the CPU, torch runs on one thread (``--threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402

EVAL_EXAMPLES = 1000
# member k trains at lr x (1 + LR_SPREAD k): members of their own learning rates, close enough that the weight
# difference between the two ways shows stacking's rounding rather than one member's chaotic training
LR_SPREAD = 0.01
NETWORKS = {
    "planting": dict(ks=(1, 4, 16, 64)),
    "lenet300": dict(ks=(1, 4, 8, 16)),
    "conv2": dict(ks=(1, 4, 16)),
}


def _cut(data):
    """``data`` with its validation and test splits cut to their first ``EVAL_EXAMPLES`` examples."""
    from lth_sparse.data import Split

    def cut(split):
        return Split(split.x[:EVAL_EXAMPLES], split.y[:EVAL_EXAMPLES])

    return dataclasses.replace(data, val=cut(data.val), test=cut(data.test))


def _random_masks(model, seed: int, density: float):
    from lth_sparse.masks import Masks

    g = torch.Generator().manual_seed(10_000 + seed)
    return Masks({n: torch.rand(m.shape, generator=g) < density for n, m in Masks.from_model(model).items()})


def setup(network: str, device: str):
    """(data, build(k) -> member k's masked model on ``device``, config(k) -> member k's TrainConfig)."""
    from lth_sparse.data import load_dataset
    from lth_sparse.models import create_model
    from lth_sparse.train import TrainConfig

    if network == "planting":
        from lth_sparse.masks import Masks
        from lth_sparse.nn import masked
        from lth_sparse.planting import make_target, plant

        data = _cut(load_dataset("circle", seed=0, device=device))
        target = make_target("circle", 5)

        def build(k: int):
            host, planted, _ = plant(target, 100, seed=k)
            model = masked(host.float()).to(device)
            Masks({n: m.to(device) for n, m in planted.items()}).apply_to(model)
            return model

        return data, build, lambda k: TrainConfig(optimizer="adam", lr=1e-3 * (1 + LR_SPREAD * k), batch_size=32)
    if network == "lenet300":
        data = _cut(load_dataset("fashion-mnist", seed=0, device=device))
        name, batch, lr = "lenet300", 128, 0.02
    else:
        data = _cut(load_dataset("digits", seed=0, device=device))
        name, batch, lr = "conv2", 32, 0.01

    def build(k: int):
        torch.manual_seed(k)
        model = create_model(name, data.input_shape, data.num_classes).to(device)
        _random_masks(model, k, 0.8).to(device).apply_to(model)
        return model

    return data, build, lambda k: TrainConfig(lr=lr * (1 + LR_SPREAD * k), momentum=0.9, batch_size=batch)


class PeakMemory:
    """The peak memory a block of work adds over what was in use when it started, in bytes."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {field} in /proc/self/status")

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak resident set size, to now
                f.write("5")
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = self._status("VmHWM") - self.start


@contextlib.contextmanager
def backend(name: str | None):
    """The masked layers' backend forced to ``name`` inside the block (None: their default)."""
    saved = os.environ.get("LTH_SPARSE_BACKEND")
    if name is not None:
        os.environ["LTH_SPARSE_BACKEND"] = name
    try:
        yield
    finally:
        os.environ.pop("LTH_SPARSE_BACKEND", None)
        if saved is not None:
            os.environ["LTH_SPARSE_BACKEND"] = saved


def timed(device: str, work) -> tuple[float, float]:
    """(seconds, peak MiB added) of ``work()``."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak / 2**20


def measure(network: str, k: int, data, build, config, steps: int, device: str) -> dict:
    from lth_sparse.train import train, train_stacked

    initial = [build(m) for m in range(k)]
    cfgs = [config(m) for m in range(k)]
    seeds = list(range(k))

    def separately(models):
        for model, cfg, seed in zip(models, cfgs, seeds):
            train(model, data, cfg, seed=seed, end_iteration=steps, progress=False)

    separate = [copy.deepcopy(m) for m in initial]
    separate_seconds, separate_peak = timed(device, lambda: separately(separate))
    dense = [copy.deepcopy(m) for m in initial]
    with backend("torch"):
        dense_seconds, _ = timed(device, lambda: separately(dense))
    stacked = [copy.deepcopy(m) for m in initial]
    stacked_seconds, stacked_peak = timed(
        device, lambda: train_stacked(stacked, [data] * k, cfgs, seeds=seeds, end_iteration=steps, progress=False)
    )
    difference = max(
        (a - b).abs().max().item()
        for s, t in zip(separate, stacked)
        for a, b in zip(s.state_dict().values(), t.state_dict().values())
        if a.is_floating_point()
    )
    return {
        "network": network,
        "members": k,
        "steps": steps,
        "separate_seconds": separate_seconds,
        "separate_dense_seconds": dense_seconds,
        "stacked_seconds": stacked_seconds,
        "speedup": separate_seconds / stacked_seconds,
        "speedup_over_dense": dense_seconds / stacked_seconds,
        "separate_peak_mib": separate_peak,
        "stacked_peak_mib": stacked_peak,
        "max_weight_difference": difference,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=40, help="training iterations of every member (default 40)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--quick", action="store_true", help="5 steps, K up to 16, results not written")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    steps = 5 if args.quick else args.steps
    rows = []
    for network in args.networks:
        data, build, config = setup(network, args.device)
        measure(network, 2, data, build, config, 2, args.device)  # untimed: first calls, caches
        for k in NETWORKS[network]["ks"]:
            if args.quick and k > 16:
                continue
            row = measure(network, k, data, build, config, steps, args.device)
            rows.append(row)
            print(
                f"{network:<9} K={k:<3} separate {row['separate_seconds']:7.2f} s (dense "
                f"{row['separate_dense_seconds']:7.2f} s)  stacked {row['stacked_seconds']:7.2f} s  "
                f"{row['speedup']:5.2f}x ({row['speedup_over_dense']:5.2f}x)",
                flush=True,
            )
    print()
    print(f"stacked against separate trainings, {steps} steps per member, device {args.device}")
    print_table(
        [
            ("network", "network", ""),
            ("members", "K", "d"),
            ("separate_seconds", "separate s", ".2f"),
            ("separate_dense_seconds", "separate dense s", ".2f"),
            ("stacked_seconds", "stacked s", ".2f"),
            ("speedup", "speed-up", ".2f"),
            ("speedup_over_dense", "over dense", ".2f"),
            ("separate_peak_mib", "separate MiB", ".1f"),
            ("stacked_peak_mib", "stacked MiB", ".1f"),
            ("max_weight_difference", "max |dw|", ".1e"),
        ],
        rows,
    )
    if not args.quick:
        write_results(
            "stacked", args.device, rows, {"steps": steps, "eval_examples": EVAL_EXAMPLES, "lr_spread": LR_SPREAD}
        )
    return rows


if __name__ == "__main__":
    main()
