"""Iterative magnitude pruning with rewinding (IMP / LTR): finding lottery tickets.

Round 0 trains the dense network and keeps the rewind state (the weights at
``rewind``: ``init``, or ``iter:N`` / ``epoch:N`` for late resetting, Frankle et
al. 2019/2020). Each later round removes ``fraction`` of the remaining weights
(by ``importance``, with ``scope``), then retrains:

- ``rewind``: the survivors restart from the rewind state, trained from the
  rewind iteration to the end (LTR, Renda et al. 2020; Algorithm 1 of the
  layerwise-importance paper);
- ``finetune``: the survivors keep their trained values and train for as many
  iterations at the final learning rate;
- ``lr-rewind``: the survivors keep their trained values, and the learning-rate
  schedule restarts from the rewind iteration.

With ``controls``, each pruned round also trains the two controls of Frankle &
Carbin (2019): the same mask with a fresh random initialisation, and a random
mask with the same per-layer sparsity from the rewind state; each is a unit of
the pipeline's second stage (they need only their round's masks, so they run in
parallel once the seeds' rounds are done).

The rounds and the controls are made of the public blocks of
:mod:`lth_sparse.pipelines.steps` (a resumable step, a masked training, a pruning); the config,
the single-seed run and the units are in :mod:`lth_sparse.pipelines.imp_rounds`, which the
consensus and instability pipelines run too. This module is the pipeline: its plan, summary and report.

Everything lands in the run directory (see :mod:`lth_sparse.runs`); a re-run
resumes after the last finished round.

One run trains data-parallel under ``torchrun --nproc-per-node N -m lth_sparse imp ...``:
each round in DistributedDataParallel, the global batch split over the ranks, the
masks pruned on rank 0 and broadcast once per round, every file written by rank 0
(see :mod:`lth_sparse.distributed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from lth_sparse.pipelines.base import Pipeline, register_pipeline
from lth_sparse.pipelines.common import DERIVED_TASKS, over_seeds, stack_key
from lth_sparse.pipelines.imp_rounds import (
    CONTROLS,
    SPARSE,
    ImpConfig,
    ImpControl,
    ImpRun,
    ImpSparse,
    control_name,
    round_header,
    round_name,
    round_row,
)
from lth_sparse.runs import RunDir, Steps
from lth_sparse.units import Unit


def _is_figure(value) -> bool:
    """A number (not a boolean), or ``None``: a figure a round has not got (without a validation set, its
    validation figures)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def summarize_rounds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per round (those every seed has finished), every number's mean over seeds under its own key, and its
    std (sample, n-1; 0 for one seed), min and max under ``KEY_std``, ``KEY_min``, ``KEY_max``
    (:func:`~lth_sparse.stats.over_seeds`: a figure no seed has, such as the validation accuracy without a
    validation set, is ``None`` in all four); ``layer_sparsity`` is the mean per layer."""
    if not per_seed:
        return []
    count = min(len(rounds) for rounds in per_seed.values())
    out = []
    for r in range(count):
        rows = [rounds[r] for rounds in per_seed.values()]
        entry: dict = {"round": rows[0]["round"], "seeds": len(rows)}
        for key, value in rows[0].items():
            if key == "round":
                continue
            if key == "layer_sparsity":
                entry[key] = {n: sum(row[key][n] for row in rows) / len(rows) for n in value}
            elif all(key in row and _is_figure(row[key]) for row in rows):
                stats = over_seeds([row[key] for row in rows])
                entry[key] = stats["mean"]
                for stat in ("std", "min", "max"):
                    entry[f"{key}_{stat}"] = stats[stat]
        out.append(entry)
    return out


CONTROL_APART = ("rounds", "fraction", "scope", "importance", "structured", "controls")
"""The IMP options in which two runs' trainings (their rounds, their controls) may differ and still train
together: they change which weights the masks keep (or how many rounds there are), not how a round trains."""


class ImpPipeline(Pipeline):
    """IMP as a pipeline: one unit per seed (its rounds sequential inside it), in ``RUN/seed_N/``."""

    kind = "imp"
    config_class = ImpConfig
    help = "find lottery tickets by iterative magnitude pruning with rewinding"
    description = (
        "Iterative magnitude pruning with rewinding (IMP/LTR). Round 0 trains the dense network; each "
        "further round prunes FRACTION of the remaining weights and retrains. Results go to --out: "
        "config.json, seed_N/round_NN/ (masks, metrics, weights), summary.json and plots/. Re-running "
        "the same command resumes after the last finished round."
    )

    @property
    def epilog(self) -> str:
        from lth_sparse.data import available_datasets
        from lth_sparse.models import available_models

        return (
            f"Datasets: {', '.join(available_datasets())} (and derived tasks {DERIVED_TASKS}). Models: "
            f"{', '.join(available_models())}. Every option can also come from --config FILE by its name "
            "(model_options as a mapping); flags override the file. Bad input ends with one 'lth-sparse imp: "
            "error: ...' line and exit status 2."
        )

    def check(self, config: ImpConfig) -> None:
        ImpRun(config.for_seed(config.seed_list()[0]), None, False, lambda line: None)

    def stacked_model(self, config: ImpConfig):
        return ImpRun(config.for_seed(config.seed_list()[0]), None, False, lambda line: None).model

    def plan(self, config: ImpConfig) -> list[list[Unit]]:
        """Stage 1: one IMP run per seed (its rounds sequential inside it). Stage 2, with ``controls``: each
        pruned round's two controls of each seed, one unit each (independent of each other)."""
        stages = [
            [
                Unit(
                    "lth_sparse.pipelines.imp_rounds:imp_seed",
                    config.for_seed(s),
                    f"seed_{s}",
                    label=f"IMP seed {s}",
                    stacked="lth_sparse.pipelines.imp_rounds:imp_seeds",  # the seeds in lockstep, round by round
                    stack_key=stack_key(config, apart=CONTROL_APART),
                )
                for s in config.seed_list()
            ]
        ]
        second = []
        if config.controls and config.rounds:
            second += [
                Unit(
                    "lth_sparse.pipelines.imp_rounds:imp_control",
                    ImpControl(config.for_seed(s), r, control),
                    f"seed_{s}/{control_name(r, control)}",
                    label=f"seed {s} round {r} {control}",
                    stacked="lth_sparse.pipelines.imp_rounds:imp_controls",
                    stack_key=stack_key(config, apart=CONTROL_APART),
                )
                for s in config.seed_list()
                for r in range(1, config.rounds + 1)
                for control in CONTROLS
            ]
        if config.search_epochs is not None:
            second += [
                Unit(
                    "lth_sparse.pipelines.imp_rounds:imp_sparse",
                    ImpSparse(config.for_seed(s), r),
                    f"seed_{s}/{round_name(r)}/{SPARSE}",
                    label=f"seed {s} round {r} sparse training",
                )
                for s in config.seed_list()
                for r in range(config.rounds + 1)
            ]
        if second:
            stages.append(second)
        return stages

    def report(self, summary: dict) -> list[str]:
        """The rounds, with the controls where they ran (over several seeds: the means)."""
        seeds = len(summary["seeds"])
        controls = summary["config"]["controls"]
        title = f"summary ({'mean over ' + str(seeds) + ' seeds' if seeds > 1 else 'seed ' + str(summary['seeds'][0])})"
        header = round_header(controls) + (
            f"  {'sparse tr.':>9}" if summary["rounds"] and "sparse_test_accuracy" in summary["rounds"][0] else ""
        )
        if summary["config"].get("search_epochs") is not None:
            title += (
                f"; test acc: the {summary['config']['search_epochs']:g}-epoch mask search, sparse tr.: the "
                f"ticket's full training (AIMP)"
            )
        return [title, header, *(round_row(r, controls) for r in summary["rounds"])] if summary["rounds"] else []

    def prepare(self, run: RunDir, log: Callable[[str], None]) -> None:
        """Raising ``rounds`` extends a finished run: a seed's unit that finished fewer rounds is opened again
        (its finished rounds keep their own ``done.json`` and are not retrained)."""
        for s in run.config.seed_list():
            unit = f"seed_{s}"
            if run.is_done(unit) and len(run.result(unit)["rounds"]) < run.config.rounds + 1:
                (run / unit / "done.json").unlink()

    @staticmethod
    def with_controls(units: Steps, seed: int, result: dict, config: ImpConfig) -> dict:
        """A seed's round result with its finished controls' figures (``reinit_test_accuracy``, ...) and AIMP's
        sparse training's added."""
        r = result["round"]
        sparse = f"seed_{seed}/{round_name(r)}/{SPARSE}"
        if config.search_epochs is not None and units.is_done(sparse):
            done = units.result(sparse)
            result = {
                **result,
                **{f"sparse_{key}": done[key] for key in ("test_accuracy", "test_loss", "best_val_iteration")},
            }
        if not config.controls or not r:
            return result
        result = dict(result)
        for control in CONTROLS:
            name = f"seed_{seed}/{control_name(r, control)}"
            if units.is_done(name):
                done = units.result(name)
                for key in ("test_accuracy", "test_loss", "best_val_iteration"):
                    result[f"{control}_{key}"] = done[key]
        return result

    @staticmethod
    def finished_rounds(units: Steps, seed: int, config: ImpConfig) -> list[dict]:
        """The results of seed ``seed``'s finished rounds (at most ``rounds + 1``): its unit's ``done.json``'s
        where the unit is done, else those of its rounds that have their own ``done.json``, up to the first
        missing one (a killed or still running seed's)."""
        unit = f"seed_{seed}"
        if units.is_done(unit):
            return units.result(unit)["rounds"][: config.rounds + 1]
        rounds = Steps(units / unit)
        finished = []
        for r in range(config.rounds + 1):
            if not rounds.is_done(round_name(r)):
                break
            finished.append(rounds.result(round_name(r)))
        return finished

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        """The summary of the rounds every seed has finished (``rounds``) and of each seed's own (``per_seed``,
        the seeds with a finished round), written to ``summary.json``; an unfinished run's seeds count the
        rounds they have finished (:meth:`finished_rounds`)."""
        run_dir = Path(run_dir)
        saved, config = self.saved_config(run_dir)
        units = Steps(run_dir)
        found = {s: self.finished_rounds(units, s, config) for s in config.seed_list()}
        per_seed = {
            s: [self.with_controls(units, s, result, config) for result in rounds]
            for s, rounds in found.items()
            if rounds
        }
        summary = {
            "kind": self.kind,
            "hash": saved.get("hash"),
            "config": dataclasses.asdict(config),
            "seeds": sorted(per_seed),
            "rounds": summarize_rounds(per_seed),
            "per_seed": {str(s): rounds for s, rounds in per_seed.items()},
        }
        summary = self.write_summary(run_dir, config, summary)
        if plots and summary["rounds"]:
            from lth_sparse.plots import plot_imp

            plot_imp(summary, run_dir / "plots")
        return summary


IMP = register_pipeline(ImpPipeline())


run = IMP.run
