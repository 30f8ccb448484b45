"""The multi-task DPO oracle: the amasim oracle protocol over a PyTorch policy.

Every amasim mixer drives it unchanged (see :mod:`amasim.oracle` for the protocol).  One
training step, as the loop in :mod:`amasim.driver` calls it:

1. ``sample(task_ids)`` draws one pair of task ``task_ids[0, n]`` per entry (counter-based,
   seeded, so a resumed run draws the same pairs) and returns the cached specialist
   losses ℓ(z) of those pairs;
2. ``losses(batch)`` runs ONE forward pass over chosen and rejected together, reads the
   reference log-probs from the cache (the reference model never runs during training)
   and returns the per-pair DPO losses (Rafailov et al. 2023, eq. 7);
3. ``step(batch, w, lr)`` back-propagates Σ_z w_z L_z — a reweighting mixer puts α_i/n_i
   in w, a resampling one 1/B — clips the gradient norm and takes an AdamW step.

With ``micro_batch_size`` smaller than the batch, the gradient is accumulated over
micro-batches (bounded memory), in one of two ways (``accumulate``):

* ``"recompute"``: ``losses`` runs the micro-batches without a graph and ``step`` runs
  forward + backward per micro-batch with the weights: one extra forward pass per step;
* ``"by_task"``: ``losses`` runs forward + backward per micro-batch of ONE task, keeping one
  gradient per task, and ``step`` combines them, Σ_i c_i G_i, with the weight c_i that
  every example of task i gets (both AMA modes give task-constant weights: α_i/n_i or 1/B):
  no extra forward, k gradient buffers.  Weights that differ within a task fall back to
  ``"recompute"`` for that step.

Every number — the reference log-probs, the specialists' per-pair losses, the training and
the evaluation losses — is made under one :class:`llm.precision.Precision` (device, autocast)
and one :class:`llm.packing.Layout`, by :func:`llm.dpo.packed_logps`; :func:`numerics` is the
cache key of that policy.  A non-finite loss raises ``FloatingPointError`` before any
parameter changes (on every rank of a data-parallel group at once: the flag is summed over
the ranks).  A step reads the device once: the per-pair losses, the finiteness flags and
the metric sums travel to the host in one copy (:meth:`DPOOracle.losses`); a non-finite
gradient norm makes fused AdamW skip its step on the device and is reported with the next
copy.

What trains is what requires a gradient — every parameter, or with ``adapter`` one LoRA
adapter (:mod:`llm.lora`); ``reset`` restores, and ``state_dict`` saves, those parameters
only (with the optimizer), so a LoRA run keeps no second copy of the frozen base.  A policy
sharded by FSDP2 (:mod:`llm.parallel`) is saved with
:func:`torch.distributed.checkpoint.state_dict.get_state_dict` (sharded, keyed by parameter
name: what :mod:`llm.dcp` writes and reads back on any world size).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from amasim import prng
from amasim.capabilities import CAPABILITIES, MixtureRoundsFromSteps
from amasim.oracle import Batch
from amasim.scores import example_scores
from llm import lora
from llm.data import TokenizedPairs
from llm.dpo import (
    METRIC_NAMES,
    dpo_loss,
    dpo_metric_sums,
    max_length_of,
    metrics_from_sums,
    packed_logps,
    resolve_layout,
)
from llm.packing import PAD, PROMPT, Layout, Packed, PackedBatch, pack_pairs
from llm.parallel import all_gather_object, all_reduce_sum, is_sharded, numerics_of, shard_of
from llm.precision import Precision

__all__ = [
    "TaskData",
    "DPOOracle",
    "dpo_settings",
    "numerics",
    "reference_logps",
    "pair_losses",
    "held_out_metrics",
    "load_policy",
    "draw_pairs",
    "ACCUMULATE",
]

#: gradient accumulation modes of DPOOracle (see the module docstring)
ACCUMULATE = ("recompute", "by_task")


@dataclass
class TaskData:
    """One task's tokenised pairs with their cached numbers.

    ``reference_logps``: (n, 2) reference log-probs of (chosen, rejected) — sums, or
    length-averaged for IPO.  ``specialist_losses``: (n,) DPO loss of the task's
    specialist on each pair (zeros before specialists exist).  ``numerics``: the
    :func:`numerics` key they were made under, if known; an oracle under another policy
    refuses them (its excess losses would compare numbers made in different precisions).
    ``default_reference_losses``: (n,) DPO loss of DoReMi's one default-mixture reference
    model on each pair, when the run trained it (the ``"default_reference"`` capability).
    """

    name: str
    pairs: TokenizedPairs
    reference_logps: np.ndarray
    specialist_losses: np.ndarray
    numerics: dict | None = None
    default_reference_losses: np.ndarray | None = None


def dpo_settings(beta: float, loss_type: str, label_smoothing: float) -> dict:
    """The DPO keyword arguments, checked once by a dummy call to :func:`dpo_loss`."""
    z = torch.zeros(1)
    dpo_loss(z, z, z, z, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return {"beta": beta, "loss_type": loss_type, "label_smoothing": label_smoothing}


def _merge(tasks: Sequence[TaskData]) -> tuple[TokenizedPairs, np.ndarray, np.ndarray, np.ndarray]:
    """All tasks' pairs as one table; task i is rows offsets[i]:offsets[i+1]."""
    merged = TokenizedPairs(
        chosen=[s for t in tasks for s in t.pairs.chosen],
        rejected=[s for t in tasks for s in t.pairs.rejected],
        prompt_lengths=np.concatenate([t.pairs.prompt_lengths for t in tasks]),
        chosen_truncated=sum(t.pairs.chosen_truncated for t in tasks),
        rejected_truncated=sum(t.pairs.rejected_truncated for t in tasks),
        sources=[s for t in tasks for s in t.pairs.sources],
        fingerprint="+".join(t.pairs.fingerprint for t in tasks),
    )
    offsets = np.concatenate([[0], np.cumsum([len(t.pairs) for t in tasks])])
    ref = np.concatenate([t.reference_logps for t in tasks]).astype(np.float64)
    spec = np.concatenate([t.specialist_losses for t in tasks]).astype(np.float64)
    return merged, offsets, ref, spec


