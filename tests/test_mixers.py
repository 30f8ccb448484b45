"""Property and bad-input tests for :mod:`amasim.mixers`.

Every mixer factory is exercised through a :class:`Spec` that builds it for ``k`` tasks
(``uniform`` needs one size per task) and records what kind of mixer it is, so each
invariant is stated once and checked for every mixer it applies to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp, softmax

from amasim import mixers as m

SETTINGS = settings(max_examples=50, deadline=None)
FEW = settings(max_examples=30, deadline=None)

SIZES = np.array([3, 1, 4, 1, 5, 9, 2, 6])  # examples per task for uniform(sizes)
MAX_K = 6
FLOAT_MAX = np.finfo(np.float64).max

# Any finite float64, subnormals and ±1.797e308 included.
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Magnitudes at which the property under test, not float64 range, is the subject.
MODERATE = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Spec:
    """How to build one mixer configuration for ``len(sizes)`` tasks and a step size."""

    name: str
    build: Callable[[list[int], float], m.Mixer]
    static: bool = False
    smoothing: float = 0.0
    importance: bool = False
    averaged: bool = False

    def __call__(self, sizes: Any, step_size: float = 0.5) -> m.Mixer:
        return self.build([int(s) for s in sizes], step_size)


SPECS = [
    Spec("uniform", lambda sizes, eta: m.uniform(sizes), static=True),
    Spec("stratified", lambda sizes, eta: m.stratified(), static=True),
    Spec("group_dro", lambda sizes, eta: m.group_dro(eta)),
    Spec("ama_r", lambda sizes, eta: m.ama_r(eta)),
    Spec("ama_r_excess", lambda sizes, eta: m.ama_r(eta, score="excess")),
    Spec("ama_s", lambda sizes, eta: m.ama_s(eta, 0.1), smoothing=0.1, importance=True),
    Spec(
        "ama_s_full_smoothing",
        lambda sizes, eta: m.ama_s(eta, 1.0),
        smoothing=1.0,
        importance=True,
    ),
    Spec("eg_plain", lambda sizes, eta: m.exponentiated_gradient(eta)),
    Spec(
        "eg_smoothed",
        lambda sizes, eta: m.exponentiated_gradient(eta, smoothing=0.3),
        smoothing=0.3,
    ),
    Spec(
        "eg_smoothed_importance",
        lambda sizes, eta: m.exponentiated_gradient(
            eta, smoothing=0.05, importance_weighting=True, score="loss", apply="resample"
        ),
        smoothing=0.05,
        importance=True,
    ),
    Spec(
        "averaged_uniform",
        lambda sizes, eta: m.averaged(m.uniform(sizes)),
        static=True,
        averaged=True,
    ),
    Spec("averaged_group_dro", lambda sizes, eta: m.averaged(m.group_dro(eta)), averaged=True),
    Spec(
        "averaged_ama_s",
        lambda sizes, eta: m.averaged(m.ama_s(eta, 0.2)),
        smoothing=0.2,
        importance=True,
        averaged=True,
    ),
]

# The costlier property tests skip these specs (to keep the file fast): ama_r, ama_r(score=
# "excess") and exponentiated_gradient's defaults run group_dro's code path bit for bit
# (test_ama_r_and_eg_defaults_update_like_group_dro); ama_s with c = 1 and averaged(uniform)
# are corner cases of ama_s and averaged(...) that the simplex tests still cover.
SAME_PATH_AS_OTHERS = (
    "ama_r",
    "ama_r_excess",
    "eg_plain",
    "ama_s_full_smoothing",
    "averaged_uniform",
)


def params(select: Callable[[Spec], bool] = lambda s: True, every: bool = False):
    """``pytest.param`` per selected spec; ``every=False`` leaves out ``SAME_PATH_AS_OTHERS``."""
    out = []
    for spec in SPECS:
        if not select(spec) or (not every and spec.name in SAME_PATH_AS_OTHERS):
            continue
        out.append(pytest.param(spec, id=spec.name))
    return out


EG_PLAIN_STATE = params(lambda s: not s.static and not s.averaged)


# ------------------------------------------------------------------------- helpers
def assert_on_simplex(w: np.ndarray) -> None:
    """Finite, non-negative, each row summing to 1 within 1e-12."""
    assert np.all(np.isfinite(w)), w
    assert np.all(w >= 0), w
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


def leaves(state: Any) -> list[Any]:
    """The arrays and numbers of a (possibly nested) NamedTuple state, in order."""
    if isinstance(state, tuple):
        return [leaf for part in state for leaf in leaves(part)]
    return [state]


def assert_states_identical(a: Any, b: Any) -> None:
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.shape(x) == np.shape(y)
        assert np.array_equal(x, y), (x, y)


def row(state: Any, r: int) -> Any:
    """Replicate ``r`` of a batched state (integers such as ``num_updates`` are shared)."""
    if isinstance(state, tuple):
        return type(state)(*(row(part, r) for part in state))
    return state[r] if isinstance(state, np.ndarray) else state


def run(mixer: m.Mixer, state: Any, scores: list, counts: list) -> tuple[list, Any]:
    weights = []
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        weights.append(w)
    return weights, state


# ---------------------------------------------------------------------- strategies
@st.composite
def sequences(
    draw,
    elements=MODERATE,
    with_counts: bool | None = None,
    batch: tuple[int, ...] = (),
    min_k: int = 1,
    max_len: int = 6,
):
    """``(k, scores, counts)`` for a run of updates on ``k`` tasks.

    ``scores`` has shape ``(length, *batch, k)``: one update per leading index.
    ``counts`` is the same shape (integers 0..5) or a list of ``None`` (full information).
    """
    k = draw(st.integers(min_k, MAX_K))
    length = draw(st.integers(1, max_len))
    use_counts = draw(st.booleans()) if with_counts is None else with_counts
    shape = (length, *batch, k)
    scores = draw(hnp.arrays(np.float64, shape, elements=elements))
    if use_counts:
        counts = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 5)))
    else:
        counts = [None] * length
    return k, scores, counts


EXTREME_CASE = (2, np.array([[FLOAT_MAX, -FLOAT_MAX], [1e308, -1e308]]), [None, None])
EXTREME_COUNTS_CASE = (2, np.array([[1e308, -1e308]]), np.array([[2, 0]]))


# ------------------------------------------------------------------ simplex / finite
@pytest.mark.parametrize("spec", params(every=True))
@SETTINGS
@given(case=sequences(elements=FINITE, with_counts=False))
@example(case=EXTREME_CASE)
def test_weights_on_simplex_for_any_finite_scores(spec, case):
    """Full information: any finite scores keep the weights finite and on the simplex."""
    k, scores, counts = case
    mixer = spec(SIZES[:k], 1.0)
    state = mixer.init(k)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        assert_on_simplex(w)
        assert np.array_equal(mixer.weights(state), w)


@pytest.mark.parametrize("spec", params())
@SETTINGS
@given(case=sequences(elements=FINITE, with_counts=True))
@example(case=EXTREME_COUNTS_CASE)
def test_weights_on_simplex_for_any_finite_scores_and_counts(spec, case):
    """With counts (partial / bandit feedback): finite scores keep weights on the simplex."""
    k, scores, counts = case
    mixer = spec(SIZES[:k], 1.0)
    state = mixer.init(k)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        assert_on_simplex(w)
        assert np.array_equal(mixer.weights(state), w)


@pytest.mark.parametrize("spec", params(lambda s: s.importance, every=True))
@SETTINGS
@given(case=sequences(elements=st.floats(-1e300, 1e300), with_counts=True))
def test_importance_weighted_mixers_on_simplex_below_overflow(spec, case):
    """Bandit feedback with |scores| <= 1e300 (no float64 overflow possible): on simplex."""
    k, scores, counts = case
    mixer = spec(SIZES[:k], 1.0)
    state = mixer.init(k)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        assert_on_simplex(w)


@pytest.mark.parametrize("spec", params(every=True))
def test_initial_weights_on_simplex(spec):
    """``weights(init(k))`` is a distribution for every k, single and batched."""
    for k in range(1, MAX_K + 1):
        mixer = spec(SIZES[:k])
        assert_on_simplex(mixer.weights(mixer.init(k)))
        batched = mixer.weights(mixer.init(k, seed=[0, 1, 2]))
        assert batched.shape == (3, k)
        assert_on_simplex(batched)


@pytest.mark.parametrize("spec", params(every=True))
def test_single_extreme_update_stays_finite(spec):
    """One update with scores ±1e308 and step size 1e10 gives finite simplex weights."""
    k = 4
    mixer = spec(SIZES[:k], 1e10)
    state = mixer.init(k)
    w, state = mixer.update(state, np.array([1e308, -1e308, 1e308, -FLOAT_MAX]))
    assert_on_simplex(w)
    assert all(np.all(np.isfinite(x)) for x in leaves(state))


def test_hundred_thousand_adversarial_updates_stay_finite():
    """10^5 full-information AMA-R updates, 64 replicates, |scores| = 1e3, η = 1: finite."""
    rng = np.random.default_rng(1)
    k, replicates = 4, 64
    # A drift that always favours task 0 plus random signs: log weights run far negative.
    patterns = rng.choice([-1e3, 1e3], size=(97, replicates, k))
    patterns[:, :, 0] = 1e3
    mixer = m.ama_r(1.0)
    state = mixer.init(k, seed=list(range(replicates)))
    for t in range(100_000):
        w, state = mixer.update(state, patterns[t % 97])
        if t % 5_000 == 0:
            assert_on_simplex(w)
    assert_on_simplex(w)
    assert np.all(np.isfinite(state.log_weights))
    assert np.all(state.log_weights <= 0)


def test_many_adversarial_bandit_updates_stay_finite():
    """2·10^4 AMA-S updates with counts (importance weights up to k/c = 80): finite."""
    rng = np.random.default_rng(2)
    k, replicates = 4, 64
    patterns = rng.choice([-1e3, 1e3], size=(97, replicates, k))
    count_patterns = rng.integers(0, 3, size=(89, replicates, k))
    mixer = m.ama_s(1.0, 0.05)
    state = mixer.init(k, seed=list(range(replicates)))
    for t in range(20_000):
        w, state = mixer.update(state, patterns[t % 97], count_patterns[t % 89])
    assert_on_simplex(w)
    assert np.all(w >= 0.05 / k - 1e-15)
    assert np.all(np.isfinite(state.log_weights))


# ------------------------------------------------------------------------- batching
@pytest.mark.parametrize("spec", params())
@SETTINGS
@given(case=sequences(batch=(3,), max_len=4))
def test_batched_update_equals_row_by_row(spec, case):
    """Updating 3 replicates in one array equals updating each alone, bit for bit."""
    k, scores, counts = case
    mixer = spec(SIZES[:k])
    batched = mixer.init(k, seed=[0, 1, 2])
    singles = [mixer.init(k, seed=r) for r in range(3)]
    for r in range(3):
        assert_states_identical(row(batched, r), singles[r])
    for s, n in zip(scores, counts, strict=True):
        w, batched = mixer.update(batched, s, n)
        assert w.shape == (3, k)
        for r in range(3):
            w_r, singles[r] = mixer.update(singles[r], s[r], None if n is None else n[r])
            assert np.array_equal(w[r], w_r)
            assert_states_identical(row(batched, r), singles[r])


@pytest.mark.parametrize("spec", params(every=True))
def test_init_with_seed_list_adds_leading_replicate_axis(spec):
    """``init(k, seed=[0, 1, 2])`` gives weights of shape (3, k); an int seed gives (k,)."""
    mixer = spec(SIZES[:5])
    assert mixer.weights(mixer.init(5, seed=7)).shape == (5,)
    assert mixer.weights(mixer.init(5, seed=[0, 1, 2])).shape == (3, 5)
    assert mixer.weights(mixer.init(5, seed=np.arange(4))).shape == (4, 5)


@pytest.mark.parametrize("spec", params())
@FEW
@given(case=sequences(batch=(2,)))
def test_same_seed_gives_identical_results(spec, case):
    """Two runs from the same seeds and the same inputs end in bitwise equal states."""
    k, scores, counts = case
    mixer = spec(SIZES[:k])
    w1, s1 = run(mixer, mixer.init(k, seed=[4, 5]), scores, counts)
    w2, s2 = run(spec(SIZES[:k]), spec(SIZES[:k]).init(k, seed=[4, 5]), scores, counts)
    assert_states_identical(s1, s2)
    for a, b in zip(w1, w2, strict=True):
        assert np.array_equal(a, b)


# -------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("spec", params())
@SETTINGS
@given(case=sequences(min_k=2), data=st.data())
def test_permuting_tasks_permutes_weights(spec, case, data):
    """Relabelling the tasks (scores, counts and sizes alike) relabels the weights."""
    k, scores, counts = case
    perm = np.array(data.draw(st.permutations(range(k))))
    sizes = SIZES[:k]
    mixer, permuted = spec(sizes), spec(sizes[perm])
    state, state_p = mixer.init(k), permuted.init(k)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        w_p, state_p = permuted.update(state_p, s[perm], None if n is None else n[perm])
        np.testing.assert_allclose(w_p, w[perm], rtol=1e-9, atol=1e-300)


# --------------------------------------------------------------------- EG behaviour
@pytest.mark.parametrize("spec", EG_PLAIN_STATE)
@SETTINGS
@given(
    case=sequences(st.floats(-1e3, 1e3), with_counts=False, min_k=2),
    level=st.floats(-1e6, 1e6),
)
def test_equal_scores_leave_eg_weights_unchanged(spec, case, level):
    """Full information: equal scores for every task do not move the weights."""
    k, scores, _ = case
    mixer = spec(SIZES[:k], 0.5)
    w, state = run(mixer, mixer.init(k), scores, [None] * len(scores))
    w_after, _ = mixer.update(state, np.full(k, level))
    np.testing.assert_allclose(w_after, w[-1], rtol=1e-8, atol=1e-300)


@pytest.mark.parametrize("spec", params(lambda s: not s.static))
@SETTINGS
@given(k=st.integers(1, MAX_K), level=FINITE, step_size=st.floats(1e-6, 1e10))
def test_equal_scores_from_uniform_keep_uniform_weights(spec, k, level, step_size):
    """From the initial uniform weights, any common score (even ±1e308) keeps them 1/k."""
    mixer = spec(SIZES[:k], step_size)
    w, _ = mixer.update(mixer.init(k), np.full(k, level))
    np.testing.assert_allclose(w, np.full(k, 1.0 / k), rtol=1e-14, atol=0)


def test_eg_step_invariant_to_a_large_common_gain_offset():
    """Adding the same constant to every gain leaves the EG step unchanged.

    Gains are multiples of 16384 = ulp(1e20), so ``gains + 1e20`` is exact.
    """
    log_w = np.log(np.array([0.7, 0.2, 0.1]))
    gains = np.array([0.0, 16384.0, -16384.0])
    shifted = gains + 1e20
    assert np.array_equal(shifted - 1e20, gains)
    _, probs = m.eg_step(log_w, gains, 1e-4)
    _, probs_shifted = m.eg_step(log_w, shifted, 1e-4)
    np.testing.assert_allclose(probs_shifted, probs, rtol=1e-9)


@st.composite
def unique_max_scores(draw):
    """``(k, scores, i)``: ``scores[i]`` exceeds every other score by at least 1e-3."""
    k = draw(st.integers(2, MAX_K))
    scores = draw(hnp.arrays(np.float64, k, elements=MODERATE))
    i = draw(st.integers(0, k - 1))
    others = np.delete(scores, i)
    scores[i] = others.max() + draw(st.floats(1e-3, 1e6))
    return k, scores, i


@pytest.mark.parametrize("spec", params(lambda s: not s.static and s.smoothing < 1))
@SETTINGS
@given(case=unique_max_scores(), step_size=st.floats(1e-3, 10), n=st.integers(0, 4))
def test_eg_update_gives_strictly_largest_score_strictly_most_weight(spec, case, step_size, n):
    """From uniform, the task with the strictly largest score gains weight over every other.

    ``n = 0`` is full information; ``n > 0`` feeds equal counts ``n`` for every task.
    """
    k, scores, i = case
    mixer = spec(SIZES[:k], step_size)
    w, _ = mixer.update(mixer.init(k), scores, None if n == 0 else np.full(k, n))
    assert w[i] > 1.0 / k
    assert np.all(w[i] > np.delete(w, i))


def test_eg_update_orders_huge_scores_correctly():
    """Ordering survives increments near the float64 limit: the largest score wins."""
    mixer = m.group_dro(1.0)
    w, _ = mixer.update(mixer.init(3), np.array([1e308, 1e307, -1e308]))
    assert w[0] > w[1]
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("spec", params(lambda s: s.static and not s.averaged))
@SETTINGS
@given(case=sequences(elements=FINITE))
def test_static_mixers_never_change(spec, case):
    """uniform / stratified return their fixed weights (∝ sizes, or 1/k) whatever they see."""
    k, scores, counts = case
    sizes = SIZES[:k]
    expected = sizes / sizes.sum() if spec.name == "uniform" else np.full(k, 1.0 / k)
    mixer = spec(sizes)
    state = mixer.init(k)
    initial = mixer.weights(state)
    np.testing.assert_allclose(initial, expected, rtol=1e-15)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        assert np.array_equal(w, initial)
        assert np.array_equal(mixer.weights(state), initial)


# ----------------------------------------------------------------------------- AMA-S
@SETTINGS
@given(
    case=sequences(elements=st.floats(-1e300, 1e300)),
    smoothing=st.floats(1e-3, 1.0),
    step_size=st.floats(1e-3, 1e3),
)
def test_ama_s_weights_never_below_smoothing_over_k(case, smoothing, step_size):
    """AMA-S plays α = (1 − c)·q + c/k, so every weight is at least c/k."""
    k, scores, counts = case
    mixer = m.ama_s(step_size, smoothing)
    state = mixer.init(k)
    for s, n in zip(scores, counts, strict=True):
        w, state = mixer.update(state, s, n)
        assert np.all(w >= smoothing / k - 1e-15)
        assert_on_simplex(w)


@SETTINGS
@given(
    weights=hnp.arrays(np.float64, st.integers(1, MAX_K), elements=st.floats(0, 1)),
    smoothing=st.floats(0, 1),
)
def test_smooth_mixes_with_uniform(weights, smoothing):
    """``smooth`` is (1 − c)·α + c/k: a distribution stays one, every entry >= c/k."""
    assume(weights.sum() > 0)
    alpha = weights / weights.sum()
    k = alpha.size
    out = m.smooth(alpha, smoothing)
    np.testing.assert_allclose(out, (1 - smoothing) * alpha + smoothing / k, rtol=1e-15)
    assert np.all(out >= smoothing / k - 1e-15)
    assert_on_simplex(out)


# ---------------------------------------------------------------- ama_r == group_dro
@pytest.mark.parametrize(
    "same",
    [
        lambda eta: m.ama_r(eta),
        lambda eta: m.ama_r(eta, score="excess"),
        lambda eta: m.ama_r(eta, score="loss"),
        lambda eta: m.exponentiated_gradient(eta),
    ],
    ids=["ama_r", "ama_r_excess", "ama_r_loss", "exponentiated_gradient"],
)
@SETTINGS
@given(case=sequences(elements=FINITE), step_size=st.floats(1e-3, 1e3))
def test_ama_r_and_eg_defaults_update_like_group_dro(same, case, step_size):
    """ama_r(score=...) and group_dro are the same EG update: identical weights and states."""
    k, scores, counts = case
    a, g = same(step_size), m.group_dro(step_size)
    wa, sa = run(a, a.init(k), scores, counts)
    wg, sg = run(g, g.init(k), scores, counts)
    assert_states_identical(sa, sg)
    for x, y in zip(wa, wg, strict=True):
        assert np.array_equal(x, y)


@pytest.mark.parametrize(
    ("mixer", "score", "apply"),
    [
        pytest.param(m.uniform([1, 2]), "loss", "resample", id="uniform"),
        pytest.param(m.stratified(), "loss", "resample", id="stratified"),
        pytest.param(m.group_dro(0.1), "loss", "reweight", id="group_dro"),
        pytest.param(m.ama_r(0.1), "clipped", "reweight", id="ama_r"),
        pytest.param(m.ama_s(0.1, 0.1), "clipped", "resample", id="ama_s"),
        pytest.param(m.ama_r(0.1, score="excess"), "excess", "reweight", id="ama_r_excess"),
        pytest.param(m.ama_r(0.1, score="loss"), "loss", "reweight", id="ama_r_loss"),
        pytest.param(m.ama_s(0.1, 0.1, score="loss"), "loss", "resample", id="ama_s_loss"),
        pytest.param(m.group_dro(0.1, score="clipped"), "clipped", "reweight", id="dro_clip"),
        pytest.param(m.uniform([1], apply="reweight"), "loss", "reweight", id="uni_reweight"),
        pytest.param(m.averaged(m.ama_s(0.1, 0.1)), "clipped", "resample", id="averaged"),
    ],
)
def test_mixer_carries_documented_score_and_apply(mixer, score, apply):
    """Each factory's ``.score`` / ``.apply`` defaults are those in the module's table."""
    assert (mixer.score, mixer.apply) == (score, apply)


# -------------------------------------------------------------------------- averaged
@pytest.mark.parametrize("spec", params(lambda s: not s.averaged))
@SETTINGS
@given(case=sequences())
def test_averaged_returns_running_mean_of_inner_weights(spec, case):
    """averaged(mixer) returns the arithmetic mean of the inner weights returned so far."""
    k, scores, counts = case
    inner = spec(SIZES[:k])
    avg = m.averaged(spec(SIZES[:k]))
    inner_state, avg_state = inner.init(k), avg.init(k)
    np.testing.assert_array_equal(avg.weights(avg_state), inner.weights(inner_state))
    history = []
    for s, n in zip(scores, counts, strict=True):
        w, inner_state = inner.update(inner_state, s, n)
        history.append(w)
        w_avg, avg_state = avg.update(avg_state, s, n)
        expected = np.mean(history, axis=0)
        np.testing.assert_allclose(w_avg, expected, rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(avg.weights(avg_state), w_avg)


# --------------------------------------------------------------------------- eg_step
@st.composite
def eg_inputs(draw, gains=FINITE, max_step=1e10):
    k = draw(st.integers(1, MAX_K))
    x = draw(hnp.arrays(np.float64, k, elements=st.floats(-50, 50)))
    g = draw(hnp.arrays(np.float64, k, elements=gains))
    step_size = draw(st.floats(1e-6, max_step))
    return x - logsumexp(x), g, step_size


@SETTINGS
@given(inputs=eg_inputs())
@example(inputs=(np.log([0.5, 0.5]), np.array([FLOAT_MAX, -FLOAT_MAX]), 1e10))
def test_eg_step_returns_normalised_log_weights_and_their_softmax(inputs):
    """eg_step's log weights have logsumexp 0 (<= 0 each); its probs are their softmax."""
    log_w, gains, step_size = inputs
    new_log_w, probs = m.eg_step(log_w, gains, step_size)
    assert np.all(np.isfinite(new_log_w))
    assert np.all(new_log_w <= 0)
    assert abs(logsumexp(new_log_w)) <= 1e-12
    np.testing.assert_allclose(softmax(new_log_w), probs, rtol=0, atol=1e-12)
    assert_on_simplex(probs)


