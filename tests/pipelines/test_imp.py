"""IMP at small size on the real 8x8 digits (offline): the properties the issue asks for."""

import json
from types import SimpleNamespace

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.config import config_from_options
from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.pipelines import imp, steps
from lth_sparse.pipelines.common import over_seeds
from lth_sparse.pipelines.imp_rounds import ImpConfig
from lth_sparse.prune import effective_masks, prune_magnitude
from lth_sparse.runs import ConfigMismatch
from lth_sparse.train import make_schedule

SMALL = dict(dataset="digits", model="lenet300", epochs=1, batch_size=64, lr=0.05, rounds=3)


def run_small(tmp_path, name="run", **overrides):
    # each training alone, as the spies on train() see them (stacked, they equal these: test_stacking.py)
    config = imp.ImpConfig(**{**SMALL, "stack": 1, **overrides})
    return imp.run(config, tmp_path / name, progress=False, log=lambda s: None, plots=False), config


def round_masks(run_dir, r):
    return Masks.load(run_dir / f"round_{r:02d}" / "masks.safetensors")


def spy_on_train(monkeypatch) -> list[dict]:
    """Record, for every training IMP starts, its description, arguments and the model's state at the start."""
    calls = []
    real_train = steps.train

    def spy(model, data, cfg, **kw):
        calls.append({"desc": kw["desc"], "state": {k: v.clone() for k, v in model.state_dict().items()}, **kw})
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(steps, "train", spy)
    return calls


@pytest.fixture(scope="module")
def rewound(tmp_path_factory):
    """One IMP run of 3 rounds rewinding to iteration 5, with the trainings it started (shared: it is the slow part)."""
    tmp = tmp_path_factory.mktemp("imp")
    with pytest.MonkeyPatch.context() as mp:
        calls = spy_on_train(mp)
        summary, config = run_small(tmp, rewind="iter:5")
    return SimpleNamespace(summary=summary, config=config, run=tmp / "run", dir=tmp / "run" / "seed_0", calls=calls)


def test_global_sparsity_after_n_rounds_is_one_minus_point_eight_to_the_n(rewound):
    summary = rewound.summary
    total = round_masks(rewound.dir, 0).num_weights()
    assert total == 8 * 8 * 300 + 300 * 100 + 100 * 10
    remaining = total
    assert [result["round"] for result in summary["rounds"]] == [0, 1, 2, 3]
    for r, result in enumerate(summary["rounds"]):
        if r:
            remaining -= round(0.2 * remaining)
        assert round_masks(rewound.dir, r).num_unpruned() == remaining
        assert result["sparsity"] == pytest.approx(1 - remaining / total, abs=1e-12)
        assert result["sparsity"] == pytest.approx(1 - 0.8**r, abs=1e-4)
        assert result["density"] == pytest.approx(remaining / total, abs=1e-12)


def test_each_round_prunes_the_smallest_trained_weights_of_the_previous_round_nested(rewound):
    for r in range(1, 4):
        older, newer = round_masks(rewound.dir, r - 1), round_masks(rewound.dir, r)
        assert newer.is_subset_of(older)
        trained = torch.load(rewound.dir / f"round_{r - 1:02d}" / "final.pt")
        model = create_model("lenet300", (1, 8, 8), 10)
        model.load_state_dict(trained)
        assert newer == prune_magnitude(model, 0.2, scope="global", masks=older)
        for name, mask in older.items():  # training kept the pruned weights at zero
            assert not trained[name][~mask].any(), (r, name)


def test_the_dense_round_learns_and_keeps_the_rewind_state(rewound):
    dense = rewound.calls[0]
    init = torch.load(rewound.dir / "init.pt")
    assert dense["desc"] == "round 0 (dense)" and dense["start_iteration"] == 0 and dense["snapshot_at"] == [5]
    assert all(torch.equal(dense["state"][k], v) for k, v in init.items())
    rewind = torch.load(rewound.dir / "rewind.pt")
    assert rewind["iteration"] == 5
    assert not torch.equal(rewind["state_dict"]["fc1.weight"], init["fc1.weight"]), "5 steps of training"
    # Chance on 10 balanced classes is 0.1.
    assert rewound.summary["rounds"][0]["test_accuracy"] > 0.5, "LeNet-300-100 learns the digits in one epoch"


