"""Families for positive targets and survival times: LogNormal, Weibull.

Both have a closed-form cdf, so :class:`~pyro_mle.likelihoods.Censored` turns them into the
survival losses of right-censored data (accelerated failure time models).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _Positive:
    support = constraints.positive
    support_text = "positive numbers (y > 0)"
    support_fix = "Drop or offset exact zeros (a time of 0 is usually a recording artefact), or check the sign."


class LogNormal(_Positive, Likelihood, name="log_normal"):
    r"""Log-normal likelihood: :math:`\log y \sim \mathcal N(\mu, \sigma)`, for y > 0.

    .. math::
        -\log p(y) = \log y + \log\sigma + \tfrac12\log 2\pi + \frac{(\log y-\mu)^2}{2\sigma^2}

    With σ fixed this is least squares on :math:`\log y` plus the Jacobian :math:`\sum\log y`,
    which does not depend on the model. The median of y is :math:`e^\mu`.

    Channels: ``loc`` μ (identity), ``scale`` σ (softplus).

    Usage::

        LogNormal(scale=0.5)("income", net(x), obs=income)
    """

    params = (
        Param("loc", links.identity, doc="mean of log y"),
        Param("scale", links.softplus, doc="standard deviation of log y > 0"),
    )
    examples = ({"scale": 0.5}, {})

    @property
    def loss_name(self) -> str:
        return "least squares on log y (+ Σ log y)" if "scale" in self.fixed else "log-normal NLL"

    def _distribution(self, loc, scale):
        return dist.LogNormal(loc, scale)

    def _classical(self, y, loc, scale):
        log_y = torch.log(y)
        return log_y + torch.log(scale) + _HALF_LOG_2PI + 0.5 * ((log_y - loc) / scale) ** 2

    def _classical_log_cdf(self, y, loc, scale):
        return torch.log(0.5 * torch.special.erfc(-(torch.log(y) - loc) / (scale * math.sqrt(2))))

    def _classical_log_sf(self, y, loc, scale):
        return torch.log(0.5 * torch.special.erfc((torch.log(y) - loc) / (scale * math.sqrt(2))))


class Weibull(_Positive, Likelihood, name="weibull"):
    r"""Weibull likelihood for survival times and magnitudes, scale λ and shape k:
    :math:`S(y) = P(Y > y) = \exp(-(y/\lambda)^k)`.

    .. math::
        -\log p(y) = -\log k + \log\lambda - (k-1)\log(y/\lambda) + (y/\lambda)^k

    With :math:`\lambda = e^{f}` and f linear in the covariates this is the Weibull
    accelerated failure time model (lifelines ``WeibullAFTFitter``: ``lambda_`` is λ, ``rho_``
    is k). k = 1 is the Exponential with rate 1/λ.

    Channels: ``scale`` λ (log link), ``concentration`` k (softplus).

    Usage::

        Censored(Weibull(concentration=1.5), censoring=1 - event)("time", net(x), obs=time)
    """

    params = (
        Param("scale", links.exp, doc="scale λ > 0 (the 63 % quantile)"),
        Param("concentration", links.softplus, doc="shape k > 0 (k > 1: rising hazard)"),
    )
    examples = ({"concentration": 1.5}, {})
    loss_name = "Weibull NLL"

    def _distribution(self, scale, concentration):
        return dist.Weibull(scale, concentration)

    def _classical(self, y, scale, concentration):
        k, lam = concentration, scale
        return -torch.log(k) + torch.log(lam) - (k - 1) * torch.log(y / lam) + (y / lam) ** k

    def _classical_log_cdf(self, y, scale, concentration):
        return torch.log1p(-torch.exp(-((y / scale) ** concentration)))

    def _classical_log_sf(self, y, scale, concentration):
        return -((y / scale) ** concentration)
