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

from lth_sparse.atomic import atomic_write_json
from lth_sparse.experiment import draw_model
from lth_sparse.integrity import load_torch, read_done
from lth_sparse.masks import Masks, independent_jaccard_distance, intersection, jaccard_distance
from lth_sparse.stats import over_seeds
from lth_sparse.tickets import finished_rounds, imp_run_config, run_seeds, seed_folder

__all__ = [
    "compare_pair",
    "compare_runs",
    "connection_stability",
    "importance_overlap",
    "partial_reinit_state",
    "reinit_survival",
]


def _round_masks(run_dir: Path, seed: int, rounds: list[int]) -> list[Masks]:
    folder = seed_folder(run_dir, seed)
    return [Masks.load(folder / f"round_{r:02d}" / "masks.safetensors") for r in rounds]


def compare_pair(run_a, run_b) -> dict:
    """The masks of two IMP runs compared round by round over the seeds both have (see the module)."""
    run_a, run_b = Path(run_a), Path(run_b)
    seeds = sorted(set(run_seeds(run_a)) & set(run_seeds(run_b)))
    if not seeds:
        raise ValueError(
            f"{run_a} (seeds {run_seeds(run_a)}) and {run_b} (seeds {run_seeds(run_b)}) have no seed "
            "in common: masks are compared seed by seed"
        )
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
            entries.append(
                {
                    "round": r,
                    "density_a": a.density(),
                    "density_b": b.density(),
                    "jaccard": total,
                    "jaccard_per_layer": jaccard_distance(a, b, per_layer=True),
                    "independent_jaccard": independent_jaccard_distance(a, b),
                }
            )
        per_seed.append(entries)
    count = min(len(e) for e in per_seed)
    rounds = []
    for i in range(count):
        rows = [entries[i] for entries in per_seed]
        entry = {"round": rows[0]["round"], "seeds": len(rows)}
        for key in ("density_a", "density_b", "jaccard", "independent_jaccard"):
            stats = over_seeds([row[key] for row in rows])
            entry[key], entry[f"{key}_std"] = stats["mean"], stats["std"]
        entry["jaccard_per_layer"] = {
            name: over_seeds([row["jaccard_per_layer"][name] for row in rows])["mean"]
            for name in rows[0]["jaccard_per_layer"]
        }
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
        imp_run_config(run)  # an IMP run, or a clear error
    result = {
        "runs": [str(r) for r in run_dirs],
        "reference": str(reference) if reference else None,
        "pairs": [compare_pair(a, b) for a, b in pairs],
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "compare.json", result)
        if plots:
            from lth_sparse.plots import plot_compare

            plot_compare(result, out_dir / "plots")
    return result


# --- The layerwise-importance paper's overlap analyses (Vandersmissen et al., Section 5) ------------------------


def importance_overlap(run_dirs, round: int, seed: int | None = None) -> dict:
    """The connections that every ticket of ``round`` keeps, over IMP runs from one initialisation that differ in
    their importance measure (magnitude, l1, l2, ...): per layer and in total, their count, their share of all
    the layer's weights, and their share of the unpruned ones (the overlap over the mean count each ticket keeps
    there: the paper's "9.34% of the unpruned connections"). ``seed``: the seed compared (default: the first
    the runs share). The runs must share their initialisation (same seed and model), else the overlap is that of
    unrelated masks; this is checked on their ``init.pt``."""
    runs = [Path(r) for r in run_dirs]
    if len(runs) < 2:
        raise ValueError("an overlap needs at least two runs")
    common = sorted(set.intersection(*(set(run_seeds(r)) for r in runs)))
    if not common:
        raise ValueError(f"the runs have no seed in common: {[run_seeds(r) for r in runs]}")
    seed = common[0] if seed is None else seed
    if seed not in common:
        raise ValueError(f"seed {seed} is not in every run; common seeds: {common}")
    folders = [seed_folder(r, seed) for r in runs]
    inits = [load_torch(f / "init.pt", map_location="cpu") for f in folders]
    for run, init in zip(runs[1:], inits[1:]):
        if init.keys() != inits[0].keys() or not all(torch.equal(init[k], inits[0][k]) for k in init):
            raise ValueError(
                f"{run} starts from another initialisation than {runs[0]} (seed {seed}): the overlap of "
                "tickets from one initialisation needs the same seed and model"
            )
    for run in runs:
        if round not in finished_rounds(run, seed):
            raise KeyError(f"round {round} of seed {seed} has not finished in {run}")
    tickets = [Masks.load(f / f"round_{round:02d}" / "masks.safetensors") for f in folders]
    both = intersection(tickets)
    layers = {}
    for name in both:
        kept = sum(int(t[name].sum()) for t in tickets) / len(tickets)
        count = int(both[name].sum())
        layers[name] = {
            "overlap": count,
            "of_all": count / both[name].numel(),
            "of_unpruned": count / kept if kept else 0.0,
        }
    kept_total = sum(t.num_unpruned() for t in tickets) / len(tickets)
    return {
        "runs": [str(r) for r in runs],
        "seed": seed,
        "round": round,
        "density": tickets[0].density(),
        "overlap": both.num_unpruned(),
        "of_all": both.num_unpruned() / both.num_weights(),
        "of_unpruned": both.num_unpruned() / kept_total if kept_total else 0.0,
        "layers": layers,
        "masks": both,
    }


