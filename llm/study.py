"""The LLM study as ``amasim reproduce --llm`` publishes it: one config's pipeline run and its
specialist-cost study, copied under the names the README links.

    amasim reproduce --llm --out .        # rewrites results/llm_small_cpu.* and the figures

:func:`publish_study` runs the pipeline and the specialist-cost study of one config into
``OUT/runs/llm-<name>`` in one run context (one model load; the study reuses the run's
reference, caches, full specialists and 100% generalists), then copies

* ``results.{md,json}`` → ``OUT/results/llm_<name>.{md,json}``;
* ``{weights,excess,differences}.png`` → ``OUT/figures/llm_<name>_*.png``;
* ``specialist_cost.{md,json}`` → ``OUT/results/llm_specialist_cost.{md,json}`` and
  ``specialist_cost.png`` → ``OUT/figures/llm_specialist_cost.png``.

A file is replaced atomically (:func:`llm.integrity.copy_atomic`: written beside, then
renamed), so an interrupted copy never leaves half a table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llm.config import load_config
from llm.integrity import copy_atomic

__all__ = ["STUDY_CONFIG", "publish_study"]

#: the config of the published CPU study
STUDY_CONFIG = Path(__file__).parent / "configs" / "small-cpu.toml"


def publish_study(out: str | Path, config: str | Path = STUDY_CONFIG) -> list[Path]:
    """Run the study of ``config`` under ``out/runs`` and copy its tables and figures into
    ``out/results`` and ``out/figures``; the copied paths."""
    from llm.context import open_run
    from llm.pipeline import prepare, run_stages
    from llm.specialist_cost import study, write_specialist_cost

    out = Path(out)
    name = Path(config).stem.replace("-", "_")
    cfg = load_config(config)
    run_dir = out / "runs" / f"llm-{Path(config).stem}"
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(run_dir)))
    with open_run(cfg) as ctx:  # one context, one model load, for both studies
        ready = prepare(ctx)
        run_stages(ctx, ready)
        write_specialist_cost(study(ctx, ready), run_dir)
    copies = {
        "results.md": f"results/llm_{name}.md",
        "results.json": f"results/llm_{name}.json",
        "weights.png": f"figures/llm_{name}_weights.png",
        "excess.png": f"figures/llm_{name}_excess.png",
        "differences.png": f"figures/llm_{name}_differences.png",
        "specialist_cost.md": "results/llm_specialist_cost.md",
        "specialist_cost.json": "results/llm_specialist_cost.json",
        "specialist_cost.png": "figures/llm_specialist_cost.png",
    }
    written = []
    for source, target in copies.items():
        if not (run_dir / source).is_file():
            continue  # e.g. differences.png with one seed
        copy_atomic(run_dir / source, out / target, kind="published result")
        written.append(out / target)
    return written
