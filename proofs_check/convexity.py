"""Statement 1: the clipped excess loss E_i is convex, its scores lie in [0, B], and the
gradient the training loop steps along is its (sub)gradient.  Derivation:
``derivations/01_convexity.md``.

Measured on each instance, for every task i (worst case over random points):

* ``range``    — every per-example score max(L − ℓ, 0) at points of the ball lies in
  [0, B] (the EXP3 and Hedge steps need rewards in [0, B]); the points include the
  maximiser of the worst example, so the ratio shows how tight B is;
* ``jensen``   — E_i(λa + (1−λ)b) ≤ λE_i(a) + (1−λ)E_i(b) on random pairs and on rays
  leaving the specialist (where a cap or a kink would bite);
* ``subgrad``  — E_i(b) ≥ E_i(a) + ⟨g(a), b − a⟩ with g the gradient the code uses;
* ``fd``       — g(a) matches central finite differences of E_i at points where no
  example is close enough to its kink for the difference quotient to cross it
  (|L − ℓ| ≤ 4hG with h the step).

g(a) is read off :class:`amasim.simulator.SimulatedOracle` itself: one ``step`` with the
score's loss weights, g = (θ − θ′)/η, the exact code path of :func:`amasim.driver.run`.

Broken variants: ``unclipped`` (the excess L − ℓ: scores go negative), ``capped``
(min(max(L − ℓ, 0), τ): not convex), ``wrong_gradient`` (steps along ∇L, forgetting the
indicator 1[L > ℓ]).
"""

from __future__ import annotations

import numpy as np

from amasim.oracle import Batch
from amasim.scores import example_scores
from amasim.simulator import SimulatedOracle
from proofs_check.base import Budget, Measurement
from proofs_check.instances import Instance, adversarial, draw_instances

__all__ = ["VARIANTS", "scores", "task_values", "code_gradient", "check_instance", "run"]

VARIANTS = ("correct", "unclipped", "capped", "wrong_gradient")
_REL = 1e-9  # relative tolerance of exact identities in float64


def scores(variant: str, losses: np.ndarray, reference: np.ndarray, cap: float = np.inf):
    """Per-example score values and d value / d L for ``variant`` (see the module doc)."""
    if variant == "unclipped":
        return example_scores("excess", losses, reference)
    values, dvalues = example_scores("clipped", losses, reference)
    if variant == "capped":
        return np.minimum(values, cap), dvalues * (values < cap)
    if variant == "wrong_gradient":
        return values, np.ones_like(values)
    return values, dvalues


def _cap(inst: Instance) -> float:
    """τ for the ``capped`` variant: half the largest score at θ₀ = 0 (a plausible clip)."""
    values, _ = scores(
        "correct",
        inst.problem.example_losses(np.zeros(inst.problem.dim)),
        inst.problem.reference_losses,
    )
    return 0.5 * float(values.max()) + 1e-3


def task_values(inst: Instance, theta: np.ndarray, variant: str = "correct") -> np.ndarray:
    """E_i(θ) for every task, θ of shape (m, d) → (m, k), under ``variant``'s score."""
    p = inst.problem
    values, _ = scores(variant, p.example_losses(theta), p.reference_losses, _cap(inst))
    return np.add.reduceat(values, p.offsets[:-1], axis=-1) / np.asarray(p.sizes)


def code_gradient(inst: Instance, theta: np.ndarray, task: int, variant: str = "correct"):
    """∇E_task(θ) as the simulator applies it: one oracle step with weights dscore/n."""
    p = inst.problem
    lo, hi = p.offsets[task], p.offsets[task + 1]
    index = np.arange(lo, hi)[None, :]
    oracle = SimulatedOracle(p)
    oracle.reset([0])
    oracle.theta = theta[None, :].astype(float).copy()
    batch = Batch(np.full_like(index, task), p.reference_losses[index], index)
    _, dvalues = scores(variant, oracle.losses(batch), batch.reference_losses, _cap(inst))
    lr = 1e-3 * p.radius / max(inst.G, 1e-12)  # moves θ by ≤ 1e-3·D: stays inside the ball
    oracle.step(batch, dvalues / (hi - lo), lr)
    return (theta - oracle.theta[0]) / lr


