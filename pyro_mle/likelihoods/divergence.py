r"""Cross-entropy is KL divergence is maximum likelihood.

Let :math:`q` be the empirical distribution of the observed labels,
:math:`q(y) = \frac1N\sum_i \delta(y - y_i)`, and :math:`p_\theta` the model. Then

.. math::
    \mathrm{KL}(q \,\|\, p_\theta) = \sum_y q(y)\log\frac{q(y)}{p_\theta(y)}
    = \underbrace{-\sum_y q(y)\log p_\theta(y)}_{\text{cross-entropy } H(q, p_\theta)}
      - \underbrace{\Big(-\sum_y q(y)\log q(y)\Big)}_{\text{entropy } H(q)}

and :math:`H(q, p_\theta) = -\frac1N\sum_i \log p_\theta(y_i)` is the mean negative
log-likelihood. :math:`H(q)` does not depend on θ, so minimising the KL divergence,
minimising the cross-entropy and maximising the likelihood choose the same θ; at the
optimum the KL is what the model cannot explain, and it is 0 exactly when
:math:`p_\theta = q` on the data.

For a conditional model :math:`p_\theta(y \mid x)` the same holds with :math:`q(y \mid x)`,
averaged over the inputs: rows whose network outputs are identical share one empirical
conditional distribution. When every row has its own outputs, each :math:`q(\cdot \mid x_i)`
is a point mass, its entropy is 0, and the KL equals the cross-entropy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Likelihood


class KLDecomposition(NamedTuple):
    """KL divergence from the empirical label distribution to the model, and its parts.

    Fields (0-dim tensors, nats per example):
      * ``kl``: :math:`\\mathrm{KL}(q\\,\\|\\,p)` = ``cross_entropy − entropy`` (≥ 0).
      * ``cross_entropy``: :math:`H(q, p)`, the mean negative log-likelihood.
      * ``entropy``: :math:`H(q)` of the empirical distribution (per input, averaged).
    """

    kl: torch.Tensor
    cross_entropy: torch.Tensor
    entropy: torch.Tensor


def empirical_kl(likelihood: Likelihood, outputs: torch.Tensor, y: torch.Tensor) -> KLDecomposition:
    """KL divergence between the empirical distribution of the labels ``y`` and the model.

    ``outputs`` are the raw network outputs, one row per example, or a single row shared by
    every example (a model without inputs). Only discrete families (Bernoulli, Categorical,
    Poisson, NegativeBinomial, PlackettLuce) have an empirical distribution with a density
    to compare; continuous families are refused.

    Example::

        k = empirical_kl(Categorical(), logits, labels)
        k.kl == k.cross_entropy - k.entropy
    """
    if not likelihood.support.is_discrete:
        raise TypeError(
            f"empirical_kl needs a discrete likelihood (labels or counts); {likelihood!r} is continuous, "
            "and the empirical distribution of real values has no density. Use likelihood.nll(...).mean() "
            "for the cross-entropy."
        )
    outputs = torch.as_tensor(outputs)
    y = torch.as_tensor(y)
    shared = outputs.dim() == 0 or (outputs.dim() == 1 and (likelihood.num_outputs != 1 or outputs.shape[0] == 1))
    if shared:  # one row of outputs (C,) for every example
        n = y.shape[0] if y.dim() > likelihood.event_dim else 1
        outputs = outputs.expand((n,) + outputs.shape)
    params, d, y = likelihood._prepare(outputs, y, "y")
    nll = -d.log_prob(y)
    n = nll.numel()
    cross_entropy = nll.mean()

    # Rows with identical outputs share one empirical conditional q(y | x).
    outs = likelihood._outputs(outputs).detach().reshape(n, -1)
    _, group = torch.unique(outs, dim=0, return_inverse=True)
    _, group_size = torch.unique(group, return_counts=True)
    pairs = torch.cat([group.unsqueeze(-1).to(y.dtype), y.reshape(n, -1)], dim=-1)
    uniq, count = torch.unique(pairs, dim=0, return_counts=True)
    n_group = group_size[uniq[:, 0].long()].to(nll.dtype)
    count = count.to(nll.dtype)
    entropy = -(count * torch.log(count / n_group)).sum() / n
    return KLDecomposition(cross_entropy - entropy, cross_entropy, entropy)
