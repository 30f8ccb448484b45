"""Tests for :mod:`amasim.grdpo`: GR-DPO against a plain transcription of its Algorithm 1.

The transcription (:func:`algorithm_1`) is Ramesh et al. (2024), Alg. 1, written pair by
pair in plain Python (lists and ``math``, nothing shared with the implementation).  One
pair a step is the algorithm verbatim; a batch of B pairs averages B single-pair
estimates.  The implementation is driven the way a training loop drives it: per-group
means and counts of the batch (:func:`amasim.scores.task_means`) into ``update``, then
:func:`importance_loss_weights` of the updated weights.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amasim import mixers, prng
from amasim.grdpo import (
    IMPORTANCE,
    GRDPOState,
    gr_dpo,
    importance_loss_weights,
    sampling_distribution,
)
from amasim.problems import make_problem
from amasim.scores import task_means
from amasim.simulator import SimulatedOracle

SETTINGS = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------ the transcription
def algorithm_1(sizes, batches, step_size):
    """Ramesh et al. (2024), Alg. 1, pair by pair.

    ``batches``: one list of (group, DPO loss) pairs per step, drawn from the union.
    Per pair z of group g: α'_g ← α_g·exp(η·N·ℓ(z)/N_g), averaged over the B pairs of
    the step; α ← α'/Σα'; then the θ step weights z by N·α_g/N_g (the updated α), /B.
    Returns the α after every step and every pair's θ-step weight.
    """
    k, n_total = len(sizes), sum(sizes)
    alpha = [1.0 / k] * k
    alphas, weights = [], []
    for batch in batches:
        b = len(batch)
        exponent = [0.0] * k
        for g, loss in batch:
            exponent[g] += step_size * n_total * loss / sizes[g] / b
        unnormalised = [alpha[g] * math.exp(exponent[g]) for g in range(k)]
        total = sum(unnormalised)
        alpha = [a / total for a in unnormalised]
        alphas.append(alpha)
        weights.append([n_total * alpha[g] / sizes[g] / b for g, _ in batch])
    return alphas, weights


def implementation(mixer, sizes, batches):
    """The same steps through ``mixer`` as a training loop drives it: (alphas, weights)."""
    k = len(sizes)
    state = mixer.init(k, seed=0)
    alphas, weights = [], []
    for batch in batches:
        ids = np.array([[g for g, _ in batch]])
        losses = np.array([[loss for _, loss in batch]])
        means, counts = task_means(losses, ids, k)
        alpha, state = mixer.update(state, means[0], counts[0])
        q = np.asarray(sizes) / sum(sizes)
        alphas.append(alpha)
        weights.append(importance_loss_weights(alpha, q, ids[0], len(batch)))
    return np.array(alphas), weights


def draw_batches(sizes, steps, batch_size, seed, max_loss=2.0):
    """Pairs uniform over the union (group g with probability N_g/N), random DPO losses."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    q = np.asarray(sizes) / sum(sizes)
    return [
        [
            (int(g), float(rng.uniform(0.0, max_loss)))
            for g in rng.choice(len(sizes), batch_size, p=q)
        ]
        for _ in range(steps)
    ]


def assert_same_run(got_alphas, got_weights, want_alphas, want_weights):
    np.testing.assert_allclose(got_alphas, np.array(want_alphas), rtol=0, atol=1e-12)
    for got, want in zip(got_weights, want_weights):
        np.testing.assert_allclose(got, np.array(want), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------ (a) against Alg. 1
def test_one_pair_per_step_is_algorithm_1():
    sizes = [60, 30, 10]
    batches = [[(2, 0.9)], [(0, 0.7)], [(0, 0.6)], [(1, 1.3)], [(2, 0.2)], [(0, 0.69)]]
    want = algorithm_1(sizes, batches, step_size=0.1)
    assert_same_run(*implementation(gr_dpo(0.1, sizes=sizes), sizes, batches), *want)
    # the first step by hand: only the drawn group moves, by N/N_g = 10 times its loss
    first = np.array([1.0, 1.0, math.exp(0.1 * 10 * 0.9)])
    np.testing.assert_allclose(want[0][0], first / first.sum(), rtol=1e-15)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=5),
    steps=st.integers(1, 25),
    batch_size=st.integers(1, 6),
    step_size=st.floats(1e-3, 0.2),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_algorithm_1(sizes, steps, batch_size, step_size, seed):
    batches = draw_batches(sizes, steps, batch_size, seed)
    want = algorithm_1(sizes, batches, step_size)
    assert_same_run(*implementation(gr_dpo(step_size, sizes=sizes), sizes, batches), *want)


