"""``python -m bench``: a quick run of every benchmark, then one table of ratios to the torch way.

Quick sizes (seconds each, a few minutes in all on 2 CPU cores); nothing in
``bench/results/`` is replaced: run each ``bench/bench_<op>.py`` without
``--quick`` for the recorded figures.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_imp_round, bench_interpolate, bench_masked_cpu, bench_select  # noqa: E402
from bench._common import print_table  # noqa: E402


def _select_rows() -> list[dict]:
    t = {r["case"]: r["ms"] / 1e3 for r in bench_select.main(["--quick"])}
    return [{"bench": "select", "case": "global threshold (5M float32)", "torch_way": "cat + kthvalue",
             "torch_s": t["cat_kthvalue"], "ours_s": t["kth_smallest"]},
            {"bench": "select", "case": "global masks, exact k", "torch_way": "cat + kthvalue, s > t",
             "torch_s": t["torch_masks"], "ours_s": t["prune_lowest"]}]


def _interpolate_rows() -> list[dict]:
    return [{"bench": "interpolate", "case": f"{r['model']}, {r['examples']} examples, {r['alphas']} alphas",
             "torch_way": "load each state dict", "torch_s": r["loop_s"], "ours_s": r["ours_s"]}
            for r in bench_interpolate.main(["--quick"])]


def _masked_rows() -> list[dict]:
    """Masked layers, forward + backward, against dense torch (no mask): the bar the issue sets."""
    return [{"bench": "masked_cpu", "case": f"{r['shape']}, {r['sparsity']:.0%} sparse", "torch_way": "dense F.linear",
             "torch_s": r["dense_ms"] / 1e3, "ours_s": r["ours_auto_ms"] / 1e3}
            for r in bench_masked_cpu.main(["--quick"]) if r["sparsity"] in (0.9, 0.95)]


def _imp_round_rows() -> list[dict]:
    t = {r["way"]: r["seconds"] for r in bench_imp_round.main(["--quick"])}
    return [{"bench": "imp_round", "case": "LeNet-300-100 round, 1 epoch", "torch_way": "DataLoader + nn.utils.prune",
             "torch_s": t["usual"], "ours_s": t["lth_sparse"]}]


def main() -> None:
    start = time.perf_counter()
    rows = []
    for run in (_select_rows, _masked_rows, _interpolate_rows, _imp_round_rows):
        print(f"\n== {run.__name__[1:-5]} ==")
        saved = dict(os.environ)  # a benchmark may force a backend through LTH_SPARSE_BACKEND
        try:
            rows += run()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    for r in rows:
        r["ratio"] = r["torch_s"] / r["ours_s"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nquick benchmarks on {device}, {torch.get_num_threads()} threads, {time.perf_counter() - start:.0f} s "
          "(GPU benchmarks: bench/bench_masked_linear.py and bench/bench_select.py on a GPU machine)")
    print_table([("bench", "bench", ""), ("case", "case", ""), ("torch_way", "the torch way", ""),
                 ("torch_s", "torch (s)", ".4f"), ("ours_s", "ours (s)", ".4f"), ("ratio", "speed-up", ".2f")], rows)


if __name__ == "__main__":
    main()
