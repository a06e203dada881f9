"""The fast sampler: annealed Langevin dynamics replayed from CUDA graphs.

:class:`GraphSampler` runs the same update as
:func:`fastncsn.sampling.langevin.annealed_langevin` (seed 003, Algorithm 1)::

    for i = 1..L:  for t = 1..T:   x <- x + alpha_i/2 * s(x, i) + sqrt(alpha_i) * z

but with everything a CUDA graph needs:

* **Static buffers.** The fp32 sample state ``x`` ``[B, ...]``, the fp32 score
  buffer, the level labels ``[B]`` (int64), the step size ``alpha_i``, ``sigma_i``
  and the Philox ``seed``/``offset`` (int64) live on the device and are updated
  in place.  The per-level tables (``alpha``, ``sigma``, level index, ``[L]``)
  are device tensors too; switching level is three device-to-device copies.
* **Noise inside the kernel.** ``fastncsn.ops.langevin_step_`` draws ``z`` from
  the counter-based Philox stream keyed by ``seed`` at counter ``offset``
  (``fastncsn.ops.langevin_noise_ref``); the offset is advanced on the
  device after every draw, so each graph replay draws fresh noise.  The draw
  order is that of ``annealed_langevin(..., noise_fn=...)``: per level first the
  inpainting noise (with a mask), then one draw per step -- which is how the
  tests feed the reference sampler the very same noise.
* **Capture.** After a warm-up on a side stream (which also compiles the Triton
  kernels), one level's ``T`` steps (``capture="level"``) or one step
  (``capture="step"``) are captured in a ``torch.cuda.CUDAGraph`` and replayed
  ``L`` (or ``L*T``) times; inpainting's per-level re-noising of the known
  pixels and the final denoising step are captured as their own graphs, all in
  one memory pool.  Nothing in the loop synchronises with the host.
* **Precision.** ``"bf16"`` runs the network under ``torch.autocast(bfloat16)``
  (channels-last input) with the state, step and score buffer in fp32;
  ``"fp32"`` matches the reference sampler within fp32 tolerance.
* **Network format** (``layout=``, ``weights=``; :mod:`fastncsn.sampling.network_format`):
  strict NHWC for every channel count with weights converted once, and bf16 weights
  made once instead of per-step autocast casts -- switches, old path the default
  until measured (benchmarks/NOTES.md).
* **Snapshots** every ``k`` steps go to a preallocated device buffer
  ``[L*T // k, B, ...]`` with a device-side write index.

On machines without CUDA (``use_graphs=False``) the very same step functions run
eagerly on the same static buffers -- that is what CI checks against the
reference sampler.  :func:`get_graph_sampler` keeps recently used samplers (and
their captured graphs) in a small module-level cache.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch

from .. import ops
from ..devices import resolve_graph_device
from ..nn import fused_op_modules
from ..ops import langevin_noise_counters, langevin_noise_ref
from ..schedules import validate_sigmas
from .core import (NOISE_MODES, SamplerSettings, SamplingDivergedError, check_count, check_mask, check_model_levels,
                   check_seed, chunks, diverged, escape_bound, eval_mode, init_samples, model_device, use_backend)
from .rules import SLOT_STRIDE, affine_update, build_plan, heun_update, init_rows, noise_rows, row_counters
from .network_format import LAYOUTS, WEIGHT_MODES, SamplerNetwork

__all__ = ["GraphSampler", "get_graph_sampler", "clear_graph_cache", "capture_graph", "PRECISIONS", "CAPTURE_MODES",
           "METHODS", "LAYOUTS", "WEIGHT_MODES"]

PRECISIONS = ("fp32", "bf16")
CAPTURE_MODES = ("level", "step")
#: "annealed": Langevin (vanilla Langevin is the one-level case); "hmc": EXPERIMENTAL score-only leapfrog
METHODS = ("annealed", "hmc")
#: samplers kept by :func:`get_graph_sampler` (each holds its graphs' memory pool)
CACHE_SIZE = 4

_CACHE: "OrderedDict[tuple, GraphSampler]" = OrderedDict()


class GraphSampler:
    """Annealed Langevin sampling (NCSN paper, Algorithm 1) with static buffers and CUDA graphs.

    The settings, their defaults (NCSN's: step_lr 2e-5 in the reference
    convention, T = 100, uniform init on [0, 1)), validation, initialisation and
    chunking are those of :mod:`fastncsn.sampling.core`, shared with
    :func:`fastncsn.sampling.annealed_langevin`; this class differs only in how a
    step is executed (static buffers, fused step, captured graphs).

    Args:
        model: score function ``model(x, level) -> score`` (a fastncsn score
            model, or any callable; then pass ``sigmas`` and ``data_shape``).
        batch_size: B, the batch of the static buffers (and of the graphs);
            :meth:`sample` draws any ``n`` in chunks of B.
        sigmas: ``[L]`` decreasing ladder (default: ``model.sigmas``).
        eps, steps_per_level, step_convention, init, init_range, denoise, clamp,
            snapshot_every: sampler settings (:class:`~fastncsn.sampling.core.SamplerSettings`);
            ``None`` takes NCSN's table :data:`~fastncsn.sampling.core.NCSN_SAMPLING`.
            ``init`` and ``init_range`` give the starting points when :meth:`sample`
            gets no ``x0``; ``denoise`` ends with ``x + sigma_L^2 s(x, L)``;
            ``snapshot_every = k > 0`` keeps x after every k-th step.
        precision: ``"bf16"`` (network under bf16 autocast, fp32 state) or
            ``"fp32"``; ``None``: bf16 on CUDA devices that support it, else fp32.
        channels_last: feed 4-D inputs to the network in channels-last format
            (the state itself stays contiguous, so the noise does not depend on it);
            ``False`` is ``layout="contiguous"``.
        layout: memory format of the network (:mod:`fastncsn.sampling.network_format`):
            ``"channels_last"`` (default with ``channels_last=True``; a no-op for one
            channel), ``"channels_last_strict"`` (NHWC strides for every channel count,
            weights converted once on a private copy of the model) or ``"contiguous"``.
        weights: ``"autocast"`` (default: the model's weights under bf16 autocast) or
            ``"bf16_once"`` (``precision="bf16"`` only: a private bf16 copy of the weights
            made once, no autocast, bf16 end to end; refreshed from the model at every
            :meth:`sample`).  The user's model is never changed.
        backend: fused-op backend ("auto" | "triton" | "cuda" | "torch") of the
            Langevin step and, while this sampler runs, of the model's norms
            (restored afterwards: the backend is never saved state of the model);
            ``None``: "auto" for the step, the model's norms as they are.
        use_graphs: capture CUDA graphs (default: on CUDA devices); ``False``
            runs the same step functions eagerly.
        capture: ``"level"`` (one graph of T steps, replayed L times) or
            ``"step"`` (one graph of one step, replayed L*T times).
        method: ``"annealed"`` or ``"hmc"`` (EXPERIMENTAL score-only HMC,
            ``leapfrog_steps`` leapfrog steps of size sqrt(alpha_i) per iteration,
            as :func:`fastncsn.sampling.hmc_annealed`; no inpainting or clamp).
        model_levels: the model's level index for each entry of ``sigmas``
            (default ``0..L-1``); vanilla Langevin (NCSN paper eq. 4) is
            ``sigmas=[s]``, ``model_levels=[i]``, ``step_convention="paper"``
            (then ``alpha = eps``).
        data_shape: shape of one sample (default ``model.data_shape``).
        device: where to sample (default: the model's device).
        warmup: warm-up runs before capture.
        sampler: ``"ald"`` (default) | ``"cas"`` | ``"pc"`` | ``"heun"``: the step plan
            (:mod:`fastncsn.sampling.rules`), the same plan :func:`fastncsn.sample`'s reference loop runs.
        noise: ``"batch"`` (default for ``sampler="ald"``: one Philox stream over the batch, the offset
            running on across chunks -- the stream of earlier releases) or ``"per_sample"`` (sample ``k``'s
            noise keyed by ``(seed, k)``: :func:`fastncsn.sampling.rules.noise_rows`; any other sampler).
            Every plan but ``ald`` with ``"batch"`` noise runs with ``capture="level"`` and ``method="annealed"``.

    Attributes ``programs_built`` (step programs built: one per inpainting
    mode) and ``captures`` (CUDA graphs captured) count the work a cache hit saves.
    """

    def __init__(self, model: Callable, batch_size: int, sigmas=None, eps: Optional[float] = None,
                 steps_per_level: Optional[int] = None, step_convention: Optional[str] = None,
                 precision: Optional[str] = None, channels_last: bool = True, backend: Optional[str] = "auto",
                 use_graphs: Optional[bool] = None, capture: str = "level", denoise: Optional[bool] = None,
                 clamp: Optional[tuple] = None, snapshot_every: Optional[int] = None, method: str = "annealed",
                 leapfrog_steps: int = 3, model_levels: Optional[Sequence[int]] = None, init: Optional[str] = None,
                 init_range: Optional[tuple] = None, data_shape: Optional[Sequence[int]] = None, device=None,
                 warmup: int = 2, layout: Optional[str] = None, weights: str = "autocast",
                 sampler: str = "ald", noise: Optional[str] = None):
        if not callable(model):
            raise TypeError(f"model: expected a score function model(x, level), got {type(model).__name__}")
        self.settings = SamplerSettings.resolve(
            sampler=sampler, eps=eps, steps_per_level=steps_per_level, step_convention=step_convention, init=init,
            init_range=init_range, denoise=denoise, clamp=clamp, snapshot_every=snapshot_every)
        noise = ("batch" if self.settings.sampler == "ald" else "per_sample") if noise is None else noise
        if noise not in NOISE_MODES:
            raise ValueError(f"noise: expected one of {NOISE_MODES}, got {noise!r}")
        if noise == "batch" and self.settings.sampler != "ald":
            raise ValueError(f"noise: 'batch' is the stream of sampler 'ald' only, got {self.settings.sampler!r}")
        self.noise = noise
        #: the step plan (None: the releases' annealed Langevin loop with the batch-wide stream)
        self.plan = None if noise == "batch" else True
        if self.plan and (capture != "level" or method != "annealed"):
            raise ValueError(f"capture: sampler plans ({self.settings.sampler!r}, noise {noise!r}) run with "
                             f"capture='level' and method='annealed', got capture={capture!r}, method={method!r}")
        self._check_options(batch_size, capture, method, precision, leapfrog_steps, warmup)
        self.model, self.batch_size, self.backend = model, batch_size, backend
        self.channels_last, self.capture, self.method = channels_last, capture, method
        self.leapfrog_steps, self.warmup = leapfrog_steps, warmup
        self._place(device, use_graphs, precision)
        self._tables(sigmas, model_levels)
        self.data_shape = self._data_shape(data_shape)
        self._buffers()
        self._network(layout, weights)
        if (self.backend or "auto") == "auto":  # auto's table row for the step at this state's shape class
            self.step_backend = ops.resolve_backend("auto", self.device, "langevin_step_", like=self.score)
        self._programs: dict = {}
        self._graphs: dict = {}
        self._pool = None
        self.programs_built = 0
        self.captures = 0
        self.build_seconds = 0.0

    # the settings under the names the step functions use
    steps_per_level = property(lambda self: self.settings.steps_per_level)
    denoise = property(lambda self: self.settings.denoise)
    clamp = property(lambda self: self.settings.clamp)
    snapshot_every = property(lambda self: self.settings.snapshot_every)

    def _check_options(self, batch_size, capture, method, precision, leapfrog_steps, warmup) -> None:
        check_count(batch_size, "batch_size")
        if capture not in CAPTURE_MODES:
            raise ValueError(f"capture: expected one of {CAPTURE_MODES}, got {capture!r}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS} or None, got {precision!r}")
        check_count(warmup, "warmup")
        check_count(leapfrog_steps, "leapfrog_steps")
        if method == "hmc" and self.settings.clamp is not None:
            raise ValueError("clamp: not supported with method='hmc'")

    def _place(self, device, use_graphs: Optional[bool], precision: Optional[str]) -> None:
        """Device, graphs on/off, precision and the Langevin step's backend."""
        self.device, use_graphs = resolve_graph_device(device if device is not None else model_device(self.model),
                                                       use_graphs)
        if precision is None:
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.use_graphs, self.precision = use_graphs, precision
        self.step_backend = ops.resolve_backend(self.backend or "auto", self.device, "langevin_step_")

    def _tables(self, sigmas, model_levels) -> None:
        """Per-level tables on the device: Algorithm 1's alpha_i, sqrt(alpha_i), sigma_i, the model's level."""
        if sigmas is None:
            if not hasattr(self.model, "sigmas"):
                raise ValueError("sigmas: required when the model has no `sigmas`")
            sigmas = self.model.sigmas
        sig = validate_sigmas(sigmas, "sigmas")
        num_levels = sig.numel()
        if model_levels is None:
            check_model_levels(sig, self.model)
        model_levels = list(range(num_levels)) if model_levels is None else list(model_levels)
        own = getattr(self.model, "sigmas", None)
        top = torch.as_tensor(own).numel() if own is not None else None
        if len(model_levels) != num_levels or not all(
                isinstance(v, int) and 0 <= v < (top if top is not None else v + 1) for v in model_levels):
            within = f" in [0, {top})" if top is not None else " >= 0"
            raise ValueError(f"model_levels: expected {num_levels} ints{within} (one per sigma), got {model_levels!r}")
        dev, f32 = self.device, torch.float32
        self.num_levels = num_levels
        self.alpha_table = self.settings.step_sizes(sig).to(device=dev, dtype=f32)
        self.h_table = self.alpha_table.sqrt()
        self.sigma_table = sig.to(device=dev, dtype=f32)
        self.level_table = torch.tensor(model_levels, dtype=torch.long, device=dev)
        if self.plan is not None:
            self.plan = build_plan(self.settings, sig)
            t = self.plan.table(dev)
            lv = torch.tensor(model_levels, dtype=torch.long, device=dev)
            self.coef_table, self.sigma_loop = t["coef"], t["sigma"]
            self.level_loop, self.level2_loop = lv[t["level"][:, 0]], lv[t["level2"][:, 0]]
            self.slot_off_table, self.begin_off_table = t["slot"] * SLOT_STRIDE, t["begin"] * SLOT_STRIDE
            self._model_levels = model_levels
            self._final_coefs = {st.slot: torch.tensor(st.coef, dtype=torch.float64).to(dtype=f32, device=dev)
                                 for st in self.plan.final}

    def _data_shape(self, data_shape) -> tuple:
        shape = getattr(self.model, "data_shape", None) if data_shape is None else data_shape
        if shape is None:
            raise ValueError("data_shape: required when the model has no `data_shape`")
        return tuple(int(v) for v in shape)

    def _buffers(self) -> None:
        """Static buffers: state, score, levels, step size, Philox seed/offset, snapshots."""
        dev, f32, b, shape = self.device, torch.float32, self.batch_size, self.data_shape
        self.x = torch.zeros((b, *shape), device=dev, dtype=f32)
        self.score = torch.zeros_like(self.x)
        self.levels = torch.zeros(b, dtype=torch.long, device=dev)
        self.alpha = torch.zeros((), device=dev, dtype=f32)
        self.h = torch.zeros((), device=dev, dtype=f32)
        self.sigma = torch.zeros((), device=dev, dtype=f32)
        self.seed = torch.zeros((), dtype=torch.long, device=dev)
        self.offset = torch.zeros((), dtype=torch.long, device=dev)
        self.counters = langevin_noise_counters(self.x.numel())
        # first level (0-based; num_levels = the denoising step) whose samples were NaN/inf, -1: none;
        # updated on the device after every level, read once per sample() call
        self.first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        self._escape = None   #: the divergence bound of the current sample() call (escape_bound)
        self.level_ids = torch.arange(self.num_levels + 1, device=dev)
        self.mask = self.known = self.known_i = self.p = None
        if self.method == "hmc":
            self.p = torch.zeros_like(self.x)
        k = self.snapshot_every
        self.num_snapshots = self.num_levels * self.steps_per_level // k if k else 0
        if self.plan is not None:
            P = len(self.plan.levels[0]) if self.plan.levels else 1
            self.coef = torch.zeros((P, 3), device=dev, dtype=f32)
            self.slot_off = torch.zeros(P, dtype=torch.long, device=dev)
            self.begin_off = torch.zeros((), dtype=torch.long, device=dev)
            self.row_base = torch.zeros((), dtype=torch.long, device=dev)
            self.levels2 = torch.zeros(b, dtype=torch.long, device=dev)
            self.num_snapshots = self.plan.snapshot_steps // k if k else 0
            self._row_counters = row_counters(self.x)
            self._fused_noise = self.x[0].numel() % 4 == 0
            if any(st.kind == "heun" for lv in self.plan.levels for st in lv):
                self.xp = torch.zeros_like(self.x)
                self.score2 = torch.zeros_like(self.x)
        if k:
            # one spare row: the dynamic pattern writes there when a step takes no snapshot
            self.snaps = torch.zeros((self.num_snapshots + 1, b, *shape), device=dev, dtype=f32)
            self.snap_idx = torch.zeros(1, dtype=torch.long, device=dev)
            self.spare_idx = torch.full((1,), self.num_snapshots, dtype=torch.long, device=dev)
            self.step_count = torch.zeros(1, dtype=torch.long, device=dev)
        unit = self.steps_per_level if self.capture == "level" else 1
        # the snapshot steps are the same in every replay of a unit iff the unit length is a multiple of k
        self._static_snaps = bool(k) and unit % k == 0 and self.plan is None
        self._unit_steps, self._units_per_level = unit, self.steps_per_level // unit

    # ------------------------------------------------------------------ network format (layout, weights)

    def _network(self, layout: Optional[str], weights: str) -> None:
        """The network as the steps call it (:class:`~fastncsn.sampling.network_format.SamplerNetwork`):
        input layout and weight precision fixed here, once; a private copy of the model if needed."""
        if layout is None:
            layout = "channels_last" if self.channels_last else "contiguous"
        elif not self.channels_last and layout != "contiguous":
            raise ValueError(f"channels_last: False contradicts layout={layout!r}; pass one of them")
        self.layout, self.weights = layout, weights
        self.net = SamplerNetwork(self.model, layout, weights, self.precision, self.x)

    def refresh_weights(self) -> None:
        """Copy the model's weights into the sampler's private copy (``layout="channels_last_strict"`` or
        ``weights="bf16_once"``), in place, so the captured graphs see them; :meth:`sample` and
        :meth:`prepare` call it every time.  No-op when the sampler runs the model itself."""
        with use_backend(self.model, self.backend):
            self.net.refresh()

    # ------------------------------------------------------------------ step functions (captured or eager)

    def _eval_score(self) -> None:
        """score <- s(x, labels) in fp32 (the network in the sampler's layout and precision)."""
        self.score.copy_(self.net(self.x, self.levels))

    def _draw(self) -> torch.Tensor:
        """z ~ N(0, I) like x from the Philox stream at the current offset; advances the offset."""
        z = langevin_noise_ref(self.seed, self.offset, self.x)
        self.offset.add_(self.counters)
        return z

    def _set_level(self, i: int) -> None:
        """Switch to level ``i``: device-to-device copies from the tables, no host sync."""
        self.levels.copy_(self.level_table[i])
        self.alpha.copy_(self.alpha_table[i])
        self.h.copy_(self.h_table[i])
        self.sigma.copy_(self.sigma_table[i])

    def _begin_level(self) -> None:
        """Inpainting (seed 003 appendix B.3): known pixels <- known + sigma_i z, drawn once per level."""
        self.known_i.copy_(self.known + self.sigma * self._draw())
        self.x.copy_(torch.where(self.mask, self.known_i, self.x))

    def _langevin_step(self, inpaint: bool) -> None:
        """x <- x + alpha/2 s(x) + sqrt(alpha) z, fused, noise drawn in the kernel; offset advanced."""
        self._eval_score()
        ops.langevin_step_(self.x, self.score, self.alpha, self.seed, self.offset,
                           mask=self.mask if inpaint else None, known=self.known_i if inpaint else None,
                           clamp=self.clamp, backend=self.step_backend)
        self.offset.add_(self.counters)

    def _hmc_iteration(self) -> None:
        """EXPERIMENTAL score-only HMC: p ~ N(0, I), then leapfrog with force s and step h = sqrt(alpha)."""
        self.p.copy_(self._draw())
        self._eval_score()
        for _ in range(self.leapfrog_steps):
            self.p.add_(self.h / 2 * self.score)
            self.x.add_(self.h * self.p)
            self._eval_score()
            self.p.add_(self.h / 2 * self.score)

    # ------------------------------------------------------------------ plan steps (sampler rules)

    def _set_plan_level(self, i: int) -> None:
        """Switch to loop level ``i`` of the plan: device-to-device copies from the plan's tables."""
        self.levels.copy_(self.level_loop[i])
        self.levels2.copy_(self.level2_loop[i])
        self.coef.copy_(self.coef_table[i])
        self.slot_off.copy_(self.slot_off_table[i])
        self.begin_off.copy_(self.begin_off_table[i])
        self.sigma.copy_(self.sigma_loop[i])

    def _noise_at(self, offset) -> torch.Tensor:
        self.offset.copy_(self.row_base + offset)
        return noise_rows(self.seed, self.offset, self.x)

    def _plan_begin(self, offset) -> None:
        """Inpainting: known pixels <- known + sigma z (the level's slot), as the reference runner."""
        self.known_i.copy_(self.known + self.sigma * self._noise_at(offset))
        self.x.copy_(torch.where(self.mask, self.known_i, self.x))

    def _plan_step(self, kind: str, coef, offset, noisy: bool, denoise: bool, inpaint: bool) -> None:
        """One step of a plan on the static buffers (:mod:`fastncsn.sampling.rules`' updates)."""
        mask = self.mask if inpaint else None
        known = (self.known if denoise else self.known_i) if inpaint else None
        self._eval_score()
        if kind == "langevin":
            if self._fused_noise:       # the kernel draws sample k's noise itself (rows of 4k counters)
                self.offset.copy_(self.row_base + offset)
                ops.langevin_step_(self.x, self.score, coef[0], self.seed, self.offset, mask=mask, known=known,
                                   clamp=self.clamp, backend=self.step_backend)
            else:
                ops.langevin_step_(self.x, self.score, coef[0], noise=self._noise_at(offset), mask=mask,
                                   known=known, clamp=self.clamp, backend=self.step_backend)
        elif kind == "affine":
            z = self._noise_at(offset) if noisy else None
            self.x.copy_(affine_update(self.x, self.score, coef[0], coef[1], z, mask, known, self.clamp))
        else:
            self.xp.copy_(self.x + coef[0] * self.score)
            self.score2.copy_(self.net(self.xp, self.levels2))
            out = heun_update(self.x, self.score, self.score2, coef[1], coef[2])
            self.x.copy_(torch.where(mask, known, out) if inpaint else out)

    def _plan_unit(self, inpaint: bool) -> None:
        for j, st in enumerate(self.plan.levels[0]):
            self._plan_step(st.kind, self.coef[j], self.slot_off[j], st.noisy, False, inpaint)
            self._snapshot(j)

    def _plan_final(self, inpaint: bool) -> None:
        plan, lv = self.plan, self._model_levels
        self.levels.fill_(lv[plan.num_levels - 1])
        self.sigma.fill_(plan.sigmas[-1])
        if inpaint and plan.final_needs_begin():
            self._plan_begin(plan.final_begin_slot * SLOT_STRIDE)
        for st in plan.final:
            coef = self._final_coefs[st.slot]
            self._plan_step(st.kind, coef, st.slot * SLOT_STRIDE, st.noisy, st.denoise, inpaint)
            if not st.denoise:
                self._snapshot(0)

    def _snapshot(self, t: int) -> None:
        k = self.snapshot_every
        if not k:
            return
        if self._static_snaps:
            if (t + 1) % k == 0:
                self.snaps.index_copy_(0, self.snap_idx, self.x.unsqueeze(0))
                self.snap_idx.add_(1)
            return
        self.step_count.add_(1)
        take = torch.remainder(self.step_count, k) == 0
        self.snaps.index_copy_(0, torch.where(take, self.snap_idx, self.spare_idx), self.x.unsqueeze(0))
        self.snap_idx.add_(take.long())

    def _unit(self, inpaint: bool) -> None:
        """One replay unit: T steps (capture='level') or one step (capture='step')."""
        for t in range(self._unit_steps):
            if self.method == "hmc":
                self._hmc_iteration()
            else:
                self._langevin_step(inpaint)
            self._snapshot(t)

    def _final(self, inpaint: bool) -> None:
        """Denoising step x <- x + sigma_L^2 s(x, L) (Tweedie), at the last level's labels."""
        self._eval_score()
        self.x.add_(self.sigma ** 2 * self.score)
        if inpaint:
            self.x.copy_(torch.where(self.mask, self.known, self.x))

    # ------------------------------------------------------------------ programs: eager or captured

    def _program(self, inpaint: bool) -> dict:
        prog = self._programs.get(inpaint)
        if prog is not None:
            return prog
        start = time.perf_counter()
        if inpaint and self.mask is None:
            self.mask = torch.zeros(self.x.shape, dtype=torch.bool, device=self.device)
            self.known = torch.zeros_like(self.x)
            self.known_i = torch.zeros_like(self.x)
        bodies = {}
        if self.plan is not None:
            if inpaint:
                bodies["begin"] = lambda: self._plan_begin(self.begin_off)
            if self.plan.levels:
                bodies["unit"] = lambda: self._plan_unit(inpaint)
            if self.plan.final:
                bodies["final"] = lambda: self._plan_final(inpaint)
        else:
            if inpaint:
                bodies["begin"] = self._begin_level
            bodies["unit"] = lambda: self._unit(inpaint)
            if self.denoise:
                bodies["final"] = lambda: self._final(inpaint)
        prog = self._capture(bodies, inpaint) if self.use_graphs else bodies
        self._programs[inpaint] = prog
        self.programs_built += 1
        self.build_seconds = time.perf_counter() - start
        return prog

    def _capture(self, bodies: dict, inpaint: bool) -> dict:
        """Warm up on a side stream (compiles the kernels), then capture each body in one memory pool."""
        dev = self.device
        self._set_level(0)
        main = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                if self.plan is not None:
                    for fn in bodies.values():
                        fn()
                    continue
                if inpaint:
                    bodies["begin"]()
                if self.method == "hmc":
                    self._hmc_iteration()
                else:
                    self._langevin_step(inpaint)
                if self.denoise:
                    bodies["final"]()
        main.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graphs = {}
        for name, fn in bodies.items():
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._pool):
                fn()
            graphs[name] = g
            self.captures += 1
        self._graphs[inpaint] = graphs
        return {name: g.replay for name, g in graphs.items()}

    def _mark_nonfinite(self, i: int, m: int) -> None:
        """first_bad <- i if the m real rows hold NaN/inf or blew up (``diverged``) and no earlier level did
        (device-side, no host sync)."""
        bad = diverged(self.x[:m], self._escape) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.level_ids[i], self.first_bad))

    def _run(self, prog: dict, m: int) -> None:
        if self.plan is not None:
            for i in range(len(self.plan.levels)):
                self._set_plan_level(i)
                if "begin" in prog:
                    prog["begin"]()
                prog["unit"]()
                self._mark_nonfinite(i, m)
            if "final" in prog:
                prog["final"]()
                self._mark_nonfinite(self.plan.final_level_id, m)
            return
        for i in range(self.num_levels):
            self._set_level(i)
            if "begin" in prog:
                prog["begin"]()
            for _ in range(self._units_per_level):
                prog["unit"]()
            self._mark_nonfinite(i, m)
        if "final" in prog:
            prog["final"]()
            self._mark_nonfinite(self.num_levels, m)

    def step_once(self) -> None:
        """Run one step eagerly, exactly as a captured unit replays it (the Langevin step or HMC
        iteration, then the snapshot hook), at the current level, without inpainting.

        For tracing and tests (``benchmarks.traffic`` runs it on fake CUDA tensors); it advances the
        state and the Philox offset like a replayed step."""
        with torch.no_grad(), eval_mode(self.model), use_backend(self.model, self.backend):
            if self.method == "hmc":
                self._hmc_iteration()
            else:
                self._langevin_step(False)
            self._snapshot(0)

    def prepare(self, inpaint: bool = False) -> "GraphSampler":
        """Build (warm up and capture) the step program now rather than on the first :meth:`sample`."""
        with torch.no_grad(), eval_mode(self.model), use_backend(self.model, self.backend):
            self.net.refresh()
            self._program(bool(inpaint))
        return self

    # ------------------------------------------------------------------ public

    def _initial(self, n: int, seed: int, x0, first_index: int = 0) -> torch.Tensor:
        shape = (n, *self.data_shape)
        if x0 is None and self.plan is not None:
            lo, hi = self.settings.init_range
            return init_rows(shape, self.settings.init, seed, first_index, sigma=float(self.sigma_table[0]),
                             low=lo, high=hi, device=self.device)
        if x0 is None:
            g = torch.Generator(device=self.device)
            g.manual_seed(seed)
            lo, hi = self.settings.init_range
            return init_samples(shape, self.settings.init, sigma=float(self.sigma_table[0]), generator=g,
                                device=self.device, low=lo, high=hi)
        if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != shape or not x0.is_floating_point():
            got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(f"x0: expected a floating-point tensor of shape {shape}, got {got}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0: contains NaN or inf")
        return x0.to(device=self.device, dtype=torch.float32)

    @staticmethod
    def _load(buf: torch.Tensor, chunk: torch.Tensor) -> None:
        """Copy a chunk of m <= B rows into a static buffer; the spare rows repeat the last row."""
        m = chunk.shape[0]
        buf[:m].copy_(chunk)
        if m < buf.shape[0]:
            buf[m:].copy_(chunk[-1:].expand(buf.shape[0] - m, *chunk.shape[1:]))

    @torch.no_grad()
    def sample(self, n: int, seed: Optional[int] = 0, x0: Optional[torch.Tensor] = None,
               mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None, first_index: int = 0):
        """Draw ``n`` samples, in chunks of ``batch_size`` replaying the captured program.

        Args:
            n: number of samples.
            seed: int in [0, 2**63): keys the Philox noise of the steps (counters
                start at 0 and run on across chunks) and, without ``x0``, the
                generator of the starting points; ``None`` picks one at random.
            x0: optional ``[n, *data_shape]`` starting points.
            mask, known: inpainting -- ``mask`` 1 at known pixels, ``known`` the
                data there (both broadcastable to ``[n, *data_shape]``).
            first_index: (``noise="per_sample"``) the global index of the first sample: row ``k`` is
                sample ``first_index + k`` of the seed's streams.

        Returns:
            ``[n, *data_shape]`` fp32 samples on the sampler's device, and the
            ``[L*T // k, n, *data_shape]`` snapshots when ``snapshot_every = k``.

        Raises:
            SamplingDivergedError: (a ``FloatingPointError``) NaN/inf samples; a device-side
                flag updated after every level is read once at the end and names the first
                such level.
        """
        check_count(n, "n")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,)))
        check_seed(seed)
        check_count(first_index, "first_index", minimum=0)
        if first_index and self.plan is None:
            raise ValueError("first_index: needs noise='per_sample'")
        x0 = self._initial(n, seed, x0, first_index)
        inpaint = mask is not None or known is not None
        if inpaint:
            if self.method == "hmc":
                raise ValueError("mask: inpainting is not supported with method='hmc'")
            if self.settings.sampler == "heun":
                raise ValueError("mask: inpainting is not supported with sampler 'heun' (an ODE)")
            mask, known = check_mask(mask, known, x0)
        out = torch.empty_like(x0)
        snaps = x0.new_empty((self.num_snapshots, n, *self.data_shape)) if self.snapshot_every else None
        with eval_mode(self.model), use_backend(self.model, self.backend):
            self.net.refresh()
            prog = self._program(inpaint)
            self.seed.fill_(seed)
            self.offset.zero_()
            self.first_bad.fill_(-1)
            self._escape = escape_bound(x0, float(self.sigma_table[0]))
            for start, m in chunks(n, self.batch_size):
                if self.plan is not None:
                    self.row_base.fill_((first_index + start) * self._row_counters)
                self._load(self.x, x0[start:start + m])
                if inpaint:
                    self._load(self.mask, mask.expand_as(x0)[start:start + m])
                    self._load(self.known, known[start:start + m])
                if snaps is not None:
                    self.snap_idx.zero_()
                    self.step_count.zero_()
                self._run(prog, m)
                out[start:start + m].copy_(self.x[:m])
                if snaps is not None:
                    snaps[:, start:start + m].copy_(self.snaps[:self.num_snapshots, :m])
        bad = int(self.first_bad)   # the one host read of the divergence flag
        if bad >= 0:
            raise SamplingDivergedError(bad, self.num_levels, bound=self._escape)
        return (out, snaps) if snaps is not None else out


