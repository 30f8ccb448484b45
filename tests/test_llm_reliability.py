"""Faults on the llm side: kills, damaged files, a full disk, read-only folders, divergence,
a busy output folder — each detected and named, and nothing written before lost or changed.

Files are damaged the two ways a disk or a person damages them: cut to half their length
(truncated), or 64 bytes in the middle inverted (altered).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llm_helpers import (  # noqa: E402
    SIZES,
    FillsUp,
    build_oracle,
    char_tasks,
    flat_state,
    parameters,
    tiny_config_dict,
    write_suite_small,
    write_toml,
)

from amasim import mixers  # noqa: E402
from llm.cache import entry_path, load_or_compute  # noqa: E402
from llm.checkpoint import CheckpointFile, NonFiniteStateError, load, save_atomic  # noqa: E402
from llm.config import load_config  # noqa: E402
from llm.context import open_run  # noqa: E402
from llm.integrity import (  # noqa: E402
    TRAILER_BYTES,
    ForeignFileError,
    IntegrityError,
    IntegrityWarning,
    NonFiniteError,
    UnsealedFileError,
    first_non_finite,
    owner_record,
    write_sealed,
)
from llm.lock import FolderLocked, RunLock, StaleLockWarning  # noqa: E402
from llm.pipeline import run_pipeline  # noqa: E402
from llm.report import read_results  # noqa: E402
from llm.stages.evaluation import evaluate  # noqa: E402
from llm.stages.records import Specialist, Task  # noqa: E402
from llm.stages.reference import reference  # noqa: E402
from llm.stages.tasks import load_tasks  # noqa: E402
from llm.train import LoopConfig, MetricsLog, TrainingDiverged, history, train  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]

#: where the driver's checkpoint marks steps not taken yet ("not recorded") with NaN
PLACEHOLDERS = ("record.loss_sums",)


# ----------------------------------------------------------------------------- helpers
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def alter(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "altered": alter}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def loop(**overrides) -> LoopConfig:
    options = {"steps": 6, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every": 2}
    return LoopConfig(**{**options, **overrides})


class Interrupt(Exception):
    """Stands in for a killed job."""


def interrupt_at(step: int):
    def on_step(t: int) -> None:
        if t == step:
            raise Interrupt

    return on_step


def uninterrupted(tmp_path: Path, mixer=lambda: mixers.ama_s(1.0, 0.2)):
    oracle = build_oracle()
    result = train(oracle, mixer(), loop(), out_dir=tmp_path / "whole")
    return history(result), parameters(oracle), flat_state(result.mixer_state)


def assert_same_run(got, oracle, expected) -> None:
    want_history, want_params, want_state = expected
    assert history(got) == want_history
    for name, value in parameters(oracle).items():
        assert torch.equal(value, want_params[name]), name
    for a, b in zip(flat_state(got.mixer_state), want_state):
        np.testing.assert_array_equal(a, b)


def assert_all_finite(folder: Path) -> int:
    """Every checkpoint file under ``folder`` loads and holds only finite numbers (NaN
    only as the driver's "not recorded" marker); returns how many there were."""
    files = [p for p in folder.rglob("*.pt")] + list(folder.rglob(".*.next"))
    for path in files:
        assert first_non_finite(load(path), nan_allowed=PLACEHOLDERS) is None, path
    return len(files)


@contextmanager
def read_only(folder: Path, monkeypatch):
    """``folder`` made read-only: chmod, and (since root ignores modes) every write, create,
    rename or delete under it refused with EROFS, as a read-only mount would."""
    root = folder.resolve()

    def inside(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise PermissionError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and set(mode) & set("wax+"):
            if inside(file):
                refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real, arity: int = 1):
        def guarded(*args, **kwargs):
            if any(inside(a) for a in args[:arity]):
                refuse(args[0])
            return real(*args, **kwargs)

        return guarded

    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if p.is_dir()}
    for path in modes:
        path.chmod(0o555)
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", guarded_open)
        patch.setattr(io, "open", guarded_open)
        patch.setattr(os, "open", guarded_os_open)
        for name, arity in (("replace", 2), ("rename", 2), ("mkdir", 1), ("unlink", 1)):
            patch.setattr(os, name, guard(getattr(os, name), arity))
        patch.setattr(os, "remove", os.unlink)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


