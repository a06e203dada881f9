"""Build script for fastncsn.

A plain ``pip install .`` works on any machine with PyTorch.  When torch has
CUDA and ``nvcc`` is found, the CUDA C++ ops in ``csrc/`` are compiled as
``fastncsn._C`` (see ``_cuda_extensions``).  ``FASTNCSN_BUILD_CUDA=0`` forces
the extension off, ``FASTNCSN_BUILD_CUDA=1`` forces it on (and fails loudly if
it cannot be built).
"""
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_extensions():
    """Return (ext_modules, cmdclass) for the CUDA extension, or ([], {})."""
    sys.path.insert(0, HERE)
    try:
        from build_ext_config import cuda_extensions  # noqa: WPS433 (local build helper)
    except ImportError:
        return [], {}
    finally:
        sys.path.pop(0)
    return cuda_extensions(HERE)


ext_modules, cmdclass = _cuda_extensions()

setup(
    name="fastncsn",
    version="0.1.0",
    description="Fast, tested Noise Conditional Score Networks (NCSN) for PyTorch",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastncsn", "fastncsn.*"]),
    package_data={"fastncsn": ["assets/*.pt", "assets/*.json", "ops/auto_table.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "pillow",
        "scikit-learn",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "plots": ["matplotlib"],
        # what CI tests with: Triton too on Linux (its kernels' tests run under the interpreter on a CPU);
        # .ci/run installs the CPU torch the README names, then this extra as the README does (no triton pin:
        # CI tests the Triton a newcomer resolves; 3.7.1, the device image's, passed the interpreter tests 2026-12-02)
        "test": ["pytest", "pytest-xdist", "pytest-benchmark", "scipy", "matplotlib", 'triton>=3.0; platform_system == "Linux"'],
    },
    entry_points={"console_scripts": ["fastncsn=fastncsn.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
