"""Analyses of trained networks: the linear path between two networks evaluated (``interpolate``), error
barriers along it (instability to SGD noise), training-dynamics measures (forgetting events, convergence
speed: :mod:`lth_sparse.analysis.dynamics`), and linear probes of frozen tickets
(:mod:`lth_sparse.analysis.probes`)."""

from lth_sparse.analysis.barriers import BARRIER_KINDS, Barrier, barrier, error_barrier, is_stable, loss_barrier
from lth_sparse.analysis.dynamics import (
    EpochErrors,
    ForgettingEvents,
    ForgettingResult,
    convergence_speed,
    dataset_without,
    epoch_errors,
    least_forgotten,
    most_forgotten,
    without_examples,
)
from lth_sparse.analysis.interpolate import BN_MODES, PRECISIONS, PathCurve, PathResult, interpolate, mask_relation
from lth_sparse.analysis.probes import (
    PROBE_VARIANTS,
    ProbeSettings,
    feature_dataset,
    features,
    linear_probe,
    probe_points,
    probe_ticket,
    ticket_variants,
    train_probe,
)

__all__ = [
    "BARRIER_KINDS",
    "BN_MODES",
    "PRECISIONS",
    "Barrier",
    "EpochErrors",
    "ForgettingEvents",
    "ForgettingResult",
    "PathCurve",
    "PathResult",
    "barrier",
    "convergence_speed",
    "dataset_without",
    "epoch_errors",
    "error_barrier",
    "interpolate",
    "is_stable",
    "least_forgotten",
    "loss_barrier",
    "mask_relation",
    "most_forgotten",
    "without_examples",
    "PROBE_VARIANTS",
    "ProbeSettings",
    "feature_dataset",
    "features",
    "linear_probe",
    "probe_points",
    "probe_ticket",
    "ticket_variants",
    "train_probe",
]
