"""RefineNet building blocks of the NCSN score networks.

One implementation serves both networks: NCSN v1 (``CondRefineNetDilated``,
conditional norms inside every block) and NCSNv2 (norms only in the residual
blocks).  A block gets a ``norm`` factory (``norm(num_features) -> module`` whose
``forward(x, y, activation=None)`` applies instance norm++), or ``None`` for no
norm.  Wherever the reference applies ``ELU(norm(x))`` the activation is passed
to the norm so a fused backend can do both in one pass.

Attribute names (``conv1``, ``normalize2``, ``1_1_norm``, ``adapt_convs`` ...)
follow the reference implementations, so their state dicts load as they are.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import avg_pool5x5

NormFactory = Optional[Callable[[int], nn.Module]]


def fused_op_modules(module: nn.Module) -> list:
    """The modules of ``module`` that run a fused op (the norms): those with a ``backend`` string."""
    return [m for m in module.modules() if isinstance(getattr(m, "backend", None), str)]


def set_backend(module: nn.Module, backend: str) -> None:
    """Set the fused-op ``backend`` ("auto" | "triton" | "cuda" | "torch") of every norm in ``module``."""
    from ..ops import BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    for m in fused_op_modules(module):
        m.backend = backend


def set_fused_pool(module: nn.Module, enabled: bool = True, backend: str = "auto") -> nn.Module:
    """Switch the 5x5 average pool of every ``CRPBlock`` in ``module`` between ``F.avg_pool2d``
    (``enabled=False``, the default of a new block) and the op ``fastncsn.ops.avg_pool5x5`` with
    ``backend`` ("auto" | "triton" | "torch"; one read and one write on the Triton backend).

    Max-pooling blocks (NCSNv2) are unaffected.  A run-time option, not state: parameters, buffers,
    ``state_dict`` keys and the model config do not change.  Returns ``module``."""
    from ..ops import BACKENDS
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    if backend not in BACKENDS or backend == "cuda":
        raise ValueError(f"backend: expected one of 'auto', 'triton', 'torch' (no 'cuda' pool), got {backend!r}")
    for m in module.modules():
        if isinstance(m, CRPBlock):
            m.fused_pool, m.pool_backend = enabled, backend
    return module


def set_fused_glue(module: nn.Module, enabled: bool = True) -> None:
    """Switch the glue fusion (issue 15 item 3) of every block in ``module`` on or off.

    On: ``ResidualBlock`` runs ``conv1`` without its bias and folds the bias into
    ``normalize2`` (``CIN++(conv(x) + b)`` without writing ``conv(x) + b``), and ``RCUBlock``
    fuses the skip add that ends one of its blocks into the first norm of the next
    (``s, out = norm.forward_add(x, residual)``) where the two terms share a dtype (under
    autocast a bf16 conv output and an fp32 skip are added unfused, promoting as before).
    Off (the default): the unfused modules.
    The flag is a plain attribute (``fuse_glue``): parameters, state-dict keys and the
    model config do not change.  Fused forms run on the ``torch`` and ``triton`` backends;
    a norm set to ``backend="cuda"`` raises ``BackendUnavailableError`` with the switch on.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    for m in module.modules():
        if isinstance(m, (ResidualBlock, RCUBlock)):
            m.fuse_glue = enabled


def _conv3x3(cin: int, cout: int, bias: bool, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=1, padding=dilation, dilation=dilation, bias=bias)


