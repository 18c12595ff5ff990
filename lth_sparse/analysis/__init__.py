"""Analyses of trained networks: error barriers along linear paths (instability to SGD noise)."""

from lth_sparse.analysis.barriers import BARRIER_KINDS, Barrier, barrier, error_barrier, is_stable, loss_barrier

__all__ = ["BARRIER_KINDS", "Barrier", "barrier", "error_barrier", "is_stable", "loss_barrier"]
