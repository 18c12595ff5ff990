"""``lth_sparse.prune`` saliency pruners (SNIP, GraSP, SynFlow, and random and magnitude under one interface),
the shuffle control and layer collapse.

Each score against a hand computation on a 2-layer net in float64 (gradients written out by hand, the
Hessian by plain autograd); SynFlow's data independence, sign invariance and conservation (Tanaka et al.
2020, Theorem 2); iterative SynFlow against its rounds written out; exact densities; existing masks;
the registry; plain and wrapped models; argument errors; layer collapse on chains and residual networks.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tolerances import assert_close

from lth_sparse import Masks
from lth_sparse.models import create_model
from lth_sparse.nn import masked
from lth_sparse.prune import (
    GRASP_TEMPERATURE,
    LayerCollapse,
    get_pruner,
    grasp_scores,
    layer_collapse,
    magnitude_scores,
    network_collapsed,
    prunable_layers,
    prune_grasp,
    prune_magnitude,
    prune_random,
    prune_snip,
    prune_synflow,
    pruner_names,
    random_masks_like,
    random_scores,
    select_kept,
    snip_scores,
    synflow_scores,
)

NAMES = ["0.weight", "2.weight"]


def two_layer(seed: int = 0, bias: bool = True) -> nn.Module:
    """A masked 4 -> 5 -> 3 MLP with ReLU, float64, ``input_shape`` (4,)."""
    torch.manual_seed(seed)
    model = masked(nn.Sequential(nn.Linear(4, 5, bias=bias), nn.ReLU(), nn.Linear(5, 3, bias=bias))).double()
    model.input_shape = (4,)
    return model


def make_batch(seed: int = 1, n: int = 6, features: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, features, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g))


def partial_masks(model: nn.Module, seed: int, density: float = 0.7) -> Masks:
    g = torch.Generator().manual_seed(seed)
    return Masks(
        {n: torch.rand(layer.weight.shape, generator=g) < density for n, layer in prunable_layers(model).items()}
    )


def weights(model: nn.Module):
    return model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach(), model[2].bias.detach()


def small_convnet(seed: int = 0, bias: bool = True, batchnorm: bool = True) -> nn.Module:
    """conv(3->4) [BN] ReLU conv(4->6) [BN] ReLU avgpool flatten linear(6->5); masked, float64, input (3, 6, 6)."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1, bias=bias)] + ([nn.BatchNorm2d(4)] if batchnorm else []) + [nn.ReLU()]
    layers += [nn.Conv2d(4, 6, 3, padding=1, bias=bias)] + ([nn.BatchNorm2d(6)] if batchnorm else []) + [nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5, bias=bias)]
    model = masked(nn.Sequential(*layers)).double()
    model.input_shape = (3, 6, 6)
    return model