def disk_full(monkeypatch) -> None:
    """Every fsync reports ENOSPC (how a full disk surfaces on many filesystems)."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


# --------------------------------------------------------------------- kill and resume
@pytest.mark.parametrize("draw", [0, 1, 2])
def test_kill_at_a_random_step_resumes_to_the_same_numbers(tmp_path, draw):
    expected = uninterrupted(tmp_path)
    stop = int(np.random.default_rng(np.random.SeedSequence([11, draw])).integers(0, 6))
    folder = tmp_path / "killed"
    with pytest.raises(Interrupt):
        train(
            build_oracle(),
            mixers.ama_s(1.0, 0.2),
            loop(),
            out_dir=folder,
            on_step=interrupt_at(stop),
        )
    fresh = build_oracle()
    got = train(fresh, mixers.ama_s(1.0, 0.2), loop(), out_dir=folder)
    assert_same_run(got, fresh, expected)


def test_the_last_two_checkpoints_are_kept(tmp_path):
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, on_step=interrupt_at(4))
    files = CheckpointFile(tmp_path / "checkpoint.pt").files()
    assert [p.name for p in files] == ["checkpoint.pt", "checkpoint.prev.pt"]
    assert [load(p)["step"] for p in files] == [4, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.prev.pt",
        "checkpoint.pt",
    ]  # no temporary file left


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    expected = uninterrupted(tmp_path, lambda: mixers.ama_r(1.0))
    folder = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=folder, on_step=interrupt_at(4))
    DAMAGE[damage](folder / "checkpoint.pt")
    fresh = build_oracle()
    with pytest.warns(IntegrityWarning, match=r"resuming from .*checkpoint\.prev\.pt \(step 2\)"):
        got = train(fresh, mixers.ama_r(1.0), loop(), out_dir=folder)
    assert_same_run(got, fresh, expected)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_with_the_fix_never_a_raw_error(tmp_path, damage):
    train(build_oracle(), mixers.ama_r(1.0), loop(steps=2), out_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    DAMAGE[damage](path)
    with pytest.raises(
        IntegrityError, match=rf"{re.escape(str(path))}.*Fix: delete {re.escape(str(path))}"
    ) as info:
        load(path)
    assert type(info.value) is IntegrityError


def test_a_cut_trailer_is_still_a_named_error(tmp_path):
    """Cut so far that the checksum trailer is gone: the zip no longer parses, and that
    is reported as damage too (not a PytorchStreamReader error)."""
    path = tmp_path / "checkpoint.pt"
    train(build_oracle(), mixers.ama_r(1.0), loop(steps=2), out_dir=tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError, match=r"cannot be read as a checkpoint.*Fix: delete"):
        load(path)


def test_every_checkpoint_damaged_refuses_with_the_command_that_starts_over(tmp_path):
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, on_step=interrupt_at(4))
    truncate(tmp_path / "checkpoint.pt")
    alter(tmp_path / "checkpoint.prev.pt")
    before = snapshot(tmp_path)
    with pytest.raises(IntegrityError) as info:
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path)
    message = str(info.value)
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "truncated", "altered"):
        assert name in message
    assert "Fix: delete" in message and "run the same command again" in message
    assert snapshot(tmp_path) == before  # refused, nothing touched


def test_a_save_interrupted_between_its_renames_resumes_from_the_new_state(tmp_path):
    expected = uninterrupted(tmp_path)
    folder = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(
            build_oracle(), mixers.ama_s(1.0, 0.2), loop(), out_dir=folder, on_step=interrupt_at(4)
        )
    # the state of step 4 written, the step-2 one moved aside, the last rename not done
    os.replace(folder / "checkpoint.pt", folder / ".checkpoint.pt.next")
    os.replace(folder / "checkpoint.prev.pt", folder / "checkpoint.pt")
    calls = []

    def count(t):
        calls.append(t)

    fresh = build_oracle()
    got = train(fresh, mixers.ama_s(1.0, 0.2), loop(), out_dir=folder, on_step=count)
    assert calls == [4, 5]  # resumed from the pending step-4 state
    assert_same_run(got, fresh, expected)


def test_a_full_disk_during_a_save_loses_nothing(tmp_path, monkeypatch):
    expected = uninterrupted(tmp_path, lambda: mixers.ama_r(1.0))
    folder = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=folder, on_step=interrupt_at(2))
    before = snapshot(folder)
    with monkeypatch.context() as patch:
        disk_full(patch)
        with pytest.raises(
            OSError, match=r"cannot write the checkpoint .*No space left.*Fix: free"
        ):
            train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=folder)
    assert snapshot(folder) == before  # the step-2 checkpoint as it was, no temporary file
    fresh = build_oracle()
    assert_same_run(train(fresh, mixers.ama_r(1.0), loop(), out_dir=folder), fresh, expected)


def test_a_read_only_run_folder_loses_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=folder, on_step=interrupt_at(2))
    before = snapshot(folder)
    with read_only(folder, monkeypatch):
        with pytest.raises(
            PermissionError,
            match=r"cannot write the checkpoint .*checkpoint\.pt: Read-only file system \(EROFS\); "
            r"it needed about .*; the previous checkpoint\.pt is intact\. Fix: remount",
        ):
            train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=folder)
    assert snapshot(folder) == before


# ------------------------------------------------------------------------ divergence
def diverging_oracle(at: int):
    """An oracle whose update at step ``at`` uses a learning rate of 1e300: the weights
    overflow while the loss of that step was still finite."""
    oracle = build_oracle()
    step, taken = oracle.step, []

    def exploding_step(batch, weights, learning_rate):
        rate = learning_rate * (1e300 if len(taken) == at else 1.0)
        taken.append(at)
        return step(batch, weights, rate)

    oracle.step = exploding_step
    return oracle


@pytest.mark.parametrize("at", [1, 5])
def test_a_diverged_state_is_never_saved(tmp_path, at):
    config = loop(steps=8, checkpoint_every=1)
    with pytest.raises((TrainingDiverged, FloatingPointError)) as info:
        train(diverging_oracle(at), mixers.ama_r(1.0), config, out_dir=tmp_path)
    error = info.value
    cause = error if isinstance(error, NonFiniteStateError) else error.__cause__
    assert isinstance(cause, NonFiniteStateError)
    assert cause.key.startswith("oracle.")  # the parameter (or its optimizer state) named
    message = str(error)
    assert f"checkpoint.pt (step {at})" in message  # the last good one, named
    assert assert_all_finite(tmp_path) == min(at, 2)  # every file on disk is finite
    assert load(tmp_path / "checkpoint.pt")["step"] == at
    # and it resumes: the same run without the explosion finishes from there
    calls = []
    train(build_oracle(), mixers.ama_r(1.0), config, out_dir=tmp_path, on_step=calls.append)
    assert calls == list(range(at, 8))


def test_divergence_at_the_first_step_saves_nothing_and_says_so(tmp_path):
    with pytest.raises((TrainingDiverged, FloatingPointError), match="No checkpoint was saved"):
        train(diverging_oracle(0), mixers.ama_r(1.0), loop(checkpoint_every=1), out_dir=tmp_path)
    assert not list(tmp_path.glob("*.pt"))


def test_a_checkpoint_refuses_non_finite_optimizer_state(tmp_path):
    oracle = build_oracle()
    oracle.reset([0])
    state = {"step": 1, "oracle": oracle.state_dict(), "record": {"loss_sums": np.full(3, np.nan)}}
    keeper = CheckpointFile(tmp_path / "checkpoint.pt")
    keeper.save(state)  # NaN "not recorded" markers are allowed
    first = snapshot(tmp_path)
    state["oracle"]["optimizer"]["state"] = {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}
    state["step"] = 2
    with pytest.raises(NonFiniteStateError, match=r"oracle\.optimizer\.state\.0\.exp_avg") as info:
        keeper.save(state)
    assert "Last good checkpoint: " in str(info.value) and "(step 1)" in str(info.value)
    assert snapshot(tmp_path) == first


# --------------------------------------------------------------------------- caches
def arrays_once(calls: list, value: float = 1.0):
    def compute():
        calls.append(value)
        return {"losses": np.linspace(0.0, 1.0, 7) * value}

    return compute


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_entry_is_reported_and_rebuilt(tmp_path, damage):
    calls = []
    key = {"model": "m", "pairs": "p"}
    first = load_or_compute(tmp_path, "specialist", key, arrays_once(calls))
    path = entry_path(tmp_path, "specialist", key)
    good = path.read_bytes()
    DAMAGE[damage](path)
    with pytest.warns(
        IntegrityWarning, match=rf"cache entry {re.escape(str(path))} .*: rebuilding it"
    ):
        again = load_or_compute(tmp_path, "specialist", key, arrays_once(calls))
    assert calls == [1.0, 1.0]
    np.testing.assert_array_equal(again["losses"], first["losses"])
    assert path.read_bytes() == good  # rebuilt byte for byte


def test_a_cache_entry_holding_nan_is_rebuilt(tmp_path):
    calls = []
    key = {"model": "m"}
    load_or_compute(tmp_path, "reference", key, arrays_once(calls))
    path = entry_path(tmp_path, "reference", key)
    np.savez(path, losses=np.array([0.1, np.nan]))  # by hand, or by an older version
    with pytest.warns(IntegrityWarning, match="NaN or infinite"):
        got = load_or_compute(tmp_path, "reference", key, arrays_once(calls))
    assert np.isfinite(got["losses"]).all() and len(calls) == 2


def test_a_non_finite_computed_entry_names_task_example_and_stage_and_is_not_cached(tmp_path):
    def compute():
        logps = np.zeros((4, 2))
        logps[2, 1] = -np.inf
        return {"logps": logps}

    sources = {"logps": [f"math.train.jsonl:{i + 1}" for i in range(4)]}
    with pytest.raises(NonFiniteError) as info:
        load_or_compute(
            tmp_path,
            "reference",
            {"m": 1},
            compute,
            where="task 'math' (train split)",
            sources=sources,
        )
    message = str(info.value)
    for part in ("reference", "task 'math' (train split)", "example 2", "math.train.jsonl:3"):
        assert part in message
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_a_full_disk_while_caching_leaves_no_entry_and_names_the_file(tmp_path, monkeypatch):
    calls = []
    load_or_compute(tmp_path, "reference", {"m": 1}, arrays_once(calls))
    before = snapshot(tmp_path)
    disk_full(monkeypatch)
    with pytest.raises(OSError, match=r"cannot write the specialist cache entry .*Fix: free"):
        load_or_compute(tmp_path, "specialist", {"m": 2}, arrays_once(calls))
    assert snapshot(tmp_path) == before


def test_a_read_only_cache_is_read_but_not_written(tmp_path, monkeypatch):
    calls = []
    first = load_or_compute(tmp_path, "reference", {"m": 1}, arrays_once(calls))
    before = snapshot(tmp_path)
    with read_only(tmp_path, monkeypatch):
        hit = load_or_compute(tmp_path, "reference", {"m": 1}, arrays_once(calls))
        with pytest.raises(PermissionError, match=r"cannot write the reference cache entry"):
            load_or_compute(tmp_path, "reference", {"m": 2}, arrays_once(calls))
    np.testing.assert_array_equal(hit["losses"], first["losses"])
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------- metrics log
def test_a_torn_last_line_is_dropped_on_resume(tmp_path):
    log_path = tmp_path / "metrics.jsonl"
    with pytest.raises(Interrupt):
        train(
            build_oracle(),
            mixers.ama_r(1.0),
            loop(log_every=1),
            out_dir=tmp_path,
            log=MetricsLog(log_path),
            on_step=interrupt_at(4),
        )
    with log_path.open("a") as fh:
        fh.write('{"step": 5, "loss": 0.6')  # the writer was killed mid-line
    with pytest.warns(IntegrityWarning, match=r"metrics\.jsonl:\d+: dropped a torn last line"):
        train(
            build_oracle(),
            mixers.ama_r(1.0),
            loop(log_every=1),
            out_dir=tmp_path,
            log=MetricsLog(log_path),
        )
    steps = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert steps == list(range(6))


def test_altered_bytes_inside_the_log_are_named_with_the_fix(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in range(20)))
    alter(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"metrics\.jsonl:\d+: not a metrics record.*Fix: remove"):
        MetricsLog(path).drop_from(20)
    assert path.read_bytes() == before  # refused, not rewritten


def test_a_damaged_line_inside_the_log_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a metrics record.*Fix: remove"):
        MetricsLog(path).drop_from(1)


def test_a_fresh_run_replaces_an_old_log_instead_of_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)))
    log = MetricsLog(path)
    log.write({"step": 0, "loss": 1.0})
    log.write({"step": 1, "loss": 0.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]


# ---------------------------------------------------------------- the pipeline's files
@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suite")
    write_suite_small(folder)
    return folder


def config_at(folder: Path, suite: Path, **changes) -> Path:
    sections = tiny_config_dict(folder / "out", suite / "tasks.toml")
    sections["run"]["methods"] = ["ama-r"]
    sections["run"]["seeds"] = [0]
    for section, values in changes.items():
        sections[section] = {**sections.get(section, {}), **values}
    folder.mkdir(parents=True, exist_ok=True)
    return write_toml(folder / "config.toml", sections)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, suite) -> Path:
    """The folder of one finished tiny run (one method, one seed)."""
    folder = tmp_path_factory.mktemp("finished")
    run_pipeline(load_config(config_at(folder, suite)), progress=False)
    return folder


def copy_of(finished: Path, tmp_path: Path, suite: Path, **changes) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(finished / "out", folder / "out")
    config_at(folder, suite, **changes)
    return folder


def outcome(results: dict) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip({k: results[k] for k in ("tasks", "sizes", "data", "runs")})


def test_results_json_is_verified_and_every_kept_checkpoint_is_finite(finished):
    out = finished / "out"
    results = read_results(out / "results.json")
    assert list(results["runs"]) == ["ama-r"]
    assert not (out / ".lock").exists()  # released
    assert assert_all_finite(out) >= len(SIZES) + 1


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_results_are_named_and_a_rerun_rewrites_them(finished, suite, tmp_path, damage):
    folder = copy_of(finished, tmp_path, suite)
    path = folder / "out" / "results.json"
    before = read_results(path)
    DAMAGE[damage](path)
    with pytest.raises(
        IntegrityError, match=rf"{re.escape(str(path))}.*Fix: run the same command again"
    ):
        read_results(path)
    again = run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert outcome(read_results(path)) == outcome(before) == outcome(again)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_reference_model_is_trained_again(finished, suite, tmp_path, damage):
    folder = copy_of(finished, tmp_path, suite)
    [path] = (folder / "out" / "models").glob("reference-*.pt")
    good = path.read_bytes()
    DAMAGE[damage](path)
    cfg = load_config(folder / "config.toml")
    with open_run(cfg, progress=False) as ctx:
        tasks = load_tasks(ctx)
        with pytest.warns(
            IntegrityWarning, match=rf"reference model {re.escape(str(path))}.*: computing it again"
        ):
            reference(ctx, tasks)
    assert path.read_bytes() == good  # the same model, byte for byte


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_pipeline_cache_is_rebuilt_to_the_same_results(finished, suite, tmp_path, damage):
    folder = copy_of(finished, tmp_path, suite)
    before = read_results(folder / "out" / "results.json")
    paths = sorted((folder / "out" / "cache").glob("*.npz"))
    for path in paths:
        DAMAGE[damage](path)
    with pytest.warns(IntegrityWarning, match="rebuilding it"):
        again = run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert outcome(again) == outcome(before)


def test_a_finished_method_survives_a_later_methods_failure(finished, suite, tmp_path, monkeypatch):
    import llm.pipeline

    folder = copy_of(finished, tmp_path, suite, run={"methods": ["ama-r", "uniform"]})
    real = llm.pipeline.generalist_record

    def failing(ctx, oracle, model, tasks, specs, method, *args, **kwargs):
        if method == "uniform":
            raise FloatingPointError("uniform diverged (simulated)")
        return real(ctx, oracle, model, tasks, specs, method, *args, **kwargs)

    monkeypatch.setattr(llm.pipeline, "generalist_record", failing)
    with pytest.raises(FloatingPointError, match="simulated"):
        run_pipeline(load_config(folder / "config.toml"), progress=False)
    results = read_results(folder / "out" / "results.json")
    assert list(results["runs"]) == ["ama-r"]
    assert not (folder / "out" / ".lock").exists()  # released on failure too


def test_a_non_finite_evaluation_names_task_example_and_stage(tmp_path):
    (name, pairs, _), *_ = char_tasks()
    oracle = build_oracle()  # evaluates on the training pairs
    ref = oracle.eval_tasks[0].reference_logps
    task = Task(name, [], [], pairs, pairs)
    spec = Specialist(np.zeros(len(ref)), np.zeros(len(ref)), None, {}, 0)
    with torch.no_grad():
        oracle.policy.lm_head.weight[5] = float("nan")
    with pytest.raises(NonFiniteError) as info, open_run(load_config_default(tmp_path)) as ctx:
        evaluate(ctx, oracle, oracle.policy, {name: task}, {name: spec}, "ama-r seed 0")
    message = str(info.value)
    assert "ama-r seed 0" in message and repr(name) in message
    assert "first at example 0" in message and pairs.sources[0] in message


def load_config_default(out):
    from llm.config import Config

    cfg = Config()
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(out / "out")))


# --------------------------------------------------------------------------- the lock
def test_a_second_run_into_the_same_folder_is_refused_with_the_pid(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from llm.lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match=rf"in use by another run \(pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale now, and taken over with a warning
    with pytest.warns(StaleLockWarning, match=rf"stale lock \(pid {holder.pid} no longer runs\)"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_locked_output_folder_refuses_the_pipeline_before_any_work(finished, suite, tmp_path):
    folder = copy_of(finished, tmp_path, suite)
    out = folder / "out"
    lock = {"pid": os.getppid(), "host": __import__("socket").gethostname(), "started": "now"}
    (out / ".lock").write_text(json.dumps(lock))
    before = snapshot(out)
    with pytest.raises(FolderLocked, match=rf"pid {os.getppid()}"):
        run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert snapshot(out) == before


def test_a_read_only_output_folder_is_refused_before_any_work(
    finished, suite, tmp_path, monkeypatch
):
    folder = copy_of(finished, tmp_path, suite)
    out = folder / "out"
    before = snapshot(out)
    with read_only(out, monkeypatch):
        with pytest.raises(PermissionError, match=r"output folder .* is not writable.*Fix"):
            run_pipeline(load_config(folder / "config.toml"), progress=False)
    assert snapshot(out) == before


# --------------------------------------------------------------------------- the data
def test_data_issues_reach_results_json_and_results_md(suite, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(suite, data)
    train_file = data / "safety.train.jsonl"
    rows = train_file.read_text().splitlines()
    extra = [
        rows[0],  # a duplicate
        json.dumps({"prompt": "say", "chosen": "same", "rejected": "same"}),
        json.dumps({"prompt": "caf\u00e9?", "chosen": "yes", "rejected": "no"}),  # é: unknown
        json.dumps({"prompt": "nul", "chosen": "a\u0000b", "rejected": "c"}),
        json.dumps({"prompt": "long", "chosen": "x" * 80, "rejected": "y"}),  # truncated
    ]
    train_file.write_text("\n".join(rows + extra) + "\n")
    cfg = config_at(tmp_path, data)
    with pytest.warns(Warning) as caught:
        results = run_pipeline(load_config(cfg), progress=False)
    said = " ".join(str(w.message) for w in caught)
    for phrase in ("repeat an earlier row", "chosen = rejected", "unknown token", "NUL", "cut to"):
        assert phrase in said
    counts = read_results(tmp_path / "out" / "results.json")["data"]["safety"]["train"]
    assert counts == results["data"]["safety"]["train"]
    assert counts["pairs"] == SIZES["safety"][0] + len(extra)
    for issue in ("duplicates", "chosen_equals_rejected", "nul_bytes", "chosen_truncated"):
        assert counts[issue] == 1, issue
    assert counts["unknown_symbols"] == 2  # é, and NUL (outside the character vocabulary)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "## Data" in table and "| safety | train | 35 | 1 | 0 | 0 | 1 | 1 | 2 | 1 |" in table


# ------------------------------------------------------------- whose checkpoint it is
def owner(rate: float = 0.01, **more) -> dict:
    """A run's owner record: its [generalist] settings and fingerprints."""
    return owner_record({"generalist": {"learning_rate": rate, "steps": 6}}, data="d0", **more)


