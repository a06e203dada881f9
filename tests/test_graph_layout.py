"""Network format of the graph sampler (fastncsn.sampling.network_format; issue 15 item 2): strict NHWC for
one channel, bf16 weights made once, the user's model untouched, weight refresh, identity interpolations
skipped bit for bit.  CPU, ``use_graphs=False`` (the same step functions the graphs capture)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL
from cin_truth import assert_within_2x
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.nn.blocks import resize_bilinear
from fastncsn.sampling import GraphSampler, clear_graph_cache, get_graph_sampler
from fastncsn.sampling.network_format import is_nhwc, to_nhwc

BF16 = torch.bfloat16
NEW = dict(layout="channels_last_strict", weights="bf16_once", precision="bf16")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny CPU networks: one thread (fixture in conftest.py)."""


def _model(channels=1, size=8, levels=3):
    torch.manual_seed(0)
    return CondRefineNetDilated(image_size=size, channels=channels, ngf=4, num_levels=levels, backend="torch").eval()


def _sampler(model, batch=2, **kw):
    kw.setdefault("steps_per_level", 2)
    return GraphSampler(model, batch, backend="torch", use_graphs=False, **kw)


def _x0(model, n=2, seed=1):
    return torch.rand(n, *model.data_shape, generator=torch.Generator().manual_seed(seed))


