"""The README's API example runs as written and lands near the exact optimum; its result
blocks are what results/ says."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    """The ten-line example executes and prints a small gap to OPT and weights summing to 1."""
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    result = namespace["result"]
    assert 0 <= result.gap.mean() < 0.01
    assert abs(result.average_weights.mean(0).sum() - 1) < 1e-12
    assert capsys.readouterr().out.strip()


RESULTS = README.parent / "results"


def test_the_llm_verdicts_in_the_readme_are_the_statistics_of_the_results():
    """The README's LLM verdict block is what llm.report computes from the runs in
    results/llm_small_cpu.json (paired by seed, Holm over the report's family)."""
    from amasim.studies.readme import read_blocks
    from llm.report import readme_blocks

    expected = readme_blocks(RESULTS)
    assert expected, "results/llm_small_cpu.json is missing"
    assert read_blocks(README.read_text())["llm-verdicts"] == expected["llm-verdicts"], (
        "the README's LLM verdicts differ from results/: run `amasim reproduce --out .`"
    )


def test_the_llm_claims_over_instances_in_the_readme_are_the_study_s():
    """The README's block of the LLM claims over instances is what results/llm_study.json
    holds, rendered by llm.study_report."""
    from amasim.studies.readme import read_blocks
    from llm.study_report import readme_study_blocks

    expected = readme_study_blocks(RESULTS)
    assert expected, "results/llm_study.json is missing: run `amasim reproduce --llm --out .`"
    assert read_blocks(README.read_text())["llm-study"] == expected["llm-study"], (
        "the README's LLM claims over instances differ from results/: run "
        "`amasim reproduce --llm --out .`"
    )


def test_the_convex_claims_in_the_readme_are_what_the_results_say():
    """Every convex block of the README (claims on one instance and over instances, the
    specialist cost, the compare suites' claims) is rendered from results/ as it stands."""
    from amasim.studies.readme import StaleResults, convex_blocks, read_blocks

    try:
        expected = convex_blocks(RESULTS)
    except StaleResults as err:  # results/ predates issue 23's statistics: nothing to check
        pytest.skip(str(err))
    found = read_blocks(README.read_text())
    assert set(expected) <= set(found), f"README lacks the blocks {set(expected) - set(found)}"
    for name, text in expected.items():
        assert found[name] == text, f"README block {name!r} differs: run `amasim reproduce --out .`"


def test_a_generated_block_is_replaced_and_only_it(tmp_path):
    from amasim.studies.readme import read_blocks, update_readme

    path = tmp_path / "README.md"
    path.write_text("# x\n<!-- generated:a -->\nold\n<!-- /generated:a -->\nkept\n")
    assert update_readme(path, {"a": "new | table", "b": "absent"}) == ["a"]
    assert read_blocks(path.read_text()) == {"a": "new | table"}
    assert path.read_text().endswith("kept\n")
