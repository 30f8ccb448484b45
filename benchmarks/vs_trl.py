"""Our DPO step against TRL's DPOTrainer: same weights, rows, batch, threads and optimizer.

    pip install -e ".[dev,bench]"          # TRL is a benchmark-only dependency
    python benchmarks/vs_trl.py --quick    # short rows only, < 5 minutes on 2 cores
    python benchmarks/vs_trl.py            # also long-prompt rows (prompt 256, completions 64)

Everything is made here, offline: a word-level tokenizer (``tokenizers``), GPT-2 models from
``GPT2Config`` at ~40k and ~3M parameters (a policy and a separate reference, both saved with
``save_pretrained`` and loaded from disk by both sides), and 512 preference rows of exact
token lengths.  TRL tokenizes the rows' text itself; the script checks that its token ids are
ours.  Both sides precompute the reference log-probs (TRL: ``precompute_ref_log_probs``), run
fp32 on the same threads, 16 pairs a step, AdamW (fused on both sides), gradient-norm clip 1,
no gradient checkpointing.  TRL's out-of-the-box defaults (bf16 autocast, gradient
checkpointing, unfused AdamW) are timed beside it.

Reported: the per-pair DPO loss of both on the same pairs at the same weights (max abs
difference), the median pairs/s of each over interleaved repeats (time between consecutive
step ends, data loading included; each block's first step dropped), and the ratio; also per
CPU second (``time.process_time``), which other processes on a shared machine disturb less.
The last stdout line is a JSON object: ``loss_abs_diff``, ``ratio`` (ours ÷ TRL, ~40k model,
short rows), ``ratio_medium`` (~3M model), their CPU-time twins, and every measurement; it is
also written to ``benchmarks/results/vs_trl.json`` (``vs_trl_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import logging
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from llm.data import TokenizedPairs
from llm.hf import load_local
from llm.oracle import DPOOracle, TaskData, dpo_settings, pair_losses, reference_logps

#: model shapes (GPT2Config fields); parameters counted with the 512-word vocabulary
SIZES = {
    "small": {"n_embd": 32, "n_layer": 2, "n_head": 2},  # ~44k parameters
    "medium": {"n_embd": 192, "n_layer": 6, "n_head": 6},  # ~2.8M parameters
}
#: rows: (prompt tokens, completion tokens including the EOS)
ROWS = {"short": (20, 21), "long": (256, 64)}
VOCAB = 512  # words; 3 special tokens more
BETA = 0.1
PAIRS_PER_STEP = 16
LEARNING_RATE = 1e-4


def make_tokenizer():
    """A word-level tokenizer over the words w0 … w511 plus <pad>, <eos>, <unk>: text of words
    separated by spaces is tokenized one word one token, so the ids of a row are known."""
    import tokenizers
    import transformers

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {f"w{i}": 3 + i for i in range(VOCAB)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def make_models(root: Path, size: str, positions: int) -> tuple[Path, Path]:
    """Policy and reference GPT-2s of ``size`` (seeds 0 and 1), saved under ``root``."""
    import transformers

    tokenizer = make_tokenizer()
    paths = []
    for seed, name in ((0, "policy"), (1, "reference")):
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=positions,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **SIZES[size],
        )
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
        path = root / f"{size}-{positions}-{name}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def make_rows(n: int, prompt: int, completion: int, seed: int = 0) -> tuple[list[dict], list]:
    """``n`` rows of ``prompt`` random words and two completions of ``completion - 1`` words
    (the EOS makes ``completion``): their text, and their ids (prompt, chosen, rejected)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, VOCAB, size=(n, prompt + 2 * (completion - 1)))
    text, ids = [], []
    for row in words:
        cut = prompt + completion - 1
        p, c, r = row[:prompt], row[prompt:cut], row[cut:]
        text.append(
            {
                "prompt": " ".join(f"w{i}" for i in p),
                "chosen": "".join(f" w{i}" for i in c),
                "rejected": "".join(f" w{i}" for i in r),
            }
        )
        eos = [1]
        word_ids = [[3 + int(i) for i in part] for part in (p, c, r)]
        ids.append((word_ids[0], word_ids[1] + eos, word_ids[2] + eos))
    return text, ids


def our_pairs(ids: list) -> TokenizedPairs:
    """The rows as llm.data.TokenizedPairs (no BOS: TRL adds none with this tokenizer)."""
    return TokenizedPairs(
        chosen=[np.array(p + c, dtype=np.int32) for p, c, _ in ids],
        rejected=[np.array(p + r, dtype=np.int32) for p, _, r in ids],
        prompt_lengths=np.array([len(p) for p, _, _ in ids]),
        chosen_truncated=0,
        rejected_truncated=0,
        sources=[f"row:{i}" for i in range(len(ids))],
        fingerprint="vs_trl",
    )


