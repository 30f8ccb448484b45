"""The run context: what one process knows about its run, opened once from a checked config.

:func:`open_run` is the one door into a run.  Before any work it checks the config whole
(:func:`llm.preflight.preflight`: methods, budgets, capabilities, optional packages, the
device), locks the output folder (:class:`llm.lock.RunLock`, rank 0 under ``torchrun``) and
joins the process group (:func:`llm.parallel.join`); then it holds, for every stage:

=================  ============================================================================
``precision``      where and in what precision every number is made (:mod:`llm.precision`)
``layout``         how pairs are laid out for a forward pass (:mod:`llm.packing`)
``parallel``       rank, world, DDP or FSDP (:class:`~llm.parallel.ParallelDims`)
``folders``        the output folders (:class:`Folders`)
``tokenizer``      the tokenizer, and ``base_model`` a local Hugging Face model, loaded once
``dpo``            the DPO loss settings, checked once
``make_oracle``    the oracle factory, the seam for another oracle (:class:`OracleFactory`)
=================  ============================================================================

Nothing else queries rank or world or rebuilds the precision policy; a stage reads its own
config section and this context (:mod:`llm.stages`).  Leaving the ``with`` block releases
the lock and the process group the context made.

>>> from llm.config import Config
>>> import dataclasses, tempfile
>>> cfg = Config()
>>> cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=tempfile.mkdtemp()))
>>> with open_run(cfg, progress=False) as ctx:
...     ctx.precision.device.type, ctx.parallel.world, ctx.folders.cache.name
('cpu', 1, 'cache')
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from amasim.oracle import Oracle
from llm import lora
from llm.config import Config, StageSection
from llm.dcp import drop_checkpoints
from llm.gpus import peak_flops
from llm.lock import RunLock
from llm.oracle import DPOOracle, TaskData, dpo_settings, numerics
from llm.packing import Layout
from llm.parallel import ParallelDims, is_sharded, join, torchrun_rank, wrap_numerics
from llm.precision import Precision
from llm.preflight import preflight
from llm.train import MetricsLog

__all__ = ["RunContext", "Folders", "OracleFactory", "DPOOracleFactory", "open_run"]


@dataclass(frozen=True)
class Folders:
    """The output folder ``[run] out`` and its parts."""

    out: Path

    @property
    def data(self) -> Path:
        """The built-in suite, written when no manifest is given."""
        return self.out / "data"

    @property
    def models(self) -> Path:
        """Reference models, one file per setting."""
        return self.out / "models"

    @property
    def cache(self) -> Path:
        """Reference log-probs, specialist losses, exact matches (:mod:`llm.cache`)."""
        return self.out / "cache"

    @property
    def reference(self) -> Path:
        """The reference's SFT runs (checkpoints and metrics)."""
        return self.out / "reference"

    @property
    def specialists(self) -> Path:
        return self.out / "specialists"

    @property
    def generalists(self) -> Path:
        return self.out / "generalists"


class OracleFactory(Protocol):
    """The seam: build the oracle that trains ``model`` on ``tasks`` for one stage.

    ``role`` is ``"specialist"`` or ``"generalist"``, ``section`` that stage's config
    section (its optimizer settings); ``eval_tasks`` the held-out tasks (``None``: none).
    """

    def __call__(
        self,
        model: torch.nn.Module,
        tasks: list[TaskData],
        *,
        eval_tasks: list[TaskData] | None,
        role: str,
        section: StageSection,
    ) -> Oracle: ...


