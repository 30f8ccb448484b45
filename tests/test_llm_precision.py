"""One device and precision policy for the reference, the specialists and the policy.

On a CPU, in float32 and in bfloat16 autocast: a model scored against its own cached numbers
gets a DPO loss of exactly log 2 and a clipped excess of exactly 0, in training and in
evaluation; the cache key of the policy names its device and dtype; numbers made under
another policy are refused.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from llm_helpers import DPO, TOKENIZER, char_tasks, tiny_gpt

from llm.oracle import DPOOracle, TaskData, dpo_settings, numerics, pair_losses, reference_logps
from llm.packing import Layout
from llm.precision import Precision

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LOG2 = np.float32(math.log(2.0))  # what dpo_loss gives, in float32, at Δ = 0
DTYPES = [pytest.param(None, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]


def cached_tasks(model, precision: Precision, layout: Layout | None = None):
    """(train, eval) TaskData whose reference log-probs AND specialist losses are the model's
    own, made under ``precision``: the model is its own reference and its own specialist."""
    out = ([], [])
    for name, train, evaluation in char_tasks():
        for split, pairs in ((0, train), (1, evaluation)):
            ref = reference_logps(
                model,
                pairs,
                pad_id=TOKENIZER.pad_id,
                average=False,
                precision=precision,
                layout=layout,
            )
            own = pair_losses(
                model,
                pairs,
                ref,
                pad_id=TOKENIZER.pad_id,
                dpo=DPO,
                precision=precision,
                layout=layout,
                batch_size=7,  # another batching than the oracle's: same numbers
            )["loss"]
            key = numerics(model, precision, layout)
            out[split].append(TaskData(name, pairs, ref, own, numerics=key))
    return out


def oracle_of(model, precision, layout=None):
    train, evaluation = cached_tasks(model, precision, layout)
    return DPOOracle(
        model,
        train,
        eval_tasks=evaluation,
        pad_id=TOKENIZER.pad_id,
        dpo=dpo_settings(**DPO),
        precision=precision,
        layout=layout,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_excess_over_its_own_cached_losses_is_exactly_zero(dtype):
    oracle = oracle_of(tiny_gpt(0), Precision("cpu", dtype))
    oracle.reset([0])
    for row in oracle.evaluate_tasks().values():
        assert row["clipped"] == 0.0 and row["excess"] == 0.0
        assert row["loss"] == pytest.approx(float(LOG2), rel=1e-15)  # a mean of exact log 2s
        assert row["accuracy"] == 0.0  # margins exactly 0: no pair counts as preferred
    np.testing.assert_array_equal(oracle.evaluate("clipped"), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_equal_to_reference_trains_from_exactly_log2(dtype):
    """At reset the training losses of any batch are exactly log 2: the policy side and the
    cached reference side are bit-identical (in bf16 as well: same device, same autocast)."""
    oracle = oracle_of(tiny_gpt(0), Precision("cpu", dtype))
    oracle.reset([0])
    for draw in range(3):
        ids = np.random.default_rng(draw).integers(0, 3, size=(1, 10))
        losses = oracle.losses(oracle.sample(ids))
        np.testing.assert_array_equal(losses, np.float64(LOG2))
        metrics = oracle.last_metrics
        assert metrics["rewards/chosen"] == 0.0 and metrics["rewards/rejected"] == 0.0
        assert metrics["rewards/accuracies"] == 0.0


def test_bf16_numbers_differ_from_fp32_ones():
    """The autocast is applied: the policy changes the numbers (so mixing two policies —
    reference in float32, policy in bf16 — would not compare like with like)."""
    model, (_, pairs, _) = tiny_gpt(0), char_tasks()[0]
    fp32, bf16 = (
        reference_logps(model, pairs, pad_id=0, average=False, precision=Precision("cpu", d))
        for d in (None, torch.bfloat16)
    )
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)


def test_mixing_policies_is_what_went_wrong():
    """The issue's symptom: reference in float32, policy in bf16 → not log 2 at reset.
    With one policy (the test above) it is exactly log 2."""
    model = tiny_gpt(0)
    train, _ = cached_tasks(model, Precision("cpu", None))
    for t in train:
        t.numerics = None  # pretend nobody recorded how they were made
    oracle = DPOOracle(
        model,
        train,
        pad_id=TOKENIZER.pad_id,
        dpo=dpo_settings(**DPO),
        precision=Precision("cpu", torch.bfloat16),
    )
    oracle.reset([0])
    losses = oracle.losses(oracle.sample(np.zeros((1, 8), dtype=np.int64)))
    assert np.abs(losses - LOG2).max() > 0


def test_cache_key_names_device_dtype_and_layout():
    model = tiny_gpt(0)
    fp32 = numerics(model, Precision.parse("cpu", "float32"))
    bf16 = numerics(model, Precision.parse("cpu", "bfloat16"))
    assert fp32["device"] == "cpu" and fp32["autocast"] == "float32"
    assert bf16["autocast"] == "bfloat16" and bf16 != fp32
    assert "device_name" in fp32 and fp32["threads"] == torch.get_num_threads()
    assert numerics(model, Precision(), Layout(False, 0)) != fp32
    assert fp32["prefix_sharing"] is True and fp32["bucket"] == 16
    assert Precision.parse("cuda", "bfloat16").key()["device"] == "cuda"


def test_oracle_refuses_numbers_made_under_another_policy():
    model = tiny_gpt(0)
    train, _ = cached_tasks(model, Precision("cpu", None))
    with pytest.raises(ValueError, match="recompute them"):
        DPOOracle(
            model,
            train,
            pad_id=TOKENIZER.pad_id,
            dpo=dpo_settings(**DPO),
            precision=Precision("cpu", torch.bfloat16),
        )


def test_a_model_elsewhere_than_the_policy_is_an_error():
    model, (_, pairs, _) = tiny_gpt(0), char_tasks()[0]
    with pytest.raises(ValueError, match=r"model\.to\('cuda'\)"):
        reference_logps(model, pairs, pad_id=0, average=False, precision=Precision("cuda"))


def test_precision_validation():
    assert Precision("cpu", torch.float32).dtype is None  # float32 autocast is no autocast
    assert Precision.parse("cpu", "float16").dtype_name == "float16"
    with pytest.raises(ValueError, match="dtype='int8'"):
        Precision.parse("cpu", "int8")
    with pytest.raises(ValueError, match="autocast dtype"):
        Precision("cpu", torch.float64)
    with pytest.raises(ValueError, match="not both"):
        DPOOracle(
            tiny_gpt(0),
            cached_tasks(tiny_gpt(0), Precision())[0],
            pad_id=0,
            dpo=dpo_settings(**DPO),
            precision=Precision(),
            device="cpu",
        )
    assert Precision.of(tiny_gpt(0)) == Precision("cpu", None)
