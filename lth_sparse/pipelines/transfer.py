"""Ticket transfer across data sets and optimizers: Morcos et al. (2019), "One ticket to win them all".

Every round of a *source* IMP run (any data set, model, optimizer) is a ticket; this pipeline
trains each on one or more *target* configurations (another data set, derived task or
optimizer) and compares it with the paper's controls. One unit per (seed, source round,
target, ticket kind), all independent (one stage): ``seed_S/TARGET/round_RR/KIND/``.

A ticket kind is a (weights, mask) pair, named ``WEIGHTS-MASK``:

- weights: ``rewind``, the source's rewind state (late resetting: the weights at the source's
  rewind iteration, e.g. epoch 1, the paper's choice for its small data sets), or ``fresh``, a
  new draw from the initialisation distribution (the model's initialiser, another seed);
- mask: ``preserved`` (the ticket's), ``local`` (permuted within each layer: every layer keeps
  its count exactly) or ``global`` (permuted across all layers: only the total is kept).

``rewind-preserved`` is the transferred winning ticket; ``fresh-global`` is the paper's *random
ticket*, its primary comparison (Section 3); Appendix A.2 compares the three masks with fresh
weights (``fresh-preserved``, ``fresh-local``, ``fresh-global``); IMP's own random-mask control
is ``rewind-local``.

Readings of the paper, stated:

- The output layer is left out of the ticket (Section 3: "we simply excluded this layer from the
  winning ticket and randomly reinitialized it"; ``--output-layer redraw``, the default): it is dense,
  drawn afresh from the model's initialiser (one draw per seed, source and round, shared by every
  ticket kind, so the kinds differ only in the other layers), sized to the target's classes, and
  never pruned or permuted by the source's mask; the masks are permuted over the other layers only.
  ``--output-layer keep`` carries it like every other layer (the source's mask, its rewind weights
  for the ``rewind`` kinds, permuted with the others), where source and target have as many classes.
- A target is brought to the source's input shape (``:shape=`` of :mod:`lth_sparse.data.derived`):
  the paper's VGG/ResNet pool globally before the classifier, so any input size fits them; the
  models here (LeNet-300-100, LeNet-5, Conv-N) have fixed input sizes, so the images are resized.
- Every ticket kind trains the target's full schedule (iteration 0 to the end) with the target's
  hyperparameters: the training options, which default to the source run's (so ``--target
  TASK`` alone changes only the data), under ``--preset`` and the flags (``--preset morcos-adam``
  trains with the paper's Adam: the optimizer transfer of its Section 4.3).
- The x axis is the source ticket's fraction of pruned weights (all its layers, as the source
  run reports it); the trained network's own sparsity (its output layer dense) is stored beside.

``--target-ticket RUN`` names an IMP run on a target (its ``dataset`` must be that target as
given): its rounds are the reference line (the target's own tickets) and the *transfer gap*
(transferred minus the target's own ticket at the same round) is reported.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lth_sparse.config import option, split_items
from lth_sparse.data.derived import with_options
from lth_sparse.experiment import check_device, draw_model
from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks, masked_weights
from lth_sparse.pipelines.base import Pipeline, register_pipeline
from lth_sparse.pipelines.common import (
    DERIVED_TASKS,
    MORCOS_TRAINING,
    CommonConfig,
    over_seeds,
    parse_seeds,
    stack_key,
)
from lth_sparse.pipelines.steps import MaskedTraining, shared_dataset, train_masked_grouped
from lth_sparse.runs import ConfigMismatch, Steps, check_run
from lth_sparse.stats import closest_by_density
from lth_sparse.tickets import (
    finished_rounds,
    imp_run_config,
    load_ticket,
    result_files,
    round_results,
    run_seeds,
    training_options,
)
from lth_sparse.train import TrainConfig
from lth_sparse.units import Unit

WEIGHTS = ("rewind", "fresh")
MASK_KINDS = ("preserved", "local", "global")
TICKETS = tuple(f"{w}-{m}" for w in WEIGHTS for m in MASK_KINDS)
DEFAULT_TICKETS = ("rewind-preserved", "fresh-global")
TICKET_TEXT = {
    "rewind-preserved": "transferred ticket (rewind weights, its mask)",
    "rewind-local": "rewind weights, mask permuted per layer",
    "rewind-global": "rewind weights, mask permuted globally",
    "fresh-preserved": "fresh weights, its mask",
    "fresh-local": "fresh weights, mask permuted per layer",
    "fresh-global": "random ticket (fresh weights, mask permuted globally)",
}
PRESETS = MORCOS_TRAINING  # the training part of the IMP presets: a transfer prunes nothing
OUTPUT_LAYER = ("redraw", "keep")


def parse_tickets(value) -> tuple[str, ...]:
    """``--tickets``: kinds ``WEIGHTS-MASK`` (comma- or space-separated), or ``all`` for the six."""
    items = split_items(value)
    if items == ["all"]:
        return TICKETS
    unknown = [t for t in items if t not in TICKETS]
    if unknown or not items:
        raise ValueError(
            f"ticket kinds are WEIGHTS-MASK with weights {list(WEIGHTS)} and masks {list(MASK_KINDS)} "
            f"(or all), got {unknown or items}"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"ticket kinds repeat: {items}")
    return tuple(items)


@dataclass(frozen=True)
class TransferConfig(CommonConfig):
    """A transfer experiment: the target's training (the fields of :class:`TrainConfig`; their defaults are the
    source run's when the config is made by :func:`lth_sparse.config.config_from_options`), and these."""

    PRESETS: ClassVar[dict] = PRESETS

    sources: tuple[str, ...] = option(
        (),
        "the source IMP run directories (their rounds are the tickets); several make the transfer matrix",
        flag="source",
        metavar="RUN_DIR",
    )
    targets: tuple[str, ...] = option(
        (),
        "the target tasks: data sets or derived tasks, e.g. fashion-mnist:half=b "
        "digits fashion-mnist:classes=0,1,2,3,4",
        flag="target",
        metavar="TASK",
    )
    tickets: tuple[str, ...] = option(
        DEFAULT_TICKETS,
        "ticket kinds WEIGHTS-MASK (weights rewind|fresh, mask preserved|local|global), or all",
        parse=parse_tickets,
        metavar="KIND",
    )
    rounds: tuple[int, ...] = option(
        (), "source rounds to transfer", metavar="R", default_text="every round the source has finished"
    )
    output_layer: str = option(
        "redraw",
        "the output layer: redraw (the paper's reading: left out of the ticket, drawn afresh from the model's "
        "initialiser and trained dense) or keep (in the ticket like every other layer: the source's mask and, for "
        "the rewind kinds, its rewind weights; the target must have the source's number of classes)",
        choices=OUTPUT_LAYER,
    )
    target_tickets: tuple[str, ...] = option(
        (),
        "IMP runs on the targets (their dataset names a target as given "
        "here): the target's own tickets, the reference line",
        flag="target-ticket",
        metavar="RUN_DIR",
    )
    target_optimizer: str | None = option(
        None,
        "train the targets with Morcos et al.'s settings of this optimizer "
        "(sgd: lr 0.1, momentum 0.9, weight decay 1e-4; adam: lr 3e-4, betas "
        "0.9/0.999, weight decay 1e-4; Section 4.3), the source's epochs, "
        "batch and schedule kept",
        choices=("sgd", "adam"),
        default_text="the source's optimizer",
    )
    augment: str | None = option(
        None, "the targets' training augmentation: none, flip, cropP or flip+cropP", default_text="each data set's own"
    )
    preset: str | None = option(
        None,
        "the target's training recipe of Morcos et al. 2019 (morcos: SGD lr 0.1, "
        "momentum 0.9, weight decay 1e-4, batch 512, 160 epochs, lr / 10 at 80 and "
        "120; morcos-adam: Adam lr 3e-4, betas 0.9/0.999, weight decay 1e-4); options "
        "given override it",
        choices=tuple(PRESETS),
    )
    seed: int = option(0, "the seed of the targets' split, the fresh draws, the permutations and the data order")
    seeds: tuple[int, ...] = option(
        (),
        "the seeds (a count or a list): seed S transfers each source's seed S (a source of one seed serves every seed)",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="the first source's seeds",
    )
    at: tuple[float, ...] = option(
        (0.5, 0.9, 0.98),
        "fractions of weights pruned at which the transfer matrix is read (the transferred round closest to "
        "each, if within one IMP round of it; else the cell is empty)",
        metavar="F",
    )
    train_size: int | None = option(None, "train on a seeded subset of N examples of each target", metavar="N")
    val_fraction: float = option(0.2, "share of each target's training set held out for validation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sources:
            raise ValueError("a transfer needs --source RUN_DIR, an IMP run")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"the sources must be distinct, got {list(self.sources)}")
        if any(not 0 <= a < 1 for a in self.at):
            raise ValueError(f"--at takes fractions of weights pruned in [0, 1), got {list(self.at)}")
        if not self.targets:
            raise ValueError("a transfer needs at least one --target TASK")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"the targets must be distinct, got {list(self.targets)}")
        parse_tickets(self.tickets)
        if self.output_layer not in OUTPUT_LAYER:
            raise ValueError(f"--output-layer is one of {list(OUTPUT_LAYER)}, got {self.output_layer!r}")
        if any(r < 0 for r in self.rounds) or len(set(self.rounds)) != len(self.rounds):
            raise ValueError(f"rounds must be distinct and >= 0, got {list(self.rounds)}")
        if self.augment is not None:
            from lth_sparse.data.derived import parse_task

            parse_task(f"x:augment={self.augment}")

    @classmethod
    def inherited_options(cls, options: dict) -> dict:
        """The (first) source run's training options: what the target trains with unless a preset or an option
        says otherwise (:func:`lth_sparse.config.config_from_options` puts them under both)."""
        sources = options.get("sources")
        if not sources:
            return {}
        inherited = training_options(imp_run_config(str(sources if isinstance(sources, str) else list(sources)[0])))
        optimizer = options.get("target_optimizer")
        if optimizer is not None:  # the optimizer's own settings over the source's; epochs, batch, schedule kept
            recipe = MORCOS_TRAINING["morcos" if optimizer == "sgd" else "morcos-adam"]
            inherited.update(
                {
                    k: recipe[k]
                    for k in ("optimizer", "lr", "momentum", "nesterov", "betas", "weight_decay")
                    if k in recipe
                }
            )
        return inherited

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.training_options())


