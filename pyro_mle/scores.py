"""Scores of predictive distributions: CRPS, log score, interval coverage and PIT values.

All take a :class:`~pyro_mle.results.Prediction` (``fit.predict(...)``) and the observed
values of one site; lower CRPS and log score are better. A well-calibrated model gives PIT
values uniform on (0, 1) and a ``prob`` interval that covers a fraction ``prob`` of new data.

* :func:`crps`: the continuous ranked probability score
  :math:`\\int (F(t) - \\mathbb 1[y \\le t])^2\\,dt = E|X - y| - \\tfrac12 E|X - X'|`
  (Gneiting & Raftery, JASA 2007), in closed form for Normal and Laplace, from the draws
  otherwise.
* :func:`log_score`: :math:`-\\log p(y)`, the NLL per example.
* :func:`coverage`: the fraction of y inside :meth:`Prediction.interval`.
* :func:`pit`: :math:`F(y)`, the probability integral transform; randomised for counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .results import Prediction

_INV_SQRT_PI = 1 / math.sqrt(math.pi)


def _observed(pred: Prediction, y: object, site: str | None) -> tuple[str, torch.Tensor]:
    name = pred.site(site)
    draws = pred.draws[name]
    dtype = draws.dtype if draws.is_floating_point() else torch.get_default_dtype()
    y = torch.as_tensor(y, dtype=dtype)
    if tuple(y.shape) != tuple(draws.shape[1:]):
        raise ValueError(
            f"scores: observed values for site {name!r} have shape {tuple(y.shape)}, but one predictive draw has "
            f"shape {tuple(draws.shape[1:])}; give y for the same examples as the prediction."
        )
    return name, y


def _base(d):
    """The distribution under Pyro's plate wrappers (expand, mask), for its closed forms."""
    while hasattr(d, "base_dist") and type(d).__name__ in ("ExpandedDistribution", "MaskedDistribution"):
        d = d.base_dist
    return d


def crps_normal(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CRPS of Normal(loc, scale): :math:`\\sigma\\,[z(2\\Phi(z)-1) + 2\\varphi(z) - 1/\\sqrt\\pi]`."""
    z = (y - loc) / scale
    cdf = 0.5 * torch.special.erfc(-z / math.sqrt(2))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return scale * (z * (2 * cdf - 1) + 2 * pdf - _INV_SQRT_PI)


def crps_laplace(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CRPS of Laplace(loc, b): :math:`|y-\\mu| + b\\,e^{-|y-\\mu|/b} - 3b/4`."""
    a = (y - loc).abs()
    return a + scale * torch.exp(-a / scale) - 0.75 * scale


def crps_draws(y: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """CRPS from S draws (dim 0): :math:`\\frac1S\\sum|x_i-y| - \\frac1{2S^2}\\sum_{i,j}|x_i-x_j|`,
    the second sum in O(S log S) from the sorted draws,
    :math:`\\sum_{i,j}|x_i-x_j| = 2\\sum_i (2i - S - 1)\\,x_{(i)}`."""
    x = draws.to(y.dtype)
    s = x.shape[0]
    first = (x - y).abs().mean(0)
    xs, _ = torch.sort(x, dim=0)
    w = (2 * torch.arange(1, s + 1, dtype=y.dtype) - s - 1).reshape((s,) + (1,) * (x.dim() - 1))
    return first - (w * xs).sum(0) / s**2


def crps(pred: Prediction, y: object, site: str | None = None) -> torch.Tensor:
    """CRPS per example: closed form for a Normal or Laplace site, from the draws otherwise."""
    name, y = _observed(pred, y, site)
    d = _base(pred.distributions[name])
    if isinstance(d, torch.distributions.Normal):
        return crps_normal(y, d.loc, d.scale)
    if isinstance(d, torch.distributions.Laplace):
        return crps_laplace(y, d.loc, d.scale)
    return crps_draws(y, pred.draws[name])


def log_score(pred: Prediction, y: object, site: str | None = None) -> torch.Tensor:
    """:math:`-\\log p(y)` per example under the predictive distribution at the estimate."""
    name, y = _observed(pred, y, site)
    return -pred.distributions[name].log_prob(y)


def coverage(pred: Prediction, y: object, prob: float = 0.9, site: str | None = None) -> float:
    """The fraction of examples whose y lies inside the central ``prob`` interval."""
    name, y = _observed(pred, y, site)
    iv = pred.interval(prob, name)
    return float(((y >= iv.lower) & (y <= iv.upper)).to(torch.float64).mean())


def pit(pred: Prediction, y: object, site: str | None = None, seed: int = 0) -> torch.Tensor:
    """PIT values :math:`F(y)` per example: from the distribution's cdf where it has one,
    otherwise from the draws as :math:`P(X < y) + U\\,P(X = y)`, U uniform (seeded by
    ``seed``), so a calibrated count model gives uniform values too (Czado, Gneiting & Held,
    Biometrics 2009)."""
    name, y = _observed(pred, y, site)
    d = pred.distributions[name]
    try:
        return d.cdf(y)
    except (NotImplementedError, AttributeError):
        pass
    x = pred.draws[name].to(y.dtype)
    below = (x < y).to(y.dtype).mean(0)
    tie = (x == y).to(y.dtype).mean(0)
    u = torch.rand(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return below + u * tie


@dataclass(frozen=True)
class Scores:
    """Summary scores of one observed site.

    Fields:
      * ``site``: the observed site.
      * ``crps``: mean CRPS (lower is better; units of y).
      * ``log_score``: mean −log p(y) (nats per example).
      * ``coverage``: fraction of y inside the central ``prob`` interval.
      * ``prob``: that interval's probability.
      * ``pit``: PIT values per example (uniform when calibrated).
    """

    site: str
    crps: float
    log_score: float
    coverage: float
    prob: float
    pit: torch.Tensor


def score(pred: Prediction, y: object, site: str | None = None, prob: float = 0.9) -> Scores:
    """All scores of one site at once."""
    name, y = _observed(pred, y, site)
    return Scores(
        site=name,
        crps=float(crps(pred, y, name).mean()),
        log_score=float(log_score(pred, y, name).mean()),
        coverage=coverage(pred, y, prob, name),
        prob=float(prob),
        pit=pit(pred, y, name),
    )


__all__ = ["Scores", "coverage", "crps", "crps_draws", "crps_laplace", "crps_normal", "log_score", "pit", "score"]
