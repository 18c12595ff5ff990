"""The executors (``--executor local | process | ray``): the same IMP units through each, wall time and overhead.

N units (``--units``, 8), each one IMP run of LeNet-300-100 on the 8x8 digits (one seed each,
``--rounds`` rounds after the dense one, ``--epochs`` epochs a round: about 20 s a unit on one core of
this project's 2-core machine), every unit on one thread, run through

- ``local``: in this process, one after the other: the work itself (``T_local``);
- ``process``: ``ProcessExecutor(workers=2)``: spawned workers, each importing torch once;
- ``ray``: ``RayExecutor`` on a local Ray cluster of 2 CPUs, started (and timed) before the run.

Against the ideal of two workers (``T_local / 2``): ``ratio`` = time / ideal, and the overhead per
unit = (workers x time - T_local) / N, the worker-seconds each unit cost beyond its work (worker
start, imports, scheduling, and whatever the other load of the machine took from the workers).
That overhead is split in two from each unit's own time (the ``done in X s`` of its ``unit.log``,
measured inside its worker): the worker-seconds spent outside the units (what the executor
itself costs), and how much longer the units took side by side than one after the other (what
running two at once on this machine costs, whoever schedules them).
Targets: the process pool within 1.2x of the ideal, Ray's overhead under 2 s a unit.

On a shared machine the wall time mixes two things: what the executor costs, and the cores other
work took (two workers on two cores that another job keeps busy get one core between them, and
the serial run loses less). So the CPU time of the whole run is measured too (this process, its
reaped children and every live descendant: the workers, Ray's processes; from ``/proc`` on Linux):
``cores`` = CPU time / wall time says how many cores the run actually got, and the CPU overhead a
unit = (CPU time - the local run's) / N is what the executor itself spent (imports, start,
scheduling). Each executor runs into a fresh directory; the load average before and after each
is recorded.

    python bench/bench_executors.py            # writes bench/results/executors-cpu.json
    python bench/bench_executors.py --quick    # 4 tiny units, seconds (plus Ray's start); nothing written
    python bench/bench_executors.py --executors local,process
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, write_results  # noqa: E402

WORKERS = 2


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _descendants_cpu() -> dict[int, float] | None:
    """CPU seconds (user + system, and of the children each has reaped) of every live descendant of
    this process, by PID, from ``/proc``; None where there is no ``/proc``."""
    if not os.path.isdir("/proc"):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on: the name may hold spaces
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    out, frontier = {}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in out:
                out[child] = cpu[child]
                frontier.append(child)
    return out


def cpu_snapshot() -> tuple[float, dict[int, float] | None]:
    """(CPU seconds of this process and its reaped children, those of each live descendant)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime, _descendants_cpu()


def cpu_since(before: tuple[float, dict[int, float] | None]) -> float | None:
    """CPU seconds spent since ``before`` (a :func:`cpu_snapshot`) by this process and its descendants."""
    mine, live = cpu_snapshot()
    if live is None or before[1] is None:
        return None
    return mine - before[0] + sum(seconds - before[1].get(pid, 0.0) for pid, seconds in live.items())


def imp_units(n: int, quick: bool, rounds: int, epochs: int) -> list:
    """N IMP units of equal work (seeds 0..N-1 of one config), as the IMP pipeline plans them."""
    from lth_sparse.pipelines import imp

    if quick:
        config = imp.ImpConfig(
            dataset="digits",
            model="mlp",
            model_options=(("width", 16),),
            rounds=1,
            epochs=1,
            train_size=300,
            seeds=tuple(range(n)),
            threads=1,
        )
    else:
        config = imp.ImpConfig(
            dataset="digits", model="lenet300", rounds=rounds, epochs=epochs, seeds=tuple(range(n)), threads=1
        )
    imp.IMP.check(config)  # loads the data set once here, so that the local run does not pay the first read
    return imp.IMP.plan(config)[0]


def run_through(executor, units, root: Path, name: str) -> dict:
    """Wall time of ``executor.run(units)`` into a fresh directory, with the load around it."""
    run_dir = root / name
    load_before = _load()
    cpu_before = cpu_snapshot()
    start = time.perf_counter()
    executor.run(units, run_dir, log=lambda line: None, progress=False)
    seconds = time.perf_counter() - start
    cpu = cpu_since(cpu_before)
    done = sum((run_dir / u.directory / "done.json").exists() for u in units)
    if done != len(units):
        raise RuntimeError(f"{name}: only {done} of {len(units)} units finished")
    return {
        "executor": name,
        "seconds": seconds,
        "cpu_s": cpu,
        "work_s": sum(unit_seconds(run_dir, u) for u in units),
        "load_before": load_before,
        "load_after": _load(),
    }


