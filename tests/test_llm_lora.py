"""LoRA through PEFT (llm.lora): the reference is the base with its adapters off, each
specialist an adapter, merges act on the adapters' updates ΔW = (alpha/r)·B·A (or on the
merged full weights, with the same result), and a LoRA pipeline runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llm_helpers import (
    DPO,
    TOKENIZER,
    char_tasks,
    task_data,
    tiny_config_dict,
    tiny_gpt,
    write_suite_small,
    write_toml,
)

pytest.importorskip("peft")

from amasim import mixers
from llm import lora
from llm.config import ConfigError, load_config
from llm.oracle import DPOOracle, dpo_settings, load_policy, reference_logps
from llm.train import LoopConfig, history, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GPT_TARGETS = ["c_attn", "c_proj", "c_fc"]


def adapted(names=(lora.SPECIALIST, lora.GENERALIST), model=None):
    model = tiny_gpt(0) if model is None else model
    lora.add_adapters(model, list(names), r=4, alpha=8.0, target_modules=GPT_TARGETS, seed=0)
    return model


def randomize(model, adapter: str, seed: int) -> None:
    """Give ``adapter`` a non-zero update (a fresh one has B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".lora_B.{adapter}." in name or f".lora_A.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def logps(model):
    pairs = char_tasks()[0][1]
    return reference_logps(model, pairs, pad_id=TOKENIZER.pad_id, average=False)


def oracle_of(model, adapter):
    return DPOOracle(
        model,
        task_data(tiny_gpt(0)),
        pad_id=TOKENIZER.pad_id,
        dpo=dpo_settings(**DPO),
        adapter=adapter,
    )


def test_lora_reference_is_the_base_with_its_adapters_off():
    base = logps(tiny_gpt(0))
    model = adapted()
    np.testing.assert_array_equal(logps(model), base)  # added: off
    lora.use(model, lora.SPECIALIST)
    np.testing.assert_array_equal(logps(model), base)  # a fresh adapter: B = 0
    oracle = oracle_of(model, lora.SPECIALIST)
    oracle.reset([0])
    for _ in range(3):
        batch = oracle.sample(np.array([[0, 0, 1, 1, 2, 2]]))
        oracle.step(batch, np.full((1, 6), 1 / 6), 5e-2)
    assert not np.array_equal(logps(model), base)  # the specialist moved ...
    with lora.adapters_off(model):
        np.testing.assert_array_equal(logps(model), base)  # ... the reference did not
    assert lora.active(model) == lora.SPECIALIST


def test_lora_oracle_trains_and_saves_the_adapter_alone():
    model = adapted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    oracle = oracle_of(model, lora.SPECIALIST)
    oracle.reset([0])
    batch = oracle.sample(np.array([[0, 1, 2]]))
    oracle.step(batch, np.full((1, 3), 1 / 3), 5e-2)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(f".lora_B.{lora.SPECIALIST}." in k or ".lora_A." in k for k in moved)
    saved = oracle.state_dict()["policy"]
    assert saved and all(f".{lora.SPECIALIST}." in k for k in saved)  # no copy of the base
    assert all(f".{lora.SPECIALIST}." in k for k in oracle._initial)
    oracle.reset([0])  # back to the adapter's initial values
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_lora_specialist_resumes_bitwise(tmp_path):
    def run(folder, stop_at=None):
        oracle = oracle_of(adapted(), lora.SPECIALIST)
        config = LoopConfig(steps=4, batch_size=3, learning_rate=5e-2, checkpoint_every=2)

        def on_step(t):
            if t == stop_at:
                raise KeyboardInterrupt

        try:
            result = train(oracle, mixers.stratified(), config, out_dir=folder, on_step=on_step)
        except KeyboardInterrupt:
            return None
        return history(result), {k: v.clone() for k, v in oracle.policy.state_dict().items()}

    whole = run(tmp_path / "whole")
    assert run(tmp_path / "cut", stop_at=2) is None
    again = run(tmp_path / "cut")
    assert again[0] == whole[0]
    for key, value in whole[1].items():
        assert torch.equal(again[1][key], value), key


def test_lora_generalist_full_fine_tuning_trains_the_base():
    model = adapted()
    randomize(model, lora.GENERALIST, 0)  # an update that must not act, nor move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    oracle = oracle_of(model, None)
    assert lora.active(model) is None
    oracle.reset([0])
    batch = oracle.sample(np.array([[0, 1, 2]]))
    oracle.step(batch, np.full((1, 3), 1 / 3), 5e-2)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and not any(".lora_" in k for k in moved)


@pytest.mark.parametrize("kind", ["gpt", "hf"])
def test_lora_deltas_are_the_adapter_update(kind):
    """ΔW from an adapter's state is PEFT's delta, and W₀ + ΔW with the adapter off computes
    what the adapter computes (GPT-2's Conv1D stores W transposed)."""
    if kind == "gpt":
        model = adapted()
    else:
        pytest.importorskip("transformers")
        from scale_helpers import tiny_hf

        model = tiny_hf(0)
        lora.add_adapters(
            model, [lora.SPECIALIST], r=4, alpha=8.0, target_modules=["all-linear"], seed=0
        )
    randomize(model, lora.SPECIALIST, 1)
    lora.use(model, lora.SPECIALIST)
    with_adapter = logps(model)
    state = model.state_dict()
    deltas = lora.deltas(model, lora.adapter_state(state, lora.SPECIALIST), lora.SPECIALIST)
    layers = dict(model.named_modules())
    for key, delta in deltas.items():
        layer = layers[key.removesuffix(".base_layer.weight")]
        torch.testing.assert_close(delta, layer.get_delta_weight(lora.SPECIALIST))
    merged = {k: v + deltas[k] if k in deltas else v for k, v in state.items()}
    with lora.adapters_off(model):
        model.load_state_dict(merged)
        np.testing.assert_allclose(logps(model), with_adapter, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("method", "options"),
    [("linear", {}), ("task_arithmetic", {}), ("ties", {}), ("dare_ties", {"seed": 3})],
)
def test_lora_merges_on_deltas_equal_merges_on_full_weights(method, options):
    model = adapted()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    states = []
    for seed in (1, 2):
        randomize(model, lora.SPECIALIST, seed)
        states.append(
            {k: v.clone() for k, v in lora.adapter_state(model.state_dict(), "specialist").items()}
        )
    weights = [0.5, 0.5]
    on_deltas = lora.merge_specialists(method, model, reference, states, weights=weights, **options)
    on_weights = lora.merge_specialists(
        method, model, reference, states, weights=weights, space="weights", **options
    )
    assert on_deltas.keys() == reference.keys()
    changed = [k for k in reference if not torch.equal(on_deltas[k], reference[k])]
    assert changed and all(k.endswith(".base_layer.weight") for k in changed)
    for key, value in on_deltas.items():
        torch.testing.assert_close(on_weights[key], value, atol=1e-6, rtol=1e-6)
    if method == "linear":  # the mean of the updates, added to the base
        deltas = [lora.deltas(model, s, lora.SPECIALIST) for s in states]
        for key in deltas[0]:
            want = reference[key] + (deltas[0][key] + deltas[1][key]) / 2
            torch.testing.assert_close(on_deltas[key], want)


def test_load_policy_makes_a_specialists_adapter_active():
    model = adapted()
    randomize(model, lora.SPECIALIST, 4)
    state = {k: v.clone() for k, v in lora.adapter_state(model.state_dict(), "specialist").items()}
    lora.use(model, None)
    model.load_state_dict(
        {**model.state_dict(), **{k: torch.zeros_like(v) for k, v in state.items()}}
    )
    load_policy(model, state)
    assert lora.active(model) == lora.SPECIALIST
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_lora_bad_settings_are_named():
    with pytest.raises(ValueError, match="match no layer"):
        lora.add_adapters(tiny_gpt(0), ["a"], r=2, alpha=4, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.add_adapters(tiny_gpt(0), ["a"], r=0, alpha=4, target_modules=GPT_TARGETS)
    model = adapted()
    with pytest.raises(ValueError, match="already in the model"):
        lora.add_adapters(model, [lora.SPECIALIST], r=2, alpha=4, target_modules=GPT_TARGETS)
    with pytest.raises(ValueError, match="not in the model"):
        lora.use(model, "nobody")
    with pytest.raises(ValueError, match="holds no LoRA adapters"):
        oracle_of(tiny_gpt(0), lora.SPECIALIST)


def test_lora_config_table_is_read_and_checked(tmp_path):
    manifest = write_suite_small(tmp_path / "data")
    sections = tiny_config_dict(tmp_path / "out", manifest)
    path = tmp_path / "config.toml"
    write_toml(path, sections)
    text = path.read_text() + '\n[model.lora]\nr = 4\nalpha = 8.0\ntarget_modules = ["c_attn"]\n'
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.model.lora.r == 4 and cfg.model.lora.target_modules == ("c_attn",)
    path.write_text(text.replace("r = 4", "r = 4\ngeneralist = 'both'\ndropout = 1.5"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "[model] lora.generalist = 'both'" in str(err.value)
    assert "[model] lora.dropout = 1.5" in str(err.value)


def test_lora_pipeline_trains_adapters_and_merges_them(tmp_path):
    from llm.dcp import read_checkpoint
    from llm.pipeline import run_pipeline

    manifest = write_suite_small(tmp_path / "data")
    sections = tiny_config_dict(tmp_path / "out", manifest)
    sections["run"] |= {"seeds": [0], "methods": ["ama-r", "merge-linear", "merge-ties"]}
    sections["eval"] |= {"generate": 1}
    path = write_toml(tmp_path / "config.toml", sections)
    path.write_text(path.read_text() + "\n[model.lora]\nr = 4\nalpha = 8.0\n")
    results = run_pipeline(load_config(path), progress=False)
    for method in ("ama-r", "merge-linear", "merge-ties"):
        record = results["runs"][method][0]
        assert np.isfinite(record["worst_task_excess"]), method
    checkpoints = sorted((tmp_path / "out" / "specialists").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 3
    policy = read_checkpoint(checkpoints[0])["oracle"]["policy"]
    assert policy and all(f".lora_A.{lora.SPECIALIST}." in k or ".lora_B." in k for k in policy)
    # the merges differ from each other and from the reference (the adapters were merged in)
    linear, ties = (results["runs"][m][0]["tasks"] for m in ("merge-linear", "merge-ties"))
    assert linear != ties


def test_changing_lora_alpha_or_the_generalist_mode_retrains(tmp_path):
    # alpha scales every adapter update and `generalist` decides what trains, yet neither
    # shows in a fresh adapter's weights: both must be part of the specialist and generalist
    # keys, or a rerun into the same folder would reuse runs trained another way.
    from llm.pipeline import run_pipeline

    manifest = write_suite_small(tmp_path / "data")
    sections = tiny_config_dict(tmp_path / "out", manifest)
    sections["run"] |= {"seeds": [0], "methods": ["ama-s"]}
    sections["eval"] |= {"generate": 0}
    folders = []
    tables = (
        "r = 4\nalpha = 8.0",
        "r = 4\nalpha = 16.0",
        'r = 4\nalpha = 16.0\ngeneralist = "full"',
    )
    for lora_table in tables:
        path = write_toml(tmp_path / "config.toml", sections)
        path.write_text(path.read_text() + f"\n[model.lora]\n{lora_table}\n")
        run_pipeline(load_config(path), progress=False)
        out = tmp_path / "out"
        folders.append(
            (
                {p.name for p in (out / "specialists").iterdir()},
                {p.name for p in (out / "generalists").iterdir()},
            )
        )
    (spec8, gen8), (spec16, gen16), (_, gen16_full) = folders
    assert len(spec16 - spec8) == 3 and len(gen16 - gen8) == 1  # alpha: everything anew
    assert len(gen16_full - gen16) == 1  # the generalist mode: a new generalist
