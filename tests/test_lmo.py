"""Tests for :mod:`amasim.lmo`: the LMO family (Skill-It, Aioli, DML)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amasim import lmo, mixers, observe
from amasim.capabilities import MissingCapabilityError
from amasim.problems import make_problem
from amasim.simulator import SimulatedOracle

FEW = settings(max_examples=30, deadline=None)
MODERATE = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


def square(k_min: int = 2, k_max: int = 5):
    return st.integers(k_min, k_max).flatmap(
        lambda k: hnp.arrays(np.float64, (k, k), elements=MODERATE)
    )


def on_simplex(w: np.ndarray) -> bool:
    return bool(np.all(w >= 0) and np.allclose(w.sum(axis=-1), 1.0, atol=1e-12))


class LinearLawOracle:
    """A third-party oracle with only the two round capabilities, obeying the dynamic
    linear law exactly: training ``steps`` on mixture p lowers the losses by steps·A p."""

    def __init__(self, A: np.ndarray, start: float = 5.0) -> None:
        self.A, self.start = np.asarray(A), start
        self.task_names = tuple(f"g{i}" for i in range(len(A)))
        self.calls: list[np.ndarray] = []

    def reset(self, seeds) -> None:
        self.loss = np.full((len(list(seeds)), len(self.A)), self.start)

    def evaluate_groups(self, score: str = "loss") -> np.ndarray:
        return self.loss.copy()

    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8) -> None:
        self.calls.append(np.array(mixture))
        self.loss = self.loss - steps * np.asarray(mixture) @ self.A.T


# ------------------------------------------------------------------------ lmo_step
@FEW
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=MODERATE), st.floats(0.01, 2.0))
def test_lmo_step_diagonal_is_eg_step(excess, eta):
    log_w = np.full(excess.size, -np.log(excess.size))
    got = lmo_out = lmo.lmo_step(log_w, np.diag(excess), eta)
    want = mixers.eg_step(log_w, excess, eta)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)
    assert on_simplex(lmo_out[1])


def test_lmo_step_diagonal_matches_ama_r_update():
    excess = np.array([0.3, 0.0, 1.2])
    mixer = mixers.ama_r(0.5, score="excess")
    state = mixer.init(3, seed=0)
    w, _ = mixer.update(state, excess)
    np.testing.assert_allclose(lmo.lmo_step(state.log_weights, np.diag(excess), 0.5)[1], w)


@FEW
@given(square())
def test_lmo_step_uses_column_sums(A):
    m = A.shape[0]
    log_w = np.full(m, -np.log(m))
    got = lmo.lmo_step(log_w, A, 0.3)[1]
    assert on_simplex(got)
    np.testing.assert_allclose(got, mixers.eg_step(log_w, A.sum(axis=0), 0.3)[1], atol=1e-14)


def test_lmo_step_batched():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3, 3))
    log_w = np.log(np.full((4, 3), 1 / 3))
    got = lmo.lmo_step(log_w, A, 1.0)[1]
    for r in range(4):
        np.testing.assert_allclose(got[r], lmo.lmo_step(log_w[r], A[r], 1.0)[1])


# ------------------------------------------------------------------------ Skill-It
@FEW
@given(hnp.arrays(np.float64, st.integers(1, 5), elements=st.floats(0, 10)))
def test_skill_it_identity_graph_is_eg_on_losses(losses):
    m = losses.size
    mixer = lmo.skill_it(0.7, graph=np.eye(m))
    eg = mixers.group_dro(0.7)
    w1, s1 = mixer.update(mixer.init(m), losses)
    w2, _ = eg.update(eg.init(m), losses)
    np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-15)
    w1b, _ = mixer.update(s1, losses)
    assert on_simplex(w1b)


def test_skill_it_gains_are_graph_times_losses():
    G = np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 0.1], [0.3, 0.0, 1.0]])
    L = np.array([1.0, 2.0, 0.5])
    mixer = lmo.skill_it(0.4, graph=G)
    state = mixer.init(3)
    w, _ = mixer.update(state, L)
    np.testing.assert_allclose(w, mixers.eg_step(state.log_weights, G @ L, 0.4)[1])


def test_skill_it_batched_and_deterministic():
    mixer = lmo.skill_it(0.5, graph=np.eye(2) + 0.1)
    state = mixer.init(2, seed=[0, 1, 2])
    losses = np.array([[1.0, 2.0], [0.5, 0.1], [3.0, 3.0]])
    w, _ = mixer.update(state, losses)
    w2, _ = mixer.update(mixer.init(2, seed=[0, 1, 2]), losses)
    assert w.shape == (3, 2) and on_simplex(w) and np.array_equal(w, w2)


def test_skills_graph_from_runs_hand_example():
    before = np.array([2.0, 3.0, 1.0])
    after = np.array([[1.0, 2.5, 1.0], [2.0, 1.0, 1.5], [1.9, 3.0, 0.2]])
    G = lmo.skills_graph_from_runs(before, after)
    want = np.array([[1.0, 0.5, 0.0], [0.0, 2.0, -0.5], [0.1, 0.0, 0.8]])
    np.testing.assert_allclose(G, want)


def test_skill_it_measures_its_graph_one_group_at_a_time():
    """Under the linear law, a run of n steps on group j alone lowers i by n·A_ij: the
    sweep of Skill-It's signal (one-hot mixtures) gives G = n·Aᵀ to its first update."""
    A = np.array([[0.4, 0.1], [0.0, 0.3]])
    oracle = LinearLawOracle(A)
    mixer = lmo.skill_it(0.5)
    design = mixer.signal.design(2)
    sweep = observe.sweep(oracle, [0, 1], design, steps=3, learning_rate=0.1)
    _, state = mixer.update(mixer.init(2, seed=[0, 1]), sweep)
    assert state.graph.shape == (2, 2, 2)
    np.testing.assert_allclose(state.graph, np.broadcast_to(3 * A.T, (2, 2, 2)))
    assert [c.tolist() for c in oracle.calls] == [[1.0, 0.0], [0.0, 1.0]]
    assert mixer.signal.kind == "validation" and mixer.signal.share == 10