def test_survivors_restart_from_their_rewind_values(rewound):
    rewind = torch.load(rewound.dir / "rewind.pt")["state_dict"]
    assert [c["desc"] for c in rewound.calls] == ["round 0 (dense)", "round 1", "round 2", "round 3"]
    for r in range(1, 4):
        call, masks = rewound.calls[r], round_masks(rewound.dir, r)
        assert call["start_iteration"] == 5 and call["lr_factor"] is None
        for key, value in rewind.items():
            if key in masks:
                assert torch.equal(call["state"][key], torch.where(masks[key], value, 0)), (r, key)
            elif key.removesuffix("mask") + "weight" in masks:
                assert torch.equal(call["state"][key], masks[key.removesuffix("mask") + "weight"]), (r, key)
            else:  # biases are rewound too
                assert torch.equal(call["state"][key], value), (r, key)


def test_summary_fields_match_the_round_files(rewound):
    on_disk = json.loads((rewound.run / "summary.json").read_text())
    assert on_disk["rounds"] == json.loads(json.dumps(rewound.summary["rounds"]))
    assert on_disk["config"]["rewind"] == "iter:5" and on_disk["hash"] == rewound.summary["hash"]
    assert on_disk["seeds"] == [0] and list(on_disk["per_seed"]) == ["0"]
    assert read_done(rewound.dir / "done.json") == {"seed": 0, "rounds": on_disk["per_seed"]["0"]}
    total_iters = on_disk["rounds"][0]["iterations"]
    assert total_iters > 5
    for r, (result, mean) in enumerate(zip(on_disk["per_seed"]["0"], on_disk["rounds"])):
        # one seed: each mean is the seed's own value, its spread zero
        assert mean["seeds"] == 1 and mean["test_accuracy"] == result["test_accuracy"]
        assert mean["test_accuracy_std"] == 0 and mean["test_accuracy_min"] == mean["test_accuracy_max"]
        step = rewound.dir / f"round_{r:02d}"
        assert read_done(step / "done.json") == result
        masks = round_masks(rewound.dir, r)
        assert result["sparsity"] == masks.sparsity()
        assert result["layer_sparsity"] == masks.layer_sparsity()
        model = create_model("lenet300", (1, 8, 8), 10)
        assert result["effective_sparsity"] == effective_masks(model, masks, (1, 8, 8)).sparsity()
        records = [json.loads(line) for line in (step / "metrics.jsonl").read_text().splitlines()]
        assert records, r
        last, best = records[-1], min(records, key=lambda rec: rec["val_loss"])
        assert result["iterations"] == last["iteration"]
        assert (result["val_loss"], result["val_accuracy"]) == (last["val_loss"], last["val_accuracy"])
        assert (result["best_val_iteration"], result["best_val_loss"]) == (best["iteration"], best["val_loss"])
        assert result["iterations"] == total_iters, "every round trains to the end of the schedule"
        assert result["test_accuracy"] > 0.5 and result["test_loss"] > 0, "half the weights or more still learn"


def test_layerwise_scope_prunes_each_layer_by_the_fraction(tmp_path):
    summary, _ = run_small(tmp_path, scope="layerwise", rounds=2)
    for r in (1, 2):
        older, newer = round_masks(tmp_path / "run" / "seed_0", r - 1), round_masks(tmp_path / "run" / "seed_0", r)
        for name in older:
            kept = int(older[name].sum())
            assert int(newer[name].sum()) == kept - round(0.2 * kept), (r, name)
        assert summary["rounds"][r]["layer_sparsity"] == newer.layer_sparsity()
    assert all(s == pytest.approx(0.36, abs=0.01) for s in summary["rounds"][2]["layer_sparsity"].values())


