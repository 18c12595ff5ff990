"""The command line on bad input: one ``lth-sparse imp: error: ...`` line and exit status 2, never a
traceback or a silent answer, and nothing left behind that would refuse the corrected command."""

from __future__ import annotations

import errno
import json
import pathlib
import urllib.error

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.runs import read_json

# The smallest real run: an MLP on scikit-learn's 8x8 digits (offline), one short epoch.
TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "width=16",
    "--rounds",
    "0",
    "--epochs",
    "1",
    "--train-size",
    "200",
    "--no-plots",
]


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``lth-sparse ARGV``."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("lth-sparse imp: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_a_malformed_yaml_config_is_one_error_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("rounds: [1, 2\nepochs: 1\n")
    code, _, err = run_cli(["imp", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "not valid YAML", str(config))
    assert not (tmp_path / "run").exists()


def test_a_malformed_json_config_names_the_position(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text('{"rounds": 1,}')
    code, _, err = run_cli(["imp", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "not valid JSON", "line 1")


def test_a_yaml_config_under_another_extension_is_read(tmp_path, capsys):
    config = tmp_path / "options.cfg"
    config.write_text(
        "dataset: digits\nmodel: mlp\nmodel_options: {width: 16}\nrounds: 0\nepochs: 1\ntrain_size: 200\nseed: 5\n"
    )
    code, _, err = run_cli(["imp", "--config", str(config), "--no-plots", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    saved = read_json(tmp_path / "run" / "config.json")["config"]
    assert saved["seed"] == 5 and saved["model_options"] == [["width", 16]] and saved["train_size"] == 200


def test_a_missing_config_file_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(["imp", "--config", str(tmp_path / "nowhere.yaml")], capsys)
    assert_one_error_line(code, err, "nowhere.yaml", "no such file")


def test_unknown_config_keys_are_named(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"rounds": 1, "lerning_rate": 0.1}))
    code, _, err = run_cli(["imp", "--config", str(config)], capsys)
    assert_one_error_line(code, err, "unknown options ['lerning_rate']")


def test_a_config_value_of_the_wrong_type_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("rounds: five\n")
    code, _, err = run_cli(["imp", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "rounds must be int, got 'five'", str(config))


def test_mnist_offline_in_an_empty_data_dir_is_one_error_line_and_leaves_no_empty_folders(
    tmp_path, capsys, monkeypatch
):
    mnist = pytest.importorskip("torchvision.datasets.mnist")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    code, _, err = run_cli(
        ["imp", "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(tmp_path / "run")], capsys
    )
    assert_one_error_line(code, err, "could not download the training set of mnist", "--data-dir")
    assert list(data_dir.iterdir()) == [], "the failed download's empty MNIST/raw is removed"
    assert not (tmp_path / "run").exists(), "bad input claims no run directory"


def test_out_naming_a_file_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code, _, err = run_cli(["imp", *TINY, "--out", str(out)], capsys)
    assert_one_error_line(code, err, "is a file")
    assert out.read_text() == "keep me"


def test_out_on_a_read_only_file_system_is_one_error_line(tmp_path, capsys, monkeypatch):
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    code, _, err = run_cli(["imp", *TINY, "--out", str(tmp_path / "ro" / "run")], capsys)
    assert_one_error_line(code, err, "Read-only file system", str(tmp_path / "ro"))


def test_out_where_nothing_may_be_created_is_one_error_line(capsys):
    out = pathlib.Path("/sys/lth-sparse-test-run")
    try:
        out.mkdir()
    except OSError:
        pass
    else:
        out.rmdir()
        pytest.skip("/sys is writable here")
    code, _, err = run_cli(["imp", *TINY, "--out", str(out)], capsys)
    assert_one_error_line(code, err, str(out))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without a GPU")
def test_device_cuda_without_a_gpu_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(["imp", *TINY, "--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "no CUDA device", "--device cpu")
    assert not (tmp_path / "run").exists()


def test_a_device_torch_does_not_know_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(["imp", *TINY, "--device", "gpu0", "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "'gpu0' is not a torch device")


def test_an_unknown_dataset_is_one_error_line_naming_the_choices(tmp_path, capsys):
    code, _, err = run_cli(["imp", "--dataset", "fashion_mnst", "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "unknown dataset 'fashion_mnst'", "fashion-mnist")


def test_a_failed_command_does_not_block_its_corrected_version(tmp_path, capsys):
    out = tmp_path / "run"
    bad = [arg if arg != "mlp" else "resnet9000" for arg in TINY]
    code, _, err = run_cli(["imp", *bad, "--out", str(out)], capsys)
    assert_one_error_line(code, err, "resnet9000")
    assert not out.exists()
    code, _, err = run_cli(["imp", *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    assert read_json(out / "summary.json")["rounds"][0]["round"] == 0


def test_an_unfinished_run_of_another_config_is_replaced_and_a_finished_one_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["imp", *TINY, "--out", str(out)], capsys)[0] == 0
    # The finished run is refused under another seed, naming the field.
    code, _, err = run_cli(["imp", *TINY, "--seed", "7", "--out", str(out)], capsys)
    assert_one_error_line(code, err, "seed: 0 there, 7 now")
    # With its finished round gone (a run killed in round 0), the new config replaces it.
    for done in out.rglob("done.json"):
        done.unlink()
    code, stdout, err = run_cli(["imp", *TINY, "--seed", "7", "--out", str(out)], capsys)
    assert code == 0, err
    assert "replacing the unfinished run" in stdout and "seed: 0 there, 7 now" in stdout
    assert read_json(out / "config.json")["config"]["seed"] == 7


def test_a_rerun_of_a_finished_run_says_it_is_finished(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["imp", *TINY, "--out", str(out)], capsys)[0] == 0
    before = (out / "seed_0" / "round_00" / "done.json").stat().st_mtime_ns
    code, stdout, _ = run_cli(["imp", *TINY, "--out", str(out)], capsys)
    assert code == 0
    assert "found a finished run" in stdout and "all 1 units are done" in stdout
    assert (out / "seed_0" / "round_00" / "done.json").stat().st_mtime_ns == before, "nothing is retrained"


def test_threads_are_set_for_the_run_recorded_and_restored(tmp_path, capsys):
    before = torch.get_num_threads()
    code, stdout, err = run_cli(["imp", *TINY, "--threads", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert read_json(tmp_path / "run" / "config.json")["config"]["threads"] == 2
    assert "2 threads" in stdout
    assert torch.get_num_threads() == before


def test_threads_below_one_are_refused(tmp_path, capsys):
    code, _, err = run_cli(["imp", *TINY, "--threads", "0", "--out", str(tmp_path / "run")], capsys)
    assert_one_error_line(code, err, "threads must be a positive integer")


def test_a_model_option_without_a_value_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["imp", "--model-option", "width", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lth-sparse imp: error: argument --model-option: expects KEY=VALUE, got 'width'" in err
    assert not (tmp_path / "run").exists()


def test_argparse_errors_share_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["imp", "--rounds", "many"])
    assert exit_info.value.code == 2
    assert "lth-sparse imp: error:" in capsys.readouterr().err


def test_plot_of_a_directory_that_is_no_run_is_one_error_line(tmp_path, capsys):
    code = main(["plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lth-sparse plot: error: no config.json")


def test_plot_of_a_run_of_an_unknown_kind_is_one_error_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "telepathy", "hash": "0", "config": {}}))
    code = main(["plot", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "run of kind 'telepathy'" in err


def test_layerwise_scope_with_a_layer_normalised_importance_is_refused_before_training(tmp_path, capsys):
    code, stdout, err = run_cli(
        ["imp", *TINY, "--scope", "layerwise", "--importance", "lamp", "--out", str(tmp_path / "run")], capsys
    )
    assert_one_error_line(code, err, "would be plain layerwise magnitude pruning")
    assert stdout == "" and not (tmp_path / "run").exists()


def test_every_config_field_is_a_documented_flag(capsys):
    """One way from the config dataclass to the command line: no field without its flag and help."""
    import dataclasses

    from lth_sparse.pipelines.imp import ImpConfig

    with pytest.raises(SystemExit):
        main(["imp", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(ImpConfig):
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        assert flag in help_text, flag
        assert f.metadata.get("help"), f"{f.name} has no help text"
        assert " ".join(f.metadata["help"].split()[:4]) in help_text, f.name


@pytest.mark.parametrize("kind", ["imp", "consensus", "transfer", "instability", "plant"])
def test_every_pipelines_help_shows_every_field(kind, capsys):
    """--help of every pipeline prints (a '%' in a help text, as in '20% global', is no format directive)."""
    import dataclasses

    from lth_sparse.pipelines.base import pipeline_for

    with pytest.raises(SystemExit) as exit_:
        main([kind, "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(pipeline_for(kind).config_class):
        assert "--" + f.metadata.get("flag", f.name.replace("_", "-")) in help_text, f.name
    assert "%%" not in help_text


def test_flags_override_the_config_file_field_by_field(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "dataset: digits\nmodel: mlp\nmodel_options: {width: 16}\nrounds: 0\nepochs: 1\n"
        "train_size: 200\nmilestones: [1, 2]\ncontrols: true\nstructured: l1\n"
    )
    code, _, err = run_cli(
        [
            "imp",
            "--config",
            str(config),
            "--no-controls",
            "--milestones",
            "0.5",
            "--structured",
            "none",
            "--no-plots",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 0, err
    saved = read_json(tmp_path / "run" / "config.json")["config"]
    assert saved["controls"] is False and saved["milestones"] == [0.5] and saved["structured"] is None
    assert saved["epochs"] == 2 and isinstance(saved["epochs"], int), "an integer stays an integer (its hash)"
    assert saved["model_options"] == [["width", 16]] and saved["dataset"] == "digits"


def test_a_choice_outside_the_list_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["imp", "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "expected one of fp32, bf16, fp16, got 'fp8'" in capsys.readouterr().err
