"""DoReMi's reference model, as published: one model trained on the default mixture.

Xie et al. (2023, "DoReMi", §2) train a reference model on the default domain weights and
score each domain's excess loss over it; the pipeline's faithful analogue is a DPO model
trained from the SFT reference on the *natural* mixture — the ``uniform`` mixer, α ∝ task
sizes — at the generalists' ``[mix] examples`` budget, seed :data:`SEED`.  (The SFT
reference itself would not do: the policy starts at it, so its DPO loss is log 2 on every
pair and the excess over it carries no per-example difficulty.)  That run is the
``uniform`` generalist of seed 0, trained once (resumed when it exists); its per-pair DPO
losses on the training pairs are cached and reach the oracle as
``TaskData.default_reference_losses`` (the ``"default_reference"`` capability).  Its
examples count in DoReMi's budget, as its proxy run's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amasim.registry import Constants
from llm.cache import load_or_compute
from llm.context import RunContext
from llm.stages.generalists import generalist_oracle, train_generalist
from llm.stages.records import Reference, Scores, Specialist, Task

__all__ = ["SEED", "METHOD", "default_reference_losses"]

#: the one reference: the natural-mixture generalist of this seed
SEED = 0
METHOD = "uniform"


def default_reference_losses(
    ctx: RunContext,
    ref: Reference,
    tasks: dict[str, Task],
    scores: dict[str, Scores],
    specs: dict[str, Specialist],
    key: dict[str, Any],
    constants: Constants | None = None,
) -> dict[str, np.ndarray]:
    """Every task's training pairs' DPO losses under DoReMi's reference (module docstring);
    ``key`` is the generalists' (:func:`llm.stages.generalists.generalist_key`),
    ``constants`` the run's (the ``uniform`` generalist of seed 0 is then that very run)."""
    cache_key = key | {"default_reference": METHOD, "seed": SEED, "mix": ctx.cfg.mix}

    def compute() -> dict[str, np.ndarray]:
        oracle = generalist_oracle(ctx, ref, tasks, scores, specs)
        train_generalist(ctx, oracle, tasks, METHOD, SEED, key, constants=constants)
        out = {
            name: oracle.pair_losses(t.train, scores[name].train)["loss"]
            for name, t in tasks.items()
        }
        ref.restore()
        return out

    sources = {name: t.train.sources for name, t in tasks.items()}
    where = "DoReMi's default-mixture reference (losses)"
    return load_or_compute(
        ctx.folders.cache, "default-reference", cache_key, compute, where=where, sources=sources
    )
