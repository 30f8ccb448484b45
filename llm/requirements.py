"""The optional packages a config needs, checked before any work.

Some settings need a package the core install lacks: ``[run] tensorboard = true``
(TensorBoard), ``[model] lora.r > 0`` (PEFT), ``[model] kind = "hf"`` (transformers and
safetensors).  :func:`check_optional_dependencies` lists every one that is missing, as
:func:`llm.config.check_config` lines (``[section] key = value: needs the X package, which
is not installed. Fix: pip install ...``), so a run fails in seconds instead of after the
reference and the specialists have trained.  Presence is checked with
:func:`importlib.util.find_spec` (nothing is imported: transformers alone takes seconds).

>>> from llm.config import Config
>>> check_optional_dependencies(Config())
[]
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

__all__ = ["Requirement", "requirements", "check_optional_dependencies", "installed"]


@dataclass(frozen=True)
class Requirement:
    """A package a setting needs: ``section``/``key`` name the setting, ``install`` the
    command that fixes it, ``instead`` the setting that avoids it."""

    package: str
    section: str
    key: str
    install: str
    instead: str


def requirements(cfg: Any) -> list[Requirement]:
    """The optional packages ``cfg`` (an :class:`llm.config.Config`) needs."""
    out = []
    if cfg.run.tensorboard:
        out.append(
            Requirement(
                "tensorboard",
                "run",
                "tensorboard",
                "pip install tensorboard",
                "set tensorboard = false",
            )
        )
    if cfg.model.lora.r > 0:
        out.append(
            Requirement("peft", "model", "lora", "pip install 'amasim[hf]'", "set lora.r = 0")
        )
    if cfg.model.kind == "hf":
        for package in ("transformers", "safetensors"):
            out.append(
                Requirement(
                    package,
                    "model",
                    "kind",
                    "pip install 'amasim[hf]'",
                    'use kind = "gpt" (the built-in GPT)',
                )
            )
    return out


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent missing, or a module without a spec
        return False


def check_optional_dependencies(cfg: Any, source: str = "config") -> list[str]:
    """One line per missing package ``cfg`` needs: the config (``source``), the setting,
    the package, and the ``pip install`` that fixes it."""
    problems = []
    for need in requirements(cfg):
        if installed(need.package):
            continue
        value = getattr(getattr(cfg, need.section), need.key)
        shown = value.r if need.key == "lora" else value
        setting = f"[{need.section}] {need.key}{'.r' if need.key == 'lora' else ''}"
        problems.append(
            f"{source} {setting} = {shown!r}: needs the {need.package} package, which is not "
            f"installed. Fix: {need.install}, or {need.instead}"
        )
    return problems
