"""The full AutoMixAlign pipeline, as stages: ``python -m llm run --config CONFIG``.

==================  ==========================================================================
stage               what it does (cache key)
==================  ==========================================================================
:func:`load_tasks`  the JSONL manifest or the built-in suite, tokenised (the token ids)
:func:`reference`   the built-in GPT after a short SFT on the chosen answers, or a local
                    Hugging Face model, loaded once (model config, SFT settings, data)
:func:`reference_cache`  reference log-probs of every pair, computed once (model weights,
                    pairs, numerics)
:func:`specialists` one DPO specialist per task and its per-pair losses (reference, pairs,
                    DPO and stage settings, numerics)
:func:`generalist`  one model per method × seed through the one driver, at an equal example
                    budget (the specialists' losses it reads, everything above)
:func:`merge`       a merge of the specialists (no training)
:func:`evaluate`    per-task held-out DPO loss, clipped excess, reward accuracy, exact match
report              ``results.json`` (written after every run), ``results.md``, plots
==================  ==========================================================================

Before any work the config is checked whole (:func:`llm.config.check_config`: methods and
their settings, divisors, signs, seeds, paths, the device) and the output folder is
locked (:class:`llm.lock.RunLock`: a second run into it is refused with the first one's
pid).  The data are audited per task and split (:func:`llm.data.audit_pairs`: duplicates,
chosen = rejected, unknown symbols, NUL characters, truncated completions): warnings with
counts, errors with ``[data] strict = true``, and the counts go into ``results.json``
(``data``) and ``results.md``.  Caches, the reference model and checkpoints are
checksummed (:mod:`llm.integrity`): a damaged cache or reference is rebuilt with a
warning, a damaged checkpoint falls back to the one before.  A NaN or an infinity in a
cache, a checkpoint or an evaluation is an error naming the task, the example and the
stage — never a number in the report.

One seam builds the oracle (:class:`OracleFactory`; default :func:`dpo_oracle`), so a user
can bring another model or oracle and reuse the specialist stage.  Every cache is keyed by
the fingerprints of what produced it (model weights, token ids, settings, the
specialists' losses a generalist reads, device, dtype and CPU thread count), so changing
the model, the data, β or the thread count recomputes it (:mod:`llm.cache`); a run on warm
caches gives the numbers of a run from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from amasim import mixers, prng
from amasim.merging import merge as merge_models
from amasim.oracle import Oracle
from amasim.registry import MERGES, build, steps_for_budget
from llm import lora
from llm.cache import cache_key, load_or_compute
from llm.checkpoint import load, save_atomic
from llm.config import (
    Config,
    ConfigError,
    StageSection,
    check_config,
    mix_policy,
    numerics_policy,
)
from llm.data import (
    DataAudit,
    PreferencePair,
    TokenizedPairs,
    audit_pairs,
    load_manifest,
    read_preference_jsonl,
    report_audit,
    tokenize_pairs,
)
from llm.dcp import read_checkpoint
from llm.distributed import reduce_task_scores
from llm.dpo import sequence_logps
from llm.evaluate import greedy_exact_match
from llm.integrity import IntegrityError, IntegrityWarning, NonFiniteError
from llm.lock import RunLock
from llm.model import GPT, GPTConfig, fingerprint
from llm.oracle import (
    DPOOracle,
    TaskData,
    dpo_settings,
    load_policy,
    numerics,
    pair_losses,
    reference_logps,
)
from llm.parallel import Group, full_state, is_sharded, join, load_full_state, wrap
from llm.report import summarize, write_report, write_results
from llm.tokenizer import CharTokenizer
from llm.train import LoopConfig, MetricsLog, history, train

__all__ = [
    "Task",
    "OracleFactory",
    "Prepared",
    "prepare",
    "dpo_oracle",
    "load_tasks",
    "reference",
    "reference_cache",
    "specialists",
    "stopped_stage",
    "generalist_key",
    "generalist",
    "merge",
    "evaluate",
    "run_pipeline",
]


@dataclass
class Task:
    """One task through the stages: its raw and tokenised splits and cached numbers.

    ``*_ref``: (n, 2) reference log-probs of (chosen, rejected); ``*_spec``: (n,) the
    specialist's per-pair DPO losses; ``checkpoint``: the specialist's weights on disk;
    ``audit``: per split, the data issues counted by :func:`llm.data.audit_pairs`.
    """

    name: str
    train_raw: list[PreferencePair]
    eval_raw: list[PreferencePair]
    train: TokenizedPairs
    eval: TokenizedPairs
    train_ref: np.ndarray | None = None
    eval_ref: np.ndarray | None = None
    train_spec: np.ndarray | None = None
    eval_spec: np.ndarray | None = None
    checkpoint: Path | None = None
    audit: dict[str, DataAudit] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    numerics: dict[str, Any] | None = None  # the precision policy the numbers were made under

    def data(self, split: str) -> TaskData:
        """The oracle's view of one split (zeros before the specialist exists)."""
        pairs, ref = getattr(self, split), getattr(self, f"{split}_ref")
        spec = getattr(self, f"{split}_spec")
        spec = np.zeros(len(pairs)) if spec is None else spec
        return TaskData(self.name, pairs, ref, spec, self.numerics)


