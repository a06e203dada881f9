"""The build configuration of the CUDA extension (``build_ext_config.py``), checked without building."""
import os
import sys

import pytest
import torch

from csrc_build import REPO, cuda_home, find_nvcc

sys.path.insert(0, str(REPO))       # build_ext_config.py lives at the repository root
import build_ext_config  # noqa: E402


HERE = str(REPO)


@pytest.fixture
def build_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["setup.py", "build_ext"])
    monkeypatch.delenv(build_ext_config.ENV_FLAG, raising=False)


def test_build_config_forced_off(build_argv, monkeypatch, capsys):
    monkeypatch.setenv(build_ext_config.ENV_FLAG, "0")
    assert build_ext_config.cuda_extensions(HERE) == ([], {})
    assert capsys.readouterr().err.strip().count("\n") == 0          # one line


def test_build_config_skips_once_or_fails_when_forced(build_argv, monkeypatch, capsys):
    monkeypatch.setattr(build_ext_config, "why_not_buildable", lambda _: "no CUDA here")
    assert build_ext_config.cuda_extensions(HERE) == ([], {})
    err = capsys.readouterr().err.strip()
    assert "skipped: no CUDA here" in err and err.count("\n") == 0
    monkeypatch.setenv(build_ext_config.ENV_FLAG, "1")
    with pytest.raises(RuntimeError, match="FASTNCSN_BUILD_CUDA=1.*no CUDA here"):
        build_ext_config.cuda_extensions(HERE)
    monkeypatch.setenv(build_ext_config.ENV_FLAG, "yes")
    with pytest.raises(SystemExit, match="FASTNCSN_BUILD_CUDA"):
        build_ext_config.cuda_extensions(HERE)


def test_build_config_reason_on_this_machine():
    reason = build_ext_config.why_not_buildable(HERE)
    if torch.version.cuda is None:
        assert "without CUDA" in reason
    else:
        assert reason is None or "CUDA_HOME" in reason


def test_build_config_makes_the_extension(build_argv, monkeypatch, capsys):
    """When buildable: one CUDAExtension fastncsn._C of the csrc/ sources, built by ninja, for the
    architectures of TORCH_CUDA_ARCH_LIST."""
    import torch.utils.cpp_extension as cpp
    if find_nvcc() is None or cuda_home() is None:
        pytest.skip("nvcc or the CUDA headers not found")
    monkeypatch.setattr(cpp, "CUDA_HOME", cuda_home())
    monkeypatch.setattr(build_ext_config, "why_not_buildable", lambda _: None)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("MAX_JOBS", "3")
    exts, cmdclass = build_ext_config.cuda_extensions(HERE)
    assert [e.name for e in exts] == ["fastncsn._C"]
    assert sorted(exts[0].sources) == sorted(build_ext_config.SOURCES)
    assert all(os.path.isfile(os.path.join(HERE, s)) for s in exts[0].sources)
    assert "build_ext" in cmdclass
    assert "TORCH_CUDA_ARCH_LIST=9.0 with MAX_JOBS=3" in capsys.readouterr().err
