"""Statement 4: online-to-batch.  For any iterates θ_1..θ_T in the ball and weights
α_1..α_T on the simplex, with θ̄ the code's average and ᾱ = mean α_t,

  gap(θ̄, ᾱ) := max_i E_i(θ̄) − min_θ Σ_i ᾱ_i E_i(θ) ≤ (Reg_θ + Reg_α)/T,
  Reg_α = max_i Σ_t E_i(θ_t) − Σ_t ⟨α_t, E(θ_t)⟩,
  Reg_θ = Σ_t ⟨α_t, E(θ_t)⟩ − min_θ Σ_t ⟨α_t, E(θ)⟩,

and max_i E_i(θ̄) − OPT ≤ gap(θ̄, ᾱ).  Derivation: ``derivations/04_online_to_batch.md``.

Both regrets are measured in the same run, with exact E_i (full data) at every recorded
iterate and the best response min_θ Σ ᾱ_i E_i(θ) solved by cvxpy.  Sources:

* runs of :func:`amasim.driver.run` (AMA-R and AMA-S as :class:`amasim.studies.Tuning` tunes them),
  through an oracle that records θ after every step;
* adversarial sequences (random points; the worst point last; a two-point alternation
  found by search to make Jensen's step tight) pushed through the simulator's own
  averaging (``step`` with zero weights accumulates θ exactly as training does).

Broken variants: ``last_iterate`` (θ̄ replaced by the last θ), ``nonconvex`` (E_i replaced
by the capped score of :mod:`proofs_check.convexity`, which is not convex).
"""

from __future__ import annotations

import numpy as np

from amasim.driver import run as train_run
from amasim.registry import build, start_constants
from amasim.simulator import SimulatedOracle
from amasim.studies import Tuning
from proofs_check.base import Budget, Measurement
from proofs_check.convexity import task_values
from proofs_check.instances import Instance, draw_instances

__all__ = ["VARIANTS", "RecordingOracle", "best_response_value", "lemma", "run"]

VARIANTS = ("correct", "last_iterate", "nonconvex")


class RecordingOracle(SimulatedOracle):
    """The simulator, keeping θ after every step in ``trajectory`` (list of (R, d))."""

    def reset(self, seeds) -> None:
        super().reset(seeds)
        self.trajectory: list[np.ndarray] = []

    def step(self, batch, loss_weights, learning_rate) -> None:
        super().step(batch, loss_weights, learning_rate)
        self.trajectory.append(self.theta.copy())


def best_response_value(inst: Instance, alpha: np.ndarray) -> float:
    """min over the ball of Σ α_i E_i(θ) (cvxpy), evaluated by numpy at the solver's θ."""
    import cvxpy as cp

    p = inst.problem
    theta = cp.Variable(p.dim)
    slack = cp.Variable(len(p.targets), nonneg=True)
    preds = p.features @ theta
    if p.loss == "squared":
        loss = 0.5 * cp.square(preds - p.targets)
    else:
        loss = cp.logistic(p.targets - preds)
    weights = (alpha / np.asarray(p.sizes))[p.task_ids]
    problem = cp.Problem(
        cp.Minimize(weights @ slack),
        [slack >= loss - p.reference_losses, cp.norm(theta, 2) <= p.radius],
    )
    for solver in ("CLARABEL", "SCS"):
        try:
            problem.solve(solver=solver)
        except cp.error.SolverError:
            continue
        if theta.value is not None:
            point = p.project(np.asarray(theta.value, dtype=float))
            return float(alpha @ p.task_scores(point))
    raise RuntimeError("no solver found the best response")


def lemma(inst: Instance, thetas, alphas, theta_bar, label: str, variant: str = "correct"):
    """One measurement: thetas (T, d), alphas (T, k), θ̄ as the code averaged them."""
    e_t = task_values(inst, thetas, _score(variant))
    alpha_bar = alphas.mean(axis=0)
    if variant == "nonconvex":  # no convex solver applies: the best iterate stands in for
        g = float((e_t @ alpha_bar).min())  # the minimum (a constant on both sides anyway)
    else:
        g = best_response_value(inst, alpha_bar)
    horizon = len(thetas)
    played = float(np.einsum("tk,tk->", alphas, e_t))
    reg_alpha = float(e_t.sum(axis=0).max()) - played
    reg_theta = played - horizon * g
    worst = float(task_values(inst, theta_bar[None, :], _score(variant)).max())
    return Measurement(
        label,
        worst - g,
        (reg_theta + reg_alpha) / horizon,
        1e-9 * (1 + abs(worst)),
        {
            "reg_theta/T": reg_theta / horizon,
            "reg_alpha/T": reg_alpha / horizon,
            "primal_gap": worst - inst.opt,
        },
    )


