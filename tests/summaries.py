"""What the tests that compare two runs' results share."""

from __future__ import annotations


def without_timings(value):
    """``value`` with every entry whose key names seconds left out, at any depth: the wall-clock figures, which
    differ between two runs of one experiment."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