def test_a_checkpoint_copied_from_another_run_is_refused_by_name(tmp_path):
    """The checkpoint of a run with another learning rate, copied into this run's folder:
    resuming refuses it, naming the setting and both values, and touches nothing."""
    train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path / "a", owner=owner(0.3))
    with pytest.raises(Interrupt):
        train(
            build_oracle(),
            mixers.ama_r(1.0),
            loop(),
            out_dir=tmp_path / "b",
            owner=owner(0.01),
            on_step=interrupt_at(2),
        )
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    before = snapshot(tmp_path / "b")
    with pytest.raises(ForeignFileError) as info:
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path / "b", owner=owner())
    message = str(info.value)
    assert re.search(
        r"the checkpoint .*b/checkpoint\.pt was written by a run with a different "
        r"\[generalist\] learning_rate \(0\.3, this run 0\.01\)\. Fix: point \[run\] out "
        r"\(or --out\) at another folder for this run, or delete .*b to train this stage again",
        message,
    ), message
    assert info.value.differences == ["[generalist] learning_rate (0.3, this run 0.01)"]
    assert snapshot(tmp_path / "b") == before
    # the same run resumes its own checkpoint as before
    calls = []
    train(
        build_oracle(),
        mixers.ama_r(1.0),
        loop(),
        out_dir=tmp_path / "a",
        owner=owner(0.3),
        on_step=calls.append,
    )
    assert calls == []  # finished: nothing to redo