@SETTINGS
@given(inputs=eg_inputs(gains=st.floats(-1e3, 1e3), max_step=1e3))
def test_eg_step_is_multiplicative_weights(inputs):
    """eg_step gives α' ∝ α · exp(η g), computed directly with scipy's softmax."""
    log_w, gains, step_size = inputs
    _, probs = m.eg_step(log_w, gains, step_size)
    np.testing.assert_allclose(probs, softmax(log_w + step_size * gains), rtol=1e-9, atol=1e-300)


def test_eg_step_keeps_log_weights_above_documented_floor():
    """Log weights stay in [−1e300, 0] (module docstring)."""
    log_w, _ = m.eg_step(np.log([0.5, 0.5]), np.array([0.0, -1e305]), 1.0)
    assert np.all(log_w >= -1e300)


# --------------------------------------------------------------- importance weights
def multinomial_pmf(counts: tuple[int, ...], probs: np.ndarray) -> float:
    coef = math.factorial(sum(counts))
    for c in counts:
        coef //= math.factorial(c)
    return coef * math.prod(p**c for p, c in zip(probs, counts, strict=True))


@st.composite
def positive_distributions(draw, k):
    raw = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k)))
    return raw / raw.sum()


@settings(max_examples=150, deadline=None)
@given(data=st.data(), k=st.integers(2, 4), batch=st.integers(1, 4))
def test_importance_weighted_is_unbiased(data, k, batch):
    """E[n_i/(B p_i) · s_i] = s_i exactly, counts ~ Multinomial(B, p) (all outcomes summed)."""
    probs = data.draw(positive_distributions(k))
    scores = data.draw(hnp.arrays(np.float64, k, elements=MODERATE))
    expectation = np.zeros(k)
    total_mass = 0.0
    for counts in itertools.product(range(batch + 1), repeat=k):
        if sum(counts) != batch:
            continue
        pmf = multinomial_pmf(counts, probs)
        total_mass += pmf
        expectation += pmf * m.importance_weighted(scores, np.array(counts), probs)
    assert total_mass == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(expectation, scores, rtol=1e-9, atol=0)


