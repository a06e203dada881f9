"""Traffic model: what one step of the fast path must move and compute, traced on the CPU.

``python -m benchmarks.traffic --config mnist --batch 1000 [--precision bf16|fp32] [--training]
[--json FILE] [--top K]``

One step is run *as the fast path runs it* -- :meth:`fastncsn.sampling.GraphSampler.step_once`
(the body a captured graph replays: autocast, channels-last input, the fused-op backend that
``auto`` picks on a GPU) or, with ``--training``, the fast DSM training step
(``fastncsn.training``: ``prepare_fast_model`` without compile, ``dsm_step``, fused Adam) --
on fake tensors (``torch._subclasses.FakeTensorMode``) that claim device ``cuda:0``.  Nothing
is computed and CUDA is never touched: ``torch.cuda.is_available`` / ``is_bf16_supported`` /
``current_device`` answer as on an H100 inside the tracer only (see :func:`fake_cuda`).
A ``TorchDispatchMode`` records every aten / custom op:

* **kernels**: 1 per op that launches work; views and metadata ops (``view``, ``as_strided``,
  ``expand``, ``t``, ``permute``, ``detach``, ``empty*`` ...) count 0.  A custom op
  (``fastncsn::cin_plus_fwd``, ``cin_plus_glue_fwd``, ``avg_pool5x5``, ``langevin_step_``) is one kernel.  ``_foreach_*`` and
  fused optimizer ops count 1 (multi_tensor_apply may launch a few: a lower bound).
* **convolution on CUDA** follows ATen's cuDNN path (``_convolution`` in
  ``aten/src/ATen/native/Convolution.cpp``): the conv kernel, plus a layout copy of the input
  when it is not in the format cuDNN picks (channels-last if input or weight is channels-last,
  see :func:`channels_last`), plus a separate bias ``add_`` kernel (kind ``elementwise``).
* **bytes**: read = every distinct tensor input (broadcast dims, stride 0, count once),
  written = every output and every mutated argument; a custom op reads its inputs once and writes
  its outputs once (that is what the fused kernels do).
* **FLOPs**: convolution ``2 N Cout Hout Wout Cin/groups kh kw`` (backward: that per gradient
  asked for), matmuls ``2 M N K``, everything else ~ one per output element (reductions: per
  input element).
* **kind**: conv, cin++, langevin, elementwise, pool, interpolate, cast (a dtype change:
  ``_to_copy`` or ``copy_`` between dtypes), copy, reduce, optimizer, other.

Floors: ``bytes / bandwidth`` (every kernel at full copy bandwidth) and ``FLOPs / peak``.

=================  ===================  ===============  ==============================================
ceiling            H100                 H200             source
=================  ===================  ===============  ==============================================
memory bandwidth   3.0 TB/s             4.3 TB/s         H100: project's measured copy bandwidth
                                                         2026-11-22 (2.98 TB/s read+write,
                                                         ``copy_gb_per_s`` in benchmarks/results/
                                                         h100-2026-11-22-cuda-ops.json). H200:
                                                         vendor spec 4.8 TB/s x the H100's measured
                                                         copy/spec ratio (2.98/3.35) -- an estimate,
                                                         not measured.
bf16/fp16 dense    790 TFLOP/s          790 TFLOP/s      shared/reference/anchor-figures-h100.md
(tensor cores)                                           (vendor spec 989); H200: same SMs and clocks.
TF32 (fp32 conv)   400 TFLOP/s          400 TFLOP/s      vendor spec 494 dense, scaled like bf16;
                                                         cuDNN convs use TF32 by default.
fp32 non-tensor    60 TFLOP/s           60 TFLOP/s       vendor spec 67 (SXM); elementwise math.
=================  ===================  ===============  ==============================================

The CUDA extension (``cuda`` backend, first in ``AUTO_PREFERENCE``) is traced only where it is
built; otherwise ``auto`` resolves to ``triton`` as on a GPU without the extension.  Both are one
kernel per fused op with the same inputs and outputs, so the traffic is the same.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Optional
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CEILINGS", "CONFIGS", "KINDS", "OpRecord", "Report", "TrafficRecorder", "fake_cuda",
           "fake_like", "build_model", "trace_sampling_step", "trace_training_step", "channels_last", "main"]

#: bandwidth (bytes/s) and peaks (FLOP/s); see the table in the module docstring
CEILINGS = {
    "H100": dict(bandwidth=3.0e12, bf16=790e12, tf32=400e12, fp32=60e12),
    "H200": dict(bandwidth=4.3e12, bf16=790e12, tf32=400e12, fp32=60e12),
}

#: model configurations: CondRefineNetDilated(image_size, channels, ngf, num_levels)
CONFIGS = {
    "mnist": dict(image_size=28, channels=1, ngf=64, num_levels=10),
    "cifar10": dict(image_size=32, channels=3, ngf=128, num_levels=10),
}

KINDS = ("conv", "cin++", "langevin", "elementwise", "pool", "interpolate", "cast", "copy", "reduce",
         "optimizer", "other")

_FREE = {"detach", "alias", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
         "lift_fresh", "_local_scalar_dense", "set_", "resize_", "_unsafe_view", "view", "_reshape_alias",
         "unsqueeze_", "squeeze_", "as_strided_", "t_", "transpose_"}
_COPY = {"clone", "copy_", "_to_copy", "contiguous", "copy"}
_POOL = ("avg_pool", "max_pool", "adaptive_")
_REDUCE = {"sum", "mean", "var", "var_mean", "std", "amax", "amin", "max", "min", "norm", "linalg_vector_norm",
           "prod", "_foreach_norm", "bincount", "index_add", "index_add_", "scatter_add", "scatter_add_",
           "native_batch_norm", "_native_batch_norm_legit_no_training"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm"}


def channels_last(t: torch.Tensor) -> bool:
    """Channels-last layout as cuDNN reads it (``cudnn_conv_suggest_memory_format`` uses the tensor's
    ``suggest_memory_format``): 4-D with strides in NHWC order.  A 1-channel image with NCHW strides
    (784, 784, 28, 1) is NCHW; with NHWC strides (784, 1, 28, 1) it is channels-last."""
    from torch._prims_common import suggest_memory_format
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _among(t: torch.Tensor, tensors) -> bool:
    return any(t is u for u in tensors)


def _bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for ``t``: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _distinct_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (id(t.untyped_storage()) if not isinstance(t, FakeTensor) else id(t), t.storage_offset(),
               tuple(t.shape), tuple(t.stride()))
        if key in seen:
            continue
        seen.add(key)
        total += _bytes(t)
    return total


def _conv_flops(x_shape, w_shape, out_shape, groups: int) -> int:
    n, cout = out_shape[0], out_shape[1]
    spatial = math.prod(out_shape[2:])
    cin_g = w_shape[1]                 # weight [Cout, Cin/groups, kh, kw]
    return 2 * n * cout * spatial * cin_g * math.prod(w_shape[2:])


@dataclass
class OpRecord:
    """One launched kernel (or fused op) of the trace."""
    op: str
    kind: str
    phase: str
    kernels: int
    bytes_read: int
    bytes_written: int
    flops: int
    dtype: str
    nhwc: Optional[bool] = None        # convolutions: input channels-last
    shape: tuple = ()

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass
class Report:
    """The ops of one traced step, grouped by kind, with floors at :data:`CEILINGS`."""
    config: str
    batch: int
    precision: str
    what: str                          # "sampling step" | "training step"
    options: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)

    @property
    def kernels(self) -> int:
        return sum(r.kernels for r in self.ops)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.ops)

    @property
    def gb(self) -> float:
        return self.bytes / 1e9

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.ops)

    def by_kind(self) -> dict:
        out = {}
        for r in self.ops:
            d = out.setdefault(r.kind, dict(kernels=0, bytes=0, flops=0))
            d["kernels"] += r.kernels
            d["bytes"] += r.bytes
            d["flops"] += r.flops
        return {k: out[k] for k in KINDS if k in out}

    def compute_seconds(self, gpu: str = "H100") -> float:
        """FLOPs / peak, each op at the peak of its dtype (tensor-core ops: bf16 or TF32)."""
        c = CEILINGS[gpu]
        total = 0.0
        for r in self.ops:
            if r.kind == "conv" or r.op in _MATMUL:
                total += r.flops / (c["bf16"] if r.dtype in ("bfloat16", "float16") else c["tf32"])
            else:
                total += r.flops / c["fp32"]
        return total

    def floors(self) -> dict:
        """Seconds: memory floor (bytes / bandwidth) and compute floor (FLOPs / peak) per GPU."""
        return {gpu: dict(memory_s=self.bytes / c["bandwidth"], compute_s=self.compute_seconds(gpu))
                for gpu, c in CEILINGS.items()}

    def violations(self, network_only: bool = True) -> dict:
        """Ops against the invariants: ``fp32`` (conv/elementwise/cin++/pool/interpolate of the network
        not in the network's precision, bf16) and ``nchw`` (convolutions whose input is not NHWC)."""
        net = [r for r in self.ops if r.phase == "network" or not network_only]
        want = "bfloat16" if self.precision == "bf16" else "float32"
        fp32 = [r for r in net if r.kind in ("conv", "elementwise", "cin++", "pool", "interpolate")
                and r.dtype != want]
        nchw = [r for r in net if r.kind == "conv" and not r.nhwc]
        return dict(fp32=fp32, nchw=nchw)

    def top(self, k: int = 10) -> list:
        return sorted(self.ops, key=lambda r: r.bytes, reverse=True)[:k]

    def to_dict(self) -> dict:
        return dict(config=self.config, batch=self.batch, precision=self.precision, what=self.what,
                    options={k: repr(v) for k, v in self.options.items()},
                    kernels=self.kernels, bytes=self.bytes, flops=self.flops, by_kind=self.by_kind(),
                    floors=self.floors(), ceilings=CEILINGS,
                    violations={k: len(v) for k, v in self.violations().items()},
                    ops=[asdict(r) for r in self.ops])


class TrafficRecorder(TorchDispatchMode):
    """Record kernels, bytes and FLOPs of every op dispatched inside it (push it inside a FakeTensorMode).

    ``phase`` labels the records (``"network"`` while the model's forward runs, see :func:`_phases`).
    """

    def __init__(self, device_type: str = "cuda"):
        super().__init__()
        self.ops: list = []
        self.phase = "step"
        self.device_type = device_type

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten.convolution.default and out.dim() == 4 and args[0].device.type == self.device_type \
                and (channels_last(args[0]) or channels_last(args[1])):
            # cuDNN returns channels-last output for a channels-last input or weight
            # (cudnn_conv_suggest_memory_format); the meta kernel of a CPU-only build does not know that
            out = out.contiguous(memory_format=torch.channels_last)
        self._record(func, args, kwargs, out)
        return out

    def _add(self, op, kind, kernels, read, written, flops, dtype, nhwc=None, shape=()):
        self.ops.append(OpRecord(op, kind, self.phase, kernels, read, written, flops, str(dtype).replace("torch.", ""),
                                 nhwc, tuple(shape)))

    def _record(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        ns = getattr(func, "namespace", "aten")
        if ns == "prim":                       # prim.device, prim.layout: metadata
            return
        if ns == "aten" and (name in _FREE or getattr(func, "is_view", False)):
            return
        ins = list(_tensors((args, kwargs)))
        outs = list(_tensors(out))
        mutated = []
        schema = getattr(func, "_schema", None)
        if schema is not None:
            for a, v in zip(schema.arguments, args):
                if a.alias_info is not None and a.alias_info.is_write:
                    mutated.extend(_tensors(v))
            for a in schema.arguments[len(args):]:
                if a.alias_info is not None and a.alias_info.is_write and a.name in kwargs:
                    mutated.extend(_tensors(kwargs[a.name]))
        written_t = outs + mutated
        if ns == "aten" and name in ("zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "zero_",
                                     "fill_", "arange", "scalar_tensor", "randn", "rand", "normal_", "uniform_"):
            reads = [t for t in ins if not _among(t, mutated)] if name.endswith("_") else []
            read = _distinct_bytes(t for t in reads if name not in ("zero_", "fill_"))
            dt = written_t[0].dtype if written_t else ""
            self._add(str(func), "elementwise", 1, read, _distinct_bytes(written_t),
                      sum(t.numel() for t in written_t), dt, shape=written_t[0].shape if written_t else ())
            return
        read = _distinct_bytes(t for t in ins if not (_among(t, mutated) and name in _COPY))
        written = _distinct_bytes(written_t)
        dtype = next((t.dtype for t in written_t if t.is_floating_point()),
                     next((t.dtype for t in ins if t.is_floating_point()), ""))
        shape = written_t[0].shape if written_t else (ins[0].shape if ins else ())
        if ns == "fastncsn":
            kind = "langevin" if "langevin" in name else "pool" if "pool" in name else "cin++"
            self._add(str(func), kind, 1, read, written, 10 * sum(t.numel() for t in written_t), dtype, shape=shape)
            return
        if name == "convolution":
            self._convolution(func, args, out, dtype)
            return
        if name == "convolution_backward":
            grad_out, x, w = args[0], args[1], args[2]
            mask = args[-1]
            f = _conv_flops(x.shape, w.shape, grad_out.shape, args[8]) * (int(mask[0]) + int(mask[1]))
            f += grad_out.numel() if mask[2] else 0
            self._add(str(func), "conv", 1, read, written, f, dtype, nhwc=channels_last(x), shape=x.shape)
            return
        if name in _MATMUL:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            f = 2 * math.prod(a.shape) * b.shape[-1]
            self._add(str(func), "other", 1, read, written, f, dtype, shape=shape)
            return
        kind = self._kind(name, func, ins, written_t)
        flops = sum(t.numel() for t in ins) if kind == "reduce" else sum(t.numel() for t in written_t)
        if kind == "cast":
            src = next((t.dtype for t in ins if not _among(t, mutated)), ins[0].dtype if ins else "")
            dtype = f"{str(src).replace('torch.', '')}->{str(written_t[0].dtype).replace('torch.', '')}"
        self._add(str(func), kind, 1, read, written, flops, dtype, shape=shape)

    @staticmethod
    def _kind(name, func, ins, written_t) -> str:
        if name in _COPY:
            src = [t for t in ins if not any(t is w for w in written_t)]
            if src and written_t and src[0].dtype != written_t[0].dtype:
                return "cast"
            return "copy"
        if name.startswith("upsample") or "interpolate" in name or name.startswith("_upsample"):
            return "interpolate"
        if any(name.startswith(p) for p in _POOL):
            return "pool"
        if name.startswith("_fused_adam") or name.startswith("_fused_sgd") or name.startswith("_foreach"):
            return "optimizer"
        if name in _REDUCE:
            return "reduce"
        if torch.Tag.pointwise in getattr(func, "tags", ()) or name.endswith("_backward") and "elu" in name:
            return "elementwise"
        if name in ("where", "clamp", "clamp_", "masked_fill", "masked_fill_", "threshold_backward"):
            return "elementwise"
        return "other"

    def _convolution(self, func, args, out, dtype) -> None:
        x, w, bias = args[0], args[1], args[2]
        groups = args[8]
        nhwc_in = channels_last(x)
        cuda = x.device.type == self.device_type
        use_cl = nhwc_in or channels_last(w)
        if cuda and use_cl != nhwc_in:
            # cuDNN path: input.contiguous(backend format)
            self._add("aten.clone (conv input layout)", "copy", 1, _bytes(x), _bytes(x), x.numel(), x.dtype,
                      shape=x.shape)
        flops = _conv_flops(x.shape, w.shape, out.shape, groups)
        self._add(str(func), "conv", 1, _bytes(x) + _bytes(w), _bytes(out), flops, dtype,
                  nhwc=use_cl if cuda else nhwc_in, shape=x.shape)
        if bias is not None:
            if cuda:
                # cuDNN path: output.add_(bias) is its own kernel
                self._add("aten.add_ (conv bias)", "elementwise", 1, _bytes(out) + _bytes(bias), _bytes(out),
                          out.numel(), out.dtype, shape=out.shape)
            else:
                self.ops[-1].bytes_read += _bytes(bias)


# ---------------------------------------------------------------------------------------- fake CUDA


def fake_like(t: torch.Tensor, device="cuda") -> torch.Tensor:
    """An uninitialised tensor with ``t``'s shape, strides and dtype on ``device`` (call inside the mode)."""
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)


def _to_fake_cuda(module: torch.nn.Module, channels_last_weights: bool = False) -> None:
    """Replace every parameter and buffer of ``module`` by a fake CUDA tensor (same shape/strides/dtype;
    4-D parameters channels-last with ``channels_last_weights``)."""
    for mod in module.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None:
                f = fake_like(p)
                if channels_last_weights and p.dim() == 4:
                    f = torch.empty(p.shape, dtype=p.dtype, device="cuda").contiguous(memory_format=torch.channels_last)
                mod._parameters[k] = torch.nn.Parameter(f, requires_grad=p.requires_grad)
        for k, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[k] = fake_like(b)


def _basic_getitem(real_getitem):
    """``Tensor.__getitem__`` for ints, slices, None and Ellipsis through dispatched aten ops (the C++
    indexing path takes a CUDA device guard, which a CPU-only build lacks); anything else: the original."""
    def getitem(self, key):
        if not isinstance(self, FakeTensor) or self.device.type != "cuda":
            return real_getitem(self, key)
        if isinstance(key, torch.Tensor):      # x[idx]: gather along dim 0
            return torch.ops.aten.index.Tensor(self, [key])
        key = key if isinstance(key, tuple) else (key,)
        if not all(k is None or k is Ellipsis or isinstance(k, (int, slice)) for k in key) \
                or sum(k is Ellipsis for k in key) > 1:
            return real_getitem(self, key)
        used = sum(1 for k in key if k is not None and k is not Ellipsis)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.dim() - used) + key[i + 1:]
        out, dim = self, 0
        for k in key:
            if k is None:
                out, dim = out.unsqueeze(dim), dim + 1
            elif isinstance(k, int):
                out = torch.ops.aten.select.int(out, dim, k)
            else:
                start, stop, step = k.indices(out.shape[dim])
                out = torch.ops.aten.slice.Tensor(out, dim, start, stop, step)
                dim += 1
        return out
    return getitem


