"""The LLM study over instances: claims counted over data sets, every method tuned alike.

    python -m llm study --config llm/configs/small-cpu.toml --out OUT [--instances 5]

Floating point is not bitwise portable across CPUs, so a claim must hold across *instances*,
not on one: an instance is the config with ``[data] synth_seed`` and ``[model] init_seed``
set to its number, so the built-in suite, the reference SFT and the specialists all change;
within an instance every method trains on the same paired seeds ``[run] seeds``.

1. **Equal tuning** (:func:`tune`), on an instance of its own (:data:`TUNING_INSTANCE`, apart
   from the evaluation instances): every method that tunes its mixer (the registry's
   ``Method.tuned``) gets the same budget, :data:`GRID_SIZE` settings of its mixer step —
   and of its exploration for AMA-S and AMA-S-IX (:func:`grid`) — each trained on the
   tuning seeds and scored on the validation split (``[data] validation``); the setting
   with the lowest mean validation worst-task excess is selected.
2. **Evaluation** (:func:`evaluate_instance`): instances 0 … n − 1, every method at its
   selected setting, scored on the held-out split; beside them the theorem-tuned rows of
   the methods a theorem covers (``[mix] tuning = "theory"``), in ``theory/``.
3. **Claims over instances** (:func:`llm.report.claims_over_instances`): per pre-stated
   claim the paired test on every instance (Holm over all of them), the count of instances
   where it holds, is reversed or is not significant, and a sign test.

Everything is resumable: each instance keeps its caches and checkpoints in
``OUT/instance-<i>/`` (the tuning runs in ``OUT/tuning/``), and an instance whose results
are complete is read back, not run again.  ``OUT/study.json`` and ``OUT/study.md`` hold the
claims, the tuning, the budgets and the per-instance tables.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from amasim.registry import MERGES, METHODS
from llm.config import Config, MixSection
from llm.context import RunContext, open_run
from llm.integrity import IntegrityError
from llm.pipeline import Prepared, prepare, run_stages
from llm.report import read_results

__all__ = [
    "TUNING_INSTANCE",
    "GRID_SIZE",
    "grid",
    "instance_config",
    "THEORY_ROWS",
    "tune",
    "tune_part",
    "evaluate_instance",
    "run_study",
]

#: the methods whose theorem-tuned rows stand beside their tuned ones (AutoMixAlign's, whose
#: step sizes Theorems R, S and IX prescribe)
THEORY_ROWS = ("ama-r", "ama-s", "ama-s-ix")
#: the instance the grid is searched on (apart from the evaluation instances 0 … n − 1)
TUNING_INSTANCE = 1000
#: settings every tuned method tries: its mixer step η over a 100-fold range, or for the two
#: tuned parameters of AMA-S (η, exploration c) and AMA-S-IX (η, γ) three η × two values
GRID_SIZE = 6
#: the training seeds each grid point runs on (the first of ``[run] seeds``)
TUNING_SEEDS = 2
_STEPS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_STEPS_2D, _SMOOTHING_2D = (0.1, 1.0, 10.0), (0.02, 0.2)


def tuned_methods(methods: tuple[str, ...]) -> list[str]:
    """The methods of ``methods`` whose mixer has settings to tune (registry ``tuned``)."""
    return [m for m in methods if m not in MERGES and METHODS[m].tuned]


def grid(method: str, mix: MixSection) -> list[MixSection]:
    """The :data:`GRID_SIZE` ``[mix]`` settings ``method`` tries (``tuning = "fixed"``).

    >>> [(g.step_size, g.smoothing) for g in grid("ama-s", MixSection())][:3]
    [(0.1, 0.02), (0.1, 0.2), (1.0, 0.02)]
    >>> len(grid("ama-r", MixSection())) == len(grid("ama-s-ix", MixSection())) == GRID_SIZE
    True
    """
    fixed = dataclasses.replace(mix, tuning="fixed")
    if "smoothing" in METHODS[method].tuned:
        pairs = itertools.product(_STEPS_2D, _SMOOTHING_2D)
        return [dataclasses.replace(fixed, step_size=s, smoothing=c) for s, c in pairs]
    return [dataclasses.replace(fixed, step_size=s) for s in _STEPS]


def instance_config(cfg: Config, number: int, out: Path) -> Config:
    """``cfg`` for instance ``number``: its data (``synth_seed``) and model (``init_seed``)
    drawn from the number, its output folder ``out``."""
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, out=str(out)),
        data=dataclasses.replace(cfg.data, synth_seed=number),
        model=dataclasses.replace(cfg.model, init_seed=number),
    )


def _finished(folder: Path, methods: tuple[str, ...], seeds: tuple[int, ...]) -> dict | None:
    """The results of ``folder`` when every method ran every seed, else ``None``."""
    try:
        results = read_results(folder / "results.json")
    except (FileNotFoundError, IntegrityError):
        return None
    runs = results.get("runs", {})
    done = all(sorted(r["seed"] for r in runs.get(m, [])) == sorted(seeds) for m in methods)
    return results if done and "summary" in results else None


def _tuning_config(cfg: Config, out: Path, part: int, seeds: tuple[int, ...]) -> Config:
    """The tuning instance of worker ``part`` (its own folder): the tuned methods, the
    tuning seeds, no greedy decoding (the selection reads the worst-task excess alone)."""
    base = instance_config(cfg, TUNING_INSTANCE, out / "tuning" / f"part-{part}")
    run = dataclasses.replace(base.run, seeds=seeds, methods=tuple(tuned_methods(cfg.run.methods)))
    return dataclasses.replace(base, run=run, eval=dataclasses.replace(base.eval, generate=0))


def tune_part(
    cfg: Config, out: Path, seeds: tuple[int, ...], part: int, parts: int, progress: bool
) -> dict[int, dict[str, float]]:
    """Grid settings ``part``, ``part + parts``, … on the tuning instance: per setting, each
    tuned method's mean validation worst-task excess over ``seeds``."""
    tcfg = _tuning_config(cfg, out, part, seeds)
    methods = tcfg.run.methods
    scores: dict[int, dict[str, float]] = {}
    with open_run(tcfg, progress=progress) as ctx:
        ready = None
        for i in range(part, GRID_SIZE, parts):
            folder = out / "tuning" / f"grid-{i}"  # whichever worker ran it
            results = _finished(folder, methods, seeds)
            if results is None:
                ready = ready or prepare(ctx)
                mixes = {m: grid(m, cfg.mix)[i] for m in methods}
                results = run_stages(ctx, ready, mixes=mixes, held_out="valid", report=folder)
            scores[i] = {
                m: float(np.mean([r["worst_task_excess"] for r in results["runs"][m]]))
                for m in methods
            }
    return scores


