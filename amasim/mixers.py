"""Mixers: how per-task scores move the task weights α on the simplex (optax style).

A mixer is a :class:`Mixer` of pure functions over a small ``NamedTuple`` state::

    state = mixer.init(num_tasks, seed=0)             # seed=[0, 1, ...] -> batched state
    alpha = mixer.weights(state)                      # weights for the next batch
    alpha, state = mixer.update(state, scores, counts=None)

``scores`` has shape ``(..., k)``: the mean score of each task over the examples just
seen.  ``counts`` (same shape, integers) says how many examples of each task the batch
held; ``None`` means full information (every task observed).  Every array may carry
leading replicate axes: R runs update in one array computation.

Besides the pure functions a mixer carries two defaults a training loop reads:
``score`` (``"loss"``, ``"excess"`` or ``"clipped"``, see :mod:`amasim.scores`) and
``apply`` (``"reweight"``: every task in every batch, loss weighted by α;
``"resample"``: the batch is drawn from α; ``"importance"``: the batch is drawn from a
fixed distribution q — the state's ``sampling`` field — and each example's loss is weighted
by α/(B·q), as GR-DPO does, :mod:`amasim.grdpo`).  The named methods are compositions:

==============  ==========  ====================================  ==========
factory         score       weights                               apply
==============  ==========  ====================================  ==========
``uniform``     loss        ∝ dataset sizes (static)               resample
``stratified``  loss        1/k (static)                           resample
``group_dro``   loss        exponentiated gradient (Sagawa Alg. 1) reweight
``ama_r``       clipped     exponentiated gradient                 reweight
``ama_s``       clipped     EXP3: importance-weighted EG, smoothed resample
==============  ==========  ====================================  ==========

Log weights are renormalised every step, so they stay in [−1e300, 0] and never overflow,
whatever the number of updates.

>>> import numpy as np
>>> mixer = ama_s(step_size=0.5, smoothing=0.1)
>>> state = mixer.init(3, seed=0)
>>> alpha, state = mixer.update(state, np.array([1.0, 0.0, 0.0]), counts=np.array([4, 2, 2]))
>>> bool(alpha[0] > alpha[1]), bool(abs(alpha.sum() - 1) < 1e-12)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim.scores import check_score
from amasim.validate import check_count, check_object, check_seeds

__all__ = [
    "Mixer",
    "StaticState",
    "EGState",
    "AveragedState",
    "uniform",
    "stratified",
    "group_dro",
    "ama_r",
    "ama_s",
    "exponentiated_gradient",
    "averaged",
    "hold_last_scores",
    "doremi",
    "DOREMI_REFERENCES",
    "odm",
    "odm_exploration",
    "Signal",
    "Sweep",
    "SIGNAL_REQUIRES",
    "HeldState",
    "ODMState",
    "eg_step",
    "smooth",
    "importance_weighted",
    "check_scores",
    "check_counts",
    "check_positive",
    "check_apply",
    "replicate_shape",
    "static_weights",
    "played_weights",
    "LOG_FLOOR",
]

APPLY_MODES = ("reweight", "resample", "importance")
LOG_FLOOR = -1e300  # far below any reachable value; keeps sums of logs finite

#: What a mixer may observe (:class:`Signal`), and the oracle capabilities each needs.
SIGNAL_REQUIRES: dict[str, tuple[str, ...]] = {
    "batch": (),
    "validation": ("group_validation",),
    "alignment": ("task_gradients",),
    "learnparams": ("group_validation",),
    "sweep": ("group_validation",),
}


class Signal(NamedTuple):
    """What a mixer observes and when; the driver (:func:`amasim.driver.run`) reads it.

    ``kind``:

    ===============  =====================================================================
    ``"batch"``      the per-task scores of every training batch (AMA, Group DRO, DoReMi,
                     ODM, the static baselines) — the oracle's base protocol suffices
    ``"validation"`` every group's validation score once a round (``evaluate_groups``),
                     then a round of training on the new weights (Skill-It; the rounds
                     protocol of any batch mixer)
    ``"alignment"``  per-task gradient alignment every ``every`` steps: with the
                     ``"target_set"`` capability in ``requires`` ⟨∇L_i, ∇L_target⟩ (DGA),
                     else Σ_j ⟨∇L_i, ∇L_j⟩ (DoGE)
    ``"learnparams"`` Aioli's LearnParams measurement at the start of every round
    ``"sweep"``      nothing during training: only the sweep of ``design`` before it (DML)
    ===============  =====================================================================

    ``design`` (m → (n, m) mixtures), when set, makes the driver run a *sweep* before
    training: from the start model, ``1/share`` of the steps split over n short runs,
    one per mixture, each followed by every group's validation loss; the mixer's first
    update receives them as a :class:`Sweep` (Skill-It's single-group runs, DML's sweep).
    ``share`` also sets Aioli's LearnParams: 1/share of each round.
    ``retrain``: the method's output is the average of its weights, on which a fresh model
    is trained afterwards (DoReMi's proxy → main model).
    """

    kind: str = "batch"
    every: int = 1
    design: Callable[[int], np.ndarray] | None = None
    share: int = 4
    retrain: bool = False


class Sweep(NamedTuple):
    """What the sweep of a :class:`Signal` with a ``design`` measured, fed to ``update``.

    ``design`` (n, m) the mixtures; ``start`` (R, m) every group's validation loss at the
    start model; ``after`` (R, n, m) the same after training on mixture j from the start.
    """

    design: np.ndarray
    start: np.ndarray
    after: np.ndarray


class Mixer(NamedTuple):
    """A mixing method: pure ``init``/``update``/``weights`` plus loop defaults.

    ``requires`` names the optional oracle capabilities (:mod:`amasim.capabilities`)
    the method needs beyond the base protocol, e.g. ``("task_gradients",)``; every
    entry point that trains refuses an oracle that lacks one, with one message
    (:func:`amasim.capabilities.require_capabilities`).  ``signal`` says what the mixer
    observes (:class:`Signal`; default: the scores of every training batch).
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[np.ndarray, Any]]
    weights: Callable[[Any], np.ndarray]
    score: str
    apply: str
    name: str
    requires: tuple[str, ...] = ()
    signal: Signal = Signal()


