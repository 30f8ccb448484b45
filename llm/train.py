"""The training loop: any amasim mixer on the DPO oracle, with checkpoints and logging.

Read it top to bottom; one step is :class:`amasim.train.Mixing` (draw a batch from α or
take every task, score it against the specialists, update the mixer, step the policy),
the rest is bookkeeping:

* **resume** — ``checkpoint.pt`` holds the model, optimizer, mixer state, RNG state and
  data position (the oracle's draw counter; the loop's task draws are a pure function
  of the step), so a run killed mid-way and resumed gives the numbers of an
  uninterrupted one (bitwise on CPU).  Saves are atomic (:mod:`llm.checkpoint`).
* **divergence** — a non-finite loss stops training with :class:`TrainingDiverged`
  before the parameters change; the last checkpoint on disk stays intact.
* **throughput** — tokens/s, and MFU when ``peak_flops`` is given: FLOPs per token =
  6N + 12·L·d·T (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B).
* **data parallel** — under ``torchrun``, ``reduce`` sums per-task scores across ranks
  before the mixer update (:mod:`llm.distributed`), so every rank holds the same α.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amasim import prng
from amasim.mixers import Mixer
from amasim.train import Mixing, learning_rate_at
from llm.checkpoint import load, save_atomic
from llm.oracle import DPOOracle

__all__ = ["LoopConfig", "TrainingDiverged", "MetricsLog", "train"]


@dataclass(frozen=True)
class LoopConfig:
    """How long and how fast to train one model."""

    steps: int
    batch_size: int
    learning_rate: float
    schedule: str = "constant"  # amasim.train.SCHEDULES
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    peak_flops: float | None = None  # per second, for MFU (e.g. 989e12: H100 bf16 dense)


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the message names the step and the last good checkpoint."""


class MetricsLog:
    """Append-only JSONL metrics (one object per line, flushed), optional TensorBoard."""

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
    oracle: DPOOracle,
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
) -> dict[str, Any]:
    """Train ``oracle``'s policy with ``mixer``; returns the weight and score history.

    ``on_step(t)`` is called after each completed step (tests use it to interrupt a run);
    ``progress``, when given, labels a tqdm progress bar.
    """
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    k = len(oracle.task_names)
    apply = apply or mixer.apply
    mixing = Mixing(
        mixer,
        oracle,
        seeds=[config.seed],
        batch_size=config.batch_size,
        apply=apply,
        score=score or mixer.score,
        reduce=reduce,
        stream=stream,
    )
    oracle.reset([config.seed])
    state = mixer.init(k, seed=[config.seed])
    history: dict[str, list] = {"step": [], "weights": [], "scores": [], "loss": []}
    start = 0
    if resume and ckpt_path.exists():
        ckpt = load(ckpt_path)
        oracle.load_state_dict(ckpt["oracle"])
        state, start, history = ckpt["mixer_state"], ckpt["step"], ckpt["history"]
    if log is not None:
        log.drop_from(start)
    saved_at = start if start else None

    steps = range(start, config.steps)
    if progress is not None:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=progress, initial=start, total=config.steps, leave=False)
    for t in steps:
        lr = learning_rate_at(config.learning_rate, config.schedule, t, config.steps)
        tokens_before, tick = oracle.tokens_seen, time.perf_counter()
        try:
            result = mixing.step(state, t, lr)
        except FloatingPointError as err:
            where = f"{ckpt_path} (step {saved_at})" if saved_at else "none was saved yet"
            raise TrainingDiverged(f"step {t}: {err}. Last good checkpoint: {where}") from err
        state = result.state
        seconds = time.perf_counter() - tick

        history["step"].append(t)
        history["weights"].append(result.weights[0].tolist())
        history["scores"].append(result.scores[0].tolist())
        history["loss"].append(float(np.mean(result.losses)))
        if log is not None and (t % config.log_every == 0 or t + 1 == config.steps):
            tokens = oracle.tokens_seen - tokens_before
            record = {"step": t, "lr": lr, "loss": history["loss"][-1], "seconds": seconds}
            record["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
            if config.peak_flops and flops_per_token:
                record["mfu"] = flops_per_token * tokens / seconds / config.peak_flops
            record.update({f"weight/{n}": w for n, w in zip(oracle.task_names, result.weights[0])})
            record.update({f"score/{n}": s for n, s in zip(oracle.task_names, result.scores[0])})
            record.update(oracle.last_metrics)
            log.write(record)
        if (t + 1) % config.checkpoint_every == 0 or t + 1 == config.steps:
            ckpt = {"oracle": oracle.state_dict(), "mixer_state": state, "step": t + 1}
            save_atomic({**ckpt, "history": history}, ckpt_path)
            saved_at = t + 1
        if on_step is not None:
            on_step(t)
    return {"history": history, "mixer_state": state}
