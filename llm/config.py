"""Pipeline configuration: a TOML file mapped onto typed sections, every value checked
before any work.

This module is the schema and the per-value checks only.  Unknown sections or keys, and
values of the wrong type, raise a ``ValueError`` naming the file, the key and the accepted
values.  :func:`check_config` then checks every value on its own (:class:`ConfigError`, one
line per problem: the file, ``[section] key = value``, what is wrong and the fix):
divisors, signs, seeds, choices, and that every input path exists.  What a value means
together with the rest of the package — methods, their settings and budgets, capabilities,
optional packages, the device — is checked by :func:`llm.preflight.preflight` when a run
opens (:func:`llm.context.open_run`), before any work.  Relative input paths (``[data] manifest``, ``[model] path``)
resolve against the config file's folder; ``[run] out`` against the working directory.
``llm/configs/tiny-cpu.toml`` documents every key.

>>> cfg = Config()
>>> cfg.dpo.beta, cfg.run.methods
(0.1, ('uniform', 'stratified', 'ama-r', 'ama-s'))
>>> import dataclasses
>>> check_config(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seeds=(0, 0))))
Traceback (most recent call last):
...
llm.config.ConfigError: config [run] seeds = [0, 0]: seed 0 appears twice: replicates with one seed are the same run, so statistics over them would be wrong. Fix: list distinct seeds, e.g. [0, 1]
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KEEP",
    "Config",
    "ConfigError",
    "check_config",
    "load_config",
    "resolve_paths",
]


@dataclass(frozen=True)
class RunSection:
    out: str = "runs/tiny-cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("uniform", "stratified", "ama-r", "ama-s")
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16": autocast on the GPU path
    compile: bool = False
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    tensorboard: bool = False
    peak_flops: float = (
        0.0  # peak FLOP/s per GPU for MFU; 0: the GPU's own (llm.gpus), none on a CPU
    )
    prefix_sharing: bool = True  # one row per pair, the prompt once (Wang & Hegde 2024)
    bucket: int = 16  # pad each row to a multiple of this many tokens (0: the batch's longest)
    parallel: str = "ddp"  # under torchrun: "ddp" | "fsdp" (llm.parallel); "none": one process
    keep: str = "final"  # what a finished stage leaves on disk: "final" | "all" | "none" (KEEP)


@dataclass(frozen=True)
class DataSection:
    manifest: str = ""  # empty: the built-in suite (llm.synth) written to OUT/data
    suite: str = "classic"  # the built-in suite's version (llm.synth.SUITES): "learnable"
    synth_seed: int = 0
    max_length: int = 48
    max_prompt_length: int = 24
    truncate_prompt: str = "error"
    tokenization: str = "exact"  # "exact" (prompt | completion boundary) or "trl" (TRL 1.16)
    strict: bool = False  # data warnings (duplicates, chosen = rejected, ...) become errors
    validation: float = 0.0  # share of each task's training pairs held out for tuning


@dataclass(frozen=True)
class LoRASection:
    """``[model] lora = { r = 16, alpha = 32, ... }``: LoRA adapters (:mod:`llm.lora`); the
    specialists are adapters, the generalist an adapter or the base fully fine-tuned.

    ``r = 0`` turns LoRA off.  ``target_modules``: names of the layers to adapt (a module
    whose name ends with one), or ``["all-linear"]``: every linear layer of the transformer
    blocks.  ``dropout`` is PEFT's LoRA dropout, active only in training mode — the DPO
    policy runs in eval mode (dropout off, as TRL's ``disable_dropout``), so it has no
    effect there.
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("all-linear",)
    generalist: str = "adapter"  # or "full": the generalist fine-tunes the base itself


@dataclass(frozen=True)
class ModelSection:
    kind: str = "gpt"  # "gpt" (built-in) or "hf" (a local Hugging Face directory)
    path: str = ""
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    init_seed: int = 0
    gradient_checkpointing: bool = False  # recompute each block's activations in backward
    lora: LoRASection = field(default_factory=LoRASection)


@dataclass(frozen=True)
class SFTSection:
    """Supervised warm-up on the chosen completions that makes the reference model."""

    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3


@dataclass(frozen=True)
class DPOSection:
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class StageSection:
    """One training stage (specialists, or each generalist)."""

    steps: int = 150
    batch_size: int = 16
    learning_rate: float = 1e-3
    schedule: str = "constant"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    micro_batch_size: int = 0  # 0: no gradient accumulation
    accumulate: str = "recompute"  # or "by_task": no extra forward, k gradient buffers
    adamw: str = "fused"  # "fused" | "foreach" | "loop"
    checkpoint_every: int = 50
    log_every: int = 10


@dataclass(frozen=True)
class MixSection:
    """Mixer settings; ``examples`` is the generalists' equal example budget.

    ``tuning = "fixed"``: every method's mixer step size is ``step_size`` and AMA-S's
    exploration ``smoothing``.  ``tuning = "theory"``: the convex theory's 1/√T rule, the
    same for every method at its own horizon T: step ``step_size``/√T, exploration
    min(1, ``smoothing``·√(k ln k / T)) (:class:`amasim.registry.Theory`).
    """

    examples: int = 9600
    step_size: float = 1.0
    smoothing: float = 0.1
    tuning: str = "fixed"


@dataclass(frozen=True)
class EvalSection:
    generate: int = 100  # eval prompts per task decoded greedily for exact match
    max_new_tokens: int = 16
    batch_size: int = 64


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    sft: SFTSection = field(default_factory=SFTSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    specialist: StageSection = field(default_factory=StageSection)
    generalist: StageSection = field(default_factory=StageSection)
    mix: MixSection = field(default_factory=MixSection)
    eval: EvalSection = field(default_factory=EvalSection)


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {sorted(known)}")
    out = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        expected = type(default)
        if dataclasses.is_dataclass(expected):  # a table, e.g. [model] lora = { r = 8 }
            if not isinstance(value, dict):
                raise ValueError(
                    f"{where}.{name} must be a table like {name} = {{ ... }}, got {value!r}"
                )
            out[name] = _section(expected, value, f"{where}.{name}")
            continue
        if expected is tuple:
            item = type(default[0])
            if not isinstance(value, list) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(
                    f"{where}.{name} must be a list of {item.__name__} (like {list(default)!r}), "
                    f"got {value!r}"
                )
            value = tuple(value)
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ValueError(
                f"{where}.{name} must be {expected.__name__} (like {default!r}), got {value!r}"
            )
        out[name] = value
    return cls(**out)


def load_config(path: str | Path) -> Config:
    """Read a TOML config; every section and key is optional (defaults as in :class:`Config`).

    Relative input paths resolve against the file's folder (:func:`resolve_paths`); then
    :func:`check_config` checks every value.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist: see llm/configs/tiny-cpu.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start}). "
            "Fix: save the config as UTF-8"
        ) from None
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; accepted: {sorted(sections)}")
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ValueError(f"{path}: {name} must be a section [{name}], got {value!r}")
    types = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
    cfg = Config(**{name: _section(types[name], raw[name], f"{path} [{name}]") for name in raw})
    cfg = resolve_paths(cfg, path.parent)
    check_config(cfg, source=path)
    return cfg


def resolve_paths(cfg: Config, base: str | Path) -> Config:
    """``cfg`` with relative input paths (``[data] manifest``, ``[model] path``) made
    absolute against ``base`` (the config file's folder).  ``[run] out`` is an output and
    stays relative to the working directory, like ``--out``."""
    base = Path(base).resolve()

    def absolute(value: str) -> str:
        return value if not value or Path(value).is_absolute() else str(base / value)

    data = dataclasses.replace(cfg.data, manifest=absolute(cfg.data.manifest))
    return dataclasses.replace(
        cfg, data=data, model=dataclasses.replace(cfg.model, path=absolute(cfg.model.path))
    )


# ------------------------------------------------------------------------- checking
class ConfigError(ValueError):
    """Config values that cannot run: one line per problem (file, ``[section] key =
    value``, what is wrong, the fix).  ``problems`` lists them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = "" if len(problems) == 1 else f"{len(problems)} problems in the config:\n  "
        super().__init__(head + "\n  ".join(problems))


#: devices the pipeline runs on: cpu, cuda, cuda:N, mps
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
#: [run] dtype values the pipeline maps to an autocast dtype
DTYPES = ("float32", "bfloat16")
#: [run] keep: what a finished stage leaves on disk.  "final" (the default, for one disk):
#: the results, the caches, the reference weights and the specialists' final checkpoints
#: (the merges and their exact match read them); resume state goes as each stage finishes
#: (the reference SFT's run, every ``.prev`` checkpoint, each generalist's checkpoints once
#: its record is cached).  "all": every checkpoint stays.  "none": the specialists'
#: checkpoints go too when the run ends (a rerun with merges trains them again).
KEEP = ("final", "all", "none")


class _Checks:
    """Collects problems; each names ``[section] key = value``, the rule and the fix."""

    def __init__(self, cfg: Config, source: str) -> None:
        self.cfg, self.source, self.problems = cfg, source, []

    def bad(self, section: str, key: str, problem: str, fix: str) -> None:
        value = getattr(getattr(self.cfg, section), key)
        shown = list(value) if isinstance(value, tuple) else value
        self.problems.append(f"{self.source} [{section}] {key} = {shown!r}: {problem}. Fix: {fix}")

    def at_least(self, section: str, key: str, low: int, why: str = "") -> bool:
        value = getattr(getattr(self.cfg, section), key)
        if value >= low:
            return True
        default = getattr(type(getattr(self.cfg, section))(), key)
        self.bad(section, key, f"must be >= {low}{why}", f"set {key} = {default} (the default)")
        return False

    def positive(self, section: str, key: str, why: str = "") -> bool:
        value = getattr(getattr(self.cfg, section), key)
        if math.isfinite(value) and value > 0:
            return True
        default = getattr(type(getattr(self.cfg, section))(), key)
        self.bad(section, key, f"must be a finite number > 0{why}", f"set {key} = {default!r}")
        return False

    def non_negative(self, section: str, key: str, why: str = "") -> bool:
        value = getattr(getattr(self.cfg, section), key)
        if math.isfinite(value) and value >= 0:
            return True
        default = getattr(type(getattr(self.cfg, section))(), key)
        self.bad(section, key, f"must be a finite number >= 0{why}", f"set {key} = {default!r}")
        return False

    def choice(
        self, section: str, key: str, allowed: tuple[str, ...], what: str = "", hint: str = ""
    ) -> bool:
        value = getattr(getattr(self.cfg, section), key)
        if value in allowed:
            return True
        options = ", ".join(repr(a) for a in allowed)
        self.bad(section, key, f"is not {what or 'an accepted value'}", hint or f"use {options}")
        return False


def check_config(cfg: Config, source: str | Path = "config") -> Config:
    """Check every value of ``cfg`` on its own (types are the schema's): ``cfg`` itself,
    or a :class:`ConfigError` listing every problem.  ``source`` names the config in
    messages.  Input paths must exist.  What needs the rest of the package — the methods
    and their budgets, the task count, optional packages, the device — is checked by
    :func:`llm.preflight.preflight` when a run opens, still before any work."""
    c = _Checks(cfg, str(source))
    _check_run(c)
    _check_data(c)
    _check_model(c)
    _check_training(c)
    if c.problems:
        raise ConfigError(c.problems)
    return cfg


def _check_run(c: _Checks) -> None:
    run = c.cfg.run
    if not run.out:
        c.bad("run", "out", "is empty", 'give an output folder, e.g. out = "runs/my-run"')
    if not run.seeds:
        c.bad("run", "seeds", "is empty: nothing would be trained", "list seeds, e.g. [0, 1, 2]")
    for seed in run.seeds:
        if seed < 0:
            c.bad("run", "seeds", f"seed {seed} is negative", "use seeds >= 0")
            break
    repeated = sorted({s for s in run.seeds if run.seeds.count(s) > 1})
    if repeated:
        c.bad(
            "run",
            "seeds",
            f"seed {repeated[0]} appears twice: replicates with one seed are the same run, so "
            "statistics over them would be wrong",
            f"list distinct seeds, e.g. {list(range(len(run.seeds)))}",
        )
    if not _DEVICE.match(run.device):
        c.bad("run", "device", "is not a device", "use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if run.dtype == "float16":
        c.bad(
            "run",
            "dtype",
            "float16 autocast needs a gradient scaler (small gradients underflow to 0 in "
            "float16), and the DPO step runs none",
            'use dtype = "bfloat16" (the same speed on A100, H100 and later GPUs, float32\'s '
            'range) or "float32"',
        )
    else:
        c.choice("run", "dtype", DTYPES, "a supported dtype")
    c.choice("run", "keep", KEEP, "a keep policy", 'use "final", "all" or "none"')
    if c.choice("run", "parallel", ("none", "ddp", "fsdp"), "a way to run the ranks"):
        if run.parallel == "fsdp":
            if run.device == "mps":
                c.bad(
                    "run",
                    "parallel",
                    "needs collectives on the device; MPS has none",
                    'use device = "cuda" (NCCL) or "cpu" (gloo), or parallel = "none"',
                )
            if run.compile:
                c.bad(
                    "run",
                    "compile",
                    'is not supported with parallel = "fsdp" here',
                    'set compile = false, or parallel = "ddp"',
                )
            for stage in ("specialist", "generalist"):
                if getattr(c.cfg, stage).accumulate == "by_task":
                    c.bad(
                        stage,
                        "accumulate",
                        "runs a different number of backward passes per rank, which FSDP "
                        "cannot synchronise",
                        'use accumulate = "recompute"',
                    )
    c.at_least("run", "threads", 0, " (0 keeps torch's default)")
    c.non_negative("run", "peak_flops", " (0: the GPU's own peak, llm.gpus)")


def _check_data(c: _Checks) -> None:
    data, model = c.cfg.data, c.cfg.model
    if data.manifest:
        manifest = Path(data.manifest)
        if manifest.suffix.lower() not in (".toml", ".json"):
            c.bad("data", "manifest", "is not a .toml or .json manifest", "point it at tasks.toml")
        elif not manifest.is_file():
            c.bad(
                "data",
                "manifest",
                "does not exist (relative paths resolve against the config file's folder)",
                "fix the path, or leave it empty for the built-in suite",
            )
    from llm.synth import SUITES

    c.choice("data", "suite", SUITES, "a built-in suite (llm.synth.SUITES)")
    c.at_least("data", "synth_seed", 0)
    if c.at_least("data", "max_length", 2, " (a prompt token and a completion token)"):
        bos = 1 if model.kind == "gpt" else 0  # the character tokenizer adds BOS
        tokenization = data.tokenization
        if c.at_least("data", "max_prompt_length", 0) and tokenization == "exact":
            if bos + data.max_prompt_length + 1 > data.max_length:
                c.bad(
                    "data",
                    "max_prompt_length",
                    f"leaves no room for a completion token in max_length = {data.max_length}",
                    f"lower it below {data.max_length - bos} or raise max_length",
                )
    c.choice("data", "truncate_prompt", ("error", "left"))
    if not (math.isfinite(data.validation) and 0.0 <= data.validation < 1.0):
        c.bad(
            "data",
            "validation",
            "must lie in [0, 1): the share of each task's training pairs held out",
            "set validation = 0.1, or 0 for no validation split",
        )
    if c.choice("data", "tokenization", ("exact", "trl")):
        if data.tokenization == "trl" and data.truncate_prompt != "error":
            c.bad(
                "data",
                "truncate_prompt",
                'has no counterpart in TRL, which keeps the whole prompt (tokenization = "trl")',
                'set truncate_prompt = "error", or tokenization = "exact"',
            )


def _check_model(c: _Checks) -> None:
    model, data = c.cfg.model, c.cfg.data
    hint = (
        "use 'gpt' (the built-in GPT) or 'hf' (any local Hugging Face causal LM folder, "
        "e.g. a Llama checkpoint, given as [model] path)"
    )
    ok = c.choice("model", "kind", ("gpt", "hf"), "a model kind", hint)
    if ok and model.kind == "hf":
        path = Path(model.path) if model.path else None
        if path is None:
            c.bad(
                "model",
                "path",
                "is empty but kind = 'hf'",
                "give a local Hugging Face model folder",
            )
        elif not path.is_dir():
            c.bad(
                "model",
                "path",
                "is not a folder (relative paths resolve against the config file's folder)",
                "give a local Hugging Face model folder (saved with save_pretrained)",
            )
        elif not (path / "config.json").is_file():
            c.bad(
                "model",
                "path",
                "has no config.json, so it is not a Hugging Face model folder",
                "save the model there with model.save_pretrained(path)",
            )
    _check_lora(c)
    if ok and model.kind == "gpt":
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            c.at_least("model", key, 1)
        if model.n_head >= 1 and model.n_embd % model.n_head:
            c.bad(
                "model",
                "n_embd",
                f"is not a multiple of n_head = {model.n_head}",
                "make n_embd a multiple of n_head",
            )
        if not 0.0 <= model.dropout < 1.0:
            c.bad("model", "dropout", "must lie in [0, 1)", "set dropout = 0.0")
        if model.block_size < data.max_length:
            c.bad(
                "model",
                "block_size",
                f"is shorter than [data] max_length = {data.max_length}: sequences would not fit",
                f"raise block_size to at least {data.max_length}, or lower max_length",
            )
        c.at_least("model", "init_seed", 0)


def _check_lora(c: _Checks) -> None:
    lora = c.cfg.model.lora
    where = "[model] lora"

    def bad(key: str, problem: str, fix: str) -> None:
        value = getattr(lora, key)
        shown = list(value) if isinstance(value, tuple) else value
        c.problems.append(f"{c.source} {where}.{key} = {shown!r}: {problem}. Fix: {fix}")

    if lora.r < 0:
        bad("r", "must be >= 0 (0 turns LoRA off)", "set r = 0, or a rank such as 16")
    if lora.r <= 0:
        return
    if not (math.isfinite(lora.alpha) and lora.alpha > 0):
        bad(
            "alpha",
            "must be a finite number > 0 (the update is scaled by alpha / r)",
            "set alpha = 2 * r",
        )
    if not 0.0 <= lora.dropout < 1.0:
        bad("dropout", "must lie in [0, 1)", "set dropout = 0.0")
    if not lora.target_modules or any(not t for t in lora.target_modules):
        bad(
            "target_modules",
            "is empty or holds an empty name",
            'name layers to adapt, e.g. ["q_proj", "v_proj"], or ["all-linear"]',
        )
    if lora.generalist not in ("adapter", "full"):
        bad("generalist", "is not 'adapter' or 'full'", 'use "adapter" (an adapter) or "full"')


def _check_training(c: _Checks) -> None:
    from amasim.runspec import SCHEDULES

    cfg = c.cfg
    if cfg.model.kind == "gpt":
        c.at_least("sft", "steps", 0, " (0: the reference is the initial model)")
        c.at_least("sft", "batch_size", 1)
        c.positive("sft", "learning_rate")
    if c.positive("dpo", "beta", " (beta = 0 leaves the DPO loss at log 2 with no gradient)"):
        pass
    loss_types = ("sigmoid", "robust", "hinge", "ipo")  # llm.dpo.LOSS_TYPES
    if c.choice("dpo", "loss_type", loss_types, "a DPO loss"):
        eps = cfg.dpo.label_smoothing
        if cfg.dpo.loss_type in ("hinge", "ipo") and eps != 0:
            c.bad(
                "dpo",
                "label_smoothing",
                f"must be 0 for loss_type = {cfg.dpo.loss_type!r}",
                "set label_smoothing = 0.0",
            )
        elif not 0.0 <= eps < 0.5:
            c.bad("dpo", "label_smoothing", "must lie in [0, 0.5)", "set label_smoothing = 0.0")
    for name in ("specialist", "generalist"):
        stage = getattr(cfg, name)
        c.at_least(name, "steps", 1)
        batch_ok = c.at_least(name, "batch_size", 1)
        c.positive(name, "learning_rate")
        c.choice(name, "schedule", SCHEDULES, "a schedule")
        c.non_negative(name, "grad_clip", " (0: no clipping)")
        c.non_negative(name, "weight_decay")
        if c.at_least(name, "micro_batch_size", 0, " (0: no gradient accumulation)"):
            micro = stage.micro_batch_size
            if batch_ok and micro and stage.batch_size % micro:
                c.bad(
                    name,
                    "micro_batch_size",
                    f"does not divide batch_size = {stage.batch_size}",
                    "use a divisor of batch_size, or 0 for no accumulation",
                )
        c.choice(name, "accumulate", ("recompute", "by_task"), "a gradient accumulation")
        c.choice(name, "adamw", ("fused", "foreach", "loop"), "an AdamW implementation")
        c.at_least(name, "checkpoint_every", 1, " (a checkpoint every checkpoint_every steps)")
        c.at_least(name, "log_every", 1, " (a metrics record every log_every steps)")
    c.at_least("run", "bucket", 0, " (0: pad to the batch's longest row)")
    c.at_least("mix", "examples", 1)
    c.positive("mix", "step_size")
    if cfg.mix.tuning not in ("fixed", "theory"):
        c.bad("mix", "tuning", "is unknown", 'use "fixed" or "theory" (the 1/√T rule)')
    if not 0.0 <= cfg.mix.smoothing <= 1.0:
        c.bad("mix", "smoothing", "must lie in [0, 1] (AMA-S exploration)", "set smoothing = 0.1")
    c.at_least("eval", "generate", 0, " (0: no greedy decoding)")
    c.at_least("eval", "max_new_tokens", 1)
    c.at_least("eval", "batch_size", 1)
