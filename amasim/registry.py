"""One registry of the field's mixing methods and the protocol that trains each on an oracle.

Every method trains one oracle (R replicates, seeds batched) on a budget of *training
examples* per replicate; the examples spent measuring (Skill-It's single-group runs,
Aioli's LearnParams steps, DML's sweep) count towards it, and the per-example gradients
DoGE and DGA spend outside training are counted next to it
(``extra_gradient_evaluations``).  Two things the budget does not count: validation
reads (``evaluate_groups``, free as in Aioli's protocol: Aioli reads every group's loss
1 + sweeps·m times a round, the rounds protocol once a round), and the data a measurement
run sees — every run starts from ``reset(seeds)``, so probe and sweep runs draw the same
examples as the training that follows, not fresh ones.  The protocols:

==============  =============================================================================
``per-batch``   :func:`amasim.train.run`, the AMA protocol: the mixer reads the scores of
                each training batch (k·B examples per step when reweighting, B resampling)
``rounds``      ``rounds`` rounds; each round the mixer reads every group's validation
                score (``evaluate_groups``, full information), then the model trains on
                its mixture (``train_on_mixture``); B examples per step
``aioli``       each round Aioli's LearnParams (:func:`amasim.lmo.aioli_round`), then the
                rest of the round on its weights
``alignment``   :func:`amasim.gradient_mixers.run_with_gradients` (DoGE every step, DGA
                every ``update_every`` steps)
``sweep``       DML: 2m + 1 short runs from the start model on fixed mixtures (a quarter of
                the budget), fit the log-linear law per replicate, train on its optimum
==============  =============================================================================

Each method lists the oracle capabilities it needs (:mod:`amasim.capabilities`);
:func:`train_method` refuses an oracle without them.  Settings are fixed here, not tuned
per method: per-batch mixers take the 1/√T tuning of :func:`amasim.methods.build`; the
rounds protocol's EG mixers and Skill-It η = 0.2; Aioli η = 0.2, 2 sweeps, ε = 0.75, EMA
0.5, normalised; DoGE η = 3/√T, smoothing 0.05; DGA η = 1 every 10 steps, EMA 0.5,
smoothing 0.05.

>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(40, 20), dim=3))
>>> out = train_method("aioli", oracle, [0, 1], Setting(budget=800, learning_rate=0.1))
>>> out.examples, oracle.theta.shape
(800, (2, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from amasim import lmo, mixers
from amasim.capabilities import capabilities_of, require_capabilities
from amasim.methods import build, examples_per_step

__all__ = ["Method", "METHODS", "ONLINE", "Setting", "Trained", "missing", "train_method"]


class Method(NamedTuple):
    """A registered method: its protocol, the capabilities it needs, one line on it."""

    protocol: str
    requires: tuple[str, ...]
    description: str


_ROUNDS = ("mixture_rounds", "group_validation")
#: name -> :class:`Method`, in the order the comparison tables list them.
METHODS: dict[str, Method] = {
    "uniform": Method("per-batch", (), "examples uniformly from the union (α ∝ sizes)"),
    "stratified": Method("per-batch", (), "every group equally (α = 1/k)"),
    "importance-sampling": Method(
        "per-batch", ("target_set",), "groups ∝ the target's cluster histogram (DGA baseline)"
    ),
    "group-dro": Method("per-batch", (), "EG on raw loss, reweighting"),
    "doremi": Method("per-batch", (), "EG on clipped excess, smoothing 1e-3, reweighting"),
    "odm": Method("per-batch", (), "EXP3 on raw loss, decaying exploration"),
    "ama-r": Method("per-batch", (), "EG on clipped excess loss, reweighting"),
    "ama-s": Method("per-batch", (), "EXP3 on clipped excess loss, resampling"),
    "skill-it": Method("rounds", _ROUNDS, "LMO with a skills graph from single-group runs"),
    "aioli": Method("aioli", _ROUNDS, "LMO with A measured each round by LearnParams"),
    "dml": Method("sweep", _ROUNDS, "static log-linear law fitted on a sweep, its optimum"),
    "doge": Method("alignment", ("task_gradients",), "EG on Σ_j ⟨∇L_i, ∇L_j⟩"),
    "dga": Method("alignment", ("task_gradients", "target_set"), "EG on ⟨∇L_i, ∇L_target⟩"),
}
#: per-batch mixers that also run in the rounds protocol (``Setting(online="rounds")``).
ONLINE = ("group-dro", "doremi", "odm", "ama-r", "ama-s")


@dataclass(frozen=True)
class Setting:
    """How one comparison trains: the example budget per replicate, the θ step size
    (``schedule`` as :func:`amasim.train.run`; protocols other than per-batch train at
    the constant step it gives at t = 0 for the horizon budget // B), batch size B,
    rounds, the protocol of :data:`ONLINE` mixers, and the importance-sampling weights
    (the target's cluster histogram) when a target exists."""

    budget: int
    learning_rate: float
    batch_size: int = 8
    schedule: str = "constant"
    rounds: int = 10
    online: str = "per-batch"
    target_weights: Any = None

    def __post_init__(self) -> None:
        if self.online not in ("per-batch", "rounds"):
            raise ValueError(f"online={self.online!r} must be 'per-batch' or 'rounds'")
        for field in ("budget", "batch_size", "rounds"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Setting({field}={value!r}): pass an int >= 1")
        if self.budget < self.batch_size * self.rounds:
            raise ValueError(
                f"budget={self.budget} is below batch_size·rounds = "
                f"{self.batch_size * self.rounds}: every round needs one step at least"
            )


class Trained(NamedTuple):
    """What :func:`train_method` spent per replicate; the oracle holds the trained model."""

    protocol: str
    examples: int
    extra_gradient_evaluations: int


def missing(name: str, oracle: Any, setting: Setting | None = None) -> tuple[str, ...]:
    """The capabilities method ``name`` needs and ``oracle`` lacks (empty: it can run)."""
    needs = METHODS[_known(name)].requires
    have = capabilities_of(oracle)
    if name == "importance-sampling" and setting is not None and setting.target_weights is None:
        have = have - {"target_set"}
    return tuple(c for c in needs if c not in have)


def _known(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown: use one of {', '.join(METHODS)}")
    return name


def _constant_rate(setting: Setting, steps: int) -> float:
    from amasim.train import learning_rate_at

    return float(learning_rate_at(setting.learning_rate, setting.schedule, 0, steps))


def train_method(name: str, oracle: Any, seeds: Sequence[int], setting: Setting) -> Trained:
    """Train method ``name`` on ``oracle`` for ``setting.budget`` examples per replicate."""
    protocol = METHODS[_known(name)].protocol
    lacking = missing(name, oracle, setting)
    if lacking:
        require_capabilities(oracle, lacking, f"method {name!r}")
        raise ValueError(f"method {name!r} needs target_weights in its Setting")
    seeds = list(seeds)
    k, b = len(oracle.task_names), setting.batch_size
    steps = setting.budget // b
    lr = _constant_rate(setting, steps)
    if protocol == "per-batch" and not (name in ONLINE and setting.online == "rounds"):
        return _per_batch(name, oracle, seeds, setting)
    if protocol == "alignment":
        from amasim.gradient_mixers import dga, doge, run_with_gradients

        mixer = (
            dga(1.0, update_every=10, ema=0.5, smoothing=0.05)
            if name == "dga"
            else doge(3.0 / np.sqrt(steps), smoothing=0.05)
        )
        out = run_with_gradients(
            mixer, oracle, steps=steps, learning_rate=lr, batch_size=b, seeds=seeds
        )
        return Trained(protocol, steps * b, out.extra_gradient_evaluations)
    _check_budget(name, protocol, steps, k, setting)
    if protocol == "aioli":
        _aioli(oracle, seeds, steps, lr, setting)
    elif protocol == "sweep":
        _dml(oracle, seeds, steps, lr, b)
    else:  # rounds: Skill-It, or an online mixer with full-information round scores
        left, mixer = steps, None
        if name == "skill-it":
            probe = _skill_it_probe(steps, k)  # m single-group runs, counted in the budget
            graph = lmo.measure_skills_graph(oracle, seeds, steps=probe, learning_rate=lr)
            mixer, left = lmo.skill_it(graph, 0.2), steps - k * probe
        _rounds(name, mixer, oracle, seeds, left, lr, setting)
    return Trained("rounds" if protocol == "per-batch" else protocol, steps * b, 0)


_AIOLI_SWEEPS = 2


def _dml_design(m: int) -> np.ndarray:
    """DML's sweep: smoothed one-hots at ε = 0.75 and 0.5 (0.625 for m = 2, where ε must
    exceed 1/m), and the uniform mixture — 2m + 1 mixtures."""
    second = 0.5 if m > 2 else 0.625
    return np.vstack(
        [lmo.smoothed_one_hot(m, 0.75), lmo.smoothed_one_hot(m, second), np.full((1, m), 1 / m)]
    )


def _skill_it_probe(steps: int, m: int) -> int:
    return max(1, steps // (10 * m))


def _check_budget(name: str, protocol: str, steps: int, m: int, setting: Setting) -> None:
    """Refuse a budget too small for the protocol's measurement plus its training."""
    rounds = setting.rounds
    needed = {  # smallest number of steps (of B examples) the protocol can run in
        "aioli": rounds * _AIOLI_SWEEPS * m,  # every round: one step per LearnParams mixture
        "sweep": len(_dml_design(m)) + 1,  # one step per sweep run, one to train
    }.get(protocol, rounds)
    if name == "skill-it":
        needed = m * _skill_it_probe(steps, m) + rounds  # m probes, one step per round
    if steps < needed:
        raise ValueError(
            f"method {name!r}: budget={setting.budget} gives {steps} steps of "
            f"batch_size={setting.batch_size}, but its protocol needs at least {needed} "
            f"(budget >= {needed * setting.batch_size}): raise Setting(budget=...)"
        )


def _per_batch(name: str, oracle: Any, seeds: list[int], setting: Setting) -> Trained:
    from amasim.train import run

    k, b = len(oracle.task_names), setting.batch_size
    probe = build(name if name != "importance-sampling" else "uniform", 1, oracle.task_sizes)
    steps = setting.budget // examples_per_step(probe, k, b)
    if name == "importance-sampling":
        from amasim.gradient_mixers import fixed_weights

        mixer = fixed_weights(setting.target_weights, name="importance_sampling")
    else:
        mixer = build(name, steps, oracle.task_sizes)
    run(
        mixer,
        oracle,
        steps=steps,
        learning_rate=setting.learning_rate,
        schedule=setting.schedule,
        batch_size=b,
        seeds=seeds,
        check=False,
    )
    return Trained("per-batch", steps * examples_per_step(mixer, k, b), 0)


def _rounds(name, mixer, oracle, seeds, steps: int, lr: float, setting: Setting) -> None:
    """The rounds protocol from a fresh model; ``mixer`` None builds online method ``name``."""
    if mixer is None:
        mixer = {
            "group-dro": lambda: mixers.group_dro(0.2),
            "doremi": lambda: mixers.doremi(0.2, 1e-3),
            "ama-r": lambda: mixers.ama_r(0.2),
            "ama-s": lambda: mixers.ama_s(0.2, 0.05),
            "odm": mixers.odm,
        }[name]()
    oracle.reset(seeds)
    state = mixer.init(len(oracle.task_names), seed=seeds)
    done = 0
    for r in range(setting.rounds):
        n = steps // setting.rounds if r < setting.rounds - 1 else steps - done
        weights, state = mixer.update(state, oracle.evaluate_groups(mixer.score))
        oracle.train_on_mixture(weights, n, learning_rate=lr, batch_size=setting.batch_size)
        done += n


def _aioli(oracle: Any, seeds: list[int], steps: int, lr: float, setting: Setting) -> None:
    """Aioli for ``steps`` steps in ``setting.rounds`` rounds; LearnParams steps count."""
    m, b, sweeps = len(oracle.task_names), setting.batch_size, _AIOLI_SWEEPS
    mixer = lmo.aioli(0.2, sweeps=sweeps, epsilon=0.75, ema=0.5, normalise=True)
    state = mixer.init(m, seed=seeds)
    oracle.reset(seeds)
    per_round = steps // setting.rounds  # >= sweeps·m (_check_budget)
    learn = max(1, per_round // (4 * sweeps * m))  # steps per LearnParams mixture
    done = 0
    for _ in range(setting.rounds):
        weights, state, _ = lmo.aioli_round(
            mixer, state, oracle, steps=learn, learning_rate=lr, batch_size=b
        )
        rest = per_round - learn * sweeps * m
        oracle.train_on_mixture(weights, rest, learning_rate=lr, batch_size=b)
        done += learn * sweeps * m + rest
    oracle.train_on_mixture(state.weights, steps - done, learning_rate=lr, batch_size=b)


def _dml(oracle: Any, seeds: list[int], steps: int, lr: float, batch_size: int) -> None:
    """DML: a sweep of 2m + 1 fixed mixtures (a quarter of the steps), fit, then train."""
    design = _dml_design(len(oracle.task_names))
    probe = max(1, steps // (4 * len(design)))
    finals = []
    for p in design:
        oracle.reset(seeds)
        oracle.train_on_mixture(p, probe, learning_rate=lr, batch_size=batch_size)
        finals.append(oracle.evaluate_groups())
    losses = np.stack(finals, axis=1)  # (R, runs, m)
    weights = np.stack([lmo.dml_optimal_mixture(lmo.dml_fit(design, y)) for y in losses])
    oracle.reset(seeds)
    rest = steps - len(design) * probe
    oracle.train_on_mixture(weights, rest, learning_rate=lr, batch_size=batch_size)
