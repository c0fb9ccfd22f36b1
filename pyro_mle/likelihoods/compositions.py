"""Families for compositions: counts over K categories (Multinomial) and proportions that sum
to one (Dirichlet)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param


def _check_k(family: str, keyword: str, k: int | None) -> int | None:
    if k is not None and (int(k) != k or k < 2):
        raise ValueError(f"{family} likelihood: {keyword} must be an integer ≥ 2; got {k!r}.")
    return None if k is None else int(k)


class _CountVectors(constraints.Constraint):
    """Rows of non-negative integers that sum to n."""

    event_dim = 1
    is_discrete = True

    def __init__(self, total: int):
        self.total = total
        super().__init__()

    def check(self, value):
        ok = (value >= 0) & (value == value.round())
        return ok.all(-1) & (value.sum(-1) == self.total)


class Multinomial(Likelihood, name="multinomial"):
    r"""Multinomial likelihood: counts :math:`y_1..y_K` of n draws over K categories with
    probabilities :math:`\mathrm{softmax}(f)`.

    .. math::
        -\log p(y) = -\log n! + \sum_k \log y_k! - \sum_k y_k\,\mathrm{log\_softmax}(f)_k

    The count-weighted multiclass cross-entropy plus the multinomial coefficient; with n = 1
    it is Categorical on a one-hot row.

    Channels: ``logits`` (K of them, K read from the outputs unless ``num_classes`` is given).
    ``total_count`` n is the number of draws in every row.

    Usage::

        Multinomial(total_count=20)("votes", net(x), obs=votes)     # votes: (N, K), rows sum to 20
    """

    params = (Param("logits", links.logits, channels="K", doc="unnormalised log-probabilities"),)
    loss_name = "multinomial NLL (count-weighted cross-entropy)"
    event_dim = 1
    _options = (("total_count", "total_count"), ("num_classes", "num_components"))
    examples = ({"total_count": 10},)
    support_fix = "Give each row the K category counts of total_count draws (non-negative integers)."

    def __init__(self, total_count: int, num_classes: int | None = None, **fixed):
        if int(total_count) != total_count or total_count < 1:
            raise ValueError(
                f"Multinomial likelihood: total_count (draws per row) must be a positive integer; got {total_count!r}."
            )
        self.total_count = int(total_count)
        self.num_components = _check_k("Multinomial", "num_classes", num_classes)
        super().__init__(**fixed)

    def _support(self, params):
        return _CountVectors(self.total_count)

    def _support_text(self, params):
        return f"rows of non-negative integer counts summing to total_count={self.total_count}"

    def _distribution(self, logits):
        return dist.Multinomial(self.total_count, logits=logits)

    def _classical(self, y, logits):
        log_p = torch.log_softmax(logits, -1)
        n = y.sum(-1)
        return -torch.lgamma(n + 1) + torch.lgamma(y + 1).sum(-1) - (y * log_p).sum(-1)


class _OpenSimplex(constraints.Constraint):
    """Rows strictly inside (0, 1) summing to 1 (to 1e-6, torch's simplex tolerance)."""

    event_dim = 1

    def check(self, value):
        return (value > 0).all(-1) & ((value.sum(-1) - 1).abs() < 1e-6)


class Dirichlet(Likelihood, name="dirichlet"):
    r"""Dirichlet likelihood for proportions :math:`y` on the simplex (K parts, each in (0, 1),
    summing to 1), with concentrations :math:`\alpha = \mathrm{softplus}(f)`.

    .. math::
        -\log p(y) = -\log\Gamma\big(\textstyle\sum_k\alpha_k\big) + \sum_k\log\Gamma(\alpha_k)
        - \sum_k(\alpha_k - 1)\log y_k

    K = 2 is the Beta likelihood on :math:`y_1`.

    Channels: ``concentration`` (K of them, K read from the outputs unless ``num_parts``).

    Usage::

        Dirichlet()("shares", net(x), obs=shares)      # shares: (N, K), rows sum to 1
    """

    params = (Param("concentration", links.softplus, channels="K", doc="concentrations α_k > 0"),)
    loss_name = "Dirichlet NLL"
    event_dim = 1
    _options = (("num_parts", "num_components"),)
    support = _OpenSimplex()
    support_text = "proportions strictly inside (0, 1) in each row, summing to 1"
    support_fix = (
        "Divide each row by its sum; replace exact zeros (e.g. (y*(N-1) + 1/K)/N) or model counts with Multinomial."
    )

    def __init__(self, num_parts: int | None = None, **fixed):
        self.num_components = _check_k("Dirichlet", "num_parts", num_parts)
        super().__init__(**fixed)

    def _distribution(self, concentration):
        return dist.Dirichlet(concentration)

    def _classical(self, y, concentration):
        a = concentration
        return -torch.lgamma(a.sum(-1)) + torch.lgamma(a).sum(-1) - ((a - 1) * torch.log(y)).sum(-1)


__all__ = ["Dirichlet", "Multinomial"]
