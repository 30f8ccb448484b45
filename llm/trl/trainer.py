"""AMADPOTrainer: TRL's DPOTrainer with an amasim mixer choosing the task mixture.

One optimizer step t (global batch of N = P·G·B pairs: P processes, G accumulated
micro-batches of B pairs; the order of :mod:`amasim.driver`'s step, Group DRO Alg. 1):

1. :class:`~llm.trl.sampler.TaskMixtureSampler` draws the step's rows from α_t
   (resampling mixers) or the fixed q (``importance``), or takes every task N/k times
   (reweighting mixers);
2. for each micro-batch TRL's ``compute_loss`` runs unchanged and
   :func:`~llm.trl.losses.pair_losses` reads its per-pair losses L(z) (any ``loss_type``);
3. the mixer's score (``amasim.scores.example_scores``: loss, excess L − ℓ or clipped
   excess max(L − ℓ, 0) over the cached specialist loss ℓ(z)) is summed per task over the
   step's micro-batches, then the sums and counts are all-reduced over the processes;
4. one mixer update per optimizer step: α_{t+1} = update(α_t, per-task means, counts)
   (counts only for drawn batches, as in amasim), identical on every process;
5. the micro-batch loss is Σ_z c_z·(dscore/dL)(z)·L(z) with the driver's apply rule
   (:mod:`amasim.apply`): c_z = 1/B when resampling, α_i·k/B for a pair of task i when
   reweighting, α_i/(B q_i) for GR-DPO's importance weighting (batches drawn from its fixed
   q) — so that, after the Trainer's division by G and DDP's mean over P, the step's
   gradient is that of Σ_i α_i·mean_i score; its reported value is Σ_z c_z·score(z), the
   mixed objective itself (for the ``"loss"`` score the two agree); TRL's batch-level terms
   (``"sft"``, a MoE router loss) are added unweighted, as plain DPOTrainer adds them.

Which α weights a reweighting or importance-weighted step (``reweight_order``):
``"updated"`` (default; Group DRO Alg. 1, AMA-R and GR-DPO: the step's own scores update α
first, α_{t+1} weights its loss) —
with ``gradient_accumulation_steps`` G > 1 the scores of all G micro-batches are needed
before the first backward, so the step's micro-batches are first scored without gradients
(one extra forward each, the trade :class:`llm.oracle.DPOOracle` makes with micro-batches);
``"played"``: α_t weights the step and the update follows it (no extra forward).

Logged through the Trainer's own logging (TensorBoard, W&B, ``state.log_history``),
averaged over ``logging_steps`` like TRL's metrics: ``mixer/weight/<task>`` (α after the
step's update), ``mixer/score/<task>`` (the task's mean score in the step's global batch),
``mixer/count/<task>`` (its pairs).  :attr:`AMADPOTrainer.mixture_log` holds them per step.

Checkpoints: every Trainer checkpoint gets ``amasim_mixture.npz`` (mixer state, sampler
position, history; :mod:`llm.trl.checkpoint`); ``train(resume_from_checkpoint=…)`` reads it
and continues with the same weights and the same draws.

DPOTrainer methods overridden, and why (everything else is TRL's):

* ``__init__``: validates the mixer and settings, adds the task and specialist-loss
  columns to the training set before TRL prepares it, builds the sampler.
* ``_set_signature_columns_if_needed``: keeps those two columns through the Trainer's
  removal of unused columns.
* ``get_train_dataloader``: a DataLoader over the sampler *without* Accelerate's
  ``prepare``, which fetches one batch ahead — step t+1's batch would be drawn before the
  update of step t (``_get_train_sampler``, TRL's suggested hook, sits behind it); the
  sampler shards the global batch over the processes itself.
* ``get_batch_samples``: only for ``reweight_order="updated"`` with G > 1, the scoring pass.
* ``compute_loss``: steps 2–5 above; evaluation batches go to TRL's unchanged.
* ``_save_checkpoint`` / ``train``: write / read the mixture's part of a checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import DPOConfig, DPOTrainer

from amasim.apply import counts_observed, draw_distribution, loss_coefficients
from amasim.capabilities import require_capabilities
from amasim.mixers import APPLY_MODES, Mixer
from amasim.scores import check_score, example_scores
from llm.trl.checkpoint import load_mixture, save_mixture
from llm.trl.losses import check_loss_types, pair_losses
from llm.trl.sampler import TaskMixtureSampler
from llm.trl.specialists import (
    SpecialistLosses,
    compare_settings,
    loss_settings,
    tokenizer_digest,
)
from llm.trl.tasks import check_specialist_rows, rows_by_task, task_ids

__all__ = ["AMADPOTrainer", "TASK_COLUMN", "SPECIALIST_COLUMN", "REWEIGHT_ORDERS"]

TASK_COLUMN = "ama_task_id"  # the row's task index, added to the training set
SPECIALIST_COLUMN = "ama_specialist_loss"  # the row's cached specialist loss (NaN: none)
REWEIGHT_ORDERS = ("updated", "played")
_FORMAT = 1


class _TaskCollator:
    """TRL's collator, plus each pair's task and specialist loss as numpy arrays (the
    Trainer moves tensors to the device; these stay on the host, where the mixer runs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        if not features or TASK_COLUMN not in features[0]:
            return self.inner(features, *args, **kwargs)
        tasks = np.array([f[TASK_COLUMN] for f in features], dtype=np.int64)
        spec = np.array([f[SPECIALIST_COLUMN] for f in features], dtype=np.float64)
        drop = (TASK_COLUMN, SPECIALIST_COLUMN)
        rest = [{k: v for k, v in f.items() if k not in drop} for f in features]
        out = self.inner(rest, *args, **kwargs)
        out[TASK_COLUMN], out[SPECIALIST_COLUMN] = tasks, spec
        return out


class AMADPOTrainer(DPOTrainer):
    """DPOTrainer whose task mixture an amasim ``mixer`` sets (see the module docstring).

    Arguments are DPOTrainer's, plus (keyword only): ``mixer`` — any
    :class:`amasim.mixers.Mixer` driven by training-batch scores (``ama_r``, ``ama_s``,
    ``group_dro``, ``doremi``, ``odm``, ``stratified``, ``uniform``, …); ``task_column``
    — the training-set column naming each row's task; ``specialist_losses`` —
    ``{task: per-row losses}`` from :func:`~llm.trl.specialists.cache_specialist_losses`
    (required by excess and clipped scores; the task order is its key order);
    ``tasks`` — the task order when no specialist losses are given (default: order of
    first appearance); ``reweight_order`` — ``"updated"`` or ``"played"``.

    The sampler's seed is ``args.data_seed`` or ``args.seed``; so is the mixer's.
    """

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: DPOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Any = None,
        callbacks: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        *,
        mixer: Mixer,
        task_column: str = "task",
        specialist_losses: Mapping[str, Any] | None = None,
        tasks: Sequence[str] | None = None,
        reweight_order: str = "updated",
    ) -> None:
        if args is None:
            from trl.trainer.utils import get_config_model_id

            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DPOConfig(f"{str(name).split('/')[-1]}-DPO")
        self._check_mixer(mixer)
        self._check_args(args, train_dataset, reweight_order)
        train_dataset, names = self._with_task_columns(
            train_dataset, mixer, task_column, specialist_losses, tasks
        )
        super().__init__(
            model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self.mixer, self.task_names, self.reweight_order = mixer, names, reweight_order
        self._check_specialists(specialist_losses)
        self.data_collator = _TaskCollator(self.data_collator)
        self.seed = int(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        self.task_sampler = TaskMixtureSampler(
            np.asarray(self.train_dataset[TASK_COLUMN], dtype=np.int64),
            len(names),
            batch_size=self.args.per_device_train_batch_size,
            apply=mixer.apply,
            seed=self.seed,
            accumulation=self.args.gradient_accumulation_steps,
            world_size=self.args.world_size,
            rank=self.args.process_index,
            task_names=names,
            replay_epoch_start=not self.args.ignore_data_skip,
        )
        self._reset_mixture()

    @staticmethod
    def _with_task_columns(
        dataset: Any,
        mixer: Mixer,
        task_column: str,
        specialist_losses: Mapping[str, Any] | None,
        tasks: Sequence[str] | None,
    ) -> tuple[Any, tuple[str, ...]]:
        """The training set with each row's task index and cached specialist loss (before
        TRL prepares it), and the task names in order."""
        if tasks is None and specialist_losses is not None:
            tasks = list(specialist_losses)
        ids, names = task_ids(dataset, task_column, tasks)
        if check_score(mixer.score) != "loss" and specialist_losses is None:
            raise ValueError(
                f"mixer {mixer.name!r} scores the {mixer.score} loss over each task's specialist: "
                "pass specialist_losses=cache_specialist_losses(...)"
            )
        for column in (TASK_COLUMN, SPECIALIST_COLUMN):
            if column in dataset.column_names:
                raise ValueError(f"the training set already has a column {column!r}: rename it")
        spec = (
            rows_by_task(ids, names, specialist_losses)
            if specialist_losses is not None
            else np.zeros(len(ids))
        )
        dataset = dataset.add_column(TASK_COLUMN, ids.tolist())
        return dataset.add_column(SPECIALIST_COLUMN, spec.tolist()), names

    def _check_specialists(self, specialist_losses: Mapping[str, Any] | None) -> None:
        """The cached specialist losses were made with this run's settings, and every row
        TRL kept has one (for the excess scores)."""
        if isinstance(specialist_losses, SpecialistLosses):
            ours = {
                **loss_settings(self.args),
                "tokenizer": tokenizer_digest(self.processing_class),
            }
            differ = compare_settings(specialist_losses.settings, ours)
            if differ:
                raise ValueError(
                    f"the specialist losses were computed with other settings ({', '.join(differ)} "
                    "differ from this run's): compute them with this run's DPOConfig and tokenizer"
                )
        if self.mixer.score != "loss":
            kept_ids = np.asarray(self.train_dataset[TASK_COLUMN], dtype=np.int64)
            kept_spec = np.asarray(self.train_dataset[SPECIALIST_COLUMN], dtype=np.float64)
            from_cache = isinstance(specialist_losses, SpecialistLosses)
            check_specialist_rows(kept_spec, kept_ids, self.task_names, from_cache=from_cache)

    # ----------------------------------------------------------------- checks
    def _check_mixer(self, mixer: Any) -> None:
        if not isinstance(mixer, Mixer):
            raise TypeError(f"mixer must be an amasim.mixers.Mixer, got {type(mixer).__name__}")
        require_capabilities(self, mixer.requires, f"mixer {mixer.name!r}")
        signal = getattr(mixer, "signal", None)
        if signal is not None and getattr(signal, "kind", "batch") != "batch":
            raise ValueError(
                f"mixer {mixer.name!r} observes {signal.kind!r} signals; AMADPOTrainer feeds a "
                "mixer the per-task scores of its training batches only"
            )
        if mixer.apply not in APPLY_MODES:
            raise ValueError(
                f"mixer {mixer.name!r} has apply={mixer.apply!r}: AMADPOTrainer "
                f"drives mixers whose apply is one of {APPLY_MODES}"
            )
        check_score(mixer.score)

    @staticmethod
    def _check_args(args: Any, train_dataset: Any, reweight_order: str) -> None:
        from datasets import Dataset

        if not isinstance(args, DPOConfig):
            raise TypeError(f"args must be a trl.DPOConfig, got {type(args).__name__}")
        check_loss_types(args.loss_type)
        if not isinstance(train_dataset, Dataset):
            raise TypeError(
                "train_dataset must be a datasets.Dataset (rows the sampler can index), got "
                f"{type(train_dataset).__name__}"
            )
        if reweight_order not in REWEIGHT_ORDERS:
            raise ValueError(f"reweight_order={reweight_order!r}: use 'updated' or 'played'")
        refused = {
            "dataloader_num_workers": (
                args.dataloader_num_workers != 0,
                "worker processes fetch batches ahead of training, before the mixer has "
                "updated the weights they are drawn from: set dataloader_num_workers=0 (the "
                "rows are already tokenized)",
            ),
            "sync_ref_model": (
                args.sync_ref_model,
                "the excess losses compare the policy with specialists against one fixed "
                "reference: set sync_ref_model=False",
            ),
            "auto_find_batch_size": (
                args.auto_find_batch_size,
                "the sampler draws steps of a fixed size: set auto_find_batch_size=False",
            ),
            "train_sampling_strategy": (
                getattr(args, "train_sampling_strategy", "random") != "random",
                "the mixer's sampler orders the training rows: leave train_sampling_strategy "
                "at 'random'",
            ),
        }
        for name, (bad, why) in refused.items():
            if bad:
                raise ValueError(f"{name}={getattr(args, name)!r} cannot be used: {why}")

    # ----------------------------------------------------------------- mixture
    def _reset_mixture(self) -> None:
        k = len(self.task_names)
        self.mixer_state = self.mixer.init(k, seed=[self.seed])
        self._alpha = np.asarray(self.mixer.weights(self.mixer_state), dtype=np.float64)[0]
        self.task_sampler.reset(self._drawn_from())
        self._sums, self._counts, self._micro = np.zeros(k), np.zeros(k), 0
        self._scored_alpha: np.ndarray | None = None
        self._log: dict[str, list] = {"step": [], "weights": [], "scores": [], "counts": []}

    @property
    def mixture_log(self) -> dict[str, np.ndarray]:
        """Per optimizer step: ``step`` (T,), ``weights`` (T, k) after the step's update,
        ``scores`` (T, k) per-task mean scores of the global batch, ``counts`` (T, k)."""
        k = len(self.task_names)
        return {
            "step": np.asarray(self._log["step"], dtype=np.int64),
            "weights": np.asarray(self._log["weights"], dtype=np.float64).reshape(-1, k),
            "scores": np.asarray(self._log["scores"], dtype=np.float64).reshape(-1, k),
            "counts": np.asarray(self._log["counts"], dtype=np.int64).reshape(-1, k),
        }

    @property
    def weights(self) -> np.ndarray:
        """The current task weights α, shape (k,)."""
        return self._alpha.copy()

    def _accumulate(self, tasks: np.ndarray, values: np.ndarray) -> None:
        k = len(self.task_names)
        self._sums += np.bincount(tasks, values, minlength=k)
        self._counts += np.bincount(tasks, minlength=k)

    def _update_mixer(self) -> np.ndarray:
        """All-reduce the step's per-task sums and counts, update the mixer once; returns
        the updated weights α_{t+1}."""
        k = len(self.task_names)
        sums, counts = self._sums, self._counts
        if self.args.world_size > 1:
            packed = torch.tensor(
                np.concatenate([sums, counts]), dtype=torch.float64, device=self.accelerator.device
            )
            packed = self.accelerator.reduce(packed, reduction="sum").cpu().numpy()
            sums, counts = packed[:k], packed[k:]
        if self.task_sampler.step != self.state.global_step:
            raise RuntimeError(
                f"the mixer has made {self.task_sampler.step} updates but the trainer is at step "
                f"{self.state.global_step}: resume from a checkpoint written by AMADPOTrainer "
                "(with its amasim_mixture.npz), or call train() afresh"
            )
        counts = np.rint(counts).astype(np.int64)
        means = sums / np.maximum(counts, 1)
        observed = counts[None, :] if counts_observed(self.mixer.apply) else None
        new, self.mixer_state = self.mixer.update(self.mixer_state, means[None, :], observed)
        self._alpha = np.asarray(self.mixer.weights(self.mixer_state), dtype=np.float64)[0]
        self.task_sampler.advance(self._drawn_from())
        self._log["step"].append(self.task_sampler.step)
        self._log["weights"].append(self._alpha.tolist())
        self._log["scores"].append(means.tolist())
        self._log["counts"].append(counts.tolist())
        metrics = self._metrics["train"]
        for i, name in enumerate(self.task_names):
            metrics[f"mixer/weight/{name}"].append(float(self._alpha[i]))
            metrics[f"mixer/score/{name}"].append(float(means[i]))
            metrics[f"mixer/count/{name}"].append(int(counts[i]))
        self._sums, self._counts = np.zeros(k), np.zeros(k)
        return np.asarray(new, dtype=np.float64)[0]

    def _drawn_from(self) -> np.ndarray:
        """The distribution the sampler draws the next step from (:mod:`amasim.apply`): α
        for resampling mixers, the state's fixed q for ``importance`` (GR-DPO); unused by
        the fixed layout of ``reweight``."""
        alpha = self._alpha[None, :]
        drawn = draw_distribution(self.mixer.apply, alpha, self.mixer_state)
        return np.asarray(alpha if drawn is None else drawn, dtype=np.float64).reshape(-1)

    def _scores(self, per_pair: torch.Tensor, tasks: np.ndarray, spec: np.ndarray):
        losses = per_pair.detach().double().cpu().numpy()
        if losses.shape != tasks.shape:
            raise RuntimeError(f"{losses.size} per-pair losses for {tasks.size} pairs")
        if not np.isfinite(losses).all():
            bad = sorted({self.task_names[t] for t in tasks[~np.isfinite(losses)]})
            raise FloatingPointError(
                f"non-finite DPO loss at step {self.state.global_step} on task(s) {bad}: lower the "
                "learning rate, check the data, or train in bf16 rather than fp16"
            )
        values, dvalues = example_scores(self.mixer.score, losses, spec)
        return losses, values, dvalues

    # ------------------------------------------------------- Trainer extension points
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in (TASK_COLUMN, SPECIALIST_COLUMN):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def get_train_dataloader(self) -> DataLoader:
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        return DataLoader(
            dataset,
            batch_size=self.args.per_device_train_batch_size,
            sampler=self.task_sampler,
            collate_fn=self.data_collator,
            num_workers=0,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        scoring = self._weighted and self.reweight_order == "updated"
        if scoring and self.args.gradient_accumulation_steps > 1 and batches:
            self._scored_alpha = self._score_step(batches)
        return batches, num_items

    @contextlib.contextmanager
    def _quiet_metrics(self):
        """TRL's metrics and token count as they were before (for the scoring pass)."""
        saved = {k: list(v) for k, v in self._metrics["train"].items()}
        tokens = self._total_train_tokens
        try:
            yield
        finally:
            self._metrics["train"].clear()
            self._metrics["train"].update(saved)
            self._total_train_tokens = tokens

    def _score_step(self, batches: list[dict[str, Any]]) -> np.ndarray:
        """Score every micro-batch of the step without gradients; update the mixer."""
        if len(batches) != self.args.gradient_accumulation_steps:
            raise RuntimeError(
                f"got {len(batches)} micro-batches for a step of "
                f"{self.args.gradient_accumulation_steps}: the sampler yields whole steps"
            )
        model = self.model_wrapped
        model.train()
        compute = functools.partial(DPOTrainer.compute_loss, self)
        for batch in batches:
            inputs = self._prepare_inputs(dict(batch))
            tasks, spec = inputs.pop(TASK_COLUMN), inputs.pop(SPECIALIST_COLUMN)
            with torch.no_grad(), self.compute_loss_context_manager(), self._quiet_metrics():
                result = pair_losses(self, model, inputs, compute=compute)
            _, values, _ = self._scores(result.per_pair, tasks, spec)
            self._accumulate(tasks, values)
        return self._update_mixer()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        tasks = inputs.pop(TASK_COLUMN, None)
        spec = inputs.pop(SPECIALIST_COLUMN, None)
        parent = super().compute_loss
        if tasks is None or not model.training:  # evaluation: TRL's loss, unchanged
            return parent(model, inputs, return_outputs, num_items_in_batch)
        compute = functools.partial(parent, num_items_in_batch=num_items_in_batch)
        result = pair_losses(self, model, inputs, compute=compute, return_outputs=return_outputs)
        losses, values, dvalues = self._scores(result.per_pair, tasks, spec)
        scored = self._scored_alpha is not None
        if not scored:
            self._accumulate(tasks, values)
        self._micro += 1
        last = self._micro == self.args.gradient_accumulation_steps
        updated = False
        alpha = self._alpha
        if self._weighted:  # the α that weights this step (reweight_order)
            if scored:
                alpha = self._scored_alpha
            elif self.reweight_order == "updated":  # G = 1: the step's scores are all here
                if self.args.gradient_accumulation_steps > 1:
                    raise RuntimeError(
                        "the step's micro-batches were not scored before the first backward "
                        "(Trainer.get_batch_samples was not called); use reweight_order='played'"
                    )
                alpha, updated = self._update_mixer(), True
        # c_z of amasim.apply, per micro-batch: the Trainer divides by G and DDP averages over
        # P, so the step descends Σ_i α_i · mean_i score over the global batch
        coef = dvalues * self._coefficients(alpha, tasks)
        if last:
            if not scored and not updated:
                self._update_mixer()
            self._micro, self._scored_alpha = 0, None
        weights = torch.as_tensor(coef, dtype=result.per_pair.dtype, device=result.per_pair.device)
        loss = (weights * result.per_pair).sum() + result.batch_term
        if self.mixer.score != "loss":  # report the objective Σ c·score; its gradient is Σ c·∇L
            loss = loss + float(np.dot(coef, values - losses))
        return (loss, result.outputs) if return_outputs else loss

    @property
    def _weighted(self) -> bool:
        """Whether α weights the loss (``reweight``, ``importance``) rather than the draws."""
        return self.mixer.apply != "resample"

    def _coefficients(self, alpha: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """The apply rule's per-example coefficients of this micro-batch (``tasks``)."""
        sampling = None
        if self.mixer.apply == "importance":
            sampling = draw_distribution("importance", alpha[None, :], self.mixer_state)
        coefficients = loss_coefficients(
            self.mixer.apply,
            np.asarray(alpha, dtype=np.float64)[None, :],
            np.asarray(tasks)[None, :],
            sampling=sampling,
            num_tasks=len(self.task_names),
        )
        return coefficients[0]

    # ------------------------------------------------------------- checkpoints
    def save_mixture(self, folder: str | os.PathLike) -> None:
        """Write the mixture's state (mixer, sampler position, history) into ``folder``."""
        meta = {
            "format": _FORMAT,
            "mixer": self.mixer.name,
            "apply": self.mixer.apply,
            "score": self.mixer.score,
            "tasks": list(self.task_names),
            "reweight_order": self.reweight_order,
            "sampler": self.task_sampler.state_dict(),
        }
        save_mixture(folder, self.mixer_state, meta, self.mixture_log)

    def load_mixture(self, folder: str | os.PathLike) -> None:
        """Continue from the mixture's state saved in checkpoint ``folder``."""
        template = self.mixer.init(len(self.task_names), seed=[self.seed])
        state, meta, history = load_mixture(folder, template)
        ours = {"mixer": self.mixer.name, "tasks": list(self.task_names), "apply": self.mixer.apply}
        for key, value in ours.items():
            if meta.get(key) != value:
                raise ValueError(
                    f"checkpoint {folder} holds the mixture of {key}={meta.get(key)!r}, this "
                    f"trainer has {value!r}: resume with the same mixer and tasks"
                )
        self.task_sampler.load_state_dict(meta["sampler"])
        self.mixer_state = state
        self._alpha = np.asarray(self.mixer.weights(state), dtype=np.float64)[0]
        self._log = {
            "step": history["step"].tolist(),
            "weights": history["weights"].tolist(),
            "scores": history["scores"].tolist(),
            "counts": history["counts"].tolist(),
        }

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial),
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}",
            )
            self.save_mixture(folder)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        self._reset_mixture()
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        if checkpoint is not None:
            self.load_mixture(checkpoint)
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )
