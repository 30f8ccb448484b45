"""The training segments of :func:`amasim.driver.run`: one small function per signal kind.

A *phase* trains one model from its start (or from a checkpoint of the same phase) under
one :class:`~amasim.runspec.RunSpec`.  What it does between steps depends on the signal
the mixer observes (:mod:`amasim.observe`):

==================  =========================================================================
``"batch"``         :func:`batch_steps`: every step through :class:`~amasim.mixing.Mixing`
``"alignment"``     :func:`alignment_steps`: every ``signal.every`` steps an update on the
                    gradient alignments, then steps on α without a batch update
``"validation"``    :func:`validation_rounds`: ``rounds`` rounds; an update on every group's
                    validation score, then the round's steps on the new weights
``"learnparams"``   :func:`learnparams_rounds`: Aioli's rounds, LearnParams (1/``share`` of
                    the round), then the rest of the round on the new weights
``"sweep"``         :func:`sweep_steps`: the weights of the sweep, for every step
==================  =========================================================================

A signal with a ``design`` first runs its sweep from the start model (1/``share`` of the
steps, counted in the budget).  Every step a round protocol takes on fixed weights goes
through :class:`~amasim.mixing.Mixing` too (:class:`MixtureSteps`), so it is drawn, sharded
over data-parallel ranks and checkpointed like a training step.  DoReMi's proxy run is a
wrapper around a phase (:func:`train_with_proxy`), not a branch inside one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from amasim import observe, prng
from amasim.capabilities import capabilities_of, check_mixture, check_steps
from amasim.mixers import Mixer, Signal, StaticState, static_weights
from amasim.mixing import Mixing, StepResult
from amasim.runspec import RunSpec

__all__ = [
    "TrainingDiverged",
    "Duties",
    "Record",
    "MixtureSteps",
    "Phase",
    "train_phase",
    "train_with_proxy",
    "SEGMENTS",
]


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the message names the step and the last good checkpoint."""


class Duties(NamedTuple):
    """What a run does besides training: save (``checkpoint``), log (``log``), combine the
    ranks' scores (``reduce``), call back after each step (``on_step``)."""

    checkpoint: Any = None
    log: Any = None
    reduce: Callable | None = None
    on_step: Callable[[int], None] | None = None


class Record:
    """The trajectories of one phase, and what it spent."""

    def __init__(self, steps: int, record_every: int, r: int, k: int) -> None:
        self.every = record_every
        self.steps = np.arange(0, steps, record_every)
        self.weights = np.zeros((len(self.steps), r, k))
        self.scores = np.zeros_like(self.weights)
        self.loss_sums = np.full((len(self.steps), r), np.nan)  # Σ losses of the batch
        self.batch_sizes = np.ones(len(self.steps))  # examples of that batch
        self.weight_sum = np.zeros((r, k))
        self.task_counts = np.zeros((r, k), dtype=np.int64)  # drawn by the driver
        self.other_examples = 0  # drawn in rounds, sweeps and LearnParams

    def span(self, start: int, count: int, weights: np.ndarray, scores: np.ndarray) -> None:
        """Steps start … start + count − 1, trained on fixed ``weights``."""
        first, last = -(-start // self.every), -(-(start + count) // self.every)
        self.weights[first:last] = weights
        self.scores[first:last] = scores
        self.weight_sum += count * weights

    def step(self, t: int, out: StepResult, scores: np.ndarray, with_losses: bool) -> None:
        """Step ``t`` taken by :class:`~amasim.mixing.Mixing` (``scores``: what the mixer
        last acted on)."""
        self.weight_sum += out.weights
        self.task_counts += out.counts
        if t % self.every == 0:
            i = t // self.every
            self.weights[i] = out.weights
            self.scores[i] = scores
            if with_losses:
                self.loss_sums[i] = out.loss_sum
                self.batch_sizes[i] = out.loss_count[0]

    @property
    def examples(self) -> np.ndarray:
        return self.task_counts.sum(axis=1) + self.other_examples

    def losses(self) -> np.ndarray:
        """(M, R) mean loss of each recorded batch; NaN where a round took the step."""
        return self.loss_sums / self.batch_sizes[:, None]

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "every"}

    def restore(self, saved: dict[str, Any]) -> None:
        for name, value in saved.items():
            setattr(self, name, value)


