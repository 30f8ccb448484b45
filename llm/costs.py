"""What a run computes, counted without computing it: FLOPs from the model's shape, and the
steps, pairs and tokens of a training stage from the tokenised data and the packing.

**Tokens.**  :class:`PairCosts` packs every pair alone (:func:`llm.packing.pack_pairs`, the
layout the run uses): the tokens it holds as data (``seen``, prompts counted twice, as
``DPOOracle.tokens_seen``), the tokens a forward processes (``computed``, padding included,
as ``tokens_computed``), Σ width² over its rows (attention) and the tokens the LM head
scores.  With bucketing (``[run] bucket`` > 0) a row's width never depends on the rest of
the batch, so a batch costs the sum of its pairs; without it a batch pads every row to its
widest.

**Draws.**  :class:`CountingOracle` is the amasim oracle protocol over those numbers: it
draws the pairs a :class:`~llm.oracle.DPOOracle` draws (:func:`llm.oracle.draw_pairs`, the
same counter-based streams), counts the passes a step makes (micro-batches recomputed
included) and returns constant losses, so :func:`replay` through the one driver
(:func:`amasim.driver.run`) takes a stage's steps, rounds, sweeps, proxy runs and
checkpoint saves exactly as the run does.  Where the draws follow the losses (adaptive
resampling: AMA-S, Group DRO's resampling variants, DoReMi's final run) the counts are those
of the mixer's initial weights held fixed, an expectation rather than the run's own draws.

**FLOPs** (:func:`forward_flops`, :func:`train_flops`): 2 per multiply-add; a forward costs
2·N_mat per computed token (N_mat: the blocks' linear weights, Kaplan et al. 2020, table 1),
4·d·T per token of a row of width T in each block (QKᵀ and AV; PaLM, Chowdhery et al. 2022,
App. B) and 2·V·d per scored token (the chunked LM head runs on the scored rows only); a
backward twice the forward's matmuls (input and weight gradients; the input's alone for a
frozen weight), and the head recomputes its logits (:mod:`llm.chunked_head`).  When
everything trains and every token is scored this is 6·N + 12·L·d·T per token (N with the
head; PaLM's count) plus 2·V·d for the recomputed logits.  FlopCounterMode counts the
same matmuls (``tests/test_llm_plan.py``).

>>> shape = ModelShape(parameters=0, matmul=100, adapter=0, layers=1, width=4, heads=1,
...                    vocab=10, linear_io=0, root=0, block=0)
>>> forward_flops(shape, Tokens(seen=0, computed=3, square=9, scored=1))
824
>>> train_flops(shape, Tokens(seen=0, computed=3, square=9, scored=1), base_trains=True)
2552
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from amasim import prng
from amasim.capabilities import MixtureRoundsFromSteps
from amasim.driver import run
from amasim.mixers import Mixer
from amasim.oracle import Batch
from llm.data import TokenizedPairs
from llm.oracle import draw_pairs
from llm.packing import Layout, pack_pairs

__all__ = [
    "ModelShape",
    "Tokens",
    "PairCosts",
    "CountingOracle",
    "Replay",
    "replay",
    "forward_flops",
    "train_flops",
    "decode_flops",
]


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs and the memory of a model depend on (:meth:`of` reads it from a model,
    e.g. one built on the ``meta`` device: no weights allocated)."""

    parameters: int  # every parameter once (a tied matrix once), adapters included
    matmul: int  # Σ d_in·d_out over the blocks' linear layers (base weights)
    adapter: int  # Σ r·(d_in + d_out) of one LoRA adapter (0: no LoRA)
    layers: int
    width: int
    heads: int
    vocab: int
    linear_io: int  # Σ (d_in + d_out) over one block's linear layers
    root: int  # parameters outside the blocks (embeddings, final norm, head)
    block: int  # parameters of the largest block
    last: int = 0  # weight size of the last matmul a block runs (not recomputed; see below)

    @classmethod
    def of(cls, model: nn.Module, head: nn.Module, heads: int) -> ModelShape:
        """The shape of ``model`` (its ``blocks()``), ``head`` its output layer."""
        blocks = list(model.blocks())
        unique = {id(p): p for p in model.parameters()}
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        matmul = io = last = 0
        for i, block in enumerate(blocks):
            for name, module in block.named_modules():
                if _is_matmul(module) and i == 0:
                    last = module.weight.numel()  # registration order = execution order
                if _is_matmul(module) and ".lora_" not in f".{name}":
                    matmul += module.weight.numel()  # a LoRA layer's base_layer included
                    if i == 0:
                        io += sum(module.weight.shape)  # d_in + d_out
        names = {
            k.split(".lora_A.")[1].split(".")[0]
            for k, _ in model.named_parameters()
            if ".lora_A." in k
        }
        return cls(
            parameters=sum(p.numel() for p in unique.values()),
            matmul=matmul,
            adapter=_adapter_size(model, names),
            layers=len(blocks),
            width=head.weight.shape[1],
            heads=heads,
            vocab=head.weight.shape[0],
            linear_io=io,
            root=sum(p.numel() for k, p in unique.items() if k not in in_blocks),
            block=max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0),
            last=last,
        )


