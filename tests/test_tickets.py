"""``lth_sparse.tickets``: a round's ticket read back from an IMP run, in both layouts, with clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.nn import masked
from lth_sparse.pipelines import imp
from lth_sparse.runs import ConfigMismatch
from lth_sparse.tickets import finished_rounds, load_ticket, run_seeds

TINY = dict(
    dataset="digits",
    model="mlp",
    model_options=(("width", 16),),
    rounds=2,
    epochs=1,
    train_size=300,
    rewind="iter:3",
    batch_size=32,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tickets") / "run"
    imp.run(imp.ImpConfig(**TINY, seeds=(0, 2)), out, progress=False, log=lambda s: None, plots=False)
    return out


def test_a_ticket_is_the_round_s_masks_with_the_rewind_state(run):
    ticket = load_ticket(run, 2, seed=2)
    folder = run / "seed_2"
    assert ticket.seed == 2 and ticket.round == 2 and ticket.rewind_iteration == 3
    assert ticket.masks == Masks.load(folder / "round_02" / "masks.safetensors")
    assert abs(ticket.masks.sparsity() - (1 - 0.8**2)) < 0.01
    rewind = torch.load(folder / "rewind.pt")["state_dict"]
    assert all(torch.equal(ticket.rewind_state[k], rewind[k]) for k in rewind)
    assert ticket.result == read_done(folder / "round_02" / "done.json")
    model = masked(create_model("mlp", (1, 8, 8), 10, width=16))
    ticket.apply_to(model)
    for name, mask in ticket.masks.items():
        weight = dict(model.named_parameters())[name]
        assert torch.equal(weight, rewind[name] * mask), "the survivors at their rewind values, the rest zero"
    ticket.apply_to(model, weights="final")
    assert torch.equal(model.fc1.weight, torch.load(folder / "round_02" / "final.pt")["fc1.weight"])


def test_seeds_and_rounds_are_listed_and_the_first_seed_is_the_default(run):
    assert run_seeds(run) == [0, 2]
    assert finished_rounds(run, 0) == [0, 1, 2]
    assert load_ticket(run, 1).seed == 0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda run: load_ticket(run, 5), KeyError, "round 5 of seed 0"),
        (lambda run: load_ticket(run, 1, seed=1), KeyError, "its seeds: [0, 2]"),
        (lambda run: load_ticket(run / "seed_0", 1), FileNotFoundError, "not a run directory"),
        (lambda run: load_ticket(run, 1).state("best"), ValueError, "weights must be one of"),
    ],
)
def test_what_the_run_does_not_have_is_refused_naming_what_it_has(run, call, error, message):
    with pytest.raises(error) as info:
        call(run)
    assert message in str(info.value)


def test_a_run_of_another_kind_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "transfer", "hash": "0", "config": {}}))
    with pytest.raises(ConfigMismatch, match="not an IMP run"):
        load_ticket(tmp_path, 0)
