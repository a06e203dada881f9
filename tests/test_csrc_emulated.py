"""The CUDA kernels of ``csrc/`` run on the CPU, against the references in ``fastncsn.ops``.

``csrc/*.cu`` are compiled as plain C++ (g++) with ``csrc_host/host_emulation.h``,
which runs every CUDA thread of a block as a ``std::thread`` with a real barrier for
``__syncthreads``; ``csrc_host/driver.cpp`` exposes the raw-pointer launchers to
ctypes.  This checks the kernels' logic (indexing, both launch plans, both layouts,
reductions, formulas, the Philox stream, determinism) on a machine without a GPU;
the GPU itself is checked by ``test_cond_instance_norm.py`` and ``test_langevin_step.py`` (marked ``gpu``).  Skips when g++
or the CUDA headers are missing.
"""
import ctypes
import shutil

import pytest
import torch

from conftest import TOL
from csrc_build import build_host_emulation, cuda_include_dir
from cin_truth import assert_within_2x, cin_fp64_grads, ref_grads
from fastncsn.ops import langevin_noise_counters, langevin_noise_ref, langevin_step_ref
from fastncsn.ops.langevin import philox4x32

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or cuda_include_dir() is None,
                                reason="needs g++ and the CUDA headers (cuda_runtime.h, cuda_bf16.h)")

DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
PLANS = {"auto": -1, "fused": 0, "split": 1}
#: SM count the emulated launches plan for (batches smaller than this split automatically)
NUM_SMS = 4


def _p(t):
    return ctypes.c_void_p(None if t is None else t.data_ptr())


