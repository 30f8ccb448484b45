"""Where and in what precision a TRL run computes, chosen as the pipeline chooses it.

:func:`device_settings` gives the ``DPOConfig`` keyword arguments for a device and dtype
named as the pipeline names them (``[run] device`` / ``[run] dtype``; either may be left
out): the CPU when there is no CUDA GPU (TRL's ``use_cpu=True``), bfloat16 autocast on a
GPU that supports it (``torch.cuda.is_bf16_supported()``), float32 otherwise — float32
master weights in every case (TRL loads a model in float32 unless told otherwise).
:func:`precision_of` reads the policy back out of a ``DPOConfig`` as the pipeline's
:class:`llm.precision.Precision`, under which :mod:`llm.trl.report` makes every number.

>>> device_settings("cpu")
{'use_cpu': True, 'bf16': False, 'fp16': False}
>>> device_settings("cpu", "bfloat16")
{'use_cpu': True, 'bf16': True, 'fp16': False}
"""

from __future__ import annotations

from typing import Any

import torch

from llm.precision import Precision

__all__ = ["DEVICES", "DTYPES", "device_settings", "precision_of"]

#: the devices a TRL run is placed on (TRL picks the GPU of each process itself)
DEVICES = ("cpu", "cuda")
#: the dtypes, named as the pipeline's ``[run] dtype``
DTYPES = ("float32", "bfloat16")


def _pick_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise ValueError(f"device={device!r}: use one of {', '.join(DEVICES)} (or None: pick)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but this machine has no CUDA GPU: use 'cpu' (or None)")
    return device


def _pick_dtype(device: str, dtype: str | None) -> str:
    if dtype is None:
        return "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)} (or None: pick)")
    if dtype == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"dtype='bfloat16' but this GPU ({torch.cuda.get_device_name()}) does not support "
            "it: use 'float32' (or None)"
        )
    return dtype


def device_settings(device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """``DPOConfig`` keyword arguments placing a run on ``device`` (``"cpu"`` or ``"cuda"``;
    ``None``: the GPU when there is one) with autocast ``dtype`` (``"float32"`` or
    ``"bfloat16"``; ``None``: bfloat16 where the GPU supports it, else float32).  A device
    or dtype this machine lacks raises a ``ValueError`` naming the fix.

    >>> from trl import DPOConfig
    >>> settings = device_settings("cpu")
    >>> args = DPOConfig(output_dir="out", activation_checkpointing=False, **settings)
    >>> precision_of(args)
    Precision(device=device(type='cpu'), dtype=None)
    """
    device = _pick_device(device)
    dtype = _pick_dtype(device, dtype)
    return {"use_cpu": device == "cpu", "bf16": dtype == "bfloat16", "fp16": False}


def precision_of(args: Any) -> Precision:
    """The precision policy a ``TrainingArguments``/``DPOConfig`` trains under: its device
    and its autocast dtype (``bf16`` / ``fp16``, else none: float32)."""
    dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
    return Precision.parse(args.device, dtype)
