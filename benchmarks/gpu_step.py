"""One AutoMixAlign DPO step of a ~0.5B-parameter GPT on a GPU: tokens/s, MFU, memory, mixer;
and the self-excess check at that size.

    PYTHONPATH=. python benchmarks/gpu_step.py --out step.json           # CUDA, bf16
    PYTHONPATH=. python benchmarks/gpu_step.py --excess --out excess.json
    PYTHONPATH=. python benchmarks/gpu_step.py --smoke --out step.json   # a CPU, tiny

Run by ``benchmarks/gpu_check.sh``.  The built-in GPT (:mod:`llm.model`) at 24 layers of
width 1280 (20 heads) with a 50,257-token vocabulary (~0.54B parameters), pairs of 1,024
tokens per sequence (prompt 512, completions 512), bf16 autocast, the reference log-probs
precomputed under the same precision and layout; then steps of AMA-S (resampling) through
:class:`llm.oracle.DPOOracle`: draw the batch from the mixture, ``losses``, the mixer's
update, ``step``.

**Step** (default): the configurations (layout × compile) run eager first and compiled last,
each caught on its own (a failure is recorded, the next one runs) and the JSON rewritten
after each, so a compile failure loses no number; between configurations the models are
collected (``gc.collect()``) before the CUDA cache is emptied, so one configuration's peak
memory never holds another's tensors.  Reported per configuration: median step time,
pairs/s, tokens/s (tokens the forward passes process), MFU against the device's dense bf16
peak (:mod:`llm.gpus`), ``max_memory_allocated`` and ``max_memory_reserved``, the cost
plan's memory estimate for the same step (:mod:`llm.memory`) and the mixer update's share
of a step.  MFU counts a step's model FLOPs as the cost plan does (:func:`llm.costs.
train_flops`: the forward and backward matmuls, attention and the chunked head's
recomputation), divided by step time and by the peak.

**Self-excess** (``--excess``): a model scored against its own cached numbers, in bf16 at
this size — reference log-probs and specialist losses from the model itself under the run's
precision policy, then the first training batch: max |excess|, max |clipped excess| and
max |loss − log 2| (all 0 when the policy's numbers are made alike; the training batch's
rows differ from the cached ones', so a GPU's kernels may leave a last-bit residue).

The last stdout line is the JSON (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from amasim import mixers
from amasim.scores import example_scores, task_means
from llm.costs import ModelShape, PairCosts, Tokens, train_flops
from llm.data import TokenizedPairs
from llm.gpus import peak_flops
from llm.integrity import write_text_atomic
from llm.memory import activation_bytes, state_bytes
from llm.model import GPT, GPTConfig
from llm.oracle import DPOOracle, TaskData, dpo_settings, numerics, pair_losses, reference_logps
from llm.packing import Layout
from llm.precision import Precision

SHAPES = {
    "full": {"n_layer": 24, "n_embd": 1280, "n_head": 20, "vocab": 50257, "seq": 1024},
    "smoke": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab": 512, "seq": 64},
}
DPO = dpo_settings(0.1, "sigmoid", 0.0)


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


def _model(shape: dict, device: torch.device) -> GPT:
    config = GPTConfig(
        vocab_size=shape["vocab"],
        block_size=shape["seq"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
    )
    return GPT(config, generator=torch.Generator().manual_seed(0)).to(device)


def _tasks(model: GPT, args, precision: Precision, layout: Layout, own: bool) -> list[TaskData]:
    """Two tasks of random pairs with the model's own reference log-probs; ``own``: its own
    per-pair losses as the specialist's (else a constant)."""
    shape = SHAPES["smoke" if args.smoke else "full"]
    prompt = completion = shape["seq"] // 2
    out = []
    for k in range(2):
        pairs = random_pairs(args.pool, prompt, completion, shape["vocab"], seed=k)
        kw = {"pad_id": 0, "precision": precision, "layout": layout, "batch_size": args.pairs}
        ref = reference_logps(model, pairs, average=False, **kw)
        spec = pair_losses(model, pairs, ref, dpo=DPO, **kw)["loss"] if own else None
        spec = spec if spec is not None else np.full(len(pairs), 0.69)
        out.append(TaskData(f"task{k}", pairs, ref, spec, numerics(model, precision, layout)))
    return out


