"""Each speed lever of our DPO step, measured on its own: ms per step, with and without it.

    python benchmarks/dpo_levers.py [--sizes small medium] [--rows short] [--compile]

The models and rows of ``benchmarks/vs_trl.py`` (GPT-2 from ``GPT2Config``, ~40k and ~3M
parameters; prompt 20 + completions 21 tokens, or 256 + 64), 16 pairs a step, fp32, the step
``DPOOracle.sample → losses → step``.  Configurations:

* ``before``: the step as it was — full logits (the model's own head over every position),
  plain layout padded to the batch's longest row, the for-loop AdamW;
* ``+head`` / ``+prefix`` / ``+bucket`` / ``+fused``: the levers added one at a time;
* ``default``: all of them (the oracle's defaults), and ``default -X``: all but lever X,
  so each lever's effect is read both ways;
* ``accumulate``: 2 micro-batches a step, ``recompute`` (an extra forward) vs ``by_task``;
* ``compile`` (with ``--compile``): ``torch.compile`` on the model's forward.

Interleaved repeats; the median over steps of the CPU time (``time.process_time``: what
the step costs, robust to other processes on a shared machine) and of the wall time.
Writes ``benchmarks/results/dpo_levers.json`` (or ``--out``); the last stdout line is that JSON.
(``default -head`` also loses prefix sharing: a model scored through its full logits gives no
hidden states, so :func:`llm.dpo.resolve_layout` falls back to the plain layout.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Waiting OpenMP threads sleep instead of spinning (before torch starts its thread pool): on a
# shared machine a spinning 2-thread team stalls at every op while another process holds a
# core — steps ran ~10× slower, and the ratio measured op counts, not implementations. Both
# sides run in this one process, under the same policy; set the variable to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vs_trl import PAIRS_PER_STEP, ROWS, Ours, make_models, make_rows

from llm.packing import Layout


class FullLogits(torch.nn.Module):
    """A model seen without its ``output_head``: scored through its full logits (the path
    before the chunked head)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.block_size = model.block_size  # rows are never padded past it

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask)


LEVERS = {"head": True, "prefix": True, "bucket": True, "fused": True}


def options(head: bool, prefix: bool, bucket: bool, fused: bool) -> dict:
    return {
        "full_logits": not head,
        "layout": Layout(prefix_sharing=prefix, bucket=16 if bucket else 0),
        "adamw": "fused" if fused else "loop",
    }


def configurations(compile_model: bool) -> dict[str, dict]:
    out = {"before": options(False, False, False, False)}
    on: dict[str, bool] = {k: False for k in LEVERS}
    for lever in LEVERS:  # cumulative, in the order of LEVERS
        on[lever] = True
        out["+" + lever] = options(**on)
    out["default"] = options(**LEVERS)
    for lever in LEVERS:
        out["default -" + lever] = options(**(LEVERS | {lever: False}))
    out["accumulate recompute"] = {"micro_batch_size": PAIRS_PER_STEP // 2}
    out["accumulate by_task"] = {"micro_batch_size": PAIRS_PER_STEP // 2, "accumulate": "by_task"}
    if compile_model:
        out["compile"] = {"compile": True}
    return out


def build(policy: Path, reference: Path, ids: list, config: dict) -> Ours:
    config = dict(config)
    full = config.pop("full_logits", False)
    compile_model = config.pop("compile", False)
    ours = Ours(policy, reference, ids, wrap=FullLogits if full else None, **config)
    if compile_model:
        ours.model.forward = torch.compile(ours.model.forward)
    return ours


def timed_steps(ours: Ours, steps: int) -> tuple[list[float], list[float]]:
    cpu, wall = [], []
    oracle = ours.oracle
    for _ in range(steps + 1):  # the first step of a block is not timed
        c, w = time.process_time(), time.perf_counter()
        batch = oracle.sample(ours.ids)
        oracle.losses(batch)
        oracle.step(batch, ours.weights, 1e-4)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return cpu[1:], wall[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "medium"])
    parser.add_argument("--rows", nargs="+", default=["short"], choices=sorted(ROWS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file (default: results/dpo_levers.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for rows in args.rows:
                prompt, completion = ROWS[rows]
                policy, reference = make_models(Path(tmp), size, prompt + completion)
                _, ids = make_rows(128, prompt, completion)
                configs = configurations(args.compile)
                built = {name: build(policy, reference, ids, c) for name, c in configs.items()}
                cpu: dict[str, list[float]] = {name: [] for name in built}
                wall: dict[str, list[float]] = {name: [] for name in built}
                for r in range(args.repeats):
                    names = list(built) if r % 2 == 0 else list(reversed(built))
                    for name in names:
                        c, w = timed_steps(built[name], args.steps)
                        cpu[name] += c
                        wall[name] += w
                table = {
                    name: {
                        "cpu_ms": 1e3 * statistics.median(cpu[name]),
                        "wall_ms": 1e3 * statistics.median(wall[name]),
                        "pairs_per_cpu_s": PAIRS_PER_STEP / statistics.median(cpu[name]),
                    }
                    for name in built
                }
                base = table["before"]["cpu_ms"]
                shape = f"{rows} rows ({prompt}+{completion}), {args.threads} threads"
                print(f"\n{size} model, {shape}")
                print("| configuration | CPU ms/step | wall ms/step | speed-up vs before (CPU) |")
                print("|---|---:|---:|---:|")
                for name, row in table.items():
                    print(
                        f"| {name} | {row['cpu_ms']:.1f} | {row['wall_ms']:.1f} | "
                        f"{base / row['cpu_ms']:.2f}× |",
                        flush=True,
                    )
                results.append({"size": size, "rows": rows, "table": table})
    record = {
        "threads": args.threads,
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "pairs_per_step": PAIRS_PER_STEP,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "dpo_levers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
