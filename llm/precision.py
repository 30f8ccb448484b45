"""One device and precision policy for every DPO number: reference, specialists, policy.

The excess loss AutoMixAlign optimises, ℓ_θ(z) − ℓ_spec(z), compares numbers made at
different times by different models: the reference log-probs (cached once), the specialists'
per-pair losses (cached once) and the policy's losses (every step).  They are comparable only
when they are made the same way: on the same device, under the same autocast, with the same
accumulation.  :class:`Precision` is that policy, passed to every function that computes one of
them (:func:`llm.oracle.reference_logps`, :func:`llm.oracle.pair_losses`,
:class:`llm.oracle.DPOOracle`), so that a model scored against its own cached numbers gives a
DPO loss of exactly log 2 and a clipped excess of exactly 0.

The rule, in full:
  * the model, the batch and the cached numbers live on ``device``;
  * the forward pass (and the LM head) runs under ``torch.autocast(device, dtype)`` when
    ``dtype`` is set (bfloat16 or float16), else in the weights' own dtype;
  * token log-probs are float32 (log-sum-exp over float32 logits, :mod:`llm.chunked_head`),
    summed per sequence in float64 and rounded once to float32; the DPO loss is float32.

>>> p = Precision.parse("cpu", "bfloat16")
>>> p.dtype_name, p.device.type
('bfloat16', 'cpu')
>>> sorted(p.key())
['autocast', 'device', 'device_name']
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field

import torch

__all__ = ["DTYPES", "Precision"]

#: config name → autocast dtype (None: no autocast, the weights' own dtype, float32 by default)
DTYPES: dict[str, torch.dtype | None] = {
    "float32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """Where and in what precision DPO numbers are computed (see the module docstring)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None  # autocast dtype; None: no autocast

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.dtype == torch.float32:
            object.__setattr__(self, "dtype", None)  # float32 autocast is no autocast
        if self.dtype not in DTYPES.values():
            raise ValueError(
                f"Precision.dtype must be one of {list(DTYPES)} (an autocast dtype), "
                f"got {self.dtype}"
            )

    @classmethod
    def parse(cls, device: str | torch.device, dtype: str) -> Precision:
        """From config names, e.g. ``Precision.parse("cuda", "bfloat16")``."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: use one of {list(DTYPES)}")
        return cls(torch.device(device), DTYPES[dtype])

    @classmethod
    def of(cls, model: torch.nn.Module) -> Precision:
        """The device ``model``'s parameters live on, no autocast (its own dtype)."""
        first = next(model.parameters(), None)
        return cls(first.device if first is not None else torch.device("cpu"), None)

    @property
    def dtype_name(self) -> str:
        """The config name of the autocast dtype ("float32" when none)."""
        return next(name for name, d in DTYPES.items() if d == self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast(device, dtype)``, or a no-op context without an autocast dtype."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def key(self) -> dict[str, str]:
        """What a cache of numbers made under this policy must be keyed by: the device type,
        the hardware (GPU name, or CPU architecture and vector ISA: kernels differ in their
        last bits) and the autocast dtype. On CPU add the intra-op thread count as well."""
        return {
            "device": self.device.type,
            "device_name": _device_name(self.device),
            "autocast": self.dtype_name,
        }

    def check(self, model: torch.nn.Module) -> None:
        """Raise if a parameter of ``model`` is not on the policy's device (the mismatch that
        sends a CUDA model a CPU batch)."""
        for name, p in model.named_parameters():
            if p.device.type != self.device.type or (
                self.device.index is not None and p.device != self.device
            ):
                raise ValueError(
                    f"parameter {name!r} is on {p.device} but the precision policy computes on "
                    f"{self.device}: move the model first (model.to({str(self.device)!r}))"
                )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{platform.machine()}/{torch.backends.cpu.get_cpu_capability()}"
    return device.type
