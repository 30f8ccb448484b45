"""Stage 5, the generalists: one model per method × seed through the one driver, at an equal
example budget.

Reads ``[generalist]`` and ``[mix]``.  Each run is checkpointed under
``OUT/generalists/<method>-seed<seed>-<key>/`` (``sharded/`` for FSDP, ``rank<r>/`` for DDP
ranks) and resumes from there; its owner record seals every checkpoint — the stage and mix
settings, the method and seed, and (:func:`generalist_key`) the reference, the specialists'
losses it reads, the DPO settings, the data, the numerics and the LoRA settings — so a
checkpoint of another run is refused by name.  Under data parallelism
every rank draws the same global batch and trains on its block; the per-task scores are
reduced before each mixer update (:mod:`llm.parallel`).  A trained and evaluated
generalist's record is cached (:func:`generalist_record`); its checkpoints then go unless
``[run] keep = "all"``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amasim.oracle import Oracle
from amasim.registry import Constants, build, steps_for_budget
from llm.cache import cache_key, load_or_compute
from llm.config import MixSection
from llm.context import RunContext
from llm.dpo import dpo_loss
from llm.integrity import owner_record
from llm.preflight import mix_policy
from llm.stages.evaluation import evaluate
from llm.stages.records import Reference, Scores, Specialist, Task, task_data
from llm.train import LoopConfig, history, train

__all__ = [
    "GeneralistRun",
    "generalist_key",
    "generalist_oracle",
    "generalist_record",
    "start_constants",
    "train_generalist",
]


@dataclass(frozen=True)
class GeneralistRun:
    """What training one generalist did: its steps, its per-step history (weights, scores,
    loss of the global batch), the mixer tuning it used and the examples it spent outside
    its own steps (DoReMi's proxy run)."""

    steps: int
    history: dict[str, list]
    tuned: dict[str, Any]
    extra_examples: int = 0


def start_constants(ctx: RunContext, specs: dict[str, Specialist], batch_size: int) -> Constants:
    """The theorems' constants at the start model (:class:`amasim.registry.Constants`), the
    LLM analogue of :func:`amasim.registry.start_constants`: the policy starts at the
    reference, where every pair's DPO loss is L₀ (Δ = 0: log 2 for the sigmoid loss), so task
    i's clipped excess there is mean_z max(L₀ − ℓ_i(z), 0) over its training pairs (ℓ_i the
    specialist's cached losses) and B̂ is the largest; the raw loss's bound is L₀; D·G is
    unknown (0).  As in the convex studies this is the scale of the task scores a mixer
    starts from, not a bound on every example's score (the DPO loss has none)."""
    z = torch.zeros(1)
    start = float(dpo_loss(z, z, z, z, **ctx.dpo).losses[0])
    bound = max(float(np.maximum(start - s.train_losses, 0.0).mean()) for s in specs.values())
    return Constants(max(bound, 1e-12), start, 0.0, batch_size, "start model")


def generalist_key(
    ctx: RunContext,
    ref: Reference,
    tasks: dict[str, Task],
    specs: dict[str, Specialist],
) -> dict[str, Any]:
    """What a generalist's run depends on besides its method and seed (module docstring)."""
    names = list(tasks)
    specialist_fp = cache_key(
        {n: hashlib.sha256(specs[n].train_losses.tobytes()).hexdigest() for n in names}
    )
    key = {"reference": ref.fingerprint, "specialists": specialist_fp, "dpo": ctx.dpo}
    key |= ref.numerics  # the numerics the cached numbers were made under
    key["data"] = [tasks[n].train.fingerprint for n in names]
    # the held-out pairs: methods with a validation signal (Skill-It, Aioli) train on them
    key["eval_data"] = [tasks[n].eval.fingerprint for n in names]
    return key | ctx.lora_key()


def generalist_oracle(
    ctx: RunContext,
    ref: Reference,
    tasks: dict[str, Task],
    scores: dict[str, Scores],
    specs: dict[str, Specialist],
    *,
    eval_specs: dict[str, Specialist] | None = None,
    held_out: str = "eval",
    default_reference: dict[str, np.ndarray] | None = None,
) -> Oracle:
    """The oracle every generalist of the run trains on (the reference model, wrapped for
    data parallelism): trained against ``specs``, scored on the ``held_out`` split (``"eval"``,
    or ``"valid"`` when tuning) against ``eval_specs`` (default the same specialists);
    ``default_reference``: DoReMi's reference losses on each task's training pairs
    (:mod:`llm.stages.default_reference`).  The oracle starts every run from the reference
    weights."""
    ref.restore()  # an oracle restarts from the weights the model holds when it is built
    ctx.select_generalist(ref.model)
    eval_specs = eval_specs or specs
    default = default_reference or {}
    return ctx.make_oracle(
        ctx.data_parallel(ref.model),
        [task_data(tasks[n], scores[n], "train", specs[n], default.get(n)) for n in tasks],
        eval_tasks=[task_data(tasks[n], scores[n], held_out, eval_specs[n]) for n in tasks],
        role="generalist",
        section=ctx.cfg.generalist,
    )


def train_generalist(
    ctx: RunContext,
    oracle: Oracle,
    tasks: dict[str, Task],
    method: str,
    seed: int,
    key: dict[str, Any],
    *,
    progress: bool = True,
    mix: MixSection | None = None,
    constants: Constants | None = None,
) -> GeneralistRun:
    """Train one generalist with registered ``method`` on ``oracle`` (which holds every
    task of ``tasks``) at the ``[mix] examples`` budget (``progress``: a bar); ``mix``
    replaces ``[mix]`` (a method's tuned settings), ``constants`` are the theorems'
    (:func:`start_constants`)."""
    mix, stage = mix or ctx.cfg.mix, ctx.cfg.generalist
    k, sizes = len(tasks), tuple(len(t.train) for t in tasks.values())
    steps = steps_for_budget(method, mix.examples, k, stage.batch_size)
    policy = mix_policy(mix, constants)
    mixer = build(method, steps=steps, sizes=sizes, policy=policy, constants=constants)
    # what the tuning set (the method may fix some)
    step_size, smoothing = policy(steps, k, "batch", method=method, constants=constants)
    owner, folder = _owner_and_folder(ctx, method, seed, key, mix, constants)
    model = getattr(oracle, "policy", None)
    flops = getattr(getattr(model, "module", model), "flops_per_token", None)
    longest = max(len(seq) for t in tasks.values() for seq in t.train.chosen + t.train.rejected)
    log = ctx.metrics_log(folder, flops(longest) if flops else None)
    loop = LoopConfig(
        steps=steps,
        batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        schedule=stage.schedule,
        seed=seed,
        log_every=stage.log_every,
        checkpoint_every=stage.checkpoint_every,
    )
    label = ctx.bar_label(f"{method} seed {seed}") if progress else None
    result = train(oracle, mixer, loop, out_dir=folder, log=log, progress=label, owner=owner)
    log.close()
    tuned = {"step_size": step_size, "smoothing": smoothing, "tuning": mix.tuning}
    if constants is not None and mix.tuning == "theory":
        tuned["bound"] = constants.bound
    extra = int(np.max(result.extra_gradient_evaluations))
    return GeneralistRun(steps, history(result), tuned, extra)


def _owner_and_folder(
    ctx: RunContext,
    method: str,
    seed: int,
    key: dict[str, Any],
    mix: MixSection,
    constants: Constants | None,
) -> tuple[dict[str, Any], Path]:
    """The owner record of generalist ``method`` × ``seed`` and this rank's run folder."""
    owner = owner_record(
        {"generalist": ctx.cfg.generalist, "mix": mix},
        method=method,
        seed=seed,
        driver=2,
        constants=constants._asdict() if constants is not None else None,  # B̂ sets the steps
        **key,
    )
    folder = ctx.folders.generalists / f"{method}-seed{seed}-{cache_key(owner)[:12]}"
    # sharded: one folder for every rank and world size (llm.dcp); DDP: one per rank
    folder /= "sharded" if ctx.parallel.mode == "fsdp" else f"rank{ctx.parallel.rank}"
    return owner, folder


def _held_out(oracle: Oracle) -> list[str] | None:
    """What a record's evaluation depends on besides the model: the held-out pairs and the
    specialists' losses it is scored against (``None`` for an oracle that does not say)."""
    tasks = getattr(oracle, "eval_tasks", None)
    if tasks is None:
        return None
    return [
        f"{t.pairs.fingerprint}:{hashlib.sha256(np.asarray(t.specialist_losses).tobytes()).hexdigest()}"
        for t in tasks
    ]


def generalist_record(
    ctx: RunContext,
    oracle: Oracle,
    model: Any,
    tasks: dict[str, Task],
    specs: dict[str, Specialist],
    method: str,
    seed: int,
    key: dict[str, Any],
    *,
    mix: MixSection | None = None,
    constants: Constants | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generalist ``method`` × ``seed`` trained (:func:`train_generalist`) and evaluated
    (:func:`llm.stages.evaluation.evaluate` of ``model``): its record — held-out metrics,
    steps, mixer tuning, per-step history, the examples it spent beside its steps — cached
    under its owner record, the held-out pairs and ``[eval]``, so a rerun, or a run
    restarted after a stop, takes it as it was.  Once it is cached the run's resume
    checkpoints go, unless ``[run] keep = "all"`` (its metrics log stays)."""
    mix = mix or ctx.cfg.mix
    owner, folder = _owner_and_folder(ctx, method, seed, key, mix, constants)
    entry = {"generalist": cache_key(owner), "eval": asdict(ctx.cfg.eval), "record": 2}
    entry["held_out"] = _held_out(oracle)

    def compute() -> dict[str, np.ndarray]:
        trained = train_generalist(
            ctx, oracle, tasks, method, seed, key, mix=mix, constants=constants, progress=progress
        )
        record = evaluate(ctx, oracle, model, tasks, specs, f"{method} seed {seed}")
        record |= {"steps": trained.steps, "tuned": trained.tuned, "history": trained.history}
        record["extra_examples"] = trained.extra_examples
        return {"record": np.array(json.dumps(record))}

    where = f"generalist {method} seed {seed}"
    cached = load_or_compute(ctx.folders.cache, "generalist", entry, compute, where=where)
    if ctx.keep != "all":
        ctx.drop_checkpoints(folder)
    return json.loads(str(cached["record"]))
