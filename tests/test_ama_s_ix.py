"""AMA-S-IX (:mod:`amasim.ama_s_ix`): the properties Theorem IX's proof uses, checked on the
code — weights on the simplex, the estimate's exact conditional mean (biased down by
α/(α + γ)), the one-step inequality behind Lemma IX, the bounds of the proof's Hedge step,
and the equivalences (γ = 0 is importance weighting of B − ê; full information is AMA-R's
step; the update is ``eg_step`` on −ℓ̂)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amasim import mixers, registry
from amasim.ama_s_ix import ama_s_ix, ix_losses, ix_steps
from amasim.scores import task_means

FEW = settings(max_examples=40, deadline=None)


@st.composite
def batches(draw, max_k: int = 4, max_b: int = 6):
    """(scores in [0, B], counts summing to b, probs on the simplex, B, γ)."""
    k = draw(st.integers(2, max_k))
    b = draw(st.integers(1, max_b))
    bound = draw(st.floats(0.1, 100.0))
    raw = draw(st.lists(st.floats(1e-6, 1.0), min_size=k, max_size=k))
    probs = np.asarray(raw) / np.sum(raw)
    cuts = sorted(draw(st.lists(st.integers(0, b), min_size=k - 1, max_size=k - 1)))
    counts = np.diff([0, *cuts, b])
    scores = np.asarray(draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))) * bound
    gamma = draw(st.floats(0.0, 1.0))
    return scores, counts, probs, bound, gamma


# ------------------------------------------------------------------ the simplex
@FEW
@given(batches(), st.integers(1, 5))
def test_weights_stay_on_the_simplex(case, rounds):
    scores, counts, _, bound, gamma = case
    mixer = ama_s_ix(0.7, gamma, bound)
    state = mixer.init(len(scores), seed=[0, 1])
    for _ in range(rounds):
        w, state = mixer.update(state, np.tile(scores, (2, 1)), np.tile(counts, (2, 1)))
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(w, mixer.weights(state))


def test_a_worse_task_gains_weight_and_a_met_one_loses_it():
    mixer = ama_s_ix(0.5, 0.01, 1.0)
    state = mixer.init(3)
    for _ in range(20):
        w, state = mixer.update(state, np.array([0.9, 0.5, 0.0]), np.array([3, 3, 2]))
    assert w[0] > w[1] > w[2]


# --------------------------------------------------- the estimate, exactly
def _exact_mean(values, probs, b, bound, gamma, power=None, beta=None):
    """E[ℓ̂] (or E[exp(⟨β, ℓ̂⟩)] with ``beta``) over every ordered batch of b draws: task
    i ~ probs, then an example of task i uniformly (``values[i]`` its per-example scores)."""
    k = len(values)
    items = [(i, v) for i in range(k) for v in values[i]]
    weight = [probs[i] / len(values[i]) for i, _ in items]
    mean = np.zeros(k) if beta is None else 0.0
    for batch in itertools.product(range(len(items)), repeat=b):
        ids = np.array([[items[j][0] for j in batch]])
        vals = np.array([[items[j][1] for j in batch]])
        means, counts = task_means(vals, ids, k)
        est = ix_losses(means[0], counts[0], probs, bound, gamma)
        p = math.prod(weight[j] for j in batch)
        mean = mean + p * (est if beta is None else math.exp(float(beta @ est)))
    return mean


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 3),
    b=st.integers(1, 3),
    gamma=st.floats(0.0, 0.5),
    seed=st.integers(0, 10_000),
)
def test_conditional_mean_is_alpha_over_alpha_plus_gamma_times_the_loss(k, b, gamma, seed):
    """E[ℓ̂_i | past] = α_i (B − E_i)/(α_i + γ), exactly: biased down for γ > 0, unbiased
    at γ = 0 (the proof's step 'E ℓ̂ ≤ ℓ') — also for per-example scores above B, which a
    study's estimated B̂ does not bound (a clipped batch mean would break it)."""
    rng = np.random.default_rng(seed)
    bound = 2.0
    values = [list(rng.random(2) * 1.5 * bound) for _ in range(k)]
    probs = rng.dirichlet(np.ones(k))
    losses = bound - np.array([np.mean(v) for v in values])
    expected = probs * losses / (probs + gamma)
    np.testing.assert_allclose(
        _exact_mean(values, probs, b, bound, gamma), expected, rtol=1e-10, atol=1e-12
    )
    assert np.all(expected <= np.maximum(losses, 0) + 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    gamma=st.floats(0.01, 0.5),
    scale=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_the_one_step_inequality_of_lemma_ix(b, gamma, scale, seed):
    """E[exp(Σ_i β_i ℓ̂_i) | past] ≤ exp(Σ_i β_i ℓ_i) for every β_i ∈ [0, 2γb/B] — the
    supermartingale step of Lemma IX (07_ama_s_ix.md), for a mixed batch of b draws."""
    rng = np.random.default_rng(seed)
    k, bound = 2, 3.0
    values = [list(rng.random(2) * bound) for _ in range(k)]
    probs = rng.dirichlet(np.ones(k))
    beta = scale * rng.random(k) * 2 * gamma * b / bound
    losses = bound - np.array([np.mean(v) for v in values])
    lhs = _exact_mean(values, probs, b, bound, gamma, beta=beta)
    assert lhs <= math.exp(float(beta @ losses)) * (1 + 1e-12)


@FEW
@given(batches())
def test_the_bounds_the_hedge_step_uses(case):
    """0 ≤ ℓ̂_i ≤ n_i B/(b(α_i + γ)) and α_i ℓ̂_i ≤ B: so ⟨α, ℓ̂²⟩ ≤ B Σ_i ℓ̂_i."""
    scores, counts, probs, bound, gamma = case
    est = ix_losses(scores, counts, probs, bound, gamma)
    b = counts.sum()
    assert np.all(est >= 0)
    assert np.all(est <= counts * bound / (b * (probs + gamma)) * (1 + 1e-12))
    assert np.all(probs * est <= bound * (1 + 1e-12))
    assert probs @ est**2 <= bound * est.sum() * (1 + 1e-12) + 1e-300


# -------------------------------------------------------------- equivalences
@FEW
@given(batches())
def test_gamma_zero_is_importance_weighting_of_the_losses(case):
    scores, counts, probs, bound, _ = case
    np.testing.assert_allclose(
        ix_losses(scores, counts, probs, bound, 0.0),
        mixers.importance_weighted(bound - scores, counts, probs),
        rtol=1e-12,
        atol=0,
    )


@FEW
@given(batches())
def test_the_update_is_eg_on_minus_the_estimate(case):
    scores, counts, probs, bound, gamma = case
    mixer = ama_s_ix(0.3, gamma, bound)
    state = mixers.EGState(np.log(probs), probs)
    w, new = mixer.update(state, scores, counts)
    log_w, expected = mixers.eg_step(
        np.log(probs), -ix_losses(scores, counts, probs, bound, gamma), 0.3
    )
    np.testing.assert_array_equal(w, expected)
    np.testing.assert_array_equal(new.log_weights, log_w)


def test_full_information_is_ama_r():
    """counts=None: Hedge on B − ê, the same weights as AMA-R's EG step on ê."""
    rng = np.random.default_rng(0)
    ix, ref = ama_s_ix(0.4, 0.05, 5.0), mixers.ama_r(0.4)
    s_ix, s_ref = ix.init(3, seed=[0, 1]), ref.init(3, seed=[0, 1])
    for _ in range(10):
        scores = rng.random((2, 3)) * 5.0
        w_ix, s_ix = ix.update(s_ix, scores, None)
        w_ref, s_ref = ref.update(s_ref, scores, None)
        np.testing.assert_allclose(w_ix, w_ref, rtol=1e-12, atol=1e-15)


def test_scores_outside_zero_to_b_are_used_as_they_are():
    est = ix_losses(np.array([-1.0, 7.0]), np.array([1, 1]), np.array([0.5, 0.5]), 5.0, 0.0)
    np.testing.assert_array_equal(est, [6.0, -2.0])


def test_an_undrawn_task_of_weight_zero_is_finite_at_gamma_zero():
    w, _ = ama_s_ix(1.0, 0.0, 1.0).update(
        mixers.EGState(np.array([0.0, mixers.LOG_FLOOR]), np.array([1.0, 0.0])),
        np.array([0.5, 0.0]),
        np.array([4, 0]),
    )
    assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-12


# ------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0.0, 0.1, 1.0), ValueError, "step_size"),
        ((0.1, -0.1, 1.0), ValueError, "implicit_exploration"),
        ((0.1, float("nan"), 1.0), ValueError, "implicit_exploration"),
        ((0.1, True, 1.0), TypeError, "implicit_exploration"),
        ((0.1, 0.1, 0.0), ValueError, "bound"),
        ((0.1, 0.1, float("inf")), ValueError, "bound"),
    ],
)
def test_bad_settings_are_refused(args, error, match):
    with pytest.raises(error, match=match):
        ama_s_ix(*args)


