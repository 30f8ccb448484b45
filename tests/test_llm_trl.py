"""llm.trl: AutoMixAlign inside TRL's DPOTrainer, on tiny offline models.

The model is a 1-layer GPT-2 and a BPE tokenizer made here (llm.trl.tiny), the tasks a
few dozen generated pairs each; nothing is downloaded.  The 2-process test runs
tests/trl_helpers.py under torchrun on a gloo group.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl_helpers import dpo_args, parameters, quiet, task_data

import llm.trl
from amasim import mixers
from amasim.capabilities import MissingCapabilityError
from llm.trl import (
    AMADPOTrainer,
    SpecialistLosses,
    TaskMixtureSampler,
    cache_specialist_losses,
    concatenate_tasks,
    pair_losses,
)
from llm.trl.checkpoint import MIXTURE_FILE, flatten, unflatten
from llm.trl.losses import probe
from llm.trl.tiny import dataset_texts, write_tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, tokenizer, {task: Dataset}) shared by the module."""
    from transformers import AutoTokenizer

    quiet()
    data = task_data()
    folder = tmp_path_factory.mktemp("trl") / "base"
    path = write_tiny_model(folder, dataset_texts(data), seed=0)
    return path, AutoTokenizer.from_pretrained(path), data


def zeros(data):
    return {name: np.zeros(len(ds)) for name, ds in data.items()}


def trainer_for(tiny, tmp_path, mixer, *, data=None, spec="zeros", **overrides):
    path, tokenizer, all_data = tiny
    data = all_data if data is None else data
    return AMADPOTrainer(
        path,
        args=dpo_args(tmp_path / "run", **overrides),
        train_dataset=concatenate_tasks(data),
        processing_class=tokenizer,
        mixer=mixer,
        specialist_losses=zeros(data) if spec == "zeros" else spec,
    )


def logged_losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------ per-pair losses
@pytest.fixture(scope="module")
def plain_trainer(tiny, tmp_path_factory):
    """TRL's DPOTrainer with its policy moved off the reference (losses differ per pair)."""
    from trl import DPOTrainer

    path, tokenizer, data = tiny
    args = dpo_args(tmp_path_factory.mktemp("plain"))
    trainer = DPOTrainer(path, args=args, train_dataset=data["format"], processing_class=tokenizer)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return trainer


