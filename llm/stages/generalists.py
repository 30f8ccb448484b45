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

from amasim.oracle import Oracle
from amasim.registry import build, steps_for_budget
from llm import lora
from llm.cache import cache_key, load_or_compute
from llm.context import RunContext
from llm.gpus import peak_flops
from llm.integrity import owner_record
from llm.preflight import mix_policy
from llm.stages.evaluation import evaluate
from llm.stages.records import Reference, Scores, Specialist, Task, task_data
from llm.stages.specialists import lora_key
from llm.train import LoopConfig, MetricsLog, history, train

__all__ = [
    "GeneralistRun",
    "generalist_key",
    "generalist_oracle",
    "generalist_record",
    "train_generalist",
]


@dataclass(frozen=True)
class GeneralistRun:
    """What training one generalist did: its steps, its per-step history (weights, scores,
    loss of the global batch) and the mixer tuning it used."""

    steps: int
    history: dict[str, list]
    tuned: dict[str, Any]


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
    return key | lora_key(ctx)


def generalist_oracle(
    ctx: RunContext,
    ref: Reference,
    tasks: dict[str, Task],
    scores: dict[str, Scores],
    specs: dict[str, Specialist],
    *,
    eval_specs: dict[str, Specialist] | None = None,
) -> Oracle:
    """The oracle every generalist of the run trains on (the reference model, wrapped for
    data parallelism): trained against ``specs``, scored against ``eval_specs`` (default
    the same specialists).  The oracle starts every run from the reference weights."""
    ref.restore()  # an oracle restarts from the weights the model holds when it is built
    if lora.has_adapters(ref.model):  # DDP averages the gradients of what trains when it wraps
        spec = ctx.cfg.model.lora
        lora.use(ref.model, lora.GENERALIST if spec.generalist == "adapter" else None)
    eval_specs = eval_specs or specs
    return ctx.make_oracle(
        ctx.data_parallel(ref.model),
        [task_data(tasks[n], scores[n], "train", specs[n]) for n in tasks],
        eval_tasks=[task_data(tasks[n], scores[n], "eval", eval_specs[n]) for n in tasks],
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
) -> GeneralistRun:
    """Train one generalist with registered ``method`` on ``oracle`` (which holds every
    task of ``tasks``) at the ``[mix] examples`` budget (``progress``: a bar)."""
    mix, stage = ctx.cfg.mix, ctx.cfg.generalist
    k, sizes = len(tasks), tuple(len(t.train) for t in tasks.values())
    steps = steps_for_budget(method, mix.examples, k, stage.batch_size)
    policy = mix_policy(mix)
    mixer = build(method, steps=steps, sizes=sizes, policy=policy)
    step_size, smoothing = policy(steps, k)  # what the tuning set (the method may fix some)
    owner, folder = _owner_and_folder(ctx, method, seed, key)
    model = getattr(oracle, "policy", None)
    flops = getattr(getattr(model, "module", model), "flops_per_token", None)
    longest = max(len(seq) for t in tasks.values() for seq in t.train.chosen + t.train.rejected)
    log = MetricsLog(
        folder / "metrics.jsonl",
        folder / "tb" if ctx.cfg.run.tensorboard else None,
        flops_per_token=flops(longest) if flops else None,
        peak_flops=_peak(ctx),
    )
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
    return GeneralistRun(steps, history(result), tuned)


def _owner_and_folder(
    ctx: RunContext, method: str, seed: int, key: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """The owner record of generalist ``method`` × ``seed`` and this rank's run folder."""
    mix, stage = ctx.cfg.mix, ctx.cfg.generalist
    owner = owner_record(
        {"generalist": stage, "mix": mix}, method=method, seed=seed, driver=2, **key
    )
    folder = ctx.folders.generalists / f"{method}-seed{seed}-{cache_key(owner)[:12]}"
    # sharded: one folder for every rank and world size (llm.dcp); DDP: one per rank
    folder /= "sharded" if ctx.parallel.mode == "fsdp" else f"rank{ctx.parallel.rank}"
    return owner, folder


def generalist_record(
    ctx: RunContext,
    oracle: Oracle,
    model: Any,
    tasks: dict[str, Task],
    specs: dict[str, Specialist],
    method: str,
    seed: int,
    key: dict[str, Any],
) -> dict[str, Any]:
    """Generalist ``method`` × ``seed`` trained (:func:`train_generalist`) and evaluated
    (:func:`llm.stages.evaluation.evaluate` of ``model``): its record — held-out metrics,
    steps, mixer tuning, per-step history — cached under its owner record and ``[eval]``,
    so a rerun, or a run restarted after a stop, takes it as it was.  Once it is cached
    the run's resume checkpoints go, unless ``[run] keep = "all"`` (its metrics log stays)."""
    owner, folder = _owner_and_folder(ctx, method, seed, key)
    entry = {"generalist": cache_key(owner), "eval": asdict(ctx.cfg.eval), "record": 1}

    def compute() -> dict[str, np.ndarray]:
        trained = train_generalist(ctx, oracle, tasks, method, seed, key)
        record = evaluate(ctx, oracle, model, tasks, specs, f"{method} seed {seed}")
        record |= {"steps": trained.steps, "tuned": trained.tuned, "history": trained.history}
        return {"record": np.array(json.dumps(record))}

    where = f"generalist {method} seed {seed}"
    cached = load_or_compute(ctx.folders.cache, "generalist", entry, compute, where=where)
    if ctx.cfg.run.keep != "all":
        ctx.drop_checkpoints(folder)
    return json.loads(str(cached["record"]))


def _peak(ctx: RunContext) -> float | None:
    """The group's peak FLOP/s for MFU: ``[run] peak_flops`` per GPU, or the GPU's own from
    :data:`llm.gpus.GPUS` (0 on a CPU or an unknown GPU: no MFU)."""
    peak = peak_flops(ctx.precision.device, ctx.cfg.run.peak_flops)
    return peak * ctx.parallel.world if peak else None