def tune(
    cfg: Config, out: Path, seeds: tuple[int, ...], progress: bool = True, workers: int = 1
) -> dict[str, Any]:
    """Equal tuning on the tuning instance (module docstring): per tuned method, every grid
    setting's mean validation worst-task excess over ``seeds``, and the selected setting."""
    parts = _in_parallel(
        tune_part, [(cfg, out, seeds, p, workers, progress) for p in range(workers)], workers
    )
    scores = {i: row for part in parts for i, row in part.items()}
    record = {}
    for m in tuned_methods(cfg.run.methods):
        values = [scores[i][m] for i in range(GRID_SIZE)]
        settings = [{"step_size": g.step_size, "smoothing": g.smoothing} for g in grid(m, cfg.mix)]
        record[m] = {
            "grid": settings,
            "validation": values,
            "selected": settings[int(np.argmin(values))],
        }
    return record


def _in_parallel(function, calls: list[tuple], workers: int) -> list[Any]:
    """``function(*call)`` for every call, on ``workers`` processes (in this one for 1)."""
    if workers == 1:
        return [function(*call) for call in calls]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(function, *zip(*calls, strict=True)))


def _with_methods(cfg: Config, methods: list[str] | tuple[str, ...]) -> Config:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, methods=tuple(methods)))


def selected_mixes(cfg: Config, tuning: dict[str, Any]) -> dict[str, MixSection]:
    """Each tuned method's ``[mix]`` at its selected setting."""
    fixed = dataclasses.replace(cfg.mix, tuning="fixed")
    return {m: dataclasses.replace(fixed, **t["selected"]) for m, t in tuning.items()}


