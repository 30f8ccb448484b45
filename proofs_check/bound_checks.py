"""Statement 5, measured: AMA-R and AMA-S trained by :func:`amasim.driver.run` with the
theory's step sizes stay under their bounds at every horizon T tried.

Measured quantity: E[max_i E_i(θ̄_T)] − OPT, the mean of ``RunResult.gap`` over
``budget.seeds`` replicates (OPT certified by :mod:`amasim.optimum`); a violation must
exceed the bound by ``Z_SCORE`` standard errors of that mean.

Instances: drawn core-family instances at ``budget.horizons`` (where the worst-case
constants make the bounds loose: the ratio column says how loose), and the adversarial
instances of :mod:`proofs_check.instances` at ``budget.falsify_horizon`` too, where the
bounds are tight enough that a broken implementation crosses them.

Checks and their broken variants (each a plausible implementation bug):

* ``ama_r_prop2`` — Group DRO Prop. 2 constants, at Prop. 2's step sizes;
  ``theta_step_1/T`` (η_θ decays as 1/T: the θ-player barely moves).
* ``ama_r`` — Theorem R at its own step sizes; ``theta_step_1/T``, ``alpha_step_1/T``
  (η_α decays as 1/T: α stays uniform, i.e. stratified sampling).
* ``ama_s`` — Theorem S at the EXP3 tuning; ``theta_step_1/T``.
* ``ama_s_notes`` — the notes' reconstructed AMA-S bound on the same runs (measured only:
  it is not a theorem, see derivations/05_ama_s.md).
* ``ama_s_ix`` — Theorem IX (derivations/07_ama_s_ix.md) at its own tuning;
  ``theta_step_1/T``, ``alpha_step_1/T``.
* ``ama_s_ix_hp`` — Theorem IX's high-probability form at δ = :data:`HP_DELTA`, on every
  seed: measured = the largest gap over the seeds (tolerance 0; the correct code fails a
  measurement with probability ≤ seeds·δ); ``theta_step_1/T``.  That γ_IX = 0 breaks the
  proof is shown where it does, by :mod:`proofs_check.ix_lemma`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from amasim import mixers
from amasim.ama_s_ix import ama_s_ix
from amasim.driver import run as train_run
from amasim.simulator import SimulatedOracle
from proofs_check import bounds
from proofs_check.base import Z_SCORE, Budget, Measurement
from proofs_check.instances import Instance, adversarial, draw_instances

__all__ = [
    "VARIANTS",
    "ADVERSARIAL_NAMES",
    "HP_DELTA",
    "configure",
    "gaps",
    "measure",
    "run_check",
    "bound_instances",
]

VARIANTS: dict[str, tuple[str, ...]] = {
    "ama_r_prop2": ("correct", "theta_step_1/T"),
    "ama_r": ("correct", "theta_step_1/T", "alpha_step_1/T"),
    "ama_s": ("correct", "theta_step_1/T"),
    "ama_s_notes": ("correct",),
    "ama_s_ix": ("correct", "theta_step_1/T", "alpha_step_1/T"),
    "ama_s_ix_hp": ("correct", "theta_step_1/T"),
}
_RUNNER = {
    "ama_r_prop2": "ama_r_prop2",
    "ama_r": "ama_r",
    "ama_s": "ama_s",
    "ama_s_notes": "ama_s",
    "ama_s_ix": "ama_s_ix",
    "ama_s_ix_hp": "ama_s_ix",
}
#: the hand-built instances every bound check also runs on (proofs_check.instances)
ADVERSARIAL_NAMES = ("agree", "tug3")
#: δ of Theorem IX's high-probability form in ``ama_s_ix_hp``
HP_DELTA = 1e-4
_CACHE: dict[tuple, np.ndarray] = {}


def configure(runner: str, inst: Instance, horizon: int, variant: str, batch_size: int = 8):
    """(mixer, η_θ, step sizes dict) for ``runner`` ∈ {ama_r_prop2, ama_r, ama_s, ama_s_ix};
    ``batch_size`` is b (Theorem IX's tuning depends on it)."""
    c = (inst.B, inst.G, inst.D, inst.k, horizon)
    gamma = None
    if runner == "ama_r_prop2":
        eta_theta, eta_alpha = bounds.prop2_steps(*c)
    elif runner == "ama_r":
        eta_theta, eta_alpha = bounds.ama_r_steps(*c)
    elif runner == "ama_s":
        eta_theta, eta_alpha, gamma = bounds.ama_s_steps(*c)
    else:
        eta_theta, eta_alpha, gamma = bounds.ama_s_ix_steps(*c, batch_size)
    if variant == "theta_step_1/T":
        eta_theta /= math.sqrt(horizon)
    if variant == "alpha_step_1/T":
        eta_alpha /= math.sqrt(horizon)
    if runner == "ama_s_ix":
        mixer = ama_s_ix(eta_alpha, gamma, inst.B)
    elif gamma is None:
        mixer = mixers.ama_r(eta_alpha)
    else:
        mixer = mixers.ama_s(eta_alpha, gamma)
    return mixer, eta_theta, {"eta_theta": eta_theta, "eta_alpha": eta_alpha, "gamma": gamma}


def gaps(runner: str, inst: Instance, horizon: int, budget: Budget, variant: str, seed: int):
    """Per-seed gap of ``runner`` on ``inst`` (memoised within the process)."""
    key = (runner, inst.label, horizon, budget.batch_size, budget.seeds, variant, seed)
    if key not in _CACHE:
        mixer, eta_theta, _ = configure(runner, inst, horizon, variant, budget.batch_size)
        result = train_run(
            mixer,
            SimulatedOracle(inst.problem),
            steps=horizon,
            learning_rate=eta_theta,
            schedule="constant",
            batch_size=budget.batch_size,
            seeds=list(range(seed * 1000, seed * 1000 + budget.seeds)),
            optimum=inst.opt,
            record_every=horizon,
            check=False,
        )
        _CACHE[key] = np.asarray(result.gap)
    return _CACHE[key]


def bound_value(check: str, inst: Instance, horizon: int, budget: Budget) -> tuple[float, dict]:
    """The bound of ``check`` on ``inst`` at T = ``horizon`` (at the correct step sizes)."""
    c = (inst.B, inst.G, inst.D, inst.k, horizon)
    b = budget.batch_size
    _, _, steps = configure(_RUNNER[check], inst, horizon, "correct", b)
    extra: dict[str, Any] = dict(steps)
    if check == "ama_r_prop2":
        value = bounds.prop2(*c)
        extra["theorem_r_at_these_steps"] = bounds.theorem_r(
            *c, b, steps["eta_theta"], steps["eta_alpha"]
        )
    elif check == "ama_r":
        value = bounds.theorem_r(*c, b, steps["eta_theta"], steps["eta_alpha"])
    elif check == "ama_s":
        value = bounds.theorem_s(*c, b, steps["eta_theta"], steps["eta_alpha"], steps["gamma"])
    elif check == "ama_s_ix":
        value = bounds.theorem_ix(*c, b, steps["eta_theta"], steps["eta_alpha"], steps["gamma"])
    elif check == "ama_s_ix_hp":
        ix = (steps["eta_theta"], steps["eta_alpha"], steps["gamma"])
        value = bounds.theorem_ix_hp(*c, b, *ix, HP_DELTA)
        extra["delta"] = HP_DELTA
    else:
        value = bounds.notes_reconstruction(*c)
    return value, extra


def measure(check: str, inst: Instance, horizon: int, budget: Budget, variant: str, seed: int):
    """One measurement: mean gap over seeds vs the bound (``*_hp``: the largest gap)."""
    g = gaps(_RUNNER[check], inst, horizon, budget, variant, seed)
    value, extra = bound_value(check, inst, horizon, budget)
    se = float(g.std(ddof=1) / math.sqrt(len(g))) if len(g) > 1 else 0.0
    every_seed = check.endswith("_hp")
    return Measurement(
        f"{inst.label}:T={horizon}",
        float(g.max() if every_seed else g.mean()),
        value,
        0.0 if every_seed else Z_SCORE * se,
        {"se": se, "B": inst.B, "G": inst.G, "D": inst.D, "k": inst.k, **extra},
    )


def bound_instances(budget: Budget, seed: int) -> list[tuple[Instance, tuple[int, ...]]]:
    """(instance, horizons): drawn instances at budget.horizons, adversarial ones also at
    budget.falsify_horizon."""
    drawn = [(inst, budget.horizons) for inst in draw_instances(budget.bound_instances, seed)]
    horizons = tuple(sorted(set(budget.horizons) | {budget.falsify_horizon}))
    return drawn + [(adversarial(name), horizons) for name in ADVERSARIAL_NAMES]


def run_check(check: str):
    """The ``run(budget, variant, seed)`` function of ``check``."""

    def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
        return [
            measure(check, inst, horizon, budget, variant, seed)
            for inst, horizons in bound_instances(budget, seed)
            for horizon in horizons
        ]

    run.__doc__ = f"Measurements of {check} (see the module doc)."
    return run
