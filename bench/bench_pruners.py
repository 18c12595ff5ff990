"""Single-shot saliency pruners (SNIP, GraSP, SynFlow, magnitude): scoring + global selection against the
Synaptic-Flow way, on VGG-16 and ResNet-20 (CIFAR-10 shapes, CPU).

Both ways prune the same freshly initialised model (``lth_sparse.models.create_model``, seed 0, input
3x32x32, 10 classes) to ``--density`` (1% kept, Fischer & Burkholz's sparsity 0.01) from one batch of
``--batch`` random examples (default 64, the low end of the usual 64-256 pruning batch, to keep the run short;
Fischer & Burkholz's pruning set, Synaptic-Flow's default, is 10 examples per class, ``--batch 100``
for CIFAR-10: SNIP's and GraSP's scoring grows with the batch, their selection does not), in eval mode,
float32 (SynFlow in float64 both ways):

- **ours**: the public pruners ``prune_snip``, ``prune_grasp``, ``prune_synflow`` and
  ``get_pruner("magnitude")`` on the masked model; the time inside the global selection
  (``select_kept``: ``lth_sparse.ops.prune_lowest`` with its checks) is measured during the same call,
  the rest (checks, counts, scoring) is scoring.
- **the Synaptic-Flow way**, its ``Pruners/pruners.py`` pattern written out as a user would on the same
  weights: a copy pruned with ``torch.nn.utils.prune.custom_from_mask`` (``weight = weight_orig *
  weight_mask`` on every forward, as Synaptic-Flow's masked layers), the per-parameter score dict (SNIP:
  the mask's gradient, normalised by the sum of all scores; GraSP: two forward passes, the first gradient
  without graph, then the Hessian-gradient product, normalised; SynFlow: every state entry made positive in
  place and its sign restored afterwards, on the copy made float64 once per pruning (timed, as our
  float64 copy is; Synaptic-Flow's own ``model.double()`` line, commented out in its ``SynFlow.score``,
  would convert in every round and rebind the mask buffers after the first); magnitude: ``|w|``), then
  ``torch.cat`` of all flattened scores + ``torch.kthvalue`` for the global threshold, and the masks by
  comparison (``torch.where(score <= threshold, 0, 1)`` copied into ``weight_mask``).

Also SynFlow iterated ``--synflow-iterations`` times (10; Tanaka et al. prescribe 100, which for the
Synaptic-Flow way on VGG-16 alone would take minutes here) on the exponential schedule, both ways.

Each case runs once per round, cases in turn (a shared machine's load falls on all alike), ``--rounds``
rounds after one warm-up run, median per stage reported, and the minimum (``time.perf_counter``: each run
takes 0.01-20 s, and the split needs the stages of one run; on a shared machine other work only ever slows a
run down, so the ratio of the fastest runs is the steadier figure). Before timing, the masks are checked: ours
keep exactly ``round(density * N)``, and the overlap with the Synaptic-Flow way's kept weights is reported (its
threshold keeps ties at the threshold out, so its count may differ slightly). Prints one table
(end-to-end ratio, scoring ratio, selection ratio) and writes ``bench/results/pruners-cpu.json``.

    python bench/bench_pruners.py               # 2-5 minutes on 2 cores (torch's default threads)
    python bench/bench_pruners.py --threads 1   # under 2 minutes; steadier where other work shares the cores
    python bench/bench_pruners.py --quick       # ResNet-20, batch 8, seconds; nothing is written

The recorded ``bench/results/pruners-cpu.json`` is a ``--threads 1`` run (see its ``machine``): on the shared
2-core machine it was measured on, runs with 2 threads waited on each other's OpenMP barriers and varied
by 5x from run to run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results  # noqa: E402

SEED = 0
INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
GRASP_TEMPERATURE = 200.0  # Synaptic-Flow's (and Wang et al.'s code's) temperature, ours too by default
PRUNERS = ("magnitude", "snip", "grasp", "synflow", "synflow_iterative")


# --- the Synaptic-Flow way ---------------------------------------------------------------------------------------


def synaptic_flow_model(model: nn.Module) -> tuple[nn.Module, list[tuple[torch.Tensor, nn.Parameter]]]:
    """A plain copy of ``model`` whose layers are pruned with ``torch.nn.utils.prune`` (all-ones masks), and
    its (mask, weight) pairs: Synaptic-Flow's ``masked_parameters``."""
    from torch.nn.utils import prune

    from lth_sparse.nn import to_torch_prune

    net = to_torch_prune(copy.deepcopy(model)).eval()
    pairs = [(m.weight_mask, m.weight_orig) for m in net.modules() if prune.is_pruned(m) and hasattr(m, "weight_mask")]
    return net, pairs