def connection_stability(run_dir, overlap: Masks, round: int, seed: int | None = None) -> dict:
    """For each connection of the round-``round`` ticket of one IMP run: the standard deviation of its trained
    value over the rounds 0..``round`` (the trained weights ``final.pt`` of each), and whether its sign flips
    across them (not all of one sign); summarised apart for the connections in ``overlap`` (those every ticket
    keeps, :func:`importance_overlap`) and the others, per layer and in total: ``mean_std``, ``median_std`` and
    ``flip_fraction`` (Vandersmissen et al., Section 5 and their Figure 2)."""
    run_dir = Path(run_dir)
    seed = run_seeds(run_dir)[0] if seed is None else seed
    folder = seed_folder(run_dir, seed)
    done = finished_rounds(run_dir, seed)
    if any(r not in done for r in range(round + 1)):
        raise KeyError(f"rounds 0..{round} of seed {seed} have not all finished in {run_dir} (finished: {done})")
    ticket = Masks.load(folder / f"round_{round:02d}" / "masks.safetensors")
    finals = [load_torch(folder / f"round_{r:02d}" / "final.pt", map_location="cpu") for r in range(round + 1)]
    groups = {"overlapping": {}, "other": {}}
    totals = {g: {"std": [], "flip": []} for g in groups}
    for name, mask in ticket.items():
        values = torch.stack([f[name] for f in finals]).double()  # (rounds, *shape)
        std = values.std(dim=0, unbiased=False)
        flip = (values > 0).any(0) & (values < 0).any(0)
        inside = overlap[name].to(mask.device) & mask
        for group, where in (("overlapping", inside), ("other", mask & ~inside)):
            s, f = std[where], flip[where]
            totals[group]["std"].append(s)
            totals[group]["flip"].append(f)
            groups[group][name] = _summary(s, f)
    for group in groups:
        groups[group]["total"] = _summary(torch.cat(totals[group]["std"]), torch.cat(totals[group]["flip"]))
    return {"run": str(run_dir), "seed": seed, "round": round, **groups}


def _summary(std: torch.Tensor, flip: torch.Tensor) -> dict:
    if std.numel() == 0:
        return {"count": 0, "mean_std": None, "median_std": None, "flip_fraction": None}
    return {
        "count": int(std.numel()),
        "mean_std": float(std.mean()),
        "median_std": float(std.median()),
        "flip_fraction": float(flip.double().mean()),
    }


def partial_reinit_state(run_dir, overlap: Masks, redraw_seed: int, seed: int | None = None) -> dict:
    """The initial state of the partial re-initialisation test (Vandersmissen et al., Section 5): the
    initialisation of ``run_dir``'s ``seed`` where ``overlap`` keeps a connection, a fresh draw from the
    model's own initialisation (seeded ``redraw_seed``) everywhere else (other weights and the biases).
    Save it and pass it to IMP as ``init_file`` (``--init-file``), with the run's other options."""
    run_dir = Path(run_dir)
    saved = imp_run_config(run_dir)
    seed = run_seeds(run_dir)[0] if seed is None else seed
    folder = seed_folder(run_dir, seed)
    init = load_torch(folder / "init.pt", map_location="cpu")
    dense = read_done(folder / "round_00" / "done.json")  # the input shape and classes the run's model was built for
    fresh = draw_model(
        saved["model"], dense["input_shape"], dense["num_classes"], saved.get("model_options"), seed=redraw_seed
    ).state_dict()
    state = {k: v.detach().clone().cpu() for k, v in fresh.items()}
    for name, keep in overlap.items():
        state[name] = torch.where(keep.cpu(), init[name], state[name])
    for key in state:
        if key.endswith(".mask"):
            state[key] = init[key].clone()
    return state


def reinit_survival(overlap: Masks, ticket: Masks) -> dict:
    """How many of the ``overlap`` connections a ticket found from a partially re-initialised start keeps,
    against the uniform expectation (each connection of a layer kept with the layer's density): per layer and
    in total, ``kept``, ``expected`` and ``increase`` (kept / expected - 1; the paper reports +8.5% to +480%)."""
    layers, kept_total, expected_total = {}, 0, 0.0
    for name, mask in overlap.items():
        count = int(mask.sum())
        kept = int((mask & ticket[name].to(mask.device)).sum())
        density = float(ticket[name].double().mean())
        expected = count * density
        layers[name] = {
            "overlap": count,
            "kept": kept,
            "expected": expected,
            "increase": kept / expected - 1 if expected else None,
        }
        kept_total += kept
        expected_total += expected
    return {
        "layers": layers,
        "overlap": overlap.num_unpruned(),
        "kept": kept_total,
        "expected": expected_total,
        "increase": kept_total / expected_total - 1 if expected_total else None,
    }
