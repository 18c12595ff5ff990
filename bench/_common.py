"""What every benchmark shares: the machine a result came from, and how results are written.

``machine_info(device)`` describes the platform, CPU, torch/Triton versions and, for CUDA, the GPU;
``write_results(name, device, rows, extra)`` writes ``bench/results/<name>-<device label>.json``
(atomically) with that description, so a figure in the README can always be traced to its machine.
``print_table(columns, rows)`` prints rows of dicts as an aligned text table.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from lth_sparse.atomic import atomic_write_bytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _as_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_label(device: str | torch.device) -> str:
    """The suffix of a result file: ``cpu``, or the GPU's name in lower case with dashes (``nvidia-h100-80gb-hbm3``)."""
    device = _as_device(device)
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine a measurement ran on: platform, CPU model and cores, memory, threads,
    Python/torch/Triton versions, the git commit, and for a CUDA device the GPU, its memory and CUDA version."""
    device = _as_device(device)
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        # 1, 5, 15-minute load averages when the result was written: other work on a shared machine
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _triton_version(),
        "git_commit": _git_commit(),
        "device": str(device),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu": props.name,
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_capability": f"{props.major}.{props.minor}",
                "gpu_count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
            }
        )
    return info


def write_results(
    name: str, device: str | torch.device, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> Path:
    """Write ``bench/results/<name>-<device_label(device)>.json``: ``{"benchmark", "machine", "rows", **extra}``.

    The file is replaced atomically (written next to it, then renamed). Returns its path.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{device_label(device)}.json"
    payload: dict[str, Any] = {"benchmark": name, "machine": machine_info(device)}
    payload.update(extra or {})
    payload["rows"] = rows
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return path


def print_table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as a table. columns: (key in the row, header, format spec such as ``.2f``);
    a missing or None value prints as ``-``."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
