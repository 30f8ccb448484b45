"""Per-pair losses of each task's specialist, computed once with TRL and cached.

AutoMixAlign scores a task by its *excess* loss: the policy's DPO loss on a pair minus the
loss of that task's specialist (a model trained on the task alone) on the same pair, both
against the same reference — the base model the multi-task run starts from (notes §1).
:func:`cache_specialist_losses` computes the specialists' per-pair losses with TRL's own
DPO loss (:func:`llm.trl.losses.pair_losses`, so any ``loss_type`` and every DPOConfig
setting that shapes the loss count) and stores them with :func:`llm.cache.load_or_compute`.
The specialists are either checkpoints the user has (``{task: path or model}``) or trained
here, one TRL :class:`~trl.DPOTrainer` run per task, from a ``DPOConfig``.

The cache key of a task holds everything that sets its numbers: the digest of the task's
rows (:func:`llm.trl.tasks.dataset_digest`), the base model's fingerprint
(:func:`llm.model.fingerprint`), the specialist's fingerprint — or, for a specialist
trained here, its training settings (so a hit skips the training) — the loss and
tokenisation settings of ``args`` (:func:`loss_settings`), the tokenizer's digest, the
device type and the TRL/transformers/torch versions.  Change any of them and the entry is
recomputed; an entry whose shape does not match the task's rows is refused.

A row TRL drops (its prompt fills ``max_length``) has no loss: NaN.  The result is a
:class:`SpecialistLosses`, a dict ``{task: (n_task,) float64}`` that also carries the
settings it was computed under, so :class:`~llm.trl.trainer.AMADPOTrainer` refuses it
under different ones.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.cache import cache_key, load_or_compute
from llm.integrity import write_text_atomic
from llm.model import fingerprint
from llm.trl.losses import check_loss_types, pair_losses
from llm.trl.tasks import dataset_digest

__all__ = [
    "SpecialistLosses",
    "cache_specialist_losses",
    "loss_settings",
    "tokenizer_digest",
    "training_settings",
    "compare_settings",
]

CACHE_KIND = "trl-specialist-losses"
FORMAT = 1
SPECIALIST_RECORD = "amasim_specialist.json"  # names the cache entry a trained folder made
ROW_COLUMN = "ama_row"  # the row's index in its task's dataset, carried through TRL's filter

# DPOConfig fields that shape a pair's loss (TRL 1.16): the loss, the tokenisation and
# truncation, the precision and how the model and reference are loaded.
LOSS_FIELDS = (
    "beta",
    "loss_type",
    "loss_weights",
    "label_smoothing",
    "f_divergence_type",
    "f_alpha_divergence_coef",
    "ld_alpha",
    "use_weighting",
    "discopop_tau",
    "router_aux_loss_coef",
    "max_length",
    "truncation_mode",
    "pad_to_multiple_of",
    "pad_token",
    "precompute_ref_log_probs",
    "bf16",
    "fp16",
    "model_init_kwargs",
)
# TrainingArguments fields that only say where output goes or how progress shows.
_IO_FIELDS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "run_name",
        "report_to",
        "disable_tqdm",
        "push_to_hub",
        "hub_model_id",
        "hub_token",
        "hub_strategy",
        "hub_private_repo",
        "overwrite_output_dir",
    }
)
_IO_PREFIXES = ("logging_", "save_", "hub_", "push_to_hub_")


class SpecialistLosses(dict):
    """``{task: (n_task,) float64 per-pair specialist losses}`` (NaN: a row TRL drops),
    with ``settings``: the :func:`loss_settings` and tokenizer digest they were computed
    under, and ``models``: ``{task: the specialist}`` — the checkpoint or model given, or
    the folder of one trained here (``None`` when the losses came from the cache and that
    folder no longer holds the specialist that made them; ask ``need_weights=True``)."""

    def __init__(
        self,
        losses: Mapping[str, np.ndarray],
        settings: Mapping[str, Any],
        models: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(losses)
        self.settings = dict(settings)
        self.models = dict(models or {})


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):  # enums
        return _jsonable(value.value)
    return value


def loss_settings(args: Any) -> dict[str, Any]:
    """The DPOConfig settings that shape a pair's loss, as a JSON-able dict."""
    import trl

    out = {name: _jsonable(getattr(args, name, None)) for name in LOSS_FIELDS}
    out["trl"] = trl.__version__
    return out