def test_the_command_line_refuses_another_runs_checkpoint_with_exit_2(tmp_path, monkeypatch):
    """``python -m llm run`` over a folder holding another run's checkpoint: one line naming
    it, exit status 2 (the pipeline's stage is stood in for by the train call it makes)."""
    import contextlib

    import llm.pipeline
    from llm.cli import main as llm_main

    train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path / "out", owner=owner(0.3))

    def pipeline(cfg, **kwargs):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=cfg.run.out, owner=owner())

    monkeypatch.setattr(llm.pipeline, "run_pipeline", pipeline)
    config = write_toml(tmp_path / "c.toml", {"run": {"seeds": [0], "methods": ["ama-r"]}})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = llm_main(["run", "--config", str(config), "--out", str(tmp_path / "out")])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the checkpoint ")
    assert "different [generalist] learning_rate (0.3, this run 0.01)" in lines[0]


def test_an_unsealed_checkpoint_is_refused_not_loaded(tmp_path):
    """Altered weights saved without a seal (by hand, by another tool): refused by name."""
    train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, owner=owner())
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for tensor in state["oracle"]["policy"].values():
        tensor.add_(0.5)
    torch.save(state, path)  # no trailer
    with pytest.raises(UnsealedFileError, match=r"checkpoint\.pt has no checksum trailer.*Fix"):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, owner=owner())


