"""``python -m bench``: a quick run of every benchmark, then one table of ratios to the torch way.

Quick sizes (seconds each, a few minutes in all on 2 CPU cores); nothing in
``bench/results/`` is replaced: run each ``bench/bench_<op>.py`` without
``--quick`` for the recorded figures. Where torch sees a GPU, the select, the
masked layers and the path evaluation also run there (rows marked ``cuda``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_imp_round, bench_interpolate, bench_masked_cpu, bench_masked_linear, bench_select  # noqa: E402
from bench._common import print_table  # noqa: E402


def _select_rows() -> list[dict]:
    rows = _select_cpu_rows(bench_select.main(["--quick", "--device", "cpu"]))
    if torch.cuda.is_available():
        rows += _select_cuda_rows(bench_select.main(["--quick", "--device", "cuda"]))
    return rows


def _select_cpu_rows(result: list[dict]) -> list[dict]:
    t = {r["case"]: r["ms"] / 1e3 for r in result}
    return [
        {
            "bench": "select",
            "case": "global threshold (5M float32)",
            "torch_way": "cat + kthvalue",
            "torch_s": t["cat_kthvalue"],
            "ours_s": t["kth_smallest"],
        },
        {
            "bench": "select",
            "case": "global masks, exact k",
            "torch_way": "cat + kthvalue, s > t",
            "torch_s": t["torch_masks"],
            "ours_s": t["prune_lowest"],
        },
    ]


def _select_cuda_rows(result: list[dict]) -> list[dict]:
    """One pair of rows per GPU backend of ours (cases ``kth_smallest[<backend>]``)."""
    t = {r["case"]: r["ms"] / 1e3 for r in result}
    rows = []
    for case in t:
        if case.startswith("kth_smallest[") and case.endswith("]"):
            backend = case[len("kth_smallest[") : -1]
            rows += [
                {
                    "bench": "select cuda",
                    "case": f"global threshold ({backend})",
                    "torch_way": "cat + kthvalue",
                    "torch_s": t["cat_kthvalue"],
                    "ours_s": t[case],
                },
                {
                    "bench": "select cuda",
                    "case": f"global masks, exact k ({backend})",
                    "torch_way": "cat + kthvalue, s > t",
                    "torch_s": t["torch_masks"],
                    "ours_s": t[f"prune_lowest[{backend}]"],
                },
            ]
    return rows


def _masked_cuda_rows() -> list[dict]:
    """Masked layers on the GPU, against the torch way, where there is a GPU."""
    if not torch.cuda.is_available():
        return []
    return _masked_cuda_table(bench_masked_linear.main(["--quick", "--dtypes", "float32,bfloat16"]))


def _masked_cuda_table(result: list[dict]) -> list[dict]:
    return [
        {
            "bench": "masked cuda",
            "case": f"{r['shape']}, {r['dtype']}",
            "torch_way": "F.linear(x, w * m, b)" if r["kind"] == "linear" else "conv2d(x, w * m, b)",
            "torch_s": r["torch_way_ms"] / 1e3,
            "ours_s": r["ours_ms"] / 1e3,
        }
        for r in result
    ]


def _interpolate_rows() -> list[dict]:
    result = [(r, "interpolate") for r in bench_interpolate.main(["--quick"])]
    if torch.cuda.is_available():
        result += [(r, "interpolate cuda") for r in bench_interpolate.main(["--quick", "--device", "cuda"])]
    return _interpolate_table(result)


def _interpolate_table(result: list[tuple[dict, str]]) -> list[dict]:
    """One row per loop the benchmark ran: the plain one, and for convs on the CPU the channels_last one."""
    rows = []
    for r, bench in result:
        case = f"{r['model']}, {r['examples']} examples, {r['alphas']} alphas"
        rows.append(
            {
                "bench": bench,
                "case": case,
                "torch_way": "load each state dict",
                "torch_s": r["loop_s"],
                "ours_s": r["ours_s"],
            }
        )
        if r.get("loop_cl_s") is not None:
            rows.append(
                {
                    "bench": bench,
                    "case": case,
                    "torch_way": "the same, channels_last",
                    "torch_s": r["loop_cl_s"],
                    "ours_s": r["ours_s"],
                }
            )
    return rows


def _masked_rows() -> list[dict]:
    """Masked layers, forward + backward, against dense torch (no mask): the bar the issue sets."""
    return [
        {
            "bench": "masked_cpu",
            "case": f"{r['shape']}, {r['sparsity']:.0%} sparse",
            "torch_way": "dense F.linear",
            "torch_s": r["dense_ms"] / 1e3,
            "ours_s": r["ours_auto_ms"] / 1e3,
        }
        for r in bench_masked_cpu.main(["--quick"])
        if r["sparsity"] in (0.9, 0.95)
    ]


def _imp_round_rows() -> list[dict]:
    t = {r["way"]: r["seconds"] for r in bench_imp_round.main(["--quick"])}
    case = "LeNet-300-100 round, 1 epoch"
    return [
        {
            "bench": "imp_round",
            "case": case,
            "torch_way": "DataLoader + nn.utils.prune",
            "torch_s": t["usual"],
            "ours_s": t["lth_sparse"],
        },
        {
            "bench": "imp_round",
            "case": case,
            "torch_way": "tensors + nn.utils.prune",
            "torch_s": t["tensors"],
            "ours_s": t["lth_sparse"],
        },
    ]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)  # no options: --help says what it runs, anything else is refused before minutes of work
    start = time.perf_counter()
    rows = []
    for run in (_select_rows, _masked_rows, _masked_cuda_rows, _interpolate_rows, _imp_round_rows):
        print(f"\n== {run.__name__[1:-5]} ==")
        saved = dict(os.environ)  # a benchmark may force a backend through LTH_SPARSE_BACKEND
        try:
            rows += run()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    for r in rows:
        r["ratio"] = r["torch_s"] / r["ours_s"]
    gpu = (
        f"rows marked cuda on {torch.cuda.get_device_name()}"
        if torch.cuda.is_available()
        else "no GPU here: the cuda rows run where torch sees one"
    )
    print(
        f"\nquick benchmarks, {time.perf_counter() - start:.0f} s: CPU rows on {torch.get_num_threads()} threads; {gpu}"
    )
    print_table(
        [
            ("bench", "bench", ""),
            ("case", "case", ""),
            ("torch_way", "the torch way", ""),
            ("torch_s", "torch (s)", ".4f"),
            ("ours_s", "ours (s)", ".4f"),
            ("ratio", "speed-up", ".2f"),
        ],
        rows,
    )


if __name__ == "__main__":
    main()