def training_settings(args: Any) -> dict[str, Any]:
    """Every field of a training config except where its output goes and how it logs."""
    fields = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
    return {
        k: _jsonable(v)
        for k, v in sorted(fields.items())
        if k not in _IO_FIELDS and not k.startswith(_IO_PREFIXES)
    }


def tokenizer_digest(processing_class: Any) -> str:
    """sha256 of what a tokenizer turns text into: vocabulary, merges and normaliser (the
    fast tokenizer's JSON), special tokens (no pad token counts as EOS, which DPOTrainer
    sets then), chat template, padding and truncation sides."""
    tok = getattr(processing_class, "tokenizer", processing_class)  # a processor's tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    special = dict(_jsonable(getattr(tok, "special_tokens_map", {})))
    special.setdefault("pad_token", special.get("eos_token"))  # DPOTrainer pads with EOS then
    parts = {
        "class": type(tok).__name__,
        "backend": backend.to_str() if backend is not None else sorted(tok.get_vocab().items()),
        "special": special,
        "chat_template": getattr(tok, "chat_template", None),
        "padding_side": getattr(tok, "padding_side", None),
        "truncation_side": getattr(tok, "truncation_side", None),
        "add_bos": getattr(tok, "add_bos_token", None),
        "add_eos": getattr(tok, "add_eos_token", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def compare_settings(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two settings dicts (missing keys count)."""
    keys = sorted(set(expected) | set(actual))
    return [k for k in keys if expected.get(k) != actual.get(k)]


def _versions() -> dict[str, str]:
    import transformers
    import trl

    return {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def _load(model: Any, args: Any) -> Any:
    """A fresh model: loaded from a path as TRL loads one, or a deep copy of an object
    (TRL patches the forward of the models it is given; the caller's stay untouched)."""
    if isinstance(model, (str, Path)):
        from trl.trainer.utils import create_model_from_path

        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        return create_model_from_path(str(model), **kwargs)
    return copy.deepcopy(model)


def _scoring_args(args: Any, folder: str) -> Any:
    return dataclasses.replace(args, output_dir=folder, report_to="none", push_to_hub=False)


def _score(
    specialist: Any, base: Any, dataset: Any, tokenizer: Any, args: Any, batch_size: int
) -> np.ndarray:
    """Per-pair losses of ``specialist`` against ``base`` on every row of ``dataset``."""
    from torch.utils.data import DataLoader
    from trl import DPOTrainer

    indexed = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
    with tempfile.TemporaryDirectory() as folder:
        trainer = DPOTrainer(
            model=specialist,
            ref_model=base,
            args=_scoring_args(args, folder),
            train_dataset=indexed,
            processing_class=tokenizer,
        )
        prepared = trainer.train_dataset
        rows = np.asarray(prepared[ROW_COLUMN], dtype=np.int64)
        loader = DataLoader(
            prepared, batch_size=batch_size, shuffle=False, collate_fn=trainer.data_collator
        )
        device = trainer.accelerator.device
        model = trainer.model
        model.eval()
        values = []
        for batch in loader:
            inputs = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            with torch.no_grad(), trainer.accelerator.autocast():
                values.append(pair_losses(trainer, model, inputs).per_pair.double().cpu())
    out = np.full(len(dataset), np.nan)
    if len(rows):
        out[rows] = torch.cat(values).numpy()
    return out


def _kept(folder: Path, entry: str) -> bool:
    """Whether ``folder`` holds the specialist trained for cache entry ``entry``."""
    try:
        return json.loads((folder / SPECIALIST_RECORD).read_text())["entry"] == entry
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _train(
    base_model: Any, dataset: Any, tokenizer: Any, config: Any, name: str, entry: str
) -> str:
    """A specialist: TRL's DPOTrainer on one task from the base model, saved to
    ``<output_dir>/<task>`` (returned) with a record naming its cache ``entry``, and
    scored from there, untouched by training."""
    from trl import DPOTrainer

    folder = str(Path(config.output_dir) / name)
    (Path(folder) / SPECIALIST_RECORD).unlink(missing_ok=True)  # stale until saved again
    task_config = dataclasses.replace(config, output_dir=folder)
    trainer = DPOTrainer(
        model=str(base_model) if isinstance(base_model, (str, Path)) else copy.deepcopy(base_model),
        ref_model=_load(base_model, task_config),  # the base, whether given as path or object
        args=task_config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(folder)
    write_text_atomic(Path(folder) / SPECIALIST_RECORD, json.dumps({"entry": entry}))
    return folder


def cache_specialist_losses(
    model: str | Path | Any,
    datasets: Mapping[str, Any],
    specialists: Mapping[str, str | Path | Any] | Any,
    *,
    args: Any,
    cache_dir: str | Path,
    processing_class: Any = None,
    batch_size: int | None = None,
    need_weights: bool = False,
) -> SpecialistLosses:
    """Every task's per-pair specialist losses, from the cache or computed and cached.

    ``model``: the base model (path or object) — the multi-task run's starting point and
    the reference of every DPO loss.  ``datasets``: ``{task: Dataset}`` in TRL's format
    (standard or conversational, explicit or implicit prompt), the same rows, in the same
    order, as the task's rows of the training set.  ``specialists``: ``{task: checkpoint
    path or model}``, or a ``DPOConfig`` to train each with TRL's DPOTrainer (output in
    ``<output_dir>/<task>``).  ``args``: the ``DPOConfig`` of the multi-task run (its loss
    settings define the losses).  ``processing_class`` defaults to the tokenizer saved
    with a base model given as a path.  ``batch_size`` defaults to
    ``args.per_device_eval_batch_size``.  ``need_weights`` (the held-out report,
    :func:`llm.trl.report.evaluate_and_report`, scores the specialists again): a
    specialist trained here whose folder no longer holds it is trained again.  At most
    two models are held at once: the reference and one specialist, each loaded afresh
    (or deep-copied from an object).
    """
    from trl import DPOConfig

    train = isinstance(specialists, DPOConfig)
    _check_inputs(datasets, specialists, args, train)
    if processing_class is None:
        if not isinstance(model, (str, Path)):
            raise ValueError("pass processing_class= (the tokenizer) when model is an object")
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(str(model))
    batch_size = int(batch_size or args.per_device_eval_batch_size)
    settings = {**loss_settings(args), "tokenizer": tokenizer_digest(processing_class)}
    common = {
        "base": fingerprint(_load(model, args)),  # the reference is loaded afresh per task
        "settings": settings,
        "device": str(torch.device(args.device).type),
        "versions": _versions(),
    }
    out, models = {}, {}
    for name, dataset in datasets.items():
        if train:
            specialist_key: Any = {"trained_with": training_settings(specialists)}
        else:
            specialist_key = fingerprint(_load(specialists[name], args))
        key = {"format": FORMAT, "task": name, "rows": dataset_digest(dataset)}
        key |= {"specialist": specialist_key, **common}
        entry = cache_key(key)

        def compute(name=name, dataset=dataset, entry=entry):
            source = specialists[name] if not train else None
            if train:
                source = _train(model, dataset, processing_class, specialists, name, entry)
            spec, ref = _load(source, args), _load(model, args)  # fresh: TRL patches its models
            return {"losses": _score(spec, ref, dataset, processing_class, args, batch_size)}

        losses = load_or_compute(cache_dir, CACHE_KIND, key, compute)["losses"]
        out[name] = _checked_losses(losses, name, len(dataset), cache_dir)
        models[name] = specialists[name] if not train else None
        if train:
            folder = Path(specialists.output_dir) / name
            if need_weights and not _kept(folder, entry):  # deterministic: the same weights
                _train(model, dataset, processing_class, specialists, name, entry)
            models[name] = str(folder) if _kept(folder, entry) else None
    return SpecialistLosses(out, settings, models)


def _check_inputs(datasets: Mapping[str, Any], specialists: Any, args: Any, train: bool) -> None:
    from trl import DPOConfig

    if not isinstance(args, DPOConfig):
        raise TypeError(
            f"args must be a trl.DPOConfig (the run's settings), got {type(args).__name__}"
        )
    check_loss_types(args.loss_type)
    if not datasets:
        raise ValueError("datasets is empty: pass {task: Dataset}, one per task")
    if not train:
        missing = [name for name in datasets if name not in specialists]
        if missing:
            raise ValueError(
                f"no specialist for task {missing[0]!r}: pass {{task: checkpoint}} for every "
                "task, or a DPOConfig to train them"
            )


def _checked_losses(losses: np.ndarray, name: str, n: int, cache_dir: str | Path) -> np.ndarray:
    """A cache entry's losses of task ``name`` (``n`` rows), or a ``ValueError``."""
    if losses.shape != (n,) or losses.dtype.kind != "f" or np.isinf(losses).any():
        raise ValueError(
            f"the cached specialist losses of task {name!r} in {cache_dir} are corrupt "
            f"(shape {losses.shape}, {n} rows expected): delete the "
            f"{CACHE_KIND}-*.npz files there and run again"
        )
    return losses
