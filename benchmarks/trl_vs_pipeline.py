"""AMA-R and AMA-S on the built-in suite, trained by ``llm.trl.AMADPOTrainer`` and by our own
pipeline: same base model, same data, same specialists, same budget, same evaluator.

    python benchmarks/trl_vs_pipeline.py --out runs/trl-vs-pipeline [--quick]

Both sides start from one local tiny GPT-2 (a BPE tokenizer and a ``GPT2Config`` model made
here), tokenise with TRL's rules (``tokenization = "trl"`` on our side), use the same
specialists (ours, trained once by the pipeline and saved as Hugging Face folders for TRL),
the same β, learning rate (constant, AdamW, gradient clipping 1.0), mixer and step size, and
the same example budget (AMA-R: k·B pairs a step, AMA-S: B).  Every generalist is scored by
the same code on the held-out pairs: DPO loss against the cached reference log-probs, clipped
excess over the specialists' cached losses, reward accuracy.  The last line of stdout is a
JSON object with both sides' worst-task excess per method (mean and std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

TASK_SIZES = {"arithmetic": (120, 60), "safety": (60, 60), "format": (360, 60)}


def write_suite(folder: Path) -> tuple[dict, dict]:
    """JSONL files and a manifest for the pipeline; (train, eval) datasets for TRL."""
    from datasets import Dataset

    from llm.synth import generate_task

    folder.mkdir(parents=True, exist_ok=True)
    train, held_out, manifest = {}, {}, ["[tasks]"]
    for name, (n_train, n_eval) in TASK_SIZES.items():
        rows = dict(zip(("train", "eval"), generate_task(name, n_train, n_eval, seed=0)))
        for split, examples in rows.items():
            with (folder / f"{name}.{split}.jsonl").open("w") as fh:
                for p, c, r in examples:
                    fh.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
        manifest.append(f'{name} = {{ train = "{name}.train.jsonl", eval = "{name}.eval.jsonl" }}')
        columns = {
            k: [row[i] for row in rows["train"]]
            for i, k in enumerate(("prompt", "chosen", "rejected"))
        }
        train[name] = Dataset.from_dict(columns)
        columns = {
            k: [row[i] for row in rows["eval"]]
            for i, k in enumerate(("prompt", "chosen", "rejected"))
        }
        held_out[name] = Dataset.from_dict(columns)
    (folder / "tasks.toml").write_text("\n".join(manifest) + "\n")
    return train, held_out


def pipeline_config(out: Path, model: str, manifest: Path, seeds: list[int], budget: int):
    from llm.config import (
        Config,
        DataSection,
        EvalSection,
        MixSection,
        ModelSection,
        RunSection,
        StageSection,
        check_config,
    )

    stage = {"batch_size": 8, "learning_rate": 5e-4, "checkpoint_every": 1000, "log_every": 50}
    cfg = Config(
        run=RunSection(out=str(out), seeds=tuple(seeds), methods=("ama-r", "ama-s"), threads=2),
        data=DataSection(manifest=str(manifest), max_length=48, tokenization="trl"),
        model=ModelSection(kind="hf", path=model),
        specialist=StageSection(steps=150, **stage),
        generalist=StageSection(**stage),
        mix=MixSection(examples=budget, step_size=1.0, smoothing=0.1),
        eval=EvalSection(generate=2, max_new_tokens=4, batch_size=64),
    )
    return check_config(cfg, "trl_vs_pipeline")


def export_specialists(specs, model_dir: str, folder: Path) -> dict[str, str]:
    """Our specialists' final weights as Hugging Face folders TRL loads."""
    from llm.dcp import read_checkpoint
    from llm.hf import load_local

    paths = {}
    for name, spec in specs.items():
        wrapper, tokenizer = load_local(model_dir)
        saved = read_checkpoint(spec.checkpoint, owner=spec.key)
        wrapper.load_state_dict(saved["oracle"]["policy"])
        target = folder / name
        wrapper.model.save_pretrained(target)
        tokenizer.tokenizer.save_pretrained(target)
        paths[name] = str(target)
    return paths


