"""The integrity of a run directory: each finished step records its files' sizes and SHA-256 in its done.json; a
damaged file is named by every reader, repaired by re-running or extending the run (with one warning line), and
refused, in one line, where another run is its source; ``lth-sparse verify`` checks a whole run."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from lth_sparse.atomic import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from lth_sparse.cli import main
from lth_sparse.integrity import (
    INTEGRITY_KEY,
    Damaged,
    check_step,
    load_torch,
    read_done,
    step_files,
    unparsable,
    verified,
)
from lth_sparse.masks import Masks
from lth_sparse.runs import Steps, check_run
from tests.summaries import without_timings

TINY = "--dataset digits --model mlp --model-option width=8 --epochs 0.5 --batch-size 8 --train-size 64 --no-plots"


def flip_byte(path: Path, at: int = -40) -> None:
    """Corrupt ``path`` in place, keeping its size (bit rot, an overwrite by another tool)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def cut(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# --- the record and its check, on hand-made steps -------------------------------------------------------------


def make_step(tmp_path: Path) -> Steps:
    """A finished step ``a`` with a JSON file, a sub-folder's file, a log, a half-written temporary file and a
    finished step ``a/inner`` of its own."""
    steps = Steps(tmp_path)
    folder = steps.step_dir("a")
    atomic_write_json(folder / "x.json", {"v": 1})
    (folder / "sub").mkdir()
    (folder / "sub" / "y.bin").write_bytes(b"\x00" * 10)
    (folder / "unit.log").write_text("started\n")
    (folder / ".z.json.1.2.tmp").write_text("{")
    inner = steps.step_dir("a/inner")
    (inner / "w.bin").write_bytes(b"w")
    steps.mark_done("a/inner", {"inner": True})
    steps.mark_done("a", {"value": 1})
    return steps


def test_a_step_records_its_own_files_and_no_other(tmp_path):
    steps = make_step(tmp_path)
    done = json.loads((tmp_path / "a" / "done.json").read_text())
    files = done[INTEGRITY_KEY]["files"]
    assert sorted(files) == ["sub/y.bin", "x.json"], "not done.json, unit.log, a temporary file or another step's"
    assert files["sub/y.bin"]["size"] == 10
    assert files["sub/y.bin"]["sha256"] == "01d448afd928065458cf670b60f5a594d735af0172c8d67f22a81680132681ca"
    assert steps.result("a") == {"value": 1} and read_done(tmp_path / "a" / "done.json") == {"value": 1}
    assert [p.as_posix() for p in step_files(tmp_path / "a")] == ["sub/y.bin", "x.json"]
    assert check_step(tmp_path / "a") == [] and check_step(tmp_path / "a" / "inner") == []


def test_a_result_may_not_hold_the_record_s_key(tmp_path):
    with pytest.raises(ValueError, match=INTEGRITY_KEY):
        Steps(tmp_path).mark_done("a", {INTEGRITY_KEY: 1})


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda f: (f / "x.json").unlink(), "x.json: missing (13 bytes recorded)"),
        (lambda f: cut(f / "sub" / "y.bin", 4), "sub/y.bin: 4 bytes where 10 bytes were recorded"),
        (lambda f: flip_byte(f / "sub" / "y.bin", 3), "sub/y.bin: its content differs from the SHA-256 recorded"),
        (lambda f: cut(f / "done.json", 30), "done.json: not valid JSON"),
        (lambda f: (f / "done.json").write_text("[1, 2]"), "done.json: holds a JSON list"),
        (lambda f: flip_byte(f / "done.json", 5), "done.json: not valid JSON"),
    ],
    ids=["missing", "cut short", "same size", "done.json cut short", "done.json of another shape", "not UTF-8"],
)
def test_each_damage_is_named_with_what_is_wrong(tmp_path, damage, what):
    make_step(tmp_path)
    damage(tmp_path / "a")
    found = check_step(tmp_path / "a")
    assert len(found) == 1 and str(found[0]).startswith(str(tmp_path / "a" / what.split(": ")[0]))
    assert what.split(": ", 1)[1] in found[0].what
    assert list(check_run(tmp_path).damaged) == ["a"], "the inner step is intact and not listed"
    assert check_step(tmp_path / "a" / "inner") == []


