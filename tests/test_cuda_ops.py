"""The CUDA C++ backend (``fastncsn.cuda_ops`` over ``fastncsn._C``).

Without the extension (any CPU machine): the import guard, the rebuild hint, the
dispatch error and the build configuration of ``build_ext_config.py``.  The tests
marked ``gpu`` need a GPU and the built extension
(``pip install --no-build-isolation -e .``); they compare the ops with
``fastncsn.reference`` at small and at the NCSN networks' real shapes in fp32 and
bf16, with the rule "kernel error <= 2 x the error of a same-precision PyTorch run
+ atol" (errors against float64), and check determinism, the Philox noise stream,
CUDA-graph replay, the fake kernels (opcheck, torch.compile) and the dispatch.
(The kernels' logic is also checked without a GPU by ``test_csrc_emulated.py``.)
"""
import math
import os
import sys

import pytest
import torch

from csrc_build import REPO, cuda_home, find_nvcc

sys.path.insert(0, str(REPO))       # build_ext_config.py lives at the repository root
import build_ext_config  # noqa: E402
from cin_truth import assert_within_2x, cin_fp64_grads, ref_grads  # noqa: E402
from conftest import TOL  # noqa: E402
from fastncsn import cuda_ops, ops  # noqa: E402
from fastncsn.reference import langevin_noise_counters, langevin_noise_ref, langevin_step_ref  # noqa: E402

EXT_OK, EXT_REASON = cuda_ops.available("cuda")
#: GPU tests also need the built extension (skipped with the rebuild hint otherwise)
needs_ext = pytest.mark.skipif(not EXT_OK, reason=f"CUDA extension unavailable: {EXT_REASON}")


# --------------------------------------------------------------------------- without the extension


def test_import_guard_and_rebuild_hint():
    ok, reason = cuda_ops.available("cpu")
    assert not ok
    if cuda_ops._C is None:
        assert reason == cuda_ops.REBUILD_HINT
        assert "pip install --no-build-isolation ." in reason and "FASTNCSN_BUILD_CUDA=1" in reason
        assert not cuda_ops.available("cuda")[0]
    else:
        assert "CUDA tensors only" in reason
    assert not cuda_ops.available("meta")[0]


def test_backend_cuda_on_cpu_raises_with_the_reason():
    with pytest.raises(ops.BackendUnavailableError, match="cuda") as info:
        ops.resolve_backend("cuda", "cpu")
    assert cuda_ops.available("cpu")[1] in str(info.value)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ops.BackendUnavailableError):
        ops.cond_instance_norm_plus(x, torch.zeros(2, dtype=torch.long), torch.randn(1, 9), backend="cuda")
    with pytest.raises(ops.BackendUnavailableError):
        ops.langevin_step_(x, x, 0.1, 0, 0, backend="cuda")
    assert "cuda" not in ops.available_backends("cpu")


def test_wrappers_check_arguments_before_the_device():
    x = torch.randn(2, 3, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="weight"):
        cuda_ops.cond_instance_norm_plus(x, y, torch.randn(1, 5))
    with pytest.raises(ValueError, match="activation"):
        cuda_ops.cond_instance_norm_plus(x, y, torch.randn(1, 9), activation="relu")
    with pytest.raises(RuntimeError, match="unavailable for cpu"):
        cuda_ops.cond_instance_norm_plus(x, y, torch.randn(1, 9))
    with pytest.raises(TypeError, match="x"):
        cuda_ops.langevin_step_(torch.zeros(2, 3, dtype=torch.long), x, 0.1, 0, 0)


# --------------------------------------------------------------------------- build configuration


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


# --------------------------------------------------------------------------- GPU: CIN++

#: (config, C, H) of every CIN++ layer shape of the NCSN v1 networks
NETWORK_LAYERS = [("mnist", 64, 28), ("mnist", 128, 14), ("mnist", 128, 7),
                  ("cifar10", 128, 32), ("cifar10", 256, 16), ("cifar10", 256, 8)]
