"""Builders shared by tests/test_llm_trl.py, and its 2-process worker.

Everything is tiny (a 1-layer GPT-2 with n_embd 32, a 300-token BPE tokenizer trained
offline, a few dozen generated pairs per task) so a whole TRL run takes a fraction of a
second on a 2-core CPU.  Run as a script under ``torchrun --standalone --nproc_per_node 2``,
:func:`main` trains AMADPOTrainer on a gloo group and writes what its rank saw.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

SIZES = {"arithmetic": 18, "safety": 12, "format": 18}


def quiet() -> None:
    """Silence TRL's and datasets' progress bars and deprecation chatter."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def task_data(seed: int = 0) -> dict[str, Any]:
    from llm.trl.tiny import synthetic_task_datasets

    return synthetic_task_datasets(SIZES, seed=seed)


def dpo_args(output_dir: str | Path, **overrides: Any) -> Any:
    """A DPOConfig for the tiny runs: CPU, no logging backends, no checkpoints unless asked."""
    from trl import DPOConfig

    settings = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 3,
        "per_device_eval_batch_size": 8,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "activation_checkpointing": False,  # transformers >= 5.25 (gradient_checkpointing warns)
        "seed": 0,
    }
    settings.update(overrides)
    return DPOConfig(**settings)


def parameters(trainer: Any) -> dict[str, Any]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: str, model_path: str) -> None:
    """One rank of the 2-process test: AMA-R (reweight, G = 2) and AMA-S (resample)."""
    import torch
    from transformers import AutoTokenizer

    from amasim.mixers import ama_r, ama_s
    from llm.trl import AMADPOTrainer, concatenate_tasks

    quiet()
    torch.set_num_threads(1)
    data = task_data()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    zeros = {name: [0.0] * len(ds) for name, ds in data.items()}
    report: dict[str, Any] = {}
    for name, mixer, accumulation in (("ama_r", ama_r(2.0), 2), ("ama_s", ama_s(2.0, 0.2), 1)):
        args = dpo_args(
            Path(out) / name, gradient_accumulation_steps=accumulation, ddp_backend="gloo"
        )
        trainer = AMADPOTrainer(
            model_path,
            args=args,
            train_dataset=concatenate_tasks(data),
            processing_class=tokenizer,
            mixer=mixer,
            specialist_losses=zeros,
        )
        trainer.train()
        log = trainer.mixture_log
        digest = sum(float(v.double().sum()) for v in parameters(trainer).values())
        report[name] = {
            "rank": trainer.args.process_index,
            "world": trainer.args.world_size,
            "weights": log["weights"].tolist(),
            "scores": log["scores"].tolist(),
            "counts": log["counts"].tolist(),
            "params": digest,
        }
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    # leave the process group before exit: gloo's threads still running at interpreter
    # shutdown abort the process ("terminate called without an active exception", exit -6)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1], sys.argv[2])
