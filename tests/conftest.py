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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; skipped when torch.cuda.is_available() is False"
    )


def pytest_collection_modifyitems(config, items):
    """Skip the ``cuda``-marked tests without a GPU (torch is imported only if there are any)."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)
