"""The one apply rule: how a mixer's weights become a batch and its loss coefficients.

A mixer's ``apply`` says how its weights α act on training (notes §3–§4):

===============  ======================================  ==================================
``apply``        which tasks a batch holds               coefficient c_z of example z
===============  ======================================  ==================================
``reweight``     every task n/k times (fixed layout)     α_{g(z)} / (n/k)   (Group DRO, AMA-R)
``resample``     n draws from α                          1 / n              (AMA-S, ODM)
``importance``   n draws from the fixed q                α_{g(z)} / (n q_{g(z)})  (GR-DPO)
===============  ======================================  ==================================

where n is the number of examples in the batch (a data-parallel rank's own share, a TRL
micro-batch's rows) and g(z) the task of example z.  The step then descends
Σ_z c_z · (dscore/dL)(z) · ∇L_z, an unbiased estimate of ∇ Σ_i α_i · E_i[score] in every
mode.  Every loop that trains with a mixer calls these two functions —
:class:`amasim.driver.Mixing`, the TRL sampler (:class:`llm.trl.sampler.TaskMixtureSampler`)
and :class:`llm.trl.trainer.AMADPOTrainer` — so they cannot disagree.

>>> import numpy as np
>>> alpha = np.array([[0.75, 0.25]])
>>> ids = batch_tasks("reweight", alpha, np.zeros((1, 4)), num_tasks=2)
>>> ids.tolist()
[[0, 0, 1, 1]]
>>> loss_coefficients("reweight", alpha, ids).tolist()
[[0.375, 0.375, 0.125, 0.125]]
>>> loss_coefficients("resample", alpha, ids).tolist()
[[0.25, 0.25, 0.25, 0.25]]
>>> q = np.array([[0.5, 0.5]])
>>> loss_coefficients("importance", alpha, ids, sampling=q).tolist()
[[0.375, 0.375, 0.125, 0.125]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amasim import grdpo, prng
from amasim.mixers import check_apply

__all__ = ["batch_tasks", "loss_coefficients", "draw_distribution", "counts_observed"]


def draw_distribution(apply: str, weights: np.ndarray, state: Any = None) -> np.ndarray | None:
    """The distribution a batch is drawn from: α (``resample``), the mixer state's fixed q
    (``importance``, :func:`amasim.grdpo.sampling_distribution`), or ``None`` for the fixed
    layout of ``reweight``."""
    if apply == "resample":
        return weights
    if apply == "importance":
        return grdpo.sampling_distribution(state)
    check_apply(apply)
    return None


def counts_observed(apply: str) -> bool:
    """Whether the mixer's update takes the batch's per-task counts: the drawn batches
    (``resample``, ``importance``) do, the fixed layout (every task n/k times) does not."""
    check_apply(apply)
    return apply != "reweight"


def batch_tasks(
    apply: str,
    distribution: np.ndarray | None,
    uniforms: np.ndarray,
    *,
    num_tasks: int,
    interleaved: bool = False,
) -> np.ndarray:
    """Task ids (R, n) of a batch of n = ``uniforms.shape[-1]`` examples.

    ``reweight``: the fixed layout, task i at positions i·n/k … (i+1)·n/k − 1, or with
    ``interleaved`` at positions ≡ i (mod k), so that any run of consecutive positions (a
    micro-batch, a rank's share) holds the tasks evenly; n must be a multiple of k, and
    ``distribution`` and the uniforms are not read.  ``resample`` and ``importance``: one
    categorical draw per uniform from ``distribution`` (R, k), the result of
    :func:`draw_distribution`.
    """
    check_apply(apply)
    r, n = uniforms.shape
    if apply == "reweight":
        if n % num_tasks:
            raise ValueError(
                f"a reweighting batch holds every task equally often: n = {n} examples is not "
                f"a multiple of the {num_tasks} tasks"
            )
        if interleaved:
            return np.tile(np.arange(n) % num_tasks, (r, 1))
        return np.tile(np.repeat(np.arange(num_tasks), n // num_tasks), (r, 1))
    return prng.categorical(uniforms, np.asarray(distribution, dtype=np.float64))


def loss_coefficients(
    apply: str,
    weights: np.ndarray,
    task_ids: np.ndarray,
    *,
    sampling: np.ndarray | None = None,
    num_tasks: int | None = None,
) -> np.ndarray:
    """Per-example coefficients c (R, n) of the θ step (table in the module docstring).

    ``weights`` (R, k) are the α that weight the step — for ``reweight`` and ``importance``
    the *updated* α (Group DRO Alg. 1 order); ``task_ids`` (R, n) the batch's tasks;
    ``sampling`` (R, k) or (k,) the q an ``importance`` batch was drawn from.  ``reweight``
    gives α_i·k/n to each example of task i: exactly the mean of each task's n/k examples
    when the batch holds them all, and in expectation over the micro-batches of a step when
    it is one share of a batch that does (a TRL micro-batch).
    """
    check_apply(apply)
    weights = np.asarray(weights, dtype=np.float64)
    n = task_ids.shape[-1]
    if apply == "resample":
        return np.full(task_ids.shape, 1.0 / n)
    if apply == "importance":
        if sampling is None:
            raise ValueError("apply='importance' needs the sampling distribution q")
        return grdpo.importance_loss_weights(weights, sampling, task_ids, n, check=False)
    k = weights.shape[-1] if num_tasks is None else num_tasks
    per_task = n // k if n % k == 0 else n / k  # an int when it divides: α/B, bit for bit
    return np.take_along_axis(weights / per_task, task_ids, axis=-1)
