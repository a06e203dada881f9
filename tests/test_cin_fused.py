"""The glue fused into CIN++ (issue 15 item 3): the folded conv bias (``cond_instance_norm_plus(...,
bias=)``), the fused residual add (``add_cond_instance_norm_plus``) and the network switch
(``fastncsn.nn.set_fused_glue``).

Each fused form is compared, forward and backward, with autograd through its reference
composition (``CIN++(x + b)``, ``s = x + r; CIN++(s)``) by the rule "kernel error <= 2 x the error
of a same-precision PyTorch run + atol" against a float64 evaluation (``cin_truth``).  The Triton
kernels run under the interpreter on the CPU; the ``gpu`` tests repeat the check at the MNIST
network's batch-1000 layer shapes.
"""
import pytest
import torch

from cin_truth import assert_within_2x, cin_fp64
from conftest import DEV, TOL, fast_backend
from fastncsn import ops
from fastncsn.ops import BackendUnavailableError, add_cond_instance_norm_plus, add_cond_instance_norm_plus_ref

#: forms of the fused glue: (with a residual, with a bias)
FORMS = {"bias": (False, True), "residual": (True, False), "both": (True, True)}
#: odd sizes, one channel, batch 1 and 3, both layouts
SHAPES = [((1, 1, 7, 7), False), ((3, 3, 1, 1), False), ((3, 3, 3, 5), True)]


def _inputs(shape, form, dtype, channels_last, device=DEV, seed=0, levels=4):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    t = [(torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype) for _ in range(4)]
    if channels_last:
        t = [v.contiguous(memory_format=torch.channels_last) for v in t]
    x, r, dy, ds = (v.to(device) for v in t)
    has_res, has_bias = FORMS[form]
    b = (torch.randn(c, generator=g) * 2).to(device) if has_bias else None      # an fp32 conv bias
    w = torch.randn(levels, 3 * c, generator=g).to(device)
    y = torch.randint(0, levels, (n,), generator=g).to(device)
    return x, (r if has_res else None), b, y, w, dy, (ds if has_res else None)


def _run(fn, x, r, b, y, w, dy, ds, act):
    """(outputs, grads of x, r, b, w) of ``fn(x, r, b, y, w) -> (s or None, out)`` for the output grads."""
    leaves = [v.detach().clone().requires_grad_() if v is not None else None for v in (x, r, b, w)]
    xl, rl, bl, wl = leaves
    s, out = fn(xl, rl, bl, y, wl, act)
    loss = (out.double() * dy.double()).sum()
    if s is not None:
        loss = loss + (s.double() * ds.double()).sum()
    loss.backward()
    outs = [out.detach()] + ([s.detach()] if s is not None else [])
    return outs, [v.grad for v in leaves if v is not None]


def _fast(x, r, b, y, w, act, backend="triton"):
    if r is None:
        return None, ops.cond_instance_norm_plus(x, y, w, activation=act, bias=b, backend=backend)
    return add_cond_instance_norm_plus(x, r, y, w, activation=act, bias=b, backend=backend)


def _composition(x, r, b, y, w, act):
    if r is None:
        return None, ops.cond_instance_norm_plus_ref(x, y, w, activation=act, bias=b)
    return add_cond_instance_norm_plus_ref(x, r, y, w, activation=act, bias=b)


def _fp64(x, r, b, y, w, act):
    s = x.double() + r.double() if r is not None else None
    z = (x.double() if s is None else s) + (b.to(x.dtype).double()[None, :, None, None] if b is not None else 0)
    return s, cin_fp64(z, y, w.double(), act)


def _assert_sum(s, s_ref, what):
    """``s`` equals the composition's ``x + r``; under the interpreter within one unit in the last place
    (the interpreter casts fp32 to bf16/fp16 by truncation, a GPU rounds to nearest like torch)."""
    assert s.stride() == s_ref.stride(), what
    if s.device.type == "cuda" or s.dtype == torch.float32:
        assert torch.equal(s, s_ref), what
        return
    ulp = torch.finfo(s.dtype).eps * s_ref.float().abs().clamp(min=torch.finfo(s.dtype).tiny)
    assert ((s.float() - s_ref.float()).abs() <= ulp).all(), f"{what} sum"


