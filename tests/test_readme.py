"""The README's API example runs as written and lands near the exact optimum."""

import re
from pathlib import Path

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
