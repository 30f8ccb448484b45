"""Lemma IX, the step of Theorem IX that implicit exploration pays for: the IX loss
estimates of AMA-S-IX overshoot the true losses by little, for every task at once.

Derivation: ``derivations/07_ama_s_ix.md`` (Lemma IX = Neu 2015, Lemma 1, for batches of b
examples and per-example losses in [0, B]).  For a run of :func:`amasim.ama_s_ix.ama_s_ix`
through the core's own training step (:class:`amasim.driver.Mixing`, batch of b drawn from
α_t), with ℓ_tj = B − E_j(θ_t) (exact, full data, at the iterate the batch was drawn at)
and ℓ̂_tj the mixer's estimate, Z_j = Σ_t (ℓ̂_tj − ℓ_tj) satisfies

* ``E``:  E[max_j Z_j] ≤ B ln k / (2γb)                  (mean over R runs, tol 4 s.e.);
* ``hp``: P(max_j Z_j > B ln(k/δ)/(2γb)) ≤ δ, δ = :data:`DELTA`.  The R runs are
  independent, so the number of runs above the line is at most Binomial(R, δ): the
  measurement fails when it exceeds that law's 1 − 10⁻⁶ quantile.

Instances: the first drawn instance of each family at ``budget.horizons`` (R =
``budget.ix_replicates``/4 runs: E_i(θ_t) on the whole data every step is their cost), and
the bound checks' adversarial instances plus ``adversarial("satisfied4")`` — two tasks are
met at the optimum and their weights decay, the regime the lemma is about — also at
``budget.falsify_horizon`` (R = ``budget.ix_replicates``).  Step sizes: Theorem IX's tuning.

Broken variant: ``gamma_0`` (γ = 0, the plain importance-weighted loss estimate: unbiased,
but when a task of weight α ≪ 1 is drawn its estimate jumps by B/(bα), so its realised
overshoot is heavy-tailed and the lemma fails).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from amasim.ama_s_ix import ama_s_ix, ix_losses
from amasim.driver import Mixing
from amasim.problems import PROBLEMS
from amasim.simulator import SimulatedOracle
from proofs_check import bounds
from proofs_check.base import Z_SCORE, Budget, Measurement
from proofs_check.bound_checks import ADVERSARIAL_NAMES
from proofs_check.instances import Instance, adversarial, draw_instances

__all__ = ["VARIANTS", "DELTA", "overshoot", "allowed_exceedances", "measure", "run"]

VARIANTS = ("correct", "gamma_0")
DELTA = 0.01  # the lemma's δ for the per-run statement
_FALSE_ALARM = 1e-6  # chance that the correct code fails one ``hp`` measurement


def overshoot(
    inst: Instance, horizon: int, budget: Budget, variant: str, seed: int, runs: int
) -> np.ndarray:
    """max_j Z_j of ``runs`` independent runs, shape (runs,)."""
    b, r = budget.batch_size, runs
    eta_theta, eta, gamma = bounds.ama_s_ix_steps(inst.B, inst.G, inst.D, inst.k, horizon, b)
    gamma = 0.0 if variant == "gamma_0" else gamma
    mixer = ama_s_ix(eta, gamma, inst.B)
    seeds = list(range(seed * 1000, seed * 1000 + r))
    oracle = SimulatedOracle(inst.problem)
    oracle.reset(seeds)
    mixing = Mixing(mixer, oracle, seeds=seeds, batch_size=b, apply="resample", score="clipped")
    state = mixer.init(inst.k, seeds)
    total = np.zeros((r, inst.k))
    for t in range(horizon):
        losses = inst.B - inst.problem.task_scores(oracle.theta)  # ℓ_t at θ_t, exact
        out = mixing.step(state, t, eta_theta)
        state = out.state
        total += ix_losses(out.scores, out.counts, out.weights, inst.B, gamma) - losses
    return total.max(axis=1)


def allowed_exceedances(runs: int, delta: float = DELTA) -> int:
    """The 1 − 10⁻⁶ quantile of Binomial(runs, δ): more runs above the line is a violation.

    >>> allowed_exceedances(128)
    9
    """
    return int(binom.isf(_FALSE_ALARM, runs, delta))


def measure(inst: Instance, horizon: int, budget: Budget, variant: str, seed: int, runs: int):
    """The ``E`` and ``hp`` measurements of one instance and horizon over ``runs`` runs."""
    z = overshoot(inst, horizon, budget, variant, seed, runs)
    _, _, gamma = bounds.ama_s_ix_steps(inst.B, inst.G, inst.D, inst.k, horizon, budget.batch_size)
    b, label = budget.batch_size, f"{inst.label}:T={horizon}"
    expected = inst.B * math.log(inst.k) / (2 * gamma * b)
    line = bounds.ix_lemma(inst.B, inst.k, b, gamma, DELTA)
    se = float(z.std(ddof=1) / math.sqrt(len(z)))
    detail = {"B": inst.B, "k": inst.k, "gamma": gamma, "runs": len(z), "max": float(z.max())}
    return [
        Measurement(f"{label}:E", float(z.mean()), expected, Z_SCORE * se, {"se": se, **detail}),
        Measurement(
            f"{label}:hp",
            float((z > line).sum()),
            float(allowed_exceedances(len(z))),
            0.0,
            {"line": line, "delta": DELTA, **detail},
        ),
    ]


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """Measurements of Lemma IX (see the module doc)."""
    horizons = tuple(sorted(set(budget.horizons) | {budget.falsify_horizon}))
    drawn = draw_instances(min(budget.bound_instances, len(PROBLEMS)), seed)
    named = (*ADVERSARIAL_NAMES, "satisfied4")
    few = budget.ix_replicates // 4  # the drawn instances' exact E_i(θ_t) cost n·d a run
    cases = [(inst, budget.horizons, few) for inst in drawn]
    cases += [(adversarial(name), horizons, budget.ix_replicates) for name in named]
    return [
        m
        for inst, hs, runs in cases
        for horizon in hs
        for m in measure(inst, horizon, budget, variant, seed, runs)
    ]
