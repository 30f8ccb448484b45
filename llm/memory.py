"""GPU memory of a training step, per rank: the training state and the activations.

**Training state** (:func:`state_bytes`; measured against the tensors a step leaves in
``benchmarks/llm_memory_scaling.py``).  Per rank, with N parameters of which T train, W
ranks and AdamW's two float32 moments::

    full fine-tuning      4N (fp32 weights) + 4T (grads) + 8T (moments)     = 16N
    LoRA                  4N (the frozen base, fp32) + 16T                  T = r·Σ(d_in + d_out)
    FSDP                  16N / W   + the gathered bf16 weights in use: the root (embeddings,
                                      head) and one block, 2·(N_root + N_block)
    FSDP + LoRA           (4N + 16T) / W + 2·(N_root + N_block)

(FSDP2 shards each parameter along its first dimension, padded to a multiple of W.)  The
weights are the float32 master weights that autocast and FSDP's bfloat16 policy read.

**Activations** (:func:`activation_bytes`), what the forward keeps for the backward, per
token and block, with d the width, e the bytes of the compute dtype (2 under bf16 autocast,
4 in float32) and the residual stream in float32::

    8·d                        the two LayerNorm inputs (float32, Korthikanti et al. 2022 §4.1)
    e·Σ_linear (d_in + d_out)  every linear layer's input, and its output where a non-linear
                               op keeps it (attention's q, k, v and output, the MLP's GELU)

— 38·d bytes for a GPT block under bf16 (40·d counted this way: a bound); attention
itself keeps only its log-sum-exp (4·heads bytes per token; memory-efficient attention on
CUDA, whose boolean mask takes rows·T² bytes).  With activation checkpointing a block keeps
its input (4·d per token) and one block's activations live at a time.  The LM head is
chunked (:mod:`llm.chunked_head`): it keeps the scored rows' final hidden states (4·d per
scored token) and at its peak, in the backward, three chunks of float32 logits and a
float32 gradient of the head (4·V·d).

>>> state_bytes(1000, 1000, 1)["full"]  # 16 bytes a parameter
16000
>>> activation_bytes(layers=2, width=8, tokens=10, linear_io=16 * 8, heads=2, rows=1,
...                  row_width=10, scored=4, vocab=32, compute_bytes=2)
9364
"""

from __future__ import annotations

from llm.chunked_head import DEFAULT_CHUNK_BYTES, chunk_rows_for

__all__ = ["state_bytes", "activation_bytes", "head_bytes"]


def state_bytes(
    n: int, t: int, world: int, root: int = 0, block: int = 0, *, base_bytes: int = 4
) -> dict[str, int | float]:
    """Bytes per rank of the training state of each setting (module docstring): ``n``
    parameters, ``t`` trained by LoRA (for ``"lora"`` and ``"fsdp+lora"``), ``world`` ranks,
    ``root`` and ``block`` the parameters FSDP gathers outside the blocks and in one block;
    ``base_bytes`` per frozen base weight."""
    gathered = 2 * (root + block)
    return {
        "full": 16 * n,
        "lora": base_bytes * n + 16 * t,
        "fsdp": 16 * n / world + gathered,
        "fsdp+lora": (4 * n + 16 * t) / world + gathered,
    }


def head_bytes(scored: int, vocab: int, width: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Peak bytes of the chunked LM head in a step's backward: the kept hidden states of the
    ``scored`` tokens and their log-sum-exps (4·(d + 1) each), three chunks of float32
    logits (logits, exp, gradient) and the float32 head gradient (4·V·d)."""
    rows = min(scored, chunk_rows_for(vocab, chunk_bytes))
    return 4 * (width + 1) * scored + 3 * 4 * rows * vocab + 4 * vocab * width


def activation_bytes(
    *,
    layers: int,
    width: int,
    tokens: int,
    linear_io: int,
    heads: int,
    rows: int,
    row_width: int,
    scored: int,
    vocab: int,
    compute_bytes: int,
    checkpointing: bool = False,
) -> int:
    """Bytes one forward keeps for its backward (module docstring): ``tokens`` computed
    tokens in ``rows`` rows of ``row_width``; ``linear_io`` = Σ (d_in + d_out) over one
    block's linear layers; ``scored`` tokens through the head."""
    per_block = tokens * (8 * width + compute_bytes * linear_io + 4 * heads)
    if checkpointing:  # every block's input, and one block recomputed at a time
        blocks = layers * 4 * width * tokens + per_block
    else:
        blocks = layers * per_block
    mask = rows * row_width * row_width  # the boolean (R, 1, T, T) mask of the batch
    return blocks + mask + head_bytes(scored, vocab, width)
