"""llm.oracle.DPOOracle: the amasim oracle protocol over a PyTorch DPO policy.

A 1-layer GPT on the built-in synthetic tasks (a few dozen pairs each), reference log-probs
computed from the same weights, so that at reset the policy *is* the reference.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from llm_helpers import (
    DPO,
    SIZES,
    TOKENIZER,
    build_oracle,
    char_tasks,
    parameters,
    task_data,
    tiny_gpt,
    unwrap,
)

import amasim
from amasim import mixers
from llm.data import tokenize_pairs
from llm.oracle import DPOOracle, TaskData, dpo_settings

K = len(SIZES)
LOG2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def oracle() -> DPOOracle:
    return build_oracle()


def every_task(b: int) -> np.ndarray:
    return np.repeat(np.arange(K), b)[None, :]


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --------------------------------------------------------------------------- protocol
def test_passes_check_oracle(oracle):
    assert isinstance(oracle, amasim.Oracle)
    assert oracle.task_names == tuple(SIZES)
    assert oracle.task_sizes == tuple(n for n, _ in SIZES.values())
    amasim.check_oracle(oracle)


def test_policy_equals_reference_at_reset(oracle):
    oracle.reset([0])
    batch = oracle.sample(every_task(4))
    losses = oracle.losses(batch)
    assert losses.shape == (1, 4 * K) and losses.dtype == np.float64
    np.testing.assert_allclose(losses, LOG2, rtol=0, atol=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(oracle.last_metrics[name]) < 1e-6, name
    assert oracle.last_metrics["loss"] == pytest.approx(LOG2, abs=1e-5)
    # The batch carries each pair's cached specialist loss.
    spec = np.concatenate([t.specialist_losses for t in task_data(tiny_gpt(0))])
    np.testing.assert_array_equal(batch.reference_losses[0], spec[batch.data[0]])


def test_reset_restarts_from_the_reference_weights(oracle):
    initial = parameters(oracle)
    oracle.reset([0])
    batch = oracle.sample(every_task(2))
    oracle.losses(batch)
    oracle.step(batch, np.full((1, 2 * K), 0.5), 1e-2)
    assert any(not torch.equal(v, initial[k]) for k, v in parameters(oracle).items())
    oracle.reset([0])
    assert_same_parameters(parameters(oracle), initial)


def test_reset_drops_gradients_left_on_the_policy():
    """A policy trained just before (the reference's SFT) may carry ``.grad``; the first step
    after reset must not add it: it must equal the step of the same policy loaded fresh."""

    def first_step(stale: bool) -> dict:
        oracle = build_oracle()
        if stale:
            for p in oracle.policy.parameters():
                p.grad = torch.ones_like(p)
        oracle.reset([0])
        batch = oracle.sample(every_task(2))
        oracle.losses(batch)
        oracle.step(batch, np.full((1, 2 * K), 0.5), 1e-2)
        return parameters(oracle)

    assert_same_parameters(first_step(stale=True), first_step(stale=False))


@pytest.mark.parametrize(
    "make",
    [
        lambda: mixers.ama_r(1.0),
        lambda: mixers.ama_s(1.0, 0.2),
        lambda: mixers.uniform([n for n, _ in SIZES.values()]),
        lambda: mixers.stratified(),
        lambda: mixers.group_dro(1.0),
    ],
    ids=["ama_r", "ama_s", "uniform", "stratified", "group_dro"],
)
def test_every_amasim_mixer_drives_it(oracle, make):
    mixer = make()
    shapes = []
    sample = oracle.sample

    def recording(task_ids):
        shapes.append(task_ids.shape)
        return sample(task_ids)

    batch_size, steps = 4, 3
    result = amasim.run(
        mixer, oracle, steps=steps, learning_rate=1e-2, batch_size=batch_size, seeds=0, check=True
    )
    oracle.sample = recording  # check_oracle ran above; record a second run's batches only
    again = amasim.run(
        mixer, oracle, steps=steps, learning_rate=1e-2, batch_size=batch_size, check=False
    )
    np.testing.assert_array_equal(result.task_scores, again.task_scores)  # seeded
    assert np.isfinite(result.task_scores).all() and result.task_scores.shape == (1, K)
    assert np.isfinite(result.worst_task).all()
    assert np.isfinite(result.weights).all() and np.isfinite(result.scores).all()
    per_step = K * batch_size if mixer.apply == "reweight" else batch_size
    assert shapes == [(1, per_step)] * steps
    assert result.examples.sum() == steps * per_step
    if mixer.apply == "reweight":  # every task in every batch
        np.testing.assert_array_equal(result.task_examples, [[steps * batch_size] * K])


def test_sample_is_seeded(oracle):
    ids = every_task(8)

    def draw(seed):
        oracle.reset([seed])
        return [oracle.sample(ids).data.copy() for _ in range(3)]

    first, again, other = draw(0), draw(0), draw(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert not np.array_equal(first[0], first[1])  # a new draw every call
    # Each index lies in the rows of the task asked for.
    bounds = np.cumsum([0, *oracle.task_sizes])
    index = first[0][0]
    assert np.all((bounds[ids[0]] <= index) & (index < bounds[ids[0] + 1]))


def test_gradient_accumulation_matches_one_batch():
    ids = np.array([[0, 0, 1, 1, 2, 2, 0, 1]])
    weights = np.linspace(0.05, 0.2, 8)[None, :]
    results = []
    for micro in (None, 4):
        oracle = build_oracle(micro_batch_size=micro)
        before = parameters(oracle)
        oracle.reset([0])
        batch = oracle.sample(ids)
        losses = oracle.losses(batch)
        oracle.step(batch, weights, 1e-2)
        results.append((losses, parameters(oracle)))
    (whole, after_whole), (accumulated, after_accumulated) = results
    np.testing.assert_allclose(accumulated, whole, rtol=0, atol=1e-6)
    moved = max((after_whole[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-3  # the step did something for the comparison to mean anything
    for name in after_whole:
        torch.testing.assert_close(
            after_accumulated[name], after_whole[name], rtol=0, atol=1e-5, msg=name
        )


# ---------------------------------------------------------------------------- failures
def poison_task(i: int):
    def poison(tasks: list[TaskData]) -> None:
        tasks[i].reference_logps[:] = np.nan

    return poison


@pytest.mark.parametrize("micro", [None, 2])
def test_nan_loss_raises_and_leaves_parameters(micro):
    oracle = build_oracle(poison=poison_task(1), micro_batch_size=micro)
    oracle.reset([0])
    before = parameters(oracle)
    batch = oracle.sample(np.array([[0, 0, 1, 1]]))
    with pytest.raises(FloatingPointError, match="non-finite"):  # at losses() or at step()
        oracle.losses(batch)
        oracle.step(batch, np.full((1, 4), 0.25), 1e-2)
    assert_same_parameters(parameters(oracle), before)


def test_nan_forward_raises_and_leaves_parameters(oracle):
    oracle.reset([0])
    before = parameters(oracle)
    oracle.policy.register_forward_hook(lambda module, args, out: out * float("nan"))
    batch = oracle.sample(every_task(2))
    with pytest.raises(FloatingPointError):
        oracle.step(batch, np.full((1, 2 * K), 0.1), 1e-2)
    assert_same_parameters(parameters(oracle), before)


def test_failed_accumulated_step_leaves_no_gradient_behind():
    ids_bad, ids_good = np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 0]])
    weights = np.full((1, 4), 0.25)

    def run(fail_first: bool):
        oracle = build_oracle(poison=poison_task(1), micro_batch_size=2)
        oracle.reset([0])
        bad = oracle.sample(ids_bad)
        if fail_first:
            with pytest.raises(FloatingPointError):
                oracle.losses(bad)
                oracle.step(bad, weights, 1e-2)
        good = oracle.sample(ids_good)  # the same draw counter either way
        oracle.losses(good)
        oracle.step(good, weights, 1e-2)
        return parameters(oracle)

    recovered, clean = run(True), run(False)
    for name in clean:
        torch.testing.assert_close(recovered[name], clean[name], rtol=0, atol=1e-6, msg=name)


def test_empty_task_and_no_task_are_errors():
    model = tiny_gpt(0)
    empty = tokenize_pairs([], TOKENIZER, max_length=48)
    tasks = [*task_data(model)[:1], TaskData("empty", empty, np.zeros((0, 2)), np.zeros(0))]
    with pytest.raises(ValueError, match="'empty' has no pairs"):
        DPOOracle(model, tasks, pad_id=TOKENIZER.pad_id, dpo=dpo_settings(**DPO))
    with pytest.raises(ValueError, match="at least one task"):
        DPOOracle(model, [], pad_id=TOKENIZER.pad_id, dpo=dpo_settings(**DPO))


def test_one_replicate_only(oracle):
    assert oracle.max_replicates == 1
    with pytest.raises(ValueError, match="one replicate"):
        oracle.reset([0, 1])
    with pytest.raises(ValueError, match="at most 1 replicate"):
        amasim.run(mixers.ama_r(1.0), oracle, steps=1, learning_rate=0.1, seeds=[0, 1])


def test_sample_before_reset_is_an_error(oracle):
    with pytest.raises(RuntimeError, match="reset"):
        oracle.sample(every_task(1))


def test_eval_tasks_default_to_training_tasks(oracle):
    oracle.reset([0])
    details = oracle.evaluate_tasks()
    assert list(details) == list(SIZES)
    for row in details.values():
        assert row["loss"] == pytest.approx(LOG2, abs=1e-5)
        assert set(row) >= {"loss", "accuracy", "excess", "clipped"}
    scores = oracle.evaluate("clipped")
    assert scores.shape == (1, K)
    np.testing.assert_allclose(scores[0], [d["clipped"] for d in details.values()])


def test_char_tasks_have_the_requested_sizes():
    assert [(n, len(tr), len(ev)) for n, tr, ev in char_tasks()] == [
        (name, *SIZES[name]) for name in SIZES
    ]


def test_offers_validation_and_mixture_rounds(oracle):
    """The DPO oracle passes the capability checks; a round on one task alone lowers that
    task's held-out loss and moves the policy only through step()."""
    from amasim.capabilities import capabilities_of
    from amasim.checker import check_capabilities

    offered = {"group_validation", "mixture_rounds", "checkpointing", "training_metrics"}
    assert capabilities_of(oracle) == offered
    check_capabilities(oracle, ["group_validation", "mixture_rounds"], seeds=(0,))
    oracle.reset([0])
    before = oracle.evaluate_groups()
    oracle.train_on_mixture([1.0] + [0.0] * (before.shape[1] - 1), 3, learning_rate=1e-2)
    after = oracle.evaluate_groups()
    assert before.shape == after.shape == (1, len(oracle.task_names))
    assert after[0, 0] < before[0, 0]


def test_resume_continues_mixture_rounds_where_they_stopped():
    """A checkpoint taken between two mixture rounds resumes the second round's draws, so
    the resumed policy equals the uninterrupted one."""
    mixture = np.full((1, K), 1.0 / K)
    straight = build_oracle()
    straight.reset([0])
    straight.train_on_mixture(mixture, 2, learning_rate=1e-2)
    checkpoint = copy.deepcopy(straight.state_dict())  # as written to disk
    straight.train_on_mixture(mixture, 2, learning_rate=1e-2)

    resumed = build_oracle()
    resumed.reset([0])
    resumed.load_state_dict(checkpoint)
    resumed.train_on_mixture(mixture, 2, learning_rate=1e-2)
    assert_same_parameters(straight.policy.state_dict(), resumed.policy.state_dict())


# ------------------------------------------------------------------- faster step
def recording_gradients(oracle: DPOOracle) -> list[dict[str, torch.Tensor]]:
    """Make the oracle's optimizer record the (clipped) gradients it steps on."""
    seen: list[dict[str, torch.Tensor]] = []
    step = oracle.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append({k: p.grad.clone() for k, p in unwrap(oracle).named_parameters()})
        return step(*args, **kwargs)

    oracle.optimizer.step = recording_step
    return seen


@pytest.mark.parametrize("micro", [2, 3])
def test_accumulation_by_task_matches_one_batch(micro):
    """One gradient per task, combined with the task weights: the gradient of the whole batch
    (to float rounding), without the extra forward pass of 'recompute'. (Gradients are
    compared: AdamW's first step, g/(|g| + ε), magnifies the rounding of tiny components.)"""
    ids = np.array([[0, 0, 1, 1, 2, 2, 0, 1]])
    weights = np.array([[{0: 0.3, 1: 0.5, 2: 0.2}[t] for t in ids[0]]]) / 3  # task-constant
    results = {}
    for mode, size in (("whole", None), ("recompute", micro), ("by_task", micro)):
        accumulate = "by_task" if mode == "by_task" else "recompute"
        oracle = build_oracle(micro_batch_size=size, accumulate=accumulate)
        oracle.reset([0])
        grads = recording_gradients(oracle)
        batch = oracle.sample(ids)
        losses = oracle.losses(batch)
        oracle.step(batch, weights, 1e-2)
        results[mode] = (losses, grads[0])
    whole_losses, whole = results["whole"]
    assert max(g.abs().max().item() for g in whole.values()) > 1e-3
    for mode in ("recompute", "by_task"):
        losses, grads = results[mode]
        np.testing.assert_allclose(losses, whole_losses, rtol=0, atol=1e-6)
        for name in whole:
            torch.testing.assert_close(grads[name], whole[name], rtol=1e-5, atol=1e-8, msg=name)


def test_accumulation_by_task_falls_back_when_weights_vary_within_a_task():
    ids = np.array([[0, 0, 1, 1]])
    weights = np.array([[0.1, 0.4, 0.2, 0.3]])  # not task-constant
    seen = []
    for accumulate in ("recompute", "by_task"):
        oracle = build_oracle(micro_batch_size=2, accumulate=accumulate)
        oracle.reset([0])
        grads = recording_gradients(oracle)
        batch = oracle.sample(ids)
        oracle.losses(batch)
        oracle.step(batch, weights, 1e-2)
        seen.append(grads[0])
    for name in seen[0]:
        torch.testing.assert_close(seen[1][name], seen[0][name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("adamw", ["foreach", "loop"])
def test_adamw_implementations_take_the_same_step(adamw):
    out = []
    for impl in ("fused", adamw):
        oracle = build_oracle(adamw=impl)
        oracle.reset([0])
        for _ in range(2):
            batch = oracle.sample(every_task(2))
            oracle.losses(batch)
            oracle.step(batch, np.full((1, 2 * K), 0.1), 1e-2)
        out.append(parameters(oracle))
    for name in out[0]:
        torch.testing.assert_close(out[1][name], out[0][name], rtol=0, atol=1e-6, msg=name)


def test_metrics_are_made_when_read_and_match_dpo_metrics(oracle):
    oracle.reset([0])
    batch = oracle.sample(every_task(2))
    oracle.losses(batch)
    first = oracle.last_metrics
    assert set(first) >= {"loss", "rewards/accuracies", "rewards/margins", "logps/chosen"}
    assert oracle.last_metrics is first  # made once
    oracle.step(batch, np.full((1, 2 * K), 0.1), 1e-2)
    oracle.losses(oracle.sample(every_task(2)))
    assert oracle.last_metrics["loss"] != first["loss"]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="accumulate="):
        build_oracle(accumulate="sometimes")
    with pytest.raises(ValueError, match="adamw="):
        build_oracle(adamw="sgd")
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        build_oracle(micro_batch_size=0)


# --------------------------------------------------------------- host round-trips
#: the Tensor methods that copy a tensor to the host or read it there (on a GPU each one
#: waits for the device); .numpy() is left out: it refuses device tensors outright
_READS = ("item", "tolist", "cpu", "__bool__")


@pytest.mark.parametrize(
    ("accumulate", "micro_batch_size"),
    [("recompute", None), ("recompute", 2), ("by_task", 2)],
)
@pytest.mark.parametrize("mixer", [mixers.ama_s(0.5, 0.1), mixers.ama_r(0.5)], ids=["s", "r"])
def test_a_training_step_reads_the_device_once(monkeypatch, mixer, accumulate, micro_batch_size):
    """One optimizer step copies the device to the host once: the per-pair losses the mixer
    scores, with the finiteness flags and the metric sums in the same copy (a non-finite
    gradient norm is skipped on the device and reported with the next copy)."""
    from amasim.mixing import Mixing

    oracle = build_oracle(micro_batch_size=micro_batch_size, accumulate=accumulate)
    oracle.reset([0])
    state = mixer.init(3, seed=[0])
    mixing = Mixing(mixer, oracle, seeds=[0], batch_size=4, apply=mixer.apply, score=mixer.score)
    reads = []
    for name in _READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _real=real, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for t in range(3):
        state = mixing.step(state, t, 1e-3).state
    monkeypatch.undo()
    assert reads == ["cpu"] * 3
    assert set(oracle.last_metrics) >= {"loss", "rewards/accuracies"}  # came in that copy


@pytest.mark.cuda
def test_a_training_step_on_a_gpu_syncs_once():
    """On CUDA: ``torch.cuda.set_sync_debug_mode`` warns at each synchronising call; one
    step makes exactly one (the copy of the losses)."""
    import warnings

    from amasim.mixing import Mixing
    from llm.precision import Precision

    oracle = build_oracle(precision=Precision(torch.device("cuda")))
    oracle.reset([0])
    mixer = mixers.ama_s(0.5, 0.1)
    state = mixer.init(3, seed=[0])
    mixing = Mixing(mixer, oracle, seeds=[0], batch_size=4, apply="resample", score="clipped")
    state = mixing.step(state, 0, 1e-3).state  # warm-up: allocations, first kernels
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mixing.step(state, 1, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]


@pytest.mark.parametrize("adamw", ["fused", "foreach"])
def test_a_non_finite_gradient_norm_changes_no_parameter_and_is_reported(adamw):
    """A step whose gradient norm is not finite (here: an infinite loss weight) moves no
    parameter: fused AdamW skips it on the device and the next copy to the host — the next
    step's losses, or a checkpoint — raises; the other implementations raise at once."""
    oracle = build_oracle(adamw=adamw)
    oracle.reset([0])
    before = parameters(oracle)
    batch = oracle.sample(np.zeros((1, 4), dtype=np.int64))
    oracle.losses(batch)
    weights = np.array([[np.inf, 0.25, 0.25, 0.25]])
    if adamw == "fused":
        oracle.step(batch, weights, 1e-2)  # no sync: the skip waits on the device
        with pytest.raises(FloatingPointError, match="previous step's gradient norm"):
            oracle.losses(oracle.sample(np.zeros((1, 4), dtype=np.int64)))
        oracle.step(batch, weights, 1e-2)
        with pytest.raises(FloatingPointError, match="gradient norm was not finite"):
            oracle.state_dict()  # a checkpoint never holds a skipped step
    else:
        with pytest.raises(FloatingPointError, match="non-finite gradient norm"):
            oracle.step(batch, weights, 1e-2)
    for name, value in parameters(oracle).items():
        assert torch.equal(value, before[name]), name
