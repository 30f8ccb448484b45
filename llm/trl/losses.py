"""Per-pair DPO losses out of TRL's own loss code, for every ``loss_type`` TRL offers.

TRL's :class:`~trl.DPOTrainer` reduces its per-pair losses to a batch mean inside
``_compute_loss``; a mixer needs them per pair, per task.  Rather than re-implement TRL's
fifteen loss types (and its f-divergences, ``ld_alpha``, WPO weighting and MoE auxiliary
loss), :func:`pair_losses` runs TRL's ``compute_loss`` once, unchanged, with ``trainer.beta``
replaced for the duration of the call by a *probe*: a 0-dim tensor that every per-pair loss
of TRL 1.16 multiplies or divides by (``β·Δ`` for sigmoid, hinge, robust, …; ``1/(2β)``
for IPO; ``0.5/β`` for SPPO).  Everything computed from the probe is tagged, and the
batch means TRL takes of tagged 1-D tensors of one entry per pair are recorded, in order:
the first ones are the per-pair losses of TRL's loss loop (its logging comes after).

The probe computes exactly what the float ``beta`` computes: an operation between the
probe and a tensor is carried out with the Python float in its place (``β·x`` is
``0.1 * x``, bit for bit, in bf16 as in fp32), and scalar arithmetic on it (``1/(2β)``)
is done in Python.  So TRL's returned loss is unchanged, and :func:`pair_losses` checks
that the recorded terms rebuild it — a TRL whose loss code differs raises a clear error
instead of silently mis-weighting.

Loss terms that are not per pair are kept apart as ``batch_term``: TRL's ``"sft"`` loss
(a token mean over the whole batch) and a MoE router loss.  ``"aot"`` and
``"aot_unpaired"`` sort the batch's log-ratios, so no pair has a loss of its own: they are
refused (:func:`check_loss_types`).

The probe needs a Python float ``beta`` on the trainer and touches nothing else; it is
removed when the call returns or raises.
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["BATCH_LEVEL", "COUPLED", "PairLosses", "check_loss_types", "pair_losses", "probe"]

BATCH_LEVEL = frozenset({"sft"})  # a term over the whole batch, not one per pair
COUPLED = frozenset({"aot", "aot_unpaired"})  # sorts the batch: no per-pair loss exists

# The recording of the call in progress: {"n": pairs, "terms": [...]}; None outside a call.
_SINK: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ama_loss_sink", default=None)

# Arithmetic of the probe with Python numbers, done in Python as TRL's float beta would be.
# torch hands the reflected operators over with the probe first: __rdiv__(β, 1) is 1/β.
_SCALAR_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "mul": operator.mul,
    "__mul__": operator.mul,
    "__rmul__": lambda a, b: b * a,
    "add": operator.add,
    "__add__": operator.add,
    "__radd__": lambda a, b: b + a,
    "sub": operator.sub,
    "__sub__": operator.sub,
    "__rsub__": lambda a, b: b - a,
    "rsub": lambda a, b: b - a,
    "div": operator.truediv,
    "true_divide": operator.truediv,
    "__truediv__": operator.truediv,
    "__div__": operator.truediv,
    "__rdiv__": lambda a, b: b / a,
    "__rtruediv__": lambda a, b: b / a,
    "pow": operator.pow,
    "__pow__": operator.pow,
    "__rpow__": lambda a, b: b**a,
}


class _Tagged(torch.Tensor):
    """A tensor computed from the probe; records the batch means of per-pair vectors."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        sink = _SINK.get()
        if sink is not None and func in (torch.Tensor.mean, torch.mean) and not kwargs:
            x = args[0]
            if len(args) == 1 and x.dim() == 1 and x.shape[0] == sink["n"]:
                sink["terms"].append(x.as_subclass(torch.Tensor))
        return super().__torch_function__(func, types, args, kwargs)


class _Beta(_Tagged):
    """The probe: a 0-dim tensor standing for the Python float ``_value``."""

    _value: float

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        plain_args = [a._value if isinstance(a, _Beta) else a for a in args]
        plain_kwargs = {k: v._value if isinstance(v, _Beta) else v for k, v in kwargs.items()}
        name = getattr(func, "__name__", "")
        if not any(isinstance(a, torch.Tensor) for a in plain_args):  # β with numbers only
            if name in _SCALAR_OPS and len(plain_args) == 2 and not plain_kwargs:
                return probe(_SCALAR_OPS[name](*plain_args))
            if name in ("neg", "__neg__") and len(plain_args) == 1:
                return probe(-plain_args[0])
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*(torch.tensor(a, dtype=torch.float64) for a in plain_args))
            return probe(float(out))
        if name in _SCALAR_OPS and len(plain_args) == 2 and not plain_kwargs:
            out = _SCALAR_OPS[name](*plain_args)  # e.g. 0.1 * x: TRL's own float arithmetic
        else:
            out = func(*plain_args, **plain_kwargs)
        return _tag(out)


def probe(value: float) -> torch.Tensor:
    """A probe standing for the float ``value`` (see the module docstring)."""
    t = torch.tensor(float(value), dtype=torch.float64).as_subclass(_Beta)
    t._value = float(value)
    return t


