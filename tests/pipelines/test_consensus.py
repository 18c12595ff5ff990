"""The consensus pipeline (Paganini & Forde 2020) at tiny size on the real 8x8 digits and tasks derived from it."""

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.config import ConfigError, config_from_options
from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks, intersection, vote
from lth_sparse.pipelines import consensus, steps
from lth_sparse.pipelines.consensus import ConsensusConfig

TINY = dict(
    model="mlp",
    model_options=(("width", 32),),
    epochs=1,
    lr=0.05,
    batch_size=64,
    train_size=400,
    rounds=3,
    intersect_round=2,
)
TASKS = ("digits", "digits:permute=1", "digits:half=a")


def run(tmp_path, name="run", **overrides):
    config = ConsensusConfig(**{**TINY, "tasks": TASKS, **overrides})
    return consensus.run(config, tmp_path / name, progress=False, log=lambda s: None, plots=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consensus")
    return tmp, run(tmp)


def bespoke_masks(run_dir, r, n=3, seed=0):
    return [
        Masks.load(run_dir / f"seed_{seed}" / f"bespoke_{i}" / f"round_{r:02d}" / "masks.safetensors") for i in range(n)
    ]


def test_the_consensus_is_the_intersection_of_the_bespoke_masks(shared):
    tmp, summary = shared
    at = bespoke_masks(tmp / "run", 2)
    mask = Masks.load(tmp / "run" / "seed_0" / "consensus" / "masks.safetensors")
    assert mask == intersection(at)
    for m in at:
        assert mask.is_subset_of(m)
    assert summary["consensus"]["sparsity"]["mean"] == pytest.approx(mask.sparsity())
    assert mask.sparsity() >= max(m.sparsity() for m in at) == pytest.approx(1 - 0.8**2, abs=1e-3)
    done = read_done(tmp / "run" / "seed_0" / "consensus" / "done.json")
    assert done["output_connected_sparsity"] <= done["effective_sparsity"] + 1e-12
    assert done["effective_sparsity"] >= done["sparsity"] - 1e-12
    assert done["overlap"]["total"]["counts"][3] == mask.num_unpruned(), "kept by all 3 = the intersection"
    random = Masks.load(tmp / "run" / "seed_0" / "consensus" / "random_masks.safetensors")
    assert random.layer_sparsity() == pytest.approx(mask.layer_sparsity()) and random != mask


def test_one_shared_initialisation_makes_the_bespoke_masks_alike(shared, tmp_path):
    _, summary = shared
    c = summary["consensus"]
    # Shared initialisation: far more alike than independent masks of the same densities would be.
    assert c["mean_jaccard"]["mean"] < 0.6 * c["independent_jaccard"]["mean"], c
    # A new initialisation per task must fail this: its masks are about as far apart as independent ones.
    apart = run(tmp_path, "apart", retrain=False, init_per_task=True)["consensus"]
    assert apart["mean_jaccard"]["mean"] > 0.85 * apart["independent_jaccard"]["mean"], apart
    assert apart["density"]["mean"] < c["density"]["mean"], "and their intersection is sparser"


def test_the_independence_baseline_is_that_of_each_layers_densities(shared):
    # Global pruning leaves each layer its own density: the baseline is independent masks of those per-layer
    # densities, computed by hand here from the bespoke masks (sum(n p q) shared of sum(n (p + q - p q))).
    tmp, summary = shared
    pairs = [(0, 1), (0, 2), (1, 2)]
    for r, entry in enumerate(summary["over_rounds"]):
        masks = bespoke_masks(tmp / "run", r)
        layers = [name for name in masks[0] if name in summary["jaccard_per_layer"]]
        expected = []
        for i, j in pairs:
            a, b = masks[i], masks[j]
            sizes = [(a[k].numel(), a[k].float().mean().item(), b[k].float().mean().item()) for k in layers]
            shared_, union_ = sum(n * p * q for n, p, q in sizes), sum(n * (p + q - p * q) for n, p, q in sizes)
            expected.append(1 - shared_ / union_ if union_ else 0.0)
        assert entry["independent_jaccard"] == pytest.approx(sum(expected) / 3), r
    done = read_done(tmp / "run" / "seed_0" / "consensus" / "done.json")
    assert summary["consensus"]["independent_jaccard"]["mean"] == pytest.approx(done["independent_jaccard"])
    assert summary["over_rounds"][2]["independent_jaccard"] == pytest.approx(done["independent_jaccard"])


def test_tasks_are_named_as_given(shared):
    # the tasks are loaded brought to the first task's shape, but named as the user gave them
    _, summary = shared
    assert summary["tasks"] == list(TASKS)
    assert {row["task"] for row in summary["retrain"]} == set(TASKS)


def test_random_pruning_gives_every_task_the_same_mask(tmp_path):
    # The paper's sanity check (Appendix E): one seed, the random pruner: identical masks on every task.
    summary = run(tmp_path, importance="random", retrain=False)
    assert summary["jaccard"] == [[0.0] * 3] * 3
    for counts in summary["overlap"].values():
        assert counts[1] == counts[2] == 0, "every weight kept by 0 or all 3 tasks"
    at = bespoke_masks(tmp_path / "run", 2)
    assert at[0] == at[1] == at[2] == Masks.load(tmp_path / "run" / "seed_0" / "consensus" / "masks.safetensors")


def test_every_ticket_is_retrained_on_every_task(shared):
    tmp, summary = shared
    rows = {(r["ticket"], r["target"]): r for r in summary["retrain"]}
    assert set(rows) == {
        (t, i) for t in ("consensus", "random", "bespoke_0", "bespoke_1", "bespoke_2") for i in range(3)
    }
    density = summary["consensus"]["density"]["mean"]
    for (ticket, _target), row in rows.items():
        assert 0 <= row["test_accuracy"]["mean"] <= 1
        if ticket.startswith("bespoke"):  # the round of the bespoke run closest to the consensus's density
            (r,) = row["source_round"]
            src = read_done(tmp / "run" / "seed_0" / f"bespoke_{row['source']}" / "done.json")
            densities = [x["density"] for x in src["rounds"]]
            assert abs(torch.tensor(densities[r]).log() - torch.tensor(density).log()) == min(
                abs(torch.tensor(d).log() - torch.tensor(density).log()) for d in densities
            )
    # a bespoke ticket retrained on its own task from the shared initialisation is the IMP round itself
    own = rows[("bespoke_0", 0)]
    (r,) = own["source_round"]
    imp_round = read_done(tmp / "run" / "seed_0" / "bespoke_0" / f"round_{r:02d}" / "done.json")
    assert own["test_accuracy"]["mean"] == imp_round["test_accuracy"]
    assert rows[("consensus", 0)]["test_accuracy"]["mean"] > 0.25, "the consensus ticket learns (chance: 0.1; 5 steps)"


def test_a_rerun_resumes_without_training_again(shared, monkeypatch):
    tmp, summary = shared
    calls = []
    real = steps.train
    monkeypatch.setattr(steps, "train", lambda *a, **kw: (calls.append(kw["desc"]), real(*a, **kw))[1])
    again = run(tmp)
    assert calls == [] and again["retrain"] == summary["retrain"]


def test_min_votes_relaxes_the_intersection(tmp_path):
    run(tmp_path, min_votes=2, retrain=False)
    at = bespoke_masks(tmp_path / "run", 2)
    assert Masks.load(tmp_path / "run" / "seed_0" / "consensus" / "masks.safetensors") == vote(at, 2)


def test_tasks_of_other_class_counts_leave_the_output_layer_out(tmp_path):
    summary = run(tmp_path, tasks=("digits", "digits:classes=0,1,2,3,4"), rounds=2)
    output_layer = list(bespoke_masks(tmp_path / "run", 2, n=1)[0])[-1]
    assert summary["consensus"]["left_out"] == [output_layer]
    mask = Masks.load(tmp_path / "run" / "seed_0" / "consensus" / "masks.safetensors")
    assert mask[output_layer].all(), "kept dense"
    final = torch.load(tmp_path / "run" / "seed_0" / "retrain" / "consensus" / "task_1" / "final.pt")
    last = [k for k in final if k.endswith("weight")][-1]
    assert final[last].shape[0] == 5, "the output layer sized per task"


def test_the_paganini_preset_is_the_papers_recipe_and_options_override_it():
    c = config_from_options(ConsensusConfig, {"tasks": ["digits", "digits:half=b"], "preset": "paganini"})
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.batch_size, c.epochs, c.schedule) == (
        "sgd",
        0.01,
        0.0,
        0.0,
        32,
        30.0,
        "constant",
    )
    assert (c.val_fraction, c.fraction, c.scope, c.importance, c.intersect_round) == (
        0.2,
        0.2,
        "global",
        "magnitude",
        2,
    )
    assert c.augment == "flip+crop4", "the appendix: a horizontal flip and a random crop (padding: our reading)"
    assert c.task_names("1x8x8") == ("digits:augment=flip+crop4", "digits:half=b:shape=1x8x8:augment=flip+crop4")
    assert config_from_options(ConsensusConfig, {"tasks": TASKS, "preset": "paganini", "lr": 0.1}).lr == 0.1
    with pytest.raises(ConfigError, match="unknown preset 'frankle'"):
        config_from_options(ConsensusConfig, {"tasks": TASKS, "preset": "frankle"})


