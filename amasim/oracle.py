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

:func:`check_oracle` runs a short episode and names the first thing that is wrong; with
``capabilities=[...]`` it also verifies the optional capabilities of
:mod:`amasim.capabilities` (task gradients, a target set, per-group validation,
training rounds on a given mixture).

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> check_oracle(SimulatedOracle(make_problem("quadratic", sizes=(50, 10), dim=3)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Batch", "Oracle", "OracleError", "check_oracle", "check_oracle_interface"]


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


def _fail(where: str, problem: str, fix: str) -> None:
    raise OracleError(f"{where}: {problem}. Fix: {fix}")


def _check_array(
    where: str, value: Any, shape: tuple[int, ...], kind: str, entry: str = "per example"
) -> np.ndarray:
    """``value`` if it is a numpy array of ``shape`` and dtype kind ``kind`` (finite floats);
    ``entry`` says what one entry is, for the fix of a wrong shape."""
    if not isinstance(value, np.ndarray):
        _fail(where, f"returned {type(value).__name__}", "return a numpy array")
    if value.shape != shape:
        _fail(where, f"returned shape {value.shape}, expected {shape}", f"one entry {entry}")
    if value.dtype.kind not in kind:
        _fail(where, f"returned dtype {value.dtype}", f"return dtype kind in {kind!r}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        _fail(where, "returned NaN or infinite values", "return finite losses")
    return value


def check_oracle_interface(oracle: Any) -> int:
    """The part of :func:`check_oracle` that calls nothing: the protocol's attributes and
    methods exist and the task list is consistent.  Returns k; raises :class:`OracleError`.
    """
    for name in ("task_names", "task_sizes", "max_replicates"):
        if not hasattr(oracle, name):
            _fail(type(oracle).__name__, f"has no attribute {name!r}", "see amasim.oracle")
    for name in ("reset", "sample", "losses", "step", "evaluate"):
        if not callable(getattr(oracle, name, None)):
            _fail(type(oracle).__name__, f"has no method {name}()", "see amasim.oracle")
    names, sizes = tuple(oracle.task_names), tuple(oracle.task_sizes)
    if len(names) < 1:
        _fail("task_names", "is empty", "an oracle needs at least one task")
    if len(sizes) != len(names):
        _fail(
            "task_sizes",
            f"has {len(sizes)} entries for {len(names)} task_names",
            "give one size per task",
        )
    for name, size in zip(names, sizes):
        if not isinstance(size, (int, np.integer)) or size < 1:
            _fail("task_sizes", f"task {name!r} has size {size!r}", "every task needs >= 1 example")
    return len(names)


def check_oracle(
    oracle: Any,
    *,
    seeds: Sequence[int] = (0, 1),
    steps: int = 3,
    capabilities: Sequence[str] = (),
) -> None:
    """Validate a third-party oracle against the protocol; raise :class:`OracleError`.

    Checks the attributes, shapes, dtypes and finiteness of every call, that
    ``reset`` with the same seeds replays the same batches and losses, that a step with
    zero loss weights leaves the losses unchanged, that a step with positive weights
    changes them, and that ``evaluate`` returns (R, k) finite scores.  Then each of the
    optional ``capabilities`` the oracle claims
    (:func:`amasim.capabilities.check_capabilities`).
    """
    k = check_oracle_interface(oracle)
    if oracle.max_replicates is not None and oracle.max_replicates < len(seeds):
        seeds = tuple(seeds)[: oracle.max_replicates]
    r = len(seeds)
    task_ids = np.tile(np.repeat(np.arange(k), 2), (r, 1))
    n = task_ids.shape[1]
    weights = np.full((r, n), 1.0 / n)

    def episode() -> list[np.ndarray]:
        oracle.reset(list(seeds))
        seen = []
        for _ in range(steps):
            batch = oracle.sample(task_ids)
            if not isinstance(batch, tuple) or not hasattr(batch, "reference_losses"):
                _fail("sample()", f"returned {type(batch).__name__}", "return amasim.oracle.Batch")
            if not np.array_equal(
                _check_array("sample().task_ids", batch.task_ids, (r, n), "iu"), task_ids
            ):
                _fail("sample()", "task_ids differ from the ones asked for", "echo task_ids back")
            _check_array("sample().reference_losses", batch.reference_losses, (r, n), "f")
            losses = _check_array("losses()", oracle.losses(batch), (r, n), "f")
            oracle.step(batch, weights, 0.1)
            seen += [batch.reference_losses, losses]
        return seen

    first, second = episode(), episode()
    if any(not np.array_equal(a, b) for a, b in zip(first, second)):
        _fail("reset(seeds)", "the same seeds gave different batches or losses", "seed every draw")
    oracle.reset(list(seeds))
    batch = oracle.sample(task_ids)
    before = oracle.losses(batch)
    oracle.step(batch, np.zeros((r, n)), 0.1)
    if not np.allclose(oracle.losses(batch), before, rtol=1e-6, atol=1e-9):
        _fail("step()", "zero loss weights changed the losses", "scale the gradient by the weights")
    oracle.step(batch, weights, 0.1)
    if np.allclose(oracle.losses(batch), before, rtol=0, atol=0):
        _fail("step()", "a step with positive weights left every loss unchanged", "update θ")
    for averaged in (False, True):
        where = f"evaluate(averaged={averaged})"
        _check_array(where, oracle.evaluate("clipped", averaged), (r, k), "f", "per task")
    if capabilities:
        from amasim.capabilities import check_capabilities

        check_capabilities(oracle, capabilities, seeds=seeds)