@pytest.mark.parametrize("retrain", ["finetune", "lr-rewind"])
def test_finetune_and_lr_rewind_keep_the_trained_weights(tmp_path, monkeypatch, retrain):
    calls = spy_on_train(monkeypatch)
    run_small(tmp_path, retrain=retrain, rounds=1, schedule="cosine")
    trained = torch.load(tmp_path / "run" / "seed_0" / "round_00" / "final.pt")
    masks = round_masks(tmp_path / "run" / "seed_0", 1)
    pruned = calls[1]
    for name, mask in masks.items():
        assert torch.equal(pruned["state"][name], torch.where(mask, trained[name], 0))
    assert pruned["start_iteration"] == 0
    total = read_done(tmp_path / "run" / "seed_0" / "round_00" / "done.json")["iterations"]  # one epoch
    if retrain == "finetune":  # as many iterations again, all at the final learning rate of the schedule
        config = imp.ImpConfig(**{**SMALL, "schedule": "cosine"})
        final_lr = make_schedule(config, total, total)(total - 1)
        assert 0 < final_lr < 0.1
        assert pruned["end_iteration"] == total
        assert [pruned["lr_factor"](it) for it in (0, total // 2, total - 1)] == [final_lr] * 3
    else:  # the schedule restarts from the rewind iteration
        assert pruned["lr_factor"] is None and pruned["end_iteration"] is None


def test_controls_train_the_same_mask_reinitialised_and_a_random_mask_from_the_rewind_state(tmp_path, monkeypatch):
    calls = spy_on_train(monkeypatch)
    summary, _ = run_small(tmp_path, controls=True, rounds=1)
    run_dir = tmp_path / "run" / "seed_0"
    assert [c["desc"] for c in calls] == ["round 0 (dense)", "round 1", "round 1 reinit", "round 1 random_mask"]
    masks, rewind = round_masks(run_dir, 1), torch.load(run_dir / "rewind.pt")["state_dict"]
    reinit, shuffled = calls[2], calls[3]
    for name, mask in masks.items():
        # reinit: the ticket's mask on new random weights
        assert torch.equal(reinit["state"][name.replace("weight", "mask")], mask)
        assert not reinit["state"][name][~mask].any()
        assert not torch.equal(reinit["state"][name][mask], rewind[name][mask]), name
        # random mask: as many weights per layer, elsewhere, from the rewind state
        random_mask = shuffled["state"][name.replace("weight", "mask")]
        assert int(random_mask.sum()) == int(mask.sum()) and not torch.equal(random_mask, mask), name
        assert torch.equal(shuffled["state"][name], torch.where(random_mask, rewind[name], 0)), name
    result = summary["rounds"][1]
    for control in ("reinit", "random_mask"):
        done = read_done(run_dir / "round_01" / f"control_{control}" / "done.json")
        assert result[f"{control}_test_accuracy"] == done["test_accuracy"]
        assert result[f"{control}_test_loss"] == done["test_loss"]
        assert done["sparsity"] == pytest.approx(result["sparsity"], abs=1e-3)
        assert done["test_accuracy"] > 0.5, f"{control}: 80% of LeNet-300-100 still learns the digits (chance: 0.1)"


def test_resume_after_a_kill_retrains_nothing_finished(tmp_path, monkeypatch):
    reference, _ = run_small(tmp_path, name="whole")
    calls = []
    real_train = steps.train

    def dies_in_round_2(model, data, cfg, **kw):
        calls.append(kw["desc"])
        if kw["desc"] == "round 2":
            raise KeyboardInterrupt
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(steps, "train", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path, name="killed")
    assert calls == ["round 0 (dense)", "round 1", "round 2"]
    calls.clear()
    monkeypatch.setattr(steps, "train", lambda *a, **kw: (calls.append(kw["desc"]), real_train(*a, **kw))[1])
    resumed, _ = run_small(tmp_path, name="killed")
    assert calls == ["round 2", "round 3"]
    for a, b in zip(resumed["rounds"], reference["rounds"]):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["sparsity"] == b["sparsity"]


def test_more_rounds_extend_a_finished_run(tmp_path, monkeypatch):
    first, _ = run_small(tmp_path, rounds=1)
    calls = spy_on_train(monkeypatch)
    summary, _ = run_small(tmp_path, rounds=2)
    assert [c["desc"] for c in calls] == ["round 2"], "only the new round trains"
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][:2] == first["rounds"]
    assert summary["rounds"][2]["sparsity"] > summary["rounds"][1]["sparsity"]


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    run_small(tmp_path, rounds=0)
    with pytest.raises(ConfigMismatch, match="fraction: 0.2 there, 0.3 now"):
        run_small(tmp_path, rounds=0, fraction=0.3)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="retrain"):
        imp.ImpConfig(retrain="restart")
    with pytest.raises(ValueError, match="fraction"):
        imp.ImpConfig(fraction=1.5)
    with pytest.raises(ValueError, match="training step"):
        imp.ImpConfig(rewind="later")


