"""Convex multi-task problems with finite datasets, trained specialists and cached losses.

Every family predicts linearly, p = x·θ, and scores p with a convex per-example loss:

* ``squared``  — L = ½ (p − y)²                      (multi-task least squares)
* ``logistic`` — L = log(1 + exp(y − p))              (labels folded into x; y an offset)

The log-linear DPO family is the convex twin of the LLM oracle (notes §9): a softmax
policy π_θ(r|x) ∝ exp(θ·φ(x, r)) over a finite response set.  The DPO loss of a pair is
−log σ(β (θ − θ_ref)·(φ_w − φ_l)) because the log-partition cancels, i.e. a logistic loss
with x = β(φ_w − φ_l) and offset y = β θ_ref·(φ_w − φ_l).

θ lives in the ball ‖θ‖ ≤ radius (the bounded domain of the convergence theory).  Each
task's specialist minimises its own mean loss over that ball (scipy SLSQP, analytic
gradients) and its per-example losses ℓ(z) are cached in ``reference_losses``.  DoReMi's
one reference model, trained on the default (natural) mixture, is
:func:`default_reference`, solved on first use.

>>> problem = make_problem("quadratic", sizes=(200, 20, 20), dim=4, seed=0)
>>> problem.num_tasks, problem.dim, problem.sizes
(3, 4, (200, 20, 20))
>>> bool(problem.task_scores(problem.specialists[0])[0] < 1e-6)
True
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from amasim.validate import check_count

__all__ = [
    "ConvexProblem",
    "make_problem",
    "PROBLEMS",
    "quadratic",
    "logistic",
    "loglinear_dpo",
    "loss_and_slope",
    "check_sizes",
    "assemble",
    "check_family",
    "Reference",
    "default_reference",
]

PROBLEMS = ("quadratic", "logistic", "loglinear-dpo")


def loss_and_slope(kind: str, preds: np.ndarray, targets: np.ndarray):
    """Per-example loss and dL/dp for predictions p."""
    if kind == "squared":
        r = preds - targets
        return 0.5 * r * r, r
    z = targets - preds  # logistic: log(1 + e^z), dL/dp = −σ(z)
    loss = np.logaddexp(0.0, z)
    return loss, -np.exp(z - loss)


@dataclass(frozen=True, eq=False)
class ConvexProblem:
    """A k-task convex problem; examples are stored task by task (contiguous)."""

    name: str
    loss: str
    features: np.ndarray  # (n, d)
    targets: np.ndarray  # (n,)
    task_ids: np.ndarray  # (n,)
    radius: float
    task_names: tuple[str, ...]
    specialists: np.ndarray = field(default=None)  # (k, d)
    reference_losses: np.ndarray = field(default=None)  # (n,)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(n) for n in np.bincount(self.task_ids, minlength=self.num_tasks))

    @cached_property
    def smoothness(self) -> float:
        """L: the largest, over tasks, smoothness constant of a task's mean loss — the
        largest eigenvalue of its Hessian bound c·XᵢᵀXᵢ/nᵢ (c = 1 squared, 1/4 logistic).
        Every mixture of the tasks is L-smooth, so gradient steps beyond 2/L overshoot."""
        c = 1.0 if self.loss == "squared" else 0.25
        largest = 0.0
        for lo, hi in zip(self.offsets[:-1], self.offsets[1:]):
            x = self.features[lo:hi]
            largest = max(largest, float(np.linalg.eigvalsh(x.T @ x / (hi - lo))[-1]))
        return c * largest

    @property
    def offsets(self) -> np.ndarray:
        """Index of each task's first example, then n: task i is offsets[i]:offsets[i+1]."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    def example_losses(self, theta: np.ndarray) -> np.ndarray:
        """L(θ, z) for every example; θ of shape (..., d) gives (..., n)."""
        return loss_and_slope(self.loss, theta @ self.features.T, self.targets)[0]

    def task_scores(self, theta: np.ndarray, score: str = "clipped") -> np.ndarray:
        """Per-task mean score over the whole dataset, shape (..., k): E_i(θ) by default."""
        from amasim.scores import example_scores

        values, _ = example_scores(score, self.example_losses(theta), self.reference_losses)
        sums = np.add.reduceat(values, self.offsets[:-1], axis=-1)
        return sums / np.asarray(self.sizes)

    def task_loss_and_grad(self, theta: np.ndarray, task: int) -> tuple[float, np.ndarray]:
        """Mean loss of one task and its gradient (specialist training, checks)."""
        lo, hi = self.offsets[task], self.offsets[task + 1]
        x, y = self.features[lo:hi], self.targets[lo:hi]
        loss, slope = loss_and_slope(self.loss, x @ theta, y)
        return float(loss.mean()), slope @ x / (hi - lo)

    def pooled_loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss over every example (the natural mixture) and its gradient."""
        loss, slope = loss_and_slope(self.loss, self.features @ theta, self.targets)
        return float(loss.mean()), slope @ self.features / len(self.targets)

    def project(self, theta: np.ndarray) -> np.ndarray:
        """Euclidean projection onto ‖θ‖ ≤ radius, batched over leading axes.

        Returns ``theta`` itself (not a copy) when every row already lies in the ball.
        """
        # One dot product settles the usual case: Σ_r ‖θ_r‖² ≤ r²·(1 − 1e-12) puts every row
        # strictly inside whatever the rounding, where the test below also returns θ.
        if np.vdot(theta, theta) <= self.radius**2 * (1.0 - 1e-12):
            return theta
        squares = np.vecdot(theta, theta)[..., None]
        # sqrt is monotone and correctly rounded: the largest norm decides for every row
        if math.sqrt(np.maximum.reduce(squares, axis=None)) <= self.radius:
            return theta  # θ·min(1, r/‖θ‖) would multiply by exactly 1.0
        return theta * np.minimum(1.0, self.radius / np.maximum(np.sqrt(squares), 1e-300))


def _minimise_in_ball(problem: ConvexProblem, loss_and_grad: Any, *args: Any) -> np.ndarray:
    """argmin of ``loss_and_grad(θ, *args) -> (loss, gradient)`` over ‖θ‖ ≤ radius (SLSQP
    from θ₀ = 0, analytic gradients), projected."""
    from scipy.optimize import minimize

    r2 = problem.radius**2
    ball = {"type": "ineq", "fun": lambda t: r2 - t @ t, "jac": lambda t: -2 * t}
    res = minimize(
        loss_and_grad,
        np.zeros(problem.dim),
        args=args,
        jac=True,
        method="SLSQP",
        constraints=[ball],
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    return problem.project(res.x)


class Reference(NamedTuple):
    """A reference model: θ (d,) and its loss on every example (n,)."""

    theta: np.ndarray
    losses: np.ndarray


_DEFAULT_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_reference(problem: ConvexProblem) -> Reference:
    """DoReMi's reference model (Xie et al. 2023): ONE model trained on the default mixture —
    here the natural one, every example alike (task weights ∝ sizes) — solved exactly like
    the specialists, and its loss on every example; computed once per problem.

    >>> problem = make_problem("quadratic", sizes=(40, 10), dim=3)
    >>> ref = default_reference(problem)
    >>> ref.theta.shape, ref.losses.shape
    ((3,), (50,))
    >>> bool(problem.example_losses(ref.theta).mean() <= problem.example_losses(
    ...     problem.specialists[0]).mean())  # the best single model on the pooled data
    True
    """
    if problem not in _DEFAULT_REFERENCES:
        theta = _minimise_in_ball(problem, problem.pooled_loss_and_grad)
        _DEFAULT_REFERENCES[problem] = Reference(theta, problem.example_losses(theta))
    return _DEFAULT_REFERENCES[problem]


def _train_specialists(problem: ConvexProblem) -> ConvexProblem:
    offsets = problem.offsets
    specialists = [
        _minimise_in_ball(problem, problem.task_loss_and_grad, i) for i in range(problem.num_tasks)
    ]
    specialists = np.array(specialists)
    # The same call task_scores makes, so E_i(specialist_i) is exactly 0, not 1e-17.
    reference = np.concatenate(
        [problem.example_losses(s)[lo:hi] for s, lo, hi in zip(specialists, offsets, offsets[1:])]
    )
    return ConvexProblem(
        **{**problem.__dict__, "specialists": specialists, "reference_losses": reference}
    )


def check_sizes(sizes: Sequence[int], num_tasks: int | None) -> tuple[int, ...]:
    """``sizes`` as a tuple of ints >= 1 (one per task when ``num_tasks`` is given)."""
    sizes = tuple(sizes)
    if num_tasks is not None and len(sizes) != num_tasks:
        raise ValueError(
            f"sizes={sizes} has {len(sizes)} entries but num_tasks={num_tasks}: "
            "give one size per task"
        )
    if len(sizes) < 1:
        raise ValueError("sizes is empty: give at least one task size")
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"sizes={sizes}: each size must be an int")
        check_count(n, f"sizes={sizes}")
        if n < 1:
            raise ValueError(f"sizes={sizes}: task sizes must be >= 1 (an empty task)")
    return sizes


def check_family(dim: Any, conflict: Any, noise: Any, radius: Any, seed: Any, **more: Any) -> None:
    """Validate a family's keyword arguments: ``dim`` an int >= 1, ``seed`` an int >= 0,
    ``conflict`` finite >= 0, ``noise``, ``radius`` (and ``beta``) finite > 0."""
    for name, value in (("dim", dim), ("seed", seed)):
        low = 1 if name == "dim" else 0
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}")
    positive = {"noise": noise, "radius": radius, **more}
    for name, value in {"conflict": conflict, **positive}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"{name}={value!r} must be a real number")
        if not np.isfinite(value) or value < 0 or (name != "conflict" and value == 0):
            bound = ">= 0" if name == "conflict" else "> 0"
            raise ValueError(f"{name}={value!r} must be a finite number {bound}")


def _task_optima(rng: np.random.Generator, k: int, dim: int, conflict: float) -> np.ndarray:
    """Unit-scale task optima: a shared direction plus ``conflict`` × a task direction."""
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    own = rng.standard_normal((k, dim))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    return shared + conflict * own


def assemble(name, loss, xs, ys, radius, names) -> ConvexProblem:
    """A :class:`ConvexProblem` from per-task inputs ``xs`` and targets ``ys``, with its
    specialists trained."""
    task_ids = np.concatenate([np.full(len(x), i) for i, x in enumerate(xs)])
    problem = ConvexProblem(
        name=name,
        loss=loss,
        features=np.concatenate(xs),
        targets=np.concatenate(ys),
        task_ids=task_ids,
        radius=float(radius),
        task_names=tuple(names),
    )
    return _train_specialists(problem)


def quadratic(
    sizes: Sequence[int] = (1000, 100, 100),
    *,
    dim: int = 8,
    conflict: float = 1.0,
    noise: float = 0.5,
    radius: float = 3.0,
    seed: int = 0,
) -> ConvexProblem:
    """Multi-task least squares: y = x·θ*_i + noise, x ~ N(0, I)."""
    sizes = check_sizes(sizes, None)
    check_family(dim, conflict, noise, radius, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    optima = _task_optima(rng, len(sizes), dim, conflict)
    xs = [rng.standard_normal((n, dim)) for n in sizes]
    ys = [x @ t + noise * rng.standard_normal(len(x)) for x, t in zip(xs, optima)]
    return assemble("quadratic", "squared", xs, ys, radius, _names(len(sizes)))


def logistic(
    sizes: Sequence[int] = (1000, 100, 100),
    *,
    dim: int = 8,
    conflict: float = 1.0,
    noise: float = 1.0,
    radius: float = 3.0,
    seed: int = 0,
) -> ConvexProblem:
    """Multi-task logistic regression: P(label = +1 | a) = σ(2 a·θ*_i / noise)."""
    sizes = check_sizes(sizes, None)
    check_family(dim, conflict, noise, radius, seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    optima = _task_optima(rng, len(sizes), dim, conflict)
    xs, ys = [], []
    for n, t in zip(sizes, optima):
        a = rng.standard_normal((n, dim))
        p = 1.0 / (1.0 + np.exp(-2.0 * (a @ t) / noise))
        label = np.where(rng.random(n) < p, 1.0, -1.0)
        xs.append(label[:, None] * a)
        ys.append(np.zeros(n))
    return assemble("logistic", "logistic", xs, ys, radius, _names(len(sizes)))


def loglinear_dpo(
    sizes: Sequence[int] = (1000, 100, 100),
    *,
    dim: int = 8,
    conflict: float = 1.0,
    noise: float = 1.0,
    num_responses: int = 4,
    beta: float = 1.0,
    radius: float = 3.0,
    seed: int = 0,
) -> ConvexProblem:
    """DPO on a log-linear policy: pairs ranked by Bradley–Terry on θ*_i·φ (noise = temperature).

    Each prompt has ``num_responses`` responses with features φ ~ N(0, I); two are drawn,
    the winner under task i's reward θ*_i·φ (Bradley–Terry, temperature ``noise``) is
    the chosen one.  The reference policy θ_ref is a small random vector.
    """
    sizes = check_sizes(sizes, None)
    check_family(dim, conflict, noise, radius, seed, beta=beta)
    if isinstance(num_responses, bool) or not isinstance(num_responses, (int, np.integer)):
        raise TypeError(f"num_responses={num_responses!r} must be an int")
    if num_responses < 2:
        raise ValueError(f"num_responses={num_responses} must be >= 2 (a pair per prompt)")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    optima = _task_optima(rng, len(sizes), dim, conflict)
    theta_ref = 0.1 * rng.standard_normal(dim)
    xs, ys = [], []
    for n, t in zip(sizes, optima):
        phi = rng.standard_normal((n, num_responses, dim))
        pair = np.array([rng.choice(num_responses, 2, replace=False) for _ in range(n)])
        a, b = phi[np.arange(n), pair[:, 0]], phi[np.arange(n), pair[:, 1]]
        p_a = 1.0 / (1.0 + np.exp(-((a - b) @ t) / noise))
        a_wins = rng.random(n) < p_a
        delta = np.where(a_wins[:, None], a - b, b - a)  # φ_chosen − φ_rejected
        xs.append(beta * delta)
        ys.append(beta * delta @ theta_ref)
    return assemble("loglinear-dpo", "logistic", xs, ys, radius, _names(len(sizes)))


def _names(k: int) -> list[str]:
    return [f"task{i}" for i in range(k)]


def make_problem(name: str, **kwargs) -> ConvexProblem:
    """Build a problem family by name: one of :data:`PROBLEMS`."""
    builders = {"quadratic": quadratic, "logistic": logistic, "loglinear-dpo": loglinear_dpo}
    if name not in builders:
        raise ValueError(f"problem={name!r} is unknown: use one of {', '.join(PROBLEMS)}")
    return builders[name](**kwargs)