SKEWED = [90, 9, 1]


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(mixers.group_dro(0.1), id="group_dro"),
        pytest.param(gr_dpo(0.1, sizes=[1, 1, 1]), id="sizes-ignored"),
        pytest.param(mixers.ama_s(0.1, 1e-9, score="loss"), id="importance-weights-alpha"),
    ],
)
def test_the_transcription_rejects_other_updates(wrong):
    """The comparison above has teeth: Group DRO's update (per-group means, no N/N_g),
    GR-DPO with the group sizes ignored, and EXP3 (importance weights 1/α, not 1/q) all
    leave Alg. 1's α trajectory on a skewed union."""
    batches = draw_batches(SKEWED, steps=40, batch_size=4, seed=7)
    want_alphas, _ = algorithm_1(SKEWED, batches, step_size=0.1)
    got_alphas, _ = implementation(wrong, SKEWED, batches)
    assert np.max(np.abs(got_alphas - np.array(want_alphas))) > 0.05
    right, _ = implementation(gr_dpo(0.1, sizes=SKEWED), SKEWED, batches)
    np.testing.assert_allclose(right, np.array(want_alphas), rtol=0, atol=1e-12)


# -------------------------------------------------- (c) where it differs from Group DRO
def test_group_size_normalisation_differs_from_group_dro():
    """Sizes 90/10, B = 10 pairs holding 8 of the majority and 2 of the minority, every
    DPO loss 1: Group DRO's per-group means are equal, so α stays uniform; GR-DPO's gains
    n_g/(B q_g) = 8/9 and 2 move weight to the over-represented minority, and its θ step
    weights a minority pair 1/q = 10 times its α, a majority pair 1/0.9 times."""
    eta, sizes = 0.5, [90, 10]
    scores, counts = np.array([1.0, 1.0]), np.array([8, 2])
    mixer = gr_dpo(eta, sizes=sizes)
    alpha, state = mixer.update(mixer.init(2), scores, counts)
    gains = np.array([8 / 9, 2.0])
    np.testing.assert_allclose(alpha, np.exp(eta * gains) / np.exp(eta * gains).sum(), rtol=1e-14)
    dro = mixers.group_dro(eta)
    dro_alpha, _ = dro.update(dro.init(2), scores, counts)
    np.testing.assert_allclose(dro_alpha, [0.5, 0.5], rtol=1e-15)
    ids = np.array([0] * 8 + [1] * 2)
    w = importance_loss_weights(alpha, sampling_distribution(state), ids, 10)
    np.testing.assert_allclose(w[:8], alpha[0] / (10 * 0.9), rtol=1e-14)
    np.testing.assert_allclose(w[8:], alpha[1] / (10 * 0.1), rtol=1e-14)


@SETTINGS
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    scale=st.integers(1, 20),
    scores=st.lists(st.floats(0.0, 5.0), min_size=5, max_size=5),
    step_size=st.floats(1e-3, 2.0),
)
def test_a_batch_proportional_to_the_sizes_is_group_dros_update(counts, scale, scores, step_size):
    """n_g = B·q_g makes every importance factor n_g/(B q_g) one: then, and in full
    information (counts=None), GR-DPO's α step is Group DRO's."""
    k = len(counts)
    sizes = [scale * c for c in counts]  # q_g = c_g/B with B = Σ c
    s = np.array(scores[:k])
    mixer, dro = gr_dpo(step_size, sizes=sizes), mixers.group_dro(step_size)
    want, _ = dro.update(dro.init(k), s)
    got, _ = mixer.update(mixer.init(k), s, np.array(counts))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    full, _ = mixer.update(mixer.init(k), s)
    np.testing.assert_allclose(full, want, rtol=1e-15, atol=0)