def test_an_unsealed_nan_checkpoint_is_refused_never_named_the_last_good(tmp_path):
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, on_step=interrupt_at(2))
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    next(iter(state["oracle"]["policy"].values())).fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(UnsealedFileError) as info:
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path)
    assert "Last good checkpoint" not in str(info.value)


def test_a_sealed_checkpoint_holding_nan_is_skipped_and_never_called_good(tmp_path):
    """A sealed file with a NaN weight (another writer's): damage, so the one before is
    resumed with a warning, and that one is what the checkpoint verified."""
    with pytest.raises(Interrupt):
        train(build_oracle(), mixers.ama_r(1.0), loop(), out_dir=tmp_path, on_step=interrupt_at(4))
    path = tmp_path / "checkpoint.pt"
    state = load(path)
    next(iter(state["oracle"]["policy"].values())).fill_(float("nan"))
    write_sealed(path, lambda fh: torch.save(state, fh), kind="checkpoint", meta={"step": 4})
    keeper = CheckpointFile(path)
    with pytest.warns(IntegrityWarning, match=r"checkpoint\.pt holds a non-finite value"):
        resumed = keeper.load()
    assert resumed["step"] == 2
    assert keeper.verified == (tmp_path / "checkpoint.prev.pt", 2)
    assert "checkpoint.prev.pt (step 2)" in keeper.last_good()


