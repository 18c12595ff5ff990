"""Fault injection: every pipeline, under the local and the process executor, is killed (SIGKILL) at random points
and has a recorded file damaged between two of its runs; run once more, it must end with the summary.json of an
uninterrupted run (timing fields aside) and every file intact.

Each command runs as a user runs it (``python -m lth_sparse ...`` in its own process), on tiny data. The kill
times and the file damaged are drawn from a generator seeded by the case's name (``LTH_SPARSE_FAULT_SEED`` adds
to it, to draw other points); the assertion messages say what was done.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lth_sparse.integrity import DONE, INTEGRITY_KEY
from lth_sparse.runs import check_run
from tests.summaries import without_timings

COMMON = ["--threads", "1", "--no-plots", "--no-progress"]
MLP = ["--model", "mlp", "--train-size", "200", "--epochs", "1"]
COMMANDS = {
    "imp": ["imp", "--dataset", "digits", *MLP, "--model-option", "width=8", "--batch-size", "16", "--rounds", "3"]
    + ["--seeds", "0,1", "--controls"],
    "consensus": ["consensus", "--tasks", "digits", "digits:half=a", *MLP, "--model-option", "width=16"]
    + ["--batch-size", "32", "--rounds", "2", "--intersect-round", "1"],
    "transfer": ["transfer", "--target", "digits", "digits:half=b", "--epochs", "1", "--train-size", "200"],
    "instability": ["instability", "--dataset", "digits", *MLP, "--model-option", "width=8", "--epochs", "2"]
    + ["--batch-size", "32", "--alphas", "5"],
    "plant": ["plant", "--tasks", "circle", "--depths", "3", "--pruners", "magnitude,edge-popup", "--densities"]
    + ["planted", "--epochs", "1", "--edge-popup-epochs", "1", "--train-size", "500"],
}
KILLS = 2


def command(kind: str, out: Path, sources: dict[str, Path], executor: str = "local") -> list[str]:
    line = [sys.executable, "-m", "lth_sparse", *COMMANDS[kind], *COMMON, "--executor", executor, "--out", str(out)]
    if kind == "transfer":
        line += ["--source", str(sources["imp"])]
    return line


def run(line: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(line, capture_output=True, text=True, env=_env(), timeout=300)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def claimed(process: subprocess.Popen, out: Path) -> None:
    """Wait until ``process`` holds the lock of ``out`` (it has started and claimed the run: its work begins) or
    has ended."""
    while process.poll() is None:
        try:
            if (out / "lock").read_text().strip() == str(process.pid):
                break
        except OSError:
            pass
        time.sleep(0.01)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Each pipeline's run, uninterrupted (local executor), and how many steps it finishes."""
    root = tmp_path_factory.mktemp("uninterrupted")
    found: dict[str, tuple[Path, int]] = {}
    for kind in COMMANDS:  # imp first: it is transfer's source
        line = command(kind, root / kind, {k: v[0] for k, v in found.items()})
        process = subprocess.Popen(line, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        found[kind] = (root / kind, len(list((root / kind).rglob(DONE))))
    return found


def done_steps(out: Path) -> int:
    return len(list(out.rglob(DONE))) if out.exists() else 0


def recorded_files(out: Path) -> list[Path]:
    """The files the finished steps of ``out`` recorded, and their ``done.json`` files."""
    files = []
    for done in sorted(out.rglob(DONE)):
        files.append(done)
        record = json.loads(done.read_text()).get(INTEGRITY_KEY) or {"files": {}}
        files += [done.parent / name for name in record["files"]]
    return files


def damage(path: Path, rng: random.Random) -> str:
    """Damage ``path`` one of three ways (cut short, a byte flipped, removed); says which."""
    how = rng.choice(["cut short", "a byte flipped", "removed"])
    data = bytearray(path.read_bytes())
    if how == "cut short":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "a byte flipped" and data:
        data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    return how


@pytest.mark.parametrize("executor", ["local", "process"])
@pytest.mark.parametrize("kind", list(COMMANDS))
def test_a_killed_and_damaged_run_ends_as_an_uninterrupted_one(kind, executor, references, tmp_path):
    rng = random.Random(f"{kind}/{executor}/{os.environ.get('LTH_SPARSE_FAULT_SEED', '')}")
    reference, steps = references[kind]
    sources = {k: v[0] for k, v in references.items()}
    out = tmp_path / "run"
    story = []
    for _ in range(KILLS):
        # the kill's point: once a number of steps drawn among those left are done, then a moment drawn
        target = rng.randrange(done_steps(out), steps) if done_steps(out) < steps else steps
        delay = rng.uniform(0.0, 0.5)
        process = subprocess.Popen(
            command(kind, out, sources, executor), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
        )
        claimed(process, out)
        while process.poll() is None and done_steps(out) < target:
            time.sleep(0.01)
        try:
            process.wait(timeout=delay)
            story.append(f"finished before its kill (after {target} of {steps} steps and {delay:.2f} s)")
        except subprocess.TimeoutExpired:
            process.kill()  # SIGKILL: nothing of the process runs after it
            process.wait()
            story.append(f"killed {delay:.2f} s after step {target} of {steps}, {done_steps(out)} steps done")
    files = recorded_files(out) if out.exists() else []
    named = None  # the step whose damage the last run must name
    if files:
        damaged = rng.choice(files)
        how = damage(damaged, rng)
        story.append(f"{damaged.relative_to(out)} {how}")
        if not (damaged.name == DONE and how == "removed"):  # a step without done.json is merely unfinished
            named = damaged.parent.relative_to(out).as_posix()
    time.sleep(0.2)  # a killed driver's workers end within about 0.1 s of it
    final = run(command(kind, out, sources, executor))
    assert final.returncode == 0, f"{'; '.join(story)}: {final.stderr[-2000:]}"
    if named is not None:
        warnings = [line for line in final.stdout.splitlines() if line.startswith("warning: ")]
        assert any(named in line for line in warnings), f"{'; '.join(story)}: the damage was not named"
    ours = without_timings(json.loads((out / "summary.json").read_text()))
    theirs = without_timings(json.loads((reference / "summary.json").read_text()))
    assert ours == theirs, "; ".join(story)
    found = check_run(out)
    print(f"{kind} under {executor}: " + "; ".join(story))  # what was done, with -rP
    assert found.intact, f"{'; '.join(story)}: {[str(d) for d in found.damages()]}"
