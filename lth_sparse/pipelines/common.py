"""The block every pipeline's config and summary is built on.

- :class:`CommonConfig`: the options every pipeline shares (the training hyperparameters of
  :class:`~lth_sparse.train.TrainConfig`, the seed and the seeds, the training subset and the
  validation share, the device, the data folder, the threads, the experiment trackers of
  :mod:`lth_sparse.tracking`), defined once; a pipeline's config
  inherits them and adds its own (a field redefined by a pipeline keeps its place and its name:
  only its default or its help differ);
- :func:`parse_seeds`, the ``--seeds`` option's reading; :func:`parse_stack`, the ``--stack`` option's;
- :func:`stack_key`, what the trainings of two configs must share to be trained together (stacked);
- :data:`MORCOS_TRAINING`, the training recipes of Morcos et al. (2019) that IMP and transfer presets use;
- :func:`~lth_sparse.stats.over_seeds` (re-exported), the statistics every summary reports over seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lth_sparse.config import data_dir_option, device_option, option, threads_option
from lth_sparse.executors import resolve_threads
from lth_sparse.stats import over_seeds
from lth_sparse.tracking import TRACKERS, WANDB_MODES, parse_trackers
from lth_sparse.train import TrainConfig

__all__ = [
    "DERIVED_TASKS",
    "MORCOS_TRAINING",
    "STACK_APART",
    "CommonConfig",
    "over_seeds",
    "parse_seeds",
    "parse_stack",
    "stack_key",
]

DERIVED_TASKS = (
    "NAME:half=a|b, NAME:subset=F, NAME:classes=0,1,2, NAME:shape=CxHxW, NAME:permute=SEED, "
    "NAME:augment=none|flip|cropP|flip+cropP (combinable: fashion-mnist:half=a:permute=1)"
)
"""How the ``--help`` of the pipelines that take data sets names the derived tasks (:mod:`lth_sparse.data.derived`)."""

# Morcos et al. (2019), "One ticket to win them all", Appendix A.1: SGD at 0.1 with momentum 0.9 and weight decay
# 1e-4, or Adam at 3e-4 with betas 0.9/0.999 and weight decay 1e-4 (coupled, as torch.optim.Adam's), batch 512;
# VGG19's 160 epochs with the learning rate divided by 10 at epochs 80 and 120 (small-scale runs give --epochs and
# --milestones together).
_MORCOS_TRAIN = dict(
    batch_size=512,
    epochs=160.0,
    schedule="step",
    milestones=(80.0, 120.0),
    gamma=0.1,
    warmup_epochs=0.0,
    weight_decay=1e-4,
)
MORCOS_TRAINING = {
    "morcos": dict(_MORCOS_TRAIN, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False),
    "morcos-adam": dict(_MORCOS_TRAIN, optimizer="adam", lr=3e-4, betas=(0.9, 0.999)),
}


def parse_stack(value) -> int | None:
    """``--stack``: ``auto`` (``None``) or a count of at least 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected auto or a count of at least 1, got {value!r}") from None
    if isinstance(value, float) and value != count or count < 1:
        raise ValueError(f"expected auto or a count of at least 1, got {value!r}")
    return count


STACK_APART = ("seed", "seeds", "lr", "momentum", "weight_decay", "threads", "stack")
"""The fields in which the configs of stacked trainings may differ (besides every ``*_seed`` field): their
seeds and the per-member hyperparameters of :func:`~lth_sparse.train.train_stacked`."""


def stack_key(config, apart: tuple[str, ...] = ()) -> str:
    """What ``config``'s trainings share with those that may be stacked with them: the hash of ``config`` with the
    fields of :data:`STACK_APART`, every ``*_seed`` field and ``apart`` (fields that change what is trained but
    not how: e.g. the pruning fraction, which only changes the masks) at their defaults."""
    from lth_sparse.runs import config_hash

    defaults = {}
    for f in dataclasses.fields(config):
        if f.name in STACK_APART or f.name in apart or f.name.endswith("_seed"):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    return config_hash(dataclasses.replace(config, **defaults))