# --- what the plan needs from the sources ------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a transfer reads of a source run: its config, seeds, finished rounds and input shape."""

    run: str
    config: dict
    seeds: tuple[int, ...]
    rounds: dict[int, tuple[int, ...]]  # per seed, the finished rounds
    input_shape: tuple[int, ...]


def read_source(run: str, data_dir: str | None = None) -> Source:
    """The source run ``run``, checked: an IMP run with finished rounds."""
    saved = imp_run_config(run)
    path = Path(run).expanduser()
    seeds = tuple(run_seeds(path))
    rounds = {s: tuple(finished_rounds(path, s)) for s in seeds}
    if not seeds or not any(rounds.values()):
        raise ValueError(f"source {run}: no finished IMP round yet (run it first: lth-sparse imp ... --out {run})")
    first = min(s for s in seeds if rounds[s])
    dense = path / f"seed_{first}" / "round_00" / "done.json"
    shape = read_done(dense).get("input_shape") if dense.exists() else None
    if shape is None:  # runs made before IMP recorded it: the source data set's own
        shape = shared_dataset(
            saved["dataset"],
            data_dir=data_dir,
            device="cpu",
            val_fraction=saved.get("val_fraction", 0.2),
            seed=saved.get("seed", 0),
            train_size=saved.get("train_size"),
        ).input_shape
    return Source(run, saved, seeds, rounds, tuple(shape))


