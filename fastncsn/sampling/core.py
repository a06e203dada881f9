"""The sampler core: one defaults table, one validation, initialisation, chunking, snapshots, progress.

Every sampler of the package -- the functional reference samplers of
:mod:`fastncsn.sampling.langevin`, the CUDA-graph sampler of
:mod:`fastncsn.sampling.graphs` and :func:`fastncsn.sample` -- takes its
settings from here, so the same call means the same thing on every path.

Step-size conventions
=====================
Three conventions for the per-level step are in use and easily confused; all
three are supported through ``step_convention`` and mapped to Algorithm 1's
``alpha_i`` (update ``x + alpha_i/2 * s + sqrt(alpha_i) * z``):

============== ========================================== =================================== ======================
convention     meaning of ``eps``                          update                               ``alpha_i``
============== ========================================== =================================== ======================
``paper``      Algorithm 1 of the NCSN paper               ``x + a/2 s + sqrt(a) z``            ``eps sigma_i^2/sigma_L^2``
``reference``  ``step_lr`` of the reference code           ``x + step s + sqrt(2 step) z``,     ``2 eps sigma_i^2/sigma_L^2``
                                                           ``step = eps sigma_i^2/sigma_L^2``
``snr``        signal-to-noise ratio (score-SDE's ``ald``  reference form with                  ``4 (eps sigma_i)^2``
               corrector with the 1/sigma score law)       ``step = 2 (snr sigma_i)^2``
============== ========================================== =================================== ======================

The defaults (:data:`NCSN_SAMPLING`) are NCSN's published sampler: ``step_lr =
2e-5`` in the *reference* convention (= ``eps 4e-5`` in the paper convention,
``snr ~ 0.316``), T = 100 steps per level, uniform initial samples on [0, 1), no
final denoising step, no clamping.  :func:`fastncsn.sample` applies a model's own
``sampling_defaults`` on top of this table; the lower-level samplers
(``annealed_langevin``, ``hmc_annealed``, ``GraphSampler``) use the table itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator, Optional, Sequence

import torch

from ..schedules import validate_sigmas

__all__ = [
    "NCSN_SAMPLING", "SAMPLERS", "SAMPLER_DEFAULTS", "NOISE_MODES", "STEP_CONVENTIONS", "INITS", "SamplerSettings",
    "step_sizes", "make_generator", "randn",
    "init_samples", "check_batch", "check_mask", "check_count", "check_clamp", "check_eps", "check_seed", "Snapshots",
    "chunks", "progress_bar", "resolve_model", "model_device", "eval_mode", "use_backend",
    "SamplingDivergedError", "check_finite", "check_finite_level", "check_model_levels", "check_backend",
]

STEP_CONVENTIONS = ("paper", "reference", "snr")
INITS = ("uniform", "gaussian")

#: NCSN's own sampler (reference code, ``runners/anneal_runner.py``): step_lr 2e-5 in the reference
#: convention, T = 100 per level, uniform initialisation on [0, 1), no denoising step, no clamp.
#: The one defaults table of every sampler in the package.
NCSN_SAMPLING = dict(eps=2e-5, steps_per_level=100, step_convention="reference", init="uniform",
                     init_range=(0.0, 1.0), denoise=False, clamp=None)

#: the samplers (:mod:`fastncsn.sampling.rules`): annealed Langevin, consistent annealed sampling,
#: predictor-corrector, Heun in sigma
SAMPLERS = ("ald", "cas", "pc", "heun")
#: the defaults table extended per sampler: what each sampler changes in :data:`NCSN_SAMPLING`
#: (``eps`` means: ald -- the step size in ``step_convention``; cas -- eta of Jolicoeur-Martineau et al.
#: 2020; pc -- the corrector's step in ``step_convention`` (snr 0.16: score SDE's VE setting); heun --
#: unused).  ``steps_per_level``: ald -- T; cas -- steps per level; pc -- corrector steps per level;
#: heun -- 1 (level to level).  The samplers that assume level-i noise start from N(0, sigma_1^2).
SAMPLER_DEFAULTS = {
    "ald": dict(),
    "cas": dict(eps=0.75, steps_per_level=1, init="gaussian", denoise=True),
    "pc": dict(eps=0.16, step_convention="snr", steps_per_level=1, init="gaussian", denoise=True),
    "heun": dict(steps_per_level=1, init="gaussian", denoise=True),
}
#: noise streams: "per_sample" -- sample k's noise is keyed by (seed, k) (:func:`fastncsn.sampling.rules.noise_rows`);
#: "batch" -- the batch-wide streams of the releases before the sampler plans (``ald`` only: reproduces them)
NOISE_MODES = ("per_sample", "batch")
#: settings of a model's ``sampling_defaults`` that describe the data, taken whatever the sampler
_DATA_SETTINGS = ("init_range", "clamp")


# ---------------------------------------------------------------------------- validation


def check_count(v, name: str, minimum: int = 1) -> int:
    """``v`` as an int >= ``minimum`` (bools refused), else ``ValueError`` naming ``name``."""
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return v


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63): ``TypeError`` naming ``name`` for a non-int (``1.5`` is not truncated,
    bools are refused), ``ValueError`` for one out of range."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name}: expected an int in [0, 2**63), got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"{name}: expected an int in [0, 2**63), got {seed!r}")
    return seed


def check_eps(eps, name: str = "eps") -> float:
    """A finite step size > 0."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name}: expected a finite step size > 0, got {eps!r}")
    return float(eps)