def evaluate_instance(
    cfg: Config,
    number: int,
    out: Path,
    tuning: dict[str, Any],
    progress: bool = True,
    after: Callable[[RunContext, Prepared], Any] | None = None,
) -> dict[str, Any]:
    """Instance ``number``: every method at its selected setting (``results.json``), and the
    theorem-tuned rows beside them (``theory/results.json``); both records.  ``after(ctx,
    ready)`` runs last in the same run context (one model load: the specialist-cost study)."""
    folder = out / f"instance-{number}"
    theorem = tuple(m for m in cfg.run.methods if m in THEORY_ROWS)
    results = _finished(folder, cfg.run.methods, cfg.run.seeds)
    theory = _finished(folder / "theory", theorem, cfg.run.seeds)
    done = results is not None and (theory is not None or not theorem)
    if done and (after is None or (folder / "specialist_cost.json").is_file()):
        return {"tuned": results, "theory": theory}
    with open_run(instance_config(cfg, number, folder), progress=progress) as ctx:
        ready = prepare(ctx)
        if results is None:
            results = run_stages(ctx, ready, mixes=selected_mixes(cfg, tuning))
        if theorem and theory is None:
            mix = dataclasses.replace(cfg.mix, tuning="theory")
            theory_cfg = dataclasses.replace(_with_methods(ctx.cfg, theorem), mix=mix)
            sub = dataclasses.replace(ctx, cfg=theory_cfg)
            theory = run_stages(sub, ready, report=folder / "theory")
        if after is not None:
            after(ctx, ready)
    return {"tuned": results, "theory": theory}


def specialist_cost_of(ctx: RunContext, ready: Prepared) -> None:
    """The specialist-cost study (:mod:`llm.specialist_cost`) of an open instance, written
    into its folder (unless it is there already)."""
    from llm.specialist_cost import study, write_specialist_cost

    if not (ctx.folders.out / "specialist_cost.json").is_file():
        write_specialist_cost(study(ctx, ready), ctx.folders.out)


def run_study(
    cfg: Config,
    out: str | Path,
    *,
    instances: int = 5,
    progress: bool = True,
    workers: int = 1,
    cost_study: bool = False,
) -> dict[str, Any]:
    """The whole study (module docstring) into ``out``, its runs on ``workers`` processes
    (each instance in its own folder); its record (``out/study.json``).  With
    ``cost_study`` instance 0 also runs the specialist-cost study in its run context
    (:func:`specialist_cost_of`)."""
    from llm.report import claims_over_instances
    from llm.study_report import write_study

    out, started = Path(out), time.perf_counter()
    tuning = tune(cfg, out, cfg.run.seeds[:TUNING_SEEDS], progress and workers == 1, workers)
    after = [specialist_cost_of if cost_study and n == 0 else None for n in range(instances)]
    calls = [(cfg, n, out, tuning, progress and workers == 1, after[n]) for n in range(instances)]
    done = dict(enumerate(_in_parallel(evaluate_instance, calls, workers)))
    study = {
        "config": dataclasses.asdict(cfg),
        "instances": [f"instance-{n}" for n in done],
        "tuning_instance": TUNING_INSTANCE,
        "tuning": tuning,
        "claims": claims_over_instances({f"instance-{n}": r["tuned"] for n, r in done.items()}),
        "per_instance": {f"instance-{n}": r["tuned"]["summary"] for n, r in done.items()},
        "theory": {f"instance-{n}": r["theory"]["summary"] for n, r in done.items() if r["theory"]},
        "budgets": _budgets(cfg, tuning, done),
        "seconds": time.perf_counter() - started,
    }
    write_study(study, out)
    return study


def _budgets(cfg: Config, tuning: dict[str, Any], done: dict[int, dict]) -> dict[str, Any]:
    """Per method: examples per run (its own steps, then what it spends beside them —
    DoReMi's proxy and reference), and the tuning grid's examples."""
    tuning_seeds = len(cfg.run.seeds[:TUNING_SEEDS])
    out = {}
    for method in cfg.run.methods:
        runs = [r for d in done.values() for r in d["tuned"]["runs"].get(method, [])]
        if not runs or method in MERGES:
            continue
        own = cfg.mix.examples
        extra = float(np.mean([r.get("extra_examples", 0) for r in runs]))
        grid_cost = GRID_SIZE * tuning_seeds * (own + extra) if method in tuning else 0
        out[method] = {"examples": own, "extra_examples": extra, "tuning_examples": grid_cost}
    return out