@SETTINGS
@given(
    data=st.data(),
    k=st.integers(1, MAX_K),
    smoothing=st.floats(0.01, 1.0),
)
def test_importance_weighted_bounded_by_k_over_c(data, k, smoothing):
    """With probs >= c/k, |n_i/(B p_i) · s_i| <= |s_i| · k/c."""
    q = data.draw(positive_distributions(k))
    probs = m.smooth(q, smoothing)
    scores = data.draw(hnp.arrays(np.float64, k, elements=st.floats(-1e300, 1e300)))
    counts = data.draw(hnp.arrays(np.int64, k, elements=st.integers(0, 10)))
    est = m.importance_weighted(scores, counts, probs)
    assert np.all(np.isfinite(est))
    assert np.all(np.abs(est) <= np.abs(scores) * (k / smoothing) * (1 + 1e-12))


def test_importance_weighted_of_empty_batch_is_zero():
    """A batch with no examples (all counts 0) gives zero gains, not a division by zero."""
    est = m.importance_weighted(np.array([3.0, -2.0]), np.array([0, 0]), np.array([0.5, 0.5]))
    assert np.array_equal(est, [0.0, 0.0])


def test_importance_weighted_single_draw_is_exp3_estimate():
    """B = 1 is EXP3's x/p for the drawn arm and 0 for the others."""
    est = m.importance_weighted(
        np.array([0.3, 0.8, 0.5]), np.array([0, 1, 0]), np.array([0.2, 0.25, 0.55])
    )
    np.testing.assert_allclose(est, [0.0, 0.8 / 0.25, 0.0], rtol=1e-15)


