"""Shared pieces of seed 004's toy experiments (``mode-weights-learned``, ``toy-figures``, ``hmc-vs-ald``).

* :func:`anneal` -- annealed Langevin dynamics (seed 004 eq. 11, the *paper* step convention
  ``x + a/2 s + sqrt(a) z``) on a stack of independent particle sets ``[E, n, D]``, one step size
  per set and level, all sets moved at once;
* :func:`paper_alphas` -- the per-level steps ``a_i = eps sigma_i^2 / sigma_L^2`` of a list of eps;
* :func:`mixture_logp_score` -- ``log q_sigma`` and its gradient of a Gaussian mixture in one pass;
* :func:`summarise` / :func:`ci_text` -- the Student-t interval over seeds
  (:func:`fastncsn.metrics.intervals.seed_interval`) of long-format rows, and its text.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..metrics.intervals import seed_interval
from ..toy import _mixture_log_terms, _sigma_column


def paper_alphas(eps_list: Sequence[float], sigmas: torch.Tensor) -> torch.Tensor:
    """``[E, L]`` steps ``eps_e sigma_i^2 / sigma_L^2`` (float64)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return torch.tensor(list(eps_list), dtype=torch.float64)[:, None] * (s / s[-1])[None] ** 2


def uniform_init(E: int, n: int, low: Sequence[float], high: Sequence[float], g: torch.Generator,
                 dtype=torch.float32) -> torch.Tensor:
    """``[E, n, D]`` points uniform on the box ``[low, high]`` (one bound per coordinate)."""
    lo = torch.as_tensor(low, dtype=torch.float64)
    hi = torch.as_tensor(high, dtype=torch.float64)
    return (lo + (hi - lo) * torch.rand(E, n, lo.numel(), generator=g, dtype=torch.float64)).to(dtype)


@torch.no_grad()
def anneal(score: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, alphas: torch.Tensor, T: int,
           g: torch.Generator) -> torch.Tensor:
    """Annealed Langevin on ``x`` ``[E, n, D]`` (updated in place and returned).

    ``alphas`` ``[E, L]``: the step of set ``e`` at level ``i``; ``T`` steps per level;
    ``score(x_flat [E*n, D], i)`` the score of level ``i``.  Diverging particles stay non-finite.
    """
    E, n, D = x.shape
    a = alphas.to(x.dtype)
    for i in range(a.shape[1]):
        half, root = (a[:, i] / 2).view(E, 1, 1), a[:, i].sqrt().view(E, 1, 1)
        for _ in range(T):
            s = score(x.reshape(E * n, D), i).view(E, n, D)
            x += half * s + root * torch.randn(E, n, D, generator=g, dtype=x.dtype)
    return x


def model_score(model) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``score(x, i)`` of a score model (``model(x, level_index)``)."""
    def fn(x, i):
        return model(x, torch.full((x.shape[0],), i, dtype=torch.long))
    return fn


def mixture_logp_score(mix, x: torch.Tensor, sigma: float):
    """``(log q_sigma(x) [N], grad log q_sigma(x) [N, D])`` of the GaussianMixture ``mix`` (float64, exact)."""
    xd = x.double()
    logp, diff, var = _mixture_log_terms(xd, _sigma_column(float(sigma), xd, check=False), mix.means, mix.stds,
                                         mix.weights.log())
    r = torch.softmax(logp, dim=1)
    return torch.logsumexp(logp, dim=1), (-(r / var)[:, :, None] * diff).sum(1)


def ci_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summarise(rows: Sequence[dict], keys: Sequence[str], fields: Sequence[str]) -> list:
    """Group ``rows`` (one per seed) by ``keys`` (first-seen order); per field its mean and 95% interval over
    the seeds: ``<field>``, ``<field>_low``, ``<field>_high`` (NaN bounds with fewer than 2 finite values)
    and ``seeds``."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(keys, key), seeds=len(rs))
        for f in fields:
            v = [float(r[f]) for r in rs if r.get(f) is not None and math.isfinite(float(r[f]))]
            if len(v) >= 2:
                ci = seed_interval(v)
                d[f], d[f + "_low"], d[f + "_high"] = ci["mean"], ci["low"], ci["high"]
            else:
                d[f] = v[0] if v else float("nan")
                d[f + "_low"] = d[f + "_high"] = float("nan")
        out.append(d)
    return out


def cell(summary: dict, field: str, digits: int = 3) -> str:
    """``mean [low, high]`` of ``field`` in a :func:`summarise` row."""
    return ci_text(summary[field], summary[field + "_low"], summary[field + "_high"], digits)


def yerr(summaries: Sequence[dict], field: str) -> list:
    """``[below, above]`` error-bar lengths of the intervals of ``field`` (0 where there is none)."""
    lo = [max(0.0, s[field] - s[field + "_low"]) if math.isfinite(s[field + "_low"]) else 0.0 for s in summaries]
    hi = [max(0.0, s[field + "_high"] - s[field]) if math.isfinite(s[field + "_high"]) else 0.0 for s in summaries]
    return [lo, hi]


def errorbar(ax, summaries: Sequence[dict], xkey: str, field: str, **kw) -> None:
    """Means of ``field`` against ``xkey`` with their intervals as error bars."""
    ax.errorbar([s[xkey] for s in summaries], [s[field] for s in summaries], yerr=yerr(summaries, field), capsize=3,
                **kw)


def heavy_weight(x: torch.Tensor, heavy, light) -> torch.Tensor:
    """Per set ``[E]``: fraction of finite particles of ``x`` ``[E, n, 2]`` nearer to ``heavy`` than to ``light``
    (non-finite ones count as elsewhere)."""
    h = torch.as_tensor(heavy, dtype=torch.float64)
    lt = torch.as_tensor(light, dtype=torch.float64)
    xd = x.double()
    near = (xd - h).square().sum(-1) < (xd - lt).square().sum(-1)
    return (near & torch.isfinite(xd).all(-1)).double().mean(-1)