PLANS = {"auto": -1, "fused": 0, "split": 1}


def _cin_inputs(shape, k=3, levels=4, channels_last=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    w = torch.randn(levels, k * shape[1], generator=g)
    y = torch.randint(0, levels, (shape[0],), generator=g)
    dy = torch.randn(*shape, generator=g).to(dtype)
    if channels_last:
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    return x.cuda(), y.cuda(), w.cuda(), dy.cuda()


def _cin_op(x, y, w, dy, act, plan):
    out, mu, rstd = torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, act or "none", PLANS[plan])
    gx, gw = torch.ops.fastncsn_cuda.cin_plus_bwd(dy, x, y, w, mu, rstd, 1e-5, act or "none", PLANS[plan])
    return out, gx, gw


def _check_cin(x, y, w, dy, act, plan, dtype):
    truth = cin_fp64_grads(x, y, w, dy, act)
    ref = ref_grads(x, y, w, dy, act)
    got = _cin_op(x, y, w, dy, act, plan)
    assert got[0].stride() == x.stride() and got[1].stride() == x.stride() and got[0].dtype == x.dtype
    for g, r, t, what in zip(got, ref, truth, ("out", "grad x", "grad weight")):
        assert_within_2x(g, r, t, dtype, f"{what} ({plan})")


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("shape,k,act,channels_last", [
    ((3, 5, 7, 9), 3, None, False), ((3, 5, 7, 9), 3, "elu", True), ((3, 6, 5, 5), 2, "elu", True),
    ((2, 37, 3, 4), 3, "elu", True), ((2, 3, 45, 41), 2, None, False), ((2, 1, 4, 4), 3, "elu", False),
    ((3, 4, 1, 1), 3, "elu", False), ((6, 16, 4, 4), 3, "elu", True),
])
def test_gpu_cin_small_shapes(shape, k, act, channels_last, plan):
    x, y, w, dy = _cin_inputs(shape, k=k, levels=3, channels_last=channels_last)
    _check_cin(x, y, w, dy, act, plan, torch.float32)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True),
                                                 (torch.bfloat16, False), (torch.float16, True)])
@pytest.mark.parametrize("config,c,h", NETWORK_LAYERS)
def test_gpu_cin_network_shapes(config, c, h, dtype, channels_last):
    x, y, w, dy = _cin_inputs((128, c, h, h), levels=10, channels_last=channels_last, dtype=dtype)
    for plan in ("auto", "fused", "split"):
        _check_cin(x, y, w, dy, "elu", plan, dtype)
    # the public function with autograd
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = cuda_ops.cond_instance_norm_plus(xk, y, wk, activation="elu")
    out.backward(dy)
    got = _cin_op(x, y, w, dy, "elu", "auto")
    assert torch.equal(out, got[0]) and torch.equal(xk.grad, got[1]) and torch.equal(wk.grad, got[2])


@pytest.mark.gpu
@needs_ext
def test_gpu_cin_deterministic():
    x, y, w, dy = _cin_inputs((1000, 128, 32, 32), levels=10, dtype=torch.bfloat16, channels_last=True)
    for plan in ("auto", "split"):
        runs = [_cin_op(x, y, w, dy, "elu", plan) for _ in range(3)]
        for other in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.gpu
@needs_ext
def test_gpu_cin_public_function_layouts_and_levels():
    x, y, w, _ = _cin_inputs((4, 6, 5, 7))
    for inp in (x, x.to(memory_format=torch.channels_last), x[:, :, ::2]):       # NCHW, CL, strided (copied)
        for lvl in (y, y.int()):
            xk, wk = inp.clone().requires_grad_(), w.clone().requires_grad_()
            out = cuda_ops.cond_instance_norm_plus(xk, lvl, wk)
            out.sum().backward()                                      # grad_out arrives expanded (stride 0)
            ref_out, ref_gx, ref_gw = ref_grads(inp, y, w, torch.ones_like(inp), None)
            torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
            torch.testing.assert_close(xk.grad, ref_gx, **TOL[torch.float32])
            torch.testing.assert_close(wk.grad, ref_gw, rtol=1e-4, atol=1e-4)
    zero = cuda_ops.cond_instance_norm_plus(x[:0], y[:0], w)                   # empty batch
    assert zero.shape == (0, 6, 5, 7)