@pytest.mark.parametrize(
    "loss_type",
    [
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "apo_zero",
        "apo_down",
        "discopop",
        "sigmoid_norm",
        ["sigmoid", "sft"],
        ["sigmoid", "ipo"],
    ],
)
def test_pair_losses_rebuild_trls_loss(plain_trainer, loss_type):
    trainer = plain_trainer
    # DPOTrainer reads these three attributes of its config in every loss computation
    trainer.loss_types = [loss_type] if isinstance(loss_type, str) else loss_type
    trainer.loss_weights = (
        [0.7, 0.3] if loss_type == ["sigmoid", "ipo"] else [1.0] * len(trainer.loss_types)
    )
    trainer.label_smoothing = 1e-3 if loss_type == "exo_pair" else 0.0
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    plain = trainer.compute_loss(trainer.model, batch)
    got = pair_losses(trainer, trainer.model, batch)
    assert torch.equal(got.loss, plain)  # the probe changes nothing TRL computes
    assert got.per_pair.shape == (4,) and got.per_pair.requires_grad
    if "sft" in loss_type:
        assert float(got.batch_term) > 0  # the token-mean SFT term stays a batch term
    else:
        assert float(got.batch_term) == 0.0
    torch.testing.assert_close(got.per_pair.mean() + got.batch_term, plain, rtol=1e-6, atol=1e-7)
    # each entry is that pair's own loss: the same pair alone in a batch (up to padding)
    alone = [
        float(pair_losses(trainer, trainer.model, trainer.data_collator([r])).per_pair[0])
        for r in rows
    ]
    np.testing.assert_allclose(got.per_pair.detach().numpy(), alone, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_probe_computes_what_the_float_beta_computes(dtype):
    import torch.nn.functional as F

    x = torch.randn(64, generator=torch.Generator().manual_seed(0)).to(dtype)
    beta, b = 0.1, probe(0.1)
    cases = [
        (beta * x, b * x),
        (x * beta, x * b),
        (F.logsigmoid(beta * x), F.logsigmoid(b * x)),
        ((x - 1 / (2 * beta)) ** 2, (x - 1 / (2 * b)) ** 2),
        (x - 0.5 / beta, x - 0.5 / b),
    ]
    for plain, probed in cases:
        assert probed.dtype == plain.dtype and torch.equal(probed.as_subclass(torch.Tensor), plain)


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired", "sft"])
def test_loss_types_without_a_per_pair_loss_are_refused(tiny, tmp_path, loss_type):
    with pytest.raises(ValueError, match=f"loss_type.*{loss_type}"):
        trainer_for(tiny, tmp_path, mixers.ama_r(1.0), loss_type=loss_type)


# ------------------------------------------------------------------------ sampler
@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    batch=st.integers(1, 4),
    accumulation=st.integers(1, 3),
    world=st.integers(1, 3),
    step=st.integers(0, 50),
    seed=st.integers(0, 2**31),
    raw=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_sampler_draws_rows_of_the_drawn_tasks_and_shards_them(
    sizes, batch, accumulation, world, step, seed, raw
):
    ids = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(seed).shuffle(ids)  # rows of a task need not be contiguous
    k = len(sizes)
    weights = np.asarray(raw[:k]) + 1e-3
    make = lambda rank: TaskMixtureSampler(  # noqa: E731
        ids,
        k,
        batch_size=batch,
        apply="resample",
        seed=seed,
        accumulation=accumulation,
        world_size=world,
        rank=rank,
        weights=weights,
    )
    samplers = [make(r) for r in range(world)]
    rows, tasks = samplers[0].draw(step)
    n = world * accumulation * batch
    assert rows.shape == tasks.shape == (n,)
    assert np.array_equal(ids[rows], tasks)  # every row belongs to its slot's task
    for s in samplers[1:]:  # every process computes the same global batch
        r2, t2 = s.draw(step)
        assert np.array_equal(rows, r2) and np.array_equal(tasks, t2)
    shares = np.stack([s.local(rows).reshape(accumulation, batch) for s in samplers], axis=1)
    assert np.array_equal(shares.reshape(-1), rows)  # the shares tile the batch exactly
    if k > 1:  # a zero-weight task is never drawn
        samplers[0].weights = np.concatenate([[0.0], weights[1:] / weights[1:].sum()])
        assert not (samplers[0].draw(step)[1] == 0).any()


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), per_task=st.integers(1, 3))
def test_reweighting_sampler_takes_every_task_equally(sizes, per_task):
    k = len(sizes)
    ids = np.repeat(np.arange(k), sizes)
    s = TaskMixtureSampler(ids, k, batch_size=k * per_task, apply="reweight", seed=0)
    rows, tasks = s.draw(3)
    assert np.array_equal(np.bincount(tasks, minlength=k), np.full(k, per_task))
    assert np.array_equal(ids[rows], tasks)


def test_sampler_is_a_pure_function_of_seed_step_and_weights():
    ids = np.array([0, 0, 1, 1, 1, 2])
    a = TaskMixtureSampler(ids, 3, batch_size=4, apply="resample", seed=7)
    b = TaskMixtureSampler(ids, 3, batch_size=4, apply="resample", seed=7)
    c = TaskMixtureSampler(ids, 3, batch_size=4, apply="resample", seed=8)
    assert np.array_equal(a.draw(5)[0], b.draw(5)[0])
    assert any(not np.array_equal(a.draw(t)[0], c.draw(t)[0]) for t in range(5))
    a.advance([0.2, 0.3, 0.5])
    b.load_state_dict(a.state_dict())  # the position is the state
    assert b.step == 1 and np.array_equal(list(iter_step(a)), list(iter_step(b)))
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(a.state_dict())


