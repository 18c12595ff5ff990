"""Mask analysis in lth_sparse.masks: distances, votes and overlaps on hand-made masks whose answers are known."""

import pytest
import torch

from lth_sparse.masks import (
    Hamming,
    Masks,
    consensus_counts,
    consensus_fraction,
    distance_matrix,
    distances_over_rounds,
    expected_jaccard_distance,
    hamming_distance,
    independent_jaccard_distance,
    intersection,
    intersection_over_minimum,
    jaccard_distance,
    overlap_counts,
    union,
    vote,
)


def bits(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s])


def two_layers(first: str, second: str) -> Masks:
    return Masks({"a.weight": bits(first), "b.weight": bits(second)})


def test_jaccard_distance_of_known_pairs():
    assert jaccard_distance(bits("1100"), bits("1010")) == pytest.approx(1 - 1 / 3)
    assert jaccard_distance(bits("1100"), bits("1100")) == 0.0
    assert jaccard_distance(bits("1100"), bits("0011")) == 1.0
    assert jaccard_distance(bits("0000"), bits("0000")) == 0.0, "two empty masks: identical, by definition"
    assert jaccard_distance(bits("0000"), bits("0100")) == 1.0
    assert jaccard_distance(bits("1111"), bits("1100")) == 0.5, "nested: 1 - |B| / |A|"


def test_the_total_distance_pools_the_layers_and_per_layer_gives_each():
    # layer a: |A n B| = 1, |A u B| = 2; layer b: 9 and 10. Pooled: 1 - 10/12, not the mean of 0.5 and 0.1.
    a = two_layers("10", "1111111111")
    b = two_layers("11", "1111111110")
    assert jaccard_distance(a, b) == pytest.approx(1 - 10 / 12)
    assert jaccard_distance(a, b, per_layer=True) == pytest.approx({"a.weight": 0.5, "b.weight": 0.1})
    assert jaccard_distance(a, b) == jaccard_distance(b, a), "symmetric"


def test_hamming_distance_counts_the_weights_kept_by_exactly_one():
    assert hamming_distance(bits("1100"), bits("1010")) == Hamming(2, 0.5)
    h = hamming_distance(two_layers("10", "111"), two_layers("01", "111"), per_layer=True)
    assert h == {"a.weight": Hamming(2, 1.0), "b.weight": Hamming(0, 0.0)}
    assert hamming_distance(two_layers("10", "111"), two_layers("01", "111")).fraction == pytest.approx(2 / 5)


def test_intersection_over_minimum():
    assert intersection_over_minimum(bits("1111"), bits("0110")) == 1.0, "nested masks overlap fully"
    assert intersection_over_minimum(bits("1100"), bits("0011")) == 0.0
    assert intersection_over_minimum(bits("1110"), bits("0111")) == pytest.approx(2 / 3)
    assert intersection_over_minimum(bits("0000"), bits("0110")) == 1.0, "the empty set lies inside any other"


def test_votes_intersection_and_union_of_three_masks():
    masks = [bits("110011"), bits("100110"), bits("111000")]
    assert torch.equal(consensus_counts(masks)["weight"], torch.tensor([3, 2, 1, 1, 2, 1]))
    assert torch.equal(vote(masks, 3), bits("100000"))
    assert torch.equal(vote(masks, 2), bits("110010"))
    assert torch.equal(vote(masks, 1), bits("111111"))
    assert torch.equal(intersection(masks), vote(masks, 3)) and torch.equal(union(masks), vote(masks, 1))
    assert torch.allclose(consensus_fraction(masks), torch.tensor([1, 2 / 3, 1 / 3, 1 / 3, 2 / 3, 1 / 3]))
    assert torch.equal(intersection([bits("1010")]), bits("1010")), "one mask: itself"
    for bad in (0, 4, -1, True, 1.5):
        with pytest.raises(ValueError, match="min_count must be an integer in 1..3"):
            vote(masks, bad)


