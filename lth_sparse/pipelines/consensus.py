"""Consensus ("pret-a-porter") tickets: Paganini & Forde (2020), Algorithm 1 and Sections 4.1-4.2.

From one initialisation (one seed, shared by every task: that sharing is what makes the
masks comparable), find a *bespoke* ticket on each of N tasks with IMP; the *pret-a-porter*
ticket keeps the weights every bespoke ticket of round ``intersect_round`` keeps (the
intersection of their masks; ``min_votes`` K relaxes it to the weights kept by at least K of
the N), with the shared initial weights. Then every ticket is retrained from scratch on every
task. Three stages, per seed:

1. one IMP run per task (``seed_S/bespoke_I/``, the IMP pipeline's unit: rounds in ``round_NN/``);
   ``rounds`` is how far each goes: far enough to hold a bespoke ticket of the consensus's
   sparsity, the comparison of the paper's Figure 6 (its LeNet: a consensus of ~85% sparsity,
   bespoke round 9);
2. the consensus (``seed_S/consensus/``): its masks, a random mask of the same per-layer
   sparsity (the control), and the analysis of the bespoke masks: the Jaccard distance matrix
   (total and per layer) at the intersected round, the mean pairwise distance over the rounds
   beside the distance independent masks of those densities would have, the per-layer count
   of weights kept by 0..N tasks, and the consensus's sparsity, effective sparsity (weights on
   no input-output path count as pruned) and the paper's own count (Appendix C: only weights
   cut off from the output; its Table 1 ``s_eff``);
3. one training per (ticket, task) (``seed_S/retrain/TICKET/task_I/``): the consensus ticket,
   the random control and the bespoke ticket of every task at the round closest to the
   consensus's sparsity, each from the shared initialisation under its mask, on each task.

Readings of the paper, stated: the tasks' inputs are brought to one shape (the first task's
unless ``input_shape`` is given; see :mod:`lth_sparse.data.derived`); where their class counts
differ, the output layer is left out of the consensus (kept dense) and sized per task, and a
bespoke mask's output layer is kept dense on a task of another class count. The random
control keeps the consensus's per-layer counts (``random_masks_like``). Tickets retrain for
the same epochs as the bespoke rounds, from iteration 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lth_sparse.config import option
from lth_sparse.data.derived import parse_task, with_options
from lth_sparse.integrity import read_done
from lth_sparse.masks import (
    Masks,
    distance_matrix,
    independent_jaccard_distance,
    jaccard_distance,
    masked_weights,
    overlap_counts,
    vote,
)
from lth_sparse.pipelines.base import Pipeline, register_pipeline
from lth_sparse.pipelines.common import DERIVED_TASKS, CommonConfig, over_seeds, parse_seeds, stack_key
from lth_sparse.pipelines.imp_rounds import PRUNERS, ImpConfig, ImpRun, imp_seed, imp_seeds, round_name
from lth_sparse.pipelines.steps import MaskedTraining, shared_dataset, train_masked_grouped
from lth_sparse.prune import SCOPES, effective_masks, output_connected_masks, random_masks_like
from lth_sparse.runs import Steps
from lth_sparse.stats import closest_by_density
from lth_sparse.units import Unit

PRESETS = {
    # Section 3 of the paper: SGD at a constant learning rate of 0.01, batch 32, 30 epochs, no regularisation;
    # Section 4.2.1: 2 rounds of 20% global unstructured magnitude pruning, rewound to the initial weights.
    # Appendix: "a horizontal flip and a random crop" at train time; the crop's padding is not given: 4 pixels
    # (the usual choice) is this reading.
    "paganini": dict(
        optimizer="sgd",
        lr=0.01,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        batch_size=32,
        epochs=30.0,
        schedule="constant",
        warmup_epochs=0.0,
        val_fraction=0.2,
        fraction=0.2,
        scope="global",
        importance="magnitude",
        intersect_round=2,
        augment="flip+crop4",
    ),
}
TICKETS = ("consensus", "random", "bespoke")


@dataclass(frozen=True)
class ConsensusConfig(CommonConfig):
    """A consensus-ticket experiment: the training hyperparameters of :class:`TrainConfig` (inherited), and these."""

    PRESETS: ClassVar[dict] = PRESETS

    tasks: tuple[str, ...] = option(
        (),
        "the N tasks (at least two): data sets or derived tasks, e.g. "
        "fashion-mnist:half=a fashion-mnist:permute=1 digits:shape=1x28x28",
        metavar="TASK",
    )
    input_shape: str | None = option(
        None, "the CxHxW every task's inputs are brought to", metavar="CxHxW", default_text="the first task's"
    )
    augment: str | None = option(
        None,
        "every task's training augmentation: none, flip, cropP or flip+cropP "
        "(a random crop from the image padded by P pixels)",
        default_text="each data set's own",
    )
    model: str = option("lenet300", "model name")
    model_options: tuple[tuple[str, object], ...] = option(
        (),
        "model option, e.g. width=512 for mlp (repeatable; in a --config file a mapping)",
        flag="model-option",
        metavar="KEY=VALUE",
    )
    rounds: int = option(
        9,
        "IMP rounds of each bespoke ticket: far enough to hold one of the consensus's sparsity (the paper's LeNet: 9)",
    )
    intersect_round: int = option(2, "the bespoke round whose masks are intersected (the paper: 2, ~36% sparse)")
    min_votes: int | None = option(
        None,
        "keep the weights kept by at least K of the N bespoke tickets",
        metavar="K",
        default_text="N: the intersection, the paper's",
    )
    fraction: float = option(0.2, "fraction of the remaining weights pruned per IMP round")
    scope: str = option(
        "global", "compare scores across all layers, or prune each layer by the fraction", choices=SCOPES
    )
    importance: str = option(
        "magnitude", "pruning score (random: the paper's sanity check, identical masks on every task)", choices=PRUNERS
    )
    retrain: bool = option(True, "retrain every ticket on every task (stage 3)")
    init_per_task: bool = option(
        False,
        "draw another initialisation for each task (a control: the masks are then no more alike than independent ones)",
    )
    preset: str | None = option(
        None,
        "the paper's training recipe (paganini: SGD lr 0.01 constant, batch 32, "
        "30 epochs, 80/20 split, flip and crop, 2 rounds of 20% global pruning); "
        "options given "
        "override it",
        choices=tuple(PRESETS),
    )
    seed: int = option(0, "the seed of the shared initialisation, the data order and random pruning")
    seeds: tuple[int, ...] = option(
        (),
        "run the whole experiment once per seed, into RUN/seed_N/, and summarise "
        "over them: a count (3: seeds 0, 1, 2) or a list (0,4,7)",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="--seed alone",
    )
    train_size: int | None = option(
        None, "train on a seeded subset of N examples of each task (quick runs)", metavar="N"
    )
    val_fraction: float = option(0.2, "share of each task's training set held out for validation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.tasks) < 2:
            raise ValueError(f"a consensus needs at least two tasks, got {list(self.tasks)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"the tasks must be distinct, got {list(self.tasks)}")
        if not 1 <= self.intersect_round <= self.rounds:
            raise ValueError(f"intersect_round must lie in 1..rounds ({self.rounds}), got {self.intersect_round}")
        if self.min_votes is not None and not 1 <= self.min_votes <= len(self.tasks):
            raise ValueError(f"min_votes must lie in 1..{len(self.tasks)} (the number of tasks), got {self.min_votes}")
        if self.input_shape is not None:
            parse_task(f"x:shape={self.input_shape}")
        if self.augment is not None:
            parse_task(f"x:augment={self.augment}")

    def votes(self) -> int:
        return self.min_votes or len(self.tasks)

    def task_names(self, shape: str) -> tuple[str, ...]:
        """The tasks as loaded: every task but one already of ``shape`` brought to it (``:shape=CxHxW``), and
        with ``augment`` (``:augment=...``) where the task does not set its own."""
        return tuple(
            with_options(t, shape=None if i == 0 and self.input_shape is None else shape, augment=self.augment)
            for i, t in enumerate(self.tasks)
        )

    def loaded_tasks(self) -> tuple[str, ...]:
        """The tasks as the units load them: brought to the first task's input shape (or ``input_shape``); the
        first task is loaded to learn it (once per process: the units load it again from the cache)."""
        return self.task_names(_first_shape(self))

    def bespoke_config(self, index: int) -> ImpConfig:
        """The bespoke IMP run of task ``index`` as the units load it (:meth:`loaded_tasks`)."""
        return self.imp_config(self.loaded_tasks()[index], index)

    def imp_config(self, task: str, index: int) -> ImpConfig:
        """The bespoke IMP run of one task: this config's training, pruning and seed, rewound to the initial
        weights (``init_per_task``: another initialisation per task)."""
        train = self.training_options()
        return ImpConfig(
            **train,
            dataset=task,
            model=self.model,
            model_options=self.model_options,
            rounds=self.rounds,
            fraction=self.fraction,
            rewind="init",
            retrain="rewind",
            scope=self.scope,
            importance=self.importance,
            seed=self.seed,
            init_seed=self.seed + 1000 * index if self.init_per_task else None,
            train_size=self.train_size,
            val_fraction=self.val_fraction,
            device=self.device,
            data_dir=self.data_dir,
            threads=self.threads,
        )


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


def _first_shape(config: ConsensusConfig) -> str:
    if config.input_shape is not None:
        return config.input_shape
    # the options ImpRun loads the task with, so that the data set loaded here is the one its units reuse
    data = shared_dataset(
        config.tasks[0],
        data_dir=config.data_dir,
        device=config.device,
        val_fraction=config.val_fraction,
        seed=config.seed,
        train_size=config.train_size,
    )
    if len(data.input_shape) != 3:
        raise ValueError(
            f"task {config.tasks[0]!r} holds vectors {data.input_shape}, not images: a consensus brings "
            "every task to one image shape"
        )
    return _shape_text(data.input_shape)


# --- stage 2: the consensus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BespokeSpec:
    """What a bespoke unit trains: IMP of one seed's config on task ``index``."""

    config: ConsensusConfig
    index: int


