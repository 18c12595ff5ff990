"""Bad command lines, each judged before anything is written: exit status 2, exactly one ``lth-sparse CMD: error:``
line on stderr that names the option or the file at fault, and no file created or changed (the --out directory does
not exist afterwards)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lth_sparse.cli import executor_from_args, main
from lth_sparse.executors import usable_cores

TINY = "--dataset digits --model mlp --model-option width=8 --epochs 0.5 --batch-size 8 --train-size 64 --no-plots"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny IMP run (one dense round): a source, an init.pt of width 8, a config.json to corrupt."""
    out = tmp_path_factory.mktemp("source") / "run"
    assert main(["imp", *TINY.split(), "--rounds", "0", "--out", str(out)]) == 0
    return out


def truncated(path: Path, keep: int = 20) -> None:
    path.write_text(path.read_text()[:keep])


def corrupt_run(tmp: Path, run: Path) -> None:
    """tmp/corrupt: a copy of the run whose config.json was cut short."""
    shutil.copytree(run, tmp / "corrupt")
    truncated(tmp / "corrupt" / "config.json")


def corrupt_done(tmp: Path, run: Path) -> None:
    """tmp/corrupt: a copy of the run whose seed's done.json was cut short (a crash of another tool, a full disk)."""
    shutil.copytree(run, tmp / "corrupt")
    truncated(tmp / "corrupt" / "seed_0" / "done.json")


def write_grid(tmp: Path, run: Path) -> None:
    (tmp / "grid.yaml").write_text(
        "pipeline: imp\nfixed: {dataset: digits, model: mlp, model_options: {width: 8}, epochs: 0.5, batch_size: 8, "
        "train_size: 64, rounds: 0}\ngrid: {seed: [0, 1]}\n"
    )


def write_config(tmp: Path, run: Path) -> None:
    (tmp / "options.json").write_text('{"dataset": "digits", "rounds": 0, "epo')


def other_state_dict(tmp: Path, run: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, tmp / "other.pt")


def no_torch_file(tmp: Path, run: Path) -> None:
    (tmp / "notes.pt").write_text("not a tensor in sight")


def a_file(tmp: Path, run: Path) -> None:
    (tmp / "taken").write_text("keep me")