def test_bad_input_is_refused_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(ValueError, match="at least two tasks"):
        ConsensusConfig(tasks=("digits",))
    with pytest.raises(ValueError, match="min_votes must lie in 1..3"):
        ConsensusConfig(tasks=TASKS, min_votes=4)
    with pytest.raises(ValueError, match="intersect_round must lie in 1..rounds"):
        ConsensusConfig(tasks=TASKS, rounds=2, intersect_round=3)
    args = ["consensus", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*args, "--tasks", "digits", "digits:halves=a"]) == 2
    assert "unknown derived-task option 'halves'" in capsys.readouterr().err
    assert main([*args, "--tasks", "mnist1d", "digits"]) == 2
    assert "holds vectors" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing written"


def test_a_saved_config_keeps_what_its_preset_gave_when_it_ran(tmp_path):
    # a run's config.json is read without expanding its preset again: a field the preset sets since (here
    # augment, removed from the saved file as a run made before it existed) takes its default
    import json as json_

    from lth_sparse.pipelines.consensus import CONSENSUS

    config = ConsensusConfig(
        **{
            **TINY,
            "tasks": TASKS,
            "preset": "paganini",
            "augment": None,
            "epochs": 1,
            "batch_size": 64,
            "retrain": False,
        }
    )
    consensus.run(config, tmp_path / "run", progress=False, log=lambda s: None, plots=False)
    saved_file = tmp_path / "run" / "config.json"
    saved = json_.loads(saved_file.read_text())
    del saved["config"]["augment"]
    saved_file.write_text(json_.dumps(saved))
    _, read = CONSENSUS.saved_config(tmp_path / "run")
    assert read.augment is None and read.preset == "paganini"


def test_a_sweep_table_gets_the_consensus_figures(shared):
    from lth_sparse.sweep import summary_rows

    _, summary = shared
    (row,) = summary_rows(summary)
    assert row["sparsity"] == summary["consensus"]["sparsity"]["mean"]
    own = [r["test_accuracy"]["mean"] for r in summary["retrain"] if r["ticket"] == f"bespoke_{r['target']}"]
    assert row["test_accuracy_bespoke_own"] == pytest.approx(sum(own) / 3)
    assert {"mean_jaccard", "independent_jaccard", "test_accuracy_consensus", "test_accuracy_random"} <= set(row)
