"""One IMP run data-parallel under torchrun (2 ranks, gloo on the CPU) equals the same run in one process:
the same masks every round, the same weights up to float rounding, one set of files written by rank 0;
a re-launch resumes after the last finished round; the helpers of lth_sparse.distributed on two forked ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lth_sparse.distributed import World, device_for_rank
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.runs import ConfigMismatch, read_json
from tests.tolerances import assert_close

RANKS = 2
# A two-rank IMP command (with the controls: units of a second stage), with 5 epochs (20 steps) at a learning
# rate at which the dense round learns.
COMMAND = [
    "imp",
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--model-option",
    "width=16",
    "--rounds",
    "1",
    "--epochs",
    "5",
    "--train-size",
    "256",
    "--batch-size",
    "64",
    "--lr",
    "0.1",
    "--controls",
    "--no-plots",
]
LAUNCH_TIMEOUT = 600  # seconds; torch's imports in three processes on a busy 2-core machine take most of it
TORCHRUN_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
    "ROLE_RANK",
)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env


def launch(out: Path, ranks: int | None) -> subprocess.CompletedProcess:
    """``lth-sparse imp`` (COMMAND) into ``out``: in one process (``ranks=None``) or under torchrun."""
    if ranks is None:
        prefix = [sys.executable, "-m", "lth_sparse"]
    else:  # torchrun itself, by module: the interpreter of this test's environment
        prefix = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={ranks}",
            "-m",
            "lth_sparse",
        ]
    done = subprocess.run(
        [*prefix, *COMMAND, "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The command run once in one process and once on two ranks, each in its own directory."""
    root = tmp_path_factory.mktemp("torchrun")
    single = launch(root / "single", None)
    ddp = launch(root / "ddp", RANKS)
    return {"root": root, "single": root / "single", "ddp": root / "ddp", "ddp_output": ddp, "single_output": single}


def files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def test_two_ranks_write_one_set_of_files_the_single_process_run_writes(runs):
    assert sorted(p.name for p in runs["root"].iterdir()) == ["ddp", "single"], "nothing written beside --out"
    assert files(runs["ddp"]) == files(runs["single"])
    assert not [f for f in files(runs["ddp"]) if f.endswith(".tmp") or "/." in f or f.startswith(".")]
    assert read_json(runs["ddp"] / "config.json") == read_json(runs["single"] / "config.json")
    log = (runs["ddp"] / "seed_0" / "unit.log").read_text().splitlines()
    assert sum(line.endswith("started (1 thread) on 2 ranks") for line in log) == 1, "\n".join(log)
    assert sum(": done in " in line for line in log) == 1, "rank 1 logs nothing"
    assert sum(line.startswith("round ") for line in log) == 1
    out = runs["ddp_output"].stdout
    # the seed's rounds as they finish, then the summary's table: each once, from rank 0
    assert out.count("round  remaining") == 2 and out.count("summary (seed 0)") == 1, f"only rank 0 logs:\n{out}"
    assert sum(line.startswith("done in ") for line in out.splitlines()) == 1, f"only rank 0 logs:\n{out}"


def test_two_ranks_find_the_single_process_masks_and_weights(runs):
    single, ddp = runs["single"] / "seed_0", runs["ddp"] / "seed_0"
    for name in ("init.pt", "rewind.pt"):
        a, b = torch.load(single / name), torch.load(ddp / name)
        a, b = a.get("state_dict", a), b.get("state_dict", b)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    init = torch.load(single / "init.pt")
    for round_dir in ("round_00", "round_01", "round_01/control_reinit", "round_01/control_random_mask"):
        r = 0 if round_dir == "round_00" else 1
        masks = Masks.load(ddp / round_dir / "masks.safetensors")
        assert masks == Masks.load(single / round_dir / "masks.safetensors"), f"{round_dir}: masks differ"
        assert masks.sparsity() == pytest.approx(0.2 * r, abs=1e-3)
        expected, found = torch.load(single / round_dir / "final.pt"), torch.load(ddp / round_dir / "final.pt")
        assert expected.keys() == found.keys()
        assert not torch.allclose(expected["fc1.weight"], init["fc1.weight"], atol=1e-3), (
            "precondition: training moves the weights well beyond the tolerance"
        )
        for key, value in expected.items():
            if value.is_floating_point():  # the gradients are summed in another order
                assert_close(found[key], value, scale=10)
            else:
                assert torch.equal(found[key], value), f"{round_dir}: {key}"