def test_importance_weighted_is_rowwise_on_batches():
    """With a leading replicate axis each row uses its own batch size."""
    scores = np.array([[1.0, 2.0], [3.0, 4.0]])
    counts = np.array([[1, 3], [2, 0]])
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    est = m.importance_weighted(scores, counts, probs)
    for r in range(2):
        np.testing.assert_array_equal(est[r], m.importance_weighted(scores[r], counts[r], probs[r]))
    np.testing.assert_allclose(est[1], [2 / (2 * 0.25) * 3.0, 0.0])


def test_importance_weighted_does_not_overflow():
    """Huge finite scores give finite (saturated) importance weights, no RuntimeWarning."""
    est = m.importance_weighted(np.array([1e308, -1e308]), np.array([2, 0]), np.array([0.5, 0.5]))
    assert np.all(np.isfinite(est))


def test_importance_weighted_zero_count_zero_probability_is_zero():
    """A task never drawn contributes gain 0, even if its probability is exactly 0."""
    est = m.importance_weighted(np.array([1.0, 2.0]), np.array([2, 0]), np.array([1.0, 0.0]))
    np.testing.assert_array_equal(est, [1.0, 0.0])


# ------------------------------------------------------------------------- bad input
K = 3


def fresh(spec: Spec, batch: bool = False):
    mixer = spec(SIZES[:K])
    return mixer, mixer.init(K, seed=[0, 1] if batch else 0)


