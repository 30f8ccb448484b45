"""The GPUs the cost plan, the MFU in the metrics and the GPU check know: dense bf16 peaks.

One table, :data:`GPUS`, read by :mod:`llm.plan` (the wall time at a stated MFU),
:mod:`llm.stages.generalists` (MFU in ``metrics.jsonl`` when ``[run] peak_flops = 0``) and
``benchmarks/gpu_step.py`` (MFU of the step benchmark).  Each peak is the dense (no 2:4
sparsity) bf16 tensor-core throughput of NVIDIA's datasheet — half the "with sparsity"
figure the datasheets print first; memory is the card's HBM/GDDR as sold.

>>> gpu("h100-sxm").peak_bf16
989000000000000.0
>>> match("NVIDIA H100 PCIe").name, match("NVIDIA A100-SXM4-80GB").name, match("Tesla T4")
('H100-PCIe', 'A100', None)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["GPU", "GPUS", "DEFAULT_GPU", "gpu", "match", "peak_flops"]

GB = 10**9


class GPU(NamedTuple):
    """A GPU: its name here, dense bf16 peak FLOP/s, memory in bytes, and the substrings of
    ``torch.cuda.get_device_name`` that identify it (every one must occur)."""

    name: str
    peak_bf16: float
    memory: int
    names: tuple[str, ...]


#: dense bf16 peaks (NVIDIA datasheets: H100 SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS with
#: sparsity; H200 as H100 SXM, H200 NVL as H100 NVL; A100 312 dense; L40S 733 with sparsity;
#: B200 4.5 PFLOPS with sparsity).  Most specific first: "H100 NVL" before "H100".
GPUS: tuple[GPU, ...] = (
    GPU("H100-NVL", 835e12, 94 * GB, ("H100", "NVL")),
    GPU("H100-PCIe", 756e12, 80 * GB, ("H100", "PCIe")),
    GPU("H100-SXM", 989e12, 80 * GB, ("H100",)),  # "NVIDIA H100 80GB HBM3"
    GPU("H200-NVL", 835e12, 141 * GB, ("H200", "NVL")),
    GPU("H200", 989e12, 141 * GB, ("H200",)),
    GPU("A100", 312e12, 80 * GB, ("A100",)),  # the 40 GB card has the same peak
    GPU("L40S", 362e12, 48 * GB, ("L40S",)),
    GPU("B200", 2250e12, 180 * GB, ("B200",)),
)

#: the GPU a plan assumes unless told otherwise
DEFAULT_GPU = "H100-SXM"


def gpu(name: str) -> GPU:
    """The GPU of the table named ``name`` (case-insensitive); a ``ValueError`` listing the
    names otherwise."""
    for entry in GPUS:
        if entry.name.lower() == name.lower():
            return entry
    names = ", ".join(entry.name for entry in GPUS)
    raise ValueError(f"unknown GPU {name!r}: use one of {names}")


def match(device_name: str) -> GPU | None:
    """The GPU of the table a CUDA device name (``torch.cuda.get_device_name``) is, or None."""
    for entry in GPUS:
        if all(part in device_name for part in entry.names):
            return entry
    return None


def peak_flops(device: torch.device | str, given: float = 0.0) -> float | None:
    """The peak FLOP/s MFU is measured against: ``given`` when set (> 0), else the table's
    peak of this CUDA device, else None (a CPU, or a GPU the table lacks: no MFU)."""
    if given:
        return float(given)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    found = match(torch.cuda.get_device_name(device))
    return found.peak_bf16 if found is not None else None
