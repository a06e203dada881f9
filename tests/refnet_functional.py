"""An independent, functional transcription of the reference NCSN v1 network.

It reads parameters by their *reference* names from a plain state dict (as a
reference checkpoint stores them, minus ``module.``) and computes the forward
pass with torch.nn.functional only, following the reference code line by line
(InstanceNorm2d + embedding CIN++, ELU, AvgPool CRP, bilinear MSF ...).  Tests
use it as the reference network's output for checkpoint-interop checks.
"""
import torch
import torch.nn.functional as F


def cin_pp(sd, p, x, y):
    w = sd[p + "embed.weight"]
    c = x.shape[1]
    means = x.mean(dim=(2, 3))
    m = means.mean(dim=-1, keepdim=True)
    v = means.var(dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = F.instance_norm(x, eps=1e-5)
    gamma, alpha, beta = w[y].chunk(3, dim=-1)
    h = h + means[..., None, None] * alpha[..., None, None]
    return gamma.view(-1, c, 1, 1) * h + beta.view(-1, c, 1, 1)


def conv(sd, p, x, padding=1, dilation=1):
    return F.conv2d(x, sd[p + "weight"], sd.get(p + "bias"), padding=padding, dilation=dilation)


def mean_pool(x):
    return sum([x[:, :, ::2, ::2], x[:, :, 1::2, ::2], x[:, :, ::2, 1::2], x[:, :, 1::2, 1::2]]) / 4.0


def res_block(sd, p, x, y, down, dilation=None):
    out = F.elu(cin_pp(sd, p + "normalize1.", x, y))
    d = dilation or 1
    out = conv(sd, p + "conv1.", out, padding=d, dilation=d)
    out = F.elu(cin_pp(sd, p + "normalize2.", out, y))
    if down and dilation is None:
        out = mean_pool(conv(sd, p + "conv2.conv.", out))
        short = mean_pool(conv(sd, p + "shortcut.conv.", x, padding=0))
    else:
        out = conv(sd, p + "conv2.", out, padding=d, dilation=d)
        short = conv(sd, p + "shortcut.", x, padding=d, dilation=d) if (p + "shortcut.weight") in sd else x
    return short + out


def rcu(sd, p, x, y, n_blocks):
    for i in range(1, n_blocks + 1):
        residual = x
        for j in (1, 2):
            x = F.elu(cin_pp(sd, f"{p}{i}_{j}_norm.", x, y))
            x = conv(sd, f"{p}{i}_{j}_conv.", x)
        x = x + residual
    return x


def refine(sd, p, xs, y, shape, end=False):
    hs = [rcu(sd, f"{p}adapt_convs.{i}.", x, y, 2) for i, x in enumerate(xs)]
    if len(hs) > 1:
        h = torch.zeros(hs[0].shape[0], sd[p + "msf.convs.0.weight"].shape[0], *shape)
        for i, hi in enumerate(hs):
            t = conv(sd, f"{p}msf.convs.{i}.", cin_pp(sd, f"{p}msf.norms.{i}.", hi, y))
            h = h + F.interpolate(t, size=shape, mode="bilinear", align_corners=True)
    else:
        h = hs[0]
    x = F.elu(h)
    path = x
    for i in range(2):
        path = cin_pp(sd, f"{p}crp.norms.{i}.", path, y)
        path = F.avg_pool2d(path, 5, stride=1, padding=2)
        path = conv(sd, f"{p}crp.convs.{i}.", path)
        x = path + x
    return rcu(sd, p + "output_convs.", x, y, 3 if end else 1)


def forward(sd, x, y):
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    out = conv(sd, "begin_conv.", 2 * x - 1.0)
    layers = []
    specs = [("res1", False, None), ("res2", True, None), ("res3", True, 2), ("res4", True, 4)]
    for name, down, dil in specs:
        out = res_block(sd, f"{name}.0.", out, y, down, dil)
        out = res_block(sd, f"{name}.1.", out, y, False, dil)
        layers.append(out)
    l1, l2, l3, l4 = layers
    r = refine(sd, "refine1.", [l4], y, l4.shape[2:])
    r = refine(sd, "refine2.", [l3, r], y, l3.shape[2:])
    r = refine(sd, "refine3.", [l2, r], y, l2.shape[2:])
    r = refine(sd, "refine4.", [l1, r], y, l1.shape[2:], end=True)
    return conv(sd, "end_conv.", F.elu(cin_pp(sd, "normalizer.", r, y)))


def read_key_list(path):
    """Parse a ``name<TAB>(shape)`` key list into {name: shape tuple}."""
    out = {}
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.rstrip("\n").split("\t")
        out[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out
