"""The pipeline's report for a TRL run: the held-out split scored by the pipeline's evaluator
and written as ``python -m llm run`` writes it, so the two can be put side by side.

After ``trainer.train()``, one line::

    evaluate_and_report(trainer, "data/tasks.toml", specialist_losses, out="runs/ama")

1. **Data.**  Every task's held-out split is read as the pipeline reads it
   (:func:`llm.trl.tasks.read_task_splits`: the manifest's eval file, tokenised with TRL's
   rules at the run's ``max_length``, audited); a task without an eval file is evaluated on
   its training pairs, as the pipeline evaluates it, and the report says so.
2. **One precision policy.**  Every number is made on the run's device under its autocast
   dtype (:func:`llm.trl.device.precision_of`) and the pipeline's batch layout, by
   :mod:`llm.oracle`'s functions on the Hugging Face models wrapped as
   :class:`llm.hf.HFCausalLM`: the reference log-probs of the base model (the trainer's
   reference), each specialist's per-pair losses (from its weights:
   :attr:`~llm.trl.specialists.SpecialistLosses.models`) and the trained policy's.
3. **Metrics.**  Per task the policy's held-out DPO loss, excess and clipped excess over
   the task's specialist and reward accuracy (:func:`llm.oracle.held_out_metrics`, what
   :meth:`llm.oracle.DPOOracle.evaluate_tasks` reports), and the greedy exact match of the
   policy and of each specialist on the task's first ``generate`` held-out prompts
   (:func:`llm.evaluate.greedy_exact_match`).
4. **Report.**  ``results.json`` (checksummed), ``results.md`` (worst-task and mean excess,
   exact match, per-task table, data audit) and the weight and excess figures, by
   :func:`llm.report.write_results` and :func:`llm.report.write_report`; the run is named
   after its mixer (``ama-r``, ``ama-s``, …), as the pipeline names its methods.

Run it in one process (rank 0 of a DDP run; other ranks return ``None``); a model sharded
by FSDP or DeepSpeed is refused: save it and evaluate the saved folder's trainer there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from llm.config import EvalSection
from llm.data import PreferencePair, TaskSplit, TokenizedPairs, find_task_files
from llm.dpo import LOSS_TYPES
from llm.evaluate import greedy_exact_match
from llm.hf import HFCausalLM, HFTokenizer, load_local
from llm.oracle import dpo_settings, held_out_metrics, pair_losses, reference_logps
from llm.packing import Layout
from llm.precision import Precision
from llm.report import summarize, write_report, write_results
from llm.trl.device import precision_of
from llm.trl.specialists import loss_settings
from llm.trl.tasks import read_task_splits

__all__ = ["evaluate_and_report", "Scorer"]

_DEFAULTS = EvalSection()  # the pipeline's [eval] defaults


@dataclass(frozen=True)
class Scorer:
    """The one way every number of a report is made: on ``precision``'s device under its
    autocast, in the pipeline's ``layout``, with the DPO settings ``dpo``, padding with
    ``tokenizer.pad_id``, ``batch_size`` pairs a forward; greedy decoding of ``generate``
    prompts a task, ``max_new_tokens`` each (``generate=0``: no exact match).

    A model scored against its own reference log-probs has a DPO loss of exactly log 2:

    >>> import tempfile
    >>> from llm.data import read_task_split
    >>> from llm.dpo import dpo_loss
    >>> from llm.synth import write_suite
    >>> from llm.trl.tiny import task_texts, write_tiny_model
    >>> manifest = write_suite(tempfile.mkdtemp(), sizes={"arithmetic": (4, 2)})
    >>> folder = write_tiny_model(tempfile.mkdtemp(), task_texts(manifest))
    >>> model, tokenizer = load_local(folder)
    >>> scorer = Scorer(Precision(), dpo_settings(0.1, "sigmoid", 0.0), tokenizer, 8)
    >>> pairs = read_task_split("arithmetic", "eval", manifest.parent / "arithmetic.eval.jsonl",
    ...                         tokenizer, tokenization="trl", max_length=64).tokens
    >>> losses = scorer.losses(model, pairs, scorer.reference(model, pairs))["loss"]
    >>> bool(np.allclose(losses, np.log(2)))
    True
    """

    precision: Precision
    dpo: dict
    tokenizer: HFTokenizer
    batch_size: int
    generate: int = _DEFAULTS.generate
    max_new_tokens: int = _DEFAULTS.max_new_tokens
    layout: Layout = field(default_factory=Layout)

    def model(self, source: Any) -> HFCausalLM:
        """``source`` (a saved folder, a transformers model or an HFCausalLM) as an
        HFCausalLM on the device; a folder is loaded in float32 master weights."""
        if isinstance(source, (str, Path)):
            source, _ = load_local(source, dtype=torch.float32)
        elif not isinstance(source, HFCausalLM):
            source = HFCausalLM(source)
        return source.to(self.precision.device)

    def reference(self, model: HFCausalLM, pairs: TokenizedPairs) -> np.ndarray:
        """(n, 2) reference log-probs (:func:`llm.oracle.reference_logps`)."""
        average = self.dpo["loss_type"] == "ipo"
        pad = self.tokenizer.pad_id
        return reference_logps(model, pairs, pad_id=pad, average=average, **self._how())

    def losses(
        self, model: HFCausalLM, pairs: TokenizedPairs, reference: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-pair ``loss`` and ``margin`` (:func:`llm.oracle.pair_losses`)."""
        pad = self.tokenizer.pad_id
        return pair_losses(model, pairs, reference, pad_id=pad, dpo=self.dpo, **self._how())

    def exact_match(self, model: HFCausalLM, pairs: list[PreferencePair]) -> float | None:
        """Greedy exact match on the first ``generate`` of ``pairs`` (``None``: none asked)."""
        if not self.generate:
            return None
        return greedy_exact_match(
            model,
            self.tokenizer,
            pairs[: self.generate],
            max_new_tokens=self.max_new_tokens,
            device=self.precision.device,
        )

    def _how(self) -> dict[str, Any]:
        return {"precision": self.precision, "layout": self.layout, "batch_size": self.batch_size}


