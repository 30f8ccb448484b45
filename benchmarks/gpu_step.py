"""One AutoMixAlign DPO step of a ~0.5B-parameter GPT on a GPU: tokens/s, MFU, memory, mixer.

    PYTHONPATH=. python benchmarks/gpu_step.py            # CUDA, bf16, compiled
    PYTHONPATH=. python benchmarks/gpu_step.py --smoke    # the same steps on a CPU, tiny

Run by ``benchmarks/gpu_check.sh``.  The built-in GPT (:mod:`llm.model`) at 24 layers of
width 1280 (20 heads) with a 50,257-token vocabulary (~0.54B parameters), pairs of 1,024
tokens per sequence (prompt 512, completions 512), bf16 autocast, ``torch.compile``, the
reference log-probs precomputed under the same precision and layout; then steps of AMA-S
(resampling) through :class:`llm.oracle.DPOOracle`: draw the batch from the mixture,
``losses``, the mixer's update, ``step``.

Reported per configuration (layout × compile): median step time, pairs/s, tokens/s (tokens
the forward passes process), MFU against the device's dense bf16 peak, peak memory
(``torch.cuda.max_memory_allocated``) and the mixer update's share of a step.  MFU counts the
model FLOPs of a training step per token (Kaplan et al. 2020, table 1; PaLM, Chowdhery et
al. 2022, appendix B; :func:`llm.model.estimate_flops_per_token`)::

    6·(N − N_head)·tokens + 6·N_head·scored + 12·n_layer·n_embd·T·tokens

with N the non-embedding parameters (the tied LM head included), ``tokens`` the tokens the
forward passes process (padding included), ``scored`` the completion tokens that go through
the LM head (the only ones that do), T the row width; divided by step time and by the peak:
989e12 FLOP/s for an H100 SXM or H200 (dense bf16, NVIDIA's datasheets), ``--peak-flops`` for
others.  Writes ``benchmarks/results/gpu_<device>.json`` (``--out`` elsewhere); the last
stdout line is that JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from amasim import mixers
from amasim.scores import example_scores, task_means
from llm.data import TokenizedPairs
from llm.model import GPT, GPTConfig
from llm.oracle import DPOOracle, TaskData, dpo_settings, numerics, reference_logps
from llm.packing import Layout
from llm.precision import Precision

#: dense bf16 peak FLOP/s by device name (NVIDIA datasheets; H200 = H100 SXM's compute)
PEAK_BF16 = {"H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H200": 989e12}

SHAPES = {
    "full": {"n_layer": 24, "n_embd": 1280, "n_head": 20, "vocab": 50257, "seq": 1024},
    "smoke": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 512, "seq": 64},
}


def peak_flops(device: torch.device, given: float) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def random_pairs(n: int, prompt: int, completion: int, vocab: int, seed: int) -> TokenizedPairs:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, vocab, size=(n, prompt))
    c, r = (rng.integers(0, vocab, size=(n, completion)) for _ in range(2))
    return TokenizedPairs(
        chosen=[np.concatenate(x).astype(np.int32) for x in zip(p, c)],
        rejected=[np.concatenate(x).astype(np.int32) for x in zip(p, r)],
        prompt_lengths=np.full(n, prompt),
        chosen_truncated=0,
        rejected_truncated=0,
        sources=[f"{seed}:{i}" for i in range(n)],
        fingerprint=f"random-{seed}",
    )


def step_flops(model: GPT, batch_tokens: int, scored: int, width: int) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    c = model.config
    n = model.num_parameters()
    n_head = model.lm_head.weight.numel()
    attention = 12 * c.n_layer * c.n_embd * width
    return 6 * (n - n_head) * batch_tokens + 6 * n_head * scored + attention * batch_tokens


def run(config: dict, args, device: torch.device) -> dict:
    shape = SHAPES["smoke" if args.smoke else "full"]
    layout = Layout(prefix_sharing=config["prefix"], bucket=16)
    precision = Precision(device, torch.bfloat16)
    prompt = completion = shape["seq"] // 2
    gpt = GPTConfig(
        vocab_size=shape["vocab"],
        block_size=shape["seq"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
    )
    tick = time.perf_counter()
    model = GPT(gpt, generator=torch.Generator().manual_seed(0)).to(device)
    tasks = []
    for k in range(2):
        pairs = random_pairs(args.pool, prompt, completion, shape["vocab"], seed=k)
        ref = reference_logps(
            model,
            pairs,
            pad_id=0,
            average=False,
            precision=precision,
            layout=layout,
            batch_size=args.pairs,
        )
        tasks.append(
            TaskData(
                f"task{k}",
                pairs,
                ref,
                np.full(len(pairs), 0.69),
                numerics(model, precision, layout),
            )
        )
    setup = time.perf_counter() - tick
    oracle = DPOOracle(
        model,
        tasks,
        pad_id=0,
        dpo=dpo_settings(0.1, "sigmoid", 0.0),
        precision=precision,
        layout=layout,
    )
    if config["compile"]:
        model.forward = torch.compile(model.forward)
    mixer = mixers.ama_s(1.0, 0.1)
    state = mixer.init(2, seed=[0])
    oracle.reset([0])
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step_s, mixer_s, compile_s = [], [], 0.0
    tokens = scored = 0
    for t in range(args.warmup + args.steps):
        if t == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        tick = time.perf_counter()
        alpha = np.asarray(mixer.weights(state))[0]
        task_ids = rng.choice(2, size=(1, args.pairs), p=alpha / alpha.sum())
        batch = oracle.sample(task_ids)
        before = oracle.tokens_computed
        losses = oracle.losses(batch)
        m_tick = time.perf_counter()
        values, _ = example_scores("clipped", losses, batch.reference_losses)
        means, counts = task_means(values, task_ids, 2)
        _, state = mixer.update(state, means, counts)
        m_seconds = time.perf_counter() - m_tick
        oracle.step(batch, np.full((1, args.pairs), 1.0 / args.pairs), 1e-6)
        sync()
        seconds = time.perf_counter() - tick
        if t < args.warmup:
            compile_s += seconds
            continue
        step_s.append(seconds)
        mixer_s.append(m_seconds)
        tokens += oracle.tokens_computed - before
        scored += args.pairs * 2 * completion
    total = sum(step_s)
    width = prompt + 2 * completion if layout.prefix_sharing else prompt + completion
    width = -(-width // layout.bucket) * layout.bucket  # the row width T of the attention term
    per_step_tokens = tokens / len(step_s)
    flops = step_flops(model, per_step_tokens, scored / len(step_s), width)
    peak = peak_flops(device, args.peak_flops)
    row = {
        "layout": "prefix" if config["prefix"] else "plain",
        "compile": config["compile"],
        "median_step_s": statistics.median(step_s),
        "pairs_per_s": args.pairs * len(step_s) / total,
        "tokens_per_s": tokens / total,
        "tokens_per_step": per_step_tokens,
        "model_flops_per_step": flops,
        "mfu": flops / statistics.median(step_s) / peak if peak else None,
        "mixer_share": sum(mixer_s) / total,
        "warmup_s": compile_s,
        "setup_s": setup,
        "last_loss": float(np.mean(losses)),
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    mfu = "n/a (no peak known)" if row["mfu"] is None else f"{row['mfu']:.3f}"
    print(
        f"{row['layout']:>6} layout, compile={config['compile']}: "
        f"{1e3 * row['median_step_s']:.0f} ms/step, {row['pairs_per_s']:.1f} pairs/s, "
        f"{row['tokens_per_s']:.0f} tokens/s, MFU {mfu}, "
        f"mixer {100 * row['mixer_share']:.3f}% of a step",
        flush=True,
    )
    del oracle, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step")
    parser.add_argument("--pool", type=int, default=None, help="pairs per task")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--peak-flops", type=float, default=0.0)
    parser.add_argument(
        "--configs", nargs="+", default=None, help="layout:compile items, e.g. prefix:1 plain:0"
    )
    parser.add_argument("--out", default=None, help="the JSON file to write")
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or on a GPU machine")
    args.pairs = args.pairs or (4 if args.smoke else 8)
    args.pool = args.pool or (16 if args.smoke else 32)
    args.steps = args.steps or (3 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    items = args.configs or (["prefix:1", "plain:0"] if not args.smoke else ["prefix:1"])
    configs = [
        {"prefix": i.split(":")[0] == "prefix", "compile": i.split(":")[1] == "1"} for i in items
    ]
    name = (
        "cpu-smoke"
        if args.smoke
        else (
            torch.cuda.get_device_name(device).replace(" ", "_")
            if device.type == "cuda"
            else device.type
        )
    )
    results = [run(c, args, device) for c in configs]
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "shape": SHAPES["smoke" if args.smoke else "full"],
        "pairs_per_step": args.pairs,
        "peak_flops": peak_flops(device, args.peak_flops),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"gpu_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
