"""Property and bad-input tests for :mod:`amasim.scores`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amasim.scores import SCORES, check_score, example_scores, task_means

SETTINGS = settings(max_examples=60, deadline=None)

LOSS = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@st.composite
def loss_pairs(draw, elements=LOSS):
    """Losses and reference losses of one shape (1-D or a (R, N) batch)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=8))
    losses = draw(hnp.arrays(np.float64, shape, elements=elements))
    refs = draw(hnp.arrays(np.float64, shape, elements=elements))
    return losses, refs


# --------------------------------------------------------------------- example_scores
@SETTINGS
@given(pair=loss_pairs())
def test_loss_score_is_the_loss_with_unit_coefficient(pair):
    """score="loss": value L, dvalue/dL = 1, whatever the reference."""
    losses, refs = pair
    values, coef = example_scores("loss", losses, refs)
    np.testing.assert_array_equal(values, losses)
    np.testing.assert_array_equal(coef, np.ones_like(losses))


@SETTINGS
@given(pair=loss_pairs())
def test_excess_score_is_loss_minus_reference_with_unit_coefficient(pair):
    """score="excess": value L − ℓ, dvalue/dL = 1."""
    losses, refs = pair
    values, coef = example_scores("excess", losses, refs)
    np.testing.assert_array_equal(values, losses - refs)
    np.testing.assert_array_equal(coef, np.ones_like(losses))


@SETTINGS
@given(pair=loss_pairs())
def test_clipped_score_is_positive_part_with_indicator_coefficient(pair):
    """score="clipped": value max(L − ℓ, 0), dvalue/dL = 1[L > ℓ]."""
    losses, refs = pair
    values, coef = example_scores("clipped", losses, refs)
    np.testing.assert_array_equal(values, np.maximum(losses - refs, 0.0))
    np.testing.assert_array_equal(coef, (losses > refs).astype(np.float64))


