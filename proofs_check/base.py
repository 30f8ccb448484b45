"""Records shared by every check: one measurement, one check's result, the budgets.

A check computes both sides of an inequality on concrete instances and returns a list of
:class:`Measurement` (``measured`` ≤ ``bound`` + ``tol`` is what the theorem says).  An
equality (an unbiased estimate, a matching gradient) is written the same way, with
``measured`` = |difference| and ``bound`` = the numerical tolerance.  ``tol`` is the
slack a Monte Carlo estimate is allowed (a multiple of its standard error): a violation
is only declared when it is statistically significant.

>>> m = Measurement("x", measured=0.5, bound=2.0)
>>> m.ratio, m.holds
(0.25, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Measurement", "CheckResult", "Check", "Budget", "BUDGETS", "Z_SCORE"]

#: Standard errors a Monte Carlo mean may exceed its bound by before we call it a violation.
Z_SCORE = 4.0


@dataclass(frozen=True)
class Measurement:
    """Both sides of one instance of a statement: ``measured`` ≤ ``bound`` (+ ``tol``)."""

    label: str
    measured: float
    bound: float
    tol: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """measured / bound (how much of the bound is used; > 1 means above the bound)."""
        if self.bound > 0:
            return self.measured / self.bound
        return 0.0 if self.measured <= self.tol else math.inf

    @property
    def holds(self) -> bool:
        return bool(self.measured <= self.bound + self.tol)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "measured": self.measured,
            "bound": self.bound,
            "tol": self.tol,
            "ratio": self.ratio,
            "holds": self.holds,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class Budget:
    """How much work each check does (``quick`` for tests, ``default`` for the report)."""

    name: str
    instances: int  # drawn core-family instances for the cheap checks
    bound_instances: int  # drawn instances for the training-run checks (cycling families)
    seeds: int  # replicates whose mean estimates an expected gap
    horizons: tuple[int, ...]  # T for the bound checks
    falsify_horizon: int  # T at which broken variants are run on adversarial instances
    batch_size: int
    exp3_replicates: int
    exp3_horizon: int
    o2b_horizon: int
    ix_replicates: int = 128  # independent runs per Lemma IX measurement (a tail probability)


BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", 3, 1, 8, (300, 3000), 10_000, 8, 600, 600, 300),
    "default": Budget("default", 12, 6, 8, (100, 1000, 10_000), 10_000, 8, 1000, 2000, 1000),
}


@dataclass(frozen=True)
class CheckResult:
    """One check run on one variant: its measurements and the verdict."""

    name: str
    statement: str
    kind: str  # "proven" (a violation is a bug) or "measured" (an empirical claim)
    derivation: str
    variant: str
    measurements: tuple[Measurement, ...]
    seconds: float

    @property
    def instances(self) -> int:
        """Distinct instances (or adversaries) tried: the label up to its first ':'."""
        return len({m.label.split(":")[0] for m in self.measurements})

    @property
    def worst(self) -> Measurement:
        return max(self.measurements, key=lambda m: (not m.holds, m.ratio))

    @property
    def worst_ratio(self) -> float:
        return self.worst.ratio

    @property
    def violations(self) -> int:
        return sum(not m.holds for m in self.measurements)

    @property
    def passed(self) -> bool:
        return self.violations == 0

    @property
    def verdict(self) -> str:
        if self.passed:
            return "holds" if self.kind == "proven" else "holds (measured, not proven)"
        n, total = self.violations, len(self.measurements)
        if self.kind == "proven":
            return f"VIOLATED on {n}/{total}"
        return f"fails on {n}/{total} (measured, not proven)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "statement": self.statement,
            "kind": self.kind,
            "derivation": self.derivation,
            "variant": self.variant,
            "instances": self.instances,
            "worst_ratio": self.worst_ratio,
            "verdict": self.verdict,
            "passed": self.passed,
            "seconds": self.seconds,
            "measurements": [m.to_dict() for m in self.measurements],
        }


@dataclass(frozen=True)
class Check:
    """A statement, its derivation, and the function that measures it.

    ``run(budget, variant, seed)`` returns the measurements; ``variants[0]`` is
    ``"correct"`` and every other variant is a deliberately broken implementation the
    check must reject (asserted by ``tests/test_proofs_check.py``).
    """

    name: str
    statement: str
    kind: str
    derivation: str
    variants: tuple[str, ...]
    run: Callable[[Budget, str, int], list[Measurement]]
