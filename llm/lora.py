"""LoRA adapters through PEFT: the reference is the base model with its adapters off, each
specialist an adapter, the generalist an adapter or the base fully fine-tuned.

LoRA (Hu et al. 2022, eq. 3) adds to a frozen weight W₀ of a target layer a low-rank update

    W = W₀ + ΔW,    ΔW = (alpha / r) · B A,    A ∈ R^{r×d_in}, B ∈ R^{d_out×r},

with A drawn at random (PEFT's Kaiming-uniform) and B = 0, so a fresh adapter leaves the
model's function unchanged.  :func:`add_adapters` injects named adapters into every target
layer with :func:`peft.inject_adapter_in_model` — in place, keeping the model's class and
forward (the built-in GPT and :class:`llm.hf.HFCausalLM` alike); the base weights are then
kept under ``<layer>.base_layer.weight``.  One copy of the base serves every adapter:

* the reference is the model with its adapters off (:func:`use` with ``None``, or the
  :func:`adapters_off` context): no second copy of the weights, and its log-probs are those
  of the base model exactly (a disabled adapter is skipped);
* each specialist is the adapter ``"specialist"`` trained on one task and saved with the
  task's checkpoint (k adapters on disk instead of k models);
* the generalist trains the adapter ``"generalist"``, or the base itself (``None``).

Merges act on the adapters' updates ΔW_i (:func:`deltas`): linear, task arithmetic, TIES
and DARE of :mod:`amasim.merging` on the task vectors ΔW_i (base 0), added to W₀
(:func:`merge_specialists` with ``space="deltas"``), or the same merge of the full weights
W₀ + ΔW_i with the base W₀ (``space="weights"``) — the same task vectors, so the same model
up to rounding.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 4))
>>> add_adapters(model, ["specialist"], r=2, alpha=4, target_modules=["0"], seed=0)
>>> adapters(model), sorted(k for k, p in model.named_parameters() if p.requires_grad)
(['specialist'], ['0.base_layer.bias', '0.base_layer.weight'])
>>> use(model, "specialist")
>>> sorted(k for k, p in model.named_parameters() if p.requires_grad)
['0.lora_A.specialist.weight', '0.lora_B.specialist.weight']
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "SPECIALIST",
    "GENERALIST",
    "add_adapters",
    "adapters",
    "has_adapters",
    "use",
    "active",
    "adapters_off",
    "adapter_state",
    "deltas",
    "merge_specialists",
]

#: the adapter every specialist trains (one task at a time; each saved with its checkpoint)
SPECIALIST = "specialist"
#: the adapter of the generalist (when it does not fine-tune the base)
GENERALIST = "generalist"


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            "LoRA needs the 'peft' package: pip install 'amasim[hf]' (or set [model] lora.r = 0)"
        ) from err
    return peft


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every LoRA layer of ``model``, in module order."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA layers (PEFT is not imported to tell)."""
    return any(
        isinstance(getattr(m, "lora_A", None), nn.ModuleDict) for m in _bare(model).modules()
    )


