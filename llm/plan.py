"""The cost of a run before it starts: ``python -m llm plan --config CONFIG``.

Per stage and in total: optimizer steps, pairs and tokens — counted from the tokenised data
and the packing, the draws replayed through the driver (:mod:`llm.costs`) — training FLOPs
(forward + backward, attention and recomputation included) and forward-only FLOPs, greedy
tokens generated, checkpoint saves and bytes written; the peak and final disk use under
``[run] keep``; the GPU memory of the largest training step (:mod:`llm.memory`); and the
wall time on a named GPU (:mod:`llm.gpus`) at a stated MFU.  Nothing is trained, no weight
is allocated (the model is built on the ``meta`` device) and ``[run] out`` is not touched:
it takes seconds on a CPU, for a GPU config too.

The wall time of a stage is the longer of its device time — FLOPs / (MFU × peak × GPUs) —
and its host time — the kernel launches and Python of each step, which bound a small
model's short sequences — plus greedy decoding (one prompt at a time, launch-bound) and
the checkpoint writes::

    time = max(FLOPs / (MFU · peak · GPUs), steps · t_step + batches · t_batch)
           + generated · t_token + written / disk bandwidth
    t_step = 2 ms + 0.8 ms · layers   t_batch = 1 ms + 0.25 ms · layers   (forward only)
    t_token = 0.5 ms + 0.2 ms · layers                                     disk: 1 GB/s

The host constants are assumptions (about 10 µs per eager kernel launch, about 80 launches
per block in a step's forward and backward) until ``benchmarks/gpu_check.sh`` measures a
run beside its plan.  The counts are exact where the draws do not follow the losses (every
stage but adaptive resampling: there they are those of the mixer's initial weights, marked
``≈``); generated tokens are an upper bound (decoding stops at EOS).

>>> from llm.config import Config
>>> plan = make_plan(Config())  # tiny-cpu's defaults: 3 tasks, 4 methods, 3 seeds
>>> [s.role for s in plan.stages][:3], plan.total().steps > 0, plan.disk["peak"] > 0
(['sft', 'scoring', 'specialist'], True, True)
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amasim import mixers
from amasim.registry import MERGES, build, describe, examples_per_step, steps_for_budget
from llm import lora
from llm.config import Config
from llm.costs import (
    CountingOracle,
    ModelShape,
    PairCosts,
    Replay,
    decode_flops,
    forward_flops,
    replay,
    train_flops,
)
from llm.gpus import DEFAULT_GPU, GPU, gpu
from llm.memory import activation_bytes, state_bytes
from llm.packing import Layout
from llm.plan_model import PlannedModel, planned_model
from llm.preflight import mix_policy
from llm.stages.merges import depends_on_seed
from llm.stages.records import Task
from llm.stages.reference import sft_loop

__all__ = [
    "Stage",
    "Plan",
    "make_plan",
    "plan_summary",
    "DEFAULT_MFU",
    "DiskTooSmall",
    "check_disk",
]

#: the MFU a plan assumes unless told otherwise (``--mfu``)
DEFAULT_MFU = 0.3
#: bytes per second a checkpoint is written at (torch.save, fsync, checksum): an assumption
DISK_WRITE_BPS = 1e9
#: bytes a ``torch.save`` entry adds to its tensor's (zip headers, alignment, its key): measured
TENSOR_OVERHEAD = 300
#: bytes of a checkpoint's pickled settings (optimizer groups, mixer state, data position)
SETTINGS_BYTES = 3000


def host_step_s(layers: int) -> float:
    """Host seconds of one optimizer step (module docstring)."""
    return 0.002 + 0.0008 * layers


def host_batch_s(layers: int) -> float:
    """Host seconds of one forward-only batch."""
    return 0.001 + 0.00025 * layers


def host_token_s(layers: int) -> float:
    """Host seconds of one greedily decoded token."""
    return 0.0005 + 0.0002 * layers


@dataclass
class Stage:
    """One row of the plan: what a stage computes, writes and takes."""

    name: str
    role: str = ""  # sft | scoring | specialist | generalist | merge
    method: str = ""  # the generalist's or merge's method
    steps: int = 0
    pairs: int = 0
    tokens: int = 0  # as data (prompts twice): DPOOracle.tokens_seen
    computed: int = 0  # processed, padding included: tokens_computed
    train_flops: int = 0
    forward_flops: int = 0
    forward_batches: int = 0
    generated: int = 0  # greedy tokens, at most
    checkpoints: int = 0
    written: int = 0  # bytes
    exact: bool = True  # False: counted at the mixer's initial weights
    seconds: float = 0.0

    def add(self, other: Stage) -> None:
        """Add ``other``'s counts to this row (the seconds are computed afterwards)."""
        for f in dataclasses.fields(self):
            if type(getattr(self, f.name)) is int:  # the counts (not the names, flag, time)
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.exact = self.exact and other.exact