def _tag(out: Any) -> Any:
    if isinstance(out, torch.Tensor) and not isinstance(out, _Tagged):
        return out.as_subclass(_Tagged)
    return out


class PairLosses(NamedTuple):
    """What :func:`pair_losses` read from one call of TRL's ``compute_loss``.

    ``loss``: TRL's batch loss, as DPOTrainer returns it.  ``per_pair``: (n,) the
    per-pair loss Σ_t w_t ℓ_t(z) over TRL's per-pair loss types t with their
    ``loss_weights`` w_t (graph attached when gradients are on).  ``batch_term``: the rest
    of ``loss`` (batch-level terms: ``"sft"``, the MoE router loss), so that
    ``loss = Σ_t w_t mean(ℓ_t) + batch_term``.  ``outputs``: the model outputs when asked
    for (``return_outputs=True``), else ``None``.
    """

    loss: torch.Tensor
    per_pair: torch.Tensor
    batch_term: torch.Tensor
    outputs: Any = None


def check_loss_types(loss_types: str | Sequence[str]) -> tuple[str, ...]:
    """The loss types as a tuple, if they give every pair a loss of its own; else raise."""
    types = (loss_types,) if isinstance(loss_types, str) else tuple(loss_types)
    coupled = [t for t in types if t in COUPLED]
    if coupled:
        raise ValueError(
            f"loss_type {coupled[0]!r} sorts the batch's log-ratios, so a pair has no loss of "
            "its own for a mixer to score and weight: use a per-pair loss type (e.g. 'sigmoid', "
            "'ipo', 'hinge', 'robust')"
        )
    if all(t in BATCH_LEVEL for t in types):
        raise ValueError(
            f"loss_type={list(types)} has no per-pair DPO term (the 'sft' loss is a token mean "
            "over the whole batch): add a per-pair loss type such as 'sigmoid'"
        )
    return types


def pair_losses(
    trainer: Any,
    model: torch.nn.Module,
    inputs: dict[str, Any],
    *,
    compute: Callable[..., Any] | None = None,
    return_outputs: bool = False,
) -> PairLosses:
    """Run TRL's ``compute_loss`` on ``inputs`` and return its per-pair losses.

    ``trainer`` is a :class:`trl.DPOTrainer` (its ``beta``, ``loss_types`` and
    ``loss_weights`` are read); ``compute`` is the bound ``compute_loss`` to call (default:
    ``DPOTrainer.compute_loss`` of ``trainer``; a subclass passes ``super().compute_loss``).
    Works with gradients on or off.
    """
    if compute is None:
        from trl import DPOTrainer

        def compute(model, inputs, return_outputs=False):
            return DPOTrainer.compute_loss(trainer, model, inputs, return_outputs=return_outputs)

    types = check_loss_types(trainer.loss_types)
    beta = trainer.beta
    if isinstance(beta, torch.Tensor) or not isinstance(beta, (int, float)):
        raise TypeError(f"trainer.beta must be a Python float, got {type(beta).__name__}")
    n = inputs["input_ids"].shape[0] // 2  # TRL stacks [chosen; rejected]
    sink = {"n": n, "terms": []}
    token = _SINK.set(sink)
    trainer.beta = probe(beta)
    try:
        result = compute(model, inputs, return_outputs=return_outputs)
    finally:
        trainer.beta = beta
        _SINK.reset(token)
    loss, outputs = result if return_outputs else (result, None)
    loss = loss.as_subclass(torch.Tensor)
    weights = list(trainer.loss_weights)
    per_pair_types = [(t, w) for t, w in zip(types, weights, strict=True) if t not in BATCH_LEVEL]
    terms = sink["terms"][: len(per_pair_types)]
    if len(terms) != len(per_pair_types):
        raise RuntimeError(_mismatch(f"found {len(terms)} of {len(per_pair_types)} loss terms"))
    mean_part = 0.0
    for (_, w), term in zip(per_pair_types, terms, strict=True):
        mean_part = mean_part + term.mean() * w  # TRL's own order: loss += mean · weight
    batch_term = loss - mean_part
    has_batch_terms = len(per_pair_types) < len(types) or getattr(trainer, "aux_loss_enabled", 0)
    if not has_batch_terms:
        value, rest = float(loss.detach()), float(batch_term.detach())
        if abs(rest) > 16 * torch.finfo(loss.dtype).eps * (1.0 + abs(value)):
            raise RuntimeError(
                _mismatch(f"the terms add up to {value - rest!r}, TRL's loss is {value!r}")
            )
        batch_term = torch.zeros((), dtype=loss.dtype, device=loss.device)
    per_pair = terms[0] * per_pair_types[0][1]
    for (_, w), term in zip(per_pair_types[1:], terms[1:], strict=True):
        per_pair = per_pair + term * w
    return PairLosses(loss, per_pair, batch_term, outputs)


def _mismatch(what: str) -> str:
    import trl

    return (
        f"could not read per-pair losses from TRL {trl.__version__}'s DPOTrainer ({what}): "
        "its loss code differs from the TRL versions llm.trl supports (1.16); install the "
        "pinned version, pip install -e '.[trl]'"
    )
