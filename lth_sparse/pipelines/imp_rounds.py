"""IMP's rounds as a block: the config of an IMP run, one single-seed run of it, and its units.

:class:`ImpRun` holds one single-seed IMP run's data, model and rounds as resumable steps;
:func:`imp_seed` (one seed's rounds), :func:`imp_control` (a round's control) and :func:`imp_sparse`
(AIMP's sparse training of a round's ticket) are the units the IMP pipeline
(:mod:`lth_sparse.pipelines.imp`) plans, and the IMP stages of the consensus and instability
pipelines run the same ``imp_seed``. See :mod:`lth_sparse.pipelines.imp` for what the rounds do.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lth_sparse.config import option
from lth_sparse.distributed import World
from lth_sparse.experiment import check_device, draw_model
from lth_sparse.integrity import load_torch
from lth_sparse.masks import Masks, masked_weights
from lth_sparse.pipelines.common import MORCOS_TRAINING, CommonConfig, parse_seeds
from lth_sparse.pipelines.steps import (
    MaskedTraining,
    prune_trained,
    run_step,
    shared_dataset,
    train_masked,
    train_masked_grouped,
)
from lth_sparse.prune import (
    IMPORTANCES,
    SCOPES,
    STRUCTURED_NORMS,
    check_importance_and_scope,
    effective_masks,
    output_connected_masks,
    random_masks_like,
)
from lth_sparse.runs import Steps, atomic_torch_save
from lth_sparse.train import TrainConfig, iterations_per_epoch, make_schedule, parse_step

RETRAIN_MODES = ("rewind", "finetune", "lr-rewind")
PRUNERS = IMPORTANCES + ("random",)

# Morcos et al.'s pruning: 20% global magnitude pruning per round, late resetting to epoch 1 (their small data sets).
PRESETS = {
    name: dict(train, fraction=0.2, scope="global", importance="magnitude", rewind="epoch:1", retrain="rewind")
    for name, train in MORCOS_TRAINING.items()
}


def _layerwise(epochs: float, batch_size, lr, momentum, weight_decay, milestones, rewind, spare_output=False):
    step = dict(schedule="step", milestones=milestones, gamma=0.1) if milestones else dict(schedule="constant")
    return dict(
        optimizer="sgd",
        lr=lr,
        momentum=momentum,
        nesterov=False,
        weight_decay=weight_decay,
        batch_size=batch_size,
        epochs=epochs,
        warmup_epochs=0.0,
        **step,
        fraction=0.2,
        scope="global",
        rewind=rewind,
        retrain="rewind",
        spare_output=spare_output,
    )


# "Considering layerwise importance in the lottery ticket hypothesis", Appendix A, one recipe per network: LTR with
# 20% global pruning per round (the importance is the option the study varies, so --importance stays the user's).
# ResNet20's batch is 128: the table's "238" contradicts its own 391 iterations per epoch (50,000 / 128). The table
# is OpenLTH's default recipes row by row (its mnist_lenet_300_100, cifar_resnet_20: batch 128), so OpenLTH's
# pruning is read for what the text leaves open: its LeNet never prunes the output layer (pruning_layers_to_ignore).
PRESETS.update(
    {
        "layerwise-lenet": _layerwise(40.0, 128, 0.1, 0.0, 0.0, None, "init", spare_output=True),
        "layerwise-resnet20": _layerwise(160.0, 128, 0.1, 0.9, 1e-4, (80.0, 120.0), "iter:1000"),
        "layerwise-vgg16": _layerwise(160.0, 128, 0.1, 0.9, 1e-4, (80.0, 120.0), "iter:2000"),
        "layerwise-resnet18": _layerwise(200.0, 256, 0.2, 0.9, 1e-4, (100.0, 150.0), "iter:1000"),
    }
)


@dataclass(frozen=True)
class ImpConfig(CommonConfig):
    """An IMP experiment: the training hyperparameters of :class:`TrainConfig` (inherited), and these.

    Fields marked ``identity=False`` may change between a run and its resumption.
    """

    PRESETS: ClassVar[dict] = PRESETS

    dataset: str = option("fashion-mnist", "dataset name (the list is at the end of --help)")
    model: str = option("lenet300", "model name")
    model_options: tuple[tuple[str, object], ...] = option(
        (),
        "model option, e.g. depth=3 or width=512 for mlp (repeatable; in a --config file a mapping)",
        flag="model-option",
        metavar="KEY=VALUE",
    )
    rounds: int = option(5, "pruning rounds after the dense one (raising it extends a finished run)", identity=False)
    fraction: float = option(0.2, "fraction of the remaining weights pruned per round")
    rewind: str = option("init", "rewind point: init, epoch:N or iter:N (late resetting)")
    retrain: str = option(
        "rewind",
        "rewind the weights (LTR), fine-tune them at the final learning rate, or keep "
        "them and rewind only the learning-rate schedule",
        choices=RETRAIN_MODES,
    )
    scope: str = option(
        "global", "compare scores across all layers, or prune each layer by the fraction", choices=SCOPES
    )
    importance: str = option(
        "magnitude",
        "score: magnitude, the layer-normalised l1/l2/softmax/minmax/lamp (with --scope global), or random",
        choices=PRUNERS,
    )
    structured: str | None = option(
        None, "prune whole neurons/channels by this norm instead of single weights", choices=STRUCTURED_NORMS
    )
    spare_output: bool = option(False, "never prune the output layer")
    search_epochs: float | None = option(
        None,
        "AIMP (Zullich et al. 2021): every round's mask-search training lasts "
        "this many epochs, its learning-rate schedule compressed to them; "
        "each round's ticket then gets a sparse training with the full "
        "schedule (--epochs) in the second stage",
        metavar="E",
        default_text="none: the rounds train the full schedule (IMP)",
    )
    sparse_options: tuple[tuple[str, object], ...] = option(
        (),
        "with --search-epochs, training options of the sparse training that differ from the mask search's, "
        "e.g. momentum=0.9 batch_size=256 (the SGD-noise paper's Table 4; repeatable; in a file a mapping)",
        flag="sparse-option",
        metavar="KEY=VALUE",
    )
    controls: bool = option(False, "also train the random-reinit and random-mask controls each round")
    seed: int = option(0, "the run's seed: every seed below that is not given defaults to it")
    init_seed: int | None = option(
        None, "seed of the initialisation (and, offset per round, of the reinit control's)", default_text="--seed"
    )
    split_seed: int | None = option(
        None, "seed of the train/validation split and of the --train-size subset", default_text="--seed"
    )
    order_seed: int | None = option(None, "seed of the data order (the SGD noise)", default_text="--seed")
    augment_seed: int | None = option(
        None,
        "seed of the data augmentation (random crops and flips)",
        default_text="the data order's generator, as before it could be set apart",
    )
    init_file: str | None = option(
        None,
        "start from this state dict (a run's init.pt, or a partially "
        "re-initialised one) instead of a draw from --init-seed",
        metavar="FILE",
    )
    prune_seed: int | None = option(
        None, "seed of random pruning and of the random-mask control", default_text="--seed"
    )
    preset: str | None = option(
        None,
        "a paper's recipe; options given override it. morcos: Morcos et al. 2019's "
        "SGD (lr 0.1, momentum 0.9, weight decay 1e-4, batch 512, 160 epochs, lr / 10 "
        "at 80 and 120), 20% global magnitude pruning, late resetting to epoch 1; "
        "morcos-adam: the same with Adam (lr 3e-4, betas 0.9/0.999, weight decay 1e-4); layerwise-lenet, "
        "-resnet20, -vgg16, -resnet18: the layerwise-importance paper's LTR recipes (Appendix A: SGD; LeNet "
        "40 epochs at 0.1, batch 128, from init, the output layer spared; the others 160 epochs (ResNet-18 "
        "200) with momentum 0.9, weight decay 1e-4, lr / 10 twice, rewound to iteration 1000 or 2000 "
        "(VGG-16)); 20% global pruning",
        choices=tuple(PRESETS),
    )
    seeds: tuple[int, ...] = option(
        (),
        "run one IMP per seed, into RUN/seed_N/, and summarise over them: a count "
        "(--seeds 3: seeds 0, 1, 2) or a list (--seeds 0,4,7; a single seed "
        "with a comma, --seeds 4,); each seed stands for --seed except that the "
        "train/validation split stays that of --seed (or --split-seed)",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="--seed alone",
    )
    train_size: int | None = option(None, "train on a seeded subset of N examples (quick runs)", metavar="N")
    val_fraction: float = option(0.2, "share of the official training set held out for validation")
    threads: int | None = option(
        None,
        "CPU threads for torch, recorded in config.json; several jobs on one "
        "machine: give each --threads so that they sum to the cores",
        identity=False,
        metavar="N",
        default_text="OMP_NUM_THREADS if set, else the usable cores not already busy, measured at start",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.retrain not in RETRAIN_MODES:
            raise ValueError(f"retrain must be one of {RETRAIN_MODES}, got {self.retrain!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.importance not in PRUNERS:
            raise ValueError(f"importance must be one of {PRUNERS}, got {self.importance!r}")
        if self.structured is not None and self.structured not in STRUCTURED_NORMS:
            raise ValueError(f"structured must be one of {STRUCTURED_NORMS} or None, got {self.structured!r}")
        if self.structured is None:
            check_importance_and_scope(self.importance, self.scope)  # before round 0 trains, not after
        parse_step(self.rewind, 1, option="--rewind")
        if self.search_epochs is not None and not 0 < self.search_epochs <= self.epochs:
            raise ValueError(f"search_epochs must lie in (0, epochs={self.epochs}], got {self.search_epochs}")
        if self.sparse_options and self.search_epochs is None:
            raise ValueError("--sparse-option sets the sparse training of AIMP: give --search-epochs too")
        if self.sparse_options:
            self.sparse_train_config()

    def seed_of(self, what: str) -> int:
        """The seed of ``what`` (``init``, ``split``, ``order``, ``prune``): its own, else ``seed``."""
        own = getattr(self, f"{what}_seed")
        return self.seed if own is None else own

    def for_seed(self, seed: int) -> ImpConfig:
        """The single-seed config of one of this config's IMP runs (one unit). Under ``seeds`` the
        train/validation split stays the run's (``split_seed``, else ``seed``): the seeds vary the
        initialisation, the data order, the augmentation and random pruning, not the data."""
        if not self.seeds:
            return self
        return dataclasses.replace(self, seed=seed, seeds=(), split_seed=self.seed_of("split"))

    def train_config(self) -> TrainConfig:
        """The rounds' training: with ``search_epochs`` (AIMP) the mask search's, its schedule compressed to that
        budget (step milestones scaled alike); else the full one."""
        values = self.training_options()
        if self.search_epochs is not None:
            ratio = self.search_epochs / self.epochs
            values.update(
                epochs=self.search_epochs,
                milestones=tuple(m * ratio for m in self.milestones),
                warmup_epochs=self.warmup_epochs * ratio,
            )
        return TrainConfig(**values)

    def sparse_train_config(self) -> TrainConfig:
        """AIMP's sparse training of each round's ticket: the full schedule, with ``sparse_options`` applied."""
        from lth_sparse.config import config_from_options

        values = self.training_options()
        return config_from_options(TrainConfig, {**values, **dict(self.sparse_options)}, "--sparse-option")


def round_name(r: int) -> str:
    """The folder of round ``r`` of a single-seed IMP run: ``round_NN``."""
    return f"round_{r:02d}"


CONTROLS = ("reinit", "random_mask")
SPARSE = "sparse"  # AIMP's sparse training of a round's ticket: round_NN/sparse/


def control_name(r: int, control: str) -> str:
    return f"{round_name(r)}/control_{control}"


@dataclass(frozen=True)
class FinalRate:
    """The learning-rate factor of fine-tuning: the schedule's final factor, constant (a value, so that the
    fine-tuning rounds of several runs at one rate train together)."""

    factor: float

    def __call__(self, iteration: int) -> float:
        return self.factor


class ImpRun:
    """One single-seed IMP run in ``directory`` (``None``: only check the inputs): its data, its model, and
    its rounds as resumable steps (:func:`~lth_sparse.pipelines.steps.run_step`), each a
    :func:`~lth_sparse.pipelines.steps.train_masked` after a :func:`~lth_sparse.pipelines.steps.prune_trained`.

    Under torchrun (see :mod:`lth_sparse.distributed`) every rank holds one of these and
    trains each round wrapped in DistributedDataParallel, each rank on its shard of every
    batch; rank 0 alone reads and writes ``directory``: it decides which rounds are done,
    prunes, and broadcasts the masks once per round; the weights a training starts from
    reach the other ranks when the wrapper is built. Every rank evaluates (in
    :func:`~lth_sparse.train.train`, on identical weights); rank 0's results are recorded
    and shared, so every rank returns the same rounds.
    """

    def __init__(self, config: ImpConfig, directory, progress: bool | None, log: Callable[[str], None]):
        self.config = config
        self.world = World.current()
        self.run = Steps(directory) if directory is not None else None
        self.progress = progress
        self.log = log
        self.device = self.world.device(config.device)
        check_device(self.device)
        self.data = shared_dataset(
            config.dataset,
            data_dir=config.data_dir,
            device=self.device,
            val_fraction=config.val_fraction,
            seed=config.seed_of("split"),
            train_size=config.train_size,
        )
        self.train_cfg = config.train_config()
        self.per_epoch = iterations_per_epoch(len(self.data.train), config.batch_size)
        self.total_iters = round(self.train_cfg.epochs * self.per_epoch)  # AIMP: the mask search's budget
        self.rewind_iter = parse_step(config.rewind, self.per_epoch)
        if self.rewind_iter >= self.total_iters:
            raise ValueError(
                f"rewind point {config.rewind} (iteration {self.rewind_iter}) must come before the end "
                f"of training (iteration {self.total_iters})"
            )
        self.model = self.new_model(config.seed_of("init"))
        if config.init_file is not None:
            self._load_init_file(config.init_file)
        self.names = list(masked_weights(self.model))
        self.exclude = [self.names[-1]] if config.spare_output else []

    def _load_init_file(self, init_file: str) -> None:
        """Start the model from the state dict in ``init_file`` (a run's ``init.pt``, or a ``rewind.pt``, which
        holds it under ``state_dict``). A ValueError naming the file where it is not a state dict saved by
        ``torch.save``, or where it does not fit the model: its first missing and unexpected keys and its first
        shape mismatch."""
        c = self.config
        path = Path(init_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"init_file {init_file}: no such file")
        with warnings.catch_warnings():  # torch's advice on pickle protocols is no help for a file that is not its own
            warnings.simplefilter("ignore")
            try:
                state = torch.load(path, map_location=self.device)
            except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"init_file {init_file}: not a state dict saved by torch.save (torch.load: {type(error).__name__})"
                ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # rewind.pt holds it under state_dict
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"init_file {init_file}: holds a {type(state).__name__}, not a state dict saved by torch.save "
                "(parameter names -> tensors)"
            )
        try:
            self.model.load_state_dict(state)
        except RuntimeError:
            raise ValueError(
                f"init_file {init_file} does not fit {c.model} on {c.dataset}: {_state_dict_misfit(state, self.model)}"
            ) from None

    def new_model(self, seed: int):
        """A freshly initialised model, drawn from ``seed``."""
        return draw_model(
            self.config.model,
            self.data.input_shape,
            self.data.num_classes,
            self.config.model_options,
            seed=seed,
            device=self.device,
        )

    def training(
        self,
        state: dict | None,
        masks: Masks,
        folder: Path,
        *,
        lr_factor=None,
        snapshot_at=(),
        on_snapshot=None,
        start: int | None = None,
        desc: str,
    ) -> MaskedTraining:
        """One training of this run's model from ``state`` under ``masks`` (the same on every rank), from the
        rewind iteration (``start``) to the end; with ``lr_factor`` (fine-tuning) as many iterations at that
        rate instead: to run alone (``.run(world)``) or stacked with other runs' trainings."""
        start = self.rewind_iter if start is None else start
        return MaskedTraining(
            self.model,
            self.data,
            self.train_cfg,
            masks,
            state,
            folder,
            seed=self.config.seed_of("order"),
            augment_seed=self.config.augment_seed,
            start=start,
            end=start + (self.total_iters - self.rewind_iter) if lr_factor else None,
            lr_factor=lr_factor,
            snapshot_at=snapshot_at,
            on_snapshot=on_snapshot,
            progress=self.progress,
            desc=desc,
        )

    # --- rounds ----------------------------------------------------------------------------------
    def round(self, r: int) -> dict:
        """Round ``r``'s result: its ``done.json`` where it is done, else the round run (a resumable step)."""

        def compute(folder: Path) -> dict:
            training, finish = self.round_training(r, folder)
            return finish(training.run(self.world))

        return run_step(self.run, round_name(r), compute, world=self.world)

    def round_training(self, r: int, folder: Path) -> tuple[MaskedTraining, Callable[[dict], dict]]:
        """What round ``r`` trains into ``folder`` (round 0: the dense network from its initialisation, saving
        ``init.pt`` and, at the rewind iteration, ``rewind.pt``; round ``r`` > 0: round ``r - 1``'s trained
        weights pruned, then retrained as ``retrain`` says), and the function that makes the round's result of
        the training's metrics; to run alone (:meth:`round`) or stacked with other seeds' rounds."""
        run, c = self.run, self.config
        if r == 0:
            init_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            if self.world.writer:
                atomic_torch_save(run / "init.pt", init_state)

            def keep_rewind(it, state):  # called on rank 0 alone
                atomic_torch_save(run / "rewind.pt", {"iteration": it, "state_dict": state})

            masks = Masks.ones_like(self.model)
            training = self.training(
                init_state,
                masks,
                folder,
                start=0,
                snapshot_at=[self.rewind_iter],
                on_snapshot=keep_rewind,
                desc="round 0 (dense)",
            )
            return training, lambda metrics: self._record(0, masks, metrics)
        prev_dir = run / round_name(r - 1)

        def prune():  # on rank 0
            prev_state = load_torch(prev_dir / "final.pt", map_location=self.device)
            prev_masks = Masks.load(prev_dir / "masks.safetensors", self.device)
            generator = torch.Generator().manual_seed(c.seed_of("prune") * 7919 + r)
            masks = prune_trained(
                self.model,
                prev_state,
                prev_masks,
                c.fraction,
                importance=c.importance,
                scope=c.scope,
                structured=c.structured,
                exclude=self.exclude,
                generator=generator,
            )
            rewind = load_torch(run / "rewind.pt", map_location=self.device)["state_dict"]
            return prev_state, masks, rewind

        prev_state, masks, rewind = self.world.on_writer(prune, share=False) or (None, None, None)
        masks = self.world.broadcast_masks(masks, self.model)
        if c.retrain == "rewind":
            training = self.training(rewind, masks, folder, desc=f"round {r}")
        elif c.retrain == "lr-rewind":
            training = self.training(prev_state, masks, folder, desc=f"round {r}")
        else:
            final_lr = make_schedule(self.train_cfg, self.per_epoch, self.total_iters)(self.total_iters - 1)
            training = self.training(prev_state, masks, folder, lr_factor=FinalRate(final_lr), desc=f"round {r}")
        return training, lambda metrics: self._record(r, masks, metrics)

    def control(self, r: int, control: str) -> dict:
        """Train the control ``control`` of round ``r`` (Frankle & Carbin 2019), from the round's saved masks:
        ``reinit``, the same masks on a fresh initialisation (drawn from ``init_seed + 100000 + r``);
        ``random_mask``, a random mask of the same per-layer counts (drawn from ``prune_seed * 31 + r``)
        on the rewind state. Both train as the round did, from the rewind iteration."""
        return self.control_training(r, control).run(self.world)

    def control_training(self, r: int, control: str) -> MaskedTraining:
        """What :meth:`control` trains, to run alone or stacked with other controls."""
        c, round_dir = self.config, self.run / round_name(r)
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")

        def load():  # on rank 0
            masks = Masks.load(round_dir / "masks.safetensors", self.device)
            if control == "reinit":
                return masks, None
            generator = torch.Generator().manual_seed(c.seed_of("prune") * 31 + r)
            rewind = load_torch(self.run / "rewind.pt", map_location=self.device)["state_dict"]
            return random_masks_like(masks, generator).to(self.device), rewind

        masks, state = self.world.on_writer(load, share=False) or (None, None)
        masks = self.world.broadcast_masks(masks, self.model)
        if control == "reinit":
            state = self.new_model(c.seed_of("init") + 100_000 + r).state_dict()
        return self.training(state, masks, self.run / control_name(r, control), desc=f"round {r} {control}")

    def sparse(self, r: int) -> dict:
        """AIMP's sparse training of round ``r``'s ticket: its masks over the rewind state, trained with the full
        schedule (and ``sparse_options``) from the rewind iteration, the schedule's own position; the rewind
        iteration counts the mask search's epochs, so it is carried over as a fraction of an epoch count."""
        c, round_dir = self.config, self.run / round_name(r)
        cfg = c.sparse_train_config()
        per_epoch = iterations_per_epoch(len(self.data.train), cfg.batch_size)
        total = round(cfg.epochs * per_epoch)
        start = round(self.rewind_iter / self.per_epoch * per_epoch)
        masks = self.world.on_writer(lambda: Masks.load(round_dir / "masks.safetensors", self.device), share=False)
        masks = self.world.broadcast_masks(masks, self.model)
        rewind = self.world.on_writer(
            lambda: load_torch(self.run / "rewind.pt", map_location=self.device)["state_dict"], share=False
        )
        metrics = train_masked(
            self.model,
            self.data,
            cfg,
            masks,
            rewind,
            self.run / f"{round_name(r)}/{SPARSE}",
            seed=c.seed_of("order"),
            augment_seed=c.augment_seed,
            start=min(start, total - 1),
            progress=self.progress,
            desc=f"round {r} sparse training",
            world=self.world,
        )
        return metrics

    def _record(self, r: int, masks: Masks, metrics: dict) -> dict:
        """The round's result (its ``done.json``), computed by rank 0 and shared with every rank."""

        def record() -> dict:  # on rank 0
            effective = effective_masks(self.model, masks, self.data.input_shape)
            output_side = output_connected_masks(self.model, masks, self.data.input_shape)
            return {
                "round": r,
                "sparsity": masks.sparsity(),
                "density": masks.density(),
                "layer_sparsity": masks.layer_sparsity(),
                "effective_sparsity": effective.sparsity(),
                "output_connected_sparsity": output_side.sparsity(),
                "input_shape": list(self.data.input_shape),
                "num_classes": self.data.num_classes,
                **{
                    key: metrics[key]
                    for key in (
                        "test_accuracy",
                        "test_loss",
                        "val_accuracy",
                        "val_loss",
                        "best_val_iteration",
                        "best_val_loss",
                        "iterations",
                        "train_seconds",
                    )
                },
            }

        return self.world.on_writer(record)