def _norm_act(norm: Optional[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ELU(norm(x)) fused into the norm when there is one, else ELU(x)."""
    if norm is None:
        return F.elu(x)
    return norm(x, y, activation="elu")


class ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 mean pooling (the reference's ``ConvMeanPool``).

    ``adjust_padding`` zero-pads one row/column on the top/left first (the
    reference's 28x28 option); the conv then lives at ``conv.1``.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, bias: bool = True,
                 adjust_padding: bool = False):
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2, bias=bias)
        self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return (out[:, :, ::2, ::2] + out[:, :, 1::2, ::2] + out[:, :, ::2, 1::2] + out[:, :, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm -> ELU -> conv -> norm -> ELU -> conv, plus shortcut.

    ``resample="down"`` halves the resolution with :class:`ConvMeanPool` unless
    ``dilation`` is set, in which case (as in the reference) the block keeps the
    resolution and uses dilated convolutions.
    """

    def __init__(self, input_dim: int, output_dim: int, norm: Callable[[int], nn.Module],
                 resample: Optional[str] = None, dilation: Optional[int] = None,
                 adjust_padding: bool = False):
        super().__init__()
        if resample not in (None, "down"):
            raise ValueError(f"resample: expected None or 'down', got {resample!r}")
        self.input_dim, self.output_dim, self.resample = input_dim, output_dim, resample
        d = dilation or 1
        if resample == "down":
            self.conv1 = _conv3x3(input_dim, input_dim, bias=True, dilation=d)
            self.normalize2 = norm(input_dim)
            if dilation is not None:
                self.conv2 = _conv3x3(input_dim, output_dim, bias=True, dilation=d)
                self.shortcut = _conv3x3(input_dim, output_dim, bias=True, dilation=d)
            else:
                self.conv2 = ConvMeanPool(input_dim, output_dim, 3, adjust_padding=adjust_padding)
                self.shortcut = ConvMeanPool(input_dim, output_dim, 1, adjust_padding=adjust_padding)
        else:
            self.conv1 = _conv3x3(input_dim, output_dim, bias=True, dilation=d)
            self.normalize2 = norm(output_dim)
            self.conv2 = _conv3x3(output_dim, output_dim, bias=True, dilation=d)
            if output_dim != input_dim:
                self.shortcut = (_conv3x3(input_dim, output_dim, bias=True, dilation=d) if dilation
                                 else nn.Conv2d(input_dim, output_dim, 1, bias=True))
        self.normalize1 = norm(input_dim)
        self.fuse_glue = False

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fuse_glue:      # conv1's bias folded into normalize2 (same parameters)
            c = self.conv1
            h = F.conv2d(_norm_act(self.normalize1, x, y), c.weight, None, c.stride, c.padding, c.dilation, c.groups)
            h = self.normalize2(h, y, activation="elu", bias=c.bias)
        else:
            h = _norm_act(self.normalize2, self.conv1(_norm_act(self.normalize1, x, y)), y)
        h = self.conv2(h)
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        return shortcut + h


class RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` x (``n_stages`` x [norm] -> ELU -> conv) + skip."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, norm: NormFactory = None):
        super().__init__()
        self.n_blocks, self.n_stages = n_blocks, n_stages
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                if norm is not None:
                    setattr(self, f"{i}_{j}_norm", norm(features))
                setattr(self, f"{i}_{j}_conv", _conv3x3(features, features, bias=False))
        self.fuse_glue = False

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pending = None      # fused: the skip add of the previous block, done by this block's first norm
        for i in range(1, self.n_blocks + 1):
            first = getattr(self, f"{i}_1_norm", None)
            if pending is not None:
                x, h = first.forward_add(x, pending, y, activation="elu")
                pending = None
            else:
                h = _norm_act(first, x, y)
            residual = x
            for j in range(1, self.n_stages + 1):
                if j > 1:
                    h = _norm_act(getattr(self, f"{i}_{j}_norm", None), h, y)
                h = getattr(self, f"{i}_{j}_conv")(h)
            # fused: defer the add to the next block's norm -- only where both terms have one dtype (under
            # autocast the conv output is bf16 while the skip can be fp32; ``h + residual`` then promotes)
            if self.fuse_glue and i < self.n_blocks and first is not None and h.dtype == residual.dtype:
                x, pending = h, residual
            else:
                x = h + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: ELU, then ``n_stages`` x ([norm] -> 5x5 pool -> conv) summed.

    ``fused_pool`` (default False; set with ``set_fused_pool``) runs the average pool as the op
    ``fastncsn.ops.avg_pool5x5`` (backend ``pool_backend``) instead of ``F.avg_pool2d`` (on CPU
    float32 tensors its depthwise-convolution form, ``_avg_pool5x5``); same result.
    """

    #: run the avg pool as ``fastncsn.ops.avg_pool5x5`` (plain attributes: not in the state dict)
    fused_pool: bool = False
    pool_backend: str = "auto"

    def __init__(self, features: int, n_stages: int, norm: NormFactory = None, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool: expected 'avg' or 'max', got {pool!r}")
        self.convs = nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
        if norm is not None:
            self.norms = nn.ModuleList(norm(features) for _ in range(n_stages))
        self.pool = pool

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = F.elu(x)
        path = x
        for i, conv in enumerate(self.convs):
            if hasattr(self, "norms"):
                path = self.norms[i](path, y)
            if self.pool == "avg" and self.fused_pool:
                path = avg_pool5x5(path, backend=self.pool_backend)
            elif self.pool == "avg":
                path = _avg_pool5x5(path)
            else:
                path = F.max_pool2d(path, 5, stride=1, padding=2)
            path = conv(path)
            x = path + x
        return x


def _avg_pool5x5(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 5, stride=1, padding=2)`` (``count_include_pad=True``, as ``nn.AvgPool2d``).

    On the CPU the same sum of the 25 zero-padded neighbours divided by 25 is computed as a
    depthwise convolution with a kernel of ones: ~6x faster there than ``F.avg_pool2d``
    (oneDNN), and the same value up to the order of the additions.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return F.avg_pool2d(x, 5, stride=1, padding=2)
    c = x.shape[1]
    ones = torch.ones(c, 1, 5, 5, dtype=x.dtype)
    return F.conv2d(x, ones, padding=2, groups=c).div_(25.0)


class MSFBlock(nn.Module):
    """Multi-resolution fusion: [norm] -> conv of each input, bilinear upsampling, sum."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory = None):
        super().__init__()
        self.features = features
        self.convs = nn.ModuleList(_conv3x3(c, features, bias=True) for c in in_planes)
        if norm is not None:
            self.norms = nn.ModuleList(norm(c) for c in in_planes)

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, shape) -> torch.Tensor:
        out = None
        for i, conv in enumerate(self.convs):
            h = self.norms[i](xs[i], y) if hasattr(self, "norms") else xs[i]
            h = resize_bilinear(conv(h), shape)
            out = h if out is None else out + h
        return out


def resize_bilinear(x: torch.Tensor, shape) -> torch.Tensor:
    """``F.interpolate(x, size=shape, mode="bilinear", align_corners=True)``, skipped when ``x`` already
    has that size: the interpolation is then the identity, bit for bit (PyTorch's kernels copy in that
    case), so skipping it saves a read and a write of the tensor.  Under autocast the call is kept,
    because autocast may run it in fp32 (CUDA does) and the dtype of the result would change."""
    size = tuple(int(v) for v in shape)
    if tuple(x.shape[2:]) == size and not torch.is_autocast_enabled(x.device.type):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class RefineBlock(nn.Module):
    """RefineNet block: RCU adaptation of each input, fusion, chained pooling, output RCU."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory = None,
                 start: bool = False, end: bool = False, pool: str = "avg"):
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, norm) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, norm)
        if not start:
            self.msf = MSFBlock(in_planes, features, norm)
        self.crp = CRPBlock(features, 2, norm, pool)

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, output_shape) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, y, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h, y), y)
