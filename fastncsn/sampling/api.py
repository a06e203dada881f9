"""``fastncsn.sample()``: the one-call sampling API over the two executors of the sampler core."""
from __future__ import annotations

from typing import Optional

import torch

from ..devices import check_device
from .core import (NOISE_MODES, SamplerSettings, check_backend, check_count, check_finite, check_mask,
                   check_model_levels, check_seed, chunks, eval_mode, init_samples, make_generator, model_device,
                   resolve_model, use_backend)
from .langevin import annealed_langevin
from .rules import Plan, build_plan, init_rows, run_plan

__all__ = ["sample", "plan"]


def plan(model=None, sampler: Optional[str] = None, sigmas=None, **settings) -> Plan:
    """The :class:`~fastncsn.sampling.rules.Plan` ``sample(model, sampler=..., **settings)`` runs (its
    ``nfe``: network evaluations per sample), checked like :func:`sample` checks it, without sampling."""
    model = resolve_model(model)
    s = SamplerSettings.resolve(model, sampler=sampler, **settings)
    if sigmas is not None:
        check_model_levels(sigmas, model)
    return build_plan(s, model.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32))


@torch.no_grad()
def sample(model=None, n: int = 64, sigmas=None, steps_per_level: Optional[int] = None, eps: Optional[float] = None,
           step_convention: Optional[str] = None, seed: Optional[int] = 0,
           generator: Optional[torch.Generator] = None, device=None, init: Optional[str] = None,
           denoise: Optional[bool] = None, mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
           progress=True, backend: Optional[str] = None, snapshot_every: int = 0,
           batch_size: Optional[int] = None, clamp: Optional[tuple] = None, fast: Optional[bool] = None,
           precision: Optional[str] = None, sampler: Optional[str] = None, noise: Optional[str] = None,
           first_index: int = 0):
    """Draw ``n`` samples from a score model with one of the samplers of :mod:`fastncsn.sampling.rules`
    (default: the model's, else annealed Langevin dynamics, NCSN paper Algorithm 1).

    Args:
        model: a fastncsn score model, a checkpoint path, or ``None`` for the
            bundled digits model (works offline straight after install).
        n: number of samples.
        sigmas: noise ladder (default: the model's ``sigmas``).
        steps_per_level, eps, step_convention, init, denoise, clamp: sampler
            settings; ``None`` takes the model's ``sampling_defaults`` (a dict
            with any of these keys, plus ``init_range`` for uniform
            initialisation) and otherwise NCSN's table
            (:data:`fastncsn.sampling.core.NCSN_SAMPLING`: eps 2e-5 in the
            reference convention, T 100, uniform init on [0, 1), no denoising,
            no clamp).  Conventions: :mod:`fastncsn.sampling.core`.
        seed / generator: noise source; the same seed gives the same samples.
            A ``generator`` takes precedence over ``seed``.
        device: where to sample (default: the model's device).
        mask, known: inpainting -- ``mask`` 1 at known pixels, ``known`` the
            image(s) there (broadcastable to ``[n, *data_shape]``).
        progress: progress bar over the noise levels (reference path); a bar the caller owns (anything
            with ``update``) is advanced by one per level of every chunk instead.
        backend: fused-op backend of the model's norms for this call ("auto" |
            "triton" | "cuda" | "torch"); ``None`` keeps the model's own setting.
            The model is left as it was (the backend is not saved state).
        snapshot_every: k > 0 also returns the trajectory every k steps.
        batch_size: sample in chunks of this size (default: all at once).
        fast: ``True`` runs the CUDA-graph sampler (:class:`fastncsn.sampling.GraphSampler`),
            ``False`` the reference loop (:func:`fastncsn.sampling.annealed_langevin`);
            ``None``: fast on CUDA devices.  Both take the same settings.
        precision: the graph sampler's network precision, ``"bf16"`` or
            ``"fp32"`` (``None``: bf16 where supported); the reference loop is fp32.
        sampler: ``"ald"`` | ``"cas"`` | ``"pc"`` | ``"heun"`` (:data:`~fastncsn.sampling.core.SAMPLERS`;
            ``None``: the model's ``sampling_defaults["sampler"]``, else ``"ald"``); each takes its row of
            :data:`~fastncsn.sampling.core.SAMPLER_DEFAULTS` for the settings not given.
            :func:`plan` tells its NFE.
        noise: ``"per_sample"`` (default: sample ``k`` depends on ``seed`` and ``k`` only, whatever ``n``,
            ``batch_size`` or the number of processes) or ``"batch"`` (``sampler="ald"`` only: the
            batch-wide streams of earlier releases, reproducing their samples).
        first_index: the index of the first sample (``per_sample`` noise): sample ``first_index + k``
            of the run is returned in row ``k`` (a process of a sharded run passes its first index).

    Returns:
        ``[n, *model.data_shape]`` samples on ``device`` (``[n, C, H, W]`` for
        images, ``[n, D]`` for toy models), or ``(samples, snapshots)``.

    Raises:
        ValueError / TypeError: a bad argument, named (checked before any sampling): e.g. a
            ``device`` that is not 'cpu', 'cuda' or 'cuda:N' or has no CUDA here, a ``backend``
            unavailable on the device, ``sigmas`` with another number of levels than the model,
            NaN/inf in ``known``.
        SamplingDivergedError: (a ``FloatingPointError``) the samples became NaN or inf (step
            size too large, or a NaN score); names the first such noise level.

    Example::

        >>> import fastncsn
        >>> x = fastncsn.sample(n=4, steps_per_level=2, progress=False)   # bundled digits model
        >>> tuple(x.shape)
        (4, 1, 28, 28)
    """
    device = check_device(device, "device")
    model = resolve_model(model)
    check_count(n, "n")
    if batch_size is not None:
        check_count(batch_size, "batch_size")
    settings = SamplerSettings.resolve(model, sampler=sampler, eps=eps, steps_per_level=steps_per_level,
                                       step_convention=step_convention, init=init, denoise=denoise, clamp=clamp,
                                       snapshot_every=snapshot_every)
    noise = "per_sample" if noise is None else noise
    if noise not in NOISE_MODES:
        raise ValueError(f"noise: expected one of {NOISE_MODES}, got {noise!r}")
    if noise == "batch" and settings.sampler != "ald":
        raise ValueError(f"noise: 'batch' reproduces the streams of sampler 'ald' only, got sampler "
                         f"{settings.sampler!r}")
    check_count(first_index, "first_index", minimum=0)
    if first_index and noise == "batch":
        raise ValueError("first_index: needs noise='per_sample'")
    device = device if device is not None else model_device(model)
    check_backend(backend, device)
    if sigmas is not None:
        check_model_levels(sigmas, model)
    the_plan = build_plan(settings, model.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32))
    if settings.sampler == "heun" and (mask is not None or known is not None):
        raise ValueError("mask: inpainting is not supported with sampler 'heun' (an ODE)")
    model = model.to(device)
    fast = device.type == "cuda" if fast is None else fast
    if not fast and precision not in (None, "fp32"):
        raise ValueError(f"precision: the reference sampler (fast=False) runs in fp32, got {precision!r}")
    sigmas = (model.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32)).to(device)
    if noise == "batch":   # the releases' streams, on their code paths
        g = make_generator(None if generator is not None else seed, generator, device)
        x0 = _initial(model, settings, n, sigmas, g, device)
        mask, known = _inpainting(mask, known, device)
        with use_backend(model, backend), eval_mode(model):
            if fast:
                return _sample_graph(model, settings, x0, sigmas, g, seed, generator, batch_size, mask, known,
                                     precision, device, noise)
            return _sample_reference(model, settings, x0, sigmas, g, batch_size, mask, known, progress)
    if generator is not None:   # (takes precedence over seed, as for noise='batch')
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    elif seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)))
    check_seed(seed)
    low, high = settings.init_range
    x0 = init_rows((n, *tuple(model.data_shape)), settings.init, seed, first_index, sigma=float(sigmas[0]),
                   low=low, high=high, device=device)
    mask, known = _inpainting(mask, known, device)
    with use_backend(model, backend), eval_mode(model):
        if fast:
            return _sample_graph(model, settings, x0, sigmas, None, seed, None, batch_size, mask, known,
                                 precision, device, noise, first_index)
        return _sample_plan(model, the_plan, settings, x0, seed, first_index, batch_size, mask, known, progress)


