"""Activation checkpointing (``[model] gradient_checkpointing``): the built-in GPT and a
Hugging Face model give the same losses, gradients and training steps with it, while
keeping fewer activations for the backward pass — in eval mode too, where the DPO policy
runs (Hugging Face's own switch checkpoints in training mode only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llm_helpers import build_oracle, tiny_gpt

from llm.model import checkpoint_activations

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_hf():
    pytest.importorskip("transformers")
    from scale_helpers import tiny_hf as build

    return build(0)


def _saved_bytes_and_grads(model, ids):
    """(bytes the forward keeps for backward, the loss, every parameter's gradient)."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(saved), loss.detach(), grads


@pytest.mark.parametrize("build", [lambda: tiny_gpt(0), tiny_hf], ids=["gpt", "hf"])
def test_checkpointing_keeps_results_and_saves_activations(build):
    model = build().eval()  # as the DPO oracle runs it: dropout off
    ids = torch.randint(0, 90, (4, 40), generator=torch.Generator().manual_seed(0))
    plain_bytes, plain_loss, plain_grads = _saved_bytes_and_grads(model, ids)
    model.gradient_checkpointing_enable()
    ckpt_bytes, ckpt_loss, ckpt_grads = _saved_bytes_and_grads(model, ids)
    assert torch.equal(ckpt_loss, plain_loss)
    assert ckpt_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.equal(ckpt_grads[name], grad), name
    assert ckpt_bytes < plain_bytes  # only the blocks' inputs are kept
    model.gradient_checkpointing_enable(False)
    assert _saved_bytes_and_grads(model, ids)[0] == plain_bytes


def test_checkpointing_keeps_dpo_training_steps_bitwise():
    def trained(checkpointing: bool):
        oracle = build_oracle()
        if checkpointing:
            oracle.policy.gradient_checkpointing_enable()
        oracle.reset([0])
        for _ in range(3):
            batch = oracle.sample(np.array([[0, 0, 1, 1, 2, 2]]))
            oracle.step(batch, np.full((1, 6), 1 / 6), 1e-2)
        return {k: v.clone() for k, v in oracle.policy.state_dict().items()}

    plain, checkpointed = trained(False), trained(True)
    for name, value in plain.items():
        assert torch.equal(checkpointed[name], value), name


def test_checkpointing_restores_dropout_masks():
    """The recompute replays the RNG: with dropout on, gradients are still unchanged."""
    from llm.model import GPT, GPTConfig

    config = GPTConfig(90, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.2)
    model = GPT(config, generator=torch.Generator().manual_seed(0)).train()
    ids = torch.randint(0, 90, (2, 20), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    _, loss, grads = _saved_bytes_and_grads(model, ids)
    checkpoint_activations(model.blocks())
    torch.manual_seed(5)
    _, again, again_grads = _saved_bytes_and_grads(model, ids)
    assert torch.equal(again, loss)
    for name, grad in grads.items():
        assert torch.equal(again_grads[name], grad), name


def test_checkpointed_model_copies_and_runs_without_gradients():
    import copy

    model = tiny_gpt(0)
    model.gradient_checkpointing_enable()
    twin = copy.deepcopy(model)  # each block's forward is bound to its own copy
    assert twin.blocks()[0].forward.__self__ is twin.blocks()[0]
    ids = torch.zeros(1, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(twin(ids), model(ids))
