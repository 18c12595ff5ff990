"""The instability pipeline (error barriers between copies trained under different SGD noise) at tiny size on
the real 8x8 digits."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.config import config_from_options
from lth_sparse.integrity import read_done
from lth_sparse.pipelines import imp, instability
from lth_sparse.pipelines.imp import ImpConfig
from lth_sparse.pipelines.instability import InstabilityConfig, _Setup, contradictions, earliest_stable, evaluate_pair
from lth_sparse.runs import ConfigMismatch, config_hash

TINY = dict(dataset="digits", model="lenet300", epochs=3, lr=0.05, batch_size=64, alphas=11)


def quiet(line):
    pass


def run(path, **options):
    config = config_from_options(InstabilityConfig, {**TINY, **options})
    return config, instability.run(config, path, progress=False, log=quiet, plots=True)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    path = tmp_path_factory.mktemp("instability") / "dense"
    return path, *run(path, rewind_points="init,iter:10,epoch:1", seeds=2)


def test_bisection_finds_the_first_stable_point_in_the_expected_probes():
    for first in (1, 2, 7, 63, 100):
        calls = []

        def oracle(k, calls=calls, first=first):
            calls.append(k)
            return k >= first

        found, probes = earliest_stable(oracle, 0, 100)
        assert found == first and calls == [p for p, _ in probes]
        assert len(probes) == 2 + math.ceil(math.log2(100)) or len(probes) == 2 + math.floor(math.log2(100)), probes
        assert not contradictions(probes)
    assert earliest_stable(lambda k: True, 0, 100) == (0, [(100, True), (0, True)])
    assert earliest_stable(lambda k: False, 0, 100) == (None, [(100, False)])
    assert contradictions([(0, False), (5, True), (8, False)]) == [(5, 8)]
    with pytest.raises(ValueError, match="empty range"):
        earliest_stable(lambda k: True, 5, 4)


def test_the_summary_holds_every_point_with_its_barriers_and_curves(dense):
    path, config, summary = dense
    assert [p["point"] for p in summary["points"]] == ["init", "iter:10", "epoch:1"]
    per_epoch = math.ceil(len(_Setup(config, 0).data.train) / 64)
    assert [p["iteration"] for p in summary["points"]] == [0, 10, per_epoch]
    for row in summary["points"]:
        assert row["pairs"] == 2 and row["test_error_barrier"]["n"] == 2
        assert len(row["test_error_curve"]) == 11 and row["alphas"][0] == 0 and row["alphas"][-1] == 1
        assert row["test_error_barrier"]["mean"] >= 0
        # equation 3 can never be below half the gap between the ends
        for s in (0, 1):
            done = read_done(path / f"seed_{s}" / row["point"].replace(":", "_") / "pair_0_1" / "done.json")
            a, b = done["test_error_ends"]
            assert done["test_error_barrier"] >= abs(a - b) / 2 - 1e-12
            curve = done["path"]["curves"]["test"]["error"]
            assert curve[0] == pytest.approx(a) and curve[-1] == pytest.approx(b)
            assert done["path"]["convention"].startswith("(1 - alpha) * state_a")
    assert (path / "plots" / "barrier_vs_point.png").stat().st_size > 0
    assert (path / "plots" / "error_along_path.png").stat().st_size > 0


def test_the_copies_share_everything_before_the_rewind_point_and_differ_after(dense):
    path, config, _ = dense
    a = read_done(path / "seed_0" / "iter_10" / "copy_0" / "done.json")
    b = read_done(path / "seed_0" / "iter_10" / "copy_1" / "done.json")
    assert a["start"] == b["start"] == 10 and a["noise_seed"] != b["noise_seed"]
    fa = torch.load(path / "seed_0" / "iter_10" / "copy_0" / "final.pt")
    fb = torch.load(path / "seed_0" / "iter_10" / "copy_1" / "final.pt")
    assert not torch.equal(fa["fc1.weight"], fb["fc1.weight"])
    # the same copy again (same state, same noise): bit-identical, and its path to the first has barrier 0
    spec = instability.CopySpec(config.__class__(**{**config.__dict__, "seeds": ()}), 0, "iter:10", 0)
    again = path / "seed_0" / "iter_10" / "again"
    instability.copy_unit(spec, again, quiet, False)
    fc = torch.load(again / "final.pt")
    assert all(torch.equal(fa[k], fc[k]) for k in fa)
    same = evaluate_pair(config, _Setup(config, 0), fa, fc, 0)
    assert same["test_error_barrier"] == 0 and same["train_loss_barrier"] == pytest.approx(0, abs=1e-6)


def test_one_initialisation_is_stable_and_two_are_not(dense):
    """LeNet-300-100 copies from one initialisation under two data orders are linearly connected; two
    different initialisations are not (a pipeline that re-initialised its second copy would fail here)."""
    path, config, summary = dense
    init = summary["points"][0]
    assert init["stable"] and init["test_error_barrier"]["mean"] < 0.02
    copy_0 = torch.load(path / "seed_0" / "init" / "copy_0" / "final.pt")
    other_init = torch.load(path / "seed_1" / "init" / "copy_0" / "final.pt")
    apart = evaluate_pair(config, _Setup(config, 0), copy_0, other_init, 0)
    print(
        f"barrier: one initialisation {100 * init['test_error_barrier']['mean']:.2f} points, two "
        f"{100 * apart['test_error_barrier']:.2f} (train {100 * apart['train_error_barrier']:.2f})"
    )
    assert apart["train_loss_barrier"] > 5 * max(init["train_loss_barrier"]["mean"], 1e-3)
    assert apart["test_error_barrier"] > init["test_error_barrier"]["mean"] + 0.02


def test_a_rerun_resumes(dense):
    path, config, _ = dense
    lines = []
    instability.run(config, path, progress=False, log=lines.append, plots=False)
    assert any("units are done, nothing to run" in line for line in lines), lines


def test_the_tickets_of_an_imp_run_and_the_barriers_between_successive_rounds(tmp_path):
    source = tmp_path / "imp"
    imp.run(
        ImpConfig(
            dataset="digits",
            model="lenet300",
            epochs=2,
            lr=0.05,
            batch_size=64,
            rounds=2,
            fraction=0.5,
            rewind="iter:5",
        ),
        source,
        progress=False,
        log=quiet,
        plots=False,
    )
    config = config_from_options(InstabilityConfig, {"source": str(source), "successive": True, "alphas": 5})
    assert (config.dataset, config.epochs, config.lr) == ("digits", 2, 0.05), "the source's recipe"
    summary = instability.run(config, tmp_path / "run", progress=False, log=quiet, plots=True)
    assert [p["point"] for p in summary["points"]] == ["round_00", "round_01", "round_02"]
    assert [p["iteration"] for p in summary["points"]] == [5, 5, 5], "the source's rewind iteration"
    assert [p["sparsity"] for p in summary["points"]] == pytest.approx([0, 0.5, 0.75], abs=2e-3)
    assert summary["points"][0]["winning"] is True, "the dense network is as accurate as itself"
    assert all("winning" in p and "ticket_test_accuracy" in p for p in summary["points"])
    assert [r["rounds"] for r in summary["successive"]] == ["round_00-round_01", "round_01-round_02"]
    assert all(r["masks"] == "different" for r in summary["successive"])
    done = read_done(tmp_path / "run" / "seed_0" / "round_02" / "pair_0_1" / "done.json")
    assert done["path"]["masks"] == "shared"
    assert (tmp_path / "run" / "plots" / "successive_barriers.png").stat().st_size > 0


def test_the_search_probes_the_ends_first(tmp_path):
    config, summary = run(tmp_path / "search", search="epoch", epochs=4)
    search = summary["search"]
    assert search["probes"][0]["iteration"] == 3 * search["step"], "the last epoch before the end first"
    if search["probes"][0]["stable"]:
        assert search["earliest_stable"] is not None
        stable = sorted(p["point"] for p in search["probes"] if p["stable"])
        assert search["earliest_stable"] == stable[0]
    assert all(p["iteration"] % search["step"] == 0 for p in search["probes"])
    assert len(search["probes"]) <= 2 + math.ceil(math.log2(3))
    assert (tmp_path / "search" / "plots" / "search_probes.png").stat().st_size > 0


def test_bad_input(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "transfer", "config": {}}))
    with pytest.raises(ConfigMismatch, match="not an IMP run"):
        config_from_options(InstabilityConfig, {"source": str(other)})
    with pytest.raises(ValueError, match="copies must be >= 2"):
        InstabilityConfig(copies=1)
    with pytest.raises(ValueError, match="need --source"):
        InstabilityConfig(successive=True)
    with pytest.raises(ValueError, match="must come before the end"):
        run(tmp_path / "late", rewind_points="epoch:9")
    with pytest.raises(ValueError):
        InstabilityConfig(rewind_points=("soon",))
    assert not (tmp_path / "late").exists()
    assert main(["instability", "--source", str(other), "--out", str(tmp_path / "x")]) == 2


def test_the_copies_training_dynamics(tmp_path):
    from lth_sparse.analysis import ForgettingResult, convergence_speed

    config, summary = run(tmp_path / "dyn", rewind_points="init,iter:10", dynamics=True)
    init, late = summary["points"]
    assert init["forgetting_events"]["n"] == 2 and 0 <= init["unforgettable"]["mean"] <= 1
    assert "convergence_speed" in init and "convergence_speed" not in late, "equation 4 is of whole trainings"
    done = read_done(tmp_path / "dyn" / "seed_0" / "init" / "copy_1" / "done.json")
    assert len(done["test_errors"]) == 4 and done["convergence_speed"] == pytest.approx(
        convergence_speed(done["test_errors"])
    )
    assert done["test_errors"][-1] == pytest.approx(1 - done["test_accuracy"])
    counts = ForgettingResult.load(tmp_path / "dyn" / "seed_0" / "init" / "copy_1" / "forgetting.safetensors")
    assert bool((counts.presentations == 3).all()), "every example presented once per epoch"
    assert counts.mean_events == pytest.approx(done["forgetting_events"])


def test_a_conv_net_is_unstable_at_initialisation_and_stable_a_fraction_of_an_epoch_in(tmp_path):
    """Frankle et al. (2020)'s finding on a small conv net and real data (Conv-2 on the 8x8 digits, SGD with
    momentum): copies from the initialisation end in different basins, copies from iteration 20 (about half an
    epoch) in one. Asserted on the mean over 2 seeds with a wide margin; the figures are printed."""
    config, summary = run(
        tmp_path / "conv",
        model="conv2",
        epochs=4,
        lr=0.05,
        momentum=0.9,
        batch_size=32,
        rewind_points="init,iter:20",
        seeds=2,
        eval_examples=2000,
    )
    init, late = summary["points"]
    print(
        f"Conv-2 on digits: barrier {100 * init['test_error_barrier']['mean']:.2f} +- "
        f"{100 * init['test_error_barrier']['std']:.2f} points from init, "
        f"{100 * late['test_error_barrier']['mean']:.2f}"
        f" +- {100 * late['test_error_barrier']['std']:.2f} from iteration 20"
    )
    assert init["test_error_barrier"]["mean"] > late["test_error_barrier"]["mean"] + 0.10
    assert not init["stable"]


def test_dropping_the_most_forgotten_examples(tmp_path):
    """Appendix A.1: the copies train without the most forgotten share of the training set, ranked by another
    run's forgetting counts."""
    from lth_sparse.analysis import ForgettingResult

    counted, _ = run(tmp_path / "counted", dynamics=True, epochs=2)
    config, summary = run(
        tmp_path / "dropped", epochs=2, drop_most_forgotten=0.1, forgetting_run=str(tmp_path / "counted")
    )
    setup = _Setup(config, 0)
    full = _Setup(counted, 0).data
    assert summary["dropped_examples"] == round(0.1 * len(full.train)) == len(full.train) - len(setup.data.train)
    counts = sum(
        ForgettingResult.load(f).counts.double()
        for f in (tmp_path / "counted").glob("seed_0/init/copy_*/forgetting.safetensors")
    )
    kept = {tuple(x.tolist()) for x in setup.data.train.x.flatten(1)}
    dropped = [i for i in range(len(full.train)) if tuple(full.train.x[i].flatten().tolist()) not in kept]
    assert min(counts[dropped]) >= counts.median(), "the dropped examples are among the most forgotten"
    with pytest.raises(ValueError, match="go together"):
        InstabilityConfig(drop_most_forgotten=0.1)
    with pytest.raises(FileNotFoundError, match="make it with --dynamics"):
        run(tmp_path / "x", drop_most_forgotten=0.1, forgetting_run=str(tmp_path / "dropped"))


