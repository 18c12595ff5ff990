"""A whole instability measurement: train two copies from one state under different SGD noise, then evaluate the
path between them at 21 alphas on the train and test splits; lth_sparse against the way a user writes it.

The user's way (as the anchors' code does it: OpenLTH's training loop, the mode-connectivity repositories'
evaluation): a ``DataLoader`` over the tensors for training and evaluation, an SGD loop, then for each alpha the
interpolated state dict loaded into the model, its batch-norm statistics reset and re-estimated over the same
training batches (``momentum=None``, train-mode forwards), and an evaluation pass per split. Ours: the training
of :func:`lth_sparse.pipelines.steps.train_masked` (tensors on the device, no loader) and one
:func:`lth_sparse.analysis.interpolate` call (``bn="recompute"``: every alpha's statistics in the same passes,
then one batched evaluation). The same initial state, data, epochs, batch size and learning rate both ways;
each way's barrier is printed (they differ only by the SGD noise of the data order). Ours' training also
validates after every epoch and tests each copy at the end (the records a pipeline keeps); the user's loop
only trains.

    python bench/bench_instability.py          # LeNet-300-100 on 10,000 examples, Conv-2 + BN on 1,000
    python bench/bench_instability.py --quick  # seconds

Writes ``bench/results/instability-cpu.json`` with the machine.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402
from bench.bench_interpolate import bn_model, load_at  # noqa: E402


def user_train(model, x, y, epochs, batch_size, lr, seed):
    """An SGD loop over a shuffled DataLoader, as a user writes it."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return copy.deepcopy(model.state_dict())


@torch.no_grad()
def user_path(model, state_a, state_b, alphas, splits, bn_inputs, batch_size):
    """Test error per alpha, loading each interpolated state dict; batch norm re-estimated on ``bn_inputs``."""
    errors = {name: [] for name in splits}
    for alpha in alphas:
        load_at(model, state_a, state_b, float(alpha), bn_inputs)
        for name, (x, y) in splits.items():
            wrong = 0
            for xb, yb in torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size):
                wrong += int((model(xb).argmax(1) != yb).sum())
            errors[name].append(wrong / len(y))
    return errors


def run_case(name, data, examples, epochs, alphas, bn_batches, batch_size, lr):
    from lth_sparse.analysis import error_barrier, interpolate
    from lth_sparse.data import Dataset, Split
    from lth_sparse.masks import Masks
    from lth_sparse.nn import masked
    from lth_sparse.pipelines.steps import train_masked
    from lth_sparse.train import TrainConfig

    shape = tuple(data.input_shape)
    train = Split(data.train.x[:examples], data.train.y[:examples])
    test = Split(data.test.x[:examples], data.test.y[:examples])
    small = Dataset(
        name=data.name,
        train=train,
        val=Split(data.val.x[:500], data.val.y[:500]),
        test=test,
        num_classes=10,
        input_shape=shape,
        augment=None,
    )
    torch.manual_seed(0)
    base = bn_model(name, shape)
    start = copy.deepcopy(base.state_dict())
    grid = torch.linspace(0, 1, alphas)
    generator = torch.Generator().manual_seed(7)
    order = torch.randperm(len(train), generator=generator)[: bn_batches * batch_size]
    bn_inputs = list(train.x[order].split(batch_size))

    started = time.perf_counter()
    finals = [user_train(copy.deepcopy(base), train.x, train.y, epochs, batch_size, lr, seed) for seed in (1, 2)]
    user_trained = time.perf_counter() - started
    curves = user_path(
        copy.deepcopy(base),
        finals[0],
        finals[1],
        grid,
        {"train": (train.x, train.y), "test": (test.x, test.y)},
        bn_inputs,
        1000,
    )
    user_total = time.perf_counter() - started
    user_barrier = error_barrier(curves["test"], grid.tolist())

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, eval_every=10**9)
    started = time.perf_counter()
    states = []
    for seed in (1, 2):
        model = masked(copy.deepcopy(base))
        train_masked(model, small, cfg, Masks.ones_like(model), start, seed=seed, progress=False)
        states.append(copy.deepcopy(model.state_dict()))
    ours_trained = time.perf_counter() - started
    result = interpolate(
        masked(copy.deepcopy(base)),
        states[0],
        states[1],
        small,
        alphas=grid,
        bn="recompute",
        bn_batches=bn_batches,
        bn_batch_size=batch_size,
        splits=("train", "test"),
    )
    ours_total = time.perf_counter() - started
    return {
        "model": name,
        "examples": examples,
        "epochs": epochs,
        "alphas": alphas,
        "bn_batches": bn_batches,
        "user_train_s": user_trained,
        "user_path_s": user_total - user_trained,
        "user_s": user_total,
        "ours_train_s": ours_trained,
        "ours_path_s": ours_total - ours_trained,
        "ours_s": ours_total,
        "path_speedup": (user_total - user_trained) / (ours_total - ours_trained),
        "train_speedup": user_trained / ours_trained,
        "speedup": user_total / ours_total,
        "user_barrier": user_barrier.value,
        "ours_barrier": result.barrier("test").value,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 examples, 1 epoch")
    parser.add_argument("--examples", type=int, default=10000, help="LeNet-300-100's training and test examples")
    parser.add_argument(
        "--conv-examples",
        type=int,
        default=1000,
        help="Conv-2 + BN's (its loop re-estimates BN and evaluates 21 nets: ~3 s an example pair)",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--alphas", type=int, default=21)
    args = parser.parse_args(argv)
    from lth_sparse.data import load_dataset

    torch.set_num_threads(1)
    examples, epochs = (1000, 1) if args.quick else (args.examples, args.epochs)
    conv_examples = 200 if args.quick else args.conv_examples
    try:
        data = load_dataset("fashion-mnist", download=False, val_fraction=0.1)
    except (OSError, RuntimeError):
        data = load_dataset("digits:shape=1x28x28", val_fraction=0.1)
        examples = min(examples, len(data.train), len(data.test))
    for name in ("lenet300", "conv2_bn"):  # first-call costs (oneDNN primitives, allocator), untimed, both ways
        run_case(name, data, 256, 1, 3, 1, 128, 0.05)
    rows = [
        run_case("lenet300", data, examples, epochs, args.alphas, 10, 128, 0.05),
        run_case("conv2_bn", data, min(conv_examples, examples), epochs, args.alphas, 10, 128, 0.05),
    ]
    print_table(
        [
            ("model", "model", "s"),
            ("examples", "examples", "d"),
            ("user_train_s", "user train s", ".2f"),
            ("ours_train_s", "ours train s", ".2f"),
            ("user_path_s", "user path s", ".2f"),
            ("ours_path_s", "ours path s", ".2f"),
            ("path_speedup", "path x", ".2f"),
            ("speedup", "whole x", ".2f"),
            ("user_barrier", "barrier (user)", ".4f"),
            ("ours_barrier", "barrier (ours)", ".4f"),
        ],
        rows,
    )
    write_results("instability", "cpu", rows, {"threads": 1, "data": data.name})
    return rows


if __name__ == "__main__":
    main()