@dataclass
class Plan:
    """The cost plan of one config (module docstring); :meth:`table` and :meth:`record`."""

    source: str
    gpu: GPU
    mfu: float
    gpus: int
    keep: str
    stages: list[Stage]
    shape: ModelShape
    checkpoint_bytes: dict[str, int]
    disk: dict[str, int]
    memory: dict[str, int]
    device: str = "cuda"
    notes: list[str] = field(default_factory=list)

    @property
    def time_s(self) -> float:
        return sum(s.seconds for s in self.stages)

    def total(self) -> Stage:
        """Every stage summed."""
        out = Stage("total")
        for stage in self.stages:
            out.add(stage)
        out.seconds = self.time_s
        return out

    def record(self) -> dict[str, Any]:
        """The plan as JSON (the last line ``python -m llm plan`` prints)."""
        total = self.total()
        return {
            "config": self.source,
            "gpu": self.gpu.name,
            "gpus": self.gpus,
            "mfu": self.mfu,
            "peak_flops": self.gpu.peak_bf16,
            "keep": self.keep,
            "time_s": self.time_s,
            "train_flops": total.train_flops,
            "forward_flops": total.forward_flops,
            "steps": total.steps,
            "pairs": total.pairs,
            "tokens": total.tokens,
            "computed_tokens": total.computed,
            "generated_tokens": total.generated,
            "checkpoints": total.checkpoints,
            "written_bytes": total.written,
            "disk_bytes": self.disk["peak"],
            "final_disk_bytes": self.disk["final"],
            "gpu_memory_bytes": self.memory["total"],
            "memory": self.memory,
            "checkpoint_bytes": self.checkpoint_bytes,
            "parameters": self.shape.parameters,
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }

    def table(self) -> str:
        """The plan for a person: one line per stage, the total, disk, memory and time."""
        return _table(self)


class DiskTooSmall(OSError):
    """The run needs more disk than ``[run] out`` has free (the plan's peak)."""


def check_disk(plan: Plan, out: str | Path) -> None:
    """Refuse (:class:`DiskTooSmall`) a run whose peak disk need exceeds the free space of
    ``out``'s file system plus what ``out`` already holds (a rerun rewrites its own files)."""
    folder = Path(out).resolve()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    held = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
    need = plan.disk["peak"]
    if need > free + held:
        gib = 2**30
        raise DiskTooSmall(
            f"the run needs {need / gib:.1f} GiB of disk at its peak (the plan: python -m llm "
            f"plan --config {plan.source}) but {probe} has {free / gib:.1f} GiB free"
            + (f" (+ {held / gib:.1f} GiB the folder holds)" if held else "")
            + f" under [run] keep = {plan.keep!r}. Fix: free space, point [run] out (--out) "
            'at a larger disk, or keep less ([run] keep = "final" or "none")'
        )


# --------------------------------------------------------------------------- building
def make_plan(
    cfg: Config,
    *,
    source: str = "config",
    gpu_name: str = DEFAULT_GPU,
    mfu: float = DEFAULT_MFU,
    gpus: int = 1,
) -> Plan:
    """The cost plan of ``cfg`` (module docstring) on ``gpus`` GPUs of kind ``gpu_name``."""
    if not 0.0 < mfu <= 1.0:
        raise ValueError(f"mfu={mfu}: a share of the peak, in (0, 1]")
    if gpus < 1:
        raise ValueError(f"gpus={gpus}: at least 1")
    card = gpu(gpu_name)
    with tempfile.TemporaryDirectory() as scratch:
        model, tasks, data_bytes = planned_model(cfg, Path(scratch))
    counter = _Counter(cfg, model, tasks, gpus)
    stages = counter.stages()
    plan = Plan(
        source=source,
        gpu=card,
        mfu=mfu,
        gpus=gpus,
        keep=cfg.run.keep,
        stages=stages,
        shape=model.shape,
        checkpoint_bytes=counter.sizes,
        disk=counter.disk(data_bytes),
        memory=counter.memory(),
        device=cfg.run.device,
    )
    for stage in stages:
        stage.seconds = _seconds(stage, plan)
    return plan


