"""Mask similarity between IMP runs, round by round: ``lth-sparse compare-masks``.

Paganini & Forde (2020) compare the masks that different pruning methods, rewinding and
fine-tuning, seeds or tasks find, as the Jaccard distance between them at each pruning
iteration, in total and per layer (their Figures 3-5, 9 and 10), "conditional on identical
seed": the masks of one seed of a run are compared with those of the same seed of the other,
and the distances averaged over the seeds both runs have. That is what :func:`compare_runs`
computes, for every pair of runs, or for every run against a ``reference``; beside each
distance, the distance that independent masks of the same densities would have in expectation.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import torch

from lth_sparse.masks import Masks, expected_jaccard_distance, jaccard_distance
from lth_sparse.runs import atomic_write_json
from lth_sparse.tickets import _run_config, _seed_dir, finished_rounds, run_seeds

__all__ = ["compare_runs"]


def _round_masks(run_dir: Path, seed: int, rounds: list[int]) -> list[Masks]:
    folder, _ = _seed_dir(run_dir, _run_config(run_dir), seed)
    return [Masks.load(folder / f"round_{r:02d}" / "masks.safetensors") for r in rounds]


def _stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=True)) if len(values) > 1 else 0.0}


def compare_pair(run_a, run_b) -> dict:
    """The masks of two IMP runs compared round by round over the seeds both have (see the module)."""
    run_a, run_b = Path(run_a), Path(run_b)
    seeds = sorted(set(run_seeds(run_a)) & set(run_seeds(run_b)))
    if not seeds:
        raise ValueError(f"{run_a} (seeds {run_seeds(run_a)}) and {run_b} (seeds {run_seeds(run_b)}) have no seed "
                         "in common: masks are compared seed by seed")
    per_seed = []
    for seed in seeds:
        rounds = sorted(set(finished_rounds(run_a, seed)) & set(finished_rounds(run_b, seed)))
        a_masks, b_masks = _round_masks(run_a, seed, rounds), _round_masks(run_b, seed, rounds)
        entries = []
        for r, a, b in zip(rounds, a_masks, b_masks):
            try:
                total = jaccard_distance(a, b)
            except ValueError as error:
                raise ValueError(f"{run_a} and {run_b}, round {r}: {error}") from None
            entries.append({"round": r, "density_a": a.density(), "density_b": b.density(), "jaccard": total,
                            "jaccard_per_layer": jaccard_distance(a, b, per_layer=True),
                            "independent_jaccard": expected_jaccard_distance(a.density(), b.density())})
        per_seed.append(entries)
    count = min(len(e) for e in per_seed)
    rounds = []
    for i in range(count):
        rows = [entries[i] for entries in per_seed]
        entry = {"round": rows[0]["round"], "seeds": len(rows)}
        for key in ("density_a", "density_b", "jaccard", "independent_jaccard"):
            stats = _stats([row[key] for row in rows])
            entry[key], entry[f"{key}_std"] = stats["mean"], stats["std"]
        entry["jaccard_per_layer"] = {name: _stats([row["jaccard_per_layer"][name] for row in rows])["mean"]
                                      for name in rows[0]["jaccard_per_layer"]}
        rounds.append(entry)
    return {"a": str(run_a), "b": str(run_b), "seeds": seeds, "rounds": rounds}


def compare_runs(run_dirs, reference=None, out_dir=None, *, plots: bool = True) -> dict:
    """Every pair of ``run_dirs`` compared (or each against ``reference``); with ``out_dir``, the result is
    written to ``out_dir/compare.json`` and, with ``plots``, drawn in ``out_dir/plots/``.

    Returns ``{"runs", "reference", "pairs"}``; each pair: ``a``, ``b``, ``seeds`` (those compared) and
    ``rounds`` (per round both have finished: ``jaccard`` and ``jaccard_std`` over the seeds,
    ``jaccard_per_layer``, the densities ``density_a``/``density_b`` and ``independent_jaccard``)."""
    run_dirs = [Path(r) for r in run_dirs]
    if reference is not None:
        reference = Path(reference)
        pairs = [(reference, r) for r in run_dirs if r.resolve() != reference.resolve()]
    else:
        pairs = list(combinations(run_dirs, 2))
    if not pairs:
        raise ValueError("compare-masks needs two runs, or a run and --reference")
    for run in {*run_dirs, *([reference] if reference else [])}:
        _run_config(run)  # an IMP run, or a clear error
    result = {"runs": [str(r) for r in run_dirs], "reference": str(reference) if reference else None,
              "pairs": [compare_pair(a, b) for a, b in pairs]}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "compare.json", result)
        if plots:
            from lth_sparse.plots import plot_compare

            plot_compare(result, out_dir / "plots")
    return result
