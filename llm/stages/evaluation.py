"""Stage 7, evaluation: per-task held-out DPO loss, excess and clipped excess over the
specialist, reward accuracy and greedy exact match.

Reads ``[eval]``.  A non-finite metric raises :class:`~llm.integrity.NonFiniteError`
naming the task, the first non-finite example (its ``file:line``) and the run.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from llm.context import RunContext
from llm.evaluate import greedy_matches
from llm.integrity import NonFiniteError
from llm.stages.records import Specialist, Task

__all__ = ["evaluate"]


def evaluate(
    ctx: RunContext,
    oracle: Any,
    model: Any,
    tasks: dict[str, Task],
    specs: dict[str, Specialist],
    label: str = "model",
) -> dict[str, Any]:
    """The current policy's per-task held-out metrics and its worst-task clipped excess;
    ``label`` names it in errors (e.g. ``"ama-r seed 0"``)."""
    per_task = _per_task(oracle)
    for name, row in per_task.items():
        bad = [m for m, value in row.items() if m != "items" and not math.isfinite(value)]
        if bad:
            raise NonFiniteError(
                f"evaluating {label}: task {name!r} has a non-finite {', '.join(bad)}"
                f"{_first_bad_example(oracle, tasks[name], specs[name])}; the policy diverged "
                "(or a cached number is broken) and no result was recorded. Fix: lower the "
                "learning rate, or delete that stage's checkpoints and rerun",
                name,
            )
    settings = ctx.cfg.eval
    if settings.generate:  # [eval] generate = 0: no decoding, no exact match
        for name, row in per_task.items():
            matches = greedy_matches(
                model,
                ctx.tokenizer,
                tasks[name].eval_raw[: settings.generate],
                max_new_tokens=settings.max_new_tokens,
                precision=ctx.precision,
            )
            row["exact_match"] = sum(matches) / len(matches)
            if "items" in row:
                row["items"]["exact_match"] = [float(m) for m in matches]
    return {"tasks": per_task, "worst_task_excess": max(v["clipped"] for v in per_task.values())}


def _per_task(oracle: Any) -> dict[str, dict[str, Any]]:
    """The oracle's per-task metrics, with per-item values where it offers them (a bootstrap
    over evaluation items, :func:`amasim.stats.item_bootstrap_variance`)."""
    if "items" in inspect.signature(oracle.evaluate_tasks).parameters:
        return oracle.evaluate_tasks(items=True)
    return oracle.evaluate_tasks()


def _first_bad_example(oracle: Any, task: Task, spec: Specialist) -> str:
    """`` (first at example i: path:line)`` for the first eval pair whose loss is not finite."""
    pair_losses = getattr(oracle, "pair_losses", None)
    held_out = getattr(oracle, "eval_tasks", [])
    scores = next((t.reference_logps for t in held_out if t.name == task.name), None)
    if pair_losses is None or scores is None:
        return ""
    losses = pair_losses(task.eval, scores)["loss"]
    losses = np.column_stack([losses, spec.eval_losses])
    rows = np.flatnonzero(~np.isfinite(losses).all(axis=1))
    if not rows.size:
        return ""
    return f" (first at example {rows[0]}: {task.eval.sources[rows[0]]})"