def test_imp_run_by_the_pipeline_itself_equals_a_source_run(tmp_path):
    """--imp-rounds runs IMP into RUN/imp/ and measures its tickets: the same masks and the same barriers as
    running lth-sparse imp first and giving it as --source."""
    from lth_sparse.masks import Masks
    from lth_sparse.pipelines.instability import imp_config

    config, inside = run(
        tmp_path / "inside", epochs=2, imp_rounds=2, imp_fraction=0.5, imp_rewind="iter:5", successive=True, alphas=5
    )
    imp.run(imp_config(config, 0), tmp_path / "imp", progress=False, log=quiet, plots=False)
    _, outside = run(tmp_path / "outside", source=str(tmp_path / "imp"), successive=True, alphas=5, epochs=2)
    for r in (1, 2):
        assert Masks.load(
            tmp_path / "inside" / "imp" / "seed_0" / f"round_{r:02d}" / "masks.safetensors"
        ) == Masks.load(tmp_path / "imp" / "seed_0" / f"round_{r:02d}" / "masks.safetensors")
    assert [p["test_error_barrier"]["mean"] for p in inside["points"]] == pytest.approx(
        [p["test_error_barrier"]["mean"] for p in outside["points"]], abs=1e-6
    )
    assert [p["winning"] for p in inside["points"]] == [p["winning"] for p in outside["points"]]
    assert len(inside["successive"]) == 2
    with pytest.raises(ValueError, match="give one of them"):
        InstabilityConfig(imp_rounds=2, source=str(tmp_path / "imp"))


