"""DoReMi and online data mixing (ODM): their defining invariants, on the mixer contract."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amasim import mixers

finite = st.floats(-1e6, 1e6, allow_nan=False)
score_lists = st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=20)
count_lists = st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(scores=score_lists, counts=count_lists)
def test_weights_stay_on_the_simplex(scores, counts):
    """Any finite scores, any counts: the weights of doremi and odm are a distribution."""
    for mixer in (mixers.doremi(0.5, 0.01), mixers.odm()):
        state = mixer.init(3)
        for s, n in zip(scores, counts):
            w, state = mixer.update(state, np.array(s), np.array(n))
            assert np.all(w >= 0) and np.isfinite(w).all()
            assert abs(w.sum() - 1) < 1e-12


@settings(max_examples=30, deadline=None)
@given(scores=score_lists)
def test_doremi_without_smoothing_is_ama_r(scores):
    """One reference equal to every specialist and c = 0: DoReMi's update is AMA-R's."""
    d, a = mixers.doremi(0.3, 0.0), mixers.ama_r(0.3)
    sd, sa = d.init(3), a.init(3)
    for s in scores:
        wd, sd = d.update(sd, np.array(s))
        wa, sa = a.update(sa, np.array(s))
        np.testing.assert_array_equal(wd, wa)


def test_doremi_keeps_the_last_score_of_an_absent_domain():
    """A domain missing from the batch is scored with its last seen score."""
    mixer = mixers.doremi(1.0, 0.0)
    state = mixer.init(2)
    _, state = mixer.update(state, np.array([1.0, 0.0]), np.array([1, 1]))
    held, state_held = mixer.update(state, np.array([0.0, 0.0]), np.array([0, 1]))
    explicit, _ = mixer.update(state, np.array([1.0, 0.0]), np.array([1, 1]))
    np.testing.assert_array_equal(held, explicit)
    assert state_held.last_scores.tolist() == [1.0, 0.0]


def test_doremi_smoothing_floors_every_weight():
    """α = (1 − c)·α' + c/k keeps every domain at least c/k."""
    mixer = mixers.doremi(5.0, 0.1)
    state = mixer.init(4)
    for _ in range(50):
        w, state = mixer.update(state, np.array([10.0, 0.0, 0.0, 0.0]))
    assert w.min() >= 0.1 / 4 - 1e-15


def test_odm_exploration_decays_and_floors_weights():
    """ODM plays at least ε_t = min(1/k, √(ln k/(k t))) on every domain, and ε_t decays."""
    mixer = mixers.odm()
    state = mixer.init(3)
    floors = []
    for t in range(1, 200):
        w, state = mixer.update(state, np.array([5.0, 0.0, 0.0]), np.array([4, 2, 2]))
        eps = min(1 / 3, np.sqrt(np.log(3) / (3 * (t + 1))))
        assert w.min() >= eps - 1e-15
        floors.append(eps)
    assert floors[-1] < floors[0]


def test_odm_favours_the_domain_with_the_highest_loss():
    """The loss is the reward: a domain with a persistently higher loss gains weight."""
    mixer = mixers.odm(0.5)
    state = mixer.init(3)
    for _ in range(100):
        w, state = mixer.update(state, np.array([2.0, 0.5, 0.5]), None)
    assert w[0] > w[1] and w[0] > w[2]


def test_same_seed_same_run_and_batched_rows_match():
    """Deterministic; a batched state updates each row as a lone state would."""
    rng = np.random.default_rng(0)
    scores = rng.random((10, 2, 3))
    for mixer in (mixers.doremi(0.5, 0.01), mixers.odm()):
        batched = mixer.init(3, seed=[0, 1])
        lone = [mixer.init(3, seed=0), mixer.init(3, seed=1)]
        for s in scores:
            wb, batched = mixer.update(batched, s)
            for r in range(2):
                wr, lone[r] = mixer.update(lone[r], s[r])
                np.testing.assert_array_equal(wb[r], wr)


@pytest.mark.parametrize("bad", [np.array([np.nan, 0, 0]), np.array([0.0, 0.0])])
def test_bad_scores_are_rejected(bad):
    """NaN scores and the wrong number of tasks raise a ValueError naming scores."""
    for mixer in (mixers.doremi(), mixers.odm()):
        with pytest.raises(ValueError, match="scores"):
            mixer.update(mixer.init(3), bad)


