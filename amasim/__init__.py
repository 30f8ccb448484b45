"""amasim: adaptive data mixing for multi-task training (AutoMixAlign and friends).

The public API, in one place::

    from amasim import mixers                  # the Mixer contract, Signal, and the AMA family:
                                               # uniform, stratified, group_dro, ama_r, ama_s,
                                               # doremi, odm, averaged, eg_step, smooth, ...
    from amasim import lmo                     # Aioli, Skill-It, DML (the LMO family)
    from amasim import gradient_mixers         # DoGE, DGA, importance sampling
    from amasim import grdpo                   # Group Robust DPO (Ramesh et al. 2024)
    from amasim import merging                 # linear, task arithmetic, TIES, DARE, SLERP
    from amasim import registry                # every method by name, the tuning policies
    from amasim import run, RunResult, Mixing  # the one driver, its record, one step
    from amasim import Oracle, Batch, check_oracle
    from amasim import capabilities            # optional oracle capabilities
    from amasim import make_problem, SimulatedOracle, minimax_optimum

Layout: the library is the modules above plus ``scores``, ``prng``, ``oracle`` (the
protocol), ``checker`` (its checker), ``observe`` (how each signal is read from an
oracle), ``driver``, ``result``, ``problems``, ``simulator``, ``optimum``, ``transfer``;
the studies (``amasim.studies``) and the CLI (``amasim.cli``) sit on top of it.

Example (runs in about a second):

>>> import amasim
>>> problem = amasim.make_problem("quadratic", sizes=(200, 20, 20), dim=4)
>>> oracle = amasim.SimulatedOracle(problem)
>>> result = amasim.run(amasim.mixers.ama_s(0.5, 0.1), oracle, steps=500, learning_rate=0.1)
>>> result.weights.shape[-1]
3

``import amasim`` loads numpy only; scipy and cvxpy are imported when a problem is
built or an optimum solved.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from amasim import capabilities, mixers, scores
from amasim.checker import check_oracle
from amasim.oracle import Batch, Oracle, OracleError

__version__ = "0.1.0"

_LAZY = {
    "run": "amasim.driver",
    "Mixing": "amasim.driver",
    "SCHEDULES": "amasim.driver",
    "RunResult": "amasim.result",
    "make_problem": "amasim.problems",
    "ConvexProblem": "amasim.problems",
    "PROBLEMS": "amasim.problems",
    "SimulatedOracle": "amasim.simulator",
    "minimax_optimum": "amasim.optimum",
    "Optimum": "amasim.optimum",
}
_SUBMODULES = ("lmo", "gradient_mixers", "grdpo", "merging", "registry")

__all__ = [
    "capabilities",
    "mixers",
    "scores",
    "Batch",
    "Oracle",
    "OracleError",
    "check_oracle",
    *_SUBMODULES,
    *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    from amasim import gradient_mixers, grdpo, lmo, merging, registry  # noqa: F401
    from amasim.driver import SCHEDULES, Mixing, run  # noqa: F401
    from amasim.optimum import Optimum, minimax_optimum  # noqa: F401
    from amasim.problems import PROBLEMS, ConvexProblem, make_problem  # noqa: F401
    from amasim.result import RunResult  # noqa: F401
    from amasim.simulator import SimulatedOracle  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"amasim.{name}")
    raise AttributeError(f"module 'amasim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