# (id, command line, what the line must name, files made first, environment)
CASES = [
    ("imp ray missing", f"imp {TINY} --executor ray", ["--executor ray", "pip install"], None, {"ray": None}),
    (
        "consensus ray missing",
        "consensus --tasks digits digits:half=a --executor ray",
        ["--executor ray", "pip install"],
        None,
        {"ray": None},
    ),
    (
        "transfer ray missing",
        "transfer --source {run} --target digits --executor ray",
        ["--executor ray", "pip install"],
        None,
        {"ray": None},
    ),
    ("instability ray missing", "instability --executor ray", ["--executor ray", "pip install"], None, {"ray": None}),
    ("plant ray missing", "plant --executor ray", ["--executor ray", "pip install"], None, {"ray": None}),
    ("sweep ray missing", "sweep {tmp}/grid.yaml --executor ray", ["--executor ray"], write_grid, {"ray": None}),
    (
        "unknown model option",
        f"imp {TINY} --model-option foo=1",
        ["model option foo=1", "mlp", "depth (int, default 2)", "width (int, default 256)"],
        None,
        {},
    ),
    (
        "model option of the wrong type",
        f"imp {TINY} --model-option width=abc",
        ["model option width='abc'", "must be an int"],
        None,
        {},
    ),
    (
        "init file not saved by torch",
        f"imp {TINY} --init-file {{tmp}}/notes.pt",
        ["notes.pt", "not a state dict saved by torch.save"],
        no_torch_file,
        {},
    ),
    (
        "init file of another width",
        f"imp {TINY.replace('width=8', 'width=16')} --init-file {{run}}/seed_0/init.pt",
        ["init.pt", "does not fit mlp", "fc1.weight is (8, 64) in the file, (16, 64) in the model"],
        None,
        {},
    ),
    (
        "init file of other keys",
        f"imp {TINY} --init-file {{tmp}}/other.pt",
        ["other.pt", "9 missing keys (fc1.weight, fc1.bias, fc1.mask, ...)", "1 unexpected key (weight)"],
        other_state_dict,
        {},
    ),
    (
        "forced cuda backend",
        f"imp {TINY}",
        ["LTH_SPARSE_BACKEND=cuda", "auto, cuda, triton, cpp, torch"],
        None,
        {"LTH_SPARSE_BACKEND": "cuda"},
    ),
    (
        "unknown backend",
        f"imp {TINY}",
        ["LTH_SPARSE_BACKEND", "auto, cuda, triton, cpp, torch", "'bogus'"],
        None,
        {"LTH_SPARSE_BACKEND": "bogus"},
    ),
    ("unknown backend, info", "info", ["LTH_SPARSE_BACKEND", "'bogus'"], None, {"LTH_SPARSE_BACKEND": "bogus"}),
    (
        "rewind not a number",
        f"imp {TINY} --rewind epoch:x",
        ["rewind", "init, epoch:E", "iter:N", "'epoch:x'"],
        None,
        {},
    ),
    ("compare-masks out a file", "compare-masks {run} {run} --out {tmp}/taken", ["--out", "is a file"], a_file, {}),
    (
        "compare-masks out under a file",
        "compare-masks {run} {run} --out {tmp}/taken/masks",
        ["--out", "taken is a file, not a directory"],
        a_file,
        {},
    ),
    ("imp out under a file", f"imp {TINY} --out {{tmp}}/taken/run", ["--out", "taken is a file"], a_file, {}),
    (
        "truncated config file",
        "imp --config {tmp}/options.json",
        ["--config", "options.json", "not valid JSON"],
        write_config,
        {},
    ),
    ("truncated config.json of the run", f"imp {TINY} --out {{tmp}}/corrupt", ["corrupt/config.json"], corrupt_run, {}),
    (
        "plot of a truncated config.json",
        "plot {tmp}/corrupt",
        ["corrupt/config.json", "not valid JSON"],
        corrupt_run,
        {},
    ),
    (
        "plot of a truncated done.json",
        "plot {tmp}/corrupt",
        ["seed_0/done.json", "not valid JSON"],
        corrupt_done,
        {},
    ),
]


def tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time: what a command wrote there shows. A run directory's
    ``lock`` is left out: a command that reads a run takes its lock (writing its pid there) before it judges it."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.name != "lock"}


@pytest.mark.parametrize("argv, named, prepare, environ", [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it_and_writes_nothing(
    argv, named, prepare, environ, run, tmp_path, capsys, monkeypatch
):
    for name, value in environ.items():
        if name == "ray":  # Ray made unimportable, as where it is not installed
            monkeypatch.setitem(sys.modules, "ray", None)
        else:
            monkeypatch.setenv(name, value)
    if prepare is not None:
        prepare(tmp_path, run)
    args = argv.format(run=run, tmp=tmp_path).split()
    if "--out" not in args and args[0] not in ("plot", "info"):
        args += ["--out", str(tmp_path / "out")]
    before, source = tree(tmp_path), tree(run)
    code = main(args)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith(f"lth-sparse {args[0]}: error: "), err
    for fragment in named:
        assert fragment in lines[0], (fragment, lines[0])
    assert tree(tmp_path) == before and tree(run) == source, "bad input writes nothing"
    assert not (tmp_path / "out").exists()


def test_threads_beyond_the_cores_are_one_warning_line_not_an_error(capsys):
    cores = usable_cores()
    args = argparse.Namespace(
        command="imp", executor="local", workers=1, retries=0, ray_address="auto", ray_num_cpus=None, ray_num_gpus=0
    )
    assert executor_from_args(args, cores + 1).threads == cores + 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"lth-sparse imp: warning: --threads {cores + 1} is more than the {cores} usable cores here: the threads "
        "beyond them wait for a core (slower, not faster)"
    ]
    executor_from_args(args, cores)
    assert capsys.readouterr().err == ""


def test_out_in_a_directory_that_may_not_be_written_is_one_line(run, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # as a user without write permission there sees it (root may write anywhere)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    code = main(["compare-masks", str(run), str(run), "--out", str(locked / "masks")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0] and f"{locked} is not writable" in err[0], err
    assert not (locked / "masks").exists()
