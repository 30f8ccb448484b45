"""AMA-S-IX: AMA-S whose task player is EXP3-IX (implicit exploration; Neu, NeurIPS 2015).

The task player of Theorem IX (``proofs_check/derivations/07_ama_s_ix.md``), the AMA-S
variant with a proven O(√(k ln k / T)) primal gap for the averaged θ.  The batch of b
examples is drawn from α_t (resampling, as AMA-S); the task player plays the game in
*losses*: a per-example score s ∈ [0, B] is the loss B − s, and a task's loss is estimated
from the batch by the implicit-exploration estimate

    ℓ̂_i = n_i·(B − ê_i) / (b·(α_i + γ))        n_i examples of task i, ê_i their mean score

    α_{t+1} ∝ α_t · exp(−η·ℓ̂_t)                 (no uniform mixing: α is played as it is)

The γ in the denominator biases ℓ̂ *down* (E[ℓ̂_i] = α_i(B − E_i)/(α_i + γ) ≤ B − E_i): the
estimate of a task's gain B − ℓ̂_i is optimistic, and its upper deviations are small for
every task at once (Neu's Lemma 1), which is what the proof needs for the task that is
worst *after* the run.  γ = 0 is the plain importance-weighted loss estimate,
:func:`amasim.mixers.importance_weighted` of B − ê.  Scores are used as they are: the
theorem assumes them in [0, B], and clipping a score that B does not bound (a study's B̂,
:func:`amasim.registry.start_constants`) would bias the estimate of a rarely drawn task —
its batch mean is one or two examples, clipped far more often than a well-drawn task's —
and starve it (with clipping, the gap of the log-linear DPO convergence study rose from
0.0014 at T = 10⁴ to 0.017 at T = 10⁵; ``07_ama_s_ix.md``).  With full information
(``counts=None``: every task's score, e.g. the rounds protocol) the update is Hedge on the
losses B − ê, which is AMA-R's exponentiated-gradient step on ê.

The theorem's tuning (``amasim.registry.Theory``) for horizon T, k tasks, batch b:
γ = √(ln k / (2bkT)) and η = √(2 ln k / (T(k/b + 1))) / B.

>>> import numpy as np
>>> mixer = ama_s_ix(step_size=0.5, implicit_exploration=0.05, bound=1.0)
>>> state = mixer.init(3, seed=0)
>>> alpha, state = mixer.update(state, np.array([0.9, 0.1, 0.0]), counts=np.array([4, 2, 2]))
>>> bool(alpha[0] > alpha[1] > alpha[2]), bool(abs(alpha.sum() - 1) < 1e-12)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from amasim.mixers import (
    EGState,
    Mixer,
    check_counts,
    check_positive,
    check_scores,
    eg_step,
    played_weights,
    replicate_shape,
)
from amasim.scores import check_score

__all__ = ["ama_s_ix", "ix_losses", "ix_steps"]


def ix_losses(
    scores: np.ndarray, counts: np.ndarray, probs: np.ndarray, bound: float, gamma: float
) -> np.ndarray:
    """The implicit-exploration loss estimate n_i·(B − ê_i)/(b·(α_i + γ)).

    ``counts`` ~ Multinomial(b, ``probs``); ``scores`` are the per-task batch means (any
    value where n_i = 0), not clipped: E[ℓ̂_i] = α_i(B − E_i)/(α_i + γ) whether or not B
    bounds them, and with γ = 0 it is the unbiased importance-weighted estimate of B − E_i;
    a task with n_i = 0 gets 0 (also when its probability is 0).

    >>> import numpy as np
    >>> ix_losses(np.array([0.5, 0.0]), np.array([3, 1]), np.array([0.5, 0.5]), 1.0, 0.0)
    array([0.75, 0.5 ])
    """
    losses = bound - scores
    size = np.add.reduce(counts, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        estimate = counts * losses / (size * (probs + gamma))
    # a task drawn at a probability near 0 (γ = 0, or subnormal) would overflow to ±inf: the
    # largest float moves its weight to the same end and keeps the exponents finite
    largest = np.finfo(np.float64).max
    estimate = np.clip(estimate, -largest, largest)
    return np.where(counts > 0, estimate, 0.0)


def ix_steps(steps: int, num_tasks: int, batch_size: int, bound: float) -> tuple[float, float]:
    """(η, γ) minimising Theorem IX's bound for horizon T, k tasks, batch b, scores in [0, B].

    >>> eta, gamma = ix_steps(10_000, 3, 8, 1.0)
    >>> round(eta, 5), round(gamma, 5)
    (0.01264, 0.00151)
    """
    t, k, b = steps, max(num_tasks, 2), batch_size
    gamma = math.sqrt(math.log(k) / (2 * b * k * t))
    eta = math.sqrt(2 * math.log(k) / (t * (k / b + 1))) / bound
    return eta, gamma


def ama_s_ix(
    step_size: float, implicit_exploration: float, bound: float = 1.0, *, score: str = "clipped"
) -> Mixer:
    """AMA-S with implicit exploration: EXP3-IX over tasks on the losses B − score, the
    batch drawn from α (see the module doc).  ``step_size`` η > 0, ``implicit_exploration``
    γ ≥ 0 (0: the plain importance-weighted estimate, no guarantee), ``bound`` B > 0.

    >>> mixer = ama_s_ix(*ix_steps(1000, 2, 8, 1.0), bound=1.0)
    >>> w, _ = mixer.update(mixer.init(2), [0.8, 0.2], counts=[4, 4])
    >>> mixer.apply, bool(w[0] > w[1])
    ('resample', True)
    """
    eta = check_positive("step_size", step_size)
    b_max = check_positive("bound", bound)
    gamma = implicit_exploration
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)):
        raise TypeError(f"implicit_exploration must be a real number, got {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"implicit_exploration={gamma!r} must be a finite number >= 0")
    gamma = float(gamma)
    check_score(score)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> EGState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        return EGState(np.full(shape, -np.log(num_tasks)), np.full(shape, 1.0 / num_tasks))

    def update(state: EGState, scores: Any, counts: Any = None) -> tuple[np.ndarray, EGState]:
        k = state.log_weights.shape[-1]
        s = check_scores(scores, k, like=state.log_weights)
        if counts is None:  # full information: Hedge on B − ê
            losses = b_max - s
        else:
            losses = ix_losses(s, check_counts(counts, s.shape), state.weights, b_max, gamma)
        log_weights, probs = eg_step(state.log_weights, -losses, eta)
        return probs, EGState(log_weights, probs)

    return Mixer(init, update, played_weights, score, "resample", "ama-s-ix")