def test_sweep_needs_round_capabilities():
    class NoRounds:
        task_names = ("a", "b")

        def evaluate_groups(self, score="loss"):
            return np.zeros((1, 2))

    with pytest.raises(MissingCapabilityError, match=r"mixture_rounds.*train_on_mixture"):
        observe.sweep(NoRounds(), [0], np.eye(2), steps=1, learning_rate=0.1)


# --------------------------------------------------------------------------- Aioli
def linear_drops(A: np.ndarray, W: np.ndarray, sweeps: int) -> np.ndarray:
    """drops[s, j, i] = Σ_k A_ik W_jk: the linear law, noise free."""
    return np.broadcast_to(W @ A.T, (sweeps, *A.shape)).copy()


@pytest.mark.parametrize("m,epsilon", [(2, 0.75), (3, 0.5), (5, 0.625), (4, 0.9)])
def test_estimate_A_recovers_A_from_linear_drops(m, epsilon):
    A = np.random.default_rng(m).standard_normal((m, m))
    W = lmo.smoothed_one_hot(m, epsilon)
    assert np.allclose(W.sum(axis=1), 1) and np.allclose(np.diag(W), epsilon)
    got = lmo.estimate_A(linear_drops(A, W, 3), epsilon)
    np.testing.assert_allclose(got, A, atol=1e-9)


def test_aioli_with_exact_A_is_greedy_lmo_step():
    m, eps = 3, 0.75
    A = np.array([[0.4, 0.1, 0.0], [0.2, 0.3, -0.1], [0.0, 0.05, 0.6]])
    est = lmo.estimate_A(linear_drops(A, lmo.smoothed_one_hot(m, eps), 2), eps)
    mixer = lmo.aioli(0.8, epsilon=eps)
    state = mixer.init(m, seed=0)
    w, new = mixer.update(state, est)
    np.testing.assert_allclose(w, lmo.lmo_step(state.log_weights, A, 0.8)[1], atol=1e-12)
    assert new.num_updates == 1 and on_simplex(w)


def test_aioli_round_with_linear_oracle_recovers_A():
    """An oracle obeying the dynamic linear law exactly: the round measures A."""
    m = 3
    A = np.array([[0.4, 0.1, 0.0], [0.2, 0.3, 0.1], [0.0, 0.05, 0.6]])
    oracle = LinearLawOracle(A)
    oracle.reset([4])
    mixer = lmo.aioli(1.0, sweeps=3, epsilon=0.6)
    state = mixer.init(m, seed=4)
    w, new, est = observe.aioli_round(mixer, state, oracle, steps=2, learning_rate=0.1)
    np.testing.assert_allclose(est, 2 * A, atol=1e-9)
    np.testing.assert_allclose(w, lmo.lmo_step(state.log_weights, 2 * A, 1.0)[1], atol=1e-12)
    assert len(oracle.calls) == 3 * m  # sweeps × m training segments
    assert new.num_updates == 1