def unit_seconds(run_dir: Path, unit) -> float:
    """How long the unit's own work took, inside its worker: the last ``done in X s`` of its ``unit.log``."""
    lines = [line for line in (run_dir / unit.directory / "unit.log").read_text().splitlines() if ": done in " in line]
    if not lines:
        raise RuntimeError(f"{unit.name}: no 'done in' line in its unit.log")
    return float(lines[-1].rsplit(": done in ", 1)[1].split()[0])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="pruning rounds of each unit (default 2)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=500,
        help="epochs of each round (default 500: units of about 20 s, the size the target names)",
    )
    parser.add_argument(
        "--executors",
        default="local,process,ray",
        help="which to run, comma-separated; local is always run: the others are measured against "
        "it (default: local,process,ray)",
    )
    parser.add_argument("--quick", action="store_true", help="4 tiny units, results not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.units = min(args.units, 4)
    wanted = [e for e in args.executors.split(",") if e]
    unknown = sorted(set(wanted) - {"local", "process", "ray"})
    if unknown:
        parser.error(f"unknown executors {unknown}; choose from local, process, ray")

    os.environ["OMP_NUM_THREADS"] = "1"  # every unit on one thread, whoever runs it (workers inherit it)
    from lth_sparse.executors import LocalExecutor, ProcessExecutor, RayExecutor

    units = imp_units(args.units, args.quick, args.rounds, args.epochs)
    root = Path(tempfile.mkdtemp(prefix="bench_executors_"))
    rows = []
    try:
        rows.append({**run_through(LocalExecutor(threads=1), units, root, "local"), "workers": 1})
        if "process" in wanted:
            executor = ProcessExecutor(workers=WORKERS, threads=1)
            rows.append({**run_through(executor, units, root, "process"), "workers": WORKERS})
        if "ray" in wanted:
            try:
                import ray
            except ImportError:
                print("ray is not installed (pip install 'lth_sparse[ray]'): no ray row")
            else:
                start = time.perf_counter()
                ray.init(
                    address="local",
                    num_cpus=WORKERS,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
                started = time.perf_counter() - start
                try:
                    row = run_through(RayExecutor(address="local", threads=1), units, root, "ray")
                finally:
                    ray.shutdown()
                rows.append({**row, "workers": WORKERS, "start_s": started})
    finally:
        shutil.rmtree(root, ignore_errors=True)

    local, local_cpu = rows[0]["seconds"], rows[0]["cpu_s"]
    for row in rows:
        row["units"] = len(units)
        row["per_unit_s"] = row["seconds"] / len(units) * row["workers"]
        row["ideal_s"] = local / row["workers"]
        row["ratio_to_ideal"] = row["seconds"] / row["ideal_s"]
        row["overhead_per_unit_s"] = (row["workers"] * row["seconds"] - local) / len(units)
        # the overhead in two parts: worker-seconds spent outside the units (the executor's own: worker start,
        # imports, scheduling, idle workers at the end), and the units' own time beyond the local run's (two
        # units side by side on two cores share caches and memory bandwidth, and whatever else ran)
        row["outside_units_per_unit_s"] = (row["workers"] * row["seconds"] - row["work_s"]) / len(units)
        row["units_slower_per_unit_s"] = (row["work_s"] - rows[0]["work_s"]) / len(units)
        if row["cpu_s"] is not None and local_cpu is not None:
            row["cores"] = row["cpu_s"] / row["seconds"]
            row["cpu_overhead_per_unit_s"] = (row["cpu_s"] - local_cpu) / len(units)
    size = (
        "tiny (mlp width 16, 1 round, 1 epoch, 300 examples)"
        if args.quick
        else (f"LeNet-300-100 on digits, {args.rounds} rounds of {args.epochs} epochs")
    )
    print(
        f"{len(units)} IMP units through each executor: {size}, 1 thread a unit, {WORKERS} workers "
        f"on {os.cpu_count()} cores"
    )
    print_table(
        [
            ("executor", "executor", ""),
            ("workers", "workers", "d"),
            ("seconds", "wall (s)", ".1f"),
            ("ideal_s", "ideal (s)", ".1f"),
            ("ratio_to_ideal", "x ideal", ".2f"),
            ("overhead_per_unit_s", "overhead/unit (s)", ".2f"),
            ("outside_units_per_unit_s", "outside units/unit (s)", ".2f"),
            ("units_slower_per_unit_s", "units slower/unit (s)", ".2f"),
            ("cpu_s", "CPU (s)", ".1f"),
            ("cores", "cores got", ".2f"),
            ("cpu_overhead_per_unit_s", "CPU overhead/unit (s)", ".2f"),
            ("start_s", "cluster start (s)", ".1f"),
            ("load_before", "load before", ".2f"),
            ("load_after", "load after", ".2f"),
        ],
        rows,
    )
    by_name = {row["executor"]: row for row in rows}
    if "process" in by_name:
        print(
            f"process pool: {by_name['process']['ratio_to_ideal']:.2f}x the ideal of {WORKERS} workers "
            f"(target: within 1.2x, units of >= 20 s; a unit took {local / len(units):.1f} s here)"
        )
    if "ray" in by_name:
        print(
            f"ray: {by_name['ray']['overhead_per_unit_s']:.2f} s overhead a unit (target: under 2 s), plus "
            f"{by_name['ray']['start_s']:.1f} s to start the local cluster"
        )
    for row in rows[1:]:
        print(
            f"{row['executor']}: of its {row['overhead_per_unit_s']:.2f} s a unit, "
            f"{row['outside_units_per_unit_s']:.2f} s "
            f"were worker time outside the units (the executor: start, imports, scheduling, the idle tail) and "
            f"{row['units_slower_per_unit_s']:.2f} s the units' own work taking longer side by side than alone"
        )
    for row in rows[1:]:
        if row.get("cores") is not None:
            print(
                f"{row['executor']}: the run got {row['cores']:.2f} of {WORKERS} cores (the rest went to other work "
                f"on the machine); the executor itself spent {row['cpu_overhead_per_unit_s']:.2f} CPU-s a unit"
            )
    if not args.quick:
        write_results(
            "executors",
            "cpu",
            rows,
            {
                "units": len(units),
                "workers": WORKERS,
                "unit": size,
                "threads_per_unit": 1,
                "note": "one measurement per executor on a shared machine: see load_before/load_after",
            },
        )
    return rows


if __name__ == "__main__":
    main()
