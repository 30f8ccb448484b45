"""Throughput of an LLM training step and the share of it spent in the mixer.

    python benchmarks/run_llm_benchmark.py [--device cuda --dtype bfloat16 --size small]

Builds the built-in GPT (``tiny``: the tiny-cpu config's model; ``small``: the
gpu-small config's ~100M-parameter model) over the built-in task suite, takes warm-up
steps, then times steps of AMA-S and AMA-R through :class:`amasim.driver.Mixing` — the
step the pipeline runs — and reports examples/s, tokens/s, the time share of
``mixer.update``, MFU (against ``--peak-flops``, or the GPU's own dense bf16 peak from
:mod:`llm.gpus`) and peak memory on CUDA.  Writes
``benchmarks/results/llm_<device>_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amasim import mixers
from amasim.driver import Mixing
from llm.data import load_manifest, read_preference_jsonl, tokenize_pairs
from llm.dpo import dpo_loss
from llm.gpus import peak_flops
from llm.model import GPT, GPTConfig
from llm.oracle import DPOOracle, TaskData, numerics, reference_logps
from llm.precision import Precision
from llm.synth import write_suite
from llm.tokenizer import CharTokenizer

SIZES = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "batch": 16},
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "batch": 64},
}


class TimedMixer:
    """Wraps a mixer's update to accumulate the seconds spent in it."""

    def __init__(self, mixer: mixers.Mixer) -> None:
        self.mixer, self.seconds = mixer, 0.0

    def as_mixer(self) -> mixers.Mixer:
        def update(state, scores, counts=None):
            tick = time.perf_counter()
            out = self.mixer.update(state, scores, counts)
            self.seconds += time.perf_counter() - tick
            return out

        return self.mixer._replace(update=update)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-flops", type=float, default=0.0)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    args.peak_flops = peak_flops(args.device, args.peak_flops) or 0.0  # llm.gpus' table
    torch.set_num_threads(args.threads)
    spec = SIZES[args.size]
    device = torch.device(args.device)
    tok = CharTokenizer()
    model = GPT(
        GPTConfig(tok.vocab_size, 64, spec["n_layer"], spec["n_head"], spec["n_embd"]),
        generator=torch.Generator().manual_seed(0),
    ).to(device)
    if args.compile:
        model.forward = torch.compile(model.forward)
    # one policy for the reference log-probs and the policy's losses (llm.precision)
    precision = Precision.parse(device, args.dtype)
    tasks = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in load_manifest(write_suite(tmp)).items():
            pairs = tokenize_pairs(read_preference_jsonl(files.train), tok, max_length=48)
            ref = reference_logps(model, pairs, pad_id=0, average=False, precision=precision)
            key = numerics(model, precision)
            tasks.append(TaskData(name, pairs, ref, np.zeros(len(pairs)), numerics=key))
    z = torch.zeros(1)
    dpo_loss(z, z, z, z, beta=0.1)
    dpo = {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0}
    oracle = DPOOracle(model, tasks, pad_id=0, dpo=dpo, precision=precision)
    flops_per_token = model.flops_per_token(48)
    results = {}
    for name, mixer in (("ama_s", mixers.ama_s(1.0, 0.1)), ("ama_r", mixers.ama_r(1.0))):
        timed = TimedMixer(mixer)
        mixing = Mixing(
            timed.as_mixer(),
            oracle,
            seeds=[0],
            batch_size=spec["batch"],
            apply=mixer.apply,
            score="clipped",
        )
        oracle.reset([0])
        state = mixer.init(len(tasks), seed=[0])
        step_seconds, tokens, examples = [], 0, 0
        for t in range(args.warmup + args.steps):
            if t == args.warmup:
                timed.seconds = 0.0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
            before = oracle.tokens_computed  # tokens the forward passes process
            if device.type == "cuda":
                torch.cuda.synchronize()
            tick = time.perf_counter()
            out = mixing.step(state, t, 1e-4)
            if device.type == "cuda":
                torch.cuda.synchronize()
            state = out.state
            if t >= args.warmup:
                step_seconds.append(time.perf_counter() - tick)
                tokens += oracle.tokens_computed - before
                examples += int(out.counts.sum())
        total = sum(step_seconds)
        row = {
            "median_step_ms": 1e3 * statistics.median(step_seconds),
            "examples_per_s": examples / total,
            "tokens_per_s": tokens / total,
            "mixer_share": timed.seconds / total,
            "pairs_per_step": examples / args.steps,
        }
        if args.peak_flops:
            row["mfu"] = flops_per_token * tokens / total / args.peak_flops
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results[name] = row
    record = {
        "size": args.size,
        "parameters": model.num_parameters(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"llm_{device.type}_{args.size}.json"
    path.write_text(json.dumps(record, indent=2))
    mfu_column = " MFU |" if args.peak_flops else ""
    print(f"| mixer | step (ms) | examples/s | tokens/s | mixer share |{mfu_column}")
    print("|---|---:|---:|---:|---:|" + "---:|" * bool(args.peak_flops))
    for name, row in results.items():
        mfu = f" {row['mfu']:.3f} |" if args.peak_flops else ""
        print(
            f"| {name} | {row['median_step_ms']:.1f} | {row['examples_per_s']:.0f} | "
            f"{row['tokens_per_s']:.0f} | {100 * row['mixer_share']:.2f}% |{mfu}"
        )
    print(f"{record['parameters']:,} parameters; wrote {path}")


if __name__ == "__main__":
    main()