def _check_against_composition(x, r, b, y, w, dy, ds, act, what):
    dtype = x.dtype
    got = _run(_fast, x, r, b, y, w, dy, ds, act)
    ref = _run(_composition, x, r, b, y, w, dy, ds, act)
    truth = _run(_fp64, x, r, b, y, w, dy, ds, act)
    assert got[0][0].dtype == dtype and got[0][0].stride() == x.stride(), what
    if r is not None:   # the sum: the composition's own rounding of x + r
        _assert_sum(got[0][1], ref[0][1], what)
        got, ref, truth = [[v[:1], g] for v, g in (got, ref, truth)]
    names = ["out"]
    grad_names = ["grad x"] + (["grad residual"] if r is not None else []) + \
        (["grad bias"] if b is not None else []) + ["grad weight"]
    for part, kind in ((0, names), (1, grad_names)):
        for k, v, t, name in zip(got[part], ref[part], truth[part], kind):
            assert k.shape == t.shape, f"{what} {name}"
            assert_within_2x(k, v, t, dtype, f"{what} {name}")


@pytest.mark.parametrize("shape,channels_last", SHAPES, ids=lambda v: "x".join(map(str, v)) if
                         isinstance(v, tuple) else ("cl" if v else "nchw"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("form", list(FORMS))
def test_triton_glue_matches_composition(form, dtype, shape, channels_last):
    fast_backend("triton")
    x, r, b, y, w, dy, ds = _inputs(shape, form, dtype, channels_last)
    _check_against_composition(x, r, b, y, w, dy, ds, "elu", f"{form} {shape} {dtype}")


@pytest.mark.parametrize("split,channels_last", [(False, False), (True, True)], ids=["fused", "split-cl"])
def test_triton_glue_launch_plans(split, channels_last):
    """The chunk loops of both phases (tiny tiles) and the split plan, where the apply phase
    reads back the sum the statistics phase wrote."""
    fast_backend("triton")
    from fastncsn.ops.triton.cond_instance_norm import launch_cin_glue_fwd
    x, r, b, y, w, _, _ = _inputs((2, 5, 3, 3), "both", torch.float32, channels_last, seed=1)
    s, out, mu, rstd = launch_cin_glue_fwd(x, r, b, y, w, 1e-5, "none", split=split, tile=8)
    s_ref, out_ref = _composition(x, r, b, y, w, None)
    z = (x if r is None else s_ref) + (b[None, :, None, None] if b is not None else 0)
    torch.testing.assert_close(out, out_ref, **TOL[torch.float32])
    torch.testing.assert_close(mu, z.mean(dim=(2, 3)), **TOL[torch.float32])
    torch.testing.assert_close(rstd, torch.rsqrt(z.var(dim=(2, 3), unbiased=False) + 1e-5), **TOL[torch.float32])
    assert torch.equal(s, s_ref) and s.stride() == x.stride()


def test_torch_backend_is_the_composition():
    x, r, b, y, w, _, _ = _inputs((2, 3, 4, 4), "both", torch.float32, False, device="cpu")
    s, out = add_cond_instance_norm_plus(x, r, y, w, activation="elu", bias=b, backend="torch")
    s_ref, out_ref = add_cond_instance_norm_plus_ref(x, r, y, w, activation="elu", bias=b)
    assert torch.equal(s, x + r) and torch.equal(out, out_ref)
    plain = ops.cond_instance_norm_plus_ref(x + r + b[None, :, None, None], y, w, activation="elu")
    torch.testing.assert_close(out, plain, **TOL[torch.float32])


@pytest.mark.parametrize("form", list(FORMS))
def test_cuda_backend_refuses_fused_forms(form):
    x, r, b, y, w, _, _ = _inputs((2, 3, 4, 4), form, torch.float32, False, device="cpu")
    with pytest.raises(BackendUnavailableError, match="no fused bias/residual"):
        _fast(x, r, b, y, w, None, backend="cuda")


def test_auto_never_picks_cuda_for_fused_forms():
    from fastncsn.ops import AUTO_PREFERENCE
    assert "cuda" not in AUTO_PREFERENCE["cond_instance_norm_plus_glue"]
    assert AUTO_PREFERENCE["cond_instance_norm_plus_glue"][0] == "triton"


@pytest.mark.gpu
def test_gpu_auto_runs_fused_forms_on_triton():
    fast_backend("triton")
    x, r, b, y, w, _, _ = _inputs((2, 3, 4, 4), "both", torch.float32, False)
    assert ops.resolve_backend("auto", x.device, "cond_instance_norm_plus_glue") == "triton"
    s, out = add_cond_instance_norm_plus(x, r, y, w, activation="elu", bias=b)      # auto
    s_ref, out_ref = add_cond_instance_norm_plus_ref(x, r, y, w, activation="elu", bias=b)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(out, out_ref, **TOL[torch.float32])


def test_bad_glue_args_name_the_argument():
    x, r, b, y, w, _, _ = _inputs((2, 3, 4, 4), "both", torch.float32, False, device="cpu")
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="residual"):
            add_cond_instance_norm_plus(x, r[:, :2], y, w, backend=backend)
        with pytest.raises(TypeError, match="residual"):
            add_cond_instance_norm_plus(x, r.double(), y, w, backend=backend)
        with pytest.raises(ValueError, match=r"bias: expected a tensor of shape \[3\]"):
            ops.cond_instance_norm_plus(x, y, w, bias=b[:2], backend=backend)
        with pytest.raises(TypeError, match="bias"):
            ops.cond_instance_norm_plus(x, y, w, bias=b.long(), backend=backend)


def test_opcheck_glue():
    """Schema, fake kernel and autograd registration of the glue op (its CPU kernel on the reference
    math: the Triton launch is checked against the composition above)."""
    from fastncsn.ops.common import cpu_impl
    x, r, b, y, w, _, _ = _inputs((2, 3, 3, 5), "both", torch.float32, True, device="cpu")
    with cpu_impl("reference"):
        for args in ((x, r, b), (x, None, b)):
            torch.library.opcheck(torch.ops.fastncsn.cin_plus_glue_fwd, (*args, y, w, 1e-5, "elu"))


# --------------------------------------------------------------------------- the network switch


def _tiny_net():
    from fastncsn.models import CondRefineNetDilated
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=8, channels=1, ngf=4, num_levels=3)
    with torch.no_grad():  # biases and embeddings away from their 0 / N(1, 0.02) initialisation
        for name, p in net.named_parameters():
            if name.endswith("embed.weight") or name.endswith(".bias"):
                p.normal_(0.5, 0.5)
    return net