class OracleFactory(Protocol):
    """The seam: build the oracle that trains ``model`` on ``tasks`` for one stage.

    ``stage`` is the config's ``[specialist]`` or ``[generalist]`` section; ``stream`` the
    oracle's random stream (data-parallel ranks pass their own).
    """

    def __call__(
        self,
        model: torch.nn.Module,
        tasks: list[TaskData],
        *,
        eval_tasks: list[TaskData] | None,
        stage: StageSection,
        stream: int,
    ) -> Oracle: ...


def dpo_oracle(cfg: Config, dpo: dict, pad_id: int) -> OracleFactory:
    """The default oracle: :class:`llm.oracle.DPOOracle` with the config's settings, under
    the run's one precision policy (:func:`llm.config.numerics_policy`)."""
    precision, layout = numerics_policy(cfg)

    lora_on = cfg.model.lora.r > 0
    generalist = lora.GENERALIST if cfg.model.lora.generalist == "adapter" else None

    def factory(model, tasks, *, eval_tasks, stage, stream=prng.SAMPLE_STREAM) -> DPOOracle:
        # with LoRA: each specialist trains the specialist adapter, the generalist its own
        # adapter or (lora.generalist = "full") the base
        adapter = (generalist if stage is cfg.generalist else lora.SPECIALIST) if lora_on else None
        return DPOOracle(
            model,
            tasks,
            eval_tasks=eval_tasks,
            pad_id=pad_id,
            dpo=dpo,
            grad_clip=stage.grad_clip,
            weight_decay=stage.weight_decay,
            precision=precision,
            layout=layout,
            micro_batch_size=stage.micro_batch_size or None,
            accumulate=stage.accumulate,
            adamw=stage.adamw,
            eval_batch_size=cfg.eval.batch_size,
            sample_stream=stream,
            adapter=adapter,
        )

    factory.oracle_class = DPOOracle  # what config validation checks capabilities against
    return factory


# ------------------------------------------------------------------------------ tasks
def load_tasks(cfg: Config, out: Path, tokenizer) -> dict[str, Task]:
    """Stage 1: every task of the manifest (or the built-in suite, written to OUT/data),
    audited per split (warnings with counts; ``[data] strict`` makes them errors)."""
    if cfg.data.manifest:
        manifest = Path(cfg.data.manifest)
    else:
        from llm.synth import write_suite

        # [data] suite: "classic" (tiny-cpu) or "learnable" (small-cpu), see llm.synth
        manifest = write_suite(out / "data", seed=cfg.data.synth_seed, suite=cfg.data.suite)
    tasks = {}
    for name, files in load_manifest(manifest).items():
        raw, tokens = {}, {}
        for split, path in (("train", files.train), ("eval", files.eval or files.train)):
            raw[split] = read_preference_jsonl(path, tokenizer)
            tokens[split] = tokenize_pairs(
                raw[split],
                tokenizer,
                max_length=cfg.data.max_length,
                max_prompt_length=cfg.data.max_prompt_length,
                truncate_prompt=cfg.data.truncate_prompt,
                tokenization=cfg.data.tokenization,
            )
        task = Task(name, raw["train"], raw["eval"], tokens["train"], tokens["eval"])
        for split in ("train", "eval"):
            audit = audit_pairs(raw[split], tokens[split], tokenizer)
            label = f"task {name!r} ({split}, {_split_file(files, split)})"
            report_audit(audit, label, strict=cfg.data.strict)
            task.audit[split] = audit
        tasks[name] = task
    return tasks


def _split_file(files, split: str) -> Path:
    """The file a split was read from (the train file serves as eval when none is given)."""
    return files.eval if split == "eval" and files.eval is not None else files.train


# -------------------------------------------------------------------------- reference
def load_model(cfg: Config) -> tuple[torch.nn.Module | None, Any]:
    """(Hugging Face model or ``None``, tokenizer): a local HF directory is loaded once;
    the built-in GPT is built by :func:`reference`, after the tasks exist."""
    if cfg.model.kind == "hf":
        from llm.hf import load_local

        # float32 master weights whatever the checkpoint's dtype: a bf16 checkpoint trained in
        # bf16 would lose small updates; [run] dtype autocasts the compute (llm.precision)
        return load_local(cfg.model.path, dtype=torch.float32)
    if cfg.model.kind != "gpt":
        raise ValueError(f"[model] kind={cfg.model.kind!r}: use 'gpt' or 'hf'")
    return None, CharTokenizer()


