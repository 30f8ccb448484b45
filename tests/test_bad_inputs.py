"""Bad input to the amasim API and CLI: one row per case, each a named error, never a
figure computed from it.  (The llm config, data and CLI rows: test_bad_inputs_llm.py.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from amasim import mixers, registry
from amasim.capabilities import MissingCapabilityError
from amasim.cli import main as amasim_main
from amasim.driver import Mixing, NonFiniteLoss, TrainingDiverged, run
from amasim.mixers import Signal
from amasim.problems import make_problem
from amasim.simulator import SimulatedOracle
from amasim.studies.claims import measure_claims
from amasim.studies.compare import compare
from amasim.studies.converge import converge, fit_slope
from amasim.transfer import transfer_problem

PROBLEM = make_problem("quadratic", sizes=(30, 10), dim=3)


def oracle() -> SimulatedOracle:
    return SimulatedOracle(PROBLEM)


class NaNLosses(SimulatedOracle):
    """A broken oracle: the loss of one example is NaN."""

    def losses(self, batch):
        out = super().losses(batch).copy()
        out[0, -1] = np.nan
        return out


class NaNEvaluation(SimulatedOracle):
    """A broken model: its final evaluation is NaN (a corrupt checkpoint, say)."""

    def evaluate(self, score="clipped", averaged=False):
        out = super().evaluate(score, averaged).copy()
        out[:, 1] = np.nan
        return out


def _run(**kw):
    options = {"steps": 5, "learning_rate": 0.1, "batch_size": 2} | kw
    mixer = options.pop("mixer", mixers.ama_r(0.1))
    target = options.pop("oracle", None) or oracle()
    return run(mixer, target, **options)


API = [
    ("run seeds repeated", lambda: _run(seeds=[0, 0]), ValueError, r"repeats a seed"),
    ("run steps 0", lambda: _run(steps=0), ValueError, r"steps=0 must be >= 1"),
    ("run negative rate", lambda: _run(learning_rate=-1.0), ValueError, r"learning_rate=-1"),
    ("run NaN rate", lambda: _run(learning_rate=math.nan), TypeError, r"finite number"),
    ("run batch 0", lambda: _run(batch_size=0), ValueError, r"batch_size=0"),
    ("run bad apply", lambda: _run(apply="sometimes"), ValueError, r"apply='sometimes'"),
    ("run bad signal", lambda: _run(signal=Signal("gossip")), ValueError, r"signal="),
    ("run bad schedule", lambda: _run(schedule="1/t"), ValueError, r"schedule='1/t'"),
    ("run not a mixer", lambda: _run(mixer="ama-r"), TypeError, r"amasim.mixers.Mixer"),
    (
        "run missing capability",
        lambda: _run(mixer=registry.describe("doge")),
        MissingCapabilityError,
        r"mixer 'doge' requires the oracle capability 'task_gradients'",
    ),
    (
        "NaN training loss",
        lambda: _run(oracle=NaNLosses(PROBLEM), check=False),
        TrainingDiverged,
        r"step 0: non-finite loss nan on task 'task1'",
    ),
    (
        "NaN final evaluation",
        lambda: _run(oracle=NaNEvaluation(PROBLEM), check=False),
        NonFiniteLoss,
        r"task 'task1' .* scored nan",
    ),
    (
        "Mixing missing capability",
        lambda: Mixing(
            registry.describe("dga"),
            oracle(),
            seeds=[0],
            batch_size=2,
            apply="resample",
            score="loss",
        ),
        MissingCapabilityError,
        r"mixer 'dga' requires",
    ),
    ("problem dim 0", lambda: make_problem("quadratic", dim=0), ValueError, r"dim=0"),
    (
        "problem NaN conflict",
        lambda: make_problem("logistic", conflict=math.nan),
        ValueError,
        "nan",
    ),
    ("problem noise 0", lambda: make_problem("quadratic", noise=0.0), ValueError, r"noise=0.0"),
    ("problem radius < 0", lambda: make_problem("quadratic", radius=-1.0), ValueError, "radius"),
    ("problem seed < 0", lambda: make_problem("quadratic", seed=-3), ValueError, r"seed=-3"),
    ("problem empty task", lambda: make_problem("quadratic", sizes=(10, 0)), ValueError, "empty"),
    ("problem unknown", lambda: make_problem("cubic"), ValueError, r"problem='cubic'"),
    ("ama-s no smoothing", lambda: mixers.ama_s(0.1, 0.0), ValueError, r"smoothing=0.0"),
    ("ama-r NaN step", lambda: mixers.ama_r(math.nan), ValueError, r"step_size=nan"),
    ("unknown method", lambda: registry.check_method("ama-x"), ValueError, r"'ama-x' is unknown"),
    (
        "budget below one step",
        lambda: registry.steps_for_budget("ama-r", 10, 3, 32),
        ValueError,
        r"budget=10 .* one step of method 'ama-r'",
    ),
    (
        "slope from one horizon",
        lambda: fit_slope([100], np.ones((1, 4))),
        ValueError,
        r"two distinct horizons",
    ),
    (
        "slope from one seed",
        lambda: fit_slope([100, 1000], np.ones((2, 1))),
        ValueError,
        r"--seeds >= 2",
    ),
    (
        "converge one horizon",
        lambda: converge("quadratic", ["ama-r"], [100, 100], seeds=2),
        ValueError,
        r"two distinct horizons",
    ),
    ("claims one seed", lambda: measure_claims("quadratic", seeds=1), ValueError, r"seeds=1"),
    (
        "claims budget 0",
        lambda: measure_claims("quadratic", budget=0, seeds=2),
        ValueError,
        r"budget=0",
    ),
    ("compare one seed", lambda: compare("mixing", seeds=1), ValueError, r"seeds=1"),
    (
        "compare unknown method",
        lambda: compare("mixing", methods=["nope"]),
        ValueError,
        r"'nope' is unknown",
    ),
    (
        "round budget too small",
        lambda: run(
            registry.describe("skill-it", 8),
            SimulatedOracle(transfer_problem(8, dim=3, sizes=(10,) * 8)),
            steps=12,
            learning_rate=0.1,
        ),
        ValueError,
        r"at least \d+",
    ),
]


@pytest.mark.parametrize(("case", "call", "kind", "message"), API, ids=[row[0] for row in API])
def test_api_bad_input_is_a_named_error(case, call, kind, message):
    with pytest.raises(kind, match=message):
        call()


CLI = [
    ("converge one horizon", ["converge", "--steps", "100"], r"two distinct horizons"),
    ("converge one seed", ["converge", "--seeds", "1"], r"--seeds 1"),
    ("claims one seed", ["claims", "--seeds", "1"], r"--seeds 1"),
    ("claims budget 0", ["claims", "--budget", "0"], r"budget=0"),
    ("converge dim 0", ["converge", "--dim", "0"], r"dim=0"),
    ("converge NaN conflict", ["converge", "--conflict", "nan"], r"conflict=nan"),
    ("converge negative lr", ["converge", "--lr", "-1"], r"--lr -1"),
    ("compare one seed", ["compare", "--suite", "mixing", "--seeds", "1"], r"--seeds 1"),
]


@pytest.mark.parametrize(("case", "argv", "message"), CLI, ids=[row[0] for row in CLI])
def test_cli_bad_input_is_one_line_and_exit_2(case, argv, message, tmp_path, capsys):
    """No traceback, nothing written: ``error: ...`` on stderr and status 2, before work."""
    out = tmp_path / "out"
    assert amasim_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert not any(out.rglob("*.json"))


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="two distinct horizons"):
        amasim_main(["converge", "--steps", "100", "--out", str(tmp_path), "--debug"])


def test_cli_out_that_is_a_file_or_unwritable_is_refused_first(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    argv = ["converge", "--steps", "10,20", "--seeds", "2", "--sizes", "20,10", "--dim", "2"]
    assert amasim_main([*argv, "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "keep me"

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    assert amasim_main([*argv, "--out", str(tmp_path / "ro")]) == 2
    assert "cannot be written (Permission denied)" in capsys.readouterr().err
