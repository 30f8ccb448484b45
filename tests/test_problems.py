"""Behaviour of the convex multi-task problems: data, specialists, cached losses, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from amasim.problems import PROBLEMS, loglinear_dpo, make_problem, quadratic

SIZES = (100, 10, 10)  # 10:1:1 imbalance
DIM = 3


def _build(name: str, **kwargs):
    return make_problem(name, **{"sizes": SIZES, "dim": DIM, "seed": 0, **kwargs})


@pytest.fixture(scope="module")
def problems():
    return {name: _build(name) for name in PROBLEMS}


@pytest.fixture(params=PROBLEMS)
def problem(request, problems):
    return problems[request.param]


@pytest.fixture(scope="module")
def small_ball():
    """A quadratic problem whose radius binds, so every specialist sits on the boundary."""
    return _build("quadratic", radius=0.5)


def _points_in_ball(rng, count, dim, radius):
    """Random points strictly inside the ball, at assorted norms."""
    direction = rng.standard_normal((count, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * radius * rng.uniform(0.0, 0.99, (count, 1))


def _mean_task_loss(problem, thetas, task):
    """Independent numpy re-implementation of a task's mean loss at thetas (S, d)."""
    lo, hi = problem.offsets[task], problem.offsets[task + 1]
    preds = thetas @ problem.features[lo:hi].T
    y = problem.targets[lo:hi]
    if problem.loss == "squared":
        return (0.5 * (preds - y) ** 2).mean(-1)
    return np.logaddexp(0.0, y - preds).mean(-1)


def _projected_gradient_descent(problem, task, starts, iterations=3000):
    """Minimise a task's mean loss over the ball from several starts by projected GD."""
    lo, hi = problem.offsets[task], problem.offsets[task + 1]
    x, y = problem.features[lo:hi], problem.targets[lo:hi]
    curvature = np.linalg.eigvalsh(x.T @ x / len(y)).max()
    lipschitz = curvature if problem.loss == "squared" else curvature / 4
    theta = problem.project(starts)
    for _ in range(iterations):
        preds = theta @ x.T
        if problem.loss == "squared":
            slope = preds - y
        else:
            slope = -1.0 / (1.0 + np.exp(preds - y))
        theta = problem.project(theta - (slope @ x / len(y)) / lipschitz)
    return _mean_task_loss(problem, theta, task)


# ------------------------------------------------------------------------ shapes
def test_arrays_have_documented_shapes(problem):
    """features (n, d), targets (n,), task_ids (n,), specialists (k, d), reference (n,)."""
    n, k = sum(SIZES), len(SIZES)
    assert problem.features.shape == (n, DIM)
    assert problem.targets.shape == (n,)
    assert problem.task_ids.shape == (n,)
    assert problem.specialists.shape == (k, DIM)
    assert problem.reference_losses.shape == (n,)
    assert (problem.num_tasks, problem.dim) == (k, DIM)


def test_imbalanced_sizes_are_honoured(problem):
    """A 10:1:1 size request gives exactly those task sizes."""
    assert problem.sizes == SIZES
    assert np.bincount(problem.task_ids).tolist() == list(SIZES)


def test_task_ids_are_contiguous_blocks(problem):
    """Examples are stored task by task: task i occupies offsets[i]:offsets[i+1]."""
    np.testing.assert_array_equal(problem.task_ids, np.repeat(np.arange(len(SIZES)), SIZES))
    np.testing.assert_array_equal(problem.offsets, [0, 100, 110, 120])


def test_task_names_default_to_numbered_tasks(problem):
    """Tasks are named task0, task1, ... in order."""
    assert problem.task_names == ("task0", "task1", "task2")


def test_problem_name_and_loss_match_the_family(problems):
    """Each family records its name and the loss it uses."""
    assert problems["quadratic"].loss == "squared"
    assert problems["logistic"].loss == "logistic"
    assert problems["loglinear-dpo"].loss == "logistic"
    assert [problems[name].name for name in PROBLEMS] == list(PROBLEMS)


def test_numpy_integer_sizes_are_accepted():
    """Sizes given as numpy integers build the same problem as plain ints."""
    a = quadratic(np.array([30, 10]), dim=2)
    b = quadratic((30, 10), dim=2)
    np.testing.assert_array_equal(a.features, b.features)


# ------------------------------------------------------------------- specialists
def test_specialists_lie_in_the_ball(problem):
    """Every specialist has norm <= radius (+1e-9)."""
    assert np.all(np.linalg.norm(problem.specialists, axis=1) <= problem.radius + 1e-9)


