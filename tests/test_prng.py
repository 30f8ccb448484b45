"""Property, statistical and bad-input tests for :mod:`amasim.prng`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import chisquare

from amasim import prng
from amasim.prng import UniformStream, categorical, integers, replicate_keys, uniform

SETTINGS = settings(max_examples=60, deadline=None)

SEED = st.integers(0, 2**63)
SEEDS = st.lists(SEED, min_size=1, max_size=5)
STEP = st.integers(0, 2**40)
LARGEST_UNIFORM = 1.0 - 2.0**-53  # the largest value uniform() can return


# ------------------------------------------------------------------- replicate_keys
@SETTINGS
@given(seeds=SEEDS, stream=st.integers(0, 8))
def test_replicate_keys_one_uint64_per_seed(seeds, stream):
    """One uint64 key per seed, shape (R,)."""
    keys = replicate_keys(seeds, stream)
    assert keys.dtype == np.uint64
    assert keys.shape == (len(seeds),)


@SETTINGS
@given(seed=SEED)
def test_int_seed_is_one_replicate(seed):
    """An int seed gives the same single key as a one-element list."""
    np.testing.assert_array_equal(replicate_keys(seed), replicate_keys([seed]))


@SETTINGS
@given(seed=SEED, streams=st.lists(st.integers(0, 100), min_size=2, max_size=4, unique=True))
def test_different_streams_give_different_keys(seed, streams):
    """Streams of one seed (training loop, oracle, ...) get distinct keys."""
    keys = [int(replicate_keys([seed], s)[0]) for s in streams]
    assert len(set(keys)) == len(keys)


@SETTINGS
@given(seeds=st.lists(SEED, min_size=2, max_size=5, unique=True))
def test_different_seeds_give_different_keys(seeds):
    keys = replicate_keys(seeds)
    assert len(set(keys.tolist())) == len(seeds)


# ---------------------------------------------------------------------------- uniform
@SETTINGS
@given(seeds=SEEDS, step=STEP, size=st.integers(0, 64))
def test_uniform_in_unit_interval_with_shape_replicates_by_size(seeds, step, size):
    """uniform returns float64 draws in [0, 1) of shape (R, size)."""
    u = uniform(replicate_keys(seeds), step, size)
    assert u.shape == (len(seeds), size)
    assert u.dtype == np.float64
    assert np.all((u >= 0.0) & (u < 1.0))


@SETTINGS
@given(seeds=SEEDS, step=STEP, size=st.integers(1, 64))
def test_uniform_is_pure(seeds, step, size):
    """Same keys, step and size: the same numbers (no hidden state)."""
    keys = replicate_keys(seeds)
    np.testing.assert_array_equal(uniform(keys, step, size), uniform(keys.copy(), step, size))


@SETTINGS
@given(a=SEED, b=SEED, step=STEP, size=st.integers(1, 32))
def test_replicate_draws_do_not_depend_on_other_replicates(a, b, step, size):
    """A replicate draws the same numbers alone as beside others."""
    together = uniform(replicate_keys([a, b]), step, size)
    np.testing.assert_array_equal(together[1], uniform(replicate_keys([b]), step, size)[0])
    np.testing.assert_array_equal(together[0], uniform(replicate_keys([a]), step, size)[0])


@SETTINGS
@given(seeds=SEEDS, step=STEP, size=st.integers(1, 32), more=st.integers(1, 32))
def test_draw_depends_only_on_position_not_on_size(seeds, step, size, more):
    """Draws are a function of (key, step, position): asking for more extends the row."""
    keys = replicate_keys(seeds)
    np.testing.assert_array_equal(
        uniform(keys, step, size + more)[:, :size], uniform(keys, step, size)
    )


@SETTINGS
@given(seed=SEED, step=STEP, gap=st.integers(1, 2**20))
def test_different_steps_give_different_numbers(seed, step, gap):
    """Steps t and t + gap draw different numbers."""
    keys = replicate_keys([seed])
    assert not np.array_equal(uniform(keys, step, 8), uniform(keys, step + gap, 8))


@SETTINGS
@given(
    seed=SEED, step=STEP, streams=st.lists(st.integers(0, 100), min_size=2, max_size=2, unique=True)
)
def test_different_streams_give_different_numbers(seed, step, streams):
    a, b = (uniform(replicate_keys([seed], s), step, 8) for s in streams)
    assert not np.array_equal(a, b)


def assert_uniform_sample(u: np.ndarray) -> None:
    """Mean within 0.005 of 1/2 and a 20-bin chi-square p-value above 1e-4."""
    u = u.ravel()
    assert abs(u.mean() - 0.5) < 0.005
    observed, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    assert chisquare(observed).pvalue > 1e-4


def test_uniform_along_positions_is_roughly_uniform():
    """200k positions of one replicate and step."""
    assert_uniform_sample(uniform(replicate_keys([12345]), 3, 200_000))


def test_uniform_across_replicates_is_roughly_uniform():
    """Position 0..9 of 20k consecutive seeds: keys of nearby seeds are not correlated."""
    assert_uniform_sample(uniform(replicate_keys(list(range(20_000))), 0, 10))


def test_uniform_across_steps_is_roughly_uniform():
    """2000 consecutive steps x 100 positions of one seed."""
    keys = replicate_keys([7])
    assert_uniform_sample(np.concatenate([uniform(keys, t, 100) for t in range(2000)]))


def test_uniform_successive_positions_and_steps_uncorrelated():
    """Lag-1 correlation along positions and between steps t, t + 1 is below 0.01."""
    keys = replicate_keys([99])
    u = uniform(keys, 0, 200_000)[0]
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    v = uniform(keys, 1, 200_000)[0]
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.01


# ------------------------------------------------------------------------ categorical
def test_categorical_frequencies_match_probabilities():
    """200k draws: empirical frequencies within 0.01 of probs; probability-0 tasks never."""
    probs = np.array([[0.0, 0.1, 0.0, 0.25, 0.05, 0.6, 0.0]])
    draws = categorical(uniform(replicate_keys([2024]), 0, 200_000), probs)
    assert draws.shape == (1, 200_000)
    freq = np.bincount(draws[0], minlength=probs.shape[1]) / draws.size
    np.testing.assert_allclose(freq, probs[0], atol=0.01)
    assert np.all(freq[probs[0] == 0] == 0)


def test_categorical_uses_each_replicates_own_probabilities():
    """Replicate r draws from probs[r]."""
    probs = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    draws = categorical(uniform(replicate_keys([1, 2]), 5, 100_000), probs)
    for r in range(2):
        freq = np.bincount(draws[r], minlength=3) / draws.shape[1]
        np.testing.assert_allclose(freq, probs[r], atol=0.01)
        assert np.all(freq[probs[r] == 0] == 0)


@st.composite
def dyadic_distributions(draw):
    """Probabilities that are multiples of 1/64 (exact cumsum, total exactly 1), zeros allowed."""
    weights = draw(st.lists(st.integers(0, 8), min_size=0, max_size=7))
    weights.append(64 - sum(weights))  # >= 8, so the total is 64
    order = draw(st.permutations(range(len(weights))))
    return np.array([weights[i] for i in order], dtype=np.float64) / 64


@SETTINGS
@given(
    probs=dyadic_distributions(),
    u=hnp.arrays(np.float64, st.integers(1, 16), elements=st.floats(0, LARGEST_UNIFORM)),
)
def test_categorical_is_the_inverse_cdf(probs, u):
    """Draw = #{j : cdf_j <= u}: a valid index whose category has positive probability."""
    draws = categorical(u[None, :], probs[None, :])
    assert draws.shape == (1, u.size)
    np.testing.assert_array_equal(draws[0], np.searchsorted(np.cumsum(probs), u, side="right"))
    assert np.all(probs[draws[0]] > 0)


