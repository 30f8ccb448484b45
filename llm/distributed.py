"""Data parallelism with torch.distributed (``torchrun``), no home-made layer.

Under ``torchrun --nproc_per_node N``, every rank builds the same reference model and
oracle, wraps the policy in :class:`torch.nn.parallel.DistributedDataParallel` (which
averages gradients), draws its own examples (one random stream per rank) and, before
each mixer update, :func:`reduce_task_scores` sums the per-task scores and counts over
the ranks — so every rank applies the identical mixer update and holds the same α and
the same weights.  With ``reduce=None`` and one process this is the single-machine path.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from amasim import prng

__all__ = ["init_from_env", "reduce_task_scores", "rank_streams"]


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes; returns (rank, world size).

    Without torchrun's environment (``RANK``/``WORLD_SIZE``) this is a no-op: (0, 1).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


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


def rank_streams(rank: int) -> tuple[int, int]:
    """(loop stream, oracle stream) of a rank: independent draws on every rank.

    Rank r draws from the streams of :mod:`amasim.prng` shifted by ``STREAMS_PER_RANK·r``:
    rank 0 draws what a single process draws, and no rank meets another's streams.
    """
    shift = prng.STREAMS_PER_RANK * rank
    return prng.LOOP_STREAM + shift, prng.SAMPLE_STREAM + shift