def test_bf16_paths_are_recorded_and_the_hash_of_an_fp32_run_is_unchanged(tmp_path):
    """--path-precision bf16 evaluates each path under autocast and says so in every pair's result and the
    summary; fp32, the default, leaves the run's identity as it was before the option existed."""
    from lth_sparse.analysis import PRECISIONS

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(InstabilityConfig)}
    assert choices["path_precision"] == PRECISIONS
    config, summary = run(tmp_path / "bf16", rewind_points="iter:10", path_precision="bf16")
    assert summary["path_precision"] == "bf16" and config.precision == "fp32"  # the training's stays
    done = read_done(tmp_path / "bf16" / "seed_0" / "iter_10" / "pair_0_1" / "done.json")
    assert done["path"]["precision"] == "bf16"
    assert 0 <= done["test_error_barrier"] <= 1
    # the committed run, made before the option existed, keeps its hash (fp32, the default, is not counted)
    saved = json.loads(
        (Path(__file__).parents[2] / "results" / "instability-digits" / "rewind-points" / "config.json").read_text()
    )
    fields = {f.name for f in dataclasses.fields(InstabilityConfig)}
    old = InstabilityConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items() if k in fields}
    )
    assert "path_precision" not in saved["config"] and old.path_precision == "fp32"
    assert config_hash(old) == saved["hash"]