def test_a_checkpoint_without_an_owner_is_refused_by_a_run_that_has_one(tmp_path):
    train(build_oracle(), mixers.ama_r(1.0), loop(steps=2), out_dir=tmp_path)  # no owner
    with pytest.raises(ForeignFileError, match=r"carries no owner record.*Fix: point"):
        CheckpointFile(tmp_path / "checkpoint.pt", owner=owner()).load()


def test_a_sharded_checkpoint_of_another_run_or_unsealed_is_refused(tmp_path):
    from llm.dcp import ShardedCheckpoint

    folder = tmp_path / "checkpoint"
    ShardedCheckpoint(folder, owner=owner(0.3)).save({"step": 2, "w": {"x": torch.ones(3)}})
    assert ShardedCheckpoint(folder, owner=owner(0.3)).load()["step"] == 2
    with pytest.raises(ForeignFileError, match=r"learning_rate \(0\.3, this run 0\.01\)"):
        ShardedCheckpoint(folder, owner=owner()).load()
    manifest = folder / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-TRAILER_BYTES])  # the seal taken off
    with pytest.raises(UnsealedFileError, match=r"no checksum trailer on its manifest"):
        ShardedCheckpoint(folder, owner=owner(0.3)).load()


def test_a_cache_entry_carries_its_key_and_one_of_another_key_is_rebuilt(tmp_path):
    calls = []
    load_or_compute(tmp_path, "reference", {"m": 1}, arrays_once(calls))
    load_or_compute(tmp_path, "reference", {"m": 2}, arrays_once(calls, 2.0))
    one, two = (
        entry_path(tmp_path, "reference", {"m": 1}),
        entry_path(tmp_path, "reference", {"m": 2}),
    )
    shutil.copy(two, one)  # another key's entry under this key's name
    with pytest.warns(IntegrityWarning, match=r"computed for another key \(m \(2, this run 1\)\)"):
        got = load_or_compute(tmp_path, "reference", {"m": 1}, arrays_once(calls))
    assert calls == [1.0, 2.0, 1.0]
    np.testing.assert_array_equal(got["losses"], np.linspace(0.0, 1.0, 7))
    assert "__owner__" not in got


