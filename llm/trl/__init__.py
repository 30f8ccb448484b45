"""AutoMixAlign inside TRL: any amasim mixer sets the task mixture of TRL's DPOTrainer.

Needs the ``trl`` extra (``pip install -e ".[trl]"``).  The lines that change in a TRL DPO
script (the data: a ``tasks.toml`` manifest as the pipeline reads it, or a folder of
``<task>.jsonl``)::

    task_datasets = load_task_datasets("data/tasks.toml", tokenizer, max_length=args.max_length)
    specialist_losses = cache_specialist_losses(model, task_datasets, specialists, args=args,
                                                cache_dir="cache", need_weights=True)
    trainer = AMADPOTrainer(model, args=args, train_dataset=concatenate_tasks(task_datasets),
                            processing_class=tokenizer, mixer=ama_r(1.0),
                            specialist_losses=specialist_losses)
    trainer.train()
    evaluate_and_report(trainer, "data/tasks.toml", specialist_losses, out="runs/ama")

with ``DPOConfig(..., **device_settings())`` placing the run as the pipeline places it
(``need_weights=True`` keeps the specialists' weights for the held-out report).

One idea per module:

* :mod:`llm.trl.trainer` — :class:`AMADPOTrainer` (which DPOTrainer methods it overrides,
  and why, is listed there);
* :mod:`llm.trl.sampler` — :class:`TaskMixtureSampler`, the rows of every step;
* :mod:`llm.trl.losses` — per-pair losses out of TRL's own loss code;
* :mod:`llm.trl.specialists` — :func:`cache_specialist_losses`;
* :mod:`llm.trl.tasks` — :func:`load_task_datasets` (the pipeline's data layout and
  audits), the task column, :func:`concatenate_tasks`, dataset digests;
* :mod:`llm.trl.checkpoint` — the mixture's part of a Trainer checkpoint;
* :mod:`llm.trl.device` — :func:`device_settings`, the device and precision the pipeline
  would pick, as DPOConfig arguments;
* :mod:`llm.trl.report` — :func:`evaluate_and_report`, the held-out split scored by the
  pipeline's evaluator and written as the pipeline's report;
* :mod:`llm.trl.tiny` — tiny offline models and datasets (smoke runs, tests).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = [
    "AMADPOTrainer",
    "TaskMixtureSampler",
    "cache_specialist_losses",
    "SpecialistLosses",
    "concatenate_tasks",
    "load_task_datasets",
    "pair_losses",
    "PairLosses",
    "device_settings",
    "evaluate_and_report",
]

# TRL 1.16 reads `model.is_gradient_checkpointing` around every reference forward
# (trl.models.utils.disable_gradient_checkpointing), a property transformers 5.25 deprecates
# with a FutureWarning per step; nothing a caller passes avoids it.  Only that message is
# silenced; drop this once TRL reads `is_activation_checkpointing`.
warnings.filterwarnings(
    "ignore",
    message="`is_gradient_checkpointing` is deprecated",
    category=FutureWarning,
    module="transformers.modeling_utils",
)

# Imported on first use (PEP 562): the sampler, tasks and checkpoint modules need neither
# TRL nor transformers, and importing those takes seconds.
_HOME = {
    "AMADPOTrainer": "llm.trl.trainer",
    "TaskMixtureSampler": "llm.trl.sampler",
    "cache_specialist_losses": "llm.trl.specialists",
    "SpecialistLosses": "llm.trl.specialists",
    "concatenate_tasks": "llm.trl.tasks",
    "load_task_datasets": "llm.trl.tasks",
    "pair_losses": "llm.trl.losses",
    "PairLosses": "llm.trl.losses",
    "device_settings": "llm.trl.device",
    "evaluate_and_report": "llm.trl.report",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'llm.trl' has no attribute {name!r}")