def test_a_step_finished_before_records_is_checked_by_parsing_its_files(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    atomic_write_json(folder / "done.json", {"value": 1})  # no record: an older version's step
    atomic_write_json(folder / "a.json", {"v": [1, 2, 3]})
    (folder / "m.jsonl").write_text('{"it": 1}\n{"it": 2}\n')
    atomic_save_safetensors(folder / "t.safetensors", {"w": torch.ones(64)}, "test/1")
    atomic_torch_save(folder / "s.pt", {"w": torch.arange(200.0)})
    assert check_step(folder) == []
    cut(folder / "a.json", 5)
    (folder / "m.jsonl").write_text('{"it": 1}\n{"it": 2\n')
    cut(folder / "t.safetensors", 90)
    with zipfile.ZipFile(folder / "s.pt") as archive:  # a byte of the tensor's data, inside the archive
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    flip_byte(folder / "s.pt", info.header_offset + 200)
    found = {d.path.name: d.what for d in check_step(folder)}
    assert set(found) == {"a.json", "m.jsonl", "t.safetensors", "s.pt"}
    assert found["m.jsonl"].startswith("line 2 is not valid JSON")
    assert "cut short" in found["t.safetensors"] or "describes" in found["t.safetensors"]
    assert "checksum" in found["s.pt"]
    assert unparsable(folder / "done.json") is None


def test_a_safetensors_file_s_length_is_checked_against_its_header(tmp_path):
    path = atomic_save_safetensors(tmp_path / "t.safetensors", {"w": torch.ones(64)}, "test/1")
    with open(path, "ab") as f:
        f.write(b"\x00" * 8)
    assert "where its header describes" in unparsable(path)
    path.write_bytes(b"\x01")
    assert "too short" in unparsable(path)


def test_a_reader_checks_the_file_it_reads_against_its_step_s_record(tmp_path):
    steps = Steps(tmp_path / "run")
    folder = steps.step_dir("round_00")
    Masks({"fc.weight": torch.ones(4, 4, dtype=torch.bool)}).save(folder / "masks.safetensors")
    atomic_torch_save(folder / "final.pt", {"w": torch.ones(3)})
    (folder / "scratch.txt").write_text("not recorded")
    steps.mark_done("round_00", {})
    assert verified(folder / "final.pt") == folder / "final.pt"
    assert Masks.load(folder / "masks.safetensors") == Masks({"fc.weight": torch.ones(4, 4, dtype=torch.bool)})
    flip_byte(folder / "final.pt", 70)
    with pytest.raises(Damaged, match="final.pt: damaged, its content differs"):
        load_torch(folder / "final.pt")
    cut(folder / "masks.safetensors", 50)
    with pytest.raises(Damaged, match=r"masks.safetensors: damaged, 50 bytes where \d[\d,]* bytes were recorded"):
        Masks.load(folder / "masks.safetensors")
    (folder / "later.pt").write_bytes(b"junk")  # not in the record: read as it is, and torch's failure named
    with pytest.raises(Damaged, match="later.pt: damaged, torch cannot read it"):
        load_torch(folder / "later.pt")
    assert verified(tmp_path / "elsewhere.txt") == tmp_path / "elsewhere.txt", "a file of no step is not checked"


def test_an_unreadable_masks_file_of_no_step_is_named(tmp_path):
    (tmp_path / "masks.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(Damaged, match="masks.safetensors: not a readable masks file"):
        Masks.load(tmp_path / "masks.safetensors")


# --- runs: repaired, named, refused ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny IMP run: 2 rounds, 2 seeds, with its controls."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    assert main(["imp", *TINY.split(), "--rounds", "2", "--seeds", "0,1", "--controls", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_a_finished_run_is_intact_and_verify_says_so(finished, capsys):
    found = check_run(finished)
    assert found.intact and found.unrecorded == 0
    assert found.steps == len(list(finished.rglob("done.json"))) and found.files > 0
    assert main(["verify", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "intact (imp run, 10 of 10 units done" in out and "damaged" not in out


def test_verify_names_every_damaged_file_and_fails(run, capsys):
    cut(run / "seed_0" / "round_01" / "masks.safetensors")
    flip_byte(run / "seed_1" / "round_02" / "control_reinit" / "final.pt")
    cut(run / "config.json", 10)
    assert main(["verify", str(run)]) == 1
    lines = capsys.readouterr().out.splitlines()
    damaged = [line for line in lines if line.startswith("damaged: ")]
    assert len(damaged) == 3
    assert any("seed_0/round_01/masks.safetensors: 100 bytes where" in line for line in damaged)
    assert any("control_reinit/final.pt: its content differs" in line for line in damaged)
    assert any("config.json: not valid JSON" in line for line in damaged)
    assert lines[-1].startswith(f"{run}: 3 damaged files")


def test_verify_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage",
    [
        lambda run: cut(run / "seed_0" / "round_01" / "masks.safetensors"),
        lambda run: flip_byte(run / "seed_1" / "round_02" / "final.pt"),
        lambda run: cut(run / "seed_0" / "round_00" / "metrics.jsonl", 10),
        lambda run: cut(run / "seed_1" / "round_01" / "done.json", 30),
        lambda run: (run / "seed_0" / "rewind.pt").unlink(),
        lambda run: flip_byte(run / "seed_0" / "round_02" / "control_random_mask" / "masks.safetensors"),
    ],
    ids=[
        "masks cut short",
        "weights overwritten",
        "metrics cut short",
        "done.json cut short",
        "rewind gone",
        "control",
    ],
)
def test_re_running_names_the_damage_in_one_line_and_repairs_it(finished, run, damage, capsys):
    damage(run)
    assert main(["imp", *TINY.split(), "--rounds", "2", "--seeds", "0,1", "--controls", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].endswith("runs again") and str(run) in warnings[0]
    assert check_run(run).intact
    for done in finished.rglob("done.json"):  # every step as it was, the repaired one recomputed alike
        assert without_timings(read_done(run / done.relative_to(finished))) == without_timings(read_done(done))
    assert without_timings(json.loads((run / "summary.json").read_text())) == without_timings(
        json.loads((finished / "summary.json").read_text())
    )


def test_extending_a_run_repairs_its_damaged_last_round_first(finished, run, capsys):
    cut(run / "seed_0" / "round_02" / "masks.safetensors")
    assert main(["imp", *TINY.split(), "--rounds", "3", "--seeds", "0,1", "--controls", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "seed_0/round_02/masks.safetensors: 100 bytes where" in out and "seed_0/round_02 runs again" in out
    assert check_run(run).intact
    assert Masks.load(run / "seed_0" / "round_02" / "masks.safetensors") == Masks.load(
        finished / "seed_0" / "round_02" / "masks.safetensors"
    ), "round 3 is pruned from the repaired round, equal to the original"


def test_plot_warns_of_damage_and_names_a_damaged_done_json(run, capsys):
    cut(run / "seed_0" / "round_01" / "masks.safetensors")
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "seed_0/round_01/masks.safetensors" in out and "recorded result" in out
    cut(run / "seed_1" / "done.json", 30)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed_1/done.json: not valid JSON" in err[0] and "repairs it" in err[0]


@pytest.mark.parametrize(
    "command",
    [
        lambda run, out: ["transfer", "--source", str(run), "--target", "digits", "--epochs", "0.5", "--out", out],
        lambda run, out: ["instability", "--source", str(run), "--epochs", "0.5", "--out", out],
        lambda run, out: ["compare-masks", str(run), str(run)],
        lambda run, out: ["probe", str(run), "--rounds", "1"],
    ],
    ids=["transfer --source", "instability --source", "compare-masks", "probe"],
)
def test_a_damaged_source_run_is_refused_in_one_line_before_anything_is_written(run, tmp_path, command, capsys):
    cut(run / "seed_0" / "round_01" / "masks.safetensors")
    out = tmp_path / "out"
    assert main(command(run, str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed_0/round_01/masks.safetensors" in err[0] and "100 bytes where" in err[0]
    assert not out.exists()