def test_command_line_runs_and_writes_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "imp",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--model-option",
            "width=32",
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--controls",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "round" in printed and "rand mask" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model_options"] == [["width", 32]]
    assert (out / "plots" / "accuracy_vs_remaining.png").stat().st_size > 1000
    assert (out / "plots" / "layer_sparsity.png").exists()
    assert (
        main(
            [
                "imp",
                "--dataset",
                "digits",
                "--model",
                "mlp",
                "--model-option",
                "width=32",
                "--rounds",
                "1",
                "--epochs",
                "1",
                "--lr",
                "0.1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "lr: 0.05 there, 0.1 now" in capsys.readouterr().err


def test_command_line_reads_a_yaml_config_and_flags_override_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmodel: lenet300\nrounds: 0\nepochs: 1\nlr: 0.05\nseed: 3\n")
    out = tmp_path / "yaml"
    assert main(["imp", "--config", str(cfg), "--seed", "4", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["seed"] == 4 and saved["lr"] == 0.05 and saved["dataset"] == "digits"


def test_plots_are_redrawn_from_the_saved_summary(tmp_path, capsys):
    run_small(tmp_path, rounds=1)
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "plots" / "accuracy_vs_remaining.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_seeds_vary_apart_each_defaulting_from_the_run_seed(tmp_path):
    """The same initialisation under another data order (instability's experiment), and the reverse."""
    tiny = dict(dataset="digits", model="mlp", model_options=(("width", 16),), rounds=0, epochs=1, train_size=300)

    def run(name, **seeds):
        imp.run(imp.ImpConfig(**tiny, **seeds), tmp_path / name, progress=False, log=lambda s: None, plots=False)
        seed = seeds.get("seed", 0)
        folder = tmp_path / name / f"seed_{seed}"
        return (
            torch.load(folder / "init.pt"),
            torch.load(folder / "round_00" / "final.pt"),
            [json.loads(x) for x in (folder / "round_00" / "metrics.jsonl").read_text().splitlines()],
        )

    base_init, base_final, _ = run("base", seed=0)
    same_default = run("explicit", seed=0, init_seed=0, split_seed=0, order_seed=0, prune_seed=0)
    assert all(torch.equal(base_final[k], same_default[1][k]) for k in base_final), "each seed defaults to --seed"
    other_order = run("order", seed=0, order_seed=5)
    assert all(torch.equal(base_init[k], other_order[0][k]) for k in base_init), "the same initialisation"
    assert not torch.equal(base_final["fc1.weight"], other_order[1]["fc1.weight"]), "trained on another data order"
    other_init = run("init", seed=0, init_seed=5)
    assert not torch.equal(base_init["fc1.weight"], other_init[0]["fc1.weight"])
    # With the split fixed, a new --seed changes initialisation and order but not the split.
    from lth_sparse.data import load_dataset

    a = load_dataset("digits", seed=imp.ImpConfig(seed=1, split_seed=0).seed_of("split"), train_size=300)
    b = load_dataset("digits", seed=0, train_size=300)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)


def test_each_round_records_both_effective_sparsities_in_order(rewound):
    for result in rewound.summary["rounds"]:
        # pruned <= cut off from the output (Paganini & Forde) <= on no input-output path (Vysogorets & Kempe)
        assert result["sparsity"] <= result["output_connected_sparsity"] + 1e-12
        assert result["output_connected_sparsity"] <= result["effective_sparsity"] + 1e-12


def test_aimp_compresses_the_mask_search_and_trains_each_ticket_fully(tmp_path):
    """AIMP (Zullich et al. 2021; the SGD-noise paper's Table 3): the rounds' mask search trains --search-epochs
    with the schedule compressed to them; each round's ticket then trains the full schedule from the rewind
    state, with the sparse training's own options (Table 4)."""

    from lth_sparse.pipelines import imp as imp_module
    from lth_sparse.pipelines.imp import ImpConfig

    config = ImpConfig(
        dataset="digits",
        model="mlp",
        model_options=(("width", 32),),
        epochs=4,
        search_epochs=1,
        lr=0.05,
        schedule="step",
        milestones=(2.0, 3.0),
        rounds=2,
        rewind="iter:3",
        sparse_options=(("momentum", 0.0),),
    )
    search = config.train_config()
    assert (search.epochs, search.milestones) == (1, (0.5, 0.75)), "the schedule compressed to the budget"
    assert config.sparse_train_config().momentum == 0.0 and config.sparse_train_config().epochs == 4
    summary = imp_module.run(config, tmp_path / "run", progress=False, log=lambda s: None, plots=True)
    per_epoch = -(-int(len(imp_module.ImpRun(config, None, False, lambda s: None).data.train)) // 128)
    for r, row in enumerate(summary["rounds"]):
        assert row["iterations"] == per_epoch, "a round's mask search lasts one epoch"
        sparse = read_done(tmp_path / "run" / "seed_0" / f"round_{r:02d}" / "sparse" / "done.json")
        assert sparse["iterations"] == 4 * per_epoch and row["sparse_test_accuracy"] == sparse["test_accuracy"]
        masks = Masks.load(tmp_path / "run" / "seed_0" / f"round_{r:02d}" / "sparse" / "masks.safetensors")
        assert masks == Masks.load(tmp_path / "run" / "seed_0" / f"round_{r:02d}" / "masks.safetensors")
    with pytest.raises(ValueError, match="search_epochs must lie"):
        ImpConfig(epochs=4, search_epochs=5)
    with pytest.raises(ValueError, match="give --search-epochs"):
        ImpConfig(sparse_options=(("momentum", 0.0),))


TINY = dict(dataset="digits", model="mlp", model_options=(("width", 16),), epochs=1, train_size=300, lr=0.05)


def refuse_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def test_without_a_validation_set_the_files_are_strict_json_and_the_validation_figures_null(tmp_path):
    """--val-fraction 0 (OpenLTH's setting: train on every example): no NaN or Infinity for strict readers."""
    summary, _ = run_small(tmp_path, **TINY, rounds=1, seeds=(0, 1), val_fraction=0.0)
    run = tmp_path / "run"
    written = json.loads((run / "summary.json").read_text(), parse_constant=refuse_constant)
    for path in run.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse_constant)
    for entry in written["rounds"]:
        for key in ("val_accuracy", "val_loss", "best_val_loss"):
            assert [entry[key + stat] for stat in ("", "_std", "_min", "_max")] == [None] * 4, key
        assert entry["test_accuracy"] > 0.1 and entry["test_accuracy_std"] >= 0
    for rounds in written["per_seed"].values():
        assert all(r["val_accuracy"] is None and r["val_loss"] is None for r in rounds)
    assert summary["rounds"] == written["rounds"]


def test_figures_missing_in_every_seed_are_none_over_seeds_and_the_others_count_the_present_ones():
    assert over_seeds([None, None]) == {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    assert over_seeds([None, 0.5, 0.7]) == over_seeds([0.5, 0.7]) and over_seeds([0.5, 0.7])["n"] == 2
    rounds = imp.summarize_rounds({s: [{"round": 0, "val_loss": None, "test_accuracy": 0.5 + s}] for s in (0, 1)})
    assert rounds[0]["val_loss"] is None and rounds[0]["val_loss_max"] is None and rounds[0]["test_accuracy"] == 1.0


def test_the_summary_of_a_killed_run_has_its_finished_rounds_and_says_it_is_partial(tmp_path, monkeypatch):
    real_train = steps.train

    def dies_in_round_2(model, data, cfg, **kw):
        if kw["desc"] == "round 2":
            raise KeyboardInterrupt
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(steps, "train", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path, **TINY)
    run = tmp_path / "run"
    (run / "summary.json").write_text(json.dumps({"kind": "imp", "seeds": [], "rounds": [], "per_seed": {}}))
    lines = []
    summary, counts = imp.IMP.summarize_partial(run, plots=True, log=lines.append)
    assert counts == (0, 1) and lines == ["partial: 0 of 1 units done"]
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["seeds"] == [0]
    assert [r["round"] for r in summary["per_seed"]["0"]] == [0, 1]
    assert summary["partial"] == {"units_done": 0, "units": 1}
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary)), "the emptier one replaced"
    assert (run / "plots" / "accuracy_vs_remaining.png").exists()

    # A summary of fewer results never replaces a richer one.
    richer = (run / "summary.json").read_text()
    (run / "seed_0" / "round_01" / "done.json").unlink()
    kept, counts = imp.IMP.summarize_partial(run, plots=False, log=lines.append)
    assert (run / "summary.json").read_text() == richer and kept == json.loads(richer) and counts == (0, 1)

    monkeypatch.setattr(steps, "train", real_train)
    finished, _ = run_small(tmp_path, **TINY)
    assert [r["round"] for r in finished["rounds"]] == [0, 1, 2, 3] and "partial" not in finished


@pytest.mark.parametrize(
    "preset, epochs, batch, lr, momentum, decay, schedule, milestones, rewind",
    [
        # "Considering layerwise importance in the lottery ticket hypothesis", Appendix A's table, row by row
        ("layerwise-lenet", 40, 128, 0.1, 0.0, 0.0, "constant", None, "init"),
        # the table says batch 238 and 391 iterations per epoch: 50,000 / 128 = 391, so 128
        ("layerwise-resnet20", 160, 128, 0.1, 0.9, 1e-4, "step", (80, 120), "iter:1000"),
        ("layerwise-vgg16", 160, 128, 0.1, 0.9, 1e-4, "step", (80, 120), "iter:2000"),
        ("layerwise-resnet18", 200, 256, 0.2, 0.9, 1e-4, "step", (100, 150), "iter:1000"),
    ],
)
def test_the_layerwise_importance_presets_are_the_papers_table(
    preset, epochs, batch, lr, momentum, decay, schedule, milestones, rewind
):
    c = config_from_options(ImpConfig, {"preset": preset})
    assert (c.optimizer, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (
        "sgd",
        epochs,
        batch,
        lr,
        momentum,
        decay,
    )
    assert c.schedule == schedule and c.rewind == rewind and c.retrain == "rewind"
    if milestones:
        assert c.milestones == milestones and c.gamma == 0.1
    assert (c.fraction, c.scope, c.warmup_epochs) == (0.2, "global", 0.0)
    # OpenLTH's LeNet, whose recipe the table's row is, never prunes the output layer (pruning_layers_to_ignore)
    assert c.spare_output == (preset == "layerwise-lenet")
    # the importance is what the study varies: the user's, not the preset's
    assert config_from_options(ImpConfig, {"preset": preset, "importance": "l1"}).importance == "l1"
    assert config_from_options(ImpConfig, {"preset": preset}).importance == "magnitude"
