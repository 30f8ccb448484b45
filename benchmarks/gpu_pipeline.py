"""A short ``gpu-small`` pipeline run beside its cost plan: predicted and measured wall time.

    PYTHONPATH=. python benchmarks/gpu_pipeline.py --work DIR --out pipeline.json   # CUDA
    PYTHONPATH=. python benchmarks/gpu_pipeline.py --smoke --work DIR --out p.json  # a CPU

Run by ``benchmarks/gpu_check.sh``.  ``llm/configs/gpu-small.toml`` (85M parameters, bf16)
cut to a few minutes — one seed, stratified, AMA-S and the linear merge, a 100-step SFT,
40-step specialists, 40 steps of 64 pairs per generalist, 20 prompts decoded per task — is
planned (:func:`llm.plan.make_plan` on this machine's GPU at the plan's default MFU) and
then run into ``--work``; the JSON holds the plan's time, disk and memory beside the
measured time, peak GPU memory and disk, per generalist and in total, so the plan's host
costs and MFU can be checked against a GPU.  ``--smoke``: the tiny-cpu config cut the
same way, on the CPU (its "predicted" time is still a GPU's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

from llm.config import Config, load_config
from llm.gpus import DEFAULT_GPU, match
from llm.integrity import write_text_atomic
from llm.pipeline import run_pipeline
from llm.plan import make_plan
from llm.synth import write_suite

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("stratified", "ama-s", "merge-linear")


def short_config(smoke: bool, out: Path) -> Config:
    """gpu-small (``smoke``: tiny-cpu, one layer) cut to a short run into ``out``."""
    cfg = load_config(ROOT / "llm" / "configs" / ("tiny-cpu.toml" if smoke else "gpu-small.toml"))
    steps = (
        {"sft": 20, "specialist": 5, "generalist": 6}
        if smoke
        else {"sft": 100, "specialist": 40, "generalist": 40}
    )
    run = dataclasses.replace(
        cfg.run, out=str(out), seeds=(0,), methods=METHODS, compile=False, keep="final"
    )
    model = dataclasses.replace(cfg.model, n_layer=1, n_embd=32) if smoke else cfg.model
    sft = dataclasses.replace(cfg.sft, steps=steps["sft"])
    specialist = dataclasses.replace(cfg.specialist, steps=steps["specialist"])
    batch = cfg.generalist.batch_size
    mix = dataclasses.replace(cfg.mix, examples=steps["generalist"] * batch)
    evaluation = dataclasses.replace(cfg.eval, generate=3 if smoke else 20)
    data = cfg.data
    if smoke:  # a small suite: the CPU scores every pair
        sizes = {"arithmetic": (48, 16), "safety": (24, 16), "format": (96, 16)}
        manifest = write_suite(out.parent / "suite", seed=0, sizes=sizes)
        data = dataclasses.replace(data, manifest=str(manifest))
    return dataclasses.replace(
        cfg,
        run=run,
        data=data,
        model=model,
        sft=sft,
        specialist=specialist,
        mix=mix,
        eval=evaluation,
    )


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny-cpu on the CPU")
    parser.add_argument("--work", type=Path, required=True, help="the run's output folder")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    cfg = short_config(args.smoke, args.work / "out")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or on a GPU machine")
    found = match(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    plan = make_plan(cfg, source="gpu-small (short)", gpu_name=found.name if found else DEFAULT_GPU)
    print(plan.table(), flush=True)
    record = {
        "config": "gpu-small (short)" if not args.smoke else "tiny-cpu (short)",
        "device": cfg.run.device,
        "gpu": plan.gpu.name,
        "mfu": plan.mfu,
        "predicted_s": plan.time_s,
        "measured_s": None,
        "generalists": None,
        "predicted_peak_disk_bytes": plan.disk["peak"],
        "predicted_final_disk_bytes": plan.disk["final"],
        "measured_final_disk_bytes": None,
        "predicted_memory_bytes": plan.memory["total"],
        "max_memory_allocated": None,
        "max_memory_reserved": None,
        "worst_task_excess": None,
    }
    write_text_atomic(args.out, json.dumps(record, indent=2), kind="report")  # a timeout keeps it
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    results = run_pipeline(cfg, progress=False)
    measured = time.perf_counter() - tick
    rows = {s.method: s.seconds for s in plan.stages if s.role == "generalist"}
    record |= {
        "measured_s": measured,
        "generalists": {
            method: {"predicted_s": rows[method], "measured_s": runs[0]["seconds"]}
            for method, runs in results["runs"].items()
            if method in rows
        },
        "measured_final_disk_bytes": _disk(args.work / "out"),
        "worst_task_excess": {
            m: runs[0]["worst_task_excess"] for m, runs in results["runs"].items()
        },
    }
    if torch.cuda.is_available():
        record["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        record["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    write_text_atomic(args.out, json.dumps(record, indent=2), kind="report")
    print(
        f"gpu-small (short): predicted {plan.time_s:.0f} s on {plan.gpu.name} at "
        f"{plan.mfu:.0%} MFU, measured {measured:.0f} s"
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
