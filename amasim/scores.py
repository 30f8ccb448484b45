"""What a task reports to the mixer: raw loss, excess loss or clipped excess loss.

Per example z with loss L(θ, z) and cached specialist loss ℓ(z) (notes §1):

=================  ======================  ===========================
score              value                   d value / d L (for ∇θ)
=================  ======================  ===========================
``"loss"``         L                       1
``"excess"``       L − ℓ                   1
``"clipped"``      max(L − ℓ, 0)           1[L > ℓ]
``"dro-clipped"``  max(L − ℓ, 0)           1
=================  ======================  ===========================

``"dro-clipped"`` is DoReMi's (Xie et al. 2023, Alg. 1 and the official trainer): the
weights are updated on the clipped excess, while θ descends the α-weighted objective
Σ α_i (L − ℓ), whose gradient is the loss's — the clipping lives in the weight update
only, so the coefficient is deliberately not the derivative of the value.

A NaN loss stays NaN in every score (never a clipped 0), so the mixers' finiteness checks
catch it.

The per-task score a mixer sees is the mean of the values over the task's examples in
the batch (:func:`task_means`).  The gradient coefficient lets any oracle take the step
on Σ_z w_z · value(z) by asking only for the gradient of Σ_z c_z L(θ, z).

>>> import numpy as np
>>> values, coef = example_scores("clipped", np.array([1.0, 0.2]), np.array([0.5, 0.5]))
>>> values.tolist(), coef.tolist()
([0.5, 0.0], [1.0, 0.0])
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

__all__ = ["SCORES", "ScoreName", "example_scores", "task_means", "check_score"]

ScoreName = Literal["loss", "excess", "clipped", "dro-clipped"]
SCORES: tuple[str, ...] = ("loss", "excess", "clipped", "dro-clipped")


def check_score(score: str) -> str:
    """Return ``score`` if it names a known score, else raise a ``ValueError`` listing them."""
    if score not in SCORES:
        raise ValueError(f"score={score!r} is unknown: use one of {', '.join(SCORES)}")
    return score


def example_scores(
    score: str, losses: np.ndarray, reference_losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example score values and their derivative with respect to the loss."""
    if score == "loss":
        return losses, np.ones_like(losses)
    excess = losses - reference_losses
    if score == "excess":
        return excess, np.ones_like(losses)
    if score == "clipped":  # np.maximum propagates a NaN loss, so no score hides one
        return np.maximum(excess, 0.0), (excess > 0.0).astype(losses.dtype)
    if score == "dro-clipped":  # DoReMi: clipped for the weights, L − ℓ for θ
        return np.maximum(excess, 0.0), np.ones_like(losses)
    raise ValueError(check_score(score))


def task_means(
    values: np.ndarray, task_ids: np.ndarray, num_tasks: int, *, check: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per task and the number of examples per task.

    ``values`` and ``task_ids`` have shape ``(R, N)`` (R replicates, N examples); the
    results have shape ``(R, num_tasks)``.  A task with no example in the batch gets
    mean 0 and count 0 (mixers ignore it through ``counts``).  ``check=False`` skips the
    test that every id lies in ``[0, num_tasks)``, for ids the caller drew itself.
    """
    r = values.shape[0]
    if check and task_ids.size and (task_ids.min() < 0 or task_ids.max() >= num_tasks):
        raise ValueError(f"task_ids must lie in [0, {num_tasks}), the task of each example")
    flat = (task_ids + _first_bins(r, num_tasks)).ravel()  # one bin per (replicate, task)
    sums = np.bincount(flat, values.ravel(), minlength=r * num_tasks).reshape(r, num_tasks)
    counts = np.bincount(flat, minlength=r * num_tasks).reshape(r, num_tasks)
    return sums / np.maximum(counts, 1), counts


@functools.lru_cache(maxsize=64)
def _first_bins(num_replicates: int, num_tasks: int) -> np.ndarray:
    """The first bin of each replicate, shape (R, 1), read-only (cached: a loop asks
    for the same one every step)."""
    bins = np.arange(0, num_replicates * num_tasks, num_tasks)[:, None]
    bins.flags.writeable = False
    return bins