def _dpo(args: Any) -> dict:
    """The run's DPO loss as the pipeline computes it, or a ``ValueError`` for a TRL loss
    the pipeline's evaluator does not compute."""
    types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if len(types) != 1 or types[0] not in LOSS_TYPES:
        raise ValueError(
            f"loss_type={args.loss_type!r}: the pipeline's evaluator computes one of "
            f"{', '.join(LOSS_TYPES)}; evaluate a run of another loss with your own code"
        )
    return dpo_settings(float(args.beta), types[0], float(args.label_smoothing))


class _Data(NamedTuple):
    """The tasks in the trainer's order, their splits and each held-out split's file."""

    names: list[str]
    train: dict[str, TaskSplit]
    held_out: dict[str, TaskSplit]
    files: dict[str, str]


def _read(trainer: Any, data: str | Path, strict: bool) -> _Data:
    """The tasks in the trainer's order (``data`` must hold exactly those), and their
    training and held-out splits as :func:`~llm.trl.tasks.load_task_datasets` reads them."""
    files = find_task_files(data)
    names = list(getattr(trainer, "task_names", None) or files)
    if sorted(names) != sorted(files):
        raise ValueError(
            f"the trainer trained tasks {names} but {data} holds tasks {list(files)}: pass "
            "the data the run trained on"
        )
    read = {"strict": strict, "max_length": trainer.args.max_length}
    tok = trainer.processing_class
    train = read_task_splits(data, tok, split="train", **read)
    held_out = read_task_splits(data, tok, split="eval", eval_from_train=True, **read)
    for name in names:
        if files[name].eval is None:
            print(
                f"task {name}: no eval file in {data}; evaluated on its training pairs, as "
                "python -m llm run evaluates such a task"
            )
    eval_files = {n: str(files[n].eval or files[n].train) for n in names}
    return _Data(names, train, {n: held_out[n] for n in names}, eval_files)


def _scorer(trainer: Any, generate: int, max_new_tokens: int) -> Scorer:
    """The trainer's precision policy and DPO loss, its tokenizer's padding."""
    tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    args = trainer.args
    return Scorer(
        precision_of(args),
        _dpo(args),
        HFTokenizer(tok),
        args.per_device_eval_batch_size,
        generate,
        max_new_tokens,
    )