def _points(inst: Instance, rng: np.random.Generator, count: int, scale: float) -> np.ndarray:
    d = inst.problem.dim
    u = rng.standard_normal((count, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u * (scale * inst.D * rng.random((count, 1)) ** (1.0 / d))


def _worst_points(inst: Instance) -> np.ndarray:
    """Per example, the point of the ball maximising its loss (−sign(y)·D·x/‖x‖ or the
    logistic analogue): the sup behind B is attained at one of them."""
    x, y = inst.problem.features, inst.problem.targets
    direction = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    sign = -np.sign(y) if inst.problem.loss == "squared" else -np.ones_like(y)
    sign[sign == 0] = 1.0
    return sign[:, None] * direction * inst.D


def check_instance(
    inst: Instance, variant: str = "correct", seed: int = 0, points: int = 64
) -> list[Measurement]:
    """The four measurements of the module doc on one instance (worst over tasks/points)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    p, k = inst.problem, inst.k
    out = []
    # range: per-example scores in [0, B] on the ball (random points + the maximisers)
    ball = np.vstack([_points(inst, rng, points, 1.0), _worst_points(inst)])
    values, _ = scores(variant, p.example_losses(ball), p.reference_losses, _cap(inst))
    out.append(Measurement(f"{inst.label}:range-low", float(-values.min()), 0.0, 0.0))
    out.append(Measurement(f"{inst.label}:range-high", float(values.max()), inst.B, _REL * inst.B))
    # jensen: random pairs (inside and outside the ball) and rays from each specialist
    a, b = _points(inst, rng, points, 1.5), _points(inst, rng, points, 1.5)
    rays = [
        (p.specialists[i], p.specialists[i] + s * u)
        for i in range(k)
        for s in (0.25, 0.5, 1.0, 2.0, 4.0)
        for u in _points(inst, rng, 4, 1.0) / inst.D
    ]
    a = np.vstack([a, [r[0] for r in rays]])
    b = np.vstack([b, [r[1] for r in rays]])
    lam = rng.uniform(0.1, 0.9, size=(len(a), 1))
    lam[points:] = 0.5
    mid = task_values(inst, lam * a + (1 - lam) * b, variant)
    chord = lam * task_values(inst, a, variant) + (1 - lam) * task_values(inst, b, variant)
    j = np.unravel_index(np.argmax(mid - chord), mid.shape)
    out.append(
        Measurement(
            f"{inst.label}:jensen",
            float(mid[j]),
            float(chord[j]),
            _REL * (1 + abs(float(chord[j]))),
        )
    )
    # subgradient inequality and finite differences at random interior points
    worst_sub, worst_fd = None, None
    for theta, other in zip(_points(inst, rng, 12, 0.9), _points(inst, rng, 12, 1.5)):
        losses = p.example_losses(theta)
        h = 1e-7 * inst.D  # a coordinate step of h moves any L by at most h·G
        if np.min(np.abs(losses - p.reference_losses)) <= 4 * h * max(inst.G, 1.0):
            continue  # a kink inside [θ − h, θ + h] would corrupt the difference quotient
        e_theta, e_other = task_values(inst, np.vstack([theta, other]), variant)
        for i in range(k):
            g = code_gradient(inst, theta, i, variant)
            lin = e_theta[i] + g @ (other - theta)
            gap = lin - e_other[i]
            if worst_sub is None or gap > worst_sub[0]:
                worst_sub = (gap, lin, e_other[i])
            eye = np.eye(p.dim) * h
            fd = (
                task_values(inst, theta + eye, variant)[:, i]
                - task_values(inst, theta - eye, variant)[:, i]
            ) / (2 * h)
            err = float(np.linalg.norm(fd - g))
            tol = 1e-5 * (1.0 + float(np.linalg.norm(g)))
            if worst_fd is None or err / tol > worst_fd[0] / worst_fd[1]:
                worst_fd = (err, tol)
    if worst_sub is not None:
        _, lin, val = worst_sub
        out.append(
            Measurement(
                f"{inst.label}:subgrad", float(lin), float(val), _REL * (1 + abs(float(val)))
            )
        )
        out.append(Measurement(f"{inst.label}:fd", worst_fd[0], worst_fd[1]))
    return out


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """Drawn instances of every family plus the adversarial ones."""
    insts = [*draw_instances(budget.instances, seed), adversarial("agree"), adversarial("tug3")]
    return [m for j, inst in enumerate(insts) for m in check_instance(inst, variant, seed + j)]
