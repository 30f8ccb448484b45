"""Mixers driven by gradient alignment: DoGE and DGA (notes §7–§8), and their loop.

The mixers have the contract of :mod:`amasim.mixers` (a :class:`~amasim.mixers.Mixer` of
pure ``init``/``update``/``weights`` over a NamedTuple state with leading replicate axes);
their ``score`` is ``"gradient_alignment"``: the ``scores`` passed to ``update`` are
per-task alignment values, shape (..., k), which :func:`alignment_scores` computes from
a gradient oracle (:class:`amasim.transfer.GradientOracle`).  The mixer itself never sees
gradients, so it stays a pure function of its scores.

==============  ==========================================  =============================
factory         alignment a_i (``kind``)                    update
==============  ==========================================  =============================
``doge``        Σ_j ⟨∇L_i, ∇L_j⟩ (``"generalization"``)      EG on clip(a/μ), smoothed
``dga``         ⟨∇L_i, ∇L_target⟩ (``"target"``)             α ← softmax(log α + η a), EMA
==============  ==========================================  =============================

DGA is **reconstructed — no public code**: the update cadence, the EMA on α and the
smoothing are parameters, not the authors' choices.  The cadence lives in the state
(``update_every``) and is read by :func:`run_with_gradients`: every ``update_every``
steps the loop computes the alignment scores and calls ``update`` once; in between,
training batches are drawn from the current α.

>>> import numpy as np
>>> mixer = dga(1.0, update_every=5, ema=0.5)
>>> state = mixer.init(3, seed=[0, 1])
>>> alpha, state = mixer.update(state, np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
>>> alpha.argmax(axis=-1).tolist(), bool(np.allclose(alpha.sum(-1), 1))
([0, 2], True)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from amasim import prng
from amasim.capabilities import require_capabilities
from amasim.mixers import (
    LOG_FLOOR,
    Mixer,
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
    "ALIGNMENTS",
    "DGAState",
    "doge",
    "dga",
    "fixed_weights",
    "importance_sampling",
    "alignment_scores",
    "update_interval",
    "GradientRunResult",
    "run_with_gradients",
    "importance_sampling_weights",
]

ALIGNMENT_SCORE = "gradient_alignment"
ALIGNMENTS = ("target", "generalization")


class DGAState(NamedTuple):
    """DGA: normalised log weights (of the EMA'd α), played weights, update cadence."""

    log_weights: np.ndarray
    weights: np.ndarray
    update_every: int


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
        inner.init, update, inner.weights, ALIGNMENT_SCORE, "resample", "doge", ("task_gradients",)
    )