def test_the_reference_model_file_carries_its_owner(tmp_path):
    from llm.checkpoint import load_owned, save_atomic

    path = tmp_path / "reference.pt"
    assert load_owned(path, owner=owner(), kind="reference model") is None  # absent
    save_atomic({"w": torch.ones(2)}, path, kind="reference model", owner=owner())
    assert torch.equal(load_owned(path, owner=owner(), kind="reference model")["w"], torch.ones(2))
    with pytest.warns(IntegrityWarning, match=r"learning_rate \(0\.01, this run 0\.3\): computing"):
        assert load_owned(path, owner=owner(0.3), kind="reference model") is None


def test_a_process_may_take_its_own_folder_again(tmp_path):
    """A command holds its folder while the pipeline it calls takes it again; the lock goes
    with the outermost holder, and another process is refused meanwhile."""
    outer = RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").exists()
    assert (tmp_path / ".lock").exists()
    outer.release()
    assert not (tmp_path / ".lock").exists()


# ------------------------------------------------------------------ failed writes
def test_a_write_past_the_file_size_limit_exits_2_naming_the_file(tmp_path, suite):
    """Under ``ulimit -f`` (150 kB: the data, the reference model and the caches fit, a
    checkpoint does not) ``python -m llm run`` ends with exit 2 and one line naming the
    checkpoint, "File too large" and the limit — not SIGXFSZ, not torch's "unexpected pos"."""
    import resource

    config = config_at(tmp_path, suite)
    limit = 150_000

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "llm", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limited,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert re.search(
        r"^error: cannot write the checkpoint .*/checkpoint\.pt: File too large \(EFBIG: the "
        r"file-size limit, ulimit -f, is 150\.0 kB\); it needed about .* kB; .*"
        r"Fix: raise the file-size limit",
        line,
    ), line
    assert "unexpected pos" not in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "out").rglob(".*.tmp"))  # no temporary file left


