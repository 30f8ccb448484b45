"""llm.dcp: distributed checkpoints that resume on any world size, sealed and atomic.

Across processes (gloo, FSDP2): a run killed after step 2 and resumed on the same world size
ends bitwise where the uninterrupted run ends; resumed on another world size (2 → 1, 1 → 2)
it ends where the runs of the same global batch end, to float tolerance.  Three spawns for
the module (2 ranks, 1 rank, 2 ranks), each a plan of runs from ``scale_helpers``.

In this process (no process group): the folder format's guarantees — the last two kept, a
damaged newest one skipped with a warning, none readable an error naming the fix, a
non-finite state never written, a killed save ignored, another model's checkpoint refused
by name, and whole weights read back by any one process.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.distributed as dist

if not dist.is_available():  # pragma: no cover - the CPU wheels ship gloo
    pytest.skip("torch.distributed is not available", allow_module_level=True)
pytest.importorskip("peft")

from scale_helpers import STEPS, dcp_worker, spawn

from llm.checkpoint import NonFiniteStateError
from llm.dcp import ShardedCheckpoint, read_checkpoint
from llm.integrity import IntegrityError, IntegrityWarning

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CASES = ("gpt-ama-s", "gpt-lora-checkpointed")
STOP = 2  # killed after step index 2: the last checkpoint holds step 2, step 2 is redone


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``NAME-RANK.pt`` of every run: full (uninterrupted), cut (killed), again (resumed)."""
    out = tmp_path_factory.mktemp("dcp")
    two = [(f"{c}-full2", c, None, None) for c in CASES]
    two += [(f"{c}-cut2", c, None, STOP) for c in CASES]
    two += [(f"{c}-again22", c, f"{c}-cut2", None) for c in CASES]
    one = [(f"{c}-full1", c, None, None) for c in CASES]
    one += [(f"{c}-again21", c, f"{c}-cut2", None) for c in CASES]
    one += [(f"{c}-cut1", c, None, STOP) for c in CASES]
    one += [(f"{c}-again11", c, f"{c}-cut1", None) for c in CASES]
    back = [(f"{c}-again12", c, f"{c}-cut1", None) for c in CASES]
    spawn(dcp_worker, 2, out, str(out), two)
    spawn(dcp_worker, 1, out, str(out), one)
    spawn(dcp_worker, 2, out, str(out), back)
    return out


def result(out: Path, name: str, rank: int = 0) -> dict:
    return torch.load(out / f"{name}-{rank}.pt", weights_only=False)