def conv_batch(seed: int = 2, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


# --- hand computations ----------------------------------------------------------------------------------------


def hand_gradients(model, batch, masks, temperature: float = 1.0):
    """dL/dW1, dL/dW2 of mean cross-entropy(z2 / T), the network run on W * mask, written out by hand."""
    w1, b1, w2, b2 = weights(model)
    m1, m2 = masks["0.weight"].double(), masks["2.weight"].double()
    x, y = batch
    z1 = x @ (w1 * m1).T + b1
    h = z1.clamp_min(0)
    z2 = (h @ (w2 * m2).T + b2) / temperature
    dz2 = (z2.softmax(1) - F.one_hot(y, 3).double()) / (len(x) * temperature)
    dw2 = dz2.T @ h
    dz1 = (dz2 @ (w2 * m2)) * (z1 > 0).double()
    dw1 = dz1.T @ x
    return dw1 * m1, dw2 * m2


@pytest.mark.parametrize("with_masks", [False, True])
def test_snip_scores_are_the_hand_computed_abs_gradient_times_weight(with_masks):
    model, batch = two_layer(), make_batch()
    masks = partial_masks(model, 3) if with_masks else Masks.ones_like(model)
    dw1, dw2 = hand_gradients(model, batch, masks)
    w1, _, w2, _ = weights(model)
    scores = snip_scores(model, batch, F.cross_entropy, masks if with_masks else None)
    assert list(scores) == NAMES
    assert_close(scores["0.weight"], (dw1 * w1).abs())
    assert_close(scores["2.weight"], (dw2 * w2).abs())
    if with_masks:
        for n in NAMES:
            assert bool((scores[n][~masks[n]] == 0).all()), "a pruned weight must score 0"


def grasp_by_autograd(model, batch, masks, temperature):
    """w * (H g) with H, g of L(W * mask) with respect to the flat vector of both weights: the full Hessian."""
    w1, b1, w2, b2 = weights(model)
    m1, m2 = masks["0.weight"].double(), masks["2.weight"].double()
    x, y = batch

    def loss(flat):
        a, b = flat[: w1.numel()].view_as(w1), flat[w1.numel() :].view_as(w2)
        out = F.linear(F.linear(x, a * m1, b1).relu(), b * m2, b2)
        return F.cross_entropy(out / temperature, y)

    flat = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    g = torch.autograd.functional.jacobian(loss, flat)
    hessian = torch.autograd.functional.hessian(loss, flat)
    score = flat * (hessian @ g)
    return score[: w1.numel()].view_as(w1), score[w1.numel() :].view_as(w2), g


@pytest.mark.parametrize("temperature", [1.0, GRASP_TEMPERATURE])
@pytest.mark.parametrize("with_masks", [False, True])
def test_grasp_scores_are_weight_times_hessian_gradient_product(temperature, with_masks):
    model, batch = two_layer(), make_batch()
    masks = partial_masks(model, 4) if with_masks else Masks.ones_like(model)
    s1, s2, g = grasp_by_autograd(model, batch, masks, temperature)
    dw1, dw2 = hand_gradients(model, batch, masks, temperature)
    assert_close(g, torch.cat([dw1.reshape(-1), dw2.reshape(-1)]))  # the reference's g is the hand one
    scores = grasp_scores(model, batch, F.cross_entropy, masks if with_masks else None, temperature=temperature)
    scale = max(float(s1.abs().max()), float(s2.abs().max()))
    assert scale > 0, "the reference must not be trivially zero"
    assert_close(scores["0.weight"] / scale, s1 / scale)
    assert_close(scores["2.weight"] / scale, s2 / scale)


def test_grasp_prunes_the_highest_negated_score_as_wang_et_al():
    """GraSP removes the weights with the highest S = -w * Hg (Wang et al. 2020, eq. 8)."""
    model, batch = two_layer(5), make_batch(6)
    s1, s2, _ = grasp_by_autograd(model, batch, Masks.ones_like(model), GRASP_TEMPERATURE)
    wang = -torch.cat([s1.reshape(-1), s2.reshape(-1)])
    removed = set(torch.topk(wang, 20).indices.tolist())  # 20 of the 35 weights
    got = prune_grasp(model, density=15 / 35, batch=batch)
    kept_flat = torch.cat([got[n].reshape(-1) for n in NAMES])
    assert set((~kept_flat).nonzero().squeeze(1).tolist()) == removed


def test_synflow_scores_are_the_hand_computed_path_products():
    model = two_layer(bias=True)
    masks = partial_masks(model, 7)
    w1, b1, w2, b2 = (t.abs() for t in weights(model))
    m1, m2 = masks["0.weight"].double(), masks["2.weight"].double()
    # R = 1^T (|W2 m2| (|W1 m1| 1 + |b1|) + |b2|): the all-ones input through the positive network
    hidden = (w1 * m1).sum(1) + b1
    into_hidden = (w2 * m2).sum(0)
    scores = synflow_scores(model, masks=masks)
    assert scores["0.weight"].dtype == torch.float64
    assert_close(scores["2.weight"], w2 * m2 * hidden[None, :])
    assert_close(scores["0.weight"], w1 * m1 * into_hidden[:, None])


# --- SynFlow's invariances --------------------------------------------------------------------------------------


def deep_bias_free_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = masked(
        nn.Sequential(
            nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 7, bias=False), nn.ReLU(), nn.Linear(7, 3, bias=False)
        )
    )
    model.input_shape = (6,)
    return model