def test_the_intersection_is_inside_every_mask_and_at_least_as_sparse_as_the_sparsest():
    g = torch.Generator().manual_seed(0)
    masks = [
        Masks({"x.weight": torch.rand(30, 40, generator=g) < d, "y.weight": torch.rand(10, generator=g) < d})
        for d in (0.9, 0.6, 0.75)
    ]
    inter, uni = intersection(masks), union(masks)
    for m in masks:
        assert inter.is_subset_of(m) and m.is_subset_of(uni)
    assert inter.sparsity() >= max(m.sparsity() for m in masks)
    assert inter.is_subset_of(vote(masks, 2)) and vote(masks, 2).is_subset_of(uni)


def test_overlap_counts_per_layer_and_total():
    masks = [two_layers("1100", "10"), two_layers("1010", "11"), two_layers("1000", "01")]
    out = overlap_counts(masks)
    assert out["masks"] == 3
    # layer a: weight 0 kept by 3, weight 1 by 1, weight 2 by 1, weight 3 by 0
    assert out["layers"]["a.weight"]["counts"] == [1, 2, 0, 1]
    assert out["layers"]["b.weight"]["counts"] == [0, 0, 2, 0]
    assert out["total"]["counts"] == [1, 2, 2, 1]
    assert out["layers"]["a.weight"]["fractions"] == pytest.approx([0.25, 0.5, 0, 0.25])
    assert sum(out["total"]["fractions"]) == pytest.approx(1.0)


def test_identical_masks_are_kept_by_zero_or_all():
    m = two_layers("1100", "01")
    out = overlap_counts([m, m, m, m])
    assert out["total"]["counts"] == [3, 0, 0, 0, 3]
    assert distance_matrix([m, m, m]).abs().max() == 0


def test_distance_matrix_is_the_pairwise_distances():
    masks = [bits("1100"), bits("1010"), bits("0011"), bits("1100")]
    d = distance_matrix(masks)
    assert d.shape == (4, 4) and torch.equal(d, d.T) and not d.diagonal().any()
    assert d[0, 1] == pytest.approx(2 / 3) and d[0, 2] == 1.0 and d[0, 3] == 0.0
    assert distance_matrix(masks, "hamming")[0, 1] == 0.5
    assert distance_matrix(masks, "iom")[0, 1] == 0.5
    per = distance_matrix([two_layers("10", "11"), two_layers("11", "11")], per_layer=True)
    assert per["a.weight"][0, 1] == 0.5 and per["b.weight"][0, 1] == 0.0
    assert distance_matrix([bits("10")]).tolist() == [[0.0]], "one mask: a 1 x 1 matrix"
    with pytest.raises(ValueError, match="unknown metric 'cosine'"):
        distance_matrix(masks, "cosine")


def test_distances_over_rounds_pair_the_rounds_both_runs_have():
    run_a = [bits("1111"), bits("1110"), bits("1100")]
    run_b = [bits("1111"), bits("0111")]
    assert distances_over_rounds(run_a, run_b) == [0.0, pytest.approx(0.5)]


