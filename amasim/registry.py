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
:class:`Theory`             each method's step sizes from the theorem that covers it
                            (``Method.theorem``, :data:`THEOREMS`) at the
                            :class:`Constants` B, D·G, b; for a method no theorem covers,
                            the 1/√T heuristic η = mixer_step/√T, c = min(1, s·√(k ln k/T))
:data:`LMO_SETTINGS`        the round protocols' fixed settings (η = 0.2, c = 0.05)
:class:`Fixed`              given values (an ``llm`` config's ``[mix]`` section)
==========================  ==============================================================

:class:`ByProtocol` picks one per signal: the studies use the theory for signals observed
every step and the LMO settings for round signals.  The constants a theorem is stated in
are the caller's to give (``build(..., constants=...)``); :func:`start_constants`
estimates them from an oracle's start model when they are unknown.

Adding a method is one line: ``register("my-mixer", Method(lambda h: my_mixer(h.step_size),
("step_size",), "what it does"))`` — then ``amasim converge --methods my-mixer``,
``amasim compare`` and an ``llm`` config's ``methods`` run it by name.

>>> mixer = build("ama-s", steps=10_000, sizes=(100, 10, 10))
>>> mixer.name, mixer.apply, mixer.score, round(mixer.signal.every)
('ama-s', 'resample', 'clipped', 1)
>>> tuning_of("ama-s-ix")
'Theorem IX (07_ama_s_ix.md)'
>>> [round(v, 5) for v in Theory()(10_000, 3, method="ama-s", constants=Constants(bound=2.0))]
[0.00231, 0.01385]
>>> describe("aioli").requires
('group_validation',)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim import gradient_mixers, grdpo, lmo, mixers
from amasim.ama_s_ix import ama_s_ix, ix_steps
from amasim.capabilities import capabilities_of
from amasim.driver import requirements
from amasim.mixers import Mixer, Signal

__all__ = [
    "Hyper",
    "Method",
    "Theorem",
    "THEOREMS",
    "Constants",
    "start_constants",
    "tuning_of",
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
    """What a factory may read: the tuned step size and smoothing, the task sizes, a
    target histogram (importance sampling) and the score bound B (AMA-S-IX's losses B − s)."""

    step_size: float = 1.0
    smoothing: float = 0.1
    sizes: tuple[int, ...] = ()
    target_weights: Any = None
    bound: float = 1.0


class Constants(NamedTuple):
    """What the theorems' step sizes are stated in (``proofs_check/derivations/00_setup.md``).

    ``bound`` B: every per-example score lies in [0, B] (the clipped excess);
    ``loss_bound``: the same for the raw loss (Group DRO, ``ama-s-raw``; ``None``: B);
    ``lipschitz_radius`` D·G: the parameter radius times the gradient bound (Theorem R's
    ordering term; 0 when unknown, which leaves Hedge's own step); ``batch_size`` b;
    ``source``: how they were obtained (``"assumed"``, ``"start model"``, ``"worst case"``).
    """

    bound: float = 1.0
    loss_bound: float | None = None
    lipschitz_radius: float = 0.0
    batch_size: int = 1
    source: str = "assumed"

    def score_bound(self, score: str) -> float:
        """B for ``score``: ``loss_bound`` for the raw loss, ``bound`` otherwise."""
        if score == "loss" and self.loss_bound is not None:
            return self.loss_bound
        return self.bound


class Theorem(NamedTuple):
    """The theorem that covers a method, and the step sizes it prescribes:
    ``steps(T, k, constants) -> (step_size, smoothing)``.  ``covered=False`` marks an
    ablation tuned as its base method, which the theorem does not cover."""

    name: str
    steps: Callable[[int, int, Constants], tuple[float, float]]
    covered: bool = True


class Method(NamedTuple):
    """A registered method: ``factory(Hyper) -> Mixer``, the :class:`Hyper` fields a
    tuning policy sets (``tuned``), a one-line description, whether it also runs in the
    rounds protocol (``online``: adaptive batch mixers), whether it is an ablation of
    another method (left out of ``amasim compare``'s default list), and the
    :class:`Theorem` whose step sizes :class:`Theory` gives it (``None``: the heuristic)."""

    factory: Callable[[Hyper], Mixer]
    tuned: tuple[str, ...] = ()
    description: str = ""
    online: bool = False
    ablation: bool = False
    theorem: Theorem | None = None


def _ln(k: int) -> float:
    return math.log(max(k, 2))  # k = 1: nothing to mix; any positive step does


def _theorem_r(score: str) -> Callable[[int, int, Constants], tuple[float, float]]:
    def steps(t: int, k: int, c: Constants) -> tuple[float, float]:
        b = c.score_bound(score)
        return math.sqrt(_ln(k) / (t * b * (b / 8 + c.lipschitz_radius))), 0.0

    return steps


def _theorem_s(score: str) -> Callable[[int, int, Constants], tuple[float, float]]:
    def steps(t: int, k: int, c: Constants) -> tuple[float, float]:
        gamma = min(1.0, math.sqrt(max(k, 2) * _ln(k) / ((math.e - 1) * t)))
        return gamma / (max(k, 2) * c.score_bound(score)), gamma

    return steps


def _theorem_ix(t: int, k: int, c: Constants) -> tuple[float, float]:
    return ix_steps(t, k, c.batch_size, c.bound)


#: The theorems of ``proofs_check/derivations`` and the step sizes each prescribes.
THEOREMS: dict[str, Theorem] = {
    "R": Theorem("Theorem R (05_ama_r.md)", _theorem_r("clipped")),
    "R-loss": Theorem("Theorem R on the raw loss (05_ama_r.md)", _theorem_r("loss")),
    "S": Theorem("Theorem S (05_ama_s.md)", _theorem_s("clipped")),
    "S-loss": Theorem("Theorem S on the raw loss (05_ama_s.md)", _theorem_s("loss")),
    "IX": Theorem("Theorem IX (07_ama_s_ix.md)", _theorem_ix),
}


def _as_base(key: str, base: str) -> Theorem:
    return Theorem(f"as {base}: {THEOREMS[key].name}, not covered", THEOREMS[key].steps, False)


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
        lambda h: mixers.group_dro(h.step_size),
        _STEP,
        "EG on the raw loss, reweighting",
        True,
        theorem=THEOREMS["R-loss"],
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
        lambda h: mixers.ama_r(h.step_size),
        _STEP,
        "EG on clipped excess loss, reweighting",
        True,
        theorem=THEOREMS["R"],
    ),
    "ama-s": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing),
        _BOTH,
        "EXP3 on clipped excess loss, resampling",
        True,
        theorem=THEOREMS["S"],
    ),
    "ama-s-ix": Method(
        lambda h: ama_s_ix(h.step_size, h.smoothing, h.bound),
        _BOTH,
        "EXP3-IX (implicit exploration) on the losses B − clipped excess, resampling",
        True,
        theorem=THEOREMS["IX"],
    ),
    "ama-r-noclip": Method(
        lambda h: mixers.ama_r(h.step_size, score="excess"),
        _STEP,
        "AMA-R without clipping",
        ablation=True,
        theorem=_as_base("R", "ama-r"),
    ),
    "ama-s-noclip": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing, score="excess"),
        _BOTH,
        "AMA-S without clipping",
        ablation=True,
        theorem=_as_base("S", "ama-s"),
    ),
    "ama-s-raw": Method(
        lambda h: mixers.ama_s(h.step_size, h.smoothing, score="loss"),
        _BOTH,
        "AMA-S on the raw loss (no specialist)",
        ablation=True,
        theorem=THEOREMS["S-loss"],
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
    """Every method tuned by its own theorem (``Method.theorem``) at ``constants`` (or the
    ones :func:`build` is given): Theorem R's η_α = √(ln k/(T·B(B/8 + DG))) for AMA-R and,
    on the raw loss, Group DRO; Theorem S's γ = min(1, √(k ln k/((e−1)T))), η_α = γ/(kB)
    for AMA-S; Theorem IX's γ = √(ln k/(2bkT)), η = √(2 ln k/(T(k/b + 1)))/B for AMA-S-IX.
    A method no theorem covers gets the 1/√T *heuristic*: η = mixer_step/√T and
    c = min(1, smoothing·√(k ln k / T)) — EXP3's form, without which a fixed c leaves an
    O(c) bias."""

    mixer_step: float = 3.0
    smoothing: float = 1.0
    constants: Constants = Constants()

    def __call__(
        self,
        steps: int,
        num_tasks: int,
        kind: str = "batch",
        method: str | None = None,
        constants: Constants | None = None,
    ) -> tuple[float, float]:
        theorem = METHODS[method].theorem if method in METHODS else None
        if theorem is not None:
            step, smoothing = theorem.steps(steps, num_tasks, constants or self.constants)
            return float(step), float(smoothing)
        k = num_tasks
        c = min(1.0, self.smoothing * np.sqrt(k * np.log(max(k, 2)) / steps))
        return float(self.mixer_step / np.sqrt(steps)), float(c)


class Fixed(NamedTuple):
    """Given step size and smoothing, whatever the horizon and method (a config's values)."""

    step_size: float
    smoothing: float

    def __call__(self, steps: int, num_tasks: int, *_: Any, **__: Any) -> tuple[float, float]:
        return self.step_size, self.smoothing


#: the round protocols' settings (one round = many steps)
LMO_SETTINGS = Fixed(0.2, 0.05)


class ByProtocol(NamedTuple):
    """``per_step`` for signals observed every step or few (batch, alignment), ``per_round``
    for round signals (validation, LearnParams, a sweep)."""

    per_step: Any = Theory()
    per_round: Any = LMO_SETTINGS

    def __call__(
        self, steps: int, num_tasks: int, kind: str = "batch", **more: Any
    ) -> tuple[float, float]:
        policy = self.per_step if kind in ("batch", "alignment") else self.per_round
        return policy(steps, num_tasks, kind, **more)


#: how the studies tune every method (its theorem per step, or the heuristic; the LMO
#: settings per round)
STUDY_TUNING = ByProtocol()


def tuning_of(name: str) -> str:
    """How the studies' policy (:data:`STUDY_TUNING`) tunes method ``name`` in its own
    protocol: its theorem (:class:`Theory`), or a heuristic.

    >>> tuning_of("ama-r"), tuning_of("doremi")
    ('Theorem R (05_ama_r.md)', 'heuristic: η = mixer_step/√T (no theorem covers it)')
    """
    method = METHODS[_known(name)]
    if method.theorem is not None:
        return method.theorem.name
    if not method.tuned:
        return "nothing tuned (fixed by the method)"
    if describe(name).signal.kind not in ("batch", "alignment"):
        return "heuristic: the round protocols' settings, η = 0.2 (no theorem covers it)"
    return "heuristic: η = mixer_step/√T (no theorem covers it)"


def start_constants(oracle: Any, batch_size: int = 1) -> Constants:
    """:class:`Constants` estimated at ``oracle``'s start model (after ``reset([0])``).

    B̂ = max_i E_i(θ₀), the largest task score at the start model — computed from the start
    model's losses and the specialists' cached ones; the raw-loss B̂ likewise.  Training
    lowers the excess, so the task scores a mixer sees start there; but this is the scale
    of the task means, not a bound on every example's score, which the theorems assume (a
    convex problem's worst case over the ball is that bound: 10–200× larger, and steps
    that small leave α near uniform at T ≤ 10⁴).  D·Ĝ = radius × max_i ‖∇E_i(θ₀)‖ when the
    oracle holds a convex problem (``oracle.problem``), else 0 (unknown).

    >>> from amasim.problems import make_problem
    >>> from amasim.simulator import SimulatedOracle
    >>> c = start_constants(SimulatedOracle(make_problem("logistic", sizes=(40, 10))), 8)
    >>> c.source, c.batch_size, bool(0 < c.bound < c.loss_bound)
    ('start model', 8, True)
    """
    oracle.reset([0])
    bound = float(np.max(oracle.evaluate("clipped")))
    loss_bound = float(np.max(oracle.evaluate("loss")))
    problem = getattr(oracle, "problem", None)
    radius_g = 0.0
    if hasattr(problem, "radius") and hasattr(problem, "features"):
        radius_g = float(problem.radius) * _start_gradient_norm(problem)
    tiny = 1e-12  # a task already at its specialist everywhere: keep B > 0
    return Constants(max(bound, tiny), max(loss_bound, tiny), radius_g, batch_size, "start model")


def _start_gradient_norm(problem: Any) -> float:
    """max_i ‖∇E_i(θ₀)‖ at θ₀ = 0 for a :class:`~amasim.problems.ConvexProblem`."""
    from amasim.problems import loss_and_slope

    x, y = problem.features, problem.targets
    losses, slope = loss_and_slope(problem.loss, np.zeros(len(y)), y)
    coef = (losses > problem.reference_losses) * slope
    sums = np.add.reduceat(coef[:, None] * x, problem.offsets[:-1], axis=0)
    return float(np.linalg.norm(sums / np.asarray(problem.sizes)[:, None], axis=1).max())


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
    constants: Constants | None = None,
) -> Mixer:
    """The mixer of method ``name`` for a horizon of ``steps`` steps and tasks of ``sizes``.

    ``policy(steps, k, kind, method=name, constants=constants)`` gives (step size,
    smoothing) for the fields the method tunes; ``signal`` (e.g. ``Signal("validation")``)
    is the protocol it will run in, when not its own; ``constants`` are the theorems'
    (:class:`Constants`; ``None``: the policy's own), whose B also reaches the factory.
    """
    method = METHODS[_known(name)]
    k = len(sizes)
    kind = (signal or describe(name, k).signal).kind
    constants = constants or _constants_of(policy)
    step_size, smoothing = policy(steps, k, kind, method=name, constants=constants)
    sizes = tuple(int(s) for s in sizes)
    return method.factory(Hyper(step_size, smoothing, sizes, target_weights, constants.bound))


def _constants_of(policy: Any) -> Constants:
    """The constants ``policy`` tunes with by default (a :class:`Theory`'s own, directly or
    as ``per_step``; :class:`Constants` ``()`` otherwise)."""
    for candidate in (policy, getattr(policy, "per_step", None)):
        own = getattr(candidate, "constants", None)
        if isinstance(own, Constants):
            return own
    return Constants()


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