@pytest.mark.parametrize("with_masks", [False, True])
def test_synflow_conserves_the_flow_in_every_layer(with_masks):
    """Tanaka et al.'s Theorem 2: without biases, each layer's scores sum to R = 1^T |W3| |W2| |W1| 1."""
    model = deep_bias_free_mlp()
    masks = partial_masks(model, 8, density=0.6) if with_masks else Masks.ones_like(model)
    layers = [model[0], model[2], model[4]]
    product = torch.ones(6, dtype=torch.float64)
    for layer, name in zip(layers, ["0.weight", "2.weight", "4.weight"]):
        product = (layer.weight.detach().double().abs() * masks[name]) @ product
    flow = product.sum()
    scores = synflow_scores(model, masks=masks)
    for s in scores.values():
        assert_close(s.sum(), flow)
    assert float(flow) > 1.0


def test_synflow_conserves_the_flow_through_convolutions_and_average_pooling():
    model = small_convnet(bias=False, batchnorm=False)
    positive = nn.Sequential(*[m for m in model]).double()
    with torch.no_grad():
        flow = torch.func.functional_call(
            positive,
            {k: v.abs() for k, v in positive.state_dict().items() if v.is_floating_point()},
            (torch.ones(1, 3, 6, 6, dtype=torch.float64),),
        ).sum()
    for s in synflow_scores(model).values():
        assert_close(s.sum(), flow)


def test_synflow_takes_no_data_and_gives_the_same_masks_whatever_data_is_passed():
    assert "batch" not in inspect.signature(synflow_scores).parameters
    assert "batch" not in inspect.signature(prune_synflow).parameters
    model = small_convnet()
    pruner = get_pruner("synflow")
    masks = [pruner(model, density=0.3, batch=conv_batch(seed)) for seed in (1, 2)] + [pruner(model, density=0.3)]
    assert masks[0] == masks[1] == masks[2]


def test_synflow_scores_do_not_depend_on_the_weights_signs():
    model = small_convnet()
    before = synflow_scores(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0).double())
    after = synflow_scores(model)
    for n in before:
        assert torch.equal(before[n], after[n])