# ----------------------------------------------------------- unbiasedness (exact)
def compositions(total, parts):
    """Every (n_1, …, n_parts) of non-negative ints summing to ``total``."""
    for cuts in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *cuts, total + parts - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


@pytest.mark.parametrize("sizes,batch_size", [([7, 2, 1], 3), ([5, 5], 4), ([30, 3, 2, 1], 2)])
def test_estimates_are_unbiased_for_the_worst_group_game(sizes, batch_size):
    """Over the multinomial draw of a batch from q, exactly: the α step's gain differences
    have mean ℓ_g − ℓ_0 (EG on the true group losses), and the θ weights of group g's
    pairs sum to α_g on average (the gradient of Σ_g α_g ℓ_g)."""
    k, eta = len(sizes), 1e-3
    q = np.asarray(sizes) / sum(sizes)
    losses = np.linspace(0.3, 1.7, k)
    alpha = np.linspace(1.0, 2.0, k) / np.linspace(1.0, 2.0, k).sum()
    mixer = gr_dpo(eta, sizes=sizes)
    start = GRDPOState(np.log(alpha), alpha, q.copy())
    mean_gain, mean_weight = np.zeros(k), np.zeros(k)
    for n in compositions(batch_size, k):
        p = math.factorial(batch_size) * math.prod(
            q[g] ** n[g] / math.factorial(n[g]) for g in range(k)
        )
        _, state = mixer.update(start, np.where(np.array(n) > 0, losses, 0.0), np.array(n))
        step = state.log_weights - start.log_weights
        mean_gain += p * (step - step[0]) / eta
        ids = np.repeat(np.arange(k), n)
        w = importance_loss_weights(alpha, q, ids, batch_size)
        mean_weight += p * np.bincount(ids, w, minlength=k)
    np.testing.assert_allclose(mean_gain, losses - losses[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mean_weight, alpha, rtol=1e-12)


# --------------------------------------------------------------- (b) properties
finite_scores = st.floats(-1e6, 1e6, allow_nan=False)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=6),
    step_size=st.floats(1e-4, 10.0),
    data=st.data(),
)
def test_weights_stay_on_the_simplex(sizes, step_size, data):
    k = len(sizes)
    mixer = gr_dpo(step_size, sizes=sizes)
    state = mixer.init(k)
    for _ in range(data.draw(st.integers(1, 8))):
        scores = np.array(data.draw(st.lists(finite_scores, min_size=k, max_size=k)))
        counts = np.array(data.draw(st.lists(st.integers(0, 5), min_size=k, max_size=k)))
        alpha, state = mixer.update(state, np.where(counts > 0, scores, 0.0), counts)
        assert np.all(np.isfinite(alpha)) and np.all(alpha >= 0)
        assert abs(alpha.sum() - 1.0) < 1e-12
        np.testing.assert_array_equal(mixer.weights(state), alpha)
        np.testing.assert_array_equal(sampling_distribution(state), np.asarray(sizes) / sum(sizes))


@SETTINGS
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    scale=st.integers(1, 50),
    loss=st.floats(0.0, 10.0),
    steps=st.integers(1, 10),
)
def test_equal_losses_from_a_proportional_batch_keep_alpha_uniform(counts, scale, loss, steps):
    """Equal DPO losses and a batch holding each group in proportion to its size give
    every group the same gain: α stays at 1/k, whatever the sizes."""
    k = len(counts)
    mixer = gr_dpo(0.7, sizes=[scale * c for c in counts])
    state = mixer.init(k)
    for _ in range(steps):
        alpha, state = mixer.update(state, np.full(k, loss), np.array(counts))
    np.testing.assert_allclose(alpha, np.full(k, 1.0 / k), rtol=1e-12)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 100), min_size=1, max_size=4),
    replicates=st.integers(1, 4),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_batched_replicates_equal_single_runs(sizes, replicates, steps, seed):
    k = len(sizes)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    scores = rng.uniform(0, 3, (steps, replicates, k))
    counts = rng.integers(0, 4, (steps, replicates, k))
    mixer = gr_dpo(0.3, sizes=sizes)
    batched = mixer.init(k, seed=list(range(replicates)))
    singles = [mixer.init(k, seed=r) for r in range(replicates)]
    for t in range(steps):
        alpha, batched = mixer.update(batched, scores[t], counts[t])
        for r in range(replicates):
            single_alpha, singles[r] = mixer.update(singles[r], scores[t, r], counts[t, r])
            np.testing.assert_array_equal(alpha[r], single_alpha)
    ids = rng.integers(0, k, (replicates, 5))
    w = importance_loss_weights(alpha, sampling_distribution(batched), ids, 5)
    for r in range(replicates):
        single = importance_loss_weights(alpha[r], sampling_distribution(singles[r]), ids[r], 5)
        np.testing.assert_array_equal(w[r], single)


