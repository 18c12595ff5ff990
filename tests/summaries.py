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


def assert_sweep_as_local(table: dict, out, local_table: dict, local_dir) -> None:
    """A sweep's table (``sweep.json``) and every point's ``summary.json`` under ``out`` are those of the same
    sweep run by the local executor in ``local_dir``, timings aside, and each point's seed unit ran once."""
    from lth_sparse.atomic import read_json

    assert without_timings(table["rows"]) == without_timings(local_table["rows"])
    for point in local_table["points"]:
        ours = read_json(out / point["name"] / "summary.json")
        theirs = read_json(local_dir / point["name"] / "summary.json")
        assert without_timings(ours) == without_timings(theirs), point["name"]
        seed = point["values"]["seed"]
        unit_log = (out / point["name"] / f"seed_{seed}" / "unit.log").read_text()
        assert unit_log.count(": started") == 1, "each unit ran once"
