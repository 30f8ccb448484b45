"""Concrete instances the checks run on, and the constants the theorems need.

Two sources (derivations/00_setup.md):

* **drawn** instances of the core's convex families (:data:`amasim.problems.PROBLEMS`),
  parameters drawn from :data:`PARAM_RANGES`.  The report draws them with a seeded
  ``numpy.random.SeedSequence`` (reproducible, no Hypothesis database); the test suite
  draws them from the same ranges with the Hypothesis strategy :func:`params_strategy`.
* **adversarial** instances built by hand (:func:`adversarial`) whose constants B, G, D
  are O(1), so that the bounds are tight enough for a broken implementation to cross them.

Every instance carries the quantities the theorems are stated in:

* D — the radius of the parameter ball (θ₀ = 0 is its centre);
* B — an upper bound on every per-example clipped excess loss max(L(θ,z) − ℓ(z), 0) over
  the ball, so every batch score ê_i lies in [0, B];
* G — an upper bound on every per-example (sub)gradient norm of that score over the ball;
* OPT — the exact min_θ max_i E_i(θ) (:func:`amasim.optimum.minimax_optimum`); we use its
  certified *lower* end, so a measured gap max_i E_i(θ̄) − OPT is never under-stated.

>>> inst = adversarial("agree")
>>> (inst.k, inst.D, inst.B, inst.G)
(2, 1.0, 4.0, 3.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from amasim.problems import PROBLEMS, ConvexProblem, make_problem

__all__ = [
    "PARAM_RANGES",
    "Params",
    "Instance",
    "constants",
    "build",
    "draw_params",
    "draw_instances",
    "params_strategy",
    "adversarial",
    "ADVERSARIAL",
]

#: Ranges the drawn instances come from (report and Hypothesis strategies alike).
PARAM_RANGES: dict[str, Any] = {
    "family": PROBLEMS,
    "num_tasks": (2, 3),  # inclusive
    "large_size": (120, 400),  # the first task: imbalanced like the paper's setting
    "small_size": (20, 60),
    "dim": (2, 6),
    "conflict": (0.3, 1.5),
    "seed": (0, 2**20),
}


@dataclass(frozen=True)
class Params:
    """Parameters of one drawn instance (arguments of :func:`amasim.problems.make_problem`)."""

    family: str
    sizes: tuple[int, ...]
    dim: int
    conflict: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.family}{list(self.sizes)}d{self.dim}c{self.conflict:.2f}s{self.seed}"


@dataclass(frozen=True, eq=False)
class Instance:
    """A problem with its exact optimum and its theorem constants (see the module doc)."""

    label: str
    problem: ConvexProblem
    opt: float  # certified lower end of OPT
    theta_star: np.ndarray | None
    alpha_star: np.ndarray | None
    B: float
    G: float

    @property
    def D(self) -> float:
        return float(self.problem.radius)

    @property
    def k(self) -> int:
        return self.problem.num_tasks


def constants(problem: ConvexProblem) -> tuple[float, float]:
    """(B, G): sup over the ball of the per-example clipped excess loss and gradient norm.

    For p = x·θ with ‖θ‖ ≤ D we have |p| ≤ ‖x‖D, hence
    squared  L = ½(p − y)²:  L ≤ ½(‖x‖D + |y|)²,     |dL/dp| = |p − y| ≤ ‖x‖D + |y|;
    logistic L = log(1+e^{y−p}): L ≤ log(1 + e^{y+‖x‖D}), |dL/dp| = σ(y − p) ≤ σ(y + ‖x‖D).
    The clipped excess max(L − ℓ, 0) is at most max(L_max − ℓ, 0) and its gradient is
    1[L > ℓ]·(dL/dp)·x.  Both sups are attained up to the choice of example, so the
    constants are as small as worst-case constants can be.
    """
    x_norm = np.linalg.norm(problem.features, axis=1)
    y, d = problem.targets, problem.radius
    if problem.loss == "squared":
        reach = x_norm * d + np.abs(y)
        loss_max, slope_max = 0.5 * reach**2, reach
    else:
        loss_max = np.logaddexp(0.0, y + x_norm * d)
        slope_max = 1.0 / (1.0 + np.exp(-(y + x_norm * d)))
    b = float(np.max(np.maximum(loss_max - problem.reference_losses, 0.0)))
    g = float(np.max(x_norm * slope_max))
    return b, g


def _with_optimum(label: str, problem: ConvexProblem, solve: bool = True) -> Instance:
    b, g = constants(problem)
    if not solve:  # for checks that never look at the optimum
        return Instance(label, problem, math.nan, None, None, b, g)
    from amasim.optimum import minimax_optimum

    opt = minimax_optimum(problem)
    return Instance(
        label=label,
        problem=problem,
        opt=float(min(opt.lower, opt.value)),
        theta_star=opt.theta,
        alpha_star=opt.dual_weights,
        B=b,
        G=g,
    )


@lru_cache(maxsize=64)
def build(params: Params, solve: bool = True) -> Instance:
    """The instance of ``params`` with its optimum (memoised; raises ``RuntimeError`` if
    the conic solver cannot certify it).  ``solve=False`` skips the optimum (opt = nan)."""
    problem = make_problem(
        params.family,
        sizes=params.sizes,
        dim=params.dim,
        conflict=params.conflict,
        seed=params.seed,
    )
    return _with_optimum(params.label, problem, solve)


def draw_params(rng: np.random.Generator, family: str | None = None) -> Params:
    """One parameter set drawn uniformly from :data:`PARAM_RANGES`."""
    r = PARAM_RANGES
    fam = family if family is not None else str(rng.choice(r["family"]))
    k = int(rng.integers(r["num_tasks"][0], r["num_tasks"][1] + 1))
    large = int(rng.integers(r["large_size"][0], r["large_size"][1] + 1))
    small = rng.integers(r["small_size"][0], r["small_size"][1] + 1, size=k - 1)
    sizes = (large, *(int(v) for v in small))
    return Params(
        family=fam,
        sizes=sizes,
        dim=int(rng.integers(r["dim"][0], r["dim"][1] + 1)),
        conflict=round(float(rng.uniform(*r["conflict"])), 2),
        seed=int(rng.integers(*r["seed"])),
    )


def draw_instances(count: int, seed: int, families: tuple[str, ...] = PROBLEMS) -> list[Instance]:
    """``count`` instances cycling over ``families``; an instance whose optimum the conic
    solver cannot certify is replaced by the next draw (recorded nowhere: it is not a
    failure of the theory, only of the ground truth)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E37]))
    out: list[Instance] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 4 * count + 8:
            raise RuntimeError("could not draw instances with a certified optimum")
        params = draw_params(rng, families[len(out) % len(families)])
        try:
            out.append(build(params))
        except RuntimeError:
            continue
    return out


