"""The one driver: any mixer on any oracle, for T steps, R seeds in one array computation.

:func:`run` checks its arguments once into a frozen :class:`~amasim.runspec.RunSpec`, trains
through the segment of the mixer's signal (:mod:`amasim.loop`: one small function per
signal kind, every step through :class:`~amasim.mixing.Mixing` and the apply rule of
:mod:`amasim.apply`) and measures the result (:class:`~amasim.result.RunResult`).  The
oracle capabilities a run needs are checked first, with one message for every entry point
(:func:`amasim.capabilities.require_capabilities`).  A step of the batch signal::

    α_t        = mixer.weights(state)
    task ids   = every task B times (reweight)  |  B draws from α_t (resample) or q (importance)
    L          = oracle.losses(oracle.sample(task ids))
    ê, n       = per-task means of score(L, ℓ) and counts
    α_{t+1}, state = mixer.update(state, ê, n if the batch was drawn else None)
    oracle.step(batch, dscore/dL · c_z, η_t)     c_z = α_{t+1,i}/B | 1/B | α_{t+1,i}/(B q_i)

``signal.retrain`` (DoReMi) runs the whole thing as a proxy run, then trains a fresh model
on the proxy's average weights by resampling, on as many examples as the proxy drew; the
result describes that model, with the proxy in ``info["proxy"]`` (its examples counted in
``extra_gradient_evaluations``: in DoReMi's paper the proxy is a separate, smaller model).

The oracle's extra duties are capabilities too: with ``checkpoint`` the driver saves the
oracle's state (``"checkpointing"``), the mixer state and its position, and resumes from
them with the same numbers; with ``log`` it writes a metrics record every ``log_every``
steps (the oracle's ``last_metrics`` and tokens per second with ``"training_metrics"``).

>>> from amasim import mixers
>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(100, 10), dim=3))
>>> result = run(mixers.ama_s(0.1, 0.1), oracle, steps=50, learning_rate=0.1, seeds=[0, 1])
>>> result.weights.shape, result.task_scores.shape
((50, 2, 2), (2, 2))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from amasim import prng
from amasim.checker import check_oracle
from amasim.loop import Duties, Record, TrainingDiverged, train_phase, train_with_proxy
from amasim.mixers import Mixer, Signal
from amasim.mixing import Mixing, NonFiniteLoss, Reduce, StepResult, check_finite_losses
from amasim.oracle import Oracle
from amasim.result import RunResult
from amasim.runspec import (
    SCHEDULES,
    RunSpec,
    check_horizon,
    learning_rate_at,
    requirements,
    run_spec,
)
from amasim.validate import check_optimum

__all__ = [
    "run",
    "Mixing",
    "StepResult",
    "RunSpec",
    "Checkpoint",
    "RunLog",
    "TrainingDiverged",
    "NonFiniteLoss",
    "check_finite_losses",
    "check_horizon",
    "requirements",
    "SCHEDULES",
    "learning_rate_at",
]


class Checkpoint(Protocol):
    """Where a run is saved and found again (``llm.checkpoint.CheckpointFile`` on disk).

    ``load()`` returns the last saved dict or ``None``; ``save(state)`` must be atomic
    (a crash leaves the previous checkpoint); ``str(checkpoint)`` names it in messages.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class RunLog(Protocol):
    """A metrics log: ``write(record)`` appends one record; a resumed run first calls
    ``drop_from(step)`` to forget records of the steps it will redo."""

    def write(self, record: dict[str, Any]) -> None: ...

    def drop_from(self, step: int) -> None: ...