def assert_same_run(got: dict, want: dict, *, exact: bool, rank: int = 0) -> None:
    if exact:
        # history["loss"] is the mean over the rank's own block, and a checkpoint keeps rank
        # 0's record: another rank's losses before the checkpoint come back as rank 0's
        keys = ("step", "weights", "scores", "loss") if rank == 0 else ("step", "weights", "scores")
        assert {k: got["history"][k] for k in keys} == {k: want["history"][k] for k in keys}
        for a, b in zip(got["mixer"], want["mixer"], strict=True):
            np.testing.assert_array_equal(a, b)
        assert got["losses"] == want["losses"]
        for key, value in want["params"].items():
            assert torch.equal(got["params"][key], value), key
        return
    for key in ("weights", "scores"):
        np.testing.assert_allclose(got["history"][key], want["history"][key], atol=1e-6)
    for name, loss in want["losses"].items():
        assert got["losses"][name] == pytest.approx(loss, abs=1e-6), name
    for key, value in want["params"].items():  # 1% of an AdamW step (see test_llm_fsdp)
        torch.testing.assert_close(got["params"][key], value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_dcp_killed_runs_left_a_checkpoint_of_step_2(runs, case):
    for cut, world in ((f"{case}-cut2", 2), (f"{case}-cut1", 1)):
        assert result(runs, cut) is None  # killed
        saved = ShardedCheckpoint(runs / cut / "checkpoint").read(lambda key: False)
        assert saved["step"] == STOP
        state = torch.load(runs / cut / "checkpoint" / "state.pt", weights_only=False)
        assert state["world"] == world


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("world", [1, 2])
def test_dcp_resume_on_the_same_world_size_is_bitwise(runs, case, world):
    for rank in range(world):
        got = result(runs, f"{case}-again{world}{world}", rank)
        assert_same_run(got, result(runs, f"{case}-full{world}", rank), exact=True, rank=rank)


@pytest.mark.parametrize("case", CASES)
def test_dcp_resume_from_2_ranks_on_1(runs, case):
    got = result(runs, f"{case}-again21")
    assert got["history"]["step"] == list(range(STEPS))
    assert_same_run(got, result(runs, f"{case}-full1"), exact=False)
    assert_same_run(got, result(runs, f"{case}-full2"), exact=False)


@pytest.mark.parametrize("case", CASES)
def test_dcp_resume_from_1_rank_on_2(runs, case):
    for rank in range(2):
        got = result(runs, f"{case}-again12", rank)
        assert_same_run(got, result(runs, f"{case}-full2", rank), exact=False)
        assert_same_run(got, result(runs, f"{case}-full1"), exact=False)


# --------------------------------------------------------------------------- one process
class MixerState(NamedTuple):
    weights: np.ndarray
    rounds: int


def state(step: int, value: float = 1.0) -> dict:
    return {
        "phase": "train",
        "step": step,
        "oracle": {
            "policy": {"w": torch.full((3, 2), value), "b": torch.zeros(2)},
            "optimizer": {"state": {"w": {"exp_avg": torch.ones(3, 2)}}, "lr": 0.1},
            "keys": np.arange(4, dtype=np.uint64),
        },
        "mixer_state": MixerState(np.array([[0.25, 0.75]]), 3),
        "record": {"loss_sums": np.array([[np.nan]])},  # NaN: "not recorded" (allowed)
    }


def test_dcp_round_trip_of_a_driver_state(tmp_path):
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint")
    assert checkpoint.load() is None
    checkpoint.save(state(4, 2.0))
    got = ShardedCheckpoint(tmp_path / "checkpoint").load()
    assert got["step"] == 4 and got["phase"] == "train"
    assert torch.equal(got["oracle"]["policy"]["w"], torch.full((3, 2), 2.0))
    assert torch.equal(got["oracle"]["optimizer"]["state"]["w"]["exp_avg"], torch.ones(3, 2))
    assert got["oracle"]["optimizer"]["lr"] == 0.1
    np.testing.assert_array_equal(got["oracle"]["keys"], np.arange(4))
    assert got["mixer_state"].rounds == 3
    assert ShardedCheckpoint(tmp_path / "checkpoint", resume=False).load() is None


def test_dcp_keeps_the_last_two_and_skips_a_damaged_newest(tmp_path):
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint")
    for step in (2, 4, 6):
        checkpoint.save(state(step, float(step)))
    assert [p.name for p in checkpoint.files()] == ["checkpoint", "checkpoint.prev"]
    shard = next((tmp_path / "checkpoint").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.warns(IntegrityWarning, match="altered"):
        got = checkpoint.load()
    assert got["step"] == 4
    assert torch.equal(got["oracle"]["policy"]["w"], torch.full((3, 2), 4.0))


def test_dcp_no_readable_checkpoint_names_them_and_the_fix(tmp_path):
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint")
    checkpoint.save(state(2))
    checkpoint.save(state(4))
    (tmp_path / "checkpoint" / "state.pt").write_bytes(b"cut")
    (tmp_path / "checkpoint.prev" / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match=r"no checkpoint of this run.*Fix: delete"):
        checkpoint.load()


def test_dcp_refuses_a_non_finite_state_and_writes_nothing(tmp_path):
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint")
    checkpoint.save(state(2))
    bad = state(4)
    bad["oracle"]["policy"]["w"][1, 0] = float("inf")
    with pytest.raises(NonFiniteStateError, match=r"oracle\.policy\.w holds .*step 2"):
        checkpoint.save(bad)
    assert checkpoint.load()["step"] == 2
    assert not checkpoint.previous.exists()


def test_dcp_a_killed_save_leaves_the_last_complete_checkpoint(tmp_path):
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint")
    checkpoint.save(state(2))
    checkpoint.tmp.mkdir()  # killed while the ranks wrote their shards
    (checkpoint.tmp / "__0_0.distcp").write_bytes(b"half")
    assert checkpoint.load()["step"] == 2
    assert not checkpoint.tmp.exists()
    # killed between the two renames: the new one waits as pending, the old as previous
    checkpoint.save(state(4))
    checkpoint.path.rename(checkpoint.pending)
    assert checkpoint.load()["step"] == 4
    checkpoint.save(state(6))
    assert [p.name for p in checkpoint.files()] == ["checkpoint", "checkpoint.prev"]


def test_dcp_refuses_a_checkpoint_of_another_model_by_name(tmp_path):
    ShardedCheckpoint(tmp_path / "checkpoint").save(state(2))
    other = {"oracle": {"policy": {"w": torch.zeros(4, 2), "b": torch.zeros(2)}}}
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint", template=lambda: other)
    with pytest.raises(ValueError, match=r"oracle\.policy\.w has shape \(3, 2\).*\(4, 2\)"):
        checkpoint.load()
    more = {"oracle": {"policy": {"w": torch.zeros(3, 2), "lora": torch.zeros(1)}}}
    checkpoint = ShardedCheckpoint(tmp_path / "checkpoint", template=lambda: more)
    with pytest.raises(ValueError, match=r"lacks oracle\.policy\.lora"):
        checkpoint.load()


def test_read_checkpoint_gives_whole_weights_and_no_optimizer(tmp_path):
    ShardedCheckpoint(tmp_path / "checkpoint").save(state(2, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one process reading: no DCP warning either
        got = read_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(got["oracle"]["policy"]["w"], torch.full((3, 2), 3.0))
    assert got["oracle"]["optimizer"]["state"]["w"]["exp_avg"] is None
    assert (
        read_checkpoint(tmp_path / "checkpoint.pt", weights=False)["oracle"]["policy"]["w"] is None
    )
    assert read_checkpoint(tmp_path / "elsewhere.pt") is None
