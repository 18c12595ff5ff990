"""IMP at small size on the real 8x8 digits (offline): the properties the issue asks for."""

import json

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.masks import Masks
from lth_sparse.pipelines import imp
from lth_sparse.runs import ConfigMismatch

SMALL = dict(dataset="digits", model="lenet300", epochs=1, batch_size=64, lr=0.05, rounds=3)


def run_small(tmp_path, name="run", **overrides):
    config = imp.ImpConfig(**{**SMALL, **overrides})
    return imp.run(config, tmp_path / name, progress=False, log=lambda s: None, plots=False), config


def round_masks(run_dir, r):
    return Masks.load(run_dir / f"round_{r:02d}" / "masks.safetensors")


def test_global_sparsity_after_n_rounds_is_one_minus_point_eight_to_the_n(tmp_path):
    summary, _ = run_small(tmp_path)
    total = round_masks(tmp_path / "run", 0).num_weights()
    remaining = total
    for r, result in enumerate(summary["rounds"]):
        assert result["round"] == r
        if r:
            remaining -= round(0.2 * remaining)
        assert result["sparsity"] == pytest.approx(1 - remaining / total, abs=1e-12)
        assert result["sparsity"] == pytest.approx(1 - 0.8 ** r, abs=1e-4)


def test_layerwise_scope_prunes_each_layer_by_the_fraction(tmp_path):
    summary, _ = run_small(tmp_path, scope="layerwise", rounds=2)
    for layer, sparsity in summary["rounds"][2]["layer_sparsity"].items():
        assert sparsity == pytest.approx(1 - 0.8 ** 2, abs=0.02), layer


def test_masks_are_nested_across_rounds(tmp_path):
    run_small(tmp_path)
    for r in range(1, 4):
        newer, older = round_masks(tmp_path / "run", r), round_masks(tmp_path / "run", r - 1)
        assert newer.is_subset_of(older)
        assert newer.sparsity() > older.sparsity()


def test_survivors_restart_from_their_rewind_values(tmp_path, monkeypatch):
    starts = []
    real_train = imp.train

    def spy(model, data, cfg, **kw):
        starts.append(({k: v.clone() for k, v in model.state_dict().items()}, kw["start_iteration"]))
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(imp, "train", spy)
    run_small(tmp_path, rewind="iter:5")
    rewind = torch.load(tmp_path / "run" / "rewind.pt")
    assert rewind["iteration"] == 5
    for r in range(1, 4):
        state, start = starts[r]
        masks = round_masks(tmp_path / "run", r)
        assert start == 5
        for name, mask in masks.items():
            assert torch.equal(state[name], torch.where(mask, rewind["state_dict"][name], 0))
            assert torch.equal(state[name.replace("weight", "mask")], mask)


def test_finetune_keeps_trained_weights(tmp_path, monkeypatch):
    starts = []
    real_train = imp.train

    def spy(model, data, cfg, **kw):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(imp, "train", spy)
    run_small(tmp_path, retrain="finetune", rounds=1)
    trained = torch.load(tmp_path / "run" / "round_00" / "final.pt")
    masks = round_masks(tmp_path / "run", 1)
    for name, mask in masks.items():
        assert torch.equal(starts[1][name], torch.where(mask, trained[name], 0))


def test_controls_are_recorded(tmp_path):
    summary, _ = run_small(tmp_path, controls=True, rounds=1)
    result = summary["rounds"][1]
    for key in ("reinit_test_accuracy", "random_mask_test_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    control_masks_sparsity = json.loads((tmp_path / "run" / "round_01" / "control_random_mask" / "done.json")
                                        .read_text())["sparsity"]
    assert control_masks_sparsity == pytest.approx(result["sparsity"], abs=1e-3)


def test_summary_has_the_documented_fields(tmp_path):
    summary, _ = run_small(tmp_path, rounds=1)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["rounds"] == json.loads(json.dumps(summary["rounds"]))
    for key in ("round", "sparsity", "layer_sparsity", "effective_sparsity", "test_accuracy", "test_loss",
                "best_val_iteration", "val_accuracy"):
        assert key in on_disk["rounds"][1]
    assert on_disk["rounds"][0]["test_accuracy"] > 0.5, "LeNet-300-100 learns the digits in one epoch"


def test_resume_after_a_kill_retrains_nothing_finished(tmp_path, monkeypatch):
    reference, _ = run_small(tmp_path, name="whole")
    calls = []
    real_train = imp.train

    def dies_in_round_2(model, data, cfg, **kw):
        calls.append(kw["desc"])
        if kw["desc"] == "round 2":
            raise KeyboardInterrupt
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(imp, "train", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path, name="killed")
    assert calls == ["round 0 (dense)", "round 1", "round 2"]
    calls.clear()
    monkeypatch.setattr(imp, "train", lambda *a, **kw: (calls.append(kw["desc"]), real_train(*a, **kw))[1])
    resumed, _ = run_small(tmp_path, name="killed")
    assert calls == ["round 2", "round 3"]
    for a, b in zip(resumed["rounds"], reference["rounds"]):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["sparsity"] == b["sparsity"]


def test_more_rounds_extend_a_finished_run(tmp_path):
    run_small(tmp_path, rounds=1)
    summary, _ = run_small(tmp_path, rounds=2)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]


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
    code = main(["imp", "--dataset", "digits", "--model", "mlp", "--model-option", "width=32", "--rounds", "1",
                 "--epochs", "1", "--lr", "0.05", "--controls", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "round" in printed and "rand mask" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model_options"] == [["width", 32]]
    assert (out / "plots" / "accuracy_vs_remaining.png").stat().st_size > 1000
    assert (out / "plots" / "layer_sparsity.png").exists()
    assert main(["imp", "--dataset", "digits", "--model", "mlp", "--model-option", "width=32", "--rounds", "1",
                 "--epochs", "1", "--lr", "0.1", "--out", str(out), "--no-progress"]) == 2
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
    assert "no summary.json" in capsys.readouterr().err
