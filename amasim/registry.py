"""The one method registry: name → factory, plus the tuning policies that set step sizes.

Every method of the field is one :class:`Method`: a factory from hyperparameters
(:class:`Hyper`) to a :class:`~amasim.mixers.Mixer`, the names of the hyperparameters a
*tuning policy* sets, and one line on it.  What the method observes (its
:class:`~amasim.mixers.Signal`) and the oracle capabilities it needs are the built
mixer's (:func:`describe`), so nothing is written twice.  The CLI, the studies
(:mod:`amasim.studies`) and the ``llm`` pipeline all read this table; a name is spelled
one way everywhere.

Tuning policies are kept apart from the factories:

==========================  ==============================================================
:class:`Theory`             the convex theory's 1/√T rule for a horizon of T steps:
                            η = mixer_step/√T, AMA-S's c = min(1, s·√(k ln k / T))
:data:`LMO_SETTINGS`        the round protocols' fixed settings (η = 0.2, c = 0.05)
:class:`Fixed`              given values (an ``llm`` config's ``[mix]`` section)
==========================  ==============================================================

:class:`ByProtocol` picks one per signal: the studies use the theory for signals observed
every step and the LMO settings for round signals.

Adding a method is one line: ``register("my-mixer", Method(lambda h: my_mixer(h.step_size),
("step_size",), "what it does"))`` — then ``amasim converge --methods my-mixer``,
``amasim compare`` and an ``llm`` config's ``methods`` run it by name.

>>> mixer = build("ama-s", steps=10_000, sizes=(100, 10, 10))
>>> mixer.name, mixer.apply, mixer.score, round(mixer.signal.every)
('ama-s', 'resample', 'clipped', 1)
>>> describe("aioli").requires
('group_validation',)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim import gradient_mixers, grdpo, lmo, mixers
from amasim.capabilities import capabilities_of
from amasim.driver import requirements
from amasim.mixers import Mixer, Signal

__all__ = [
    "Hyper",
    "Method",
    "METHODS",
    "MERGES",
    "Theory",
    "Fixed",
    "ByProtocol",
    "LMO_SETTINGS",
    "STUDY_TUNING",
    "register",
    "check_method",
    "describe",
    "build",
    "examples_per_step",
    "steps_for_budget",
    "missing",
]


class Hyper(NamedTuple):
    """What a factory may read: the tuned step size and smoothing, the task sizes, and a
    target histogram (importance sampling)."""

    step_size: float = 1.0
    smoothing: float = 0.1
    sizes: tuple[int, ...] = ()
    target_weights: Any = None


class Method(NamedTuple):
    """A registered method: ``factory(Hyper) -> Mixer``, the :class:`Hyper` fields a
    tuning policy sets (``tuned``), a one-line description, whether it also runs in the
    rounds protocol (``online``: adaptive batch mixers), and whether it is an ablation of
    another method (left out of ``amasim compare``'s default list)."""

    factory: Callable[[Hyper], Mixer]
    tuned: tuple[str, ...] = ()
    description: str = ""
    online: bool = False
    ablation: bool = False


def _importance_sampling(h: Hyper) -> Mixer:
    if h.target_weights is None:
        raise ValueError(
            "method 'importance-sampling' needs the target's task histogram: pass "
            "target_weights (amasim.transfer.importance_sampling_weights(split))"
        )
    mixer = gradient_mixers.fixed_weights(h.target_weights, name="importance-sampling")
    return mixer._replace(requires=("target_set",))


_STEP, _BOTH = ("step_size",), ("step_size", "smoothing")
#: name → :class:`Method`, in the order tables list them.
METHODS: dict[str, Method] = {
    "uniform": Method(lambda h: mixers.uniform(list(h.sizes)), (), "α ∝ dataset sizes"),
    "stratified": Method(lambda h: mixers.stratified(), (), "every task equally, α = 1/k"),
    "importance-sampling": Method(
        _importance_sampling, (), "tasks ∝ the target's task histogram (DGA's baseline)"
    ),
    "group-dro": Method(
        lambda h: mixers.group_dro(h.step_size), _STEP, "EG on the raw loss, reweighting", True
    ),
    "doremi": Method(
        lambda h: mixers.doremi(h.step_size, 1e-3),
        _STEP,
        "EG on clipped excess over one default-mixture reference, smoothing 1e-3; retrain on "
        "mean α",
    ),
    "doremi-specialists": Method(
        lambda h: mixers.doremi(h.step_size, 1e-3, reference="specialists"),
        _STEP,
        "DoReMi scoring the excess over the per-task specialists (a variant)",
        True,
        ablation=True,
    ),
    "odm": Method(lambda h: mixers.odm(), (), "EXP3 on the raw loss, decaying exploration", True),
    "ama-r": Method(
        lambda h: mixers.ama_r(h.step_size), _STEP, "EG on clipped excess loss, reweighting", True
    ),
    "ama-s": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing),
        _BOTH,
        "EXP3 on clipped excess loss, resampling",
        True,
    ),
    "ama-r-noclip": Method(
        lambda h: mixers.ama_r(h.step_size, score="excess"),
        _STEP,
        "AMA-R without clipping",
        ablation=True,
    ),
    "ama-s-noclip": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing, score="excess"),
        _BOTH,
        "AMA-S without clipping",
        ablation=True,
    ),
    "ama-s-raw": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing, score="loss"),
        _BOTH,
        "AMA-S on the raw loss (no specialist)",
        ablation=True,
    ),
    "gr-dpo": Method(
        lambda h: grdpo.gr_dpo(h.step_size, sizes=list(h.sizes)),
        _STEP,
        "GR-DPO (Ramesh et al. 2024): EG on importance-weighted raw loss, batch from the union",
    ),
    "skill-it": Method(
        lambda h: lmo.skill_it(h.step_size), _STEP, "LMO with a skills graph from single-task runs"
    ),
    "aioli": Method(
        lambda h: lmo.aioli(h.step_size, sweeps=2, epsilon=0.75, ema=0.5, normalise=True),
        _STEP,
        "LMO with A measured each round by LearnParams",
    ),
    "dml": Method(lambda h: lmo.dml_sweep(), (), "static log-linear law fitted on a sweep"),
    "doge": Method(
        lambda h: gradient_mixers.doge(h.step_size, smoothing=0.05), _STEP, "EG on Σ_j ⟨∇L_i, ∇L_j⟩"
    ),
    "dga": Method(
        lambda h: gradient_mixers.dga(1.0, update_every=10, ema=0.5, smoothing=0.05),
        (),
        "EG on ⟨∇L_i, ∇L_target⟩ every 10 steps",
    ),
}