def test_two_ranks_record_the_single_process_metrics(runs):
    single, ddp = read_json(runs["single"] / "summary.json"), read_json(runs["ddp"] / "summary.json")
    assert len(ddp["rounds"]) == len(single["rounds"]) == 2
    for found, expected in zip(ddp["rounds"], single["rounds"]):
        assert found["sparsity"] == expected["sparsity"]
        assert found["effective_sparsity"] == expected["effective_sparsity"]
        assert found["best_val_iteration"] == expected["best_val_iteration"]
        assert found["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=0.01)
        for control in ("reinit", "random_mask"):
            if found["round"]:
                assert found[f"{control}_test_loss"] == pytest.approx(expected[f"{control}_test_loss"], rel=1e-5)
        for key in ("test_loss", "val_loss", "best_val_loss"):
            assert found[key] == pytest.approx(expected[key], rel=1e-5), key
    assert single["rounds"][0]["test_accuracy"] > 0.5, "precondition: the dense round learns (chance: 0.1)"
    for r in (0, 1):
        records = [
            [
                json.loads(line)
                for line in (runs[kind] / "seed_0" / f"round_{r:02d}" / "metrics.jsonl").read_text().splitlines()
            ]
            for kind in ("ddp", "single")
        ]
        assert [e["iteration"] for e in records[0]] == [e["iteration"] for e in records[1]] == [4, 8, 12, 16, 20]
        for found, expected in zip(*records):
            assert found["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
            assert found["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_relaunch_resumes_after_the_last_finished_round(runs, tmp_path):
    # As a job killed during round 1 leaves it: round 0 done, round 1 and the unit not.
    run = tmp_path / "ddp"
    shutil.copytree(runs["ddp"], run)  # copy2: the times are kept
    (run / "seed_0" / "done.json").unlink()
    (run / "seed_0" / "round_01" / "done.json").unlink()
    (run / "seed_0" / "round_01" / "final.pt").unlink()
    for control in (run / "seed_0" / "round_01").glob("control_*"):  # the second stage had not started
        shutil.rmtree(control)
    (run / "summary.json").unlink()
    round0 = run / "seed_0" / "round_00" / "done.json"
    before = {
        p: p.stat().st_mtime_ns
        for p in (round0, run / "seed_0" / "round_00" / "final.pt", run / "seed_0" / "rewind.pt")
    }
    out = launch(run, RANKS).stdout
    assert out.count("resuming: 1 of 2 rounds already done") == 1, out
    assert {p: p.stat().st_mtime_ns for p in before} == before, "round 0 is not trained again"
    assert Masks.load(run / "seed_0" / "round_01" / "masks.safetensors") == Masks.load(
        runs["single"] / "seed_0" / "round_01" / "masks.safetensors"
    )
    found = torch.load(run / "seed_0" / "round_01" / "final.pt")
    for key, value in torch.load(runs["single"] / "seed_0" / "round_01" / "final.pt").items():
        if value.is_floating_point():
            assert_close(found[key], value, scale=10)
    assert files(run) == files(runs["single"])


# --- without launching: what torchrun's environment alone decides ---------------------------------


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment of rank 0 of two, as torchrun sets it (no process group is opened)."""
    for key, value in dict(
        WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"
    ).items():
        monkeypatch.setenv(key, value)


def test_another_executor_under_torchrun_is_refused_before_anything_is_written(torchrun_env, tmp_path, capsys):
    from lth_sparse.cli import main
    from lth_sparse.executors import ProcessExecutor
    from lth_sparse.pipelines import imp

    config = imp.ImpConfig(dataset="digits", model="mlp", rounds=0, epochs=1, train_size=128)
    with pytest.raises(ValueError, match="under torchrun .* use --executor local"):
        imp.run(config, tmp_path / "out", executor=ProcessExecutor(workers=2, threads=1))
    assert main([*COMMAND, "--executor", "process", "--out", str(tmp_path / "out")]) == 2
    assert "error: under torchrun (2 ranks)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_unit_run_under_torchrun_without_a_process_group_is_refused(torchrun_env, tmp_path):
    from lth_sparse.units import Unit, run_unit

    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 .* no process group"):
        run_unit(Unit("tests.pipelines.unit_functions:double", {"x": 1}, "u"), tmp_path)
    assert not (tmp_path / "u").exists()


def test_cuda_is_the_local_rank_s_gpu_and_an_index_is_refused_on_several_ranks():
    assert device_for_rank("cuda", 1, 2) == "cuda:1"
    assert device_for_rank("cpu", 1, 2) == "cpu"
    assert device_for_rank("cuda:1", 0, 1) == "cuda:1", "a world of one keeps the device it is given"
    with pytest.raises(ValueError, match="give --device cuda"):
        device_for_rank("cuda:1", 0, 2)
    with pytest.raises(ValueError, match="cpu .gloo. or cuda .nccl."):
        device_for_rank("mps", 0, 2)


# --- the helpers on two forked ranks (gloo) --------------------------------------------------------


def world_worker(rank: int, port: int, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=RANKS)
    try:
        world = World.current()
        torch.manual_seed(10 + rank)  # different weights on each rank
        model = create_model("mlp", (1, 8, 8), 10, depth=1, width=8)
        g = torch.Generator().manual_seed(0)
        pruned = Masks({n: torch.rand(m.shape, generator=g) > 0.5 for n, m in Masks.from_model(model).items()})
        masks = world.broadcast_masks(pruned if world.writer else None, model)
        # Rank 1's own (all-True) masks stay in its model: what DDP does to them is then visible.
        (masks if world.writer else Masks.ones_like(model)).apply_to(model)
        ddp = world.data_parallel(model)
        after_init = {k: v.clone() for k, v in model.state_dict().items()}
        ddp(torch.randn(4, 1, 8, 8)).sum().backward()
        errors = []
        for raised in (ConfigMismatch("the run there has another config"), None):

            def compute(raised=raised):
                if raised is not None:
                    raise raised
                return {"rank": world.rank}

            try:
                errors.append(("ok", world.on_writer(compute)))
            except ConfigMismatch as error:
                errors.append(("raised", str(error)))
        torch.save(
            {
                "masks": dict(masks),
                "after_init": after_init,
                "after_step": dict(model.state_dict()),
                "outcomes": errors,
                "shared": world.share(f"from rank {world.rank}"),
            },
            out_dir / f"{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_masks_are_broadcast_once_and_ddp_leaves_them_alone(free_port, tmp_path):
    import torch._dynamo  # noqa: F401 - imported once here, not in each forked rank (DDP imports it)

    mp.start_processes(world_worker, args=(free_port, tmp_path), nprocs=RANKS, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(RANKS)]
    assert ranks[0]["masks"].keys() == ranks[1]["masks"].keys()
    for name, mask in ranks[0]["masks"].items():
        assert mask.dtype == torch.bool and torch.equal(ranks[1]["masks"][name], mask), name
        assert 0 < mask.sum() < mask.numel(), "precondition: a real mask"
    for key, value in ranks[0]["after_init"].items():
        if key.endswith("mask"):
            assert torch.equal(value, ranks[0]["masks"][key[:-4] + "weight"])
            assert ranks[1]["after_init"][key].all() and ranks[1]["after_step"][key].all(), (
                f"{key}: DDP sent no mask, neither when built nor at the forward pass"
            )
        else:
            assert torch.equal(ranks[1]["after_init"][key], value), f"{key}: rank 0's weights, copied by DDP"
    expected = [("raised", "the run there has another config"), ("ok", {"rank": 0})]
    assert ranks[0]["outcomes"] == ranks[1]["outcomes"] == expected, "rank 0's error and value reach every rank"
    assert ranks[0]["shared"] == ranks[1]["shared"] == "from rank 0"
