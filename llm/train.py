"""Training one model: an amasim mixer on the DPO oracle, through the one driver.

The loop itself is :func:`amasim.driver.run` — the same driver the convex studies use —
given the oracle's extra duties as capabilities:

* **resume** — :class:`llm.checkpoint.CheckpointFile` holds the model, optimizer, mixer
  state, RNG state and data position (the oracle's ``state_dict``: the
  ``"checkpointing"`` capability); the loop's task draws are a pure function of the step,
  so a run killed mid-way and resumed gives the numbers of an uninterrupted one (bitwise
  on CPU).  Saves are atomic and checksummed; the last two are kept (``checkpoint.pt``,
  ``checkpoint.prev.pt``) and a damaged newest one is skipped with a warning.  Given the
  run's ``owner`` record, a checkpoint of another run, or one without a seal, is refused
  by name (never resumed).
* **divergence** — a non-finite loss stops training with
  :class:`amasim.driver.TrainingDiverged` before the parameters change; a state holding a
  NaN or an infinity (weights, optimizer, mixer) is never saved
  (:class:`llm.checkpoint.NonFiniteStateError`, a ``FloatingPointError`` naming the key
  and the last good checkpoint).
* **metrics** — :class:`MetricsLog`: one JSON object per logged step (tokens/s from the
  ``"training_metrics"`` capability, the DPO reward metrics, the task weights and scores),
  MFU when ``peak_flops`` is given: FLOPs per token = 6N + 12·L·d·T (Kaplan et al. 2020;
  PaLM, Chowdhery et al. 2022, App. B).
* **data parallel** — an oracle whose policy is wrapped for data parallelism (DDP, or
  sharded by FSDP2: :mod:`llm.parallel`) trains as one rank of its group: every rank draws
  the same global batch of ``config.batch_size`` examples (per task when reweighting) from
  the same streams and trains on its block of ``batch_size / world`` (``shard=(rank,
  world)`` of :func:`amasim.driver.run`), the per-task scores are reduced across ranks before
  each mixer update (:func:`llm.parallel.reduce_task_scores`) and the gradients averaged —
  so a run on N ranks is the run on one with the same batch, up to summation order.
* **sharded checkpoints** — a sharded policy is saved with :class:`llm.dcp.ShardedCheckpoint`
  (``out_dir/checkpoint``: every rank writes its shards) and resumes on any world size with
  the same global batch.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amasim import prng
from amasim.driver import TrainingDiverged, run
from amasim.mixers import Mixer
from amasim.result import RunResult
from llm.checkpoint import CheckpointFile
from llm.dcp import ShardedCheckpoint
from llm.integrity import IntegrityWarning, write_text_atomic
from llm.parallel import is_sharded, reduce_task_scores, shard_of

__all__ = ["LoopConfig", "TrainingDiverged", "MetricsLog", "train", "history"]


@dataclass(frozen=True)
class LoopConfig:
    """How long and how fast to train one model; ``batch_size`` is the global batch (over
    every rank of a data-parallel run)."""

    steps: int
    batch_size: int
    learning_rate: float
    schedule: str = "constant"  # amasim.driver.SCHEDULES
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    peak_flops: float | None = None  # per second, for MFU (e.g. 989e12: H100 bf16 dense)


class MetricsLog:
    """Append-only JSONL metrics (one object per line, flushed), optional TensorBoard.

    With ``flops_per_token`` and ``peak_flops`` each record also gets ``mfu`` =
    flops_per_token · tokens computed per second / peak (the tokens the model ran: a prompt
    shared by chosen and rejected counts once).

    The file stays one record per step, in step order, whatever happened before: a record
    for step s first drops the records of steps >= s (a run redone from an earlier
    checkpoint, or from the start), and a last line torn by a killed writer is dropped
    with a warning (:class:`~llm.integrity.IntegrityWarning`).  A damaged line elsewhere is
    an error naming ``path:line`` (the file was edited: remove that line, or the file).
    """

    def __init__(
        self,
        path: str | Path,
        tensorboard_dir: str | Path | None = None,
        *,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._last_step: int | None = None  # of the file, read at the first write
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError(
                    "tensorboard logging needs the tensorboard package: pip install tensorboard, "
                    "or set tensorboard = false in the config"
                ) from err
            self._writer = SummaryWriter(str(tensorboard_dir))

    def records(self) -> list[dict[str, Any]]:
        """The records in the file (a torn last line left out, with a warning)."""
        return [record for _, record in self._read()]

    def _read(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        out = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a record with an int step")
            except ValueError as err:
                if number == len(lines):  # a writer killed mid-line: drop it, say so
                    warnings.warn(
                        f"{self.path}:{number}: dropped a torn last line (a run was killed "
                        f"while logging): {line[:60]!r}",
                        IntegrityWarning,
                        stacklevel=3,
                    )
                    break
                raise ValueError(
                    f"{self.path}:{number}: not a metrics record ({err}); the log was edited "
                    f"or damaged. Fix: remove that line (or delete {self.path}, which only "
                    "holds the log) and rerun"
                ) from None
            out.append((line if line.endswith("\n") else line + "\n", record))
        return out

    def write(self, record: dict[str, Any]) -> None:
        rate = record.get("computed_tokens_per_s", record.get("tokens_per_s"))
        if self.flops_per_token and self.peak_flops and rate is not None:
            record = {**record, "mfu": self.flops_per_token * rate / self.peak_flops}
        if self._last_step is None:
            kept = self._read()
            self._last_step = kept[-1][1]["step"] if kept else -1
            if not kept or self._last_step >= record["step"] or self._torn():
                self._rewrite([line for line, r in kept if r["step"] < record["step"]])
        elif record["step"] <= self._last_step:
            self.drop_from(record["step"])
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        self._last_step = record["step"]
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, record["step"])

    def _torn(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with self.path.open("rb") as fh:
            fh.seek(-1, 2)
            return fh.read(1) != b"\n"

    def _rewrite(self, lines: list[str]) -> None:
        if lines or self.path.exists():
            write_text_atomic(self.path, "".join(lines), kind="metrics log")

    def drop_from(self, step: int) -> None:
        """Forget records of steps >= ``step`` (a resumed run redoes them); a torn last
        line is dropped too (with a warning)."""
        if self.path.exists():
            kept = [(line, r) for line, r in self._read() if r["step"] < step]
            self._rewrite([line for line, _ in kept])
            self._last_step = kept[-1][1]["step"] if kept else -1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def train(
    oracle: Any,
    mixer: Mixer,
    config: LoopConfig,
    *,
    out_dir: str | Path,
    apply: str | None = None,
    score: str | None = None,
    resume: bool = True,
    reduce: Callable | None = None,
    stream: int = prng.LOOP_STREAM,
    log: MetricsLog | None = None,
    flops_per_token: float | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: str | None = None,
    rounds: int = 10,
    shard: tuple[int, int] | None = None,
    owner: dict[str, Any] | None = None,
) -> RunResult:
    """Train ``oracle``'s policy with ``mixer`` for ``config.steps`` steps; the record of
    every step (:func:`history`).  ``out_dir/checkpoint.pt`` (a sharded policy:
    ``out_dir/checkpoint``) is resumed when it exists (unless ``resume=False``);
    ``on_step(t)`` is called after each step (tests use it to interrupt a run);
    ``progress``, when given, labels a progress bar.  ``shard=(rank, world)`` (default: the
    policy's data-parallel group, see the module docstring) trains this rank's block of the
    global batch; a sharded run's metrics are logged by rank 0 alone (one shared folder).

    ``owner`` is the run's owner record (:func:`llm.integrity.owner_record`: the settings
    that determine this run — stage, DPO and mixer settings, data, model and numerics
    fingerprints, method, seed): every checkpoint carries it, and resuming refuses, by
    name, a checkpoint of another run or one without a seal
    (:class:`~llm.integrity.ForeignFileError`, :class:`~llm.integrity.UnsealedFileError`).
    """
    policy = getattr(oracle, "policy", None)
    shard = shard if shard is not None else shard_of(policy)
    rank, world = shard if shard is not None else (0, 1)
    if config.batch_size % world:
        raise ValueError(
            f"batch_size = {config.batch_size} is the global batch and must split evenly over "
            f"{world} ranks. Fix: make it a multiple of {world}"
        )
    if world > 1 and reduce is None:
        reduce = reduce_task_scores
    checkpoint = _checkpoint(oracle, Path(out_dir), config.seed, resume, owner)
    if is_sharded(policy) and rank != 0:
        log = None  # one shared folder: rank 0 logs
    if log is not None and flops_per_token and config.peak_flops:
        log.flops_per_token, log.peak_flops = flops_per_token, config.peak_flops
    return run(
        mixer,
        oracle,
        steps=config.steps,
        learning_rate=config.learning_rate,
        schedule=config.schedule,
        batch_size=config.batch_size // world,
        seeds=[config.seed],
        rounds=rounds,
        apply=apply,
        score=score,
        record_every=1,
        record_losses=True,
        evaluate=False,
        check=False,
        progress=progress or False,
        checkpoint=checkpoint,
        checkpoint_every=config.checkpoint_every,
        log=log,
        log_every=config.log_every,
        reduce=reduce,
        stream=stream,
        shard=shard,
        on_step=on_step,
    )


def _checkpoint(
    oracle: Any, folder: Path, seed: int, resume: bool, owner: dict[str, Any] | None
) -> CheckpointFile | ShardedCheckpoint:
    """Where the run is saved: ``folder/checkpoint.pt``, or for a sharded policy the DCP
    folder ``folder/checkpoint`` that every rank writes its shards into."""
    if not is_sharded(getattr(oracle, "policy", None)):
        return CheckpointFile(folder / "checkpoint.pt", resume=resume, owner=owner)

    def template() -> dict[str, Any]:  # this run's shards, to read a checkpoint into
        oracle.reset([seed])  # copies: the driver resets the oracle again before loading
        return {"oracle": _copied(oracle.state_dict())}

    return ShardedCheckpoint(folder / "checkpoint", resume=resume, template=template, owner=owner)


def _copied(state: Any) -> Any:
    """``state`` with every tensor in its nested dicts cloned (the model's state dict holds
    views of the live parameters)."""
    if isinstance(state, dict):
        return {key: _copied(value) for key, value in state.items()}
    return state.detach().clone() if hasattr(state, "detach") else state


def history(result: RunResult) -> dict[str, list]:
    """The per-step record of a one-replicate run as JSON lists: step, weights, scores,
    loss (``None`` for steps the oracle took itself)."""
    record = result.to_dict()
    return {
        "step": record["record_steps"],
        "weights": [w[0] for w in record["weights"]],
        "scores": [s[0] for s in record["scores"]],
        "loss": [loss[0] for loss in record["losses"]],
    }
