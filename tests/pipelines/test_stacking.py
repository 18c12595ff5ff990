"""Stacked units in the pipelines: the trainings of a stage that can share a stack train together (``--stack K``),
each writing its own files and ``done.json`` where its unit does alone, with the results it gets alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.integrity import read_done
from lth_sparse.pipelines.common import parse_stack, stack_key
from lth_sparse.pipelines.imp_rounds import ImpConfig
from lth_sparse.runs import check_run
from lth_sparse.units import Stack, Unit, stacks

IMP = (
    "imp --dataset digits --model mlp --model-option width=16 --epochs 1 --batch-size 16 --train-size 300 "
    "--rounds 2 --seeds 0,1 --controls --no-plots --no-progress --threads 1"
).split()


def unit(name: str, key=None, stacked="m:f") -> Unit:
    return Unit("m:g", None, name, stacked=stacked if key is not None else "", stack_key=key)


def test_units_of_one_key_are_stacked_up_to_the_size_in_the_order_of_their_first_members():
    units = [unit("a", 1), unit("b", 2), unit("c", 1), unit("alone"), unit("d", 1), unit("e", 2), unit("f", 1)]
    grouped = stacks(units, 3)
    names = [[m.directory for m in g.members] if isinstance(g, Stack) else g.directory for g in grouped]
    assert names == [["a", "c", "d"], ["b", "e"], "alone", ["f"]], "stacked alone: a stack of one"
    assert [len(g.members) if isinstance(g, Stack) else 0 for g in stacks(units, 1)] == [1, 1, 1, 0, 1, 1, 1]
    assert [len(g.members) for g in stacks([unit("x", 1), unit("y", 1, stacked="m:h")], 4)] == [1, 1]
    with pytest.raises(ValueError, match="at least 1"):
        stacks(units, 0)


@pytest.mark.parametrize("value, expected", [("auto", None), (None, None), ("4", 4), (1, 1)])
def test_stack_option_reads_auto_or_a_count(value, expected):
    assert parse_stack(value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", 1.5])
def test_stack_option_refuses_what_is_no_count(value):
    with pytest.raises(ValueError, match="auto or a count of at least 1"):
        parse_stack(value)


def test_the_stack_key_ignores_seeds_and_per_member_hyperparameters_and_nothing_else():
    base = ImpConfig(dataset="digits", model="mlp", epochs=1)
    assert stack_key(base) == stack_key(ImpConfig(dataset="digits", model="mlp", epochs=1, seed=3, lr=0.5))
    assert stack_key(base) == stack_key(ImpConfig(dataset="digits", model="mlp", epochs=1, order_seed=7))
    assert stack_key(base) != stack_key(ImpConfig(dataset="digits", model="mlp", epochs=2))
    assert stack_key(base) != stack_key(ImpConfig(dataset="digits", model="mlp", epochs=1, batch_size=7))
    assert stack_key(base, apart=("fraction",)) == stack_key(
        ImpConfig(dataset="digits", model="mlp", epochs=1, fraction=0.5), apart=("fraction",)
    )


def figures_apart(a, b, path="", rel=1e-6) -> list[str]:
    """Where two summaries differ beyond ``rel`` (timings and the stack option aside)."""
    if isinstance(a, dict):
        return [d for k in a if "seconds" not in k and k != "stack" for d in figures_apart(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in figures_apart(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=rel, abs_tol=rel) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alone") / "run"
    assert main([*IMP, "--stack", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("executor", ["local", "process"])
def test_imp_controls_stacked_give_the_summary_they_give_alone(alone, tmp_path, executor, capsys):
    out = tmp_path / "run"
    assert main([*IMP, "--stack", "8", "--executor", executor, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["stack"] == 8
    assert figures_apart(json.loads((alone / "summary.json").read_text()), summary) == []
    controls = sorted(out.glob("seed_*/round_*/control_*"))
    assert len(controls) == 8 and check_run(out).intact
    for folder in controls:  # each member's own files, where its unit writes them alone
        assert {p.name for p in folder.iterdir()} >= {"done.json", "final.pt", "masks.safetensors", "metrics.jsonl"}
        members = 8 if executor == "local" else 4  # the process executor's 2 workers: a stack each
        assert f"started in a stack of {members}" in (folder / "unit.log").read_text()
        ours, theirs = read_done(folder / "done.json"), read_done(alone / folder.relative_to(out) / "done.json")
        assert figures_apart(theirs, ours) == []


def test_on_the_dense_torch_path_stacked_controls_are_those_trained_alone_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "torch")
    for stack in ("1", "8"):
        assert main([*IMP, "--stack", stack, "--out", str(tmp_path / stack)]) == 0
    for folder in sorted((tmp_path / "1").glob("seed_*/round_*/control_*")):
        ours = read_done(tmp_path / "8" / folder.relative_to(tmp_path / "1") / "done.json")
        theirs = read_done(folder / "done.json")
        # the weights and every figure measured from them are bit for bit; the running training loss is the
        # per-member mean of one vectorised loss, equal to 1e-7 (docs/stacked.md)
        apart = ("train_seconds", "train_loss")
        assert {k: v for k, v in ours.items() if k not in apart} == {
            k: v for k, v in theirs.items() if k not in apart
        }, folder
        assert math.isclose(ours["train_loss"], theirs["train_loss"], rel_tol=1e-6)


def test_a_stack_runs_only_its_members_that_are_not_done(alone, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(alone, out)
    for name in ("seed_0/round_01/control_reinit", "seed_1/round_02/control_random_mask"):
        (out / name / "done.json").unlink()
    assert main([*IMP, "--stack", "8", "--out", str(out)]) == 0
    assert "resuming: 8 of 10 units already done" in capsys.readouterr().out
    logs = {p.parent.relative_to(out).as_posix(): p.read_text() for p in out.glob("seed_*/round_*/control_*/unit.log")}
    assert "started in a stack of 2" in logs["seed_0/round_01/control_reinit"]
    assert "started in a stack of 2" not in logs["seed_0/round_02/control_reinit"], "a done member is not rerun"
    assert (
        figures_apart(json.loads((alone / "summary.json").read_text()), json.loads((out / "summary.json").read_text()))
        == []
    )


@pytest.mark.parametrize("value", ["0", "lots"])
def test_a_bad_stack_is_one_line_and_nothing_written(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exit:  # argparse's own: its usage, then the error line
        main([*IMP, "--stack", value, "--out", str(tmp_path / "run")])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "argument --stack: expected auto or a count of at least 1" in err[-1]
    assert not (tmp_path / "run").exists()


def test_a_stacked_seed_s_numbers_do_not_depend_on_the_seeds_beside_it(tmp_path):
    """Seed 1 of a 3-seed run (its rounds in a stack of 3) is bit for bit seed 1 run alone (a stack of 1)."""
    from lth_sparse.pipelines import imp

    tiny = dict(dataset="digits", model="mlp", model_options=(("width", 16),), rounds=2, epochs=1, train_size=300)
    quiet = dict(progress=False, log=lambda line: None, plots=False)
    alone = imp.run(imp.ImpConfig(**tiny, seed=1, split_seed=0, stack=4), tmp_path / "alone", **quiet)
    together = imp.run(imp.ImpConfig(**tiny, seeds=(0, 1, 2), stack=4), tmp_path / "together", **quiet)
    assert "stack of 3" in (tmp_path / "together" / "seed_1" / "unit.log").read_text()
    assert "stack of 1" in (tmp_path / "alone" / "seed_1" / "unit.log").read_text()

    def untimed(rounds):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rounds]

    assert untimed(together["per_seed"]["1"]) == untimed(alone["per_seed"]["1"])
    for r in range(3):  # the weights and the running loss too, bit for bit
        round_dir = f"seed_1/round_{r:02d}"
        ours = torch.load(tmp_path / "together" / round_dir / "final.pt")
        theirs = torch.load(tmp_path / "alone" / round_dir / "final.pt")
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), r
        metrics = [(tmp_path / run / round_dir / "metrics.jsonl").read_text() for run in ("together", "alone")]
        assert metrics[0] == metrics[1], r


def test_a_stack_larger_than_memory_is_refused_saying_what_it_needs(tmp_path, capsys):
    assert main([*IMP, "--stack", "1000000000", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stack 1000000000" in err[0] and "GiB" in err[0] and "is available" in err[0]
    assert not (tmp_path / "run").exists()


def test_planting_stacked_with_multi_shot_in_lockstep_gives_the_summary_it_gives_alone(tmp_path):
    plant = (
        "plant --tasks circle --depths 3 --pruners magnitude,multishot-magnitude,multishot-synflow,edge-popup "
        "--densities planted,0.1 --epochs 1 --edge-popup-epochs 1 --multishot-epochs 0.5 --train-size 1000 "
        "--seeds 2 --threads 1 --no-plots --no-progress"
    ).split()
    for stack in ("1", "8"):
        assert main([*plant, "--stack", stack, "--out", str(tmp_path / stack)]) == 0
    summaries = [json.loads((tmp_path / stack / "summary.json").read_text()) for stack in ("1", "8")]
    assert figures_apart(*summaries) == []
    unit = tmp_path / "8" / "circle" / "depth_3"
    # the plan puts the multi-shot units first, then edge-popup, then the single-shot ones: the 8 multi-shot units
    # fill the first stack (their rounds trained together), edge-popup's 4 (trained together) share the second
    assert "started in a stack of 8" in (unit / "multishot-synflow" / "density_0.1" / "seed_1" / "unit.log").read_text()
    assert "started in a stack of 8" in (unit / "edge-popup" / "density_planted" / "seed_0" / "unit.log").read_text()


def test_the_process_executor_s_workers_each_get_a_stack(tmp_path):
    out = tmp_path / "run"
    assert main([*IMP, "--stack", "8", "--executor", "process", "--workers", "2", "--out", str(out)]) == 0
    logs = [p.read_text() for p in out.glob("seed_*/round_*/control_*/unit.log")]
    assert len(logs) == 8 and all("started in a stack of 4" in log for log in logs), "8 controls: 2 stacks of 4"