def _score(variant: str) -> str:
    return "capped" if variant == "nonconvex" else "correct"


def _averaged_by_code(inst: Instance, points: np.ndarray, variant: str) -> np.ndarray:
    """Push ``points`` through SimulatedOracle's averaging (zero-weight steps)."""
    oracle = SimulatedOracle(inst.problem)
    oracle.reset([0])
    batch = oracle.sample(np.zeros((1, 1), dtype=np.int64))
    for point in points:
        oracle.theta = point[None, :].copy()
        oracle.step(batch, np.zeros((1, 1)), 1.0)
    return oracle.theta[0] if variant == "last_iterate" else oracle.average_theta[0]


def adversarial_sequences(
    inst: Instance, rng: np.random.Generator, variant: str = "correct", horizon: int = 40
):
    """(name, thetas, alphas): random points; the same with the worst point last; and a
    two-point alternation chosen by search to maximise max_i E_i(mid) − mean of the ends
    (the Jensen step of the proof, under ``variant``'s score)."""
    d, k, radius = inst.problem.dim, inst.k, inst.D
    u = rng.standard_normal((horizon, d))
    pts = 0.99 * radius * u / np.linalg.norm(u, axis=1, keepdims=True)
    pts *= rng.random((horizon, 1)) ** (1 / d)
    alphas = rng.dirichlet(np.ones(k), size=horizon)
    worst_last = pts[np.argsort(task_values(inst, pts).max(axis=1))]
    # candidate pairs: rays from each specialist and from random points, several lengths
    starts = np.vstack([inst.problem.specialists, pts[:8]])
    dirs = rng.standard_normal((8, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    a = np.repeat(starts, 8 * 4, axis=0)
    lengths = np.tile(np.repeat([0.25, 0.5, 1.0, 2.0], 8), len(starts))[:, None]
    b = inst.problem.project(a + radius * lengths * np.tile(dirs, (4 * len(starts), 1)))
    a, b = 0.99 * a, 0.99 * b
    score = _score(variant)
    ends = 0.5 * (task_values(inst, a, score) + task_values(inst, b, score))
    jensen = task_values(inst, 0.5 * (a + b), score).max(axis=1) - ends.max(axis=1)
    best = int(np.argmax(jensen))
    alternate = np.array([a[best], b[best]] * (horizon // 2))
    return [
        ("random", pts, alphas),
        ("worst-last", worst_last, alphas),
        ("two-point-search", alternate, alphas),
    ]


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """Training runs (AMA-R, AMA-S) on drawn instances, then adversarial sequences."""
    out = []
    horizon, seeds = budget.o2b_horizon, 2
    for inst in draw_instances(budget.bound_instances, seed):
        for method in ("ama-r", "ama-s"):
            oracle = RecordingOracle(inst.problem)
            tuning = Tuning()
            constants = start_constants(oracle, budget.batch_size)
            result = train_run(
                build(
                    method,
                    steps=horizon,
                    sizes=inst.problem.sizes,
                    policy=tuning.policy,
                    constants=constants,
                ),
                oracle,
                steps=horizon,
                learning_rate=tuning.learning_rate,
                schedule="1/sqrt(T)",
                batch_size=budget.batch_size,
                seeds=list(range(seeds)),
                record_every=1,
                check=False,
            )
            thetas = np.stack(oracle.trajectory)  # (T, R, d)
            last = oracle.theta if variant == "last_iterate" else oracle.average_theta
            for r in range(seeds):
                out.append(
                    lemma(
                        inst,
                        thetas[:, r],
                        result.weights[:, r],
                        last[r],
                        f"{inst.label}:{method}:T={horizon}:seed{r}",
                        variant,
                    )
                )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    for inst in draw_instances(1, seed + 1, families=("quadratic",)):
        for name, thetas, alphas in adversarial_sequences(inst, rng, variant):
            bar = _averaged_by_code(inst, thetas, variant)
            out.append(lemma(inst, thetas, alphas, bar, f"{inst.label}:sequence-{name}", variant))
    return out
