"""The comparison study runs every method on every setting and reports measured verdicts."""

import json

import numpy as np
import pytest

from amasim.registry import METHODS
from amasim.studies.compare import SUITES, _verdict, compare, compare_markdown, write_compare


def test_verdict_reports_direction_and_significance():
    """A clearly lower mean agrees and is significant; a reversed one disagrees."""
    low, high = np.array([1.0, 1.1, 0.9]), np.array([2.0, 2.1, 1.9])
    assert _verdict(low, high)["agrees"] and _verdict(low, high)["significant"]
    assert not _verdict(high, low)["agrees"]


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
    assert "dga beats importance-sampling" in compare_markdown(result)
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
        assert "aioli beats stratified" in text


def test_unknown_suite_and_too_few_seeds_are_rejected():
    """Bad arguments name the suite or the seeds."""
    with pytest.raises(ValueError, match="suite"):
        compare("nope")
    with pytest.raises(ValueError, match="seeds"):
        compare(SUITES[0], seeds=1)
