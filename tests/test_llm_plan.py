"""The cost plan (llm.plan, llm.costs): what it counts equals what a run records, its FLOPs
equal the FLOP counter's, its checkpoint bytes the files'; ``[run] keep``; the disk check
before a run; the one GPU table.

Two runs are shared by the module: a tiny-cpu-like one (the classic suite, prefix sharing,
bucketed rows, ``keep = "all"``) and a small-cpu-like one (the learnable suite, plain rows
padded to the batch's widest, micro-batches recomputed, several checkpoints a run,
``keep = "final"``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_helpers import (
    TOKENIZER,
    build_oracle,
    char_tasks,
    synthetic_pairs,
    tiny_config_dict,
    tiny_gpt,
    write_suite_small,
    write_toml,
)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from amasim.registry import describe, examples_per_step
from llm.config import ConfigError, load_config
from llm.costs import CountingOracle, ModelShape, PairCosts, forward_flops, train_flops
from llm.data import tokenize_pairs
from llm.gpus import GPUS, gpu, match, peak_flops
from llm.packing import Layout
from llm.pipeline import run_pipeline
from llm.plan import DiskTooSmall, check_disk, make_plan
from llm.sft import SFTOracle, sft_task

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]


def _config(root: Path, manifest: Path, **changes: dict) -> Path:
    sections = tiny_config_dict(root / "out", manifest)
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values}
    return write_toml(root / "config.toml", sections)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A finished tiny-cpu-like run (keep = "all")."""
    root = tmp_path_factory.mktemp("tiny")
    manifest = write_suite_small(root / "suite")
    path = _config(root, manifest, run={"keep": "all"})
    run_pipeline(load_config(path), progress=False)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A finished small-cpu-like run (keep = "final"): the learnable suite, plain rows padded
    to the batch's widest, micro-batches, a checkpoint every other step."""
    root = tmp_path_factory.mktemp("small")
    path = _config(
        root,
        "",
        run={
            "keep": "final",
            "prefix_sharing": False,
            "bucket": 0,
            "seeds": [0],
            "methods": ["uniform", "ama-r", "gr-dpo", "group-dro", "merge-linear"],
        },
        data={"suite": "learnable", "max_length": 36, "max_prompt_length": 24},
        model={"block_size": 40},
        sft={"steps": 6, "batch_size": 8},
        specialist={"steps": 5, "batch_size": 4, "checkpoint_every": 2, "micro_batch_size": 2},
        generalist={"batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 2},
        mix={"examples": 24},
        eval={"generate": 2, "max_new_tokens": 3, "batch_size": 256},
    )
    run_pipeline(load_config(path), progress=False)
    return root


def _last(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def _logs(folder: Path, pattern: str) -> list[dict]:
    found = sorted(folder.glob(pattern))
    assert found, pattern
    return [_last(p) for p in found]


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_plan_counts_what_the_run_records(name, request):
    root = request.getfixturevalue(name)
    cfg = load_config(root / "config.toml")
    plan = make_plan(cfg)
    out = root / "out"
    stages = {(s.role, s.method): s for s in plan.stages}
    # the reference SFT: steps, pairs and tokens of its metrics log (its last record)
    [sft] = _logs(out / "reference", "sft-*/metrics.jsonl")
    row = stages["sft", ""]
    assert (row.steps, row.pairs) == (sft["step"] + 1, (sft["step"] + 1) * cfg.sft.batch_size)
    assert (row.tokens, row.computed) == (sft["tokens_seen"], sft["tokens_computed"])
    # the specialists, one log per task
    logs = _logs(out / "specialists", "*/metrics.jsonl")
    row = stages["specialist", ""]
    assert row.steps == sum(r["step"] + 1 for r in logs) == 3 * cfg.specialist.steps
    assert row.tokens == sum(r["tokens_seen"] for r in logs)
    assert row.computed == sum(r["tokens_computed"] for r in logs)
    # the generalists: results.json and each run's log; merges train nothing
    results = json.loads((out / "results.json").read_text())
    k, batch = len(results["tasks"]), cfg.generalist.batch_size
    for method, runs in results["runs"].items():
        row = stages[("merge" if method.startswith("merge") else "generalist"), method]
        assert row.steps == sum(r["steps"] for r in runs)
        if method.startswith("merge"):
            assert row.pairs == row.tokens == 0 and row.forward_flops > 0
            continue
        per_step = examples_per_step(describe(method, k), k, batch)
        assert row.pairs == sum(r["steps"] for r in runs) * per_step
        logs = _logs(out / "generalists", f"{method}-seed*/rank0/metrics.jsonl")
        seen = sum(r["tokens_seen"] for r in logs)
        computed = sum(r["tokens_computed"] for r in logs)
        if method == "ama-s":  # its draws follow the losses: the plan's are an expectation
            assert not row.exact and row.tokens == pytest.approx(seen, rel=0.3)
        else:
            assert row.exact and (row.tokens, row.computed) == (seen, computed), method


def test_the_plan_json_has_what_a_user_reads_first(tiny, capsys):
    from llm.cli import main

    assert main(["plan", "--config", str(tiny / "config.toml"), "--gpu", "h200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    for key in ("time_s", "train_flops", "disk_bytes", "gpu_memory_bytes", "stages"):
        assert key in record, key
    assert record["gpu"] == "H200" and record["time_s"] > 0
    assert record["train_flops"] == sum(s["train_flops"] for s in record["stages"])
    assert any(line.startswith("| reference SFT |") for line in lines)
    from amasim.cli import main as amasim_main

    assert amasim_main(["llm", "plan", "--config", str(tiny / "config.toml")]) == 0
    forwarded = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert forwarded["gpu"] == "H100-SXM"  # the default GPU; the same counts
    for key in ("steps", "pairs", "tokens", "train_flops", "disk_bytes", "gpu_memory_bytes"):
        assert forwarded[key] == record[key], key


def test_the_gpu_study_is_planned_on_a_machine_without_a_gpu(capsys, tmp_path):
    """``python -m llm plan`` of the CUDA config exits 0 here (the issue's acceptance), and
    touches no output folder; ``run`` of it stops on the device, naming CUDA."""
    from llm.cli import main

    config = str(REPO / "llm" / "configs" / "gpu-study.toml")
    assert main(["plan", "--config", config, "--out", str(tmp_path / "out")]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(record[k] > 0 for k in ("time_s", "train_flops", "disk_bytes", "gpu_memory_bytes"))
    assert not (tmp_path / "out").exists()
    if not torch.cuda.is_available():
        assert main(["run", "--config", config, "--out", str(tmp_path / "out")]) == 2
        assert "CUDA" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _flops_of_a_step(oracle, task_ids: np.ndarray) -> tuple[int, object]:
    """(FlopCounterMode's count of one step of ``oracle``, the batch).  Attention through
    the math backend: the counter has no formula for the CPU's fused kernel."""
    oracle.reset([0])
    batch = oracle.sample(task_ids)
    weights = np.full(task_ids.shape, 1.0 / task_ids.shape[1])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        oracle.losses(batch)
        oracle.step(batch, weights, 1e-3)
    return counter.get_total_flops(), batch


def _with_lora(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with two LoRA adapters on every linear layer (the run's two)."""
    from llm import lora

    lora.add_adapters(
        model, ["specialist", "generalist"], r=4, alpha=8.0, target_modules=["all-linear"]
    )
    return model


@pytest.mark.parametrize(
    "objective, layout, micro, checkpointing, adapters",
    [
        ("dpo", Layout(True, 16), None, False, False),
        ("dpo", Layout(False, 0), 3, False, False),
        ("dpo", Layout(True, 0), None, True, False),
        ("dpo", Layout(True, 0), None, True, True),
        ("sft", Layout(False, 16), None, False, False),
    ],
)
def test_the_plans_flops_of_a_step_are_the_flop_counters(
    objective, layout, micro, checkpointing, adapters
):
    task_ids = np.array([[0, 0, 1, 1, 2, 2, 2, 1]])
    if adapters:
        pytest.importorskip("peft")
    if objective == "dpo":
        wrap = _with_lora if adapters else None
        adapter = "generalist" if adapters else None
        oracle = build_oracle(layout=layout, micro_batch_size=micro, wrap=wrap, adapter=adapter)
    else:
        tasks = [sft_task(name, train) for name, train, _ in char_tasks()]
        oracle = SFTOracle(tiny_gpt(0), tasks, pad_id=TOKENIZER.pad_id, layout=layout)
    if checkpointing:
        oracle.policy.gradient_checkpointing_enable()
    measured, batch = _flops_of_a_step(oracle, task_ids)
    chosen_only = objective == "sft"
    costs = [
        (name, PairCosts.of(train, layout, TOKENIZER.pad_id, 64, chosen_only=chosen_only))
        for name, train, _ in char_tasks()
    ]
    counting = CountingOracle(costs, micro_batch_size=micro)
    counting.reset([0])
    counting.losses(batch)
    counting.step(batch, None, 1e-3)
    model = oracle.policy
    shape = ModelShape.of(model, model.output_head(), model.config.n_head)
    planned = train_flops(
        shape, counting.trained, base_trains=not adapters, checkpointing=checkpointing
    ) + forward_flops(shape, counting.forwarded)
    if adapters:
        # over the frozen embeddings the first block's input projection (c_attn and its
        # lora_A) needs no input gradient: the plan counts it, an upper bound by that much
        first = model.transformer.h[0].attn.c_attn
        entry = first.base_layer.weight.numel() + first.lora_A["generalist"].weight.numel()
        measured += 2 * entry * counting.trained.computed
    assert planned == pytest.approx(measured, rel=1e-9)  # the same matmuls, counted
    # and the oracle's own token counts, which the run logs
    assert (counting.tokens_seen, counting.tokens_computed) == (
        oracle.tokens_seen,
        oracle.tokens_computed,
    )


def test_checkpoint_bytes_are_those_of_the_files(tiny, small):
    for root, roles in ((tiny, ("sft", "specialist", "generalist")), (small, ("specialist",))):
        plan = make_plan(load_config(root / "config.toml"))
        out = root / "out"
        where = {
            "sft": "reference/sft-*/checkpoint.pt",
            "specialist": "specialists/*/checkpoint.pt",
            "generalist": "generalists/*/rank0/checkpoint.pt",
        }
        for role in roles:
            sizes = [p.stat().st_size for p in out.glob(where[role])]
            assert sizes, role
            assert plan.checkpoint_bytes[role] == pytest.approx(max(sizes), rel=0.03), role


def test_keep_final_leaves_the_results_and_the_specialists_final_weights(small):
    out = small / "out"
    assert not list(out.rglob("*.prev.pt")) and not list(out.glob("reference/*/checkpoint*"))
    assert not list(out.glob("generalists/*/*/checkpoint*"))
    assert len(list(out.glob("specialists/*/checkpoint.pt"))) == 3
    assert (out / "results.json").is_file() and list(out.glob("models/reference-*.pt"))
    assert list(out.glob("generalists/*/rank0/metrics.jsonl"))  # the logs stay
    plan = make_plan(load_config(small / "config.toml"))
    kept = sum(p.stat().st_size for p in out.rglob("*.pt"))
    assert plan.disk["final"] >= kept and plan.disk["peak"] > plan.disk["final"]


@pytest.mark.parametrize("keep", ["none", "final"])
def test_a_rerun_under_another_keep_gives_the_same_results(tiny, tmp_path, keep):
    """The tiny run kept everything; rerun on its caches under ``keep``: the same results,
    and the checkpoints the policy drops are gone (none: the specialists' too)."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny / "out", folder / "out")
    text = (tiny / "config.toml").read_text().replace(str(tiny / "out"), str(folder / "out"))
    path = folder / "config.toml"
    path.write_text(text.replace('keep = "all"', f'keep = "{keep}"'))
    before = json.loads((tiny / "out" / "results.json").read_text())
    again = run_pipeline(load_config(path), progress=False)
    for method, runs in before["runs"].items():
        for old, new in zip(runs, again["runs"][method]):
            assert old["tasks"] == new["tasks"] and old["history"] == new.get("history")
    left = sorted(p.relative_to(folder / "out").parts[0] for p in (folder / "out").rglob("*.pt"))
    expected = ["models"] + (["specialists"] * 3 if keep == "final" else [])
    assert left == expected


def test_a_run_needing_more_disk_than_is_free_is_refused(tiny, monkeypatch, tmp_path, capsys):
    cfg = load_config(tiny / "config.toml")
    plan = make_plan(cfg)
    check_disk(plan, tmp_path / "new")  # a few MB: fits

    class Usage:
        free = plan.disk["peak"] // 2

    monkeypatch.setattr("llm.plan.shutil.disk_usage", lambda path: Usage)
    with pytest.raises(DiskTooSmall, match=r"GiB of disk at its peak.*GiB free.*Fix"):
        check_disk(plan, tmp_path / "new")
    from llm.cli import main

    path = tiny / "config.toml"
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "new")]) == 2
    printed = capsys.readouterr()
    assert "error: the run needs" in printed.err and "[run] keep" in printed.err
    assert "plan: disk peak" in printed.out  # the plan's figures come first
    assert not (tmp_path / "new").exists()  # refused before anything was written


def test_float16_is_refused_with_the_fix_named(tmp_path):
    path = write_toml(tmp_path / "c.toml", {"run": {"dtype": "float16"}})
    with pytest.raises(ConfigError, match=r"dtype = 'float16'.*gradient scaler.*bfloat16"):
        load_config(path)
    from llm.precision import Precision

    with pytest.raises(ValueError, match=r"gradient scaler.*bfloat16"):
        build_oracle(precision=Precision("cpu", torch.float16))


def test_the_gpu_table_names_each_card_once():
    assert len({g.name.lower() for g in GPUS}) == len(GPUS)
    names = {
        "NVIDIA H100 80GB HBM3": "H100-SXM",
        "NVIDIA H100 PCIe": "H100-PCIe",
        "NVIDIA H100 NVL": "H100-NVL",
        "NVIDIA H200": "H200",
        "NVIDIA A100-SXM4-40GB": "A100",
        "NVIDIA L40S": "L40S",
        "NVIDIA B200": "B200",
    }
    for device_name, name in names.items():
        assert match(device_name).name == name
        assert gpu(name).peak_bf16 > 1e14
    assert peak_flops("cpu") is None and peak_flops("cpu", 5.0) == 5.0
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu("V100")


def test_every_gpu_config_plans_in_seconds_and_fits_its_gpu():
    for path in sorted((REPO / "llm" / "configs").glob("gpu-*.toml")):
        plan = make_plan(load_config(path), source=path.name)
        record = plan.record()
        assert record["gpu_memory_bytes"] < plan.gpu.memory, path.name
        assert 0 < record["disk_bytes"] < 64 * 2**30, path.name  # a rented machine's disk


def test_a_hugging_face_model_is_planned_from_its_config_and_counted_alike(tmp_path):
    """A local Hugging Face model (GPT-2: Conv1D layers) is planned without its weights, and
    one training step's FLOPs are the FLOP counter's."""
    from test_llm_pipeline import make_hf_model_dir

    from llm.hf import load_local
    from llm.oracle import DPOOracle, TaskData, dpo_settings, reference_logps

    folder = make_hf_model_dir(tmp_path / "model")
    manifest = write_suite_small(tmp_path / "suite")
    sections = tiny_config_dict(tmp_path / "out", manifest)
    sections["model"] = {"kind": "hf", "path": str(folder)}
    sections["model.lora"] = {"r": 4, "alpha": 8.0}
    sections["run"] |= {"parallel": "fsdp"}
    plan = make_plan(load_config(write_toml(tmp_path / "c.toml", sections)), gpus=2)
    model, tokenizer = load_local(folder, dtype=torch.float32)
    linears = [m for m in model.blocks()[0].modules() if type(m).__name__ == "Conv1D"]
    assert plan.shape.matmul == sum(m.weight.numel() for m in linears)
    assert plan.shape.adapter == 4 * sum(sum(m.weight.shape) for m in linears)
    assert "reference SFT" not in [s.name for s in plan.stages]  # the base is the reference
    assert plan.memory["gradients"] == 4 * plan.shape.adapter // 2  # one adapter, 2 ranks
    # one full fine-tuning step of the loaded model against the plan's count
    pairs = [
        tokenize_pairs(p, tokenizer, max_length=48) for p, _ in list(synthetic_pairs().values())[:2]
    ]
    tasks = [
        TaskData(
            f"t{i}",
            p,
            reference_logps(model, p, pad_id=tokenizer.pad_id, average=False),
            np.zeros(len(p)),
        )
        for i, p in enumerate(pairs)
    ]
    layout = Layout(True, 16)
    oracle = DPOOracle(
        model, tasks, pad_id=tokenizer.pad_id, dpo=dpo_settings(0.1, "sigmoid", 0.0), layout=layout
    )
    measured, batch = _flops_of_a_step(oracle, np.array([[0, 0, 1, 1, 1]]))
    costs = [(t.name, PairCosts.of(t.pairs, oracle.layout, tokenizer.pad_id, 64)) for t in tasks]
    counting = CountingOracle(costs)
    counting.reset([0])
    counting.losses(batch)
    shape = ModelShape.of(model, model.model.get_output_embeddings(), 2)
    assert train_flops(shape, counting.trained, base_trains=True) == pytest.approx(
        measured, rel=1e-9
    )