def bespoke_unit(spec: BespokeSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """Stage 1 of the consensus pipeline: the bespoke IMP run of one task (IMP's own unit, on the task as loaded:
    brought to the shared input shape)."""
    return imp_seed(spec.config.bespoke_config(spec.index), directory, log, progress)


def bespoke_units(
    specs: list[BespokeSpec], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`bespoke_unit` of one task's bespoke IMP runs of several seeds, in lockstep (IMP's
    :func:`~lth_sparse.pipelines.imp_rounds.imp_seeds`)."""
    return imp_seeds([spec.config.bespoke_config(spec.index) for spec in specs], directories, logs, progress)


@dataclass(frozen=True)
class ConsensusSpec:
    """What a consensus unit computes: the consensus of one seed's bespoke tickets."""

    config: ConsensusConfig


def _bespoke_dir(i: int) -> str:
    return f"bespoke_{i}"


def _shared_layers(task_masks: list[Masks]) -> tuple[list[str], list[str]]:
    """(the layers every task's masks have in one shape, the output layer where the class counts differ)."""
    names = list(task_masks[0])
    shared, apart = [], []
    for n, name in enumerate(names):
        shapes = {tuple(m[name].shape) for m in task_masks}
        if len(shapes) == 1:
            shared.append(name)
        elif n == len(names) - 1:
            apart.append(name)
        else:
            raise ValueError(
                f"the tasks' masks differ in the shape of {name!r} ({sorted(shapes)}), which is not the "
                "output layer: the tasks must share one input shape (--input-shape)"
            )
    return shared, apart


def _independence_baselines(consensus: dict, bespoke_rounds: dict[int, list[dict]]) -> dict:
    """A consensus unit's ``independent_jaccard`` and its ``over_rounds``' from the bespoke rounds' records: the
    mean over the task pairs of :func:`~lth_sparse.masks.independent_jaccard_distance` of their per-layer
    densities, over the layers compared (the sizes are the overlap counts' totals), as the unit computes it from
    the masks."""
    sizes = {name: sum(layer["counts"]) for name, layer in consensus["overlap"]["layers"].items()}
    n = len(bespoke_rounds)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def densities(task: int, r: int) -> dict[str, float]:
        return {name: 1.0 - bespoke_rounds[task][r]["layer_sparsity"][name] for name in sizes}

    over_rounds = []
    for entry in consensus["over_rounds"]:
        r = entry["round"]
        expected = [independent_jaccard_distance(densities(i, r), densities(j, r), sizes) for i, j in pairs]
        over_rounds.append(dict(entry, independent_jaccard=sum(expected) / len(pairs)))
    return {
        "over_rounds": over_rounds,
        "independent_jaccard": over_rounds[consensus["intersect_round"]]["independent_jaccard"],
    }


def consensus_unit(spec: ConsensusSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """Stage 2 of the consensus pipeline: the consensus masks (``masks.safetensors``), the random control
    (``random_masks.safetensors``) and the analysis of the bespoke masks; returns its ``done.json``."""
    c = spec.config
    tasks = c.loaded_tasks()
    seed_dir = directory.parent
    n = len(tasks)
    rounds = {
        i: [Masks.load(seed_dir / _bespoke_dir(i) / round_name(r) / "masks.safetensors") for r in range(c.rounds + 1)]
        for i in range(n)
    }
    at = [rounds[i][c.intersect_round] for i in range(n)]
    shared, apart = _shared_layers(at)

    def part(masks: Masks) -> Masks:
        return Masks({name: masks[name] for name in shared})

    voted = vote([part(m) for m in at], c.votes())
    consensus = Masks({name: voted[name] if name in voted else torch.ones_like(at[0][name]) for name in at[0]})
    consensus.save(directory / "masks.safetensors")
    generator = torch.Generator().manual_seed(c.seed * 31 + 7)
    random_masks = random_masks_like(consensus, generator)
    random_masks.save(directory / "random_masks.safetensors")
    # the effective sparsities need the model (the first task's)
    imp = ImpRun(c.imp_config(tasks[0], 0), None, progress, log)
    effective = effective_masks(imp.model, consensus, imp.data.input_shape)
    output_side = output_connected_masks(imp.model, consensus, imp.data.input_shape)
    matrix = distance_matrix([part(m) for m in at])
    per_layer = distance_matrix([part(m) for m in at], per_layer=True)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    over_rounds = []
    for r in range(c.rounds + 1):
        masks_r = [part(rounds[i][r]) for i in range(n)]
        measured = [jaccard_distance(masks_r[i], masks_r[j]) for i, j in pairs]
        expected = [independent_jaccard_distance(masks_r[i], masks_r[j]) for i, j in pairs]
        over_rounds.append(
            {
                "round": r,
                "density": sum(m.density() for m in masks_r) / n,
                "jaccard": sum(measured) / len(pairs),
                "independent_jaccard": sum(expected) / len(pairs),
            }
        )
    result = {
        "tasks": list(c.tasks),
        "votes": c.votes(),
        "intersect_round": c.intersect_round,
        "layers": shared,
        "left_out": apart,
        "sparsity": consensus.sparsity(),
        "density": consensus.density(),
        "layer_sparsity": consensus.layer_sparsity(),
        "effective_sparsity": effective.sparsity(),
        "output_connected_sparsity": output_side.sparsity(),
        "bespoke_sparsity": [m.sparsity() for m in at],
        "jaccard": matrix.tolist(),
        "jaccard_per_layer": {k: v.tolist() for k, v in per_layer.items()},
        "mean_jaccard": over_rounds[c.intersect_round]["jaccard"],
        "independent_jaccard": over_rounds[c.intersect_round]["independent_jaccard"],
        "over_rounds": over_rounds,
        "overlap": overlap_counts([part(m) for m in at]),
        "random_sparsity": random_masks.sparsity(),
    }
    log(
        f"consensus of {n} tasks at round {c.intersect_round} ({c.votes()} votes): {100 * consensus.density():.2f}% "
        f"remaining (bespoke: {', '.join(f'{100 * m.density():.1f}%' for m in at)}); mean Jaccard distance "
        f"{result['mean_jaccard']:.3f} (independent masks: {result['independent_jaccard']:.3f})"
        + (f"; left out (class counts differ): {apart}" if apart else "")
    )
    return result


# --- stage 3: retraining every ticket on every task -------------------------------------------------------


@dataclass(frozen=True)
class RetrainSpec:
    """What a retraining unit trains: ``ticket`` (consensus, random, or bespoke of task ``source``) on task
    ``target``."""

    config: ConsensusConfig
    ticket: str
    source: int | None
    target: int


def _ticket_label(ticket: str, source: int | None) -> str:
    return f"bespoke_{source}" if ticket == "bespoke" else ticket


def _fit(masks: Masks, model) -> Masks:
    """``masks`` on ``model``'s layers: a layer of another shape (only the output layer, sized per task) dense."""
    layers = masked_weights(model)
    out = {}
    for n, (name, layer) in enumerate(layers.items()):
        if name in masks and masks[name].shape == layer.weight.shape:
            out[name] = masks[name].to(layer.weight.device)
        elif n == len(layers) - 1:
            out[name] = torch.ones_like(layer.weight, dtype=torch.bool)
        else:
            raise ValueError(f"the ticket's mask of {name!r} does not fit the model ({tuple(layer.weight.shape)})")
    return Masks(out)


def retrain_unit(spec: RetrainSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """Stage 3 of the consensus pipeline: one ticket trained from the shared initialisation on one task."""
    training, finish = _retraining(spec, directory, progress, log)
    return finish(training.run(), log)


def retrain_units(
    specs: list[RetrainSpec], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`retrain_unit` of several tickets on one task (other tickets and seeds), trained together as one
    stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`)."""
    started = [_retraining(spec, d, progress, log) for spec, d, log in zip(specs, directories, logs)]
    metrics = train_masked_grouped([training for training, _ in started])
    return [finish(m, log) for (_, finish), m, log in zip(started, metrics, logs)]


def _retraining(
    spec: RetrainSpec, directory: Path, progress: bool | None, log: Callable[[str], None]
) -> tuple[MaskedTraining, Callable[[dict, Callable[[str], None]], dict]]:
    """What one retraining trains, and the function that makes its ``done.json`` of the training's metrics."""
    c = spec.config
    seed_dir = directory.parents[2]
    consensus = read_done(seed_dir / "consensus" / "done.json")
    source_round = None
    if spec.ticket == "consensus":
        masks = Masks.load(seed_dir / "consensus" / "masks.safetensors")
    elif spec.ticket == "random":
        masks = Masks.load(seed_dir / "consensus" / "random_masks.safetensors")
    else:
        bespoke = read_done(seed_dir / _bespoke_dir(spec.source) / "done.json")["rounds"]
        source_round = closest_by_density(bespoke, consensus["density"])["round"]
        masks = Masks.load(seed_dir / _bespoke_dir(spec.source) / round_name(source_round) / "masks.safetensors")
    imp = ImpRun(c.bespoke_config(spec.target), None, progress, log)
    task = c.tasks[spec.target]  # as given: the names of logs and summaries
    masks = _fit(masks, imp.model)
    init = {k: v.clone() for k, v in imp.model.state_dict().items()}
    label = _ticket_label(spec.ticket, spec.source)
    training = imp.training(init, masks, directory, start=0, desc=f"{label} on task {spec.target}")

    def finish(metrics: dict, log: Callable[[str], None]) -> dict:
        log(
            f"{label} on {task}: {100 * masks.density():.2f}% remaining, test accuracy "
            f"{100 * metrics['test_accuracy']:.2f}%"
        )
        return {
            "ticket": label,
            "source": spec.source,
            "source_round": source_round,
            "target": spec.target,
            "task": task,
            **metrics,
        }

    return training, finish


# --- the pipeline -------------------------------------------------------------------------------------------


class ConsensusPipeline(Pipeline):
    """Consensus tickets as a pipeline (stages: bespoke IMP runs, the consensus mask, the retraining).

    The summary holds ``kind`` (``"consensus"``), ``hash``, ``config``, ``seeds``, ``tasks`` (as given),
    ``consensus`` (over the seeds, each as ``mean``/``std``/``min``/``max``/``n``: ``sparsity``,
    ``density``, ``effective_sparsity``, ``output_connected_sparsity``, ``mean_jaccard``,
    ``independent_jaccard``, ``random_sparsity``, ``bespoke_sparsity``; ``left_out``), ``jaccard`` (the
    N x N matrix at the intersected round, mean over seeds) and ``jaccard_per_layer``, ``overlap``
    (per layer, the mean count of weights kept by exactly 0..N tasks), ``over_rounds`` (per IMP
    round: mean density, mean pairwise Jaccard distance, and that of independent masks), ``dense``
    (per task, the dense network's test accuracy), ``retrain`` (one row per ticket and task:
    ``test_accuracy`` and ``sparsity`` over the seeds; bespoke rows with ``source`` and the
    ``source_round`` used), ``per_seed`` (each seed's consensus figures), and flat means for a sweep's
    table: ``sparsity``, ``effective_sparsity``, ``output_connected_sparsity``, ``mean_jaccard``,
    ``independent_jaccard``, ``bespoke_sparsity`` and ``test_accuracy_consensus`` / ``_random`` /
    ``_bespoke_own`` / ``_bespoke_other`` (over the tasks).
    """

    kind = "consensus"
    summary_format = 2  # 2: the independence baseline from each layer's density, the tasks as given
    config_class = ConsensusConfig
    help = "consensus (pret-a-porter) tickets: bespoke IMP tickets on several tasks, intersected"
    description = (
        "Paganini & Forde (2020), Algorithm 1. From one shared initialisation, IMP finds a bespoke ticket "
        "on each task (one unit per task, in parallel under --executor process or ray); the consensus "
        "ticket keeps the weights every bespoke ticket of --intersect-round keeps (--min-votes K: at "
        "least K of them). Then the consensus ticket, a random mask of its layer sparsity and the "
        "bespoke ticket of every task at the consensus's sparsity are retrained on every task. Results "
        "go to --out: seed_S/bespoke_I/ (IMP runs), seed_S/consensus/, seed_S/retrain/, summary.json "
        "and plots/. Re-running the same command resumes."
    )

    @property
    def epilog(self) -> str:
        from lth_sparse.data import available_datasets
        from lth_sparse.models import available_models

        return (
            f"Tasks: data sets ({', '.join(available_datasets())}) or derived tasks {DERIVED_TASKS}. Models: "
            + ", ".join(available_models())
            + ". Every option can "
            "also come from --config FILE; flags override it, and override --preset."
        )

    def check(self, config: ConsensusConfig) -> None:
        for i, task in enumerate(config.loaded_tasks()):
            ImpRun(config.imp_config(task, i), None, False, lambda line: None)

    def stacked_model(self, config: ConsensusConfig):
        first = config.for_seed(config.seed_list()[0])
        return ImpRun(first.bespoke_config(0), None, False, lambda line: None).model

    def plan(self, config: ConsensusConfig) -> list[list[Unit]]:
        tasks = config.tasks
        stages: list[list[Unit]] = [[], [], []]
        for s in config.seed_list():
            c = config.for_seed(s)
            root = f"seed_{s}"
            stages[0] += [
                Unit(
                    "lth_sparse.pipelines.consensus:bespoke_unit",
                    BespokeSpec(c, i),
                    f"{root}/{_bespoke_dir(i)}",
                    label=f"seed {s} bespoke IMP on {task}",
                    stacked="lth_sparse.pipelines.consensus:bespoke_units",
                    stack_key=(stack_key(config), i),  # one task's seeds: its data, its output layer
                )
                for i, task in enumerate(tasks)
            ]
            stages[1].append(
                Unit(
                    "lth_sparse.pipelines.consensus:consensus_unit",
                    ConsensusSpec(c),
                    f"{root}/consensus",
                    label=f"seed {s} consensus",
                )
            )
            if config.retrain:
                tickets = [("consensus", None), ("random", None)] + [("bespoke", j) for j in range(len(tasks))]
                stages[2] += [
                    Unit(
                        "lth_sparse.pipelines.consensus:retrain_unit",
                        RetrainSpec(c, ticket, source, target),
                        f"{root}/retrain/{_ticket_label(ticket, source)}/task_{target}",
                        label=f"seed {s} {_ticket_label(ticket, source)} on {tasks[target]}",
                        stacked="lth_sparse.pipelines.consensus:retrain_units",
                        stack_key=(stack_key(config), target),  # one task: its data, its output layer
                    )
                    for ticket, source in tickets
                    for target in range(len(tasks))
                ]
        return [stage for stage in stages if stage]

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        run_dir = Path(run_dir)
        saved, config = self.saved_config(run_dir)
        steps = Steps(run_dir)
        n = len(config.tasks)
        per_seed: dict[int, dict] = {}
        for s in config.seed_list():
            root = f"seed_{s}"
            if not steps.is_done(f"{root}/consensus"):
                continue
            entry = {
                "consensus": steps.result(f"{root}/consensus"),
                "bespoke": {i: steps.result(f"{root}/{_bespoke_dir(i)}")["rounds"] for i in range(n)},
            }
            entry["retrain"] = {}
            for name, result in self.unit_results(run_dir, config, f"{root}/retrain").items():
                entry["retrain"][name[len(f"{root}/retrain/") :]] = result
            per_seed[s] = entry
        summary = {
            "kind": self.kind,
            "hash": saved.get("hash"),
            "config": dataclasses.asdict(config),
            "seeds": sorted(per_seed),
        }
        if per_seed:
            first = next(iter(per_seed.values()))["consensus"]
            summary["tasks"] = list(config.tasks)
            cons = [e["consensus"] for e in per_seed.values()]
            # the independence baseline from each round's per-layer densities, the tasks as given (the units of
            # runs made before hold the pooled densities' baseline and the tasks as loaded)
            cons = [
                dict(c, tasks=summary["tasks"], **_independence_baselines(c, e["bespoke"]))
                for c, e in zip(cons, per_seed.values())
            ]
            summary["consensus"] = {
                key: over_seeds([c[key] for c in cons])
                for key in (
                    "sparsity",
                    "density",
                    "effective_sparsity",
                    "output_connected_sparsity",
                    "mean_jaccard",
                    "independent_jaccard",
                    "random_sparsity",
                )
            }
            summary["consensus"]["bespoke_sparsity"] = over_seeds([x for c in cons for x in c["bespoke_sparsity"]])
            summary["consensus"]["left_out"] = first["left_out"]
            summary["jaccard"] = torch.tensor([c["jaccard"] for c in cons]).mean(0).tolist()
            summary["jaccard_per_layer"] = {
                k: torch.tensor([c["jaccard_per_layer"][k] for c in cons]).mean(0).tolist()
                for k in first["jaccard_per_layer"]
            }
            summary["overlap"] = {
                name: torch.tensor([c["overlap"]["layers"][name]["counts"] for c in cons], dtype=torch.float64)
                .mean(0)
                .tolist()
                for name in first["overlap"]["layers"]
            }
            summary["over_rounds"] = [
                {
                    key: over_seeds([c["over_rounds"][r][key] for c in cons])["mean"]
                    for key in ("round", "density", "jaccard", "independent_jaccard")
                }
                for r in range(len(first["over_rounds"]))
            ]
            summary["dense"] = [
                over_seeds([e["bespoke"][i][0]["test_accuracy"] for e in per_seed.values()]) for i in range(n)
            ]
            rows = []
            labels = ["consensus", "random"] + [f"bespoke_{j}" for j in range(n)]
            for label in labels:
                for t in range(n):
                    key = f"{label}/task_{t}"
                    found = [e["retrain"][key] for e in per_seed.values() if key in e["retrain"]]
                    if not found:
                        continue
                    row = {
                        "ticket": label,
                        "target": t,
                        "task": summary["tasks"][t],
                        "test_accuracy": over_seeds([f["test_accuracy"] for f in found]),
                        "sparsity": over_seeds([f["sparsity"] for f in found]),
                    }
                    if label.startswith("bespoke_"):
                        row["source"] = int(label.split("_")[1])
                        row["source_round"] = [f["source_round"] for f in found]
                    rows.append(row)
            summary["retrain"] = rows
            # flat figures (means over the seeds, and over the tasks): a sweep's table of consensus runs
            for key in (
                "sparsity",
                "effective_sparsity",
                "output_connected_sparsity",
                "mean_jaccard",
                "independent_jaccard",
                "bespoke_sparsity",
            ):
                summary[key] = summary["consensus"][key]["mean"]
            for label, pick in (
                ("consensus", lambda r: r["ticket"] == "consensus"),
                ("random", lambda r: r["ticket"] == "random"),
                ("bespoke_own", lambda r: r["ticket"] == f"bespoke_{r['target']}"),
                (
                    "bespoke_other",
                    lambda r: r["ticket"].startswith("bespoke_") and r["ticket"] != f"bespoke_{r['target']}",
                ),
            ):
                chosen = [r["test_accuracy"]["mean"] for r in rows if pick(r)]
                if chosen:
                    summary[f"test_accuracy_{label}"] = sum(chosen) / len(chosen)
        summary["per_seed"] = {str(s): {"consensus": c} for s, c in zip(per_seed, cons)} if per_seed else {}
        summary = self.write_summary(run_dir, config, summary)
        if plots and per_seed:
            from lth_sparse.plots import plot_consensus

            plot_consensus(summary, run_dir / "plots")
        return summary

    def report(self, summary: dict) -> list[str]:
        if "consensus" not in summary:
            return []
        c = summary["consensus"]
        seeds = len(summary["seeds"])
        pm = (
            (lambda s: f"{100 * s['mean']:.2f}% +- {100 * s['std']:.2f}")
            if seeds > 1
            else (lambda s: f"{100 * s['mean']:.2f}%")
        )
        lines = [
            f"consensus of {len(summary['tasks'])} tasks "
            f"({'mean +- std over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}):",
            f"  bespoke sparsity {pm(c['bespoke_sparsity'])}, consensus sparsity {pm(c['sparsity'])} "
            f"(effective {pm(c['effective_sparsity'])}, cut off from the output {pm(c['output_connected_sparsity'])})",
            f"  mean Jaccard distance between the bespoke masks {c['mean_jaccard']['mean']:.3f} "
            f"(independent masks of those densities: {c['independent_jaccard']['mean']:.3f})",
        ]
        if summary.get("retrain"):
            n = len(summary["tasks"])
            from lth_sparse.plots import short_task_names

            lines.append(
                f"  {'test accuracy':<22}" + "".join(f"{t[:18]:>20}" for t in short_task_names(summary["tasks"]))
            )
            by = {(r["ticket"], r["target"]): r for r in summary["retrain"]}
            lines.append(f"  {'dense':<22}" + "".join(f"{pm(summary['dense'][t]):>20}" for t in range(n)))
            for label in ["consensus", "random"] + [f"bespoke_{j}" for j in range(n)]:
                name = label if not label.startswith("bespoke_") else f"bespoke of task {label[8:]}"
                cells = [pm(by[(label, t)]["test_accuracy"]) if (label, t) in by else "-" for t in range(n)]
                lines.append(f"  {name:<22}" + "".join(f"{cell:>20}" for cell in cells))
        return lines


CONSENSUS = register_pipeline(ConsensusPipeline())


run = CONSENSUS.run