def dga(
    step_size: float,
    *,
    update_every: int = 10,
    ema: float = 0.0,
    smoothing: float = 0.0,
) -> Mixer:
    """DGA (notes §8, reconstructed — no public code; the choices are parameters).

    One ``update`` per alignment round (every ``update_every`` training steps, cadence
    read by :func:`run_with_gradients` from the state):
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
        return DGAState(np.log(uniform), uniform, int(update_every))

    def update(state: DGAState, scores: Any, counts: Any = None):
        gains = check_scores(scores, state.log_weights.shape[-1], like=state.log_weights)
        log_weights, probs = eg_step(state.log_weights, gains, eta)
        if beta > 0:
            probs = beta * np.exp(state.log_weights) + (1.0 - beta) * probs
            with np.errstate(divide="ignore"):
                log_weights = np.maximum(np.log(probs), LOG_FLOOR)
        played = smooth(probs, c) if c > 0 else probs
        return played, DGAState(log_weights, played, state.update_every)

    return Mixer(
        init,
        update,
        lambda state: state.weights,
        ALIGNMENT_SCORE,
        "resample",
        "dga",
        ("task_gradients", "target_set"),
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
    return fixed_weights(importance_sampling_weights(target, features), name="importance_sampling")


def alignment_scores(oracle: Any, kind: str = "target", *, normalize: bool = False) -> np.ndarray:
    """Per-task alignment at the oracle's current θ, shape (R, k).

    ``"target"`` (DGA): a_i = ⟨∇L_i, ∇L_target⟩.  ``"generalization"`` (DoGE):
    a_i = Σ_j ⟨∇L_i, ∇L_j⟩ = ⟨∇L_i, Σ_j ∇L_j⟩.  With ``normalize`` the inner products
    are divided by the norm of the reference gradient (the target's or the sum), which
    makes the scale of the step size independent of the loss scale.
    """
    if kind not in ALIGNMENTS:
        raise ValueError(f"kind={kind!r} is unknown: use one of {', '.join(ALIGNMENTS)}")
    grads = np.asarray(oracle.task_gradients())
    if grads.ndim != 3:
        raise ValueError(f"task_gradients() returned shape {grads.shape}: expected (R, k, d)")
    ref = np.asarray(oracle.target_gradient()) if kind == "target" else grads.sum(axis=1)
    if ref.shape != (grads.shape[0], grads.shape[2]):
        raise ValueError(f"reference gradient has shape {ref.shape}: expected (R, d)")
    scores = np.einsum("rkd,rd->rk", grads, ref)
    if normalize:
        scores = scores / np.maximum(np.linalg.norm(ref, axis=-1, keepdims=True), 1e-300)
    return scores


def update_interval(state: Any) -> int:
    """Steps between alignment rounds: the state's ``update_every``, else 1."""
    return int(getattr(state, "update_every", 1))


@dataclass(frozen=True)
class GradientRunResult:
    """What :func:`run_with_gradients` measured; arrays carry a replicate axis R.

    ``weights`` (steps, R, k) α_t of each batch; ``average_weights`` (R, k);
    ``alignments`` (rounds, R, k) the scores of each alignment round; ``task_losses``
    (R, k) per-task mean loss at θ̄_T; ``target_loss``/``target_test_loss`` (R,) at θ̄_T
    (``None`` when the oracle has no such set); ``examples`` (R, k) training examples;
    ``extra_gradient_evaluations`` per replicate, spent on alignment.
    """

    method: str
    seeds: tuple[int, ...]
    steps: int
    weights: np.ndarray
    average_weights: np.ndarray
    alignments: np.ndarray
    task_losses: np.ndarray
    target_loss: np.ndarray | None
    target_test_loss: np.ndarray | None
    examples: np.ndarray
    extra_gradient_evaluations: int
    wall_time: float
    mixer_state: Any


def run_with_gradients(
    mixer: Mixer,
    oracle: Any,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 32,
    seeds: int | Sequence[int] = 0,
    alignment: str | None = None,
    normalize: bool = False,
) -> GradientRunResult:
    """Train by resampling from α; a gradient-alignment mixer is updated every
    :func:`update_interval` steps with :func:`alignment_scores` (``alignment`` defaults
    to ``"target"`` for ``dga`` and ``"generalization"`` otherwise).  Mixers whose score
    is not ``"gradient_alignment"`` (static baselines) are never updated.  An oracle
    without the capabilities this needs (``"task_gradients"``, and ``"target_set"`` for
    target alignment) raises :class:`~amasim.capabilities.MissingCapabilityError`.
    """
    if not isinstance(mixer, Mixer):
        raise TypeError(f"mixer must be an amasim.mixers.Mixer, got {type(mixer).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    check_positive("learning_rate", learning_rate)
    seeds = (seeds,) if isinstance(seeds, (int, np.integer)) else tuple(seeds)
    adaptive = mixer.score == ALIGNMENT_SCORE
    if alignment is None:
        alignment = "target" if mixer.name == "dga" else "generalization"
    needed = (*mixer.requires, "task_gradients") if adaptive else mixer.requires
    if adaptive and alignment == "target":
        needed = (*needed, "target_set")
    require_capabilities(oracle, needed, f"mixer {mixer.name!r} (alignment {alignment!r})")
    k, r = len(oracle.task_names), len(seeds)
    keys = prng.replicate_keys(list(seeds), stream=0)
    uniforms = prng.UniformStream(keys, batch_size)
    oracle.reset(list(seeds))
    state = mixer.init(k, seed=list(seeds))
    every = update_interval(state)
    weights = np.empty((steps, r, k))
    examples = np.zeros((r, k), dtype=np.int64)
    rounds: list[np.ndarray] = []
    loss_weights = np.full((r, batch_size), 1.0 / batch_size)
    start = time.perf_counter()
    for t in range(steps):
        if adaptive and t % every == 0:
            scores = alignment_scores(oracle, alignment, normalize=normalize)
            rounds.append(scores)
            _, state = mixer.update(state, scores)
        alpha = mixer.weights(state)
        weights[t] = alpha
        task_ids = prng.categorical(uniforms(t), alpha)
        examples += np.stack([(task_ids == i).sum(axis=1) for i in range(k)], axis=1)
        batch = oracle.sample(task_ids)
        oracle.losses(batch)
        oracle.step(batch, loss_weights, learning_rate)
    wall = time.perf_counter() - start

    def target(split: str) -> np.ndarray | None:
        pair = getattr(oracle, "target" if split == "train" else "target_test", None)
        if pair is None or not hasattr(oracle, "target_loss"):
            return None
        return oracle.target_loss(averaged=True, split=split)

    return GradientRunResult(
        method=mixer.name,
        seeds=seeds,
        steps=steps,
        weights=weights,
        average_weights=weights.mean(axis=0),
        alignments=np.array(rounds) if rounds else np.empty((0, r, k)),
        task_losses=oracle.evaluate("loss", averaged=True),
        target_loss=target("train"),
        target_test_loss=target("test"),
        examples=examples,
        extra_gradient_evaluations=int(getattr(oracle, "extra_gradient_evaluations", 0)),
        wall_time=wall,
        mixer_state=state,
    )
