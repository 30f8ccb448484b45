"""Bad input to the amasim API and CLI: one row per case, each a named error, never a
figure computed from it.  (The llm config, data and CLI rows: test_bad_inputs_llm.py.)"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import warnings
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
from amasim.validate import StepSizeWarning

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


def _strict(call, category=StepSizeWarning):
    """``call()`` with ``category`` warnings raised as errors (a row for a warning)."""

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("error", category)
            return call()

    return go


def _init(mixer, k=3, **kw):
    return lambda: mixer.init(k, **kw)


NONE_MIXER = r"mixer must be an amasim\.mixers\.Mixer, got NoneType\. Fix: pass a mixer"


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
    ("run mixer None", lambda: _run(mixer=None), TypeError, NONE_MIXER),
    ("run oracle None", lambda: _run(oracle=object()), TypeError, r"oracle protocol"),
    (
        "run optimum NaN",
        lambda: _run(optimum=math.nan),
        ValueError,
        r"optimum=nan must be a finite number .* or None\. Fix",
    ),
    (
        "run optimum inf",
        lambda: _run(optimum=math.inf),
        ValueError,
        r"optimum=inf must be a finite",
    ),
    ("run optimum text", lambda: _run(optimum="0.3"), TypeError, r"optimum must be a number"),
    (
        "run rate beyond 2/L",
        _strict(lambda: _run(learning_rate=1e300)),
        StepSizeWarning,
        r"learning_rate=1e\+300 exceeds 2/L = 1\.3, where L = 1\.53 is the smoothness.*Fix",
    ),
    (
        "run 1/sqrt(T) steps beyond 2/L",
        _strict(lambda: _run(learning_rate=100.0, schedule="1/sqrt(T)")),
        StepSizeWarning,
        r"learning_rate=100\.0 \(a step of 44\.7 under 1/sqrt\(T\)\) exceeds 2/L",
    ),
    ("run inf rate", lambda: _run(learning_rate=math.inf), TypeError, r"finite number, got inf"),
    ("run rate as text", lambda: _run(learning_rate="0.1"), TypeError, r"got '0\.1'"),
    ("run negative seed", lambda: _run(seeds=-1), TypeError, r"seed -1 is not a non-negative int"),
    ("run float seed", lambda: _run(seeds=1.5), TypeError, r"seed=1\.5: pass an int"),
    ("run no seeds", lambda: _run(seeds=[]), ValueError, r"seeds is empty"),
    ("run float steps", lambda: _run(steps=1.5), TypeError, r"steps must be an int"),
    ("run float batch", lambda: _run(batch_size=1.5), TypeError, r"batch_size must be an int"),
    ("run rounds 0", lambda: _run(rounds=0), ValueError, r"rounds=0 must be >= 1"),
    ("run record_every 0", lambda: _run(record_every=0), ValueError, r"record_every=0"),
    ("run log_every 0", lambda: _run(log_every=0), ValueError, r"log_every=0 must be >= 1"),
    ("run checkpoint_every 0", lambda: _run(checkpoint_every=0), ValueError, r"checkpoint_every"),
    (
        "init negative seed",
        _init(mixers.ama_r(0.1), seed=-1),
        TypeError,
        r"seed -1 is not a non-negative int: pass seeds as ints >= 0",
    ),
    ("init a negative seed of two", _init(mixers.ama_s(0.1, 0.1), seed=[0, -2]), TypeError, "-2"),
    ("init float seed", _init(mixers.group_dro(0.1), seed=1.5), TypeError, r"seed=1\.5"),
    ("init static negative seed", _init(mixers.stratified(), seed=-1), TypeError, r"seed -1"),
    ("init no tasks", _init(mixers.ama_r(0.1), k=0), ValueError, r"num_tasks=0 must be >= 1"),
    ("averaged None", lambda: mixers.averaged(None), TypeError, NONE_MIXER),
    ("hold_last_scores None", lambda: mixers.hold_last_scores(None), TypeError, NONE_MIXER),
    (
        "SimulatedOracle None",
        lambda: SimulatedOracle(None),
        TypeError,
        r"problem must be an amasim\.problems\.ConvexProblem, got NoneType\. Fix: pass a problem",
    ),
    ("SimulatedOracle name", lambda: SimulatedOracle("quadratic"), TypeError, r"got str\. Fix"),
    (
        "uniform size over 2**63",
        lambda: mixers.uniform([10**30, 1]),
        ValueError,
        r"sizes: 10{30} examples is over 2\*\*63 - 1.*Fix",
    ),
    ("uniform float sizes", lambda: mixers.uniform([1.5, 2]), TypeError, r"sizes must be integers"),
    ("uniform empty task", lambda: mixers.uniform([0, 2]), ValueError, r"at least one example"),
    (
        "problem size over 2**63",
        lambda: make_problem("quadratic", sizes=(2**70, 1)),
        ValueError,
        r"examples is over 2\*\*63 - 1",
    ),
    ("ama-r inf step", lambda: mixers.ama_r(math.inf), ValueError, r"step_size=inf must be"),
    ("ama-s NaN smoothing", lambda: mixers.ama_s(0.1, math.nan), ValueError, r"smoothing=nan"),
    ("group DRO step 0", lambda: mixers.group_dro(0.0), ValueError, r"step_size=0\.0 must be"),
    ("DoReMi smoothing 2", lambda: mixers.doremi(1.0, 2.0), ValueError, r"smoothing=2\.0"),
    ("ODM rate 1", lambda: mixers.odm(1.0), ValueError, r"smoothing_rate=1\.0 must lie in"),
    (
        "update NaN scores",
        lambda: mixers.ama_r(0.1).update(mixers.ama_r(0.1).init(2), np.array([np.nan, 1.0])),
        ValueError,
        r"scores contains NaN or infinite values",
    ),
    (
        "update scores of 3 tasks for 2",
        lambda: mixers.ama_r(0.1).update(mixers.ama_r(0.1).init(2), np.ones(3)),
        ValueError,
        r"scores has shape \(3,\): expected \(\.\.\., 2\)",
    ),
    ("problem NaN noise", lambda: make_problem("quadratic", noise=math.nan), ValueError, "noise"),
    (
        "problem inf radius",
        lambda: make_problem("quadratic", radius=math.inf),
        ValueError,
        "radius",
    ),
    ("problem float dim", lambda: make_problem("quadratic", dim=1.5), ValueError, r"dim=1\.5"),
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
    ("claims lr 0", ["claims", "--lr", "0"], r"--lr 0\.0\. Fix: pass a finite number > 0"),
    ("converge inf mixer step", ["converge", "--mixer-step", "inf"], r"--mixer-step inf"),
    ("converge smoothing 0", ["converge", "--smoothing", "0"], r"--smoothing must be > 0"),
    ("converge batch 0", ["converge", "--batch-size", "0"], r"--batch-size >= 1"),
    ("converge noise 0", ["converge", "--noise", "0"], r"noise=0\.0 must be"),
    ("claims negative problem seed", ["claims", "--problem-seed", "-1"], r"seed=-1"),
]


@pytest.mark.parametrize(("case", "argv", "message"), CLI, ids=[row[0] for row in CLI])
def test_cli_bad_input_is_one_line_and_exit_2(case, argv, message, tmp_path, capsys):
    """No traceback, nothing written: ``error: ...`` on stderr and status 2, before work."""
    out = tmp_path / "out"
    assert amasim_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert ". Fix: " in err  # every amasim error says what to do
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


def held_by_a_live_process(folder: Path) -> None:
    """``folder`` locked by a process that runs (this test's parent)."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}
    (folder / ".lock").write_text(json.dumps(holder))


WRITERS = [
    ("converge", ["converge", "--steps", "10,20", "--seeds", "2", "--sizes", "20,10"]),
    ("claims", ["claims", "--sizes", "20,10"]),
    ("compare", ["compare", "--suite", "mixing", "--quick"]),
    ("reproduce", ["reproduce", "--quick"]),
]


@pytest.mark.parametrize(
    ("case", "argv"), WRITERS, ids=[f"{w[0]} into a held folder" for w in WRITERS]
)
def test_cli_refuses_a_folder_another_run_holds(case, argv, tmp_path, capsys):
    """Every amasim command that writes takes the folder's lock first: a folder another run
    (``llm run``, ``amasim reproduce``, ...) holds is refused by name, nothing written."""
    out = tmp_path / "out"
    held_by_a_live_process(out)
    assert amasim_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"^error: --out .*out is in use by another run \(pid {os.getppid()}, started earlier\)\. "
        r"Fix: wait for it to finish",
        err,
    ), err
    assert [p.name for p in out.iterdir()] == [".lock"]


