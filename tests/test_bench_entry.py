"""``python -m bench``'s table builders: each row pairs ours with the torch way of the same device.

The GPU rows cannot be measured here; their builders are checked on the rows the GPU scripts
return (their shape taken from a real run of the CUDA select's row format, and from the masked
benchmark's interpreter smoke run on the CPU). Every entry point answers ``--help`` with its usage.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

bench_main = importlib.import_module("bench.__main__")

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["bench", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("bench_*.py"))]

# Each entry point as its command runs it (``python -m bench``, ``python bench/bench_X.py``), with --help, in one
# fresh interpreter: torch is imported once for all of them, so that the check stays quick.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys, time
results = {}
for entry in sys.argv[1:]:
    sys.argv, output, start, code = [entry, "--help"], io.StringIO(), time.perf_counter(), None
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            if entry == "bench":
                runpy.run_module("bench", run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(entry, run_name="__main__")
        except SystemExit as exit:
            code = exit.code
    results[entry] = {"code": code, "seconds": time.perf_counter() - start, "output": output.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_answers() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *ENTRY_POINTS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_answers_help_with_its_usage_at_once(entry, help_answers):
    """``--help`` prints the usage and exits 0 without running a benchmark (``python -m bench`` ran them all)."""
    answer = help_answers[entry]
    assert answer["code"] == 0 and "usage:" in answer["output"], answer
    assert answer["seconds"] < 30, f"{entry} --help took {answer['seconds']:.1f} s: it ran something"


def _select_result(cases: dict[str, float], values: int | None = None) -> list[dict]:
    return [{"case": case, "ms": ms, **({} if values is None else {"values": values})} for case, ms in cases.items()]


def test_cpu_select_rows_pair_ours_with_cat_kthvalue():
    rows = bench_main._select_cpu_rows(
        _select_result(
            {"cat_kthvalue": 100.0, "sum": 2.0, "kth_smallest": 4.0, "torch_masks": 110.0, "prune_lowest": 5.0}
        )
    )
    assert [(r["torch_s"], r["ours_s"]) for r in rows] == [(0.1, 0.004), (0.11, 0.005)]


def test_cuda_select_rows_one_pair_per_backend_and_never_the_cpu_times():
    result = _select_result(
        {
            "cat_kthvalue": 50.0,
            "torch_masks": 60.0,
            "copy": 1.0,
            "kth_smallest[cuda]": 2.0,
            "prune_lowest[cuda]": 3.0,
            "prune_lowest_masked[cuda]": 4.0,
            "prune_lowest_masked_kernel[cuda]": 3.5,
            "kth_smallest[triton]": 2.5,
            "prune_lowest[triton]": 3.2,
        },
        values=5_000_000,
    )
    rows = bench_main._select_cuda_rows(result)
    assert [r["case"] for r in rows] == [
        "global threshold (cuda)",
        "global masks, exact k (cuda)",
        "global threshold (triton)",
        "global masks, exact k (triton)",
    ]
    assert all(r["bench"] == "select cuda" for r in rows)
    assert [(r["torch_s"], r["ours_s"]) for r in rows] == [(0.05, 0.002), (0.06, 0.003), (0.05, 0.0025), (0.06, 0.0032)]


def test_masked_cuda_rows_from_the_benchmarks_own_rows(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "auto")  # main() sets it to triton; restored after the test
    pytest.importorskip("triton")
    from bench import bench_masked_linear

    result = bench_masked_linear.main(["--interpret-smoke"])  # real rows, times of the interpreter
    rows = bench_main._masked_cuda_table(result)
    assert [r["torch_way"] for r in rows] == ["F.linear(x, w * m, b)", "conv2d(x, w * m, b)"]
    for r, src in zip(rows, result):
        assert r["torch_s"] == src["torch_way_ms"] / 1e3 and r["ours_s"] == src["ours_ms"] / 1e3
        assert src["dtype"] in r["case"]


def test_importing_the_gpu_benchmark_leaves_the_environment_alone():
    import os

    before = dict(os.environ)
    importlib.reload(importlib.import_module("bench.bench_masked_linear"))
    assert dict(os.environ) == before


def test_no_gpu_rows_without_a_gpu(monkeypatch):
    monkeypatch.setattr(bench_main.torch.cuda, "is_available", lambda: False)
    assert bench_main._masked_cuda_rows() == []


def test_interpolate_rows_one_per_loop_the_channels_last_one_only_where_it_ran():
    lenet = {"model": "lenet300", "examples": 1000, "alphas": 21, "loop_s": 0.1, "ours_s": 0.025}
    conv4 = {"model": "conv4", "examples": 50, "alphas": 21, "loop_s": 2.2, "loop_cl_s": 1.9, "ours_s": 1.5}
    rows = bench_main._interpolate_table([(lenet, "interpolate"), (conv4, "interpolate")])
    assert [(r["case"].split(",")[0], r["torch_way"], r["torch_s"], r["ours_s"]) for r in rows] == [
        ("lenet300", "load each state dict", 0.1, 0.025),
        ("conv4", "load each state dict", 2.2, 1.5),
        ("conv4", "the same, channels_last", 1.9, 1.5),
    ]


def test_imp_round_rows_compare_with_both_torch_ways(monkeypatch):
    result = [
        {"way": "usual", "seconds": 12.0},
        {"way": "tensors", "seconds": 2.0},
        {"way": "lth_sparse", "seconds": 1.6},
        {"way": "lth_sparse_dense_kernels", "seconds": 1.9},
    ]
    monkeypatch.setattr(bench_main.bench_imp_round, "main", lambda argv: result)
    rows = bench_main._imp_round_rows()
    assert [(r["torch_way"], r["torch_s"], r["ours_s"]) for r in rows] == [
        ("DataLoader + nn.utils.prune", 12.0, 1.6),
        ("tensors + nn.utils.prune", 2.0, 1.6),
    ]


def test_median_of_takes_the_median_of_each_way_with_the_ways_in_turn():
    from bench import bench_interpolate

    calls, clock = [], iter(range(100))
    ticks = {"a": [1.0, 9.0, 2.0], "b": [5.0, 4.0, 30.0]}

    def way(name):
        def run():
            calls.append(name)
            return ticks[name][sum(c == name for c in calls) - 1]

        return run

    timings = bench_interpolate.median_of(
        {"a": way("a"), "b": way("b")}, 3, timer=lambda fn, device: (fn(), next(clock))
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    # (median seconds, the last run's result, every run's seconds)
    assert timings == {"a": (2.0, 4, [1.0, 9.0, 2.0]), "b": (5.0, 5, [5.0, 4.0, 30.0])}


def test_the_recompute_rows_bf16_way_is_timed_and_checked_against_the_float32_loop():
    """``--bf16``: ours with precision="bf16" beside the float32 ways, its losses against the loop's (close, not
    equal: bfloat16 products)."""
    from bench import bench_interpolate

    row = bench_interpolate.run_recompute_case("conv2_bn", (3, 8, 8), 6, 3, 1, 4, 1, 4, bf16=True)
    assert {"ours_bf16_s", "speedup_bf16", "bf16_vs_fp32", "max_loss_diff_bf16", "max_acc_diff_bf16"} <= set(row)
    assert row["max_loss_diff"] < 1e-4 < row["max_loss_diff_bf16"] < 0.1
    assert "ours_bf16_s" not in bench_interpolate.run_recompute_case("conv2_bn", (3, 8, 8), 6, 3, 1, 4, 1, 4)