def test_specialists_respect_a_binding_radius(small_ball):
    """With a small radius the specialists sit on the sphere, not outside it."""
    norms = np.linalg.norm(small_ball.specialists, axis=1)
    np.testing.assert_allclose(norms, small_ball.radius, atol=1e-7)
    assert np.all(norms <= small_ball.radius + 1e-9)


def _kkt_residual(problem, task):
    theta = problem.specialists[task]
    _, grad = problem.task_loss_and_grad(theta, task)
    if np.linalg.norm(theta) < problem.radius - 1e-6:
        return np.linalg.norm(grad), 0.0
    unit = theta / np.linalg.norm(theta)
    tangential = grad - (grad @ unit) * unit
    return np.linalg.norm(tangential), grad @ unit  # outward radial part must be <= 0


def test_specialists_satisfy_kkt_conditions(problem):
    """Zero gradient inside the ball, or a gradient along −θ on its boundary."""
    for task in range(problem.num_tasks):
        residual, outward = _kkt_residual(problem, task)
        assert residual < 1e-5
        assert outward <= 1e-8


def test_boundary_specialists_satisfy_kkt_conditions(small_ball):
    """On a binding ball the task gradient is anti-parallel to the specialist."""
    for task in range(small_ball.num_tasks):
        residual, outward = _kkt_residual(small_ball, task)
        assert residual < 1e-5
        assert outward < 0


def test_specialists_match_projected_gradient_descent_from_random_starts(problem):
    """No start of an independent projected GD finds a lower task loss than the specialist."""
    rng = np.random.default_rng(1)
    starts = _points_in_ball(rng, 5, problem.dim, problem.radius)
    for task in range(problem.num_tasks):
        specialist = _mean_task_loss(problem, problem.specialists[task][None], task)[0]
        found = _projected_gradient_descent(problem, task, starts)
        assert specialist <= found.min() + 1e-9
        np.testing.assert_allclose(found, specialist, atol=1e-6)


def test_specialist_beats_random_points_of_the_ball(problem):
    """Each specialist's mean task loss is below that of random feasible points."""
    rng = np.random.default_rng(2)
    points = _points_in_ball(rng, 200, problem.dim, problem.radius)
    for task in range(problem.num_tasks):
        specialist = _mean_task_loss(problem, problem.specialists[task][None], task)[0]
        assert specialist <= _mean_task_loss(problem, points, task).min()


# ------------------------------------------------------------- cached losses
def test_reference_losses_are_the_specialists_own_losses(problem):
    """reference_losses[z] == example_losses(specialist of z's task)[z] for every example."""
    for task in range(problem.num_tasks):
        lo, hi = problem.offsets[task], problem.offsets[task + 1]
        own = problem.example_losses(problem.specialists[task])[lo:hi]
        np.testing.assert_allclose(problem.reference_losses[lo:hi], own, rtol=1e-13, atol=1e-15)


def test_clipped_excess_of_a_specialist_on_its_task_is_zero_to_rounding(problem):
    """E_i(specialist_i) vanishes up to floating-point rounding (< 1e-15)."""
    scores = problem.task_scores(problem.specialists)  # (k specialists, k tasks)
    assert np.all(np.abs(np.diag(scores)) < 1e-15)


def test_clipped_excess_of_a_specialist_on_its_task_is_exactly_zero(problems):
    """E_i(specialist_i) == 0 exactly (clipping a loss against itself), for every family."""
    for problem in problems.values():
        for task in range(problem.num_tasks):
            assert problem.task_scores(problem.specialists[task])[task] == 0.0


def test_clipped_excess_is_non_negative_everywhere(problem):
    """E_i(θ) >= 0 at random points, and task_scores batches over leading axes."""
    rng = np.random.default_rng(3)
    thetas = _points_in_ball(rng, 50, problem.dim, problem.radius).reshape(5, 10, problem.dim)
    scores = problem.task_scores(thetas)
    assert scores.shape == (5, 10, problem.num_tasks)
    assert np.all(scores >= 0)


def test_task_scores_are_task_means_of_clipped_excess(problem):
    """task_scores equals an explicit per-task mean of max(L − ℓ, 0)."""
    theta = np.full(problem.dim, 0.3)
    excess = np.maximum(problem.example_losses(theta) - problem.reference_losses, 0.0)
    expected = [excess[problem.task_ids == i].mean() for i in range(problem.num_tasks)]
    np.testing.assert_allclose(problem.task_scores(theta), expected, rtol=1e-12)