def _is_matmul(module: nn.Module) -> bool:
    """A linear layer: ``nn.Linear``, or transformers' ``Conv1D`` (GPT-2: the transposed
    weight of the same matmul)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _adapter_size(model: nn.Module, names: set[str]) -> int:
    """Parameters of one LoRA adapter (the first name; every adapter has the same shape)."""
    if not names:
        return 0
    name = sorted(names)[0]
    marks = (f".lora_A.{name}.", f".lora_B.{name}.")
    return sum(p.numel() for k, p in model.named_parameters() if any(m in f".{k}" for m in marks))


@dataclass(frozen=True)
class Tokens:
    """Token counts of forward passes: ``seen`` (data tokens), ``computed`` (processed,
    padding included), ``square`` (Σ width² over the rows), ``scored`` (through the head)."""

    seen: int = 0
    computed: int = 0
    square: int = 0
    scored: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def times(self, n: int) -> Tokens:
        """These counts ``n`` times over."""
        return Tokens(*(n * getattr(self, f.name) for f in fields(self)))


def forward_flops(shape: ModelShape, t: Tokens) -> int:
    """FLOPs of forward passes over ``t`` (module docstring)."""
    body = 2 * (shape.matmul + shape.adapter) * t.computed  # 2·N per token (Kaplan, table 1)
    attention = 4 * shape.layers * shape.width * t.square  # QKᵀ and AV: 2·T·d each per token
    head = 2 * shape.vocab * shape.width * t.scored  # the chunked head: scored tokens only
    return body + attention + head


def train_flops(
    shape: ModelShape, t: Tokens, *, base_trains: bool, checkpointing: bool = False
) -> int:
    """FLOPs of forward + backward passes over ``t``: the backward of a trained weight's
    matmul is 2× its forward (input and weight gradients), of a frozen one 1× (input only);
    attention's 2×; the head recomputes its logits, then its input's gradient and, when it
    trains, its weight's (2 + 2 + 2 per scored token and V·d); activation checkpointing runs
    the blocks' forward again up to the last tensor the backward needs: torch's non-reentrant
    checkpoint stops early (``torch.utils.checkpoint.set_checkpoint_early_stop``), so each
    block's last matmul (``shape.last``: the MLP's output projection, or with LoRA there
    its ``lora_B``, which runs after the base weight) is not run again.  With a frozen base
    the first block's input projections need no input gradient either (nothing below them
    trains); they are counted, so the count is an upper bound by 2·(their weights)·tokens,
    1/L of the input projections' backward at depth L."""
    d, layers = shape.width, shape.layers
    backward = (4 if base_trains else 2) * shape.matmul * t.computed
    backward += 4 * shape.adapter * t.computed + 8 * layers * d * t.square
    backward += (6 if base_trains else 4) * shape.vocab * d * t.scored
    again = forward_flops(shape, Tokens(computed=t.computed, square=t.square))
    again -= 2 * layers * shape.last * t.computed
    return forward_flops(shape, t) + backward + (again if checkpointing else 0)


def decode_flops(shape: ModelShape, prompt: int, new: int, *, cache: bool) -> int:
    """FLOPs of greedy decoding ``new`` tokens after a ``prompt``-token prompt, one prompt
    at a time: without a KV cache (the built-in GPT) every token runs the whole sequence
    through the model and its head; with one (Hugging Face models) the newest token alone,
    attending to the rest."""
    total = 0
    for j in range(new):
        length = prompt + j
        if cache and j:
            total += 2 * (shape.matmul + shape.adapter + shape.vocab * shape.width)
            total += 4 * shape.layers * shape.width * length
        else:
            full = Tokens(computed=length, square=length * length, scored=length)
            total += forward_flops(shape, full)
    return total


