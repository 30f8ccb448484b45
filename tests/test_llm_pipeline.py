"""llm.config, llm.pipeline, llm.cli end to end, and a DPO oracle over a local Hugging Face model.

One tiny pipeline run (1-layer GPT, 20 SFT steps, 5-step specialists, a 24-example budget
per generalist, two seeds) is shared by the module; tests that rerun it work on a copy.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_helpers import (
    MAX_LENGTH,
    SIZES,
    synthetic_pairs,
    tiny_config_dict,
    write_suite_small,
    write_toml,
)

import amasim
from llm.config import Config, load_config
from llm.data import load_manifest
from llm.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY_CPU = REPO / "llm" / "configs" / "tiny-cpu.toml"
METHODS = ("uniform", "stratified", "ama-r", "ama-s")
SEEDS = (0, 1)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------------------- config
def test_tiny_cpu_config_loads():
    cfg = load_config(TINY_CPU)
    assert isinstance(cfg, Config)
    merges = ("merge-linear", "merge-ties", "merge-dare-ties")
    assert cfg.run.seeds == (0, 1, 2) and cfg.run.methods == METHODS + merges
    assert (cfg.model.kind, cfg.model.n_layer, cfg.model.n_embd) == ("gpt", 2, 64)
    assert cfg.run.threads == 2 and cfg.mix.examples == 7200
    assert cfg.dpo.beta == 0.1 and isinstance(cfg.run.peak_flops, float)


def test_config_keys_are_optional_and_ints_widen_to_floats(tmp_path):
    path = write_toml(tmp_path / "c.toml", {"dpo": {"beta": 1}, "sft": {"steps": 7}})
    cfg = load_config(path)
    assert cfg.dpo.beta == 1.0 and isinstance(cfg.dpo.beta, float)
    assert cfg.sft.steps == 7 and cfg.model == Config().model


@pytest.mark.parametrize(
    "sections, names",
    [
        pytest.param({"runn": {"seeds": [0]}}, ["runn"], id="unknown-section"),
        pytest.param({"sft": {"step": 3}}, ["step", "[sft]"], id="unknown-key"),
        pytest.param({"sft": {"steps": "many"}}, ["steps", "[sft]"], id="str-for-int"),
        pytest.param({"sft": {"steps": 2.5}}, ["steps", "[sft]"], id="float-for-int"),
        pytest.param({"run": {"tensorboard": 1}}, ["tensorboard", "[run]"], id="int-for-bool"),
        pytest.param({"run": {"threads": True}}, ["threads", "[run]"], id="bool-for-int"),
        pytest.param({"dpo": {"beta": True}}, ["beta", "[dpo]"], id="bool-for-float"),
        pytest.param({"run": {"seeds": 3}}, ["seeds", "[run]"], id="int-for-list"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path, sections, names):
    path = write_toml(tmp_path / "bad.toml", sections)
    with pytest.raises(ValueError) as info:
        load_config(path)
    for name in [*names, str(path)]:
        assert name in str(info.value)


def test_config_list_elements_are_type_checked(tmp_path):
    path = write_toml(tmp_path / "bad.toml", {"run": {"seeds": ["0"]}})
    with pytest.raises(ValueError, match="seeds"):
        load_config(path)


def test_config_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[run\nseeds = ")
    with pytest.raises(ValueError, match=r"broken\.toml.*not valid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"absent\.toml"):
        load_config(tmp_path / "absent.toml")


# ------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    write_suite_small(folder)
    return folder


def config_file(folder: Path, data: Path, **changes: dict) -> Path:
    """``folder/config.toml`` for the tiny run into ``folder/out``; ``changes`` per section."""
    sections = tiny_config_dict(folder / "out", data / "tasks.toml")
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values}
    return write_toml(folder / "config.toml", sections)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir) -> Path:
    """The folder of one finished tiny run (config.toml, out/)."""
    folder = tmp_path_factory.mktemp("pipeline")
    run_pipeline(load_config(config_file(folder, data_dir)), progress=False)
    return folder


def copy_run(first_run: Path, tmp_path: Path, data_dir: Path, **changes: dict) -> Path:
    """A copy of the finished run whose config points at the copy, with ``changes``."""
    folder = tmp_path / "copy"
    shutil.copytree(first_run / "out", folder / "out")
    config_file(folder, data_dir, **changes)
    return folder


def stamps(folder: Path) -> dict[str, int]:
    """Modification times of the reference model and every cache entry."""
    files = [*(folder / "out" / "models").iterdir(), *(folder / "out" / "cache").iterdir()]
    return {f.name: f.stat().st_mtime_ns for f in files}


def outcome(results: dict) -> dict:
    """What a run found (tasks, sizes, per-run records), without wall-clock timings."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip({k: results[k] for k in ("tasks", "sizes", "runs")})