def reference(cfg: Config, out: Path, tasks: dict[str, Task], hf_model=None) -> torch.nn.Module:
    """Stage 2: the reference model — the loaded HF model, or the built-in GPT after a
    short SFT on the chosen answers (cached per setting under OUT/models)."""
    if hf_model is not None:
        return hf_model
    tokenizer = CharTokenizer()
    m = cfg.model
    config = GPTConfig(tokenizer.vocab_size, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)
    model = GPT(config, generator=torch.Generator().manual_seed(m.init_seed))
    key = cache_key(
        {"model": asdict(cfg.model), "sft": asdict(cfg.sft), "init": fingerprint(model)}
        | {name: t.train.fingerprint for name, t in tasks.items()}
        | {"threads": torch.get_num_threads()}  # CPU reductions split by thread count
        | {"sft_version": 2}  # 2: the SFT forward runs the chosen rows only
    )
    path = out / "models" / f"reference-{key[:16]}.pt"  # one file per setting
    state = None
    if path.exists():
        try:
            saved = load(path)
            state = saved["state"] if saved.get("key") == key else None
        except IntegrityError as err:
            warnings.warn(
                f"reference model {str(err).split(' Fix: ')[0]}: training it again",
                IntegrityWarning,
                stacklevel=2,
            )
    if state is None:
        state = _sft(model, tasks, cfg, tokenizer.pad_id)
        save_atomic({"key": key, "state": state}, path, kind="reference model")
    model.load_state_dict(state)
    return model


def _sft(model: torch.nn.Module, tasks: dict[str, Task], cfg: Config, pad_id: int) -> dict:
    """Next-token loss on the chosen completions of every task (uniform over pairs).

    Leaves the model as a cache hit would: reference weights, no gradients (a stale
    ``.grad`` would be added to the first specialist's first step), global RNG untouched.
    """
    from llm.data import collate_pairs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.init_seed)  # dropout masks, if the model has dropout
        generator = torch.Generator().manual_seed(cfg.model.init_seed)
        pairs = [(name, i) for name, t in tasks.items() for i in range(len(t.train))]
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft.learning_rate)
        model.train()
        for _ in range(cfg.sft.steps):
            pick = torch.randint(len(pairs), (cfg.sft.batch_size,), generator=generator).tolist()
            loss = 0.0
            for name in tasks:
                idx = [pairs[p][1] for p in pick if pairs[p][0] == name]
                if idx:
                    batch = collate_pairs(tasks[name].train, idx, pad_id)
                    n = len(idx)  # rows :n are the chosen answers; the rejected are not run
                    ids, mask = batch["input_ids"][:n], batch["attention_mask"][:n]
                    logits = model(ids, mask)
                    chosen = sequence_logps(logits, ids, batch["loss_mask"][:n], average=True)
                    loss = loss - chosen.sum() / cfg.sft.batch_size
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _numerics(cfg: Config, model: torch.nn.Module) -> dict[str, Any]:
    """What sets the numbers besides the weights and data: device, hardware, autocast
    dtype, batch layout, compilation, and on CPU the intra-op thread count (it splits
    reductions, so the last bits) — :func:`llm.oracle.numerics`."""
    precision, layout = numerics_policy(cfg)
    return numerics(model, precision, layout) | {"compile": cfg.run.compile}


def reference_cache(
    model: torch.nn.Module, tasks: dict[str, Task], cfg: Config, cache: Path, pad_id: int
) -> None:
    """Stage 3: the reference log-probs of every pair, computed once (the reference model
    never runs during training)."""
    model_fp = fingerprint(model)
    average = cfg.dpo.loss_type == "ipo"
    precision, layout = numerics_policy(cfg)
    made_under = _numerics(cfg, model)

    def logps(pairs: TokenizedPairs, where: str) -> np.ndarray:
        key = {"model": model_fp, "pairs": pairs.fingerprint, "average": average} | made_under

        def compute():
            values = reference_logps(
                model,
                pairs,
                pad_id=pad_id,
                average=average,
                precision=precision,
                layout=layout,
                batch_size=cfg.eval.batch_size,
            )
            return {"logps": values}

        return load_or_compute(
            cache, "reference", key, compute, where=where, sources={"logps": pairs.sources}
        )["logps"]

    for task in tasks.values():
        where = f"task {task.name!r}"
        task.numerics = numerics(model, precision, layout)  # the oracle checks it
        task.train_ref = logps(task.train, f"{where} (train split)")
        task.eval_ref = logps(task.eval, f"{where} (eval split)")


