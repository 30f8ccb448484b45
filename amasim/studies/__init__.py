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
``readme``          the README's result blocks, written from ``results/``
==================  ===========================================================

Every verdict a study draws is one row of :data:`CLAIMS` — stated before it runs, tested by
:func:`claim_record` through :mod:`amasim.stats` (paired t over the shared seeds, Holm over
the study's family, non-inferiority against :data:`amasim.stats.CONVEX_MARGIN`).  Adding a
claim is adding a row.

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
from amasim.stats import CONVEX_MARGIN, Claim, paired_test, record

__all__ = ["IMBALANCED", "CLAIMS", "FACTS", "Tuning", "run_tuned", "claim_record"]

#: the AMA instances: 10:1:1 imbalance, conflicting task optima
IMBALANCED = {"sizes": (1000, 100, 100), "conflict": 1.0}


_AMA, _BEST, _IX = "AutoMixAlign", "best-merge", "Theorem IX"
#: The seed papers' claims the convex studies test, one row each, stated in advance: on
#: ``suite``'s primary metric (lower is better) ``better`` beats ``worse`` (``"best-merge"``:
#: the merge with the lowest mean on the instance), or with ``noninferior`` is at least as
#: good up to :data:`amasim.stats.CONVEX_MARGIN`.
CLAIMS: tuple[Claim, ...] = (
    Claim("AMA-R beats uniform mixing", "ama-r", "uniform", source=_AMA, suite="mixing"),
    Claim("AMA-S beats uniform mixing", "ama-s", "uniform", source=_AMA, suite="mixing"),
    Claim("AMA-R beats stratified mixing", "ama-r", "stratified", source=_AMA, suite="mixing"),
    Claim("AMA-S beats stratified mixing", "ama-s", "stratified", source=_AMA, suite="mixing"),
    Claim("clipping helps AMA-R", "ama-r", "ama-r-noclip", source=_AMA, suite="mixing"),
    Claim("clipping helps AMA-S", "ama-s", "ama-s-noclip", source=_AMA, suite="mixing"),
    Claim("AMA-R beats the best merge", "ama-r", _BEST, source=_AMA, suite="mixing"),
    Claim("AMA-S beats the best merge", "ama-s", _BEST, source=_AMA, suite="mixing"),
    Claim("AMA-S is at least as good as AMA-R", "ama-s", "ama-r", True, _AMA, "mixing"),
    Claim(
        "AMA-S-IX is at least as good as AMA-S", "ama-s-ix", "ama-s", True, "Theorem IX", "mixing"
    ),
    Claim(
        "AMA-S-IX is at least as good as AMA-R", "ama-s-ix", "ama-r", True, "Theorem IX", "mixing"
    ),
    Claim("Aioli beats stratified mixing", "aioli", "stratified", source="Aioli", suite="transfer"),
    Claim("DGA beats importance sampling", "dga", "importance-sampling", source="DGA", suite="dga"),
)

#: what is true by construction: stated, never tested
FACTS = (
    "AMA-S draws B examples a step and AMA-R k·B (one batch per task): at an equal budget "
    "AMA-S takes k times as many steps — true by construction, not a measurement.",
)


def claim_record(
    claim: Claim, rows: dict[str, dict[str, Any]], merges: Sequence[str] = (), **context: Any
) -> dict[str, Any] | None:
    """The undecided :func:`amasim.stats.record` of ``claim`` on one instance, from its
    ``rows`` (method → ``{"values": per-seed values, "mean": ...}``, lower is better, seed s
    at position s of every row), or ``None`` when a method did not run there.

    >>> rows = {"a": {"values": [0.1, 0.2, 0.15], "mean": 0.15},
    ...         "b": {"values": [0.3, 0.5, 0.35], "mean": 0.38}}
    >>> rec = claim_record(Claim("A beats B", "a", "b"), rows)
    >>> round(rec["estimate"], 4), rec["df"], rec["worse_method"]
    (0.2333, 2, 'b')
    """
    worse = claim.worse
    if worse == _BEST:
        present = [m for m in merges if m in rows]
        worse = min(present, key=lambda m: rows[m]["mean"]) if present else None
    if claim.better not in rows or worse not in rows:
        return None
    a, b = rows[claim.better]["values"], rows[worse]["values"]
    test = paired_test(a, b, margin=CONVEX_MARGIN if claim.noninferior else None)
    return record(
        claim,
        test,
        **context,
        better_method=claim.better,
        worse_method=worse,
        better_values=list(a),
        worse_values=list(b),
    )


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