class StaticState(NamedTuple):
    """Fixed weights, shape ``(..., k)``."""

    weights: np.ndarray


class EGState(NamedTuple):
    """An exponentiated-gradient player: normalised log weights and the weights played.

    ``weights`` is ``smooth(softmax(log_weights))``, kept so the hot path (importance
    weighting, the next batch) does not recompute it.  Shapes ``(..., k)``.
    """

    log_weights: np.ndarray
    weights: np.ndarray


class HeldState(NamedTuple):
    """Inner state plus the last score seen of every task."""

    inner: Any
    last_scores: np.ndarray


class ODMState(NamedTuple):
    """Online data mixing: smoothed importance-weighted rewards R̂, weights π_t, step t."""

    rewards: np.ndarray
    weights: np.ndarray
    step: int


class AveragedState(NamedTuple):
    """Inner state plus the running sum of the weights it returned."""

    inner: Any
    weight_sum: np.ndarray
    num_updates: int


# --------------------------------------------------------------------------- checks
def check_positive(name: str, value: float) -> float:
    """``value`` as a float if it is a finite real number > 0, else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0")
    return float(value)


def replicate_shape(num_tasks: int, seed: int | Sequence[int]) -> tuple[int, ...]:
    """The replicate axes of a state: ``()`` for an int seed, ``(R,)`` for R seeds."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)):
        raise TypeError(f"num_tasks must be an int, got {type(num_tasks).__name__}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks={num_tasks} must be >= 1 (one weight per task)")
    seeds = check_seeds(seed)
    is_int = isinstance(seed, (int, np.integer))  # one replicate, no replicate axis
    return () if is_int else (len(seeds),)


