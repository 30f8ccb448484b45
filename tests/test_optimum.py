"""Behaviour of the exact minimax optimum: its certificate, bounds, and that no run beats it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from amasim import mixers
from amasim.driver import run
from amasim.optimum import Optimum, minimax_optimum
from amasim.problems import PROBLEMS, make_problem
from amasim.simulator import SimulatedOracle

SIZES = (60, 20, 20)


@pytest.fixture(scope="module")
def solved():
    """(problem, optimum) for every family at a small size."""
    out = {}
    for name in PROBLEMS:
        problem = make_problem(name, sizes=SIZES, dim=3, seed=0)
        out[name] = (problem, minimax_optimum(problem))
    return out


@pytest.fixture(params=PROBLEMS)
def case(request, solved):
    return solved[request.param]


def _worst(problem, theta) -> np.ndarray:
    """max_i E_i(θ), batched over leading axes of θ."""
    return problem.task_scores(theta).max(axis=-1)


def _points_in_ball(rng, count, dim, radius):
    direction = rng.standard_normal((count, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * radius * rng.uniform(0.0, 1.0, (count, 1))


def _weighted_minimiser(problem, task_weights, iterations=3000):
    """argmin over the ball of Σ_i w_i · mean loss of task i, by projected gradient descent."""
    per_example = (
        np.asarray(task_weights)[problem.task_ids] / np.asarray(problem.sizes)[problem.task_ids]
    )
    x, y = problem.features, problem.targets
    curvature = np.linalg.eigvalsh((x * per_example[:, None]).T @ x).max()
    step = 1.0 / (curvature if problem.loss == "squared" else curvature / 4)
    theta = np.zeros(problem.dim)
    for _ in range(iterations):
        preds = x @ theta
        slope = preds - y if problem.loss == "squared" else -1.0 / (1.0 + np.exp(preds - y))
        theta = problem.project(theta - step * (per_example * slope) @ x)
    return theta


def _subgradient_descent(problem, start, steps=2000, step=0.2):
    """Projected subgradient descent on max_i E_i; returns every iterate (feasible points)."""
    theta, path = start.copy(), []
    for t in range(steps):
        excess = problem.example_losses(theta) - problem.reference_losses
        worst = int(np.argmax(problem.task_scores(theta)))
        mask = (problem.task_ids == worst) & (excess > 0)
        preds = problem.features @ theta
        if problem.loss == "squared":
            slope = preds - problem.targets
        else:
            slope = -1.0 / (1.0 + np.exp(preds - problem.targets))
        grad = (slope * mask) @ problem.features / problem.sizes[worst]
        theta = problem.project(theta - step / np.sqrt(t + 1) * grad)
        path.append(theta)
    return np.array(path)


# ------------------------------------------------------------------ certificate
def test_lower_bound_does_not_exceed_value(case):
    """The dual lower bound g(α̂) is <= the reported value (+1e-7)."""
    _, opt = case
    assert opt.lower <= opt.value + 1e-7


def test_duality_gap_is_small(case):
    """The certificate is tight: |upper − lower| < 1e-6."""
    _, opt = case
    assert abs(opt.duality_gap) < 1e-6


def test_gap_value_and_upper_are_consistent(case):
    """value == upper and duality_gap == upper − lower."""
    _, opt = case
    assert opt.value == opt.upper
    assert opt.duality_gap == pytest.approx(opt.upper - opt.lower, abs=1e-15)


def test_dual_weights_lie_on_the_simplex(case):
    """α̂ has one non-negative entry per task and sums to one."""
    problem, opt = case
    assert opt.dual_weights.shape == (problem.num_tasks,)
    assert np.all(opt.dual_weights >= 0)
    assert opt.dual_weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_dual_weights_sit_on_the_worst_tasks(case):
    """Complementary slackness: a task with α̂_i > 1e-4 attains the max E_i(θ̂)."""
    _, opt = case
    active = opt.dual_weights > 1e-4
    assert active.any()
    np.testing.assert_allclose(opt.task_scores[active], opt.value, atol=1e-6)


def test_task_scores_max_is_the_value(case):
    """max_i task_scores == value."""
    _, opt = case
    assert opt.task_scores.max() == opt.value


def test_task_scores_are_recomputed_by_the_problem(case):
    """Optimum.task_scores equals problem.task_scores(θ̂) (amasim's own numpy code)."""
    problem, opt = case
    np.testing.assert_allclose(opt.task_scores, problem.task_scores(opt.theta), rtol=1e-12)


def test_theta_is_feasible(case):
    """θ̂ has shape (d,) and lies in the ball."""
    problem, opt = case
    assert opt.theta.shape == (problem.dim,)
    assert np.linalg.norm(opt.theta) <= problem.radius + 1e-9


def test_value_is_positive_when_tasks_conflict(case):
    """With conflicting tasks no single θ matches every specialist: OPT > 0."""
    _, opt = case
    assert opt.value > 1e-3


def test_to_dict_is_json_serialisable(case):
    """Optimum.to_dict() survives json.dumps and keeps the value."""
    _, opt = case
    data = json.loads(json.dumps(opt.to_dict()))
    assert data["value"] == opt.value
    assert len(data["theta"]) == len(opt.theta)
    assert "cvxpy" in data["solver"]


def test_optimum_is_a_frozen_dataclass(case):
    """An Optimum cannot be modified after the solve."""
    _, opt = case
    assert isinstance(opt, Optimum)
    with pytest.raises(AttributeError):
        opt.value = 0.0


# --------------------------------------------------------------- upper bounds
def test_value_is_at_most_the_worst_task_of_every_specialist(case):
    """Each specialist is feasible, so OPT <= max_i E_i(specialist_j) for every j."""
    problem, opt = case
    assert np.all(opt.value <= _worst(problem, problem.specialists) + 1e-9)


def test_value_is_at_most_the_worst_task_of_the_stratified_solution(case):
    """OPT <= max_i E_i at the minimiser of the task-averaged (stratified) loss."""
    problem, opt = case
    k = problem.num_tasks
    theta = _weighted_minimiser(problem, np.full(k, 1.0 / k))
    assert opt.value <= _worst(problem, theta) + 1e-9


def test_value_is_at_most_the_worst_task_of_the_pooled_solution(case):
    """OPT <= max_i E_i at the minimiser of the pooled (uniform over examples) loss."""
    problem, opt = case
    sizes = np.asarray(problem.sizes, dtype=float)
    theta = _weighted_minimiser(problem, sizes / sizes.sum())
    assert opt.value <= _worst(problem, theta) + 1e-9


def test_no_random_feasible_point_beats_the_optimum(case):
    """max_i E_i(θ) >= OPT − 1e-9 at 2000 random points of the ball."""
    problem, opt = case
    rng = np.random.default_rng(0)
    points = _points_in_ball(rng, 2000, problem.dim, problem.radius)
    assert _worst(problem, points).min() >= opt.value - 1e-9


def test_optimum_is_locally_optimal(case):
    """Small feasible perturbations of θ̂ never lower max_i E_i (convex ⇒ global optimum)."""
    problem, opt = case
    rng = np.random.default_rng(1)
    for scale in (1e-5, 1e-3, 1e-1):
        moved = problem.project(opt.theta + scale * rng.standard_normal((500, problem.dim)))
        assert _worst(problem, moved).min() >= opt.value - 1e-8


def test_subgradient_descent_approaches_but_never_beats_the_optimum(case):
    """An independent projected subgradient method stays >= OPT and gets within 1e-2."""
    problem, opt = case
    path = _subgradient_descent(problem, np.zeros(problem.dim))
    worst = _worst(problem, path)
    assert worst.min() >= opt.value - 1e-8
    assert worst.min() <= opt.value + 1e-2


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def long_ama_r(solved):
    """A 20000-step AMA-R run (η_θ = 3/√T, η_α = 1) on every family, three seeds each."""
    results = {}
    for name, (problem, opt) in solved.items():
        results[name] = run(
            mixers.ama_r(1.0),
            SimulatedOracle(problem),
            steps=20_000,
            learning_rate=3.0,
            schedule="1/sqrt(T)",
            batch_size=8,
            seeds=[0, 1, 2],
            optimum=opt.value,
        )
    return results


@pytest.mark.parametrize("name", PROBLEMS)
def test_long_ama_r_run_reaches_the_optimum(long_ama_r, name):
    """After 20000 steps the averaged iterate is within 5e-3 of OPT for every seed."""
    assert np.all(long_ama_r[name].gap <= 5e-3)


@pytest.mark.parametrize("name", PROBLEMS)
def test_long_ama_r_run_never_beats_the_optimum(long_ama_r, solved, name):
    """Neither the averaged nor the last iterate goes below OPT − 1e-6."""
    result, (_, opt) = long_ama_r[name], solved[name]
    assert np.all(result.gap >= -1e-6)
    assert np.all(result.last_task_scores.max(axis=1) >= opt.value - 1e-6)


@pytest.mark.parametrize(
    "mixer",
    [mixers.ama_s(1.0, 0.1), mixers.stratified(), mixers.group_dro(1.0)],
    ids=["ama_s", "stratified", "group_dro"],
)
def test_no_mixer_beats_the_optimum(solved, mixer):
    """Short runs of other mixers end with a worst task >= OPT − 1e-6."""
    problem, opt = solved["quadratic"]
    result = run(
        mixer,
        SimulatedOracle(problem),
        steps=1000,
        learning_rate=1.0,
        seeds=[0, 1],
        optimum=opt.value,
    )
    assert np.all(result.gap >= -1e-6)


# ----------------------------------------------------------------- edge cases
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate:UserWarning")
def test_single_task_optimum_is_zero():
    """With one task its specialist attains E = 0, so OPT is 0 (to solver accuracy)."""
    opt = minimax_optimum(make_problem("quadratic", sizes=(30,), dim=3, seed=0))
    assert abs(opt.value) < 1e-7
    np.testing.assert_array_equal(opt.dual_weights, [1.0])


def test_a_smaller_ball_cannot_lower_the_optimum(solved):
    """With the same cached losses, shrinking the ball shrinks the feasible set: OPT grows."""
    problem, wide = solved["logistic"]
    narrow = minimax_optimum(dataclasses.replace(problem, radius=1.0))
    assert np.linalg.norm(narrow.theta) <= 1.0 + 1e-9
    assert narrow.value >= wide.value - 1e-7


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate:UserWarning")
def test_optimum_is_solved_when_a_dual_weight_is_nearly_zero():
    """minimax_optimum certifies an aligned instance whose optimal α̂ has a ~1e-9 entry."""
    problem = make_problem("quadratic", sizes=SIZES, dim=3, seed=0, conflict=0.0)
    opt = minimax_optimum(problem)
    assert abs(opt.duality_gap) < 1e-6
