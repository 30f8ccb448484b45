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
``"default_reference"`` ``default_reference_losses(batch) -> (R, N)``: the loss of each
                       example of ``batch`` under ONE reference model trained on the
                       default (natural) mixture, as DoReMi (Xie et al. 2023) scores its
                       excess; ``batch.reference_losses`` holds the task's specialist's.
                       A pure function of the batch, cached like the specialists'.  (DoReMi)
``"checkpointing"``    ``state_dict() -> dict`` and ``load_state_dict(state)``: the
                       oracle's whole training state (model, optimizer, data position),
                       so the driver can save a run and resume it with the same numbers.
``"training_metrics"`` ``last_metrics`` (dict of floats about the last batch, e.g. the DPO
                       reward accuracy) and ``tokens_seen`` (int): what the driver logs.
=====================  ==============================================================

Every draw a capability makes is a pure function of the seeds of the last ``reset``
(so ``reset`` with the same seeds replays it) and a replicate gets the same numbers
alone or batched.  An oracle says what it offers by having the methods; it may narrow
that with a ``capabilities`` attribute (e.g. a gradient oracle without a target set).
A :class:`~amasim.mixers.Mixer` lists what it needs in ``requires``; every entry point
that trains calls :func:`require_capabilities`, so a missing capability gives one message
everywhere, and :func:`amasim.checker.check_oracle` with ``capabilities=...`` verifies an
implementation.
:class:`MixtureRoundsFromSteps` gives any oracle ``train_on_mixture`` from its own
``sample``/``losses``/``step``.

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(30, 10), dim=3))
>>> sorted(capabilities_of(oracle))
['default_reference', 'group_validation', 'mixture_rounds']
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
from amasim.oracle import OracleError

__all__ = [
    "CAPABILITIES",
    "Capability",
    "TaskGradients",
    "TargetSet",
    "GroupValidation",
    "MixtureRounds",
    "DefaultReference",
    "MissingCapabilityError",
    "MixtureRoundsFromSteps",
    "Checkpointing",
    "TrainingMetrics",
    "capability_names",
    "capabilities_of",
    "require_capabilities",
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


@runtime_checkable
class DefaultReference(Protocol):
    """``"default_reference"``: per-example losses (R, N) of one default-mixture reference."""

    def default_reference_losses(self, batch: Any) -> np.ndarray: ...


@runtime_checkable
class Checkpointing(Protocol):
    """``"checkpointing"``: the oracle's training state as a dict, and back."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class TrainingMetrics(Protocol):
    """``"training_metrics"``: metrics of the last batch and the tokens seen so far."""

    last_metrics: dict[str, float]
    tokens_seen: int


class Capability(NamedTuple):
    """One row of :data:`CAPABILITIES`: its protocol, the methods it needs, the fix, and
    the attributes it needs."""

    protocol: type
    methods: tuple[str, ...]
    fix: str
    attributes: tuple[str, ...] = ()


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
        "self.reset_mixture_rounds(seeds) in reset",
    ),
    "default_reference": Capability(
        DefaultReference,
        ("default_reference_losses",),
        "implement default_reference_losses(batch) -> (R, N), each example's loss under one "
        "reference model trained on the default mixture (amasim.simulator.SimulatedOracle "
        "does), or run 'doremi-specialists', which scores the excess over the specialists",
    ),
    "checkpointing": Capability(
        Checkpointing,
        ("state_dict", "load_state_dict"),
        "implement state_dict() -> dict (model, optimizer, data position) and "
        "load_state_dict(state), or train without a checkpoint",
    ),
    "training_metrics": Capability(
        TrainingMetrics,
        (),
        "give the oracle a dict attribute last_metrics and an int attribute tokens_seen, "
        "or train without a metrics log",
        ("last_metrics", "tokens_seen"),
    ),
}


class MissingCapabilityError(OracleError, TypeError):
    """A mixer needs a capability the oracle lacks; the message names it and the fix."""


def capability_names(capabilities: Iterable[str]) -> tuple[str, ...]:
    """``capabilities`` as a tuple of known names (a lone string is one name)."""
    if isinstance(capabilities, str):
        capabilities = (capabilities,)
    names = tuple(capabilities)
    for name in names:
        if name not in CAPABILITIES:
            raise ValueError(
                f"capability {name!r} is unknown: use one of {', '.join(CAPABILITIES)}"
            )
    return names


def _missing_parts(oracle: Any, name: str) -> list[str]:
    """The methods (``"f()"``) and attributes a capability needs and ``oracle`` lacks."""
    cap = CAPABILITIES[name]
    methods = [f"{m}()" for m in cap.methods if not callable(getattr(oracle, m, None))]
    return methods + [a for a in cap.attributes if not hasattr(oracle, a)]


def capabilities_of(oracle: Any) -> frozenset[str]:
    """The capabilities ``oracle`` offers: those whose methods it has, narrowed by its
    ``capabilities`` attribute when it declares one."""
    found = frozenset(name for name in CAPABILITIES if not _missing_parts(oracle, name))
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
    for name in capability_names(capabilities):
        if name in offered:
            continue
        cap, kind = CAPABILITIES[name], type(oracle).__name__
        missing = _missing_parts(oracle, name)
        if missing:
            methods = [m for m in missing if m.endswith("()")]
            what = "method" if methods else "attribute"
            why = f"{kind} has no {what} " + ", ".join(missing)
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
