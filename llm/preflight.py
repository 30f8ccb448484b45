"""Before any work: what a config means together with the rest of the package.

:func:`llm.config.check_config` checks each value on its own.  :func:`preflight` runs when a
run opens (:func:`llm.context.open_run`) and checks what needs the registry, the data and
the machine — still in seconds, before a model is built:

* every method of ``[run] methods`` is registered, listed once, buildable with the ``[mix]``
  settings, affordable at the ``[mix] examples`` budget (sweeps and rounds included) and
  needs only capabilities the oracle offers;
* the optional packages the config needs are installed (:mod:`llm.requirements`: PEFT for
  LoRA, transformers for a Hugging Face model, TensorBoard for ``[run] tensorboard``), with
  the ``pip install`` that fixes each;
* the device exists (a ``cuda`` config on a machine without CUDA is refused at once).

Every problem is one line of one :class:`~llm.config.ConfigError`.

>>> from llm.config import Config
>>> import dataclasses
>>> cfg = Config()
>>> preflight(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, methods=("amar",))))
Traceback (most recent call last):
...
llm.config.ConfigError: config [run] methods = ['amar']: ...
"""

from __future__ import annotations

from pathlib import Path

from llm.config import Config, ConfigError, MixSection
from llm.requirements import check_optional_dependencies

__all__ = ["preflight", "mix_policy", "task_count"]

#: (config needs it?, package, what for, the install that fixes it)
OPTIONAL_PACKAGES = (
    (lambda c: c.model.lora.r > 0, "peft", "[model] lora (r > 0)", "pip install 'amasim[hf]'"),
    (
        lambda c: c.model.kind == "hf",
        "transformers",
        "[model] kind = 'hf'",
        "pip install 'amasim[hf]'",
    ),
    (
        lambda c: c.run.tensorboard,
        "tensorboard",
        "[run] tensorboard = true",
        "pip install tensorboard",
    ),
)


def mix_policy(mix: MixSection, constants=None):
    """The :mod:`amasim.registry` tuning policy of a ``[mix]`` section: ``"theory"`` tunes
    each method by its own theorem at ``constants`` (:class:`amasim.registry.Constants`;
    the heuristic 1/√T rule with ``step_size``/``smoothing`` for a method no theorem
    covers), ``"fixed"`` gives every method ``step_size`` and ``smoothing``."""
    from amasim.registry import Constants, Fixed, Theory

    if mix.tuning == "theory":
        return Theory(mix.step_size, mix.smoothing, constants or Constants())
    return Fixed(mix.step_size, mix.smoothing)


def task_count(cfg: Config) -> int | None:
    """Tasks the run will have: the manifest's, or the built-in suite's (None: unreadable)."""
    if not cfg.data.manifest:
        from llm.synth import TASKS

        return len(TASKS)
    try:
        from llm.data import load_manifest

        return len(load_manifest(cfg.data.manifest))
    except (OSError, ValueError):
        return None