@pytest.mark.parametrize("score", ["snip", "grasp", "synflow"])
def test_scoring_leaves_the_model_as_it_was(score):
    model = small_convnet().train()
    model[1].running_mean.uniform_(-1, 1)  # non-trivial statistics, which SynFlow's copy makes positive
    masks = partial_masks(model, 9)
    masks.apply_to(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    {
        "snip": lambda: snip_scores(model, conv_batch()),
        "grasp": lambda: grasp_scores(model, conv_batch()),
        "synflow": lambda: prune_synflow(model, density=0.2, iterations=3),
    }[score]()
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert all(p.grad is None for p in model.parameters())
    # The masked layers still own their weights: an optimizer step keeps the pruned ones at zero.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    F.cross_entropy(model(conv_batch()[0]), conv_batch()[1]).backward()
    with torch.no_grad():
        for name, layer in prunable_layers(model).items():
            layer.weight[~masks[name]] = 1.0  # written behind the mask's back: the step's hook zeroes them
    optimizer.step()
    for name, layer in prunable_layers(model).items():
        assert bool((layer.weight[~masks[name]] == 0).all()), f"{name}: a pruned weight moved"


def test_scores_are_taken_in_eval_mode_whatever_the_models_mode():
    model = small_convnet()
    model[1].running_var.fill_(4.0)
    batch = conv_batch()
    in_train = snip_scores(model.train(), batch)
    in_eval = snip_scores(model.eval(), batch)
    for n in in_train:
        assert torch.equal(in_train[n], in_eval[n])


# --- iterative SynFlow ------------------------------------------------------------------------------------------


def test_synflow_with_one_iteration_is_single_shot():
    model = small_convnet()
    masks = Masks.ones_like(model)
    total = masks.num_weights()
    expected = select_kept(synflow_scores(model), masks, list(masks), round(0.1 * total))
    assert prune_synflow(model, density=0.1, iterations=1) == expected
    assert prune_synflow(model, density=0.1) == expected


def test_iterative_synflow_rescores_on_an_exponential_schedule():
    model = small_convnet()
    masks = Masks.ones_like(model)
    names, total, density, rounds = list(masks), masks.num_weights(), 0.05, 4
    for i in range(1, rounds + 1):
        masks = select_kept(synflow_scores(model, masks=masks), masks, names, round(total * density ** (i / rounds)))
    got = prune_synflow(model, density=density, iterations=rounds)
    assert got == masks
    assert got.num_unpruned() == round(density * total)


def test_iterative_synflow_from_pruned_masks_interpolates_from_the_current_density():
    model = small_convnet()
    start = partial_masks(model, 10, density=0.6)
    names, remaining = list(start), start.num_unpruned()
    kept = round(0.2 * start.num_weights())
    middle = select_kept(synflow_scores(model, masks=start), start, names, round(remaining * (kept / remaining) ** 0.5))
    expected = select_kept(synflow_scores(model, masks=middle), middle, names, kept)
    got = prune_synflow(model, density=0.2, iterations=2, masks=start)
    assert got == expected
    assert got.is_subset_of(start)


# --- density, fraction, existing masks ------------------------------------------------------------------------


def run_pruner(name: str, model, **kwargs) -> Masks:
    return get_pruner(name)(model, batch=conv_batch(), generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("name", pruner_names())
@pytest.mark.parametrize("density", [1.0, 0.5, 0.137, 0.01])
def test_the_density_kept_is_exact(name, density):
    model = small_convnet()
    total = Masks.ones_like(model).num_weights()
    got = run_pruner(name, model, density=density)
    assert got.num_unpruned() == round(density * total)


@pytest.mark.parametrize("name", pruner_names())
def test_exclude_keeps_a_layer_and_leaves_it_out_of_the_count(name):
    model = small_convnet()
    masks = Masks.ones_like(model)
    fc = "8.weight"
    got = run_pruner(name, model, density=0.25, exclude=[fc])
    assert torch.equal(got[fc], masks[fc])
    pruned_total = sum(masks[n].numel() for n in masks if n != fc)
    assert sum(int(got[n].sum()) for n in got if n != fc) == round(0.25 * pruned_total)


@pytest.mark.parametrize("name", pruner_names())
def test_fraction_removes_that_share_of_the_remaining_weights(name):
    model = small_convnet()
    start = partial_masks(model, 11, density=0.5)
    got = run_pruner(name, model, fraction=0.3, masks=start)
    assert got.is_subset_of(start)
    assert start.num_unpruned() - got.num_unpruned() == round(0.3 * start.num_unpruned())


@pytest.mark.parametrize(
    "name,scores",
    [
        ("snip", lambda m, masks: snip_scores(m, conv_batch(), masks=masks)),
        ("grasp", lambda m, masks: grasp_scores(m, conv_batch(), masks=masks)),
        ("synflow", lambda m, masks: synflow_scores(m, masks=masks)),
    ],
)
def test_existing_masks_stay_and_the_lowest_unpruned_scores_go(name, scores):
    model = small_convnet()
    start = partial_masks(model, 12, density=0.6)
    got = run_pruner(name, model, density=0.3, masks=start)
    assert got.is_subset_of(start)
    assert got.num_unpruned() == round(0.3 * start.num_weights())
    s = scores(model, start)
    for n in s:
        assert bool((s[n][~start[n]] == 0).all()), "a pruned weight must score 0"
    removed = [s[n][start[n] & ~got[n]] for n in s]
    kept = [s[n][got[n]] for n in s]
    assert float(torch.cat(removed).max()) <= float(torch.cat(kept).min())


def test_magnitude_and_random_scores_are_zero_where_pruned():
    model = small_convnet()
    masks = partial_masks(model, 17)
    magnitude = magnitude_scores(model, masks)
    drawn = random_scores(model, masks, torch.Generator().manual_seed(0))
    again = random_scores(model, masks, torch.Generator().manual_seed(0))
    for n, layer in prunable_layers(model).items():
        assert torch.equal(magnitude[n], torch.where(masks[n], layer.weight.detach().abs(), 0))
        assert bool((drawn[n][~masks[n]] == 0).all()) and bool((drawn[n][masks[n]] > 0).all())
        assert torch.equal(drawn[n], again[n])


def test_scores_of_a_pruned_network_are_those_of_the_network_without_those_weights():
    """Masked weights are absent, not zero-valued-but-present: the same scores as a model whose masks say so."""
    model = small_convnet()
    masks = partial_masks(model, 13)
    pruned = small_convnet()
    masks.apply_to(pruned)
    for fn in (
        lambda m, mk: snip_scores(m, conv_batch(), masks=mk),
        lambda m, mk: grasp_scores(m, conv_batch(), masks=mk),
        lambda m, mk: synflow_scores(m, masks=mk),
    ):
        a, b = fn(model, masks), fn(pruned, None)
        for n in a:
            assert_close(a[n], b[n])


# --- registry, plain and wrapped models ---------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert pruner_names() == ("random", "magnitude", "snip", "grasp", "synflow")
    with pytest.raises(ValueError, match=r"unknown pruner 'obd'.*random, magnitude, snip, grasp, synflow"):
        get_pruner("obd")


def test_registered_magnitude_and_random_keep_what_the_global_pruners_keep():
    model = small_convnet()
    start = partial_masks(model, 14)
    assert get_pruner("magnitude")(model, 0.4, masks=start) == prune_magnitude(model, 0.4, masks=start)
    got = get_pruner("random")(model, 0.4, masks=start, generator=torch.Generator().manual_seed(3))
    assert got == prune_random(model, 0.4, masks=start, generator=torch.Generator().manual_seed(3))


def test_registered_pruners_are_the_public_ones_with_their_options():
    model, batch = small_convnet(), conv_batch()
    assert get_pruner("snip")(model, density=0.2, batch=batch) == prune_snip(model, density=0.2, batch=batch)
    assert get_pruner("grasp")(model, density=0.2, batch=batch, temperature=1.0) == prune_grasp(
        model, density=0.2, batch=batch, temperature=1.0
    )
    assert get_pruner("synflow")(model, density=0.2, iterations=3) == prune_synflow(model, density=0.2, iterations=3)
    with pytest.raises(TypeError):
        get_pruner("magnitude")(model, density=0.2, iterations=3)
    with pytest.raises(ValueError, match="scores a batch"):
        get_pruner("snip")(model, density=0.2)


def test_plain_models_score_and_prune_as_their_masked_copies():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double()
    twin = masked(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).double())
    twin.load_state_dict(plain.state_dict(), strict=False)
    batch = conv_batch()
    assert list(prunable_layers(plain)) == list(prunable_layers(twin)) == ["0.weight", "3.weight"]
    masks = partial_masks(twin, 15)
    for fn in (
        lambda m: snip_scores(m, batch, masks=masks),
        lambda m: grasp_scores(m, batch, masks=masks),
        lambda m: synflow_scores(m, (3, 6, 6), masks=masks),
    ):
        a, b = fn(plain), fn(twin)
        for n in a:
            assert_close(a[n], b[n])
    for name in pruner_names():
        got = get_pruner(name)(plain, density=0.3, batch=batch, input_shape=(3, 6, 6))
        assert got.num_unpruned() == round(0.3 * got.num_weights())
        assert list(got) == ["0.weight", "3.weight"]


def test_wrapped_models_give_the_bare_models_masks(wrap):
    model, batch = small_convnet(), conv_batch()
    expected = [prune_snip(model, density=0.3, batch=batch), prune_synflow(model, density=0.3)]
    wrapped = wrap(model)
    assert [prune_snip(wrapped, density=0.3, batch=batch), prune_synflow(wrapped, density=0.3)] == expected


@pytest.mark.parametrize("name", pruner_names())
def test_the_package_resnet20_prunes_to_the_exact_density(name):
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10, width=2)
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    got = get_pruner(name)(model, density=0.05, batch=batch, generator=g)
    assert got.num_unpruned() == round(0.05 * got.num_weights())
    assert set(got) == set(Masks.from_model(model))


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, True])
def test_a_density_outside_zero_one_is_refused(density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        prune_synflow(small_convnet(), density=density)


@pytest.mark.parametrize("fraction", [-0.1, 1.01, math.nan])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        prune_snip(small_convnet(), fraction, batch=conv_batch())


def test_fraction_and_density_are_exactly_one():
    model = small_convnet()
    with pytest.raises(ValueError, match="exactly one of fraction"):
        prune_synflow(model, 0.5, density=0.5)
    with pytest.raises(ValueError, match="exactly one of fraction"):
        prune_synflow(model)


def test_a_density_above_the_current_one_is_refused():
    model = small_convnet()
    with pytest.raises(ValueError, match="cannot regrow"):
        prune_synflow(model, density=0.9, masks=partial_masks(model, 16, density=0.5))


def test_a_batch_of_the_wrong_shape_is_refused():
    model = small_convnet()
    x, y = conv_batch()
    with pytest.raises(ValueError, match=r"\(N, 3, 6, 6\).*\(5, 3, 7, 7\)"):
        prune_snip(model, density=0.5, batch=(torch.randn(5, 3, 7, 7, dtype=torch.float64), y))
    with pytest.raises(ValueError, match="one entry per example"):
        snip_scores(model, (x, y[:3]))
    with pytest.raises(TypeError, match="pair"):
        grasp_scores(model, x)
    plain = nn.Sequential(nn.Linear(4, 3)).double()  # no input_shape attribute: the forward's error, named
    with pytest.raises(ValueError, match="cannot run on batch inputs of shape"):
        snip_scores(plain, (torch.randn(2, 5, dtype=torch.float64), torch.tensor([0, 1])))


def test_other_bad_arguments_are_refused():
    model = small_convnet()
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        prune_synflow(model, density=0.5, iterations=0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        grasp_scores(model, conv_batch(), temperature=0)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        snip_scores(model, conv_batch(), lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(KeyError, match="exclude names no prunable weight"):
        prune_snip(model, density=0.5, batch=conv_batch(), exclude=["nope.weight"])
    plain = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="input_shape"):
        synflow_scores(plain)
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d layer"):
        snip_scores(nn.Sequential(nn.ReLU()), conv_batch())


def test_non_finite_scores_are_refused_naming_the_layer():
    model = two_layer()
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"2\.weight \(\d+ NaN"):
        get_pruner("magnitude")(model, density=0.5)


# --- the shuffle control ----------------------------------------------------------------------------------------


def test_the_shuffle_control_permutes_each_layer_and_keeps_its_count():
    model = small_convnet()
    ticket = prune_snip(model, density=0.3, batch=conv_batch())
    shuffled = random_masks_like(ticket, torch.Generator().manual_seed(0))
    assert shuffled == ticket.permuted("layer", torch.Generator().manual_seed(0))
    for n in ticket:
        assert int(shuffled[n].sum()) == int(ticket[n].sum())
        if 0 < int(ticket[n].sum()) < ticket[n].numel():
            assert not torch.equal(shuffled[n], ticket[n]), f"{n} was not shuffled"
    assert random_masks_like(ticket, torch.Generator().manual_seed(1)) != shuffled


# --- layer collapse ---------------------------------------------------------------------------------------------


def test_a_fully_pruned_middle_layer_collapses_a_chain():
    model = deep_bias_free_mlp()
    masks = Masks.ones_like(model)
    masks = Masks({**masks, "2.weight": torch.zeros_like(masks["2.weight"])})
    got = layer_collapse(model, masks)
    assert got == {
        "0.weight": LayerCollapse(False, True),
        "2.weight": LayerCollapse(True, True),
        "4.weight": LayerCollapse(False, True),
    }
    assert network_collapsed(model, masks)
    assert not network_collapsed(model)
    assert not any(c.collapsed for c in layer_collapse(model).values())


def test_a_layer_whose_kept_weights_reach_no_output_is_disconnected_not_pruned():
    model = deep_bias_free_mlp()
    masks = dict(Masks.ones_like(model))
    # Layer 2's kept weights all end in hidden unit 0 of layer 2, which layer 3 no longer reads; the rest of
    # layer 3 reads units fed by nothing: no path is left, though no layer is empty.
    masks["2.weight"] = torch.zeros(7, 8, dtype=torch.bool)
    masks["2.weight"][0] = True
    masks["4.weight"] = torch.ones(3, 7, dtype=torch.bool)
    masks["4.weight"][:, 0] = False
    got = layer_collapse(model, Masks(masks))
    assert got["2.weight"] == LayerCollapse(pruned=False, disconnected=True)
    assert got["4.weight"] == LayerCollapse(pruned=False, disconnected=True)
    assert network_collapsed(model, Masks(masks))


def test_a_fully_pruned_residual_block_does_not_collapse_the_network():
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10, width=2)
    masks = dict(Masks.from_model(model))
    masks["layer1.0.conv1.weight"] = torch.zeros_like(masks["layer1.0.conv1.weight"])
    got = layer_collapse(model, Masks(masks))
    assert got["layer1.0.conv1.weight"] == LayerCollapse(pruned=True, disconnected=True)
    assert got["layer1.0.conv2.weight"] == LayerCollapse(pruned=False, disconnected=True)  # fed by nothing
    others = [c for n, c in got.items() if not n.startswith("layer1.0.")]
    assert others and not any(c.collapsed for c in others)  # the identity shortcut carries the signal
    assert not network_collapsed(model, Masks(masks))
    masks["fc.weight"] = torch.zeros_like(masks["fc.weight"])
    assert network_collapsed(model, Masks(masks))


