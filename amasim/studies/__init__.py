"""The studies: what the project measures with the library, and the tuning they share.

==================  ===========================================================
module              study (``amasim <command>``)
==================  ===========================================================
``converge``        optimality gap of the averaged iterate vs the horizon T
``claims``          the AutoMixAlign paper's claims at an equal example budget
``compare``         every method of the field on the same problems
``seed_claims``     every seed paper's claim over many problem instances
``specialist_cost`` how cheap AMA's specialists can be
``reproduce``       all of the above, with figures (the main job)
==================  ===========================================================

The studies import the library; the library never imports them.  Every method is tuned
by :data:`amasim.registry.STUDY_TUNING` for its own horizon: the θ learning rate follows
``lr/√T`` (schedule ``"1/sqrt(T)"``, a heuristic constant), and the mixer's step sizes are
those of the theorem that covers the method (:class:`amasim.registry.Theory`) at the
constants :func:`amasim.registry.start_constants` estimates from the problem's start model
(B̂ = the largest task score there, D·Ĝ, the batch size); a method no theorem covers gets
the 1/√T heuristic.

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(40, 10), dim=3))
>>> run_tuned("ama-r", oracle, steps=50, seeds=[0, 1]).weights.shape
(50, 2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from amasim.driver import run
from amasim.registry import ByProtocol, Theory, build, start_constants
from amasim.result import RunResult

__all__ = ["IMBALANCED", "Tuning", "run_tuned"]

#: the AMA instances: 10:1:1 imbalance, conflicting task optima
IMBALANCED = {"sizes": (1000, 100, 100), "conflict": 1.0}


@dataclass(frozen=True)
class Tuning:
    """The studies' tuning: θ step ``learning_rate``/√T, batch size B; the mixers of the
    methods a theorem covers take its step sizes (:class:`amasim.registry.Theory`), the
    others step ``mixer_step``/√T and exploration c = min(1, ``smoothing``·√(k ln k / T))."""

    learning_rate: float = 3.0
    mixer_step: float = 3.0
    smoothing: float = 1.0
    batch_size: int = 32

    @property
    def policy(self) -> ByProtocol:
        """The registry tuning policy these constants define."""
        return ByProtocol(per_step=Theory(self.mixer_step, self.smoothing))


def run_tuned(
    method: str,
    oracle: Any,
    steps: int,
    seeds: int | Sequence[int],
    tuning: Tuning = Tuning(),
    optimum: float | None = None,
) -> RunResult:
    """:func:`amasim.driver.run` of registered ``method`` tuned for ``steps`` (its theorem's
    step sizes at the oracle's :func:`~amasim.registry.start_constants`, or the heuristic)."""
    constants = start_constants(oracle, tuning.batch_size)
    return run(
        build(
            method,
            steps=steps,
            sizes=oracle.task_sizes,
            policy=tuning.policy,
            constants=constants,
        ),
        oracle,
        steps=steps,
        learning_rate=tuning.learning_rate,
        schedule="1/sqrt(T)",
        batch_size=tuning.batch_size,
        seeds=seeds,
        optimum=optimum,
        check=False,
    )
