"""The multi-task DPO oracle: the amasim oracle protocol over a PyTorch policy.

Every amasim mixer drives it unchanged (see :mod:`amasim.oracle` for the protocol).  One
training step, as the loop in :mod:`amasim.train` calls it:

1. ``sample(task_ids)`` draws one pair of task ``task_ids[0, n]`` per entry (counter-based,
   seeded, so a resumed run draws the same pairs) and returns the cached specialist
   losses ℓ(z) of those pairs;
2. ``losses(batch)`` runs ONE forward pass over chosen and rejected together, reads the
   reference log-probs from the cache (the reference model never runs during training)
   and returns the per-pair DPO losses (Rafailov et al. 2023, eq. 7);
3. ``step(batch, w, lr)`` back-propagates Σ_z w_z L_z — a reweighting mixer puts α_i/n_i
   in w, a resampling one 1/B — clips the gradient norm and takes an AdamW step.

With ``micro_batch_size`` smaller than the batch, ``losses`` runs the micro-batches
without a graph and ``step`` runs forward + backward per micro-batch (gradient
accumulation: one extra forward pass for bounded memory).  A non-finite loss raises
``FloatingPointError`` before any parameter changes.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from amasim import prng
from amasim.capabilities import MixtureRoundsFromSteps
from amasim.oracle import Batch
from amasim.scores import example_scores
from llm.data import TokenizedPairs, collate_pairs
from llm.dpo import concatenated_forward, dpo_loss, dpo_metrics

__all__ = ["TaskData", "DPOOracle", "dpo_settings", "reference_logps", "pair_losses"]


@dataclass
class TaskData:
    """One task's tokenised pairs with their cached numbers.

    ``reference_logps``: (n, 2) reference log-probs of (chosen, rejected) — sums, or
    length-averaged for IPO.  ``specialist_losses``: (n,) DPO loss of the task's
    specialist on each pair (zeros before specialists exist).
    """

    name: str
    pairs: TokenizedPairs
    reference_logps: np.ndarray
    specialist_losses: np.ndarray


def dpo_settings(beta: float, loss_type: str, label_smoothing: float) -> dict:
    """The DPO keyword arguments, checked once by a dummy call to :func:`dpo_loss`."""
    z = torch.zeros(1)
    dpo_loss(z, z, z, z, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return {"beta": beta, "loss_type": loss_type, "label_smoothing": label_smoothing}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    *,
    pad_id: int,
    average: bool,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """(n, 2) log-probs of (chosen, rejected) under ``model`` (eval mode, no dropout)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for lo in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs, np.arange(lo, min(lo + batch_size, len(pairs))), pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, autocast_dtype):
            c, r = concatenated_forward(model, batch, average_logps=average)
        out.append(torch.stack([c, r], dim=1).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def pair_losses(
    model: torch.nn.Module,
    pairs: TokenizedPairs,
    reference: np.ndarray,
    *,
    pad_id: int,
    dpo: dict,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Per-pair DPO loss and reward margin of ``model`` (no gradient): ``loss``, ``margin``."""
    logps = reference_logps(
        model,
        pairs,
        pad_id=pad_id,
        average=dpo["loss_type"] == "ipo",
        batch_size=batch_size,
        device=device,
        autocast_dtype=autocast_dtype,
    )
    p, r = torch.from_numpy(logps), torch.from_numpy(reference)
    out = dpo_loss(p[:, 0], p[:, 1], r[:, 0], r[:, 1], **dpo)
    margin = out.chosen_rewards - out.rejected_rewards
    return {"loss": out.losses.numpy(), "margin": margin.numpy()}


class DPOOracle(MixtureRoundsFromSteps):
    """amasim oracle for multi-task DPO on one policy (``max_replicates = 1``).

    ``policy`` holds the reference weights when the oracle is built; ``reset`` always
    restarts from them (DPO starts the policy at the reference).  ``eval_tasks`` default
    to the training tasks.  Optional capabilities (:mod:`amasim.capabilities`):
    ``"group_validation"`` (:meth:`evaluate_groups`: held-out DPO loss per eval task)
    and ``"mixture_rounds"`` (``train_on_mixture``: AdamW steps through ``step``).
    """

    max_replicates = 1

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
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        micro_batch_size: int | None = None,
        eval_batch_size: int = 64,
        sample_stream: int = prng.SAMPLE_STREAM,
    ) -> None:
        if not tasks:
            raise ValueError("tasks is empty: the oracle needs at least one task")
        for t in tasks:
            if len(t.pairs) == 0:
                raise ValueError(f"task {t.name!r} has no pairs (an empty task)")
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.dpo = dpo
        self.pad_id = pad_id
        self.task_names = tuple(t.name for t in tasks)
        self.task_sizes = tuple(len(t.pairs) for t in tasks)
        self.eval_tasks = list(eval_tasks or tasks)
        self.weight_decay, self.grad_clip = weight_decay, grad_clip
        self.autocast_dtype = autocast_dtype
        self.micro_batch_size = micro_batch_size
        self.eval_batch_size = eval_batch_size
        self.sample_stream = sample_stream  # data-parallel ranks draw from one stream each
        self._pairs, self._offsets, self._ref, self._spec = _merge(tasks)
        self._initial = copy.deepcopy(policy.state_dict())
        self._keys: np.ndarray | None = None
        self.tokens_seen = 0
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ protocol
    def reset(self, seeds: Sequence[int]) -> None:
        seeds = list(seeds)
        if len(seeds) != 1:
            raise ValueError(f"DPOOracle runs one replicate at a time, got {len(seeds)} seeds")
        self.policy.load_state_dict(self._initial)
        # Gradients left on the parameters by whoever trained the model before (the SFT that
        # made the reference, say) would be added to the first step's: drop them, so a run
        # starts the same whether its policy was just trained in this process or loaded.
        self.policy.zero_grad(set_to_none=True)
        # Dropout off (as TRL does): the policy starts exactly at the reference and its
        # losses are reproducible; gradients flow in eval mode all the same.
        self.policy.eval()
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=1e-3, weight_decay=self.weight_decay
        )
        self._keys = prng.replicate_keys(seeds, stream=self.sample_stream)
        self.draws = 0
        self.tokens_seen = 0
        self._pending: tuple[Batch, torch.Tensor | None] | None = None
        # the rank's shift of the sample stream (llm.distributed.rank_streams) applies too
        rank_shift = self.sample_stream - prng.SAMPLE_STREAM
        self.reset_mixture_rounds(seeds, prng.MIXTURE_STREAM + rank_shift)

    def sample(self, task_ids: np.ndarray) -> Batch:
        if self._keys is None:
            raise RuntimeError("call reset(seeds) before sample()")
        u = prng.uniform(self._keys, self.draws, task_ids.shape[1])
        self.draws += 1
        sizes = np.diff(self._offsets)
        index = self._offsets[:-1][task_ids] + prng.integers(u, sizes[task_ids])
        return Batch(task_ids, self._spec[index], index)

    def _forward(self, index: np.ndarray) -> torch.Tensor:
        batch = collate_pairs(self._pairs, index, self.pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self.tokens_seen += int(batch["attention_mask"].sum())
        with _autocast(self.device, self.autocast_dtype):
            chosen, rejected = concatenated_forward(
                self.policy, batch, average_logps=self.dpo["loss_type"] == "ipo"
            )
        ref = torch.from_numpy(self._ref[index]).to(self.device, torch.float32)
        out = dpo_loss(chosen.float(), rejected.float(), ref[:, 0], ref[:, 1], **self.dpo)
        self.last_metrics = dpo_metrics(out, chosen.detach(), rejected.detach())
        return out.losses

    def _chunks(self, n: int) -> list[slice]:
        size = self.micro_batch_size or n
        return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def losses(self, batch: Batch) -> np.ndarray:
        index = batch.data[0]
        chunks = self._chunks(len(index))
        if len(chunks) == 1:
            losses = self._forward(index)
            self._pending = (batch, losses)
            values = losses.detach()
        else:  # gradient accumulation: no graph now, forward + backward per chunk in step()
            with torch.no_grad():
                values = torch.cat([self._forward(index[c]) for c in chunks])
            self._pending = (batch, None)
        if not torch.isfinite(values).all():  # the protocol promises finite losses
            self._pending = None
            raise FloatingPointError(
                "non-finite DPO loss on this batch: lower the learning rate, check the data, or "
                "use bf16 instead of fp16; no parameter was changed"
            )
        return values.double().cpu().numpy()[None, :]

    def step(self, batch: Batch, loss_weights: np.ndarray, learning_rate: float) -> None:
        if self._pending is None or self._pending[0] is not batch:
            self.losses(batch)
        weights = torch.as_tensor(loss_weights[0], dtype=torch.float32, device=self.device)
        _, losses = self._pending
        self._pending = None
        if losses is not None:
            self._backward((weights * losses).sum())
        else:
            index = batch.data[0]
            try:
                for c in self._chunks(len(index)):
                    self._backward((weights[c] * self._forward(index[c])).sum())
            except FloatingPointError:
                self.optimizer.zero_grad(set_to_none=True)  # drop the partial accumulation
                raise
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _backward(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}): lower the learning rate, check the "
                "data, or use bf16 instead of fp16; no parameter was changed by this step"
            )
        loss.backward()

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

    def evaluate_tasks(self) -> dict[str, dict[str, float]]:
        """Held-out DPO loss, excess and clipped excess vs the specialist, reward accuracy."""
        out = {}
        for task in self.eval_tasks:
            res = pair_losses(
                self.policy,
                task.pairs,
                task.reference_logps,
                pad_id=self.pad_id,
                dpo=self.dpo,
                batch_size=self.eval_batch_size,
                device=self.device,
                autocast_dtype=self.autocast_dtype,
            )
            row = {"loss": float(res["loss"].mean()), "accuracy": float((res["margin"] > 0).mean())}
            for name in ("excess", "clipped"):
                values, _ = example_scores(name, res["loss"], task.specialist_losses)
                row[name] = float(values.mean())
            out[task.name] = row
        return out

    def state_dict(self) -> dict:
        """Everything a resumed run needs from the oracle (model, optimizer, data position)."""
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "draws": self.draws,
            "keys": self._keys.copy(),
            "tokens_seen": self.tokens_seen,
            "torch_rng": torch.get_rng_state(),
            "mixture_draws": self.mixture_draws,  # train_on_mixture's position
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy.zero_grad(set_to_none=True)  # a checkpoint is taken after zero_grad
        self.optimizer.load_state_dict(state["optimizer"])
        self.draws = int(state["draws"])
        self._keys = np.asarray(state["keys"], dtype=np.uint64)
        self.tokens_seen = int(state["tokens_seen"])
        torch.set_rng_state(state["torch_rng"])
        # checkpoints written before mixture rounds existed never trained on one
        self.mixture_draws = int(state.get("mixture_draws", 0))
        self._pending = None
