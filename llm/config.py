"""Pipeline configuration: a TOML file mapped onto typed sections, every key checked.

Unknown sections or keys, and values of the wrong type, raise a ``ValueError`` naming the
file, the key and the accepted values.  ``llm/configs/tiny-cpu.toml`` documents every key.

>>> cfg = Config()
>>> cfg.dpo.beta, cfg.run.methods
(0.1, ('uniform', 'stratified', 'ama-r', 'ama-s'))
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "load_config"]


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
    peak_flops: float = 0.0  # device peak FLOP/s for MFU; 0 = no MFU


@dataclass(frozen=True)
class DataSection:
    manifest: str = ""  # empty: the built-in suite (llm.synth) written to OUT/data
    synth_seed: int = 0
    max_length: int = 48
    max_prompt_length: int = 24
    truncate_prompt: str = "error"
    tokenization: str = "exact"  # "exact" (prompt | completion boundary) or "trl" (TRL 1.16)


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
    checkpoint_every: int = 50
    log_every: int = 10


@dataclass(frozen=True)
class MixSection:
    """Mixer settings; ``examples`` is the generalists' equal example budget."""

    examples: int = 9600
    step_size: float = 1.0
    smoothing: float = 0.1


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
    """Read a TOML config; every section and key is optional (defaults as in :class:`Config`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist: see llm/configs/tiny-cpu.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; accepted: {sorted(sections)}")
    types = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
    return Config(**{name: _section(types[name], raw[name], f"{path} [{name}]") for name in raw})
