"""Quantile regression as maximum likelihood: the asymmetric Laplace head."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from . import links
from .base import Likelihood, Param


class _QuantileLaplace(dist.AsymmetricLaplace):
    """Pyro's ``AsymmetricLaplace`` with the closed-form cdf and icdf (Pyro has neither), so
    that censoring, truncation, central intervals and PIT values work with it."""

    def cdf(self, value):
        z = value - self.loc
        total = self.left_scale + self.right_scale
        below = self.left_scale / total * torch.exp(torch.clamp(z, max=0.0) / self.left_scale)
        above = 1 - self.right_scale / total * torch.exp(-torch.clamp(z, min=0.0) / self.right_scale)
        return torch.where(z < 0, below, above)

    def icdf(self, value):
        total = self.left_scale + self.right_scale
        p_loc = self.left_scale / total  # P(Y ≤ loc)
        below = self.loc + self.left_scale * torch.log(torch.clamp(value / p_loc, min=1e-300))
        above = self.loc - self.right_scale * torch.log(torch.clamp((1 - value) / (1 - p_loc), min=1e-300))
        return torch.where(value < p_loc, below, above)


def pinball(u: torch.Tensor, q: float) -> torch.Tensor:
    r"""The check (pinball) loss :math:`\rho_q(u) = u\,(q - \mathbb 1[u < 0])` of quantile
    regression (Koenker & Bassett 1978)."""
    return u * (q - (u < 0).to(u.dtype))


class AsymmetricLaplace(Likelihood, name="asymmetric_laplace"):
    r"""Asymmetric Laplace likelihood at quantile ``q``: **quantile regression**.

    .. math::
        -\log p(y \mid \mu, \sigma) = \frac{\rho_q(y-\mu)}{\sigma} + \log\sigma - \log q(1-q),
        \qquad \rho_q(u) = u\,(q - \mathbb 1[u<0])

    With ``scale`` fixed the NLL is the **pinball (check) loss** up to constants, so its
    minimiser μ is the q-quantile regression of Koenker & Bassett (statsmodels ``QuantReg``);
    ``q = 0.5`` is the Laplace head, median regression. μ is the q-quantile of the
    distribution: :math:`P(y \le \mu) = q`.

    Built as Pyro's ``AsymmetricLaplace(loc, scale', asymmetry)`` with
    :math:`\mathrm{asymmetry} = \sqrt{q/(1-q)}` and :math:`\mathrm{scale}' = \sigma/\sqrt{q(1-q)}`
    (its left and right scales are σ/(1−q) and σ/q).

    Channels: ``loc`` μ (identity), ``scale`` σ (softplus).

    Usage::

        AsymmetricLaplace(quantile=0.9, scale=1.0)("y", net(x), obs=y)   # 90 % quantile
    """

    params = (
        Param("loc", links.identity, doc="the q-quantile"),
        Param("scale", links.softplus, doc="scale σ > 0 of the pinball loss"),
    )
    examples = ({"quantile": 0.9, "scale": 1.0}, {"quantile": 0.25})
    _options = (("quantile", "quantile"),)

    def __init__(self, quantile: float = 0.5, **fixed):
        q = float(quantile) if isinstance(quantile, (int, float)) else math.nan
        if not 0.0 < q < 1.0:
            raise ValueError(
                f"AsymmetricLaplace likelihood: quantile must be a number strictly between 0 and 1; got {quantile!r}. "
                "Give e.g. quantile=0.9 for the 90 % quantile."
            )
        self.quantile = q
        super().__init__(**fixed)

    @property
    def loss_name(self) -> str:
        q = f"q={self.quantile:g}"
        return f"pinball (check) loss, {q}" if "scale" in self.fixed else f"scaled pinball loss + log σ, {q}"

    def _distribution(self, loc, scale):
        q = self.quantile
        return _QuantileLaplace(loc, scale / math.sqrt(q * (1 - q)), loc.new_tensor(math.sqrt(q / (1 - q))))

    def _classical(self, y, loc, scale):
        q = self.quantile
        return pinball(y - loc, q) / scale + torch.log(scale) - math.log(q * (1 - q))