def test_sweep_orders_are_permutations_and_deterministic():
    mixer = lmo.aioli(1.0, sweeps=4)
    state = mixer.init(5, seed=[0, 1])
    orders = lmo.sweep_orders(state)
    assert orders.shape == (2, 4, 5)
    assert np.array_equal(np.sort(orders, axis=-1), np.broadcast_to(np.arange(5), (2, 4, 5)))
    alone = lmo.sweep_orders(mixer.init(5, seed=1))
    assert np.array_equal(alone, orders[1])  # a replicate draws the same alone or batched
    advanced = state._replace(num_updates=1)
    assert not np.array_equal(lmo.sweep_orders(advanced), orders)


@FEW
@given(st.lists(square(3, 3), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_aioli_simplex_and_determinism(As, normalise, use_ema):
    mixer = lmo.aioli(0.5, normalise=normalise, ema=0.3 if use_ema else None)

    def play():
        state, out = mixer.init(3, seed=7), []
        for A in As:
            w, state = mixer.update(state, A)
            out.append(w)
            assert on_simplex(w) and np.array_equal(mixer.weights(state), w)
        return np.array(out)

    assert np.array_equal(play(), play())


def test_aioli_ema_and_normalise():
    A1, A2 = np.diag([2.0, 0.0]), np.diag([0.0, 4.0])
    mixer = lmo.aioli(1.0, ema=0.25, normalise=True)
    _, s = mixer.update(mixer.init(2), A1)
    np.testing.assert_allclose(s.A, np.diag([1.0, 0.0]))
    _, s = mixer.update(s, A2)
    np.testing.assert_allclose(s.A, np.diag([0.75, 0.25]))


def test_aioli_round_on_simulated_oracle():
    """Rounds on the simulator: simplex weights, and the same seeds give the same run."""
    problem = make_problem("quadratic", sizes=(60, 60, 60), dim=4, seed=1)
    oracle = SimulatedOracle(problem)

    def play():
        mixer = lmo.aioli(0.5, sweeps=2, epsilon=0.75)
        state, out = mixer.init(3, seed=[0, 1]), []
        oracle.reset([0, 1])
        for _ in range(3):
            w, state, A = observe.aioli_round(mixer, state, oracle, steps=3, learning_rate=0.05)
            assert w.shape == (2, 3) and A.shape == (2, 3, 3) and on_simplex(w)
            out.append(A)
        assert state.num_updates == 3 and oracle.iterations == 3 * 2 * 3 * 3
        return np.array(out)

    first = play()
    np.testing.assert_array_equal(first, play())


# ----------------------------------------------------------------------------- DML
def test_dml_fit_recovers_parameters_and_optimum_beats_uniform():
    m = 3
    true = lmo.DMLParams(
        c=np.array([1.0, 2.0, 0.5]),
        b=np.array([2.0, 1.0, 3.0]),
        A=np.array([[2.0, 0.5, 0.1], [0.3, 1.5, 0.2], [0.0, 0.4, 2.5]]),
    )
    p = np.random.default_rng(0).dirichlet(np.ones(m), size=30)
    params = lmo.dml_fit(p, lmo.dml_law(true, p))
    canonical = lmo.dml_canonical(true)
    np.testing.assert_allclose(lmo.dml_law(canonical, p), lmo.dml_law(true, p), atol=1e-12)
    for got, want in zip(params, canonical):
        np.testing.assert_allclose(got, want, atol=1e-4)
    best = lmo.dml_optimal_mixture(params)
    assert on_simplex(best)
    uniform = np.full(m, 1 / m)
    assert lmo.dml_law(true, best).sum() < lmo.dml_law(true, uniform).sum() - 1e-6
    for q in p:  # no sampled mixture beats the optimum
        assert lmo.dml_law(true, best).sum() <= lmo.dml_law(true, q).sum() + 1e-9


def test_dml_is_static():
    mixer = lmo.dml([1.0, 3.0])
    state = mixer.init(2, seed=[0, 1])
    w, s = mixer.update(state, np.ones((2, 2)))
    np.testing.assert_allclose(w, [[0.25, 0.75]] * 2)
    assert mixer.name == "dml" and on_simplex(mixer.weights(s))


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda: lmo.lmo_step(np.zeros(3), np.zeros((3, 2)), 1.0), "A"),
        (lambda: lmo.lmo_step(np.zeros(2), np.zeros((3, 3)), 1.0), "weights_log"),
        (lambda: lmo.lmo_step(np.zeros(3), np.zeros((3, 3)), -1.0), "step_size"),
        (lambda: lmo.skill_it(1.0, graph=np.zeros((2, 3))), "graph"),
        (lambda: lmo.skill_it(1.0, graph=np.eye(2)).init(3), "num_tasks"),
        (lambda: lmo.aioli(1.0, sweeps=0), "sweeps"),
        (lambda: lmo.aioli(1.0, epsilon=1.0), "epsilon"),
        (lambda: lmo.aioli(1.0, epsilon=0.0), "epsilon"),
        (lambda: lmo.aioli(1.0, epsilon=0.3).init(3), "epsilon"),
        (lambda: lmo.aioli(1.0, ema=1.5), "ema"),
        (lambda: lmo.aioli(1.0).update(lmo.aioli(1.0).init(3), np.zeros((3, 2))), "scores"),
        (lambda: lmo.aioli(1.0).update(lmo.aioli(1.0).init(3), np.zeros((2, 2))), "scores"),
        (lambda: lmo.estimate_A(np.zeros((2, 3, 3)), 0.2), "epsilon"),
        (lambda: lmo.estimate_A(np.zeros((2, 3, 2)), 0.75), "drops"),
        (lambda: lmo.smoothed_one_hot(3, 1.2), "epsilon"),
        (lambda: lmo.skills_graph_from_runs([1.0, 2.0], np.zeros((2, 3))), "loss_after"),
        (lambda: lmo.dml_fit(np.ones((6, 2)), np.ones((6, 3))), "losses"),
        (lambda: lmo.dml_fit(np.full((2, 2), 0.5), np.ones((2, 2))), "proportions"),
        (lambda: lmo.dml([-1.0, 2.0]), "fixed_weights"),
    ],
)
def test_bad_input_names_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_skill_it_rejects_mismatched_scores():
    mixer = lmo.skill_it(1.0, graph=np.eye(3))
    with pytest.raises(ValueError, match="scores"):
        mixer.update(mixer.init(3, seed=[0, 1]), np.ones(3))