def test_bad_scores_and_counts_are_refused():
    mixer = ama_s_ix(0.1, 0.1, 1.0)
    state = mixer.init(2)
    with pytest.raises(ValueError, match="NaN"):
        mixer.update(state, np.array([np.nan, 0.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        mixer.update(state, np.array([0.1, 0.0]), np.array([-1, 1]))


# ------------------------------------------------------------------ registry
def test_registered_with_its_theorems_tuning():
    constants = registry.Constants(bound=2.5, batch_size=8)
    mixer = registry.build("ama-s-ix", steps=1000, sizes=(30, 10, 10), constants=constants)
    eta, gamma = ix_steps(1000, 3, 8, 2.5)
    expected = ama_s_ix(eta, gamma, 2.5)
    state = mixer.init(3)
    args = (np.array([0.4, 2.0, 0.0]), np.array([2, 5, 1]))
    np.testing.assert_array_equal(mixer.update(state, *args)[0], expected.update(state, *args)[0])
    assert (mixer.name, mixer.apply, mixer.score) == ("ama-s-ix", "resample", "clipped")
    assert registry.tuning_of("ama-s-ix").startswith("Theorem IX")


def test_tuning_is_theorem_ix_argmin():
    """ix_steps minimises Theorem IX's α-player terms ln k/η + ηTB²(k/b+1)/2 and
    γkBT + B ln k/(2γb): a step 10% off either way is worse."""
    t, k, b, bound = 5000, 3, 8, 1.7
    eta, gamma = ix_steps(t, k, b, bound)

    def terms(e, g):
        return (
            math.log(k) / e
            + e * t * bound**2 * (k / b + 1) / 2
            + g * k * bound * t
            + bound * math.log(k) / (2 * g * b)
        )

    best = terms(eta, gamma)
    for f in (0.9, 1.1):
        assert terms(eta * f, gamma) > best and terms(eta, gamma * f) > best
