"""Families for real-valued and positive targets: Normal, Laplace, StudentT, Exponential,
Gamma, Beta."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _OpenInterval(constraints.Constraint):
    """lower < y < upper (torch's ``interval`` includes its ends)."""

    def __init__(self, lower: float, upper: float):
        self.lower, self.upper = lower, upper
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (value > self.lower) & (value < self.upper)

    def __repr__(self) -> str:
        return f"OpenInterval({self.lower}, {self.upper})"


class Normal(Likelihood, name="normal"):
    r"""Gaussian likelihood :math:`y \sim \mathcal N(\mu, \sigma)`.

    .. math::
        -\log p(y \mid \mu, \sigma) = \frac{(y-\mu)^2}{2\sigma^2} + \log\sigma + \tfrac12\log 2\pi

    With ``scale`` fixed this is **least squares**: the NLL summed over examples is
    :math:`\sum (y-\mu)^2 / 2\sigma^2 + N\log(\sigma\sqrt{2\pi})`, so its minimiser in
    :math:`\mu` is the least-squares fit whatever σ is. With ``scale`` predicted it is the
    heteroscedastic Gaussian NLL (``torch.nn.GaussianNLLLoss(full=True)`` on the variance).

    Channels, in order: ``loc`` (identity link), ``scale`` (softplus link).

    Usage::

        Normal(scale=0.3)("y", net(x), obs=y)      # least squares
        Normal()("y", net2(x), obs=y)              # net2 outputs (N, 2): mean and raw scale
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        Normal(scale=sigma)("y", net(x), obs=y)    # scale is a latent site
    """

    params = (
        Param("loc", links.identity, doc="mean"),
        Param("scale", links.softplus, doc="standard deviation > 0"),
    )

    examples = ({"scale": 0.3}, {}, {"links": {"scale": "exp"}})

    @property
    def loss_name(self) -> str:
        return "least squares" if "scale" in self.fixed else "heteroscedastic Gaussian NLL"

    def _distribution(self, loc, scale):
        return dist.Normal(loc, scale)

    def _classical(self, y, loc, scale):
        return 0.5 * ((y - loc) / scale) ** 2 + torch.log(scale) + _HALF_LOG_2PI

    # Φ written with erfc, which keeps its relative precision in the far tail (Tobit loss)
    def _classical_log_cdf(self, y, loc, scale):
        return torch.log(0.5 * torch.special.erfc(-(y - loc) / (scale * math.sqrt(2))))

    def _classical_log_sf(self, y, loc, scale):
        return torch.log(0.5 * torch.special.erfc((y - loc) / (scale * math.sqrt(2))))


class Laplace(Likelihood, name="laplace"):
    r"""Laplace likelihood :math:`y \sim \mathrm{Laplace}(\mu, b)`.

    .. math::
        -\log p(y \mid \mu, b) = \frac{|y-\mu|}{b} + \log 2b

    With ``scale`` fixed this is the **absolute error (L1) loss**, whose minimiser is the
    conditional median (least-absolute-deviation regression).

    Channels: ``loc`` (identity), ``scale`` (softplus).

    Usage::

        Laplace(scale=1.0)("y", net(x), obs=y)
    """

    params = (
        Param("loc", links.identity, doc="location (median)"),
        Param("scale", links.softplus, doc="scale b > 0"),
    )

    examples = ({"scale": 1.0}, {})

    @property
    def loss_name(self) -> str:
        return "absolute error (L1)" if "scale" in self.fixed else "scaled absolute error + log 2b"

    def _distribution(self, loc, scale):
        return dist.Laplace(loc, scale)

    def _classical(self, y, loc, scale):
        return (y - loc).abs() / scale + torch.log(2 * scale)


class StudentT(Likelihood, name="student_t"):
    r"""Student-t likelihood :math:`y \sim t_\nu(\mu, \sigma)`: robust regression.

    .. math::
        -\log p(y) = -\log\Gamma(\tfrac{\nu+1}{2}) + \log\Gamma(\tfrac{\nu}{2})
        + \tfrac12\log(\nu\pi) + \log\sigma
        + \tfrac{\nu+1}{2}\log\Big(1 + \tfrac{1}{\nu}\big(\tfrac{y-\mu}{\sigma}\big)^2\Big)

    The loss grows like :math:`\log|y-\mu|` rather than quadratically, so outliers pull
    the fit far less than under least squares.

    Channels: ``loc`` (identity), ``scale`` (softplus), ``df`` (softplus).

    Usage::

        StudentT(df=4.0)("y", net(x), obs=y)      # net outputs mean and raw scale
    """

    params = (
        Param("loc", links.identity, doc="location"),
        Param("scale", links.softplus, doc="scale > 0"),
        Param("df", links.softplus, doc="degrees of freedom ν > 0"),
    )
    loss_name = "robust (Student-t) loss"
    examples = ({"df": 4.0}, {})

    def _distribution(self, loc, scale, df):
        return dist.StudentT(df, loc, scale)

    def _classical(self, y, loc, scale, df):
        z = (y - loc) / scale
        return (
            -torch.lgamma((df + 1) / 2)
            + torch.lgamma(df / 2)
            + 0.5 * torch.log(df * math.pi)
            + torch.log(scale)
            + (df + 1) / 2 * torch.log1p(z**2 / df)
        )


class Exponential(Likelihood, name="exponential"):
    r"""Exponential likelihood :math:`y \sim \mathrm{Exponential}(\lambda)`, for magnitudes
    :math:`y \ge 0`.

    .. math::
        -\log p(y \mid \lambda) = \lambda y - \log \lambda

    Channel: ``rate`` through the log link :math:`\lambda = e^f`, so the loss is
    :math:`e^f y - f`, convex in the raw output.

    Usage::

        Exponential()("y", net(x), obs=y)
    """

    params = (Param("rate", links.exp, doc="rate λ > 0 (mean 1/λ)"),)
    loss_name = "exponential NLL"
    support = constraints.nonnegative
    support_text = "non-negative numbers (y ≥ 0)"
    support_fix = "Exponential models magnitudes y ≥ 0: check the sign of the data or shift it."

    def _distribution(self, rate):
        return dist.Exponential(rate)

    def _classical(self, y, rate):
        return rate * y - torch.log(rate)

    def _classical_log_cdf(self, y, rate):
        return torch.log1p(-torch.exp(-rate * y))

    def _classical_log_sf(self, y, rate):
        return -rate * y


class Gamma(Likelihood, name="gamma"):
    r"""Gamma likelihood :math:`y \sim \mathrm{Gamma}(\alpha, \beta)` (shape α, rate β),
    for magnitudes :math:`y > 0`.

    .. math::
        -\log p(y) = -\alpha\log\beta - (\alpha-1)\log y + \beta y + \log\Gamma(\alpha)

    Channels: ``concentration`` α (softplus), ``rate`` β (softplus).

    Usage::

        Gamma(concentration=2.0)("y", net(x), obs=y)
    """

    params = (
        Param("concentration", links.softplus, doc="shape α > 0"),
        Param("rate", links.softplus, doc="rate β > 0"),
    )
    loss_name = "gamma NLL"
    examples = ({"concentration": 2.0}, {})
    support = constraints.positive
    support_text = "positive numbers (y > 0)"
    support_fix = "Gamma needs y > 0: drop or offset exact zeros, or use Exponential, whose support includes 0."

    def _distribution(self, concentration, rate):
        return dist.Gamma(concentration, rate)

    def _classical(self, y, concentration, rate):
        a, b = concentration, rate
        return -a * torch.log(b) - (a - 1) * torch.log(y) + b * y + torch.lgamma(a)


class Beta(Likelihood, name="beta"):
    r"""Beta likelihood :math:`y \sim \mathrm{Beta}(\alpha, \beta)` for proportions in (0, 1).

    .. math::
        -\log p(y) = -(\alpha-1)\log y - (\beta-1)\log(1-y)
        + \log\Gamma(\alpha) + \log\Gamma(\beta) - \log\Gamma(\alpha+\beta)

    Channels: ``concentration1`` α and ``concentration0`` β (torch's names), both softplus.

    Usage::

        Beta()("share", net(x), obs=share)        # net outputs (N, 2)
    """

    params = (
        Param("concentration1", links.softplus, doc="α > 0 (weight of y)"),
        Param("concentration0", links.softplus, doc="β > 0 (weight of 1 − y)"),
    )
    loss_name = "beta NLL"
    support = _OpenInterval(0.0, 1.0)
    support_text = "proportions strictly inside (0, 1)"
    support_fix = (
        "Beta has zero density at 0 and 1 and none outside: squeeze boundary values inside with "
        "(y*(N-1) + 0.5)/N (Smithson & Verkuilen 2006), or model counts k of n with a Binomial."
    )

    def _distribution(self, concentration1, concentration0):
        return dist.Beta(concentration1, concentration0)

    def _classical(self, y, concentration1, concentration0):
        a, b = concentration1, concentration0
        log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
        return -(a - 1) * torch.log(y) - (b - 1) * torch.log1p(-y) + log_beta_fn
