"""The training loop: a mixer drives an oracle for T steps, R seeds in one array computation.

One step (notes §3–§4; Group DRO Alg. 1 order — the updated α weights the θ step)::

    α_t        = mixer.weights(state)
    task ids   = every task B times (reweight)  |  B draws from α_t (resample)
    L          = oracle.losses(oracle.sample(task ids))
    ê, n       = per-task means of score(L, ℓ) and counts
    α_{t+1}, state = mixer.update(state, ê, n if resampling else None)
    oracle.step(batch, w_z · dscore/dL, η_t)      w_z = α_{t+1,i}/n_i  |  1/B

>>> from amasim import mixers
>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(100, 10), dim=3))
>>> result = run(mixers.ama_s(0.1, 0.1), oracle, steps=50, learning_rate=0.1, seeds=[0, 1])
>>> result.weights.shape, result.task_scores.shape
((50, 2, 2), (2, 2))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from amasim import prng
from amasim.capabilities import require_capabilities
from amasim.mixers import APPLY_MODES, Mixer
from amasim.oracle import Oracle, OracleError, check_oracle, check_oracle_interface
from amasim.scores import check_score, example_scores, task_means

__all__ = ["RunResult", "run", "Mixing", "StepResult", "SCHEDULES", "learning_rate_at"]

SCHEDULES = ("constant", "1/sqrt(T)", "1/sqrt(t)")


@dataclass(frozen=True)
class RunResult:
    """Everything one :func:`run` measured; arrays carry a replicate axis R.

    Attributes
    ----------
    method, score, apply, schedule : how the run was configured.
    seeds : the R seeds, in replicate order.
    steps, batch_size, learning_rate : as passed.
    record_steps : (M,) steps at which the trajectories were recorded.
    weights : (M, R, k) the weights α_t used for the batch of each recorded step.
    scores : (M, R, k) per-task mean score of that batch (0 where a task was absent).
    average_weights : (R, k) mean of α_t over all steps (the α-player's average).
    task_scores : (R, k) final per-task E_i (score over each whole task) at θ̄_T.
    last_task_scores : (R, k) the same at the last iterate θ_T.
    worst_task : (R,) max_i of ``task_scores``.
    optimum : the exact min_θ max_i E_i if given, else ``None``.
    gap : (R,) ``worst_task − optimum`` (``None`` without an optimum).
    examples : (R, k) examples drawn per task; each costs one loss and one gradient
        evaluation.
    oracle_steps : number of gradient steps taken (= steps).
    wall_time : seconds spent in the loop.
    mixer_state : the mixer's final state (to resume or inspect).
    """

    method: str
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
    average_weights: np.ndarray
    task_scores: np.ndarray
    last_task_scores: np.ndarray
    worst_task: np.ndarray
    optimum: float | None
    gap: np.ndarray | None
    examples: np.ndarray
    oracle_steps: int
    wall_time: float
    mixer_state: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays as nested lists, without the mixer state)."""
        out = asdict(self)
        out.pop("mixer_state")
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()}


