"""The comparison study runs every method on every setting and reports measured verdicts."""

import json

import numpy as np
import pytest

from amasim.registry import METHODS
from amasim.stats import Claim, decide
from amasim.studies import claim_record
from amasim.studies.compare import SUITES, compare, compare_markdown, write_compare


def test_a_claim_is_a_paired_test_with_its_direction():
    """A clearly lower mean holds, the swapped claim is reversed; the best merge is the
    merge with the lowest mean; a method that did not run gives no record."""
    rows = {
        "a": {"values": [1.0, 1.1, 0.9], "mean": 1.0},
        "m1": {"values": [2.0, 2.1, 1.9], "mean": 2.0},
        "m2": {"values": [3.0, 3.0, 3.0], "mean": 3.0},
    }
    claims = [Claim("a beats m1", "a", "m1"), Claim("m1 beats a", "m1", "a")]
    records = decide([claim_record(c, rows) for c in claims])
    assert [r["verdict"] for r in records] == ["holds", "reversed"]
    best = claim_record(Claim("a beats merges", "a", "best-merge"), rows, ["m2", "m1"])
    assert best["worse_method"] == "m1" and best["worse_values"] == [2.0, 2.1, 1.9]
    assert claim_record(Claim("x", "a", "absent"), rows) is None


def test_dga_suite_runs_every_method_and_writes_files(tmp_path):
    """Every registered method and merge has a finite row in every regime, at the budget;
    only the alignment methods spend extra gradients."""
    result = compare("dga", seeds=2, quick=True)
    assert set(result["instances"]) == {"small generic set", "scarce target data"}
    for inst in result["instances"].values():
        rows = inst["tables"]["target test loss"]
        fielded = {name for name, method in METHODS.items() if not method.ablation}
        assert fielded <= set(rows) and "merge-ties" in rows
        assert all(np.isfinite(row["mean"]) for row in rows.values())
        for name, info in inst["methods"].items():
            assert info["examples"] <= inst["budget"]
            # alignments (DoGE, DGA) and DoReMi's proxy run are spent outside the budget
            assert (info["extra_gradient_evaluations"] > 0) == (name in ("dga", "doge", "doremi"))
    paths = write_compare(result, tmp_path)
    assert json.loads(paths[0].read_text())["suite"] == "dga"
    assert "| DGA beats importance sampling | importance-sampling |" in compare_markdown(result)
    verdicts = [v for inst in result["instances"].values() for v in inst["verdicts"]]
    assert len(verdicts) == 2 and all(v["family"]["tests"] == 2 for v in verdicts)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_transfer_suite_marks_missing_capabilities_and_online_protocol(monkeypatch):
    """A method whose capability a setting lacks gets an explicit n/a cell naming it; the
    rounds option moves the online mixers' protocol."""
    from amasim.studies import compare as module
    from amasim.transfer import GROUP_SETTINGS

    monkeypatch.setattr(module, "GROUP_SETTINGS", {"balanced": GROUP_SETTINGS["balanced"]})
    for online in ("per-batch", "rounds"):
        result = compare("transfer", seeds=2, quick=True, online=online)
        inst = result["instances"]["balanced"]
        assert inst["methods"]["dga"]["na"] == "needs target_set"
        assert "dga" not in inst["tables"]["mean group loss"]
        expected = "batch" if online == "per-batch" else "validation"
        assert inst["methods"]["ama-r"]["protocol"] == expected
        text = compare_markdown(result)
        assert "| dga | alignment | n/a — needs target_set |" in text
        assert "| balanced | Aioli beats stratified mixing | stratified |" in text


def test_unknown_suite_and_too_few_seeds_are_rejected():
    """Bad arguments name the suite or the seeds."""
    with pytest.raises(ValueError, match="suite"):
        compare("nope")
    with pytest.raises(ValueError, match="seeds"):
        compare(SUITES[0], seeds=1)