def _dispatched_copy_(real_copy_):
    """``Tensor.copy_`` through the aten op (its Python binding takes a CUDA device guard)."""
    def copy_(self, src, non_blocking=False):
        if isinstance(self, FakeTensor) and self.device.type == "cuda":
            return torch.ops.aten.copy_.default(self, src, non_blocking)
        return real_copy_(self, src, non_blocking)
    return copy_


def _is_fake_cuda(t) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


def _dispatched_methods() -> dict:
    """``Tensor.to`` / ``contiguous`` / ``float`` ... through aten ops for fake CUDA tensors (their Python
    bindings take a CUDA device guard, which a CPU-only build lacks); other tensors: the originals."""
    real = {name: getattr(torch.Tensor, name) for name in ("to", "contiguous", "float", "long")}

    def to(self, *args, **kwargs):
        if not isinstance(self, FakeTensor):
            return real["to"](self, *args, **kwargs)
        device, dtype, _, mf = torch._C._nn._parse_to(*args, **kwargs)
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        same_format = mf is None or mf == torch.preserve_format or self.is_contiguous(memory_format=mf)
        if device.type == self.device.type and dtype == self.dtype and same_format:
            return self
        return torch.ops.aten._to_copy.default(self, dtype=dtype, device=device,
                                               memory_format=mf or torch.preserve_format)

    def contiguous(self, memory_format=torch.contiguous_format):
        if not _is_fake_cuda(self):
            return real["contiguous"](self, memory_format=memory_format)
        if self.is_contiguous(memory_format=memory_format):
            return self
        return torch.ops.aten.clone.default(self, memory_format=memory_format)

    return dict(to=to, contiguous=contiguous,
                float=lambda self, *a, **k: to(self, torch.float32) if _is_fake_cuda(self) else real["float"](self, *a, **k),
                long=lambda self, *a, **k: to(self, torch.int64) if _is_fake_cuda(self) else real["long"](self, *a, **k))


