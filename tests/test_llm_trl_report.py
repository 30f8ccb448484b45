"""The TRL path on any machine with the pipeline's report (issue 24, items 2 and 3).

The acceptance test runs ``examples/trl_ama.py`` as a user would — a tiny local Llama
with a ChatML chat template, a manifest of conversational tasks (one without an eval file),
no device flags, no GPU visible — and reads ``results.json`` back.  The others pin what that
report rests on: the device choice, one precision policy for every number (a policy scored
against itself and its own specialist has a loss of exactly log 2 and an excess of exactly
0), and the specialists' weights kept, or trained again, for the held-out scoring.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

import torch
from trl_helpers import dpo_args, quiet

from amasim.mixers import ama_r, stratified
from llm.report import read_results
from llm.synth import generate_task
from llm.trl import AMADPOTrainer, cache_specialist_losses, concatenate_tasks, load_task_datasets
from llm.trl.device import device_settings, precision_of
from llm.trl.report import evaluate_and_report
from llm.trl.tiny import task_texts, write_tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[1]
#: (train, eval) pairs per task; format has no eval file (evaluated on its training pairs)
SIZES = {"arithmetic": (8, 4), "safety": (6, 4), "format": (8, 0)}


def conversational_manifest(folder: Path, sizes: dict[str, tuple[int, int]] = SIZES) -> Path:
    """The built-in tasks as conversations (user prompt, assistant replies) under a
    ``tasks.toml``; a task of 0 eval pairs gets no eval file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (n_train, n_eval) in sizes.items():
        splits = dict(zip(("train", "eval"), generate_task(name, n_train, n_eval, seed=0)))
        lines.append(f"[tasks.{name}]")
        for split, rows in splits.items():
            if not rows:
                continue
            text = "".join(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": p}],
                        "chosen": [{"role": "assistant", "content": c}],
                        "rejected": [{"role": "assistant", "content": r}],
                    }
                )
                + "\n"
                for p, c, r in rows
            )
            (folder / f"{name}.{split}.jsonl").write_text(text)
            lines.append(f'{split} = "{name}.{split}.jsonl"')
    (folder / "tasks.toml").write_text("\n".join(lines) + "\n")
    return folder / "tasks.toml"


def tiny_llama(folder: Path, manifest: Path) -> str:
    """A tiny LlamaForCausalLM with a ChatML tokenizer trained here on the tasks' text."""
    return write_tiny_model(
        folder, task_texts(manifest), architecture="llama", chatml=True, n_positions=256
    )


