"""Re-running a finished sweep: what "is it done?" costs as the grid grows.

A sweep of tiny IMP points on the 8x8 digits (an MLP of width 16, one pruning round of one epoch on 200
examples) is run from scratch, then the same command is run again: every unit is done, so the re-run should do
no work but read the points' summaries. Both are timed as a user runs them, the whole ``lth-sparse sweep``
command (interpreter start and imports included), and the re-run once more with ``--plots``, which asks for
every point's figures (drawn once, then kept). Target: a finished 200-point sweep re-run in under 3 s plus
10 ms a point.

    python bench/bench_sweep_rerun.py            # 200 points, writes bench/results/sweep_rerun-cpu.json
    python bench/bench_sweep_rerun.py --quick    # 20 points, writes nothing
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results  # noqa: E402


def grid_file(path: Path, points: int) -> Path:
    """A grid of ``points`` IMP points (fraction x seed)."""
    fractions = [round(0.05 + 0.9 * i / 9, 4) for i in range(10)]
    seeds = list(range(max(1, points // len(fractions))))
    path.write_text(
        "pipeline: imp\n"
        "fixed: {dataset: digits, model: mlp, model_options: {width: 16}, rounds: 1, epochs: 1, train_size: 200, "
        "batch_size: 50, lr: 0.05}\n"
        f"grid: {{fraction: {fractions}, seed: {seeds}}}\n"
    )
    return path


def timed_sweep(grid: Path, out: Path, *extra: str) -> float:
    command = [
        sys.executable,
        "-m",
        "lth_sparse",
        "sweep",
        str(grid),
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 points, and nothing written to bench/results")
    parser.add_argument("--points", type=int, default=None, help="grid points (default: 200, 20 with --quick)")
    args = parser.parse_args(argv)
    points = args.points or (20 if args.quick else 200)
    scratch = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        grid = grid_file(scratch / "grid.yaml", points)
        out = scratch / "sweep"
        first = timed_sweep(grid, out)
        reruns = [timed_sweep(grid, out) for _ in range(3)]
        plots_first = timed_sweep(grid, out, "--plots")
        plots_again = timed_sweep(grid, out, "--plots")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rerun = sorted(reruns)[1]
    target = 3.0 + 0.010 * points
    rows = [
        {"case": "from scratch", "points": points, "seconds": first, "vs_scratch": 1.0},
        {"case": "re-run, finished (median of 3)", "points": points, "seconds": rerun, "vs_scratch": first / rerun},
        {
            "case": "re-run with --plots: drawn once",
            "points": points,
            "seconds": plots_first,
            "vs_scratch": first / plots_first,
        },
        {
            "case": "re-run with --plots again: kept",
            "points": points,
            "seconds": plots_again,
            "vs_scratch": first / plots_again,
        },
    ]
    print(f"a sweep of {points} tiny IMP points on digits, the whole 'lth-sparse sweep' command each time, 1 thread")
    print_table(
        [
            ("case", "case", ""),
            ("points", "points", "d"),
            ("seconds", "wall (s)", ".2f"),
            ("vs_scratch", "x faster than from scratch", ".1f"),
        ],
        rows,
    )
    print(
        f"finished re-run: {rerun:.2f} s, {1000 * rerun / points:.1f} ms a point; target {target:.1f} s "
        f"(3 s + 10 ms a point): {'met' if rerun < target else 'NOT met'} ({rerun / target:.2f}x the target)"
    )
    if not args.quick:
        write_results("sweep_rerun", "cpu", rows, {"target_s": target, "reruns_s": reruns})
    return rows


if __name__ == "__main__":
    main()
