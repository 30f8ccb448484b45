"""Stage 3, the reference log-probs of every pair, computed once (the reference model never
runs during training).

Reads ``[eval] batch_size``.  Cached per task and split (:mod:`llm.cache`), keyed by the
reference's fingerprint, the pairs' token ids, the length averaging (IPO) and the numerics
(device, dtype, layout, threads, compilation).
"""

from __future__ import annotations

import numpy as np

from llm.cache import load_or_compute
from llm.context import RunContext
from llm.data import TokenizedPairs
from llm.oracle import numerics, reference_logps
from llm.stages.records import Reference, Scores, Task

__all__ = ["reference_scores"]


def reference_scores(ctx: RunContext, ref: Reference, tasks: dict[str, Task]) -> dict[str, Scores]:
    """Every task's reference log-probs, per split."""
    average = ctx.dpo["loss_type"] == "ipo"
    made_under = numerics(ref.model, ctx.precision, ctx.layout)  # what the oracle checks

    def logps(pairs: TokenizedPairs, where: str) -> np.ndarray:
        key = {"model": ref.fingerprint, "pairs": pairs.fingerprint, "average": average}

        def compute() -> dict[str, np.ndarray]:
            values = reference_logps(
                ref.model,
                pairs,
                pad_id=ctx.tokenizer.pad_id,
                average=average,
                precision=ctx.precision,
                layout=ctx.layout,
                batch_size=ctx.cfg.eval.batch_size,
            )
            return {"logps": values}

        sources = {"logps": pairs.sources}
        entry = load_or_compute(
            ctx.folders.cache,
            "reference",
            key | ref.numerics,
            compute,
            where=where,
            sources=sources,
        )
        return entry["logps"]

    out = {}
    for name, task in tasks.items():
        split = {s: logps(task.pairs(s), f"task {name!r} ({s} split)") for s in task.splits}
        out[name] = Scores(split["train"], split["eval"], made_under, split.get("valid"))
    return out