def test_update_is_pure():
    mixer = gr_dpo(0.5, sizes=[3, 1])
    state = mixer.init(2, seed=[0, 1])
    before = [a.copy() for a in state]
    mixer.update(state, np.array([[1.0, 2.0], [0.5, 0.0]]), np.array([[1, 1], [2, 0]]))
    for a, b in zip(state, before):
        np.testing.assert_array_equal(a, b)


def test_mixer_declares_its_loop_defaults():
    mixer = gr_dpo(0.1, sizes=[2, 1])
    assert (mixer.apply, mixer.score, mixer.name, mixer.requires) == (
        IMPORTANCE,
        "loss",
        "gr-dpo",
        (),
    )
    assert gr_dpo(0.1, sizes=[2, 1], score="clipped").score == "clipped"


# --------------------------------------------------------- end to end, importance mode
def grdpo_run(oracle, sizes, steps, batch_size, learning_rate, seeds):
    """GR-DPO as the training loop's ``apply="importance"`` step: draw B pairs from q,
    update α with the batch's means and counts, step θ with the updated α's weights."""
    k = len(sizes)
    mixer = gr_dpo(3.0 / math.sqrt(steps), sizes=sizes)
    oracle.reset(seeds)
    state = mixer.init(k, seed=seeds)
    draws = prng.UniformStream(prng.replicate_keys(seeds, prng.LOOP_STREAM), batch_size)
    for t in range(steps):
        q = sampling_distribution(state)
        ids = prng.categorical(draws(t), q)
        batch = oracle.sample(ids)
        means, counts = task_means(oracle.losses(batch), ids, k)
        alpha, state = mixer.update(state, means, counts)
        oracle.step(batch, importance_loss_weights(alpha, q, ids, batch_size), learning_rate)
    return state


def dpo_run(oracle, sizes, steps, batch_size, learning_rate, seeds):
    """Plain DPO: B pairs uniform over the union, each weighted 1/B."""
    oracle.reset(seeds)
    q = np.broadcast_to(np.asarray(sizes) / sum(sizes), (len(seeds), len(sizes)))
    draws = prng.UniformStream(prng.replicate_keys(seeds, prng.LOOP_STREAM), batch_size)
    for t in range(steps):
        batch = oracle.sample(prng.categorical(draws(t), q))
        oracle.losses(batch)
        oracle.step(batch, np.full((len(seeds), batch_size), 1.0 / batch_size), learning_rate)


def test_lowers_the_worst_group_dpo_loss_on_an_imbalanced_union():
    """Log-linear DPO, groups of 900/90/30 pairs, the same B = 8 pairs a step from the
    same draws: GR-DPO ends with a lower worst-group DPO loss than plain DPO."""
    sizes, seeds = (900, 90, 30), [0, 1, 2, 3]
    oracle = SimulatedOracle(make_problem("loglinear-dpo", sizes=sizes, dim=8, seed=0))
    state = grdpo_run(oracle, sizes, steps=1000, batch_size=8, learning_rate=0.5, seeds=seeds)
    robust = oracle.evaluate("loss", averaged=True).max(axis=1)
    dpo_run(oracle, sizes, steps=1000, batch_size=8, learning_rate=0.5, seeds=seeds)
    plain = oracle.evaluate("loss", averaged=True).max(axis=1)
    assert robust.mean() < plain.mean()
    assert np.all(np.abs(state.weights.sum(axis=-1) - 1) < 1e-12)