def between(ends: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds between consecutive (perf_counter, process_time) stamps."""
    stamps = np.array(ends)
    return list(np.diff(stamps[:, 0])), list(np.diff(stamps[:, 1]))


# ----------------------------------------------------------------------------- ours
class Ours:
    """Our DPO step: DPOOracle.sample → losses → step, 16 pairs, weights 1/16."""

    def __init__(self, policy: Path, reference: Path, ids: list, *, wrap=None, **options) -> None:
        self.model, _ = load_local(policy)
        ref_model, _ = load_local(reference)
        if wrap is not None:  # e.g. benchmarks/dpo_levers.py's FullLogits
            self.model, ref_model = wrap(self.model), wrap(ref_model)
        self.pairs = our_pairs(ids)
        self.dpo = dpo_settings(BETA, "sigmoid", 0.0)
        layout = options.pop("layout", None)
        ref = reference_logps(ref_model, self.pairs, pad_id=0, average=False, layout=layout)
        self.ref = ref
        task = TaskData("rows", self.pairs, ref, np.zeros(len(self.pairs)))
        self.oracle = DPOOracle(
            self.model, [task], pad_id=0, dpo=self.dpo, grad_clip=1.0, layout=layout, **options
        )
        self.oracle.reset([0])
        self.ids = np.zeros((1, PAIRS_PER_STEP), dtype=np.int64)
        self.weights = np.full((1, PAIRS_PER_STEP), 1.0 / PAIRS_PER_STEP)

    def pair_losses(self, n: int) -> np.ndarray:
        sub = TokenizedPairs(
            self.pairs.chosen[:n],
            self.pairs.rejected[:n],
            self.pairs.prompt_lengths[:n],
            0,
            0,
            self.pairs.sources[:n],
            "sub",
        )
        return pair_losses(self.model, sub, self.ref[:n], pad_id=0, dpo=self.dpo)["loss"]

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds between consecutive step ends (the first end is the origin)."""
        ends = []
        oracle = self.oracle
        for _ in range(steps + 1):
            batch = oracle.sample(self.ids)
            oracle.losses(batch)
            oracle.step(batch, self.weights, LEARNING_RATE)
            ends.append((time.perf_counter(), time.process_time()))
        return between(ends)


# ----------------------------------------------------------------------------- TRL
class TRL:
    """TRL's DPOTrainer on the same rows; ``defaults``: its out-of-the-box settings."""

    def __init__(self, policy: Path, reference: Path, text: list, out: Path, **options) -> None:
        import datasets
        import transformers
        import trl

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(policy)
        model = transformers.AutoModelForCausalLM.from_pretrained(policy)
        ref_model = transformers.AutoModelForCausalLM.from_pretrained(reference)
        defaults = options.pop("defaults", False)
        settings = {
            "output_dir": str(out),
            "per_device_train_batch_size": PAIRS_PER_STEP,
            "learning_rate": LEARNING_RATE,
            "beta": BETA,
            "precompute_ref_log_probs": True,
            "report_to": "none",
            "save_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": 0,
            "max_length": None,
            "dataloader_num_workers": 0,
        }
        if not defaults:  # the settings of our side: fp32, no checkpointing, fused AdamW
            settings |= {
                "bf16": False,
                "activation_checkpointing": False,  # transformers 5.25: not gradient_checkpointing
                "optim": "adamw_torch_fused",
                "lr_scheduler_type": "constant",
                "logging_steps": 10**9,
            }
        settings |= options
        args = trl.DPOConfig(**settings)
        self.trainer = trl.DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=datasets.Dataset.from_list(text),
            processing_class=self.tokenizer,
        )
        self.trainer.remove_callback(transformers.PrinterCallback)  # no log lines on stdout

    def token_ids(self, n: int) -> list:
        data = self.trainer.train_dataset
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        return [tuple(data[i][k] for k in keys) for i in range(n)]

    @torch.no_grad()
    def pair_losses(self, n: int) -> np.ndarray:
        trainer, model = self.trainer, self.trainer.model
        was = model.training
        model.eval()
        out = []
        for i in range(n):
            inputs = trainer.data_collator([trainer.train_dataset[i]])
            out.append(float(trainer.compute_loss(model, inputs)))
        model.train(was)
        return np.array(out)

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        import transformers

        ends: list[tuple[float, float]] = []

        class Clock(transformers.TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append((time.perf_counter(), time.process_time()))

        trainer = self.trainer
        trainer.args.max_steps = steps + 1
        trainer.add_callback(Clock)
        try:
            trainer.train()
        finally:
            trainer.remove_callback(Clock)
        return between(ends)


# ----------------------------------------------------------------------------- main
def compare(size: str, rows: str, args, root: Path) -> dict:
    prompt, completion = ROWS[rows]
    positions = prompt + completion
    policy, reference = make_models(root, size, positions)
    text, ids = make_rows(args.rows, prompt, completion)
    tick = time.perf_counter()
    trl_side = TRL(policy, reference, text, root / f"trl-{size}-{rows}")
    setup_trl = time.perf_counter() - tick
    if trl_side.token_ids(len(ids)) != ids:
        raise RuntimeError("TRL tokenized the rows differently: the comparison would not hold")
    trl_defaults = TRL(policy, reference, text, root / f"trl-defaults-{size}-{rows}", defaults=True)
    tick = time.perf_counter()
    ours = Ours(policy, reference, ids)
    setup_ours = time.perf_counter() - tick
    n_check = min(args.check_pairs, len(ids))
    loss_ours, loss_trl = ours.pair_losses(n_check), trl_side.pair_losses(n_check)
    sides = {"ours": ours, "trl": trl_side, "trl_defaults": trl_defaults}
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            # TRL's defaults (gradient checkpointing, bf16 autocast on a CPU) are slow: fewer
            steps = max(2, args.steps // 2) if name == "trl_defaults" else args.steps
            w, c = sides[name].run(steps)
            wall[name] += w
            cpu[name] += c
    pairs_per_s = {k: PAIRS_PER_STEP / statistics.median(v) for k, v in wall.items()}
    pairs_per_cpu_s = {k: PAIRS_PER_STEP / statistics.median(v) for k, v in cpu.items()}
    n_params = sum(p.numel() for p in ours.model.parameters())
    result = {
        "size": size,
        "rows": rows,
        "parameters": n_params,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "loss_abs_diff": float(np.abs(loss_ours - loss_trl).max()),
        "loss_ours_mean": float(loss_ours.mean()),
        "loss_trl_mean": float(loss_trl.mean()),
        "pairs_per_s": pairs_per_s,
        "pairs_per_cpu_s": pairs_per_cpu_s,
        "ratio": pairs_per_s["ours"] / pairs_per_s["trl"],
        "ratio_cpu": pairs_per_cpu_s["ours"] / pairs_per_cpu_s["trl"],
        "ratio_vs_trl_defaults": pairs_per_s["ours"] / pairs_per_s["trl_defaults"],
        "steps_timed": {k: len(v) for k, v in wall.items()},
        "setup_s": {"ours": setup_ours, "trl": setup_trl},
    }
    print(
        f"{size:>6} ({n_params:,} params), {rows} rows {prompt}+{completion}: "
        f"loss |Δ| {result['loss_abs_diff']:.1e} (mean {result['loss_ours_mean']:.7f} vs "
        f"{result['loss_trl_mean']:.7f}); pairs/s ours {pairs_per_s['ours']:.1f}, "
        f"TRL {pairs_per_s['trl']:.1f} (defaults {pairs_per_s['trl_defaults']:.1f}); "
        f"ratio {result['ratio']:.2f}× (CPU time: {result['ratio_cpu']:.2f}×)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rows only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved blocks per side")
    parser.add_argument("--check-pairs", type=int, default=64, help="pairs in the loss check")
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.quick else 8)
    args.repeats = args.repeats or (2 if args.quick else 4)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    cases = [("small", "short"), ("medium", "short")]
    if not args.quick:
        cases += [("small", "long"), ("medium", "long")]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tmp) / "datasets"))
        results = [compare(size, rows, args, Path(tmp)) for size, rows in cases]
    by = {(r["size"], r["rows"]): r for r in results}
    import trl

    record = {
        "loss_abs_diff": max(r["loss_abs_diff"] for r in results),
        "ratio": by["small", "short"]["ratio"],
        "ratio_medium": by["medium", "short"]["ratio"],
        "ratio_cpu": by["small", "short"]["ratio_cpu"],
        "ratio_medium_cpu": by["medium", "short"]["ratio_cpu"],
        "quick": args.quick,
        "threads": args.threads,
        "pairs_per_step": PAIRS_PER_STEP,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    if not args.quick:
        record["ratio_long"] = by["small", "long"]["ratio"]
        record["ratio_medium_long"] = by["medium", "long"]["ratio"]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = "vs_trl_quick.json" if args.quick else "vs_trl.json"
    (out / name).write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
