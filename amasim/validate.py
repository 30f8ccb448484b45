"""Argument checks the API shares with the command lines, with the same messages.

* :func:`check_optimum` — a finite number or ``None`` (a NaN optimum made a NaN gap);
* :func:`check_step_size` — a step beyond 2/L, where L is the smoothness of the oracle's
  task losses (:attr:`amasim.problems.ConvexProblem.smoothness`), is a
  :class:`StepSizeWarning` naming the bound: gradient descent on an L-smooth loss
  overshoots past 2/L (the simulator's projection then keeps the iterates finite, at the
  edge of the ball, so nothing else would say so);
* :func:`check_seed`, :func:`check_seeds` — ints >= 0 (the message of
  :func:`amasim.prng.replicate_keys`);
* :func:`check_count` — a whole number of examples below 2**63 (numpy's int64);
* :func:`check_object` — ``None`` (or another type) where an object is required is a
  ``TypeError`` naming what to pass, not an ``AttributeError`` from deep inside.

>>> check_optimum(float("nan"))
Traceback (most recent call last):
...
ValueError: optimum=nan must be a finite number (the minimax optimum, e.g. amasim.minimax_optimum(problem).value) or None. Fix: pass the optimum the problem reports, or leave it out
"""  # noqa: E501

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "StepSizeWarning",
    "check_optimum",
    "check_step_size",
    "check_seed",
    "check_seeds",
    "check_count",
    "check_object",
    "INT64_MAX",
]

#: the largest count numpy's int64 holds
INT64_MAX = 2**63 - 1


class StepSizeWarning(UserWarning):
    """A learning rate beyond what the problem's smoothness allows (2/L)."""


def check_optimum(optimum: Any) -> float | None:
    """``optimum`` as a float (finite) or ``None``; otherwise a named error."""
    if optimum is None:
        return None
    if isinstance(optimum, bool) or not isinstance(optimum, int | float | np.integer | np.floating):
        raise TypeError(
            f"optimum must be a number or None, got {type(optimum).__name__}. Fix: pass "
            "amasim.minimax_optimum(problem).value, or leave it out"
        )
    if not math.isfinite(optimum):
        raise ValueError(
            f"optimum={optimum!r} must be a finite number (the minimax optimum, e.g. "
            "amasim.minimax_optimum(problem).value) or None. Fix: pass the optimum the "
            "problem reports, or leave it out"
        )
    return float(optimum)


def check_step_size(oracle: Any, step: float, learning_rate: float, schedule: str) -> None:
    """Warn (:class:`StepSizeWarning`) when ``step`` — the largest step the schedule takes
    from ``learning_rate`` — exceeds 2/L for an oracle whose problem knows its smoothness
    L (``oracle.problem.smoothness``); other oracles are not checked."""
    smoothness = getattr(getattr(oracle, "problem", None), "smoothness", None)
    if not isinstance(smoothness, int | float) or not smoothness > 0:
        return
    bound = 2.0 / smoothness
    if step <= bound:
        return
    schedule_part = "" if step == learning_rate else f" (a step of {step:.3g} under {schedule})"
    warnings.warn(
        f"learning_rate={learning_rate!r}{schedule_part} exceeds 2/L = {bound:.3g}, where "
        f"L = {smoothness:.3g} is the smoothness of this problem's task losses: the steps "
        "overshoot, and the projection onto the ball hides it (the run stays finite, its "
        f"result is not a converged one). Fix: pass a learning rate whose steps are <= "
        f"{bound:.3g}",
        StepSizeWarning,
        stacklevel=4,
    )


def check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0; the error of :func:`amasim.prng.replicate_keys` otherwise."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise TypeError(f"seed {seed!r} is not a non-negative int: pass seeds as ints >= 0")
    return int(seed)


def check_count(value: Any, name: str) -> int:
    """``value`` as a whole number of examples (an int of at most 2**63 - 1)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be integers (examples per task), got {value!r}")
    if value > INT64_MAX:
        raise ValueError(
            f"{name}: {value} examples is over 2**63 - 1, more than numpy can count. Fix: pass "
            "the real number of examples of each task"
        )
    return int(value)


def check_object(value: Any, kind: type, name: str, hint: str) -> Any:
    """``value`` when it is a ``kind``; otherwise a ``TypeError`` naming ``name``, what was
    given and ``hint`` (what to pass)."""
    if not isinstance(value, kind):
        full = f"{kind.__module__}.{kind.__qualname__}"
        article = "an" if full[0] in "aeiou" else "a"
        raise TypeError(f"{name} must be {article} {full}, got {type(value).__name__}. Fix: {hint}")
    return value


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` (an int, or one int per replicate) as a non-empty tuple of ints >= 0."""
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        return (check_seed(seeds),)
    if isinstance(seeds, str | bytes) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seed={seeds!r}: pass an int, or one int per replicate")
    out = tuple(check_seed(s) for s in seeds)
    if not out:
        raise ValueError("seeds is empty: pass an int, or one int per replicate")
    return out