def check_scores(
    scores: Any, num_tasks: int, name: str = "scores", like: np.ndarray | None = None
) -> np.ndarray:
    """``scores`` as a float array of shape ``(..., num_tasks)`` with finite entries.

    With ``like`` (a state's array), the whole shape must match: one score per task for
    every replicate the state holds.
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != num_tasks:
        raise ValueError(
            f"{name} has shape {arr.shape}: expected (..., {num_tasks}), one entry per task"
        )
    if like is not None and arr.shape != like.shape:
        raise ValueError(
            f"{name} has shape {arr.shape} but the state holds {like.shape}: pass one score "
            "per task for every replicate"
        )
    if not np.logical_and.reduce(np.isfinite(arr), axis=None):  # = .all(), less overhead
        raise ValueError(
            f"{name} contains NaN or infinite values: {arr.tolist()!r:.200}; pass 0 for a "
            "task with no example in the batch and say so through counts"
        )
    return arr


def check_counts(counts: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``counts`` as whole numbers >= 0 of ``shape``: examples of each task in a batch."""
    arr = np.asarray(counts)
    if arr.shape != shape:
        raise ValueError(f"counts has shape {arr.shape}: expected {shape}, the shape of scores")
    if arr.dtype.kind not in "iu":
        if (
            arr.dtype.kind != "f"
            or not np.isfinite(arr).all()
            or not np.array_equal(arr, np.round(arr))
        ):
            raise TypeError("counts must be whole numbers of examples per task")
    if np.minimum.reduce(arr, axis=None) < 0:
        raise ValueError("counts must be >= 0: the number of examples of each task in the batch")
    return arr


def _score_array(scores: Any, like: np.ndarray) -> np.ndarray:
    """``scores`` as floats of the state's shape; finiteness is the caller's to test."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != like.shape:
        check_scores(arr, like.shape[-1], like=like)  # raises, naming the expected shape
    return arr


def _checked_gains(scores, counts, state, importance_weighting):
    """The gains of an update whose fast path met a non-finite value: validate the scores
    (NaN/inf raise), then repair the importance-weighted estimate (0/0, overflow)."""
    gains = check_scores(scores, state.log_weights.shape[-1], like=state.log_weights)
    if counts is None:
        return gains
    n = np.asarray(counts)
    if importance_weighting:
        return _importance_weighted(gains, n, state.weights)
    return np.where(n > 0, gains, 0.0)


# ----------------------------------------------------------------- building blocks
# Extreme but finite inputs may overflow on purpose in eg_step and importance_weighted
# (the results are then repaired); a mixer enters this np.errstate once per update.
_QUIET = {"over": "ignore", "divide": "ignore", "invalid": "ignore"}


def eg_step(
    log_weights: np.ndarray, gains: np.ndarray, step_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exponentiated-gradient ascent in log space: log α ← log α + η·g, renormalised.

    Returns the new normalised log weights and their softmax.  The gains are centred on
    their maximum first, so a common offset cancels exactly and every increment is ≤ 0
    (−inf at worst, for a weight that is then 0); log weights are floored at −1e300, so
    finite gains always give finite weights on the simplex, after any number of updates.
    """
    with np.errstate(**_QUIET):
        return _eg_step(log_weights, gains, step_size)


def _eg_step(log_weights, gains, step_size):
    # ufunc.reduce rather than the .max()/.sum() methods: same numbers, less call overhead
    # on the hot path (a mixer update is a few µs of work spread over ~15 numpy calls)
    z = log_weights + step_size * (gains - np.maximum.reduce(gains, axis=-1, keepdims=True))
    z = np.maximum(z - np.maximum.reduce(z, axis=-1, keepdims=True), LOG_FLOOR)
    e = np.exp(z)
    total = np.add.reduce(e, axis=-1, keepdims=True)
    return z - np.log(total), e / total