# --------------------------------------------------------------- (d) bad input
@pytest.mark.parametrize("step_size", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_step_size(step_size):
    with pytest.raises((ValueError, TypeError), match="step_size"):
        gr_dpo(step_size, sizes=[1, 2])


@pytest.mark.parametrize(
    "sizes,error",
    [
        ([], ValueError),
        ([[1, 2]], ValueError),
        ([1.5, 2.0], TypeError),
        ([True, False], TypeError),
        ([3, 0], ValueError),
        ("12", TypeError),
    ],
)
def test_bad_sizes(sizes, error):
    with pytest.raises(error, match="sizes"):
        gr_dpo(0.1, sizes=sizes)


def test_num_tasks_must_match_sizes():
    with pytest.raises(ValueError, match="one size per group"):
        gr_dpo(0.1, sizes=[5, 5]).init(3)


def test_bad_scores_and_counts():
    mixer = gr_dpo(0.1, sizes=[5, 5])
    state = mixer.init(2)
    with pytest.raises(ValueError, match="scores"):
        mixer.update(state, np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        mixer.update(state, np.array([np.nan, 1.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="counts has shape"):
        mixer.update(state, np.array([1.0, 2.0]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        mixer.update(state, np.array([1.0, 2.0]), np.array([1, -1]))
    with pytest.raises(TypeError, match="whole numbers"):
        mixer.update(state, np.array([1.0, 2.0]), np.array([1.5, 1.0]))


def test_sampling_distribution_needs_a_grdpo_state():
    with pytest.raises(TypeError, match="carries no sampling distribution"):
        sampling_distribution(mixers.group_dro(0.1).init(2))


def test_bad_importance_weight_arguments():
    alpha, q, ids = np.array([0.5, 0.5]), np.array([0.9, 0.1]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 2\)"):
        importance_loss_weights(alpha, q, np.array([0, 2]), 2)
    with pytest.raises(TypeError, match="task_ids must be an integer array"):
        importance_loss_weights(alpha, q, np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="sampling must be finite and > 0"):
        importance_loss_weights(alpha, np.array([1.0, 0.0]), ids, 3)
    with pytest.raises(ValueError, match="one entry per group"):
        importance_loss_weights(alpha, np.array([0.5, 0.3, 0.2]), ids, 3)
    with pytest.raises(ValueError, match="alpha must be finite"):
        importance_loss_weights(np.array([np.nan, 1.0]), q, ids, 3)
    with pytest.raises(ValueError, match="batch_size=0"):
        importance_loss_weights(alpha, q, ids, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        importance_loss_weights(alpha, q, ids, 3.0)
    with pytest.raises(ValueError, match="replicate axes"):
        importance_loss_weights(np.full((2, 2), 0.5), q, np.zeros((3, 4), dtype=int), 4)


def test_the_driver_draws_from_q_and_weights_by_the_updated_alpha():
    """Through amasim.run: batches are drawn from q (∝ sizes), the update gets the counts,
    and each example's loss weight is α_{t+1}/(B q) of its group (Alg. 1 order)."""
    from amasim.driver import run
    from amasim.problems import make_problem
    from amasim.simulator import SimulatedOracle

    sizes = (300, 60, 40)
    seen = []

    class Recording(SimulatedOracle):
        def step(self, batch, loss_weights, learning_rate):
            seen.append((batch.task_ids.copy(), loss_weights.copy()))
            super().step(batch, loss_weights, learning_rate)

    oracle = Recording(make_problem("quadratic", sizes=sizes, dim=3))
    mixer = gr_dpo(0.2, sizes=sizes)
    result = run(mixer, oracle, steps=400, learning_rate=0.05, batch_size=10, seeds=[0, 1])
    q = np.array(sizes) / sum(sizes)
    counts = result.task_examples.sum(axis=0) / result.task_examples.sum()
    np.testing.assert_allclose(counts, q, atol=0.03)  # 8,000 draws from q
    ids, weights = seen[-1]
    alpha_next = result.mixer_state.weights  # α after the last update
    np.testing.assert_allclose(weights, np.take_along_axis(alpha_next / (10 * q), ids, axis=1))
    assert result.apply == "importance" and result.examples.tolist() == [4000, 4000]
