"""CI compile check of the CUDA sources, without a GPU.

Every ``csrc/*.cu`` holds kernels and raw-pointer launchers and no torch header,
so a plain ``nvcc -c -std=c++17 -gencode arch=compute_90,code=sm_90`` compiles it
(device code through ptxas to an sm_90 cubin) in seconds.  The second test shows
that the check fails on broken code: a copy of ``langevin.cu`` with a type error
and one with a syntax error must not compile.  Skips when nvcc is absent.
"""
import pytest

from csrc_build import CSRC, cu_sources, cuda_include_dir, find_nvcc, nvcc_compile

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
