"""Shared fixtures (torch is imported only by the tests that use them).

``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) derandomizes hypothesis: a CI run draws the
same examples every time, so its verdict depends on the code alone; other runs draw fresh
examples and keep exploring.
"""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors: one intra-op thread is faster than two contending, and deterministic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
