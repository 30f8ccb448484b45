"""Data parallelism under ``torchrun``: the process group, the model's wrapping, and what
the ranks must agree on.

``[run] parallel`` picks how the ranks hold the model:

=========  ==================================================================================
``none``   one process, the plain model (refused under ``torchrun``: every rank would run
           the whole pipeline into the same folder)
``ddp``    :class:`~torch.nn.parallel.DistributedDataParallel` under ``torchrun`` (every rank
           holds the whole model and its AdamW state; gradients averaged), the plain model
           in one process — the default
``fsdp``   FSDP2 (:func:`torch.distributed.fsdp.fully_shard`): one unit per transformer
           block and the root for the rest, so each rank keeps 1/world of the parameters,
           gradients and AdamW state and gathers one block at a time (Zhao et al. 2023,
           "PyTorch FSDP").  With ``[run] dtype = "bfloat16"`` the mixed-precision policy
           gathers the parameters in bfloat16 and reduces the gradients in float32 (the
           fp32 master weights stay sharded); with ``"float32"`` nothing is cast.  Outside
           ``torchrun`` it runs as a one-rank group, so a run can resume on another world
           size (:mod:`llm.dcp`).
=========  ==================================================================================

Every rank trains on its block of one global batch (:class:`amasim.driver.Mixing` with
``shard=(rank, world)``), so ranks apply the same mixer update and end with the same
model; the averaged gradient is that of the global batch.  What the ranks must decide
together (a non-finite loss on one rank's block) travels in the step's one all-reduce of
the losses' flags and metric sums (:meth:`llm.oracle.DPOOracle.losses`).

The numbers of a sharded fp32 model are those of the plain model (the gathered weights
are the same tensors); a bfloat16 policy changes them, so :func:`numerics_of` names it for
the cache keys (:func:`llm.oracle.numerics`).

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(2, 2))
>>> wrap(model, "none", SINGLE) is model
True
>>> shard_of(model) is None, numerics_of(model)
(True, {})
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "PARALLEL",
    "ParallelDims",
    "SINGLE",
    "join",
    "torchrun_rank",
    "torchrun_world_size",
    "reduce_task_scores",
    "is_distributed",
    "world_size",
    "rank",
    "all_reduce_sum",
    "broadcast_object",
    "all_gather_object",
    "wrap",
    "blocks_of",
    "is_sharded",
    "shard_of",
    "numerics_of",
    "wrap_numerics",
    "full_state",
    "load_full_state",
]

#: the values of ``[run] parallel``
PARALLEL = ("none", "ddp", "fsdp")

#: what wrap() did to a model that changes its numbers (read by numerics_of)
_NUMERICS: weakref.WeakKeyDictionary[nn.Module, dict[str, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ParallelDims:
    """The parallel layout of this process (torchtitan's ``ParallelDims``, for one
    data-parallel dimension): ``rank`` of ``world`` ranks, ``local_rank`` on its node, the
    device type the collectives run on (``"cpu"``: gloo, ``"cuda"``: NCCL), how the ranks
    hold the model (``mode``: ``[run] parallel``), and whether :func:`join` made the process
    group (so :meth:`close` destroys it; a group the caller made stays theirs).

    This module is the one place that asks ``torch.distributed`` who is who: everything
    else reads a :class:`ParallelDims`.
    """

    rank: int
    world: int
    local_rank: int
    device: str
    mode: str = "none"
    owns_group: bool = False

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for :func:`amasim.driver.run`, or None for one process."""
        return (self.rank, self.world) if self.world > 1 else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that takes the folder lock and writes the results."""
        return self.rank == 0

    @property
    def replicated(self) -> bool:
        """Several ranks each holding the whole model (DDP): each writes its own files."""
        return self.mode != "fsdp" and self.world > 1

    def wrap(self, model: nn.Module, *, bf16: bool = False) -> nn.Module:
        """``model`` as this layout trains it (:func:`wrap`)."""
        return wrap(model, self.mode, self, bf16=bf16)

    def close(self) -> None:
        """Destroy the process group if :func:`join` made it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


#: the layout of a process outside ``torchrun``
SINGLE = ParallelDims(0, 1, 0, "cpu")


def _torchrun_world() -> int | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["WORLD_SIZE"])


