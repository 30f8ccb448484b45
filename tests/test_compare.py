"""The comparison study runs every suite and reports measured verdicts."""

import json

import numpy as np
import pytest

from amasim.compare import SUITES, _verdict, compare, compare_markdown, write_compare


def test_verdict_reports_direction_and_significance():
    """A clearly lower mean agrees and is significant; a reversed one disagrees."""
    low, high = np.array([1.0, 1.1, 0.9]), np.array([2.0, 2.1, 1.9])
    assert _verdict(low, high)["agrees"] and _verdict(low, high)["significant"]
    assert not _verdict(high, low)["agrees"]


def test_dga_suite_writes_tables_and_figure(tmp_path):
    """A quick dga suite: every regime has every method, a verdict, and files on disk."""
    result = compare("dga", seeds=2, quick=True)
    assert set(result["instances"]) == {"small generic set", "scarce target data"}
    for inst in result["instances"].values():
        assert set(inst["rows"]) == {"stratified", "importance sampling", "dga"}
        assert all(np.isfinite(row["mean"]) for row in inst["rows"].values())
        assert inst["rows"]["dga"]["extra_gradient_evaluations"] > 0
        assert inst["rows"]["stratified"]["extra_gradient_evaluations"] == 0
    paths = write_compare(result, tmp_path)
    assert json.loads(paths[0].read_text())["suite"] == "dga"
    assert "dga beats importance sampling" in compare_markdown(result)
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_unknown_suite_and_too_few_seeds_are_rejected():
    """Bad arguments name the suite or the seeds."""
    with pytest.raises(ValueError, match="suite"):
        compare("nope")
    with pytest.raises(ValueError, match="seeds"):
        compare(SUITES[0], seeds=1)
