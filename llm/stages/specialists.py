"""Stage 4, the specialists: one DPO specialist per task, trained from the reference, and
its per-pair losses cached once.

Reads ``[specialist]`` and ``[eval]``.  A specialist's losses are cached (:mod:`llm.cache`),
keyed by its owner record — the reference, the pairs, the DPO and stage settings, the
numerics and the LoRA settings — which also seals its checkpoints: its weights stay in
``OUT/specialists/<task>-<key>/`` for the merges (the checkpoint before the last goes when
it finishes, unless ``[run] keep = "all"``; ``"none"``: the last too, when the run ends),
and a checkpoint of another run is refused.  With
``[eval] generate`` > 0 each specialist's greedy exact match on its own task's held-out
prompts is measured once (cached).  ``fraction`` < 1 makes *early-stopped* specialists
(the cost study, :mod:`llm.specialist_cost`): the first steps of the full run
(:func:`stopped_stage`); ``fraction = 0`` takes the reference itself as every task's
specialist.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from amasim import mixers
from llm.cache import cache_key, load_or_compute
from llm.config import StageSection
from llm.context import RunContext
from llm.dcp import read_checkpoint
from llm.evaluate import greedy_exact_match
from llm.integrity import IntegrityError, owner_record
from llm.oracle import load_policy, pair_losses
from llm.stages.records import Reference, Scores, Specialist, Task, task_data
from llm.train import LoopConfig, MetricsLog, train

__all__ = ["specialists", "stopped_stage", "finished", "drop_weights"]

#: 4: one precision policy and batch layout (earlier numbers differ in last bits)
_VERSION = 4


def stopped_stage(stage: StageSection, fraction: float) -> StageSection:
    """The stage of a specialist stopped after ``fraction`` of its steps: the first
    ``max(1, round(fraction · steps))`` steps of the full run — the same draws (they are a
    function of the step) and the same learning rates (under ``"1/sqrt(T)"`` the base rate
    is scaled by √(s/T), so η/√T of the full horizon T is kept).

    >>> stopped_stage(StageSection(steps=200, schedule="1/sqrt(T)", learning_rate=1.0), 0.25)
    ... # doctest: +ELLIPSIS
    StageSection(steps=50, batch_size=16, learning_rate=0.5, schedule='1/sqrt(T)', ...)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: a share of the stage's steps, in (0, 1]")
    if fraction == 1.0:
        return stage
    steps = max(1, round(fraction * stage.steps))
    rate = stage.learning_rate
    if stage.schedule == "1/sqrt(T)":
        rate *= math.sqrt(steps / stage.steps)
    return dataclasses.replace(stage, steps=steps, learning_rate=rate)


def finished(path: Path | None, steps: int, owner: dict[str, Any] | None = None) -> bool:
    """Whether the checkpoints at ``path`` hold a run of ``owner`` finished at ``steps`` (a
    damaged newest one falls back to the one before, which a resumed run finishes)."""
    if path is None:
        return False
    try:
        saved = read_checkpoint(path, weights=False, owner=owner)
    except IntegrityError:
        return False
    return saved is not None and saved.get("step") == steps