def test_task_scores_loss_and_excess_scores_relate(problem):
    """The 'loss' score minus the task mean of ℓ equals the 'excess' score."""
    theta = np.full(problem.dim, -0.2)
    mean_reference = np.bincount(problem.task_ids, problem.reference_losses) / SIZES
    np.testing.assert_allclose(
        problem.task_scores(theta, "loss") - mean_reference,
        problem.task_scores(theta, "excess"),
        atol=1e-12,
    )


# --------------------------------------------------------------- convexity, grads
def test_example_losses_are_convex_along_random_segments(problem):
    """L((a+b)/2, z) <= (L(a, z) + L(b, z))/2 for random a, b and every example."""
    rng = np.random.default_rng(4)
    a = 2 * rng.standard_normal((30, problem.dim))
    b = 2 * rng.standard_normal((30, problem.dim))
    mid = problem.example_losses((a + b) / 2)
    chord = (problem.example_losses(a) + problem.example_losses(b)) / 2
    assert np.all(mid <= chord + 1e-12)


def test_task_gradient_matches_finite_differences(problem):
    """task_loss_and_grad's gradient equals central finite differences of its loss."""
    rng = np.random.default_rng(5)
    h = 1e-6
    for task in range(problem.num_tasks):
        theta = rng.standard_normal(problem.dim)
        _, grad = problem.task_loss_and_grad(theta, task)
        numeric = [
            (
                problem.task_loss_and_grad(theta + h * e, task)[0]
                - problem.task_loss_and_grad(theta - h * e, task)[0]
            )
            / (2 * h)
            for e in np.eye(problem.dim)
        ]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_task_loss_is_the_mean_of_example_losses(problem):
    """task_loss_and_grad's loss is the mean of example_losses over the task."""
    theta = np.linspace(-1, 1, problem.dim)
    losses = problem.example_losses(theta)
    for task in range(problem.num_tasks):
        loss, _ = problem.task_loss_and_grad(theta, task)
        assert loss == pytest.approx(losses[problem.task_ids == task].mean(), rel=1e-12)


def test_example_losses_batch_over_leading_axes(problem):
    """example_losses of θ with shape (a, b, d) has shape (a, b, n), row by row equal."""
    rng = np.random.default_rng(6)
    thetas = rng.standard_normal((2, 4, problem.dim))
    out = problem.example_losses(thetas)
    assert out.shape == (2, 4, sum(SIZES))
    np.testing.assert_allclose(out[1, 2], problem.example_losses(thetas[1, 2]), rtol=1e-12)


# -------------------------------------------------------------------- projection
def test_projection_is_idempotent(problem):
    """Projecting twice equals projecting once."""
    rng = np.random.default_rng(7)
    theta = 5 * rng.standard_normal((20, problem.dim))
    once = problem.project(theta)
    np.testing.assert_allclose(problem.project(once), once, rtol=1e-15)


def test_projection_lands_in_the_ball(problem):
    """Every projected point has norm <= radius (+1e-12)."""
    rng = np.random.default_rng(8)
    theta = 10 * rng.standard_normal((3, 20, problem.dim))
    norms = np.linalg.norm(problem.project(theta), axis=-1)
    assert np.all(norms <= problem.radius * (1 + 1e-12))


def test_projection_leaves_interior_points_unchanged(problem):
    """Points inside the ball (and the origin) are returned as they are."""
    rng = np.random.default_rng(9)
    inside = np.vstack(
        [np.zeros(problem.dim), _points_in_ball(rng, 20, problem.dim, problem.radius)]
    )
    np.testing.assert_array_equal(problem.project(inside), inside)


def test_projection_returns_a_lone_interior_point_itself(problem):
    """One row inside the ball, even a hair inside its boundary, comes back unchanged."""
    rng = np.random.default_rng(11)
    direction = rng.standard_normal((1, problem.dim))
    direction /= np.linalg.norm(direction)
    for scale in (0.5, 1 - 1e-9, 1 - 1e-15):
        theta = problem.radius * scale * direction
        assert problem.project(theta) is theta


def test_projection_of_rows_inside_whose_squares_sum_past_the_ball(problem):
    """Rows that each lie inside, with Σ‖θ_r‖² > r², are unchanged; an outside row among
    them alone moves (the one-dot-product shortcut must not decide for them)."""
    rng = np.random.default_rng(12)
    rows = rng.standard_normal((3, problem.dim))
    rows *= problem.radius * 0.9 / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_array_equal(problem.project(rows), rows)
    rows[1] *= 2.0
    projected = problem.project(rows)
    np.testing.assert_array_equal(projected[[0, 2]], rows[[0, 2]])
    np.testing.assert_allclose(np.linalg.norm(projected[1]), problem.radius, rtol=1e-14)


