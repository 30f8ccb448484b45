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
together (a non-finite loss on one rank's block) goes through :func:`any_rank`.

The numbers of a sharded fp32 model are those of the plain model (the gathered weights
are the same tensors); a bfloat16 policy changes them, so :func:`numerics_of` names it for
the cache keys (:func:`llm.oracle.numerics`).

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(2, 2))
>>> wrap(model, "none", Group(0, 1, 0, "cpu")) is model
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

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "PARALLEL",
    "Group",
    "join",
    "wrap",
    "blocks_of",
    "is_sharded",
    "shard_of",
    "numerics_of",
    "any_rank",
    "full_state",
    "load_full_state",
]

#: the values of ``[run] parallel``
PARALLEL = ("none", "ddp", "fsdp")

#: what wrap() did to a model that changes its numbers (read by numerics_of)
_NUMERICS: weakref.WeakKeyDictionary[nn.Module, dict[str, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks: ``rank`` of ``world``, ``local_rank`` on its
    node, and the device type the collectives run on ("cpu": gloo, "cuda": NCCL)."""

    rank: int
    world: int
    local_rank: int
    device: str

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world)`` for :func:`amasim.driver.run`, or None for one process."""
        return (self.rank, self.world) if self.world > 1 else None


def _torchrun_world() -> int | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["WORLD_SIZE"])


def join(parallel: str, device: str = "cpu") -> Group:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL for a CUDA ``device`` (each rank
    on GPU ``LOCAL_RANK``), gloo otherwise.  Outside ``torchrun``: one process, with a
    one-rank group for ``"fsdp"`` (its sharded state is then that of any world size).
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel={parallel!r}: use one of {', '.join(map(repr, PARALLEL))}")
    kind = torch.device(device).type
    world = _torchrun_world()
    if world is None and parallel != "fsdp":
        return Group(0, 1, 0, kind)
    if world is not None and world > 1 and parallel == "none":
        raise ValueError(
            f'[run] parallel = "none" under torchrun (WORLD_SIZE={world}): every rank would '
            'run the whole pipeline into the same folder. Fix: set parallel = "ddp" or "fsdp", '
            "or run one process"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        if world is None:  # one process: a group of one, no rendezvous
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    return Group(dist.get_rank(), dist.get_world_size(), local_rank, kind)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``: its ``blocks()`` (GPT, HFCausalLM), else the
    children of its longest ``ModuleList`` (the layer stack of most architectures)."""
    blocks = getattr(model, "blocks", None)
    if callable(blocks):
        return list(blocks())
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap(model: nn.Module, parallel: str, group: Group, *, bf16: bool = False) -> nn.Module:
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
    if bf16:
        _NUMERICS[model] = {"param_dtype": "bfloat16"}
    return model


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


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on any rank (an all-reduce; ``flag`` itself in one process),
    so every rank takes the same branch — one rank raising alone would leave the others
    waiting in a collective forever."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


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
