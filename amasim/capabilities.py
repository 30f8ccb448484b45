"""Optional oracle capabilities: what a mixer may ask of an oracle beyond the base protocol.

The base protocol (:mod:`amasim.oracle`) is enough for every mixer that scores the
training batch (uniform, AMA-R/S, Group DRO, DoReMi, ODM).  Other methods need more;
each extra need is a named *capability*, a small :class:`typing.Protocol` whose arrays
are batched over the R replicates of ``reset(seeds)`` like the base protocol's:

=====================  ==============================================================
``"task_gradients"``   ``task_gradients() -> (R, k, d)``: every task's mean loss
                       gradient at the current θ; ``extra_gradient_evaluations`` (int)
                       counts the per-example gradients spent outside ``step`` and is
                       0 after ``reset``.  Inner products ⟨∇L_i, ∇L_j⟩ follow.  (DoGE)
``"target_set"``       ``target_gradient() -> (R, d)``: the mean gradient of a small
                       specialised target set (counted like ``task_gradients``), and
                       ``target_loss(averaged=False, split="train") -> (R,)``.  (DGA)
``"group_validation"`` ``evaluate_groups(score="loss") -> (R, k)``: every group's mean
                       validation ``score`` at the current θ (the last iterate), the
                       signal a mixer may read *during* training; it never changes the
                       model.  (Aioli, Skill-It, the round protocol)
``"mixture_rounds"``   ``train_on_mixture(mixture, steps, *, learning_rate,
                       batch_size=8)``: ``steps`` SGD steps, each on ``batch_size``
                       examples whose groups are drawn from ``mixture`` (R, k) (or (k,)),
                       with the mean loss; ``steps=0`` leaves the model unchanged.
                       (Aioli's LearnParams, Skill-It's graph, DML's sweep)
=====================  ==============================================================

Every draw a capability makes is a pure function of the seeds of the last ``reset``
(so ``reset`` with the same seeds replays it) and a replicate gets the same numbers
alone or batched.  An oracle says what it offers by having the methods; it may narrow
that with a ``capabilities`` attribute (e.g. a gradient oracle without a target set).
A :class:`~amasim.mixers.Mixer` lists what it needs in ``requires``; the training
entry points call :func:`require_capabilities`, and ``check_oracle(oracle,
capabilities=...)`` (:func:`check_capabilities`) verifies an implementation.
:class:`MixtureRoundsFromSteps` gives any oracle ``train_on_mixture`` from its own
``sample``/``losses``/``step``.

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(30, 10), dim=3))
>>> sorted(capabilities_of(oracle))
['group_validation', 'mixture_rounds']
>>> check_capabilities(oracle, ["group_validation", "mixture_rounds"])
>>> oracle.reset([0, 1])
>>> before = oracle.evaluate_groups()
>>> oracle.train_on_mixture([0.9, 0.1], 20, learning_rate=0.1)
>>> bool((oracle.evaluate_groups() < before).all()), before.shape
(True, (2, 2))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from amasim import prng
from amasim.oracle import OracleError, _check_array, _fail

__all__ = [
    "CAPABILITIES",
    "Capability",
    "TaskGradients",
    "TargetSet",
    "GroupValidation",
    "MixtureRounds",
    "MissingCapabilityError",
    "MixtureRoundsFromSteps",
    "capabilities_of",
    "require_capabilities",
    "check_capabilities",
]


@runtime_checkable
class TaskGradients(Protocol):
    """``"task_gradients"``: per-task mean gradients, (R, k, d), and their cost."""

    extra_gradient_evaluations: int

    def task_gradients(self) -> np.ndarray: ...


@runtime_checkable
class TargetSet(Protocol):
    """``"target_set"``: the gradient (R, d) and loss (R,) of a specialised target set."""

    extra_gradient_evaluations: int

    def target_gradient(self) -> np.ndarray: ...

    def target_loss(self, averaged: bool = False, split: str = "train") -> np.ndarray: ...


@runtime_checkable
class GroupValidation(Protocol):
    """``"group_validation"``: every group's validation score at the current θ, (R, k)."""

    def evaluate_groups(self, score: str = "loss") -> np.ndarray: ...


@runtime_checkable
class MixtureRounds(Protocol):
    """``"mixture_rounds"``: train ``steps`` steps on batches drawn from ``mixture``."""

    def train_on_mixture(
        self, mixture: Any, steps: int, *, learning_rate: float, batch_size: int = 8
    ) -> None: ...


class Capability(NamedTuple):
    """One row of :data:`CAPABILITIES`: its protocol, the methods it needs, the fix."""

    protocol: type
    methods: tuple[str, ...]
    fix: str


CAPABILITIES: dict[str, Capability] = {
    "task_gradients": Capability(
        TaskGradients,
        ("task_gradients",),
        "implement task_gradients() -> (R, k, d) and an int extra_gradient_evaluations "
        "(amasim.transfer.GradientSimulatedOracle does, for a ConvexProblem)",
    ),
    "target_set": Capability(
        TargetSet,
        ("target_gradient", "target_loss"),
        "give the oracle a target set (GradientSimulatedOracle(problem, target=(X_t, y_t))) "
        "or implement target_gradient() -> (R, d) and target_loss() -> (R,)",
    ),
    "group_validation": Capability(
        GroupValidation,
        ("evaluate_groups",),
        "implement evaluate_groups(score='loss') -> (R, k), every group's validation score "
        "at the current model",
    ),
    "mixture_rounds": Capability(
        MixtureRounds,
        ("train_on_mixture",),
        "implement train_on_mixture(mixture, steps, *, learning_rate, batch_size), or "
        "inherit amasim.capabilities.MixtureRoundsFromSteps and call "
        "reset_mixture_rounds(seeds) in reset",
    ),
}


