"""The one driver: any mixer on any oracle, for T steps, R seeds in one array computation.

What the loop observes comes from the mixer's :class:`~amasim.mixers.Signal`; the oracle
capabilities it needs are checked first, with one message for every entry point
(:func:`amasim.capabilities.require_capabilities`).  A training step of the batch signal
(notes §3–§4; Group DRO Alg. 1 order — the updated α weights the θ step)::

    α_t        = mixer.weights(state)
    task ids   = every task B times (reweight)  |  B draws from α_t (resample)
    L          = oracle.losses(oracle.sample(task ids))
    ê, n       = per-task means of score(L, ℓ) and counts
    α_{t+1}, state = mixer.update(state, ê, n if resampling else None)
    oracle.step(batch, w_z · dscore/dL, η_t)      w_z = α_{t+1,i}/n_i  |  1/B

The other signals (:mod:`amasim.observe`):

==================  =========================================================================
``"alignment"``     every ``signal.every`` steps: update on the gradient alignments, then
                    train on batches drawn from α as above (without a batch update)
``"validation"``    ``rounds`` rounds: update on every group's validation score, then the
                    oracle trains the round on the new weights (``train_on_mixture``)
``"learnparams"``   ``rounds`` rounds of Aioli: LearnParams (1/``share`` of the round), then
                    the rest of the round on the new weights
``"sweep"``         the weights of the sweep, for every step
==================  =========================================================================

A signal with a ``design`` first runs its sweep from the start model
(:func:`amasim.observe.sweep`, 1/``share`` of the steps, counted in the budget) and feeds it
to the mixer's first update.  ``signal.retrain`` (DoReMi) runs the whole thing as a proxy
run, then trains a fresh model on the proxy's average weights by resampling, on as many
examples as the proxy drew (``steps`` × k for a reweighting proxy); the result describes
that model, with the proxy in ``info["proxy"]`` (its examples counted in
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

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from amasim import grdpo, observe, prng
from amasim.capabilities import capabilities_of, require_capabilities
from amasim.checker import check_oracle, check_oracle_interface
from amasim.mixers import SIGNAL_REQUIRES, Mixer, Signal, check_apply, static_weights
from amasim.oracle import Oracle, OracleError
from amasim.result import RunResult
from amasim.scores import check_score, example_scores, task_means

__all__ = [
    "run",
    "Mixing",
    "StepResult",
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


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the message names the step and the last good checkpoint."""


class NonFiniteLoss(FloatingPointError):
    """An oracle returned a NaN or infinite loss; the message names the task and example."""


def check_finite_losses(losses: np.ndarray, task_ids: np.ndarray, names: Sequence[str]) -> None:
    """Raise :class:`NonFiniteLoss` naming the first non-finite loss's task and position.

    One scalar test on the usual path: the sum is finite iff every loss is, unless finite
    losses overflow the sum, which only sends finite losses to the exact test.
    """
    if math.isfinite(np.add.reduce(losses, axis=None)) or np.isfinite(losses).all():
        return
    r, n = np.argwhere(~np.isfinite(losses))[0]
    task = names[int(task_ids[r, n])]
    raise NonFiniteLoss(
        f"non-finite loss {losses[r, n]} on task {task!r} (replicate {r}, example {n} of the "
        "batch): the model diverged or the example holds a bad value; lower the learning "
        "rate, or check that task's data"
    )


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


# ----------------------------------------------------------------------------- one step
class StepResult(NamedTuple):
    """What one :meth:`Mixing.step` did; arrays carry the replicate axis R."""

    state: Any  # the mixer's new state
    weights: np.ndarray  # (R, k) α_t, the weights the batch was drawn or weighted with
    scores: np.ndarray  # (R, k) per-task mean score of the batch (0 where absent)
    counts: np.ndarray  # (R, k) examples of each task in the batch
    losses: np.ndarray  # (R, N) per-example losses L(θ_t, z)


