"""Planting tickets with known ground truth and benchmarking pruners against them: Fischer & Burkholz (2022),
"Plant 'n' Seek: can you find the winning ticket?".

For every (task, depth, pruner, density, seed) of the grid, one unit: the task's target network
(:func:`lth_sparse.planting.make_target`) is planted into a host MLP of that depth and ``width``
(:func:`lth_sparse.planting.plant`, seed ``seed``), the pruner searches the host for a ticket of that
density, and the unit records

- the **recovery** of the planted ticket, per layer and overall: precision (share of the found weights
  that are planted ones), recall (share of the planted weights found), the Jaccard distance between the
  two masks, and whether the found mask contains the planted one;
- **collapse**: which of :func:`~lth_sparse.prune.collapse.task_collapse`'s criteria say that the mask cannot
  compute the target network (no input-output path, an output without one, too few input directions or output
  dimensions kept), and the layers pruned to zero or with no kept weight on an input-output path;
- the ticket's test performance (accuracy for ``circle``, mean squared error for the regressions ``relu``
  and ``helix``) before and after training: a *weak* ticket is trained (Adam, lr 1e-3, batch 32, 10
  epochs: the paper's Appendix B.1, the config's defaults); a *strong* ticket (edge-popup's) is the
  masked untrained host, its output rescaled per output by least squares against the target network's
  outputs on the training inputs (the host computes the target only up to a scale per output).

The planted ticket's own performance (the target's on the same data, :func:`target_performance`) is the
reference line; its density (``planted`` in ``--densities``) is one of the grid's densities. ``--planting``
chooses the targets and their planting (:data:`~lth_sparse.planting.PLANTINGS`): ``reference``, the default,
Plant 'n' Seek's code's (its planted densities, its host-neuron matching), or ``exact``; ``--preset fischer``
sets the paper's whole grid (:data:`PRESETS`).

Pruners: ``random``, ``magnitude``, ``snip``, ``grasp``, ``synflow`` (single-shot, global, scored on one
random batch of ``prune_batch`` training examples, 40 as Plant 'n' Seek's code draws them for every task;
SynFlow data-free, ``synflow_iterations`` iterations, 1 as that code's single-shot comparison),
``multishot-NAME`` for any of them (Section 3.2: 10 rounds to ``density ** (r / 10)``, 5 epochs of training
per round, the weights reset to their initial values after each pruning: ``multishot-magnitude`` is IMP),
``edge-popup`` and ``edge-popup-annealed`` (strong tickets; one kept fraction per layer, which cannot
express the planted ticket's uneven layer densities). Conventions: depth counts the input layer (depth 3
is 2 weight layers); density is remaining weights over all weights, biases not counted, and ``sparsity``
is 1 - density as everywhere in lth_sparse. The pruning batch size is not in the paper: 40 is its code's
(``--prune-dataset-ratio 10`` times 4 "classes", which its ``load.dimension`` gives the regressions too).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from lth_sparse.atomic import atomic_torch_save
from lth_sparse.config import option, split_items
from lth_sparse.experiment import check_device
from lth_sparse.masks import Masks, masked_weights
from lth_sparse.pipelines.base import Pipeline, register_pipeline
from lth_sparse.pipelines.common import CommonConfig, over_seeds, parse_seeds, stack_key
from lth_sparse.pipelines.steps import MaskedTraining, shared_dataset, train_masked_grouped
from lth_sparse.planting.targets import PLANTINGS
from lth_sparse.planting.tasks import TASKS
from lth_sparse.train import TrainConfig, default_loss, evaluate
from lth_sparse.units import Unit

SINGLE_SHOT = ("random", "magnitude", "snip", "grasp", "synflow")
PRUNERS = SINGLE_SHOT + tuple(f"multishot-{p}" for p in SINGLE_SHOT) + ("edge-popup", "edge-popup-annealed")
STRONG = ("edge-popup", "edge-popup-annealed")

PRESETS = {
    # Plant 'n' Seek (Appendix B.1), where its text is silent its code's (RelationalML/PlantNSeek,
    # Synaptic-Flow-Extended/main.py and the README's commands): Adam at lr 0.001 (no weight decay, no schedule:
    # main.py's --weight-decay 0, --lr-drops []), batch 32, 10 epochs of training; hosts of depth 3, 5 and 10 and
    # width 100 for the three tasks; densities 0.01, 0.1, 0.5, 1 and the planted ticket's; the five single-shot
    # pruners scored on 40 examples (--prune-dataset-ratio 10 x 4) in one round (--prune-epochs 1), each also
    # multi-shot (Section 3.2: 10 rounds of 5 epochs), edge-popup and its annealed variant (10 epochs); 25
    # repetitions, the main single-shot experiment's (its multi-shot figures have 10); the reference code's targets
    # and planting.
    "fischer": dict(
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="constant",
        warmup_epochs=0.0,
        batch_size=32,
        epochs=10.0,
        tasks=TASKS,
        depths=(3, 5, 10),
        width=100,
        densities=("0.01", "0.1", "0.5", "1", "planted"),
        pruners=PRUNERS,
        prune_batch=40,
        synflow_iterations=1,
        multishot_rounds=10,
        multishot_epochs=5.0,
        edge_popup_epochs=10,
        seeds=tuple(range(25)),
        planting="reference",
    ),
}


def parse_densities(value) -> tuple[str, ...]:
    """``--densities``: numbers in (0, 1] and ``planted`` (the planted ticket's own density)."""
    items = split_items(value)
    for item in items:
        if item != "planted":
            try:
                d = float(item)
            except ValueError:
                raise ValueError(f"a density is a number in (0, 1] or 'planted', got {item!r}") from None
            if not 0 < d <= 1:
                raise ValueError(f"a density must lie in (0, 1] (remaining weights over all), got {item}")
    if not items or len(set(items)) != len(items):
        raise ValueError(f"densities must be given and distinct, got {items}")
    return tuple(items)


def parse_pruners(value) -> tuple[str, ...]:
    items = split_items(value)
    unknown = [p for p in items if p not in PRUNERS]
    if unknown or not items:
        raise ValueError(f"unknown pruners {unknown or items}; known: {', '.join(PRUNERS)}")
    return tuple(items)


@dataclass(frozen=True)
class PlantConfig(CommonConfig):
    """A Plant 'n' Seek benchmark: the weak tickets' training (the fields of :class:`TrainConfig`, here with the
    paper's defaults: Adam, lr 1e-3, batch 32, 10 epochs), and these."""

    PRESETS: ClassVar[dict] = PRESETS

    epochs: float = option(10, "training epochs of each weak ticket (the paper: 10)")
    batch_size: int = option(32, "mini-batch size (the paper: 32)")
    optimizer: str = option("adam", "optimizer (the paper: Adam)", choices=("sgd", "adam", "adamw"))
    lr: float = option(1e-3, "learning rate (the paper: 0.001)")
    tasks: tuple[str, ...] = option(TASKS, "planting tasks", choices=TASKS, metavar="TASK")
    depths: tuple[int, ...] = option(
        (3, 5), "host depths, counting the input layer (depth 3: 2 weight layers; the paper: 3, 5, 10)", metavar="D"
    )
    width: int = option(100, "host width")
    planting: str = option(
        "reference",
        "the targets and their planting: reference, Plant 'n' Seek's code's (the Helix target keeps its rounding "
        "residues as weights, 115 at depth 3, the paper's density .29; host neurons matched by L1 with equal "
        "signs); exact, the targets' exact non-zeros (Helix: 91) and the paper's L2 matching",
        choices=PLANTINGS,
        absent="exact",  # what runs made before the option existed were planted with
    )
    pruners: tuple[str, ...] = option(
        ("random", "magnitude", "snip", "grasp", "synflow", "multishot-magnitude", "edge-popup", "edge-popup-annealed"),
        "pruners: " + ", ".join(PRUNERS),
        parse=parse_pruners,
        metavar="P,P,...",
    )
    densities: tuple[str, ...] = option(
        ("0.01", "0.1", "0.5", "1", "planted"),
        "densities (remaining weights over all, biases not counted), and planted: the planted ticket's own",
        parse=parse_densities,
        metavar="D,D,...",
    )
    prune_batch: int = option(
        40,
        "training examples the data-dependent pruners score on, one random batch (Plant 'n' Seek's code: 40, 10 "
        "per class of Circle's 4, for every task)",
    )
    synflow_iterations: int = option(
        1,
        "SynFlow's iterations (Plant 'n' Seek's code and its single-shot comparison: 1; SynFlow's own paper: 100, "
        "the iterative variant)",
    )
    multishot_rounds: int = option(10, "rounds of multi-shot pruning (the paper: 10)")
    multishot_epochs: float = option(5, "training epochs per multi-shot round (the paper: 5)")
    edge_popup_epochs: int = option(10, "edge-popup's training epochs of the scores (the paper: 10)")
    seed: int = option(0, "the seed of the host's initialisation and planting, the pruning and the data order")
    seeds: tuple[int, ...] = option(
        (),
        "repeats (a count or a list), summarised over",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="--seed alone",
    )
    train_size: int | None = option(None, "train on a seeded subset of N examples (quick runs)", metavar="N")
    val_fraction: float = option(0.1, "share of the 9,000 training points held out for validation")
    preset: str | None = option(
        None,
        "a paper's setting; options given override it. fischer: Plant 'n' Seek's experiments (Adam lr 1e-3, "
        "batch 32, 10 epochs; depths 3, 5, 10 at width 100; densities 0.01, 0.1, 0.5, 1, planted; every pruner, "
        "single- and multi-shot (10 rounds of 5 epochs), edge-popup and annealed; 25 seeds; reference planting)",
        choices=tuple(PRESETS),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from lth_sparse.planting import MIN_DEPTH

        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks must be among {TASKS}, got {list(self.tasks)}")
        for task in self.tasks:
            for d in self.depths:
                if d < MIN_DEPTH[task]:
                    raise ValueError(
                        f"depth {d} is below {task}'s minimum {MIN_DEPTH[task]} (depth counts the input "
                        "layer: depth 3 is 2 weight layers)"
                    )
        if self.width < 2:
            raise ValueError(f"width must be >= 2, got {self.width}")
        parse_pruners(self.pruners)
        parse_densities(self.densities)
        for name in ("prune_batch", "synflow_iterations", "multishot_rounds", "edge_popup_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def train_config(self, epochs: float | None = None) -> TrainConfig:
        values = self.training_options()
        if epochs is not None:
            values["epochs"] = epochs
        return TrainConfig(**values)


@dataclass(frozen=True)
class PlantSpec:
    config: PlantConfig
    task: str
    depth: int
    pruner: str
    density: str
    seed: int


def _unit_dir(spec: PlantSpec) -> str:
    return f"{spec.task}/depth_{spec.depth}/{spec.pruner}/density_{spec.density}/seed_{spec.seed}"


def recovery(found: Masks, planted: Masks) -> dict:
    """How much of the planted ticket a found mask recovers: per layer and overall, ``precision`` (found weights
    that are planted), ``recall`` (planted weights found), ``jaccard`` (the distance of
    :func:`lth_sparse.masks.jaccard_distance`), ``contains`` (every planted weight found)."""

    def figures(both: int, nf: int, np_: int) -> dict:
        union = nf + np_ - both
        return {
            "precision": both / nf if nf else 0.0,
            "recall": both / np_ if np_ else 1.0,
            "jaccard": 1 - both / union if union else 0.0,
            "contains": both == np_,
            "found": nf,
            "planted": np_,
        }

    counts = {
        n: (int((found[n].bool() & planted[n].bool()).sum()), int(found[n].sum()), int(planted[n].sum()))
        for n in planted
    }
    total = figures(*(sum(c[i] for c in counts.values()) for i in range(3)))  # the layers' counts summed
    return {**total, "layers": {n: figures(*c) for n, c in counts.items()}}


def _least_squares_scale(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per output, the scale ``a`` minimising ``||a * output - reference||^2`` (0 for an output that is all zero)."""
    num = (output * reference).sum(0)
    den = (output * output).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(den))


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module, scale: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("scale", scale)

    def forward(self, x):
        return self.net(x) * self.scale


def plant_unit(spec: PlantSpec, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """One (task, depth, pruner, density, seed): plant, prune, measure the recovery, train (weak) or rescale
    (strong), evaluate."""
    ((training, finish),) = _planted_and_pruned([spec], [directory], progress, together=False)
    return finish(training.run() if training is not None else None, log)


def plant_units(
    specs: list[PlantSpec], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`plant_unit` of several units of one task and depth (other pruners, densities and seeds): each
    planted and pruned (the multi-shot pruners' rounds trained together, in lockstep:
    :func:`~lth_sparse.prune.multishot.multi_shot_together`), then their weak tickets trained together as one
    stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`; a strong ticket has no training)."""
    started = _planted_and_pruned(specs, directories, progress, together=True)
    trainings = [training for training, _ in started if training is not None]
    metrics = iter(train_masked_grouped(trainings))
    return [
        finish(next(metrics) if training is not None else None, log) for (training, finish), log in zip(started, logs)
    ]


def _planted_and_pruned(
    specs: list[PlantSpec], directories: list[Path], progress: bool | None, *, together: bool
) -> list[tuple[MaskedTraining | None, Callable[[dict | None, Callable[[str], None]], dict]]]:
    """Each unit planted and pruned (:func:`_plant_and_prune`); the multi-shot prunings and edge-popup searches
    they ask for run one by one (:func:`~lth_sparse.prune.multishot.multi_shot`,
    :func:`~lth_sparse.prune.edge_popup.edge_popup`) or, ``together``, each kind in lockstep
    (:func:`~lth_sparse.prune.multishot.multi_shot_together`,
    :func:`~lth_sparse.prune.edge_popup.edge_popup_together`: a unit's numbers then do not depend on the others
    beside it)."""
    from lth_sparse.prune.edge_popup import EdgePopupMember, edge_popup, edge_popup_together
    from lth_sparse.prune.multishot import MultiShotMember, multi_shot, multi_shot_together

    c = specs[0].config
    units = [_plant_and_prune(spec, directory, progress) for spec, directory in zip(specs, directories)]
    outcomes: list = [None] * len(units)
    asked = {}
    for i, unit in enumerate(units):
        try:
            asked[i] = next(unit)  # a multi-shot pruning or an edge-popup search, to be run here
        except StopIteration as done:
            outcomes[i] = done.value
    shots = dict(rounds=c.multishot_rounds, epochs_per_round=c.multishot_epochs, train_config=c.train_config())
    shots["progress"] = progress
    search = dict(epochs=c.edge_popup_epochs, progress=progress)
    runs = {  # each kind of member: all of them together, one alone
        MultiShotMember: (
            lambda members: multi_shot_together(members, **shots),
            lambda m: multi_shot(m.model, m.data, m.density, m.prune_fn, seed=m.seed, **shots),
        ),
        EdgePopupMember: (
            lambda members: edge_popup_together(members, **search),
            lambda m: edge_popup(m.model, m.data, m.density, annealed=m.annealed, seed=m.seed, **search),
        ),
    }
    found: dict = {}
    for kind, (run_together, run_alone) in runs.items():
        mine = {i: m for i, m in asked.items() if isinstance(m, kind)}
        if mine:
            found.update(zip(mine, run_together(list(mine.values())) if together else map(run_alone, mine.values())))
    for i in asked:
        try:
            units[i].send(found[i])
        except StopIteration as done:
            outcomes[i] = done.value
    return outcomes


def _plant_and_prune(spec: PlantSpec, directory: Path, progress: bool | None):
    """Plant and prune one unit: a generator that yields a
    :class:`~lth_sparse.prune.multishot.MultiShotMember` where its pruner is multi-shot, an
    :class:`~lth_sparse.prune.edge_popup.EdgePopupMember` where it is edge-popup (the caller runs the
    pruning and sends back its masks, or its :class:`~lth_sparse.prune.edge_popup.EdgePopupResult`), then
    returns the training of its weak ticket (``None`` for a strong ticket, which is rescaled, not trained) and
    the function that makes its ``done.json`` of the training's metrics."""
    from lth_sparse.nn import masked, unmasked
    from lth_sparse.planting import make_target, plant, target_performance
    from lth_sparse.prune import get_pruner, layer_collapse
    from lth_sparse.prune.collapse import target_needs, task_collapse
    from lth_sparse.prune.edge_popup import EdgePopupMember, strong_ticket
    from lth_sparse.prune.multishot import MultiShotMember

    c = spec.config
    device = check_device(c.device)
    data = shared_dataset(spec.task, device=device, val_fraction=c.val_fraction, seed=c.seed, train_size=c.train_size)
    regression = data.train.y.is_floating_point()
    target = make_target(spec.task, spec.depth, planting=c.planting)
    host, planted, scales = plant(target, c.width, seed=spec.seed, planting=c.planting)
    host = host.float().to(device)
    model = masked(copy.deepcopy(host))
    model.input_shape = data.input_shape
    init = {k: v.clone() for k, v in model.state_dict().items()}
    planted = Masks({n: m.to(device) for n, m in planted.items()})
    names = list(masked_weights(model))
    if list(planted) != names:
        raise RuntimeError(f"the planted masks {list(planted)} do not name the host's layers {names}")
    density = planted.density() if spec.density == "planted" else float(spec.density)
    generator = torch.Generator().manual_seed(spec.seed * 7919 + 13)
    order = torch.randperm(len(data.train), generator=generator)[: c.prune_batch].to(device)
    batch = (data.train.x[order], data.train.y[order])
    score_loss = default_loss(data.train.y)  # SNIP's and GraSP's loss: the one the tickets train with
    bias_masks = None
    history = None

    def single(name: str, model_: nn.Module, masks: Masks | None, d: float) -> Masks:
        options = {"iterations": c.synflow_iterations} if name == "synflow" else {}
        kept = int(round(d * sum(m.numel() for m in planted.values())))
        current = sum(int(m.sum()) for m in masks.values()) if masks is not None else None
        if current is not None and kept >= current:
            return masks
        return get_pruner(name)(
            model_,
            density=d,
            masks=masks,
            batch=batch,
            loss_fn=score_loss,
            input_shape=tuple(data.input_shape),
            generator=generator,
            **options,
        )

    pruner = spec.pruner
    if density >= 1.0:
        masks = Masks.ones_like(model)
    elif pruner in SINGLE_SHOT:
        masks = single(pruner, model, None, density)
    elif pruner.startswith("multishot-"):
        name = pruner[len("multishot-") :]
        masks = yield MultiShotMember(model, data, density, lambda m, masks_, d: single(name, m, masks_, d), spec.seed)
        model.load_state_dict(init)
    else:  # edge-popup with its default loss, the training loop's: cross-entropy, or the MSE for floats
        masks, bias_masks, history = yield EdgePopupMember(
            copy.deepcopy(host), data, density, spec.seed, annealed=pruner == "edge-popup-annealed"
        )
    masks = Masks({n: masks[n].to(device) for n in names})
    found = recovery(masks, planted)
    collapse = layer_collapse(model, masks, tuple(data.input_shape))
    cannot = task_collapse(model, masks, target_needs(target, tuple(data.input_shape)), tuple(data.input_shape))
    result = {
        "task": spec.task,
        "depth": spec.depth,
        "pruner": pruner,
        "density_label": spec.density,
        "density": masks.density(),
        "target_density": density,
        "seed": spec.seed,
        "planted_density": planted.density(),
        "recovery": found,
        "collapsed_layers": [n for n, v in collapse.items() if v.collapsed],
        "collapse": list(cannot),
        "collapsed": bool(cannot),
        "regression": regression,
        "reference": target_performance(spec.task, spec.depth, planting=c.planting),
    }
    masks.save(directory / "masks.safetensors")
    training = None
    if pruner not in STRONG:
        model.load_state_dict(init)
        masks.apply_to(model)
        before_loss, before_acc = evaluate(model, data.test)
        training = MaskedTraining(
            model,
            data,
            c.train_config(),
            masks,
            init,
            directory,
            seed=spec.seed,
            progress=progress,
            desc=f"{spec.task} depth {spec.depth} {pruner} {spec.density}",
        )

    def finish(metrics: dict | None, log: Callable[[str], None]) -> dict:
        if training is None:
            exported = _strong(result)
        else:
            result.update(
                kind="weak",
                before_test_loss=before_loss,
                before_test_accuracy=before_acc,
                test_loss=metrics["test_loss"],
                test_accuracy=metrics["test_accuracy"],
            )
            exported = unmasked(copy.deepcopy(model))
        # the ticket as a plain torch model (nn.Linear layers, pruned weights zero; a strong ticket with its output
        # scale): torch.load(..., weights_only=False) gives it back, masks.safetensors beside it
        atomic_torch_save(directory / "ticket.pt", exported.cpu())
        metric = "test_loss" if regression else "test_accuracy"
        result["score"] = result[metric]
        log(
            f"{spec.task} depth {spec.depth} {pruner} at density {density:.4g} (seed {spec.seed}): "
            f"{'MSE' if regression else 'accuracy'} {result['score']:.4g} ({result['kind']}; the planted ticket "
            f"{result['reference']['test']:.4g}), recall of the planted weights {found['recall']:.3f}, precision "
            f"{found['precision']:.3f}"
            + (f", collapsed: {', '.join(result['collapse'])}" if result["collapsed"] else "")
        )
        return result

    def _strong(result: dict) -> nn.Module:
        ticket = strong_ticket(host, masks, bias_masks).to(device)
        with torch.no_grad():
            reference = target.float().to(device)(data.train.x)
            out = ticket(data.train.x)
            scale = _least_squares_scale(out, reference)
        scaled = _Scaled(ticket, scale)
        loss, acc = evaluate(scaled, data.test)
        result.update(
            kind="strong", test_loss=loss, test_accuracy=acc, output_scale=scale.tolist(), edge_popup_history=history
        )
        return _Scaled(unmasked(copy.deepcopy(ticket)), scale)

    return training, finish


def _collapse_criteria(result: dict) -> tuple[str, ...]:
    """The collapse criteria that fired for a unit (:func:`~lth_sparse.prune.collapse.task_collapse`); a unit
    recorded before they were, by its ``collapsed``: a layer with no kept weight on an input-output path, which
    in these MLPs is exactly ``no_path``."""
    if "collapse" in result:
        return tuple(result["collapse"])
    return ("no_path",) if result["collapsed"] else ()


class PlantPipeline(Pipeline):
    """The planting benchmark as a pipeline: one unit per (task, depth, pruner, density, seed).

    The summary holds ``kind`` (``"plant"``), ``hash``, ``config``, ``seeds``, ``references`` (per task and
    depth: the planted density and the target's own train/test score, its noise-free test score and chance),
    and ``rows``: per (task, depth, pruner, density) over the seeds, ``score`` (test accuracy or MSE) and, for
    weak tickets, ``score_before_training``, the found density, ``recall``, ``precision``, ``jaccard`` (each
    mean/std/min/max/n), how many seeds' masks ``contains`` the planted one and are ``collapsed`` (cannot compute
    the target: :func:`~lth_sparse.prune.collapse.task_collapse`), and ``collapse``, that count per criterion.
    """

    kind = "plant"
    summary_format = 2  # 2: the collapse criteria counted per row
    config_class = PlantConfig
    help = "plant tickets with known ground truth and benchmark pruners against them (Plant 'n' Seek)"
    description = (
        "Fischer & Burkholz (2022). For every task (relu, circle, helix), depth, pruner, density and "
        "seed, one unit: the task's target network is planted into a host MLP, the pruner searches the "
        "host for a ticket of that density, and the unit records the recovery of the planted ticket "
        "(precision, recall, Jaccard distance, containment, per layer and overall), collapse (which criterion "
        "says the mask cannot compute the target), and "
        "the ticket's test accuracy (circle) or MSE (relu, helix): weak tickets trained (Adam, lr 1e-3, "
        "batch 32, 10 epochs), strong tickets (edge-popup) untrained with their outputs rescaled by "
        "least squares. Results go to --out: TASK/depth_D/PRUNER/density_X/seed_S/, summary.json and "
        "plots/. Re-running resumes."
    )
    epilog = (
        "Density is remaining weights over all weights (biases not counted), the paper's rho; 'planted' is "
        "the planted ticket's own. Depth counts the input layer (depth 3: 2 weight layers). Pruners: "
        "random, magnitude, snip, grasp, synflow (single-shot), multishot-NAME (10 rounds, weights reset: "
        "multishot-magnitude is IMP), edge-popup, edge-popup-annealed."
    )

    def check(self, config: PlantConfig) -> None:
        from lth_sparse.planting import make_target, plant

        check_device(config.device)
        for task in config.tasks:
            data = shared_dataset(
                task, device="cpu", val_fraction=config.val_fraction, seed=config.seed, train_size=config.train_size
            )
            if config.prune_batch > len(data.train):
                raise ValueError(f"prune_batch {config.prune_batch} exceeds the {len(data.train)} training points")
            for depth in config.depths:
                target = make_target(task, depth, planting=config.planting)
                plant(target, config.width, seed=config.seed_list()[0], planting=config.planting)

    def stacked_model(self, config: PlantConfig):
        from lth_sparse.planting import make_target, plant

        target = make_target(config.tasks[0], config.depths[0], planting=config.planting)
        return plant(target, config.width, seed=0, planting=config.planting)[0].float()

    def plan(self, config: PlantConfig) -> list[list[Unit]]:
        units = []
        # the multi-shot pruners first, then edge-popup, then the single-shot ones: the stacks of a task and depth
        # are made in this order, so that each holds one kind of search as far as it can (a stack's multi-shot
        # rounds and edge-popup epochs train their members together; its other members wait for them)
        pruners = sorted(config.pruners, key=lambda p: 0 if p.startswith("multishot-") else 1 if p in STRONG else 2)
        for task in config.tasks:
            for depth in config.depths:
                for pruner in pruners:
                    for density in config.densities:
                        if density == "1" and pruner != config.pruners[0]:
                            continue  # density 1 prunes nothing: one dense unit per task and depth
                        for s in config.seed_list():
                            spec = PlantSpec(config, task, depth, pruner, density, s)
                            units.append(
                                Unit(
                                    "lth_sparse.pipelines.plant:plant_unit",
                                    spec,
                                    _unit_dir(spec),
                                    label=f"{task} depth {depth} {pruner} density {density} seed {s}",
                                    stacked="lth_sparse.pipelines.plant:plant_units",
                                    stack_key=(stack_key(config), task, depth),  # one host network
                                )
                            )
        return [units]

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        from lth_sparse.prune.collapse import COLLAPSE_CRITERIA

        run_dir = Path(run_dir)
        saved, config = self.saved_config(run_dir)
        results = list(self.unit_results(run_dir, config).values())
        rows, references = [], {}
        keys = sorted(
            {(r["task"], r["depth"], r["pruner"], r["density_label"]) for r in results},
            key=lambda k: (k[0], k[1], k[2], 2.0 if k[3] == "planted" else float(k[3])),
        )
        for task, depth, pruner, label in keys:
            found = [
                r
                for r in results
                if (r["task"], r["depth"], r["pruner"], r["density_label"]) == (task, depth, pruner, label)
            ]
            first = found[0]
            references[f"{task}/{depth}"] = {
                "task": task,
                "depth": depth,
                "planted_density": first["planted_density"],
                **first["reference"],
            }
            row = {
                "task": task,
                "depth": depth,
                "pruner": pruner,
                "density_label": label,
                "seeds": len(found),
                "kind": first["kind"],
                "regression": first["regression"],
                "density": over_seeds([r["density"] for r in found])["mean"],
                "score": over_seeds([r["score"] for r in found]),
                "recall": over_seeds([r["recovery"]["recall"] for r in found]),
                "precision": over_seeds([r["recovery"]["precision"] for r in found]),
                "jaccard": over_seeds([r["recovery"]["jaccard"] for r in found]),
                "contains": sum(bool(r["recovery"]["contains"]) for r in found),
                "collapsed": sum(bool(r["collapsed"]) for r in found),
                "collapse": {
                    criterion: sum(criterion in _collapse_criteria(r) for r in found) for criterion in COLLAPSE_CRITERIA
                },
            }
            if first["kind"] == "weak":
                key = "before_test_loss" if first["regression"] else "before_test_accuracy"
                row["score_before_training"] = over_seeds([r[key] for r in found])
            rows.append(row)
        summary = {
            "kind": self.kind,
            "hash": saved.get("hash"),
            "config": dataclasses.asdict(config),
            "seeds": list(config.seed_list()),
            "references": list(references.values()),
            "rows": rows,
            "conventions": "density = remaining weights / all weights (biases not counted); depth counts "
            "the input layer; score = test accuracy (circle) or test MSE (relu, helix)",
        }
        summary = self.write_summary(run_dir, config, summary)
        if plots and rows:
            from lth_sparse.plots import plot_plant

            plot_plant(summary, run_dir / "plots")
        return summary

    def report(self, summary: dict) -> list[str]:
        lines = []
        for ref in summary["references"]:
            task, depth = ref["task"], ref["depth"]
            metric = "MSE" if ref["metric"] == "mse" else "accuracy"
            lines.append(
                f"{task}, depth {depth}: planted ticket density {ref['planted_density']:.4g}, test {metric} "
                f"{ref['test']:.4g} (chance {ref['chance']:.4g}); mean over seeds:"
            )
            lines.append(
                f"  {'pruner':<24}{'density':>10}{metric:>12}{'recall':>9}{'precision':>10}{'collapsed':>10}  by"
            )
            for row in summary["rows"]:
                if (row["task"], row["depth"]) == (task, depth):
                    criteria = ", ".join(f"{c} {n}" for c, n in row.get("collapse", {}).items() if n)
                    lines.append(
                        f"  {row['pruner'] + ' (' + row['kind'] + ')':<24}{row['density']:>10.4g}"
                        f"{row['score']['mean']:>12.4g}{row['recall']['mean']:>9.3f}"
                        f"{row['precision']['mean']:>10.3f}{row['collapsed']:>6}/{row['seeds']}"
                        + (f"  {criteria}" if criteria else "")
                    )
        return lines


PLANT = register_pipeline(PlantPipeline())


run = PLANT.run