def _record_outputs(module):
    """Forward hooks on every submodule: (name, output) of each 4-D tensor output; returns (records, handles)."""
    records, handles = [], []
    for name, m in module.named_modules():
        def hook(mod, args, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                records.append((name, out))
        handles.append(m.register_forward_hook(hook))
    return records, handles


@pytest.mark.parametrize("weights,precision", [("autocast", "fp32"), ("bf16_once", "bf16")])
def test_strict_layout_is_nhwc_for_one_channel(weights, precision):
    model = _model(channels=1)
    s = _sampler(model, layout="channels_last_strict", weights=weights, precision=precision)
    net = s.net.module
    assert net is not model
    convs = [p for p in net.parameters() if p.dim() == 4]
    assert convs and all(is_nhwc(p) for p in convs)
    assert net.begin_conv.weight.shape[1] == 1 and is_nhwc(net.begin_conv.weight)  # C_in = 1 converted too
    inputs = []
    net.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    records, _ = _record_outputs(net)
    s.sample(2, seed=0, x0=_x0(model))
    dtype = BF16 if weights == "bf16_once" else torch.float32
    assert inputs and all(is_nhwc(x) and x.dtype == dtype for x in inputs)
    # every module's 4-D output (convs, norms, blocks) NHWC and in the network's dtype: no NCHW or fp32 islands
    bad = [(n, o.dtype, o.stride()) for n, o in records if not (is_nhwc(o) and o.dtype == dtype)]
    assert records and not bad, bad[:5]


def test_old_layout_is_not_nhwc_for_one_channel():
    """The old default ("channels_last") feeds a 1-channel network an NCHW tensor (what strict fixes)."""
    model = _model(channels=1)
    s = _sampler(model, precision="fp32")
    assert s.layout == "channels_last" and s.net.module is model
    inputs = []
    model.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    s.sample(1, seed=0, x0=_x0(model, 1))
    assert inputs and not any(is_nhwc(x) for x in inputs)


@pytest.mark.parametrize("channels", [1, 3])
def test_strict_layout_fp32_matches_old_path(channels):
    model = _model(channels=channels)
    x0 = _x0(model)
    old = _sampler(model, precision="fp32").sample(2, seed=3, x0=x0)
    new = _sampler(model, precision="fp32", layout="channels_last_strict").sample(2, seed=3, x0=x0)
    torch.testing.assert_close(new, old, **TOL[torch.float32])


def test_user_model_unchanged():
    model = _model(channels=1).train()
    before = {k: (v.dtype, v.stride(), v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    config = copy.deepcopy(model.config)
    s = _sampler(model, **NEW)
    s.sample(2, seed=0, x0=_x0(model))
    assert model.training and model.config == config
    assert all(m.backend == "torch" for m in model.modules() if isinstance(getattr(m, "backend", None), str))
    for k, v in model.state_dict().items():
        dtype, stride, ptr, value = before[k]
        assert (v.dtype, v.stride(), v.data_ptr()) == (dtype, stride, ptr), k
        assert torch.equal(v, value), k
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("channels", [1, 3])
def test_bf16_once_score_within_tolerance(channels):
    """The bf16-once network's score: error (vs float64) <= 2x that of the autocast path + atol."""
    model = _model(channels=channels, levels=3)
    x = _x0(model, 4)
    levels = torch.tensor([0, 1, 2, 1])
    truth = copy.deepcopy(model).double()(x.double(), levels)
    runs = {}
    for weights in ("autocast", "bf16_once"):
        s = _sampler(model, batch=4, layout="channels_last_strict", weights=weights, precision="bf16")
        s.net.refresh()
        runs[weights] = s.net(x, levels).float()
    assert runs["bf16_once"].dtype == torch.float32 and torch.isfinite(runs["bf16_once"]).all()
    assert_within_2x(runs["bf16_once"], runs["autocast"], truth, BF16, "bf16-once score")


def test_bf16_once_samples_within_tolerance():
    """A few Langevin steps: bf16-once samples vs the fp32 path, error <= 2x that of the autocast path + atol."""
    model = _model(channels=3, levels=3)
    x0 = _x0(model, 2)
    fp32 = _sampler(model, precision="fp32").sample(2, seed=5, x0=x0).double()
    old = _sampler(model, precision="bf16").sample(2, seed=5, x0=x0)
    new = _sampler(model, **NEW).sample(2, seed=5, x0=x0)
    assert not torch.equal(new, old)  # a different network evaluation, not the old path under another name
    assert_within_2x(new, old, fp32, BF16, "bf16-once samples")


def test_weight_refresh_after_in_place_update():
    clear_graph_cache()
    model = _model(channels=1)
    x0 = _x0(model)
    kw = dict(backend="torch", use_graphs=False, steps_per_level=1, **NEW)
    s = get_graph_sampler(model, 2, **kw)
    a = s.sample(2, seed=0, x0=x0)
    with torch.no_grad():
        model.end_conv.bias.add_(0.5)
        model.res1[0].conv1.weight.mul_(1.5)
    s2 = get_graph_sampler(model, 2, **kw)
    assert s2 is s  # same storage: the cached sampler, whose private copy sample() refreshes
    b = s2.sample(2, seed=0, x0=x0)
    assert not torch.equal(a, b)
    fresh = GraphSampler(model, 2, **kw).sample(2, seed=0, x0=x0)
    assert torch.equal(b, fresh)
    clear_graph_cache()


def test_refresh_keeps_tensors_in_place():
    model = _model(channels=1)
    s = _sampler(model, **NEW)
    ptrs = [p.data_ptr() for p in s.net.module.parameters()]
    with torch.no_grad():
        model.begin_conv.weight.fill_(0.25)
    s.refresh_weights()
    assert [p.data_ptr() for p in s.net.module.parameters()] == ptrs
    w = s.net.module.begin_conv.weight
    assert is_nhwc(w) and w.dtype == BF16 and bool((w == 0.25).all())


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("nhwc", [False, True])
def test_identity_interpolation_skipped_bit_exact(dtype, nhwc):
    x = torch.randn(2, 5, 7, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    x = to_nhwc(x) if nhwc else x
    want = F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=True)
    got = resize_bilinear(x, torch.Size([7, 7]))
    assert got is x and torch.equal(got, want)
    up = F.interpolate(x, size=(9, 9), mode="bilinear", align_corners=True)
    assert torch.equal(resize_bilinear(x, (9, 9)), up)
    with torch.autocast("cpu", dtype=BF16):  # kept under autocast (it may change the dtype there)
        want_ac = F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=True)
        got_ac = resize_bilinear(x, (7, 7))
    assert got_ac.dtype == want_ac.dtype and torch.equal(got_ac, want_ac)


def test_network_format_argument_errors():
    model = _model(channels=1)
    with pytest.raises(ValueError, match="layout"):
        _sampler(model, layout="nhwc")
    with pytest.raises(ValueError, match="weights"):
        _sampler(model, weights="fp8")
    with pytest.raises(ValueError, match="weights.*precision"):
        _sampler(model, weights="bf16_once", precision="fp32")
    with pytest.raises(ValueError, match="channels_last"):
        _sampler(model, channels_last=False, layout="channels_last_strict")
    with pytest.raises(TypeError, match="model"):
        GraphSampler(lambda x, y: -x, 2, sigmas=[1.0, 0.1], data_shape=(1, 4, 4), use_graphs=False,
                     backend=None, layout="channels_last_strict")
