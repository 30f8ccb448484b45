"""Builders and spawned workers of the scale tests: FSDP, distributed checkpoints, LoRA.

Each case trains a tiny model (the 1-layer GPT of ``llm_helpers``, or a 1-layer GPT-2 from
``GPT2Config`` behind :class:`llm.hf.HFCausalLM`) on the tiny task suite through
:func:`llm.train.train`, either in this process (the plain model) or as one rank of a gloo
group of spawned processes (the model sharded by FSDP2).  A worker joins its group through a
file (no port to pick), runs its plan and writes what each rank saw to ``OUT/NAME-RANK.pt``
for the tests to read.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from llm_helpers import DPO, TOKENIZER, task_data, tiny_gpt

from amasim import mixers
from llm import lora
from llm.oracle import DPOOracle, dpo_settings
from llm.parallel import ParallelDims, full_state, wrap
from llm.train import LoopConfig, history, train

WORLD = 2
STEPS = 6
#: global batch (per task when reweighting)
BATCH = 4

#: the training cases: model kind, mixer, LoRA adapter, activation checkpointing, bf16 FSDP
CASES: dict[str, dict[str, Any]] = {
    "gpt-ama-r": {"model": "gpt", "method": "ama-r"},
    "gpt-ama-s": {"model": "gpt", "method": "ama-s"},
    "hf-ama-r": {"model": "hf", "method": "ama-r"},
    "gpt-lora-checkpointed": {"model": "gpt", "method": "ama-s", "lora": True, "ckpt": True},
    "hf-bf16": {"model": "hf", "method": "ama-r", "bf16": True},
}


class Stop(Exception):
    """Raised by ``on_step`` to kill a run mid-way (as a crash would)."""


def tiny_hf(seed: int = 0) -> torch.nn.Module:
    """A 1-layer GPT-2 (``GPT2Config``) over the character vocabulary, as HFCausalLM."""
    import transformers

    from llm.hf import HFCausalLM

    config = transformers.GPT2Config(
        vocab_size=TOKENIZER.vocab_size,
        n_positions=64,
        n_layer=1,
        n_head=2,
        n_embd=32,
        bos_token_id=TOKENIZER.bos_id,
        eos_token_id=TOKENIZER.eos_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HFCausalLM(transformers.GPT2LMHeadModel(config).eval())


def build(case: str, group: ParallelDims | None = None) -> DPOOracle:
    """The oracle of ``case``: the reference log-probs of the plain model, then (``group``)
    the model sharded over the group's ranks."""
    spec = CASES[case]
    model = tiny_gpt(0) if spec["model"] == "gpt" else tiny_hf(0)
    data = task_data(model)
    if spec.get("lora"):
        lora.add_adapters(
            model, [lora.GENERALIST], r=4, alpha=8.0, target_modules=["all-linear"], seed=0
        )
    if spec.get("ckpt"):
        model.gradient_checkpointing_enable()
    if group is not None:
        model = wrap(model, "fsdp", group, bf16=bool(spec.get("bf16")))
    adapter = lora.GENERALIST if spec.get("lora") else None
    return DPOOracle(model, data, pad_id=TOKENIZER.pad_id, dpo=dpo_settings(**DPO), adapter=adapter)


def run_case(
    case: str,
    out_dir: Path,
    group: ParallelDims | None = None,
    *,
    stop_at: int | None = None,
    resume: bool = True,
) -> dict[str, Any] | None:
    """Train ``case`` for STEPS steps (a checkpoint every 2) into ``out_dir``, resuming what
    is there; killed after step ``stop_at`` (then None).  The record, the per-task losses
    at the end and the whole parameters."""
    oracle = build(case, group)
    spec = CASES[case]
    mixer = mixers.ama_r(1.0) if spec["method"] == "ama-r" else mixers.ama_s(1.0, 0.2)
    config = LoopConfig(steps=STEPS, batch_size=BATCH, learning_rate=1e-2, checkpoint_every=2)

    def on_step(t: int) -> None:
        if t == stop_at:
            raise Stop

    try:
        result = train(oracle, mixer, config, out_dir=out_dir, resume=resume, on_step=on_step)
    except Stop:
        return None
    losses = {name: row["loss"] for name, row in oracle.evaluate_tasks().items()}
    return {
        "history": history(result),
        "mixer": [np.asarray(a).copy() for a in _flat(result.mixer_state)],
        "losses": losses,
        "params": full_state(oracle.policy.state_dict()),
    }


def _flat(state: Any) -> list[Any]:
    if isinstance(state, tuple):
        return [a for field in state for a in _flat(field)]
    return [state]


