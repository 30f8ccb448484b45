"""The result record of every training run (scipy ``OptimizeResult`` style, fixed fields).

:func:`amasim.driver.run` returns a :class:`RunResult` whatever the mixer, its signal and
the oracle — the convex simulator, the PyTorch DPO oracle, a third-party one.  Arrays carry
a replicate axis R (one per seed); method-specific extras go in ``info``.

>>> import amasim
>>> oracle = amasim.SimulatedOracle(amasim.make_problem("quadratic", sizes=(40, 10), dim=3))
>>> result = amasim.run(amasim.mixers.ama_r(0.1), oracle, steps=20, learning_rate=0.1)
>>> result.weights.shape, result.examples.tolist(), result.signal
((20, 1, 2), [1280], 'batch')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["RunResult"]


@dataclass(frozen=True)
class RunResult:
    """Everything one run measured.  M recorded steps, R replicates (seeds), k tasks.

    Attributes
    ----------
    method : the mixer's name.
    signal : what the mixer observed (:class:`amasim.mixers.Signal` kind).
    score, apply, schedule : the per-example score, how the weights reached the model,
        the learning-rate schedule.
    seeds : the R seeds, in replicate order.
    steps, batch_size, learning_rate : as passed (``steps`` is the horizon T).
    record_steps : (M,) the steps at which the trajectories were recorded.
    weights : (M, R, k) the weights α_t the batch of each recorded step used.
    scores : (M, R, k) the per-task signal the mixer last acted on at that step: the batch's
        mean scores (0 where a task was absent) for the batch signal, the validation
        scores or alignments for those signals, Σ_i A_ij for Aioli, 0 when it observes
        nothing during training.
    losses : (M, R) mean per-example loss of the recorded step's batch (NaN for steps the
        oracle took itself, in ``train_on_mixture`` rounds), or ``None`` unless the run was
        asked to record them (``record_losses=True``).
    average_weights : (R, k) mean of α_t over all T steps.
    task_scores : (R, k) final per-task clipped excess loss E_i at the averaged iterate θ̄
        (the oracle's ``evaluate("clipped", averaged=True)``); ``None`` if not evaluated.
    last_task_scores : (R, k) the same at the last iterate θ_T, or ``None``.
    worst_task : (R,) max_i of ``task_scores``, or ``None``.
    optimum : the exact min_θ max_i E_i if given, else ``None``.
    gap : (R,) ``worst_task − optimum`` (``None`` without an optimum).
    examples : (R,) training examples drawn per replicate, measurement runs (sweeps,
        LearnParams) included; each costs one loss and one gradient evaluation.
    task_examples : (R, k) the same per task, or ``None`` when the oracle drew some batches
        itself (round protocols).
    extra_gradient_evaluations : (R,) per-example gradients spent outside the training
        steps (DoGE's and DGA's alignments; DoReMi's proxy run).
    wall_time : seconds spent training.
    mixer_state : the mixer's final state (to resume or inspect).
    info : method-specific extras (e.g. ``"proxy"``: DoReMi's proxy run).
    """

    method: str
    signal: str
    score: str
    apply: str
    schedule: str
    seeds: tuple[int, ...]
    steps: int
    batch_size: int
    learning_rate: float
    record_steps: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    losses: np.ndarray | None
    average_weights: np.ndarray
    task_scores: np.ndarray | None
    last_task_scores: np.ndarray | None
    worst_task: np.ndarray | None
    optimum: float | None
    gap: np.ndarray | None
    examples: np.ndarray
    task_examples: np.ndarray | None
    extra_gradient_evaluations: np.ndarray
    wall_time: float
    mixer_state: Any = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays as nested lists, NaN as ``None``, no mixer state)."""
        out = asdict(self)
        out.pop("mixer_state")
        return {k: _jsonable(v) for k, v in out.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value
