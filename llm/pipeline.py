"""The full AutoMixAlign pipeline: ``python -m llm run --config CONFIG``.

A short composition of the stages (:mod:`llm.stages`), each taking the run context
(:mod:`llm.context`) and frozen records and returning frozen records::

    with open_run(cfg) as ctx:                      # checks, lock, process group, tokenizer
        tasks  = load_tasks(ctx)                    # [data]: read, tokenised, audited
        ref    = reference(ctx, tasks)              # [model], [sft]: SFT through the driver
        scores = reference_scores(ctx, ref, tasks)  # reference log-probs, cached
        specs  = specialists(ctx, ref, tasks, scores)       # [specialist]: one per task
        for method, seed:                           # [generalist], [mix]: through the driver
            generalist_record(...) | load_merge(...); evaluate(...)  # [eval], cached

``results.json`` is written after every method × seed (a finished run survives a later
one's failure), then ``results.md`` and the figures (:mod:`llm.report`).  Every cache is
keyed by what produced it, so a run on warm caches gives the numbers of a run from scratch.
``[run] keep`` says what a finished stage leaves on disk (:data:`llm.config.KEEP`; the
cost plan, :mod:`llm.plan`, counts it).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from amasim.registry import MERGES
from llm import lora
from llm.config import Config, MixSection
from llm.context import OracleFactory, RunContext, open_run
from llm.report import summarize, write_report, write_results
from llm.stages.default_reference import default_reference_losses
from llm.stages.evaluation import evaluate
from llm.stages.generalists import (
    generalist_key,
    generalist_oracle,
    generalist_record,
    start_constants,
)
from llm.stages.merges import depends_on_seed, load_merge
from llm.stages.records import Reference, Scores, Specialist, Task
from llm.stages.reference import reference
from llm.stages.scoring import reference_scores
from llm.stages.specialists import drop_weights, specialists
from llm.stages.tasks import load_tasks

__all__ = ["Prepared", "prepare", "run_pipeline", "run_stages"]


class Prepared(NamedTuple):
    """What every study of a config starts from (:func:`prepare`): the tasks, the reference
    in its training form, and the reference log-probs."""

    tasks: dict[str, Task]
    ref: Reference
    scores: dict[str, Scores]


def prepare(ctx: RunContext) -> Prepared:
    """Stages 1–3: the tasks, the reference model and its cached log-probs."""
    started = time.perf_counter()
    tasks = load_tasks(ctx)
    ref = reference(ctx, tasks)
    scores = reference_scores(ctx, ref, tasks)
    ctx.say(f"reference ready ({time.perf_counter() - started:.0f} s)")
    return Prepared(tasks, ref, scores)


def run_pipeline(
    cfg: Config, *, progress: bool = True, make_oracle: OracleFactory | None = None
) -> dict[str, Any]:
    """Open the run (checks, lock, process group) and run every stage; returns the results
    record (also ``OUT/results.json``)."""
    with open_run(cfg, progress=progress, make_oracle=make_oracle) as ctx:
        return run_stages(ctx)


def run_stages(
    ctx: RunContext,
    ready: Prepared | None = None,
    *,
    mixes: dict[str, MixSection] | None = None,
    held_out: str = "eval",
    report: Path | None = None,
) -> dict[str, Any]:
    """Every stage in ``ctx`` (stages 1–3 from ``ready`` when given); ``mixes`` replaces
    ``[mix]`` for the methods it names (their tuned settings; ``results["mixes"]`` names
    them), ``held_out`` is the split the runs are scored on (``"valid"`` when tuning),
    ``report`` the folder of ``results.json``, ``results.md`` and the figures (default
    ``[run] out``)."""
    report = Path(report or ctx.folders.out)
    report.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tasks, ref, scores = ready or prepare(ctx)
    methods = ctx.cfg.run.methods
    specs = specialists(ctx, ref, tasks, scores, need_weights=any(m in MERGES for m in methods))
    key = generalist_key(ctx, ref, tasks, specs)
    constants = start_constants(ctx, specs, ctx.cfg.generalist.batch_size)
    default = None
    if "doremi" in methods:  # Xie et al.'s one reference, trained on the natural mixture
        default = default_reference_losses(ctx, ref, tasks, scores, specs, key, constants)
    oracle = generalist_oracle(
        ctx, ref, tasks, scores, specs, held_out=held_out, default_reference=default
    )
    results = _record(ctx, ref, tasks, specs) | {"held_out": held_out, "mixes": sorted(mixes or {})}
    once: dict[str, dict[str, Any]] = {}  # merges that ignore the seed, evaluated once
    for method in methods:
        mix = (mixes or {}).get(method, ctx.cfg.mix)
        for seed in ctx.cfg.run.seeds:
            tick = time.perf_counter()
            if method in once:  # the same weights as at the first seed: the same record
                record = dict(once[method])
            elif method in MERGES:
                record = _merge_run(ctx, oracle, ref, tasks, specs, method, seed)
                if not depends_on_seed(method):
                    once[method] = record
            else:  # trained and evaluated, or its cached record
                record = generalist_record(
                    ctx,
                    oracle,
                    ref.model,
                    tasks,
                    specs,
                    method,
                    seed,
                    key,
                    mix=mix,
                    constants=constants,
                )
                if method == "doremi":  # DoReMi's budget: its proxy run and its reference
                    record = record | {"extra_examples": record["extra_examples"] + mix.examples}
            record |= {"seed": seed, "seconds": time.perf_counter() - tick}
            results["runs"].setdefault(method, []).append(record)
            ctx.say(f"{method} seed {seed}: worst-task excess {record['worst_task_excess']:.4f}")
            results["seconds"] = time.perf_counter() - started
            if ctx.parallel.is_main:  # every finished run at once: a later failure loses none
                write_results(report / "results.json", results)
    drop_weights(ctx, specs)  # [run] keep = "none": the specialists' weights too
    if ctx.parallel.is_main:
        results["summary"] = summarize(results)  # intervals over seeds, the claims' verdicts
        write_results(report / "results.json", results)
        write_report(results, report)
    return results


def _merge_run(ctx, oracle, ref, tasks, specs, method: str, seed: int) -> dict[str, Any]:
    """Merge ``method`` of the specialists, evaluated (no training)."""
    load_merge(method, seed, ref, specs)
    with lora.adapters_off(ref.model):  # the merge is in the base weights
        record = evaluate(ctx, oracle, ref.model, tasks, specs, f"{method} seed {seed}")
    ref.restore()  # the base back (LoRA trains on it)
    return record | {"steps": 0}


def _record(
    ctx: RunContext, ref: Reference, tasks: dict[str, Task], specs: dict[str, Specialist]
) -> dict[str, Any]:
    """The results record before any generalist: the config, the data, the specialists."""
    names = list(tasks)
    return {
        "config": asdict(ctx.cfg),
        "seeds": list(ctx.cfg.run.seeds),
        "tasks": names,
        "sizes": tuple(len(t.train) for t in tasks.values()),
        "data": {n: {split: a.to_dict() for split, a in tasks[n].audit.items()} for n in names},
        "parameters": sum(p.numel() for p in ref.model.parameters()),
        # each specialist's greedy exact match on its own task's held-out prompts
        "specialist_exact_match": {
            n: specs[n].exact_match for n in names if specs[n].exact_match is not None
        },
        "runs": {},
    }