@pytest.mark.parametrize(("case", "argv"), WRITERS, ids=[f"{w[0]} into a file" for w in WRITERS])
def test_cli_out_that_is_a_file_is_refused(case, argv, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert amasim_main([*argv, "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: --out .*afile is a file, not a folder\. Fix: pass a folder", err)
    assert afile.read_text() == "keep me"


class Boom(RuntimeError):
    """Stands in for a bug."""


EXITS = [
    (
        "internal error",
        Boom("boom"),
        1,
        r"^error: internal error Boom: boom\. Fix: rerun with --debug",
    ),
    (
        "diverged",
        TrainingDiverged("step 3: non-finite loss nan on task 'task1'"),
        1,
        r"^error: step 3: non-finite loss nan on task 'task1'\. Fix: lower --lr",
    ),
    ("interrupted", KeyboardInterrupt(), 130, r"^error: interrupted\. Fix: run the same command"),
    (
        "a bad value deep inside",
        ValueError("seeds=[0, 0] repeats a seed; pass distinct seeds"),
        2,
        r"^error: seeds=\[0, 0\] repeats a seed\. Fix: pass distinct seeds",
    ),
    (
        "disk full",
        OSError(28, "cannot write the figure x.png: No space left on device (ENOSPC). Fix: free"),
        2,
        r"^error: cannot write the figure x\.png: No space left on device \(ENOSPC\)\. Fix: free",
    ),
    (
        "a system error naming a file",
        FileNotFoundError(2, "No such file or directory", "gone.json"),
        2,
        r"^error: cannot use gone\.json: No such file or directory\. Fix: check that path",
    ),
]


@pytest.mark.parametrize(("case", "error", "status", "line"), EXITS, ids=[e[0] for e in EXITS])
def test_cli_exit_status_and_one_line_on_its_own(
    case, error, status, line, tmp_path, capsys, monkeypatch
):
    """The statuses the README states (2 bad input, 1 diverged or internal, 130 interrupted),
    one line with its Fix, and that line never shares a line with a progress bar."""
    from tqdm.auto import tqdm

    import amasim.studies.converge as studies

    def fails(*args, **kwargs):
        bar = tqdm(total=10, desc="ama-r", file=sys.stderr, mininterval=0)
        bar.update(3)  # live, mid-line, when the failure comes
        raise error

    monkeypatch.setattr(studies, "converge", fails)
    argv = ["converge", "--steps", "10,20", "--seeds", "2", "--sizes", "20,10"]
    assert amasim_main([*argv, "--out", str(tmp_path)]) == status
    err = capsys.readouterr().err
    last = re.split(r"[\r\n]", err.rstrip("\n"))[-1]  # what the terminal shows on that line
    assert re.search(line, last), repr(err)
    assert "ama-r" not in last and err.count("error:") == 1
    assert not (tmp_path / ".lock").exists()  # released however it ended