def test_a_full_disk_inside_torch_save_is_named_not_an_internal_error(tmp_path, monkeypatch):
    """ENOSPC raised by a write inside torch.save (which torch reports as "unexpected
    pos"): the OSError, naming the file, the errno in words, the bytes and the old file."""
    path = tmp_path / "checkpoint.pt"
    save_atomic({"w": torch.ones(4)}, path)
    before = path.read_bytes()
    real_open = builtins.open
    monkeypatch.setattr(
        "llm.integrity.open",
        lambda *args, **kwargs: FillsUp(real_open(*args, **kwargs), 4000),
        raising=False,
    )
    with pytest.raises(OSError) as info:
        save_atomic({"w": torch.zeros(4096)}, path)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert re.search(
        r"cannot write the checkpoint .*checkpoint\.pt: No space left on device \(ENOSPC\); "
        r"it needed about 16\.4 kB; .* were written; the previous checkpoint\.pt is intact\. "
        r"Fix: free disk space",
        message,
    ), message
    assert "unexpected pos" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary


# ------------------------------------------------------------- optional packages
def test_tensorboard_without_the_package_fails_in_seconds_before_any_training(tmp_path, suite):
    """``[run] tensorboard = true`` where TensorBoard is not importable (blocked here, as an
    uninstalled package reads to importlib): ``python -m llm run`` refuses at once, naming
    the setting and the ``pip install`` — before the reference or any specialist trains."""
    config = config_at(tmp_path, suite, run={"tensorboard": True})
    blocked = (
        "import runpy, sys; sys.modules['tensorboard'] = None; "
        "sys.argv = ['llm', 'run', '--config', sys.argv[1]]; "
        "runpy.run_module('llm', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", blocked, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.search(
        r"error: .*config\.toml \[run\] tensorboard = True: needs the tensorboard package, which "
        r"is not installed\. Fix: pip install tensorboard, or set tensorboard = false",
        done.stderr,
    ), done.stderr
    assert seconds < 5, seconds
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_generalist_checkpoint_of_another_run_is_refused_by_the_cli(finished, suite, tmp_path):
    """A checkpoint copied in from a run with another [generalist] learning_rate, into the
    folder of this run's generalist stopped before its record was cached, is refused by name
    when the run resumes (exit 2), never trained on."""
    other = copy_of(
        finished, tmp_path, suite, generalist={"learning_rate": 0.3}, run={"keep": "all"}
    )
    run_pipeline(load_config(other / "config.toml"), progress=False)
    ours = tmp_path / "ours"
    shutil.copytree(finished / "out", ours / "out")
    config_at(ours, suite)
    [folder] = (ours / "out" / "generalists").glob("ama-r-seed0-*/rank0")
    [foreign] = [
        p
        for p in (other / "out" / "generalists").glob("ama-r-seed0-*/rank0/checkpoint.pt")
        if p.parent.parent.name != folder.parent.name
    ]
    shutil.copyfile(foreign, folder / "checkpoint.pt")
    for stale in (ours / "out" / "cache").glob("generalist-*"):
        stale.unlink()  # as if stopped before the record was cached
    (ours / "out" / "results.json").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "llm", "run", "--config", str(ours / "config.toml")],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "[generalist] learning_rate" in done.stderr and "Fix:" in done.stderr
