"""FSDP2 on CPU (gloo, 2 processes): a sharded run is the single-process run of its global
batch, on the built-in GPT and on a tiny Hugging Face model, with LoRA and activation
checkpointing, and under the bfloat16 policy the ranks stay equal.

One spawn for the module (start-up costs seconds): the workers of ``scale_helpers`` train
every case sharded over two ranks and write what each rank saw; the tests compare it with
the same case trained here on the plain model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

if not dist.is_available():  # pragma: no cover - the CPU wheels ship gloo
    pytest.skip("torch.distributed is not available", allow_module_level=True)
pytest.importorskip("transformers")
pytest.importorskip("peft")

from scale_helpers import CASES, STEPS, WORLD, fsdp_worker, run_case, spawn

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FP32 = [case for case, spec in CASES.items() if not spec.get("bf16")]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The folder the two ranks wrote to: ``CASE-RANK.pt`` and each case's run folder."""
    out = tmp_path_factory.mktemp("fsdp")
    spawn(fsdp_worker, WORLD, out, str(out), list(CASES))
    return out


def rank_result(out, case: str, rank: int) -> dict:
    return torch.load(out / f"{case}-{rank}.pt", weights_only=False)


@pytest.mark.parametrize("case", FP32)
def test_fsdp_two_ranks_equal_one_process_of_the_global_batch(sharded, case, tmp_path):
    plain = run_case(case, tmp_path / "plain", resume=False)
    for rank in range(WORLD):
        got = rank_result(sharded, case, rank)
        assert got["history"]["step"] == plain["history"]["step"] == list(range(STEPS))
        # the mixer saw the same per-task scores and played the same weights ...
        np.testing.assert_allclose(
            got["history"]["weights"], plain["history"]["weights"], atol=1e-6
        )
        np.testing.assert_allclose(got["history"]["scores"], plain["history"]["scores"], atol=1e-6)
        # (history["loss"] is the mean loss of this rank's block: not compared)
        # ... and the model ends where the one-process model ends, per task
        for name, loss in plain["losses"].items():
            assert got["losses"][name] == pytest.approx(loss, abs=1e-6), name
        # parameters to 1% of one AdamW step (lr 1e-2): AdamW divides by √v, so a gradient
        # near 0 summed in another order can move its weight by a visible fraction of a step
        assert got["params"].keys() == plain["params"].keys()
        for key, value in plain["params"].items():
            torch.testing.assert_close(got["params"][key], value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_ranks_end_with_the_same_model_and_mixer(sharded, case):
    first, second = (rank_result(sharded, case, rank) for rank in range(WORLD))
    for key in ("step", "weights", "scores"):  # "loss": each rank's block (not shared)
        assert first["history"][key] == second["history"][key]
    for a, b in zip(first["mixer"], second["mixer"], strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in first["params"].items():
        assert torch.equal(value, second["params"][key]), key


def test_fsdp_bf16_policy_trains_fp32_master_weights(sharded, tmp_path):
    """bfloat16 gathers and float32 reductions: the sharded master weights stay float32, the
    model moves, and its losses stay near the float32 run's."""
    got = rank_result(sharded, "hf-bf16", 0)
    plain = run_case("hf-ama-r", tmp_path / "fp32", resume=False)
    assert all(v.dtype == torch.float32 for v in got["params"].values() if v.is_floating_point())
    assert any(not torch.equal(got["params"][k], v) for k, v in plain["params"].items())
    for name, loss in plain["losses"].items():
        assert np.isfinite(got["losses"][name])
        assert got["losses"][name] == pytest.approx(loss, abs=2e-2), name


def test_fsdp_lora_trains_the_adapter_alone(sharded, tmp_path):
    """Under FSDP with LoRA only the adapter moves: the frozen base is the reference's."""
    got = rank_result(sharded, "gpt-lora-checkpointed", 0)
    from scale_helpers import build

    initial = {k: v.detach() for k, v in build("gpt-lora-checkpointed").policy.state_dict().items()}
    moved = {k for k, v in initial.items() if not torch.equal(got["params"][k], v)}
    assert moved and all(".lora_" in k for k in moved)


def test_fsdp_checkpoints_are_written_by_every_rank(sharded):
    folder = sharded / "gpt-ama-s" / "checkpoint"
    names = {p.name for p in folder.iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "state.pt", "manifest.json"} <= names
    assert (sharded / "gpt-ama-s" / "checkpoint.prev").is_dir()  # the last two kept


def test_fsdp_torchrun_cli_run_matches_the_one_process_run(tmp_path):
    """``torchrun --standalone --nproc_per_node 2 -m llm run`` with ``parallel = "fsdp"``:
    the whole pipeline (reference SFT, specialists and generalists trained sharded, the round
    methods Skill-It and Aioli, a merge) gives the per-task results of ``python -m llm run``
    with ``parallel = "none"``, and every recorded loss is the global batch's: the loss
    histories of ``results.json`` and ``metrics.jsonl`` agree with the one-process run's."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from llm_helpers import tiny_config_dict, write_suite_small, write_toml

    root = Path(__file__).resolve().parent.parent
    manifest = write_suite_small(tmp_path / "data")
    methods = ["ama-r", "ama-s", "skill-it", "aioli", "merge-linear"]
    results = {}
    for name, parallel in (("one", "none"), ("two", "fsdp")):
        sections = tiny_config_dict(tmp_path / f"out-{name}", manifest)
        sections["run"] |= {"seeds": [0], "methods": methods, "parallel": parallel}
        sections["mix"] |= {"examples": 240}  # room for the rounds' sweeps
        sections["eval"] |= {"generate": 2}
        config = write_toml(tmp_path / f"{name}.toml", sections)
        command = [sys.executable, "-m", "llm", "run", "--config", str(config)]
        if parallel == "fsdp":
            launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            command = [sys.executable, *launch, *command[1:]]
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / f"out-{name}" / "results.json").read_text())
    one, two = results["one"]["runs"], results["two"]["runs"]
    assert list(one) == list(two) == methods
    for method, records in one.items():
        assert records[0]["steps"] == two[method][0]["steps"]
        for task, row in records[0]["tasks"].items():
            for metric, value in row.items():
                got = two[method][0]["tasks"][task][metric]
                if metric == "items":  # every held-out pair's value, in order
                    for name, values in value.items():
                        np.testing.assert_allclose(got[name], values, atol=1e-5)
                    continue
                assert got == pytest.approx(value, abs=1e-5), (method, task, metric)
        if "history" in records[0]:  # the global batch's loss, the same weights
            mine, theirs = records[0]["history"], two[method][0]["history"]
            np.testing.assert_allclose(theirs["weights"], mine["weights"], atol=1e-6)
            loss = [np.nan if v is None else v for v in mine["loss"]]
            got = [np.nan if v is None else v for v in theirs["loss"]]
            np.testing.assert_allclose(got, loss, atol=1e-5, err_msg=method)
    for method in ("ama-r", "ama-s"):  # the metrics log: rank 0's file holds the global loss
        logs = [
            [json.loads(line)["loss"] for line in path.read_text().splitlines()]
            for name in ("one", "two")
            for path in (tmp_path / f"out-{name}" / "generalists").glob(
                f"{method}-*/*/metrics.jsonl"
            )
        ]
        assert len(logs) == 2 and len(logs[0]) == len(logs[1]) > 1
        np.testing.assert_allclose(logs[1], logs[0], atol=1e-5, err_msg=method)


# ------------------------------------------------------------------ the hf-fsdp config
def hf_fsdp_layout(folder):
    """llm/configs/hf-fsdp.toml copied into ``folder`` beside what it names: a tiny local HF
    model at models/Qwen2.5-0.5B-Instruct and conversational JSONL behind tasks.toml."""
    import shutil
    from pathlib import Path

    from scale_helpers import conversational_tasks, hf_model_dir

    source = Path(__file__).resolve().parent.parent / "llm" / "configs" / "hf-fsdp.toml"
    shutil.copy(source, folder / "hf-fsdp.toml")
    hf_model_dir(folder / "models" / "Qwen2.5-0.5B-Instruct")
    sizes = {"arithmetic": (16, 6), "safety": (16, 6), "format": (16, 6)}
    conversational_tasks(folder, sizes)
    return folder / "hf-fsdp.toml"


def test_hf_fsdp_config_passes_validation_beside_a_local_model(tmp_path):
    from llm.config import load_config

    cfg = load_config(hf_fsdp_layout(tmp_path))
    assert (cfg.run.parallel, cfg.run.dtype, cfg.run.device) == ("fsdp", "bfloat16", "cuda")
    assert cfg.model.kind == "hf" and cfg.model.path == str(
        tmp_path / "models" / "Qwen2.5-0.5B-Instruct"
    )
    assert cfg.model.gradient_checkpointing and cfg.model.lora.r == 16
    assert cfg.data.tokenization == "trl" and cfg.data.manifest == str(tmp_path / "tasks.toml")


def test_hf_fsdp_config_runs_on_cpu_with_lora_fsdp_and_checkpointing(tmp_path):
    """The real-model path end to end, shrunk for a CPU: the local HF model, conversational
    rows under its chat template (TRL tokenization), LoRA specialists and generalist, FSDP
    (one rank) and activation checkpointing, a merge of the adapters."""
    import json
    import os
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    from llm_helpers import write_toml

    path = hf_fsdp_layout(tmp_path)
    sections = tomllib.loads(path.read_text())
    sections["model.lora"] = sections["model"].pop("lora") | {
        "target_modules": ["c_attn", "c_proj", "c_fc"]
    }
    sections["run"] |= {"device": "cpu", "dtype": "float32", "threads": 1, "seeds": [0]}
    sections["run"] |= {"methods": ["ama-r", "merge-ties"], "peak_flops": 0.0}
    sections["data"] |= {"max_length": 64, "max_prompt_length": 32}
    for stage in ("specialist", "generalist"):
        sections[stage] |= {"steps": 3, "batch_size": 4, "micro_batch_size": 2}
        sections[stage] |= {"learning_rate": 1e-2, "checkpoint_every": 2, "log_every": 1}
    sections["mix"] |= {"examples": 24}
    sections["eval"] |= {"generate": 1, "max_new_tokens": 4, "batch_size": 8}
    write_toml(path, sections)
    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "llm", "run", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "hf-fsdp" / "results.json").read_text())
    for method in ("ama-r", "merge-ties"):
        assert np.isfinite(results["runs"][method][0]["worst_task_excess"]), method
    # one sharded checkpoint folder per specialist, holding the adapter alone
    from llm.dcp import read_checkpoint

    folders = sorted((tmp_path / "runs" / "hf-fsdp" / "specialists").glob("*/checkpoint"))
    assert len(folders) == 3
    policy = read_checkpoint(folders[0].parent / "checkpoint.pt")["oracle"]["policy"]
    assert policy and all(".lora_A.specialist." in k or ".lora_B.specialist." in k for k in policy)