def _seconds(stage: Stage, plan: Plan) -> float:
    """Wall seconds of ``stage`` (module docstring)."""
    layers, flops = plan.shape.layers, stage.train_flops + stage.forward_flops
    device = flops / (plan.mfu * plan.gpu.peak_bf16 * plan.gpus)
    host = stage.steps * host_step_s(layers) + stage.forward_batches * host_batch_s(layers)
    decoding = stage.generated * host_token_s(layers)
    return max(device, host) + decoding + stage.written / DISK_WRITE_BPS


class _Counter:
    """Counts every stage of one config (:func:`make_plan`)."""

    def __init__(self, cfg: Config, model: PlannedModel, tasks: dict[str, Task], gpus: int) -> None:
        self.cfg, self.model, self.tasks, self.shape = cfg, model, tasks, model.shape
        self.k, self.gpus = len(tasks), gpus
        self.costs = {
            name: {
                split: PairCosts.of(task.pairs(split), model.layout, model.pad_id, model.max_length)
                for split in task.splits  # train, eval, and valid with [data] validation
            }
            for name, task in tasks.items()
        }
        self.sizes: dict[str, int] = {}  # bytes of one checkpoint, per role
        self.saves: dict[str, list[int]] = {}  # saves of each training run, per role
        self.batches: dict[str, tuple[int, int]] = {}  # (pairs a step, micro-batch) per role
        self.reference_bytes = self.cache_bytes = 0

    def stages(self) -> list[Stage]:
        rows = []
        if self.model.sft and self.cfg.sft.steps:
            rows.append(self._sft())
        rows += [self._scoring(), self._specialists()]
        methods = self.cfg.run.methods
        if "doremi" in methods and not ("uniform" in methods and 0 in self.cfg.run.seeds):
            rows.append(self._generalist("uniform", seeds=(0,), name="DoReMi's reference"))
        for method in methods:
            rows.append(self._merge(method) if method in MERGES else self._generalist(method))
        return rows

    # ------------------------------------------------------------- training runs
    def _trainable(self, role: str) -> tuple[int, int]:
        """(elements, tensors) trained in ``role``: the whole model, or one adapter."""
        if role == "sft":
            return self.model.bare_parameters, self.model.bare_tensors
        module = self.model.module
        if lora.has_adapters(module):
            spec = self.cfg.model.lora
            own = lora.GENERALIST if spec.generalist == "adapter" else None
            lora.use(module, own if role == "generalist" else lora.SPECIALIST)
        params = [p for p in module.parameters() if p.requires_grad]
        return sum(p.numel() for p in params), len(params)

    def _checkpoint_bytes(self, role: str, steps: int, k: int) -> int:
        """Bytes of one checkpoint of a ``role`` run of ``steps`` steps over ``k`` tasks:
        the policy (every parameter, or the trained ones when some are frozen:
        ``DPOOracle.state_dict``), AdamW's two float32 moments and step per trained tensor,
        the driver's record (steps × (2k + 3) float64) and ``torch.save``'s entries."""
        trained, tensors = self._trainable(role)
        if role == "sft":
            whole, entries = self.model.bare_parameters, self.model.bare_tensors
        else:
            whole, entries = self.shape.parameters, self.model.tensors
        policy, entries = (whole, entries) if trained == whole else (trained, tensors)
        record = 8 * steps * (2 * k + 3) + 16 * k
        rest = torch.get_rng_state().numel() + SETTINGS_BYTES  # the RNG state, the settings
        entries += 3 * tensors + 1
        return 4 * policy + 8 * trained + record + rest + TENSOR_OVERHEAD * entries

    def _base_trains(self, role: str) -> bool:
        if role == "sft" or not lora.has_adapters(self.model.module):
            return True
        return role == "generalist" and self.cfg.model.lora.generalist == "full"

    def _run(self, role: str, replayed: Replay, k: int) -> Stage:
        """The row of one training run of ``role``: its counts, FLOPs, saves and writes."""
        checkpointing = self.cfg.model.gradient_checkpointing and role != "sft"
        size = self._checkpoint_bytes(role, replayed.steps, k)
        self.sizes[role] = max(self.sizes.get(role, 0), size)
        self.saves.setdefault(role, []).append(replayed.saves)
        flops = train_flops(
            self.shape,
            replayed.trained,
            base_trains=self._base_trains(role),
            checkpointing=checkpointing,
        )
        return Stage(
            name=role,
            steps=replayed.steps,
            pairs=replayed.pairs,
            tokens=replayed.tokens_seen,
            computed=replayed.tokens_computed,
            train_flops=flops,
            forward_flops=forward_flops(self.shape, replayed.forwarded),
            forward_batches=replayed.forward_batches,
            checkpoints=replayed.saves,
            written=replayed.saves * size,
        )

    def _sft(self) -> Stage:
        sft, model = self.cfg.sft, self.model
        layout = Layout(prefix_sharing=False, bucket=model.layout.bucket)  # chosen rows alone
        costs = [
            (name, PairCosts.of(t.train, layout, model.pad_id, model.max_length, chosen_only=True))
            for name, t in self.tasks.items()
        ]
        loop = sft_loop(sft, self.cfg.model.init_seed)
        replayed = replay(
            mixers.uniform([len(c) for _, c in costs]),
            CountingOracle(costs),
            steps=loop.steps,
            batch_size=loop.batch_size,
            seed=loop.seed,
            checkpoint_every=loop.checkpoint_every,
        )
        self.batches["sft"] = (sft.batch_size, 0)
        row = self._run("sft", replayed, self.k)
        row.name, row.role = "reference SFT", "sft"
        # the reference weights: a tied matrix twice when they come from a GPU (each
        # state-dict entry copied to the host on its own)
        tied = model.tied if self.cfg.run.device != "cpu" else 0
        self.reference_bytes = 4 * (model.bare_parameters + tied)
        self.reference_bytes += TENSOR_OVERHEAD * model.bare_tensors
        row.written += self.reference_bytes
        return row

    def _specialists(self) -> Stage:
        spec, row = self.cfg.specialist, Stage(f"specialists (×{self.k})", "specialist")
        self.batches["specialist"] = (spec.batch_size, spec.micro_batch_size)
        for name in self.tasks:
            oracle = CountingOracle(
                [(name, self.costs[name]["train"])],
                micro_batch_size=spec.micro_batch_size or None,
                accumulate=spec.accumulate,
            )
            replayed = replay(
                mixers.stratified(),
                oracle,
                steps=spec.steps,
                batch_size=spec.batch_size,
                schedule=spec.schedule,
                checkpoint_every=spec.checkpoint_every,
            )
            row.add(self._run("specialist", replayed, 1))
            self._forwards(row, self.tasks[name].splits, [name])
            self._decode(row, [name])
            cache = 16 * sum(len(c) for c in self.costs[name].values()) + 4 * TENSOR_OVERHEAD
            row.written += cache  # the specialist's per-pair losses
            self.cache_bytes += cache
        return row

    def _generalist_replay(self, method: str, seed: int, spread: float) -> Replay:
        gen, mix = self.cfg.generalist, self.cfg.mix
        steps = steps_for_budget(method, mix.examples, self.k, gen.batch_size)
        sizes = tuple(len(c["train"]) for c in self.costs.values())
        oracle = CountingOracle(
            [(n, c["train"]) for n, c in self.costs.items()],
            eval_tasks=[c["eval"] for c in self.costs.values()],
            micro_batch_size=gen.micro_batch_size or None,
            accumulate=gen.accumulate,
            eval_batch_size=self.cfg.eval.batch_size,
            spread=spread,
        )
        return replay(
            build(method, steps=steps, sizes=sizes, policy=mix_policy(mix)),
            oracle,
            steps=steps,
            batch_size=gen.batch_size,
            seed=seed,
            schedule=gen.schedule,
            checkpoint_every=gen.checkpoint_every,
        )

    def _generalist(self, method: str, seeds=None, name: str | None = None) -> Stage:
        """Generalist ``method`` on every seed (or ``seeds``; DoReMi's default-mixture
        reference is the ``uniform`` run of seed 0, shared with that method's when it runs)."""
        gen, seeds = self.cfg.generalist, seeds or self.cfg.run.seeds
        row = Stage(name or f"{method} (×{len(seeds)})", "generalist", method)
        per_step = examples_per_step(describe(method, self.k), self.k, gen.batch_size)
        widest = self.batches.get("generalist", (0, 0))[0]
        self.batches["generalist"] = (max(widest, per_step), gen.micro_batch_size)
        for seed in seeds:
            replayed = self._generalist_replay(method, seed, 0.0)
            other = self._generalist_replay(method, seed, 0.1)  # losses that differ by task
            run = self._run("generalist", replayed, self.k)
            run.exact = (other.pairs, other.trained, other.forwarded) == (
                replayed.pairs,
                replayed.trained,
                replayed.forwarded,
            )
            row.add(run)
            self._forwards(row, ("eval",))
            self._decode(row)
            record = 4000 + 40 * (2 * self.k + 1) * replayed.steps  # the cached record (JSON)
            row.written += record
            self.cache_bytes += record
        return row

    # ------------------------------------------------------------- forward-only
    def _scoring(self) -> Stage:
        row = Stage("reference log-probs", "scoring")
        for name, task in self.tasks.items():
            self._forwards(row, task.splits, [name])
        for split_costs in self.costs.values():
            for costs in split_costs.values():
                row.written += 16 * len(costs) + 2 * TENSOR_OVERHEAD  # (n, 2) float64
        self.cache_bytes += row.written
        return row

    def _forwards(self, row: Stage, splits: tuple[str, ...], names=None) -> None:
        """Add pair_losses passes over ``splits`` of tasks ``names`` (default: every task)."""
        for name in names or self.tasks:
            for split in splits:
                tokens, batches = self.costs[name][split].passes(self.cfg.eval.batch_size)
                row.forward_flops += forward_flops(self.shape, tokens)
                row.forward_batches += batches

    def _decode(self, row: Stage, names=None) -> None:
        """Add the greedy exact match of ``[eval] generate`` prompts of tasks ``names``."""
        settings = self.cfg.eval
        if not settings.generate:
            return
        for name in names or self.tasks:
            prompts = self.tasks[name].eval.prompt_lengths[: settings.generate]
            row.generated += len(prompts) * settings.max_new_tokens
            for length in prompts:
                row.forward_flops += decode_flops(
                    self.shape, int(length), settings.max_new_tokens, cache=self.model.cache
                )

    def _merge(self, method: str) -> Stage:
        times = len(self.cfg.run.seeds) if depends_on_seed(method) else 1
        row = Stage(method + (f" (×{times})" if times > 1 else ""), "merge", method)
        for _ in range(times):
            self._forwards(row, ("eval",))
            self._decode(row)
        return row

    # ------------------------------------------------------------- disk, memory
    def disk(self, data_bytes: int) -> dict[str, int]:
        """Peak and final disk use under ``[run] keep``, following the run's order: the
        data, the caches, then each training run — a save writes its next checkpoint
        before it replaces the one before the newest, so three files live at once — and
        what the keep policy removes when each stage ends."""
        keep = self.cfg.run.keep
        replicated = self.cfg.run.parallel == "ddp" and self.gpus > 1  # a folder per rank
        copies = self.gpus if replicated else 1
        disk = peak = data_bytes + self.cache_bytes + self.reference_bytes
        for role in ("sft", "specialist", "generalist"):
            size = self.sizes.get(role, 0) * copies
            for saves in self.saves.get(role, []):
                peak = max(peak, disk + min(saves, 3) * size)
                kept = min(saves, 2)
                if keep != "all":
                    kept = 1 if role == "specialist" else 0  # .prev, the SFT, generalists
                disk += kept * size
        if keep == "none":
            disk -= len(self.saves.get("specialist", [])) * self.sizes.get("specialist", 0) * copies
        return {"peak": int(peak), "final": int(disk)}

    def memory(self) -> dict[str, Any]:
        """GPU memory per rank of the largest training step (:mod:`llm.memory`)."""
        found = [self._memory(role) for role in self.batches]
        return max(found, key=lambda m: m["total"]) if found else {"total": 0}

    def _memory(self, role: str) -> dict[str, Any]:
        spread = self.cfg.run.parallel != "none" and self.gpus > 1
        fsdp = spread and self.cfg.run.parallel == "fsdp"
        world = self.gpus if fsdp else 1
        trained, _ = self._trainable(role)
        n = self.model.bare_parameters if role == "sft" else self.shape.parameters
        adapters = trained != n  # LoRA: a frozen base
        kind = {(False, False): "full", (False, True): "lora", (True, False): "fsdp"}.get(
            (fsdp, adapters), "fsdp+lora"
        )
        state = state_bytes(n, trained, world, self.shape.root, self.shape.block)[kind]
        gradients, optimizer = 4 * trained / world, 8 * trained / world
        per_step, micro = self.batches[role]
        local = -(-per_step // self.gpus) if spread else per_step  # this rank's block
        pairs = min(micro, local) if micro else local
        train = [c["train"] for c in self.costs.values()]
        widest = max(int(c.computed.max()) for c in train)
        rows = max(int(c.rows.max()) for c in train)
        activations = activation_bytes(
            layers=self.shape.layers,
            width=self.shape.width,
            tokens=pairs * widest,
            linear_io=self.shape.linear_io,
            heads=self.shape.heads,
            rows=pairs * rows,
            row_width=-(-widest // rows),
            scored=pairs * max(int(c.scored.max()) for c in train),
            vocab=self.shape.vocab,
            compute_bytes=2 if self.cfg.run.dtype == "bfloat16" else 4,
            checkpointing=self.cfg.model.gradient_checkpointing and role != "sft",
        )
        out = {
            "role": role,
            "weights": int(state - gradients - optimizer),
            "gradients": int(gradients),
            "optimizer": int(optimizer),
            "activations": int(activations),
        }
        out["total"] = out["weights"] + out["gradients"] + out["optimizer"] + out["activations"]
        return out


# --------------------------------------------------------------------------- the table
def plan_summary(plan: Plan) -> str:
    """The lines ``python -m llm run`` prints before it starts: the work, the time (on a
    GPU config) and the disk."""
    total = plan.total()
    work = (
        f"plan: {total.steps} optimizer steps, {_size(total.tokens)} tokens, "
        f"{_size(total.train_flops + total.forward_flops)}FLOP"
    )
    if plan.device != "cpu":
        work += (
            f"; ≈ {_duration(plan.time_s)} on {plan.gpus} × {plan.gpu.name} at {plan.mfu:.0%} MFU"
        )
    disk = (
        f"plan: disk peak {_gib(plan.disk['peak'])}, {_gib(plan.disk['final'])} left after "
        f"the run ([run] keep = {plan.keep!r}); python -m llm plan --config {plan.source} "
        "shows every stage"
    )
    return work + "\n" + disk


def _size(n: float) -> str:
    """A count with an SI suffix: 1.2k, 3.4M, 5.6G, 7.8T, 9.0P."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _table(plan: Plan) -> str:
    head = (
        f"cost plan of {plan.source} on {plan.gpus} × {plan.gpu.name} "
        f"({plan.gpu.peak_bf16 / 1e12:.0f} TFLOP/s dense bf16) at {plan.mfu:.0%} MFU"
    )
    columns = (
        "stage",
        "steps",
        "pairs",
        "tokens",
        "train FLOP",
        "fwd FLOP",
        "generated",
        "ckpts",
        "written",
        "time",
    )
    lines = [head, "", "| " + " | ".join(columns) + " |", "|---" + "|---:" * 9 + "|"]
    for stage in [*plan.stages, plan.total()]:
        mark = "" if stage.exact else "≈"
        lines.append(
            f"| {stage.name} | {stage.steps} | {mark}{stage.pairs} | {mark}{_size(stage.tokens)} "
            f"| {mark}{_size(stage.train_flops)} | {_size(stage.forward_flops)} "
            f"| ≤{_size(stage.generated)} | {stage.checkpoints} | {_gib(stage.written)} "
            f"| {_duration(stage.seconds)} |"
        )
    memory = plan.memory
    parts = ", ".join(
        f"{name} {_gib(memory[name])}"
        for name in ("weights", "gradients", "optimizer", "activations")
        if name in memory
    )
    layers = plan.shape.layers
    lines += [
        "",
        f"time: {_duration(plan.time_s)} — per stage the longer of FLOPs at {plan.mfu:.0%} MFU "
        f"and the host's {1e3 * host_step_s(layers):.1f} ms per step "
        f"({1e3 * host_batch_s(layers):.1f} ms per forward-only batch), plus "
        f"{1e3 * host_token_s(layers):.1f} ms per generated token and writes at "
        f"{DISK_WRITE_BPS / 1e9:.0f} GB/s (assumed host costs: see llm/plan.py)",
        f"disk: peak {_gib(plan.disk['peak'])}, left after the run {_gib(plan.disk['final'])} "
        f"([run] keep = {plan.keep!r}; a checkpoint: "
        + ", ".join(f"{role} {_gib(size)}" for role, size in plan.checkpoint_bytes.items())
        + ")",
        f"GPU memory per GPU ({memory.get('role', '-')} step): {_gib(memory['total'])} "
        f"({parts}) of {plan.gpu.memory / 1e9:.0f} GB",
        f"{plan.shape.parameters / 1e6:.1f}M parameters; ≈: counted at the mixer's initial "
        "weights (its draws follow the losses); generated tokens are an upper bound",
    ]
    if plan.device == "cpu":
        lines.append(f"note: the config runs on the CPU; the times are those of a {plan.gpu.name}")
    return "\n".join(lines)