#: merge name → :func:`amasim.merging.merge` method, applied to the specialists.
MERGES: dict[str, str] = {
    "merge-linear": "linear",
    "merge-task-arithmetic": "task_arithmetic",
    "merge-ties": "ties",
    "merge-dare-ties": "dare_ties",
}


def register(name: str, method: Method) -> None:
    """Add ``method`` under ``name`` (the one line a new method needs)."""
    if not isinstance(method, Method):
        raise TypeError(f"register({name!r}, ...) takes an amasim.registry.Method")
    if name in METHODS or name in MERGES:
        raise ValueError(f"method {name!r} is already registered: pick another name")
    METHODS[name] = method


def check_method(name: str) -> str:
    """``name`` if it names a registered method or merge, else a clear error listing them."""
    if name not in METHODS and name not in MERGES:
        known = ", ".join([*METHODS, *MERGES])
        raise ValueError(f"method {name!r} is unknown: use one of {known}")
    return name


# ---------------------------------------------------------------------------- tuning
class Theory(NamedTuple):
    """The 1/√T rule of the convex theory (notes §3–§4): for a horizon of T steps and k
    tasks, η = mixer_step/√T and c = min(1, smoothing·√(k ln k / T)) — EXP3's tuning
    (Auer et al. 2002), without which a fixed c leaves an O(c) bias."""

    mixer_step: float = 3.0
    smoothing: float = 1.0

    def __call__(self, steps: int, num_tasks: int) -> tuple[float, float]:
        k = num_tasks
        c = min(1.0, self.smoothing * np.sqrt(k * np.log(max(k, 2)) / steps))
        return float(self.mixer_step / np.sqrt(steps)), float(c)


