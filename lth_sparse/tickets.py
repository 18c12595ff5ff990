"""Tickets read back from an IMP run: what transfer, consensus and the analyses start from.

``load_ticket(run_dir, round)`` gives the ticket of one round of one seed: its masks, the
state its survivors are rewound to, the initialisation, the round's trained weights and
its saved results, from an IMP run directory's ``seed_N/round_NN/``; it refuses a run of
another kind, a round that has not finished, or a seed the run does not have, naming what it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from lth_sparse.integrity import load_torch, read_done
from lth_sparse.masks import Masks, unwrap_model
from lth_sparse.runs import ConfigMismatch, read_json

__all__ = [
    "Ticket",
    "finished_rounds",
    "imp_run_config",
    "load_ticket",
    "resolve_seed",
    "result_files",
    "round_results",
    "run_seeds",
    "seed_folder",
    "training_options",
]

WEIGHTS = ("rewind", "init", "final")


@dataclass
class Ticket:
    """One round's ticket of one IMP run (a seed of it).

    ``masks``: the round's masks (round 0: all ones). ``rewind_state``: the state dict the
    survivors restart from (``rewind_iteration`` of the dense run: 0 for ``--rewind init``,
    later for late resetting). ``init_state``: the initialisation. ``final_state``: the
    round's trained weights. ``result``: the round's ``done.json`` (accuracies, sparsity...).
    ``config``: the run's config as saved (a dict).
    """

    run_dir: Path
    seed: int
    round: int
    masks: Masks
    rewind_state: dict
    rewind_iteration: int
    init_state: dict
    final_state: dict
    result: dict
    config: dict

    def state(self, weights: str = "rewind") -> dict:
        """The state dict of ``weights``: ``rewind`` (the ticket), ``init`` or ``final`` (the trained round)."""
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        return {"rewind": self.rewind_state, "init": self.init_state, "final": self.final_state}[weights]

    def apply_to(self, model: nn.Module, weights: str = "rewind") -> nn.Module:
        """Load ``weights`` into ``model`` (of the run's architecture, masked) and apply the ticket's masks:
        the sub-network, its pruned weights zero. Returns ``model``."""
        bare = unwrap_model(model)
        state = {k: v for k, v in self.state(weights).items() if not k.endswith(".mask")}
        missing, unexpected = bare.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(".mask")]
        if missing or unexpected:
            raise ValueError(
                f"the model does not fit the ticket's {self.config.get('model')!r} weights: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.masks.apply_to(model)
        return model


def imp_run_config(run_dir) -> dict:
    """The config an IMP run directory saved (a dict); refuses a directory that is no run, or a run of another
    kind, saying which."""
    config_file = Path(run_dir).expanduser() / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {run_dir}: not a run directory")
    saved = read_json(config_file)
    if saved.get("kind") != "imp":
        raise ConfigMismatch(f"{run_dir} holds a {saved.get('kind')!r} run, not an IMP run: tickets come from IMP")
    return saved["config"]


def result_files(run_dir) -> list[Path]:
    """The files of an IMP run that its readers' results come from: ``config.json`` and every round's
    ``done.json`` (what a summary built from the run depends on; see ``Pipeline.summary_inputs``)."""
    run_dir = Path(run_dir).expanduser()
    return [run_dir / "config.json", *sorted(run_dir.glob("seed_*/round_[0-9][0-9]/done.json"))]


def resolve_seed(run_dir, seed: int | None = None) -> int:
    """``seed`` if the IMP run in ``run_dir`` holds it (else a :class:`KeyError` naming the seeds it holds), or the
    run's first seed when ``seed`` is None."""
    seeds = run_seeds(run_dir)
    if seed is None:
        if not seeds:
            raise KeyError(f"{run_dir} holds no seed_N/ folder: no IMP seed of it has started")
        return seeds[0]
    if seed not in seeds:
        raise KeyError(f"{run_dir} has no seed {seed}; its seeds: {seeds}")
    return seed


def run_seeds(run_dir) -> list[int]:
    """The seeds an IMP run directory holds (those with a ``seed_N/`` folder), sorted."""
    run_dir = Path(run_dir)
    found = []
    for d in run_dir.glob("seed_*"):
        suffix = d.name[len("seed_") :]
        if d.is_dir() and suffix.lstrip("-").isdigit():
            found.append(int(suffix))
    return sorted(found)


def seed_folder(run_dir, seed: int | None = None) -> Path:
    """The folder of one seed of an IMP run (``seed_N/``): its ``rewind.pt``, ``init.pt`` and ``round_NN/``.
    Default: the run's first seed."""
    run_dir = Path(run_dir).expanduser()
    imp_run_config(run_dir)  # an IMP run, or a clear error
    return run_dir / f"seed_{resolve_seed(run_dir, seed)}"


def round_results(run_dir, seed: int | None = None) -> list[dict]:
    """The ``done.json`` of every finished round of one seed of an IMP run, in round order."""
    folder = seed_folder(run_dir, seed)
    return [read_done(folder / f"round_{r:02d}" / "done.json") for r in finished_rounds(run_dir, seed)]


def training_options(config: dict) -> dict:
    """The training options (the fields of :class:`lth_sparse.train.TrainConfig`) of a run's saved config."""
    from dataclasses import fields

    from lth_sparse.train import TrainConfig

    return {f.name: config[f.name] for f in fields(TrainConfig) if f.name in config}


def finished_rounds(run_dir, seed: int | None = None) -> list[int]:
    """The rounds of one seed of an IMP run that have finished (have ``done.json``), sorted."""
    folder = seed_folder(run_dir, seed)
    return sorted(int(d.name[len("round_") :]) for d in folder.glob("round_[0-9][0-9]") if (d / "done.json").exists())


def load_ticket(run_dir, round: int, seed: int | None = None, device="cpu") -> Ticket:
    """The ticket of ``round`` (0 = the dense network) of ``seed`` (default: the run's first) of an IMP run."""
    run_dir = Path(run_dir)
    config = imp_run_config(run_dir)
    seed = resolve_seed(run_dir, seed)
    folder = run_dir / f"seed_{seed}"
    done = finished_rounds(run_dir, seed)
    if round not in done:
        raise KeyError(f"round {round} of seed {seed} in {run_dir} has not finished; finished rounds: {done}")
    step = folder / f"round_{round:02d}"
    rewind = load_torch(folder / "rewind.pt", map_location=device)
    return Ticket(
        run_dir=run_dir,
        seed=seed,
        round=round,
        masks=Masks.load(step / "masks.safetensors", device),
        rewind_state=rewind["state_dict"],
        rewind_iteration=rewind["iteration"],
        init_state=load_torch(folder / "init.pt", map_location=device),
        final_state=load_torch(step / "final.pt", map_location=device),
        result=read_done(step / "done.json"),
        config=config,
    )