# ------------------------------------------------------------------------ specialists
def specialists(
    model: torch.nn.Module,
    tasks: dict[str, Task],
    cfg: Config,
    out: Path,
    *,
    make_oracle: OracleFactory,
    dpo: dict,
    pad_id: int,
    need_weights: bool = False,
    say: Callable[[str], None] = print,
    fraction: float = 1.0,
    tokenizer: Any = None,
) -> None:
    """Stage 4: one DPO specialist per task (trained from the reference with
    ``make_oracle``'s oracle), its per-pair losses cached once.  With ``need_weights``
    (merges) a specialist whose checkpoint was deleted is trained again — deterministic,
    so its losses are the cached ones.  ``model`` ends at the reference weights.

    ``fraction`` < 1 makes *early-stopped* specialists (the cost study,
    :mod:`llm.specialist_cost`): the first ``round(fraction · steps)`` steps of the full run
    (:func:`stopped_stage`); ``fraction = 0`` takes the reference itself as every task's
    specialist (its own per-pair losses, no training).  With a ``tokenizer`` and ``[eval]
    generate`` > 0, each specialist's greedy exact match on its own task's eval prompts is
    measured once (cached) into ``task.extra["exact_match"]``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: a share of the specialist steps, in [0, 1]")
    if need_weights and fraction == 0.0:
        raise ValueError("fraction=0 (the reference as specialist) has no weights to merge")
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    reference_fp = fingerprint(model)
    precision, layout = numerics_policy(cfg)
    spec = stopped_stage(cfg.specialist, fraction) if fraction > 0 else cfg.specialist
    for name, task in tasks.items():
        key = (
            {
                "reference": reference_fp,
                "pairs": task.train.fingerprint,
                "eval_pairs": task.eval.fingerprint,
                "dpo": dpo,
                "stage": asdict(spec) if fraction > 0 else "the reference",
                # 4: one precision policy and batch layout (earlier numbers differ in last bits)
                "version": 4,
            }
            | _numerics(cfg, model)
            | _lora_key(cfg)
        )
        folder = out / "specialists" / f"{name}-{cache_key(key)[:12]}"
        if _replicated_ranks(model):  # DDP: every rank trains the same specialist; own files
            folder /= f"rank{torch.distributed.get_rank()}"
        task.checkpoint = folder / "checkpoint.pt" if fraction > 0 else None

        def compute(task=task, folder=folder):
            model.load_state_dict(reference_state)
            if fraction > 0:
                oracle = make_oracle(
                    model,
                    [task.data("train")],
                    eval_tasks=None,
                    stage=spec,
                    stream=prng.SAMPLE_STREAM,
                )
                log = MetricsLog(folder / "metrics.jsonl")
                loop = _loop(spec, spec.steps, 0, cfg)
                label = f"specialist {task.name}" if say is print else None
                train(oracle, mixers.stratified(), loop, out_dir=folder, log=log, progress=label)
            losses = {}
            for split in ("train", "eval"):
                ref = getattr(task, f"{split}_ref")
                pairs = getattr(task, split)
                losses[split] = pair_losses(
                    model,
                    pairs,
                    ref,
                    pad_id=pad_id,
                    dpo=dpo,
                    precision=precision,
                    layout=layout,
                    batch_size=cfg.eval.batch_size,
                )["loss"]
            return losses

        sources = {"train": task.train.sources, "eval": task.eval.sources}
        where = f"task {name!r} (specialist losses)"
        cached = load_or_compute(
            out / "cache", "specialist", key, compute, where=where, sources=sources
        )
        if need_weights and not _finished(task.checkpoint, spec.steps):
            say(f"specialist {name}: final checkpoint missing, training it for the merges")
            compute()
        task.train_spec, task.eval_spec = cached["train"], cached["eval"]
        if tokenizer is not None and cfg.eval.generate and fraction > 0:
            task.extra["exact_match"] = _specialist_exact_match(
                model, tokenizer, task, cfg, out, key, compute, spec.steps
            )
        say(f"specialist {name}: mean eval loss {cached['eval'].mean():.4f}")
    model.load_state_dict(reference_state)


def _refuse_rounds_on_ranks(cfg: Config, tasks: dict[str, Task], world: int) -> None:
    """Refuse, on several ranks, a method that trains in rounds (Skill-It, Aioli, DML): its
    rounds (``train_on_mixture``) draw the local batch alike on every rank, so the ranks
    would train the same examples and the global batch would shrink with the ranks."""
    if world == 1:
        return
    sizes = tuple(len(t.train) for t in tasks.values())
    for method in cfg.run.methods:
        if method in MERGES:
            continue
        steps = steps_for_budget(method, cfg.mix.examples, len(tasks), cfg.generalist.batch_size)
        signal = build(method, steps=steps, sizes=sizes, policy=mix_policy(cfg.mix)).signal
        if signal.kind != "batch" or signal.design is not None:
            raise ValueError(
                f"[run] methods: {method!r} trains in rounds ({signal.kind!r} signal), which "
                f"the pipeline runs in one process only, not on {world} ranks. Fix: run it "
                "without torchrun, or drop it from [run] methods"
            )


def _replicated_ranks(model: torch.nn.Module) -> bool:
    """Whether this process is one of several ranks that hold the whole model (DDP under
    ``torchrun``): they train each specialist alike, so each writes its own checkpoints — two
    ranks rotating one checkpoint file would race.  A sharded model checkpoints together."""
    if is_sharded(model) or not torch.distributed.is_initialized():
        return False
    return torch.distributed.get_world_size() > 1


def stopped_stage(stage: StageSection, fraction: float) -> StageSection:
    """The stage of a specialist stopped after ``fraction`` of its steps: the first
    ``max(1, round(fraction · steps))`` steps of the full run — the same draws (they are a
    function of the step) and the same learning rates (under ``"1/sqrt(T)"`` the base rate
    is scaled by √(s/T), so η/√T of the full horizon T is kept).

    >>> stopped_stage(StageSection(steps=200, schedule="1/sqrt(T)", learning_rate=1.0), 0.25)
    ... # doctest: +ELLIPSIS
    StageSection(steps=50, batch_size=16, learning_rate=0.5, schedule='1/sqrt(T)', ...)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}: a share of the stage's steps, in (0, 1]")
    if fraction == 1.0:
        return stage
    steps = max(1, round(fraction * stage.steps))
    rate = stage.learning_rate
    if stage.schedule == "1/sqrt(T)":
        rate *= math.sqrt(steps / stage.steps)
    return dataclasses.replace(stage, steps=steps, learning_rate=rate)