def parse_seeds(value) -> tuple[int, ...]:
    """``--seeds``: a count N (``3`` -> seeds 0, 1, 2) or a comma-separated list (``0,4,7``; ``4,`` is seed 4
    alone); in a config file an int is a count and a list is the seeds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count or a list of seeds, got {value!r}")
    if isinstance(value, int):
        count = value
    elif isinstance(value, str) and "," not in value:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"expected a count or a comma-separated list of seeds, got {value!r}") from None
    else:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        if not items and not isinstance(value, str):
            return ()  # an empty list (as config.json holds the default): --seed alone
        try:
            seeds = tuple(int(v) for v in items)
        except (TypeError, ValueError):
            raise ValueError(f"seeds must be integers, got {value!r}") from None
        if not seeds or any(isinstance(v, bool) for v in items):
            raise ValueError(f"expected at least one integer seed, got {value!r}")
        return seeds
    if count < 1:
        raise ValueError(f"a count of seeds must be >= 1, got {count}")
    return tuple(range(count))


@dataclass(frozen=True)
class CommonConfig(TrainConfig):
    """The options every pipeline's config shares, beside the training hyperparameters it inherits."""

    seed: int = option(0, "the run's seed")
    seeds: tuple[int, ...] = option(
        (),
        "several seeds (a count or a list), each run into RUN/seed_N/ and summarised over",
        parse=parse_seeds,
        metavar="N|S,S,...",
        default_text="--seed alone",
    )
    train_size: int | None = option(None, "train on a seeded subset of N examples (quick runs)", metavar="N")
    val_fraction: float = option(0.2, "share of the training set held out for validation")
    device: str = device_option()
    data_dir: str | None = data_dir_option()
    threads: int | None = threads_option()
    stack: int | None = option(
        None,
        "train up to K of the run's independent trainings together, in lockstep (stacked training: each gets "
        "its results alone, to float rounding; docs/scaling.md); 1: each alone; auto: as many as were measured "
        "to pay for the run's model on its device",
        identity=False,
        metavar="K|auto",
        parse=parse_stack,
        default_text="auto",
    )
    tracker: tuple[str, ...] = option(
        (),
        f"experiment trackers to log the run to, any of {', '.join(TRACKERS)} (each an optional extra: pip install "
        "'lth_sparse[NAME]'; docs/trackers.md)",
        identity=False,
        metavar="NAME,...",
        parse=parse_trackers,
    )
    tracker_dir: str | None = option(
        None,
        "where TensorBoard, W&B and MLflow's default store write",
        identity=False,
        metavar="DIR",
        default_text="RUN/tracking",
    )
    tracker_project: str = option(
        "lth-sparse", "the W&B project and the MLflow experiment", identity=False, metavar="NAME"
    )
    wandb_entity: str | None = option(None, "the W&B entity (user or team)", identity=False, metavar="NAME")
    wandb_mode: str = option(
        "online",
        "online: W&B logs online where it has credentials and reaches its server, else offline (said once)",
        choices=WANDB_MODES,
        identity=False,
    )
    mlflow_uri: str | None = option(
        None,
        "the MLflow tracking URI",
        identity=False,
        metavar="URI",
        default_text="$MLFLOW_TRACKING_URI, else sqlite:///TRACKER_DIR/mlflow.db",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tracker", parse_trackers(self.tracker))  # also from the API: a str or a list
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode must be one of {WANDB_MODES}, got {self.wandb_mode!r}")
        if self.threads is not None:
            resolve_threads(self.threads)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")

    def seed_list(self) -> tuple[int, ...]:
        """The seeds this config runs: ``seeds``, or ``(seed,)`` when it is empty."""
        return self.seeds or (self.seed,)

    def for_seed(self, seed: int):
        """The single-seed config of seed ``seed`` of this config (itself where it has no ``seeds``)."""
        return dataclasses.replace(self, seed=seed, seeds=()) if self.seeds else self
