"""Mixers driven by gradient alignment: DoGE and DGA (notes §7–§8).

The mixers have the contract of :mod:`amasim.mixers` (a :class:`~amasim.mixers.Mixer` of
pure ``init``/``update``/``weights`` over a NamedTuple state with leading replicate axes);
their ``score`` is ``"gradient_alignment"`` and their signal ``"alignment"``: the
``scores`` passed to ``update`` are per-task alignment values, shape (..., k), which the
driver computes with :func:`amasim.observe.alignment_scores` from an oracle with the
``"task_gradients"`` capability (and ``"target_set"`` for DGA, which is how the driver
knows to align with the target).  The mixer itself never sees gradients, so it stays a
pure function of its scores.

==============  ==========================================  =============================
factory         alignment a_i (``kind``)                    update
==============  ==========================================  =============================
``doge``        Σ_j ⟨∇L_i, ∇L_j⟩ (``"generalization"``)      EG on clip(a/μ), smoothed
``dga``         ⟨∇L_i, ∇L_target⟩ (``"target"``)             α ← softmax(log α + η a), EMA
==============  ==========================================  =============================

DGA is **reconstructed — no public code**: the update cadence, the EMA on α and the
smoothing are parameters, not the authors' choices.  The cadence is the signal's
``every``: every ``update_every`` steps the driver computes the alignment scores and
calls ``update`` once; in between, training batches are drawn from the current α.

>>> import numpy as np
>>> mixer = dga(1.0, update_every=5, ema=0.5)
>>> state = mixer.init(3, seed=[0, 1])
>>> alpha, state = mixer.update(state, np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
>>> alpha.argmax(axis=-1).tolist(), bool(np.allclose(alpha.sum(-1), 1)), mixer.signal.every
([0, 2], True, 5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim.mixers import (
    LOG_FLOOR,
    Mixer,
    Signal,
    check_positive,
    check_scores,
    eg_step,
    exponentiated_gradient,
    replicate_shape,
    smooth,
    static_weights,
)
from amasim.transfer import TargetSplit, importance_sampling_weights

__all__ = [
    "ALIGNMENT_SCORE",
    "DGAState",
    "doge",
    "dga",
    "fixed_weights",
    "importance_sampling",
    "importance_sampling_weights",
]

ALIGNMENT_SCORE = "gradient_alignment"


class DGAState(NamedTuple):
    """DGA: normalised log weights (of the EMA'd α) and the played weights."""

    log_weights: np.ndarray
    weights: np.ndarray


def _fraction(name: str, value: float, *, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name}={value!r} must lie in [0, 1{')' if upper_open else ']'}")
    return float(value)


def doge(
    step_size: float,
    smoothing: float = 0.0,
    *,
    scale: float = 1.0,
    clip: float | None = None,
) -> Mixer:
    """DoGE (Fan et al. 2023; notes §7): EG on the generalisation estimate Σ_j ⟨∇L_i, ∇L_j⟩.

    The gains are ``clip(scale · scores)`` (``scale`` = 1/μ of the Aioli write-up, ``clip``
    a bound on |gain|, ``None`` for none); the weights are ``smooth(softmax)`` with
    ``smoothing`` c.  It is :func:`amasim.mixers.exponentiated_gradient` on those gains,
    with full information (``counts`` are ignored: every task's gradient
    is measured).
    """
    scale = check_positive("scale", scale)
    if clip is not None:
        clip = check_positive("clip", clip)
    inner = exponentiated_gradient(step_size, smoothing=smoothing, score="loss", apply="resample")

    def update(state: Any, scores: Any, counts: Any = None):
        gains = scale * check_scores(scores, state.log_weights.shape[-1])
        if clip is not None:
            gains = np.clip(gains, -clip, clip)
        return inner.update(state, gains, None)

    return Mixer(
        inner.init,
        update,
        inner.weights,
        ALIGNMENT_SCORE,
        "resample",
        "doge",
        ("task_gradients",),
        Signal("alignment"),
    )


def dga(
    step_size: float,
    *,
    update_every: int = 10,
    ema: float = 0.0,
    smoothing: float = 0.0,
) -> Mixer:
    """DGA (notes §8, reconstructed — no public code; the choices are parameters).

    One ``update`` per alignment round (every ``update_every`` training steps: the
    signal's ``every``, read by the driver):
    p = softmax(log α + η a) (:func:`amasim.mixers.eg_step`), α ← ema·α + (1 − ema)·p,
    and the batch is drawn from ``smooth(α, smoothing)``.
    """
    eta = check_positive("step_size", step_size)
    if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)):
        raise TypeError(f"update_every must be an int, got {type(update_every).__name__}")
    if update_every < 1:
        raise ValueError(f"update_every={update_every} must be >= 1")
    beta = _fraction("ema", ema, upper_open=True)
    c = _fraction("smoothing", smoothing)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> DGAState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        uniform = np.full(shape, 1.0 / num_tasks)
        return DGAState(np.log(uniform), uniform)

    def update(state: DGAState, scores: Any, counts: Any = None):
        gains = check_scores(scores, state.log_weights.shape[-1], like=state.log_weights)
        log_weights, probs = eg_step(state.log_weights, gains, eta)
        if beta > 0:
            probs = beta * np.exp(state.log_weights) + (1.0 - beta) * probs
            with np.errstate(divide="ignore"):
                log_weights = np.maximum(np.log(probs), LOG_FLOOR)
        played = smooth(probs, c) if c > 0 else probs
        return played, DGAState(log_weights, played)

    return Mixer(
        init,
        update,
        lambda state: state.weights,
        ALIGNMENT_SCORE,
        "resample",
        "dga",
        ("task_gradients", "target_set"),
        Signal("alignment", every=int(update_every)),
    )


def fixed_weights(weights: Any, *, name: str = "fixed") -> Mixer:
    """A static resampling mixer that plays ``weights`` (shape (k,), on the simplex)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights={w.tolist()!r} must be a non-empty 1-D probability vector")

    def weights_for(num_tasks: int) -> np.ndarray:
        if num_tasks != len(w):
            raise ValueError(f"{len(w)} weights but num_tasks={num_tasks}: one weight per task")
        return w / w.sum()

    return static_weights(weights_for, "loss", "resample", name)


def importance_sampling(target: TargetSplit | Any, features: Any = None) -> Mixer:
    """The DGA baseline: sample clusters ∝ the target's cluster histogram, statically."""
    return fixed_weights(importance_sampling_weights(target, features), name="importance-sampling")