class Mixing:
    """One training step of any mixer on any oracle — the step in the module docstring.

    Shared by :func:`run`, the LLM backend and the TRL integration, so all apply weights
    identically.  Refuses an oracle that lacks a capability the mixer requires.
    ``step(..., observe=False)`` trains on α_t without updating the mixer (signals other
    than the batch are observed by :func:`run`).

    Data parallelism (``shard=(rank, world)``): every rank draws the same *global* batch —
    ``world × batch_size`` examples (per task when reweighting) from the same streams, the
    oracle's example draws included — and keeps its own share of it (its contiguous block;
    when reweighting, its block of every task), which must be possible by slicing the
    batch's ``task_ids``, ``reference_losses`` and ``data`` along their second axis.
    ``reduce(means, counts) -> (means, counts)`` then combines the ranks' per-task scores
    before the mixer update, so every rank applies the update of the global batch; each
    rank's loss weights assume gradients are averaged over ranks (DDP, FSDP).  One rank
    with ``world × batch_size`` gives the same batch, updates and (up to summation order)
    gradients.  ``stream`` selects the random stream of the task draws.
    """

    def __init__(
        self,
        mixer: Mixer,
        oracle: Oracle,
        *,
        seeds: Sequence[int],
        batch_size: int,
        apply: str,
        score: str,
        reduce: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        stream: int = prng.LOOP_STREAM,
        shard: tuple[int, int] | None = None,
    ) -> None:
        require_capabilities(oracle, mixer.requires, f"mixer {mixer.name!r}")
        self.mixer, self.oracle, self.reduce = mixer, oracle, reduce
        self.batch_size, self.score = batch_size, check_score(score)
        # DoReMi scores against the oracle's default-mixture reference, not the specialists
        self.default_reference = "default_reference" in mixer.requires
        self.resample = apply != "reweight"  # resample, importance: the batch is drawn
        self.importance = apply == "importance"
        self.num_tasks = k = len(oracle.task_names)
        rank, world = (0, 1) if shard is None else shard
        if not 0 <= rank < world:
            raise ValueError(f"shard={shard!r}: need 0 <= rank < world")
        total = batch_size * world  # the global batch: per task when reweighting
        keys = prng.replicate_keys(list(seeds), stream=stream)
        self.uniforms = prng.UniformStream(keys, total)
        every_task = np.repeat(np.arange(k), total)  # task i at i·B…(i+1)·B−1
        self.fixed_ids = np.tile(every_task, (len(keys), 1))
        self.fixed_counts = np.full((len(keys), k), batch_size)
        self.fixed_counts.flags.writeable = False
        self.local = None  # this rank's positions in the global batch
        if world > 1:
            block = np.arange(rank * batch_size, (rank + 1) * batch_size)
            self.local = block if self.resample else (block + total * np.arange(k)[:, None]).ravel()

    def step(self, state: Any, t: int, learning_rate: float, observe: bool = True) -> StepResult:
        """Draw a batch, score it, update the mixer (if ``observe``), take the oracle's step."""
        alpha = self.mixer.weights(state)
        r, k, b = alpha.shape[0], self.num_tasks, self.batch_size
        if self.importance:  # drawn from the fixed q, weighted by α/(B q) (GR-DPO)
            task_ids = prng.categorical(self.uniforms(t), grdpo.sampling_distribution(state))
        elif self.resample:
            task_ids = prng.categorical(self.uniforms(t), alpha)
        else:
            task_ids = self.fixed_ids
        batch = self.oracle.sample(task_ids)
        if self.local is not None:  # keep this rank's share of the global batch
            batch, task_ids = _shard(batch, self.local), task_ids[:, self.local]
        losses = self.oracle.losses(batch)
        reference = batch.reference_losses
        if self.default_reference:
            reference = self.oracle.default_reference_losses(batch)
        values, dvalues = example_scores(self.score, losses, reference)
        if self.resample:
            means, counts = task_means(values, task_ids, k, check=False)
        else:  # the fixed layout: B examples of every task, task by task
            means, counts = np.add.reduce(values.reshape(r, k, b), axis=-1) / b, self.fixed_counts
        if self.reduce is not None:
            means, counts = self.reduce(means, counts)
        try:  # zero cost unless raised
            if self.importance:
                new_alpha = alpha
                if observe:
                    new_alpha, state = self.mixer.update(state, means, counts)
                q = grdpo.sampling_distribution(state)
                weights = grdpo.importance_loss_weights(new_alpha, q, task_ids, b, check=False)
                loss_weights = dvalues * weights
            elif self.resample:
                if observe:
                    _, state = self.mixer.update(state, means, counts)
                loss_weights = dvalues / b  # the draw from α already weights tasks
            else:
                new_alpha = alpha
                if observe:
                    new_alpha, state = self.mixer.update(state, means, None)
                # Σ_i α_{t+1,i} · (mean over the B examples of task i), Group DRO Alg. 1 order
                loss_weights = dvalues.reshape(r, k, b) * (new_alpha / b)[..., None]
                loss_weights = loss_weights.reshape(r, k * b)
        except ValueError:
            # every score propagates a NaN loss and every mixer refuses non-finite scores:
            # name the task and the example instead (never a score computed from NaN)
            check_finite_losses(losses, task_ids, self.oracle.task_names)
            raise
        self.oracle.step(batch, loss_weights, learning_rate)
        return StepResult(state, alpha, means, counts, losses)