def _bare(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP's replica


def adapters(model: nn.Module) -> list[str]:
    """The names of the adapters ``model`` holds, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in _layers(_bare(model)):
        names.update(dict.fromkeys(layer.lora_A.keys()))
    return list(names)


def add_adapters(
    model: nn.Module,
    names: Sequence[str],
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str],
    seed: int = 0,
) -> None:
    """Inject one LoRA adapter per name into the layers named by ``target_modules`` (PEFT's
    matching: a module whose name ends with an entry; ``["all-linear"]``: every linear layer
    of the transformer blocks), in place.

    Adapter i's A is drawn from ``torch.manual_seed`` of ``SeedSequence([seed, i])`` (the
    global RNG is left as it was); B = 0.  Afterwards the adapters are off and the base is
    trainable (:func:`use` with ``None``): the model computes as before.
    """
    peft = _peft()
    if not names:
        raise ValueError("names is empty: give the adapters to add, e.g. ['specialist']")
    if r < 1:
        raise ValueError(f"r={r}: the LoRA rank must be >= 1")
    if not target_modules:
        raise ValueError(
            "target_modules is empty: name the layers to adapt, e.g. ['q_proj', 'v_proj'] "
            "(['c_attn', 'c_proj', 'c_fc'] for the built-in GPT), or ['all-linear']"
        )
    present = adapters(model)
    clash = sorted(set(present) & set(names))
    if clash:
        raise ValueError(f"adapters {clash} are already in the model: pick other names")
    bare = _bare(model)
    modules = list(target_modules)
    if modules == ["all-linear"]:
        modules = _all_linear(bare)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules)
    for i, name in enumerate(names):
        state = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # a second adapter: PEFT warns that the model already holds a peft_config
            warnings.filterwarnings("ignore", message=".*peft_config.*", category=UserWarning)
            # GPT-2's Conv1D stores W transposed: PEFT notices and says so, per layer
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*", category=UserWarning)
            torch.manual_seed(state)
            try:
                peft.inject_adapter_in_model(config, bare, adapter_name=name)
            except ValueError as err:
                raise ValueError(
                    f"LoRA target_modules {list(target_modules)} match no layer of "
                    f"{type(bare).__name__} ({err}). Fix: name layers of this model"
                ) from None
    use(model, None)


def _all_linear(model: nn.Module) -> list[str]:
    """The full names of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) inside the
    transformer blocks of ``model`` (:func:`llm.parallel.blocks_of`; the output head and
    the embeddings are left out)."""
    from llm.parallel import blocks_of

    inside = {id(m) for block in blocks_of(model) for m in block.modules()}
    names = [
        name
        for name, m in model.named_modules()
        if id(m) in inside and (isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    ]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no linear layer inside its transformer blocks: name "
            "the layers to adapt in target_modules"
        )
    return names


def use(model: nn.Module, adapter: str | None) -> None:
    """Train ``adapter`` alone (active, its A and B trainable, the base frozen), or with
    ``None`` the base with every adapter off (full fine-tuning; the reference's function)."""
    bare = _bare(model)
    layers = _layers(bare)
    if adapter is not None and adapter not in adapters(bare):
        raise ValueError(f"adapter {adapter!r} is not in the model (it holds {adapters(bare)})")
    lora_params = set()  # ids
    for _, layer in layers:
        for name in ("lora_A", "lora_B"):
            lora_params.update(id(p) for p in getattr(layer, name).parameters())
        if adapter is None:
            layer.enable_adapters(False)
        else:
            layer.set_adapter(adapter)
            layer.enable_adapters(True)
        for name in ("lora_A", "lora_B"):  # PEFT's switches set requires_grad their own way
            for key, module in getattr(layer, name).items():
                module.requires_grad_(key == adapter)
    for p in bare.parameters():
        if id(p) not in lora_params:
            p.requires_grad_(adapter is None)


def active(model: nn.Module) -> str | None:
    """The adapter ``model`` computes with, or None (adapters off, or none held)."""
    for _, layer in _layers(_bare(model)):
        if layer.disable_adapters:
            return None
        return layer.active_adapters[0] if layer.active_adapters else None
    return None


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """The base model's function inside the block (the reference, or a merge loaded into
    the base weights); the active adapter and what trains are restored afterwards.  A model
    without adapters is left alone."""
    if not has_adapters(model):
        yield
        return
    before, trainable = active(model), {p: p.requires_grad for p in model.parameters()}
    use(model, None)
    try:
        yield
    finally:
        if before is not None:
            use(model, before)
        for p, flag in trainable.items():
            p.requires_grad_(flag)


def adapter_state(state: Mapping[str, Any], adapter: str) -> dict[str, Any]:
    """The entries of ``state`` that belong to ``adapter`` (its A and B of every layer)."""
    marks = (f".lora_A.{adapter}.", f".lora_B.{adapter}.")
    return {k: v for k, v in state.items() if any(m in k for m in marks)}


def deltas(model: nn.Module, state: Mapping[str, Any], adapter: str) -> dict[str, torch.Tensor]:
    """ΔW = (alpha/r) · B A of every LoRA layer of ``model``, for the A and B of ``adapter``
    found in ``state`` (e.g. a specialist's checkpoint), keyed by the base weight they add
    to (``<layer>.base_layer.weight``); float32 on the CPU, transposed where the layer stores
    W transposed (``fan_in_fan_out``, GPT-2's Conv1D)."""
    out = {}
    for name, layer in _layers(_bare(model)):
        keys = (f"{name}.lora_A.{adapter}.weight", f"{name}.lora_B.{adapter}.weight")
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(
                f"adapter {adapter!r}: {missing[0]} is not in the state (a state of another "
                "model, or saved with other LoRA target_modules)"
            )
        a, b = (_whole(state[k]).float().cpu() for k in keys)
        delta = (b @ a) * float(layer.scaling[adapter])
        out[f"{name}.base_layer.weight"] = delta.T if layer.fan_in_fan_out else delta
    return out


def _whole(value: Any) -> torch.Tensor:
    """A tensor whole (a DTensor shard gathered: every rank calls this)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value.detach()


def merge_specialists(
    method: str,
    model: nn.Module,
    reference: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, Any]],
    *,
    adapter: str = SPECIALIST,
    weights: Sequence[float] | None = None,
    space: str = "deltas",
    **options: Any,
) -> dict[str, torch.Tensor]:
    """The base weights ``reference`` (whole tensors) with the specialists' adapters
    (``states``, each holding ``adapter``'s A and B) merged in by ``method`` of
    :func:`amasim.merging.merge` (``weights``, and ``options`` such as DARE's ``seed``).

    ``space="deltas"``: the method on the task vectors ΔW_i with base 0, added to W₀;
    ``space="weights"``: the method on the full weights W₀ + ΔW_i with base W₀.  Every key
    of ``reference`` is returned; only the adapted layers' base weights differ from it.
    """
    from amasim.merging import merge

    if space not in ("deltas", "weights"):
        raise ValueError(f"space={space!r}: use 'deltas' or 'weights'")
    if not states:
        raise ValueError("states is empty: give each specialist's adapter state")
    task_vectors = [deltas(model, state, adapter) for state in states]
    keys = list(task_vectors[0])
    missing = [k for k in keys if k not in reference]
    if missing:
        raise KeyError(f"{missing[0]} is not in the reference state: a state of another model")
    merged = dict(reference)
    if space == "deltas":
        zero = {k: torch.zeros_like(task_vectors[0][k]) for k in keys}
        base = None if method == "linear" else zero
        combined = merge(method, base, task_vectors, weights=weights, **options)
        for k in keys:
            w0 = reference[k]
            merged[k] = (w0.float() + combined[k].to(w0.device)).to(w0.dtype)
        return merged
    base = {k: reference[k] for k in keys}
    full = [
        {
            k: (reference[k].float() + tv[k].to(reference[k].device)).to(reference[k].dtype)
            for k in keys
        }
        for tv in task_vectors
    ]
    combined = merge(method, None if method == "linear" else base, full, weights=weights, **options)
    merged.update({k: combined[k] for k in keys})
    return merged
