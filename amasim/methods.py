"""Named methods with the step sizes of the convex theory, for studies and the CLI.

The convergence theory (notes §3–§4) fixes the horizon T and sets every step size to
scale as 1/√T: the θ learning rate η_θ = lr/√T (schedule ``"1/sqrt(T)"``), the mixer's
η_α = mixer_step/√T, and AMA-S's exploration c = min(1, smoothing·√(k ln k / T)) — the
EXP3 tuning of Auer et al. (2002), without which a fixed c leaves an O(c) bias.  The
constants are :class:`Tuning` fields; :func:`build` returns the mixer for one method,
one horizon and k tasks.

>>> mixer = build("ama-s", steps=10_000, sizes=(100, 10, 10))
>>> mixer.name, mixer.apply, mixer.score
('ama_s', 'resample', 'clipped')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from amasim import mixers
from amasim.mixers import Mixer

if TYPE_CHECKING:  # pragma: no cover
    from amasim.oracle import Oracle
    from amasim.train import RunResult

__all__ = ["METHODS", "Tuning", "build", "examples_per_step", "run_tuned"]

#: name -> one-line description; ablations are the paper's (raw loss, no clipping).
METHODS: dict[str, str] = {
    "ama-r": "AMA-R: EG on clipped excess loss, reweighting",
    "ama-s": "AMA-S: EXP3 on clipped excess loss, resampling",
    "ama-r-noclip": "AMA-R ablation: excess loss without clipping",
    "ama-s-noclip": "AMA-S ablation: excess loss without clipping",
    "group-dro": "Group DRO: EG on raw loss, reweighting (= AMA-R raw-loss ablation)",
    "ama-s-raw": "AMA-S ablation: raw loss, no specialist",
    "doremi": "DoReMi: EG on clipped excess, smoothing 1e-3, reweighting (output: mean α)",
    "odm": "online data mixing: EXP3 on the raw loss, decaying exploration",
    "uniform": "examples uniformly from the union (α ∝ sizes)",
    "stratified": "every task equally (α = 1/k)",
}


@dataclass(frozen=True)
class Tuning:
    """Constants of the 1/√T step sizes (see the module docstring)."""

    learning_rate: float = 3.0
    mixer_step: float = 3.0
    smoothing: float = 1.0
    batch_size: int = 32


def build(name: str, steps: int, sizes: Sequence[int], tuning: Tuning = Tuning()) -> Mixer:
    """The mixer of method ``name`` tuned for a horizon of ``steps``."""
    k = len(sizes)
    eta = tuning.mixer_step / np.sqrt(steps)
    c = float(min(1.0, tuning.smoothing * np.sqrt(k * np.log(max(k, 2)) / steps)))
    factories = {
        "ama-r": lambda: mixers.ama_r(eta),
        "ama-s": lambda: mixers.ama_s(eta, c),
        "ama-r-noclip": lambda: mixers.ama_r(eta, score="excess"),
        "ama-s-noclip": lambda: mixers.ama_s(eta, c, score="excess"),
        "group-dro": lambda: mixers.group_dro(eta),
        "ama-s-raw": lambda: mixers.ama_s(eta, c, score="loss"),
        "doremi": lambda: mixers.doremi(eta, 1e-3),
        "odm": lambda: mixers.odm(),
        "uniform": lambda: mixers.uniform(list(sizes)),
        "stratified": lambda: mixers.stratified(),
    }
    if name not in factories:
        raise ValueError(f"method {name!r} is unknown: use one of {', '.join(METHODS)}")
    return factories[name]()


def examples_per_step(mixer: Mixer, num_tasks: int, batch_size: int) -> int:
    """Examples (= gradient evaluations) one step costs: k·B reweighting, B resampling."""
    return num_tasks * batch_size if mixer.apply == "reweight" else batch_size


def run_tuned(
    method: str,
    oracle: Oracle,
    steps: int,
    seeds: int | Sequence[int],
    tuning: Tuning = Tuning(),
    optimum: float | None = None,
) -> RunResult:
    """:func:`amasim.train.run` of ``method`` with the 1/√T tuning for ``steps`` steps."""
    from amasim.train import run

    return run(
        build(method, steps, oracle.task_sizes, tuning),
        oracle,
        steps=steps,
        learning_rate=tuning.learning_rate,
        schedule="1/sqrt(T)",
        batch_size=tuning.batch_size,
        seeds=seeds,
        optimum=optimum,
        check=False,
    )
