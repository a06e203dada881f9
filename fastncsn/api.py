"""``fastncsn.sample()``: the one-call sampling API."""
from __future__ import annotations

from typing import Optional

import torch

from .sampling.langevin import annealed_langevin, init_samples, make_generator

__all__ = ["sample", "NCSN_SAMPLING"]

#: the original NCSN sampler (reference code, runners/anneal_runner.py): step_lr 2e-5 in the
#: reference convention (= eps 4e-5 in Algorithm 1's, snr ~0.316), T = 100 per level, uniform
#: initialisation on [0, 1), no denoising step, no clamping inside the loop
NCSN_SAMPLING = dict(eps=2e-5, steps_per_level=100, step_convention="reference", init="uniform", denoise=False,
                     clamp=None)


def _resolve_model(model):
    if model is None:
        from .checkpoint import load_bundled
        return load_bundled()
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .checkpoint import load
        return load(model)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "sigmas") or not hasattr(model, "data_shape"):
        raise TypeError("model: expected None (the bundled digits model), a checkpoint path, or a fastncsn "
                        "score model (an nn.Module with `sigmas` and `data_shape`)")
    return model


@torch.no_grad()
def sample(model=None, n: int = 64, sigmas=None, steps_per_level: Optional[int] = None, eps: Optional[float] = None,
           step_convention: Optional[str] = None, seed: Optional[int] = 0,
           generator: Optional[torch.Generator] = None, device=None, init: Optional[str] = None,
           denoise: Optional[bool] = None, mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
           progress: bool = True, backend: Optional[str] = None, snapshot_every: int = 0,
           batch_size: Optional[int] = None, clamp: Optional[tuple] = None, fast: Optional[bool] = None,
           precision: Optional[str] = None):
    """Draw ``n`` samples from a score model with annealed Langevin dynamics (seed 003, Algorithm 1).

    Args:
        model: a fastncsn score model, a checkpoint path, or ``None`` for the
            bundled digits model (works offline straight after install).
        n: number of samples.
        sigmas: noise ladder (default: the model's ``sigmas``).
        steps_per_level, eps, step_convention, init, denoise, clamp: sampler
            settings; ``None`` takes the model's ``sampling_defaults`` (a dict
            with any of these keys, plus ``init_range`` for uniform
            initialisation) and otherwise NCSN's (``NCSN_SAMPLING``: eps 2e-5,
            reference convention, T 100, uniform init on [0, 1), no denoising,
            no clamp).  Conventions: :mod:`fastncsn.sampling.langevin`.
        seed / generator: noise source; the same seed gives the same samples.
            A ``generator`` takes precedence over ``seed``.
        device: where to sample (default: the model's device).
        mask, known: inpainting -- ``mask`` 1 at known pixels, ``known`` the
            image(s) there (broadcastable to ``[n, *data_shape]``).
        progress: progress bar over the noise levels.
        backend: set the fused-op backend of the model's norms ("auto" | "triton" |
            "cuda" | "torch"); None keeps the model's own setting.
        snapshot_every: k > 0 also returns the trajectory every k steps.
        batch_size: sample in chunks of this size (default: all at once).
        clamp: optional ``(lo, hi)`` after every step (default: the model's
            ``sampling_defaults["clamp"]``, else none).

    Returns:
        ``[n, *model.data_shape]`` samples on ``device`` (``[n, C, H, W]`` for
        images, ``[n, D]`` for toy models), or ``(samples, snapshots)``.

    Example::

        >>> import fastncsn
        >>> x = fastncsn.sample(n=4, steps_per_level=2, progress=False)   # bundled digits model
        >>> tuple(x.shape)
        (4, 1, 28, 28)
    """
    model = _resolve_model(model)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    defaults = dict(NCSN_SAMPLING)
    defaults.update(getattr(model, "sampling_defaults", None) or {})
    eps = defaults["eps"] if eps is None else eps
    steps_per_level = defaults["steps_per_level"] if steps_per_level is None else steps_per_level
    step_convention = defaults["step_convention"] if step_convention is None else step_convention
    init = defaults["init"] if init is None else init
    denoise = defaults["denoise"] if denoise is None else denoise
    clamp = defaults.get("clamp") if clamp is None else clamp
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model = model.to(device)
    if backend is not None:
        if hasattr(model, "set_backend"):
            model.set_backend(backend)
        elif backend != "auto":
            raise ValueError(f"backend: model {type(model).__name__} has no fused ops; use backend=None or 'auto'")
    sigmas = model.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32)
    sigmas = sigmas.to(device)
    g = make_generator(None if generator is not None else seed, generator, device)
    shape = tuple(model.data_shape)
    if mask is not None or known is not None:
        if mask is None or known is None:
            raise ValueError("mask: inpainting needs both mask and known")
        mask = torch.as_tensor(mask, device=device)
        known = torch.as_tensor(known, device=device, dtype=torch.float32)
    low, high = defaults.get("init_range", (0.0, 1.0))
    if fast is None:
        fast = device.type == "cuda"
    if fast:
        from .sampling.graphs import get_graph_sampler
        sampler = get_graph_sampler(model, batch_size or n, sigmas=sigmas, eps=eps, steps_per_level=steps_per_level,
                                    step_convention=step_convention, precision=precision, backend=None,
                                    denoise=denoise, clamp=clamp, snapshot_every=snapshot_every, device=device)
        x0 = init_samples((n, *shape), init, sigma=float(sigmas[0]), generator=g, device=device, low=low, high=high)
        if generator is not None:  # the Philox seed of the steps comes from the generator too
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
        return sampler.sample(n, seed=seed, x0=x0, mask=mask, known=known)
    if precision not in (None, "fp32"):
        raise ValueError(f"precision: the reference sampler (fast=False) runs in fp32, got {precision!r}")
    was_training = model.training
    model.eval()
    chunks, snaps = [], []
    bs = batch_size or n
    try:
        for start in range(0, n, bs):
            m = min(bs, n - start)
            x0 = init_samples((m, *shape), init, sigma=float(sigmas[0]), generator=g, device=device,
                              low=low, high=high)
            mk, kn = mask, known
            if mask is not None:
                mk = mask if mask.dim() <= len(shape) or mask.shape[0] == 1 else mask[start:start + m]
                kn = known if known.dim() <= len(shape) or known.shape[0] == 1 else known[start:start + m]
            out = annealed_langevin(model, x0, sigmas, eps=eps, steps_per_level=steps_per_level, generator=g,
                                    denoise=denoise, step_convention=step_convention, mask=mk, known=kn,
                                    clamp=clamp, snapshot_every=snapshot_every, progress=progress)
            if snapshot_every:
                out, s = out
                snaps.append(s)
            chunks.append(out)
    finally:
        model.train(was_training)
    x = torch.cat(chunks)
    if snapshot_every:
        return x, torch.cat(snaps, dim=1)
    return x