@dataclass(frozen=True)
class PairCosts:
    """Per pair of a split, the :class:`Tokens` of one forward over that pair alone, its
    rows, and the layout's bucket (module docstring)."""

    seen: np.ndarray
    computed: np.ndarray
    square: np.ndarray
    scored: np.ndarray
    rows: np.ndarray
    bucket: int

    @classmethod
    def of(
        cls,
        pairs: TokenizedPairs,
        layout: Layout,
        pad_id: int,
        max_length: int | None,
        *,
        chosen_only: bool = False,
    ) -> PairCosts:
        """Each pair packed alone (:func:`llm.packing.pack_pairs`)."""
        out = np.zeros((5, len(pairs)), dtype=np.int64)
        for i in range(len(pairs)):
            batch = pack_pairs(
                pairs, [i], pad_id, layout, max_length=max_length, chosen_only=chosen_only
            )
            widths = [p.input_ids.shape for p in batch.pieces]
            out[:, i] = (
                batch.tokens,
                batch.computed,
                sum(r * w * w for r, w in widths),
                int(batch.counts.sum()),
                sum(r for r, _ in widths),
            )
        return cls(*out, bucket=layout.bucket)

    def __len__(self) -> int:
        return len(self.seen)

    def batch(self, index: np.ndarray) -> Tokens:
        """One forward over the pairs ``index`` together."""
        index = np.asarray(index).reshape(-1)
        seen, scored = int(self.seen[index].sum()), int(self.scored[index].sum())
        if self.bucket:  # rows padded to their own widths: the batch is the sum of its pairs
            return Tokens(
                seen, int(self.computed[index].sum()), int(self.square[index].sum()), scored
            )
        rows = int(self.rows[index].sum())
        width = int((self.computed[index] // self.rows[index]).max())  # every row padded to it
        return Tokens(seen, rows * width, rows * width * width, scored)

    def passes(self, batch_size: int) -> tuple[Tokens, int]:
        """Forwards over every pair in order, ``batch_size`` at a time (as
        :func:`llm.oracle.reference_logps` and ``pair_losses`` run them): the tokens and
        the number of batches."""
        total, n = Tokens(), len(self)
        for lo in range(0, n, batch_size):
            total += self.batch(np.arange(lo, min(lo + batch_size, n)))
        return total, -(-n // batch_size)


class CountingOracle(MixtureRoundsFromSteps):
    """The oracle protocol over :class:`PairCosts` (module docstring): no model, the draws of
    a :class:`~llm.oracle.DPOOracle` over the same tasks, and per-task constant losses
    ``log 2 + spread·i`` (``spread = 0``: every task alike).  ``trained``: the tokens of the
    passes with a backward; ``forwarded``: those without (a recomputed micro-batch's first
    pass, validation); ``steps``, ``pairs`` and ``forward_batches`` over every reset."""

    max_replicates = 1

    def __init__(
        self,
        tasks: Sequence[tuple[str, PairCosts]],
        *,
        eval_tasks: Sequence[PairCosts] = (),
        micro_batch_size: int | None = None,
        accumulate: str = "recompute",
        eval_batch_size: int = 64,
        spread: float = 0.0,
    ) -> None:
        self.task_names = tuple(name for name, _ in tasks)
        self.task_sizes = tuple(len(costs) for _, costs in tasks)
        self.costs = _merged([costs for _, costs in tasks])
        self.offsets = np.concatenate([[0], np.cumsum(self.task_sizes)])
        self.task_of = np.repeat(np.arange(len(tasks)), self.task_sizes)
        self.eval_tasks, self.eval_batch_size = list(eval_tasks), eval_batch_size
        self.micro, self.accumulate, self.spread = micro_batch_size, accumulate, spread
        self.steps = self.pairs = self.forward_batches = 0
        self.trained, self.forwarded = Tokens(), Tokens()
        self.tokens_seen = self.tokens_computed = 0
        self.last_metrics: dict[str, float] = {}

    def reset(self, seeds: Sequence[int]) -> None:
        self.keys = prng.replicate_keys(list(seeds), stream=prng.SAMPLE_STREAM)
        self.draws = self.tokens_seen = self.tokens_computed = 0
        self.reset_mixture_rounds(seeds, prng.MIXTURE_STREAM)

    def sample(self, task_ids: np.ndarray) -> Batch:
        index = draw_pairs(self.keys, self.draws, task_ids, self.offsets)
        self.draws += 1
        return Batch(task_ids, np.zeros(index.shape), index)

    def _chunks(self, index: np.ndarray) -> list[np.ndarray]:
        size = self.micro or len(index)
        return [index[lo : lo + size] for lo in range(0, len(index), size)]

    def losses(self, batch: Batch) -> np.ndarray:
        index = np.asarray(batch.data[0])
        chunks = self._chunks(index)
        for chunk in chunks:  # the measured passes: every token seen once
            t = self.costs.batch(chunk)
            self.tokens_seen += t.seen
            self.tokens_computed += t.computed
            if len(chunks) > 1 and self.accumulate == "recompute":
                self.forwarded += t  # no graph now; forward + backward again in step()
            else:
                self.trained += t
        return np.log(2.0) + self.spread * self.task_of[batch.data]

    def step(self, batch: Batch, loss_weights: np.ndarray, learning_rate: float) -> None:
        index = np.asarray(batch.data[0])
        chunks = self._chunks(index)
        if len(chunks) > 1 and self.accumulate == "recompute":
            for chunk in chunks:
                t = self.costs.batch(chunk)
                self.tokens_computed += t.computed
                self.trained += t
        self.steps += 1
        self.pairs += len(index)

    def default_reference_losses(self, batch: Batch) -> np.ndarray:
        """DoReMi's reference losses: cached numbers, no model pass (zeros here)."""
        return np.zeros(np.asarray(batch.data).shape)

    def evaluate_groups(self, score: str = "loss") -> np.ndarray:
        """Validation (Skill-It, Aioli): a forward over every eval task, counted."""
        for costs in self.eval_tasks:
            tokens, batches = costs.passes(self.eval_batch_size)
            self.forwarded += tokens
            self.forward_batches += batches
        return np.zeros((1, len(self.task_names)))

    def evaluate(self, score: str = "clipped", averaged: bool = False) -> np.ndarray:
        return np.zeros((1, len(self.task_names)))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _merged(parts: Sequence[PairCosts]) -> PairCosts:
    arrays = [np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(PairCosts)[:5]]
    return PairCosts(*arrays, bucket=parts[0].bucket)


class _Saves:
    """A checkpoint that keeps nothing and counts the saves the driver makes."""

    def __init__(self) -> None:
        self.count = 0

    def load(self) -> None:
        return None

    def save(self, state: dict[str, Any]) -> None:
        self.count += 1


@dataclass(frozen=True)
class Replay:
    """What one training run does (:func:`replay`): optimizer steps, pairs, the tokens of
    the passes with and without a backward, the forward-only batches, checkpoint saves and
    the tokens the oracle counted (``tokens_seen``, ``tokens_computed``: what the run's
    last metrics record holds)."""

    steps: int
    pairs: int
    trained: Tokens
    forwarded: Tokens
    forward_batches: int
    saves: int
    tokens_seen: int
    tokens_computed: int


def replay(
    mixer: Mixer,
    oracle: CountingOracle,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    schedule: str = "constant",
    checkpoint_every: int = 50,
) -> Replay:
    """Run ``mixer`` on ``oracle`` through :func:`amasim.driver.run` as
    :func:`llm.train.train` runs a stage (its rounds, apply rule and streams) and count.

    >>> from amasim import mixers
    >>> from llm.data import TokenizedPairs
    >>> seq = lambda *ids: np.array(ids, dtype=np.int32)
    >>> pairs = TokenizedPairs(chosen=[seq(1, 2, 3)] * 4, rejected=[seq(1, 2, 4, 5)] * 4,
    ...     prompt_lengths=np.full(4, 2), chosen_truncated=0, rejected_truncated=0,
    ...     sources=["x"] * 4, fingerprint="x")
    >>> costs = PairCosts.of(pairs, Layout(prefix_sharing=True, bucket=0), 0, 8)
    >>> done = replay(mixers.stratified(), CountingOracle([("t", costs)]), steps=3,
    ...               batch_size=2, checkpoint_every=2)
    >>> done.steps, done.pairs, done.saves, done.tokens_seen, done.tokens_computed
    (3, 6, 2, 42, 30)
    """
    saves = _Saves()
    with torch.no_grad():  # nothing here computes; keep autograd out of it all the same
        run(
            mixer,
            oracle,
            steps=steps,
            learning_rate=1.0,
            schedule=schedule,
            batch_size=batch_size,
            seeds=[seed],
            rounds=10,
            record_every=1,
            evaluate=False,
            check=False,
            checkpoint=saves,
            checkpoint_every=checkpoint_every,
        )
    return Replay(
        oracle.steps,
        oracle.pairs,
        oracle.trained,
        oracle.forwarded,
        oracle.forward_batches,
        saves.count,
        oracle.tokens_seen,
        oracle.tokens_computed,
    )