def learning_rate_at(base: float, schedule: str, step: int, steps: int) -> float:
    """η_t for ``schedule``: constant η, η/√T for the whole run, or η/√(t+1)."""
    if schedule == "constant":
        return base
    if schedule == "1/sqrt(T)":
        return base / np.sqrt(steps)
    if schedule == "1/sqrt(t)":
        return base / np.sqrt(step + 1)
    raise ValueError(f"schedule={schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return int(value)


def _check_run_args(mixer, oracle, steps, learning_rate, schedule, batch_size, seeds, apply):
    if not isinstance(mixer, Mixer):
        raise TypeError(f"mixer must be an amasim.mixers.Mixer, got {type(mixer).__name__}")
    try:
        check_oracle_interface(oracle)
    except OracleError as err:
        raise TypeError(f"oracle does not follow the amasim oracle protocol: {err}") from None
    if mixer.requires:  # DoGE, DGA, Aioli, Skill-It: capabilities run() does not drive
        require_capabilities(oracle, mixer.requires, f"mixer {mixer.name!r}")
        raise ValueError(
            f"mixer {mixer.name!r} reads oracle capabilities {mixer.requires}, which run() "
            "does not drive: train it with amasim.registry.train_method (or "
            "amasim.lmo.aioli_round / amasim.gradient_mixers.run_with_gradients)"
        )
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    if not (isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate)):
        raise TypeError(f"learning_rate must be a finite number, got {learning_rate!r}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate={learning_rate} must be > 0")
    learning_rate_at(1.0, schedule, 0, 1)
    seeds = (seeds,) if isinstance(seeds, (int, np.integer)) else tuple(seeds)
    prng.replicate_keys(seeds)
    if oracle.max_replicates is not None and len(seeds) > oracle.max_replicates:
        raise ValueError(
            f"{len(seeds)} seeds but this oracle runs at most {oracle.max_replicates} "
            "replicates at once: pass fewer seeds or loop over runs"
        )
    apply = mixer.apply if apply is None else apply
    if apply not in APPLY_MODES:
        raise ValueError(f"apply={apply!r} is unknown: use 'reweight' or 'resample'")
    return seeds, apply