def test_layer_collapse_of_a_plain_model_with_given_masks():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    masks = Masks({n: torch.ones_like(layer.weight, dtype=torch.bool) for n, layer in prunable_layers(plain).items()})
    masks = Masks({**masks, "2.weight": torch.zeros(4, 4, 3, 3, dtype=torch.bool)})
    got = layer_collapse(plain, masks, input_shape=(3, 6, 6))
    assert [c.pruned for c in got.values()] == [False, True, False]
    assert all(c.disconnected for c in got.values())
    assert not network_collapsed(plain, input_shape=(3, 6, 6))


def test_returned_masks_never_alias_the_models_buffers():
    """The pruners read a masked model's mask buffers without copying them; what they return is always new
    tensors, for pruned layers, excluded ones and a pruning that removes nothing."""
    from lth_sparse.masks import masked_weights
    from lth_sparse.prune import get_pruner

    torch.manual_seed(0)
    model = create_model("mlp", (8,), 3, width=16)
    buffers = {n: m.mask for n, m in masked_weights(model).items()}
    names = list(buffers)
    for density, exclude in ((0.5, ()), (1.0, ()), (0.5, (names[-1],))):
        masks = get_pruner("magnitude")(model, density=density, exclude=exclude)
        for n, m in masks.items():
            assert m.untyped_storage().data_ptr() != buffers[n].untyped_storage().data_ptr(), (density, exclude, n)
        assert list(masks) == names
    before = {n: b.clone() for n, b in buffers.items()}
    masks = get_pruner("magnitude")(model, density=0.5)
    for m in masks.values():
        m.zero_()
    assert all(torch.equal(buffers[n], before[n]) for n in names), "the model's masks are untouched"
