"""Families for angles: VonMises and VonMisesMixture.

Observed angles are radians in [−π, π]. Values outside that range are **rejected**, not
wrapped: an angle of 270 is far more often a degree that was never converted than a radian
that needs wrapping, and silently wrapping it would fit the wrong data. Wrap deliberate
radians with :func:`wrap_angle`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param

_LOG_2PI = math.log(2 * math.pi)


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Angles wrapped to [−π, π] as ``atan2(sin θ, cos θ)``."""
    theta = torch.as_tensor(theta)
    return torch.atan2(torch.sin(theta), torch.cos(theta))


def log_von_mises_pdf(y: torch.Tensor, loc: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    r""":math:`\kappa\cos(y-\mu) - \log 2\pi - \log I_0(\kappa)`, written out.

    :math:`\log I_0(\kappa)` is computed as :math:`\log(\mathrm{i0e}(\kappa)) + \kappa`
    (``i0e`` is the exponentially scaled Bessel function), which stays finite for κ in the
    thousands where :math:`I_0(\kappa)` itself overflows.
    """
    k = concentration
    return k * torch.cos(y - loc) - _LOG_2PI - (torch.log(torch.special.i0e(k)) + k)


class _ExactVonMises(dist.VonMises):
    """``VonMises`` whose ``log_prob`` uses the exact Bessel function.

    torch's ``VonMises.log_prob`` evaluates log I₀(κ) with a polynomial approximation
    (Abramowitz & Stegun 9.8.1-2, relative error near 1e-7). A loss certificate to 1e-10 and
    float64 fits need better, so log I₀ comes from ``torch.special.i0e`` instead. Sampling is
    torch's, unchanged.
    """

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return log_von_mises_pdf(value, self.loc, self.concentration)


class _Angles:
    support = constraints.interval(-math.pi, math.pi)
    support_text = "angles in radians within [-π, π]"
    support_fix = (
        "If these are degrees, convert with torch.deg2rad first; if they are radians outside the "
        "range, wrap them with pyro_mle.likelihoods.wrap_angle(y)."
    )


class VonMises(_Angles, Likelihood, name="von_mises"):
    r"""Von Mises likelihood :math:`y \sim \mathrm{VonMises}(\mu, \kappa)` for a circular target.

    .. math::
        -\log p(y \mid \mu, \kappa) = -\kappa\cos(y-\mu) + \log 2\pi + \log I_0(\kappa)

    With κ fixed the loss is :math:`-\kappa\sum\cos(y-\mu)` + const: it penalises the angle
    between prediction and target, and is periodic, so 179° and −179° are close.

    Channels: ``loc`` through the :data:`~pyro_mle.likelihoods.links.angle` link, the identity
    on the circle: the raw output *is* the angle, so a mean direction moves freely across ±π
    (cos is periodic), and predicted means are reported wrapped to [−π, π]; ``concentration``
    κ (softplus). Named alternatives: ``links={"loc": "atan2"}`` takes two channels for the
    mean, :math:`\mu = \operatorname{atan2}(f_{\sin}, f_{\cos})`, in that order;
    ``links={"loc": "tan_half"}`` is :math:`\mu = 2\arctan f`, which cannot cross ±π (the
    raw output would have to pass through ±∞): a fit whose mean direction crosses ±π stalls.

    Usage::

        VonMises(concentration=4.0)("direction", a + b * x, obs=direction)   # μ = a + b·x
        VonMises(links={"loc": "atan2"})("direction", net(x), obs=direction)  # net: (N, 3)
    """

    params = (
        Param("loc", links.angle, doc="mean direction (radians; reported in [−π, π])"),
        Param("concentration", links.softplus, doc="concentration κ > 0"),
    )

    examples = ({"concentration": 4.0}, {}, {"concentration": 4.0, "links": {"loc": "atan2"}})

    @property
    def loss_name(self) -> str:
        return "cosine loss -κ·cos(y-μ) + const" if "concentration" in self.fixed else "von Mises NLL"

    def _distribution(self, loc, concentration):
        return _ExactVonMises(loc, concentration)

    def _classical(self, y, loc, concentration):
        # The textbook form with I₀ itself (finite for κ below ~700 in float64); the
        # distribution uses the overflow-free i0e form, so the two are computed independently.
        k = concentration
        return -k * torch.cos(y - loc) + torch.log(2 * math.pi * torch.special.i0(k))


class VonMisesMixture(_Angles, Likelihood, name="von_mises_mixture"):
    r"""Mixture of K von Mises components, for multimodal circular targets.

    .. math::
        -\log p(y) = -\log\sum_{k=1}^K \pi_k\,
        \frac{\exp(\kappa_k\cos(y-\mu_k))}{2\pi I_0(\kappa_k)},\quad \pi = \mathrm{softmax}(w)

    Channels (K each): ``logits`` w (mixture weights), ``loc`` (angle, as in :class:`VonMises`), ``concentration``
    (softplus). :meth:`classical_loss` is the density sum as written (finite for κ below
    ~700 in float64); the distribution works in log space and has no such limit.

    Usage::

        VonMisesMixture(num_components=2)("direction", net(x), obs=direction)  # net: (N, 6)
    """

    params = (
        Param("logits", links.logits, channels="K", doc="mixture weight logits"),
        Param("loc", links.angle, channels="K", doc="component mean directions"),
        Param("concentration", links.softplus, channels="K", doc="component concentrations"),
    )
    loss_name = "von Mises mixture NLL"
    examples = ({"num_components": 2},)
    _options = (("num_components", "num_components"),)

    def __init__(self, num_components: int, **fixed):
        self.num_components = _check_k("VonMisesMixture", num_components)
        super().__init__(**fixed)

    def _distribution(self, logits, loc, concentration):
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), _ExactVonMises(loc, concentration))

    def _classical(self, y, logits, loc, concentration):
        k = concentration
        weights = torch.softmax(logits, dim=-1)
        density = torch.exp(k * torch.cos(y.unsqueeze(-1) - loc)) / (2 * math.pi * torch.special.i0(k))
        return -torch.log((weights * density).sum(-1))


def _check_k(family: str, k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"{family} likelihood: num_components must be a positive integer; got {k!r}.")
    return int(k)