def specialists(
    ctx: RunContext,
    ref: Reference,
    tasks: dict[str, Task],
    scores: dict[str, Scores],
    *,
    need_weights: bool = False,
    fraction: float = 1.0,
    exact_match: bool = True,
) -> dict[str, Specialist]:
    """Every task's specialist (module docstring).  With ``need_weights`` (merges) a
    specialist whose checkpoint was deleted is trained again — deterministic, so its losses
    are the cached ones; ``exact_match=False`` skips the greedy decoding.  ``ref.model``
    ends at the reference weights."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: a share of the specialist steps, in [0, 1]")
    if need_weights and fraction == 0.0:
        raise ValueError("fraction=0 (the reference as specialist) has no weights to merge")
    section = stopped_stage(ctx.cfg.specialist, fraction) if fraction > 0 else None
    out = {}
    for name, task in tasks.items():
        out[name] = _one(ctx, ref, task, scores[name], section, need_weights, exact_match)
        ctx.say(f"specialist {name}: mean eval loss {out[name].eval_losses.mean():.4f}")
    ref.restore()
    return out


def _one(
    ctx: RunContext,
    ref: Reference,
    task: Task,
    scores: Scores,
    section: StageSection | None,
    need_weights: bool,
    exact_match: bool,
) -> Specialist:
    key = owner_record(
        {"specialist": section if section is not None else "the reference", "dpo": ctx.dpo},
        task=task.name,
        reference=ref.fingerprint,
        pairs=task.train.fingerprint,
        eval_pairs=task.eval.fingerprint,
        valid_pairs=task.valid.fingerprint if task.valid is not None else None,
        numerics=ref.numerics,
        version=_VERSION,
        **ctx.lora_key(),
    )
    folder = ctx.folders.specialists / f"{task.name}-{cache_key(key)[:12]}"
    if ctx.parallel.replicated:  # DDP: every rank trains the same specialist; own files
        folder /= f"rank{ctx.parallel.rank}"
    checkpoint = folder / "checkpoint.pt" if section is not None else None
    steps = section.steps if section is not None else 0

    def compute() -> dict[str, np.ndarray]:
        ref.restore()
        if section is not None:
            _train(ctx, ref, task, scores, section, folder, key)
        return {split: _losses(ctx, ref, task, scores, split) for split in task.splits}

    where = f"task {task.name!r} (specialist losses)"
    sources = {split: task.pairs(split).sources for split in task.splits}
    cached = load_or_compute(
        ctx.folders.cache, "specialist", key, compute, where=where, sources=sources
    )
    if need_weights and not finished(checkpoint, steps, key):
        ctx.say(f"specialist {task.name}: final checkpoint missing, training it for the merges")
        compute()
    if section is not None and ctx.keep != "all":  # the final weights stay
        ctx.drop_checkpoints(folder, keep_newest=True)
    made = Specialist(
        cached["train"], cached["eval"], checkpoint, key, steps, valid_losses=cached.get("valid")
    )
    if exact_match and ctx.cfg.eval.generate and section is not None:
        match = _exact_match(ctx, ref, task, made, compute)
        made = dataclasses.replace(made, exact_match=match)
    return made


def drop_weights(ctx: RunContext, specs: dict[str, Specialist]) -> None:
    """``[run] keep = "none"``: remove the specialists' final checkpoints once the run has
    used them (merges, exact match); a later run that merges trains them again."""
    if ctx.keep != "none":
        return
    for spec in specs.values():
        if spec.checkpoint is not None:
            ctx.drop_checkpoints(spec.checkpoint.parent)


def _train(
    ctx: RunContext,
    ref: Reference,
    task: Task,
    scores: Scores,
    section: StageSection,
    folder: Path,
    owner: dict[str, Any],
) -> None:
    oracle = ctx.make_oracle(
        ref.model,
        [task_data(task, scores, "train")],
        eval_tasks=None,
        role="specialist",
        section=section,
    )
    loop = LoopConfig(
        steps=section.steps,
        batch_size=section.batch_size,
        learning_rate=section.learning_rate,
        schedule=section.schedule,
        log_every=section.log_every,
        checkpoint_every=section.checkpoint_every,
    )
    log = MetricsLog(folder / "metrics.jsonl")
    label = ctx.bar_label(f"specialist {task.name}")
    train(oracle, mixers.stratified(), loop, out_dir=folder, log=log, progress=label, owner=owner)
    log.close()


def _losses(ctx: RunContext, ref: Reference, task: Task, scores: Scores, split: str) -> np.ndarray:
    return pair_losses(
        ref.model,
        task.pairs(split),
        scores.of(split),
        pad_id=ctx.tokenizer.pad_id,
        dpo=ctx.dpo,
        precision=ctx.precision,
        layout=ctx.layout,
        batch_size=ctx.cfg.eval.batch_size,
    )["loss"]


def _exact_match(
    ctx: RunContext, ref: Reference, task: Task, made: Specialist, train_again
) -> float:
    """Greedy exact match of ``task``'s specialist on its own first ``[eval] generate`` eval
    prompts, cached (keyed by the specialist's key and the decoding settings); the weights
    come from the specialist's final checkpoint (trained again if it was deleted)."""
    settings = ctx.cfg.eval
    em_key = made.key | {"generate": settings.generate, "max_new_tokens": settings.max_new_tokens}

    def compute() -> dict[str, np.ndarray]:
        if not finished(made.checkpoint, made.steps, made.key):
            train_again()
        saved = read_checkpoint(made.checkpoint, owner=made.key)
        load_policy(ref.model, saved["oracle"]["policy"])
        value = greedy_exact_match(
            ref.model,
            ctx.tokenizer,
            task.eval_raw[: settings.generate],
            max_new_tokens=settings.max_new_tokens,
            precision=ctx.precision,
        )
        return {"exact_match": np.array([value])}

    where = f"task {task.name!r} (specialist exact match)"
    cached = load_or_compute(ctx.folders.cache, "exact-match", em_key, compute, where=where)
    ref.restore()
    return float(cached["exact_match"][0])
