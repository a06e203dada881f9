"""Compile the Triton launches for sm_90 without a GPU (run as a script; see test_triton_compile.py).

``python tests/triton_aot.py`` compiles the CIN++ launches; ``python tests/triton_aot.py avg_pool`` the
5x5 average pool's launches, printing ptxas's registers and spills per launch.

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the JIT functions the compiler needs),
hence a separate process.  Exit status 1 and a list on stderr when a launch does not compile.
"""
import itertools
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastncsn.ops.triton import avg_pool as pool
from fastncsn.ops.triton import cond_instance_norm as cin

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.int64: "i64", torch.int32: "i32"}
_OPTIONS = ("num_warps", "num_stages")


class _Capture:
    """Stands in for a ``@triton.jit`` function: records ``kernel[grid](*args, **kw)`` instead of launching."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((self.fn, args, kw))


def _source(fn, args, kw):
    """(ASTSource, options, key) for one captured launch, specialised as the JIT would."""
    names = fn.arg_names
    signature, constants, attrs = {}, {}, {}
    for i, (name, a) in enumerate(zip(names, args)):
        if isinstance(a, torch.Tensor):
            signature[name] = "*" + _TYPES[a.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, bool):
            signature[name] = "i1"
        elif isinstance(a, int) and a == 1:
            signature[name] = "constexpr"
            constants[(i,)] = 1
        elif isinstance(a, int):
            signature[name] = "i32" if abs(a) < 2**31 else "i64"
            if a % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(a, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot type {type(a)}")
    options = {k: v for k, v in kw.items() if k in _OPTIONS}
    for name, v in kw.items():
        if name not in _OPTIONS:
            signature[name] = "constexpr"
            constants[(names.index(name),)] = v
    key = (fn.__name__, tuple(sorted(signature.items())), tuple(sorted((k, str(v)) for k, v in constants.items())),
           tuple(sorted(attrs)), tuple(sorted(options.items())))
    return ASTSource(fn, signature, constants, attrs), options, key


def _cin_launches():
    calls = []
    for name in ("_cin_fwd_kernel", "_cin_bwd_kernel", "_level_sum_kernel"):
        setattr(cin, name, _Capture(getattr(cin, name), calls))
    # the MNIST network's largest layers at the training batch: every launch plan (fused, split,
    # one tile), both layouts, fp32 and bf16, with and without ELU, with and without beta
    for (n, c, h, w), dtype, channels_last, activation, k, split in itertools.product(
            [(128, 64, 28, 28), (128, 128, 7, 7)], (torch.float32, torch.bfloat16), (False, True),
            ("none", "elu"), (2, 3), (None, True)):
        x = torch.empty(n, c, h, w, dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        levels = torch.zeros(n, dtype=torch.long)
        weight = torch.empty(10, k * c)
        stats = torch.empty(n, c)
        cin.launch_cin_fwd(x, levels, weight, 1e-5, activation, split=split)
        cin.launch_cin_bwd(torch.empty_like(x), x, levels, weight, stats, stats, 1e-5, activation, split=split)
        # the fused glue (issue 15 item 3) as the network uses it (ELU, beta): residual add, folded bias
        # (fp32 conv bias), both
        if activation == "elu" and k == 3:
            for residual, bias in ((torch.empty_like(x), None), (None, torch.empty(c)),
                                   (torch.empty_like(x), torch.empty(c))):
                cin.launch_cin_glue_fwd(x, residual, bias, levels, weight, 1e-5, activation, split=split)
    return calls


def _avg_pool_launches():
    calls = []
    pool._avg_pool5x5_kernel = _Capture(pool._avg_pool5x5_kernel, calls)
    # every chained-residual-pooling shape of the MNIST (ngf 64) and CIFAR-10 (ngf 128) networks at the
    # sampling batch, in the fast layout (bf16/fp16 channels-last) and the reference one (fp32 NCHW)
    for (c, h), (dtype, channels_last) in itertools.product(
            [(128, 14), (64, 14), (64, 28), (256, 16), (128, 16), (128, 32)],
            [(torch.bfloat16, True), (torch.float16, True), (torch.float32, False)]):
        x = torch.empty(1000, c, h, h, dtype=dtype)
        pool.launch_avg_pool5x5(x.to(memory_format=torch.channels_last) if channels_last else x)
    return calls


def _ptxas_usage(ptx: str) -> str:
    """ptxas's "registers, spills" line for the sm_90 compile of ``ptx`` (Triton's bundled ptxas)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        try:
            ptxas = get_ptxas(90).path
        except TypeError:                      # older Triton: no arch argument
            ptxas = get_ptxas()[0]
    except Exception:
        ptxas = "ptxas"
    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        proc = subprocess.run([ptxas, "-v", f"-arch={arch.group(1) if arch else 'sm_90a'}", f.name, "-o", "/dev/null"],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if not regs:
        return f"ptxas -v gave no register count ({text.strip()[-120:]})"
    return (f"{regs.group(1)} registers, "
            + (f"{spills.group(1)} B spill stores, {spills.group(2)} B spill loads" if spills else "spills n/a"))


def main() -> int:
    which = sys.argv[1] if len(sys.argv) > 1 else "cin"
    if which not in ("cin", "avg_pool"):
        print(f"usage: triton_aot.py [cin|avg_pool], got {which!r}", file=sys.stderr)
        return 2
    calls = _cin_launches() if which == "cin" else _avg_pool_launches()
    sources = {}
    for fn, args, kw in calls:
        src, options, key = _source(fn, args, kw)
        sources.setdefault(key, (src, options))
    failed = []
    for key, (src, options) in sources.items():
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
            if which == "avg_pool":
                consts = {src.fn.arg_names[k[0]] if isinstance(k, tuple) else k: v for k, v in src.constants.items()}
                print(f"{key[0]} x {src.signature['x_ptr']} {consts} {options}: {_ptxas_usage(compiled.asm['ptx'])}")
        except Exception as exc:  # the compiler raises RuntimeError/CompilationError; report them all
            failed.append(f"{key[0]} {dict(key[2])} {options}: {str(exc).splitlines()[0][:160]}")
    print(f"{len(sources)} distinct launches compiled for sm_90, {len(failed)} failed (triton {triton.__version__})")
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed or len(sources) < (20 if which == "cin" else 6) else 0


if __name__ == "__main__":
    sys.exit(main())
