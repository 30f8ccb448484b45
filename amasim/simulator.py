"""The oracle of a :class:`~amasim.problems.ConvexProblem`, batched over replicates.

θ has shape (R, d); every call is one array computation over all R replicates.
Example draws come from the counter-based generator of :mod:`amasim.prng`, keyed by
the seeds and counted by the number of ``sample`` calls, so a replicate draws the same
examples alone or beside others.

Optional capabilities (:mod:`amasim.capabilities`): ``"group_validation"``
(:meth:`SimulatedOracle.evaluate_groups`; the validation set of a group is its whole
dataset, the data ``evaluate`` reads), ``"mixture_rounds"`` (``train_on_mixture``,
through ``sample``/``losses``/``step``, so those steps enter θ̄ too) and
``"default_reference"`` (:meth:`SimulatedOracle.default_reference_losses`: DoReMi's one
reference model, trained on the natural mixture, :func:`amasim.problems.default_reference`).

>>> import numpy as np
>>> from amasim.problems import make_problem
>>> oracle = SimulatedOracle(make_problem("logistic", sizes=(40, 10), dim=3))
>>> oracle.reset([0, 1])
>>> batch = oracle.sample(np.array([[0, 1], [1, 1]]))
>>> oracle.losses(batch).shape
(2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amasim import prng
from amasim.capabilities import MixtureRoundsFromSteps
from amasim.oracle import Batch
from amasim.problems import ConvexProblem, default_reference, loss_and_slope
from amasim.validate import check_object

__all__ = ["SimulatedOracle"]


class SimulatedOracle(MixtureRoundsFromSteps):
    """Projected SGD from θ₀ = 0 on a convex problem; keeps the average of the iterates."""

    max_replicates = None

    def __init__(self, problem: ConvexProblem) -> None:
        check_object(
            problem, ConvexProblem, "problem", "pass a problem, e.g. make_problem('quadratic')"
        )
        self.problem = problem
        self.task_names = problem.task_names
        self.task_sizes = problem.sizes
        self._offsets = problem.offsets[:-1]
        # as floats: u·size then multiplies floats (exact below 2⁵³, the same numbers)
        self._sizes = np.asarray(problem.sizes, dtype=np.float64)
        self._keys: np.ndarray | None = None

    def reset(self, seeds: Sequence[int]) -> None:
        seeds = list(seeds)
        self._keys = prng.replicate_keys(seeds, stream=prng.SAMPLE_STREAM)
        self._stream: prng.UniformStream | None = None
        self._draws = 0
        self.theta = np.zeros((len(seeds), self.problem.dim))  # θ₀ = 0, inside the ball
        self.theta_sum = np.zeros_like(self.theta)
        self.iterations = 0
        self._cache: tuple[Batch, np.ndarray] | None = None
        self.reset_mixture_rounds(seeds)

    def sample(self, task_ids: np.ndarray) -> Batch:
        if self._keys is None:
            raise RuntimeError("call reset(seeds) before sample()")
        if self._stream is None or self._stream.size != task_ids.shape[1]:
            self._stream = prng.UniformStream(self._keys, task_ids.shape[1])
        u = self._stream(self._draws)  # = prng.uniform(keys, draws, N)
        self._draws += 1
        # Gathers: indexing a 1-D table is numpy's fastest gather (np.take, a Python
        # wrapper, costs ~1 µs more a call); rows of a 2-D table use the take method.
        sizes = self._sizes[task_ids]
        index = self._offsets[task_ids] + prng.integers(u, sizes)
        return Batch(task_ids, self.problem.reference_losses[index], index)

    def losses(self, batch: Batch) -> np.ndarray:
        x = self.problem.features.take(batch.data, axis=0)  # (R, N, d)
        preds = np.matvec(x, self.theta)  # (R, N): x_n · θ_r
        targets = self.problem.targets[batch.data]
        loss, slope = loss_and_slope(self.problem.loss, preds, targets)
        self._cache = (batch, x, slope)
        return loss

    def step(self, batch: Batch, loss_weights: np.ndarray, learning_rate: float) -> None:
        if self._cache is None or self._cache[0] is not batch:
            self.losses(batch)
        _, x, slope = self._cache
        grad = np.vecmat(loss_weights * slope, x)  # (R, d): Σ_n w_n ℓ'_n x_n
        self.theta = self.problem.project(self.theta - learning_rate * grad)
        self.theta_sum += self.theta
        self.iterations += 1

    @property
    def average_theta(self) -> np.ndarray:
        """θ̄ = mean of the iterates after each step (θ₀ if no step was taken)."""
        return self.theta_sum / self.iterations if self.iterations else self.theta

    def evaluate(self, score: str = "clipped", averaged: bool = False) -> np.ndarray:
        theta = self.average_theta if averaged else self.theta
        return self.problem.task_scores(theta, score)

    def default_reference_losses(self, batch: Batch) -> np.ndarray:
        """Each example's loss under the default-mixture reference model, (R, N)."""
        return default_reference(self.problem).losses[batch.data]

    def evaluate_groups(self, score: str = "loss") -> np.ndarray:
        """Every group's mean ``score`` over its data at the current θ, (R, k)."""
        if self._keys is None:
            raise RuntimeError("call reset(seeds) before evaluate_groups()")
        return self.evaluate(score)  # the last iterate, on each group's whole dataset