def test_categorical_never_draws_trailing_zero_probability_category():
    """probs = [0.1]*10 + [0]: cumsum reaches 1 − 2⁻⁵³; the last category must not be drawn."""
    probs = np.array([[0.1] * 10 + [0.0]])
    assert np.cumsum(probs)[-1] == LARGEST_UNIFORM
    draws = categorical(np.array([[0.0, 0.5, LARGEST_UNIFORM]]), probs)
    assert np.all(draws < 10)


def test_uniform_values_lie_on_the_53_bit_grid():
    """uniform maps the top 53 bits to [0, 1): values k·2⁻⁵³, so 1 − 2⁻⁵³ can occur."""
    u = uniform(replicate_keys([3]), 0, 10_000)
    scaled = u * 2.0**53
    np.testing.assert_array_equal(scaled, np.floor(scaled))
    assert scaled.max() <= 2.0**53 - 1


# ----------------------------------------------------------------------- UniformStream
@SETTINGS
@given(
    seeds=st.lists(st.integers(0, 2**32), min_size=1, max_size=4),
    size=st.integers(1, 40),
    block=st.one_of(st.none(), st.integers(1, 9)),
    steps=st.lists(st.integers(0, 300), min_size=1, max_size=30),
)
def test_uniform_stream_reads_uniform_at_any_step_in_any_order(seeds, size, block, steps):
    """stream(t) equals uniform(keys, t, size), bit for bit, whatever the block size and
    the order of the reads (forward, backward, across block boundaries)."""
    keys = replicate_keys(seeds)
    stream = UniformStream(keys, size, block)
    for t in steps:
        np.testing.assert_array_equal(stream(t), uniform(keys, t, size))