def seed_list(config: TransferConfig, sources: list[Source]) -> tuple[int, ...]:
    return config.seeds or sources[0].seeds


def seed_pairs(config: TransferConfig, source: Source, seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    """(seed, the source's seed it transfers) per seed: seed S takes the source's seed S; a source of one seed
    serves every seed (then the seeds vary only the target side: fresh draws, permutations, data order)."""
    if len(source.seeds) == 1:
        return [(s, source.seeds[0]) for s in seeds]
    missing = [s for s in seeds if s not in source.seeds]
    if missing:
        raise ValueError(
            f"source {source.run} has seeds {list(source.seeds)}, not {missing}: seed S transfers the "
            "source's seed S (a source of one seed serves any seed)"
        )
    return [(s, s) for s in seeds]


def target_names(config: TransferConfig, shape: tuple[int, ...]) -> tuple[str, ...]:
    """The targets as loaded for a source of input ``shape``: brought to its image shape (``:shape=``, a no-op
    where it is theirs), with ``augment`` where the target does not set its own."""
    image = "x".join(map(str, shape)) if len(shape) == 3 else None
    return tuple(with_options(t, shape=image, augment=config.augment) for t in config.targets)


def _unit_dir(seed: int, source: int, target: int, round_: int, kind: str) -> str:
    return f"seed_{seed}/source_{source}/target_{target}/round_{round_:02d}/{kind}"


# --- the unit -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferSpec:
    """What a transfer unit trains: ticket kind ``ticket`` of round ``round`` of seed ``source_seed`` of source
    ``source`` (its run directory: ``run``), on target ``target`` (as loaded: ``task``), with seed ``seed``."""

    config: TransferConfig
    seed: int
    source: int
    run: str
    source_seed: int
    round: int
    target: int
    task: str
    ticket: str


def _load_target(c: TransferConfig, task: str, device):
    return shared_dataset(
        task, data_dir=c.data_dir, device=device, val_fraction=c.val_fraction, seed=c.seed, train_size=c.train_size
    )


def ticket_start(spec: TransferSpec, device="cpu"):
    """(model, data, state, masks, facts) of one transfer unit before training: the target's model (the source's
    architecture with the target's classes), its data, the state it starts from and the masks it trains under.

    The ticket's layers are every masked layer but the output layer under ``output_layer="redraw"`` (that layer
    starts from the model's initialiser, one draw per seed, source and round shared by the ticket kinds, and
    trains dense), every masked layer under ``"keep"`` (the source's output layer, its mask and weights, carried
    like the others: a target of another class count is refused). The ticket's layers start from the source's
    rewind state (``rewind`` kinds) or a fresh draw (``fresh``), under the source's mask, permuted over the
    ticket's layers for the ``local`` and ``global`` kinds."""
    c = spec.config
    weights, mask_kind = spec.ticket.split("-")
    ticket = load_ticket(spec.run, spec.round, seed=spec.source_seed, device=device)
    data = _load_target(c, spec.task, device)
    # one draw per (seed, source, round) of the output layer, shared by the ticket kinds; another for fresh weights
    draw = spec.seed * 7919 + 1_000_003 * spec.source + spec.round
    model = draw_model(
        ticket.config["model"],
        data.input_shape,
        data.num_classes,
        ticket.config.get("model_options"),
        seed=draw + 17,
        device=device,
    )
    names = list(masked_weights(model))
    head = names[-1]
    head_prefix = head[: -len("weight")]
    keep = c.output_layer == "keep"
    start = model.state_dict()
    if keep and head in ticket.masks and ticket.masks[head].shape != start[head].shape:
        raise ValueError(
            f"--output-layer keep carries the source's output layer {head} {tuple(ticket.masks[head].shape)}, "
            f"which does not fit target {spec.task!r}'s {tuple(start[head].shape)} ({data.num_classes} classes): "
            "a target with another number of classes needs --output-layer redraw"
        )
    if weights == "fresh":
        source_state = draw_model(
            ticket.config["model"],
            data.input_shape,
            data.num_classes,
            ticket.config.get("model_options"),
            seed=draw + 100_003,
            device=device,
        ).state_dict()
    else:
        source_state = ticket.rewind_state
    carried = {k: v for k, v in source_state.items() if keep or not k.startswith(head_prefix)}
    for key, value in carried.items():
        if key.endswith(".mask"):
            continue
        if key not in start or start[key].shape != value.shape:
            have = tuple(start[key].shape) if key in start else "no such tensor"
            raise ValueError(
                f"the source's {key} {tuple(value.shape)} does not fit the target's model ({have}): "
                f"target {spec.task!r} must have the source's input shape"
            )
        start[key] = value.clone()
    in_ticket = names if keep else names[:-1]
    source_masks = Masks({n: m for n, m in ticket.masks.items() if n in in_ticket})
    if set(source_masks) != set(in_ticket):
        raise ValueError(f"the source's masks ({sorted(ticket.masks)}) do not fit the target's model ({names})")
    generator = torch.Generator().manual_seed(draw * 2 + (mask_kind == "global"))
    ticket_masks = (
        source_masks
        if mask_kind == "preserved"
        else source_masks.permuted("layer" if mask_kind == "local" else "global", generator)
    )
    masks = Masks({n: ticket_masks[n].to(device) for n in ticket_masks})
    if not keep:
        masks = Masks({**masks, head: torch.ones_like(start[head], dtype=torch.bool)})
    facts = {
        "source_sparsity": ticket.masks.sparsity(),
        "source_density": ticket.masks.density(),
        "source_test_accuracy": ticket.result.get("test_accuracy"),
        "rewind_iteration": ticket.rewind_iteration,
        "body_sparsity": Masks({n: m for n, m in masks.items() if n != head}).sparsity(),
        "output_layer": head,
    }
    return model, data, start, masks, facts


def transfer_unit(spec: TransferSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The transfer pipeline's unit: one ticket kind of one source round trained on one target."""
    training, facts = _training(spec, directory, progress)
    return _result(spec, facts, training.masks, training.run(), log)


def transfer_units(
    specs: list[TransferSpec], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`transfer_unit` of several units of one source and one target (other seeds, rounds and ticket
    kinds), trained together as one stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`)."""
    started = [_training(spec, directory, progress) for spec, directory in zip(specs, directories)]
    metrics = train_masked_grouped([training for training, _ in started])
    return [
        _result(spec, facts, training.masks, m, log)
        for spec, (training, facts), m, log in zip(specs, started, metrics, logs)
    ]


def _training(spec: TransferSpec, directory: Path, progress: bool | None) -> tuple[MaskedTraining, dict]:
    """What one transfer unit trains, and the facts of its ticket (see :func:`ticket_start`)."""
    c = spec.config
    device = check_device(c.device)
    model, data, state, masks, facts = ticket_start(spec, device)
    training = MaskedTraining(
        model,
        data,
        c.train_config(),
        masks,
        state,
        directory,
        seed=spec.seed,
        start=0,
        progress=progress,
        desc=f"round {spec.round} {spec.ticket} on {c.targets[spec.target]}",
    )
    return training, facts


def _result(spec: TransferSpec, facts: dict, masks: Masks, metrics: dict, log: Callable[[str], None]) -> dict:
    """A transfer unit's ``done.json`` from its training's metrics; its line logged."""
    result = {
        "seed": spec.seed,
        "source": spec.source,
        "source_seed": spec.source_seed,
        "round": spec.round,
        "target": spec.target,
        "task": spec.config.targets[spec.target],  # as given: the names of logs and summaries
        "ticket": spec.ticket,
        **facts,
        "layer_sparsity": masks.layer_sparsity(),
        **{
            k: metrics[k]
            for k in (
                "test_accuracy",
                "test_loss",
                "val_accuracy",
                "val_loss",
                "best_val_iteration",
                "iterations",
                "train_seconds",
                "sparsity",
            )
        },
    }
    log(
        f"seed {spec.seed} source {spec.source} round {spec.round} ({100 * facts['source_density']:.2f}% of its "
        f"weights left) {spec.ticket} on {result['task']}: test accuracy {100 * metrics['test_accuracy']:.2f}%"
    )
    return result


# --- the target's own tickets (the reference line) ----------------------------------------------------------


def own_tickets(run_dir: str) -> dict:
    """An IMP run's rounds as the reference line: per round, test accuracy and density over its seeds."""
    config = imp_run_config(run_dir)
    per_seed = {s: round_results(run_dir, s) for s in run_seeds(Path(run_dir).expanduser())}
    count = min((len(v) for v in per_seed.values()), default=0)
    rounds = []
    for r in range(count):
        rows = [v[r] for v in per_seed.values()]
        rounds.append(
            {
                "round": rows[0]["round"],
                "density": over_seeds([x["density"] for x in rows])["mean"],
                "sparsity": over_seeds([x["sparsity"] for x in rows])["mean"],
                "test_accuracy": over_seeds([x["test_accuracy"] for x in rows]),
            }
        )
    return {
        "run": str(run_dir),
        "dataset": config["dataset"],
        "seeds": sorted(per_seed),
        "epochs": config["epochs"],
        "optimizer": config["optimizer"],
        "rounds": rounds,
    }


def _matching_target(config: TransferConfig, run_dir: str) -> int:
    dataset = imp_run_config(run_dir)["dataset"].split(":shape=")[0]
    for i, t in enumerate(config.targets):
        if dataset == t.split(":shape=")[0]:
            return i
    raise ValueError(
        f"--target-ticket {run_dir} is an IMP run on {dataset!r}, which is none of the targets {list(config.targets)}"
    )


def _gaps(transferred: list[dict], own: list[dict]) -> list[dict]:
    """Per transferred round, its accuracy minus the target's own ticket's at the closest density (the same round
    where both prune alike)."""
    out = []
    for row in transferred if own else []:
        match = closest_by_density(own, row["source_density"])
        out.append(
            {
                "round": row["round"],
                "own_round": match["round"],
                "source_density": row["source_density"],
                "own_density": match["density"],
                "gap": row["test_accuracy"]["mean"] - match["test_accuracy"]["mean"],
            }
        )
    return out


# --- the pipeline -------------------------------------------------------------------------------------------


class TransferPipeline(Pipeline):
    """Ticket transfer as a pipeline: one unit per (seed, source, round, target, ticket kind).

    The summary holds ``kind`` (``"transfer"``), ``hash``, ``config``, ``sources`` (each: its run, data set,
    model, optimizer, rewind point), ``targets`` (each: its name as given, and with ``--target-ticket``
    ``own``: that IMP run's rounds, the reference line), ``seeds``, ``pairs`` (per source and target: ``task``
    as loaded; ``tickets``, per ticket kind and source round, ``source_sparsity`` / ``source_density`` (the x
    axis), ``sparsity`` (the trained network's, its output layer dense) and ``test_accuracy`` over the seeds
    (``mean``/``std``/``min``/``max``/``n``); ``gap``: per round, the transferred ticket's mean accuracy minus
    the own ticket's at the closest density) and ``matrix`` (at each ``--at`` fraction pruned, per source and
    target, the source round read, its ``density``, the transferred ticket's accuracy there and the gap: all
    ``None`` where no transferred round lies within one IMP round of the fraction, see :func:`matrix_round`).
    """

    kind = "transfer"
    summary_format = 2  # 2: a matrix cell says its round and density and borrows no far round, the targets as given
    config_class = TransferConfig
    help = "train an IMP run's tickets on other data sets or optimizers, beside the random-ticket controls"
    description = (
        "Morcos et al. (2019), 'One ticket to win them all'. Every finished round of --source (an IMP "
        "run) is trained on every --target: the source's rewind (late-resetting) weights under its mask, "
        "the output layer left out of the ticket, re-initialised dense and sized to the target's classes "
        "(--output-layer keep: in the ticket like the other layers); "
        "beside it the controls named by their (weights, mask) pair: fresh-global is the paper's random "
        "ticket, fresh-preserved/-local/-global its Appendix A.2. One unit per (seed, round, target, "
        "kind). The target trains with the source run's training options unless --target-optimizer, "
        "--preset or the flags say otherwise (--target-optimizer adam: a ticket found with SGD trained "
        "with Adam). Several --source runs make the transfer matrix (--at: each cell reads the transferred "
        "round nearest its fraction pruned, and is empty where none lies within one IMP round of it). "
        "Results go to --out: "
        "seed_S/source_K/target_T/round_RR/KIND/, summary.json and plots/. Re-running resumes."
    )

    @property
    def epilog(self) -> str:
        from lth_sparse.data import available_datasets

        return (
            f"Targets: data sets ({', '.join(available_datasets())}) or derived tasks {DERIVED_TASKS}; images are "
            "brought to the source's input shape. Every "
            "option can also come from --config FILE; flags override it and --preset, which override the "
            "source's training options."
        )

    def check(self, config: TransferConfig) -> None:
        sources = [read_source(run, config.data_dir) for run in config.sources]
        for source in sources:
            check_run(source.run).raise_if_damaged()  # a damaged ticket is named before anything is written
        seeds = seed_list(config, sources)
        device = check_device(config.device)
        for target_ticket in config.target_tickets:
            _matching_target(config, target_ticket)
        for k, source in enumerate(sources):
            pairs = seed_pairs(config, source, seeds)
            for _, s in pairs:
                missing = [r for r in config.rounds if r not in source.rounds[s]]
                if missing:
                    raise ValueError(
                        f"source {source.run} seed {s} has not finished rounds {missing}; finished: "
                        f"{list(source.rounds[s])}"
                    )
            tasks = target_names(config, source.input_shape)
            for task in tasks:
                data = _load_target(config, task, "cpu")
                if tuple(data.input_shape) != source.input_shape:
                    raise ValueError(
                        f"target {task!r} holds inputs of shape {tuple(data.input_shape)}; source "
                        f"{source.run}'s model takes {source.input_shape}, and vectors cannot be resized"
                    )
            seed, s = pairs[0]
            round_ = (config.rounds or source.rounds[s])[0]
            for t, task in enumerate(tasks):  # the source's ticket fits each target's model
                ticket_start(TransferSpec(config, seed, k, source.run, s, round_, t, task, config.tickets[0]), device)

    def stacked_model(self, config: TransferConfig):
        """The first source's model on the first target (a stack holds one source's tickets on one target)."""
        sources = [read_source(run, config.data_dir) for run in config.sources]
        if not sources:
            return None
        data = _load_target(config, target_names(config, sources[0].input_shape)[0], "cpu")
        saved = sources[0].config
        return draw_model(saved["model"], data.input_shape, data.num_classes, saved.get("model_options"), seed=0)

    def plan(self, config: TransferConfig) -> list[list[Unit]]:
        sources = [read_source(run, config.data_dir) for run in config.sources]
        seeds = seed_list(config, sources)
        units = []
        for k, source in enumerate(sources):
            tasks = target_names(config, source.input_shape)
            for seed, source_seed in seed_pairs(config, source, seeds):
                for r in config.rounds or source.rounds[source_seed]:
                    for t, task in enumerate(tasks):
                        for kind in config.tickets:
                            spec = TransferSpec(config, seed, k, source.run, source_seed, r, t, task, kind)
                            units.append(
                                Unit(
                                    "lth_sparse.pipelines.transfer:transfer_unit",
                                    spec,
                                    _unit_dir(seed, k, t, r, kind),
                                    label=f"seed {seed} source {k} round {r} {kind} on {task}",
                                    stacked="lth_sparse.pipelines.transfer:transfer_units",
                                    stack_key=(stack_key(config), k, task),  # one source's model, one target
                                )
                            )
        return [units]

    def summary_inputs(self, config: TransferConfig) -> list[Path]:
        """The source runs' and the target tickets' results, which the summary reads."""
        return [f for run in (*config.sources, *config.target_tickets) for f in result_files(run)]

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        run_dir = Path(run_dir)
        saved, config = self.saved_config(run_dir)
        steps = Steps(run_dir)
        results = [
            steps.result(str(d.relative_to(run_dir)))
            for d in sorted(run_dir.glob("seed_*/source_*/target_*/round_*/*"))
            if (d / "done.json").exists()
        ]
        summary = {
            "kind": self.kind,
            "hash": saved.get("hash"),
            "config": dataclasses.asdict(config),
            "sources": [],
            "targets": [{"target": t, "name": name} for t, name in enumerate(config.targets)],
            "seeds": sorted({r["seed"] for r in results}),
            "pairs": [],
        }
        for k, run in enumerate(config.sources):
            entry = {"source": k, "run": run}
            try:
                source_config = imp_run_config(run)
                entry.update(
                    dataset=source_config["dataset"],
                    model=source_config["model"],
                    optimizer=source_config["optimizer"],
                    rewind=source_config["rewind"],
                )
            except (OSError, ConfigMismatch):
                entry["dataset"] = None  # the source moved: the units' results still hold everything plotted
            summary["sources"].append(entry)
        own = {}
        for run in config.target_tickets:
            try:
                own[_matching_target(config, run)] = own_tickets(run)
            except (OSError, ConfigMismatch, ValueError):
                continue
        for t, entry in enumerate(summary["targets"]):
            if t in own:
                entry["own"] = own[t]
        for k, t in sorted({(r["source"], r["target"]) for r in results}):
            mine = [r for r in results if r["source"] == k and r["target"] == t]
            pair = {"source": k, "target": t, "task": config.targets[t], "tickets": {}}
            for kind in config.tickets:
                rows = []
                for r in sorted({x["round"] for x in mine if x["ticket"] == kind}):
                    found = [x for x in mine if x["ticket"] == kind and x["round"] == r]
                    rows.append(
                        {
                            "round": r,
                            "seeds": len(found),
                            "source_sparsity": over_seeds([x["source_sparsity"] for x in found])["mean"],
                            "source_density": over_seeds([x["source_density"] for x in found])["mean"],
                            "sparsity": over_seeds([x["sparsity"] for x in found])["mean"],
                            "test_accuracy": over_seeds([x["test_accuracy"] for x in found]),
                        }
                    )
                if rows:
                    pair["tickets"][kind] = rows
            if t in own:
                pair["gap"] = _gaps(pair["tickets"].get("rewind-preserved", []), own[t]["rounds"])
            summary["pairs"].append(pair)
        summary["matrix"] = _matrix(summary, config)
        # flat figures for a sweep's table: per kind, the first pair's mean test accuracy at its sparsest round
        for pair in summary["pairs"][:1]:
            for kind, rows in pair["tickets"].items():
                summary[f"test_accuracy_{kind.replace('-', '_')}_sparsest"] = rows[-1]["test_accuracy"]["mean"]
        summary = self.write_summary(run_dir, config, summary)
        if plots and results:
            from lth_sparse.plots import plot_transfer

            plot_transfer(summary, run_dir / "plots", TICKET_TEXT)
        return summary

    def report(self, summary: dict) -> list[str]:
        from lth_sparse.plots import short_task_names

        lines = []
        seeds = len(summary["seeds"])
        for pair in summary["pairs"]:
            kinds = list(pair["tickets"])
            source = summary["sources"][pair["source"]]
            target = summary["targets"][pair["target"]]
            lines.append(
                f"{source.get('dataset')} -> {short_task_names([pair['task']])[0]} "
                f"({'mean +- std over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}):"
            )
            head = f"  {'round':>5} {'pruned':>8}" + "".join(f"{k:>22}" for k in kinds)
            if "own" in target:
                head += f"{'own ticket':>22}{'gap':>8}"
            lines.append(head)
            by_round = {k: {row["round"]: row for row in rows} for k, rows in pair["tickets"].items()}
            gaps = {g["round"]: g for g in pair.get("gap", [])}
            own = {row["round"]: row for row in target.get("own", {}).get("rounds", [])}
            for r in sorted({r for rows in by_round.values() for r in rows}):
                first = next(rows[r] for rows in by_round.values() if r in rows)
                cells = [_pm(by_round[k][r]["test_accuracy"], seeds) if r in by_round[k] else "-" for k in kinds]
                line = f"  {r:>5} {100 * first['source_sparsity']:>7.2f}%" + "".join(f"{c:>22}" for c in cells)
                if "own" in target:
                    match = own.get(gaps[r]["own_round"]) if r in gaps else None
                    line += f"{_pm(match['test_accuracy'], 2) if match else '-':>22}"
                    line += f"{100 * gaps[r]['gap']:>+7.2f}" if r in gaps else f"{'-':>8}"
                lines.append(line)
        for m in summary["matrix"] if len(summary["pairs"]) > 1 else []:
            gap = m.get("gap") is not None
            lines.append(
                f"{'transfer gap, points' if gap else 'transferred ticket, test accuracy'} at {100 * m['at']:.0f}% "
                "pruned (rows: sources, columns: targets; in brackets the source round read and its fraction "
                f"pruned; -: no round transferred within one IMP round of it{' or no own ticket' if gap else ''}):"
            )
            for k, row in enumerate(m["gap"] if gap else m["accuracy"]):
                cells = []
                for t, v in enumerate(row):
                    if v is None:
                        cells.append("-")
                        continue
                    value = f"{100 * v:+.2f}" if gap else f"{100 * v:.2f}%"
                    cells.append(f"{value} (r{m['round'][k][t]}, {100 * (1 - m['density'][k][t]):.1f}%)")
                lines.append(f"  {str(summary['sources'][k].get('dataset')):<28}" + "".join(f"{c:>24}" for c in cells))
        return lines


def _matrix(summary: dict, config: TransferConfig) -> list[dict]:
    """At each ``config.at`` fraction pruned: per (source, target), the transferred round that reads it
    (:func:`matrix_round`: ``round``, and its ``density``, the source ticket's weights remaining), the transferred
    ticket's mean accuracy there and its gap to the target's own ticket (where ``--target-ticket`` gave one);
    ``None`` in every cell no transferred round is near enough to fill."""
    n_sources, n_targets = len(summary["sources"]), len(summary["targets"])
    pairs = {(p["source"], p["target"]): p for p in summary["pairs"]}
    out = []
    for at in config.at:
        accuracy = [[None] * n_targets for _ in range(n_sources)]
        gap = [[None] * n_targets for _ in range(n_sources)]
        rounds = [[None] * n_targets for _ in range(n_sources)]
        densities = [[None] * n_targets for _ in range(n_sources)]
        for (k, t), pair in pairs.items():
            row = matrix_round(pair["tickets"].get("rewind-preserved", []), 1 - at)
            if row is None:
                continue
            accuracy[k][t], rounds[k][t] = row["test_accuracy"]["mean"], row["round"]
            densities[k][t] = row["source_density"]
            gaps = {g["round"]: g["gap"] for g in pair.get("gap", [])}
            gap[k][t] = gaps.get(row["round"])
        has_gap = any(g is not None for row in gap for g in row)
        out.append(
            {
                "at": at,
                "round": rounds,
                "density": densities,
                "accuracy": accuracy,
                "gap": gap if has_gap else None,
            }
        )
    return out


def matrix_round(rows: list[dict], density: float) -> dict | None:
    """The transferred round (of ``rows``, one source's on one target) that fills the transfer matrix's cell at
    ``density`` (weights remaining): the round closest to it on a log scale, provided that it lies within one
    round of the source's IMP schedule of it, i.e. no further from it in log density than one round's pruning
    step (``-ln(density_R) / R`` at the last transferred round R: ``-ln(1 - fraction)`` for IMP's geometric
    schedule). With 20% pruned per round, a cell at 50% pruned takes round 3 (48.8% pruned) or round 4
    (59.0%), never round 2 (36.0%) or round 10 (89.3%). ``None`` where no transferred round is that near: the
    cell is left empty rather than filled from a ticket of another density."""
    if not rows:
        return None
    row = closest_by_density(rows, density, "source_density")
    last = max(rows, key=lambda r: r["round"])

    def log(d: float) -> float:
        return math.log(max(d, 1e-12))  # a density of 0 as closest_by_density reads it

    step = -log(last["source_density"]) / last["round"] if last["round"] else 0.0
    distance = abs(log(row["source_density"]) - log(density))
    return row if distance <= step * (1 + 1e-9) else None


def _pm(stats: dict, seeds: int) -> str:
    return f"{100 * stats['mean']:.2f}% +- {100 * stats['std']:.2f}" if seeds > 1 else f"{100 * stats['mean']:.2f}%"


TRANSFER = register_pipeline(TransferPipeline())


run = TRANSFER.run