def test_projection_is_the_nearest_point_of_the_ball(problem):
    """Outside points map to radius·θ/‖θ‖, closer than any random point of the ball."""
    rng = np.random.default_rng(10)
    outside = rng.standard_normal((10, problem.dim))
    outside *= (problem.radius * rng.uniform(1.1, 4.0, (10, 1))) / np.linalg.norm(
        outside, axis=1, keepdims=True
    )
    projected = problem.project(outside)
    expected = problem.radius * outside / np.linalg.norm(outside, axis=1, keepdims=True)
    np.testing.assert_allclose(projected, expected, rtol=1e-14)
    ball = _points_in_ball(rng, 500, problem.dim, problem.radius)
    nearest = np.linalg.norm(outside - projected, axis=1)
    others = np.linalg.norm(outside[:, None] - ball[None], axis=-1).min(axis=1)
    assert np.all(nearest <= others)


# ------------------------------------------------------------------ generation
def test_same_seed_builds_identical_problems(problem):
    """Building the same family with the same seed twice gives bit-identical arrays."""
    again = _build(problem.name)
    for field in ("features", "targets", "task_ids", "specialists", "reference_losses"):
        np.testing.assert_array_equal(getattr(again, field), getattr(problem, field))


def test_different_seed_builds_different_data(problem):
    """A different seed changes the features and the specialists."""
    other = _build(problem.name, seed=1)
    assert not np.array_equal(other.features, problem.features)
    assert not np.allclose(other.specialists, problem.specialists)


def _specialist_spread(problem) -> float:
    s = problem.specialists
    return float(np.mean([np.linalg.norm(s[i] - s[j]) for i in range(len(s)) for j in range(i)]))


@pytest.mark.parametrize("name", PROBLEMS)
def test_conflict_zero_gives_closer_specialists_than_conflict_two(name):
    """Without conflict the task specialists lie closer together than with conflict=2."""
    aligned = _build(name, sizes=(60, 20, 20), conflict=0.0, seed=1)
    conflicting = _build(name, sizes=(60, 20, 20), conflict=2.0, seed=1)
    assert _specialist_spread(aligned) < _specialist_spread(conflicting)


@pytest.mark.parametrize("name", ["quadratic", "logistic"])
def test_conflict_zero_gives_a_smaller_minimax_optimum(name):
    """Without conflict every task can be nearly satisfied at once: OPT is smaller."""
    from amasim.optimum import minimax_optimum

    aligned = minimax_optimum(_build(name, sizes=(60, 20, 20), conflict=0.0, seed=1))
    conflicting = minimax_optimum(_build(name, sizes=(60, 20, 20), conflict=2.0, seed=1))
    assert aligned.value < conflicting.value


def test_noise_changes_the_data(problem):
    """A different noise level (same seed) changes the features or the targets."""
    other = _build(problem.name, noise=0.1)
    assert not (
        np.array_equal(other.features, problem.features)
        and np.array_equal(other.targets, problem.targets)
    )


def test_quadratic_noise_changes_targets_but_not_features(problems):
    """For least squares, noise perturbs y only; x is drawn the same way."""
    other = _build("quadratic", noise=0.1)
    np.testing.assert_array_equal(other.features, problems["quadratic"].features)
    assert not np.allclose(other.targets, problems["quadratic"].targets)


def test_make_problem_forwards_to_the_family_builder():
    """make_problem('quadratic', ...) equals quadratic(...) with the same arguments."""
    a = make_problem("quadratic", sizes=(20, 10), dim=2, seed=3)
    b = quadratic((20, 10), dim=2, seed=3)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.reference_losses, b.reference_losses)


# ----------------------------------------------------------------- loglinear DPO
def _reference_policy(problem) -> np.ndarray:
    """θ_ref recovered from the data: targets = features · θ_ref for every pair."""
    theta_ref, *_ = np.linalg.lstsq(problem.features, problem.targets, rcond=None)
    return theta_ref


def test_dpo_targets_come_from_one_reference_policy(problems):
    """targets = β Δφ·θ_ref = features·θ_ref for a single θ_ref (residual ~ 0)."""
    problem = problems["loglinear-dpo"]
    theta_ref = _reference_policy(problem)
    np.testing.assert_allclose(problem.features @ theta_ref, problem.targets, atol=1e-12)