@SETTINGS
@given(pair=loss_pairs(st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_clipped_score_lies_between_zero_and_absolute_excess(pair):
    """0 <= clipped <= |excess| for every example, at any magnitude."""
    losses, refs = pair
    clipped, _ = example_scores("clipped", losses, refs)
    excess, _ = example_scores("excess", losses, refs)
    assert np.all(clipped >= 0)
    assert np.all(clipped <= np.abs(excess))
    assert np.all((clipped == 0) | (clipped == excess))


@SETTINGS
@given(pair=loss_pairs(st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_dro_clipped_reports_the_clipped_excess_and_descends_the_excess(pair):
    """DoReMi's score: the mixer sees the clipped excess, θ the excess's coefficient 1."""
    losses, refs = pair
    values, coef = example_scores("dro-clipped", losses, refs)
    clipped, _ = example_scores("clipped", losses, refs)
    _, excess_coef = example_scores("excess", losses, refs)
    np.testing.assert_array_equal(values, clipped)
    np.testing.assert_array_equal(coef, excess_coef)


@pytest.mark.parametrize("score", [s for s in SCORES if s != "dro-clipped"])
@SETTINGS
@given(loss=LOSS, ref=LOSS)
def test_coefficient_is_the_derivative_of_the_value(score, loss, ref):
    """The returned coefficient equals d value / d L by central finite differences.

    Points within 1e-3 of the kink L = ℓ are excluded (the derivative jumps there).
    """
    assume(abs(loss - ref) > 1e-3)
    h = 1e-7 * max(1.0, abs(loss))
    lo, hi = np.array([loss - h]), np.array([loss + h])
    ref_arr = np.array([ref])
    slope = (example_scores(score, hi, ref_arr)[0] - example_scores(score, lo, ref_arr)[0]) / (
        hi - lo
    )
    _, coef = example_scores(score, np.array([loss]), ref_arr)
    np.testing.assert_allclose(slope, coef, rtol=0, atol=1e-5)


@pytest.mark.parametrize("score", SCORES)
def test_scores_keep_the_dtype_and_shape_of_the_losses(score):
    """Values and coefficients have the losses' shape and float dtype (float32 stays)."""
    losses = np.array([[0.5, 2.0, 1.0]], dtype=np.float32)
    refs = np.array([[1.0, 1.0, 1.0]], dtype=np.float32)
    values, coef = example_scores(score, losses, refs)
    assert values.shape == coef.shape == losses.shape
    assert values.dtype == coef.dtype == np.float32


def test_clipped_score_at_the_kink_has_value_and_coefficient_zero():
    """At L = ℓ exactly the clipped excess is 0 and its (sub)gradient choice is 0."""
    values, coef = example_scores("clipped", np.array([0.7]), np.array([0.7]))
    assert values.tolist() == [0.0]
    assert coef.tolist() == [0.0]


@pytest.mark.parametrize("score", ["bogus", "Loss", "", "clip"])
def test_example_scores_rejects_unknown_score(score):
    with pytest.raises(ValueError, match="score="):
        example_scores(score, np.zeros(2), np.zeros(2))


@pytest.mark.parametrize("score", SCORES)
def test_check_score_returns_known_names(score):
    assert check_score(score) == score


def test_check_score_rejects_unknown_name_and_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"score='bogus'.*loss, excess, clipped"):
        check_score("bogus")


# -------------------------------------------------------------------------- task_means
@st.composite
def batches(draw, elements=st.floats(-1e6, 1e6, width=32)):
    """``(values, task_ids, num_tasks)`` with shapes (R, N), N possibly 0."""
    num_tasks = draw(st.integers(1, 6))
    replicates = draw(st.integers(1, 3))
    n = draw(st.integers(0, 16))
    values = draw(hnp.arrays(np.float64, (replicates, n), elements=elements))
    ids = draw(hnp.arrays(np.int64, (replicates, n), elements=st.integers(0, num_tasks - 1)))
    return values, ids, num_tasks


def assert_task_means_match_loop(values, ids, num_tasks):
    means, counts = task_means(values, ids, num_tasks)
    assert means.shape == counts.shape == (values.shape[0], num_tasks)
    for r in range(values.shape[0]):
        for task in range(num_tasks):
            mine = [float(v) for v, i in zip(values[r], ids[r], strict=True) if i == task]
            assert counts[r, task] == len(mine)
            expected = math.fsum(mine) / len(mine) if mine else 0.0
            # a float mean of n terms is exact to within (n − 1)/n·ε·Σ|v| (cancellation of
            # huge values, e.g. 1e307 + 1 − 1e307, loses the small ones in any float order)
            bound = np.finfo(float).eps * math.fsum(map(abs, mine))
            assert means[r, task] == pytest.approx(expected, rel=1e-12, abs=max(1e-9, bound))


@SETTINGS
@given(batch=batches())
def test_task_means_match_a_direct_loop(batch):
    """Per replicate and task: the mean of that task's values and their number.

    A task with no example gets mean 0 and count 0.
    """
    assert_task_means_match_loop(*batch)


@SETTINGS
@given(batch=batches(st.floats(-1e307, 1e307)))
@example(batch=(np.array([[1e308, 1e308]]), np.array([[0, 1]]), 2))
@example(batch=(np.array([[1e307, 1.0, -1e307]]), np.array([[0, 0, 0]]), 1))
def test_task_means_match_a_direct_loop_for_huge_finite_values(batch):
    """Values up to 1e307 (at most 16 per task, so every task's sum is finite), within the
    float summation bound of the exact mean."""
    assert_task_means_match_loop(*batch)


def test_task_means_of_a_task_without_examples_is_zero_with_count_zero():
    """Task 1 never appears: mean 0, count 0; the other tasks are unaffected."""
    values = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 8.0]])
    ids = np.array([[0, 0, 2], [2, 2, 2]])
    means, counts = task_means(values, ids, 3)
    np.testing.assert_array_equal(counts, [[2, 0, 1], [0, 0, 3]])
    np.testing.assert_array_equal(means, [[2.0, 0.0, 5.0], [0.0, 0.0, 4.0]])


def test_task_means_counts_are_integers():
    """Counts are integer example counts (mixers validate them as such)."""
    _, counts = task_means(np.array([[1.0, 2.0]]), np.array([[0, 1]]), 2)
    assert counts.dtype.kind in "iu"
