"""Plackett–Luce: a distribution over rankings, and its likelihood head.

Neither torch nor Pyro has this distribution, so it is written here with ``log_prob``,
``sample`` and a support check.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param


class _Permutation(constraints.Constraint):
    """Each row along the last dimension is a permutation of 0..K−1."""

    is_discrete = True
    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value.shape[-1]
        target = torch.arange(k, dtype=value.dtype, device=value.device)
        return (value.sort(dim=-1).values == target).all(-1)

    def __repr__(self) -> str:
        return "Permutation()"


permutation = _Permutation()


class PlackettLuceDistribution(TorchDistribution):
    r"""Plackett–Luce distribution over orderings of K items with scores (log-worths) s.

    A sample is a permutation :math:`\pi` listing item indices from first to last place.
    Items are drawn one after another without replacement, each with probability
    proportional to :math:`e^{s}` among those left:

    .. math::
        \log p(\pi \mid s) = \sum_{j=1}^{K} \Big( s_{\pi_j} - \log\sum_{m=j}^{K} e^{s_{\pi_m}} \Big)

    Sampling uses the Gumbel trick: sorting :math:`s + G` (G standard Gumbel) in
    decreasing order gives an exact Plackett–Luce draw (Yellott 1977).
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = permutation
    has_rsample = False

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PlackettLuceDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(PlackettLuceDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        idx = value.long()
        logits, idx = torch.broadcast_tensors(self.logits, idx)
        s = logits.gather(-1, idx)
        # log Σ_{m≥j} exp(s_m): a reversed cumulative log-sum-exp, stable for any score size.
        tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
        return (s - tail).sum(-1)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
            gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))
            keys = self.logits.expand(shape) + gumbel
            return keys.argsort(dim=-1, descending=True).to(self.logits.dtype)


class PlackettLuce(Likelihood, name="plackett_luce"):
    r"""Plackett–Luce likelihood for rankings of K items: the network predicts one score per
    item and the observed value is the ranking, item indices from best to worst.

    .. math::
        -\log p(\pi \mid s) = -\sum_{j=1}^{K} \Big( s_{\pi_j} - \log\sum_{m=j}^{K} e^{s_{\pi_m}} \Big)

    The first term of the sum is the cross-entropy of the top choice (a softmax over all K
    scores); each later term is the cross-entropy of the next choice among the items left,
    so this is a **listwise ranking loss** (ListMLE).

    Channels: ``logits`` (one score per item). K is inferred from the outputs unless
    ``num_items`` is given.

    Usage::

        PlackettLuce()("ranking", scorer(x), obs=ranking)  # ranking: (N, K) permutations
    """

    params = (Param("logits", links.logits, channels="K", doc="item scores (log-worths)"),)
    loss_name = "listwise ranking loss (ListMLE)"
    _options = (("num_items", "num_components"),)
    event_dim = 1
    support = permutation
    support_text = "permutations of the item indices 0..K-1, best first"
    support_fix = "Each row must list every item exactly once, e.g. numpy.argsort(-scores) of the observed order."

    def __init__(self, num_items: int | None = None, **fixed):
        if num_items is not None and (int(num_items) != num_items or num_items < 2):
            raise ValueError(f"PlackettLuce likelihood: num_items must be an integer ≥ 2; got {num_items!r}.")
        self.num_components = None if num_items is None else int(num_items)
        super().__init__(**fixed)

    def _distribution(self, logits):
        return PlackettLuceDistribution(logits)

    def _classical(self, y, logits):
        s = logits.expand(y.shape).gather(-1, y.long())
        k = s.shape[-1]
        total = torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
        for j in range(k):  # one choice at a time: item π_j among those still unranked
            total = total + torch.logsumexp(s[..., j:], dim=-1) - s[..., j]
        return total


__all__ = ["PlackettLuce", "PlackettLuceDistribution", "permutation"]
