"""The most stacking can gain for a network: the time of one separate training step against the time of the
arithmetic in it that no stacking removes, in the same run.

Stacking K trainings removes per-step overhead (Python, autograd, the optimizer's per-tensor work, small-kernel
launches) but not arithmetic: the stacked ``bmm`` multiplies the same matrices as K separate ``mm`` calls. So if
a separate step of a network takes ``step`` seconds and its matrix products (the forward ``x @ W^T`` and the two
backward products of every ``Linear`` layer, dense, on the same shapes) take ``matmul`` seconds, stacking can
make it at most ``step / matmul`` times faster, however many members share the stack. Measured here, one
thread, for the MLPs of ``bench/bench_stacked.py``:

- ``planting``: the planting benchmark's host MLP (Circle, depth 5, width 100), batch 32, dense;
- ``lenet300``: LeNet-300-100 (784-300-100-10), batch 128, dense.

Each: ``train`` of one masked model (dense masks, SGD with momentum) for ``--steps`` steps with no evaluation
inside (per step: the whole ``train`` call's time over its steps), against the same steps' dense products alone.
Writes bench/results/stack_bound-cpu.json.

    python bench/bench_stack_bound.py [--steps 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402

NETWORKS = {"planting": ([2, 100, 100, 100, 4], 32), "lenet300": ([784, 300, 100, 10], 128)}


def _best(work, repeats: int = 3) -> float:
    work()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(name: str, steps: int) -> dict:
    from lth_sparse.data import Dataset, Split
    from lth_sparse.nn import masked
    from lth_sparse.train import TrainConfig, train

    widths, batch = NETWORKS[name]
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
    model = masked(torch.nn.Sequential(*layers))
    n = steps * batch
    x = torch.randn(n, widths[0])
    y = torch.randint(0, widths[-1], (n,))
    empty = Split(x[:0], y[:0])
    data = Dataset(name, Split(x, y), empty, Split(x[:batch], y[:batch]), widths[-1], (widths[0],), None)
    cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=0.01, momentum=0.9, eval_every=10**9)
    step = _best(lambda: train(model, data, cfg, seed=0, progress=False)) / steps

    weights = [torch.randn(b, a) for a, b in zip(widths[:-1], widths[1:])]
    inputs = [torch.randn(batch, a) for a in widths[:-1]]
    grads = [torch.randn(batch, b) for b in widths[1:]]

    def products() -> None:
        for _ in range(steps):
            for w, inp, g in zip(weights, inputs, grads):
                inp @ w.t()  # forward
                g @ w  # gradient of the input
                g.t() @ inp  # gradient of the weight

    matmul = _best(products) / steps
    return {
        "network": name,
        "batch": batch,
        "step_ms": step * 1e3,
        "matmul_ms": matmul * 1e3,
        "arithmetic_share": matmul / step,
        "most_stacking_gains": step / matmul,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps measured (default 400)")
    parser.add_argument("--quick", action="store_true", help="40 steps, results not written")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 40 if args.quick else args.steps
    rows = [measure(name, steps) for name in NETWORKS]
    print("one separate training step against its matrix products alone (1 thread)")
    print_table(
        [
            ("network", "network", ""),
            ("batch", "batch", "d"),
            ("step_ms", "step (ms)", ".3f"),
            ("matmul_ms", "products (ms)", ".3f"),
            ("arithmetic_share", "arithmetic share", ".2f"),
            ("most_stacking_gains", "stacking gains at most", ".2f"),
        ],
        rows,
    )
    if not args.quick:
        write_results("stack_bound", "cpu", rows)
    return rows


if __name__ == "__main__":
    main()
