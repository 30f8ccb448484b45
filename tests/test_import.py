"""The core imports without torch and without loading scipy (the brief's promise)."""

import subprocess
import sys

CODE = """
import sys
sys.modules["torch"] = None  # any 'import torch' now fails
import amasim
problem_free = 'scipy' not in sys.modules and 'cvxpy' not in sys.modules
mixer = amasim.mixers.ama_s(0.1, 0.1)
weights, state = mixer.update(mixer.init(3), [1.0, 0.0, 0.0], counts=[2, 1, 1])
print(problem_free, round(float(weights.sum()), 12))
"""


def test_core_imports_and_runs_without_torch_or_scipy():
    """``import amasim`` and a mixer update need neither torch nor scipy."""
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "1.0"]
