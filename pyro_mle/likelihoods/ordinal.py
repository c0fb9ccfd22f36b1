"""Ordinal labels: cumulative-link models with K−1 ordered cut points (logit and probit)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param
from .censored import log_interval


def _ordered_log_probs(eta: torch.Tensor, cutpoints: torch.Tensor, latent) -> torch.Tensor:
    """log P(y = k) = log(F(c_k − η) − F(c_{k−1} − η)) for k = 0..K−1 (c_0 = −∞, c_K = +∞),
    in log space. The end classes are written out: an infinite cut point would leak a NaN
    into the gradient."""
    eta = eta.unsqueeze(-1)
    c = cutpoints.expand(eta.shape[:-1] + cutpoints.shape[-1:])
    d = latent(eta)  # the latent variable's law, centred at η
    first = d._log_cdf(c[..., :1])
    last = d._log_sf(c[..., -1:])
    middle = log_interval(d, c[..., :-1], c[..., 1:])
    return torch.cat([first, middle, last], dim=-1)


class _LatentLogistic:
    """The standard logistic law shifted to η: F(c) = σ(c − η), in log space."""

    def __init__(self, loc):
        self.loc = loc

    def _log_cdf(self, v):
        return F.logsigmoid(v - self.loc)

    def _log_sf(self, v):
        return F.logsigmoid(self.loc - v)


class _LatentNormal(torch.distributions.Normal):
    def __init__(self, loc):
        super().__init__(loc, torch.ones_like(loc), validate_args=False)

    def _log_cdf(self, v):
        return torch.special.log_ndtr(v - self.loc)

    def _log_sf(self, v):
        return torch.special.log_ndtr(self.loc - v)


class _Ordinal(Likelihood):
    params = (
        Param("predictor", links.identity, doc="latent score η (higher: higher classes)"),
        Param("cutpoints", links.ordered, channels="K-1", doc="K−1 increasing cut points"),
    )
    support = constraints.nonnegative_integer
    support_fix = "Encode the ordered levels as integers 0..K-1 in their order (lowest level 0)."
    _options = (("num_classes", "num_components"),)
    examples = ({"num_classes": 4},)

    def __init__(self, num_classes: int, **fixed):
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(
                f"{type(self).__name__} likelihood: num_classes must be an integer ≥ 2 (the number of ordered "
                f"levels); got {num_classes!r}."
            )
        self.num_components = int(num_classes)
        super().__init__(**fixed)

    @property
    def num_classes(self) -> int:
        return self.num_components

    def _check_fixed(self, p, value):
        t = super()._check_fixed(p, value)
        if p.name == "cutpoints" and torch.as_tensor(t).shape[-1:] != (self.num_classes - 1,):
            raise ValueError(
                f"{self._label}: fixed cutpoints has shape {tuple(torch.as_tensor(t).shape)}, but "
                f"num_classes={self.num_classes} needs {self.num_classes - 1} cut points."
            )
        return t

    def _support(self, params):
        return constraints.integer_interval(0, self.num_classes - 1)

    def _support_text(self, params):
        return f"integer ordinal levels in 0..{self.num_classes - 1} (num_classes={self.num_classes})"

    def _distribution(self, predictor, cutpoints):
        return dist.Categorical(logits=_ordered_log_probs(predictor, cutpoints, self._latent))

    def _classical(self, y, predictor, cutpoints):
        # P(y = k) = F(c_k − η) − F(c_{k−1} − η), with F(−∞) = 0 and F(+∞) = 1 padded in
        eta = predictor.unsqueeze(-1)
        c = cutpoints.expand(eta.shape[:-1] + cutpoints.shape[-1:])
        cdf = self._cdf(c - eta)
        cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf, torch.ones_like(cdf[..., :1])], -1)
        k = y.long().unsqueeze(-1)
        return -torch.log(cdf.gather(-1, k + 1) - cdf.gather(-1, k)).squeeze(-1)


class OrderedLogistic(_Ordinal, name="ordered_logistic"):
    r"""Cumulative logit (proportional odds) model for ordinal labels 0..K−1.

    .. math::
        P(y \le k) = \sigma(c_{k+1} - \eta), \qquad
        -\log p(y = k) = -\log\big(\sigma(c_{k+1}-\eta) - \sigma(c_k-\eta)\big)

    with :math:`c_0 = -\infty`, :math:`c_K = +\infty`. The K−1 cut points are increasing by
    construction: the ``ordered`` link (pyro's ``OrderedTransform``) maps raw values to
    :math:`c_1 = f_1,\ c_k = c_{k-1} + e^{f_k}`, the parameterisation of statsmodels
    ``OrderedModel``. Cut points shared by all rows are usually fixed to a
    ``pyro.param(..., constraint=constraints.ordered_vector)``.

    Channels: ``predictor`` η (identity), ``cutpoints`` (K−1, ordered).

    Usage::

        cut = pyro.param("cut", torch.arange(4.0) - 1.5, constraint=constraints.ordered_vector)
        OrderedLogistic(num_classes=5, cutpoints=cut)("rating", x @ beta, obs=rating)
    """

    loss_name = "cumulative logit (proportional odds) NLL"

    @staticmethod
    def _latent(eta):
        return _LatentLogistic(eta)

    @staticmethod
    def _cdf(z):
        return 1 / (1 + torch.exp(-z))


class OrderedProbit(_Ordinal, name="ordered_probit"):
    r"""Cumulative probit model for ordinal labels 0..K−1: a latent
    :math:`\eta + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)`, cut at K−1 increasing
    points.

    .. math::
        -\log p(y = k) = -\log\big(\Phi(c_{k+1}-\eta) - \Phi(c_k-\eta)\big)

    Cut points and channels as in :class:`OrderedLogistic`.

    Usage::

        OrderedProbit(num_classes=5, cutpoints=cut)("rating", x @ beta, obs=rating)
    """

    loss_name = "cumulative probit NLL"

    @staticmethod
    def _latent(eta):
        return _LatentNormal(eta)

    @staticmethod
    def _cdf(z):
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))


__all__ = ["OrderedLogistic", "OrderedProbit"]