ALL = params(every=True)


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_update_rejects_non_finite_scores(spec, bad):
    mixer, state = fresh(spec)
    with pytest.raises(ValueError, match="scores"):
        mixer.update(state, np.array([0.5, bad, 0.1]))


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize(
    "scores",
    [np.zeros(K - 1), np.zeros(K + 1), np.float64(1.0), 1.0, np.zeros((K, 1))],
    ids=["too_few", "too_many", "np_scalar", "scalar", "column"],
)
def test_update_rejects_wrong_scores_shape(spec, scores):
    mixer, state = fresh(spec)
    with pytest.raises(ValueError, match="scores"):
        mixer.update(state, scores)


@pytest.mark.parametrize(
    "spec",
    params(),
)
@pytest.mark.parametrize("shape", [(K,), (3, K)], ids=["missing_axis", "wrong_replicates"])
def test_update_rejects_scores_not_matching_replicates(spec, shape):
    mixer, state = fresh(spec, batch=True)  # two replicates
    with pytest.raises(ValueError, match="scores"):
        mixer.update(state, np.zeros(shape))


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize(
    "counts",
    [np.ones(K - 1, int), np.ones((2, K), int), np.int64(1)],
    ids=["too_few", "extra_axis", "scalar"],
)
def test_update_rejects_counts_of_wrong_shape(spec, counts):
    mixer, state = fresh(spec)
    with pytest.raises(ValueError, match="counts"):
        mixer.update(state, np.zeros(K), counts)