def numerics(
    model: torch.nn.Module, precision: Precision | None = None, layout: Layout | None = None
) -> dict[str, object]:
    """The cache key of the numbers ``model`` makes under ``precision`` and ``layout`` (the
    defaults of :func:`reference_logps`): device, hardware, autocast dtype, layout, FSDP's
    bfloat16 parameters (:func:`llm.parallel.numerics_of`), and on a CPU the intra-op thread
    count (it splits reductions, so it sets the last bits)."""
    precision = precision or Precision.of(model)
    key: dict[str, object] = precision.key() | resolve_layout(model, layout or Layout()).key()
    key |= numerics_of(model)
    if precision.device.type == "cpu":
        key["threads"] = torch.get_num_threads()
    return key


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    *,
    pad_id: int,
    average: bool,
    precision: Precision | None = None,
    layout: Layout | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """(n, 2) log-probs of (chosen, rejected) under ``model`` (eval mode, no dropout).

    Computed as the oracle computes its training losses: under ``precision`` (default: where
    the model is, no autocast) and ``layout`` (default ``Layout()``, resolved for the model).
    The model must already be on the precision's device.
    """
    precision = precision or Precision.of(model)
    precision.check(model)
    layout = resolve_layout(model, layout or Layout())
    max_length = max_length_of(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for lo in range(0, len(pairs), batch_size):
            index = np.arange(lo, min(lo + batch_size, len(pairs)))
            batch = pack_pairs(pairs, index, pad_id, layout, max_length=max_length)
            c, r = packed_logps(model, batch, precision, average=average)
            out.append(torch.stack([c, r], dim=1).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


def pair_losses(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    reference: np.ndarray,
    *,
    pad_id: int,
    dpo: dict,
    precision: Precision | None = None,
    layout: Layout | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Per-pair DPO loss and reward margin of ``model`` (no gradient): ``loss``, ``margin``.

    The same float32 arithmetic as the oracle's training loss, on log-probs made as
    :func:`reference_logps` makes them: a model scored against its own reference log-probs
    gets exactly log 2 (sigmoid loss), and against its own cached losses an excess of 0.
    """
    logps = reference_logps(
        model,
        pairs,
        pad_id=pad_id,
        average=dpo["loss_type"] == "ipo",
        precision=precision,
        layout=layout,
        batch_size=batch_size,
    )
    p = torch.from_numpy(logps).float()
    r = torch.from_numpy(np.asarray(reference, dtype=np.float64)).float()
    out = dpo_loss(p[:, 0], p[:, 1], r[:, 0], r[:, 1], **dpo)
    margin = out.chosen_rewards - out.rejected_rewards
    return {"loss": out.losses.double().numpy(), "margin": margin.double().numpy()}


def held_out_metrics(
    losses: np.ndarray, margins: np.ndarray, specialist_losses: np.ndarray
) -> dict[str, float]:
    """One task's held-out metrics from its per-pair DPO losses and reward margins
    (:func:`pair_losses`): mean ``loss``, reward ``accuracy`` (share of positive margins),
    mean ``excess`` and ``clipped`` excess over the specialist's losses on the same pairs.

    >>> row = held_out_metrics(np.array([0.5, 0.9]), np.array([1.0, -1.0]), np.array([0.7, 0.7]))
    >>> {k: round(v, 4) for k, v in row.items()}
    {'loss': 0.7, 'accuracy': 0.5, 'excess': 0.0, 'clipped': 0.1}
    """
    row = {"loss": float(losses.mean()), "accuracy": float((margins > 0).mean())}
    for name in ("excess", "clipped"):
        values, _ = example_scores(name, losses, specialist_losses)
        row[name] = float(values.mean())
    return row


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device`` without a stream synchronisation: a blocking host-to-device
    copy waits for the stream, and the step reads the device once (for the losses)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def _checked(
    tasks: Sequence[TaskData],
    precision: Precision | None,
    device: torch.device | str | None,
    autocast_dtype: torch.dtype | None,
    accumulate: str,
    adamw: str,
) -> Precision:
    """The oracle's arguments checked; its precision (the older device/autocast pair too)."""
    if not tasks:
        raise ValueError("tasks is empty: the oracle needs at least one task")
    for t in tasks:
        if len(t.pairs) == 0:
            raise ValueError(f"task {t.name!r} has no pairs (an empty task)")
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate={accumulate!r}: use one of {list(ACCUMULATE)}")
    if adamw not in ("fused", "foreach", "loop"):
        raise ValueError(f"adamw={adamw!r}: use 'fused', 'foreach' or 'loop'")
    if precision is None:
        precision = Precision(torch.device(device or "cpu"), autocast_dtype)
    elif device is not None or autocast_dtype is not None:
        raise ValueError(
            "give either precision or device/autocast_dtype, not both "
            "(precision = Precision(device, autocast_dtype))"
        )
    if precision.dtype == torch.float16:
        raise ValueError(
            "float16 autocast needs a gradient scaler (small gradients underflow to 0), and "
            "the DPO step runs none: use torch.bfloat16 (float32's range, the same speed on "
            "A100, H100 and later GPUs) or no autocast"
        )
    return precision


class DPOOracle(MixtureRoundsFromSteps):
    """amasim oracle for multi-task DPO on one policy (``max_replicates = 1``).

    ``policy`` holds the reference weights when the oracle is built; ``reset`` always
    restarts from them (DPO starts the policy at the reference).  ``eval_tasks`` default
    to the training tasks.  Optional capabilities (:mod:`amasim.capabilities`):
    ``"group_validation"`` (:meth:`evaluate_groups`: held-out DPO loss per eval task)
    and ``"mixture_rounds"`` (``train_on_mixture``: AdamW steps through ``step``).

    ``precision`` (or the older pair ``device``, ``autocast_dtype``) and ``layout`` set how
    every number is made (see the module docstring); give the TaskData reference log-probs
    and specialist losses made under the same policy (:func:`reference_logps`,
    :func:`pair_losses` with the same ``precision`` and ``layout``).  ``adamw``: the AdamW
    implementation, "fused" (one kernel for all parameters), "foreach" or "loop".
    ``adapter``: on a model with LoRA adapters (:mod:`llm.lora`), the adapter this oracle
    trains, or None for the base with every adapter off (full fine-tuning); it is selected
    at every ``reset``.  A policy wrapped for data parallelism (DDP, FSDP) trains as one
    rank of its group (:mod:`llm.parallel`).
    """

    max_replicates = 1
    metric_names: tuple[str, ...] = METRIC_NAMES  # what last_metrics reports

    def __init__(
        self,
        policy: torch.nn.Module,
        tasks: Sequence[TaskData],
        *,
        pad_id: int,
        dpo: dict,
        eval_tasks: Sequence[TaskData] | None = None,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
        precision: Precision | None = None,
        layout: Layout | None = None,
        micro_batch_size: int | None = None,
        accumulate: str = "recompute",
        adamw: str = "fused",
        eval_batch_size: int = 64,
        sample_stream: int = prng.SAMPLE_STREAM,
        adapter: str | None = None,
    ) -> None:
        precision = _checked(tasks, precision, device, autocast_dtype, accumulate, adamw)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1 (or None)")
        self.precision = precision
        self.device = precision.device
        self.autocast_dtype = precision.dtype
        # an FSDP2 module stays where its shards are (moving it would re-create them)
        self.policy = policy if is_sharded(policy) else policy.to(self.device)
        self.adapter = adapter
        self.lora = lora.has_adapters(policy)
        if adapter is not None and not self.lora:
            raise ValueError(
                f"adapter={adapter!r} but the policy holds no LoRA adapters: add them with "
                "llm.lora.add_adapters, or pass adapter=None"
            )
        self.layout = resolve_layout(self.policy, layout or Layout())
        self.numerics = numerics(self.policy, precision, self.layout)
        self.shard = shard_of(self.policy)  # (rank, world) of a data-parallel policy
        if accumulate == "by_task" and self.shard is not None:
            raise ValueError(
                "accumulate='by_task' runs a different number of backward passes per rank, "
                "which DDP and FSDP cannot synchronise: use 'recompute'"
            )
        for t in [*tasks, *(eval_tasks or [])]:
            if t.numerics is not None and t.numerics != self.numerics:
                raise ValueError(
                    f"task {t.name!r} holds numbers made under {t.numerics}, but this oracle "
                    f"computes under {self.numerics}: recompute them with reference_logps / "
                    "pair_losses under the oracle's precision and layout"
                )
        self.dpo, self.pad_id = dpo, pad_id
        self.task_names = tuple(t.name for t in tasks)
        self.task_sizes = tuple(len(t.pairs) for t in tasks)
        self.eval_tasks = list(eval_tasks or tasks)
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.micro_batch_size, self.accumulate, self.adamw = micro_batch_size, accumulate, adamw
        self.eval_batch_size, self.sample_stream = eval_batch_size, sample_stream
        self._pairs, self._offsets, self._ref, self._spec = _merge(tasks)
        self._default = None  # DoReMi's default-mixture reference losses, when given
        if all(t.default_reference_losses is not None for t in tasks):
            self._default = np.concatenate([t.default_reference_losses for t in tasks])
        else:  # offered only with the numbers: a mixer needing them is refused by name
            self.capabilities = tuple(c for c in CAPABILITIES if c != "default_reference")
        # float32 on the device once: a step indexes it there (the DPO loss is float32)
        self._ref_device = torch.from_numpy(self._ref).to(self.device, torch.float32)
        self._max_length = max_length_of(self.policy)
        self._average = dpo["loss_type"] == "ipo"
        self._select()
        self._initial = copy.deepcopy(self._policy_state())
        self._keys: np.ndarray | None = None
        self._metrics: dict[str, float] = {}
        self._metric_sums: torch.Tensor | None = None  # this step's, on the device
        self._skipped: torch.Tensor | None = None  # a step AdamW skipped (non-finite norm)
        self.tokens_seen = 0
        self.tokens_computed = 0

    @property
    def last_metrics(self) -> dict[str, float]:
        """Metrics of the last batch (:data:`llm.dpo.METRIC_NAMES`; the global batch's under
        data parallelism), copied to the host with the batch's losses."""
        return self._metrics

    @last_metrics.setter
    def last_metrics(self, value: dict[str, float]) -> None:
        self._metrics = value

    # ------------------------------------------------------------------ protocol
    def _select(self) -> None:
        """Make this oracle's parameters the trainable ones (its LoRA adapter, or the base)."""
        if is_sharded(self.policy):  # after a forward the root holds whole tensors: the shards
            self.policy.reshard()  # first, or the flags set below would go to those copies
        if self.lora:
            lora.use(self.policy, self.adapter)
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        if not names:
            raise ValueError("the policy has no trainable parameter (every one is frozen)")
        self._partial = len(names) < len(list(self.policy.parameters()))
        self._trainable = [p for p in self.policy.parameters() if p.requires_grad]

    def _policy_state(self) -> dict:
        """The trained part of the policy: its whole state dict, or (some parameters frozen:
        LoRA) the trainable parameters only; sharded, keyed by name, under FSDP."""
        if is_sharded(self.policy):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            self.policy.reshard()  # the state-dict API reads the parameters as registered
            options = StateDictOptions(ignore_frozen_params=self._partial)
            state = get_model_state_dict(self.policy, options=options)
            if self._partial:  # a frozen tied weight's second name (lm_head) stays: drop it
                named = self.policy.named_parameters(remove_duplicate=False)
                keep = {name for name, p in named if p.requires_grad}
                state = {k: v for k, v in state.items() if k in keep}
            return state
        state = self.policy.state_dict(keep_vars=True)
        if self._partial:
            state = {k: v for k, v in state.items() if getattr(v, "requires_grad", False)}
        return {k: v.detach() for k, v in state.items()}

    def _load_policy_state(self, state: dict) -> None:
        load_policy(self.policy, state, partial=self._partial)

    def reset(self, seeds: Sequence[int]) -> None:
        seeds = list(seeds)
        if len(seeds) != 1:
            raise ValueError(f"DPOOracle runs one replicate at a time, got {len(seeds)} seeds")
        self._select()  # another oracle on this model may have trained another adapter
        self._load_policy_state(self._initial)
        # Gradients left on the parameters by whoever trained the model before (the SFT that
        # made the reference, say) would be added to the first step's: drop them, so a run
        # starts the same whether its policy was just trained in this process or loaded.
        self.policy.zero_grad(set_to_none=True)
        # Dropout off (as TRL does): the policy starts exactly at the reference and its
        # losses are reproducible; gradients flow in eval mode all the same.
        self.policy.eval()
        self.optimizer = torch.optim.AdamW(
            self._trainable,
            lr=1e-3,
            weight_decay=self.weight_decay,
            **{"fused": {"fused": True}, "foreach": {"foreach": True}}.get(
                self.adamw, {"foreach": False}
            ),
        )
        self._keys = prng.replicate_keys(seeds, stream=self.sample_stream)
        self.draws = 0
        self.tokens_seen = 0
        self.tokens_computed = 0
        self._pending: tuple[Batch, object] | None = None
        # train_on_mixture (the capability, for callers of their own: the driver takes round
        # steps through amasim.mixing) draws from the mixture stream, shifted like the samples
        shift = self.sample_stream - prng.SAMPLE_STREAM
        self.reset_mixture_rounds(seeds, prng.MIXTURE_STREAM + shift)

    def sample(self, task_ids: np.ndarray) -> Batch:
        if self._keys is None:
            raise RuntimeError("call reset(seeds) before sample()")
        index = draw_pairs(self._keys, self.draws, task_ids, self._offsets)
        self.draws += 1
        return Batch(task_ids, self._spec[index], index)

    def _forward(self, index: np.ndarray, measure: bool = True) -> torch.Tensor:
        """Per-pair DPO losses (float32, on the device, with a graph unless no_grad); with
        ``measure`` their metric sums are added to the step's (no copy to the host)."""
        batch = self._packed(index)
        chosen, rejected = packed_logps(self.policy, batch, self.precision, average=self._average)
        ref = self._ref_device[_to_device(index, self.device)]
        out = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], **self.dpo)
        if measure:
            self.tokens_seen += batch.tokens
            sums = dpo_metric_sums(out, chosen, rejected)
            self._metric_sums = sums if self._metric_sums is None else self._metric_sums + sums
        return out.losses

    def _packed(self, index: np.ndarray, *, chosen_only: bool = False) -> PackedBatch:
        """The pairs ``index`` laid out for one forward pass (under FSDP, with a piece of
        every width any rank runs); their computed tokens counted."""
        batch = pack_pairs(
            self._pairs,
            index,
            self.pad_id,
            self.layout,
            max_length=self._max_length,
            chosen_only=chosen_only,
        )
        if self.shard is not None and is_sharded(self.policy):
            batch = _same_pieces(batch, self.pad_id)
        self.tokens_computed += batch.computed
        return batch

    def _chunks(self, n: int) -> list[slice]:
        size = self.micro_batch_size or n
        return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def losses(self, batch: Batch) -> np.ndarray:
        index = batch.data[0]
        chunks = self._chunks(len(index))
        self._metric_sums = None
        if len(chunks) == 1:
            losses = self._forward(index)
            self._pending = (batch, losses)
            values = losses.detach()
        elif self.accumulate == "by_task":
            values, grads = self._losses_by_task(batch)
            self._pending = (batch, grads)
        else:  # gradient accumulation: no graph now, forward + backward per chunk in step()
            with torch.no_grad():
                values = torch.cat([self._forward(index[c]) for c in chunks])
            self._pending = (batch, None)
        return self._to_host(values)[None, :]

    def _to_host(self, values: torch.Tensor) -> np.ndarray:
        """The step's one device-to-host copy: the per-pair losses the mixer scores, with the
        finiteness flags and the metric sums — summed over the ranks first, so every rank
        takes the same branch and records the global batch's metrics."""
        skipped = self._skipped if self._skipped is not None else values.new_zeros(())
        flags = torch.stack([(~torch.isfinite(values)).any(), skipped > 0]).double()
        shared = torch.cat([self._metric_sums, flags])
        if self.shard is not None:
            shared = all_reduce_sum(shared)
        host = torch.cat([values.double(), shared]).cpu().numpy()
        n, m = len(values), len(self.metric_names) + 1
        bad, skipped_before = host[n + m] > 0, host[n + m + 1] > 0
        self._skipped = None
        if skipped_before or bad:
            self._pending = None
            self.policy.zero_grad(set_to_none=True)
        if skipped_before:
            raise FloatingPointError(
                "the previous step's gradient norm was not finite, so AdamW skipped it: lower "
                "the learning rate or check the data; no parameter was changed by that step"
            )
        if bad:  # the protocol promises finite losses
            raise FloatingPointError(
                "non-finite DPO loss on this batch: lower the learning rate, check the data, or "
                "use bf16 instead of fp16; no parameter was changed"
            )
        self._metrics = metrics_from_sums(host[n : n + m], self.metric_names)
        return host[:n]

    def _losses_by_task(self, batch: Batch) -> tuple[torch.Tensor, dict[int, list]]:
        """Forward + backward per one-task micro-batch with unit weights: the losses, and
        G_i = Σ_{z in task i} ∇L_z per task i (the parameters' .grad is left empty)."""
        index, task_ids = batch.data[0], np.asarray(batch.task_ids)[0]
        params = [p for p in self.policy.parameters() if p.requires_grad]
        size = self.micro_batch_size or len(index)
        values = torch.empty(len(index), dtype=torch.float32, device=self.device)
        grads: dict[int, list] = {}
        for task in np.unique(task_ids):
            where = np.flatnonzero(task_ids == task)
            for lo in range(0, where.size, size):
                chunk = where[lo : lo + size]
                losses = self._forward(index[chunk])
                values[_to_device(chunk, self.device)] = losses.detach()
                losses.sum().backward()  # accumulates this task's chunks in .grad
            grads[int(task)] = [p.grad for p in params]
            for p in params:  # park G_i; the next task starts from empty gradients
                p.grad = None
        return values, grads

    def step(self, batch: Batch, loss_weights: np.ndarray, learning_rate: float) -> None:
        if self._pending is None or self._pending[0] is not batch:
            self.losses(batch)
        weights = _to_device(np.asarray(loss_weights[0], dtype=np.float32), self.device)
        _, pending = self._pending
        self._pending = None
        if isinstance(pending, torch.Tensor):
            (weights * pending).sum().backward()
        elif isinstance(pending, dict) and self._combine_task_grads(batch, loss_weights, pending):
            pass
        else:
            self.policy.zero_grad(set_to_none=True)
            index = batch.data[0]
            for c in self._chunks(len(index)):
                (weights[c] * self._forward(index[c], measure=False)).sum().backward()
        self._optimizer_step(learning_rate)

    def _optimizer_step(self, learning_rate: float) -> None:
        """Clip the gradient norm and step AdamW — unless the norm is not finite: a finite
        loss can still give inf/NaN gradients, and AdamW would spread them to every weight.
        Fused AdamW skips such a step on the device (its ``found_inf``), and the flag reaches
        the host with the next step's losses or the next checkpoint (no sync here); the other
        implementations check it at once."""
        max_norm = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._trainable, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP: the norm over every rank's shards
            norm = norm.full_tensor()
        skip = (~torch.isfinite(norm)).float()
        if self.adamw != "fused" and bool(skip):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"non-finite gradient norm ({norm.item()}): lower the learning rate or check "
                "the data; no parameter was changed by this step"
            )
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        if self.adamw == "fused":
            self.optimizer.found_inf = skip.to(self.device)
            self._skipped = skip if self._skipped is None else self._skipped + skip
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_skipped(self) -> None:
        """Raise if a step since the last copy to the host was skipped (a sync: checkpoints
        and evaluations only)."""
        if self._skipped is not None and bool(self._skipped > 0):
            self._skipped = None
            raise FloatingPointError(
                "a step's gradient norm was not finite, so AdamW skipped it: lower the "
                "learning rate or check the data; no parameter was changed by that step"
            )

    def _combine_task_grads(
        self, batch: Batch, loss_weights: np.ndarray, grads: dict[int, list]
    ) -> bool:
        """.grad = Σ_i c_i G_i when every example of task i has the weight c_i; else False.
        A non-finite G_i shows in the gradient norm (:meth:`_optimizer_step`)."""
        task_ids = np.asarray(batch.task_ids)[0]
        w = np.asarray(loss_weights, dtype=np.float64)[0]
        coef = {}
        for task in grads:
            values = w[task_ids == task]
            if not np.all(values == values[0]):
                return False
            coef[task] = float(values[0])
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for i, p in enumerate(params):
            total = None
            for task, g in grads.items():
                if g[i] is None:
                    continue
                total = (
                    g[i].mul_(coef[task]) if total is None else total.add_(g[i], alpha=coef[task])
                )
            p.grad = total
        return True

    def evaluate(self, score: str = "clipped", averaged: bool = False) -> np.ndarray:
        """Per-task mean ``score`` on the eval tasks, shape (1, k).

        This oracle keeps no average of its iterates: ``averaged`` evaluates the last
        iterate (the convex theory's θ̄ has no meaning for a non-convex network).
        """
        details = self.evaluate_tasks()
        return np.array([[d[score] for d in details.values()]])

    # ---------------------------------------------------------------- extras
    def evaluate_groups(self, score: str = "loss") -> np.ndarray:
        """Every eval task's held-out mean ``score`` at the current policy, shape (1, k)."""
        return self.evaluate(score)

    def default_reference_losses(self, batch: Batch) -> np.ndarray:
        """(1, N) loss of DoReMi's one default-mixture reference model on the batch's pairs
        (the ``"default_reference"`` capability; Xie et al. 2023 score the excess over it)."""
        if self._default is None:
            raise ValueError(
                "this oracle holds no default-mixture reference losses: DoReMi scores the "
                "excess over one reference trained on the natural mixture. Fix: build the "
                "TaskData with default_reference_losses (the pipeline trains that reference "
                "when [run] methods lists doremi), or use doremi-specialists"
            )
        return self._default[np.asarray(batch.data)]

    def pair_losses(self, pairs: TokenizedPairs, reference_logps: np.ndarray) -> dict:
        """Per-pair DPO loss and reward margin of the policy on ``pairs``, as this oracle
        evaluates (its precision, layout and batch size; :func:`pair_losses`)."""
        return pair_losses(
            self.policy,
            pairs,
            reference_logps,
            pad_id=self.pad_id,
            dpo=self.dpo,
            precision=self.precision,
            layout=self.layout,
            batch_size=self.eval_batch_size,
        )

    def evaluate_tasks(self, items: bool = False) -> dict[str, dict[str, Any]]:
        """Held-out DPO loss, excess and clipped excess vs the specialist, reward accuracy;
        with ``items`` also each pair's clipped excess (``row["items"]["clipped"]``, in the
        task's order: what a bootstrap over evaluation items resamples)."""
        self._check_skipped()
        out = {}
        for task in self.eval_tasks:
            res = self.pair_losses(task.pairs, task.reference_logps)
            row: dict[str, Any] = held_out_metrics(
                res["loss"], res["margin"], task.specialist_losses
            )
            if items:  # each pair's clipped excess, for the item bootstrap
                clipped, _ = example_scores("clipped", res["loss"], task.specialist_losses)
                row["items"] = {"clipped": clipped.tolist()}
            out[task.name] = row
        return out

    def state_dict(self) -> dict:
        """Everything a resumed run needs from the oracle: the trained parameters (all, or
        the adapter's), the optimizer, the data position."""
        self._check_skipped()  # a skipped step is a divergence, never a checkpoint
        if is_sharded(self.policy):
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            self.policy.reshard()  # parameters ↔ names as the optimizer holds them: the shards
            optimizer = get_optimizer_state_dict(self.policy, self.optimizer)
        else:
            optimizer = self.optimizer.state_dict()
        return {
            "policy": self._policy_state(),
            "optimizer": optimizer,
            "draws": self.draws,
            "keys": self._keys.copy(),
            "tokens_seen": self.tokens_seen,
            "tokens_computed": self.tokens_computed,
            "torch_rng": torch.get_rng_state(),
            "mixture_draws": self.mixture_draws,  # train_on_mixture's position
        }

    def load_state_dict(self, state: dict) -> None:
        self._load_policy_state(state["policy"])
        self.policy.zero_grad(set_to_none=True)  # a checkpoint is taken after zero_grad
        if is_sharded(self.policy):
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

            self.policy.reshard()
            set_optimizer_state_dict(self.policy, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.draws = int(state["draws"])
        self._keys = np.asarray(state["keys"], dtype=np.uint64)
        self.tokens_seen = int(state["tokens_seen"])
        self.tokens_computed = int(state.get("tokens_computed", 0))  # older checkpoints lack it
        torch.set_rng_state(state["torch_rng"])
        # checkpoints written before mixture rounds existed never trained on one
        self.mixture_draws = int(state.get("mixture_draws", 0))
        self._pending, self._skipped = None, None


def draw_pairs(
    keys: np.ndarray, draw: int, task_ids: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """The rows of the merged pair table (task i: rows ``offsets[i]:offsets[i+1]``) that
    draw number ``draw`` takes for ``task_ids`` (R, n): a uniform pair of each entry's task,
    from the counter-based uniforms of that draw (a resumed run draws the same pairs).

    >>> from amasim import prng
    >>> keys = prng.replicate_keys([0], stream=prng.SAMPLE_STREAM)
    >>> rows = draw_pairs(keys, 0, np.array([[0, 1, 1]]), np.array([0, 5, 7]))
    >>> bool((rows[0, 0] < 5) and (5 <= rows[0, 1:]).all() and (rows[0, 1:] < 7).all())
    True
    """
    u = prng.uniform(keys, draw, task_ids.shape[1])
    sizes = np.diff(offsets)
    return offsets[:-1][task_ids] + prng.integers(u, sizes[task_ids])


def _same_pieces(batch: PackedBatch, pad_id: int) -> PackedBatch:
    """``batch`` with a piece of every width any rank runs, in width order: FSDP gathers the
    parameters in every forward call, so the ranks must make the same calls.  A width this
    rank lacks gets a one-row piece of padding after one prompt token, which scores nothing
    (its gradient is zero) but takes part in every collective, forward and backward."""
    widths = [int(p.input_ids.shape[1]) for p in batch.pieces]
    every = all_gather_object(widths)
    union = sorted({w for ws in every for w in ws})
    if union == widths:
        return batch
    have = {w: p for w, p in zip(widths, batch.pieces)}
    empty = torch.zeros(0, dtype=torch.long)
    pieces = []
    for width in union:
        if width in have:
            pieces.append(have[width])
            continue
        segments = torch.full((1, width), PAD, dtype=torch.int8)
        segments[0, 0] = PROMPT  # one real token: no row of the mask is empty
        ids = torch.full((1, width), pad_id, dtype=torch.long)
        pieces.append(Packed(ids, torch.zeros_like(ids), segments, empty, empty, empty))
    computed = batch.computed + sum(union) - sum(widths)
    return batch._replace(pieces=pieces, computed=computed)


def load_policy(model: torch.nn.Module, state: dict, *, partial: bool | None = None) -> None:
    """Load a policy state as :meth:`DPOOracle.state_dict` saves it into ``model`` (plain,
    DDP or FSDP; sharded or whole tensors): the whole state dict, or with ``partial`` the
    trained parameters alone (default: when every entry belongs to a LoRA adapter).  A
    state of one adapter makes that adapter the active one, so a specialist's checkpoint
    loaded for generation computes as that specialist."""
    adapter_entries = bool(state) and all(".lora_" in k for k in state)
    partial = adapter_entries if partial is None else partial
    if adapter_entries:
        names = {k.split(".lora_", 1)[1].split(".")[1] for k in state}  # lora_A.<name>.weight
        if len(names) == 1 and lora.active(model) not in names:
            lora.use(model, names.pop())
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        model.reshard()  # after a forward the root holds whole tensors: load into the shards
        whole = not any(hasattr(v, "full_tensor") for v in state.values())
        options = StateDictOptions(full_state_dict=whole, strict=not partial)
        set_model_state_dict(model, state, options=options)
        return
    result = model.load_state_dict(state, strict=not partial)
    if result.unexpected_keys:
        raise KeyError(
            f"policy state keys {result.unexpected_keys[:3]} are not in the model: a state of "
            "another model (or of other LoRA adapters)"
        )