@pytest.mark.gpu
@needs_ext
def test_gpu_cin_bad_args():
    x, y, w, _ = _cin_inputs((2, 4, 5, 5))
    with pytest.raises(TypeError, match="x"):
        cuda_ops.cond_instance_norm_plus(x.double(), y, w)
    with pytest.raises(ValueError, match="level_index"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y[:1], w, 1e-5, "none")
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "relu")
    with pytest.raises(ValueError, match="plan"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "none", 7)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w.cpu(), 1e-5, "none")


# --------------------------------------------------------------------------- GPU: Langevin step


def _langevin_inputs(shape, channels_last=False, score_dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    score = torch.randn(*shape, generator=g).to(score_dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.cuda(), score.cuda()


@pytest.mark.gpu
@needs_ext
def test_gpu_langevin_noise_is_the_reference_stream():
    like = torch.empty(5, 3, 9, 7, device="cuda").to(memory_format=torch.channels_last)
    for seed, offset in [(0, 0), (-3, 12345), (2 ** 40 + 7, 2 ** 33 - 2)]:
        z = cuda_ops.langevin_noise(seed, offset, like)
        assert z.stride() == like.stride()
        torch.testing.assert_close(z, langevin_noise_ref(seed, offset, like), rtol=1e-5, atol=1e-5)
    from fastncsn import kernels
    if kernels.available("cuda")[0]:                                  # the Triton backend draws the same noise
        torch.testing.assert_close(cuda_ops.langevin_noise(9, 3, like), kernels.langevin_noise(9, 3, like),
                                   rtol=1e-6, atol=1e-6)
    n = 1 << 24
    seed = torch.tensor(2024, device="cuda")
    offset = torch.tensor(3 * 2 ** 31, device="cuda")
    big = cuda_ops.langevin_noise(seed, offset, torch.empty(n, device="cuda")).double()
    nxt = cuda_ops.langevin_noise(seed, offset + langevin_noise_counters(n), torch.empty(n, device="cuda")).double()
    assert abs(big.mean().item()) < 5 / math.sqrt(n)
    assert abs(big.var().item() - 1) < 5 * math.sqrt(2 / n)
    for lag in (1, 2, 3, 4, 5):
        assert abs((big[:-lag] * big[lag:]).mean().item()) < 5 / math.sqrt(n)
    assert abs((big * nxt).mean().item()) < 5 / math.sqrt(n)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("shape,channels_last,score_dtype,per_sample,blend", [
    ((3, 4, 5, 7), False, torch.float32, False, None),
    ((3, 4, 5, 7), True, torch.bfloat16, True, "sample"),
    ((3, 4, 5, 7), False, torch.bfloat16, True, "full"),
    ((3, 4, 5, 7), True, torch.float16, False, "full"),
    ((3, 5, 4001), False, torch.float32, True, "sample"),
    ((4, 3), False, torch.bfloat16, True, "sample"),
    ((1000, 3, 32, 32), False, torch.bfloat16, True, None),
    ((1000, 1, 28, 28), True, torch.float32, True, "sample"),
])
def test_gpu_langevin_step_matches_reference(shape, channels_last, score_dtype, per_sample, blend):
    x, score = _langevin_inputs(shape, channels_last=channels_last, score_dtype=score_dtype)
    n = x.shape[0]
    a = torch.linspace(0.05, 0.3, n, device="cuda") if per_sample else torch.tensor(0.2, device="cuda")
    seed = torch.tensor(1234, device="cuda")
    offset = torch.tensor(2 ** 32 + 17, device="cuda")
    mask = known = clamp = None
    if blend is not None:
        g = torch.Generator().manual_seed(2)
        mshape = x.shape[1:] if blend == "sample" else x.shape
        mask = (torch.rand(mshape, generator=g) > 0.5).cuda()
        known = torch.randn(mshape, generator=g).cuda()
        clamp = (-1.5, 1.0)
    z = langevin_noise_ref(seed, offset, x)
    expected = langevin_step_ref(x, score, a, z, mask=mask, known=known, clamp=clamp)
    out = cuda_ops.langevin_step_(x.clone(memory_format=torch.preserve_format), score, a, seed, offset,
                                  mask=mask, known=known, clamp=clamp)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    assert out.stride() == x.stride()


@pytest.mark.gpu
@needs_ext
def test_gpu_langevin_same_seed_same_result_and_explicit_noise():
    x, score = _langevin_inputs((64, 3, 32, 32), score_dtype=torch.bfloat16)
    a = torch.full((64,), 1e-3, device="cuda")
    first = cuda_ops.langevin_step_(x.clone(), score, a, 5, 100)
    again = cuda_ops.langevin_step_(x.clone(), score, a, 5, 100)
    other = cuda_ops.langevin_step_(x.clone(), score, a, 6, 100)
    assert torch.equal(first, again) and not torch.equal(first, other)
    noise = torch.randn_like(x)
    got = cuda_ops.langevin_step_(x.clone(), score, 0.1, None, None, noise=noise, clamp=(None, 0.5))
    torch.testing.assert_close(got, langevin_step_ref(x, score, 0.1, noise).clamp(max=0.5), **TOL[torch.float32])
    from fastncsn import kernels
    if kernels.available("cuda")[0]:                                  # same step as the Triton backend
        torch.testing.assert_close(first, kernels.langevin_step_(x.clone(), score, a, 5, 100), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@needs_ext
def test_gpu_langevin_step_in_cuda_graph():
    """A captured step draws new noise on each replay when the offset tensor is advanced on the device,
    and reads a step size changed between replays."""
    x0, score = _langevin_inputs((64, 3, 32, 32))
    x = x0.clone()
    a = torch.tensor(0.01, device="cuda")
    seed = torch.tensor(1, device="cuda")
    offset = torch.tensor(0, device="cuda")
    inc = langevin_noise_counters(x.numel())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cuda_ops.langevin_step_(x, score, a, seed, offset)           # warm-up (caches the SM count)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cuda_ops.langevin_step_(x, score, a, seed, offset)
        offset.add_(inc)
    x.copy_(x0)
    offset.zero_()
    expected = x0.clone()
    states = []
    for step in range(3):
        a.fill_(0.01 * (step + 1))
        graph.replay()
        states.append(x.clone())
        z = langevin_noise_ref(1, step * inc, expected)
        expected = langevin_step_ref(expected, score, 0.01 * (step + 1), z)
    torch.cuda.synchronize()
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    increments = [states[0] - x0] + [b - a_ for a_, b in zip(states, states[1:])]
    assert not torch.allclose(increments[1], increments[2])           # new noise per replay


@pytest.mark.gpu
@needs_ext
def test_gpu_langevin_bad_args():
    x, score = _langevin_inputs((2, 4, 3, 3))
    with pytest.raises(ValueError, match="x"):
        cuda_ops.langevin_step_(x.transpose(2, 3), score.transpose(2, 3), 0.1, 0, 0)
    with pytest.raises(ValueError, match="score"):
        cuda_ops.langevin_step_(x, score[:1], 0.1, 0, 0)
    with pytest.raises(ValueError, match="step_size"):
        cuda_ops.langevin_step_(x, score, torch.ones(3, device="cuda"), 0, 0)
    with pytest.raises(ValueError, match="mask"):
        cuda_ops.langevin_step_(x, score, 0.1, 0, 0, mask=torch.ones_like(x))
    with pytest.raises(TypeError, match="seed"):
        cuda_ops.langevin_step_(x, score, 0.1, torch.tensor(1.0, device="cuda"), 0)


# --------------------------------------------------------------------------- GPU: registration, dispatch


@pytest.mark.gpu
@needs_ext
def test_gpu_opcheck():
    x, y, w, dy = _cin_inputs((2, 3, 4, 5), levels=3)
    xl, score = _langevin_inputs((2, 3, 4, 5), channels_last=True, score_dtype=torch.bfloat16)
    out, mu, rstd = torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "elu")
    i64 = dict(dtype=torch.int64, device="cuda")
    samples = [
        (torch.ops.fastncsn_cuda.cin_plus_fwd, (x.clone().requires_grad_(), y, w.clone().requires_grad_(), 1e-5, "elu")),
        (torch.ops.fastncsn_cuda.cin_plus_fwd, (x.to(memory_format=torch.channels_last).requires_grad_(), y,
                                                w[:, :6].clone().requires_grad_(), 1e-5, "none", 1)),
        (torch.ops.fastncsn_cuda.cin_plus_bwd, (dy, x, y, w, mu, rstd, 1e-5, "elu")),
        (torch.ops.fastncsn_cuda.langevin_step_, (xl, score, torch.tensor([0.1, 0.2], device="cuda"),
                                                  torch.tensor(3, **i64), torch.tensor(9, **i64), None,
                                                  torch.ones(3, 4, 5, device="cuda") > 0.5, torch.zeros_like(xl),
                                                  None, 2.0)),
        (torch.ops.fastncsn_cuda.langevin_noise, (torch.tensor(3, **i64), torch.tensor(9, **i64), xl)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.gpu
@needs_ext
def test_gpu_torch_compile_fullgraph():
    def cin_loss(x, y, w):
        return cuda_ops.cond_instance_norm_plus(x, y, w, activation="elu").square().sum()

    def step(x, score, a, seed, offset):
        cuda_ops.langevin_step_(x, score, a, seed, offset, clamp=(-1.0, 1.0))
        return x * 2

    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    grads = []
    for fn in (cin_loss, torch.compile(cin_loss, fullgraph=True, backend="aot_eager")):
        xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xk, y, wk)
        loss.backward()
        grads.append((loss.detach(), xk.grad, wk.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    xs, score = _langevin_inputs((2, 3, 4, 5))
    args = (score, torch.tensor([0.1, 0.2], device="cuda"), torch.tensor(3, device="cuda"),
            torch.tensor(4, device="cuda"))
    x1, x2 = xs.clone(), xs.clone()
    torch.testing.assert_close(torch.compile(step, fullgraph=True, backend="aot_eager")(x1, *args), step(x2, *args))
    torch.testing.assert_close(x1, x2)


@pytest.mark.gpu
@needs_ext
def test_gpu_ops_dispatch_to_cuda_matches_torch():
    assert "cuda" in ops.available_backends("cuda")
    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    torch.testing.assert_close(ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="cuda"),
                               ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="torch"),
                               **TOL[torch.float32])
    xs, score = _langevin_inputs((3, 4, 5, 7))
    seed, offset = torch.tensor(1, device="cuda"), torch.tensor(2, device="cuda")
    got = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend="cuda")
    want = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_ext
def test_gpu_network_forward_bf16_matches_reference():
    from fastncsn.models import CondRefineNetDilated
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=32, channels=3, ngf=128, num_levels=10).cuda().eval()
    x = torch.rand(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    with torch.no_grad():
        truth = net.set_backend("torch")(x, y).double()
        bf = net.to(torch.bfloat16, memory_format=torch.channels_last)
        xb = x.to(torch.bfloat16, memory_format=torch.channels_last)
        torch_bf16 = bf.set_backend("torch")(xb, y)
        cuda_bf16 = bf.set_backend("cuda")(xb, y)
    assert_within_2x(cuda_bf16, torch_bf16, truth, torch.bfloat16, "network output")
