"""What one call of :func:`amasim.driver.run` trains, validated once: :class:`RunSpec`.

Every argument of ``run`` is checked here, before any work, and frozen into one record the
training segments (:mod:`amasim.loop`) read — no keyword dictionary travels further.  The
horizon checks (:func:`check_horizon`) and the capability list (:func:`requirements`) live
here too, so a config checker can call them without training anything.

>>> from amasim import mixers
>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(10, 10), dim=2))
>>> spec = run_spec(mixers.ama_r(0.1), oracle, steps=100, learning_rate=0.5,
...                 schedule="1/sqrt(T)", seeds=[0, 1])
>>> spec.seeds, float(spec.rate(0)), spec.record_every
((0, 1), 0.05, 1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from amasim import prng
from amasim.capabilities import require_capabilities
from amasim.checker import check_oracle_interface
from amasim.mixers import SIGNAL_REQUIRES, Mixer, Signal, check_apply
from amasim.oracle import OracleError
from amasim.scores import check_score
from amasim.validate import check_object, check_seeds, check_step_size

__all__ = [
    "SCHEDULES",
    "learning_rate_at",
    "RunSpec",
    "run_spec",
    "check_horizon",
    "requirements",
]

SCHEDULES = ("constant", "1/sqrt(T)", "1/sqrt(t)")


def learning_rate_at(base: float, schedule: str, step: int, steps: int) -> float:
    """η_t for ``schedule``: constant η, η/√T for the whole run, or η/√(t+1)."""
    if schedule == "constant":
        return base
    if schedule == "1/sqrt(T)":
        return base / np.sqrt(steps)
    if schedule == "1/sqrt(t)":
        return base / np.sqrt(step + 1)
    raise ValueError(f"schedule={schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class RunSpec:
    """One run, validated (:func:`run_spec`): the mixer and what it observes, how its
    weights reach the model, the horizon and the step sizes, the seeds, and the cadence of
    records, checkpoints and logs.  ``shard=(rank, world)``: this rank's share of a
    data-parallel run (``batch_size`` is then the rank's own B)."""

    mixer: Mixer
    signal: Signal
    apply: str
    score: str
    steps: int
    batch_size: int
    learning_rate: float
    schedule: str
    seeds: tuple[int, ...]
    rounds: int = 10
    record_every: int = 1
    record_every_given: bool = False
    record_losses: bool = False
    checkpoint_every: int = 50
    log_every: int = 10
    stream: int = prng.LOOP_STREAM
    shard: tuple[int, int] | None = None
    progress: bool | str = False

    @property
    def world(self) -> int:
        """Ranks sharing each batch (1 without ``shard``)."""
        return 1 if self.shard is None else self.shard[1]

    @property
    def every(self) -> int:
        return self.signal.every

    @property
    def share(self) -> int:
        return self.signal.share

    def rate(self, t: int) -> float:
        """The learning rate η_t of step ``t``."""
        return learning_rate_at(self.learning_rate, self.schedule, t, self.steps)

    def replace(self, **changes: Any) -> RunSpec:
        """This spec with ``changes`` (DoReMi's final model: another mixer and horizon)."""
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


def _learning_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"learning_rate must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"learning_rate={value} must be > 0")
    return float(value)


def _seeds(seeds: Any, oracle: Any) -> tuple[int, ...]:
    out = check_seeds(seeds)
    if len(set(out)) != len(out):
        raise ValueError(
            f"seeds={list(out)} repeats a seed: replicates with the same seed are the same "
            "run, so statistics over them would be wrong; pass distinct seeds"
        )
    if oracle.max_replicates is not None and len(out) > oracle.max_replicates:
        raise ValueError(
            f"{len(out)} seeds but this oracle runs at most {oracle.max_replicates} replicates "
            "at once: pass fewer seeds or loop over runs"
        )
    return out


def _signal(mixer: Mixer, signal: Signal | None) -> Signal:
    signal = mixer.signal if signal is None else signal
    if not isinstance(signal, Signal) or signal.kind not in SIGNAL_REQUIRES:
        raise ValueError(
            f"signal={signal!r} is unknown: pass an amasim.mixers.Signal whose kind is one of "
            f"{', '.join(SIGNAL_REQUIRES)}"
        )
    _positive_int("signal.every", signal.every)
    _positive_int("signal.share", signal.share)
    return signal


def run_spec(
    mixer: Mixer,
    oracle: Any,
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
    record_every: int | None = None,
    record_losses: bool = False,
    checkpoint: Any = None,
    checkpoint_every: int = 50,
    log_every: int = 10,
    reduce: Any = None,
    stream: int = prng.LOOP_STREAM,
    shard: tuple[int, int] | None = None,
    progress: bool | str = False,
) -> RunSpec:
    """The :class:`RunSpec` of :func:`amasim.driver.run`'s arguments, every one checked
    (a ``TypeError``/``ValueError`` naming the argument and the fix), the oracle's
    protocol and the capabilities the mixer, its signal and a checkpoint need included."""
    check_object(mixer, Mixer, "mixer", "pass a mixer, e.g. amasim.mixers.ama_r(1.0)")
    try:
        k = check_oracle_interface(oracle)
    except OracleError as err:
        raise TypeError(f"oracle does not follow the amasim oracle protocol: {err}") from None
    signal = _signal(mixer, signal)
    needs = requirements(mixer, signal) + (("checkpointing",) if checkpoint is not None else ())
    require_capabilities(oracle, needs, f"mixer {mixer.name!r}")
    steps = _positive_int("steps", steps)
    rounds = _positive_int("rounds", rounds)
    learning_rate = _learning_rate(learning_rate)
    peak = learning_rate_at(learning_rate, schedule, 0, steps)  # the longest step it takes
    check_step_size(oracle, peak, learning_rate, schedule)  # beyond 2/L: a warning
    apply = mixer.apply if apply is None else apply
    check_apply(apply)
    score = mixer.score if score is None else score
    if signal.kind == "batch":  # other signals train on the plain loss
        check_score(score)
    every = max(1, steps // 1000) if record_every is None else record_every
    if shard is not None and shard[1] > 1 and reduce is None:
        raise ValueError(
            f"shard={shard}: ranks that keep shares of one batch must combine their task "
            "scores; pass reduce (llm.parallel.reduce_task_scores under torchrun)"
        )
    spec = RunSpec(
        mixer=mixer,
        signal=signal,
        apply=apply,
        score=score,
        steps=steps,
        batch_size=_positive_int("batch_size", batch_size),
        learning_rate=learning_rate,
        schedule=schedule,
        seeds=_seeds(seeds, oracle),
        rounds=rounds,
        record_every=_positive_int("record_every", every),
        record_every_given=record_every is not None,
        record_losses=bool(record_losses),
        checkpoint_every=_positive_int("checkpoint_every", checkpoint_every),
        log_every=_positive_int("log_every", log_every),
        stream=stream,
        shard=shard,
        progress=progress,
    )
    check_horizon(mixer, steps, k, rounds=rounds, signal=signal)
    return spec


def check_horizon(
    mixer: Mixer, steps: int, num_tasks: int, *, rounds: int = 10, signal: Signal | None = None
) -> None:
    """Raise, naming the minimum, when ``steps`` cannot hold what ``mixer``'s signal measures
    (a sweep, LearnParams rounds) plus one training step per round — before any work."""
    signal = mixer.signal if signal is None else signal
    name, measured, training = mixer.name, 0, 1
    if signal.design is not None:
        n = len(signal.design(num_tasks))
        measured = n * max(1, steps // signal.share // n)
        training = 1 if signal.kind == "sweep" else rounds
        if steps < measured + training:
            raise ValueError(
                f"mixer {name!r}: steps={steps} cannot hold its sweep of {n} runs of "
                f"{measured // n} steps plus {training} step(s) of training: raise steps (or "
                f"the budget) to at least {measured + training}"
            )
    if signal.kind == "validation" and steps - measured < rounds:
        raise ValueError(
            f"mixer {name!r}: steps={steps} leaves {steps - measured} steps for {rounds} "
            f"rounds: raise steps (or the budget) to at least {measured + rounds}, or lower rounds"
        )
    if signal.kind == "learnparams":
        needed = mixer.init(num_tasks).sweeps * num_tasks
        if steps // rounds < needed:
            raise ValueError(
                f"mixer {name!r}: steps={steps} gives {steps // rounds} steps per round, but "
                f"LearnParams needs {needed} (one per mixture): raise steps (or the budget) to "
                f"at least {needed * rounds}, or lower rounds"
            )


def requirements(mixer: Mixer, signal: Signal | None = None) -> tuple[str, ...]:
    """Every oracle capability training ``mixer`` under ``signal`` (default: its own) needs."""
    signal = mixer.signal if signal is None else signal
    needs = [*mixer.requires, *SIGNAL_REQUIRES[signal.kind]]
    if signal.design is not None:
        needs += SIGNAL_REQUIRES["sweep"]
    return tuple(dict.fromkeys(needs))