def test_pipeline_writes_results_for_every_method_and_seed(first_run):
    out = first_run / "out"
    for name in ("results.json", "results.md", "weights.png", "excess.png"):
        assert (out / name).stat().st_size > 0, name
    for plot in ("weights.png", "excess.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == list(SIZES)
    assert results["sizes"] == [n for n, _ in SIZES.values()]
    assert list(results["runs"]) == list(METHODS)
    k, batch, budget = len(SIZES), 4, 24
    for method, runs in results["runs"].items():
        assert [r["seed"] for r in runs] == list(SEEDS)
        for record in runs:
            # An equal example budget: k·B per step when reweighting, B when resampling.
            per_step = k * batch if method == "ama-r" else batch
            assert record["steps"] == budget // per_step
            assert len(record["history"]["step"]) == record["steps"]
            assert np.isfinite(record["worst_task_excess"])
            tasks = record["tasks"]
            assert list(tasks) == list(SIZES)
            assert record["worst_task_excess"] == max(t["clipped"] for t in tasks.values())
            for row in tasks.values():
                assert 0.0 <= row["exact_match"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
                assert row["clipped"] >= 0.0 and np.isfinite(row["loss"])
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)
    for method in METHODS:
        for seed in SEEDS:
            [folder] = (out / "generalists").glob(f"{method}-seed{seed}-*")
            assert (folder / "rank0" / "metrics.jsonl").stat().st_size > 0
    assert len(list((out / "specialists").iterdir())) == len(SIZES)


def test_without_greedy_decoding_the_run_reports_no_exact_match(first_run, data_dir, tmp_path):
    # [eval] generate = 0 turns decoding off: the run still finishes, its records and
    # tables carry no exact match, and the verdicts are on the excess alone.
    folder = copy_run(first_run, tmp_path, data_dir, eval={"generate": 0})
    results = run_pipeline(load_config(folder / "config.toml"), progress=False)
    for runs in results["runs"].values():
        for record in runs:
            assert all("exact_match" not in row for row in record["tasks"].values())
    table = (folder / "out" / "results.md").read_text()
    assert "| ama-r |" in table and "–" in table
    metrics = {v["metric"] for v in results["summary"]["verdicts"]}
    assert metrics and all("exact match" not in m for m in metrics)


def test_rerun_reuses_caches_and_reproduces_results(first_run, data_dir, tmp_path):
    folder = copy_run(first_run, tmp_path, data_dir)
    before = json.loads((folder / "out" / "results.json").read_text())
    cached = stamps(folder)
    again = run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert stamps(folder) == cached  # nothing recomputed, nothing rewritten
    assert outcome(again) == outcome(before)
    # Generalists retrained from scratch (their folders and cached records deleted) on the
    # cached reference and specialists agree too.
    shutil.rmtree(folder / "out" / "generalists")
    for path in (folder / "out" / "cache").glob("generalist-*"):
        path.unlink()
    fresh = run_pipeline(load_config(folder / "config.toml"), progress=False)

    def others(found: dict[str, int]) -> dict[str, int]:
        return {name: t for name, t in found.items() if not name.startswith("generalist-")}

    assert others(stamps(folder)) == others(cached)
    assert {n for n in stamps(folder) if n.startswith("generalist-")} == set(cached) - set(
        others(cached)
    )
    assert outcome(fresh) == outcome(before)


def test_specialists_on_a_cached_reference_equal_those_after_a_fresh_sft(
    first_run, data_dir, tmp_path
):
    """A warm reference cache and a fresh SFT give bitwise the same specialists (the SFT once
    left its last gradients on the model, added to the first specialist's first step)."""
    folder = copy_run(first_run, tmp_path, data_dir)
    out = folder / "out"
    for path in (out / "cache").glob("specialist-*"):
        path.unlink()
    shutil.rmtree(out / "specialists")
    shutil.rmtree(out / "generalists")
    again = run_pipeline(load_config(folder / "config.toml"), progress=False)
    first = sorted((first_run / "out" / "cache").glob("specialist-*.npz"))
    assert [p.name for p in first] == sorted(
        p.name for p in (out / "cache").glob("specialist-*.npz")
    )
    for path in first:
        with np.load(path) as cold, np.load(out / "cache" / path.name) as warm:
            for split in ("train", "eval"):
                np.testing.assert_array_equal(warm[split], cold[split], err_msg=path.name)
    before = json.loads((first_run / "out" / "results.json").read_text())
    assert outcome(again) == outcome(before)


def test_fresh_sft_leaves_no_gradients_and_the_global_rng_alone(data_dir, tmp_path):
    from llm.context import open_run
    from llm.stages.reference import reference
    from llm.stages.tasks import load_tasks

    cfg = load_config(config_file(tmp_path, data_dir, model={"dropout": 0.1}))
    with open_run(cfg, progress=False) as ctx:
        tasks = load_tasks(ctx)
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        fresh = reference(ctx, tasks).model
        assert torch.equal(torch.rand(3), expected)  # the SFT left the global RNG as it was
        loaded = reference(ctx, tasks).model  # the cache hit
    assert all(p.grad is None for p in fresh.parameters())
    for (name, a), b in zip(fresh.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_sft_cache_key_names_how_the_sft_will_train(data_dir, tmp_path):
    """The reference SFT's owner is written before its model is laid out, so its numerics
    must already be those of the sharded model (FSDP's bfloat16 gathers): otherwise a
    reference trained without FSDP would be read by an FSDP-bf16 run in the same folder."""
    from llm.context import open_run
    from llm.stages.reference import initial_model, reference
    from llm.stages.tasks import load_tasks

    made = {}
    for parallel in ("none", "fsdp"):
        run = {"parallel": parallel, "dtype": "bfloat16"}
        cfg = load_config(config_file(tmp_path, data_dir, run=run))
        with open_run(cfg, progress=False) as ctx:
            model = initial_model(ctx)
            assert ctx.trained_numerics(model) == ctx.numerics(ctx.shard(model))
            reference(ctx, load_tasks(ctx))
            made[parallel] = {p.name for p in ctx.folders.models.glob("reference-*.pt")}
    assert len(made["fsdp"] - made["none"]) == 1  # its own reference, not the first run's


def test_merging_the_specialists_is_a_method(first_run, data_dir, tmp_path):
    """merge-* methods merge the cached specialists (base: the reference) and evaluate them."""
    methods = ["merge-linear", "merge-task-arithmetic", "merge-dare-ties"]
    folder = copy_run(first_run, tmp_path, data_dir, run={"methods": methods})
    results = run_pipeline(load_config(folder / "config.toml"), progress=False)
    runs = results["runs"]
    assert list(runs) == methods
    for method in methods:
        assert [r["steps"] for r in runs[method]] == [0] * len(SEEDS)
        assert all(np.isfinite(r["worst_task_excess"]) for r in runs[method])
    # With weights 1/k, the linear merge is the reference plus the mean task vector.
    linear = [r["worst_task_excess"] for r in runs["merge-linear"]]
    arithmetic = [r["worst_task_excess"] for r in runs["merge-task-arithmetic"]]
    assert linear == pytest.approx(arithmetic, rel=1e-5)
    assert len(set(linear)) == 1  # deterministic: every seed the same
    dare = [r["worst_task_excess"] for r in runs["merge-dare-ties"]]
    assert dare[0] != dare[1]  # DARE's drops follow the seed
    assert "| merge-linear |" in (folder / "out" / "results.md").read_text()


def test_changing_beta_recomputes_the_specialists(first_run, data_dir, tmp_path):
    folder = copy_run(first_run, tmp_path, data_dir, dpo={"beta": 0.2})
    cached = stamps(folder)
    specialists = set((folder / "out" / "cache").glob("specialist-*.npz"))
    results = run_pipeline(load_config(folder / "config.toml"), progress=False)
    now = stamps(folder)
    assert {name: now[name] for name in cached} == cached  # the old entries are untouched
    new = set((folder / "out" / "cache").glob("specialist-*.npz")) - specialists
    assert len(new) == len(SIZES)
    for path in new:
        key = json.loads(path.with_suffix(".json").read_text())["key"]
        assert key["[dpo] beta"] == 0.2  # the owner record names the setting
    # The reference (log-probs do not depend on β) is reused: no new reference entry.
    assert {n for n in now if n.startswith("reference-")} == {
        n for n in cached if n.startswith("reference-")
    }
    assert results["config"]["dpo"]["beta"] == 0.2


def test_changing_the_thread_count_recomputes_every_cache(first_run, data_dir, tmp_path):
    """CPU reductions split by thread count: entries written under another count are not
    reused, so a warm run gives the numbers of a cold one at its own thread count."""
    folder = copy_run(first_run, tmp_path, data_dir, run={"threads": 2})
    cached = stamps(folder)
    run_pipeline(load_config(folder / "config.toml"), progress=False)
    now = stamps(folder)
    # every old entry (reference model included) stays as it was; new ones are added
    assert {name: now[name] for name in cached} == cached
    assert len(now) == 2 * len(cached)
    # switching back reuses the first setting's entries: nothing is trained again
    config_file(folder, data_dir)
    run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert stamps(folder) == now


def test_generalists_are_keyed_by_the_specialists_losses(first_run, data_dir, tmp_path):
    folder = copy_run(first_run, tmp_path, data_dir, run={"methods": ["ama-r"], "seeds": [0]})
    generalists = folder / "out" / "generalists"
    before = {p.name for p in generalists.iterdir()}
    path = next((folder / "out" / "cache").glob("specialist-*.npz"))
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    np.savez(path, **{**arrays, "train": arrays["train"] + 0.01})  # other specialist losses
    run_pipeline(load_config(folder / "config.toml"), progress=False)
    added = {p.name for p in generalists.iterdir()} - before
    assert len(added) == 1 and next(iter(added)).startswith("ama-r-seed0-")


def test_changing_an_eval_file_recomputes_the_specialist_eval_losses(first_run, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    write_suite_small(data, {**SIZES, "safety": (SIZES["safety"][0], 8)})  # same train data
    folder = copy_run(first_run, tmp_path, data)
    results = run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert all(np.isfinite(r["worst_task_excess"]) for r in results["runs"]["ama-s"])


def test_changing_another_tasks_data_retrains_the_generalists(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cfg = config_file(tmp_path, data, sft={"steps": 0}, run={"methods": ["ama-s"], "seeds": [0]})
    before = run_pipeline(load_config(cfg), progress=False)
    rows = synthetic_pairs({"format": (SIZES["format"][0], 0)}, seed=1)["format"][0]
    with (data / "format.train.jsonl").open("w") as fh:  # new format data, same size
        for pair in rows:
            row = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
            fh.write(json.dumps(row) + "\n")
    after = run_pipeline(load_config(cfg), progress=False)
    assert after["runs"]["ama-s"][0]["history"] != before["runs"]["ama-s"][0]["history"]


# -------------------------------------------------------------------------------- CLI
def test_cli_synth_writes_the_suite(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(
        [sys.executable, "-m", "llm", "synth", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "tasks.toml").is_file() and "tasks.toml" in done.stdout
    tasks = load_manifest(out / "tasks.toml")
    assert list(tasks) == ["arithmetic", "safety", "format"]
    assert all(files.train.is_file() and files.eval.is_file() for files in tasks.values())


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_cli_run_offline(tmp_path, data_dir, no_network, capsys):
    """The whole pipeline from the command line, from scratch, with networking disabled."""
    from llm.cli import main

    cfg = config_file(tmp_path, data_dir, run={"methods": ["ama-s", "ama-r"]})
    out = tmp_path / "elsewhere"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    assert no_network == []
    assert not (tmp_path / "out").exists()  # --out overrides [run] out
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["ama-s", "ama-r"]
    assert all(len(runs) == len(SEEDS) for runs in results["runs"].values())
    printed = capsys.readouterr().out
    assert "| ama-s |" in printed and str(out / "results.md") in printed


# ---------------------------------------------------------------- local Hugging Face model
TEXTS = [
    "the cat sat on the mat",
    "37+45=82 12-3=9 I refuse.",
    "#harm upper(abc)=ABC reverse(abc)=cba double(ab)=abab",
]


def make_hf_model_dir(path: Path, *, dropout: float = 0.0) -> Path:
    """A tiny random GPT-2 and a byte-level BPE tokenizer trained here, saved to ``path``."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_layer=1,
        n_head=2,
        n_embd=32,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def hf_oracle(path: Path):
    from llm.data import tokenize_pairs
    from llm.hf import HFCausalLM, load_local
    from llm.oracle import DPOOracle, TaskData, dpo_settings, reference_logps

    model, tok = load_local(path)
    assert isinstance(model, HFCausalLM)
    tasks = []
    for i, (name, (train, _)) in enumerate(
        synthetic_pairs({"arithmetic": (6, 0), "safety": (6, 0)}).items()
    ):
        pairs = tokenize_pairs(train, tok, max_length=MAX_LENGTH)
        ref = reference_logps(model, pairs, pad_id=tok.pad_id, average=False)
        tasks.append(TaskData(name, pairs, ref, np.full(len(pairs), 0.6 + 0.01 * i)))
    return DPOOracle(model, tasks, pad_id=tok.pad_id, dpo=dpo_settings(0.1, "sigmoid", 0.0))


def test_dpo_oracle_over_a_local_hf_model(tmp_path, no_network):
    oracle = hf_oracle(make_hf_model_dir(tmp_path / "tiny-gpt2"))
    amasim.check_oracle(oracle)
    oracle.reset([0])
    batch = oracle.sample(np.array([[0, 0, 1, 1]]))
    np.testing.assert_allclose(oracle.losses(batch), np.log(2.0), atol=1e-5)
    before = {k: v.clone() for k, v in oracle.policy.state_dict().items()}
    oracle.step(batch, np.full((1, 4), 0.25), 1e-2)
    after = oracle.policy.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert no_network == []


def test_dpo_oracle_over_an_hf_model_with_dropout(tmp_path):
    oracle = hf_oracle(make_hf_model_dir(tmp_path / "tiny-gpt2-dropout", dropout=0.1))
    amasim.check_oracle(oracle)
    oracle.reset([0])
    losses = oracle.losses(oracle.sample(np.array([[0, 0, 1, 1]])))
    np.testing.assert_allclose(losses, np.log(2.0), atol=1e-5)


def test_merges_retrain_a_specialist_whose_checkpoint_was_deleted(first_run, data_dir, tmp_path):
    """The merges need the specialists' weights: with only their cached losses left, the
    pipeline retrains them (same numbers) instead of failing to load a checkpoint."""
    methods = ["merge-linear"]
    kept_run = copy_run(first_run, tmp_path / "a", data_dir, run={"methods": methods})
    kept = run_pipeline(load_config(kept_run / "config.toml"), progress=False)
    folder = copy_run(first_run, tmp_path / "b", data_dir, run={"methods": methods})
    shutil.rmtree(folder / "out" / "specialists")
    again = run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert outcome(again) == outcome(kept)


def test_doremi_scores_against_one_model_trained_on_the_natural_mixture(
    first_run, data_dir, tmp_path
):
    """DoReMi as published (Xie et al.): the excess over ONE reference trained on the
    default mixture — the uniform generalist of seed 0 — whose per-pair losses the oracle
    serves (the default_reference capability); that model's examples and the proxy's are
    DoReMi's budget.  The specialists variant keeps its own name and needs none of it."""
    folder = copy_run(
        first_run, tmp_path, data_dir, run={"methods": ["doremi", "doremi-specialists"]}
    )
    results = run_pipeline(load_config(folder / "config.toml"), progress=False)
    [entry] = (folder / "out" / "cache").glob("default-reference-*.npz")
    with np.load(entry) as losses:
        assert set(results["tasks"]) <= set(losses.files)  # with the entry's owner record
        assert all(np.isfinite(losses[name]).all() for name in results["tasks"])
    assert list((folder / "out" / "generalists").glob("uniform-seed0-*"))  # the reference run
    examples = results["config"]["mix"]["examples"]
    for run in results["runs"]["doremi"]:
        assert run["extra_examples"] >= 2 * examples  # the proxy's and the reference's
    for run in results["runs"]["doremi-specialists"]:
        assert examples <= run["extra_examples"] < 2 * examples  # the proxy's alone