class MissingCapabilityError(OracleError, TypeError):
    """A mixer needs a capability the oracle lacks; the message names it and the fix."""


def _check_names(capabilities: Iterable[str]) -> tuple[str, ...]:
    if isinstance(capabilities, str):
        capabilities = (capabilities,)
    names = tuple(capabilities)
    for name in names:
        if name not in CAPABILITIES:
            raise ValueError(
                f"capability {name!r} is unknown: use one of {', '.join(CAPABILITIES)}"
            )
    return names


def _has_methods(oracle: Any, name: str) -> bool:
    return all(callable(getattr(oracle, m, None)) for m in CAPABILITIES[name].methods)


def capabilities_of(oracle: Any) -> frozenset[str]:
    """The capabilities ``oracle`` offers: those whose methods it has, narrowed by its
    ``capabilities`` attribute when it declares one."""
    found = frozenset(name for name in CAPABILITIES if _has_methods(oracle, name))
    declared = getattr(oracle, "capabilities", None)
    return found if declared is None else found & frozenset(declared)


def require_capabilities(oracle: Any, capabilities: Iterable[str], who: str = "this") -> None:
    """Raise :class:`MissingCapabilityError` unless ``oracle`` offers every capability.

    >>> from amasim.problems import make_problem
    >>> from amasim.simulator import SimulatedOracle
    >>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(10, 10), dim=2))
    >>> require_capabilities(oracle, ["task_gradients"], "mixer 'doge'")
    Traceback (most recent call last):
    ...
    amasim.capabilities.MissingCapabilityError: mixer 'doge' requires the oracle capability 'task_gradients', but SimulatedOracle has no method task_gradients(). Fix: implement task_gradients() -> (R, k, d) and an int extra_gradient_evaluations (amasim.transfer.GradientSimulatedOracle does, for a ConvexProblem)
    """  # noqa: E501
    offered = capabilities_of(oracle)
    for name in _check_names(capabilities):
        if name in offered:
            continue
        cap, kind = CAPABILITIES[name], type(oracle).__name__
        missing = [m for m in cap.methods if not callable(getattr(oracle, m, None))]
        if missing:
            why = f"{kind} has no method " + ", ".join(f"{m}()" for m in missing)
        else:
            why = f"{kind} does not offer it (its `capabilities` attribute leaves it out)"
        raise MissingCapabilityError(
            f"{who} requires the oracle capability {name!r}, but {why}. Fix: {cap.fix}"
        )


# ------------------------------------------------------------------ implementation
def check_mixture(mixture: Any, replicates: int, groups: int) -> np.ndarray:
    """``mixture`` as finite non-negative (R, k) weights with positive sums."""
    mix = np.asarray(mixture, dtype=np.float64)
    if mix.shape not in ((groups,), (replicates, groups)):
        raise ValueError(
            f"mixture has shape {mix.shape}: expected ({groups},) or ({replicates}, {groups})"
        )
    if not np.isfinite(mix).all() or (mix < 0).any() or (mix.sum(axis=-1) <= 0).any():
        raise ValueError("mixture must be finite weights >= 0 with a positive sum per replicate")
    return np.broadcast_to(mix, (replicates, groups))


def check_steps(steps: Any, name: str = "steps") -> int:
    """``steps`` as an int >= 0."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"{name}={steps!r} must be an int >= 0")
    return int(steps)


class MixtureRoundsFromSteps:
    """The ``"mixture_rounds"`` capability built on an oracle's own ``sample``/``losses``/
    ``step``: each step draws ``batch_size`` groups from the mixture (counter-based,
    stream :data:`amasim.prng.MIXTURE_STREAM` of the seeds), samples them and steps on the mean
    loss.  The subclass calls :meth:`reset_mixture_rounds` in ``reset``.
    """

    mixture_keys: np.ndarray | None = None
    mixture_draws: int = 0

    def reset_mixture_rounds(self, seeds: Sequence[int], stream: int = prng.MIXTURE_STREAM) -> None:
        """Keys of the mixture draws (a data-parallel rank passes its own ``stream``)."""
        self.mixture_keys = prng.replicate_keys(list(seeds), stream=stream)
        self.mixture_draws = 0

    def train_on_mixture(
        self, mixture: Any, steps: int, *, learning_rate: float, batch_size: int = 8
    ) -> None:
        """``steps`` SGD steps on batches of ``batch_size`` drawn from ``mixture`` (R, k)."""
        if self.mixture_keys is None:
            raise RuntimeError(
                "train_on_mixture() before its keys exist: call reset(seeds) first, and have "
                "the oracle's reset call self.reset_mixture_rounds(seeds)"
            )
        steps = check_steps(steps)
        if check_steps(batch_size, "batch_size") < 1:
            raise ValueError("batch_size=0 must be >= 1")
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate={learning_rate!r} must be finite and > 0")
        r = len(self.mixture_keys)
        mix = check_mixture(mixture, r, len(self.task_names))
        if steps == 0:
            return
        u = prng.uniform_steps(self.mixture_keys, self.mixture_draws, steps, batch_size)
        self.mixture_draws += steps
        weights = np.full((r, batch_size), 1.0 / batch_size)
        for t in range(steps):
            batch = self.sample(prng.categorical(u[t], mix))
            self.losses(batch)
            self.step(batch, weights, learning_rate)


# ------------------------------------------------------------------------- checker
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
    names = _check_names(capabilities)
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
