"""One training step of any mixer on any oracle (:class:`Mixing`).

A step of the batch signal (notes §3–§4; Group DRO Alg. 1 order — the updated α weights
the θ step), with the apply rule of :mod:`amasim.apply`::

    α_t        = mixer.weights(state)
    task ids   = batch_tasks(apply, α_t | q, uniforms)     every task n/k times, or n draws
    L          = oracle.losses(oracle.sample(task ids))
    ê, n       = per-task means of score(L, ℓ) and counts
    α_{t+1}, state = mixer.update(state, ê, n if the batch was drawn else None)
    oracle.step(batch, dscore/dL · loss_coefficients(apply, α_{t+1}, task ids), η_t)

Shared by :func:`amasim.driver.run` (training steps and the round protocols' mixture
steps), the LLM backend and, through :mod:`amasim.apply`, the TRL integration — so all
apply weights identically.

>>> from amasim import mixers
>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(100, 10), dim=3))
>>> oracle.reset([0])
>>> mixer = mixers.ama_r(0.1)
>>> mixing = Mixing(mixer, oracle, seeds=[0], batch_size=4, apply="reweight", score="clipped")
>>> out = mixing.step(mixer.init(2, seed=[0]), 0, learning_rate=0.1)
>>> out.weights.shape, out.counts.tolist(), out.loss_count.tolist()
((1, 2), [[4, 4]], [8])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim import prng
from amasim.apply import batch_tasks, counts_observed, draw_distribution, loss_coefficients
from amasim.capabilities import require_capabilities
from amasim.mixers import Mixer, check_apply
from amasim.oracle import Oracle
from amasim.scores import check_score, example_scores, task_means

__all__ = ["Mixing", "StepResult", "NonFiniteLoss", "check_finite_losses", "Reduce"]

#: combines the data-parallel ranks' per-task means and counts (all-reduce)
Reduce = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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


class StepResult(NamedTuple):
    """What one :meth:`Mixing.step` did; arrays carry the replicate axis R.  Under data
    parallelism ``scores``, ``counts``, ``loss_sum`` and ``loss_count`` are the global
    batch's (every rank's share), ``losses`` this rank's own."""

    state: Any  # the mixer's new state
    weights: np.ndarray  # (R, k) α_t, the weights the batch was drawn or weighted with
    scores: np.ndarray  # (R, k) per-task mean score of the batch (0 where absent)
    counts: np.ndarray  # (R, k) examples of each task in the batch
    losses: np.ndarray  # (R, n) per-example losses L(θ_t, z) of this rank's share
    loss_sum: np.ndarray  # (R,) Σ L over the global batch
    loss_count: np.ndarray  # (R,) examples in the global batch