def test_dpo_loss_is_log_two_where_policy_equals_reference_on_a_pair(problems):
    """At a θ with x_j·θ = y_j (implicit reward margin 0) the loss of pair j is log 2."""
    problem = problems["loglinear-dpo"]
    j = 7
    x, y = problem.features[j], problem.targets[j]
    theta = x * y / (x @ x)
    assert problem.example_losses(theta)[j] == pytest.approx(np.log(2.0), rel=1e-12)


def test_dpo_loss_is_log_two_for_every_pair_at_the_reference_policy(problems):
    """At θ = θ_ref every pair's DPO loss is exactly log 2 (policy = reference)."""
    problem = problems["loglinear-dpo"]
    losses = problem.example_losses(_reference_policy(problem))
    np.testing.assert_allclose(losses, np.log(2.0), rtol=1e-10)


def test_dpo_loss_is_negative_log_sigmoid_of_scaled_margin():
    """L(θ, z) = −log σ(β (θ − θ_ref)·Δφ) for β = 2, with Δφ and θ_ref from the β = 1 twin."""
    base = loglinear_dpo(SIZES, dim=DIM, beta=1.0)
    scaled = loglinear_dpo(SIZES, dim=DIM, beta=2.0)
    delta_phi, theta_ref = base.features, _reference_policy(base)
    rng = np.random.default_rng(11)
    theta = rng.standard_normal(DIM)
    margin = 2.0 * (delta_phi @ (theta - theta_ref))
    expected = -np.log(1.0 / (1.0 + np.exp(-margin)))
    np.testing.assert_allclose(scaled.example_losses(theta), expected, rtol=1e-10)


def test_dpo_beta_scales_features_and_targets():
    """β multiplies both Δφ (features) and the reference offset (targets)."""
    base = loglinear_dpo((30, 10), dim=DIM, beta=1.0)
    scaled = loglinear_dpo((30, 10), dim=DIM, beta=3.0)
    np.testing.assert_allclose(scaled.features, 3.0 * base.features, rtol=1e-15)
    np.testing.assert_allclose(scaled.targets, 3.0 * base.targets, rtol=1e-12)


def test_dpo_chosen_response_usually_wins_under_the_specialist(problems):
    """Each DPO specialist ranks the chosen response above the rejected one for most pairs."""
    problem = problems["loglinear-dpo"]
    for task in range(problem.num_tasks):
        lo, hi = problem.offsets[task], problem.offsets[task + 1]
        margin = problem.features[lo:hi] @ problem.specialists[task] - problem.targets[lo:hi]
        assert np.mean(margin > 0) > 0.5


def test_dpo_num_responses_changes_the_data():
    """More responses per prompt give different pairs."""
    a = loglinear_dpo((30, 10), dim=DIM, num_responses=2)
    b = loglinear_dpo((30, 10), dim=DIM, num_responses=6)
    assert not np.array_equal(a.features, b.features)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", PROBLEMS)
def test_zero_task_size_raises_value_error_naming_sizes(name):
    """A task of size 0 raises ValueError naming sizes."""
    with pytest.raises(ValueError, match="sizes"):
        make_problem(name, sizes=(10, 0, 5), dim=2)


@pytest.mark.parametrize("sizes", [(10.0, 5), ("10", 5), (True, 5), (10, None)])
def test_non_integer_sizes_raise_type_error_naming_sizes(sizes):
    """Float, string, bool or None sizes raise TypeError naming sizes."""
    with pytest.raises(TypeError, match="sizes"):
        make_problem("quadratic", sizes=sizes, dim=2)


@pytest.mark.parametrize("name", PROBLEMS)
def test_empty_sizes_raise_value_error_naming_sizes(name):
    """An empty sizes sequence raises ValueError naming sizes."""
    with pytest.raises(ValueError, match="sizes"):
        make_problem(name, sizes=(), dim=2)


def test_negative_task_size_raises_value_error_naming_sizes():
    """A negative task size raises ValueError naming sizes."""
    with pytest.raises(ValueError, match="sizes"):
        make_problem("logistic", sizes=(10, -3), dim=2)


def test_unknown_problem_name_raises_value_error_naming_problem():
    """An unknown family name raises ValueError naming problem and listing the families."""
    with pytest.raises(ValueError, match=r"problem='cubic' is unknown.*quadratic"):
        make_problem("cubic", sizes=(10, 10))


@pytest.mark.parametrize("num_responses", [1, 0, -2])
def test_too_few_responses_raise_value_error_naming_num_responses(num_responses):
    """num_responses < 2 raises ValueError naming num_responses."""
    with pytest.raises(ValueError, match="num_responses"):
        make_problem("loglinear-dpo", sizes=(10, 10), dim=2, num_responses=num_responses)
