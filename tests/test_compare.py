"""lth-sparse compare-masks: IMP runs' masks compared round by round, seed by seed."""

import json

import pytest

from lth_sparse.cli import main
from lth_sparse.compare import compare_runs
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
                          "wide": dict(model_options=(("width", 24),))}.items():
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
