"""llm.train / llm.checkpoint / llm.cache: resume, divergence, atomic saves, metrics, caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from llm_helpers import SIZES, build_oracle, flat_state, parameters, tiny_gpt

from amasim import mixers
from llm import checkpoint
from llm.cache import load_or_compute
from llm.checkpoint import load, save_atomic
from llm.train import LoopConfig, MetricsLog, TrainingDiverged, history, train

K = len(SIZES)
MIXERS = {
    "ama_s": lambda: mixers.ama_s(1.0, 0.2),
    "ama_r": lambda: mixers.ama_r(1.0),
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


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


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("method", list(MIXERS))
@pytest.mark.parametrize("stop", [2, 3], ids=["between-checkpoints", "at-a-checkpoint"])
def test_resume_is_bitwise_identical(tmp_path, method, stop):
    whole = build_oracle()
    expected = train(whole, MIXERS[method](), loop(), out_dir=tmp_path / "whole")

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        train(build_oracle(), MIXERS[method](), loop(), out_dir=folder, on_step=interrupt_at(stop))
    saved = load(folder / "checkpoint.pt")
    assert saved["step"] == 2 * ((stop + 1) // 2)  # the last checkpoint before the kill
    fresh = build_oracle()  # a new process: nothing survives but the files
    got = train(fresh, MIXERS[method](), loop(), out_dir=folder, resume=True)

    assert history(got) == history(expected)
    assert history(got)["step"] == list(range(6))
    for a, b in zip(flat_state(got.mixer_state), flat_state(expected.mixer_state)):
        np.testing.assert_array_equal(a, b)
    want = parameters(whole)
    for name, value in parameters(fresh).items():
        assert torch.equal(value, want[name]), name
    assert fresh.tokens_seen == whole.tokens_seen
    assert fresh.draws == whole.draws


def test_resume_false_starts_over(tmp_path):
    first = train(build_oracle(), MIXERS["ama_s"](), loop(steps=2), out_dir=tmp_path)
    # A finished run resumed does no step and returns the saved history ...
    calls = []
    again = train(
        build_oracle(), MIXERS["ama_s"](), loop(steps=2), out_dir=tmp_path, on_step=calls.append
    )
    assert calls == [] and history(again) == history(first)
    # ... while resume=False trains from the reference again.
    redo = train(
        build_oracle(),
        MIXERS["ama_s"](),
        loop(steps=2),
        out_dir=tmp_path,
        resume=False,
        on_step=calls.append,
    )
    assert calls == [0, 1] and history(redo) == history(first)


# -------------------------------------------------------------------------- divergence
def test_nan_mid_run_raises_training_diverged_and_keeps_the_checkpoint(tmp_path):
    oracle = build_oracle()
    poisoned = []

    def poison_after_step_4(t: int) -> None:
        if t == 3:  # steps 0..3 done, checkpoint of step 4 written
            poisoned.append(oracle.policy.register_forward_hook(lambda m, a, out: out * np.nan))

    with pytest.raises(TrainingDiverged) as info:
        train(oracle, MIXERS["ama_r"](), loop(), out_dir=tmp_path, on_step=poison_after_step_4)
    message = str(info.value)
    assert "step 4" in message
    assert str(tmp_path / "checkpoint.pt") in message
    assert isinstance(info.value.__cause__, FloatingPointError)

    saved = load(tmp_path / "checkpoint.pt")
    assert saved["step"] == 4
    recorded = np.isfinite(saved["record"]["loss_sums"][:, 0])
    assert recorded.tolist() == [True] * 4 + [False] * 2
    # The parameters did not move at the diverged step: they are the checkpoint's.
    for name, value in parameters(oracle).items():
        assert torch.equal(value, saved["oracle"]["policy"][name]), name
    # And the checkpoint resumes into a finished run.
    poisoned[0].remove()
    done = train(build_oracle(), MIXERS["ama_r"](), loop(), out_dir=tmp_path)
    assert history(done)["step"] == list(range(6))


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    oracle = build_oracle()
    oracle.policy.register_forward_hook(lambda m, a, out: out * np.nan)
    with pytest.raises(TrainingDiverged, match=r"step 0: .*none was saved yet"):
        train(oracle, MIXERS["ama_r"](), loop(), out_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_nan_with_a_raw_loss_mixer_is_training_diverged(tmp_path):
    oracle = build_oracle()
    oracle.policy.register_forward_hook(lambda m, a, out: out * np.nan)
    with pytest.raises(TrainingDiverged, match="step 0"):
        train(oracle, mixers.stratified(), loop(), out_dir=tmp_path)


# ------------------------------------------------------------------------- checkpoints
def test_save_atomic_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    state = {"step": 3, "weights": torch.arange(4.0), "array": np.arange(3)}
    save_atomic(state, path)
    save_atomic({**state, "step": 4}, path)  # over an existing one
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
    got = load(path)
    assert got["step"] == 4 and torch.equal(got["weights"], state["weights"])
    np.testing.assert_array_equal(got["array"], state["array"])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 2, "weights": torch.ones(8)}, path)
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"step": 4, "weights": torch.zeros(8)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    got = load(path)
    assert got["step"] == 2 and torch.equal(got["weights"], torch.ones(8))


def test_failed_save_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"step": 2}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_atomic({"step": 4}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_load_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        checkpoint.load(tmp_path / "nothing-here.pt")


# ----------------------------------------------------------------------------- metrics
def read_jsonl(path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines and all(line.startswith("{") and line.endswith("}") for line in lines)
    return [json.loads(line) for line in lines]


def test_metrics_log_one_json_object_per_logged_step(tmp_path):
    oracle = build_oracle()
    log = MetricsLog(tmp_path / "logs" / "metrics.jsonl")
    flops = tiny_gpt(0).flops_per_token(48)
    config = loop(steps=5, log_every=2, peak_flops=1e12)
    train(oracle, MIXERS["ama_r"](), config, out_dir=tmp_path, log=log, flops_per_token=flops)
    log.close()
    records = read_jsonl(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4]  # every log_every, and the last step
    for record in records:
        expected = {"step", "lr", "loss", "seconds", "tokens_per_s", "mfu"}
        expected |= {f"weight/{name}" for name in SIZES} | {f"score/{name}" for name in SIZES}
        expected |= {"rewards/chosen", "rewards/rejected", "rewards/accuracies"}
        expected |= {"rewards/margins"}
        assert expected <= set(record), expected - set(record)
        assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1
        assert sum(record[f"weight/{name}"] for name in SIZES) == pytest.approx(1.0)
        assert all(np.isfinite(v) for v in record.values())
    assert records[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)


def test_metrics_log_has_no_mfu_without_peak_flops(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    train(build_oracle(), MIXERS["ama_s"](), loop(steps=2, log_every=1), out_dir=tmp_path, log=log)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1]
    assert all("mfu" not in r and "tokens_per_s" in r for r in records)


def test_metrics_log_appends(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 0, "loss": 1.0})
    log.write({"step": 1, "loss": 0.5})
    again = MetricsLog(tmp_path / "m.jsonl")
    again.write({"step": 2, "loss": 0.25})
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 1, 2]


# ------------------------------------------------------------------------------- cache
def test_load_or_compute_computes_once_per_key(tmp_path):
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"logps": np.full((3, 2), value), "ids": np.arange(3)}

        return run

    key = {"model": "abc", "pairs": "def", "beta": 0.1}
    first = load_or_compute(tmp_path, "reference", key, compute(1.0))
    files = sorted(p.name for p in tmp_path.iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = load_or_compute(tmp_path, "reference", dict(reversed(key.items())), compute(2.0))
    assert calls == [1.0]  # the same key (in any order) is read back, not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    other = load_or_compute(tmp_path, "reference", {**key, "beta": 0.2}, compute(3.0))
    assert calls == [1.0, 3.0]
    np.testing.assert_array_equal(other["logps"], np.full((3, 2), 3.0))
    assert len(list(tmp_path.glob("reference-*.npz"))) == 2
    # The sidecar records the key in clear; no temporary file is left behind.
    [npz] = [f for f in files if f.endswith(".npz")]
    sidecar = json.loads((tmp_path / npz.replace(".npz", ".json")).read_text())
    assert sidecar == {"kind": "reference", "key": key}
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".npz", ".json")]


def test_load_or_compute_kinds_do_not_collide(tmp_path):
    key = {"model": "abc"}
    a = load_or_compute(tmp_path, "reference", key, lambda: {"x": np.zeros(2)})
    b = load_or_compute(tmp_path, "specialist", key, lambda: {"x": np.ones(2)})
    assert a["x"].tolist() == [0.0, 0.0] and b["x"].tolist() == [1.0, 1.0]
