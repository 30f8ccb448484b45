"""llm.parallel: per-task score all-reduce and data-parallel training (DDP) on a
2-process gloo group, every rank training on its block of one global batch.

One spawn per module (process start-up and DDP set-up cost seconds): the worker in
``scale_helpers`` joins the group through a file in a temporary folder (no port to pick),
runs both checks and writes what each rank saw to files that the tests below read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

if not dist.is_available():  # pragma: no cover - the CPU wheels ship gloo
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from llm_helpers import build_oracle, flat_state, parameters, reduce_inputs, tiny_gpt
from scale_helpers import ddp_worker, spawn

from llm.parallel import join

WORLD = 2
STEPS = 3


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The folder the two ranks wrote to (they ran reduce_task_scores, then training)."""
    out = tmp_path_factory.mktemp("distributed")
    spawn(ddp_worker, WORLD, out, str(out), STEPS)
    return out


def test_reduce_task_scores_pools_means_by_count(ranks):
    inputs = reduce_inputs()
    counts = sum(c for _, c in inputs)
    expected = sum(m * c for m, c in inputs) / np.maximum(counts, 1)  # Σ mean·count / Σ count
    np.testing.assert_allclose(expected, [[0.4, 0.625, 2.0, 0.0]])  # task 3 seen nowhere: 0
    for rank in range(WORLD):
        with np.load(ranks / f"reduce{rank}.npz") as got:
            np.testing.assert_allclose(got["means"], expected, rtol=1e-12)
            np.testing.assert_array_equal(got["counts"], counts)
            assert got["counts"].dtype.kind == "i"


def test_data_parallel_training_keeps_ranks_in_step(ranks):
    first, second = (torch.load(ranks / f"train{r}.pt", weights_only=False) for r in range(WORLD))
    assert first["history"]["step"] == second["history"]["step"] == list(range(STEPS))
    # DDP averages the gradients: every rank ends with the same parameters, and they moved.
    assert first["params"].keys() == second["params"].keys()
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    initial = tiny_gpt(0).state_dict()
    assert any(not torch.equal(first["params"][k], initial[k]) for k in initial)
    # The all-reduced scores give every rank the same mixer updates.
    for a, b in zip(first["mixer"], second["mixer"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first["history"]["weights"] == second["history"]["weights"]
    assert first["history"]["scores"] == second["history"]["scores"]
    # ... and every rank drew the same global batch (each trained on its own block of it).
    assert len(first["drawn"]) == len(second["drawn"]) == STEPS
    for a, b in zip(first["drawn"], second["drawn"], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (1, 8)  # the global batch of 8: 4 per rank


def test_two_ddp_ranks_equal_one_process_of_the_global_batch(ranks, tmp_path):
    from amasim import mixers
    from llm.train import LoopConfig, history, train

    oracle = build_oracle()
    config = LoopConfig(steps=STEPS, batch_size=8, learning_rate=1e-2, checkpoint_every=100)
    result = train(oracle, mixers.ama_s(1.0, 0.2), config, out_dir=tmp_path)
    got = torch.load(ranks / "train0.pt", weights_only=False)
    np.testing.assert_allclose(got["history"]["weights"], history(result)["weights"], atol=1e-6)
    np.testing.assert_allclose(got["history"]["scores"], history(result)["scores"], atol=1e-6)
    for a, b in zip(got["mixer"], flat_state(result.mixer_state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for name, value in parameters(oracle).items():  # 1% of an AdamW step (test_llm_fsdp)
        torch.testing.assert_close(got["params"][name], value, atol=1e-4, rtol=0)


def test_join_without_torchrun_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    dims = join("ddp")
    assert (dims.rank, dims.world, dims.shard, dims.replicated) == (0, 1, None, False)
    assert not dist.is_initialized()
