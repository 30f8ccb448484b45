"""The GPU check's one report, ``DIR/gpu_check.json``, rewritten after every stage.

    python benchmarks/gpu_report.py init DIR [--smoke]
    python benchmarks/gpu_report.py stage DIR NAME --status ok --seconds 12.3 --cap 120 \
        [--fragment FILE]
    python benchmarks/gpu_report.py finish DIR

Called by ``benchmarks/gpu_check.sh``.  ``init`` writes the environment (device, the GPU
table's entry, torch and CUDA versions, the ``nvidia-smi`` line); ``stage`` adds one stage's
status, wall time, time cap and numbers (a stage script's JSON, or the JUnit XML of the
tests); ``finish`` the overall status.  Every stage's numbers have the keys of
:data:`SCHEMA` whatever happened — a key the stage could not measure (a failed stage, a
CPU) is null — so the smoke run on a CPU and a GPU run write the same keys, and a stage that
failed or ran out of time still leaves every earlier number in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source tree

REPORT = "gpu_check.json"
JUNIT = "junit.xml"
LOG = "gpu_check.log"
#: the files a check leaves in its folder
FILES = (REPORT, JUNIT, LOG)

#: one configuration of the step benchmark (benchmarks/gpu_step.py)
STEP_ROW = (
    "layout",
    "compile",
    "status",
    "error",
    "median_step_s",
    "pairs_per_s",
    "tokens_per_s",
    "tokens_per_step",
    "model_flops_per_step",
    "mfu",
    "mixer_share",
    "warmup_s",
    "setup_s",
    "last_loss",
    "max_memory_allocated",
    "max_memory_reserved",
    "predicted_memory_bytes",
)

#: the keys of every part of the report
SCHEMA: dict[str, tuple[str, ...]] = {
    "report": ("schema", "smoke", "started", "finished", "status", "environment", "stages"),
    "environment": ("device", "gpu", "peak_flops", "torch", "cuda", "python", "nvidia_smi"),
    "stage": ("status", "seconds", "cap_s", "result"),
    "tests": ("tests", "failures", "errors", "skipped"),
    "step": (
        "device",
        "shape",
        "pairs_per_step",
        "peak_flops",
        "torch",
        "python",
        "date",
        "results",
    ),
    "excess": (
        "device",
        "shape",
        "peak_flops",
        "torch",
        "python",
        "date",
        "dtype",
        "pairs",
        "max_abs_excess",
        "max_abs_clipped_excess",
        "first_loss_minus_log2",
        "held_out_max_abs_excess",
    ),
    "pipeline": (
        "config",
        "device",
        "gpu",
        "mfu",
        "predicted_s",
        "measured_s",
        "generalists",
        "predicted_peak_disk_bytes",
        "predicted_final_disk_bytes",
        "measured_final_disk_bytes",
        "predicted_memory_bytes",
        "max_memory_allocated",
        "max_memory_reserved",
        "worst_task_excess",
    ),
}
#: the stages, in the order they run
STAGES = ("tests", "step", "excess", "pipeline")


def shaped(fields: tuple[str, ...], found: dict[str, Any] | None) -> dict[str, Any]:
    """``found`` with every key of ``fields`` (null where missing), its own keys kept."""
    return {key: None for key in fields} | dict(found or {})


def _write(folder: Path, report: dict[str, Any]) -> None:
    path = folder / REPORT
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, path)  # never half a report


def _read(folder: Path) -> dict[str, Any]:
    return json.loads((folder / REPORT).read_text())


def environment(smoke: bool) -> dict[str, Any]:
    """Device, GPU, torch, CUDA, Python and the ``nvidia-smi`` line."""
    import torch

    from llm.gpus import match

    cuda = torch.cuda.is_available() and not smoke
    name = torch.cuda.get_device_name() if cuda else "cpu"
    found = match(name) if cuda else None
    smi = None
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,power.limit,clocks.max.sm"
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        smi = done.stdout.strip() or done.stderr.strip() or None
    return shaped(
        SCHEMA["environment"],
        {
            "device": name,
            "gpu": found.name if found else None,
            "peak_flops": found.peak_bf16 if found else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "nvidia_smi": smi,
        },
    )


def junit_counts(path: Path) -> dict[str, Any]:
    """tests, failures, errors and skipped of a pytest JUnit XML file."""
    if not path.is_file():
        return shaped(SCHEMA["tests"], None)
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in SCHEMA["tests"]}
    return shaped(SCHEMA["tests"], counts)


def stage_result(name: str, fragment: Path | None) -> dict[str, Any]:
    """One stage's numbers in the keys of :data:`SCHEMA`."""
    if name == "tests":
        return junit_counts(fragment) if fragment is not None else shaped(SCHEMA["tests"], None)
    found = None
    if fragment is not None and fragment.is_file():
        try:
            found = json.loads(fragment.read_text())
        except ValueError:
            found = None  # a stage killed while writing: its numbers are lost, not the report's
    result = shaped(SCHEMA[name], found)
    if name == "step":
        result["results"] = [shaped(STEP_ROW, row) for row in result["results"] or []]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("folder", type=Path)
    init.add_argument("--smoke", action="store_true")
    stage = sub.add_parser("stage")
    stage.add_argument("folder", type=Path)
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--status", required=True)
    stage.add_argument("--seconds", type=float, required=True)
    stage.add_argument("--cap", type=float, required=True)
    stage.add_argument("--fragment", type=Path, default=None)
    finish = sub.add_parser("finish")
    finish.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "init":
        args.folder.mkdir(parents=True, exist_ok=True)
        report = shaped(SCHEMA["report"], {"schema": 1, "smoke": args.smoke, "stages": {}})
        report["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report["environment"] = environment(args.smoke)
        _write(args.folder, report)
        return 0
    report = _read(args.folder)
    if args.command == "stage":
        entry = {"status": args.status, "seconds": args.seconds, "cap_s": args.cap}
        entry["result"] = stage_result(args.name, args.fragment)
        report["stages"][args.name] = shaped(SCHEMA["stage"], entry)
    else:
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        statuses = [s["status"] for s in report["stages"].values()]
        report["status"] = "ok" if statuses and all(s == "ok" for s in statuses) else "failed"
    _write(args.folder, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