def run(
    mixer: Mixer,
    oracle: Oracle,
    *,
    steps: int,
    learning_rate: float,
    schedule: str = "constant",
    batch_size: int = 32,
    seeds: int | Sequence[int] = 0,
    apply: str | None = None,
    score: str | None = None,
    optimum: float | None = None,
    record_every: int | None = None,
    check: bool = True,
    progress: bool = False,
) -> RunResult:
    """Train with ``mixer`` on ``oracle`` and measure (see :class:`RunResult`).

    ``batch_size`` is B: examples per task per step when reweighting (k·B in all),
    examples per step when resampling.  ``apply`` and ``score`` default to the mixer's.
    ``record_every`` defaults to ``max(1, steps // 1000)``.  With ``check`` (default)
    the oracle first passes :func:`~amasim.oracle.check_oracle`, so a broken oracle
    fails with a message naming the call at fault rather than mid-run.
    """
    seeds, apply = _check_run_args(
        mixer, oracle, steps, learning_rate, schedule, batch_size, seeds, apply
    )
    if check:
        check_oracle(oracle, seeds=seeds[:2])
    score = check_score(mixer.score if score is None else score)
    k, r = len(oracle.task_names), len(seeds)
    record_every = max(1, steps // 1000) if record_every is None else record_every
    _positive_int("record_every", record_every)
    record_steps = np.arange(0, steps, record_every)
    weights_log = np.empty((len(record_steps), r, k))
    scores_log = np.empty_like(weights_log)
    weight_sum = np.zeros((r, k))
    examples = np.zeros((r, k), dtype=np.int64)

    mixing = Mixing(mixer, oracle, seeds=seeds, batch_size=batch_size, apply=apply, score=score)
    oracle.reset(list(seeds))
    state = mixer.init(k, seed=list(seeds))
    bar = _progress(steps, mixer.name) if progress else None
    start = time.perf_counter()
    for t in range(steps):
        out = mixing.step(state, t, learning_rate_at(learning_rate, schedule, t, steps))
        state = out.state
        weight_sum += out.weights
        examples += out.counts
        if t % record_every == 0:
            weights_log[t // record_every] = out.weights
            scores_log[t // record_every] = out.scores
        if bar is not None:
            bar.update()
    wall = time.perf_counter() - start
    if bar is not None:
        bar.close()

    final = oracle.evaluate(score="clipped", averaged=True)
    worst = final.max(axis=1)
    return RunResult(
        method=mixer.name,
        score=score,
        apply=apply,
        schedule=schedule,
        seeds=seeds,
        steps=steps,
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        record_steps=record_steps,
        weights=weights_log,
        scores=scores_log,
        average_weights=weight_sum / steps,
        task_scores=final,
        last_task_scores=oracle.evaluate(score="clipped", averaged=False),
        worst_task=worst,
        optimum=optimum,
        gap=None if optimum is None else worst - optimum,
        examples=examples,
        oracle_steps=steps,
        wall_time=wall,
        mixer_state=state,
    )


class StepResult(NamedTuple):
    """What one :meth:`Mixing.step` did; arrays carry the replicate axis R."""

    state: Any  # the mixer's new state
    weights: np.ndarray  # (R, k) α_t, the weights the batch was drawn or weighted with
    scores: np.ndarray  # (R, k) per-task mean score of the batch (0 where absent)
    counts: np.ndarray  # (R, k) examples of each task in the batch
    losses: np.ndarray  # (R, N) per-example losses L(θ_t, z)


class Mixing:
    """One training step of any mixer on any oracle — the step in the module docstring.

    Shared by :func:`run` and by the LLM training loop (``llm.train``), so both apply
    weights identically.  ``reduce(means, counts) -> (means, counts)``, when given,
    combines the per-task scores of data-parallel ranks before the mixer update (every
    rank then holds the same mixer state); each rank's loss weights assume gradients are
    averaged over ranks, as DistributedDataParallel does.  ``stream`` selects the
    random stream of the task draws (data-parallel ranks use one each).
    """

    def __init__(
        self,
        mixer: Mixer,
        oracle: Oracle,
        *,
        seeds: Sequence[int],
        batch_size: int,
        apply: str,
        score: str,
        reduce: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        stream: int = prng.LOOP_STREAM,
    ) -> None:
        self.mixer, self.oracle, self.reduce = mixer, oracle, reduce
        self.batch_size, self.score = batch_size, check_score(score)
        self.resample = apply == "resample"
        self.num_tasks = len(oracle.task_names)
        keys = prng.replicate_keys(list(seeds), stream=stream)
        self.uniforms = prng.UniformStream(keys, batch_size)
        every_task = np.repeat(np.arange(self.num_tasks), batch_size)  # task i at i·B…(i+1)·B−1
        self.fixed_ids = np.tile(every_task, (len(keys), 1))
        self.fixed_counts = np.full((len(keys), self.num_tasks), batch_size)
        self.fixed_counts.flags.writeable = False

    def step(self, state: Any, t: int, learning_rate: float) -> StepResult:
        """Draw a batch, score it, update the mixer, then take the oracle's gradient step."""
        alpha = self.mixer.weights(state)
        r, k, b = alpha.shape[0], self.num_tasks, self.batch_size
        if self.resample:
            task_ids = prng.categorical(self.uniforms(t), alpha)
        else:
            task_ids = self.fixed_ids
        batch = self.oracle.sample(task_ids)
        losses = self.oracle.losses(batch)
        values, dvalues = example_scores(self.score, losses, batch.reference_losses)
        if self.resample:
            means, counts = task_means(values, task_ids, k, check=False)
        else:  # the fixed layout: B examples of every task, task by task
            means, counts = np.add.reduce(values.reshape(r, k, b), axis=-1) / b, self.fixed_counts
        if self.reduce is not None:
            means, counts = self.reduce(means, counts)
        if self.resample:
            _, state = self.mixer.update(state, means, counts)
            loss_weights = dvalues / b  # the draw from α already weights tasks
        else:
            new_alpha, state = self.mixer.update(state, means, None)
            # Σ_i α_{t+1,i} · (mean over the B examples of task i), Group DRO Alg. 1 order
            loss_weights = (dvalues.reshape(r, k, b) * (new_alpha / b)[..., None]).reshape(r, k * b)
        self.oracle.step(batch, loss_weights, learning_rate)
        return StepResult(state, alpha, means, counts, losses)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, mininterval=0.5, leave=False)
