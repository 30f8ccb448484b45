"""The reference's supervised fine-tuning as an oracle, so it trains through the one driver.

DPO starts from a reference that has seen the kind of answers it will compare; the built-in
GPT gets one by SFT on the chosen completions.  :class:`SFTOracle` is
:class:`llm.oracle.DPOOracle` with that objective — the per-pair loss is the mean token
negative log-likelihood of the chosen completion,

    L_SFT(z) = −(1/|y_w|) Σ_t log π(y_w,t | x, y_w,<t)

(the chosen rows alone, in plain rows: :func:`llm.packing.pack_pairs` with
``chosen_only``) — so the SFT gets everything a DPO stage gets from the driver and the
oracle: the run's device and precision policy, the chunked LM head, checkpoints and resume,
the non-finite checks, progress and data parallelism.  Trained with the ``uniform`` mixer
(α ∝ task sizes) a batch is uniform over all pairs of all tasks.

>>> import numpy as np, torch
>>> from llm.data import TokenizedPairs
>>> from llm.model import GPT, GPTConfig
>>> seq = lambda *ids: np.array(ids, dtype=np.int32)
>>> pairs = TokenizedPairs(chosen=[seq(1, 2, 3)], rejected=[seq(1, 2, 5)],
...     prompt_lengths=np.array([2]), chosen_truncated=0, rejected_truncated=0,
...     sources=["x"], fingerprint="x")
>>> model = GPT(GPTConfig(8, 8, 1, 1, 4), generator=torch.Generator().manual_seed(0))
>>> oracle = SFTOracle(model, [sft_task("t", pairs)], pad_id=0)
>>> oracle.reset([0])
>>> losses = oracle.losses(oracle.sample(np.zeros((1, 2), dtype=np.int64)))
>>> losses.shape, bool(losses.min() > 0)
((1, 2), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llm.data import TokenizedPairs
from llm.dpo import packed_sequence_logps
from llm.oracle import DPOOracle, TaskData, dpo_settings

__all__ = ["SFTOracle", "sft_task"]


def sft_task(name: str, pairs: TokenizedPairs) -> TaskData:
    """A task for :class:`SFTOracle`: the pairs alone (no reference or specialist numbers)."""
    return TaskData(name, pairs, np.zeros((len(pairs), 2)), np.zeros(len(pairs)))


class SFTOracle(DPOOracle):
    """:class:`~llm.oracle.DPOOracle` whose per-pair loss is the SFT loss of the chosen
    completion (module docstring).  Keyword arguments are DPOOracle's optimizer and
    precision settings (``grad_clip``, ``weight_decay``, ``precision``, ``layout``,
    ``micro_batch_size``, ``adamw``); ``last_metrics`` reports the batch's mean ``loss``.
    The policy trains in train mode (dropout on, if the model has any)."""

    metric_names = ("loss",)

    def __init__(
        self, policy: torch.nn.Module, tasks: Sequence[TaskData], *, pad_id: int, **kw: Any
    ) -> None:
        super().__init__(policy, tasks, pad_id=pad_id, dpo=dpo_settings(0.1, "sigmoid", 0.0), **kw)

    def reset(self, seeds: Sequence[int]) -> None:
        super().reset(seeds)
        self.policy.train()

    def _forward(self, index: np.ndarray, measure: bool = True) -> torch.Tensor:
        batch = self._packed(index, chosen_only=True)
        losses = -packed_sequence_logps(self.policy, batch, self.precision, average=True)
        if measure:
            self.tokens_seen += batch.tokens
            sums = torch.stack([losses.detach().double().sum(), losses.new_full((), len(losses))])
            self._metric_sums = sums if self._metric_sums is None else self._metric_sums + sums
        return losses