def _specialist_exact_match(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    cfg: Config,
    out: Path,
    key: dict[str, Any],
    train_again: Callable[[], Any],
    steps: int,
) -> float:
    """Greedy exact match of ``task``'s specialist on its own first ``[eval] generate`` eval
    prompts, cached (keyed by the specialist's key and the decoding settings); the weights
    come from the specialist's final checkpoint (trained again if it was deleted)."""
    em_key = key | {"generate": cfg.eval.generate, "max_new_tokens": cfg.eval.max_new_tokens}

    def compute() -> dict[str, np.ndarray]:
        if not _finished(task.checkpoint, steps):
            train_again()
        load_policy(model, read_checkpoint(task.checkpoint)["oracle"]["policy"])
        value = greedy_exact_match(
            model,
            tokenizer,
            task.eval_raw[: cfg.eval.generate],
            max_new_tokens=cfg.eval.max_new_tokens,
            device=cfg.run.device,
        )
        return {"exact_match": np.array([value])}

    where = f"task {task.name!r} (specialist exact match)"
    cached = load_or_compute(out / "cache", "exact-match", em_key, compute, where=where)
    return float(cached["exact_match"][0])


def _finished(path: Path, steps: int) -> bool:
    """Whether the checkpoints at ``path`` hold a run finished at ``steps`` (a damaged
    newest one falls back to the one before, which a resumed run finishes)."""
    try:
        saved = read_checkpoint(path, weights=False)
    except IntegrityError:
        return False
    return saved is not None and saved.get("step") == steps


# ------------------------------------------------------------------------ generalists
def _loop(stage: StageSection, steps: int, seed: int, cfg: Config) -> LoopConfig:
    return LoopConfig(
        steps=steps,
        batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        schedule=stage.schedule,
        seed=seed,
        log_every=stage.log_every,
        checkpoint_every=stage.checkpoint_every,
        peak_flops=cfg.run.peak_flops or None,
    )


def generalist_key(
    reference_fp: str, tasks: dict[str, Task], dpo: dict, cfg: Config
) -> dict[str, Any]:
    """What a generalist's run depends on besides its method and seed: the reference, the
    specialists' per-pair losses it reads (the generalists are keyed by those numbers), the
    DPO settings, the training and held-out data, the numerics and the LoRA settings (the
    cache key of :func:`generalist`)."""
    names = list(tasks)
    specialist_fp = cache_key(
        {n: hashlib.sha256(tasks[n].train_spec.tobytes()).hexdigest() for n in names}
    )
    key = {"reference": reference_fp, "specialists": specialist_fp, "dpo": dpo}
    key |= (tasks[names[0]].numerics or {}) | {"compile": cfg.run.compile}  # reference_cache's
    key["data"] = [tasks[n].train.fingerprint for n in names]
    # the held-out pairs: methods with a validation signal (Skill-It, Aioli) train on them
    key["eval_data"] = [tasks[n].eval.fingerprint for n in names]
    return key | _lora_key(cfg)