def params_strategy(families: tuple[str, ...] = PROBLEMS):
    """Hypothesis strategy over the same :data:`PARAM_RANGES` (for the test suite)."""
    from hypothesis import strategies as st

    r = PARAM_RANGES

    @st.composite
    def strategy(draw) -> Params:
        k = draw(st.integers(*r["num_tasks"]))
        large = draw(st.integers(*r["large_size"]))
        small = draw(st.lists(st.integers(*r["small_size"]), min_size=k - 1, max_size=k - 1))
        return Params(
            family=draw(st.sampled_from(families)),
            sizes=(large, *small),
            dim=draw(st.integers(*r["dim"])),
            conflict=round(draw(st.floats(*r["conflict"])), 2),
            seed=draw(st.integers(r["seed"][0], r["seed"][1] - 1)),
        )

    return strategy()


# ------------------------------------------------------------------ adversarial
#: name -> (targets per task, description); every example is x = 1, d = 1, D = 1.
ADVERSARIAL: dict[str, tuple[tuple[float, ...], str]] = {
    "agree": (
        (2.0, 1.5),
        "two tasks that both want θ on the boundary (θ* = 1, OPT = 0, far from θ₀ = 0): "
        "a θ-player that does not move is caught",
    ),
    "tug3": (
        (1.0, 1.0, -0.5),
        "two tasks pull to +1, one to −0.5 (θ* = 0.25, α*₃ = ½): a mixer that does not "
        "move α from uniform is caught",
    ),
    "satisfied4": (
        (1.0, -1.0, 0.0, 0.0),
        "two tasks pull to ±1, two are met at θ* = 0 (OPT = ½, α* = (½, ½, 0, 0)): the "
        "met tasks' weights decay, so a bandit estimate of their loss is rarely refreshed",
    ),
}


def _specialist_problem(name: str, targets: tuple[float, ...], copies: int) -> ConvexProblem:
    """Squared loss, d = 1, radius 1, ``copies`` identical examples (x = 1, y) per task.

    The specialist of task i is the projection of y_i onto [−1, 1] and ℓ(z) its loss:
    the closed form of what :mod:`amasim.problems` computes numerically.
    """
    k = len(targets)
    y = np.repeat(np.asarray(targets, dtype=float), copies)
    specialists = np.clip(np.asarray(targets, dtype=float), -1.0, 1.0)[:, None]
    task_ids = np.repeat(np.arange(k), copies)
    reference = 0.5 * (specialists[task_ids, 0] - y) ** 2
    return ConvexProblem(
        name=f"adversarial-{name}",
        loss="squared",
        features=np.ones((k * copies, 1)),
        targets=y,
        task_ids=task_ids,
        radius=1.0,
        task_names=tuple(f"task{i}" for i in range(k)),
        specialists=specialists,
        reference_losses=reference,
    )


@lru_cache(maxsize=8)
def adversarial(name: str, copies: int = 4) -> Instance:
    """The hand-built instance ``name`` (see :data:`ADVERSARIAL`)."""
    if name not in ADVERSARIAL:
        raise ValueError(f"adversarial instance {name!r} is unknown: use {', '.join(ADVERSARIAL)}")
    return _with_optimum(
        f"adversarial-{name}", _specialist_problem(name, ADVERSARIAL[name][0], copies)
    )