@contextlib.contextmanager
def fake_cuda():
    """A ``FakeTensorMode`` in which ``device="cuda"`` works on a CPU-only build; yields the mode.

    Inside it only: ``torch.cuda.is_available()`` / ``is_bf16_supported()`` answer True and
    ``current_device()`` 0 (so ``auto`` backends, autocast and the samplers take their GPU paths);
    ``torch.tensor(data, device="cuda")`` is built on the CPU and moved (its data path bypasses the
    mode); basic indexing (``x[:, ::2]``) runs as aten ``slice``/``select`` ops (the C++ indexing path
    takes a CUDA device guard), and so do ``Tensor.copy_``, ``to``, ``contiguous``, ``float``, ``long``; and noise ladders are validated on their real values before they become fake (a fake tensor
    has no values to check).  Nothing runs on a GPU.
    """
    from fastncsn import losses, schedules
    from fastncsn.sampling import core as sampling_core
    from fastncsn.sampling import graphs as sampling_graphs

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    real_tensor, real_validate = torch.tensor, schedules.validate_sigmas

    def tensor(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            with unset_fake_temporarily():
                t = real_tensor(data, *args, **kwargs)
            return mode.from_tensor(t).to(device)
        return real_tensor(data, *args, device=device, **kwargs)

    def validate_sigmas(sigmas, name="sigmas"):
        if isinstance(sigmas, FakeTensor):     # already validated on its way in
            return sigmas
        with unset_fake_temporarily():
            t = real_validate(sigmas, name)
        return mode.from_tensor(t)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.is_available", lambda: True))
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: True))
        stack.enter_context(mock.patch("torch.cuda.current_device", lambda: 0))
        stack.enter_context(mock.patch("torch.tensor", tensor))
        stack.enter_context(mock.patch.object(torch.Tensor, "__getitem__", _basic_getitem(torch.Tensor.__getitem__)))
        stack.enter_context(mock.patch.object(torch.Tensor, "copy_", _dispatched_copy_(torch.Tensor.copy_)))
        for name, fn in _dispatched_methods().items():
            stack.enter_context(mock.patch.object(torch.Tensor, name, fn))
        for mod in (sampling_graphs, sampling_core, losses):
            if hasattr(mod, "validate_sigmas"):
                stack.enter_context(mock.patch.object(mod, "validate_sigmas", validate_sigmas))
        stack.enter_context(mode)
        yield mode


@contextlib.contextmanager
def _phases(model: torch.nn.Module, recorder: TrafficRecorder):
    """Label the recorder's ops ``"network"`` while ``model``'s forward runs."""
    def pre(*_):
        recorder.phase = "network"

    def post(*_):
        recorder.phase = "step"

    h1, h2 = model.register_forward_pre_hook(pre), model.register_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def build_model(config: str):
    """The score network of ``config`` (``CONFIGS``), real and on the CPU (fast: init only)."""
    from fastncsn.models import CondRefineNetDilated
    if config not in CONFIGS:
        raise ValueError(f"config: expected one of {tuple(CONFIGS)}, got {config!r}")
    c = CONFIGS[config]
    return CondRefineNetDilated(c["image_size"], c["channels"], ngf=c["ngf"], num_levels=c["num_levels"])


def _check(batch, precision):
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision: expected 'bf16' or 'fp32', got {precision!r}")


def trace_sampling_step(config: str, batch: int, precision: str = "bf16", fused_pool: bool = False,
                        fused_glue: bool = False, **sampler_options) -> Report:
    """One Langevin step of :class:`fastncsn.sampling.GraphSampler` (its ``step_once``: the body a
    captured graph replays) for the network of ``config`` at ``batch``, traced on fake CUDA tensors.

    ``sampler_options`` go to ``GraphSampler`` (e.g. ``channels_last=False``, ``backend="torch"``,
    ``layout=``, ``weights=``); ``fused_pool`` / ``fused_glue`` switch the model's fused 5x5 pool and
    CIN++ glue fusion on (``fastncsn.nn.set_fused_pool`` / ``set_fused_glue``); ``use_graphs`` is
    False (capture needs a GPU; the traced body is the same)."""
    from fastncsn.sampling import GraphSampler
    _check(batch, precision)
    model = build_model(config)
    if fused_pool or fused_glue:
        from fastncsn.nn import set_fused_glue, set_fused_pool
        set_fused_pool(model, fused_pool)
        set_fused_glue(model, fused_glue)
    sigmas = model.sigmas.clone()
    rec = TrafficRecorder()
    with fake_cuda():
        _to_fake_cuda(model)
        opts = dict(sigmas=sigmas, precision=precision, use_graphs=False, device="cuda")
        opts.update(sampler_options)
        sampler = GraphSampler(model, batch, **opts)
        # the module that runs: the model itself, or the sampler's private copy (layout/weights options)
        with _phases(sampler.net.module, rec), rec:
            sampler.step_once()
    return Report(config, batch, precision, "sampling step",
                  dict(sampler_options, fused_pool=fused_pool, fused_glue=fused_glue, step_backend=sampler.step_backend),
                  rec.ops)