class Mixing:
    """One training step of any mixer on any oracle — the step in the module docstring.

    Refuses an oracle that lacks a capability the mixer requires.  ``step(..., observe=False)``
    trains on α_t without updating the mixer (signals other than the batch are observed by
    :func:`amasim.driver.run`).

    Data parallelism (``shard=(rank, world)``): every rank draws the same *global* batch —
    ``world × batch_size`` examples (per task when reweighting) from the same streams, the
    oracle's example draws included — and keeps its own share of it (its contiguous block;
    when reweighting, its block of every task), which must be possible by slicing the
    batch's ``task_ids``, ``reference_losses`` and ``data`` along their second axis.
    ``reduce(means, counts) -> (means, counts)`` then combines the ranks' per-task scores
    (and losses, for the record) before the mixer update, so every rank applies the update
    of the global batch; each rank's loss weights assume gradients are averaged over ranks
    (DDP, FSDP).  One rank with ``world × batch_size`` gives the same batch, updates and (up
    to summation order) gradients.  ``stream`` selects the random stream of the task draws.
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
        reduce: Reduce | None = None,
        stream: int = prng.LOOP_STREAM,
        shard: tuple[int, int] | None = None,
    ) -> None:
        require_capabilities(oracle, mixer.requires, f"mixer {mixer.name!r}")
        check_apply(apply)
        self.mixer, self.oracle, self.reduce = mixer, oracle, reduce
        self.batch_size, self.score, self.apply = batch_size, check_score(score), apply
        # DoReMi scores against the oracle's default-mixture reference, not the specialists
        self.default_reference = "default_reference" in mixer.requires
        self.drawn = counts_observed(apply)  # resample, importance: the batch is drawn
        self.num_tasks = k = len(oracle.task_names)
        rank, world = (0, 1) if shard is None else shard
        if not 0 <= rank < world:
            raise ValueError(f"shard={shard!r}: need 0 <= rank < world")
        total = batch_size * world  # the global batch: per task when reweighting
        keys = prng.replicate_keys(list(seeds), stream=stream)
        self.uniforms = prng.UniformStream(keys, total)
        self.fixed_ids = batch_tasks(
            "reweight", None, np.zeros((len(keys), k * total)), num_tasks=k
        )
        self.fixed_counts = np.full((len(keys), k), batch_size)
        self.fixed_counts.flags.writeable = False
        self.local = None  # this rank's positions in the global batch
        if world > 1:
            block = np.arange(rank * batch_size, (rank + 1) * batch_size)
            self.local = block if self.drawn else (block + total * np.arange(k)[:, None]).ravel()

    def _tasks(self, state: Any, alpha: np.ndarray, t: int) -> np.ndarray:
        if not self.drawn:
            return self.fixed_ids
        distribution = draw_distribution(self.apply, alpha, state)
        return batch_tasks(self.apply, distribution, self.uniforms(t), num_tasks=self.num_tasks)

    def step(self, state: Any, t: int, learning_rate: float, observe: bool = True) -> StepResult:
        """Draw a batch, score it, update the mixer (if ``observe``), take the oracle's step."""
        alpha = self.mixer.weights(state)
        task_ids = self._tasks(state, alpha, t)
        batch = self.oracle.sample(task_ids)
        if self.local is not None:  # keep this rank's share of the global batch
            batch, task_ids = _shard(batch, self.local), task_ids[:, self.local]
        losses = self.oracle.losses(batch)
        reference = batch.reference_losses
        if self.default_reference:
            reference = self.oracle.default_reference_losses(batch)
        values, dvalues = example_scores(self.score, losses, reference)
        means, counts, loss_sum, loss_count = self._observed(values, losses, task_ids)
        try:  # zero cost unless raised
            new_alpha = alpha
            if observe:
                new_alpha, state = self.mixer.update(state, means, counts if self.drawn else None)
            sampling = draw_distribution(self.apply, new_alpha, state) if self.drawn else None
            coefficients = loss_coefficients(
                self.apply, new_alpha, task_ids, sampling=sampling, num_tasks=self.num_tasks
            )
            loss_weights = dvalues * coefficients
        except ValueError:
            # every score propagates a NaN loss and every mixer refuses non-finite scores:
            # name the task and the example instead (never a score computed from NaN)
            check_finite_losses(losses, task_ids, self.oracle.task_names)
            raise
        self.oracle.step(batch, loss_weights, learning_rate)
        return StepResult(state, alpha, means, counts, losses, loss_sum, loss_count)

    def _observed(self, values: np.ndarray, losses: np.ndarray, task_ids: np.ndarray):
        """(score means, counts, Σ loss, examples) of the batch — the global batch's when
        the ranks' shares are combined by ``reduce`` (one all-reduce for all four)."""
        r, k, b = values.shape[0], self.num_tasks, self.batch_size
        if self.drawn:
            means, counts = task_means(values, task_ids, k, check=False)
        else:  # the fixed layout: B examples of every task, task by task
            means, counts = np.add.reduce(values.reshape(r, k, b), axis=-1) / b, self.fixed_counts
        if self.reduce is None:
            return means, counts, np.add.reduce(losses, axis=1), np.full(r, losses.shape[1])
        if self.drawn:
            loss_means, _ = task_means(losses, task_ids, k, check=False)
        else:
            loss_means = np.add.reduce(losses.reshape(r, k, b), axis=-1) / b
        both, both_counts = self.reduce(
            np.concatenate([means, loss_means], axis=-1), np.concatenate([counts, counts], axis=-1)
        )
        means, loss_means, counts = both[:, :k], both[:, k:], both_counts[:, :k]
        loss_count = counts.sum(axis=-1)
        return means, counts, (loss_means * counts).sum(axis=-1), loss_count


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
