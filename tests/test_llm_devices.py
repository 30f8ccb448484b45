"""Every stage computes on the configured device, in the configured precision.

A :class:`~torch.overrides.TorchFunctionMode` records, per pipeline stage, the device of
every tensor that each model op (matmul, linear, attention, embedding, layer norm: the ops
whose cost grows with the model) takes, and the dtype each matmul computes in (the autocast
dtype when autocast is on, else its inputs'), while a tiny config runs through
:func:`llm.pipeline.run_pipeline`.  No stage may run one elsewhere or otherwise — the
reference SFT once trained on the CPU of a CUDA run, in float32.  On a CPU machine the
check is made able to fail by a stage that computes one op on the ``meta`` device (it is
caught, by name), and runs in float32 and under bf16 autocast; on a GPU (the ``cuda``
case, run by ``benchmarks/gpu_check.sh``) the same run on ``cuda`` in bf16.

Merging itself is float64 numpy on the host by :mod:`amasim.merging`'s design (no model
op); the merged model is evaluated on the device, which the ``evaluation`` stage records.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from llm_helpers import tiny_config_dict, write_suite_small, write_toml
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import llm.pipeline
import llm.stages.generalists
from llm.config import load_config
from llm.pipeline import run_pipeline

#: the ops whose cost grows with the model
MODEL_OPS = {
    F.linear,
    F.embedding,
    F.layer_norm,
    F.scaled_dot_product_attention,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
}

#: the model ops autocast runs in its lower precision
MATMULS = MODEL_OPS - {F.embedding, F.layer_norm}

#: the stages, by the name the pipeline calls them under
STAGES = {
    "load_tasks": "tasks",
    "reference": "reference",
    "reference_scores": "scoring",
    "specialists": "specialists",
    "generalist_oracle": "generalists",
    "generalist_record": "generalists",
    "_merge_run": "merges",
    "evaluate": "evaluation",
}


class DeviceLog(TorchFunctionMode):
    """Per stage, how many tensors of model ops lay on each device type."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ["outside"]
        self.devices: dict[str, Counter] = defaultdict(Counter)
        self.dtypes: dict[str, Counter] = defaultdict(Counter)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MODEL_OPS:
            tensors = [v for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor)]
            for value in tensors:
                self.devices[self.stack[-1]][value.device.type] += 1
            if func in MATMULS and tensors:
                self.dtypes[self.stack[-1]][str(_computes_in(tensors[0]))] += 1
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()

    def labelled(self, name: str, stage: Callable) -> Callable:
        @functools.wraps(stage)
        def wrapper(*args, **kwargs):
            with self.stage(name):
                return stage(*args, **kwargs)

        return wrapper

    def elsewhere(self, device: str) -> dict[str, set[str]]:
        """The stages that ran a model op off ``device``, and where."""
        return {
            stage: set(found) - {device}
            for stage, found in self.devices.items()
            if set(found) - {device}
        }


def _computes_in(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``tensor`` computes in: autocast's, when it is on there."""
    kind = tensor.device.type
    if kind != "meta" and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return tensor.dtype


def _misplaced(stage: Callable) -> Callable:
    """``stage``, then one model op on the ``meta`` device (the mistake the check exists for)."""

    @functools.wraps(stage)
    def wrapper(*args, **kwargs):
        out = stage(*args, **kwargs)
        F.linear(torch.ones(2, 3, device="meta"), torch.ones(4, 3, device="meta"))
        return out

    return wrapper


def _run(
    tmp_path: Path, monkeypatch, device: str, misplace: str | None, dtype: str = "float32"
) -> DeviceLog:
    manifest = write_suite_small(tmp_path / "suite")
    sections = tiny_config_dict(tmp_path / "out", manifest)
    methods = ["stratified", "ama-s", "merge-linear"]
    sections["run"] |= {"device": device, "dtype": dtype, "methods": methods}
    if device == "cuda":
        sections["run"] |= {"threads": 0}
    cfg = load_config(write_toml(tmp_path / "config.toml", sections))
    log = DeviceLog()
    for name, label in STAGES.items():
        module = llm.stages.generalists if name == "evaluate" else llm.pipeline
        stage = getattr(module, name)
        if label == misplace:
            stage = _misplaced(stage)
        monkeypatch.setattr(module, name, log.labelled(label, stage))
    monkeypatch.setattr(llm.pipeline, "evaluate", log.labelled("evaluation", llm.pipeline.evaluate))
    with log:
        run_pipeline(cfg, progress=False)
    return log


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", "float32"),
        ("cpu", "bfloat16"),
        pytest.param("cuda", "bfloat16", marks=pytest.mark.cuda),
    ],
)
def test_every_stage_computes_on_the_configured_device(tmp_path, monkeypatch, device, dtype):
    log = _run(tmp_path, monkeypatch, device, None, dtype)
    assert log.elsewhere(device) == {}
    for stage in ("reference", "scoring", "specialists", "generalists", "evaluation"):
        assert log.devices[stage][device] > 0, stage  # each of them computed something
        assert set(log.dtypes[stage]) == {f"torch.{dtype}"}, (stage, log.dtypes[stage])
    assert not log.devices["outside"]  # no model op outside a stage


def test_a_stage_computing_elsewhere_is_caught(tmp_path, monkeypatch):
    log = _run(tmp_path, monkeypatch, "cpu", "scoring")
    assert log.elsewhere("cpu") == {"scoring": {"meta"}}