def trace_training_step(config: str, batch: int = 128, precision: str = "bf16", lr: float = 1e-3) -> Report:
    """One fast DSM training step (``fastncsn.training``): ``prepare_fast_model`` (channels-last
    weights, fused norms; *no* regional compile -- Inductor cannot run on fake tensors here, so the
    blocks' glue is counted eagerly: an upper bound), zero_grad, ``dsm_step`` (forward under autocast,
    fp32 loss, backward) and the fused Adam step, on fake CUDA tensors."""
    from fastncsn.training import dsm_step, make_optimizer, prepare_fast_model
    _check(batch, precision)
    model = build_model(config)
    sigmas = model.sigmas.clone()
    shape = (batch, *model.data_shape)
    rec = TrafficRecorder()
    benchmark = torch.backends.cudnn.benchmark
    try:
        with fake_cuda() as mode:
            # the weights as prepare_fast_model leaves them on CUDA (channels-last); its model.to() calls
            # cannot swap fake parameters, so Module.to is a no-op here
            _to_fake_cuda(model, channels_last_weights=True)
            with mock.patch.object(torch.nn.Module, "to", lambda self, *a, **k: self):
                prepare_fast_model(model, "cuda", precision=precision, compile=False, backend="auto")
            opt = make_optimizer(model, lr, fast=True)
            x = torch.empty(shape, device="cuda")
            noise = torch.empty(shape, device="cuda")
            levels = torch.zeros(batch, dtype=torch.long, device="cuda")
            sig = mode.from_tensor(sigmas).to("cuda")
            model.train()
            with _phases(model, rec), rec:
                opt.zero_grad(set_to_none=True)
                dsm_step(model, x, sig, levels, noise, precision=precision)
                opt.step()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return Report(config, batch, precision, "training step", dict(lr=lr, compile=False), rec.ops)


