"""Peak memory of one DPO step at a real vocabulary: the chunked LM head vs the full logits.

    python benchmarks/llm_memory.py

A GPT-2-shaped model (``GPT2Config``: vocabulary 50,257, 1,024 positions, 2 layers of width
64: the vocabulary is real, the body small), 8 pairs of 512-token sequences (prompt 256,
completions 256), float32 on the CPU, reference log-probs given.  One DPO step = forward +
backward of the batch's DPO loss, scored two ways, each in a fresh process:

* ``ours``: :func:`llm.dpo.packed_logps` (default layout: prefix sharing, chunked LM head on
  the completion tokens only);
* ``full_logits``: the model's own head over every position, then the log-softmax of the
  completion tokens (:func:`llm.dpo.concatenated_forward`, the step before this change).

Peak memory is the process's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` once the model and batch exist) above the resident set at that
moment.  ``naive_logits_bytes`` is what the float32 logits of chosen and rejected alone
take: 2 · 8 · 512 · 50,257 · 4 bytes.  The last stdout line is a JSON object with
``peak_bytes`` (ours), ``naive_logits_bytes`` and ``peak_bytes_full_logits``; it is also
written to ``benchmarks/results/llm_memory.json``.  Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

VOCAB, POSITIONS, PAIRS, SEQ, PROMPT = 50257, 1024, 8, 512, 256
SHAPE = {"n_embd": 64, "n_layer": 2, "n_head": 2}


def _status(field: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux ≥ 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Sampler:
    """Where VmHWM cannot be reset: the largest VmRSS seen every millisecond until stop()."""

    def __init__(self) -> None:
        import threading

        self.peak, self.running = _status("VmRSS"), True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(0.001)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return max(self.peak, _status("VmRSS"))


def worker(mode: str, threads: int) -> dict:
    import numpy as np
    import torch
    import transformers

    from llm.data import TokenizedPairs, collate_pairs
    from llm.dpo import (
        concatenated_forward,
        dpo_loss,
        max_length_of,
        packed_logps,
        resolve_layout,
    )
    from llm.hf import HFCausalLM
    from llm.packing import Layout, pack_pairs
    from llm.precision import Precision

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, **SHAPE)
    model = HFCausalLM(transformers.GPT2LMHeadModel(config).eval())
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, VOCAB, size=(PAIRS, PROMPT))
    seqs = [rng.integers(0, VOCAB, size=(PAIRS, SEQ - PROMPT)) for _ in range(2)]
    pairs = TokenizedPairs(
        chosen=[np.concatenate([p, c]).astype(np.int32) for p, c in zip(prompts, seqs[0])],
        rejected=[np.concatenate([p, r]).astype(np.int32) for p, r in zip(prompts, seqs[1])],
        prompt_lengths=np.full(PAIRS, PROMPT),
        chosen_truncated=0,
        rejected_truncated=0,
        sources=[str(i) for i in range(PAIRS)],
        fingerprint="memory",
    )
    index = np.arange(PAIRS)
    ref = torch.full((PAIRS,), -float(SEQ - PROMPT) * np.log(VOCAB))  # a uniform reference
    if mode == "ours":
        layout = resolve_layout(model, Layout())  # runs the model's one-time probe
        batch = pack_pairs(pairs, index, 0, layout, max_length=max_length_of(model))
    else:
        batch = collate_pairs(pairs, index, 0)
    gc.collect()
    reset = _reset_peak()
    baseline = _status("VmRSS")
    sampler = None if reset else _Sampler()
    tick = time.perf_counter()
    if mode == "ours":
        chosen, rejected = packed_logps(model, batch, Precision())
    else:
        chosen, rejected = concatenated_forward(model, batch)
    loss = dpo_loss(chosen, rejected, ref, ref, beta=0.1).losses.mean()
    loss.backward()
    seconds = time.perf_counter() - tick
    peak = _status("VmHWM") if reset else sampler.stop()
    return {
        "mode": mode,
        "peak_bytes": peak - baseline,
        "baseline_rss_bytes": baseline,
        "hwm_reset": reset,
        "seconds": seconds,
        "loss": float(loss),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "full_logits"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads)))
        return
    runs = {}
    for mode in ("ours", "full_logits"):
        out = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    naive = 2 * PAIRS * SEQ * VOCAB * 4
    record = {
        "peak_bytes": runs["ours"]["peak_bytes"],
        "naive_logits_bytes": naive,
        "peak_bytes_full_logits": runs["full_logits"]["peak_bytes"],
        "ratio_to_naive": runs["ours"]["peak_bytes"] / naive,
        "loss_abs_diff": abs(runs["ours"]["loss"] - runs["full_logits"]["loss"]),
        "model": {"vocab_size": VOCAB, **SHAPE, "parameters": runs["ours"]["parameters"]},
        "batch": {"pairs": PAIRS, "tokens_per_sequence": SEQ, "prompt_tokens": PROMPT},
        "runs": runs,
        "threads": args.threads,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    mib = 2**20
    print(
        f"peak above baseline: ours {record['peak_bytes'] / mib:.0f} MiB, full logits "
        f"{record['peak_bytes_full_logits'] / mib:.0f} MiB; the fp32 logits alone "
        f"{naive / mib:.0f} MiB (ours = {record['ratio_to_naive']:.2f} of that)"
    )
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "llm_memory.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
