"""Stage 2, the reference model: the built-in GPT after SFT on the chosen answers, or a
local Hugging Face model as loaded.

Reads ``[model]`` and ``[sft]``.  The SFT is a driver run (:class:`llm.sft.SFTOracle` with
the ``uniform`` mixer: batches uniform over all pairs of all tasks), on the run's device
and precision, data-parallel under ``torchrun``, checkpointed under
``OUT/reference/sft-<key>`` (an interrupted SFT resumes).  Its weights are cached as
``OUT/models/reference-<key>.pt``, sealed with their owner record (:mod:`llm.integrity`:
the model and SFT settings, the initial weights, the tasks' token ids and the numerics —
device, dtype, layout, threads), so a run on warm caches loads them and a file of another
run is never taken for this one's.  The model then takes its training form
(:meth:`RunContext.scale`: device, adapters, activation checkpointing, shards, compilation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from amasim import mixers
from llm.cache import cache_key
from llm.checkpoint import load_owned, save_atomic
from llm.config import ModelSection, SFTSection
from llm.context import RunContext
from llm.integrity import owner_record
from llm.model import GPT, GPTConfig, fingerprint
from llm.parallel import full_state
from llm.sft import SFTOracle, sft_task
from llm.stages.records import Reference, Task
from llm.train import LoopConfig, MetricsLog, train

__all__ = ["reference", "initial_model", "build_gpt", "sft_weights", "SFT_WEIGHT_DECAY"]

#: the SFT's AdamW weight decay (torch's default); it clips no gradient
SFT_WEIGHT_DECAY = 0.01
#: 3: the SFT trains through the driver (amasim's draws, the run's precision policy)
_SFT_VERSION = 3


def initial_model(ctx: RunContext) -> GPT:
    """The built-in GPT of ``[model]``, initialised from ``init_seed``, on the CPU."""
    return build_gpt(ctx.cfg.model, ctx.tokenizer.vocab_size)


def build_gpt(m: ModelSection, vocab_size: int, *, seeded: bool = True) -> GPT:
    """The built-in GPT of ``[model]`` section ``m`` over ``vocab_size`` tokens, initialised
    from ``init_seed`` (``seeded=False``: from the global RNG, e.g. a shape on the ``meta``
    device under ``torch.device("meta")``, where a CPU generator costs a second)."""
    config = GPTConfig(vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)
    generator = torch.Generator().manual_seed(m.init_seed) if seeded else None
    return GPT(config, generator=generator)


def reference(ctx: RunContext, tasks: dict[str, Task]) -> Reference:
    """The reference model in its training form, with its weights and fingerprint."""
    if ctx.base_model is not None:
        model = ctx.base_model
    else:
        model = initial_model(ctx)
        model.load_state_dict(sft_weights(ctx, tasks))
    model = ctx.scale(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Reference(model, state, fingerprint(model), ctx.numerics(model))


def sft_weights(ctx: RunContext, tasks: dict[str, Task]) -> dict[str, torch.Tensor]:
    """The GPT's weights after ``[sft]`` (cached; the initial weights for ``steps = 0``)."""
    init = initial_model(ctx)
    owner = owner_record(
        {"model": ctx.cfg.model, "sft": ctx.cfg.sft},
        init=fingerprint(init),
        data={name: t.train.fingerprint for name, t in tasks.items()},
        numerics=ctx.trained_numerics(init),  # device, dtype, FSDP casts, layout, threads
        sft_version=_SFT_VERSION,
    )
    key = cache_key(owner)
    path = ctx.folders.models / f"reference-{key[:16]}.pt"
    folder = ctx.folders.reference / f"sft-{key[:12]}"
    if ctx.parallel.replicated:  # DDP: every rank trains alike; its own files
        folder /= f"rank{ctx.parallel.rank}"
    saved = load_owned(path, owner=owner, kind="reference model")
    if saved is not None:
        state = saved["state"]
    else:
        state = init.state_dict()
        if ctx.cfg.sft.steps:
            state = _train(ctx, init, tasks, folder, owner)
        if ctx.parallel.is_main:
            save_atomic({"state": state}, path, kind="reference model", owner=owner)
    if ctx.keep != "all":  # the reference file holds the weights: no resume needed
        ctx.drop_checkpoints(folder)
    return state


def sft_loop(sft: SFTSection, seed: int) -> LoopConfig:
    """The SFT's loop: ``[sft]``'s steps, batch and rate, seeded by ``[model] init_seed``,
    with ten resume points whatever its length (each one writes the whole model)."""
    return LoopConfig(
        sft.steps,
        sft.batch_size,
        sft.learning_rate,
        seed=seed,
        checkpoint_every=max(50, sft.steps // 10),
    )


def _train(
    ctx: RunContext, model: GPT, tasks: dict[str, Task], folder: Path, owner: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """SFT through the driver (module docstring); the trained weights, whole, on the CPU.
    The global RNG is left as it was (dropout masks draw from it)."""
    sft = ctx.cfg.sft
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.cfg.model.init_seed)
        trainee = ctx.shard(model.to(ctx.precision.device))  # FSDP, DDP, or the model
        oracle = SFTOracle(
            trainee,
            [sft_task(name, task.train) for name, task in tasks.items()],
            pad_id=ctx.tokenizer.pad_id,
            precision=ctx.precision,
            layout=ctx.layout,
            grad_clip=0.0,
            weight_decay=SFT_WEIGHT_DECAY,
        )
        loop = sft_loop(sft, ctx.cfg.model.init_seed)
        log = MetricsLog(folder / "metrics.jsonl")
        mixer = mixers.uniform([len(t.train) for t in tasks.values()])
        label = ctx.bar_label("reference SFT")
        train(oracle, mixer, loop, out_dir=folder, log=log, progress=label, owner=owner)
        log.close()
        trained = getattr(trainee, "module", trainee)  # DDP: the replica
        state = full_state(trained.state_dict())  # FSDP: gathered on every rank
        trained.zero_grad(set_to_none=True)
    return state
