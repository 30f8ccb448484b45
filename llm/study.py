"""The LLM study as ``amasim reproduce --llm`` publishes it: the study over instances of one
config, its first instance's tables, and that instance's specialist-cost study, copied under
the names the README links.

    amasim reproduce --llm --out .        # rewrites results/llm_*.{md,json} and the figures

:func:`publish_study` runs ``python -m llm study`` on the config into ``OUT/runs/llm-<name>``
(:mod:`llm.instances` on two worker processes: the tuning instance, then the evaluation
instances, instance 0 with its specialist-cost study in one run context — one model load;
the study reuses that instance's reference, caches and full specialists; all resumable), and
copies

* ``study.{md,json}`` → ``OUT/results/llm_study.{md,json}`` (the claims over instances);
* instance 0's ``results.{md,json}`` → ``OUT/results/llm_<name>.{md,json}`` and its
  ``{weights,excess,differences}.png`` → ``OUT/figures/llm_<name>_*.png``;
* ``specialist_cost.{md,json,png}`` → ``OUT/results/llm_specialist_cost.*`` (the figure
  under ``OUT/figures``).

A file is replaced atomically (:func:`llm.integrity.copy_atomic`: written beside, then
renamed), so an interrupted copy never leaves half a table.
"""

from __future__ import annotations

from pathlib import Path

from llm.config import load_config
from llm.integrity import copy_atomic

__all__ = ["STUDY_CONFIG", "INSTANCES", "publish_study"]

#: the config of the published CPU study
STUDY_CONFIG = Path(__file__).parent / "configs" / "small-cpu.toml"
#: evaluation instances of the published study
INSTANCES = 5


def publish_study(
    out: str | Path, config: str | Path = STUDY_CONFIG, *, instances: int = INSTANCES
) -> list[Path]:
    """Run the study of ``config`` under ``out/runs`` and copy its tables and figures into
    ``out/results`` and ``out/figures``; the copied paths."""
    from llm.instances import run_study

    out = Path(out)
    name = Path(config).stem.replace("-", "_")
    cfg = load_config(config)
    run_dir = out / "runs" / f"llm-{Path(config).stem}"
    first = run_dir / "instance-0"
    run_study(cfg, run_dir, instances=instances, workers=2, cost_study=True)
    copies = {
        run_dir / "study.md": "results/llm_study.md",
        run_dir / "study.json": "results/llm_study.json",
        first / "results.md": f"results/llm_{name}.md",
        first / "results.json": f"results/llm_{name}.json",
        first / "weights.png": f"figures/llm_{name}_weights.png",
        first / "excess.png": f"figures/llm_{name}_excess.png",
        first / "differences.png": f"figures/llm_{name}_differences.png",
        first / "specialist_cost.md": "results/llm_specialist_cost.md",
        first / "specialist_cost.json": "results/llm_specialist_cost.json",
        first / "specialist_cost.png": "figures/llm_specialist_cost.png",
    }
    written = []
    for source, target in copies.items():
        if not source.is_file():
            continue  # e.g. differences.png with one seed
        copy_atomic(source, out / target, kind="published result")
        written.append(out / target)
    return written
