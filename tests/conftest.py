"""Shared test configuration.

* Without a GPU, Triton kernels run under the interpreter: ``TRITON_INTERPRET=1``
  must be set before any ``@triton.jit`` runs, so it is set here, before the test
  modules import anything.
* ``TOL`` is the one tolerance table for comparing a fast path to the reference.
* Tests marked ``gpu`` skip cleanly when CUDA is not available.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: tolerances per dtype, used by every fast-path-vs-reference comparison
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def tol():
    return TOL


@pytest.fixture
def one_thread():
    """Run the test on one CPU thread (tiny networks: one thread is faster than two fighting over a
    shared 2-core machine); restores the previous count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