def smooth(weights: np.ndarray, smoothing: float) -> np.ndarray:
    """Mix with the uniform distribution: (1 − c)·α + c/k (every entry ≥ c/k)."""
    return (1.0 - smoothing) * weights + smoothing / weights.shape[-1]


def importance_weighted(scores: np.ndarray, counts: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Unbiased full-information estimate from a batch drawn from ``probs``: n_i/(B·p_i)·s_i.

    With counts ~ Multinomial(B, p), E[n_i/(B p_i) ê_i] = E_i (notes §4); B = 1 is EXP3's
    x/p for the drawn arm.
    """
    with np.errstate(**_QUIET):
        return _importance_weighted(scores, counts, probs)


def _importance_weighted(scores, counts, probs):
    estimate = _importance_estimate(scores, counts, probs)
    # One scalar test: the sum is finite iff every entry is, unless finite entries overflow
    # the sum, which only sends finite estimates through nan_to_num, which keeps them.
    if not math.isfinite(np.add.reduce(estimate, axis=None)):
        # an unsampled zero-probability task or an empty batch (0/0) gets 0; |s| near 1e308
        # saturates at ±1.8e308
        estimate = np.nan_to_num(np.where(counts > 0, estimate, 0.0))
    return estimate


def _importance_estimate(scores, counts, probs):
    """n_i/(B·p_i)·s_i as computed, before any repair of 0/0 or overflow."""
    return counts * scores / (np.add.reduce(counts, axis=-1, keepdims=True) * probs)


# ------------------------------------------------------------------------ mixers
def static_weights(
    weights_for: Callable[[int], np.ndarray], score: str, apply: str, name: str
) -> Mixer:
    """A mixer whose weights never move: ``weights_for(k)`` at init (uniform, DML, ...)."""

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> StaticState:
        shape = replicate_shape(num_tasks, seed)
        return StaticState(np.broadcast_to(weights_for(num_tasks), (*shape, num_tasks)).copy())

    def update(state: StaticState, scores: Any, counts: Any = None):
        arr = check_scores(scores, state.weights.shape[-1], like=state.weights)
        if counts is not None:
            check_counts(counts, arr.shape)
        return state.weights, state

    return Mixer(init, update, lambda state: state.weights, check_score(score), apply, name)


def uniform(sizes: Sequence[int], *, score: str = "loss", apply: str = "resample") -> Mixer:
    """Examples drawn uniformly from the union of the tasks: α_i ∝ |D_i| (notes §2)."""
    if isinstance(sizes, list | tuple):  # Python ints may exceed what numpy counts
        for size in sizes:
            if isinstance(size, int) and not isinstance(size, bool):
                check_count(size, "sizes")
    size_arr = np.asarray(sizes)
    if size_arr.ndim != 1 or size_arr.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D sequence of task sizes, got {sizes!r}")
    if not np.issubdtype(size_arr.dtype, np.integer):
        raise TypeError(f"sizes must be integers (examples per task), got {sizes!r}")
    if np.any(size_arr < 1):
        raise ValueError(f"sizes={size_arr.tolist()}: every task needs at least one example")
    check_apply(apply)

    def weights_for(num_tasks: int) -> np.ndarray:
        if num_tasks != size_arr.size:
            raise ValueError(
                f"uniform(sizes) got {size_arr.size} sizes but num_tasks={num_tasks}: "
                "pass one size per task"
            )
        return size_arr / size_arr.sum()

    return static_weights(weights_for, score, apply, "uniform")


def stratified(*, score: str = "loss", apply: str = "resample") -> Mixer:
    """Every task equally, whatever its size: α_i = 1/k (task-normalised, notes §2)."""
    check_apply(apply)
    return static_weights(lambda k: np.full(k, 1.0 / k), score, apply, "stratified")


def exponentiated_gradient(
    step_size: float,
    *,
    smoothing: float = 0.0,
    importance_weighting: bool = False,
    score: str = "clipped",
    apply: str = "reweight",
    name: str = "exponentiated-gradient",
) -> Mixer:
    """The EG/EXP3 family every adaptive AMA mixer is an instance of.

    ``update`` feeds the gains g to :func:`eg_step`; the weights are ``smooth(softmax)``.
    Gains: with ``counts`` and ``importance_weighting``, :func:`importance_weighted`
    (bandit feedback, EXP3); with ``counts`` otherwise, the scores of observed tasks (an
    unobserved task keeps its weight relative to the rest); with ``counts=None``, scores.
    """
    eta = check_positive("step_size", step_size)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.floating)):
        raise TypeError(f"smoothing must be a real number, got {type(smoothing).__name__}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing!r} must lie in [0, 1]")
    c = float(smoothing)
    check_score(score)
    check_apply(apply)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> EGState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        return EGState(np.full(shape, -np.log(num_tasks)), np.full(shape, 1.0 / num_tasks))

    def update(state: EGState, scores: Any, counts: Any = None):
        log_weights = state.log_weights
        gains = _score_array(scores, log_weights)
        with np.errstate(**_QUIET):
            if counts is not None:
                n = check_counts(counts, gains.shape)
                if importance_weighting:
                    gains = _importance_estimate(gains, n, state.weights)
                else:
                    gains = np.where(n > 0, check_scores(gains, gains.shape[-1]), 0.0)
            # One scalar test covers the scores' validation and the estimate's repair: the
            # sum is finite iff every gain is (a finite sum's overflow only sends finite
            # gains through the checked path, which keeps them).
            if not math.isfinite(np.add.reduce(gains, axis=None)):
                gains = _checked_gains(scores, counts, state, importance_weighting)
            log_weights, probs = _eg_step(log_weights, gains, eta)
        played = smooth(probs, c) if c > 0 else probs
        return played, EGState(log_weights, played)

    return Mixer(init, update, played_weights, score, apply, name)


def played_weights(state: EGState) -> np.ndarray:
    """The weights an EG-type state plays next (its ``weights`` field)."""
    return state.weights


def group_dro(step_size: float, *, score: str = "loss") -> Mixer:
    """Group DRO (Sagawa et al. 2019, Alg. 1): EG on the raw per-group losses, reweighting."""
    return exponentiated_gradient(step_size, score=score, apply="reweight", name="group-dro")


def ama_r(step_size: float, *, score: str = "clipped") -> Mixer:
    """AMA-R: EG on clipped excess losses, every task in every batch, loss weighted by α.

    ``score="excess"`` is the no-clipping ablation, ``score="loss"`` the raw-loss one.
    """
    return exponentiated_gradient(step_size, score=score, apply="reweight", name="ama-r")


def ama_s(step_size: float, smoothing: float, *, score: str = "clipped") -> Mixer:
    """AMA-S: EXP3 over tasks; the batch is drawn from α = (1 − c)·q + c/k (notes §4).

    ``smoothing`` is c ∈ (0, 1]; gains are importance weighted, n_i/(B·α_i)·ê_i.
    """
    if (
        not isinstance(smoothing, bool)
        and isinstance(smoothing, (int, float, np.integer, np.floating))
        and smoothing <= 0
    ):
        raise ValueError(
            f"smoothing={smoothing!r} must lie in (0, 1]: c > 0 keeps every task explored "
            "and bounds the importance weights by k/c"
        )
    return exponentiated_gradient(
        step_size,
        smoothing=smoothing,
        importance_weighting=True,
        score=score,
        apply="resample",
        name="ama-s",
    )


def averaged(mixer: Mixer) -> Mixer:
    """Return the running average of ``mixer``'s weights instead of its last weights."""
    check_object(mixer, Mixer, "mixer", "pass a mixer, e.g. amasim.mixers.ama_r(1.0)")

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> AveragedState:
        inner = mixer.init(num_tasks, seed)
        return AveragedState(inner, np.zeros_like(mixer.weights(inner)), 0)

    def weights(state: AveragedState) -> np.ndarray:
        if state.num_updates == 0:
            return mixer.weights(state.inner)
        return state.weight_sum / state.num_updates

    def update(state: AveragedState, scores: Any, counts: Any = None):
        w, inner = mixer.update(state.inner, scores, counts)
        new = AveragedState(inner, state.weight_sum + w, state.num_updates + 1)
        return weights(new), new

    name = f"averaged-{mixer.name}"
    return mixer._replace(init=init, update=update, weights=weights, name=name)


def hold_last_scores(mixer: Mixer) -> Mixer:
    """Feed ``mixer`` full information: a task absent from the batch keeps its last score.

    This is how DoReMi treats a domain missing from a batch (notes §5).
    """
    check_object(mixer, Mixer, "mixer", "pass a mixer, e.g. amasim.mixers.ama_r(1.0)")

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> HeldState:
        inner = mixer.init(num_tasks, seed)
        return HeldState(inner, np.zeros_like(mixer.weights(inner)))

    def update(state: HeldState, scores: Any, counts: Any = None):
        scores = check_scores(scores, state.last_scores.shape[-1])
        if counts is not None:
            n = check_counts(counts, scores.shape)
            scores = np.where(n > 0, scores, state.last_scores)
        w, inner = mixer.update(state.inner, scores, None)
        return w, HeldState(inner, scores)

    def weights(state: HeldState) -> np.ndarray:
        return mixer.weights(state.inner)

    return mixer._replace(init=init, update=update, weights=weights)


#: where DoReMi's excess is measured: its paper's one default-mixture reference, or AMA's
#: per-task specialists (a variant, registered as ``doremi-specialists``)
DOREMI_REFERENCES = ("default-mixture", "specialists")


def doremi(
    step_size: float = 1.0, smoothing: float = 1e-3, reference: str = "default-mixture"
) -> Mixer:
    """DoReMi (Xie et al. 2023, Alg. 1; notes §5): EG on clipped excess loss over one reference.

    Every step, with λ_t the per-domain clipped excess and α_{t−1} the weights played last:

        α' = α_{t−1} · exp(η·λ_t),    α_t = (1 − c)·α'/Σα' + c/k

    — the step multiplies the *smoothed* weights, so a domain held at the floor c/k
    recovers within a few steps once it becomes the worst.  Every domain in every batch
    (reweighting); a domain absent from a batch keeps its last score.  DoReMi's output is
    the *average* ᾱ of the weights over the run, on which a fresh model is then trained
    (``signal.retrain``: :func:`amasim.driver.run` does it, and reports that model).
    Per-token clipping becomes per-example clipping with this oracle protocol (scores are
    per example).  With c = 0 the weight update is AMA-R's.

    ``reference="default-mixture"`` (the paper): λ is the excess over ONE reference model
    trained on the default mixture, which the oracle provides per example (capability
    ``"default_reference"``; the driver then scores against it), and the proxy's θ descends
    the α-weighted loss, as the official trainer's ``loss = Σ pertoken_loss·α_d/Σα_d`` does:
    the clipping is in the weight update only (score ``"dro-clipped"``).
    ``"specialists"``: this project's earlier DoReMi, kept as a named variant
    (``doremi-specialists``): the excess over each task's specialist, and θ descending the
    clipped excess (score ``"clipped"``), as AMA-R does.
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.floating)):
        raise TypeError(f"smoothing must be a real number, got {type(smoothing).__name__}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing!r} must lie in [0, 1]")
    if reference not in DOREMI_REFERENCES:
        raise ValueError(f"reference={reference!r} must be one of {', '.join(DOREMI_REFERENCES)}")
    eta, c = check_positive("step_size", step_size), float(smoothing)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> EGState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        return EGState(np.full(shape, -np.log(num_tasks)), np.full(shape, 1.0 / num_tasks))

    def update(state: EGState, scores: Any, counts: Any = None):
        lam = check_scores(scores, state.weights.shape[-1], like=state.weights)
        # eg_step: log α' = log α_{t−1} + η λ, normalised; the state keeps the log of the
        # weights played, so the next step multiplies the smoothed weights.
        log_alpha, alpha = eg_step(state.log_weights, lam, eta)
        if c > 0:  # every entry >= c/k > 0: its log is finite
            alpha = smooth(alpha, c)
            log_alpha = np.log(alpha)
        return alpha, EGState(log_alpha, alpha)

    if reference == "default-mixture":
        name, score, requires = "doremi", "dro-clipped", ("default_reference",)
    else:
        name, score, requires = "doremi-specialists", "clipped", ()
    played = Mixer(init, update, played_weights, score, "reweight", name, requires)
    return hold_last_scores(played)._replace(signal=Signal("batch", retrain=True))


def odm(smoothing_rate: float = 0.9) -> Mixer:
    """Online data mixing (Albalak et al. 2023, Alg. 1; notes §6): EXP3 with the loss as reward.

    Step t = 1, 2, … plays π_t; each domain i present in the batch (the paper samples one
    domain per step; here every domain drawn into the batch counts as sampled) updates its
    smoothed importance-weighted reward, the others keep theirs:

        R̂_i ← β·R̂_i + (1 − β)·L_i/π_{t,i}
        π_{t+1,j} = (1 − k·ε_{t+1})·exp(ε_t R̂_j)/Σ_l exp(ε_t R̂_l) + ε_{t+1}

    with ε_t = min(1/k, √(ln k/(k·t))) and β = ``smoothing_rate``.  R̂ is a smoothed
    *mean*, not a running sum: under constant losses the weights stay bounded away from a
    vertex as ε_t → 0.  Full information (``counts=None``) updates every domain.
    """
    if isinstance(smoothing_rate, bool) or not isinstance(smoothing_rate, (int, float)):
        raise TypeError(f"smoothing_rate must be a real number, got {smoothing_rate!r}")
    if not 0.0 <= smoothing_rate < 1.0:
        raise ValueError(f"smoothing_rate={smoothing_rate!r} must lie in [0, 1)")
    beta = float(smoothing_rate)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> ODMState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        return ODMState(np.zeros(shape), np.full(shape, 1.0 / num_tasks), 1)

    def update(state: ODMState, scores: Any, counts: Any = None):
        pi, t = state.weights, state.step
        k = pi.shape[-1]
        losses = check_scores(scores, k, like=pi)
        smoothed = beta * state.rewards + (1.0 - beta) * (losses / pi)
        if counts is not None:  # only the domains drawn into the batch were observed
            smoothed = np.where(check_counts(counts, losses.shape) > 0, smoothed, state.rewards)
        _, probs = eg_step(np.zeros_like(pi), smoothed, odm_exploration(k, t))
        eps_next = odm_exploration(k, t + 1)
        played = (1.0 - k * eps_next) * probs + eps_next
        return played, ODMState(smoothed, played, t + 1)

    return Mixer(init, update, played_weights, "loss", "resample", "odm")


def odm_exploration(num_tasks: int, step: int) -> float:
    """ODM's exploration rate ε_t = min(1/k, √(ln k / (k·t))) at step t ≥ 1 (1 for k = 1)."""
    if num_tasks == 1:
        return 1.0
    return min(1.0 / num_tasks, math.sqrt(math.log(num_tasks) / (num_tasks * step)))


def check_apply(apply: str) -> None:
    """Raise unless ``apply`` is one of :data:`APPLY_MODES`."""
    if apply not in APPLY_MODES:
        raise ValueError(f"apply={apply!r} is unknown: use one of {', '.join(APPLY_MODES)}")
