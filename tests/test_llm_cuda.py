"""The DPO step on a CUDA GPU (marked ``cuda``: skipped without one; run by
``benchmarks/gpu_check.sh``): one precision policy, the chunked head, training and resume,
and merges of CUDA state dicts.

Bit-exactness across different batches is a CPU property (a GPU's matmul kernels depend on
the row count); here the exact checks compare numbers made with the same batches, as the
pipeline makes them (the eval batch size for both the cached and the evaluated losses).
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from llm_helpers import DPO, TOKENIZER, char_tasks, tiny_gpt

from llm.chunked_head import label_logps
from llm.oracle import DPOOracle, TaskData, dpo_settings, numerics, pair_losses, reference_logps
from llm.precision import Precision

DEVICE = os.environ.get("LLM_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda] if DEVICE == "cuda" else []

DTYPES = [pytest.param(None, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]
EVAL_BATCH = 16


def cuda_oracle(dtype, **kwargs) -> DPOOracle:
    """A tiny GPT on the GPU, its own reference and its own specialist, all under one policy."""
    precision = Precision(DEVICE, dtype)
    model = tiny_gpt(0).to(DEVICE)
    train, evaluation = [], []
    for name, tr, ev in char_tasks():
        for pairs, out in ((tr, train), (ev, evaluation)):
            ref = reference_logps(model, pairs, pad_id=0, average=False, precision=precision)
            own = pair_losses(
                model, pairs, ref, pad_id=0, dpo=DPO, precision=precision, batch_size=EVAL_BATCH
            )["loss"]
            out.append(TaskData(name, pairs, ref, own, numerics(model, precision)))
    return DPOOracle(
        model,
        train,
        eval_tasks=evaluation,
        pad_id=TOKENIZER.pad_id,
        dpo=dpo_settings(**DPO),
        precision=precision,
        eval_batch_size=EVAL_BATCH,
        **kwargs,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_excess_over_its_own_cached_losses_is_zero_on_cuda(dtype):
    oracle = cuda_oracle(dtype)
    oracle.reset([0])
    for row in oracle.evaluate_tasks().values():
        assert row["clipped"] == 0.0 and row["excess"] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_starts_at_log2_and_learns_on_cuda(dtype):
    oracle = cuda_oracle(dtype)
    oracle.reset([0])
    ids = np.repeat(np.arange(3), 4)[None]
    first = oracle.losses(oracle.sample(ids))
    # Exactly log 2 on a CPU (tests/test_llm_precision.py); on a GPU the training batch's
    # matmuls may pick other kernels than the cached batches' (row counts differ), so the
    # two sides agree to kernel rounding: ~1e-7 in float32, a bf16 ulp of a logit in bf16.
    np.testing.assert_allclose(first, math.log(2.0), rtol=0, atol=1e-5 if dtype is None else 1e-2)
    before = oracle.evaluate("loss")
    oracle.train_on_mixture(np.full((1, 3), 1 / 3), 5, learning_rate=1e-2)
    assert oracle.evaluate("loss").mean() < before.mean()
    assert all(p.device.type == DEVICE for p in oracle.policy.parameters())


def test_resume_on_cuda_continues_the_same_run():
    straight = cuda_oracle(torch.bfloat16)
    straight.reset([0])
    mixture = np.full((1, 3), 1 / 3)
    straight.train_on_mixture(mixture, 2, learning_rate=1e-2)
    checkpoint = copy.deepcopy(straight.state_dict())
    straight.train_on_mixture(mixture, 2, learning_rate=1e-2)
    resumed = cuda_oracle(torch.bfloat16)
    resumed.reset([0])
    resumed.load_state_dict(checkpoint)
    resumed.train_on_mixture(mixture, 2, learning_rate=1e-2)
    assert (resumed.draws, resumed.mixture_draws) == (straight.draws, straight.mixture_draws)
    # GPU attention backward may sum in any order, and AdamW's first steps, g/(|g| + ε),
    # magnify that for near-zero gradient entries: the mean difference stays at rounding
    # level, while another run (other draws) ends ~3e-2 away on average.
    diffs = [
        (resumed.policy.state_dict()[name] - value).abs().flatten().float()
        for name, value in straight.policy.state_dict().items()
    ]
    assert torch.cat(diffs).mean().item() < 1e-5


def test_chunked_head_on_cuda_equals_the_unchunked_head():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(300, 64, device=DEVICE, generator=g, requires_grad=True)
    weight = (torch.randn(1000, 64, device=DEVICE, generator=g) / 8).requires_grad_()
    labels = torch.randint(0, 1000, (300,), device=DEVICE, generator=g)
    got = label_logps(hidden, weight, None, labels, chunk_rows=64)
    want = torch.log_softmax(hidden @ weight.T, -1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    g_got = torch.autograd.grad(got.sum(), (hidden, weight))
    g_want = torch.autograd.grad(want.sum(), (hidden, weight))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        bf16 = label_logps(hidden, weight, None, labels, chunk_rows=64)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, want, rtol=0, atol=0.1)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties"])
def test_merges_of_cuda_state_dicts_stay_on_cuda_and_match_cpu(method):
    from amasim.merging import merge

    base = tiny_gpt(0).state_dict()
    models = [tiny_gpt(seed).state_dict() for seed in (1, 2)]
    options = {"seed": 0} if method.startswith("dare") else {}
    on_cpu = merge(method, base, models, weights=[0.5, 0.5], **options)
    cuda = {k: v.to(DEVICE) for k, v in base.items()}
    cuda_models = [{k: v.to(DEVICE) for k, v in m.items()} for m in models]
    on_cuda = merge(method, cuda, cuda_models, weights=[0.5, 0.5], **options)
    for name, value in on_cpu.items():
        assert on_cuda[name].device.type == DEVICE
        torch.testing.assert_close(on_cuda[name].cpu(), value, rtol=0, atol=0)
    model = tiny_gpt(0).to(DEVICE)
    model.load_state_dict(on_cuda)  # a merged state dict loads into a CUDA model
