"""The CPU thread policy shared by the pipelines (``lth_sparse.executors``)."""

from __future__ import annotations

import os

import pytest

from lth_sparse import executors


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``cores`` usable cores and a 1-minute load average of ``load``; no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, load: float) -> None:
        monkeypatch.setattr(executors, "usable_cores", lambda: cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    return set_machine


@pytest.mark.parametrize("cores, load, workers, expected", [
    (2, 0.0, 1, 2),    # an idle machine: every core
    (2, 1.1, 1, 1),    # another job on one of two cores: the one left
    (2, 5.0, 1, 1),    # overloaded: never below one
    (16, 3.6, 1, 12),  # four busy cores (3.6 rounds to 4)
    (16, 0.0, 4, 4),   # four workers share the cores
    (3, 0.0, 2, 1),    # shares round down
])
def test_default_threads_are_the_idle_cores_shared_among_workers(machine, cores, load, workers, expected):
    machine(cores, load)
    assert executors.default_threads(workers) == expected


def test_omp_num_threads_wins_when_set(machine, monkeypatch):
    machine(16, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert executors.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert executors.default_threads() == 16


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_resolve_threads_refuses_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="positive integer"):
        executors.resolve_threads(bad)


def test_resolve_threads_keeps_an_explicit_count(machine):
    machine(2, 0.0)
    assert executors.resolve_threads(7) == 7
    assert executors.resolve_threads(None) == 2