# ---------------------------------------------------------------------- one-off captures


def capture_graph(fn: Callable, warmup: int = 3):
    """Capture ``fn()`` in a CUDA graph the usual way: ``warmup`` calls on a side stream (kernels compile,
    allocator settles), then one captured call.  Returns ``(graph, output of the captured call)``;
    ``graph.replay()`` reruns it on the same buffers.  Used by the benchmarks and GPU tests."""
    main = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    main.wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


# ---------------------------------------------------------------------- cache


def _frozen(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.detach().flatten().tolist()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(u) for u in v)
    if isinstance(v, torch.device):
        return str(v)
    return v


def _cache_key(model, batch_size: int, settings: dict) -> tuple:
    storage = backends = ()
    if isinstance(model, torch.nn.Module):
        # re-allocated weights (e.g. model.to(other device)) must not replay a stale graph
        storage = tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))
        # a graph captured with the norms on one backend must not replay after they were switched
        backends = tuple(m.backend for m in fused_op_modules(model))
    device = settings.get("device")
    device = str(torch.device(device)) if device is not None else str(model_device(model))
    return (id(model), storage, backends, device, batch_size,
            tuple(sorted((k, _frozen(v)) for k, v in settings.items() if k != "device")))


def get_graph_sampler(model: Callable, batch_size: int, **settings) -> GraphSampler:
    """A :class:`GraphSampler` for ``model``, ``batch_size`` and ``settings``, reused from a module-level
    cache (least recently used first out, ``CACHE_SIZE`` entries) so that a second call with the same
    model, shape and settings replays the graphs captured by the first.

    The graphs read the model's weights where they are: in-place updates (``load_state_dict``,
    an optimizer step) are seen; moving the model re-allocates them and builds a new sampler.
    (With a private copy -- ``layout="channels_last_strict"`` or ``weights="bf16_once"`` -- the graphs
    read the copy, which every ``sample()`` refreshes from the model: in-place updates are seen too.)
    Call :func:`clear_graph_cache` to free the graphs' memory.
    """
    key = _cache_key(model, batch_size, settings)
    sampler = _CACHE.get(key)
    if sampler is not None and sampler.model is model:
        _CACHE.move_to_end(key)
        return sampler
    sampler = GraphSampler(model, batch_size, **settings)
    _CACHE[key] = sampler
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sampler


def clear_graph_cache() -> None:
    """Drop every cached :class:`GraphSampler` (and with it the graphs and their memory pools)."""
    _CACHE.clear()
