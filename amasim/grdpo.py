"""GR-DPO: Group Robust Preference Optimisation (Ramesh et al., NeurIPS 2024, arXiv 2405.20304).

Worst-group DPO over K groups of N_1, …, N_K preference pairs (N = Σ_g N_g)::

    min_θ max_{α ∈ Δ_K} Σ_g α_g ℓ_g(θ),    ℓ_g(θ) = (1/N_g) Σ_{z ∈ D_g} ℓ_DPO(θ; z)
                      = Σ_{z ∈ D} (1/N) · (N α_{g(z)} / N_{g(z)}) · ℓ_DPO(θ; z)

The paper's Algorithm 1 is stochastic mirror descent on this game, one pair per iteration
(q_g = N_g/N, the share of group g in the union)::

    g ~ Categorical(q_1, …, q_K),  z ~ D_g               # z uniform over the union
    α_g ← α_g · exp(η_α · N ℓ(θ; z) / N_g);  α ← α/Σ α    # EG on an importance-weighted loss
    θ ← P_Θ(θ − η_θ · N α_g / N_g · ∇ℓ(θ; z))           # weighted by the *updated* α

A batch of B pairs drawn from q averages B such single-pair estimates (B = 1 is Alg. 1)::

    gain_g        = (1/B) Σ_{z: g(z)=g} ℓ(z)/q_g = n_g/(B q_g) · ℓ̄_g   (importance_weighted)
    weight of z   = α_{t+1, g(z)} / (B q_{g(z)})                      (importance_loss_weights)

For fixed α both are unbiased: E[gain_g] = ℓ_g and E[Σ_z weight(z)·∇ℓ(z)] = Σ_g α_g ∇ℓ_g
(like Alg. 1, the step reuses the batch for α and θ).  The authors' LLM trainer
(github.com/rsshyam/Group-robust-preference-optimization, ``rdpo`` with
``divide_by_totalcount: True``, the setting of their scripts) forms the same per-group
estimates *summed* over the batch, not averaged: their α step size is this module's η
divided by B, and their θ loss is this one times B.

It uses the third way of applying weights, ``apply="importance"`` (:data:`IMPORTANCE`):
the driver (:class:`amasim.driver.Mixing`) draws the batch of B from the *fixed*
distribution :func:`sampling_distribution` (q ∝ the group sizes), the mixer update
receives ``counts``, and each pair's loss is weighted by :func:`importance_loss_weights`
of the updated α.  Registered as ``gr-dpo`` (:mod:`amasim.registry`).

**GR-DPO vs** ``group_dro`` **on the DPO loss.**  Both are EG on raw group losses with the
updated α weighting the θ step, and their expected α steps coincide.  ``group_dro`` here
draws B pairs of *every* group per step (k·B pairs; the α gain is each group's batch
mean; a pair's loss weight α_g/B); GR-DPO draws B pairs from the union (B pairs a step)
and corrects by N/N_g twice — in the α gain (a group absent from the batch gains 0, a
present one n_g/(B q_g) times its mean) and in the θ weight (α_g/(B q_g) a pair).  The
two steps agree exactly only when the batch holds n_g = B q_g pairs of every group.
**vs AMA**: AMA-S also importance-weights EG (EXP3) but draws the batch from its own
weights (loss weight 1/B), spending pairs where the weight is; GR-DPO spends them in
proportion to group size and pays for a small, heavily weighted group with large,
noisy per-pair weights α_g/(B q_g).  AMA scores the clipped *excess* loss over a
specialist, GR-DPO the raw DPO loss.

>>> import numpy as np
>>> mixer = gr_dpo(0.5, sizes=[90, 10])
>>> state = mixer.init(2, seed=0)
>>> sampling_distribution(state).tolist()
[0.9, 0.1]
>>> # a batch of B = 10 pairs, 8 of group 0 and 2 of group 1, every DPO loss 1.0
>>> alpha, state = mixer.update(state, np.array([1.0, 1.0]), counts=np.array([8, 2]))
>>> bool(alpha[1] > alpha[0])  # the over-represented minority gains weight
True
>>> task_ids = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
>>> w = importance_loss_weights(alpha, sampling_distribution(state), task_ids, 10)
>>> bool(np.isclose(w[-1], alpha[1] / (10 * 0.1)))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim.mixers import (
    Mixer,
    check_counts,
    check_positive,
    check_scores,
    eg_step,
    importance_weighted,
    played_weights,
    replicate_shape,
)
from amasim.scores import check_score

__all__ = [
    "IMPORTANCE",
    "GRDPOState",
    "gr_dpo",
    "sampling_distribution",
    "importance_loss_weights",
]

#: The apply mode of GR-DPO: batch drawn from the fixed sampling distribution q,
#: update with counts, pair z weighted α_{t+1,g(z)}/(B q_{g(z)}).
IMPORTANCE = "importance"


class GRDPOState(NamedTuple):
    """Normalised log weights, the weights α played, and the fixed sampling q; (..., k)."""

    log_weights: np.ndarray
    weights: np.ndarray
    sampling: np.ndarray


def _sampling_from_sizes(sizes: Sequence[int]) -> np.ndarray:
    """q_g = N_g/N from the group sizes, validated."""
    if isinstance(sizes, (str, bytes)):
        raise TypeError(f"sizes={sizes!r}: pass one int per group (its number of pairs)")
    arr = np.asarray(sizes)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D sequence of group sizes, got {sizes!r}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"sizes must be integers (pairs per group), got {sizes!r}")
    if np.any(arr < 1):
        raise ValueError(f"sizes={arr.tolist()}: every group needs at least one pair")
    return arr / arr.sum()


def gr_dpo(step_size: float, *, sizes: Sequence[int], score: str = "loss") -> Mixer:
    """GR-DPO (Ramesh et al. 2024, Alg. 1) over groups of ``sizes`` pairs; see the module.

    ``step_size`` is η_α.  ``update(state, scores, counts)``: ``scores`` are the per-group
    mean losses of a batch drawn from :func:`sampling_distribution`, ``counts`` its pairs
    per group; the gain is n_g/(B q_g)·score_g, then one EG step.  With ``counts=None``
    the scores are taken as exact group losses ℓ_g (Alg. 1's expected step, which is
    ``group_dro``'s).  ``score`` other than ``"loss"`` is an ablation, not the paper.
    """
    eta = check_positive("step_size", step_size)
    sampling = _sampling_from_sizes(sizes)
    check_score(score)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> GRDPOState:
        shape = (*replicate_shape(num_tasks, seed), num_tasks)
        if num_tasks != sampling.size:
            raise ValueError(
                f"gr_dpo(sizes) got {sampling.size} sizes but num_tasks={num_tasks}: "
                "pass one size per group"
            )
        return GRDPOState(
            np.full(shape, -np.log(num_tasks)),
            np.full(shape, 1.0 / num_tasks),
            np.broadcast_to(sampling, shape).copy(),
        )

    def update(state: GRDPOState, scores: Any, counts: Any = None):
        gains = check_scores(scores, state.log_weights.shape[-1], like=state.log_weights)
        if counts is not None:
            # Alg. 1's α gain N ℓ/N_g = ℓ/q_g, averaged over the B pairs of the batch
            gains = importance_weighted(gains, check_counts(counts, gains.shape), state.sampling)
        log_weights, alpha = eg_step(state.log_weights, gains, eta)
        return alpha, GRDPOState(log_weights, alpha, state.sampling)

    return Mixer(init, update, played_weights, score, IMPORTANCE, "gr-dpo")


def sampling_distribution(state: GRDPOState) -> np.ndarray:
    """The fixed distribution q (…, k) a GR-DPO batch is drawn from: q_g = N_g/N."""
    sampling = getattr(state, "sampling", None)
    if not isinstance(sampling, np.ndarray):
        raise TypeError(
            f"a {type(state).__name__} carries no sampling distribution: apply='importance' "
            "needs the state of a mixer that draws from a fixed q (amasim.grdpo.gr_dpo)"
        )
    return sampling


def importance_loss_weights(
    alpha: Any, sampling: Any, task_ids: Any, batch_size: int, *, check: bool = True
) -> np.ndarray:
    """θ-step weight of each pair of a batch drawn from ``sampling``: α_{g(z)}/(B·q_{g(z)}).

    Alg. 1's N α_g/N_g, averaged over the B pairs of the batch.  ``alpha`` and ``sampling``
    have shape ``(..., k)`` (``sampling`` may be ``(k,)``), ``task_ids`` ``(..., n)``; the
    result has the shape of ``task_ids``.  Pass the *updated* α (Alg. 1 order) and the
    batch size B the draws were made with (a data-parallel rank's own B; the ranks'
    averaged gradients then weight each pair by α/(B_total·q)).  ``check=False`` skips
    validation, for arrays the training loop made itself.

    >>> importance_loss_weights(np.array([0.5, 0.5]), np.array([0.8, 0.2]), np.array([0, 1]), 2)
    array([0.3125, 1.25  ])
    """
    if check:
        alpha, sampling, task_ids, batch_size = _checked_weight_args(
            alpha, sampling, task_ids, batch_size
        )
    ratio = alpha / (batch_size * sampling)
    leading = np.broadcast_shapes(ratio.shape[:-1], task_ids.shape[:-1])
    ratio = np.broadcast_to(ratio, (*leading, ratio.shape[-1]))
    ids = np.broadcast_to(task_ids, (*leading, task_ids.shape[-1]))
    return np.take_along_axis(ratio, ids, axis=-1)


def _checked_weight_args(alpha, sampling, task_ids, batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (pairs drawn per step)")
    alpha = np.asarray(alpha, dtype=np.float64)
    sampling = np.asarray(sampling, dtype=np.float64)
    if alpha.ndim == 0 or sampling.ndim == 0 or alpha.shape[-1] != sampling.shape[-1]:
        raise ValueError(
            f"alpha has shape {alpha.shape} and sampling {sampling.shape}: both need a last "
            "axis of one entry per group"
        )
    if not (np.all(np.isfinite(alpha)) and np.all(alpha >= 0)):
        raise ValueError("alpha must be finite and >= 0: pass the mixer's weights")
    if not (np.all(np.isfinite(sampling)) and np.all(sampling > 0)):
        raise ValueError(
            "sampling must be finite and > 0 for every group: a group drawn with probability "
            "0 has no importance weight; pass sampling_distribution(state)"
        )
    ids = np.asarray(task_ids)
    if ids.ndim == 0 or ids.dtype.kind not in "iu":
        raise TypeError(f"task_ids must be an integer array (..., n), got {ids.dtype} {ids.shape}")
    k = alpha.shape[-1]
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise ValueError(f"task_ids must lie in [0, {k}), the group of each pair")
    try:
        np.broadcast_shapes(alpha.shape[:-1], sampling.shape[:-1], ids.shape[:-1])
    except ValueError:
        raise ValueError(
            f"alpha {alpha.shape}, sampling {sampling.shape} and task_ids {ids.shape} have "
            "different replicate axes: pass one row per replicate"
        ) from None
    return alpha, sampling, ids, int(batch_size)
