"""Stacked units end to end: whole pipeline commands with ``--stack 1`` (each training alone) against
``--stack auto`` (the default: trainings that can share a stack trained together), in the same run.

Two commands, each timed as a user runs it (the whole ``lth-sparse`` command, interpreter start included), on
one thread, into fresh directories:

- the planting benchmark of the README (Fischer & Burkholz 2022: ReLU, Circle and Helix planted in hosts of
  depth 3 and 5 and width 100, nine pruners, five densities, 2 seeds; 444 units); ``--quick``: Circle at depth
  3, four pruners, three densities, 2 seeds;
- a 3-seed IMP run with its controls: LeNet-300-100 on Fashion-MNIST, 5 rounds of 2 epochs on 12,000 examples;
  ``--quick``: an MLP of width 100 on the 8x8 digits, 3 rounds of 1 epoch.

Targets (the 2-core machine): the planting run >= 4x faster stacked, the 3-seed IMP with controls >= 1.3x. On a
CPU ``--stack auto`` trains LeNet-300-100 alone (compute-bound: ``recommended_stack``), so the IMP command is run a
third time with ``--stack 16``: what stacking it gives there, measured.
Each pair's summaries are compared too (timing fields and the stack option aside): the largest relative
difference of any figure is printed, which stacking's last-bit rounding differences can make nonzero.

    python bench/bench_stacked_pipelines.py            # writes bench/results/stacked_pipelines-cpu.json
    python bench/bench_stacked_pipelines.py --quick    # small versions, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_results  # noqa: E402

PLANT = [
    "plant",
    "--tasks",
    "relu",
    "circle",
    "helix",
    "--depths",
    "3",
    "5",
    "--pruners",
    "random,magnitude,snip,grasp,synflow,multishot-magnitude,multishot-synflow,edge-popup,edge-popup-annealed",
    "--densities",
    "0.01,0.1,0.5,1,planted",
    "--seeds",
    "2",
]
PLANT_QUICK = [
    "plant",
    "--tasks",
    "circle",
    "--depths",
    "3",
    "--pruners",
    "random,magnitude,snip,multishot-magnitude",
    "--densities",
    "0.1,0.5,planted",
    "--seeds",
    "2",
    "--train-size",
    "2000",
]
IMP = ["imp", "--dataset", "fashion-mnist", "--model", "lenet300", "--rounds", "5", "--epochs", "2"]
IMP += ["--train-size", "12000", "--seeds", "3", "--controls"]
IMP_QUICK = ["imp", "--dataset", "digits", "--model", "mlp", "--model-option", "width=100", "--rounds", "3"]
IMP_QUICK += ["--epochs", "1", "--seeds", "3", "--controls"]


def timed(command: list[str], out: Path, stack: str) -> float:
    line = [sys.executable, "-m", "lth_sparse", *command, "--out", str(out), "--stack", stack]
    line += ["--threads", "1", "--no-progress", "--no-plots"]
    started = time.perf_counter()
    subprocess.run(line, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def largest_difference(a, b, path: str = "") -> tuple[float, str]:
    """The largest relative difference between two summaries' figures (timings and the stack option aside), and
    where it is (the keys and indices to it, and the two values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [largest_difference(a[k], b.get(k), f"{path}/{k}") for k in a if "seconds" not in k and k != "stack"]
        return max(found, default=(0.0, path))
    if isinstance(a, list) and isinstance(b, list):
        pairs = [largest_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        return max(pairs, default=(0.0, path))
    if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
        return abs(a - b) / max(abs(a), abs(b), 1e-12), f"{path}: {a!r} vs {b!r}"
    return (0.0, path) if a == b else (math.inf, f"{path}: {a!r} vs {b!r}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small versions of both commands; nothing written")
    args = parser.parse_args(argv)
    cases = [("planting benchmark", PLANT_QUICK if args.quick else PLANT, 4.0, "auto")]
    cases.append(("3-seed IMP with controls", IMP_QUICK if args.quick else IMP, 1.3, "auto"))
    # auto trains LeNet-300-100 alone on a CPU (compute-bound): what stacking it would give, measured
    cases.append(("3-seed IMP with controls, stacked", IMP_QUICK if args.quick else IMP, 1.3, "16"))
    scratch = Path(tempfile.mkdtemp(prefix="bench_stacked_pipelines_"))
    rows = []
    try:
        for name, command, target, stack in cases:
            alone = timed(command, scratch / f"{len(rows)}-alone", "1")
            stacked = timed(command, scratch / f"{len(rows)}-stacked", stack)
            summaries = [
                json.loads((scratch / f"{len(rows)}-{kind}" / "summary.json").read_text())
                for kind in ("alone", "stacked")
            ]
            rows.append(
                {
                    "case": name,
                    "command": "lth-sparse " + " ".join(command),
                    "stack": stack,
                    "alone_s": alone,
                    "stacked_s": stacked,
                    "speedup": alone / stacked,
                    "target": target,
                    "largest_difference": largest_difference(*summaries)[0],
                    "largest_difference_at": largest_difference(*summaries)[1]
                    if largest_difference(*summaries)[0] > 0
                    else None,
                }
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("whole commands, 1 thread: --stack 1 against --stack auto (or the K given)")
    print_table(
        [
            ("case", "case", ""),
            ("alone_s", "--stack 1 (s)", ".1f"),
            ("stack", "--stack", ""),
            ("stacked_s", "stacked (s)", ".1f"),
            ("speedup", "x faster", ".2f"),
            ("target", "target", ".1f"),
            ("largest_difference", "largest rel. diff.", ".1e"),
        ],
        rows,
    )
    for row in rows:
        met = "met" if row["speedup"] >= row["target"] else "NOT met"
        print(f"{row['case']}: {row['speedup']:.2f}x against a {row['target']}x target: {met}")
        if row["largest_difference"] > 0:
            print(f"  largest difference of a figure at {row['largest_difference_at']}")
        else:
            print("  the summaries are equal")
    if not args.quick:
        write_results("stacked_pipelines", "cpu", rows)
    return rows


if __name__ == "__main__":
    main()
