"""The oracle protocol: how a training loop talks to k tasks and one model (Gymnasium style).

An oracle owns the model parameters θ (for R independent replicates) and the k task
datasets.  A training step is three calls, always in this order::

    batch = oracle.sample(task_ids)            # task_ids: int array (R, N)
    losses = oracle.losses(batch)              # L(θ, z) per example, float (R, N)
    oracle.step(batch, loss_weights, lr)       # θ ← Π_Θ(θ − lr ∇θ Σ_z w_z L(θ, z))

``step`` always follows ``losses`` on the same batch, so an oracle may keep the forward
pass of ``losses`` for the backward pass of ``step`` (the PyTorch oracle does).

Attributes and methods an oracle must have:

``task_names``  tuple of k names; ``task_sizes`` tuple of k positive ints.
``max_replicates``  how many replicates one oracle can run at once (``None``: any).
``reset(seeds)``  fresh θ₀ and data streams for ``R = len(seeds)`` replicates; the same
    seeds give the same numbers.
``sample(task_ids)`` returns a :class:`Batch` holding one example of task
    ``task_ids[r, n]`` for each entry, drawn uniformly with replacement, with the cached
    specialist loss ℓ(z) of each example in ``reference_losses``.
``losses(batch)`` per-example losses at the current θ, finite, shape (R, N).
``step(batch, loss_weights, learning_rate)`` one (projected) gradient step per replicate.
``evaluate(score, averaged)`` per-task mean ``score`` (see :mod:`amasim.scores`) over each
    task's evaluation data at the current θ, or at the running average of the iterates
    θ̄ when ``averaged`` (the point the convex theory speaks about); shape (R, k).

:func:`amasim.checker.check_oracle` runs a short episode and names the first thing that is
wrong (this module is the protocol, :mod:`amasim.checker` its checker, as Gymnasium's
``core`` and ``utils.env_checker``); optional capabilities beyond this protocol are in
:mod:`amasim.capabilities`.

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> isinstance(SimulatedOracle(make_problem("quadratic", sizes=(50, 10), dim=3)), Oracle)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Batch", "Oracle", "OracleError"]


class Batch(NamedTuple):
    """What ``sample`` returns: task of each example, cached specialist losses, payload."""

    task_ids: np.ndarray  # (R, N) int
    reference_losses: np.ndarray  # (R, N) float: ℓ(z) from the task's specialist
    data: Any  # oracle-specific (indices, token tensors, ...)


@runtime_checkable
class Oracle(Protocol):
    """Structural type of an oracle; see the module docstring for the contract."""

    task_names: tuple[str, ...]
    task_sizes: tuple[int, ...]
    max_replicates: int | None

    def reset(self, seeds: Sequence[int]) -> None: ...

    def sample(self, task_ids: np.ndarray) -> Batch: ...

    def losses(self, batch: Batch) -> np.ndarray: ...

    def step(self, batch: Batch, loss_weights: np.ndarray, learning_rate: float) -> None: ...

    def evaluate(self, score: str = "clipped", averaged: bool = False) -> np.ndarray: ...


class OracleError(ValueError):
    """An oracle broke the protocol; the message says which call and how to fix it."""
