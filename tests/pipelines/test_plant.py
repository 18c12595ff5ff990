"""The planting benchmark (Plant 'n' Seek) at tiny size on the generated Circle and ReLU tasks."""

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.config import ConfigError, config_from_options
from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks, jaccard_distance
from lth_sparse.pipelines import plant
from lth_sparse.pipelines.plant import PlantConfig, recovery

TINY = dict(
    tasks=["circle", "relu"],
    depths=[3],
    pruners="magnitude,multishot-magnitude,edge-popup",
    densities="planted,1",
    epochs=1,
    multishot_epochs=0.25,
    multishot_rounds=2,
    edge_popup_epochs=1,
    train_size=1000,
    prune_batch=64,
)


def quiet(line):
    pass


def test_recovery_by_hand():
    planted = Masks({"a.weight": torch.tensor([True, True, False, False]), "b.weight": torch.tensor([True, False])})
    found = Masks({"a.weight": torch.tensor([True, False, True, False]), "b.weight": torch.tensor([True, True])})
    r = recovery(found, planted)
    assert (r["precision"], r["recall"], r["contains"]) == (2 / 4, 2 / 3, False)
    assert r["jaccard"] == pytest.approx(1 - 2 / 5)
    assert r["layers"]["a.weight"]["recall"] == 0.5 and r["layers"]["b.weight"]["contains"] is True
    assert recovery(planted, planted)["contains"] and recovery(planted, planted)["jaccard"] == 0
    assert r["jaccard"] == pytest.approx(jaccard_distance(found, planted))
    assert {n: v["jaccard"] for n, v in r["layers"].items()} == pytest.approx(
        jaccard_distance(found, planted, per_layer=True)
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("plant") / "run"
    config = config_from_options(PlantConfig, TINY)
    return path, config, plant.run(config, path, progress=False, log=quiet, plots=True)


def test_the_summary_holds_every_grid_point_with_recovery_and_the_reference(tiny):
    path, config, summary = tiny
    refs = {(r["task"], r["depth"]): r for r in summary["references"]}
    assert refs[("circle", 3)]["planted_density"] == pytest.approx(1 / 6, abs=1e-4)
    assert refs[("relu", 3)]["planted_density"] == pytest.approx(0.01)
    assert refs[("circle", 3)]["metric"] == "accuracy" and refs[("relu", 3)]["metric"] == "mse"
    rows = {(r["task"], r["pruner"], r["density_label"]): r for r in summary["rows"]}
    assert len(rows) == 2 * (3 + 1), "density 1 prunes nothing: one dense unit per task and depth"
    for task in ("circle", "relu"):
        dense = rows[(task, "magnitude", "1")]
        assert dense["recall"]["mean"] == 1 and dense["contains"] == 1 and dense["density"] == 1
        for pruner in ("magnitude", "multishot-magnitude", "edge-popup"):
            row = rows[(task, pruner, "planted")]
            assert row["density"] == pytest.approx(refs[(task, 3)]["planted_density"], abs=0.006)
            assert row["kind"] == ("strong" if pruner == "edge-popup" else "weak")
            assert 0 <= row["recall"]["mean"] <= 1
    done = read_done(path / "circle" / "depth_3" / "edge-popup" / "density_planted" / "seed_0" / "done.json")
    assert len(done["output_scale"]) == 4 and done["kind"] == "strong"
    masks = Masks.load(path / "circle" / "depth_3" / "magnitude" / "density_planted" / "seed_0" / "masks.safetensors")
    assert masks.density() == pytest.approx(1 / 6, abs=1e-3)
    assert (path / "plots" / "plant_circle_depth3.png").stat().st_size > 0
    # every found ticket exports as a plain torch model computing what was evaluated
    from lth_sparse.data import load_dataset
    from lth_sparse.nn import MaskedMixin
    from lth_sparse.train import evaluate

    unit = path / "circle" / "depth_3" / "magnitude" / "density_planted" / "seed_0"
    ticket = torch.load(unit / "ticket.pt", weights_only=False)
    assert not any(isinstance(m, MaskedMixin) for m in ticket.modules())
    assert int((ticket[0].weight != 0).sum()) <= int(masks["0.weight"].sum())
    data = load_dataset("circle", val_fraction=0.1, train_size=1000)
    done_weak = read_done(unit / "done.json")
    assert evaluate(ticket, data.test)[1] == pytest.approx(done_weak["test_accuracy"])
    strong = torch.load(
        path / "circle" / "depth_3" / "edge-popup" / "density_planted" / "seed_0" / "ticket.pt", weights_only=False
    )
    assert evaluate(strong, data.test)[1] == pytest.approx(done["test_accuracy"])


def test_a_rerun_resumes_and_bad_input_is_refused(tiny, tmp_path):
    path, config, _ = tiny
    lines = []
    plant.run(config, path, progress=False, log=lines.append, plots=False)
    assert any("nothing to run" in line for line in lines)
    with pytest.raises(ConfigError, match="unknown pruners"):
        config_from_options(PlantConfig, {"pruners": "magnitude,lottery"})
    with pytest.raises(ConfigError, match="density must lie in"):
        config_from_options(PlantConfig, {"densities": "0.5,1.5"})
    with pytest.raises(ValueError, match="below circle's minimum"):
        PlantConfig(tasks=("circle",), depths=(2,))
    with pytest.raises(ValueError, match="tasks must be among"):
        config_from_options(PlantConfig, {"tasks": ["spiral"]})
    assert main(["plant", "--tasks", "circle", "--depths", "2", "--out", str(tmp_path / "x")]) == 2


def test_single_shot_pruners_train_at_moderate_density_and_miss_the_planted_ticket():
    """The paper's Section 3.1 on Circle (depth 3): at density 0.5 every single-shot pruner's weak ticket trains
    well above chance; at the planted density none recovers the planted ticket (recall well under 1) or reaches
    its accuracy. One seed, 10 epochs on 4,000 points: the figures are printed."""
    import tempfile

    config = config_from_options(
        PlantConfig,
        dict(
            tasks=["circle"],
            depths=[3],
            densities="0.5,planted",
            pruners="random,magnitude,snip,grasp,synflow",
            epochs=10,
            train_size=4000,
            synflow_iterations=10,
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = plant.run(config, tmp, progress=False, log=quiet, plots=False)
    reference = summary["references"][0]
    for row in summary["rows"]:
        print(
            f"{row['pruner']:>10} at {row['density_label']:>7}: accuracy {row['score']['mean']:.3f}, recall "
            f"{row['recall']['mean']:.3f} (planted ticket {reference['test']:.3f}, chance {reference['chance']:.3f})"
        )
        if row["density_label"] == "0.5":
            assert row["score"]["mean"] > reference["chance"] + 0.2, row["pruner"]
        else:
            assert row["recall"]["mean"] < 0.6 and row["score"]["mean"] < reference["test"], row["pruner"]


def test_the_plan_puts_multi_shot_then_edge_popup_then_single_shot_units_of_a_task_and_depth():
    """Stacks are cut from the plan's order, so each (task, depth) lists its multi-shot units first, then
    edge-popup's, then the single-shot ones (each kind in the order given); the dense unit stays the first
    pruner's (its directory does not depend on the order)."""
    from lth_sparse.pipelines.plant import PLANT

    config = config_from_options(
        PlantConfig,
        {**TINY, "tasks": ["circle"], "pruners": "snip,edge-popup,multishot-synflow,magnitude,multishot-magnitude"},
    )
    (units,) = PLANT.plan(config)
    pruners = [u.directory.split("/")[2] for u in units]
    assert pruners == ["multishot-synflow", "multishot-magnitude", "edge-popup", "snip", "snip", "magnitude"]
    assert [u.directory.split("/")[3] for u in units].count("density_1") == 1
    assert units[3].directory == "circle/depth_3/snip/density_planted/seed_0"
    assert units[4].directory == "circle/depth_3/snip/density_1/seed_0"


def test_the_pruning_defaults_are_plant_n_seek_s_code_s():
    """RelationalML/PlantNSeek, Synaptic-Flow-Extended: main.py's --prune-dataset-ratio 10 times load.dimension's 4
    "classes" (given to relu and helix too, "to have same number of samples in pruning dataset") is 40 scoring
    examples, drawn by randperm; --prune-epochs 1 is single-shot SynFlow."""
    config = PlantConfig()
    assert config.prune_batch == 10 * 4
    assert config.synflow_iterations == 1


def test_the_summary_says_which_collapse_criterion_fired(tiny):
    from lth_sparse.prune.collapse import COLLAPSE_CRITERIA

    path, _, summary = tiny
    for row in summary["rows"]:
        assert list(row["collapse"]) == list(COLLAPSE_CRITERIA)
        assert max(row["collapse"].values()) <= row["collapsed"] <= row["seeds"]
        if row["density_label"] == "1":
            assert row["collapsed"] == 0  # the dense host computes every target
    done = read_done(path / "relu" / "depth_3" / "magnitude" / "density_planted" / "seed_0" / "done.json")
    assert set(done["collapse"]) <= set(COLLAPSE_CRITERIA) and done["collapsed"] == bool(done["collapse"])


@pytest.mark.parametrize(("planting", "planted_weights"), [("reference", 115), ("exact", 91)])
def test_the_planting_option_reaches_the_units(tmp_path, planting, planted_weights):
    # Helix at depth 3 in a width-100 host (400 weights): the reference code's target keeps 24 rounding residues
    # as weights, the exact one does not
    options = dict(tasks=["helix"], depths=[3], pruners="magnitude", densities="1", epochs=0.1, train_size=200)
    config = config_from_options(PlantConfig, {**options, "planting": planting})
    summary = plant.run(config, tmp_path / planting, progress=False, log=quiet, plots=False)
    assert summary["references"][0]["planted_density"] == pytest.approx(planted_weights / 400, abs=1e-12)
    assert summary["config"]["planting"] == planting


def test_the_default_planting_is_the_reference_codes():
    assert PlantConfig().planting == "reference"
    with pytest.raises(ConfigError, match="planting"):
        config_from_options(PlantConfig, {"planting": "paper"})


def test_the_fischer_preset_sets_plant_n_seek_s_settings():
    """Appendix B.1 and RelationalML/PlantNSeek's Synaptic-Flow-Extended/main.py: Adam at 0.001 with no weight
    decay or learning-rate drops, batch 32, 10 epochs; depths 3, 5, 10 at width 100 for the three tasks; densities
    0.01, 0.1, 0.5, 1 and the planted one; every pruner single- and multi-shot (10 rounds of 5 epochs), edge-popup
    and its annealed variant for 10 epochs; 40 scoring examples, single-shot SynFlow; 25 repetitions."""
    from lth_sparse.pipelines.plant import PRUNERS

    config = config_from_options(PlantConfig, {"preset": "fischer"})
    assert (config.optimizer, config.lr, config.weight_decay, config.schedule) == ("adam", 1e-3, 0.0, "constant")
    assert (config.batch_size, config.epochs, config.warmup_epochs) == (32, 10, 0)
    assert config.tasks == ("relu", "circle", "helix") and config.depths == (3, 5, 10) and config.width == 100
    assert config.densities == ("0.01", "0.1", "0.5", "1", "planted")
    assert config.pruners == PRUNERS and len(PRUNERS) == 12
    assert (config.multishot_rounds, config.multishot_epochs, config.edge_popup_epochs) == (10, 5, 10)
    assert (config.prune_batch, config.synflow_iterations) == (40, 1)
    assert config.seed_list() == tuple(range(25)) and config.planting == "reference"
    # options given override the preset
    quick = config_from_options(PlantConfig, {"preset": "fischer", "seeds": "2", "depths": [5], "planting": "exact"})
    assert quick.seed_list() == (0, 1) and quick.depths == (5,) and quick.planting == "exact" and quick.lr == 1e-3
    with pytest.raises(ConfigError, match="unknown preset"):
        config_from_options(PlantConfig, {"preset": "fischer2022"})
