"""The checker of the oracle protocol and its capabilities (Gymnasium's ``env_checker``).

:func:`check_oracle` runs a short episode on a third-party oracle and names the first
thing that is wrong — which call, what it did, how to fix it — as an
:class:`~amasim.oracle.OracleError`; with ``capabilities=[...]`` it also verifies the
optional capabilities of :mod:`amasim.capabilities` (:func:`check_capabilities`).
:func:`check_oracle_interface` is its call-free part (attributes and methods exist).

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(50, 10), dim=3))
>>> check_oracle(oracle, capabilities=["group_validation", "mixture_rounds"])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from amasim.capabilities import capability_names, require_capabilities
from amasim.oracle import OracleError

__all__ = ["check_oracle", "check_oracle_interface", "check_capabilities"]


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
        check_capabilities(oracle, capabilities, seeds=seeds)


def check_capabilities(
    oracle: Any, capabilities: Iterable[str], *, seeds: Sequence[int] = (0, 1)
) -> None:
    """Verify each claimed capability; raise :class:`~amasim.oracle.OracleError` naming
    the method, what was wrong and how to fix it.

    Checks that the oracle offers it (:func:`require_capabilities`), shapes, dtypes and
    finiteness, that ``task_gradients``/``target_gradient`` count their gradients and
    ``evaluate_groups`` and gradients leave the model unchanged, that
    ``train_on_mixture`` with ``steps=0`` changes nothing and with steps > 0 changes
    the losses, that ``reset`` with the same seeds replays every number, and (when the
    oracle runs two replicates) that a replicate gets the same numbers alone.
    """
    names = capability_names(capabilities)
    require_capabilities(oracle, names, "check_oracle(capabilities=...)")
    if not names:
        return
    seeds = tuple(seeds)
    if oracle.max_replicates is not None:
        seeds = seeds[: oracle.max_replicates]
    first = _episode(oracle, names, seeds)
    if any(not np.array_equal(a, b) for a, b in zip(first, _episode(oracle, names, seeds))):
        _fail("reset(seeds)", "the same seeds gave different capability results", "seed every draw")
    if len(seeds) > 1:
        alone = _episode(oracle, names, seeds[-1:])
        if any(not np.allclose(a[-1:], b, rtol=1e-9, atol=1e-12) for a, b in zip(first, alone)):
            _fail(
                f"{'/'.join(names)}",
                "a replicate gave different numbers alone than batched with others",
                "draw from per-replicate keys (amasim.prng) and compute each replicate on its own",
            )


def _counter(oracle: Any) -> int:
    count = getattr(oracle, "extra_gradient_evaluations", None)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        _fail(
            "extra_gradient_evaluations",
            f"is {count!r}",
            "keep an int count of per-example gradients computed outside step()",
        )
    return int(count)


def _gradients(oracle: Any, method: str, shape: tuple[int, ...]) -> np.ndarray:
    seen = _counter(oracle)
    where = f"{method}()"
    value = getattr(oracle, method)()
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        _fail(where, f"returned {type(value).__name__}", "return a float numpy array")
    if value.shape[: len(shape)] != shape or value.ndim != len(shape) + 1:
        want = "(R, k, d)" if len(shape) == 2 else "(R, d)"
        fix = (
            "one gradient (a d-vector) per task per replicate"
            if len(shape) == 2
            else ("one gradient (a d-vector) per replicate")
        )
        _fail(where, f"returned shape {value.shape}, expected {want} = {shape} + (d,)", fix)
    if not np.isfinite(value).all():
        _fail(where, "returned NaN or infinite values", "return finite gradients")
    if _counter(oracle) <= seen:
        _fail(where, "did not count its gradients", "add to extra_gradient_evaluations")
    return value


def _episode(oracle: Any, names: tuple[str, ...], seeds: tuple[int, ...]) -> list[np.ndarray]:
    """One pass over the claimed capabilities after ``reset(seeds)``; every number seen."""
    r, k = len(seeds), len(oracle.task_names)
    oracle.reset(list(seeds))
    batch = oracle.sample(np.tile(np.arange(k), (r, 1)))
    before = oracle.losses(batch)

    def unchanged(where: str, problem: str) -> None:
        if not np.array_equal(oracle.losses(batch), before):
            _fail(where, problem, "compute it without stepping the model")

    seen: list[np.ndarray] = []
    if {"task_gradients", "target_set"} & set(names) and _counter(oracle) != 0:
        _fail("reset()", "left extra_gradient_evaluations nonzero", "set it to 0 in reset")
    if "task_gradients" in names:
        seen.append(_gradients(oracle, "task_gradients", (r, k)))
        unchanged("task_gradients()", "changed the model")
    if "target_set" in names:
        seen.append(_gradients(oracle, "target_gradient", (r,)))
        if "task_gradients" in names and seen[-1].shape[-1] != seen[0].shape[-1]:
            _fail("target_gradient()", "has a different d from task_gradients()", "use θ's d")
        loss = _check_array("target_loss()", oracle.target_loss(), (r,), "f", "per replicate")
        seen.append(loss)
        unchanged("target_gradient()", "changed the model")
    if "group_validation" in names:
        values = _check_array(
            "evaluate_groups()", oracle.evaluate_groups(), (r, k), "f", "per group per replicate"
        )
        unchanged("evaluate_groups()", "changed the model")
        if not np.array_equal(values, oracle.evaluate_groups()):
            _fail(
                "evaluate_groups()",
                "gave different values on a second call",
                "evaluate on fixed validation data, without random draws",
            )
        seen.append(values)
    if "default_reference" in names:
        where = "default_reference_losses(batch)"
        values = oracle.default_reference_losses(batch)
        seen.append(_check_array(where, values, (r, k), "f", "one loss per example of the batch"))
        unchanged(where, "changed the model")
        if not np.array_equal(values, oracle.default_reference_losses(batch)):
            _fail(where, "gave different values on a second call", "cache the reference's losses")
    if "mixture_rounds" in names:
        seen += _check_rounds(oracle, names, seeds, batch, before)
    return seen


def _check_rounds(oracle, names, seeds, batch, before) -> list[np.ndarray]:
    """train_on_mixture: no-op at 0 steps, trains every step it is asked for, follows the
    mixture; with group_validation, the validation losses follow the model."""
    r, k = len(seeds), len(oracle.task_names)
    validated = "group_validation" in names
    mixture = np.full((r, k), 1.0 / k)
    held_out = oracle.evaluate_groups() if validated else None
    oracle.train_on_mixture(mixture, 0, learning_rate=0.1, batch_size=4)
    if not np.array_equal(oracle.losses(batch), before):
        _fail("train_on_mixture(steps=0)", "changed the model", "return at once for 0 steps")
    oracle.train_on_mixture(mixture, 2, learning_rate=0.1, batch_size=4)
    after = oracle.losses(batch)
    if np.array_equal(after, before):
        _fail("train_on_mixture(steps=2)", "left every loss unchanged", "train the model")
    if validated and np.array_equal(oracle.evaluate_groups(), held_out):
        _fail(
            "evaluate_groups()",
            "gave the same values before and after train_on_mixture(steps=2)",
            "evaluate the current model, not a stored copy",
        )

    def trained(mix: np.ndarray, steps: int) -> np.ndarray:
        oracle.reset(list(seeds))
        oracle.train_on_mixture(mix, steps, learning_rate=0.1, batch_size=4)
        return oracle.losses(batch)

    if np.array_equal(trained(mixture, 1), trained(mixture, 2)):
        _fail("train_on_mixture(steps=2)", "trained as far as steps=1", "take every step")
    if k > 1 and np.array_equal(trained(np.eye(k)[[0] * r], 2), trained(np.eye(k)[[-1] * r], 2)):
        _fail(
            "train_on_mixture(mixture)",
            "trained the same model on two different one-task mixtures",
            "draw each step's groups from the mixture",
        )
    return [after]
