"""Shared fixtures (torch is imported only by the tests that use them)."""

import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors: one intra-op thread is faster than two contending, and deterministic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