class MixtureSteps:
    """The oracle as the round protocols drive it: ``train_on_mixture`` takes its steps
    through :class:`~amasim.mixing.Mixing` (one batch of ``batch_size`` drawn from the
    mixture per step, the mean loss; shared over data-parallel ranks), the draws from the
    mixture stream (:data:`amasim.prng.MIXTURE_STREAM`) at a position that ``reset`` zeroes
    and checkpoints save.  Passed to :mod:`amasim.observe` in place of the oracle."""

    def __init__(self, oracle: Any, spec: RunSpec) -> None:
        self.oracle, self.task_names = oracle, oracle.task_names
        self.seeds, self.shard = list(spec.seeds), spec.shard
        self.stream = prng.MIXTURE_STREAM + (spec.stream - prng.LOOP_STREAM)
        self.position = 0
        self._mixer = static_weights(lambda k: np.full(k, 1.0 / k), "loss", "resample", "mix")
        self._mixing: dict[int, Mixing] = {}

    def reset(self, seeds: Any) -> None:
        """A fresh copy of the start model, the mixture draws from their first position."""
        self.oracle.reset(seeds)
        self.position = 0

    def evaluate_groups(self, score: str = "loss") -> np.ndarray:
        return self.oracle.evaluate_groups(score)

    def train_on_mixture(
        self, mixture: Any, steps: int, *, learning_rate: float, batch_size: int = 8
    ) -> None:
        """``steps`` steps on batches of ``batch_size`` drawn from ``mixture`` (R, k)."""
        steps = check_steps(steps)
        mix = check_mixture(mixture, len(self.seeds), len(self.task_names))
        if batch_size not in self._mixing:
            self._mixing[batch_size] = Mixing(
                self._mixer,
                self.oracle,
                seeds=self.seeds,
                batch_size=batch_size,
                apply="resample",
                score="loss",
                stream=self.stream,
                shard=self.shard,
            )
        mixing, state = self._mixing[batch_size], StaticState(mix)
        for t in range(self.position, self.position + steps):
            mixing.step(state, t, learning_rate, observe=False)
        self.position += steps