def score(model, tasks, scores, specs, pad_id: int, dpo: dict) -> dict:
    """Held-out metrics of ``model`` with the pipeline's own code and cached numbers."""
    from llm.oracle import pair_losses

    rows = {}
    for name, task in tasks.items():
        res = pair_losses(model, task.eval, scores[name].eval, pad_id=pad_id, dpo=dpo)
        excess = res["loss"] - specs[name].eval_losses
        rows[name] = {
            "loss": float(res["loss"].mean()),
            "clipped": float(np.maximum(excess, 0.0).mean()),
            "accuracy": float((res["margin"] > 0).mean()),
        }
    return {"tasks": rows, "worst_task_excess": max(r["clipped"] for r in rows.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="2 seeds, a quarter of the budget")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    out = args.out
    seeds = [0, 1] if args.quick else [0, 1, 2]
    budget = 1_440 if args.quick else 5_760

    from trl import DPOConfig

    from amasim import mixers
    from llm.hf import load_local
    from llm.pipeline import run_pipeline
    from llm.trl import AMADPOTrainer, cache_specialist_losses, concatenate_tasks
    from llm.trl.tiny import dataset_texts, write_tiny_model

    train, _ = write_suite(out / "data")
    model_dir = write_tiny_model(
        out / "base", dataset_texts(train), n_layer=2, n_embd=64, n_positions=64
    )
    cfg = pipeline_config(out / "pipeline", model_dir, out / "data" / "tasks.toml", seeds, budget)
    ours = run_pipeline(cfg, progress=False)

    # The stages again (all cached now): the tasks with their reference and specialist numbers
    from llm.context import open_run
    from llm.pipeline import prepare
    from llm.stages.specialists import specialists

    with open_run(cfg, progress=False) as ctx:
        tasks, ref, scores = prepare(ctx)
        specs = specialists(ctx, ref, tasks, scores, need_weights=True)
        tokenizer, dpo = ctx.tokenizer, ctx.dpo
    spec_dirs = export_specialists(specs, model_dir, out / "specialists-hf")

    k, batch = len(train), cfg.generalist.batch_size
    common = dict(
        learning_rate=cfg.generalist.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        beta=cfg.dpo.beta,
        max_length=cfg.data.max_length,
        logging_steps=1_000_000,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_eval_batch_size=64,
    )
    losses = cache_specialist_losses(
        model_dir,
        train,
        spec_dirs,
        args=DPOConfig(output_dir=str(out / "trl" / "scoring"), **common),
        cache_dir=out / "trl" / "cache",
    )
    theirs: dict[str, list] = {}
    for method in ("ama-r", "ama-s"):
        reweight = method == "ama-r"
        steps = budget // (k * batch if reweight else batch)
        for seed in seeds:
            config = DPOConfig(
                output_dir=str(out / "trl" / f"{method}-{seed}"),
                per_device_train_batch_size=k * batch if reweight else batch,
                max_steps=steps,
                seed=seed,
                **common,
            )
            mixer = mixers.ama_r(1.0) if reweight else mixers.ama_s(1.0, 0.1)
            trainer = AMADPOTrainer(
                model_dir,
                args=config,
                train_dataset=concatenate_tasks(train),
                mixer=mixer,
                specialist_losses=losses,
            )
            trainer.train()
            folder = out / "trl" / f"{method}-{seed}" / "final"
            trainer.model.save_pretrained(folder)
            trainer.processing_class.save_pretrained(folder)
            trained, _ = load_local(folder)
            record = score(trained, tasks, scores, specs, tokenizer.pad_id, dpo)
            record |= {"seed": seed, "steps": steps}
            theirs.setdefault(method, []).append(record)

    summary = {"seeds": seeds, "budget": budget, "seconds": time.perf_counter() - start}
    for side, runs in (("pipeline", ours["runs"]), ("trl", theirs)):
        for method, records in runs.items():
            worst = np.array([r["worst_task_excess"] for r in records])
            summary[f"{side}/{method}"] = {
                "mean": float(worst.mean()),
                "std": float(worst.std(ddof=1)),
            }
    (out / "trl_vs_pipeline.json").write_text(
        json.dumps({"summary": summary, "trl": theirs}, indent=2)
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
