"""Build configuration of the optional CUDA extension ``fastncsn._C`` (used by setup.py).

``cuda_extensions(here)`` returns ``(ext_modules, cmdclass)`` for setuptools:

* the extension is built when torch is importable in the build environment,
  ``torch.version.cuda`` is set and ``nvcc`` is found (``CUDA_HOME`` as torch
  finds it); then for the architectures in ``TORCH_CUDA_ARCH_LIST`` or, when that
  is unset, for the GPUs this machine has (e.g. ``9.0`` on an H100), with ninja
  and ``MAX_JOBS`` parallel compiles (default: one per source file, at most the
  CPU count);
* otherwise nothing is built and one line on stderr says why; the pure-Python
  package installs as usual (``backend="cuda"`` then says how to rebuild);
* ``FASTNCSN_BUILD_CUDA=0`` forces the extension off, ``FASTNCSN_BUILD_CUDA=1``
  forces it on and fails the install with the reason when it cannot be built.

pip builds in an isolated environment without torch unless told otherwise, so
on a CUDA machine install with ``pip install --no-build-isolation .``.
"""
from __future__ import annotations

import os
import sys

ENV_FLAG = "FASTNCSN_BUILD_CUDA"
#: sources of fastncsn._C, relative to the repository root
SOURCES = ("csrc/ops.cpp", "csrc/cond_instance_norm.cu", "csrc/langevin.cu")
REBUILD_HINT = "reinstall on a CUDA machine with `pip install --no-build-isolation .` (FASTNCSN_BUILD_CUDA=1 to force)"


#: setup.py commands that build; pip also runs setup.py for metadata, where nothing is said
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"}


def _say(message: str) -> None:
    """One line on stderr, from the setup.py run that builds (not from the metadata runs)."""
    if _BUILD_COMMANDS.intersection(sys.argv[1:]):
        print(f"fastncsn: {message}", file=sys.stderr)


def _force_flag() -> str:
    flag = os.environ.get(ENV_FLAG, "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"{ENV_FLAG}: expected 0, 1 or unset, got {flag!r}")
    return flag


def why_not_buildable(here: str) -> str | None:
    """The reason the CUDA extension cannot be built here, or None if it can."""
    missing = [s for s in SOURCES if not os.path.isfile(os.path.join(here, s))]
    if missing:
        return f"its sources are missing ({', '.join(missing)})"
    try:
        import torch
    except ImportError:
        return ("torch is not importable in the build environment (pip's build isolation hides the installed "
                "torch: use `pip install --no-build-isolation .`)")
    if not torch.version.cuda:
        return f"torch {torch.__version__} is a build without CUDA"
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError as exc:  # pragma: no cover - torch without cpp_extension
        return f"torch.utils.cpp_extension is unavailable ({exc})"
    if not CUDA_HOME or not os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return "torch found no CUDA toolkit with nvcc (set CUDA_HOME to its root, e.g. /usr/local/cuda)"
    return None


def _arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, or the compute capabilities of the local GPUs ("" if none is visible)."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    import torch
    if not torch.cuda.is_available():
        return ""
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def cuda_extensions(here: str):
    """(ext_modules, cmdclass) for setup(): the CUDA extension fastncsn._C, or ([], {})."""
    flag = _force_flag()
    if flag == "0":
        _say(f"CUDA extension fastncsn._C skipped ({ENV_FLAG}=0)")
        return [], {}
    reason = why_not_buildable(here)
    if reason is not None:
        if flag == "1":
            raise RuntimeError(f"{ENV_FLAG}=1 but the CUDA extension fastncsn._C cannot be built: {reason}")
        _say(f"CUDA extension fastncsn._C skipped: {reason}; the pure-Python package installs without it")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    arch = _arch_list()
    if arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ.setdefault("MAX_JOBS", str(max(1, min(len(SOURCES), os.cpu_count() or 1))))
    _say(f"building the CUDA extension fastncsn._C for TORCH_CUDA_ARCH_LIST={arch or '(torch default)'} "
         f"with MAX_JOBS={os.environ['MAX_JOBS']}")
    ext = CUDAExtension(
        name="fastncsn._C",
        sources=list(SOURCES),
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}
