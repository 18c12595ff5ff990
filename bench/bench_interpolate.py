"""Evaluation along the linear path between two networks: one batched pass against the loop over alphas.

The torch way: for each alpha, build the interpolated state dict, load it into the
model and evaluate. Ours: :func:`lth_sparse.nn.path.evaluate_path`, which runs
all alphas in one pass (the first layer's input is shared: two products instead
of A). Both in the same run, with the same inputs; the results are checked equal.

    python bench/bench_interpolate.py            # LeNet-300-100 on 10,000 examples, Conv-4 on 500, 21 alphas
    python bench/bench_interpolate.py --quick    # smaller, seconds
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


@torch.no_grad()
def loop_over_alphas(model, state_a, state_b, alphas, x, y, batch_size):
    losses, accs = [], []
    for alpha in alphas:
        state = {k: torch.lerp(state_a[k], state_b[k], alpha) if state_a[k].is_floating_point() else state_a[k]
                 for k in state_a}
        model.load_state_dict(state)
        model.eval()
        loss = correct = 0.0
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start:start + batch_size])
            loss += F.cross_entropy(out, y[start:start + batch_size], reduction="sum").item()
            correct += (out.argmax(1) == y[start:start + batch_size]).sum().item()
        losses.append(loss / x.shape[0])
        accs.append(correct / x.shape[0])
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


def best_of(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def run_case(name, shape, examples, num_alphas, repeats, batch_size):
    from lth_sparse.models import create_model
    from lth_sparse.nn.path import evaluate_path

    torch.manual_seed(0)
    model = create_model(name, shape, 10)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    state_b = copy.deepcopy(create_model(name, shape, 10).state_dict())
    x, y = torch.randn(examples, *shape), torch.randint(0, 10, (examples,))
    alphas = torch.linspace(0, 1, num_alphas)
    t_loop, (loss_loop, acc_loop) = best_of(
        lambda: loop_over_alphas(copy.deepcopy(model), state_a, state_b, alphas, x, y, batch_size), repeats)
    t_ours, (loss_ours, acc_ours) = best_of(
        lambda: evaluate_path(model, state_a, state_b, alphas, x, y, batch_size), repeats)
    max_loss_diff = (loss_loop - loss_ours.cpu()).abs().max().item()
    return {"model": name, "examples": examples, "alphas": num_alphas, "loop_s": t_loop, "ours_s": t_ours,
            "speedup": t_loop / t_ours, "max_loss_diff": max_loss_diff,
            "acc_equal": bool(torch.allclose(acc_loop, acc_ours.cpu(), atol=2 / examples))}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer examples, one repeat")
    parser.add_argument("--alphas", type=int, default=21)
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    repeats = 1 if args.quick else 2
    rows = [run_case("lenet300", (1, 28, 28), 10_000 // scale, args.alphas, repeats, 1000),
            run_case("conv4", (3, 32, 32), 500 // scale, args.alphas, repeats, 250)]
    print(f"evaluation at {args.alphas} points of a linear path, CPU, {torch.get_num_threads()} threads")
    print_table([("model", "model", ""), ("examples", "examples", "d"), ("loop_s", "loop (s)", ".3f"),
                 ("ours_s", "batched (s)", ".3f"), ("speedup", "speed-up", ".2f"),
                 ("max_loss_diff", "max |loss diff|", ".1e"), ("acc_equal", "same acc", "")], rows)
    if not args.quick:
        write_results("interpolate", "cpu", rows, {"alphas": args.alphas})
    return rows


if __name__ == "__main__":
    main()
