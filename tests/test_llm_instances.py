"""llm.instances: the LLM study over instances on a tiny config — equal tuning on the
validation split of a tuning instance, claims counted over the evaluation instances, every
claim's statistics in study.json, and a rerun that reads the finished instances back."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from llm_helpers import tiny_config_dict, write_suite_small, write_toml

from llm.config import load_config
from llm.instances import GRID_SIZE, TUNING_INSTANCE, grid, run_study
from llm.report import read_results

pytestmark = pytest.mark.usefixtures("torch_one_thread")

METHODS = ["uniform", "stratified", "ama-r", "ama-s"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished tiny study: 2 instances, 2 paired seeds (the study's folder, its record)."""
    tmp = tmp_path_factory.mktemp("study")
    sections = tiny_config_dict(tmp / "unused", write_suite_small(tmp / "data"))
    sections["run"] |= {"methods": METHODS, "seeds": [0, 1]}
    sections["data"] |= {"validation": 0.2}
    sections["eval"] |= {"generate": 2}
    cfg = load_config(write_toml(tmp / "c.toml", sections))
    # two worker processes: the grid and the instances split between them
    return cfg, tmp / "out", run_study(cfg, tmp / "out", instances=2, progress=False, workers=2)


def test_every_claim_holds_its_statistics_over_the_instances(study):
    _, out, record = study
    saved = read_results(out / "study.json")  # sealed, as results.json
    assert saved["instances"] == ["instance-0", "instance-1"] == record["instances"]
    claims = saved["claims"]["claims"]
    assert {c["claim"].split(" (")[0] for c in claims} >= {
        "AMA-R beats uniform mixing",
        "AMA-S is at least as good as AMA-R",
    }
    for claim in claims:
        assert claim["instances"] == 2 and claim["df"] == 1
        assert set(claim["counts"]) == {"holds", "reversed", "n.s."}
        assert sum(claim["counts"].values()) == 2
        assert 0 <= claim["p"] <= claim["p_holm"] <= 1
        assert claim["sentence"] and claim["verdict"]
        assert (claim["margin"] is not None) == claim["noninferior"]
        for rec in claim["records"]:  # the paired test on each instance
            assert {"estimate", "interval", "df", "p", "p_holm", "verdict"} <= set(rec)
    assert "## Claims over instances" in (out / "study.md").read_text()


def test_every_tuned_method_gets_the_same_grid_on_the_validation_split(study):
    cfg, out, record = study
    assert set(record["tuning"]) == {"ama-r", "ama-s"}  # uniform and stratified tune nothing
    for method, tuning in record["tuning"].items():
        assert len(tuning["grid"]) == len(tuning["validation"]) == GRID_SIZE
        assert tuning["selected"] == tuning["grid"][int(np.argmin(tuning["validation"]))]
        assert len(grid(method, cfg.mix)) == GRID_SIZE
    tuned = read_results(out / "tuning" / "grid-0" / "results.json")
    assert tuned["held_out"] == "valid" and tuned["config"]["data"]["synth_seed"] == TUNING_INSTANCE
    evaluated = read_results(out / "instance-1" / "results.json")
    assert evaluated["held_out"] == "eval"
    assert evaluated["config"]["model"]["init_seed"] == 1  # each instance its own model
    selected = record["tuning"]["ama-r"]["selected"]
    assert evaluated["runs"]["ama-r"][0]["tuned"]["step_size"] == selected["step_size"]
    # the instance's report says its methods ran at the selected settings, not [mix]'s rule
    report = (out / "instance-1" / "results.md").read_text()
    assert "each tuned method at its selected setting" in report
    assert f"| ama-r | {evaluated['runs']['ama-r'][0]['steps']} | selected |" in report
    assert "selected" not in (out / "instance-1" / "theory" / "results.md").read_text()
    assert (
        "each tuned method at a grid setting"
        in (out / "tuning" / "grid-0" / "results.md").read_text()
    )


def test_a_rerun_reads_the_finished_instances_back(study, tmp_path):
    cfg, out, record = study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    again = run_study(cfg, out, instances=2, progress=False)  # one worker now: the same files
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == before
    assert json.dumps(again["claims"], sort_keys=True) == json.dumps(
        record["claims"], sort_keys=True
    )