# ----------------------------------------------------------------------------- spawning
def spawn(worker, world: int, folder: Path, *args: Any) -> None:
    """Run ``worker(rank, world, store, *args)`` on ``world`` fresh processes."""
    store = folder / f"store-{uuid.uuid4().hex}"
    mp.spawn(worker, args=(world, str(store), *args), nprocs=world, join=True)


def _join(rank: int, world: int, store: str) -> ParallelDims:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    return ParallelDims(rank, world, 0, "cpu", "fsdp")


def fsdp_worker(rank: int, world: int, store: str, out: str, cases: list[str]) -> None:
    """Every case of ``cases`` sharded over the group → ``OUT/CASE-RANK.pt``."""
    group = _join(rank, world, store)
    try:
        for case in cases:
            result = run_case(case, Path(out) / case, group, resume=False)
            torch.save(result, Path(out) / f"{case}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def dcp_worker(rank: int, world: int, store: str, out: str, plan: list[tuple]) -> None:
    """Runs in order, each ``(name, case, copy_of, stop_at)``: ``case`` trained into
    ``OUT/name`` (first a copy of the folder ``OUT/copy_of``, when given: a checkpoint to
    resume), killed after step ``stop_at`` (None: to the end) → ``OUT/name-RANK.pt``."""
    group = _join(rank, world, store)
    try:
        for name, case, copy_of, stop_at in plan:
            folder = Path(out) / name
            if copy_of is not None and rank == 0:
                shutil.copytree(Path(out) / copy_of, folder)
            dist.barrier()
            result = run_case(case, folder, group, stop_at=stop_at)
            torch.save(result, Path(out) / f"{name}-{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def ddp_worker(rank: int, world: int, store: str, out: str, steps: int) -> None:
    """One gloo group, two checks: ``reduce_task_scores`` of this rank's inputs →
    ``reduce{rank}.npz``; AMA-S training of the tiny GPT under DDP, one global batch shared
    by the ranks → ``train{rank}.pt`` (parameters, mixer state, global draws, history)."""
    from llm_helpers import build_oracle, parameters, reduce_inputs
    from torch.nn.parallel import DistributedDataParallel

    from llm.parallel import reduce_task_scores

    _join(rank, world, store)
    try:
        means, counts = reduce_inputs()[rank]
        got_means, got_counts = reduce_task_scores(means, counts)
        np.savez(Path(out) / f"reduce{rank}.npz", means=got_means, counts=got_counts)

        oracle = build_oracle(wrap=DistributedDataParallel)
        drawn = []
        sample = oracle.sample

        def recording_sample(task_ids):
            batch = sample(task_ids)
            drawn.append(np.asarray(batch.data).copy())
            return batch

        oracle.sample = recording_sample
        config = LoopConfig(steps=steps, batch_size=8, learning_rate=1e-2, checkpoint_every=100)
        result = train(oracle, mixers.ama_s(1.0, 0.2), config, out_dir=Path(out) / f"rank{rank}")
        record = {
            "params": parameters(oracle),
            "mixer": _flat(result.mixer_state),
            "drawn": drawn,
            "history": history(result),
        }
        torch.save(record, Path(out) / f"train{rank}.pt")
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------- a real-model layout
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hf_model_dir(path: Path) -> Path:
    """A tiny random GPT-2 (``GPT2Config``) and a byte-level BPE tokenizer with a chat
    template, trained here on the tiny suite's text, saved to ``path``."""
    import tokenizers
    import transformers
    from llm_helpers import synthetic_pairs

    texts = [
        p.prompt + p.chosen + p.rejected for train, _ in synthetic_pairs().values() for p in train
    ]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<bos>", "<|end|>", "<pad>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<|end|>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    config = transformers.GPT2Config(
        vocab_size=len(fast),
        n_positions=128,
        n_layer=2,
        n_head=2,
        n_embd=32,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def conversational_tasks(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """The tiny suite as conversational JSONL (user prompt, assistant replies) with a
    ``tasks.toml`` manifest in ``folder``; returns the manifest."""
    import json

    from llm_helpers import synthetic_pairs

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, splits in synthetic_pairs(sizes).items():
        for split, pairs in zip(("train", "eval"), splits):
            rows = [
                {
                    "prompt": [{"role": "user", "content": p.prompt}],
                    "chosen": [{"role": "assistant", "content": p.chosen}],
                    "rejected": [{"role": "assistant", "content": p.rejected}],
                }
                for p in pairs
            ]
            text = "".join(json.dumps(row) + "\n" for row in rows)
            (folder / f"{name}.{split}.jsonl").write_text(text)
        lines += [f"[tasks.{name}]", f'train = "{name}.train.jsonl"', f'eval = "{name}.eval.jsonl"']
    manifest = folder / "tasks.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
