"""lth-sparse compare-masks: IMP runs' masks compared round by round, seed by seed."""

import json

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.compare import compare_runs, connection_stability, importance_overlap
from lth_sparse.masks import Masks, jaccard_distance
from lth_sparse.pipelines import imp

TINY = dict(dataset="digits", model="mlp", model_options=(("width", 16),), rounds=2, epochs=1, lr=0.05, train_size=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    made = {}
    for name, options in {
        "magnitude": dict(seeds=(0, 1)),
        "again": dict(seeds=(0, 1)),
        "random": dict(importance="random", seeds=(1, 2)),
        "wide": dict(model_options=(("width", 24),)),
        "l1": dict(importance="l1", seeds=(0, 1)),
        "shifted": dict(init_seed=7),
    }.items():
        imp.run(imp.ImpConfig(**{**TINY, **options}), tmp / name, progress=False, log=lambda s: None, plots=False)
        made[name] = tmp / name
    return made


def masks(run, seed, r):
    return Masks.load(run / f"seed_{seed}" / f"round_{r:02d}" / "masks.safetensors")


def test_the_same_config_twice_finds_the_same_masks(runs):
    (pair,) = compare_runs([runs["magnitude"], runs["again"]])["pairs"]
    assert pair["seeds"] == [0, 1] and [r["round"] for r in pair["rounds"]] == [0, 1, 2]
    assert all(r["jaccard"] == 0 and r["jaccard_std"] == 0 for r in pair["rounds"])


def test_distances_are_seed_by_seed_on_the_seeds_both_runs_have(runs, tmp_path):
    result = compare_runs([runs["magnitude"], runs["random"]], out_dir=tmp_path / "out")
    (pair,) = result["pairs"]
    assert pair["seeds"] == [1], "only seed 1 is in both"
    for entry in pair["rounds"]:
        a, b = masks(runs["magnitude"], 1, entry["round"]), masks(runs["random"], 1, entry["round"])
        assert entry["jaccard"] == pytest.approx(jaccard_distance(a, b))
        assert entry["jaccard_per_layer"] == pytest.approx(jaccard_distance(a, b, per_layer=True))
        # independent masks of each layer's densities: sum(n p q) shared of sum(n (p + q - p q))
        layers = [(a[k].numel(), a[k].float().mean().item(), b[k].float().mean().item()) for k in a]
        shared, union_ = sum(n * p * q for n, p, q in layers), sum(n * (p + q - p * q) for n, p, q in layers)
        assert entry["independent_jaccard"] == pytest.approx(1 - shared / union_)
    assert pair["rounds"][2]["jaccard"] > 0.3, "magnitude and random pruning keep other weights"
    assert json.loads((tmp_path / "out" / "compare.json").read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "out" / "plots" / "jaccard_over_rounds.png").stat().st_size > 1000


def test_a_reference_is_compared_with_every_other_run(runs):
    result = compare_runs([runs["magnitude"], runs["again"], runs["random"]], reference=runs["magnitude"])
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [
        (str(runs["magnitude"]), str(runs["again"])),
        (str(runs["magnitude"]), str(runs["random"])),
    ]


def test_bad_input_is_refused_by_name(runs, tmp_path, capsys):
    with pytest.raises(ValueError, match="shape of 'fc1.weight'"):
        compare_runs([runs["magnitude"], runs["wide"]])
    with pytest.raises(ValueError, match="no seed in common"):
        compare_runs([runs["random"], runs["wide"]])
    with pytest.raises(ValueError, match="needs two runs"):
        compare_runs([runs["magnitude"]])
    (tmp_path / "empty").mkdir()
    assert main(["compare-masks", str(runs["magnitude"]), str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["compare-masks", str(runs["magnitude"]), str(runs["again"])]) == 0
    assert "jaccard" in capsys.readouterr().out


def test_the_overlap_of_tickets_from_one_initialisation(runs):
    out = importance_overlap([runs["magnitude"], runs["l1"], runs["random"]], round=2)
    assert out["seed"] == 1, "the seed all three have"
    tickets = [masks(runs[name], 1, 2) for name in ("magnitude", "l1", "random")]
    both = out["masks"]
    for t in tickets:
        assert both.is_subset_of(t)
    assert out["overlap"] == both.num_unpruned()
    assert out["of_all"] == pytest.approx(both.num_unpruned() / both.num_weights())
    assert out["of_unpruned"] == pytest.approx(both.num_unpruned() / tickets[0].num_unpruned())  # equal counts
    for name, layer in out["layers"].items():
        kept = sum(int(t[name].sum()) for t in tickets) / 3
        assert layer["of_unpruned"] == pytest.approx(int(both[name].sum()) / kept)
    with pytest.raises(ValueError, match="another initialisation"):
        importance_overlap([runs["magnitude"], runs["shifted"]], round=1)
    with pytest.raises(KeyError, match="round 5"):
        importance_overlap([runs["magnitude"], runs["l1"]], round=5)


def test_connection_stability_splits_the_ticket_into_overlapping_and_other(runs):
    overlap = importance_overlap([runs["magnitude"], runs["l1"]], round=2, seed=0)["masks"]
    out = connection_stability(runs["magnitude"], overlap, round=2, seed=0)
    ticket = masks(runs["magnitude"], 0, 2)
    assert out["overlapping"]["total"]["count"] + out["other"]["total"]["count"] == ticket.num_unpruned()
    assert out["overlapping"]["total"]["count"] == overlap.num_unpruned()
    # by hand, for every layer: the trained values of rounds 0..2 of each connection of the ticket
    finals = [torch.load(runs["magnitude"] / "seed_0" / f"round_{r:02d}" / "final.pt") for r in range(3)]
    for name, kept in ticket.items():
        values = torch.stack([f[name] for f in finals]).double()
        for group, where in (("overlapping", kept & overlap[name]), ("other", kept & ~overlap[name])):
            if not where.any():
                continue
            std = values.std(dim=0, unbiased=False)[where]
            flips = ((values > 0).any(0) & (values < 0).any(0))[where]
            assert out[group][name]["mean_std"] == pytest.approx(float(std.mean()))
            assert out[group][name]["flip_fraction"] == pytest.approx(float(flips.double().mean()))


def test_the_partial_reinitialisation_keeps_the_overlap_and_redraws_the_rest(runs, tmp_path):
    from lth_sparse.compare import partial_reinit_state, reinit_survival

    overlap = importance_overlap([runs["magnitude"], runs["l1"]], round=2, seed=0)["masks"]
    state = partial_reinit_state(runs["magnitude"], overlap, redraw_seed=11, seed=0)
    init = torch.load(runs["magnitude"] / "seed_0" / "init.pt")
    for name, keep in overlap.items():
        assert torch.equal(state[name][keep], init[name][keep])
        assert (state[name][~keep] != init[name][~keep]).float().mean() > 0.99, "the rest redrawn"
    torch.save(state, tmp_path / "partial.pt")
    config = imp.ImpConfig(**{**TINY, "init_file": str(tmp_path / "partial.pt")})
    imp.run(config, tmp_path / "rerun", progress=False, log=lambda s: None, plots=False)
    started = torch.load(tmp_path / "rerun" / "seed_0" / "init.pt")
    assert all(torch.equal(started[k], state[k]) for k in state), "IMP started from the given state"
    survival = reinit_survival(overlap, masks(tmp_path / "rerun", 0, 2))
    assert survival["overlap"] == overlap.num_unpruned() and 0 <= survival["kept"] <= survival["overlap"]
    print(
        f"partial re-initialisation: {survival['kept']} of {survival['overlap']} overlapping connections kept, "
        f"{survival['expected']:.1f} expected ({100 * survival['increase']:+.1f}%)"
    )
    with pytest.raises(FileNotFoundError, match="no such file"):
        imp.IMP.check(imp.ImpConfig(**{**TINY, "init_file": str(tmp_path / "missing.pt")}))
    with pytest.raises(ValueError, match="does not fit"):
        imp.IMP.check(
            imp.ImpConfig(**{**TINY, "model_options": (("width", 24),), "init_file": str(tmp_path / "partial.pt")})
        )


def test_survival_against_the_uniform_expectation_on_hand_made_masks():
    from lth_sparse.compare import reinit_survival

    overlap = Masks({"a.weight": torch.tensor([True, True, False, False]), "b.weight": torch.tensor([True, False])})
    ticket = Masks({"a.weight": torch.tensor([True, False, False, False]), "b.weight": torch.tensor([True, True])})
    out = reinit_survival(overlap, ticket)
    # layer a: density 1/4, 2 overlapping -> 0.5 expected, 1 kept (+100%); layer b: density 1 -> 1 expected, 1 kept
    assert out["layers"]["a.weight"] == {"overlap": 2, "kept": 1, "expected": 0.5, "increase": 1.0}
    assert out["layers"]["b.weight"]["increase"] == 0.0
    assert (out["kept"], out["expected"]) == (2, 1.5) and out["increase"] == pytest.approx(1 / 3)


def test_the_importance_overlap_command(runs, tmp_path, capsys):
    args = ["importance-overlap", str(runs["magnitude"]), str(runs["l1"]), "--round", "2", "--seed", "0"]
    assert main([*args, "--write-partial-init", str(tmp_path / "p.pt"), "--out", str(tmp_path / "o.json")]) == 0
    printed = capsys.readouterr().out
    assert "kept by all 2 tickets" in printed and "sign flips" in printed
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["overlap"] == importance_overlap([runs["magnitude"], runs["l1"]], 2, 0)["overlap"]
    config = imp.ImpConfig(**{**TINY, "init_file": str(tmp_path / "p.pt")})
    imp.run(config, tmp_path / "re", progress=False, log=lambda s: None, plots=False)
    assert main([*args, "--survival", str(tmp_path / "re")]) == 0
    assert "overlapping connections" in capsys.readouterr().out