@pytest.mark.parametrize("spec", ALL)
def test_update_rejects_negative_counts(spec):
    mixer, state = fresh(spec)
    with pytest.raises(ValueError, match="counts"):
        mixer.update(state, np.zeros(K), np.array([1, -1, 2]))


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize(
    "counts",
    [np.array([1.5, 1.0, 2.0]), np.array([np.nan, 1.0, 1.0]), np.array([True, False, True])],
    ids=["fraction", "nan", "bool"],
)
def test_update_rejects_non_integer_counts(spec, counts):
    mixer, state = fresh(spec)
    with pytest.raises((ValueError, TypeError), match="counts"):
        mixer.update(state, np.zeros(K), counts)


@pytest.mark.parametrize("spec", params(lambda s: s.name in ("group_dro", "ama_s")))
def test_update_rejects_infinite_counts(spec):
    mixer, state = fresh(spec)
    with pytest.raises((ValueError, TypeError), match="counts"):
        mixer.update(state, np.zeros(K), np.array([np.inf, 1.0, 1.0]))


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("num_tasks", [0, -1])
def test_init_rejects_num_tasks_below_one(spec, num_tasks):
    mixer = spec(SIZES[:K])
    with pytest.raises(ValueError, match="num_tasks"):
        mixer.init(num_tasks)


