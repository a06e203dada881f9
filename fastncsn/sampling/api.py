"""``fastncsn.sample()``: the one-call sampling API over the two executors of the sampler core."""
from __future__ import annotations

from typing import Optional

import torch

from ..devices import check_device
from .core import (SamplerSettings, check_backend, check_count, check_finite, check_model_levels, chunks, eval_mode,
                   init_samples, make_generator, model_device, resolve_model, use_backend)
from .langevin import annealed_langevin

__all__ = ["sample"]


@torch.no_grad()
def sample(model=None, n: int = 64, sigmas=None, steps_per_level: Optional[int] = None, eps: Optional[float] = None,
           step_convention: Optional[str] = None, seed: Optional[int] = 0,
           generator: Optional[torch.Generator] = None, device=None, init: Optional[str] = None,
           denoise: Optional[bool] = None, mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
           progress=True, backend: Optional[str] = None, snapshot_every: int = 0,
           batch_size: Optional[int] = None, clamp: Optional[tuple] = None, fast: Optional[bool] = None,
           precision: Optional[str] = None):
    """Draw ``n`` samples from a score model with annealed Langevin dynamics (NCSN paper, Algorithm 1).

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
    settings = SamplerSettings.resolve(model, eps=eps, steps_per_level=steps_per_level,
                                       step_convention=step_convention, init=init, denoise=denoise, clamp=clamp,
                                       snapshot_every=snapshot_every)
    device = device if device is not None else model_device(model)
    check_backend(backend, device)
    if sigmas is not None:
        check_model_levels(sigmas, model)
    model = model.to(device)
    fast = device.type == "cuda" if fast is None else fast
    if not fast and precision not in (None, "fp32"):
        raise ValueError(f"precision: the reference sampler (fast=False) runs in fp32, got {precision!r}")
    sigmas = (model.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32)).to(device)
    g = make_generator(None if generator is not None else seed, generator, device)
    x0 = _initial(model, settings, n, sigmas, g, device)
    mask, known = _inpainting(mask, known, device)
    with use_backend(model, backend), eval_mode(model):
        if fast:
            return _sample_graph(model, settings, x0, sigmas, g, seed, generator, batch_size, mask, known,
                                 precision, device)
        return _sample_reference(model, settings, x0, sigmas, g, batch_size, mask, known, progress)


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


def _sample_reference(model, settings: SamplerSettings, x0, sigmas, g, batch_size, mask, known, progress: bool):
    """The reference executor: :func:`annealed_langevin` chunk by chunk."""
    outs, snaps = [], []
    sample_dims = x0.dim() - 1
    for start, m in chunks(x0.shape[0], batch_size):
        out = annealed_langevin(model, x0[start:start + m], sigmas, eps=settings.eps,
                                steps_per_level=settings.steps_per_level, generator=g, denoise=settings.denoise,
                                step_convention=settings.step_convention, mask=_rows(mask, start, m, sample_dims),
                                known=_rows(known, start, m, sample_dims), clamp=settings.clamp,
                                snapshot_every=settings.snapshot_every, progress=progress)
        if settings.snapshot_every:
            out, s = out
            snaps.append(s)
        outs.append(out)
    x = torch.cat(outs)
    return (x, torch.cat(snaps, dim=1)) if settings.snapshot_every else x


def _sample_graph(model, settings: SamplerSettings, x0, sigmas, g, seed, generator, batch_size, mask, known,
                  precision, device):
    """The graph executor: a cached :class:`GraphSampler` with the same settings."""
    from .graphs import get_graph_sampler
    sampler = get_graph_sampler(model, batch_size or x0.shape[0], sigmas=sigmas, precision=precision, backend=None,
                                device=device, **{f: getattr(settings, f) for f in (
                                    "eps", "steps_per_level", "step_convention", "init", "init_range",
                                    "denoise", "clamp", "snapshot_every")})
    if generator is not None:  # the Philox seed of the steps comes from the generator too
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
    return sampler.sample(x0.shape[0], seed=seed, x0=x0, mask=mask, known=known)