def test_uniform_stream_default_block_bounds_the_numbers_held():
    """64 steps for small draws; large draws get shorter blocks (≤ MAX_BLOCK_NUMBERS)."""
    assert UniformStream(replicate_keys([0]), 32).block == 64
    big = UniformStream(replicate_keys(list(range(16))), 128)
    assert 16 * 128 * big.block <= UniformStream.MAX_BLOCK_NUMBERS
    assert big.block >= 1
    huge = UniformStream(replicate_keys(list(range(64))), 4096)
    assert huge.block == 1


# --------------------------------------------------------------------------- integers
@SETTINGS
@given(
    high=hnp.arrays(np.int64, st.integers(1, 16), elements=st.integers(1, 2**53)),
    data=st.data(),
)
def test_integers_lie_in_zero_to_high(high, data):
    """integers(u, high) is in [0, high) elementwise, also at u = 0 and u = 1 − 2⁻⁵³."""
    u = data.draw(hnp.arrays(np.float64, high.shape, elements=st.floats(0, LARGEST_UNIFORM)))
    u[0] = LARGEST_UNIFORM
    out = integers(u, high)
    assert out.shape == high.shape
    assert np.all((out >= 0) & (out < high))
    assert integers(np.zeros(1), high[:1])[0] == 0
    assert integers(np.array([LARGEST_UNIFORM]), high[:1])[0] == high[0] - 1


def test_integers_need_no_clipping_at_the_largest_uniform():
    """(1 − 2⁻⁵³)·h rounds below h for powers of two, their neighbours and h up to 2⁵³,
    the cases the docstring's argument singles out (ties at powers of two)."""
    powers = [2**m for m in range(54)]
    high = np.array(sorted({h + d for h in powers for d in (-1, 0, 1) if 1 <= h + d <= 2**53}))
    out = integers(np.full(high.shape, LARGEST_UNIFORM), high)
    np.testing.assert_array_equal(out, high - 1)


def test_integers_broadcast_high_over_replicates():
    """``high`` of shape (R, 1) broadcasts over the draws of each replicate."""
    u = uniform(replicate_keys([0, 1]), 0, 1000)
    high = np.array([[3], [1000]])
    out = integers(u, high)
    assert out.shape == (2, 1000)
    assert out[0].max() <= 2 and out[1].max() <= 999
    assert set(out[0].tolist()) == {0, 1, 2}


def test_integers_roughly_uniform():
    """200k draws in [0, 7): each value's frequency within 0.01 of 1/7."""
    out = integers(uniform(replicate_keys([11]), 0, 200_000), 7)
    freq = np.bincount(out.ravel(), minlength=7) / out.size
    np.testing.assert_allclose(freq, np.full(7, 1 / 7), atol=0.01)


# -------------------------------------------------------------------------- bad input
def test_replicate_keys_rejects_empty_seeds():
    with pytest.raises(ValueError, match="seeds"):
        replicate_keys([])


@pytest.mark.parametrize("seeds", [[-1], [1.5], [True], ["3"], [0, None]], ids=repr)
def test_replicate_keys_rejects_seeds_that_are_not_non_negative_ints(seeds):
    with pytest.raises((TypeError, ValueError), match="seed"):
        replicate_keys(seeds)


def test_named_streams_are_distinct_and_fit_in_one_rank_block():
    """Every consumer of a seed has its own stream, and rank r's block (stream + 8·r) never
    reaches another rank's streams."""
    streams = [
        prng.LOOP_STREAM,
        prng.SAMPLE_STREAM,
        prng.AIOLI_STREAM,
        prng.MIXTURE_STREAM,
        prng.GRADIENT_STREAM,
    ]
    assert len(set(streams)) == len(streams)
    assert all(0 <= s < prng.STREAMS_PER_RANK for s in streams)