def _state_dict_misfit(state: dict, model: torch.nn.Module, shown: int = 3) -> str:
    """How ``state`` does not fit ``model``: its first ``shown`` missing and unexpected keys (with their counts) and
    its first shape mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            listed = ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
            parts.append(f"{len(keys)} {what} key{'s' if len(keys) != 1 else ''} ({listed})")
    for k, v in expected.items():
        if k in state and state[k].shape != v.shape:
            parts.append(f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model")
            break
    return "; ".join(parts) or "load_state_dict refuses it"


def round_row(result: dict, controls: bool) -> str:
    """One round's line of the table IMP logs and reports."""
    row = (
        f"{result['round']:>5d}  {100 * result['density']:>8.2f}%  {100 * result['effective_sparsity']:>8.2f}%  "
        f"{100 * result['test_accuracy']:>8.2f}%  {result['test_loss']:>7.4f}  "
        f"{round(result['best_val_iteration']):>8d}"
    )
    if controls and "reinit_test_accuracy" in result:
        row += f"  {100 * result['reinit_test_accuracy']:>8.2f}%  {100 * result['random_mask_test_accuracy']:>8.2f}%"
    if "sparse_test_accuracy" in result:
        row += f"  {100 * result['sparse_test_accuracy']:>8.2f}%"
    return row


