"""One IMP round of LeNet-300-100 on Fashion-MNIST: this stack against two torch ways, in one run.

The usual way: torchvision's FashionMNIST with ToTensor + Normalize transforms, a
torch DataLoader, a plain nn.Sequential, and ``torch.nn.utils.prune.global_unstructured``
(L1Unstructured) with the survivors rewound by copying the initial weights into
``weight_orig``. The careful way: the same model and pruning, but the data held as
tensors, as lth_sparse holds it (torchvision's ``.data`` / ``.targets``, normalised once;
batches by slicing a random permutation): no DataLoader, no per-example transforms.
This stack: tensor-held data (:mod:`lth_sparse.data`), masked layers,
:func:`lth_sparse.prune.prune_magnitude` and :func:`lth_sparse.train.train`.
A round = prune ``--amount`` (20%) of the trained dense network, rewind, train ``--epochs``,
evaluate on the test set (lth_sparse also evaluates its 12,000 validation examples, once per
epoch: work the torch ways skip). All use the same optimizer (SGD 0.02, momentum 0.9, batch 128).
So the ratio to the usual way is mostly data loading; the ratio to the careful way is what
the masked layers, the pruning and the training loop add. A fourth way, lth_sparse with its
CPU kernels held on their dense path, shows what the sparse masked layers add at high
sparsity (``--amount 0.95``: a late IMP round).

    python bench/bench_imp_round.py [--epochs 1] [--repeats 2] [--amount 0.2]

Every way reads the same uncompressed IDX files (decompressed from Debian's dataset-fashion-mnist
before any timing).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import write_results  # noqa: E402

LR, MOMENTUM, BATCH = 0.02, 0.9, 128
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel statistics
TRAIN_EXAMPLES = 48_000  # the size of lth_sparse's 80% training split


def lenet300():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def pruned_and_rewound(init_state: dict, trained_state: dict, amount: float) -> nn.Sequential:
    """The plain network trained (``trained_state``), pruned by ``torch.nn.utils.prune``
    (global L1, ``amount``) and its survivors rewound to ``init_state``: what both torch ways train."""
    from torch.nn.utils import prune

    model = lenet300()
    model.load_state_dict(trained_state)
    params = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    with torch.no_grad():  # rewind the survivors
        for i, (m, _) in zip([1, 3, 5], params):
            m.weight_orig.copy_(init_state[f"{i}.weight"])
            m.bias.copy_(init_state[f"{i}.bias"])
    return model


def train_and_test(model: nn.Module, train_batches, test_batches) -> float:
    """SGD over ``train_batches()`` (one call per epoch), then the accuracy over ``test_batches``."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for epoch_batches in train_batches:
        for x, y in epoch_batches():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_batches:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def usual_round(root: str, init_state: dict, trained_state: dict, epochs: int, amount: float) -> tuple[float, float]:
    from torchvision import datasets, transforms

    start = time.perf_counter()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_set = datasets.FashionMNIST(root, train=True, transform=tf, download=False)
    test_set = datasets.FashionMNIST(root, train=False, transform=tf, download=False)
    train_set = torch.utils.data.Subset(train_set, range(TRAIN_EXAMPLES))
    model = pruned_and_rewound(init_state, trained_state, amount)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    accuracy = train_and_test(model, [lambda: loader] * epochs, torch.utils.data.DataLoader(test_set, batch_size=1000))
    return time.perf_counter() - start, accuracy


def tensors_round(root: str, init_state: dict, trained_state: dict, epochs: int, amount: float) -> tuple[float, float]:
    """The careful torch way: the same pruning, the data as normalised tensors, batches by slicing."""
    from torchvision import datasets

    def as_input(images: torch.Tensor) -> torch.Tensor:
        return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)

    start = time.perf_counter()
    train_raw = datasets.FashionMNIST(root, train=True, download=False)
    test_raw = datasets.FashionMNIST(root, train=False, download=False)
    x_train, y_train = as_input(train_raw.data[:TRAIN_EXAMPLES]), train_raw.targets[:TRAIN_EXAMPLES]
    x_test, y_test = as_input(test_raw.data), test_raw.targets
    model = pruned_and_rewound(init_state, trained_state, amount)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), BATCH):
            index = order[i : i + BATCH]
            yield x_train[index], y_train[index]

    test = [(x_test[i : i + 1000], y_test[i : i + 1000]) for i in range(0, len(y_test), 1000)]
    accuracy = train_and_test(model, [epoch] * epochs, test)
    return time.perf_counter() - start, accuracy