def _specialist_sources(specialists: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """``{task: folder or model}`` from ``specialists`` (``SpecialistLosses`` or a mapping)."""
    models = getattr(specialists, "models", specialists)
    missing = [n for n in names if models.get(n) is None]
    if missing:
        raise ValueError(
            f"no weights for the specialist of task {missing[0]!r}: its losses came from the "
            "cache, but its folder no longer holds it. Fix: cache_specialist_losses(..., "
            "need_weights=True) trains it again; or pass {task: checkpoint}"
        )
    return {n: models[n] for n in names}


def _score_specialists(
    scorer: Scorer,
    sources: Mapping[str, Any],
    held_out: Mapping[str, TaskSplit],
    reference: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each specialist's held-out per-pair losses and its greedy exact match on its own
    task, one model on the device at a time."""
    losses, matches = {}, {}
    for name, source in sources.items():
        model = scorer.model(source)
        losses[name] = scorer.losses(model, held_out[name].tokens, reference[name])["loss"]
        match = scorer.exact_match(model, held_out[name].pairs)
        if match is not None:
            matches[name] = match
        del model  # a folder loaded here is freed before the next one loads
    return losses, matches


def _score_policy(
    scorer: Scorer,
    policy: HFCausalLM,
    held_out: Mapping[str, TaskSplit],
    reference: Mapping[str, np.ndarray],
    specialist_losses: Mapping[str, np.ndarray],
    label: str,
) -> dict[str, dict[str, float]]:
    """The policy's per-task held-out metrics; a non-finite one raises, naming the task."""
    out = {}
    for name, split in held_out.items():
        res = scorer.losses(policy, split.tokens, reference[name])
        row = held_out_metrics(res["loss"], res["margin"], specialist_losses[name])
        bad = [metric for metric, value in row.items() if not math.isfinite(value)]
        if bad:
            raise FloatingPointError(
                f"evaluating {label}: task {name!r} has a non-finite {', '.join(bad)}: the "
                "policy (or the specialist) diverged and no report was written. Fix: lower "
                "the learning rate"
            )
        match = scorer.exact_match(policy, split.pairs)
        out[name] = row if match is None else row | {"exact_match": match}
    return out


def _history(trainer: Any) -> dict[str, list] | None:
    """AMADPOTrainer's per-step mixture, as the pipeline records a run's history."""
    log = getattr(trainer, "mixture_log", None)
    if log is None or not len(log["step"]):
        return None
    return {key: np.asarray(log[key]).tolist() for key in ("step", "weights", "scores", "counts")}


def _config(args: Any, data: str | Path, method: str, scorer: Scorer) -> dict[str, Any]:
    """The record's ``config``: the data, the method, the TRL settings, the precision."""
    fields = ("learning_rate", "max_steps", "per_device_train_batch_size", "seed")
    trl = loss_settings(args) | {name: getattr(args, name) for name in fields}
    trl["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    precision = {"device": scorer.precision.device.type, "dtype": scorer.precision.dtype_name}
    generate = {"generate": scorer.generate, "max_new_tokens": scorer.max_new_tokens}
    return {
        "data": {"manifest": str(data)},
        "method": method,
        "trl": trl,
        "run": precision,
        "eval": generate,
    }


def _train_seconds(trainer: Any) -> float:
    """The last ``train()``'s run time, as the Trainer logged it (0 without one)."""
    logged = [e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e]
    return float(logged[-1]) if logged else 0.0


def evaluate_and_report(
    trainer: Any,
    data: str | Path,
    specialists: Mapping[str, Any],
    out: str | Path,
    *,
    method: str | None = None,
    generate: int = _DEFAULTS.generate,
    max_new_tokens: int = _DEFAULTS.max_new_tokens,
    strict: bool = False,
) -> dict[str, Any] | None:
    """Score ``trainer``'s policy on the held-out split of ``data`` (the manifest or folder
    it trained on) and write the pipeline's report into ``out`` (module docstring);
    returns the results record.  ``specialists``: what
    :func:`~llm.trl.specialists.cache_specialist_losses` returned (with the weights:
    ``need_weights=True``), or ``{task: folder or model}``.  ``method`` names the run
    (default: the mixer's name); ``generate``/``max_new_tokens``: the greedy exact match's
    prompts per task and new tokens, as the pipeline's ``[eval]``.

    >>> import tempfile
    >>> from amasim.mixers import stratified
    >>> from llm.synth import write_suite
    >>> from llm.trl import AMADPOTrainer, concatenate_tasks, load_task_datasets
    >>> from llm.trl.device import device_settings
    >>> from llm.trl.tiny import task_texts, write_tiny_model
    >>> from transformers import AutoTokenizer
    >>> from trl import DPOConfig
    >>> out = Path(tempfile.mkdtemp())
    >>> sizes = {"arithmetic": (6, 3), "safety": (4, 2), "format": (6, 0)}
    >>> data = write_suite(out / "data", sizes=sizes)
    >>> base = write_tiny_model(out / "base", task_texts(data))
    >>> tokenizer = AutoTokenizer.from_pretrained(base)
    >>> args = DPOConfig(output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=2,
    ...                  max_length=64, report_to="none", disable_tqdm=True,
    ...                  activation_checkpointing=False, **device_settings("cpu"))
    >>> tasks = load_task_datasets(data, tokenizer, max_length=64)
    >>> trainer = AMADPOTrainer(base, args=args, mixer=stratified(), processing_class=tokenizer,
    ...                         train_dataset=concatenate_tasks(tasks))
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    >>> specialists = {task: base for task in tasks}  # the base as every task's specialist
    >>> results = evaluate_and_report(trainer, data, specialists, out, generate=2)
    task format: no eval file ...
    >>> results["tasks"], sorted(results["runs"]["stratified"][0]["tasks"]["format"])
    (['arithmetic', 'safety', 'format'], ['accuracy', 'clipped', 'exact_match', 'excess', 'loss'])
    >>> (out / "results.md").is_file()
    True
    """
    if not trainer.accelerator.is_main_process:
        return None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        raise ValueError("the policy is sharded (FSDP, DeepSpeed): save it and evaluate it alone")
    if trainer.ref_model is None:
        raise ValueError("the trainer holds no reference model (PEFT, precomputed log-probs)")
    started = time.perf_counter()
    read = _read(trainer, data, strict)
    scorer = _scorer(trainer, generate, max_new_tokens)
    method = method or getattr(getattr(trainer, "mixer", None), "name", "dpo")
    unwrap = trainer.accelerator.unwrap_model
    base = scorer.model(unwrap(trainer.ref_model))
    reference = {n: scorer.reference(base, split.tokens) for n, split in read.held_out.items()}
    sources = _specialist_sources(specialists, read.names)
    spec_losses, spec_match = _score_specialists(scorer, sources, read.held_out, reference)
    policy = scorer.model(unwrap(trainer.model))
    per_task = _score_policy(scorer, policy, read.held_out, reference, spec_losses, method)
    config = _config(trainer.args, data, method, scorer)
    results = _results(trainer, read, per_task, spec_match, config)
    results["runs"][method][0]["seconds"] += time.perf_counter() - started
    results["summary"] = summarize(results)
    write_results(Path(out) / "results.json", results)
    write_report(results, out)
    return results


def _results(
    trainer: Any,
    read: _Data,
    per_task: dict[str, dict[str, float]],
    spec_match: dict[str, float],
    config: dict[str, Any],
) -> dict[str, Any]:
    """The results record as the pipeline writes it: one run of ``config["method"]``."""
    args, names = trainer.args, read.names
    run = {
        "tasks": per_task,
        "worst_task_excess": max(row["clipped"] for row in per_task.values()),
        "steps": trainer.state.global_step,
        "seed": args.seed,
        "seconds": _train_seconds(trainer),
    }
    history = _history(trainer)
    if history is not None:
        run["history"] = history
    audit = {n: {"train": read.train[n].audit, "eval": read.held_out[n].audit} for n in names}
    return {
        "config": config,
        "seeds": [args.seed],
        "tasks": names,
        "sizes": [len(read.train[n].tokens) for n in names],
        "data": {n: {split: a.to_dict() for split, a in audit[n].items()} for n in names},
        "eval_files": read.files,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "specialist_exact_match": spec_match,
        "runs": {config["method"]: [run]},
    }