def check_clamp(clamp) -> Optional[tuple]:
    """``None`` or a pair ``(lo, hi)`` of finite numbers (either may be ``None``)."""
    if clamp is None:
        return None
    ok = isinstance(clamp, (tuple, list)) and len(clamp) == 2 and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) for v in clamp)
    if not ok:
        raise ValueError(f"clamp: expected None or a pair (lo, hi) of finite numbers or None, got {clamp!r}")
    return tuple(clamp)


def check_batch(x: torch.Tensor, name: str = "x") -> None:
    """A floating-point batch ``[N, ...]`` of finite values (no NaN, no inf)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point batch tensor [N, ...]")
    check_finite(x, name)


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if the floating-point tensor ``t`` holds NaN or inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_backend(backend: Optional[str], device, name: str = "backend") -> None:
    """ValueError naming ``name`` if ``backend`` (``None``/"auto": any) cannot run on ``device`` here."""
    if backend is None or backend == "auto":
        return
    from ..ops import BACKENDS, available_backends
    if backend not in BACKENDS:
        raise ValueError(f"{name}: expected one of {BACKENDS}, got {backend!r}")
    ok = available_backends(device)
    if backend not in ok:
        raise ValueError(f"{name}: {backend!r} is not available on {torch.device(device)} here; "
                         f"available: {', '.join(ok + ['auto'])}")


def check_model_levels(sigmas, model) -> None:
    """``sigmas`` must have the model's number of levels (its level index ``i`` means ``model.sigmas[i]``).

    A callable without ``sigmas`` is not checked.  To sample a subset or another ladder with a
    model's levels, map them with :class:`~fastncsn.sampling.GraphSampler`'s ``model_levels``.
    """
    own = getattr(model, "sigmas", None)
    if own is None:
        return
    want, got = torch.as_tensor(own).numel(), torch.as_tensor(sigmas).numel()
    if want != got:
        raise ValueError(f"sigmas: expected {want} noise levels (the model's number of levels), got {got}; "
                         "GraphSampler(model_levels=...) maps other ladders onto the model's levels")


#: samples further from 0 than ESCAPE_FACTOR * (1 + sigma_1 + max|x0|) count as diverged: annealed
#: Langevin keeps them within a few sigma_1 of the data, so this only fires on a run that blew up
#: (e.g. ``eps`` many orders of magnitude too large: finite but astronomically large samples)
ESCAPE_FACTOR = 1e4


def escape_bound(x0: torch.Tensor, sigma_1: float) -> float:
    """The magnitude beyond which samples started at ``x0`` count as diverged (one host sync)."""
    return ESCAPE_FACTOR * (1.0 + abs(float(sigma_1)) + float(x0.detach().abs().max()))


class SamplingDivergedError(FloatingPointError):
    """The samples became non-finite (NaN or inf), or blew up beyond :func:`escape_bound`, while sampling.

    ``level`` is the index (``0..num_levels-1``, largest sigma first, as the networks' level index) of
    the noise level after which the first such value was seen (``num_levels``: the final denoising
    step), ``step`` the step when known (else ``None``).  Usual causes: a step size (``eps``) too
    large for the ladder, or a score model that returns NaN.
    """

    def __init__(self, level: int, num_levels: int, step: Optional[int] = None, bound: Optional[float] = None):
        self.level, self.num_levels, self.step, self.bound = level, num_levels, step, bound
        where = "the final denoising step" if level >= num_levels else \
            f"level {level} (levels 0..{num_levels - 1}, largest sigma first)"
        if step is not None:
            where += f", step {step}"
        what = "non-finite samples (NaN or inf)" + (f" or samples beyond +-{bound:.3g}" if bound else "")
        super().__init__(f"sampling diverged: {what} after {where}; "
                         "the step size (eps) is likely too large, or the score model returned NaN")


def diverged(x: torch.Tensor, bound: Optional[float] = None) -> torch.Tensor:
    """A device bool: ``x`` holds NaN/inf, or (with ``bound``) a value beyond ``+-bound``.  No host sync."""
    bad = ~torch.isfinite(x).all()
    if bound is not None:
        bad = bad | (x.detach().abs().amax() > bound)
    return bad


def check_finite_level(x: torch.Tensor, level: int, num_levels: int, step: Optional[int] = None,
                       bound: Optional[float] = None) -> None:
    """Raise :class:`SamplingDivergedError` if ``x`` diverged after level index ``level`` (0-based;
    ``num_levels``: the final denoising step) (:func:`diverged`; one host sync: call once per level)."""
    if bool(diverged(x, bound)):
        raise SamplingDivergedError(level, num_levels, step, bound)


def check_mask(mask, known, x: torch.Tensor):
    """Inpainting inputs: ``mask`` (1 at known pixels) and ``known`` broadcastable to ``x``.

    Returns ``(None, None)`` without a mask, else a bool mask and ``known`` expanded to ``x``.
    """
    if mask is None:
        if known is not None:
            raise ValueError("mask: required when known is given")
        return None, None
    if known is None:
        raise ValueError("known: required when mask is given (the data at the known pixels)")
    mask = torch.as_tensor(mask, device=x.device)
    known = torch.as_tensor(known, device=x.device)
    check_finite(known, "known")
    try:
        fits = (torch.broadcast_shapes(mask.shape, x.shape) == x.shape
                and torch.broadcast_shapes(known.shape, x.shape) == x.shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask: expected a shape broadcastable to x {tuple(x.shape)}, got mask "
                         f"{tuple(mask.shape)} and known {tuple(known.shape)}")
    return mask.bool(), known.to(dtype=x.dtype).expand_as(x)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Validated sampler settings (names and meaning as :data:`NCSN_SAMPLING`, plus ``snapshot_every``)."""

    eps: float = NCSN_SAMPLING["eps"]
    steps_per_level: int = NCSN_SAMPLING["steps_per_level"]
    step_convention: str = NCSN_SAMPLING["step_convention"]
    init: str = NCSN_SAMPLING["init"]
    init_range: tuple = NCSN_SAMPLING["init_range"]
    denoise: bool = NCSN_SAMPLING["denoise"]
    clamp: Optional[tuple] = NCSN_SAMPLING["clamp"]
    snapshot_every: int = 0
    sampler: str = "ald"

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {self.sampler!r}")
        check_eps(self.eps)
        check_count(self.steps_per_level, "steps_per_level")
        if self.step_convention not in STEP_CONVENTIONS:
            raise ValueError(f"step_convention: expected one of {STEP_CONVENTIONS}, got {self.step_convention!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {self.init!r}")
        rng = self.init_range
        if not (isinstance(rng, (tuple, list)) and len(rng) == 2 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in rng) and rng[0] < rng[1]):
            raise ValueError(f"init_range: expected a pair (low, high) of finite numbers with low < high, got {rng!r}")
        object.__setattr__(self, "init_range", (float(rng[0]), float(rng[1])))
        if not isinstance(self.denoise, bool):
            raise ValueError(f"denoise: expected True or False, got {self.denoise!r}")
        object.__setattr__(self, "clamp", check_clamp(self.clamp))
        check_count(self.snapshot_every, "snapshot_every", minimum=0)

    @classmethod
    def resolve(cls, model=None, sampler: Optional[str] = None, **overrides) -> "SamplerSettings":
        """:data:`NCSN_SAMPLING`, then the sampler's row of :data:`SAMPLER_DEFAULTS`, then
        ``model.sampling_defaults`` (if any: all of it when it is for this sampler -- its ``sampler`` key,
        default ``"ald"`` -- else only its data settings ``init_range`` and ``clamp``), then the
        non-``None`` ``overrides``.  ``sampler=None``: the model's sampler, else ``"ald"``."""
        model_defaults = dict(getattr(model, "sampling_defaults", None) or {})
        own = model_defaults.pop("sampler", "ald")
        sampler = own if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
        values = dict(NCSN_SAMPLING)
        values.update(SAMPLER_DEFAULTS[sampler])
        values.update({k: v for k, v in model_defaults.items()
                       if k in values and (sampler == own or k in _DATA_SETTINGS)})
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampler setting(s): {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(sampler=sampler, **values)

    def step_sizes(self, sigmas) -> torch.Tensor:
        """Algorithm 1's ``alpha_i`` (float64 ``[L]``) for these settings."""
        return step_sizes(sigmas, self.eps, self.step_convention)


def step_sizes(sigmas, eps: float, step_convention: str = NCSN_SAMPLING["step_convention"]) -> torch.Tensor:
    """Algorithm 1's ``alpha_i`` for every level (float64 ``[L]``), from ``eps`` in ``step_convention``."""
    if step_convention not in STEP_CONVENTIONS:
        raise ValueError(f"step_convention: expected one of {STEP_CONVENTIONS}, got {step_convention!r}")
    check_eps(eps)
    s = validate_sigmas(sigmas, "sigmas").double()
    if step_convention == "paper":
        return eps * (s / s[-1]) ** 2
    if step_convention == "reference":
        return 2 * eps * (s / s[-1]) ** 2
    return 4 * (eps * s) ** 2


# ---------------------------------------------------------------------------- randomness and initialisation


def make_generator(seed: Optional[int], generator: Optional[torch.Generator], device) -> Optional[torch.Generator]:
    """The generator to draw noise from: ``generator`` as given, or a new one seeded with ``seed``."""
    if generator is not None:
        if seed is not None:
            raise ValueError("seed: give either seed or generator, not both")
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(check_seed(seed))
    return g


def randn(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal ``shape`` on ``like``'s device and dtype, from ``generator`` (wherever it lives)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if generator.device != like.device:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def init_samples(shape: Sequence[int], kind: str = "uniform", sigma: float = 1.0,
                 generator: Optional[torch.Generator] = None, device="cpu", mean: float = 0.0,
                 low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Starting points of the sampler.

    ``"uniform"``: U[low, high) per coordinate (U[0, 1): the reference NCSN
    image sampler; U[-8, 8): its toy experiments);
    ``"gaussian"``: ``mean + sigma * N(0, I)`` (seed 000's initial-noise study uses
    ``N(0, sigma_1^2)``).
    """
    if kind not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {kind!r}")
    if kind == "uniform":
        if generator is None:
            u = torch.rand(tuple(shape), device=device)
        else:
            u = torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)
        return u if (low, high) == (0.0, 1.0) else low + (high - low) * u
    return mean + sigma * randn(tuple(shape), torch.empty(0, device=device), generator)


# ---------------------------------------------------------------------------- snapshots, chunks, progress


class Snapshots:
    """Preallocated trajectory buffer ``[total_steps // every, N, ...]``: one copy every ``every`` steps."""

    def __init__(self, every: int, total_steps: int, x: torch.Tensor):
        self.every = check_count(every, "snapshot_every", minimum=0)
        self.buf = x.new_empty((self.count_for(total_steps, every), *x.shape)) if every else None
        self.steps = 0
        self.k = 0

    @staticmethod
    def count_for(total_steps: int, every: int) -> int:
        """How many snapshots ``total_steps`` steps leave with one every ``every`` steps (0: none)."""
        return total_steps // every if every else 0

    def __call__(self, x: torch.Tensor) -> None:
        if not self.every:
            return
        self.steps += 1
        if self.steps % self.every == 0:
            self.buf[self.k].copy_(x)
            self.k += 1


def chunks(n: int, batch_size: Optional[int]) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of consecutive chunks of at most ``batch_size`` (all at once when ``None``)."""
    check_count(n, "n")
    bs = n if batch_size is None else check_count(batch_size, "batch_size")
    for start in range(0, n, bs):
        yield start, min(bs, n - start)


def progress_bar(iterable, enabled, desc: str, unit: str = "level"):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` is True; when ``enabled`` is a bar the caller owns
    (anything with ``update``, e.g. ``fastncsn fid``'s bar over all shards), it advances by one per item."""
    if hasattr(enabled, "update"):
        return _advancing(iterable, enabled)
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, unit=unit)


def _advancing(iterable, bar):
    for item in iterable:
        yield item
        bar.update(1)


# ---------------------------------------------------------------------------- models


def resolve_model(model):
    """``None`` -> the bundled digits model; a bundled model's name (``"digits"``, ``"mnist"``:
    :data:`fastncsn.checkpoint.BUNDLED_MODELS`) -> that model; a path -> the checkpoint's model (a file named
    like a bundled model is reached as ``"./mnist"``); a score model as it is."""
    from ..checkpoint import BUNDLED_MODELS
    if model is None or (isinstance(model, str) and model in BUNDLED_MODELS):
        from ..checkpoint import load_bundled
        return load_bundled("digits" if model is None else model)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from ..checkpoint import load
        return load(model)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "sigmas") or not hasattr(model, "data_shape"):
        raise TypeError("model: expected None (the bundled digits model), a bundled model's name, a checkpoint "
                        "path, or a fastncsn "
                        "score model (an nn.Module with `sigmas` and `data_shape`)")
    return model


def model_device(model) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for parameterless callables)."""
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, its own training flag restored after (any callable)."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def use_backend(model, backend: Optional[str]):
    """Run the model's fused ops on ``backend`` inside the block and restore its own setting after.

    The backend is an option of a sampling run, never state of the model (nothing a later
    ``save`` writes changes).  ``None`` leaves the model as it is; a model without fused ops
    accepts only ``None`` or ``"auto"``.
    """
    if backend is None:
        yield
        return
    from ..ops import BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    from ..nn import fused_op_modules
    norms = fused_op_modules(model) if isinstance(model, torch.nn.Module) else []
    if not norms:
        if backend != "auto":
            raise ValueError(f"backend: model {type(model).__name__} has no fused ops; use backend=None or 'auto'")
        yield
        return
    saved = [m.backend for m in norms]
    for m in norms:
        m.backend = backend
    try:
        yield
    finally:
        for m, b in zip(norms, saved):
            m.backend = b