def test_bad_settings_are_rejected():
    """Step size <= 0, smoothing outside [0, 1] and an EMA rate outside [0, 1) are errors."""
    with pytest.raises(ValueError, match="step_size"):
        mixers.doremi(0.0)
    with pytest.raises(ValueError, match="smoothing"):
        mixers.doremi(1.0, 1.5)
    with pytest.raises(ValueError, match="smoothing_rate"):
        mixers.odm(1.0)


# -------------------------------------------- transcriptions of the published algorithms
def doremi_transcribed(scores, counts, step_size, smoothing):
    """DoReMi, Xie et al. 2023, Algorithm 1, written out plainly, one domain at a time:
    α_0 uniform; every step λ_i (the last seen score of an absent domain),
    α'_i = α_{t−1,i}·exp(η·λ_i), α_t = (1 − c)·α'/Σα' + c/k.  Returns every α_t."""
    k = len(scores[0])
    alpha, last, out = [1.0 / k] * k, [0.0] * k, []
    for lam, n in zip(scores, counts):
        lam = [lam[i] if n is None or n[i] > 0 else last[i] for i in range(k)]
        last = lam
        top = max(lam)  # a common factor exp(−η·max λ) cancels in the normalisation
        new = [alpha[i] * np.exp(step_size * (lam[i] - top)) for i in range(k)]
        total = sum(new)
        alpha = [(1 - smoothing) * new[i] / total + smoothing / k for i in range(k)]
        out.append(alpha)
    return np.array(out)


def odm_transcribed(losses, counts, beta=0.9):
    """Online data mixing, Albalak et al. 2023, Algorithm 1, written out plainly:
    ε_t = min(1/K, √(ln K/(K t))); π_1 uniform; after step t every sampled domain i sets
    R̂_i ← β R̂_i + (1 − β) L_i / π_t(i) (the others keep R̂_i), and
    π_{t+1}(j) = (1 − K ε_{t+1}) exp(ε_t R̂_j) / Σ_l exp(ε_t R̂_l) + ε_{t+1}."""
    k = len(losses[0])

    def eps(t):
        return min(1 / k, np.sqrt(np.log(k) / (k * t)))

    reward, pi, out = [0.0] * k, [1.0 / k] * k, []
    for t, (loss, n) in enumerate(zip(losses, counts), start=1):
        for i in range(k):
            if n is None or n[i] > 0:
                reward[i] = beta * reward[i] + (1 - beta) * loss[i] / pi[i]
        top = max(eps(t) * r for r in reward)
        e = [np.exp(eps(t) * reward[j] - top) for j in range(k)]
        pi = [(1 - k * eps(t + 1)) * e[j] / sum(e) + eps(t + 1) for j in range(k)]
        out.append(pi)
    return np.array(out)


def _play(mixer, scores, counts):
    state, out = mixer.init(len(scores[0])), []
    for s, n in zip(scores, counts):
        w, state = mixer.update(state, np.array(s), None if n is None else np.array(n))
        out.append(w)
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.lists(st.floats(0, 5), min_size=3, max_size=3), min_size=1, max_size=30),
    counts=st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=30, max_size=30),
    eta=st.floats(0.05, 2.0),
    c=st.floats(0.0, 0.5),
    full=st.booleans(),
)
def test_doremi_equals_its_transcription(scores, counts, eta, c, full):
    counts = [None] * len(scores) if full else counts[: len(scores)]
    got = _play(mixers.doremi(eta, c), scores, counts)
    np.testing.assert_allclose(got, doremi_transcribed(scores, counts, eta, c), rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(st.lists(st.floats(0, 5), min_size=3, max_size=3), min_size=1, max_size=30),
    counts=st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=30, max_size=30),
    beta=st.floats(0.0, 0.95),
    full=st.booleans(),
)
def test_odm_equals_its_transcription(losses, counts, beta, full):
    counts = [None] * len(losses) if full else counts[: len(losses)]
    got = _play(mixers.odm(beta), losses, counts)
    np.testing.assert_allclose(got, odm_transcribed(losses, counts, beta), rtol=1e-9)


def test_doremi_a_domain_that_turns_worst_recovers_within_a_few_steps():
    """After 1,000 steps favouring domain 0, domain 1 becomes the worst: the step
    multiplies the smoothed weights, so it regains half the mass within 10 steps (keeping
    an unsmoothed q and playing smooth(q) left it near c/k = 3e-4)."""
    mixer = mixers.doremi(1.0, 1e-3)
    state = mixer.init(3)
    for _ in range(1000):
        w, state = mixer.update(state, np.array([1.0, 0.0, 0.0]))
    assert w[1] < 1e-3
    for _ in range(10):
        w, state = mixer.update(state, np.array([0.0, 1.0, 0.0]))
    assert w[1] > 0.5