@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("num_tasks", [3.0, "3", True, None], ids=repr)
def test_init_rejects_num_tasks_not_int(spec, num_tasks):
    mixer = spec(SIZES[:K])
    with pytest.raises(TypeError, match="num_tasks"):
        mixer.init(num_tasks)


@pytest.mark.parametrize("spec", ALL)
def test_init_rejects_empty_seed_list(spec):
    mixer = spec(SIZES[:K])
    with pytest.raises(ValueError, match="seed"):
        mixer.init(K, seed=[])


@pytest.mark.parametrize("seed", ["ab", [0.5, 1]], ids=repr)
def test_init_rejects_seeds_that_are_not_ints(seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        m.group_dro(0.1).init(K, seed=seed)


STEP_FACTORIES = {
    "group_dro": lambda eta: m.group_dro(eta),
    "ama_r": lambda eta: m.ama_r(eta),
    "ama_s": lambda eta: m.ama_s(eta, 0.1),
    "exponentiated_gradient": lambda eta: m.exponentiated_gradient(eta),
}


@pytest.mark.parametrize("factory", STEP_FACTORIES.values(), ids=STEP_FACTORIES.keys())
@pytest.mark.parametrize("step_size", [0, 0.0, -1, -1e-300, np.nan, np.inf, -np.inf], ids=repr)
def test_factories_reject_non_positive_or_non_finite_step_size(factory, step_size):
    with pytest.raises(ValueError, match="step_size"):
        factory(step_size)


@pytest.mark.parametrize("factory", STEP_FACTORIES.values(), ids=STEP_FACTORIES.keys())
@pytest.mark.parametrize("step_size", ["0.1", None, True, [0.1]], ids=repr)
def test_factories_reject_step_size_that_is_not_a_number(factory, step_size):
    with pytest.raises(TypeError, match="step_size"):
        factory(step_size)


@pytest.mark.parametrize("smoothing", [0, 0.0, -0.1, 1.5, np.nan, np.inf], ids=repr)
def test_ama_s_rejects_smoothing_outside_zero_one(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        m.ama_s(0.1, smoothing)


@pytest.mark.parametrize("smoothing", [np.float32(0.0), np.float16(0.0)], ids=repr)
def test_ama_s_rejects_numpy_zero_smoothing(smoothing):
    with pytest.raises((ValueError, TypeError), match="smoothing"):
        m.ama_s(0.1, smoothing)


@pytest.mark.parametrize("smoothing", ["0.1", None, True], ids=repr)
def test_ama_s_rejects_smoothing_that_is_not_a_number(smoothing):
    with pytest.raises(TypeError, match="smoothing"):
        m.ama_s(0.1, smoothing)


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, np.nan], ids=repr)
def test_exponentiated_gradient_rejects_smoothing_outside_unit_interval(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        m.exponentiated_gradient(0.1, smoothing=smoothing)


@pytest.mark.parametrize(
    ("sizes", "error"),
    [
        ([], ValueError),
        ([[1, 2], [3, 4]], ValueError),
        ([3, 0, 2], ValueError),
        ([3, -1], ValueError),
        ([1.5, 2.0], TypeError),
        ([1.0, 2.0], TypeError),
        (["a", "b"], TypeError),
    ],
    ids=["empty", "2d", "empty_task", "negative", "fraction", "float", "strings"],
)
def test_uniform_rejects_bad_sizes(sizes, error):
    with pytest.raises(error, match="sizes"):
        m.uniform(sizes)


@pytest.mark.parametrize("num_tasks", [2, 4])
def test_uniform_init_rejects_num_tasks_other_than_len_sizes(num_tasks):
    mixer = m.uniform([1, 2, 3])
    with pytest.raises(ValueError, match="sizes"):
        mixer.init(num_tasks)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: m.uniform([1, 2], score="bogus"),
        lambda: m.stratified(score="bogus"),
        lambda: m.group_dro(0.1, score="bogus"),
        lambda: m.ama_r(0.1, score="bogus"),
        lambda: m.ama_s(0.1, 0.1, score="bogus"),
        lambda: m.exponentiated_gradient(0.1, score="bogus"),
    ],
    ids=["uniform", "stratified", "group_dro", "ama_r", "ama_s", "eg"],
)
def test_factories_reject_unknown_score(factory):
    with pytest.raises(ValueError, match=r"score='bogus'"):
        factory()


@pytest.mark.parametrize(
    "factory",
    [
        lambda: m.uniform([1, 2], apply="bogus"),
        lambda: m.stratified(apply="bogus"),
        lambda: m.exponentiated_gradient(0.1, apply="bogus"),
    ],
    ids=["uniform", "stratified", "eg"],
)
def test_factories_reject_unknown_apply_mode(factory):
    with pytest.raises(ValueError, match=r"apply='bogus'"):
        factory()


def test_wrappers_keep_the_inner_mixers_required_capabilities():
    """averaged and hold_last_scores wrap a mixer without dropping what it needs."""
    inner = m.ama_r(0.5)._replace(requires=("group_validation",))
    assert m.averaged(inner).requires == ("group_validation",)
    assert m.hold_last_scores(inner).requires == ("group_validation",)