def _initial(model, settings: SamplerSettings, n: int, sigmas, g, device) -> torch.Tensor:
    """Starting points ``[n, *data_shape]`` for every chunk, drawn in one go from ``g``."""
    low, high = settings.init_range
    shape = (n, *tuple(model.data_shape))
    return init_samples(shape, settings.init, sigma=float(sigmas[0]), generator=g, device=device, low=low, high=high)


def _inpainting(mask, known, device):
    if mask is None and known is None:
        return None, None
    if mask is None or known is None:
        raise ValueError("mask: inpainting needs both mask and known")
    known = torch.as_tensor(known, device=device, dtype=torch.float32)
    check_finite(known, "known")
    return torch.as_tensor(mask, device=device), known


def _rows(t: Optional[torch.Tensor], start: int, m: int, sample_dims: int) -> Optional[torch.Tensor]:
    """The rows of a per-sample inpainting tensor for one chunk (a shared one as it is)."""
    if t is None or t.dim() <= sample_dims or t.shape[0] == 1:
        return t
    return t[start:start + m]


def _chunked(run_chunk, x0, batch_size, snapshot_every: int):
    """``run_chunk(start, m)`` over the chunks of ``x0``, outputs (and snapshots) concatenated."""
    outs, snaps = [], []
    for start, m in chunks(x0.shape[0], batch_size):
        out = run_chunk(start, m)
        if snapshot_every:
            out, s = out
            snaps.append(s)
        outs.append(out)
    x = torch.cat(outs)
    return (x, torch.cat(snaps, dim=1)) if snapshot_every else x


