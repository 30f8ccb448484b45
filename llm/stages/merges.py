"""Stage 6, the merges: a merge of the specialists' weights, no training (linear, task
arithmetic, TIES, DARE, SLERP: :mod:`amasim.merging`).

Reads no config section.  Base: the reference, whole tensors; task vectors averaged, not
summed; DARE draws from the seed.  With LoRA the specialists are adapters: the merge acts
on their updates ΔW_i and adds the result to the base (:func:`llm.lora.merge_specialists`).
"""

from __future__ import annotations

import torch

from amasim.merging import merge
from amasim.registry import MERGES
from llm import lora
from llm.dcp import read_checkpoint
from llm.parallel import full_state, load_full_state
from llm.stages.records import Reference, Specialist

__all__ = ["merged_state", "load_merge", "depends_on_seed"]


def depends_on_seed(method: str) -> bool:
    """Whether merge ``method`` draws random numbers (DARE): its result varies by seed."""
    return MERGES[method].startswith("dare")


def merged_state(
    method: str, seed: int, ref: Reference, specs: dict[str, Specialist]
) -> dict[str, torch.Tensor]:
    """The state dict of merge ``method`` of the specialists (module docstring)."""
    base = full_state(ref.state)  # FSDP: gathered (every rank)
    states = [
        read_checkpoint(s.checkpoint, owner=s.key)["oracle"]["policy"] for s in specs.values()
    ]  # only this run's specialists
    options = {"seed": seed} if depends_on_seed(method) else {}
    weights = [1.0 / len(specs)] * len(specs)
    if lora.has_adapters(ref.model):
        return lora.merge_specialists(
            MERGES[method], ref.model, base, states, weights=weights, **options
        )
    return merge(MERGES[method], base, states, weights=weights, **options)


def load_merge(method: str, seed: int, ref: Reference, specs: dict[str, Specialist]) -> None:
    """Put merge ``method`` into ``ref.model`` (every rank; the base, adapters off, holds
    it): evaluate it under :func:`llm.lora.adapters_off`, then :meth:`Reference.restore`."""
    load_full_state(ref.model, merged_state(method, seed, ref, specs))
