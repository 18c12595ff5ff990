"""Where units of work run, and with how many CPU threads each.

For now this holds the thread policy that every pipeline shares; the executors
themselves (in-process, a local pool, Ray) come with the units-and-executors work.

Why a policy at all: torch's default (one OpenMP thread per core) collapses when
the cores are already busy. On this project's 2-core machine, with another process
running, one dense IMP round took 5-6 s on one thread and 66-81 s on the default
two (OpenMP threads spin-wait for each other on a core that is not theirs).
Results may also differ in the last bits between thread counts, so the count used
is recorded in the run's ``config.json``.
"""

from __future__ import annotations

import os

__all__ = ["default_threads", "resolve_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(workers: int = 1) -> int:
    """Threads per worker when none are asked for: ``OMP_NUM_THREADS`` if it is set, else the
    usable cores not already busy (the 1-minute load average, rounded, counts as busy cores),
    shared among ``workers`` workers of this job; at least 1."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value >= 1:
            return value
    cores = usable_cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, (cores - min(busy, cores - 1)) // workers)


def resolve_threads(requested: int | None, workers: int = 1) -> int:
    """``requested`` checked (a positive int), or :func:`default_threads` when it is ``None``."""
    if requested is None:
        return default_threads(workers)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"threads must be a positive integer, got {requested!r}")
    return requested
