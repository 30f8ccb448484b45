"""Training state per rank — parameters, gradients, AdamW — for full fine-tuning, LoRA and
FSDP: measured on a small GPT-2-shaped model, computed for 0.5B / 1.5B / 8B models.

    python benchmarks/llm_memory_scaling.py              # measures on 1 and 2 CPU processes
    python benchmarks/llm_memory_scaling.py --world 4    # FSDP over 4 processes

**Measured.**  A GPT-2-shaped model (``GPT2Config``: vocabulary 50,257, 4 layers of width 256,
16.3M parameters) behind :class:`llm.hf.HFCausalLM`, float32, one forward and backward of a
next-token loss and one AdamW step (as :class:`llm.oracle.DPOOracle` trains: AdamW over the
parameters that require a gradient), four ways: full fine-tuning in one process; LoRA
(:mod:`llm.lora`, r = 16 on every linear layer of the blocks, alpha = 32); FSDP2 over
``--world`` gloo processes (:mod:`llm.parallel`); FSDP + LoRA.  The bytes are those of the
tensors each rank holds after the step (the local shards under FSDP) — an exact count of
the training state, not a resident-set reading — and they are compared with the formula
below on the same shapes.

**Computed** (the same formula, :func:`llm.memory.state_bytes`, which the cost plan
``python -m llm plan`` uses too) for Qwen2.5-0.5B, Qwen2.5-1.5B and Llama-3.1-8B, whose
shapes (layers, width, MLP width, heads, key-value heads, vocabulary, tied embeddings) are
written out below from their published configs: per rank, 16N bytes in full fine-tuning,
4N + 16T with T LoRA parameters, 16N / W + the gathered bf16 root and block under FSDP over
W ranks, (4N + 16T) / W + the same under FSDP + LoRA (:mod:`llm.memory` derives them).
(FSDP2 shards each parameter along its first dimension, padded to a multiple of W.)  The
weights are counted in float32, the master weights that FSDP's bfloat16 policy gathers from
(a frozen LoRA base held in bfloat16 would take 2N instead of 4N).
Activations come on top and are not counted: they scale with the batch and the sequence
length, and activation checkpointing (``[model] gradient_checkpointing``) cuts them to about
one block's worth plus every block's input.  The last stdout lines are the table (markdown);
the JSON goes to ``benchmarks/results/llm_memory_scaling.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from llm.memory import state_bytes  # the formula of the docstring

GIB = 2**30
LORA_R, LORA_ALPHA = 16, 32.0
SMALL = {"vocab_size": 50257, "n_positions": 256, "n_layer": 4, "n_embd": 256, "n_head": 4}


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape (Llama / Qwen2 layout: q, k, v, o, gate, up, down)."""

    name: str
    layers: int
    width: int
    mlp: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool
    head_dim: int = 0  # 0: width // heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.head_dim or self.width // self.heads)

    def linears(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of every linear layer of one block."""
        d, kv, i = self.width, self.kv_width, self.mlp
        return [(d, d), (d, kv), (d, kv), (d, d), (d, i), (d, i), (i, d)]

    def block(self) -> int:
        bias = (self.width + 2 * self.kv_width) if self.qkv_bias else 0
        return sum(a * b for a, b in self.linears()) + bias + 2 * self.width  # + 2 RMSNorms

    def root(self) -> int:
        return self.vocab * self.width * (1 if self.tied else 2) + self.width  # + final norm

    def parameters(self) -> int:
        return self.layers * self.block() + self.root()

    def lora(self, r: int = LORA_R) -> int:
        return self.layers * r * sum(a + b for a, b in self.linears())


#: shapes of the published configs (config.json of each model)
MODELS = (
    Shape("Qwen2.5-0.5B", 24, 896, 4864, 14, 2, 151936, tied=True, qkv_bias=True),
    Shape("Qwen2.5-1.5B", 28, 1536, 8960, 12, 2, 151936, tied=True, qkv_bias=True),
    Shape("Llama-3.1-8B", 32, 4096, 14336, 32, 8, 128256, tied=False, qkv_bias=False),
)


# --------------------------------------------------------------------------- measuring
def _build(lora_on: bool):
    import torch
    import transformers

    from llm import lora
    from llm.hf import HFCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = HFCausalLM(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL)).eval())
    if lora_on:
        lora.add_adapters(
            model, ["generalist"], r=LORA_R, alpha=LORA_ALPHA, target_modules=["all-linear"]
        )
        lora.use(model, "generalist")
    return model


def _local_bytes(tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _measure(model) -> dict:
    """One step; the bytes of parameters, gradients and AdamW state this process holds."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(0))
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    if hasattr(model, "reshard"):
        model.reshard()  # the root keeps its gathered weights after a forward: count shards
    grads = sum(_local_bytes(p.grad) for p in trainable if p.grad is not None)
    optimizer.step()
    state = sum(
        _local_bytes(v)
        for per_param in optimizer.state.values()
        for v in per_param.values()
        if torch.is_tensor(v)
    )
    return {
        "parameters": sum(_local_bytes(p) for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "gradients": grads,
        "optimizer": state,
    }


def _fsdp_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from llm.parallel import ParallelDims, wrap

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        group = ParallelDims(rank, world, 0, "cpu", "fsdp")
        found = {}
        for label, lora_on in (("fsdp", False), ("fsdp+lora", True)):
            found[label] = _measure(wrap(_build(lora_on), "fsdp", group))
        if rank == 0:
            Path(out).write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()


def measure(world: int) -> dict:
    import torch
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    found = {"full": _measure(_build(False)), "lora": _measure(_build(True))}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "fsdp.json"
        store = str(Path(folder) / "store")
        mp.spawn(_fsdp_worker, args=(world, store, str(out)), nprocs=world, join=True)
        found |= json.loads(out.read_text())
    for row in found.values():
        row["total"] = row["parameters"] + row["gradients"] + row["optimizer"]
    return found


def _small_shape() -> tuple[int, int]:
    """(N, LoRA T) of the measured GPT-2 shape (fused qkv c_attn, MLP 4d, tied head)."""
    d, v, p, layers = SMALL["n_embd"], SMALL["vocab_size"], SMALL["n_positions"], SMALL["n_layer"]
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    root = v * d + p * d + 2 * d  # tied head
    lora_t = layers * LORA_R * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    return layers * block + root, lora_t


# --------------------------------------------------------------------------- the table
def table(measured: dict, world: int) -> tuple[list[dict], str]:
    n, t = _small_shape()
    # the gathered term is transient (during the forward), so the measured state after the
    # step is compared with the formula without it
    want = state_bytes(n, t, world, 0, 0)
    rows = [
        {
            "model": f"GPT-2 shape, {n / 1e6:.1f}M (measured, fp32)",
            "setting": label,
            "ranks": world if label.startswith("fsdp") else 1,
            "measured_gib": measured[label]["total"] / GIB,
            "formula_gib": want[label] / GIB,
        }
        for label in ("full", "lora", "fsdp", "fsdp+lora")
    ]
    for shape in MODELS:
        n, t = shape.parameters(), shape.lora()
        for ranks in (1, 8):
            got = state_bytes(n, t, ranks, shape.root(), shape.block())
            for label in ("full", "lora") if ranks == 1 else ("fsdp", "fsdp+lora"):
                rows.append(
                    {
                        "model": f"{shape.name} ({n / 1e9:.2f}B, LoRA {t / 1e6:.1f}M)",
                        "setting": label,
                        "ranks": ranks,
                        "measured_gib": None,
                        "formula_gib": got[label] / GIB,
                    }
                )
    lines = [
        "| model | setting | ranks | per rank, measured (GiB) | per rank, formula (GiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        shown = "—" if r["measured_gib"] is None else f"{r['measured_gib']:.4f}"
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['ranks']} | {shown} | {r['formula_gib']:.4f} |"
        )
    return rows, "\n".join(lines)


# ------------------------------------------------------------- one DPO step on a device
#: Qwen2.5-0.5B's shape (random weights: nothing is downloaded), and a CPU-sized one
STEP_SHAPES = {
    "full": {"layers": 24, "width": 896, "mlp": 4864, "heads": 14, "kv": 2, "vocab": 151936},
    "smoke": {"layers": 2, "width": 64, "mlp": 128, "heads": 4, "kv": 2, "vocab": 512},
}
STEP_SEQ = {"full": (512, 512, 8), "smoke": (16, 16, 4)}  # prompt, completion, pairs / step


def _step_model(shape: dict, lora_on: bool):
    import torch
    import transformers

    from llm import lora
    from llm.hf import HFCausalLM

    config = transformers.Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["width"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"],
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = HFCausalLM(transformers.Qwen2ForCausalLM(config).eval())
    if lora_on:
        lora.add_adapters(
            model, ["generalist"], r=LORA_R, alpha=LORA_ALPHA, target_modules=["all-linear"]
        )
    return model


def _pairs(n: int, prompt: int, completion: int, vocab: int, seed: int):
    from gpu_step import random_pairs  # benchmarks/gpu_step.py, beside this script

    return random_pairs(n, prompt, completion, vocab, seed)


def step(device: str, smoke: bool, steps: int = 3) -> dict:
    """Per setting (full, LoRA, FSDP on one rank with the bf16 policy, FSDP + LoRA): median
    seconds of an AMA-S DPO step through :class:`llm.oracle.DPOOracle` (bf16 autocast on a
    GPU, with activation checkpointing), the training state and (CUDA) the peak memory."""
    import statistics
    import time

    import numpy as np
    import torch

    from amasim import mixers
    from amasim.scores import task_means
    from llm.oracle import DPOOracle, TaskData, dpo_settings, reference_logps
    from llm.parallel import join, wrap
    from llm.precision import Precision

    size = "smoke" if smoke else "full"
    shape, (prompt, completion, pairs) = STEP_SHAPES[size], STEP_SEQ[size]
    cuda = device.startswith("cuda")
    precision = Precision(torch.device(device), torch.bfloat16 if cuda else None)
    group = join("fsdp", device)  # one rank: FSDP's code path on one device
    found = {}
    for label in ("full", "lora", "fsdp", "fsdp+lora"):
        gc.collect()  # the last setting's model (held in cycles) before the cache is emptied
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = _step_model(shape, label.endswith("lora")).to(precision.device)
        model.gradient_checkpointing_enable()
        tasks = []
        for i in range(2):
            data = _pairs(4 * pairs, prompt, completion, shape["vocab"], seed=i)
            ref = reference_logps(model, data, pad_id=0, average=False, precision=precision)
            tasks.append(TaskData(f"task{i}", data, ref, np.full(len(data), 0.6)))
        if label.startswith("fsdp"):
            model = wrap(model, "fsdp", group, bf16=cuda)
        oracle = DPOOracle(
            model,
            tasks,
            pad_id=0,
            dpo=dpo_settings(0.1, "sigmoid", 0.0),
            precision=precision,
            adapter="generalist" if label.endswith("lora") else None,
        )
        mixer = mixers.ama_s(1.0, 0.1)
        state = mixer.init(2, seed=[0])
        oracle.reset([0])
        times = []
        for t in range(steps + 1):
            if cuda:
                torch.cuda.synchronize()
            tick = time.perf_counter()
            task_ids = np.array([[t % 2] * pairs])
            batch = oracle.sample(task_ids)
            losses = oracle.losses(batch)
            _, state = mixer.update(state, *task_means(losses, task_ids, 2))
            oracle.step(batch, np.full((1, pairs), 1.0 / pairs), 1e-5)
            if cuda:
                torch.cuda.synchronize()
            if t:  # the first step warms up
                times.append(time.perf_counter() - tick)
        trainable = [p for p in model.parameters() if p.requires_grad]
        held = sum(_local_bytes(p) for p in model.parameters())
        held += sum(
            _local_bytes(v)
            for per in oracle.optimizer.state.values()
            for v in per.values()
            if torch.is_tensor(v)
        )
        found[label] = {
            "seconds": statistics.median(times),
            "trainable": sum(p.numel() for p in trainable),
            "state_bytes": held,
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
        del oracle, model, tasks
    return {"device": device, "shape": shape, "seq": STEP_SEQ[size], "settings": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="FSDP processes (default 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "llm_memory_scaling.json",
    )
    parser.add_argument(
        "--step",
        action="store_true",
        help="instead: one DPO step per setting on --device (Qwen2.5-0.5B's shape)",
    )
    parser.add_argument("--device", default="cuda", help="for --step (default cuda)")
    parser.add_argument("--smoke", action="store_true", help="for --step: a tiny shape")
    args = parser.parse_args()
    if args.world < 1:
        parser.error("--world must be >= 1")
    if args.step:
        found = step(args.device, args.smoke)
        for label, row in found["settings"].items():
            peak = "" if row["peak_bytes"] is None else f", peak {row['peak_bytes'] / GIB:.2f} GiB"
            state = row["state_bytes"] / GIB
            print(f"{label}: {row['seconds'] * 1e3:.1f} ms/step, state {state:.3f} GiB{peak}")
        print(json.dumps(found))
        return
    measured = measure(args.world)
    rows, text = table(measured, args.world)
    record = {
        "measured": measured,
        "world": args.world,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": "all-linear"},
        "small_model": SMALL,
        "models": [asdict(s) | {"parameters": s.parameters(), "lora": s.lora()} for s in MODELS],
        "rows": rows,
        "machine": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
