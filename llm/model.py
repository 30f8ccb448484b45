"""A small GPT, read top to bottom: config, attention, MLP, block, model, fingerprint.

In the style of nanoGPT (Karpathy). A decoder-only Transformer (Vaswani et al. 2017) with
the pre-LayerNorm arrangement of GPT-2 (Radford et al. 2019) and tied input/output embeddings.

>>> import torch
>>> config = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
>>> model = GPT(config, generator=torch.Generator().manual_seed(0))
>>> model(torch.zeros(2, 5, dtype=torch.long)).shape
torch.Size([2, 5, 16])
>>> model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2).shape
torch.Size([1, 5])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "GPTConfig",
    "GPT",
    "checkpoint_activations",
    "estimate_flops_per_token",
    "fingerprint",
]


@dataclass
class GPTConfig:
    """Shape of a GPT. Every size is a positive int and ``n_embd`` is a multiple of ``n_head``."""

    vocab_size: int
    block_size: int = 256  # longest sequence the position table covers
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 has them)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; each position sees itself and the positions before it."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # Queries, keys and values of all heads in one matmul, then the output projection W^O.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): the heads attend independently.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k) + M) V    (Vaswani et al. 2017, eq. 1),
        # with M = -inf where a key is in the future (or padding, when a mask is given).
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=p, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward net: FFN(x) = W₂ GELU(W₁ x), hidden width 4·n_embd."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN residual block (Radford et al. 2019, §2.3): x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def checkpoint_activations(layers: Iterable[nn.Module], enabled: bool = True) -> None:
    """Activation checkpointing: each layer keeps only its input for the backward pass and
    recomputes the rest there (Chen et al. 2016, "Training deep nets with sublinear memory
    cost") — activation memory of one layer instead of all, for about one more forward.

    Non-reentrant :func:`torch.utils.checkpoint.checkpoint` (the RNG state is restored for
    the recompute, so dropout masks and results are unchanged), in any mode while gradients
    are on: the DPO policy runs in eval mode (dropout off), where Hugging Face's own switch
    would not checkpoint.  The ``forward`` of each layer is wrapped on the instance, so module
    hooks (FSDP2's gather) stay outside the checkpoint and state-dict keys do not change;
    ``enabled=False`` restores the class's ``forward``.

    >>> block = nn.Linear(2, 2)
    >>> checkpoint_activations([block])
    >>> block(torch.ones(1, 2, requires_grad=True)).sum().backward()
    >>> checkpoint_activations([block], enabled=False)
    >>> "forward" in vars(block)
    False
    """
    for layer in layers:
        if enabled:
            layer.forward = types.MethodType(_checkpointed_forward, layer)
        else:
            vars(layer).pop("forward", None)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    return checkpoint(functools.partial(forward, self, **kwargs), *args, use_reentrant=False)


def estimate_flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token, forward and backward: 6·N + 12·n_layer·n_embd·seq_len.

    6·N counts the weight matmuls (2 FLOPs per weight forward, 4 backward); the second term is
    attention over the context (Kaplan et al. 2020, table 1; PaLM, Chowdhery et al. 2022,
    appendix B), as nanoGPT's ``estimate_mfu``.

    >>> estimate_flops_per_token(1000, 2, 16, 8)
    9072.0
    """
    return float(6 * n_params + 12 * n_layer * n_embd * seq_len)


class GPT(nn.Module):
    """GPT language model: token ids (B, T) → next-token logits (B, T, vocab_size)."""

    #: forward takes a boolean (B, 1, T, T) mask and position ids (prefix-shared batches)
    accepts_packed_inputs = True

    def __init__(self, config: GPTConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        # With a generator, building the layers (whose default init draws from the global RNG)
        # leaves the global RNG as it was; the weights below come from the generator alone.
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                    wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions
                    drop=nn.Dropout(config.dropout),
                    h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                    ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),  # GPT-2's final LN
                )
            )
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the unembedding is the token embedding matrix.
        self.transformer.wte.weight = self.lm_head.weight
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        """GPT-2 init: weights ~ N(0, 0.02²); residual projections' std scaled by 1/sqrt(2·n_layer)
        (two residual additions per layer); biases 0; LayerNorm gains 1."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # fixed order; the tied matrix appears once
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, residual_std, generator=generator)
            elif p.dim() >= 2:  # Linear and Embedding weights
                p.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                p.zero_()
            else:  # LayerNorm gain
                p.fill_(1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T).

        ``attention_mask`` is either (B, T), real tokens 1/True and padding 0/False (padding keys
        are hidden from every query; the causal mask is added), or a boolean (B, 1, T, T) mask
        used as given (True: query i may attend to key j), as packed layouts need
        (:mod:`llm.packing`). ``position_ids`` (B, T) index the position table (default
        0..T-1; when given, T may exceed block_size, the positions may not).
        ``return_hidden`` returns the final LayerNorm's output (B, T, n_embd) instead of the
        logits, for heads that never build them (:mod:`llm.chunked_head`)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T > self.config.block_size and position_ids is None:
            raise ValueError(
                f"sequence length {T} exceeds block_size={self.config.block_size}; "
                f"crop the input to its last {self.config.block_size} tokens "
                f"or build the model with GPTConfig(block_size>={T})"
            )
        device = input_ids.device
        mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            if tuple(attention_mask.shape) != (B, 1, T, T) or attention_mask.dtype != torch.bool:
                raise ValueError(
                    f"a 4-D attention_mask must be boolean of shape {(B, 1, T, T)}, got "
                    f"{attention_mask.dtype} {tuple(attention_mask.shape)}"
                )
            # Each query keeps itself in view: no all-masked row (softmax over nothing is NaN).
            mask = attention_mask | torch.eye(T, dtype=torch.bool, device=device)
        elif attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must have input_ids' shape {tuple(input_ids.shape)} "
                    f"or be a boolean (B, 1, T, T) mask, got {tuple(attention_mask.shape)}"
                )
            real = attention_mask.to(device=device, dtype=torch.bool)
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            # Query i sees key j iff j <= i and j is real; each query also keeps itself in view,
            # so a padding query never meets an all-masked row (softmax over nothing is NaN).
            mask = causal & (real[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=device))
        if position_ids is None:
            position_ids = torch.arange(T, device=device)
        elif position_ids.shape not in ((T,), (B, T)):
            raise ValueError(
                f"position_ids must have shape (B, T) = {(B, T)} or (T,), "
                f"got {tuple(position_ids.shape)}"
            )
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask)
        x = self.transformer.ln_f(x)
        return x if return_hidden else self.lm_head(x)

    def blocks(self) -> list[Block]:
        """The transformer blocks, in order (the units of FSDP and of activation checkpointing)."""
        return list(self.transformer.h)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass
        (:func:`checkpoint_activations`); the results are unchanged."""
        checkpoint_activations(self.blocks(), enabled)

    def output_head(self) -> nn.Linear:
        """The unembedding (V, n_embd), no bias, tied to the token embedding: ``logits =
        output_head()(forward(..., return_hidden=True))``."""
        return self.lm_head

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count. ``non_embedding`` drops the position table, a lookup; the token
        embedding stays because, tied to the lm head, it does a matmul (as nanoGPT counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at context ``seq_len``; see :func:`estimate_flops_per_token`."""
        c = self.config
        return estimate_flops_per_token(self.num_parameters(), c.n_layer, c.n_embd, seq_len)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None
    ) -> torch.Tensor:
        """Greedy decoding (argmax at each step): returns the prompt (B, T) followed by at most
        ``max_new_tokens`` new tokens. Rows that have emitted ``eos_id`` are padded with it, and
        decoding stops once every row has. The context is cropped to the last block_size tokens.
        Rows of a batch share one prompt length (no padding); runs in eval mode."""
        block = self.config.block_size
        return greedy_decode(
            self, lambda ids: self(ids[:, -block:])[:, -1, :], input_ids, max_new_tokens, eos_id
        )


@torch.no_grad()
def greedy_decode(
    module: nn.Module,
    next_logits,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
) -> torch.Tensor:
    """The greedy loop both models share: ``next_logits(ids)`` gives the logits (B, V) of the
    next token after ``ids``; rows that emitted ``eos_id`` are padded with it; ``module`` runs
    in eval mode meanwhile."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = module.training
    module.eval()
    try:
        ids = input_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            next_id = next_logits(ids).float().argmax(dim=-1)
            if eos_id is not None:
                next_id = torch.where(done, eos_id, next_id)
                done |= next_id == eos_id
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                break
        return ids
    finally:
        module.train(was_training)


def _config_of(model: nn.Module) -> object:
    """A JSON-able config: GPTConfig, HFCausalLM.config_dict, a transformers config, or None;
    without run-specific keys (``_name_or_path``, ``transformers_version``), at any depth."""
    config = getattr(model, "config_dict", None) or getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()

    def strip(value: object) -> object:
        if not isinstance(value, dict):
            return value
        return {k: strip(v) for k, v in value.items() if not str(k).startswith(("_", "transf"))}

    return strip(config)


def fingerprint(model: nn.Module) -> str:
    """sha256 hex digest of a model's class, config and weights (state dict, in name order).

    Equal digests mean the same function, so it serves as a cache key; any change to a weight
    changes it. Works for any ``nn.Module`` (GPT, HFCausalLM, a bare transformers model); a
    model sharded by FSDP2 has the digest of the whole model (a collective: every rank calls it).

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> fingerprint(layer) == fingerprint(layer)
    True
    >>> len(fingerprint(layer))
    64
    """
    h = hashlib.sha256()
    cls = type(model)
    while cls.__module__.startswith("torch.distributed.fsdp"):  # FSDP2's class over the model's
        cls = cls.__bases__[-1]
    header = {"class": f"{cls.__module__}.{cls.__qualname__}", "config": _config_of(model)}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        if hasattr(t, "full_tensor"):  # a DTensor shard: the whole tensor (every rank calls this)
            t = t.full_tensor()
        t = t.to("cpu").contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Raw bytes of any dtype (bfloat16 included) through a uint8 view.
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
