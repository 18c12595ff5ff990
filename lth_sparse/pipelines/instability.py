"""Instability to SGD noise: linear mode connectivity and error barriers (Frankle et al. 2020; the SGD-noise
paper's equation 3, Figures 1-2 and Appendix C.3).

From a state at iteration k (the *rewind point*), N copies (``copies``, default 2) are trained to the end
under different SGD noise: their data order and augmentation differ, while the initialisation and
everything before k are shared; the learning-rate schedule continues from k. Every pair of copies is
evaluated along the straight line between them (:func:`lth_sparse.analysis.interpolate`, all alphas in
one batched pass) and its *error barrier* is the largest error on the path minus the mean of the
endpoints' errors (equation 3); a point is *stable* when the mean barrier over its pairs and seeds is
under ``threshold`` (2 points by default, an absolute difference of error fractions).

What the copies start from:

- a dense network (no ``--source``): the seed's initialisation trained to each of ``--rewind-points``
  (``init``, ``iter:N``, ``epoch:E``) by one *trunk* training per seed, which keeps the state at each;
- every round of an IMP run (``--source RUN``): the round's ticket, its masks over the run's rewind state
  (the run's rewind iteration and schedule); ``--successive`` adds the barriers between the trained
  tickets of successive rounds (the paper's Figure 2; the two ends then have different masks, and their
  masked weights are interpolated).

``--search epoch|iter`` finds the earliest stable rewind point by bisection (Appendix C.3): it assumes
stability is monotone in the rewind point (unstable before some point, stable from it on), probes
``init`` and the end first, and halves the interval; each probe trains ``copies`` copies for every seed
and is stable when its mean barrier is under the threshold. The probes are recorded; any pair of probes
that contradicts the monotonicity (an earlier probe stable, a later one not) is reported.

Stages: (1) the trunks (dense only); (2) one training per (seed, point, copy); (3) one path evaluation
per (seed, point, pair) and, with ``--successive``, per pair of successive rounds; the search is one
unit after them (its probes are sequential: each depends on the last), each probe a resumable step.

Readings stated: the copies' noise seeds are ``seed * 1000 + 1 + c`` for copy ``c`` (order and
augmentation), the trunk's is ``seed``; weight decay 5e-4 in ``--preset sgd-noise`` (Section 4 of the
paper; Appendix G gives 1e-4 in one table: the main text's value is the one used).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import torch

from lth_sparse.analysis import BN_MODES, PRECISIONS
from lth_sparse.config import option, split_items
from lth_sparse.experiment import check_device, draw_model
from lth_sparse.integrity import load_torch, read_done
from lth_sparse.masks import Masks
from lth_sparse.pipelines.base import Pipeline, register_pipeline
from lth_sparse.pipelines.common import CommonConfig, over_seeds, parse_seeds, stack_key
from lth_sparse.pipelines.imp_rounds import ImpConfig, ImpRun
from lth_sparse.pipelines.steps import MaskedTraining, run_step, shared_dataset, train_masked, train_masked_grouped
from lth_sparse.runs import ConfigMismatch, Steps, atomic_torch_save, check_run
from lth_sparse.tickets import (
    finished_rounds,
    imp_run_config,
    result_files,
    round_results,
    run_seeds,
    seed_folder,
    training_options,
)
from lth_sparse.train import TrainConfig, iterations_per_epoch, parse_step
from lth_sparse.units import Unit

SEARCH_UNITS = ("epoch", "iter")
PRESETS = {
    # The SGD-noise paper, Section 4 and Appendix G: SGD from 0.1, cosine-annealed, weight decay 5e-4, 200 epochs
    # (2 of them pretraining where rewound late), 20% per round; its grid varies momentum (0, 0.9) and batch
    # size (100, 256): this preset takes momentum 0.9 and batch 256, options given override them.
    "sgd-noise": dict(
        optimizer="sgd",
        lr=0.1,
        schedule="cosine",
        weight_decay=5e-4,
        epochs=200.0,
        momentum=0.9,
        nesterov=False,
        batch_size=256,
        warmup_epochs=0.0,
    ),
}


def parse_points(value) -> tuple[str, ...]:
    """``--rewind-points``: ``init``, ``iter:N``, ``epoch:E`` (comma- or space-separated)."""
    items = split_items(value)
    for item in items:
        parse_step(item, 1, option="--rewind-points")
    if len(set(items)) != len(items):
        raise ValueError(f"rewind points repeat: {items}")
    return tuple(items)


@dataclass(frozen=True)
class InstabilityConfig(CommonConfig):
    """An instability experiment: the training of :class:`TrainConfig` (inherited), and these."""

    PRESETS: ClassVar[dict] = PRESETS

    dataset: str = option("fashion-mnist", "dataset name (ignored with --source: the run's)")
    model: str = option("lenet300", "model name (ignored with --source: the run's)")
    model_options: tuple[tuple[str, object], ...] = option(
        (),
        "model option, e.g. width=512 for mlp (repeatable; in a --config file a mapping)",
        flag="model-option",
        metavar="KEY=VALUE",
    )
    source: str | None = option(
        None,
        "an IMP run: measure the instability of its tickets (its rounds, masks and "
        "rewind state; its training recipe unless the options say otherwise)",
        metavar="RUN_DIR",
    )
    rounds: tuple[int, ...] = option(
        (), "the source's rounds to measure", metavar="R", default_text="every finished round"
    )
    imp_rounds: int | None = option(
        None,
        "run IMP here first, this many rounds after the dense one (into RUN/imp/), "
        "and measure every round's ticket, as with --source",
        metavar="N",
    )
    imp_fraction: float = option(0.2, "with --imp-rounds: fraction of the remaining weights pruned per round")
    imp_rewind: str = option("init", "with --imp-rounds: the rewind point of its tickets (init, iter:N, epoch:E)")
    rewind_points: tuple[str, ...] = option(
        ("init",), "the dense network's rewind points: init, iter:N, epoch:E", parse=parse_points, metavar="POINT"
    )
    copies: int = option(2, "copies trained from each point under different SGD noise (every pair is measured)")
    successive: bool = option(False, "with --source, also the barriers between successive rounds' trained tickets")
    search: str | None = option(
        None,
        "find the earliest stable rewind point by bisection over epochs or iterations (dense)",
        choices=SEARCH_UNITS,
    )
    search_step: int = option(1, "the granularity of --search iter, in iterations")
    alphas: int = option(21, "points along each path, evenly spaced in [0, 1]")
    bn: str = option(
        "recompute",
        "batch-norm statistics along the path: re-estimated per alpha on training "
        "batches, interpolated like every tensor, or batch statistics",
        choices=BN_MODES,
    )
    bn_batches: int = option(10, "training batches the statistics are re-estimated on (--bn recompute)")
    path_precision: str = option(
        "fp32",
        "the path's passes in fp32, or in bf16 under autocast (2-3x faster for conv "
        "nets on CPUs with AMX and on GPUs, losses within ~0.005: a screening "
        "precision; report barriers in fp32). --precision is the training's",
        choices=PRECISIONS,
    )
    eval_examples: int | None = option(10000, "evaluate each path on at most this many examples per split", metavar="N")
    threshold: float = option(0.02, "a pair is stable when its error barrier is under this (a fraction)")
    drop_most_forgotten: float | None = option(
        None,
        "train on the training set without this share of its most "
        "forgotten examples (Appendix A.1), counted by --forgetting-run",
        metavar="F",
    )
    forgetting_run: str | None = option(
        None,
        "an instability run made with --dynamics on the same data: its copies' "
        "forgetting events, summed per example, rank the examples",
        metavar="RUN_DIR",
    )
    dynamics: bool = option(
        False,
        "also measure each copy's training dynamics: forgetting events per training "
        "example (Toneva et al. 2019) and convergence speed (equation 4, test error "
        "before training and after every epoch)",
    )
    preset: str | None = option(
        None,
        "the SGD-noise paper's recipe (sgd-noise: SGD lr 0.1 cosine, weight decay "
        "5e-4, 200 epochs, momentum 0.9, batch 256); options given override it",
        choices=tuple(PRESETS),
    )
    seed: int = option(0, "the seed of the initialisation (and the split)")
    seeds: tuple[int, ...] = option(
        (),
        "several initialisations (a count or a list), summarised over",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="--seed alone",
    )
    train_size: int | None = option(None, "train on a seeded subset of N examples (quick runs)", metavar="N")
    val_fraction: float = option(0.2, "share of the training set held out for validation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.copies < 2:
            raise ValueError(f"copies must be >= 2 (a barrier needs a pair), got {self.copies}")
        if self.alphas < 3:
            raise ValueError(f"alphas must be >= 3 (the two ends and a point between), got {self.alphas}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold is a fraction of errors in (0, 1), got {self.threshold}")
        if self.bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1, got {self.bn_batches}")
        if self.search_step < 1:
            raise ValueError(f"search_step must be >= 1, got {self.search_step}")
        parse_points(self.rewind_points)
        if self.imp_rounds is not None:
            if self.source is not None:
                raise ValueError("--imp-rounds runs IMP here; --source reads a finished run: give one of them")
            if self.imp_rounds < 0 or not 0 < self.imp_fraction < 1:
                raise ValueError(
                    f"imp_rounds must be >= 0 and imp_fraction in (0, 1), got {self.imp_rounds} and {self.imp_fraction}"
                )
            parse_step(self.imp_rewind, 1, option="--imp-rewind")
            if any(r > self.imp_rounds for r in self.rounds):
                raise ValueError(f"rounds {list(self.rounds)} go beyond --imp-rounds {self.imp_rounds}")
        if self.source is not None or self.imp_rounds is not None:
            if self.rewind_points != ("init",):
                raise ValueError(
                    "--rewind-points is for a dense network; a --source run's tickets start from its own rewind state"
                )
            if self.search is not None:
                raise ValueError("--search is for a dense network, not a --source run")
        elif self.successive or self.rounds:
            raise ValueError("--successive and --rounds need --source RUN_DIR (an IMP run) or --imp-rounds N")
        if (self.drop_most_forgotten is None) != (self.forgetting_run is None):
            raise ValueError("--drop-most-forgotten F and --forgetting-run RUN go together")
        if self.drop_most_forgotten is not None and not 0 < self.drop_most_forgotten < 1:
            raise ValueError(f"drop_most_forgotten is a fraction in (0, 1), got {self.drop_most_forgotten}")

    @classmethod
    def inherited_options(cls, options: dict) -> dict:
        """With a source, its training recipe, data set and model: what the copies train with unless told."""
        if not options.get("source"):
            return {}
        saved = imp_run_config(str(options["source"]))
        data = {k: saved[k] for k in ("dataset", "model", "model_options", "train_size", "val_fraction") if k in saved}
        return {**training_options(saved), **data}

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.training_options())


def forgetting_scores(run: str, examples: int) -> torch.Tensor:
    """Per training example, its forgetting events summed over the copies of an instability run made with
    ``--dynamics``; an example some copy never learned ranks above every other (Toneva et al. count it
    forgettable). Refuses a run without forgetting counts or counted on another training set."""
    from lth_sparse.analysis import ForgettingResult

    files = sorted(Path(run).expanduser().glob("seed_*/*/copy_*/forgetting.safetensors"))
    if not files:
        raise FileNotFoundError(f"forgetting run {run}: no forgetting.safetensors (make it with --dynamics)")
    total = torch.zeros(examples, dtype=torch.float64)
    never = torch.zeros(examples, dtype=torch.bool)
    for file in files:
        result = ForgettingResult.load(file)
        if result.num_examples != examples:
            raise ValueError(
                f"forgetting run {run} counted {result.num_examples} training examples, this training "
                f"set has {examples}: it must use the same data set, split and --train-size"
            )
        total += result.counts.double().cpu()
        never |= result.never_learned.cpu()
    return torch.where(never, total.max() + 1, total)


def noise_seed(seed: int, copy: int) -> int:
    """The data-order and augmentation seed of copy ``copy`` of initialisation ``seed`` (the trunk's is ``seed``)."""
    return seed * 1000 + 1 + copy


def earliest_stable(is_stable: Callable[[int], bool], lo: int, hi: int) -> tuple[int | None, list[tuple[int, bool]]]:
    """The first point in ``lo..hi`` where ``is_stable`` holds, by bisection, assuming it is monotone (false
    before some point, true from it on); returns (that point or None where ``hi`` is unstable, the probes
    made in order as (point, stable)). ``hi``, then ``lo``, then ceil(log2(hi - lo)) points between."""
    if lo > hi:
        raise ValueError(f"an empty range: lo {lo} > hi {hi}")
    probes = []

    def probe(point: int) -> bool:
        stable = bool(is_stable(point))
        probes.append((point, stable))
        return stable

    if not probe(hi):
        return None, probes
    if lo == hi or probe(lo):
        return lo, probes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            hi = mid
        else:
            lo = mid
    return hi, probes


def contradictions(probes: list[tuple[int, bool]]) -> list[tuple[int, int]]:
    """Pairs (earlier point stable, later point unstable) among ``probes``: each contradicts monotonicity."""
    return [(a, b) for (a, sa), (b, sb) in itertools.product(probes, probes) if a < b and sa and not sb]


# --- the runs' common parts ---------------------------------------------------------------------------------


class _Setup:
    """The data, the model builder, the iteration counts of one config (and of its source)."""

    def __init__(self, config: InstabilityConfig, seed: int):
        self.config = config
        self.device = check_device(config.device)
        # the split of the run's --seed (the seeds vary the initialisation, not the data); a source's own split
        split = config.seed
        if config.source is not None:
            saved = imp_run_config(config.source)
            split = saved.get("split_seed") if saved.get("split_seed") is not None else saved.get("seed", 0)
        self.data = shared_dataset(
            config.dataset,
            data_dir=config.data_dir,
            device=self.device,
            val_fraction=config.val_fraction,
            seed=split,
            train_size=config.train_size,
        )
        self.dropped = 0
        if config.drop_most_forgotten is not None:
            from lth_sparse.analysis import dataset_without, most_forgotten

            scores = forgetting_scores(config.forgetting_run, len(self.data.train))
            dropped = most_forgotten(scores, config.drop_most_forgotten)
            self.data = dataset_without(self.data, dropped)
            self.dropped = len(dropped)
        self.per_epoch = iterations_per_epoch(len(self.data.train), config.batch_size)
        self.total = round(config.epochs * self.per_epoch)
        self.seed = seed

    def point(self, text: str) -> int:
        k = parse_step(text, self.per_epoch)
        if k >= self.total:
            raise ValueError(
                f"rewind point {text} (iteration {k}) must come before the end of training (iteration {self.total})"
            )
        return k

    def model(self, seed: int | None = None):
        return draw_model(
            self.config.model,
            self.data.input_shape,
            self.data.num_classes,
            self.config.model_options,
            seed=self.seed if seed is None else seed,
            device=self.device,
        )


def _point_label(text: str) -> str:
    return text.replace(":", "_")


def _copy_dir(seed: int, point: str, copy: int) -> str:
    return f"seed_{seed}/{point}/copy_{copy}"


def _pair_dir(seed: int, point: str, i: int, j: int) -> str:
    return f"seed_{seed}/{point}/pair_{i}_{j}"


def _source_point(r: int) -> str:
    return f"round_{r:02d}"


def _tickets(config: InstabilityConfig) -> bool:
    """Whether the copies start from IMP tickets (--source or --imp-rounds) rather than a dense network."""
    return config.source is not None or config.imp_rounds is not None


def _ticket_folder(config: InstabilityConfig, run_dir: Path, seed: int) -> Path:
    """The folder of one seed's IMP run (its rewind.pt and round_NN/): the source's, or RUN/imp/seed_S."""
    if config.imp_rounds is not None:
        return Path(run_dir) / "imp" / f"seed_{seed}"
    return seed_folder(config.source, seed)


def imp_config(config: InstabilityConfig, seed: int):
    """The IMP run of ``--imp-rounds`` for ``seed``: this config's data, model and training."""
    train = config.training_options()
    return ImpConfig(
        **train,
        dataset=config.dataset,
        model=config.model,
        model_options=config.model_options,
        rounds=config.imp_rounds,
        fraction=config.imp_fraction,
        rewind=config.imp_rewind,
        seed=seed,
        split_seed=config.seed,
        train_size=config.train_size,
        val_fraction=config.val_fraction,
        device=config.device,
        data_dir=config.data_dir,
        threads=config.threads,
    )


# --- stage 1: the trunk (dense) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrunkSpec:
    config: InstabilityConfig
    seed: int


def trunk_unit(spec: TrunkSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The initialisation of one seed, trained with the trunk's noise (``seed``) to the last rewind point,
    keeping the state at each (``state_POINT.pt``): what every copy from that point shares."""
    c = spec.config
    setup = _Setup(c, spec.seed)
    model = setup.model()
    points = {p: setup.point(p) for p in c.rewind_points}
    directory.mkdir(parents=True, exist_ok=True)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for p, k in points.items():
        if k == 0:
            atomic_torch_save(directory / f"state_{_point_label(p)}.pt", {"iteration": 0, "state_dict": init})
    last = max(points.values())
    if last > 0:
        by_iteration = {}
        for p, k in points.items():
            by_iteration.setdefault(k, []).append(p)

        def keep(iteration, state):
            for p in by_iteration.get(iteration, []):
                atomic_torch_save(
                    directory / f"state_{_point_label(p)}.pt", {"iteration": iteration, "state_dict": state}
                )

        train_masked(
            model,
            setup.data,
            c.train_config(),
            Masks.ones_like(model),
            init,
            None,
            seed=spec.seed,
            start=0,
            end=last,
            snapshot_at=sorted(k for k in by_iteration if k > 0),
            on_snapshot=keep,
            progress=progress,
            desc=f"seed {spec.seed} trunk to iteration {last}",
        )
    log(f"seed {spec.seed}: trunk states at {', '.join(f'{p} (iteration {k})' for p, k in points.items())}")
    return {"seed": spec.seed, "points": points, "iterations_per_epoch": setup.per_epoch, "total": setup.total}


# --- stage 2: the copies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopySpec:
    config: InstabilityConfig
    seed: int
    point: str  # a rewind point (dense) or round_RR (source)
    copy: int


def _start(spec: CopySpec, setup: _Setup, directory: Path) -> tuple[dict, Masks, int]:
    """(state, masks, iteration) a copy starts from."""
    c = spec.config
    if not _tickets(c):
        saved = load_torch(
            directory.parent.parent / "trunk" / f"state_{_point_label(spec.point)}.pt", map_location=setup.device
        )
        model = setup.model()
        return saved["state_dict"], Masks.ones_like(model), saved["iteration"]
    folder = _ticket_folder(c, directory.parents[2], spec.seed)
    rewind = load_torch(folder / "rewind.pt", map_location=setup.device)
    masks = Masks.load(folder / spec.point / "masks.safetensors", setup.device)
    return rewind["state_dict"], masks, rewind["iteration"]


def copy_unit(spec: CopySpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """One copy trained from its point to the end under its own SGD noise; ``final.pt`` is what pairs compare."""
    training, finish = _copy_training(spec, directory, progress)
    return finish(training.run(), log)


def copy_units(
    specs: list[CopySpec], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`copy_unit` of several copies (other seeds, copies and points of one start), trained together as
    one stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`). Not for ``dynamics``, whose
    callbacks read the model's weights as it trains (its plan does not stack those copies)."""
    prepared = [_copy_training(spec, directory, progress) for spec, directory in zip(specs, directories)]
    metrics = train_masked_grouped([training for training, _ in prepared])
    return [finish(m, log) for (_, finish), m, log in zip(prepared, metrics, logs)]


def _copy_training(
    spec: CopySpec, directory: Path, progress: bool | None
) -> tuple[MaskedTraining, Callable[[dict, Callable[[str], None]], dict]]:
    """What one copy trains, and the function that makes its ``done.json`` of the training's metrics."""
    c = spec.config
    setup = _Setup(c, spec.seed)
    state, masks, start = _start(spec, setup, directory)
    model = setup.model()
    noise = noise_seed(spec.seed, spec.copy)
    callbacks = []
    forgetting = errors = None
    if c.dynamics:
        from lth_sparse.analysis import EpochErrors, ForgettingEvents

        model.load_state_dict(state)
        masks.apply_to(model)
        forgetting = ForgettingEvents(len(setup.data.train), setup.device)
        # equation 4 is of a whole training: from iteration 0 only (the test error before training, measured now)
        errors = EpochErrors(model, setup.data.test, setup.per_epoch) if start == 0 else None
        callbacks = [forgetting] + ([errors] if errors is not None else [])
    training = MaskedTraining(
        model,
        setup.data,
        c.train_config(),
        masks,
        state,
        directory,
        seed=noise,
        augment_seed=noise,
        start=start,
        callbacks=tuple(callbacks),
        progress=progress,
        desc=f"seed {spec.seed} {spec.point} copy {spec.copy}",
    )

    def finish(metrics: dict, log: Callable[[str], None]) -> dict:
        measures = {}
        if forgetting is not None:
            from lth_sparse.analysis import convergence_speed

            counts = forgetting.result()
            counts.save(directory / "forgetting.safetensors")
            measures = {
                "forgetting_events": counts.mean_events,
                "unforgettable": counts.unforgettable_fraction,
                "never_learned": counts.never_learned_fraction,
            }
            if errors is not None:
                measures.update(test_errors=errors.errors, convergence_speed=convergence_speed(errors.errors))
        log(
            f"seed {spec.seed} {spec.point} copy {spec.copy} (noise seed {noise}): iterations {start}..{setup.total}, "
            f"test accuracy {100 * metrics['test_accuracy']:.2f}%"
            + (
                f"; {measures['forgetting_events']:.3f} forgetting events per example, "
                f"{100 * measures['unforgettable']:.1f}% unforgettable"
                + (
                    f", convergence speed {measures['convergence_speed']:.3f}"
                    if "convergence_speed" in measures
                    else ""
                )
                if measures
                else ""
            )
        )
        return {
            "seed": spec.seed,
            "point": spec.point,
            "copy": spec.copy,
            "noise_seed": noise,
            "start": start,
            "sparsity": masks.sparsity(),
            "dropped_examples": setup.dropped,
            **measures,
            **{k: metrics[k] for k in ("test_accuracy", "test_loss", "val_accuracy", "iterations", "train_seconds")},
        }

    return training, finish


# --- stage 3: the paths -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    config: InstabilityConfig
    seed: int
    point: str
    a: str  # the run-relative directories of the two ends (their final.pt)
    b: str
    kind: str = "copies"  # or "successive"


def evaluate_pair(c: InstabilityConfig, setup: _Setup, state_a: dict, state_b: dict, seed: int) -> dict:
    """The path between two states of this config's model: the PathResult's dict and the barriers."""
    from lth_sparse.analysis import interpolate

    model = setup.model()
    result = interpolate(
        model,
        state_a,
        state_b,
        setup.data,
        alphas=c.alphas,
        bn=c.bn,
        bn_batches=c.bn_batches,
        splits=("train", "test"),
        examples=c.eval_examples,
        seed=seed,
        bn_batch_size=c.batch_size,
        precision=c.path_precision,
    )
    out = {"path": result.to_dict()}
    for split in ("train", "test"):
        for metric in ("error", "loss"):
            b = result.barrier(split, metric=metric)
            out[f"{split}_{metric}_barrier"] = b.value
            out[f"{split}_{metric}_ends"] = [b.at_0, b.at_1]
    out["stable"] = out["test_error_barrier"] < c.threshold
    return out


def pair_unit(spec: PairSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    c = spec.config
    setup = _Setup(c, spec.seed)
    run_dir = directory.parents[2] if spec.kind == "copies" else None
    if spec.kind == "copies":
        state_a = load_torch(run_dir / spec.a / "final.pt", map_location=setup.device)
        state_b = load_torch(run_dir / spec.b / "final.pt", map_location=setup.device)
    else:
        folder = _ticket_folder(c, directory.parents[3], spec.seed)
        state_a = load_torch(folder / spec.a / "final.pt", map_location=setup.device)
        state_b = load_torch(folder / spec.b / "final.pt", map_location=setup.device)
    out = evaluate_pair(c, setup, state_a, state_b, spec.seed)
    out.update(seed=spec.seed, point=spec.point, a=spec.a, b=spec.b, kind=spec.kind)
    log(
        f"seed {spec.seed} {spec.point} {spec.a} -> {spec.b}: test error barrier "
        f"{100 * out['test_error_barrier']:.2f} points (ends {100 * out['test_error_ends'][0]:.2f}% and "
        f"{100 * out['test_error_ends'][1]:.2f}%; masks {out['path']['masks']}, bn {out['path']['bn']})"
    )
    return out


# --- the search ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpec:
    config: InstabilityConfig


def search_unit(spec: SearchSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The earliest stable rewind point by bisection over epochs (or iterations), every probe over every seed."""
    c = spec.config
    steps = Steps(directory)
    setups = {s: _Setup(c, s) for s in c.seed_list()}
    first = next(iter(setups.values()))
    step = first.per_epoch if c.search == "epoch" else c.search_step
    hi = (first.total - 1) // step

    def probe(n: int) -> bool:
        k = n * step

        def compute(folder: Path) -> dict:
            barriers = []
            for s, setup in setups.items():
                model = setup.model()
                init = {key: v.clone() for key, v in model.state_dict().items()}
                if k > 0:
                    train_masked(
                        model,
                        setup.data,
                        c.train_config(),
                        Masks.ones_like(model),
                        init,
                        None,
                        seed=s,
                        start=0,
                        end=k,
                        progress=progress,
                        desc=f"probe {k}: seed {s} trunk",
                    )
                trunk = {key: v.clone() for key, v in model.state_dict().items()}
                finals = []
                for copy in range(c.copies):
                    noise = noise_seed(s, copy)
                    train_masked(
                        model,
                        setup.data,
                        c.train_config(),
                        Masks.ones_like(model),
                        trunk,
                        None,
                        seed=noise,
                        augment_seed=noise,
                        start=k,
                        progress=progress,
                        desc=f"probe {k}: seed {s} copy {copy}",
                    )
                    finals.append({key: v.clone() for key, v in model.state_dict().items()})
                for i, j in itertools.combinations(range(c.copies), 2):
                    barriers.append(evaluate_pair(c, setup, finals[i], finals[j], s)["test_error_barrier"])
            stats = over_seeds(barriers)
            return {"iteration": k, "point": n, "barrier": stats, "stable": stats["mean"] < c.threshold}

        result = run_step(steps, f"probe_{k:07d}", compute)
        log(
            f"probe at iteration {k} ({c.search} {n}): mean barrier {100 * result['barrier']['mean']:.2f} points -> "
            f"{'stable' if result['stable'] else 'unstable'}"
        )
        return result["stable"]

    found, probes = earliest_stable(probe, 0, hi)
    records = [read_done(directory / f"probe_{n * step:07d}" / "done.json") for n, _ in probes]
    bad = contradictions(probes)
    if bad:
        log(f"monotonicity contradicted by {len(bad)} probe pair(s): {bad}")
    return {
        "unit": c.search,
        "step": step,
        "earliest_stable": found,
        "earliest_stable_iteration": None if found is None else found * step,
        "probes": records,
        "contradictions": [list(x) for x in bad],
    }


# --- the pipeline -------------------------------------------------------------------------------------------


def _points(config: InstabilityConfig, seed: int) -> list[str]:
    if config.imp_rounds is not None:
        return [_source_point(r) for r in (config.rounds or range(config.imp_rounds + 1))]
    if config.source is None:
        return list(config.rewind_points)
    done = finished_rounds(Path(config.source).expanduser(), seed)
    return [_source_point(r) for r in (config.rounds or done)]


class InstabilityPipeline(Pipeline):
    """Instability to SGD noise as a pipeline: copies trained from each point, then their pairs' paths.

    The summary holds ``kind`` (``"instability"``), ``hash``, ``config``, ``seeds``, ``threshold``, ``bn``,
    ``convention`` (which end is alpha = 0), ``points`` (per rewind point or source round: the test and train
    error and loss barriers over seeds x pairs as ``mean``/``std``/``min``/``max``/``n``, ``end_error`` (the
    endpoints' test errors: equation 3 cannot be below half their gap), ``stable``, ``stable_pairs``,
    ``alphas`` and the mean error curves with their std, ``iteration`` (where the copies started), with a
    source ``ticket_test_accuracy`` and ``winning`` (at least the dense network's accuracy)), ``successive``
    (per pair of successive rounds, the barrier between their trained tickets) and ``search`` (the earliest
    stable point, the probes and any contradictions of monotonicity).
    """

    kind = "instability"
    summary_format = 2  # 2: no unlabelled top-level test_error_barrier
    config_class = InstabilityConfig
    help = "instability to SGD noise: error barriers between copies trained from one state"
    description = (
        "Linear mode connectivity (Frankle et al. 2020; the SGD-noise paper's equation 3). From each "
        "rewind point of a dense network (--rewind-points), or from every round's ticket of an IMP run "
        "(--source), --copies copies train to the end under different data order and augmentation; "
        "every pair is evaluated at --alphas points of the straight line between them (in one batched "
        "pass) and its error barrier is the largest error on the path minus the mean of its ends. "
        "--successive measures the barriers between successive rounds' tickets; --search finds the "
        "earliest stable rewind point by bisection. Results go to --out: seed_S/POINT/copy_C/, "
        "seed_S/POINT/pair_I_J/, summary.json and plots/. Re-running resumes."
    )

    @property
    def epilog(self) -> str:
        from lth_sparse.data import available_datasets
        from lth_sparse.models import available_models

        return (
            f"Datasets: {', '.join(available_datasets())} (and derived tasks). Models: "
            f"{', '.join(available_models())}. With --source the run's data set, model and training recipe are "
            "the defaults; --preset and the flags override them."
        )

    def check(self, config: InstabilityConfig) -> None:
        if config.source is not None:
            imp_run_config(config.source)
            check_run(Path(config.source).expanduser()).raise_if_damaged()  # named before anything is written
            have = run_seeds(Path(config.source).expanduser())
            missing = [s for s in config.seed_list() if s not in have]
            if missing:
                raise ValueError(f"source {config.source} has seeds {have}, not {missing}")
            for s in config.seed_list():
                done = finished_rounds(Path(config.source).expanduser(), s)
                if not done:
                    raise ValueError(f"source {config.source} seed {s}: no finished round")
                absent = [r for r in config.rounds if r not in done]
                if absent:
                    raise ValueError(
                        f"source {config.source} seed {s} has not finished rounds {absent}; finished: {done}"
                    )
        setup = _Setup(config, config.seed_list()[0])
        for p in config.rewind_points:
            setup.point(p)
        setup.model()
        if config.imp_rounds is not None:
            ImpRun(imp_config(config, config.seed_list()[0]), None, False, lambda line: None)

    def stacked_model(self, config: InstabilityConfig):
        return _Setup(config, config.seed_list()[0]).model()

    def plan(self, config: InstabilityConfig) -> list[list[Unit]]:
        trunks, copies, pairs = [], [], []
        for s in config.seed_list():
            if config.imp_rounds is not None:
                trunks.append(
                    Unit(
                        "lth_sparse.pipelines.imp_rounds:imp_seed",
                        imp_config(config, s),
                        f"imp/seed_{s}",
                        label=f"seed {s} IMP ({config.imp_rounds} rounds)",
                        stacked="lth_sparse.pipelines.imp_rounds:imp_seeds",  # the seeds in lockstep
                        stack_key=stack_key(imp_config(config, s)),
                    )
                )
            elif config.source is None:
                trunks.append(
                    Unit(
                        "lth_sparse.pipelines.instability:trunk_unit",
                        TrunkSpec(config, s),
                        f"seed_{s}/trunk",
                        label=f"seed {s} trunk",
                    )
                )
            for p in _points(config, s):
                label = _point_label(p)
                for copy in range(config.copies):
                    copies.append(
                        Unit(
                            "lth_sparse.pipelines.instability:copy_unit",
                            CopySpec(config, s, p, copy),
                            _copy_dir(s, label, copy),
                            label=f"seed {s} {p} copy {copy}",
                            # the copies of one start train together; with dynamics, whose callbacks read the
                            # model as it trains, each alone
                            stacked="" if config.dynamics else "lth_sparse.pipelines.instability:copy_units",
                            stack_key=(stack_key(config), p if not _tickets(config) else "ticket"),
                        )
                    )
                for i, j in itertools.combinations(range(config.copies), 2):
                    pairs.append(
                        Unit(
                            "lth_sparse.pipelines.instability:pair_unit",
                            PairSpec(config, s, p, _copy_dir(s, label, i), _copy_dir(s, label, j)),
                            _pair_dir(s, label, i, j),
                            label=f"seed {s} {p} pair {i}-{j}",
                        )
                    )
            if config.successive:
                rounds = [int(p[len("round_") :]) for p in _points(config, s)]
                for r0, r1 in zip(rounds, rounds[1:]):
                    pairs.append(
                        Unit(
                            "lth_sparse.pipelines.instability:pair_unit",
                            PairSpec(
                                config,
                                s,
                                f"{_source_point(r0)}-{_source_point(r1)}",
                                _source_point(r0),
                                _source_point(r1),
                                kind="successive",
                            ),
                            f"seed_{s}/successive/{_source_point(r0)}_{_source_point(r1)}/pair",
                            label=f"seed {s} rounds {r0} -> {r1}",
                        )
                    )
        stages = [stage for stage in (trunks, copies, pairs) if stage]
        if config.search is not None:
            stages.append(
                [
                    Unit(
                        "lth_sparse.pipelines.instability:search_unit",
                        SearchSpec(config),
                        "search",
                        label=f"search over {config.search}s",
                    )
                ]
            )
        return stages

    def summary_inputs(self, config: InstabilityConfig) -> list[Path]:
        """With ``source``: its rounds' results, which the summary reads."""
        return result_files(config.source) if config.source is not None else []

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        run_dir = Path(run_dir)
        saved, config = self.saved_config(run_dir)
        steps = Steps(run_dir)
        summary = {
            "kind": self.kind,
            "hash": saved.get("hash"),
            "config": dataclasses.asdict(config),
            "seeds": list(config.seed_list()),
            "threshold": config.threshold,
            "bn": config.bn,
            "path_precision": config.path_precision,
            "convention": "alpha = 0 is the first copy (or the earlier round), alpha = 1 the second",
            "points": [],
            "successive": [],
        }
        source_rounds = {}
        if config.imp_rounds is not None:
            for s in config.seed_list():
                for p in _points(config, s):
                    done = run_dir / "imp" / f"seed_{s}" / p / "done.json"
                    if done.exists():
                        source_rounds.setdefault(int(p[len("round_") :]), []).append(read_done(done))
        elif config.source is not None:
            try:
                for s in config.seed_list():
                    for result in round_results(config.source, s):
                        source_rounds.setdefault(result["round"], []).append(result)
            except (OSError, ConfigMismatch, KeyError):
                source_rounds = {}
        dense_accuracy = (
            over_seeds([x["test_accuracy"] for x in source_rounds[0]])["mean"] if 0 in source_rounds else None
        )
        labels = (
            list(config.rewind_points)
            if not _tickets(config)
            else sorted({p for s in config.seed_list() for p in _points(config, s)})
        )
        for p in labels:
            found = []
            for s in config.seed_list():
                for i, j in itertools.combinations(range(config.copies), 2):
                    name = _pair_dir(s, _point_label(p), i, j)
                    if steps.is_done(name):
                        found.append(steps.result(name))
            if not found:
                continue
            summary["points"].append(_point_row(p, found, config, steps, source_rounds, dense_accuracy))
        results = self.unit_results(run_dir, config)
        summary["successive"] = _successive_rows([result for name, result in results.items() if "/successive/" in name])
        if config.drop_most_forgotten is not None:  # as the copies record it (no data loaded here)
            copies = [result for name, result in results.items() if PurePosixPath(name).name.startswith("copy_")]
            if copies:
                summary["dropped_examples"] = copies[0]["dropped_examples"]
        if steps.is_done("search"):
            summary["search"] = steps.result("search")
        summary = self.write_summary(run_dir, config, summary)
        if plots and (summary["points"] or summary["successive"]):
            from lth_sparse.plots import plot_instability

            plot_instability(summary, run_dir / "plots")
        return summary

    def report(self, summary: dict) -> list[str]:
        lines = [
            f"error barriers on the test set (mean +- std over seeds x pairs; stable: under "
            f"{100 * summary['threshold']:.1f} points; bn {summary['bn']}):",
            f"  {'point':<14}{'iteration':>10}{'barrier':>18}{'train barrier':>18}{'end errors':>18}{'stable':>8}",
        ]
        for row in summary["points"]:
            b, t = row["test_error_barrier"], row["train_error_barrier"]
            lines.append(
                f"  {row['point']:<14}{row.get('iteration', '-')!s:>10}"
                f"{100 * b['mean']:>10.2f} +- {100 * b['std']:<4.2f}{100 * t['mean']:>10.2f} +- "
                f"{100 * t['std']:<4.2f}{100 * row['end_error']['mean']:>17.2f}%{'yes' if row['stable'] else 'no':>8}"
            )
        for row in summary["points"]:
            if "forgetting_events" in row:
                lines.append(
                    f"  {row['point']}: {row['forgetting_events']['mean']:.3f} forgetting events per "
                    f"example, {100 * row['unforgettable']['mean']:.1f}% unforgettable, convergence speed "
                    + (f"{row['convergence_speed']['mean']:.3f}" if "convergence_speed" in row else "-")
                    + f", test accuracy {100 * row['test_accuracy']['mean']:.2f}% (over copies)"
                )
        for row in summary["successive"]:
            lines.append(
                f"  rounds {row['rounds']}: barrier between the trained tickets "
                f"{100 * row['test_error_barrier']['mean']:.2f} points"
            )
        if "search" in summary:
            s = summary["search"]
            lines.append(
                f"earliest stable rewind point: {s['unit']} {s['earliest_stable']} (iteration "
                f"{s['earliest_stable_iteration']}) after {len(s['probes'])} probes"
                + (f"; monotonicity contradicted by {s['contradictions']}" if s["contradictions"] else "")
            )
        return lines


def _point_row(p: str, found: list[dict], config, steps: Steps, source_rounds: dict, dense_accuracy) -> dict:
    row = {"point": p, "pairs": len(found)}
    for key in ("test_error_barrier", "train_error_barrier", "test_loss_barrier", "train_loss_barrier"):
        row[key] = over_seeds([f[key] for f in found])
    row["end_error"] = over_seeds([e for f in found for e in f["test_error_ends"]])
    row["stable"] = row["test_error_barrier"]["mean"] < config.threshold
    row["stable_pairs"] = sum(bool(f["stable"]) for f in found)
    alphas = found[0]["path"]["alphas"]
    row["alphas"] = alphas
    for split in ("test", "train"):
        curves = torch.tensor([f["path"]["curves"][split]["error"] for f in found], dtype=torch.float64)
        row[f"{split}_error_curve"] = curves.mean(0).tolist()
        row[f"{split}_error_curve_std"] = (curves.std(0) if len(found) > 1 else torch.zeros_like(curves[0])).tolist()
    first = found[0]
    copy_name = first["a"]
    if steps.is_done(copy_name):
        row["iteration"] = steps.result(copy_name)["start"]
        row["sparsity"] = steps.result(copy_name)["sparsity"]
    copies = [
        steps.result(name) for name in sorted({f[end] for f in found for end in ("a", "b")}) if steps.is_done(name)
    ]
    if copies:
        row["test_accuracy"] = over_seeds([x["test_accuracy"] for x in copies])
    for key in ("forgetting_events", "unforgettable", "never_learned", "convergence_speed"):
        values = [x[key] for x in copies if key in x and x[key] == x[key]]  # NaN: no drop to measure
        if values:
            row[key] = over_seeds(values)
    if p.startswith("round_") and source_rounds:
        r = int(p[len("round_") :])
        accs = [x["test_accuracy"] for x in source_rounds.get(r, [])]
        if accs:
            row["ticket_test_accuracy"] = over_seeds(accs)["mean"]
            row["winning"] = dense_accuracy is not None and row["ticket_test_accuracy"] >= dense_accuracy
    return row


def _successive_rows(found: list[dict]) -> list[dict]:
    rows = []
    for point in sorted({f["point"] for f in found}):
        mine = [f for f in found if f["point"] == point]
        rows.append(
            {
                "rounds": point,
                "pairs": len(mine),
                "test_error_barrier": over_seeds([f["test_error_barrier"] for f in mine]),
                "train_error_barrier": over_seeds([f["train_error_barrier"] for f in mine]),
                "masks": mine[0]["path"]["masks"],
            }
        )
    return rows


INSTABILITY = register_pipeline(InstabilityPipeline())


run = INSTABILITY.run
