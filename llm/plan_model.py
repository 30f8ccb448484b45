"""The cost plan's view of a run's model and data (:mod:`llm.plan`): the model built on the
``meta`` device (its shape, no weights), the tasks read and tokenised as the run reads them.

>>> import tempfile, pathlib
>>> from llm.config import Config
>>> model, tasks, data_bytes = planned_model(Config(), pathlib.Path(tempfile.mkdtemp()))
>>> model.shape.layers, model.layout.prefix_sharing, sorted(tasks), data_bytes > 0
(2, True, ['arithmetic', 'format', 'safety'], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm import lora
from llm.config import Config
from llm.costs import ModelShape
from llm.dpo import max_length_of, resolve_layout
from llm.packing import Layout
from llm.stages.records import Task
from llm.stages.reference import build_gpt
from llm.stages.tasks import read_tasks

__all__ = ["PlannedModel", "planned_model"]


@dataclass
class PlannedModel:
    """A run's model as the plan counts it."""

    module: torch.nn.Module  # on the meta device, with the run's LoRA adapters
    shape: ModelShape
    tensors: int  # parameter tensors (a tied one once), adapters included
    bare_parameters: int  # before adapters: the reference SFT's model
    bare_tensors: int
    tied: int  # elements a state dict lists twice (a tied matrix)
    layout: Layout
    max_length: int | None
    pad_id: int
    cache: bool  # decoding keeps a KV cache (Hugging Face models)
    sft: bool  # the built-in GPT: an SFT makes the reference


def _meta_model(cfg: Config) -> tuple[torch.nn.Module, Any, torch.nn.Module, int]:
    """(model on meta, tokenizer, output layer, attention heads)."""
    if cfg.model.kind == "hf":
        from llm.hf import load_local

        model, tokenizer = load_local(cfg.model.path, weights=False)
        heads = model.config_dict.get("num_attention_heads") or 1
        return model, tokenizer, model.model.get_output_embeddings(), int(heads)
    from llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    with torch.device("meta"):
        model = build_gpt(cfg.model, tokenizer.vocab_size, seeded=False)
    return model, tokenizer, model.output_head(), cfg.model.n_head


def planned_model(cfg: Config, scratch: Path) -> tuple[PlannedModel, dict[str, Task], int]:
    """The model, the tasks (the built-in suite written under ``scratch``) and the bytes of
    the suite's files (0 with a manifest: the run writes none)."""
    module, tokenizer, head, heads = _meta_model(cfg)
    tasks = read_tasks(cfg.data, tokenizer, scratch / "data")
    data_bytes = sum(f.stat().st_size for f in (scratch / "data").rglob("*") if f.is_file())
    params = list(module.parameters())
    bare, bare_tensors = sum(p.numel() for p in params), len(params)
    tied = sum(v.numel() for v in module.state_dict().values()) - bare
    spec = cfg.model.lora
    if spec.r > 0:
        with torch.device("meta"):
            lora.add_adapters(
                module,
                [lora.SPECIALIST, lora.GENERALIST],
                r=spec.r,
                alpha=spec.alpha,
                dropout=spec.dropout,
                target_modules=spec.target_modules,
            )
    layout = Layout(prefix_sharing=cfg.run.prefix_sharing, bucket=cfg.run.bucket)
    if cfg.model.kind == "gpt":  # a Hugging Face model's probe would run it: taken as given
        layout = resolve_layout(module, layout)
    planned = PlannedModel(
        module=module,
        shape=ModelShape.of(module, head, heads),
        tensors=len(list(module.parameters())),
        bare_parameters=bare,
        bare_tensors=bare_tensors,
        tied=tied,
        layout=layout,
        max_length=max_length_of(module),
        pad_id=tokenizer.pad_id,
        cache=cfg.model.kind == "hf",
        sft=cfg.model.kind == "gpt",
    )
    return planned, tasks, data_bytes if not cfg.data.manifest else 0