def iter_step(sampler):
    it = iter(sampler)
    return [next(it) for _ in range(sampler.steps_per_epoch * sampler.batch_size)][-4:]


def test_sampler_refuses_to_draw_ahead_of_the_mixer():
    s = TaskMixtureSampler([0, 1], 2, batch_size=1, apply="resample", seed=0)
    it = iter(s)
    next(it)
    with pytest.raises(RuntimeError, match="fetches ahead"):
        next(it)


def test_sampler_bad_input_is_named():
    with pytest.raises(ValueError, match="task '1' has no rows"):
        TaskMixtureSampler([0, 0], 2, batch_size=2, apply="resample", seed=0)
    with pytest.raises(ValueError, match="multiple of the 3 tasks"):
        TaskMixtureSampler([0, 1, 2], 3, batch_size=2, apply="reweight", seed=0)
    with pytest.raises(ValueError, match="apply"):
        TaskMixtureSampler([0, 1], 2, batch_size=2, apply="both", seed=0)


# ---------------------------------------------------------------- the trainer
@pytest.mark.parametrize("accumulation", [1, 2])
def test_stratified_on_one_task_trains_exactly_like_plain_dpotrainer(tiny, tmp_path, accumulation):
    from trl import DPOTrainer

    path, tokenizer, data = tiny
    one = {"format": data["format"]}
    overrides = {"gradient_accumulation_steps": accumulation, "per_device_train_batch_size": 4}
    ama = trainer_for(tiny, tmp_path / "ama", mixers.stratified(), data=one, spec=None, **overrides)
    order = np.concatenate([ama.task_sampler.draw(t)[0] for t in range(3)]).tolist()

    class SameRows(DPOTrainer):  # plain TRL, fed the rows the sampler draws
        def _get_train_sampler(self, train_dataset=None):
            return order

    plain = SameRows(
        path,
        args=dpo_args(tmp_path / "plain", **overrides),
        train_dataset=one["format"],
        processing_class=tokenizer,
    )
    ama.train()
    plain.train()
    assert logged_losses(ama) == logged_losses(plain)
    ours, theirs = parameters(ama), parameters(plain)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    assert ama.mixture_log["weights"].tolist() == [[1.0]] * 3


def replay(mixer, log, k):
    """The weights amasim's mixer gives when fed the logged per-task scores and counts."""
    state = mixer.init(k, seed=[0])
    out = []
    for scores, counts in zip(log["scores"], log["counts"], strict=True):
        given = counts[None] if mixer.apply == "resample" else None
        _, state = mixer.update(state, scores[None], given)
        out.append(mixer.weights(state)[0])
    return np.array(out)


@pytest.mark.parametrize(
    "mixer, accumulation, order",
    [
        (mixers.ama_r(3.0), 1, "updated"),
        (mixers.ama_r(3.0), 2, "updated"),
        (mixers.ama_r(3.0), 2, "played"),
        (mixers.ama_s(3.0, 0.2), 2, "updated"),
    ],
    ids=["ama_r", "ama_r-accumulate", "ama_r-played", "ama_s"],
)
def test_weights_follow_amasim_mixer_on_the_logged_scores(
    tiny, tmp_path, mixer, accumulation, order
):
    path, tokenizer, data = tiny
    spec = {name: np.full(len(ds), 0.69) for name, ds in data.items()}  # clipping bites
    trainer = AMADPOTrainer(
        path,
        args=dpo_args(tmp_path, max_steps=4, gradient_accumulation_steps=accumulation),
        train_dataset=concatenate_tasks(data),
        processing_class=tokenizer,
        mixer=mixer,
        specialist_losses=spec,
        reweight_order=order,
    )
    trainer.train()
    log, k = trainer.mixture_log, len(data)
    np.testing.assert_array_equal(log["step"], [1, 2, 3, 4])
    np.testing.assert_array_equal(log["weights"], replay(mixer, log, k))
    assert log["weights"].std() > 0  # the mixer moved
    n = accumulation * 3  # pairs per step
    assert (log["counts"].sum(axis=1) == n).all()
    # The logs carry the same numbers (logging_steps=1), for TensorBoard and W&B.
    rows = [h for h in trainer.state.log_history if "mixer/weight/safety" in h]
    got = np.array([[h[f"mixer/weight/{t}"] for t in trainer.task_names] for h in rows])
    np.testing.assert_allclose(got, log["weights"], rtol=1e-12)
    # The reported loss is the mixed objective; for reweighting, its weights say the order.
    before = np.vstack([mixer.weights(mixer.init(k, seed=[0])), log["weights"][:-1]])
    if mixer.apply == "reweight":
        alpha = log["weights"] if order == "updated" else before
        expected = (alpha * log["scores"]).sum(axis=1)
    else:  # the batch was drawn from the weights before the update, its pairs count 1/B
        expected = (log["counts"] * log["scores"]).sum(axis=1) / n
        draws = TaskMixtureSampler(
            trainer.train_dataset["ama_task_id"],
            k,
            batch_size=3,
            accumulation=accumulation,
            apply="resample",
            seed=0,
        )
        for t, w in enumerate(before):  # the counts are those of batches drawn from α_t
            draws.weights = w
            assert np.array_equal(np.bincount(draws.draw(t)[1], minlength=k), log["counts"][t])
    np.testing.assert_allclose(logged_losses(trainer), expected, rtol=1e-5, atol=1e-6)