def our_round(
    root: str, init_state: dict, trained_state: dict, epochs: int, amount: float, sparse_kernels: bool = True
) -> tuple[float, float]:
    from lth_sparse.data import load_dataset
    from lth_sparse.masks import Masks
    from lth_sparse.nn import masked
    from lth_sparse.ops import _cpu
    from lth_sparse.prune import prune_magnitude
    from lth_sparse.train import TrainConfig, train

    start = time.perf_counter()
    data = load_dataset("fashion-mnist", data_dir=root, seed=0, download=False)  # the torch ways' files
    model = masked(lenet300())
    model.load_state_dict(trained_state, strict=False)
    masks = prune_magnitude(model, amount, masks=Masks.ones_like(model))
    model.load_state_dict(init_state, strict=False)
    masks.apply_to(model)
    with _cpu.held_on("auto" if sparse_kernels else "dense"):
        result = train(
            model, data, TrainConfig(epochs=epochs, batch_size=BATCH, lr=LR, momentum=MOMENTUM), progress=False
        )
    return time.perf_counter() - start, result.test_accuracy


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--amount", type=float, default=0.2, help="fraction of the weights pruned (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="one repeat, results not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1

    from lth_sparse.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR

    files = sorted(Path(DEBIAN_FASHION_MNIST_DIR).glob("*-ubyte.gz"))
    if len(files) != 4:
        parser.error(
            f"needs Fashion-MNIST's four files in {DEBIAN_FASHION_MNIST_DIR} (apt install dataset-fashion-mnist)"
        )
    tmp = tempfile.mkdtemp()
    raw = Path(tmp) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in files:
        with gzip.open(gz) as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    torch.manual_seed(0)
    dense = lenet300()
    init_state = copy.deepcopy(dense.state_dict())
    trained_state = {k: v + 0.01 * torch.randn_like(v) for k, v in init_state.items()}  # a stand-in "trained" net

    ways = {
        "usual": lambda: usual_round(tmp, init_state, trained_state, args.epochs, args.amount),
        "tensors": lambda: tensors_round(tmp, init_state, trained_state, args.epochs, args.amount),
        "lth_sparse": lambda: our_round(tmp, init_state, trained_state, args.epochs, args.amount),
        "lth_sparse_dense_kernels": lambda: our_round(
            tmp, init_state, trained_state, args.epochs, args.amount, sparse_kernels=False
        ),
    }
    # One untimed round of each first: the first round in a process pays for imports, first calls and
    # the file cache (measured 3.2 s against 2.1 s for the next), which would bias whichever runs first.
    for way in ways.values():
        way()
    runs = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.repeats):  # interleaved, order rotated, so all see the same machine load
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(ways[name]())
    shutil.rmtree(tmp)
    labels = {
        "usual": "DataLoader + torch.nn.utils.prune",
        "tensors": "tensors + torch.nn.utils.prune",
        "lth_sparse": "lth_sparse",
        "lth_sparse_dense_kernels": "lth_sparse, dense path only",
    }
    rows = [
        {
            "way": way,
            "seconds": statistics.median(t for t, _ in r),
            "test_accuracy": r[-1][1],
            "all_seconds": [t for t, _ in r],
        }
        for way, r in runs.items()
    ]
    t = {row["way"]: row["seconds"] for row in rows}
    print(
        f"one IMP round of LeNet-300-100 on Fashion-MNIST, {args.amount:.0%} pruned ({args.epochs} epoch(s), "
        f"{torch.get_num_threads()} threads)"
    )
    print(f"{'way':<34}{'seconds':>10}{'test acc':>10}")
    for row in rows:
        print(f"{labels[row['way']]:<34}{row['seconds']:>10.2f}{row['test_accuracy']:>10.4f}")
    print(
        f"speed-up: {t['usual'] / t['lth_sparse']:.2f}x over the usual way (mostly data loading), "
        f"{t['tensors'] / t['lth_sparse']:.2f}x over tensors + torch.nn.utils.prune"
    )
    if not args.quick:
        name = "imp_round" if args.amount == 0.2 else f"imp_round_{round(args.amount * 100)}pct"
        write_results(
            name,
            "cpu",
            rows,
            {
                "epochs": args.epochs,
                "amount": args.amount,
                "repeats": args.repeats,
                "speedup": t["usual"] / t["lth_sparse"],
                "speedup_over_tensors": t["tensors"] / t["lth_sparse"],
            },
        )
    return rows


if __name__ == "__main__":
    main()