def _sample_reference(model, settings: SamplerSettings, x0, sigmas, g, batch_size, mask, known, progress: bool):
    """The releases' reference executor (``noise="batch"``): :func:`annealed_langevin` chunk by chunk."""
    sample_dims = x0.dim() - 1
    return _chunked(lambda start, m: annealed_langevin(
        model, x0[start:start + m], sigmas, eps=settings.eps, steps_per_level=settings.steps_per_level, generator=g,
        denoise=settings.denoise, step_convention=settings.step_convention, mask=_rows(mask, start, m, sample_dims),
        known=_rows(known, start, m, sample_dims), clamp=settings.clamp, snapshot_every=settings.snapshot_every,
        progress=progress), x0, batch_size, settings.snapshot_every)


def _sample_plan(model, the_plan: Plan, settings: SamplerSettings, x0, seed, first_index, batch_size, mask, known,
                 progress):
    """The reference executor of a plan: :func:`~fastncsn.sampling.rules.run_plan` chunk by chunk."""
    sample_dims = x0.dim() - 1
    if mask is not None:
        mask, known = check_mask(mask, known, x0)
    return _chunked(lambda start, m: run_plan(
        the_plan, model, x0[start:start + m], seed, first_row=first_index + start,
        mask=_rows(mask, start, m, sample_dims), known=_rows(known, start, m, sample_dims), clamp=settings.clamp,
        snapshot_every=settings.snapshot_every, progress=progress), x0, batch_size, settings.snapshot_every)


def _sample_graph(model, settings: SamplerSettings, x0, sigmas, g, seed, generator, batch_size, mask, known,
                  precision, device, noise="batch", first_index=0):
    """The graph executor: a cached :class:`GraphSampler` with the same settings."""
    from .graphs import get_graph_sampler
    sampler = get_graph_sampler(model, batch_size or x0.shape[0], sigmas=sigmas, precision=precision, backend=None,
                                device=device, noise=noise, **{f: getattr(settings, f) for f in (
                                    "sampler", "eps", "steps_per_level", "step_convention", "init", "init_range",
                                    "denoise", "clamp", "snapshot_every")})
    if generator is not None:  # the Philox seed of the steps comes from the generator too
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
    if noise == "batch":
        return sampler.sample(x0.shape[0], seed=seed, x0=x0, mask=mask, known=known)
    return sampler.sample(x0.shape[0], seed=seed, x0=x0, mask=mask, known=known, first_index=first_index)