class SynapticFlow:
    """Synaptic-Flow's scoring (``Pruners/pruners.py``) and ``_global_mask``, timed by stage."""

    def __init__(self, model: nn.Module, batch, density: float) -> None:
        self.model = model
        self.batch = batch
        self.density = density

    @staticmethod
    def to_float64(net: nn.Module) -> list[tuple[torch.Tensor, nn.Parameter]]:
        """Make the copy float64 once, before the rounds (timed as scoring): Synaptic-Flow's own
        ``model.double()`` (commented out in its ``SynFlow.score``) would convert inside every round, which
        rebinds the mask buffers after the first, so that its later masks would not apply."""
        net.double()
        return [(m.weight_mask, m.weight_orig) for m in net.modules() if hasattr(m, "weight_mask")]

    # scores: {id(param): score}, as Synaptic-Flow keeps them
    def score_magnitude(self, net, pairs):
        return {id(p): torch.clone(p.data).detach().abs_() for _, p in pairs}

    def score_snip(self, net, pairs):
        for m, _ in pairs:
            m.requires_grad = True
        data, target = self.batch
        F.cross_entropy(net(data), target).backward()
        scores = {}
        for m, p in pairs:
            scores[id(p)] = torch.clone(m.grad).detach().abs_()
            p.grad.data.zero_()
            m.grad.data.zero_()
            m.requires_grad = False
        norm = torch.sum(torch.cat([torch.flatten(v) for v in scores.values()]))
        for v in scores.values():
            v.div_(norm)
        return scores

    def score_grasp(self, net, pairs):
        params = [p for _, p in pairs]
        data, target = self.batch
        stopped = 0
        grads = torch.autograd.grad(F.cross_entropy(net(data) / GRASP_TEMPERATURE, target), params)
        stopped += torch.cat([g.reshape(-1) for g in grads])
        grads = torch.autograd.grad(F.cross_entropy(net(data) / GRASP_TEMPERATURE, target), params, create_graph=True)
        (stopped * torch.cat([g.reshape(-1) for g in grads])).sum().backward()
        scores = {}
        for p in params:
            scores[id(p)] = torch.clone(p.grad * p.data).detach()
            p.grad.data.zero_()
        norm = torch.abs(torch.sum(torch.cat([torch.flatten(v) for v in scores.values()]))) + 1e-10
        for v in scores.values():
            v.div_(norm)
        return scores

    def score_synflow(self, net, pairs):
        signs = {}
        with torch.no_grad():
            for name, param in net.state_dict().items():
                signs[name] = torch.sign(param)
                param.abs_()
        output = net(torch.ones([1, *self.batch[0].shape[1:]], dtype=torch.float64))
        torch.sum(output).backward()
        scores = {}
        for _, p in pairs:
            scores[id(p)] = torch.clone(p.grad * p).detach().abs_()
            p.grad.data.zero_()
        with torch.no_grad():
            for name, param in net.state_dict().items():
                param.mul_(signs[name])
        return scores

    @staticmethod
    def global_mask(pairs, scores, density: float) -> None:
        global_scores = torch.cat([torch.flatten(v) for v in scores.values()])
        k = int((1.0 - density) * global_scores.numel())
        if not k < 1:
            threshold, _ = torch.kthvalue(global_scores, k)
            zero = torch.tensor([0.0], dtype=pairs[0][0].dtype)
            one = torch.tensor([1.0], dtype=pairs[0][0].dtype)
            for mask, param in pairs:
                mask.copy_(torch.where(scores[id(param)] <= threshold, zero, one))

    def run(self, pruner: str, iterations: int) -> tuple[dict[str, float], list[torch.Tensor]]:
        """Prune a fresh copy; (seconds by stage, the masks)."""
        net, pairs = synaptic_flow_model(self.model)  # the user's pruned model: made before timing
        score = getattr(self, "score_" + ("synflow" if pruner == "synflow_iterative" else pruner))
        rounds = iterations if pruner == "synflow_iterative" else 1
        seconds = {"score": 0.0, "select": 0.0}
        if pruner.startswith("synflow"):
            start = time.perf_counter()
            pairs = self.to_float64(net)
            seconds["score"] += time.perf_counter() - start
        for epoch in range(rounds):
            start = time.perf_counter()
            scores = score(net, pairs)
            middle = time.perf_counter()
            self.global_mask(pairs, scores, self.density ** ((epoch + 1) / rounds))
            seconds["score"] += middle - start
            seconds["select"] += time.perf_counter() - middle
        return seconds, [m.detach().bool() for m, _ in pairs]