# ---------------------------------------------------------------------------------------- CLI


def format_report(rep: Report, top: int = 10) -> str:
    lines = [f"{rep.what}: config {rep.config}, batch {rep.batch}, {rep.precision}, options {rep.options}",
             f"{'kind':<12}{'kernels':>9}{'GB':>10}{'GFLOP':>12}{'floor ms @3.0TB/s':>20}"]
    bw = CEILINGS["H100"]["bandwidth"]
    for kind, d in rep.by_kind().items():
        lines.append(f"{kind:<12}{d['kernels']:>9}{d['bytes'] / 1e9:>10.2f}{d['flops'] / 1e9:>12.1f}"
                     f"{d['bytes'] / bw * 1e3:>20.2f}")
    lines.append(f"{'total':<12}{rep.kernels:>9}{rep.gb:>10.2f}{rep.flops / 1e9:>12.1f}{rep.bytes / bw * 1e3:>20.2f}")
    for gpu, f in rep.floors().items():
        c = CEILINGS[gpu]
        lines.append(f"floor {gpu}: memory {f['memory_s'] * 1e3:.2f} ms at {c['bandwidth'] / 1e12:.1f} TB/s, "
                     f"compute {f['compute_s'] * 1e3:.2f} ms (bf16 {c['bf16'] / 1e12:.0f} / TF32 "
                     f"{c['tf32'] / 1e12:.0f} / fp32 {c['fp32'] / 1e12:.0f} TFLOP/s)")
    v = rep.violations()
    lines.append(f"invariants: {len(v['fp32'])} network ops not in {rep.precision}, "
                 f"{len(v['nchw'])} convolutions not NHWC")
    if top:
        lines.append(f"top {top} ops by bytes:")
        for r in rep.top(top):
            extra = "" if r.nhwc is None else (" NHWC" if r.nhwc else " NCHW")
            lines.append(f"  {r.bytes / 1e9:8.3f} GB  {r.kind:<11} {r.op:<40} {r.dtype:<18} {list(r.shape)}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.traffic", description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=tuple(CONFIGS), default="mnist")
    p.add_argument("--batch", type=int, default=None, help="default 1000 (sampling) / 128 (training)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--training", action="store_true", help="trace a training step instead of a sampling step")
    p.add_argument("--json", default=None, help="write the report (every op) to this JSON file")
    p.add_argument("--top", type=int, default=10, help="list the K ops that move the most bytes")
    a = p.parse_args(argv)
    if a.training:
        rep = trace_training_step(a.config, a.batch or 128, a.precision)
    else:
        rep = trace_sampling_step(a.config, a.batch or 1000, a.precision)
    print(format_report(rep, a.top))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep.to_dict(), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