def _cost(model: GPT, tasks: list[TaskData], layout: Layout, index: np.ndarray) -> Tokens:
    """The tokens of one step's batch (rows of the merged task table), as the plan counts."""
    costs = [PairCosts.of(t.pairs, layout, 0, model.config.block_size) for t in tasks]
    sizes = np.cumsum([0, *(len(c) for c in costs)])
    total = Tokens()
    for i, c in enumerate(costs):
        mine = index[(index >= sizes[i]) & (index < sizes[i + 1])] - sizes[i]
        if mine.size:
            total += c.batch(mine)
    return total


def _predicted_memory(model: GPT, t: Tokens, layout: Layout, pairs: int) -> int:
    """The cost plan's memory of this step (:mod:`llm.memory`): the training state and the
    activations of the batch ``t``."""
    shape = ModelShape.of(model, model.output_head(), model.config.n_head)
    rows = pairs if layout.prefix_sharing else 2 * pairs
    state = state_bytes(shape.parameters, shape.parameters, 1)["full"]
    return state + activation_bytes(
        layers=shape.layers,
        width=shape.width,
        tokens=t.computed,
        linear_io=shape.linear_io,
        heads=shape.heads,
        rows=rows,
        row_width=t.computed // rows,
        scored=t.scored,
        vocab=shape.vocab,
        compute_bytes=2,
    )


def _steps(oracle: DPOOracle, args, device: torch.device):
    """Warm-up and timed AMA-S steps: (step seconds, mixer seconds, warm-up seconds,
    tokens computed, the last batch's rows, the last losses)."""
    mixer = mixers.ama_s(1.0, 0.1)
    state = mixer.init(2, seed=[0])
    oracle.reset([0])
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step_s, mixer_s, warmup, tokens = [], [], 0.0, 0
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
        _, state = mixer.update(state, *task_means(values, task_ids, 2))
        m_seconds = time.perf_counter() - m_tick
        oracle.step(batch, np.full((1, args.pairs), 1.0 / args.pairs), 1e-6)
        sync()
        seconds = time.perf_counter() - tick
        if t < args.warmup:
            warmup += seconds
            continue
        step_s.append(seconds)
        mixer_s.append(m_seconds)
        tokens += oracle.tokens_computed - before
    return step_s, mixer_s, warmup, tokens, np.asarray(batch.data[0]), losses