def test_resume_continues_the_same_weights_and_draws(tiny, tmp_path):
    mixer = mixers.ama_s(3.0, 0.2)
    common = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    first = trainer_for(tiny, tmp_path / "a", mixer, **common)
    first.train()
    checkpoint = tmp_path / "a" / "run" / "checkpoint-2"
    assert (checkpoint / MIXTURE_FILE).exists()
    second = trainer_for(tiny, tmp_path / "b", mixer, **common)
    second.train(resume_from_checkpoint=str(checkpoint))
    a, b = first.mixture_log, second.mixture_log
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert second.task_sampler.step == first.task_sampler.step == 4
    pa, pb = parameters(first), parameters(second)
    for name in pa:  # the same rows were trained on after the resume
        torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=1e-7)
    other = trainer_for(tiny, tmp_path / "c", mixers.ama_r(1.0), **common)
    with pytest.raises(ValueError, match="mixer="):
        other.load_mixture(checkpoint)


def test_two_processes_hold_the_same_weights(tiny, tmp_path):
    path, _, _ = tiny
    helper = Path(__file__).with_name("trl_helpers.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(helper),
        str(tmp_path),
        path,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, per_step in (("ama_r", 2 * 2 * 3), ("ama_s", 2 * 1 * 3)):
        a, b = ranks[0][name], ranks[1][name]
        assert (a["rank"], b["rank"], a["world"]) == (0, 1, 2)
        assert a["weights"] == b["weights"] and a["scores"] == b["scores"]
        assert a["params"] == b["params"]  # DDP kept the models in step
        counts = np.array(a["counts"])
        assert (counts.sum(axis=1) == per_step).all()  # the counts cover both processes
        if name == "ama_r":
            assert (counts == per_step // 3).all()  # every task equally often
        mixer = mixers.ama_r(2.0) if name == "ama_r" else mixers.ama_s(2.0, 0.2)
        log = {k: np.array(a[k]) for k in ("scores", "counts")}
        np.testing.assert_allclose(a["weights"], replay(mixer, log, 3), rtol=1e-12)


# ------------------------------------------------------------ refusals, named errors
def test_missing_or_unknown_task_column_is_named(tiny, tmp_path):
    path, tokenizer, data = tiny
    args = dpo_args(tmp_path)
    with pytest.raises(ValueError, match="no task column 'domain'"):
        AMADPOTrainer(
            path,
            args=args,
            train_dataset=concatenate_tasks(data),
            processing_class=tokenizer,
            mixer=mixers.group_dro(1.0),
            task_column="domain",
        )
    partial = {
        "arithmetic": np.zeros(len(data["arithmetic"])),
        "format": np.zeros(len(data["format"])),
    }
    with pytest.raises(ValueError, match="names task 'safety'"):
        AMADPOTrainer(
            path,
            args=args,
            train_dataset=concatenate_tasks(data),
            processing_class=tokenizer,
            mixer=mixers.ama_r(1.0),
            specialist_losses=partial,
        )
    short = {name: np.zeros(len(ds) - 1) for name, ds in data.items()}
    with pytest.raises(ValueError, match="specialist losses"):
        AMADPOTrainer(
            path,
            args=args,
            train_dataset=concatenate_tasks(data),
            processing_class=tokenizer,
            mixer=mixers.ama_r(1.0),
            specialist_losses=short,
        )
    with pytest.raises(ValueError, match="specialist_losses="):
        AMADPOTrainer(
            path,
            args=args,
            train_dataset=concatenate_tasks(data),
            processing_class=tokenizer,
            mixer=mixers.ama_r(1.0),
        )


def test_mixer_needing_a_capability_is_refused_by_name(tiny, tmp_path):
    needy = mixers.ama_r(1.0)._replace(requires=("task_gradients",), name="doge")
    with pytest.raises(MissingCapabilityError, match=r"mixer 'doge' requires .* 'task_gradients'"):
        trainer_for(tiny, tmp_path, needy)


def test_settings_that_break_the_mixture_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        trainer_for(tiny, tmp_path, mixers.ama_r(1.0), dataloader_num_workers=2)
    with pytest.raises(ValueError, match="reweight_order"):
        AMADPOTrainer(
            tiny[0],
            args=dpo_args(tmp_path),
            train_dataset=concatenate_tasks(tiny[2]),
            processing_class=tiny[1],
            mixer=mixers.group_dro(1.0),
            reweight_order="later",
        )


# ------------------------------------------------------------- specialist losses
def test_specialist_equal_to_the_base_has_loss_log_2(tiny, tmp_path):
    path, tokenizer, data = tiny
    got = cache_specialist_losses(
        path,
        data,
        {name: path for name in data},
        args=dpo_args(tmp_path),
        cache_dir=tmp_path / "cache",
        processing_class=tokenizer,
    )
    assert isinstance(got, SpecialistLosses) and list(got) == list(data)
    for name, ds in data.items():
        assert got[name].shape == (len(ds),)
        np.testing.assert_allclose(got[name], np.log(2), rtol=1e-7)  # policy = reference
    # The trainer computes its losses as the cache does: at step 0 the policy is the base,
    # so its excess over a specialist equal to the base is exactly 0 on every task.
    mixer = mixers.ama_r(1.0, score="excess")
    trainer = trainer_for(tiny, tmp_path / "run", mixer, spec=got, max_steps=1)
    trainer.train()
    assert trainer.mixture_log["scores"].tolist() == [[0.0, 0.0, 0.0]]


def test_a_run_shows_no_deprecation_warning(tiny, tmp_path):
    """A training run shows every warning but those importing llm.trl filters (pytest's and
    quiet()'s filters set aside): no FutureWarning/DeprecationWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        importlib.reload(llm.trl)  # what importing llm.trl sets, as in a user's script
        trainer_for(tiny, tmp_path, mixers.ama_r(1.0), max_steps=2).train()
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, FutureWarning | DeprecationWarning)
    ]
    assert not deprecations, "\n".join(deprecations)


def test_specialist_cache_hit_and_invalidation(tiny, tmp_path):
    path, tokenizer, data = tiny
    other = write_tiny_model(tmp_path / "other", dataset_texts(data), seed=1)
    specialists = {"arithmetic": other, "safety": path, "format": other}
    cache = tmp_path / "cache"

    def run(args=None, datasets=data, specs=specialists):
        return cache_specialist_losses(
            path,
            datasets,
            specs,
            args=args or dpo_args(tmp_path),
            cache_dir=cache,
            processing_class=tokenizer,
        )

    first = run()
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 3
    assert not np.allclose(first["arithmetic"], np.log(2))  # a real specialist differs
    for f in files:  # mark the entries: a hit returns the marks
        with np.load(f) as entry:
            marked = np.full_like(entry["losses"], 123.0)
        np.savez(f, losses=marked)
    hit = run()
    assert all((hit[name] == 123.0).all() for name in data)
    # Each part of the key invalidates: the loss settings, one row, the specialist.
    assert not (run(args=dpo_args(tmp_path, beta=0.2))["format"] == 123.0).any()
    edited = dict(
        data,
        format=data["format"].map(
            lambda r, i: {"chosen": r["chosen"] + ("!" if i == 0 else "")}, with_indices=True
        ),
    )
    assert not (run(datasets=edited)["format"] == 123.0).any()
    assert (run(datasets=edited)["safety"] == 123.0).all()
    swapped = dict(specialists, safety=other)
    assert not (run(specs=swapped)["safety"] == 123.0).any()
    assert len(list(cache.glob("*.npz"))) == 3 + 3 + 1 + 1  # new β: all tasks; one row; one model


def test_specialists_trained_with_a_dpoconfig_are_cached(tiny, tmp_path, monkeypatch):
    from trl import DPOTrainer

    path, tokenizer, data = tiny
    calls = []
    real = DPOTrainer.train

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "train", counted)
    two = {name: data[name] for name in ("safety", "format")}
    training = dpo_args(tmp_path / "specialists", max_steps=2)
    kwargs = {
        "args": dpo_args(tmp_path),
        "cache_dir": tmp_path / "cache",
        "processing_class": tokenizer,
    }
    first = cache_specialist_losses(path, two, training, **kwargs)
    assert len(calls) == 2  # one TRL run per task
    assert not np.allclose(first["format"], np.log(2))  # trained away from the base
    again = cache_specialist_losses(path, two, training, **kwargs)
    assert len(calls) == 2  # a hit skips the training
    for name in two:
        np.testing.assert_array_equal(first[name], again[name])


def test_specialist_losses_of_other_settings_are_refused(tiny, tmp_path):
    path, tokenizer, data = tiny
    spec = cache_specialist_losses(
        path,
        data,
        {name: path for name in data},
        args=dpo_args(tmp_path, beta=0.3),
        cache_dir=tmp_path / "cache",
        processing_class=tokenizer,
    )
    with pytest.raises(ValueError, match="beta"):
        trainer_for(tiny, tmp_path, mixers.ama_r(1.0), spec=spec)


# ----------------------------------------------------------------- checkpoint file
@pytest.mark.parametrize(
    "mixer",
    [mixers.ama_s(0.5, 0.1), mixers.doremi(), mixers.odm(), mixers.averaged(mixers.ama_r(0.2))],
    ids=lambda m: m.name,
)
def test_mixer_state_round_trips_through_its_leaves(mixer):
    state = mixer.init(3, seed=[0])
    for t in range(3):
        _, state = mixer.update(state, np.array([[0.3, 0.1, 0.2 * t]]), np.array([[2, 1, t]]))
    back = unflatten(mixer.init(3, seed=[0]), [np.asarray(x) for x in flatten(state)])
    assert type(back) is type(state)
    for a, b in zip(flatten(state), flatten(back), strict=True):
        assert type(a) is type(b) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        unflatten(mixer.init(2, seed=[0]), [np.asarray(x) for x in flatten(state)])


# ------------------------------------------------------------------ one apply rule
class _Recording:
    """A three-task oracle for :class:`amasim.driver.Mixing` that keeps what the driver hands
    its step: the batch's task ids and the per-example loss weights."""

    task_names = ("arithmetic", "safety", "format")
    max_replicates = None

    def __init__(self, losses: float) -> None:
        self.value, self.seen = losses, []

    def sample(self, task_ids):
        from amasim.oracle import Batch

        return Batch(task_ids, np.zeros(task_ids.shape), np.zeros(task_ids.shape))

    def losses(self, batch):
        return np.full(batch.task_ids.shape, self.value)

    def step(self, batch, loss_weights, learning_rate):
        self.seen.append((batch.task_ids.copy(), loss_weights.copy()))


@pytest.mark.parametrize("method", ["ama-r", "ama-s", "gr-dpo"])
def test_the_trainer_applies_the_drivers_coefficients_on_the_same_draws(tiny, tmp_path, method):
    """One apply rule (amasim.apply): for reweight (AMA-R), resample (AMA-S) and importance
    (GR-DPO), the per-example coefficients AMADPOTrainer puts on a batch equal the loss
    weights the driver's Mixing gives the same batch, at the same mixer state; and the
    trainer's sampler draws the driver's tasks (the same stream; reweighting interleaves
    the same multiset)."""
    from amasim.driver import Mixing
    from amasim.registry import build

    path, tokenizer, data = tiny
    sizes = tuple(len(ds) for ds in data.values())
    mixer = build(method, steps=4, sizes=sizes)
    spec = {name: np.full(len(ds), 0.5) for name, ds in data.items()}  # L = 1 > ℓ: clipping on
    trainer = AMADPOTrainer(
        path,
        args=dpo_args(tmp_path, per_device_train_batch_size=6),
        train_dataset=concatenate_tasks(data),
        processing_class=tokenizer,
        mixer=mixer,
        specialist_losses=spec,
    )
    oracle, state = _Recording(1.0), mixer.init(3, seed=[0])
    per_task = 2 if mixer.apply == "reweight" else 6  # B of the driver: per task, or in all
    mixing = Mixing(
        mixer, oracle, seeds=[0], batch_size=per_task, apply=mixer.apply, score=mixer.score
    )
    for t in range(3):
        alpha_before = mixer.weights(state)
        out = mixing.step(state, t, learning_rate=0.1)
        tasks, weights = oracle.seen[-1]
        trainer.mixer_state, trainer._alpha = out.state, alpha_before[0]
        alpha = mixer.weights(out.state)[0] if mixer.apply != "resample" else alpha_before[0]
        np.testing.assert_allclose(trainer._coefficients(alpha, tasks[0]), weights[0], rtol=1e-12)
        if mixer.apply == "reweight":  # the same tasks, interleaved over the micro-batches
            drawn = trainer.task_sampler.draw(t)[1]
            assert sorted(drawn.tolist()) == sorted(tasks[0].tolist())
        else:  # drawn from α_t (resample) or q (importance): the same stream, the same tasks
            trainer.mixer_state, trainer._alpha = state, alpha_before[0]
            trainer.task_sampler.weights = trainer._drawn_from()
            np.testing.assert_array_equal(trainer.task_sampler.draw(t)[1], tasks[0])
        state = out.state


def test_gr_dpo_trains_inside_the_trainer_from_its_fixed_distribution(tiny, tmp_path):
    """GR-DPO's batches are drawn from its fixed q (the task sizes), not from α, and every
    pair is weighted α/(B q) — as the driver trains it."""
    from amasim.grdpo import sampling_distribution
    from amasim.registry import build

    path, tokenizer, data = tiny
    sizes = tuple(len(ds) for ds in data.values())
    mixer = build("gr-dpo", steps=4, sizes=sizes)
    trainer = AMADPOTrainer(
        path,
        args=dpo_args(tmp_path, max_steps=4, per_device_train_batch_size=6),
        train_dataset=concatenate_tasks(data),
        processing_class=tokenizer,
        mixer=mixer,
        specialist_losses={name: np.full(len(ds), 0.69) for name, ds in data.items()},
    )
    trainer.train()
    q = sampling_distribution(trainer.mixer_state)[0]
    np.testing.assert_allclose(q, np.asarray(sizes) / sum(sizes))
    np.testing.assert_allclose(trainer.task_sampler.weights, q)  # drawn from q, not α
    log = trainer.mixture_log
    assert log["weights"].std() > 0  # α moved
    draws = TaskMixtureSampler(
        trainer.train_dataset["ama_task_id"], 3, batch_size=6, apply="importance", seed=0
    )
    draws.weights = q
    for t in range(4):  # the counts are those of batches drawn from q
        assert np.array_equal(np.bincount(draws.draw(t)[1], minlength=3), log["counts"][t])