def test_the_example_reports_a_chatml_llama_on_a_conversational_manifest(tmp_path):
    """Issue 24's acceptance: ``examples/trl_ama.py --model M --data MANIFEST --out O`` on
    a CPU (no flag chooses it) writes ``O/results.json`` with every task's excess."""
    manifest = conversational_manifest(tmp_path / "data")
    model = tiny_llama(tmp_path / "llama", manifest)
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(model).model_type == "llama"
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(model).chat_template
    out = tmp_path / "out"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # the machine as a CPU-only one
        "PYTHONPATH": str(ROOT),
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(ROOT / "examples" / "trl_ama.py"), "--model", model]
    command += ["--data", str(manifest), "--out", str(out)]
    command += ["--steps", "2", "--batch-size", "3", "--generate", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: cpu, float32" in done.stdout
    assert "task format: no eval file" in done.stdout
    results = read_results(out / "results.json")  # checksum verified
    assert results["tasks"] == list(SIZES)
    assert results["sizes"] == [n for n, _ in SIZES.values()]
    (run,) = results["runs"]["ama-r"]
    assert run["steps"] == 2 and len(run["history"]["weights"]) == 2
    for task, row in run["tasks"].items():
        for metric in ("loss", "excess", "clipped", "accuracy", "exact_match"):
            assert math.isfinite(row[metric]), (task, metric)
        assert row["clipped"] >= max(row["excess"], 0.0) - 1e-12
    assert run["worst_task_excess"] == max(r["clipped"] for r in run["tasks"].values())
    assert results["eval_files"]["format"].endswith("format.train.jsonl")
    assert results["eval_files"]["safety"].endswith("safety.eval.jsonl")
    assert results["data"]["format"]["eval"]["pairs"] == SIZES["format"][0]
    assert set(results["specialist_exact_match"]) == set(SIZES)
    assert results["config"]["run"] == {"device": "cpu", "dtype": "float32"}
    assert "| ama-r | 2 |" in (out / "results.md").read_text()
    assert (out / "weights.png").is_file() and (out / "excess.png").is_file()


def test_one_precision_policy_for_every_number(tmp_path):
    """The base model as every task's specialist and an untrained policy: reference,
    specialist and policy numbers are made the same way, so each held-out pair's loss is
    log 2 and its excess 0 — bit for bit what llm.oracle's evaluator gives itself."""
    quiet()
    manifest = conversational_manifest(tmp_path / "data", {"arithmetic": (4, 3), "safety": (4, 0)})
    model = tiny_llama(tmp_path / "llama", manifest)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    args = dpo_args(tmp_path / "run", max_length=128, per_device_train_batch_size=2)
    tasks = load_task_datasets(manifest, tokenizer, max_length=128)
    trainer = AMADPOTrainer(
        model,
        args=args,
        train_dataset=concatenate_tasks(tasks),
        processing_class=tokenizer,
        mixer=stratified(),
    )
    results = evaluate_and_report(
        trainer, manifest, {t: model for t in tasks}, tmp_path / "out", generate=0
    )
    (run,) = results["runs"]["stratified"]
    for row in run["tasks"].values():
        assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert row["excess"] == 0.0 and row["clipped"] == 0.0 and row["accuracy"] == 0.0
        assert "exact_match" not in row  # generate=0: no decoding
    assert run["steps"] == 0 and "history" not in run
    assert not (tmp_path / "out" / "weights.png").exists()  # nothing trained, nothing drawn


def test_the_device_and_dtype_are_chosen_as_the_pipeline_chooses(monkeypatch):
    cuda = SimpleNamespace(available=False, bf16=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda.available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: cuda.bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "an old GPU")
    assert device_settings() == {"use_cpu": True, "bf16": False, "fp16": False}
    with pytest.raises(ValueError, match="no CUDA GPU"):
        device_settings("cuda")
    cuda.available = True
    assert device_settings() == {"use_cpu": False, "bf16": False, "fp16": False}
    with pytest.raises(ValueError, match=r"an old GPU.*does not support"):
        device_settings("cuda", "bfloat16")
    cuda.bf16 = True
    assert device_settings() == {"use_cpu": False, "bf16": True, "fp16": False}
    assert device_settings("cuda", "float32")["bf16"] is False
    assert device_settings("cpu") == {"use_cpu": True, "bf16": False, "fp16": False}
    assert device_settings("cpu", "bfloat16")["bf16"] is True
    for bad in ({"device": "tpu"}, {"dtype": "float16"}):
        with pytest.raises(ValueError, match="use one of"):
            device_settings(**bad)
    args = SimpleNamespace(device=torch.device("cpu"), bf16=True, fp16=False)
    assert precision_of(args).dtype_name == "bfloat16"
    assert precision_of(SimpleNamespace(device="cpu", bf16=False, fp16=False)).dtype is None


def test_the_specialists_weights_are_kept_for_the_report(tmp_path):
    """Trained specialists stay in <output_dir>/<task> with a record of their cache entry;
    a cache hit whose folder was deleted has no weights (the report refuses, naming the
    fix) until ``need_weights=True`` trains it again — to the same losses."""
    quiet()
    manifest = conversational_manifest(tmp_path / "data", {"arithmetic": (4, 2)})
    model = tiny_llama(tmp_path / "llama", manifest)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    args = dpo_args(tmp_path / "run", max_length=128, max_steps=1)
    tasks = load_task_datasets(manifest, tokenizer, max_length=128)
    specialists = dpo_args(tmp_path / "specialists", max_length=128, max_steps=1)
    common = {"args": args, "cache_dir": tmp_path / "cache", "processing_class": tokenizer}
    first = cache_specialist_losses(model, tasks, specialists, **common)
    folder = Path(first.models["arithmetic"])
    assert folder == tmp_path / "specialists" / "arithmetic" and (folder / "config.json").is_file()
    shutil.rmtree(folder)
    hit = cache_specialist_losses(model, tasks, specialists, **common)
    assert hit.models == {"arithmetic": None}
    trainer = AMADPOTrainer(
        model,
        args=args,
        train_dataset=concatenate_tasks(tasks),
        processing_class=tokenizer,
        mixer=ama_r(1.0),
        specialist_losses=hit,
    )
    with pytest.raises(ValueError, match="need_weights=True"):
        evaluate_and_report(trainer, manifest, hit, tmp_path / "out")
    again = cache_specialist_losses(model, tasks, specialists, need_weights=True, **common)
    assert again.models == {"arithmetic": str(folder)} and (folder / "config.json").is_file()
    np.testing.assert_array_equal(again["arithmetic"], first["arithmetic"])