def test_odm_constant_losses_keep_the_weights_bounded():
    """Under constant losses (2, 0.5, 0.5) the smoothed mean reward stays bounded and
    ε_t → 0, so after 10⁴ steps the weights stay near a third (a running sum of rewards
    put 0.988 on domain 0)."""
    mixer = mixers.odm()
    state = mixer.init(3)
    for _ in range(10_000):
        w, state = mixer.update(state, np.array([2.0, 0.5, 0.5]), np.array([1, 1, 1]))
    assert np.all(np.abs(w - 1 / 3) < 0.02)


def doremi_proxy_transcribed(problem, batches, theta_ref, steps, eta, c, lr):
    """The official DoReMi proxy step (Xie et al. 2023, Alg. 1; ``DoReMiTrainer``:
    ``update_domain_weights`` then the ``doremiv1`` loss), written out plainly for least
    squares: the excess over ONE reference model θ_ref trained on the default mixture,
    clipped, averaged per domain; log α ← log α + η·λ, softmax, (1 − c)·α + c/k; then θ
    descends Σ_z L(θ, z)·α_{d(z)} / Σ_z α_{d(z)} (the raw loss: no clipping), projected.
    Returns every α_t and the last θ."""
    k = problem.num_tasks
    theta, alpha, out = np.zeros(problem.dim), np.full(k, 1.0 / k), []
    for index in batches[:steps]:
        x, y, d = problem.features[index], problem.targets[index], problem.task_ids[index]
        loss = 0.5 * (x @ theta - y) ** 2
        reference = 0.5 * (x @ theta_ref - y) ** 2
        excess = np.clip(loss - reference, 0, None)
        lam = np.array([excess[d == i].mean() for i in range(k)])
        log_new = np.log(alpha) + eta * lam
        new = np.exp(log_new - log_new.max())
        alpha = (1 - c) * new / new.sum() + c / k
        out.append(alpha)
        w = alpha[d] / alpha[d].sum()
        grad = (w * (x @ theta - y)) @ x
        theta = theta - lr * grad
        norm = np.linalg.norm(theta)
        if norm > problem.radius:
            theta = theta * problem.radius / norm
    return np.array(out), theta


def test_doremi_proxy_equals_the_official_update_with_a_default_mixture_reference():
    """Through the driver's step on the simulator, ``doremi`` scores the excess over one
    reference trained on the natural mixture (solved here independently: least squares on
    the pooled data) and trains its proxy on the α-weighted loss — the official update,
    step for step; ``doremi-specialists`` does not."""
    from amasim.driver import Mixing
    from amasim.problems import default_reference, make_problem
    from amasim.simulator import SimulatedOracle

    problem = make_problem("quadratic", sizes=(60, 15, 15), dim=3, seed=2, radius=30.0)
    theta_ref = np.linalg.lstsq(problem.features, problem.targets, rcond=None)[0]
    assert np.linalg.norm(theta_ref) < problem.radius  # the ball does not bind
    np.testing.assert_allclose(default_reference(problem).theta, theta_ref, atol=1e-6)
    steps, b, eta, c, lr = 40, 4, 2.0, 0.05, 0.05
    twin = SimulatedOracle(problem)
    twin.reset([3])
    layout = np.repeat(np.arange(3), b)[None]
    batches = [twin.sample(layout).data[0] for _ in range(steps)]
    expected, theta = doremi_proxy_transcribed(problem, batches, theta_ref, steps, eta, c, lr)
    for mixer, same in (
        (mixers.doremi(eta, c), True),
        (mixers.doremi(eta, c, "specialists"), False),
    ):
        oracle = SimulatedOracle(problem)
        oracle.reset([3])
        mixing = Mixing(mixer, oracle, seeds=[3], batch_size=b, apply="reweight", score=mixer.score)
        state, got = mixer.init(3, seed=[3]), []
        for t in range(steps):
            state = mixing.step(state, t, lr).state
            got.append(mixer.weights(state)[0])
        close = np.allclose(got, expected, rtol=1e-6, atol=1e-9)
        assert close == same
        if same:
            np.testing.assert_allclose(oracle.theta[0], theta, rtol=1e-6, atol=1e-9)
