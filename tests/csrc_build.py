"""Helpers of the CUDA-source tests: find nvcc and the CUDA headers, compile ``csrc/``.

Used by ``test_csrc_compile.py`` (``nvcc -c`` of every ``csrc/*.cu`` for sm_90) and
``test_csrc_emulated.py`` (the same sources built as plain C++ with
``csrc_host/host_emulation.h`` and run on the CPU).  Nothing here needs a GPU.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
HOST_DIR = Path(__file__).resolve().parent / "csrc_host"
#: the flags CI compiles every .cu file with (no torch header is involved)
NVCC_FLAGS = ("-c", "-std=c++17", "-gencode", "arch=compute_90,code=sm_90")


def find_nvcc() -> Optional[str]:
    """nvcc from PATH, $CUDA_HOME/bin or /usr/local/cuda*/bin, or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = [os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")]
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def cuda_include_dir() -> Optional[str]:
    """The folder holding cuda_runtime.h and cuda_bf16.h (next to nvcc), or None."""
    roots = []
    nvcc = find_nvcc()
    if nvcc:
        roots.append(Path(os.path.realpath(nvcc)).parents[1])
    roots += [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots.append(Path("/usr/local/cuda"))
    for root in roots:
        inc = root / "include"
        if (inc / "cuda_runtime.h").is_file() and (inc / "cuda_bf16.h").is_file():
            return str(inc)
    return None


def cuda_home() -> Optional[str]:
    """The CUDA toolkit root (the folder above cuda_include_dir()), or None."""
    inc = cuda_include_dir()
    return None if inc is None else str(Path(inc).parent)


def cu_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cu"))


def nvcc_compile(src: Path, out_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``nvcc -c -std=c++17 -gencode arch=compute_90,code=sm_90 src -o out_dir/<name>.o``."""
    cmd = [find_nvcc(), *NVCC_FLAGS, "-I", str(CSRC), str(src), "-o", str(Path(out_dir) / (Path(src).stem + ".o"))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def build_host_emulation(out_dir: Path, timeout: float = 600) -> Path:
    """Compile csrc/*.cu plus the ctypes driver as a CPU shared library; returns its path."""
    lib = Path(out_dir) / "libfastncsn_emu.so"
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-Werror",
           "-DFASTNCSN_HOST_EMULATION", "-include", str(HOST_DIR / "host_emulation.h"),
           "-I", str(CSRC), "-I", cuda_include_dir(), "-x", "c++", *map(str, cu_sources()),
           str(HOST_DIR / "driver.cpp"), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"host-emulation build failed:\n{proc.stderr[-4000:]}")
    return lib