def test_expected_distance_of_independent_masks_matches_random_draws():
    g = torch.Generator().manual_seed(0)
    for p, q in ((0.64, 0.64), (0.2, 0.5), (1.0, 0.3)):
        a, b = torch.rand(200_000, generator=g) < p, torch.rand(200_000, generator=g) < q
        assert jaccard_distance(a, b) == pytest.approx(expected_jaccard_distance(p, q), abs=0.005)
    assert expected_jaccard_distance(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        expected_jaccard_distance(1.2, 0.5)


def test_independence_baseline_of_layers_of_different_densities_matches_random_draws():
    # Global pruning leaves every layer its own density: independent masks of those per-layer densities share
    # far more weights than masks of the pooled density would (known answer: layers of n weights at densities
    # 0.9 and 0.1 share 0.82 n of 1.18 n, a distance of 0.305; the pooled 0.5 would say 0.667).
    g = torch.Generator().manual_seed(0)
    sizes = {"fc1.weight": 300_000, "fc2.weight": 300_000}
    dens = {"fc1.weight": 0.9, "fc2.weight": 0.1}

    def draw():
        masks = {}
        for name, n in sizes.items():
            m = torch.zeros(n, dtype=torch.bool)
            m[torch.randperm(n, generator=g)[: round(dens[name] * n)]] = True
            masks[name] = m
        return Masks(masks)

    a, b = draw(), draw()
    assert independent_jaccard_distance(dens, dens, sizes) == pytest.approx(1 - 0.82 / 1.18)
    assert independent_jaccard_distance(a, b) == pytest.approx(independent_jaccard_distance(dens, dens, sizes))
    assert jaccard_distance(a, b) == pytest.approx(1 - 0.82 / 1.18, abs=0.003)
    assert expected_jaccard_distance(a.density(), b.density()) == pytest.approx(2 / 3, abs=1e-3)
    # one layer: the pooled formula; layers of one density: the same
    one = {"w": 1000}
    one_layer = independent_jaccard_distance({"w": 0.2}, {"w": 0.5}, one)
    assert one_layer == pytest.approx(expected_jaccard_distance(0.2, 0.5))
    same = {"fc1.weight": 0.64, "fc2.weight": 0.64}
    assert independent_jaccard_distance(same, same, sizes) == pytest.approx(expected_jaccard_distance(0.64, 0.64))
    assert independent_jaccard_distance({"w": 0.0}, {"w": 0.0}, one) == 0.0
    with pytest.raises(ValueError, match="densities lie in"):
        independent_jaccard_distance({"w": 1.5}, {"w": 0.5}, one)
    with pytest.raises(KeyError, match="different weights"):
        independent_jaccard_distance({"w": 0.5}, {"v": 0.5}, one)
    with pytest.raises(TypeError, match="sizes"):
        independent_jaccard_distance({"w": 0.5}, {"w": 0.5})
    with pytest.raises(KeyError, match="different weights"):
        independent_jaccard_distance(a, Masks({"fc1.weight": a["fc1.weight"]}))


def test_masks_of_other_layers_or_shapes_are_refused_by_name():
    with pytest.raises(ValueError, match=r"only in 0: \['b.weight'\], only in 1: \['c.weight'\]"):
        jaccard_distance(two_layers("10", "11"), Masks({"a.weight": bits("10"), "c.weight": bits("11")}))
    with pytest.raises(ValueError, match=r"shape of 'b.weight': \(2,\) and \(3,\)"):
        intersection([two_layers("10", "11"), two_layers("10", "111")])
    with pytest.raises(TypeError, match="bool"):
        jaccard_distance(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="no masks"):
        union([])


def test_permuted_masks_keep_the_counts_their_scope_says():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    masks = Masks(
        {
            "a.weight": torch.ones(40, 25, dtype=torch.bool),
            "b.weight": torch.zeros(1000, dtype=torch.bool),
            "c.weight": torch.rand(30, 30, generator=g()) < 0.3,
        }
    )
    layer = masks.permuted("layer", g())
    assert layer.layer_sparsity() == masks.layer_sparsity() and layer != masks
    assert not torch.equal(layer["c.weight"], masks["c.weight"]), "shuffled within the layer"
    assert layer == masks.permuted("layer", g()), "reproducible with a generator"
    spread = masks.permuted("global", g())
    assert spread.num_unpruned() == masks.num_unpruned() and [m.shape for m in spread.values()] == [
        m.shape for m in masks.values()
    ]
    density = masks.density()  # a layer's share follows its size: every layer near the overall density
    for name, m in spread.items():
        assert abs(float(m.double().mean()) - density) < 0.1, name
    with pytest.raises(ValueError, match="scope must be"):
        masks.permuted("row")
