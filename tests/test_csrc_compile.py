"""CI compile check of the CUDA sources, without a GPU.

Every ``csrc/*.cu`` holds kernels and raw-pointer launchers and no torch header,
so a plain ``nvcc -c -std=c++17 -gencode arch=compute_90,code=sm_90`` compiles it
(device code through ptxas to an sm_90 cubin) in seconds.  The second test shows
that the check fails on broken code: a copy of ``langevin.cu`` with a type error
and one with a syntax error must not compile.  Skips when nvcc is absent.

The torch binding ``ops.cpp`` is checked by ``g++ -fsyntax-only`` against the
installed torch headers; with ``FASTNCSN_CUDA_TORCH_PYTHON`` pointing at a python
that has a CUDA build of torch, a slow test builds the whole extension and loads it.
"""
import os
import shutil
import subprocess

import pytest

from csrc_build import CSRC, REPO, cu_sources, cuda_home, cuda_include_dir, find_nvcc, nvcc_compile

pytestmark = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin)")


def test_csrc_has_sources():
    names = {p.name for p in cu_sources()}
    assert {"cond_instance_norm.cu", "langevin.cu"} <= names


@pytest.mark.parametrize("src", cu_sources(), ids=lambda p: p.name)
def test_cu_compiles_for_sm90(src, tmp_path):
    proc = nvcc_compile(src, tmp_path)
    assert proc.returncode == 0, f"nvcc failed on {src.name}:\n{proc.stderr[-4000:]}"
    obj = tmp_path / f"{src.stem}.o"
    assert obj.stat().st_size > 0
    # the object embeds a fat binary with sm_90 device code
    data = obj.read_bytes()
    assert b".nv_fatbin" in data and b"sm_90" in data


BREAKAGES = {
    # a float* where a float is needed: a type error only the compiler can see
    "type-error": ("const float a_all = s.per_sample_step ? 0.0f : a.step[0];",
                   "const float a_all = s.per_sample_step ? 0.0f : a.step;"),
    # a missing semicolon
    "syntax-error": ("const int64_t e0 = 4 * j;", "const int64_t e0 = 4 * j"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_compile_check_fails_on_broken_copy(breakage, tmp_path):
    good, bad = BREAKAGES[breakage]
    text = (CSRC / "langevin.cu").read_text()
    assert text.count(good) == 1, "the line to break is no longer in csrc/langevin.cu: update BREAKAGES"
    broken = tmp_path / "langevin_broken.cu"
    broken.write_text(text.replace(good, bad))     # compiled with -I csrc, so the includes resolve
    proc = nvcc_compile(broken, tmp_path)
    assert proc.returncode != 0
    assert "error" in proc.stderr
    assert not (tmp_path / "langevin_broken.o").exists()


def test_cuda_headers_found():
    assert cuda_include_dir() is not None


# --------------------------------------------------------------------------- the torch binding (ops.cpp)

def _torch_include_dirs():
    import torch.utils.cpp_extension as cpp
    return cpp.include_paths()


@pytest.mark.skipif(shutil.which("g++") is None or cuda_include_dir() is None, reason="needs g++ and the CUDA headers")
def test_ops_cpp_syntax_against_torch_headers(tmp_path):
    """``g++ -fsyntax-only`` of csrc/ops.cpp against the installed torch's headers (a CPU wheel
    ships them, except one generated CUDA macro header that a one-line stub replaces) and the
    CUDA headers: type errors in the binding show up without a CUDA build of torch."""
    import sysconfig
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [str(tmp_path), *_torch_include_dirs(), sysconfig.get_paths()["include"], cuda_include_dir(), str(CSRC)]
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-DTORCH_API_INCLUDE_EXTENSION_H",
           *[f"-I{d}" for d in includes], str(CSRC / "ops.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


_CHECK_BUILT = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
import fastncsn.ops.cuda as c
assert not c.IMPORT_ERROR, c.available("cpu")
schemas = {n: str(getattr(torch.ops.fastncsn_cuda, n).default._schema)
           for n in ("cin_plus_fwd", "cin_plus_bwd", "langevin_step_", "langevin_noise")}
assert "Tensor(a!) x" in schemas["langevin_step_"], schemas
# fake kernels and autograd on meta tensors (no GPU needed)
x = torch.empty(2, 3, 4, 5, device="meta").to(memory_format=torch.channels_last).requires_grad_()
w = torch.empty(10, 9, device="meta", requires_grad=True)
out, mu, rstd = torch.ops.fastncsn_cuda.cin_plus_fwd(x, torch.zeros(2, dtype=torch.long, device="meta"), w, 1e-5, "elu")
out.sum().backward()
assert out.stride() == x.stride() == x.grad.stride() and w.grad.shape == (10, 9) and mu.dtype == torch.float32
print("ok")
'''


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FASTNCSN_CUDA_TORCH_PYTHON"),
                    reason="set FASTNCSN_CUDA_TORCH_PYTHON to a python with a CUDA build of torch")
def test_full_build_loads_and_registers_ops(tmp_path):
    """Builds fastncsn._C with a CUDA build of torch (no GPU needed; ~40 s for sm_90 on 2 cores) and
    imports it there: the ops register (C++ signatures match the schemas), fake kernels and autograd work."""
    python = os.environ["FASTNCSN_CUDA_TORCH_PYTHON"]
    env = dict(os.environ, FASTNCSN_BUILD_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0",
               CUDA_HOME=cuda_home())
    build = subprocess.run([python, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                            "--build-temp", str(tmp_path / "tmp")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, (build.stdout + build.stderr)[-6000:]
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "fastncsn", pkg / "fastncsn", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for so in (tmp_path / "lib" / "fastncsn").glob("_C*.so"):
        shutil.copy(so, pkg / "fastncsn")
    run = subprocess.run([python, "-c", _CHECK_BUILT, str(pkg)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-4000:]
