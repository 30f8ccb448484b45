"""Ground truth: the exact minimax optimum of a convex problem, with its own certificate.

OPT = min_{‖θ‖≤D} max_i E_i(θ),  E_i(θ) = mean_{z∈D_i} max(L(θ,z) − ℓ(z), 0)

is solved as a conic program by cvxpy (Clarabel, else SCS) in epigraph
form — slacks s_z ≥ L(θ,z) − ℓ(z), s_z ≥ 0, mean_{z∈D_i} s_z ≤ τ, minimise τ — which is
independent of every first-order code path in amasim.  The certificate comes from weak
duality: the multipliers α̂ of the k task constraints lie on the simplex, and for any α
on the simplex g(α) = min_θ Σ_i α_i E_i(θ) ≤ OPT.  We report

* ``upper`` = max_i E_i(θ̂), evaluated by amasim's own numpy code at the solver's θ̂;
* ``lower`` = g(α̂), from a second conic solve;
* ``duality_gap`` = upper − lower ≥ OPT's uncertainty (to the solver's tolerance).

>>> from amasim.problems import make_problem
>>> opt = minimax_optimum(make_problem("quadratic", sizes=(60, 20), dim=3))
>>> bool(abs(opt.duality_gap) < 1e-6 and opt.lower <= opt.value + 1e-9)
True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from amasim.problems import ConvexProblem, make_problem

__all__ = ["Optimum", "minimax_optimum", "solved_problem"]


@dataclass(frozen=True)
class Optimum:
    """The minimax optimum and its certificate (see the module docstring)."""

    value: float  # reported optimum (= upper, the value of a feasible θ̂)
    theta: np.ndarray  # θ̂, shape (d,)
    dual_weights: np.ndarray  # α̂ on the simplex, shape (k,)
    upper: float
    lower: float
    duality_gap: float
    task_scores: np.ndarray  # E_i(θ̂), shape (k,)
    solver: str

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "upper": self.upper,
            "lower": self.lower,
            "duality_gap": self.duality_gap,
            "dual_weights": self.dual_weights.tolist(),
            "task_scores": self.task_scores.tolist(),
            "theta": self.theta.tolist(),
            "solver": self.solver,
        }


def _excess_terms(cp, problem: ConvexProblem, theta):
    preds = problem.features @ theta
    if problem.loss == "squared":
        loss = 0.5 * cp.square(preds - problem.targets)
    else:
        loss = cp.logistic(problem.targets - preds)
    return loss - problem.reference_losses


def _task_mean(cp, slack, problem: ConvexProblem, i: int):
    lo, hi = problem.offsets[i], problem.offsets[i + 1]
    return cp.sum(slack[lo:hi]) / (hi - lo)


def _solve(cp, prob) -> str:
    """Interior point first; SCS (first-order, high accuracy) where Clarabel stalls.

    Clarabel stalls on some exponential-cone instances (InsufficientProgress); the
    certificate below measures whichever solver answered.
    """
    attempts = [
        ("CLARABEL", {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9}),
        ("SCS", {"eps": 1e-9, "max_iters": 200_000}),
    ]
    for solver, options in attempts:
        try:
            with warnings.catch_warnings():  # we judge the status ourselves
                warnings.filterwarnings("ignore", "Solution may be inaccurate")
                prob.solve(solver=getattr(cp, solver), **options)
        except cp.error.SolverError:
            continue
        if prob.status == "optimal":
            return solver
    raise RuntimeError(f"no conic solver reached an optimal status (last: {prob.status!r})")


def minimax_optimum(problem: ConvexProblem) -> Optimum:
    """Solve min_θ max_i E_i(θ) over the problem's ball and certify it by duality."""
    import cvxpy as cp

    n, k = len(problem.targets), problem.num_tasks
    theta, slack, tau = cp.Variable(problem.dim), cp.Variable(n, nonneg=True), cp.Variable()
    task_constraints = [_task_mean(cp, slack, problem, i) <= tau for i in range(k)]
    constraints = [
        slack >= _excess_terms(cp, problem, theta),
        cp.norm(theta, 2) <= problem.radius,
        *task_constraints,
    ]
    solver = _solve(cp, cp.Problem(cp.Minimize(tau), constraints))
    theta_hat = problem.project(np.asarray(theta.value, dtype=float))
    alpha = np.maximum(np.array([float(c.dual_value) for c in task_constraints]), 0.0)
    # Multipliers of ~1e-9 are solver noise on inactive tasks and make the second solve
    # badly scaled; any α on the simplex gives a valid lower bound, so zero them.
    alpha = np.where(alpha < 1e-6 * alpha.max(), 0.0, alpha)
    alpha = alpha / alpha.sum()

    # Lower bound g(α̂) = min_θ Σ α̂_i E_i(θ) ≤ OPT (weak duality).
    theta2, slack2 = cp.Variable(problem.dim), cp.Variable(n, nonneg=True)
    objective = sum(alpha[i] * _task_mean(cp, slack2, problem, i) for i in range(k) if alpha[i])
    lower_prob = cp.Problem(
        cp.Minimize(objective),
        [slack2 >= _excess_terms(cp, problem, theta2), cp.norm(theta2, 2) <= problem.radius],
    )
    lower_solver = _solve(cp, lower_prob)
    scores = problem.task_scores(theta_hat)
    upper = float(scores.max())
    lower = float(lower_prob.value)
    return Optimum(
        value=upper,
        theta=theta_hat,
        dual_weights=alpha,
        upper=upper,
        lower=lower,
        duality_gap=upper - lower,
        task_scores=scores,
        solver=f"cvxpy {cp.__version__}: {solver} (optimum), {lower_solver} (lower bound)",
    )


def solved_problem(name: str, **kwargs: Any) -> tuple[ConvexProblem, Optimum]:
    """``make_problem(name, **kwargs)`` and its optimum, memoised per process.

    Studies that share an instance (convergence, claims, figures) solve it once.
    """
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return _solved(name, frozen)


@lru_cache(maxsize=32)
def _solved(name: str, frozen: tuple) -> tuple[ConvexProblem, Optimum]:
    problem = make_problem(name, **dict(frozen))
    return problem, minimax_optimum(problem)