class Fixed(NamedTuple):
    """Given step size and smoothing, whatever the horizon (a config's values)."""

    step_size: float
    smoothing: float

    def __call__(self, steps: int, num_tasks: int) -> tuple[float, float]:
        return self.step_size, self.smoothing


#: the round protocols' settings (one round = many steps)
LMO_SETTINGS = Fixed(0.2, 0.05)


class ByProtocol(NamedTuple):
    """``per_step`` for signals observed every step or few (batch, alignment), ``per_round``
    for round signals (validation, LearnParams, a sweep)."""

    per_step: Any = Theory()
    per_round: Any = LMO_SETTINGS

    def __call__(self, steps: int, num_tasks: int, kind: str = "batch") -> tuple[float, float]:
        policy = self.per_step if kind in ("batch", "alignment") else self.per_round
        return policy(steps, num_tasks)


#: how the studies tune every method (1/√T per step, the LMO settings per round)
STUDY_TUNING = ByProtocol()


# ----------------------------------------------------------------------------- build
def describe(name: str, num_tasks: int = 2) -> Mixer:
    """The mixer of ``name`` with placeholder hyperparameters: its name, signal, apply,
    score and ``requires``, before any horizon is known."""
    method = METHODS[_known(name)]
    hyper = Hyper(1.0, 0.1, (1,) * num_tasks, [1.0 / num_tasks] * num_tasks)
    return method.factory(hyper)


def build(
    name: str,
    *,
    steps: int,
    sizes: Sequence[int],
    policy: Any = STUDY_TUNING,
    signal: Signal | None = None,
    target_weights: Any = None,
) -> Mixer:
    """The mixer of method ``name`` for a horizon of ``steps`` steps and tasks of ``sizes``.

    ``policy(steps, k[, signal kind])`` gives (step size, smoothing) for the fields the
    method tunes; ``signal`` (e.g. ``Signal("validation")``) is the protocol it will run
    in, when not its own.
    """
    method = METHODS[_known(name)]
    k = len(sizes)
    kind = (signal or describe(name, k).signal).kind
    step_size, smoothing = (
        policy(steps, k, kind) if isinstance(policy, ByProtocol) else policy(steps, k)
    )
    hyper = Hyper(step_size, smoothing, tuple(int(s) for s in sizes), target_weights)
    return method.factory(hyper)


def examples_per_step(mixer: Mixer, num_tasks: int, batch_size: int) -> int:
    """Examples (= gradient evaluations) one step costs: k·B reweighting, B otherwise."""
    batch = mixer.signal.kind == "batch" and mixer.apply == "reweight"
    return num_tasks * batch_size if batch else batch_size


def steps_for_budget(name: str, budget: int, num_tasks: int, batch_size: int) -> int:
    """The horizon T that spends ``budget`` examples per replicate on method ``name``."""
    per_step = examples_per_step(describe(name, num_tasks), num_tasks, batch_size)
    if budget < per_step:
        raise ValueError(
            f"budget={budget} examples is less than one step of method {name!r} "
            f"({per_step} examples): raise the budget"
        )
    return budget // per_step


def missing(name: str, oracle: Any, signal: Signal | None = None) -> tuple[str, ...]:
    """The capabilities method ``name`` needs (under ``signal``) and ``oracle`` lacks."""
    mixer = describe(name, len(oracle.task_names))
    have = capabilities_of(oracle)
    return tuple(c for c in requirements(mixer, signal) if c not in have)


def _known(name: str) -> str:
    if name not in METHODS:
        known = ", ".join(METHODS)
        hint = " (a merge: it trains nothing)" if name in MERGES else ""
        raise ValueError(f"method {name!r} is not a trained method{hint}: use one of {known}")
    return name
