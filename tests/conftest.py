"""Shared test configuration.

* Without a GPU, Triton kernels run under the interpreter: ``TRITON_INTERPRET=1``
  must be set before any ``@triton.jit`` runs, so it is set here, before the test
  modules import anything.
* ``TOL`` is the one tolerance table for comparing a fast path to the reference
  (``cin_truth.assert_within_2x`` adds its ``atol`` to the 2x rule).
* Tests marked ``gpu`` skip cleanly when CUDA is not available.
* Tests of the Triton backend (a ``backend`` parameter ``"triton"``, or ``triton`` in the test's
  name) get the marker ``triton``, so the perf lab runs them compiled on the GPU with
  ``-m "gpu or triton"`` (``-m gpu`` alone skips them: they are not marked ``gpu`` because they
  also run on the CPU under the interpreter).  ``FASTNCSN_TRITON_DEVICE=cuda`` demands that they
  run compiled on CUDA tensors: the session stops with an error when CUDA is missing or
  ``TRITON_INTERPRET=1`` is set, instead of quietly interpreting on the CPU.
* ``FAST_BACKENDS`` / ``fast_backend``: the op tests are parametrised over the fast
  backends of ``fastncsn.ops`` (``triton`` under the interpreter on a CPU; ``cuda``
  marked ``gpu`` and skipped, with the rebuild hint, without the built extension);
  the reference (``torch``) is what they are compared with.
"""
import os

import pytest
import torch

#: "cuda": the Triton tests must run compiled on CUDA tensors (the perf lab); unset: CUDA if present
TRITON_DEVICE = os.environ.get("FASTNCSN_TRITON_DEVICE", "")
if TRITON_DEVICE not in ("", "cuda"):
    raise pytest.UsageError(f"FASTNCSN_TRITON_DEVICE: expected 'cuda' or unset, got {TRITON_DEVICE!r}")
if TRITON_DEVICE == "cuda":
    if not torch.cuda.is_available():
        raise pytest.UsageError("FASTNCSN_TRITON_DEVICE=cuda but CUDA is not available")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise pytest.UsageError("FASTNCSN_TRITON_DEVICE=cuda but TRITON_INTERPRET is set: unset it")
elif not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: tolerances per dtype, used by every fast-path-vs-reference comparison
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

HAS_CUDA = torch.cuda.is_available()
#: the device of the fast-backend tests (Triton runs CPU tensors under the interpreter)
DEV = "cuda" if HAS_CUDA else "cpu"
#: parameters of ``backend`` in the op tests
FAST_BACKENDS = [pytest.param("triton", id="triton"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


#: (backend, CPU kernel implementation) of the opcheck runs: the Triton backend's custom ops are
#: registered with a CPU kernel that runs Triton (interpreter) or the reference math; both are checked
OPCHECK_CASES = [pytest.param("triton", "triton", id="triton"),
                 pytest.param("triton", "reference", id="triton-cpu-reference"),
                 pytest.param("cuda", "auto", id="cuda", marks=pytest.mark.gpu)]


def opcheck_all(backend: str, impl: str, samples) -> None:
    """``torch.library.opcheck`` on every ``(op, args)`` of ``samples(backend)`` with ``CPU_IMPL = impl``."""
    from fastncsn.ops.common import cpu_impl
    fast_backend(backend)
    with cpu_impl(impl):
        for op, args in samples(backend):
            torch.library.opcheck(op, args)


def fast_backend(name: str):
    """The module of the fast backend ``name`` of ``fastncsn.ops``; skips the test when it cannot run on DEV."""
    from fastncsn.ops.dispatch import backend_module
    mod, reason = backend_module(name)
    ok, why = (False, reason) if mod is None else mod.available(DEV)
    if not ok:
        pytest.skip(f"backend {name!r} unavailable for {DEV} tensors: {why}")
    return mod


def _is_triton_test(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("backend") == "triton" or "triton" in item.name.lower()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if _is_triton_test(item):
            item.add_marker(pytest.mark.triton)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


def script_module(name: str):
    """The module ``scripts/<name>.py`` of this checkout (scripts/ is no package)."""
    import importlib.util
    import sys
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


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


def write_idx(path, array, gz: bool = False) -> None:
    """``array`` as an idx file of unsigned bytes (MNIST's raw format: magic 0x0000080N, big-endian sizes)."""
    import gzip

    import numpy as np
    array = np.asarray(array)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    """A folder holding a tiny MNIST in torchvision's raw layout (``MNIST/raw/*-ubyte.gz``: 40 training, 20 test
    digits; blobs at a per-class position, so a classifier can tell them apart). Returns the folder."""
    import numpy as np
    rng = np.random.default_rng(0)
    raw = tmp_path / "tiny_mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 40), ("t10k", 20)):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            x[i, 4 + 2 * c: 10 + 2 * c, 6:20] = 250
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x, gz=True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y, gz=True)
    return str(tmp_path / "tiny_mnist")
