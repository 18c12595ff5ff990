"""Error barriers (lth_sparse.analysis): equation 3 of the SGD-noise paper and its variants on curves whose
barriers are known by construction."""

import pytest
import torch

from lth_sparse.analysis import barrier, error_barrier, is_stable, loss_barrier

ALPHAS = [i / 10 for i in range(11)]


def test_a_flat_path_has_no_barrier_of_any_kind():
    for kind in ("max-mean", "midpoint", "lerp"):
        b = error_barrier([0.1] * 11, ALPHAS, kind)
        assert b.value == pytest.approx(0.0) and (b.at_0, b.at_1) == (0.1, 0.1)


def test_a_bump_in_the_middle():
    errors = [0.1 + 0.05 * (1 - abs(a - 0.5) / 0.5) for a in ALPHAS]  # a tent from 0.10 up to 0.15
    b = error_barrier(errors, ALPHAS)
    assert b.value == pytest.approx(0.05) and b.alpha == 0.5
    assert error_barrier(errors, ALPHAS, "midpoint").value == pytest.approx(0.05)
    assert error_barrier(errors, ALPHAS, "lerp").value == pytest.approx(0.05)
    assert not is_stable(errors, ALPHAS) and is_stable(errors, ALPHAS, threshold=0.06)


def test_equation_3_is_never_below_half_the_endpoint_gap():
    # a straight line from 0.10 to 0.20: no rise over the line, yet equation 3 reads half the gap
    errors = [0.1 + 0.1 * a for a in ALPHAS]
    b = error_barrier(errors, ALPHAS)
    assert b.value == pytest.approx(0.05) == pytest.approx(b.endpoint_gap / 2) and b.alpha == 1.0
    assert error_barrier(errors, ALPHAS, "lerp").value == pytest.approx(0.0)
    assert error_barrier(errors, ALPHAS, "midpoint").value == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        curve = torch.rand(11, generator=g).tolist()
        b = error_barrier(curve, ALPHAS)
        assert b.value >= b.endpoint_gap / 2 - 1e-12


def test_the_alphas_may_come_in_any_order_and_reach_outside_the_segment():
    alphas = [1.0, -0.5, 0.5, 0.0, 1.5]
    errors = [0.2, 0.9, 0.3, 0.1, 0.8]  # the extrapolated points are ignored by the barriers
    b = error_barrier(errors, alphas)
    assert (b.at_0, b.at_1) == (0.1, 0.2) and b.value == pytest.approx(0.3 - 0.15) and b.alpha == 0.5
    assert loss_barrier(errors, alphas, "lerp").value == pytest.approx(0.3 - 0.15)


def test_bad_curves_are_refused():
    with pytest.raises(ValueError, match="alpha = 1"):
        barrier([0.1, 0.2], [0.0, 0.5])
    with pytest.raises(ValueError, match="needs alpha = 0.5"):
        barrier([0.1, 0.3, 0.2], [0.0, 0.4, 1.0], "midpoint")
    with pytest.raises(ValueError, match="3 values for 2 alphas"):
        barrier([0.1, 0.2, 0.3], [0.0, 1.0])
    with pytest.raises(ValueError, match="unknown barrier kind 'peak'"):
        barrier([0.1, 0.2], [0.0, 1.0], "peak")
    with pytest.raises(ValueError, match="finite"):
        barrier([0.1, float("nan")], [0.0, 1.0])
    with pytest.raises(ValueError, match="repeat"):
        barrier([0.1, 0.2, 0.3], [0.0, 1.0, 1.0])


def test_errors_are_fractions_and_a_percentage_is_refused():
    with pytest.raises(ValueError, match=r"errors are fractions in \[0, 1\].*\[39.0, 41.0, 40.0\]"):
        error_barrier([39.0, 41.0, 40.0], ALPHAS[::5])
    with pytest.raises(ValueError, match="errors are fractions"):
        is_stable([0.39, 41.0, 0.40], ALPHAS[::5])
    with pytest.raises(ValueError, match="threshold is a fraction"):
        is_stable([0.39, 0.41, 0.40], ALPHAS[::5], threshold=2.0)
    assert error_barrier([0.0, 1.0, 0.5], ALPHAS[::5]).value == pytest.approx(0.75)  # the bounds are fractions too
    assert loss_barrier([2.3, 2.9, 2.4], ALPHAS[::5]).value == pytest.approx(0.55)  # a loss is no fraction