class Emu:
    """The launchers of csrc/ called on CPU tensors (dense inputs; shapes as the torch ops)."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))

    @staticmethod
    def _cin_dims(x, weight, level, act, has_beta):
        n, c, h, w = x.shape
        stride_p = x.stride(3) if w > 1 else x.stride(2) if h > 1 else 1
        dims = (ctypes.c_int64 * 7)(n, c, h * w, x.stride(0), x.stride(1), stride_p, weight.shape[0])
        flags = int(has_beta) | (int(level.dtype == torch.int64) << 1) | (int(act == "elu") << 2)
        return dims, flags

    def cin_fwd(self, x, level, weight, act=None, plan="auto", eps=1e-5):
        n, c = x.shape[:2]
        out = torch.empty_like(x)
        mu, rstd = torch.empty(n, c), torch.empty(n, c)
        wf = weight.float().contiguous()
        dims, flags = self._cin_dims(x, wf, level, act, weight.shape[1] == 3 * c)
        rc = self.lib.emu_cin_fwd(_p(x), _p(out), _p(level), _p(wf), _p(mu), _p(rstd), DTYPE_CODE[x.dtype], dims,
                                  flags, ctypes.c_float(eps), PLANS[plan], NUM_SMS)
        assert rc == 0, f"cin_plus_fwd returned CUDA error {rc}"
        return out, mu, rstd

    def cin_bwd(self, dy, x, level, weight, mu, rstd, act=None, plan="auto", eps=1e-5):
        n, c = x.shape[:2]
        k = weight.shape[1]
        dx = torch.empty_like(x)
        sums, part = torch.full((2, n, c), float("nan")), torch.full((n, k), float("nan"))
        gw = torch.full((weight.shape[0], k), float("nan"))
        wf = weight.float().contiguous()
        dims, flags = self._cin_dims(x, wf, level, act, k == 3 * c)
        assert dy.stride() == x.stride()
        rc = self.lib.emu_cin_bwd(_p(dy), _p(x), _p(dx), _p(level), _p(wf), _p(mu), _p(rstd), _p(sums[0]),
                                  _p(sums[1]), _p(part), _p(gw), DTYPE_CODE[x.dtype], dims, flags,
                                  ctypes.c_float(eps), PLANS[plan], NUM_SMS)
        assert rc == 0, f"cin_plus_bwd returned CUDA error {rc}"
        return dx, gw

    def langevin_step_(self, x, score, step, seed, offset, noise=None, mask=None, known=None, clamp=(None, None),
                       mask_bcast=False, known_bcast=False):
        step = step.float().reshape(-1)
        seed_t = torch.tensor([seed], dtype=torch.int64)
        offset_t = torch.tensor([offset], dtype=torch.int64)
        sizes = (ctypes.c_int64 * 2)(x.numel(), x.numel() // x.shape[0])
        lo, hi = clamp
        flags = (int(step.numel() > 1) | int(mask_bcast) << 1 | int(known_bcast) << 2 | int(lo is not None) << 3
                 | int(hi is not None) << 4)
        rc = self.lib.emu_langevin_step(_p(x), DTYPE_CODE[x.dtype], _p(score), DTYPE_CODE[score.dtype], _p(noise),
                                        _p(step), _p(seed_t), _p(offset_t), _p(mask), _p(known), sizes, flags,
                                        ctypes.c_float(lo or 0.0), ctypes.c_float(hi or 0.0), NUM_SMS)
        assert rc == 0, f"langevin_step returned CUDA error {rc}"
        return x

    def langevin_noise(self, seed, offset, numel):
        out = torch.empty(numel)
        seed_t, offset_t = torch.tensor([seed]), torch.tensor([offset])      # alive during the call
        rc = self.lib.emu_langevin_noise(_p(out), ctypes.c_int64(numel), _p(seed_t), _p(offset_t), NUM_SMS)
        assert rc == 0
        return out

    def philox(self, seed, counter):
        bits, z = (ctypes.c_uint32 * 4)(), (ctypes.c_float * 4)()
        self.lib.emu_philox(ctypes.c_uint64(seed % 2 ** 64), ctypes.c_uint64(counter % 2 ** 64), bits, z)
        return list(bits), list(z)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    torch.set_num_threads(1)
    return Emu(build_host_emulation(tmp_path_factory.mktemp("csrc_emu")))


def _cin_inputs(shape, k=3, levels=4, channels_last=False, dtype=torch.float32, seed=0, level_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(levels, k * shape[1], generator=g)
    y = torch.randint(0, levels, (shape[0],), generator=g).to(level_dtype)
    dy = torch.randn(*shape, generator=g).to(dtype)
    if channels_last:
        dy = dy.to(memory_format=torch.channels_last)
    return x, y, w, dy


CIN_CASES = [
    # shape, weight columns per channel, activation, channels_last, plan
    pytest.param((3, 40, 5, 6), 3, None, False, "auto", id="nchw-auto-split"),
    pytest.param((5, 5, 7, 9), 3, "elu", False, "auto", id="nchw-auto-fused"),
    pytest.param((3, 5, 7, 9), 3, "elu", True, "fused", id="cl-fused-elu"),
    pytest.param((3, 6, 5, 5), 2, "elu", True, "split", id="cl-split-2C"),
    pytest.param((2, 37, 3, 4), 3, "elu", True, "split", id="cl-split-uneven-groups"),
    pytest.param((2, 3, 45, 41), 2, None, False, "fused", id="nchw-many-pixels-2C"),
    pytest.param((2, 1, 4, 4), 3, "elu", False, "auto", id="C1"),
    pytest.param((2, 1, 5, 3), 2, None, False, "split", id="C1-split"),
    pytest.param((3, 4, 1, 1), 3, "elu", False, "fused", id="1x1-pixels"),
    pytest.param((6, 16, 4, 4), 3, "elu", True, "auto", id="cl-shared-levels"),
]


@pytest.mark.parametrize("shape,k,act,channels_last,plan", CIN_CASES)
def test_emulated_cin_matches_reference(emu, shape, k, act, channels_last, plan):
    x, y, w, dy = _cin_inputs(shape, k=k, levels=3, channels_last=channels_last)
    out, mu, rstd = emu.cin_fwd(x, y, w, act, plan)
    var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mu, mean, **TOL[torch.float32])
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5), **TOL[torch.float32])
    assert out.stride() == x.stride()
    gx, gw = emu.cin_bwd(dy, x, y, w, mu, rstd, act, plan)
    # few channels with close means make t ill-conditioned: judge against float64 (2x rule)
    for got, ref, truth, what in zip((out, gx, gw), ref_grads(x, y, w, dy, act), cin_fp64_grads(x, y, w, dy, act),
                                     ("out", "grad x", "grad weight")):
        assert_within_2x(got, ref, truth, torch.float32, what)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_emulated_cin_half_dtypes(emu, dtype, channels_last):
    x, y, w, dy = _cin_inputs((3, 6, 5, 7), channels_last=channels_last, dtype=dtype, level_dtype=torch.int32)
    out, mu, rstd = emu.cin_fwd(x, y, w, "elu")
    gx, gw = emu.cin_bwd(dy, x, y, w, mu, rstd, "elu")
    ref_out, ref_gx, ref_gw = ref_grads(x, y.long(), w, dy, "elu")
    assert out.dtype == dtype and gx.dtype == dtype and out.stride() == x.stride()
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(gx, ref_gx, **TOL[dtype])
    torch.testing.assert_close(gw, ref_gw, **TOL[dtype])


def test_emulated_cin_network_layer_shape(emu):
    """A real NCSN layer shape (MNIST ngf 64: 64x28x28) in both layouts and plans, bf16 channels-last too."""
    for channels_last, dtype in [(False, torch.float32), (True, torch.bfloat16)]:
        x, y, w, dy = _cin_inputs((2, 64, 28, 28), levels=10, channels_last=channels_last, dtype=dtype)
        ref_out, ref_gx, ref_gw = ref_grads(x, y, w, dy, "elu")
        truth = cin_fp64_grads(x, y, w, dy, "elu")
        for plan in ("fused", "split"):
            out, mu, rstd = emu.cin_fwd(x, y, w, "elu", plan)
            gx, gw = emu.cin_bwd(dy, x, y, w, mu, rstd, "elu", plan)
            for got, ref, tru, what in zip((out, gx, gw), (ref_out, ref_gx, ref_gw), truth, ("out", "gx", "gw")):
                assert_within_2x(got, ref, tru, dtype, f"{what} {plan}")


def test_emulated_cin_deterministic_and_unused_levels_zero(emu):
    x, _, w, dy = _cin_inputs((9, 4, 5, 5))
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1, 0])
    runs = []
    for plan in ("fused", "fused", "split"):
        out, mu, rstd = emu.cin_fwd(x, y, w, "elu", plan)
        runs.append((out, mu, rstd, *emu.cin_bwd(dy, x, y, w, mu, rstd, "elu", plan)))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))      # same plan: bitwise
    assert torch.equal(runs[0][1], runs[2][1]) and torch.equal(runs[0][2], runs[2][2])   # same statistics
    assert torch.equal(runs[0][4][2:], torch.zeros_like(runs[0][4][2:]))    # levels 2, 3 unused: zero rows


# --------------------------------------------------------------------------- Langevin step


def test_emulated_philox_words_and_normals_match_reference(emu):
    for seed, counter in [(0, 0), (1234, 7), (-3, 2 ** 32 + 17), (2 ** 40 + 7, 2 ** 33 - 2), (-1, 2 ** 64 - 1)]:
        bits, z = emu.philox(seed, counter)
        s = torch.tensor(seed if seed < 2 ** 63 else seed - 2 ** 64, dtype=torch.int64)
        c = torch.tensor([counter if counter < 2 ** 63 else counter - 2 ** 64], dtype=torch.int64)
        words = philox4x32(s, c & 0xFFFFFFFF, (c >> 32) & 0xFFFFFFFF)
        assert bits == [int(w_) for w_ in words], (seed, counter)


def test_emulated_noise_matches_reference_stream(emu):
    like = torch.empty(5, 3, 9, 7)
    for seed, offset in [(0, 0), (-3, 12345), (2 ** 40 + 7, 2 ** 33 - 2)]:
        z = emu.langevin_noise(seed, offset, like.numel()).reshape(like.shape)
        torch.testing.assert_close(z, langevin_noise_ref(seed, offset, like), rtol=1e-5, atol=1e-5)
    numel = 48                                           # a multiple of 4: the next step starts a new counter
    both = emu.langevin_noise(11, 5, 2 * numel)
    second = emu.langevin_noise(11, 5 + langevin_noise_counters(numel), numel)
    assert torch.equal(both[numel:], second)             # advancing the offset continues the stream


@pytest.mark.parametrize("shape,channels_last,x_dtype,score_dtype,per_sample,blend", [
    ((3, 4, 5, 7), False, torch.float32, torch.float32, False, None),
    ((3, 4, 5, 7), True, torch.float32, torch.bfloat16, True, "sample"),
    ((3, 4, 5, 7), False, torch.float32, torch.float16, True, "full"),
    ((3, 5, 4001), False, torch.float32, torch.float32, True, "sample"),   # samples span many blocks
    ((4, 3), False, torch.float32, torch.bfloat16, True, "sample"),        # samples shorter than a group of 4
    ((3, 2, 3, 3), False, torch.bfloat16, torch.bfloat16, False, "full"),
])
def test_emulated_langevin_step_matches_reference(emu, shape, channels_last, x_dtype, score_dtype, per_sample, blend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g).to(x_dtype)
    score = torch.randn(*shape, generator=g).to(score_dtype)
    if channels_last:
        x, score = (t.to(memory_format=torch.channels_last) for t in (x, score))
    n = shape[0]
    a = torch.linspace(0.05, 0.3, n) if per_sample else torch.tensor(0.2)
    seed, offset = 1234, 2 ** 32 - 3                                  # counters cross 32 bits
    mask = known = None
    lo, hi = -1.5, 1.0
    if blend is not None:
        mshape = x.shape[1:] if blend == "sample" else x.shape
        mask = torch.rand(mshape, generator=g) > 0.5
        known = torch.randn(mshape, generator=g).to(x_dtype)
        if channels_last and blend == "full":
            mask, known = (t.to(memory_format=torch.channels_last) for t in (mask, known))
        if channels_last and blend == "sample":                       # one sample in x's per-sample layout
            mask, known = (t[None].to(memory_format=torch.channels_last)[0] for t in (mask, known))
    z = langevin_noise_ref(seed, offset, x)
    expected = langevin_step_ref(x.float(), score, a, z, mask=mask, known=known,
                                 clamp=None if blend is None else (lo, hi)).to(x_dtype)
    got = emu.langevin_step_(x.clone(memory_format=torch.preserve_format), score, a, seed, offset,
                             mask=None if mask is None else mask.view(torch.uint8), known=known,
                             clamp=(None, None) if blend is None else (lo, hi),
                             mask_bcast=blend == "sample", known_bcast=blend == "sample")
    torch.testing.assert_close(got, expected, **TOL[x_dtype])


def test_emulated_langevin_unaligned_and_explicit_noise(emu):
    """A state whose storage is not 16-byte aligned takes the scalar path; explicit noise; one-sided clamp."""
    base = torch.randn(1 + 4 * 33)
    x = base[1:].view(4, 33)                                          # data pointer 4 bytes past alignment
    score = torch.randn(4, 33)
    noise = torch.randn(4, 33)
    expected = langevin_step_ref(x, score, 0.1, noise).clamp(max=0.5)
    got = emu.langevin_step_(x.clone(), score, torch.tensor(0.1), 0, 0, noise=noise, clamp=(None, 0.5))
    torch.testing.assert_close(got, expected, **TOL[torch.float32])
    x_un = x.clone()
    x_un_view = torch.empty(1 + x.numel())[1:].view(4, 33).copy_(x)
    emu.langevin_step_(x_un_view, score, torch.tensor(0.1), 7, 3)
    emu.langevin_step_(x_un, score, torch.tensor(0.1), 7, 3)
    assert torch.equal(x_un_view, x_un)                               # vector and scalar paths agree bitwise
