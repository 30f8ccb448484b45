"""Collation: the pairs of a batch as padded tensors with their loss mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llm.data.tokenization import TokenizedPairs

__all__ = ["collate_pairs"]


def collate_pairs(
    tok: TokenizedPairs, indices: Sequence[int] | np.ndarray, pad_id: int
) -> dict[str, torch.Tensor]:
    """A right-padded batch of the pairs ``indices``: rows 0..B-1 chosen, B..2B-1 rejected.

    Returns ``input_ids`` (2B, L) long, ``attention_mask`` (2B, L) long and ``loss_mask``
    (2B, L) bool, with L the longest sequence in this batch.  ``loss_mask`` is aligned with
    ``input_ids`` (True on completion tokens and the EOS): the log-prob of token t comes
    from the logits at t-1, so shift ``loss_mask[:, 1:]`` against ``logits[:, :-1]``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(tok)
    if idx.size == 0:
        raise ValueError("indices is empty: a batch needs at least one pair")
    if idx.min() < 0 or idx.max() >= n:
        raise IndexError(f"indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")
    seqs = [tok.chosen[i] for i in idx] + [tok.rejected[i] for i in idx]
    starts = np.concatenate([tok.prompt_lengths[idx], tok.prompt_lengths[idx]])
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    pos = np.arange(width)
    attention = pos[None, :] < lengths[:, None]
    loss = attention & (pos[None, :] >= starts[:, None])
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(attention.astype(np.int64)),
        "loss_mask": torch.from_numpy(loss),
    }