def join(parallel: str, device: str = "cpu") -> ParallelDims:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) — the one way this package joins one:
    NCCL for a CUDA ``device`` (each rank on GPU ``LOCAL_RANK``), gloo otherwise.  Outside
    ``torchrun``: one process, with a one-rank group for ``"fsdp"`` (its sharded state is
    then that of any world size).  A group the caller already made is joined as it is.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel={parallel!r}: use one of {', '.join(map(repr, PARALLEL))}")
    kind = torch.device(device).type
    world = _torchrun_world()
    if world is None and parallel != "fsdp" and not dist.is_initialized():
        return ParallelDims(0, 1, 0, kind, parallel)
    if world is not None and world > 1 and parallel == "none":
        raise ValueError(
            f'[run] parallel = "none" under torchrun (WORLD_SIZE={world}): every rank would '
            'run the whole pipeline into the same folder. Fix: set parallel = "ddp" or "fsdp", '
            "or run one process"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if kind == "cuda" else "gloo"
        if world is None:  # one process: a group of one, no rendezvous
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    rank, size = dist.get_rank(), dist.get_world_size()
    return ParallelDims(rank, size, local_rank, kind, parallel, owns)


def torchrun_rank() -> int:
    """This process's rank as ``torchrun`` numbers it (0 outside torchrun), known before any
    process group exists (a lock is taken before the group is joined)."""
    return int(os.environ.get("RANK", "0"))


def torchrun_world_size() -> int:
    """The ranks ``torchrun`` starts (1 outside torchrun), known before any group exists."""
    return _torchrun_world() or 1


def reduce_task_scores(means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global per-task means and counts: Σ_ranks mean·count / Σ_ranks count (all-reduce)."""
    packed = torch.from_numpy(np.concatenate([means * counts, counts.astype(np.float64)], axis=-1))
    if dist.get_backend() == "nccl":  # NCCL reduces device tensors only
        packed = packed.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.cpu()
    k = means.shape[-1]
    sums, total = packed[..., :k].numpy(), packed[..., k:].numpy()
    return sums / np.maximum(total, 1.0), total.astype(np.int64)


def is_distributed() -> bool:
    """Whether a process group is up (collectives have peers to meet)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself in one process).
    It stays on its device: an NCCL reduction costs no copy to the host."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` on every rank (itself in one process)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in one process)."""
    if world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: its ``blocks()`` (GPT, HFCausalLM), else the
    children of its longest ``ModuleList`` (the layer stack of most architectures)."""
    blocks = getattr(model, "blocks", None)
    if callable(blocks):
        return list(blocks())
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap(model: nn.Module, parallel: str, group: ParallelDims, *, bf16: bool = False) -> nn.Module:
    """``model`` as ``parallel`` trains it on ``group`` (see the module docstring): itself
    (one process, or ``"none"``), a DDP wrapper, or itself sharded in place (``"fsdp"``:
    each block, then the root; ``bf16`` gathers parameters in bfloat16 and reduces
    gradients in float32).  Adapters (:mod:`llm.lora`) and activation checkpointing must
    be in place first: sharding fixes the set of parameters."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel={parallel!r}: use one of {', '.join(map(repr, PARALLEL))}")
    if parallel == "none" or (parallel == "ddp" and group.world == 1):
        return model
    if parallel == "ddp":
        devices = [group.local_rank] if group.device == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=devices)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(group.device, (group.world,))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks to shard (no blocks() method "
            'and no nn.ModuleList): use parallel = "ddp", or give the model a blocks() method'
        )
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # The root keeps its gathered parameters after a forward (FSDP2's choice for the root:
    # backward needs them next); the LM head is read then, outside the forward.  A state
    # dict taken or loaded meanwhile would meet whole tensors instead of the shards (and a
    # load would be lost at the next reshard): shard the root first.
    model.register_state_dict_pre_hook(_reshard_root)
    model.register_load_state_dict_pre_hook(_reshard_root)
    _NUMERICS[model] = wrap_numerics(parallel, bf16)
    return model


def wrap_numerics(parallel: str, bf16: bool) -> dict[str, str]:
    """What :func:`wrap` with these arguments changes in a model's numbers (the part of
    :func:`numerics_of` known before wrapping: a cache key of what a model *will* train as)."""
    return {"param_dtype": "bfloat16"} if parallel == "fsdp" and bf16 else {}


def _reshard_root(module: nn.Module, *args: Any) -> None:
    module.reshard()


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is an FSDP2 module (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_of(model: Any) -> tuple[int, int] | None:
    """``(rank, world)`` when ``model`` trains as one rank of a data-parallel group (DDP or
    FSDP with a process group), else None."""
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    if not (ddp or is_sharded(model)) or not dist.is_initialized():
        return None
    return dist.get_rank(), dist.get_world_size()


def numerics_of(model: nn.Module) -> dict[str, str]:
    """What the wrapping changes in ``model``'s numbers: ``{"param_dtype": "bfloat16"}``
    for FSDP's bfloat16 policy, else ``{}`` (a sharded fp32 model computes as the plain one)."""
    return dict(_NUMERICS.get(model, {}))


def full_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every DTensor shard gathered into a whole CPU tensor (a collective:
    every rank calls it, on the same keys), other tensors moved to the CPU."""
    from torch.distributed.tensor import DTensor

    out = {}
    for key, value in state.items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return out


def load_full_state(model: nn.Module, state: Mapping[str, Any], *, strict: bool = True) -> None:
    """Load whole tensors ``state`` into ``model`` — sharded by each rank for an FSDP model
    (every rank passes the same state), as ``load_state_dict`` otherwise."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        model.reshard()  # after a forward the root holds whole tensors: load into the shards
        options = StateDictOptions(full_state_dict=True, strict=strict)
        set_model_state_dict(model, dict(state), options=options)
        return
    target = getattr(model, "module", model)  # DDP: the replica
    result = target.load_state_dict(dict(state), strict=strict)
    if not strict and result.unexpected_keys:
        raise KeyError(
            f"state keys {result.unexpected_keys[:3]} are not in {type(target).__name__}: "
            "a state of another model (or of other adapters)"
        )
