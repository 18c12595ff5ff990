"""lth-sparse compare-masks: IMP runs' masks compared round by round, seed by seed."""

import json

import pytest

from lth_sparse.cli import main
import torch

from lth_sparse.compare import compare_runs, connection_stability, importance_overlap
from lth_sparse.masks import Masks, expected_jaccard_distance, jaccard_distance
from lth_sparse.pipelines import imp

TINY = dict(dataset="digits", model="mlp", model_options=(("width", 16),), rounds=2, epochs=1, lr=0.05,
            train_size=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    made = {}
    for name, options in {"magnitude": dict(seeds=(0, 1)), "again": dict(seeds=(0, 1)),
                          "random": dict(importance="random", seeds=(1, 2)),
                          "wide": dict(model_options=(("width", 24),)), "l1": dict(importance="l1", seeds=(0, 1)),
                          "shifted": dict(init_seed=7)}.items():
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
        assert entry["independent_jaccard"] == pytest.approx(expected_jaccard_distance(a.density(), b.density()))
    assert pair["rounds"][2]["jaccard"] > 0.3, "magnitude and random pruning keep other weights"
    assert json.loads((tmp_path / "out" / "compare.json").read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "out" / "plots" / "jaccard_over_rounds.png").stat().st_size > 1000


def test_a_reference_is_compared_with_every_other_run(runs):
    result = compare_runs([runs["magnitude"], runs["again"], runs["random"]], reference=runs["magnitude"])
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [(str(runs["magnitude"]), str(runs["again"])),
                                                          (str(runs["magnitude"]), str(runs["random"]))]


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
