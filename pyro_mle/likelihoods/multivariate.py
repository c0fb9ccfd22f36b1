"""MultivariateNormal: multi-output regression, independent or correlated outputs."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param


class MultivariateNormal(Likelihood, name="multivariate_normal"):
    r"""D-dimensional Gaussian likelihood for multi-output regression.

    ``covariance="diagonal"`` (default): independent outputs, one ``scale`` per output, so
    the NLL is the sum of D univariate Gaussian NLLs — the right loss when outputs live on
    different scales (height in m, weight in kg):

    .. math::
        -\log p(y) = \sum_{d=1}^D \frac{(y_d-\mu_d)^2}{2\sigma_d^2} + \log\sigma_d + \tfrac12\log 2\pi

    ``covariance="full"``: correlated outputs through a Cholesky factor L of the covariance
    (:math:`\Sigma = LL^\top`), predicted from D(D+1)/2 channels (the diagonal through
    softplus):

    .. math::
        -\log p(y) = \tfrac12\lVert L^{-1}(y-\mu)\rVert^2 + \sum_d \log L_{dd} + \tfrac D2\log 2\pi

    Channels: ``loc`` (D, identity), then ``scale`` (D, softplus) or ``scale_tril``
    (D(D+1)/2, row-major lower triangle).

    Usage::

        MultivariateNormal(dim=2, scale=torch.tensor([0.05, 4.0]))("hw", net(x), obs=hw)
        MultivariateNormal(dim=3, covariance="full")("y", net(x), obs=y)   # net: (N, 3 + 6)
    """

    _DIAGONAL = (
        Param("loc", links.identity, channels="D", doc="mean vector"),
        Param("scale", links.softplus, channels="D", doc="standard deviation of each output"),
    )
    _FULL = (
        Param("loc", links.identity, channels="D", doc="mean vector"),
        Param("scale_tril", links.cholesky, channels="tril", doc="Cholesky factor of the covariance"),
    )
    params = _DIAGONAL

    examples = ({"dim": 2, "scale": (0.05, 4.0)}, {"dim": 3, "covariance": "full"})

    @property
    def loss_name(self) -> str:
        if self.covariance == "full":
            return "Mahalanobis Gaussian NLL"
        return "per-output least squares, summed" if "scale" in self.fixed else "per-output Gaussian NLLs, summed"

    _options = (("dim", "dim"), ("covariance", "covariance"))
    event_dim = 1
    support = constraints.real_vector
    support_text = "real vectors"

    def __init__(self, dim: int, covariance: str = "diagonal", **fixed):
        if int(dim) != dim or dim < 1:
            raise ValueError(f"MultivariateNormal likelihood: dim must be a positive integer; got {dim!r}.")
        if covariance not in ("diagonal", "full"):
            raise ValueError(
                f"MultivariateNormal likelihood: covariance must be 'diagonal' or 'full'; got {covariance!r}."
            )
        self.dim = int(dim)
        self.covariance = covariance
        super().__init__(**fixed)

    def _declared_specs(self):
        return self._DIAGONAL if self.covariance == "diagonal" else self._FULL

    def _distribution(self, loc, scale=None, scale_tril=None):
        if scale_tril is None:
            loc, scale = torch.broadcast_tensors(loc, scale)
            return dist.Normal(loc, scale).to_event(1)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def _classical(self, y, loc, scale=None, scale_tril=None):
        if scale_tril is None:
            per_output = 0.5 * ((y - loc) / scale) ** 2 + torch.log(scale) + 0.5 * math.log(2 * math.pi)
            return per_output.sum(-1)
        diff = (y - loc).unsqueeze(-1)
        L = scale_tril.expand(diff.shape[:-2] + scale_tril.shape[-2:])
        white = torch.linalg.solve_triangular(L, diff, upper=False).squeeze(-1)
        log_det = torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * (white**2).sum(-1) + log_det + 0.5 * self.dim * math.log(2 * math.pi)