# --- ours --------------------------------------------------------------------------------------------------------


class Ours:
    """The public pruners; the time spent in the selection (``select_kept``, as the saliency module calls it)
    during the call is the selection, the rest is scoring."""

    def __init__(self, model: nn.Module, batch, density: float) -> None:
        self.model = model
        self.batch = batch
        self.density = density

    def call(self, pruner: str, iterations: int):
        from lth_sparse.prune import get_pruner, prune_grasp, prune_snip, prune_synflow

        if pruner == "magnitude":
            return get_pruner("magnitude")(self.model, density=self.density)
        if pruner == "snip":
            return prune_snip(self.model, density=self.density, batch=self.batch)
        if pruner == "grasp":
            return prune_grasp(self.model, density=self.density, batch=self.batch, temperature=GRASP_TEMPERATURE)
        return prune_synflow(
            self.model, density=self.density, iterations=iterations if pruner == "synflow_iterative" else 1
        )

    def run(self, pruner: str, iterations: int):
        from lth_sparse.prune import saliency

        inner = saliency.select_kept  # what every pruner selects with
        spent = [0.0]

        def timed_select(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        saliency.select_kept = timed_select
        try:
            start = time.perf_counter()
            masks = self.call(pruner, iterations)
            total = time.perf_counter() - start
        finally:
            saliency.select_kept = inner
        return {"score": total - spent[0], "select": spent[0]}, list(masks.values())


# --- the benchmark -----------------------------------------------------------------------------------------------


def make_case(model_name: str, batch_size: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    from lth_sparse.models import create_model

    torch.manual_seed(SEED)
    model = create_model(model_name, INPUT_SHAPE, CLASSES)
    g = torch.Generator().manual_seed(SEED + 1)
    batch = (torch.randn(batch_size, *INPUT_SHAPE, generator=g), torch.randint(0, CLASSES, (batch_size,), generator=g))
    return model, batch


def check(ours: list[torch.Tensor], theirs: list[torch.Tensor], density: float) -> dict[str, float | int]:
    total = sum(m.numel() for m in ours)
    kept = sum(int(m.sum()) for m in ours)
    assert kept == round(density * total), f"ours kept {kept}, not round(density * N) = {round(density * total)}"
    both = sum(int((a & b).sum()) for a, b in zip(ours, theirs))
    return {
        "weights": total,
        "kept": kept,
        "kept_synaptic_flow": sum(int(m.sum()) for m in theirs),
        "agreement": both / max(kept, 1),
    }


def bench_model(model_name: str, args) -> list[dict]:
    model, batch = make_case(model_name, args.batch)
    ways: dict[str, Callable] = {
        "ours": Ours(model, batch, args.density).run,
        "synaptic_flow": SynapticFlow(model, batch, args.density).run,
    }
    pruners = [p for p in PRUNERS if p in args.pruners]
    rows = []
    for pruner in pruners:
        print(f"{model_name} {pruner}: checking ...", flush=True)
        (_, ours_masks), (_, their_masks) = (ways[w](pruner, args.synflow_iterations) for w in ways)  # + warm-up
        rows.append({"model": model_name, "pruner": pruner, **check(ours_masks, their_masks, args.density)})
    times = {(p, w): [] for p in pruners for w in ways}
    for r in range(args.rounds):
        for pruner in pruners:
            for way, run in ways.items():
                times[pruner, way].append(run(pruner, args.synflow_iterations)[0])
        print(f"{model_name}: round {r + 1}/{args.rounds} done", flush=True)
    for row in rows:
        for way in ways:
            samples = times[row["pruner"], way]
            for stage, of in (
                ("score_", lambda s: s["score"]),
                ("select_", lambda s: s["select"]),
                ("", lambda s: s["score"] + s["select"]),
            ):
                row[f"{way}_{stage}s"] = statistics.median(of(s) for s in samples)
                row[f"{way}_{stage}min_s"] = min(of(s) for s in samples)
        for stage in ("", "score_", "select_"):
            row[f"{stage}ratio"] = row[f"synaptic_flow_{stage}s"] / row[f"ours_{stage}s"]
            row[f"{stage}ratio_min"] = row[f"synaptic_flow_{stage}min_s"] / row[f"ours_{stage}min_s"]
        row["iterations"] = args.synflow_iterations if row["pruner"] == "synflow_iterative" else 1
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,vgg16", help="comma-separated (default resnet20,vgg16)")
    parser.add_argument("--pruners", default=",".join(PRUNERS), help=f"comma-separated subset of {PRUNERS}")
    parser.add_argument("--batch", type=int, default=64, help="examples in the pruning batch (default 64)")
    parser.add_argument("--density", type=float, default=0.01, help="share of the weights kept (default 0.01)")
    parser.add_argument("--synflow-iterations", type=int, default=10, help="rounds of iterative SynFlow (10)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over all cases (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--quick", action="store_true", help="ResNet-20, batch 8, 1 round, 3 SynFlow rounds; nothing is written"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.rounds, args.synflow_iterations = "resnet20", 8, 1, 3
    args.pruners = args.pruners.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"pruning to density {args.density} with a batch of {args.batch}; {torch.get_num_threads()} threads")
    rows = [row for name in args.models.split(",") for row in bench_model(name.strip(), args)]
    print()
    print_table(
        [
            ("model", "model", ""),
            ("pruner", "pruner", ""),
            ("synaptic_flow_s", "S-F way (s)", ".3f"),
            ("ours_s", "ours (s)", ".3f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "of mins", ".2f"),
            ("synaptic_flow_score_s", "S-F score", ".3f"),
            ("ours_score_s", "ours score", ".3f"),
            ("score_ratio", "ratio", ".2f"),
            ("synaptic_flow_select_s", "S-F select", ".4f"),
            ("ours_select_s", "ours select", ".4f"),
            ("select_ratio", "ratio", ".1f"),
            ("agreement", "overlap", ".4f"),
        ],
        rows,
    )
    print(
        f"\n{time.perf_counter() - start:.0f} s in all; ratio = Synaptic-Flow way time / ours (medians of "
        f"{args.rounds} rounds; 'of mins': the ratio of the fastest runs, less sensitive to other work on a shared "
        f"machine); overlap = share of our kept weights the Synaptic-Flow way keeps too"
    )
    if args.quick:  # a smoke-sized run never replaces the recorded results
        return rows
    write_results(
        "pruners",
        "cpu",
        rows,
        {
            "input_shape": list(INPUT_SHAPE),
            "classes": CLASSES,
            "batch": args.batch,
            "density": args.density,
            "synflow_iterations": args.synflow_iterations,
            "seed": SEED,
            "grasp_temperature": GRASP_TEMPERATURE,
            "timer": (
                f"time.perf_counter per stage, median (and min) over {args.rounds} interleaved rounds after a "
                "warm-up run"
            ),
            "baseline": "Synaptic-Flow's Pruners/pruners.py scoring and _global_mask on a torch.nn.utils.prune copy",
        },
    )
    return rows


if __name__ == "__main__":
    main()