def _net_output(net, backend, fused, backward, batch=2):
    """(output, parameter grads or None) of ``net`` on ``backend`` with the switch ``fused``."""
    from fastncsn.nn import set_backend, set_fused_glue
    set_backend(net, backend)
    set_fused_glue(net, fused)
    assert all(m.fuse_glue == fused for m in net.modules() if hasattr(m, "fuse_glue"))
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(DEV)
    y = torch.tensor([0, 2, 1][:batch], device=DEV)
    net.zero_grad()
    with torch.set_grad_enabled(backward):
        out = net(x, y)
    if not backward:
        return out, None
    out.square().sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


def test_network_switch_torch_forward_and_backward(one_thread):
    net = _tiny_net()
    keys = list(net.state_dict())
    out_off, grads_off = _net_output(net, "torch", False, backward=True)
    out_on, grads_on = _net_output(net, "torch", True, backward=True)
    assert list(net.state_dict()) == keys      # the switch adds no parameter or buffer
    torch.testing.assert_close(out_on, out_off, rtol=1e-4, atol=1e-4)
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-3, atol=1e-4, msg=k)


def test_ncsnv2_switch_same_output(one_thread):
    """NCSNv2: unconditional norms (InstanceNorm2dPlus) in the residual blocks, none in the RCUs."""
    from fastncsn.models import NCSNv2
    from fastncsn.nn import set_fused_glue
    torch.manual_seed(0)
    net = NCSNv2(image_size=8, channels=1, ngf=4, num_levels=3, backend="torch").eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.5, 0.5)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        off = net(x, y)
        set_fused_glue(net, True)
        on = net(x, y)
    torch.testing.assert_close(on, off, rtol=1e-4, atol=1e-4)