def test_aioli_round_rejects_bad_oracle_shape():
    class WrongShape(LinearLawOracle):
        def evaluate_groups(self, score="loss"):
            return np.zeros(2)

    mixer = lmo.aioli(1.0)
    oracle = WrongShape(np.eye(3))
    oracle.reset([0])
    with pytest.raises(ValueError, match="evaluate_groups"):
        observe.aioli_round(mixer, mixer.init(3), oracle, learning_rate=0.1)


def test_aioli_round_names_the_missing_capability():
    """A plain oracle lacks the round capabilities: the error names one and its method."""
    mixer = lmo.aioli(1.0)
    with pytest.raises(MissingCapabilityError, match=r"'mixture_rounds'.*train_on_mixture"):
        observe.aioli_round(mixer, mixer.init(2), object(), learning_rate=0.1)


def test_skill_it_takes_one_graph_per_replicate():
    """A (R, m, m) graph acts like R single-graph mixers, one per replicate."""
    graphs = np.array([[[1.0, 0.2], [0.0, 0.5]], [[0.3, 0.0], [0.4, 1.0]]])
    losses = np.array([[1.0, 2.0], [0.5, 0.1]])
    batched = lmo.skill_it(0.7, graph=graphs)
    w, _ = batched.update(batched.init(2, seed=[0, 1]), losses)
    for r in range(2):
        alone = lmo.skill_it(0.7, graph=graphs[r])
        np.testing.assert_allclose(w[r], alone.update(alone.init(2), losses[r])[0])
    assert batched.requires == ("group_validation",)  # the driver takes the rounds' steps
    with pytest.raises(ValueError, match="graph"):
        lmo.skill_it(0.7, graph=np.ones((1, 2, 2, 2)))