def run(config: dict, args, device: torch.device) -> dict:
    shape = SHAPES["smoke" if args.smoke else "full"]
    layout = Layout(prefix_sharing=config["prefix"], bucket=16)
    precision = Precision(device, torch.bfloat16)
    tick = time.perf_counter()
    model = _model(shape, device)
    tasks = _tasks(model, args, precision, layout, own=False)
    setup = time.perf_counter() - tick
    oracle = DPOOracle(model, tasks, pad_id=0, dpo=DPO, precision=precision, layout=layout)
    if config["compile"]:
        model.forward = torch.compile(model.forward)
    step_s, mixer_s, warmup, tokens, index, losses = _steps(oracle, args, device)
    batch = _cost(model, tasks, layout, index)  # the last step's batch, as the plan counts it
    flops = train_flops(
        ModelShape.of(model, model.output_head(), shape["n_head"]), batch, base_trains=True
    )
    peak = peak_flops(device, args.peak_flops)
    median, total = statistics.median(step_s), sum(step_s)
    row = {
        "layout": "prefix" if config["prefix"] else "plain",
        "compile": config["compile"],
        "status": "ok",
        "error": None,
        "median_step_s": median,
        "pairs_per_s": args.pairs * len(step_s) / total,
        "tokens_per_s": tokens / total,
        "tokens_per_step": tokens / len(step_s),
        "model_flops_per_step": flops,
        "mfu": flops / median / peak if peak else None,
        "mixer_share": sum(mixer_s) / total,
        "warmup_s": warmup,
        "setup_s": setup,
        "last_loss": float(np.mean(losses)),
        "max_memory_allocated": None,
        "max_memory_reserved": None,
        "predicted_memory_bytes": _predicted_memory(model, batch, layout, args.pairs),
    }
    if device.type == "cuda":
        row["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
        row["max_memory_reserved"] = torch.cuda.max_memory_reserved(device)
    mfu = "n/a (no peak known)" if row["mfu"] is None else f"{row['mfu']:.3f}"
    print(
        f"{row['layout']:>6} layout, compile={config['compile']}: {1e3 * median:.0f} ms/step, "
        f"{row['pairs_per_s']:.1f} pairs/s, {row['tokens_per_s']:.0f} tokens/s, MFU {mfu}, "
        f"mixer {100 * row['mixer_share']:.3f}% of a step",
        flush=True,
    )
    return row


def _release(device: torch.device) -> None:
    """Drop the last configuration's tensors before the next one's peak memory is read:
    collect the cycles (a compiled model holds its original) and empty the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def excess(args, device: torch.device) -> dict:
    """The self-excess check (module docstring)."""
    shape = SHAPES["smoke" if args.smoke else "full"]
    layout, precision = Layout(prefix_sharing=True, bucket=16), Precision(device, torch.bfloat16)
    model = _model(shape, device)
    tasks = _tasks(model, args, precision, layout, own=True)
    oracle = DPOOracle(
        model,
        tasks,
        pad_id=0,
        dpo=DPO,
        precision=precision,
        layout=layout,
        eval_batch_size=args.pairs,
    )
    oracle.reset([0])
    task_ids = np.array([[i % 2 for i in range(args.pairs)]])
    batch = oracle.sample(task_ids)
    losses = oracle.losses(batch)
    gap, _ = example_scores("excess", losses, batch.reference_losses)
    clipped, _ = example_scores("clipped", losses, batch.reference_losses)
    held = max(abs(row["excess"]) for row in oracle.evaluate_tasks().values())
    return {
        "shape": shape,
        "dtype": "bfloat16",
        "pairs": args.pairs,
        "max_abs_excess": float(np.abs(gap).max()),
        "max_abs_clipped_excess": float(np.abs(clipped).max()),
        "first_loss_minus_log2": float(np.abs(losses - math.log(2.0)).max()),
        "held_out_max_abs_excess": float(held),
    }


def _record(args, device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "shape": SHAPES["smoke" if args.smoke else "full"],
        "pairs_per_step": args.pairs,
        "peak_flops": peak_flops(device, args.peak_flops),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }


def _write(record: dict, out: Path | None) -> None:
    if out is not None:  # atomic: a stage killed mid-write keeps the rows written before
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(record, indent=2), kind="report")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    parser.add_argument("--excess", action="store_true", help="the self-excess check instead")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step")
    parser.add_argument("--pool", type=int, default=None, help="pairs per task")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--peak-flops", type=float, default=0.0)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="layout:compile items, run in order (default prefix:0 plain:0 prefix:1: eager "
        "first, compiled last)",
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args()
    args.pairs = args.pairs or (4 if args.smoke else 8)
    args.pool = args.pool or (16 if args.smoke else 32)
    args.steps = args.steps or (3 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    return args


def main() -> None:
    args = _parse()
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or on a GPU machine")
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    record = _record(args, device)
    if args.excess:
        record = {k: v for k, v in record.items() if k not in ("results", "pairs_per_step")}
        record |= excess(args, device)
        _write(record, args.out)
        print(json.dumps(record))
        return
    items = args.configs or (
        ["prefix:0", "plain:0"] if args.smoke else ["prefix:0", "plain:0", "prefix:1"]
    )
    for item in items:
        layout, compiled = item.split(":")
        config = {"prefix": layout == "prefix", "compile": compiled == "1"}
        try:
            row = run(config, args, device)
        except Exception as err:  # each configuration on its own: the next one still runs
            traceback.print_exc()
            row = {"layout": layout, "compile": config["compile"], "status": "failed"}
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        record["results"].append(row)
        _write(record, args.out)  # after each configuration: a later failure loses nothing
        _release(device)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