def test_network_switch_triton_forward(one_thread):
    """The fused network on the Triton norms (interpreter) against the unfused network on the
    reference; forward only, to keep the interpreter run short (the fused forms' backward is
    checked op by op above, and the plain Triton norms against the reference in
    test_cond_instance_norm.py)."""
    fast_backend("triton")
    net = _tiny_net().to(DEV)
    out_off, _ = _net_output(net, "torch", False, backward=False, batch=1)
    out_on, _ = _net_output(net, "triton", True, backward=False, batch=1)
    torch.testing.assert_close(out_on, out_off, rtol=1e-4, atol=1e-4)


def test_rcu_switch_under_autocast_with_mixed_dtypes(one_thread):
    """Autocast runs the convolutions in bf16 while a block's input can stay fp32 (on CUDA the bilinear
    interpolation is on autocast's fp32 list, so a RefineBlock after an MSF fusion gets fp32 inputs):
    the skip of an RCU block is then fp32 and the conv output bf16.  The unfused ``h + residual``
    promotes to fp32; the fused path must do the same (it raised ``TypeError: residual ... bfloat16,
    got float32`` from the fused add before), and with matching dtypes it must still fuse."""
    from fastncsn.nn import set_fused_glue
    from fastncsn.nn.blocks import RCUBlock
    from fastncsn.nn.norms import ConditionalInstanceNorm2dPlus
    torch.manual_seed(0)
    rcu = RCUBlock(4, 2, 2, lambda c: ConditionalInstanceNorm2dPlus(c, 3, backend="torch")).eval()
    y = torch.tensor([0, 2])
    calls = []
    for m in rcu.modules():
        if isinstance(m, ConditionalInstanceNorm2dPlus):
            m.forward_add = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(m.forward_add)
    for dtype in (torch.float32, torch.bfloat16):          # fp32 input: mixed dtypes; bf16 input: one dtype
        x = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
        outs = {}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for fused in (False, True):
                set_fused_glue(rcu, fused)
                calls.clear()
                outs[fused] = rcu(x, y)
                fused_adds = len(calls)
        assert outs[True].dtype == outs[False].dtype == torch.promote_types(dtype, torch.bfloat16)
        if dtype == torch.float32:
            assert fused_adds == 0                         # no fused add across dtypes: the unfused path, exactly
            assert torch.equal(outs[True], outs[False])
        else:
            assert fused_adds == 1                         # one skip add fused into the next block's norm
            torch.testing.assert_close(outs[True].float(), outs[False].float(), **TOL[torch.bfloat16])


def test_set_fused_glue_checks_its_argument():
    from fastncsn.nn import set_fused_glue
    with pytest.raises(TypeError, match="enabled"):
        set_fused_glue(torch.nn.Linear(1, 1), "yes")


# --------------------------------------------------------------------------- GPU, network shapes


@pytest.mark.gpu
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16-cl", "fp32-nchw"])
@pytest.mark.parametrize("c,h", [(64, 28), (128, 14), (128, 7)], ids=["64x28", "128x14", "128x7"])
def test_gpu_mnist_b1000_shapes(form, dtype, channels_last, c, h):
    """The MNIST network's CIN++ layer shapes at the sampling batch (1000)."""
    fast_backend("triton")
    x, r, b, y, w, dy, ds = _inputs((1000, c, h, h), form, dtype, channels_last, levels=10)
    _check_against_composition(x, r, b, y, w, dy, ds, "elu", f"{form} {c}x{h} {dtype}")