def preflight(
    cfg: Config,
    source: str | Path = "config",
    *,
    oracle: type | None = None,
    check_capabilities: bool = True,
    check_device: bool = True,
) -> Config:
    """Check what ``cfg`` needs from the package and the machine (module docstring);
    ``cfg`` itself, or a :class:`~llm.config.ConfigError` listing every problem.  With
    ``check_capabilities`` the methods may need only capabilities ``oracle`` (default
    :class:`llm.oracle.DPOOracle`) offers — a custom oracle factory is checked by the
    driver instead.  ``check_device=False`` leaves ``[run] device`` unchecked: a plan of a
    GPU run is made on any machine."""
    problems: list[str] = []
    methods = _check_methods(cfg, str(source), problems)
    if check_capabilities and methods:
        methods = _check_capabilities(cfg, str(source), methods, oracle, problems)
    _check_budgets(cfg, str(source), methods, problems)
    problems += check_optional_dependencies(cfg, str(source))
    if check_device:
        _check_device(cfg, str(source), problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _line(source: str, section: str, key: str, value, problem: str, fix: str) -> str:
    shown = list(value) if isinstance(value, tuple) else value
    return f"{source} [{section}] {key} = {shown!r}: {problem}. Fix: {fix}"


def _check_methods(cfg: Config, source: str, problems: list[str]) -> list[str]:
    """The registered, trainable methods of ``[run] methods`` (merges and unknown names out)."""
    from amasim.registry import MERGES, check_method

    methods = cfg.run.methods

    def bad(problem: str, fix: str) -> None:
        problems.append(_line(source, "run", "methods", methods, problem, fix))

    if not methods:
        bad("is empty: nothing would be trained", 'list methods, e.g. ["ama-r"]')
        return []
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        bad(
            f"{repeated[0]!r} is listed twice (its runs would be pooled as more seeds)",
            "list each method once",
        )
    known = []
    for name in dict.fromkeys(methods):
        try:
            check_method(name)
        except ValueError as err:
            bad(str(err), "remove it, or spell it as listed (amasim methods)")
            continue
        if name not in MERGES:
            known.append(name)
    return known


def _check_capabilities(
    cfg: Config, source: str, methods: list[str], oracle: type | None, problems: list[str]
) -> list[str]:
    """``methods`` without those needing a capability ``oracle`` lacks (each reported)."""
    from amasim.capabilities import CAPABILITIES, capabilities_of
    from amasim.registry import describe
    from amasim.runspec import requirements

    if oracle is None:
        from llm.oracle import DPOOracle as oracle
    offered, able = capabilities_of(oracle), []
    for name in methods:
        missing = [
            need
            for need in requirements(describe(name))
            if need not in offered and CAPABILITIES[need].methods  # attribute-only: per instance
        ]
        if not missing:
            able.append(name)
            continue
        cap = CAPABILITIES[missing[0]]
        lacks = ", ".join(f"{m}()" for m in cap.methods if not hasattr(oracle, m))
        problems.append(
            _line(
                source,
                "run",
                "methods",
                cfg.run.methods,
                f"mixer {name!r} requires the oracle capability {missing[0]!r}, but "
                f"{oracle.__name__} has no method {lacks}",
                f"remove {name!r} from methods, or {cap.fix} (a custom oracle through "
                "llm.pipeline.run_pipeline(make_oracle=...))",
            )
        )
    return able


def _check_budgets(cfg: Config, source: str, methods: list[str], problems: list[str]) -> None:
    """Every method affordable and buildable at the ``[mix]`` budget and settings."""
    from amasim.registry import build, steps_for_budget
    from amasim.runspec import check_horizon

    k, batch, mix = task_count(cfg), cfg.generalist.batch_size, cfg.mix
    if k is None or batch < 1 or mix.examples < 1:
        return  # reported by check_config (an unreadable manifest, a bad batch or budget)
    policy = mix_policy(mix)
    for name in methods:
        try:
            steps = steps_for_budget(name, mix.examples, k, batch)
        except ValueError as err:
            problem = f"{err} ({k} tasks, [generalist] batch_size = {batch})"
            fix = "raise examples, or lower [generalist] batch_size"
            problems.append(_line(source, "mix", "examples", mix.examples, problem, fix))
            continue
        try:
            mixer = build(name, steps=steps, sizes=(1,) * k, policy=policy)
        except (ValueError, TypeError) as err:
            problem = f"method {name!r} refuses the [mix] settings (step_size, smoothing): {err}"
            fix = "fix [mix] step_size / smoothing"
            problems.append(_line(source, "mix", "step_size", mix.step_size, problem, fix))
            continue
        try:  # sweeps and LearnParams rounds must fit in the budget (Skill-It, Aioli, DML)
            check_horizon(mixer, steps, k)
        except ValueError as err:
            fix = "raise examples, or drop the method"
            problems.append(_line(source, "mix", "examples", mix.examples, str(err), fix))


def _check_device(cfg: Config, source: str, problems: list[str]) -> None:
    import torch

    device = cfg.run.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(
            _line(
                source,
                "run",
                "device",
                device,
                "this machine has no CUDA GPU",
                "set device = 'cpu'",
            )
        )
    if device == "mps" and not torch.backends.mps.is_available():
        problems.append(
            _line(source, "run", "device", device, "MPS is not available here", "use 'cpu'")
        )