class Phase:
    """One phase of a run (``"train"``, or DoReMi's ``"proxy"`` and ``"final"``): the spec,
    the oracle, the duties, the record, and where the last checkpoint was saved."""

    def __init__(self, spec: RunSpec, oracle: Any, duties: Duties, name: str) -> None:
        self.spec, self.oracle, self.duties, self.name = spec, oracle, duties, name
        self.k = len(oracle.task_names)
        self.r = len(spec.seeds)
        self.record = Record(spec.steps, spec.record_every, self.r, self.k)
        self.rounds = MixtureSteps(oracle, spec)
        self.metrics = "training_metrics" in capabilities_of(oracle)
        self.saved_at: int | None = None
        self.extra: dict[str, Any] = {}  # saved beside the state (DoReMi's proxy)
        self.sweep_steps, self.probe = 0, 0
        if spec.signal.design is not None:
            n = len(spec.signal.design(self.k))
            self.probe = max(1, spec.steps // spec.share // n)
            self.sweep_steps = n * self.probe

    @property
    def global_batch(self) -> int:
        return self.spec.batch_size * self.spec.world

    # ----------------------------------------------------------------- start
    def begin(self, mixer: Mixer, saved: dict[str, Any] | None) -> tuple[Any, int]:
        """(mixer state, first step): from ``saved`` when it is this phase's checkpoint,
        else from scratch (the sweep of a designed signal first)."""
        oracle, seeds = self.oracle, list(self.spec.seeds)
        if saved is not None and saved["phase"] == self.name:
            oracle.reset(seeds)  # then the saved state over it (model, optimizer, position)
            oracle.load_state_dict(saved["oracle"])
            self.record.restore(saved["record"])
            self.rounds.position = int(saved.get("mixture_draws", 0))
            self.saved_at = saved["step"]
            if self.duties.log is not None:
                self.duties.log.drop_from(saved["step"])
            return saved["mixer_state"], saved["step"]
        state = mixer.init(self.k, seed=seeds)
        if self.spec.signal.design is not None:
            state = self._sweep(mixer, state)
        self.rounds.reset(seeds)
        return state, self.sweep_steps

    def _sweep(self, mixer: Mixer, state: Any) -> Any:
        design = np.asarray(self.spec.signal.design(self.k), dtype=np.float64)
        result = observe.sweep(
            self.rounds,
            self.spec.seeds,
            design,
            steps=self.probe,
            learning_rate=self.spec.rate(0),
            batch_size=self.spec.batch_size,
        )
        _, state = mixer.update(state, result)
        self.record.span(0, self.sweep_steps, design.mean(axis=0), np.zeros((self.r, self.k)))
        self.record.other_examples += self.sweep_steps * self.global_batch
        return state

    # ----------------------------------------------------------------- steps
    def mixing(self, mixer: Mixer, score: str) -> Mixing:
        spec = self.spec
        return Mixing(
            mixer,
            self.oracle,
            seeds=spec.seeds,
            batch_size=spec.batch_size,
            apply=spec.apply,
            score=score,
            reduce=self.duties.reduce,
            stream=spec.stream,
            shard=spec.shard,
        )

    def step(self, mixing: Mixing, state: Any, t: int, observe: bool, scores=None) -> Any:
        """Training step ``t`` and its duties (record, log, checkpoint, callback)."""
        spec, log = self.spec, self.duties.log
        if log is not None:
            tick, tokens = time.perf_counter(), self._tokens()
        try:
            out = mixing.step(state, t, spec.rate(t), observe)
        except FloatingPointError as err:
            raise TrainingDiverged(f"step {t}: {err}. {self._last_good()}") from err
        self.record.step(t, out, out.scores if scores is None else scores, spec.record_losses)
        if log is not None and (t % spec.log_every == 0 or t + 1 == spec.steps):
            self._log(t, out, time.perf_counter() - tick, tokens)
        if (t + 1) % spec.checkpoint_every == 0 or t + 1 == spec.steps:
            self.save(out.state, t + 1)
        if self.duties.on_step is not None:
            self.duties.on_step(t)
        return out.state

    def train_on(self, weights: np.ndarray, begin: int, end: int, scores: np.ndarray) -> None:
        """Steps ``begin`` … ``end − 1`` on fixed ``weights`` (a round's training)."""
        if end <= begin:
            return
        self.rounds.train_on_mixture(
            weights,
            end - begin,
            learning_rate=self.spec.rate(begin),
            batch_size=self.spec.batch_size,
        )
        self.record.span(begin, end - begin, weights, scores)
        self.record.other_examples += (end - begin) * self.global_batch

    # ---------------------------------------------------------------- duties
    def save(self, state: Any, step: int) -> None:
        """Save through the checkpoint; a state it refuses (non-finite) is a divergence."""
        if self.duties.checkpoint is None:
            return
        saved = {
            "phase": self.name,
            "step": step,
            "oracle": self.oracle.state_dict(),
            "mixer_state": state,
            "record": self.record.state(),
            "mixture_draws": self.rounds.position,
            **self.extra,
        }
        try:
            self.duties.checkpoint.save(saved)
        except FloatingPointError as err:  # the message names the last good checkpoint
            raise TrainingDiverged(f"step {step}: {err}") from err
        self.saved_at = step

    def _last_good(self) -> str:
        checkpoint = self.duties.checkpoint
        if checkpoint is None:
            return "No checkpoint was requested"
        if self.saved_at is None:
            return f"Last good checkpoint: none was saved yet ({checkpoint})"
        return f"Last good checkpoint: {checkpoint} (step {self.saved_at})"

    def _tokens(self) -> tuple[int, int | None]:
        """(tokens seen, tokens computed — fewer when shared prompts run once — or None)."""
        if not self.metrics:
            return 0, None
        return self.oracle.tokens_seen, getattr(self.oracle, "tokens_computed", None)

    def _log(self, t: int, out: StepResult, seconds: float, tokens_before) -> None:
        names = self.oracle.task_names
        record: dict[str, Any] = {"step": t, "lr": self.spec.rate(t), "seconds": seconds}
        record["loss"] = float(out.loss_sum.sum() / out.loss_count.sum())
        if self.metrics:
            (seen, computed), (seen_before, computed_before) = self._tokens(), tokens_before
            record["tokens"] = seen - seen_before
            record["tokens_per_s"] = record["tokens"] / seconds if seconds > 0 else 0.0
            record["tokens_seen"] = seen  # since the phase began (its last record: the total)
            if computed is not None:  # what the FLOPs were spent on (MFU)
                done = computed - computed_before
                record["computed_tokens_per_s"] = done / seconds if seconds > 0 else 0.0
                record["tokens_computed"] = computed
        record.update({f"weight/{n}": float(w) for n, w in zip(names, out.weights[0])})
        record.update({f"score/{n}": float(s) for n, s in zip(names, out.scores[0])})
        if self.metrics:
            record.update(self.oracle.last_metrics)
        self.duties.log.write(record)

    def bar(self, start: int):
        """A progress bar from ``start`` (``None`` unless the spec asks for one)."""
        if not self.spec.progress:
            return None
        from tqdm.auto import tqdm

        label = self.spec.progress if isinstance(self.spec.progress, str) else self.spec.mixer.name
        return tqdm(initial=start, total=self.spec.steps, desc=label, mininterval=0.5, leave=False)


# ------------------------------------------------------------------------- segments
def _steps(phase: Phase, start: int, body: Callable[[int], None]) -> None:
    bar = phase.bar(start)
    try:
        for t in range(start, phase.spec.steps):
            body(t)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()


def batch_steps(phase: Phase, mixer: Mixer, state: Any, start: int) -> Any:
    """The batch signal: every step draws, scores, updates the mixer and trains."""
    mixing = phase.mixing(mixer, phase.spec.score)
    box = [state]

    def body(t: int) -> None:
        box[0] = phase.step(mixing, box[0], t, observe=True)

    _steps(phase, start, body)
    return box[0]


def alignment_steps(phase: Phase, mixer: Mixer, state: Any, start: int) -> Any:
    """DoGE, DGA: every ``signal.every`` steps an update on the gradient alignments
    (:func:`amasim.observe.alignment_scores`), then steps on the plain loss."""
    mixing = phase.mixing(mixer, "loss")
    target = "target" if "target_set" in mixer.requires else "generalization"
    box = [state, np.zeros((phase.r, phase.k))]

    def body(t: int) -> None:
        if t % phase.spec.every == 0:
            box[1] = observe.alignment_scores(phase.oracle, target)
            _, box[0] = mixer.update(box[0], box[1])
        box[0] = phase.step(mixing, box[0], t, observe=False, scores=box[1])

    _steps(phase, start, body)
    return box[0]


def validation_rounds(phase: Phase, mixer: Mixer, state: Any, start: int) -> Any:
    """Skill-It, DML: per round an update on every group's validation score, then the
    round's steps on the new weights."""
    first, rounds, steps = phase.sweep_steps, phase.spec.rounds, phase.spec.steps
    length = (steps - first) // rounds  # >= 1 (check_horizon)
    for i in range(rounds):
        begin = first + i * length
        end = begin + length if i < rounds - 1 else steps
        if end <= start:  # done before a resume
            continue
        scores = np.asarray(phase.oracle.evaluate_groups(mixer.score), dtype=np.float64)
        weights, state = mixer.update(state, scores)
        phase.train_on(weights, begin, end, scores)
        phase.save(state, end)
    return state


def sweep_steps(phase: Phase, mixer: Mixer, state: Any, start: int) -> Any:
    """A sweep signal: the weights the sweep chose, for every step after it."""
    if phase.spec.steps > start:
        scores = np.zeros((phase.r, phase.k))
        phase.train_on(mixer.weights(state), phase.sweep_steps, phase.spec.steps, scores)
        phase.save(state, phase.spec.steps)
    return state


def learnparams_rounds(phase: Phase, mixer: Mixer, state: Any, start: int) -> Any:
    """Aioli: per round, LearnParams (1/share of the round), then the rest on α."""
    spec, m, sweeps = phase.spec, phase.k, state.sweeps
    per_round = spec.steps // spec.rounds  # >= sweeps·m (check_horizon)
    learn = max(1, per_round // (spec.share * sweeps * m))
    uniform = np.full((phase.r, m), 1.0 / m)  # the LearnParams mixtures, on average
    for i in range(spec.rounds):
        begin, end = i * per_round, (i + 1) * per_round
        if end <= start:
            continue
        weights, state, A = observe.aioli_round(
            mixer,
            state,
            phase.rounds,
            steps=learn,
            learning_rate=spec.rate(begin),
            batch_size=spec.batch_size,
        )
        gains = A.sum(axis=-2)
        measured = begin + learn * sweeps * m
        phase.record.span(begin, measured - begin, uniform, gains)
        phase.record.other_examples += (measured - begin) * phase.global_batch
        phase.train_on(weights, measured, end, gains)
        phase.save(state, end)
    end = spec.rounds * per_round
    if end < spec.steps:
        last_round = phase.record.scores[(end - 1) // phase.record.every]
        phase.train_on(mixer.weights(state), end, spec.steps, last_round)
        phase.save(state, spec.steps)
    return state


#: the segment that trains each signal kind
SEGMENTS: dict[str, Callable[[Phase, Mixer, Any, int], Any]] = {
    "batch": batch_steps,
    "alignment": alignment_steps,
    "validation": validation_rounds,
    "learnparams": learnparams_rounds,
    "sweep": sweep_steps,
}


def train_phase(
    spec: RunSpec, oracle: Any, duties: Duties, name: str, saved: dict | None, **extra: Any
) -> tuple[Record, Any]:
    """Train one model under ``spec`` (from ``saved`` when it is this phase's); its record
    and the mixer's final state.  ``extra`` is saved with every checkpoint."""
    phase = Phase(spec, oracle, duties, name)
    phase.extra = extra
    state, start = phase.begin(spec.mixer, saved)
    state = SEGMENTS[spec.signal.kind](phase, spec.mixer, state, start)
    return phase.record, state


def train_with_proxy(
    spec: RunSpec, oracle: Any, duties: Duties, saved: dict | None
) -> tuple[RunSpec, Record, Any, dict[str, Any]]:
    """DoReMi (``signal.retrain``): a proxy run under ``spec``, then a fresh model trained by
    resampling from the proxy's average weights, on as many examples as the proxy drew
    (``steps`` × k for a reweighting proxy).  Returns the final model's spec, record and
    state, and ``{"proxy": ...}`` (its examples count as extra gradient evaluations: in
    DoReMi's paper the proxy is a separate, smaller model)."""
    if saved is not None and saved["phase"] == "final":
        proxy = saved["proxy"]
    else:
        record, _ = train_phase(spec, oracle, duties, "proxy", saved)
        proxy = {
            "steps": spec.steps,
            "average_weights": record.weight_sum / spec.steps,
            "examples": record.examples,
            "weights": record.weights,
        }
        saved = None
    steps = int(proxy["examples"].max()) // (spec.batch_size * spec.world)  # global counts
    average = proxy["average_weights"]
    final = spec.replace(
        mixer=static_weights(lambda k: average, "loss", "resample", spec.mixer.name),
        signal=Signal("batch"),
        apply="resample",
        score="loss",
        steps=steps,
        record_every=spec.record_every if spec.record_every_given else max(1, steps // 1000),
    )
    record, state = train_phase(final, oracle, duties, "final", saved, proxy=proxy)
    return final, record, state, {"proxy": proxy}
