"""The prepared GPU check (benchmarks/gpu_check.sh): its CPU smoke run writes the files and
keys a GPU run writes (the report's schema), within the time a lent GPU gives one command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_report  # noqa: E402  (benchmarks/gpu_report.py)

#: one command of at most 10 minutes on a lent GPU; the check keeps 40 s of it spare
LIMIT_S = 540


def _keys(report: dict) -> None:
    """Assert ``report`` has exactly the keys of the schema, everywhere."""
    schema = gpu_report.SCHEMA
    assert tuple(report) == schema["report"]
    assert tuple(report["environment"]) == schema["environment"]
    assert tuple(report["stages"]) == gpu_report.STAGES
    for name, stage in report["stages"].items():
        assert tuple(stage) == schema["stage"], name
        assert tuple(stage["result"]) == schema[name], name
    for row in report["stages"]["step"]["result"]["results"]:
        assert tuple(row) == gpu_report.STEP_ROW


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-check")
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_smoke_check_writes_every_file_and_key_of_the_gpu_check(smoke):
    names = sorted(p.name for p in smoke.iterdir())
    assert names == sorted(gpu_report.FILES)
    assert len(names) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    report = json.loads((smoke / gpu_report.REPORT).read_text())
    _keys(report)
    assert report["smoke"] is True and report["status"] == "ok"
    stages = report["stages"]
    assert stages["tests"]["result"]["tests"] > 0 and stages["tests"]["result"]["failures"] == 0
    assert [r["compile"] for r in stages["step"]["result"]["results"]] == [False, False]
    assert stages["excess"]["result"]["max_abs_excess"] == 0.0  # bitwise on a CPU
    assert stages["pipeline"]["result"]["measured_s"] > 0
    log = (smoke / gpu_report.LOG).read_text()
    for name in gpu_report.STAGES:
        assert re.search(rf"== {name}: ok in [\d.]+ s \(cap \d+ s\)", log), name


def test_a_failed_or_gpu_stage_keeps_the_same_keys(tmp_path):
    """A stage that timed out (no numbers) and a GPU stage (numbers the CPU has not) leave
    the keys of the schema: null where nothing was measured."""
    assert gpu_report.main(["init", str(tmp_path), "--smoke"]) == 0
    step = tmp_path / "step.json"
    gpu_row = dict.fromkeys(gpu_report.STEP_ROW, 1.0) | {"layout": "prefix", "compile": True}
    step.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "results": [gpu_row]}))
    for name in gpu_report.STAGES:
        status, fragment = ("ok", ["--fragment", str(step)]) if name == "step" else ("timeout", [])
        args = ["stage", str(tmp_path), name, "--status", status, "--seconds", "1", "--cap", "2"]
        assert gpu_report.main(args + fragment) == 0
    assert gpu_report.main(["finish", str(tmp_path)]) == 0
    report = json.loads((tmp_path / gpu_report.REPORT).read_text())
    _keys(report)
    assert report["status"] == "failed"
    assert set(report["stages"]["pipeline"]["result"].values()) == {None}


def test_the_stage_caps_fit_one_lent_command():
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    caps = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s*(?:\w+=\w+ )?stage (\w+) (\d+) ", script, re.M)
    }
    assert set(caps) == set(gpu_report.STAGES)
    assert sum(caps.values()) + 10 * len(caps) <= LIMIT_S  # 10 s to kill each stage


def test_a_pipeline_stopped_mid_run_keeps_the_plans_predictions(tmp_path, monkeypatch):
    """The pipeline stage writes the plan's numbers before it trains: a run cut off by its
    cap (here: the pipeline raises) leaves them in the fragment, the measured ones null."""
    import gpu_pipeline  # benchmarks/gpu_pipeline.py

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("the stage's cap")

    monkeypatch.setattr(gpu_pipeline, "run_pipeline", stopped)
    out = tmp_path / "pipeline.json"
    argv = ["gpu_pipeline.py", "--smoke", "--work", str(tmp_path / "run"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        gpu_pipeline.main()
    result = gpu_report.stage_result("pipeline", out)
    assert tuple(result) == gpu_report.SCHEMA["pipeline"]
    assert result["predicted_s"] > 0 and result["predicted_peak_disk_bytes"] > 0
    assert result["measured_s"] is None and result["worst_task_excess"] is None