def _lora_key(cfg: Config) -> dict[str, Any]:
    """The LoRA settings, when adapters are on: ``alpha`` scales every update and
    ``generalist`` decides what trains, yet neither shows in a fresh adapter's weights (so
    not in :func:`llm.model.fingerprint`)."""
    return {"lora": asdict(cfg.model.lora)} if cfg.model.lora.r > 0 else {}


def generalist(
    method: str,
    seed: int,
    oracle: Oracle,
    tasks: dict[str, Task],
    cfg: Config,
    out: Path,
    *,
    key: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    stream: int = prng.LOOP_STREAM,
    flops_per_token: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 5: train one generalist with registered ``method`` on ``oracle`` (which holds
    every task) at the config's example budget; returns its steps and history."""
    k, batch = len(tasks), cfg.generalist.batch_size
    steps = steps_for_budget(method, cfg.mix.examples, k, batch)
    sizes = tuple(len(t.train) for t in tasks.values())
    policy = mix_policy(cfg.mix)
    mixer = build(method, steps=steps, sizes=sizes, policy=policy)
    step_size, smoothing = policy(steps, k)  # what the tuning set (the method may fix some)
    run_key = key | {"mix": asdict(cfg.mix), "stage": asdict(cfg.generalist), "driver": 1}
    folder = out / "generalists" / f"{method}-seed{seed}-{cache_key(run_key)[:12]}"
    # sharded: one folder for every rank and world size (llm.dcp); DDP: one per rank
    folder /= "sharded" if is_sharded(getattr(oracle, "policy", None)) else f"rank{rank}"
    log = MetricsLog(
        folder / "metrics.jsonl",
        folder / "tb" if cfg.run.tensorboard else None,
        flops_per_token=flops_per_token,
        peak_flops=cfg.run.peak_flops or None,
    )
    result = train(
        oracle,
        mixer,
        _loop(cfg.generalist, steps, seed, cfg),
        out_dir=folder,
        log=log,
        reduce=reduce_task_scores if world > 1 else None,
        stream=stream,
        progress=f"{method} seed {seed}" if progress and rank == 0 else None,
    )
    log.close()
    tuned = {"step_size": step_size, "smoothing": smoothing, "tuning": cfg.mix.tuning}
    return {"steps": steps, "history": history(result), "tuned": tuned}


def merge(
    method: str, seed: int, tasks: dict[str, Task], reference_state: dict, model=None
) -> dict:
    """Stage 6: the state dict of merge ``method`` of the specialists (base: the reference,
    whole tensors; task vectors averaged, not summed; DARE draws from ``seed``).  With LoRA
    (``model`` holds adapters) the specialists are adapters: the merge acts on their
    updates ΔW_i and adds the result to the base (:func:`llm.lora.merge_specialists`)."""
    states = [read_checkpoint(t.checkpoint)["oracle"]["policy"] for t in tasks.values()]
    options = {"seed": seed} if MERGES[method].startswith("dare") else {}
    weights = [1.0 / len(tasks)] * len(tasks)
    if model is not None and lora.has_adapters(model):
        return lora.merge_specialists(
            MERGES[method], model, reference_state, states, weights=weights, **options
        )
    return merge_models(MERGES[method], reference_state, states, weights=weights, **options)


# ------------------------------------------------------------------------- evaluation
def evaluate(
    oracle: Oracle, model, tokenizer, tasks: dict[str, Task], cfg: Config, stage: str = "model"
) -> dict:
    """Stage 7: per-task held-out metrics of the current policy, greedy exact match
    included.  A non-finite metric raises :class:`~llm.integrity.NonFiniteError` naming
    the task, the first non-finite example and ``stage`` (e.g. ``"ama-r seed 0"``)."""
    per_task = oracle.evaluate_tasks()
    for name, row in per_task.items():
        bad = [metric for metric, value in row.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteError(
                f"evaluating {stage}: task {name!r} has a non-finite {', '.join(bad)}"
                f"{_first_bad_example(oracle, tasks[name])}; the policy diverged (or a cached "
                "number is broken) and no result was recorded. Fix: lower the learning rate, "
                "or delete that stage's checkpoints and rerun",
                name,
            )
    for name, row in per_task.items():
        if not cfg.eval.generate:  # [eval] generate = 0: no decoding, no exact match
            break
        row["exact_match"] = greedy_exact_match(
            model,
            tokenizer,
            tasks[name].eval_raw[: cfg.eval.generate],
            max_new_tokens=cfg.eval.max_new_tokens,
            device=cfg.run.device,
        )
    return {"tasks": per_task, "worst_task_excess": max(v["clipped"] for v in per_task.values())}


def _first_bad_example(oracle: Any, task: Task) -> str:
    """`` at example i (path:line)`` for the first eval pair whose loss is not finite."""
    if not isinstance(oracle, DPOOracle):
        return ""
    losses = oracle.pair_losses(task.eval, task.eval_ref)["loss"]
    losses = np.column_stack([losses, task.eval_spec if task.eval_spec is not None else losses])
    rows = np.flatnonzero(~np.isfinite(losses).all(axis=1))
    if not rows.size:
        return ""
    return f" (first at example {rows[0]}: {task.eval.sources[rows[0]]})"


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            [f"[run] device = {device!r}: this machine has no CUDA GPU. Fix: set device = 'cpu'"]
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(["[run] device = 'mps': MPS is not available here. Fix: use 'cpu'"])


def _scale(cfg: Config, model: torch.nn.Module, group: Group) -> torch.nn.Module:
    """The model as ``[model]`` and ``[run] parallel`` train it: LoRA adapters (the
    specialists' and the generalist's, off: the reference computes as before), activation
    checkpointing, and for ``"fsdp"`` sharded in place (after both: sharding fixes the
    parameters).  DDP wraps the policy later, for the generalists alone."""
    spec = cfg.model.lora
    if spec.r > 0:
        lora.add_adapters(
            model,
            [lora.SPECIALIST, lora.GENERALIST],
            r=spec.r,
            alpha=spec.alpha,
            dropout=spec.dropout,
            target_modules=spec.target_modules,
            seed=cfg.model.init_seed,
        )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.run.parallel == "fsdp":
        model = wrap(model, "fsdp", group, bf16=cfg.run.dtype == "bfloat16")
    return model


# --------------------------------------------------------------------------- pipeline
def run_pipeline(
    cfg: Config, *, progress: bool = True, make_oracle: OracleFactory | None = None
) -> dict[str, Any]:
    """Run every stage; returns the results record (also written to ``OUT/results.json``
    after every method × seed, so a finished run survives a later one's failure).

    First, before any work: the whole config is checked (:func:`llm.config.check_config`;
    with ``make_oracle`` the capability check is left to the driver) and the output
    folder is checked and locked (:class:`llm.lock.RunLock`; under ``torchrun`` rank 0
    holds the lock)."""
    check_config(cfg, oracle=None, check_capabilities=make_oracle is None)
    _check_device(cfg.run.device)
    out = Path(cfg.run.out)
    lock = RunLock(out, what="output folder ([run] out / --out)")
    if int(os.environ.get("RANK", "0")) == 0:
        lock.acquire()
    joined = torch.distributed.is_initialized()  # a group the caller made stays theirs
    try:
        return _run_stages(cfg, out, progress=progress, make_oracle=make_oracle)
    finally:
        lock.release()
        if not joined and torch.distributed.is_initialized():  # the one join() made
            torch.distributed.destroy_process_group()


class Prepared(NamedTuple):
    """What every study of a config starts from (:func:`prepare`): the tasks with their
    cached reference log-probs, the reference model as it trains (on its device, with its
    adapters, checkpointing and shards), its weights and fingerprint, and the oracle seam."""

    dpo: dict  # the DPO keyword arguments (llm.oracle.dpo_settings)
    tokenizer: Any
    tasks: dict[str, Task]
    model: torch.nn.Module
    group: Group
    make_oracle: OracleFactory
    reference_state: dict[str, torch.Tensor]
    reference_fingerprint: str


def prepare(
    cfg: Config, out: Path, *, make_oracle: OracleFactory | None = None, say: Callable = print
) -> Prepared:
    """Stages 1–2 for ``cfg`` into ``out``: the tasks, the reference model and its cached
    log-probs (:func:`load_tasks`, :func:`reference`, :func:`reference_cache`)."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    started = time.perf_counter()
    dpo = dpo_settings(cfg.dpo.beta, cfg.dpo.loss_type, cfg.dpo.label_smoothing)
    hf_model, tokenizer = load_model(cfg)
    tasks = load_tasks(cfg, out, tokenizer)
    model = reference(cfg, out, tasks, hf_model)
    model.to(numerics_policy(cfg)[0].device)  # every number is computed where it trains
    group = join(cfg.run.parallel, cfg.run.device)  # torchrun's process group, if any
    model = _scale(cfg, model, group)  # adapters, activation checkpointing, FSDP shards
    if cfg.run.compile:  # before the reference: compiled numbers differ from eager ones
        model.forward = torch.compile(model.forward)
    make_oracle = make_oracle or dpo_oracle(cfg, dpo, tokenizer.pad_id)
    reference_cache(model, tasks, cfg, out / "cache", tokenizer.pad_id)
    say(f"reference ready ({time.perf_counter() - started:.0f} s)")
    reference_state = {k: v.clone() for k, v in model.state_dict().items()}
    return Prepared(
        dpo, tokenizer, tasks, model, group, make_oracle, reference_state, fingerprint(model)
    )


def _run_stages(
    cfg: Config, out: Path, *, progress: bool, make_oracle: OracleFactory | None
) -> dict[str, Any]:
    started = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    ready = prepare(cfg, out, make_oracle=make_oracle, say=say)
    dpo, tokenizer, tasks, model, group, make_oracle, reference_state, ref_fp = ready
    _refuse_rounds_on_ranks(cfg, tasks, group.world)  # before the specialists train
    wants_merges = any(method in MERGES for method in cfg.run.methods)
    specialists(
        model,
        tasks,
        cfg,
        out,
        make_oracle=make_oracle,
        dpo=dpo,
        pad_id=tokenizer.pad_id,
        need_weights=wants_merges,
        say=say,
        tokenizer=tokenizer,
    )

    names = list(tasks)
    key = generalist_key(ref_fp, tasks, dpo, cfg)
    # Data parallel under torchrun (llm.parallel): every rank draws the same global batch and
    # trains on its block; per-task scores are all-reduced before each mixer update.
    rank, world = group.rank, group.world
    if lora.has_adapters(model):  # DDP averages the gradients of what trains when it wraps
        lora.use(model, lora.GENERALIST if cfg.model.lora.generalist == "adapter" else None)
    policy = model if is_sharded(model) else wrap(model, cfg.run.parallel, group)
    loop_stream, oracle_stream = prng.LOOP_STREAM, prng.SAMPLE_STREAM
    oracle = make_oracle(
        policy,
        [t.data("train") for t in tasks.values()],
        eval_tasks=[t.data("eval") for t in tasks.values()],
        stage=cfg.generalist,
        stream=oracle_stream,
    )
    flops = getattr(model, "flops_per_token", None)
    sizes = tuple(len(t.train) for t in tasks.values())
    data = {n: {split: a.to_dict() for split, a in tasks[n].audit.items()} for n in names}
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "seeds": list(cfg.run.seeds),
        "tasks": names,
        "sizes": sizes,
        "data": data,
        "parameters": sum(p.numel() for p in model.parameters()),
        # each specialist's greedy exact match on its own task's held-out prompts
        "specialist_exact_match": {
            n: tasks[n].extra["exact_match"] for n in names if "exact_match" in tasks[n].extra
        },
        "runs": {},
    }
    merged: dict[str, dict[str, Any]] = {}  # merges that ignore the seed, evaluated once
    for method in cfg.run.methods:
        for seed in cfg.run.seeds:
            tick = time.perf_counter()
            if method in merged:  # the same weights as at the first seed: the same record
                record = dict(merged[method])
            elif method in MERGES:  # no training, evaluated per seed (DARE draws from it)
                whole = full_state(reference_state)  # FSDP: gathered (every rank)
                load_full_state(model, merge(method, seed, tasks, whole, model))
                stage = f"{method} seed {seed}"
                with lora.adapters_off(model):  # the merge is in the base weights
                    record = evaluate(oracle, model, tokenizer, tasks, cfg, stage) | {"steps": 0}
                model.load_state_dict(reference_state)  # the base back (LoRA trains on it)
                if not MERGES[method].startswith("dare"):
                    merged[method] = record
            else:
                trained = generalist(
                    method,
                    seed,
                    oracle,
                    tasks,
                    cfg,
                    out,
                    key=key,
                    rank=rank,
                    world=world,
                    stream=loop_stream,
                    flops_per_token=flops(cfg.data.max_length) if flops else None,
                    progress=progress,
                )
                record = evaluate(oracle, model, tokenizer, tasks, cfg, f"{method} seed {seed}")
                record |= {"steps": trained["steps"], "tuned": trained["tuned"]}
            record |= {"seed": seed, "seconds": time.perf_counter() - tick}
            if method not in MERGES:
                record["history"] = trained["history"]
            results["runs"].setdefault(method, []).append(record)
            say(f"{method} seed {seed}: worst-task excess {record['worst_task_excess']:.4f}")
            results["seconds"] = time.perf_counter() - started
            if rank == 0:  # every finished run at once: a later failure cannot lose it
                write_results(out / "results.json", results)
    if rank == 0:
        results["summary"] = summarize(results)  # CIs over seeds and the claims' verdicts
        write_results(out / "results.json", results)
        write_report(results, out)
    return results