@dataclass(frozen=True)
class DPOOracleFactory:
    """The default oracle: :class:`llm.oracle.DPOOracle` under the run's one precision policy
    and layout.  With LoRA each specialist trains the specialist adapter, the generalist its
    own adapter or (``lora.generalist = "full"``) the base."""

    cfg: Config
    precision: Precision
    layout: Layout
    dpo: dict
    pad_id: int

    def __call__(self, model, tasks, *, eval_tasks, role, section) -> DPOOracle:
        spec = self.cfg.model.lora
        adapter = None
        if spec.r > 0:
            own = lora.GENERALIST if spec.generalist == "adapter" else None
            adapter = own if role == "generalist" else lora.SPECIALIST
        return DPOOracle(
            model,
            tasks,
            eval_tasks=eval_tasks,
            pad_id=self.pad_id,
            dpo=self.dpo,
            grad_clip=section.grad_clip,
            weight_decay=section.weight_decay,
            precision=self.precision,
            layout=self.layout,
            micro_batch_size=section.micro_batch_size or None,
            accumulate=section.accumulate,
            adamw=section.adamw,
            eval_batch_size=self.cfg.eval.batch_size,
            adapter=adapter,
        )


@dataclass(frozen=True)
class RunContext:
    """One process's view of its run (module docstring); built by :func:`open_run`."""

    cfg: Config
    folders: Folders
    precision: Precision
    layout: Layout
    parallel: ParallelDims
    tokenizer: Any
    base_model: torch.nn.Module | None
    dpo: dict
    make_oracle: OracleFactory
    progress: bool = True

    def say(self, message: str) -> None:
        """A progress line (rank 0, when ``progress``)."""
        if self.progress and self.parallel.is_main:
            print(message)

    def bar_label(self, label: str) -> str | None:
        """A progress bar's label (rank 0, when ``progress``), else ``None``: no bar."""
        return label if self.progress and self.parallel.is_main else None

    def drop_checkpoints(self, folder: Path, *, keep_newest: bool = False) -> None:
        """Remove the resume state of the finished run in ``folder`` (``[run] keep``,
        :func:`llm.dcp.drop_checkpoints`; its metrics log stays): this rank's own folder,
        or under FSDP the shared one, by rank 0."""
        if self.parallel.mode != "fsdp" or self.parallel.is_main:
            drop_checkpoints(folder / "checkpoint.pt", keep_newest=keep_newest)

    def numerics(self, model: torch.nn.Module) -> dict[str, Any]:
        """What sets a model's numbers besides its weights and data (device, hardware,
        autocast dtype, layout, FSDP's casts, CPU threads, compilation): the cache-key part
        of :func:`llm.oracle.numerics`."""
        return numerics(model, self.precision, self.layout) | {"compile": self.cfg.run.compile}

    def scale(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as the run trains it: on the device, with LoRA adapters (off: the
        reference computes as before), activation checkpointing, FSDP shards (after both:
        sharding fixes the parameters) and compilation.  DDP wraps a policy per stage."""
        model = model.to(self.precision.device)
        spec = self.cfg.model.lora
        if spec.r > 0:
            names = [lora.SPECIALIST, lora.GENERALIST]
            lora.add_adapters(
                model,
                names,
                r=spec.r,
                alpha=spec.alpha,
                dropout=spec.dropout,
                target_modules=spec.target_modules,
                seed=self.cfg.model.init_seed,
            )
        if self.cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.parallel.mode == "fsdp":
            model = self.shard(model)
        if self.cfg.run.compile:  # before the reference: compiled numbers differ from eager ones
            model.forward = torch.compile(model.forward)
        return model

    def lora_key(self) -> dict[str, Any]:
        """The LoRA settings, when adapters are on: ``alpha`` scales every update and
        ``generalist`` decides what trains, yet neither shows in a fresh adapter's weights
        (so not in :func:`llm.model.fingerprint`): a cache-key part."""
        spec = self.cfg.model.lora
        return {"lora": dataclasses.asdict(spec)} if spec.r > 0 else {}

    def select_generalist(self, model: torch.nn.Module) -> None:
        """Make the generalist's parameters the trainable ones (its adapter, or the base with
        ``lora.generalist = "full"``) — before a DDP wrap, which averages the gradients of
        what requires one when it wraps."""
        if lora.has_adapters(model):
            spec = self.cfg.model.lora
            lora.use(model, lora.GENERALIST if spec.generalist == "adapter" else None)

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` laid out for training on the ranks: FSDP shards (bfloat16 gathers under
        a bfloat16 policy) or a DDP wrapper under ``torchrun``, else itself."""
        return self.parallel.wrap(model, bf16=self.precision.dtype == torch.bfloat16)

    def trained_numerics(self, model: torch.nn.Module) -> dict[str, Any]:
        """:meth:`numerics` of ``model`` once :meth:`shard` has laid it out (FSDP's
        bfloat16 gathers included): the key of a cache filled by training it."""
        bf16 = self.precision.dtype == torch.bfloat16
        return self.numerics(model) | wrap_numerics(self.parallel.mode, bf16)

    @property
    def keep(self) -> str:
        """``[run] keep``: what a finished run leaves on disk (``"final"``, ``"all"``,
        ``"none"``)."""
        return self.cfg.run.keep

    def metrics_log(self, folder: Path, flops_per_token: float | None = None) -> MetricsLog:
        """A run's metrics log in ``folder`` (TensorBoard with ``[run] tensorboard``; MFU
        against the group's peak: ``[run] peak_flops`` per GPU or the GPU's own from
        :data:`llm.gpus.GPUS`, summed over the ranks — the logged rates are global)."""
        run = self.cfg.run
        peak = peak_flops(self.precision.device, run.peak_flops)
        return MetricsLog(
            folder / "metrics.jsonl",
            folder / "tb" if run.tensorboard else None,
            flops_per_token=flops_per_token,
            peak_flops=peak * self.parallel.world if peak else None,
        )

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` wrapped to train as one rank of the group: itself when sharded (FSDP
        wrapped it in :meth:`scale`) or alone, else DDP (which averages the gradients of the
        parameters that require one when it wraps: select them first)."""
        return model if is_sharded(model) else self.shard(model)


def _load_tokenizer(cfg: Config) -> tuple[torch.nn.Module | None, Any]:
    """(Hugging Face model or ``None``, tokenizer): a local HF directory is loaded once, in
    float32 master weights whatever the checkpoint's dtype (a bf16 checkpoint trained in
    bf16 would lose small updates; ``[run] dtype`` autocasts the compute)."""
    if cfg.model.kind == "hf":
        from llm.hf import load_local

        return load_local(cfg.model.path, dtype=torch.float32)
    from llm.tokenizer import CharTokenizer

    return None, CharTokenizer()


@contextlib.contextmanager
def open_run(
    cfg: Config,
    *,
    progress: bool = True,
    make_oracle: OracleFactory | Callable | None = None,
    source: str = "config",
) -> Iterator[RunContext]:
    """Check ``cfg`` whole, lock ``[run] out``, join the process group; yield the context
    (module docstring).  With ``make_oracle`` the capability check is left to the driver."""
    preflight(cfg, source, check_capabilities=make_oracle is None)
    out = Path(cfg.run.out)
    lock = RunLock(out, what="output folder ([run] out / --out)")
    if torchrun_rank() == 0:
        lock.acquire()
    try:
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        parallel = join(cfg.run.parallel, cfg.run.device)
        try:
            yield _context(cfg, out, parallel, progress, make_oracle)
        finally:
            parallel.close()
    finally:
        lock.release()


def _context(
    cfg: Config, out: Path, parallel: ParallelDims, progress: bool, make_oracle: Any
) -> RunContext:
    precision = Precision.parse(cfg.run.device, cfg.run.dtype)
    layout = Layout(prefix_sharing=cfg.run.prefix_sharing, bucket=cfg.run.bucket)
    base_model, tokenizer = _load_tokenizer(cfg)
    dpo = dpo_settings(cfg.dpo.beta, cfg.dpo.loss_type, cfg.dpo.label_smoothing)
    factory = make_oracle or DPOOracleFactory(cfg, precision, layout, dpo, tokenizer.pad_id)
    return RunContext(
        cfg=cfg,
        folders=Folders(out),
        precision=precision,
        layout=layout,
        parallel=parallel,
        tokenizer=tokenizer,
        base_model=base_model,
        dpo=dpo,
        make_oracle=factory,
        progress=progress,
    )
