"""NormalMixture: the likelihood of a mixture density network."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from . import links
from .base import Likelihood, Param
from .circular import _check_k


class NormalMixture(Likelihood, name="normal_mixture"):
    r"""Mixture of K Normals: the **mixture density network** loss for multimodal regression.

    .. math::
        -\log p(y) = -\log\sum_{k=1}^K \pi_k\,\mathcal N(y \mid \mu_k, \sigma_k),
        \qquad \pi = \mathrm{softmax}(w)

    computed as a log-sum-exp of ``log_softmax(w) + log N(y | μ_k, σ_k)`` so no tiny
    component density is formed and summed.

    Channels (K each, in this order): ``logits`` w, ``loc`` μ (identity), ``scale`` σ
    (softplus). Fixing ``scale`` (a number or a K-vector) leaves 2K channels.

    Usage::

        NormalMixture(num_components=3)("y", mdn(x), obs=y)     # mdn outputs (N, 9)
    """

    params = (
        Param("logits", links.logits, channels="K", doc="mixture weight logits"),
        Param("loc", links.identity, channels="K", doc="component means"),
        Param("scale", links.softplus, channels="K", doc="component standard deviations"),
    )
    loss_name = "mixture density network NLL"
    examples = ({"num_components": 3},)
    _options = (("num_components", "num_components"),)

    def __init__(self, num_components: int, **fixed):
        self.num_components = _check_k("NormalMixture", num_components)
        super().__init__(**fixed)

    def _distribution(self, logits, loc, scale):
        loc, scale = torch.broadcast_tensors(loc, scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale))

    def _classical(self, y, logits, loc, scale):
        z = (y.unsqueeze(-1) - loc) / scale
        log_comp = -0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_comp, dim=-1)