def round_header(controls: bool) -> str:
    """The header of the table IMP logs and reports."""
    head = f"{'round':>5}  {'remaining':>9}  {'eff.spars':>9}  {'test acc':>9}  {'loss':>7}  {'best it':>8}"
    if controls:
        head += f"  {'reinit':>9}  {'rand mask':>9}"
    return head


def imp_seed(config: ImpConfig, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The first unit of the IMP pipeline: one single-seed IMP run in ``directory`` (its rounds in
    ``round_NN/``, each finished by its own ``done.json``, so a killed run resumes after its last
    finished round). Returns ``{"seed", "rounds"}``, the unit's ``done.json``."""
    imp = _started(config, directory, progress, log)
    rounds = []
    for r in range(config.rounds + 1):
        result = imp.round(r)
        rounds.append(result)
        log(round_row(result, False))
    return {"seed": config.seed, "rounds": rounds}


def imp_seeds(
    configs: list[ImpConfig], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`imp_seed` of several single-seed IMP runs (other seeds; sweep points that differ only in what
    stacking lets members differ in, the pruning included) in lockstep: round by round, the rounds not yet done
    trained together as one stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`), each run pruned
    on its own between rounds, each round finished by its own ``done.json``."""
    imps = [_started(c, d, progress, log) for c, d, log in zip(configs, directories, logs)]
    rounds: list[list[dict]] = [[] for _ in imps]
    for r in range(max(c.rounds for c in configs) + 1):
        members = [k for k, imp in enumerate(imps) if r <= imp.config.rounds]
        pending = []
        for k in members:
            if imps[k].run.is_done(round_name(r)):
                rounds[k].append(imps[k].run.result(round_name(r)))
            else:
                pending.append((k, *imps[k].round_training(r, imps[k].run.step_dir(round_name(r)))))
        for (k, _, finish), metrics in zip(pending, train_masked_grouped([t for _, t, _ in pending])):
            result = finish(metrics)
            imps[k].run.mark_done(round_name(r), result)
            rounds[k].append(result)
        for k in members:
            logs[k](round_row(rounds[k][r], False))
    return [{"seed": c.seed, "rounds": found} for c, found in zip(configs, rounds)]


def _started(config: ImpConfig, directory: Path, progress: bool | None, log: Callable[[str], None]) -> ImpRun:
    """The single-seed IMP run of ``config`` in ``directory``, its opening lines logged."""
    imp = ImpRun(config, directory, progress, log)
    c = config
    log(
        f"IMP seed {c.seed}: {c.model} on {c.dataset}, {c.rounds} rounds of {c.fraction:.0%} "
        f"({c.scope}, {c.structured or c.importance}), rewind {c.rewind}, retrain {c.retrain}; "
        f"{len(imp.data.train)} training examples, {imp.total_iters} iterations per round, "
        f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
        + (f" on each of {imp.world.size} ranks (DDP, {imp.device} on rank 0)" if imp.world.size > 1 else "")
        + f" -> {directory}"
    )
    if imp.world.writer:
        finished = sum(imp.run.is_done(round_name(r)) for r in range(c.rounds + 1))
        if finished:
            log(f"resuming: {finished} of {c.rounds + 1} rounds already done")
    log(round_header(False))
    return imp


@dataclass(frozen=True)
class ImpControl:
    """What a control unit trains: ``control`` (``reinit`` or ``random_mask``) of round ``round`` of the
    single-seed IMP run of ``config``."""

    config: ImpConfig
    round: int
    control: str


def imp_control(spec: ImpControl, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The second stage's unit of the IMP pipeline: one control of one round, in
    ``seed_N/round_NN/control_KIND/`` (see :meth:`ImpRun.control`), trained from the round's saved masks
    once the seed's rounds are done; the controls of all rounds and seeds are independent of each
    other. Returns the training's results (``test_accuracy``, ``sparsity``, ...), its ``done.json``."""
    seed_dir = directory.parent.parent
    imp = ImpRun(spec.config, seed_dir, progress, log)
    result = imp.control(spec.round, spec.control)
    log(_control_line(spec, result))
    return result


def imp_controls(
    specs: list[ImpControl], directories: list[Path], logs: list[Callable[[str], None]], progress: bool | None
) -> list[dict]:
    """:func:`imp_control` of several controls (of any rounds and seeds, and sweep points whose configs differ
    only in what stacking lets members differ in: :func:`~lth_sparse.pipelines.common.stack_key`), trained
    together as one stack (:func:`~lth_sparse.pipelines.steps.train_masked_grouped`)."""
    trainings = [
        ImpRun(spec.config, directory.parent.parent, progress, log).control_training(spec.round, spec.control)
        for spec, directory, log in zip(specs, directories, logs)
    ]
    results = train_masked_grouped(trainings)
    for spec, log, result in zip(specs, logs, results):
        log(_control_line(spec, result))
    return results


def _control_line(spec: ImpControl, result: dict) -> str:
    return (
        f"seed {spec.config.seed} round {spec.round} {spec.control}: {100 * (1 - result['sparsity']):.2f}% "
        f"remaining, test accuracy {100 * result['test_accuracy']:.2f}%"
    )


@dataclass(frozen=True)
class ImpSparse:
    """What an AIMP sparse-training unit trains: round ``round``'s ticket of the single-seed run of ``config``."""

    config: ImpConfig
    round: int


def imp_sparse(spec: ImpSparse, directory: Path, log: Callable[[str], None], progress: bool | None) -> dict:
    """The second stage's unit of AIMP: one round's ticket trained with the full schedule in
    ``seed_N/round_NN/sparse/`` (see :meth:`ImpRun.sparse`); independent of the other rounds'."""
    seed_dir = directory.parent.parent
    imp = ImpRun(spec.config, seed_dir, progress, log)
    result = imp.sparse(spec.round)
    log(
        f"seed {spec.config.seed} round {spec.round} sparse training: {100 * (1 - result['sparsity']):.2f}% "
        f"remaining, test accuracy {100 * result['test_accuracy']:.2f}%"
    )
    return result