def _shard(batch: Any, index: np.ndarray) -> Any:
    """``batch`` restricted to positions ``index`` (its second axis)."""
    data = batch.data
    if not isinstance(data, np.ndarray) or data.shape[:2] != batch.task_ids.shape:
        raise TypeError(
            f"sharding a batch needs Batch.data as an array indexed like task_ids "
            f"{batch.task_ids.shape}, got {type(data).__name__}: give the oracle array data, "
            "or train without shard"
        )
    return batch._replace(
        task_ids=batch.task_ids[:, index],
        reference_losses=batch.reference_losses[:, index],
        data=data[:, index],
    )


# --------------------------------------------------------------------------- the driver
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


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
    reduce: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    stream: int = prng.LOOP_STREAM,
    shard: tuple[int, int] | None = None,
    on_step: Callable[[int], None] | None = None,
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
    is called after each step the driver takes.
    ``reduce``, ``stream`` and ``shard`` are :class:`Mixing`'s (data parallelism: every
    rank runs the same call with its ``shard=(rank, world)``).
    """
    loop = _Loop(
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
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        log=log,
        log_every=log_every,
        reduce=reduce,
        stream=stream,
        shard=shard,
        on_step=on_step,
    )
    if check:
        check_oracle(oracle, seeds=loop.seeds[:2])
    return loop.result(optimum, evaluate)


class _Record:
    """The trajectories of one phase, and what it spent."""

    def __init__(self, steps: int, record_every: int, r: int, k: int) -> None:
        self.every = record_every
        self.steps = np.arange(0, steps, record_every)
        self.weights = np.zeros((len(self.steps), r, k))
        self.scores = np.zeros_like(self.weights)
        self.loss_sums = np.full((len(self.steps), r), np.nan)  # Σ losses of the batch
        self.batch_sizes = np.ones(len(self.steps))  # N of that batch
        self.weight_sum = np.zeros((r, k))
        self.task_counts = np.zeros((r, k), dtype=np.int64)  # drawn by the driver
        self.other_examples = 0  # drawn by the oracle (rounds, sweeps, LearnParams)

    def span(self, start: int, count: int, weights: np.ndarray, scores: np.ndarray) -> None:
        """Steps start … start + count − 1, trained on fixed ``weights``."""
        first, last = -(-start // self.every), -(-(start + count) // self.every)
        self.weights[first:last] = weights
        self.scores[first:last] = scores
        self.weight_sum += count * weights

    @property
    def examples(self) -> np.ndarray:
        return self.task_counts.sum(axis=1) + self.other_examples

    def losses(self) -> np.ndarray:
        """(M, R) mean loss of each recorded batch; NaN where the oracle took the step."""
        return self.loss_sums / self.batch_sizes[:, None]

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "every"}

    def restore(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)


class _Loop:
    """One call of :func:`run`: validated arguments and the phases of training."""

    def __init__(self, mixer: Mixer, oracle: Oracle, **kw: Any) -> None:
        if not isinstance(mixer, Mixer):
            raise TypeError(f"mixer must be an amasim.mixers.Mixer, got {type(mixer).__name__}")
        try:
            self.k = check_oracle_interface(oracle)
        except OracleError as err:
            raise TypeError(f"oracle does not follow the amasim oracle protocol: {err}") from None
        self.signal = mixer.signal if kw["signal"] is None else kw["signal"]
        if not isinstance(self.signal, Signal) or self.signal.kind not in SIGNAL_REQUIRES:
            raise ValueError(
                f"signal={self.signal!r} is unknown: pass an amasim.mixers.Signal whose kind "
                f"is one of {', '.join(SIGNAL_REQUIRES)}"
            )
        needs = requirements(mixer, self.signal)
        if kw["checkpoint"] is not None:
            needs += ("checkpointing",)
        require_capabilities(oracle, needs, f"mixer {mixer.name!r}")
        self.mixer, self.oracle = mixer, oracle
        self.steps = _positive_int("steps", kw["steps"])
        self.batch_size = _positive_int("batch_size", kw["batch_size"])
        self.rounds = _positive_int("rounds", kw["rounds"])
        self.every = _positive_int("signal.every", self.signal.every)
        self.share = _positive_int("signal.share", self.signal.share)
        lr = kw["learning_rate"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr):
            raise TypeError(f"learning_rate must be a finite number, got {lr!r}")
        if lr <= 0:
            raise ValueError(f"learning_rate={lr} must be > 0")
        self.learning_rate, self.schedule = float(lr), kw["schedule"]
        learning_rate_at(1.0, self.schedule, 0, 1)
        seeds = kw["seeds"]
        self.seeds = (seeds,) if isinstance(seeds, (int, np.integer)) else tuple(seeds)
        prng.replicate_keys(self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"seeds={list(self.seeds)} repeats a seed: replicates with the same seed are "
                "the same run, so statistics over them would be wrong; pass distinct seeds"
            )
        if oracle.max_replicates is not None and len(self.seeds) > oracle.max_replicates:
            raise ValueError(
                f"{len(self.seeds)} seeds but this oracle runs at most {oracle.max_replicates} "
                "replicates at once: pass fewer seeds or loop over runs"
            )
        self.apply = mixer.apply if kw["apply"] is None else kw["apply"]
        check_apply(self.apply)
        self.score = mixer.score if kw["score"] is None else kw["score"]
        if self.signal.kind == "batch":  # other signals train on the plain loss
            check_score(self.score)
        self.record_given = record_every = kw["record_every"]
        self.record_every = max(1, self.steps // 1000) if record_every is None else record_every
        _positive_int("record_every", self.record_every)
        self.record_losses = bool(kw["record_losses"])
        self.checkpoint, self.log, self.on_step = kw["checkpoint"], kw["log"], kw["on_step"]
        self.checkpoint_every = _positive_int("checkpoint_every", kw["checkpoint_every"])
        self.log_every = _positive_int("log_every", kw["log_every"])
        self.metrics = "training_metrics" in capabilities_of(oracle)
        self.reduce, self.stream, self.progress = kw["reduce"], kw["stream"], kw["progress"]
        self.shard = kw["shard"]
        if self.shard is not None and self.shard[1] > 1 and self.reduce is None:
            raise ValueError(
                f"shard={self.shard}: ranks that keep shares of one batch must combine their "
                "task scores; pass reduce (llm.distributed.reduce_task_scores under torchrun)"
            )
        self.r = len(self.seeds)
        self.sweep_steps, self.probe = self._sweep_size()
        self.saved_at: int | None = None

    def _sweep_size(self) -> tuple[int, int]:
        """(steps the sweep takes, steps per sweep run); (0, 0) without a design."""
        check_horizon(self.mixer, self.steps, self.k, rounds=self.rounds, signal=self.signal)
        if self.signal.design is None:
            return 0, 0
        n = len(self.signal.design(self.k))
        probe = max(1, self.steps // self.share // n)
        return n * probe, probe

    # ---------------------------------------------------------------- phases
    def result(self, optimum: float | None, evaluate: bool) -> RunResult:
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        start = time.perf_counter()
        info: dict[str, Any] = {}
        mixer, signal, apply, score = self.mixer, self.signal, self.apply, self.score
        phase = "train"
        if signal.retrain:  # DoReMi: a proxy run, then a fresh model on its average α
            if saved is not None and saved["phase"] == "final":
                self.proxy = saved["proxy"]
            else:
                proxy, _ = self._phase(mixer, signal, "proxy", saved, apply, score)
                self.proxy = {
                    "steps": self.steps,
                    "average_weights": proxy.weight_sum / self.steps,
                    "examples": proxy.examples,
                    "weights": proxy.weights,
                }
                saved = None
            info["proxy"] = self.proxy
            # the final model draws B a step: as many steps as the proxy's examples need
            self.steps = int(self.proxy["examples"].max()) // self.batch_size
            if self.record_given is None:
                self.record_every = max(1, self.steps // 1000)
            mixer = _frozen(mixer, self.proxy["average_weights"])
            signal, apply, score, phase = Signal("batch"), "resample", "loss", "final"
        record, state = self._phase(mixer, signal, phase, saved, apply, score)
        wall = time.perf_counter() - start
        extra = np.full(self.r, int(getattr(self.oracle, "extra_gradient_evaluations", 0)))
        if "proxy" in info:
            extra = extra + info["proxy"]["examples"]
        final = last = worst = None
        if evaluate:
            final = self._evaluated(averaged=True)
            last = self._evaluated(averaged=False)
            worst = final.max(axis=1)
        return RunResult(
            method=self.mixer.name,
            signal=self.signal.kind,
            score=score,
            apply=apply,
            schedule=self.schedule,
            seeds=self.seeds,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            record_steps=record.steps,
            weights=record.weights,
            scores=record.scores,
            losses=record.losses() if self.record_losses else None,
            average_weights=record.weight_sum / self.steps,
            task_scores=final,
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

    def _evaluated(self, averaged: bool) -> np.ndarray:
        """The final clipped excess of every task; a non-finite one is an error, not a score."""
        scores = np.asarray(self.oracle.evaluate(score="clipped", averaged=averaged))
        if not np.isfinite(scores).all():
            r, i = np.argwhere(~np.isfinite(scores))[0]
            where = "averaged iterate" if averaged else "last iterate"
            raise NonFiniteLoss(
                f"final evaluation: task {self.oracle.task_names[i]!r} (replicate {r}) scored "
                f"{scores[r, i]} at the {where}: the trained model is broken (diverged, or a "
                "corrupt checkpoint); no result is reported from it"
            )
        return scores

    def _phase(self, mixer, signal, phase, saved, apply, score) -> tuple[_Record, Any]:
        """Train a fresh model with ``mixer`` under ``signal`` (sweep, then the segments)."""
        oracle, seeds = self.oracle, list(self.seeds)
        record = _Record(self.steps, self.record_every, self.r, self.k)
        self.phase = phase
        if saved is not None and saved["phase"] == phase:
            oracle.reset(seeds)  # then the saved state over it (model, optimizer, position)
            oracle.load_state_dict(saved["oracle"])
            state, start = saved["mixer_state"], saved["step"]
            record.restore(saved["record"])
            self.saved_at = start
            if self.log is not None:
                self.log.drop_from(start)
        else:
            start, state = 0, mixer.init(self.k, seed=seeds)
            if signal.design is not None:
                state = self._sweep(mixer, signal, state, record)
                start = self.sweep_steps
            oracle.reset(seeds)
        if signal.kind in ("batch", "alignment"):
            return record, self._stepped(mixer, signal, state, record, start, apply, score)
        if signal.kind == "learnparams":
            return record, self._learnparams(mixer, state, record, start)
        return record, self._rounds(mixer, signal, state, record, start)

    def _sweep(self, mixer: Mixer, signal: Signal, state: Any, record: _Record) -> Any:
        design = np.asarray(signal.design(self.k), dtype=np.float64)
        result = observe.sweep(
            self.oracle,
            self.seeds,
            design,
            steps=self.probe,
            learning_rate=self._rate(0),
            batch_size=self.batch_size,
        )
        _, state = mixer.update(state, result)
        record.span(0, self.sweep_steps, design.mean(axis=0), np.zeros((self.r, self.k)))
        record.other_examples += self.sweep_steps * self.batch_size
        return state

    # ------------------------------------------------------------ segments
    def _rate(self, t: int) -> float:
        return learning_rate_at(self.learning_rate, self.schedule, t, self.steps)

    def _stepped(self, mixer, signal, state, record: _Record, start, apply, score):
        """Steps the driver takes itself: the batch signal, and alignment rounds."""
        batch_signal = signal.kind == "batch"
        mixing = Mixing(
            mixer,
            self.oracle,
            seeds=self.seeds,
            batch_size=self.batch_size,
            apply=apply,
            score=score if batch_signal else "loss",  # alignment: train on the plain loss
            reduce=self.reduce,
            stream=self.stream,
            shard=self.shard,
        )
        record.batch_sizes[:] = self.batch_size * (self.k if apply == "reweight" else 1)
        record_losses = self.record_losses
        target = "target" if "target_set" in mixer.requires else "generalization"
        aligned = np.zeros((self.r, self.k))
        rec_every, steps, log, checkpoint = record.every, self.steps, self.log, self.checkpoint
        bar = self._bar(start)
        for t in range(start, steps):
            if not batch_signal and t % self.every == 0:
                aligned = observe.alignment_scores(self.oracle, target)
                _, state = mixer.update(state, aligned)
            if log is not None:
                tick, tokens = time.perf_counter(), self._tokens()
            try:
                out = mixing.step(state, t, self._rate(t), batch_signal)
            except FloatingPointError as err:
                raise TrainingDiverged(f"step {t}: {err}. {self._last_good()}") from err
            state = out.state
            record.weight_sum += out.weights
            record.task_counts += out.counts
            if t % rec_every == 0:
                i = t // rec_every
                record.weights[i] = out.weights
                record.scores[i] = out.scores if batch_signal else aligned
                if record_losses:
                    np.add.reduce(out.losses, axis=1, out=record.loss_sums[i])
            if log is not None and (t % self.log_every == 0 or t + 1 == steps):
                self._log(t, out, time.perf_counter() - tick, tokens)
            if checkpoint is not None and ((t + 1) % self.checkpoint_every == 0 or t + 1 == steps):
                self._save(state, record, t + 1)
            if bar is not None:
                bar.update()
            if self.on_step is not None:
                self.on_step(t)
        if bar is not None:
            bar.close()
        return state

    def _rounds(self, mixer, signal, state, record: _Record, start: int):
        """Rounds the oracle trains itself: validation rounds, or the sweep's weights."""
        first = self.sweep_steps
        rounds = self.rounds if signal.kind == "validation" else 1
        length = (self.steps - first) // rounds  # >= 1 (check_horizon)
        for i in range(rounds):
            begin = first + i * length
            end = begin + length if i < rounds - 1 else self.steps
            if end <= start:  # done before a resume
                continue
            if signal.kind == "validation":
                scores = np.asarray(self.oracle.evaluate_groups(mixer.score), dtype=np.float64)
                weights, state = mixer.update(state, scores)
            else:
                scores, weights = np.zeros((self.r, self.k)), mixer.weights(state)
            self._oracle_trains(weights, begin, end, record, scores)
            self._save_round(state, record, end)
        return state

    def _learnparams(self, mixer, state, record: _Record, start: int):
        """Aioli: per round, LearnParams (1/share of the round), then the rest on α."""
        m, sweeps = self.k, state.sweeps
        per_round = self.steps // self.rounds  # >= sweeps·m (check_horizon)
        learn = max(1, per_round // (self.share * sweeps * m))
        uniform = np.full((self.r, m), 1.0 / m)  # the LearnParams mixtures, on average
        for i in range(self.rounds):
            begin, end = i * per_round, (i + 1) * per_round
            if end <= start:
                continue
            weights, state, A = observe.aioli_round(
                mixer,
                state,
                self.oracle,
                steps=learn,
                learning_rate=self._rate(begin),
                batch_size=self.batch_size,
            )
            gains = A.sum(axis=-2)
            measured = begin + learn * sweeps * m
            record.span(begin, measured - begin, uniform, gains)
            record.other_examples += (measured - begin) * self.batch_size
            self._oracle_trains(weights, measured, end, record, gains)
            self._save_round(state, record, end)
        end = self.rounds * per_round
        if end < self.steps:
            self._oracle_trains(mixer.weights(state), end, self.steps, record, record.scores[-1])
            self._save_round(state, record, self.steps)
        return state

    def _oracle_trains(self, weights, begin: int, end: int, record: _Record, scores) -> None:
        """Steps ``begin`` … ``end − 1``, taken by the oracle itself on ``weights``."""
        if end <= begin:
            return
        self.oracle.train_on_mixture(
            weights, end - begin, learning_rate=self._rate(begin), batch_size=self.batch_size
        )
        record.span(begin, end - begin, weights, scores)
        record.other_examples += (end - begin) * self.batch_size

    # ------------------------------------------------------------ duties
    def _save_round(self, state, record: _Record, step: int) -> None:
        if self.checkpoint is not None:
            self._save(state, record, step)

    def _save(self, state, record: _Record, step: int) -> None:
        """Save through the checkpoint; a state it refuses (non-finite) is a divergence."""
        saved = {
            "phase": self.phase,
            "step": step,
            "oracle": self.oracle.state_dict(),
            "mixer_state": state,
            "record": record.state(),
        }
        if self.phase == "final":
            saved["proxy"] = self.proxy
        try:
            self.checkpoint.save(saved)
        except FloatingPointError as err:  # the message names the last good checkpoint
            raise TrainingDiverged(f"step {step}: {err}") from err
        self.saved_at = step

    def _last_good(self) -> str:
        if self.checkpoint is None:
            return "No checkpoint was requested"
        if self.saved_at is None:
            return f"Last good checkpoint: none was saved yet ({self.checkpoint})"
        return f"Last good checkpoint: {self.checkpoint} (step {self.saved_at})"

    def _tokens(self) -> tuple[int, int | None]:
        """(tokens seen, tokens computed — fewer when shared prompts run once — or None)."""
        if not self.metrics:
            return 0, None
        return self.oracle.tokens_seen, getattr(self.oracle, "tokens_computed", None)

    def _log(self, t: int, out: StepResult, seconds: float, tokens_before) -> None:
        names = self.oracle.task_names
        record: dict[str, Any] = {"step": t, "lr": self._rate(t), "seconds": seconds}
        record["loss"] = float(out.losses.mean())
        if self.metrics:
            (seen, computed), (seen_before, computed_before) = self._tokens(), tokens_before
            record["tokens"] = seen - seen_before
            record["tokens_per_s"] = record["tokens"] / seconds if seconds > 0 else 0.0
            if computed is not None:  # what the FLOPs were spent on (MFU)
                done = computed - computed_before
                record["computed_tokens_per_s"] = done / seconds if seconds > 0 else 0.0
        record.update({f"weight/{n}": float(w) for n, w in zip(names, out.weights[0])})
        record.update({f"score/{n}": float(s) for n, s in zip(names, out.scores[0])})
        if self.metrics:
            record.update(self.oracle.last_metrics)
        self.log.write(record)

    def _bar(self, start: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        label = self.progress if isinstance(self.progress, str) else self.mixer.name
        return tqdm(initial=start, total=self.steps, desc=label, mininterval=0.5, leave=False)


def _frozen(mixer: Mixer, weights: np.ndarray) -> Mixer:
    """A static mixer playing each replicate's ``weights`` (R, k) (DoReMi's final model)."""
    return static_weights(lambda k: weights, "loss", "resample", mixer.name)
