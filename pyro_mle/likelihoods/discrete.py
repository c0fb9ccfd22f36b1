"""Families for labels and counts: Bernoulli, Categorical, Poisson, NegativeBinomial."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param, one_hot_rows


class Bernoulli(Likelihood, name="bernoulli"):
    r"""Bernoulli likelihood :math:`y \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(f))` on the logit f.

    .. math::
        -\log p(y \mid f) = -y\log\sigma(f) - (1-y)\log(1-\sigma(f))
        = \max(f, 0) - f y + \log(1 + e^{-|f|})

    This is **binary cross-entropy** (``torch.nn.BCEWithLogitsLoss``). The right-hand form
    is the stable one: it never evaluates ``log(sigmoid(f))``, which underflows to −inf
    for f ≪ 0.

    Channel: ``logits``.

    Usage::

        Bernoulli()("y", net(x), obs=y)        # y in {0, 1}
    """

    params = (Param("logits", links.logits, doc="log-odds of y = 1"),)
    loss_name = "binary cross-entropy"
    support = constraints.boolean
    support_text = "0 or 1"
    support_fix = "Encode labels as 0/1, or use Categorical for more than two classes."

    def _y_shape_hint(self, y, yb, batch, params):
        if yb == batch + (2,) and one_hot_rows(y):
            return (
                f" y of shape {tuple(y.shape)} holds one-hot rows; Bernoulli observes one 0/1 label per example: "
                "pass y.argmax(-1) (1 where the second column is set)."
            )
        return super()._y_shape_hint(y, yb, batch, params)

    def _distribution(self, logits):
        return dist.Bernoulli(logits=logits)

    def _classical(self, y, logits):
        f = logits
        return f.clamp(min=0) - f * y + torch.log1p(torch.exp(-f.abs()))


class Categorical(Likelihood, name="categorical"):
    r"""Categorical likelihood :math:`y \sim \mathrm{Categorical}(\mathrm{softmax}(f))` on K logits.

    .. math::
        -\log p(y = k \mid f) = -f_k + \log\sum_{j=1}^K e^{f_j}

    This is **multiclass cross-entropy** (``torch.nn.CrossEntropyLoss``), computed with
    log-sum-exp so no probability is formed and logged.

    Channels: ``logits`` (K of them). K is inferred from the outputs unless ``num_classes``
    is given, in which case the outputs must have exactly that many channels.

    Usage::

        Categorical()("label", net(x), obs=label)   # label in 0..K-1
    """

    params = (Param("logits", links.logits, channels="K", doc="unnormalised log-probabilities"),)
    loss_name = "multiclass cross-entropy"
    _options = (("num_classes", "num_components"),)
    support = constraints.nonnegative_integer  # refined to 0..K-1 once the outputs give K
    support_fix = (
        "Encode labels as integers 0..K-1 (numpy.unique(labels, return_inverse=True) does it), "
        "or give the network one output per class."
    )

    def __init__(self, num_classes: int | None = None, **fixed):
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
            raise ValueError(f"Categorical likelihood: num_classes must be an integer ≥ 2; got {num_classes}.")
        self.num_components = None if num_classes is None else int(num_classes)
        super().__init__(**fixed)

    @property
    def num_classes(self) -> int | None:
        """K, or ``None`` when it is read from the outputs."""
        return self.num_components

    def _support(self, params):
        return constraints.integer_interval(0, params["logits"].shape[-1] - 1)

    def _support_text(self, params):
        k = params["logits"].shape[-1]
        return f"integer class labels in 0..{k - 1} (K={k} from the outputs)"

    def _y_shape_hint(self, y, yb, batch, params):
        logits = params["logits"]
        k = logits.shape[-1]
        if not batch and len(yb) == 1 and logits.dim() == 1:
            n = yb[0]
            return (
                f" The logits have shape {tuple(logits.shape)}, read as one example over {k} classes, while y holds "
                f"{n} examples. Categorical logits must be (N, K), one column per class: a network with a single "
                f"output per example (one logit) needs Bernoulli instead; for K classes give it K output columns "
                f"(shape ({n}, K))."
            )
        if yb == batch + (k,):
            what = "holds one-hot labels" if one_hot_rows(y) else "has one column per class"
            return (
                f" y of shape {tuple(y.shape)} {what}; Categorical observes one class index per example, "
                f"shape {batch}: pass class indices (y.argmax(-1))."
            )
        return super()._y_shape_hint(y, yb, batch, params)

    def _distribution(self, logits):
        return dist.Categorical(logits=logits)

    def _classical(self, y, logits):
        picked = logits.gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(logits, dim=-1) - picked


class Poisson(Likelihood, name="poisson"):
    r"""Poisson likelihood :math:`y \sim \mathrm{Poisson}(\lambda)` with log link
    :math:`\lambda = e^f`, for counts.

    .. math::
        -\log p(y \mid \lambda) = \lambda - y\log\lambda + \log y!

    ``torch.nn.PoissonNLLLoss(log_input=True, full=False)`` drops the constant
    :math:`\log y!` (and ``full=True`` replaces it by Stirling's approximation for y > 1).

    Channel: ``rate`` (log link).

    Usage::

        Poisson()("count", net(x), obs=count)
    """

    params = (Param("rate", links.exp, doc="mean count λ > 0"),)
    loss_name = "Poisson NLL"
    support = constraints.nonnegative_integer
    support_text = "non-negative integer counts"
    support_fix = (
        "Poisson models counts 0, 1, 2, ...: round or drop non-integer values, or use a continuous "
        "family (Gamma, Exponential) for magnitudes."
    )

    def _distribution(self, rate):
        return dist.Poisson(rate)

    def _classical(self, y, rate):
        return rate - y * torch.log(rate) + torch.lgamma(y + 1)


class NegativeBinomial(Likelihood, name="negative_binomial"):
    r"""Negative binomial likelihood for over-dispersed counts (NB2), parameterised by its
    mean μ and dispersion r (``total_count``): :math:`\mathrm{Var}\,y = \mu + \mu^2/r`.

    .. math::
        -\log p(y) = -\log\Gamma(y+r) + \log\Gamma(r) + \log y!
        - r\log\frac{r}{r+\mu} - y\log\frac{\mu}{r+\mu}

    As r → ∞ it tends to Poisson(μ). Built as ``NegativeBinomial(total_count=r,
    logits=log μ − log r)``.

    Channels: ``rate`` μ (log link), ``total_count`` r (softplus).

    Usage::

        NegativeBinomial(total_count=5.0)("count", net(x), obs=count)
    """

    params = (
        Param("rate", links.exp, doc="mean count μ > 0"),
        Param("total_count", links.softplus, doc="dispersion r > 0 (larger: closer to Poisson)"),
    )
    loss_name = "negative binomial NLL"
    examples = ({"total_count": 5.0}, {})
    support = constraints.nonnegative_integer
    support_text = Poisson.support_text
    support_fix = Poisson.support_fix.replace("Poisson", "NegativeBinomial")

    def _distribution(self, rate, total_count):
        return dist.NegativeBinomial(total_count=total_count, logits=torch.log(rate) - torch.log(total_count))

    def _classical(self, y, rate, total_count):
        mu, r = rate, total_count
        log_mu_r = torch.log(mu + r)
        return (
            -torch.lgamma(y + r)
            + torch.lgamma(r)
            + torch.lgamma(y + 1)
            - r * (torch.log(r) - log_mu_r)
            - y * (torch.log(mu) - log_mu_r)
        )


__all__ = ["Bernoulli", "Categorical", "NegativeBinomial", "Poisson"]
