"""Training one model: an amasim mixer on the DPO oracle, through the one driver.

The loop itself is :func:`amasim.driver.run` — the same driver the convex studies use —
given the oracle's extra duties as capabilities:

* **resume** — :class:`llm.checkpoint.CheckpointFile` holds the model, optimizer, mixer
  state, RNG state and data position (the oracle's ``state_dict``: the
  ``"checkpointing"`` capability); the loop's task draws are a pure function of the step,
  so a run killed mid-way and resumed gives the numbers of an uninterrupted one (bitwise
  on CPU).  Saves are atomic.
* **divergence** — a non-finite loss stops training with
  :class:`amasim.driver.TrainingDiverged` before the parameters change; the message names
  the last checkpoint.
* **metrics** — :class:`MetricsLog`: one JSON object per logged step (tokens/s from the
  ``"training_metrics"`` capability, the DPO reward metrics, the task weights and scores),
  MFU when ``peak_flops`` is given: FLOPs per token = 6N + 12·L·d·T (Kaplan et al. 2020;
  PaLM, Chowdhery et al. 2022, App. B).
* **data parallel** — under ``torchrun``, ``reduce`` sums per-task scores across ranks
  before the mixer update (:mod:`llm.distributed`), so every rank holds the same α.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amasim import prng
from amasim.driver import TrainingDiverged, run
from amasim.mixers import Mixer
from amasim.result import RunResult
from llm.checkpoint import CheckpointFile

__all__ = ["LoopConfig", "TrainingDiverged", "MetricsLog", "train", "history"]


@dataclass(frozen=True)
class LoopConfig:
    """How long and how fast to train one model."""

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

    With ``flops_per_token`` and ``peak_flops`` each record with ``tokens_per_s`` also
    gets ``mfu`` = flops_per_token · tokens/s / peak.
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

    def write(self, record: dict[str, Any]) -> None:
        if self.flops_per_token and self.peak_flops and "tokens_per_s" in record:
            record = {**record, "mfu": self.flops_per_token * record["tokens_per_s"]}
            record["mfu"] /= self.peak_flops
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, record["step"])

    def drop_from(self, step: int) -> None:
        """Forget records of steps >= ``step`` (a resumed run redoes them)."""
        if self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if json.loads(line)["step"] < step]
            self.path.write_text("".join(kept))

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
) -> RunResult:
    """Train ``oracle``'s policy with ``mixer`` for ``config.steps`` steps; the record of
    every step (:func:`history`).  ``out_dir/checkpoint.pt`` is resumed when it exists
    (unless ``resume=False``); ``on_step(t)`` is called after each step (tests use it to
    interrupt a run); ``progress``, when given, labels a progress bar."""
    if log is not None and flops_per_token and config.peak_flops:
        log.flops_per_token, log.peak_flops = flops_per_token, config.peak_flops
    return run(
        mixer,
        oracle,
        steps=config.steps,
        learning_rate=config.learning_rate,
        schedule=config.schedule,
        batch_size=config.batch_size,
        seeds=[config.seed],
        rounds=rounds,
        apply=apply,
        score=score,
        record_every=1,
        evaluate=False,
        check=False,
        progress=progress or False,
        checkpoint=CheckpointFile(Path(out_dir) / "checkpoint.pt", resume=resume),
        checkpoint_every=config.checkpoint_every,
        log=log,
        log_every=config.log_every,
        reduce=reduce,
        stream=stream,
        on_step=on_step,
    )


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