def run(
    mixer: Mixer,
    oracle: Oracle,
    *,
    steps: int,
    learning_rate: float,
    schedule: str = "constant",
    batch_size: int = 32,
    seeds: int | Sequence[int] = 0,
    rounds: int = 10,
    apply: str | None = None,
    score: str | None = None,
    signal: Signal | None = None,
    optimum: float | None = None,
    record_every: int | None = None,
    record_losses: bool = False,
    evaluate: bool = True,
    check: bool = True,
    progress: bool | str = False,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = 50,
    log: RunLog | None = None,
    log_every: int = 10,
    reduce: Reduce | None = None,
    stream: int = prng.LOOP_STREAM,
    shard: tuple[int, int] | None = None,
    on_step: Any = None,
) -> RunResult:
    """Train with ``mixer`` on ``oracle`` for ``steps`` steps and measure (:class:`RunResult`).

    ``batch_size`` is B: examples per task per step when reweighting (k·B in all), examples
    per step otherwise.  ``apply``, ``score`` and ``signal`` default to the mixer's (e.g.
    ``signal=Signal("validation")`` runs a batch mixer in the rounds protocol);
    ``rounds`` is the number of rounds of the round-based signals.  ``record_every``
    defaults to ``max(1, steps // 1000)``; ``record_losses`` also records each recorded
    batch's mean loss (``RunResult.losses``, else ``None``; a reduction a step).  With
    ``check`` (default) the oracle first passes :func:`~amasim.checker.check_oracle`;
    ``evaluate=False`` skips the final evaluation (``task_scores`` is then ``None``).
    ``progress`` shows a progress bar (a string labels it).  ``checkpoint``,
    ``checkpoint_every``, ``log``, ``log_every``: see the module docstring; ``on_step(t)``
    is called after each step the driver takes.  ``reduce``, ``stream`` and ``shard`` are
    :class:`Mixing`'s (data parallelism: every rank runs the same call with its
    ``shard=(rank, world)``; the recorded losses are then the global batch's).
    """
    check_optimum(optimum)  # a NaN optimum would make a NaN gap
    spec = run_spec(
        mixer,
        oracle,
        steps=steps,
        learning_rate=learning_rate,
        schedule=schedule,
        batch_size=batch_size,
        seeds=seeds,
        rounds=rounds,
        apply=apply,
        score=score,
        signal=signal,
        record_every=record_every,
        record_losses=record_losses,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        reduce=reduce,
        stream=stream,
        shard=shard,
        progress=progress,
    )
    if check:
        check_oracle(oracle, seeds=spec.seeds[:2])
    return train(spec, oracle, Duties(checkpoint, log, reduce, on_step), optimum, evaluate)


def train(
    spec: RunSpec, oracle: Oracle, duties: Duties, optimum: float | None, evaluate: bool
) -> RunResult:
    """Train ``spec`` on ``oracle`` (resuming from ``duties.checkpoint`` when it holds this
    run's state) and measure the result."""
    saved = duties.checkpoint.load() if duties.checkpoint is not None else None
    start = time.perf_counter()
    info: dict[str, Any] = {}
    final = spec
    if spec.signal.retrain:  # DoReMi: a proxy run, then a fresh model on its average α
        final, record, state, info = train_with_proxy(spec, oracle, duties, saved)
    else:
        record, state = train_phase(spec, oracle, duties, "train", saved)
    wall = time.perf_counter() - start
    return _result(spec, final, oracle, record, state, info, optimum, evaluate, wall)


def _result(
    spec: RunSpec,
    final: RunSpec,
    oracle: Oracle,
    record: Record,
    state: Any,
    info: dict[str, Any],
    optimum: float | None,
    evaluate: bool,
    wall: float,
) -> RunResult:
    r = len(spec.seeds)
    extra = np.full(r, int(getattr(oracle, "extra_gradient_evaluations", 0)))
    if "proxy" in info:
        extra = extra + info["proxy"]["examples"]
    scores = last = worst = None
    if evaluate:
        scores = _evaluated(oracle, averaged=True)
        last = _evaluated(oracle, averaged=False)
        worst = scores.max(axis=1)
    return RunResult(
        method=spec.mixer.name,
        signal=spec.signal.kind,
        score=final.score,
        apply=final.apply,
        schedule=spec.schedule,
        seeds=spec.seeds,
        steps=final.steps,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        record_steps=record.steps,
        weights=record.weights,
        scores=record.scores,
        losses=record.losses() if spec.record_losses else None,
        average_weights=record.weight_sum / final.steps,
        task_scores=scores,
        last_task_scores=last,
        worst_task=worst,
        optimum=optimum,
        gap=None if optimum is None or worst is None else worst - optimum,
        examples=record.examples,
        task_examples=record.task_counts if record.other_examples == 0 else None,
        extra_gradient_evaluations=extra,
        wall_time=wall,
        mixer_state=state,
        info=info,
    )


def _evaluated(oracle: Oracle, averaged: bool) -> np.ndarray:
    """The final clipped excess of every task; a non-finite one is an error, not a score."""
    scores = np.asarray(oracle.evaluate(score="clipped", averaged=averaged))
    if not np.isfinite(scores).all():
        r, i = np.argwhere(~np.isfinite(scores))[0]
        where = "averaged iterate" if averaged else "last iterate"
        raise NonFiniteLoss(
            f"final evaluation: task {oracle.task_names[i]!r} (replicate {r}) scored "
            f"{scores[r, i]} at the {where}: the trained model is broken (diverged, or a "
            "corrupt checkpoint); no result is reported from it"
        )
    return scores
