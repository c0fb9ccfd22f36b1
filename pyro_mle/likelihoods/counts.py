"""Families for counts beyond Poisson/NegativeBinomial: zero-inflated and hurdle counts, and
counts out of a known number of trials (Binomial, BetaBinomial)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

from . import links
from .base import Likelihood, Param
from .discrete import Poisson

_NO_SHAPE = torch.Size()


def _nb(rate: torch.Tensor, total_count: torch.Tensor) -> dist.NegativeBinomial:
    # NB2 by its mean: logits = log μ − log r (as NegativeBinomial does)
    return dist.NegativeBinomial(total_count=total_count, logits=torch.log(rate) - torch.log(total_count))


class _Counts:
    support = constraints.nonnegative_integer
    support_text = Poisson.support_text
    support_fix = Poisson.support_fix.replace("Poisson models", "Count families model")


def _log_poisson(y, rate):
    return y * torch.log(rate) - rate - torch.lgamma(y + 1)


def _log_nb(y, rate, r):
    log_mu_r = torch.log(rate + r)
    return (
        torch.lgamma(y + r)
        - torch.lgamma(r)
        - torch.lgamma(y + 1)
        + r * (torch.log(r) - log_mu_r)
        + y * (torch.log(rate) - log_mu_r)
    )


class ZeroInflatedPoisson(_Counts, Likelihood, name="zero_inflated_poisson"):
    r"""Zero-inflated Poisson: with probability π a structural zero, else Poisson(λ).

    .. math::
        -\log p(0) = -\log\big(\pi + (1-\pi)e^{-\lambda}\big), \qquad
        -\log p(y>0) = -\log(1-\pi) + \lambda - y\log\lambda + \log y!

    Channels: ``rate`` λ (log link), ``gate_logits`` :math:`\mathrm{logit}\,\pi` (the
    inflation model of statsmodels ``ZeroInflatedPoisson(inflation="logit")``).

    Usage::

        ZeroInflatedPoisson()("visits", net(x), obs=visits)       # net: (N, 2)
    """

    params = (
        Param("rate", links.exp, doc="Poisson mean λ > 0"),
        Param("gate_logits", links.logits, doc="log-odds of a structural zero"),
    )
    loss_name = "zero-inflated Poisson NLL"

    def _distribution(self, rate, gate_logits):
        return dist.ZeroInflatedPoisson(rate, gate_logits=gate_logits)

    def _classical(self, y, rate, gate_logits):
        pi = torch.sigmoid(gate_logits)
        zero = -torch.log(pi + (1 - pi) * torch.exp(-rate))
        return torch.where(y == 0, zero, -torch.log(1 - pi) - _log_poisson(y, rate))


class ZeroInflatedNegativeBinomial(_Counts, Likelihood, name="zero_inflated_negative_binomial"):
    r"""Zero-inflated negative binomial (NB2 by its mean μ and dispersion r).

    .. math::
        p(0) = \pi + (1-\pi)\,\mathrm{NB}(0\mid\mu,r),\qquad p(y>0) = (1-\pi)\,\mathrm{NB}(y\mid\mu,r)

    Channels: ``rate`` μ (log link), ``total_count`` r (softplus), ``gate_logits`` (logit π).

    Usage::

        ZeroInflatedNegativeBinomial(total_count=2.0)("visits", net(x), obs=visits)
    """

    params = (
        Param("rate", links.exp, doc="mean count μ > 0 of the NB part"),
        Param("total_count", links.softplus, doc="dispersion r > 0"),
        Param("gate_logits", links.logits, doc="log-odds of a structural zero"),
    )
    loss_name = "zero-inflated negative binomial NLL"
    examples = ({"total_count": 2.0}, {})

    def _distribution(self, rate, total_count, gate_logits):
        return dist.ZeroInflatedNegativeBinomial(
            total_count, logits=torch.log(rate) - torch.log(total_count), gate_logits=gate_logits
        )

    def _classical(self, y, rate, total_count, gate_logits):
        pi = torch.sigmoid(gate_logits)
        nb0 = torch.exp(_log_nb(torch.zeros_like(y), rate, total_count))
        zero = -torch.log(pi + (1 - pi) * nb0)
        return torch.where(y == 0, zero, -torch.log(1 - pi) - _log_nb(y, rate, total_count))


class HurdleDistribution(TorchDistribution):
    """Zeros from a Bernoulli with logit ``zero_logits``; positive counts from ``base``
    truncated to y ≥ 1 (a zero-truncated count)."""

    arg_constraints = {"zero_logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, base, zero_logits, validate_args=None):
        self.base, self.zero_logits = base, zero_logits
        batch = torch.broadcast_shapes(base.batch_shape, zero_logits.shape)
        super().__init__(batch, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return HurdleDistribution(self.base.expand(batch_shape), self.zero_logits.expand(batch_shape))

    def log_prob(self, value):
        log_p0 = self.base.log_prob(torch.zeros_like(value))
        # log(1 − p₀) = log(−expm1(log p₀)): exact when p₀ is tiny or close to 1
        positive = F.logsigmoid(-self.zero_logits) + self.base.log_prob(value) - torch.log(-torch.expm1(log_p0))
        return torch.where(value == 0, F.logsigmoid(self.zero_logits), positive)

    @property
    def mean(self):
        p0 = torch.exp(self.base.log_prob(torch.zeros_like(self.base.mean)))
        return torch.sigmoid(-self.zero_logits) * self.base.mean / (1 - p0)

    def sample(self, sample_shape=_NO_SHAPE):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            zero = torch.bernoulli(torch.sigmoid(self.zero_logits).expand(shape))
            x = self.base.expand(self.batch_shape).sample(sample_shape)
            for _ in range(200):  # zero-truncated draws by rejection
                redo = x == 0
                if not bool(redo.any()):
                    break
                x = torch.where(redo, self.base.expand(self.batch_shape).sample(sample_shape), x)
            # a row still at 0 after 200 rounds has a small P(y > 0) (below 3 % but for a 1-in-400 chance),
            # where the zero-truncated law is almost all at 1
            # (P(1 | y > 0) = 1 − O(mean)), so 1 is drawn there rather than looping on
            x = torch.where(x == 0, torch.ones_like(x), x)
            return torch.where(zero.bool(), torch.zeros_like(x), x)


class HurdlePoisson(_Counts, Likelihood, name="hurdle_poisson"):
    r"""Hurdle Poisson: zero or not from a logit, positive counts from a zero-truncated Poisson.

    .. math::
        -\log p(0) = -\log\sigma(z), \qquad
        -\log p(y>0) = -\log\sigma(-z) + \lambda - y\log\lambda + \log y! + \log(1 - e^{-\lambda})

    Unlike zero inflation, every zero comes from the hurdle: the two parts separate.

    Channels: ``rate`` λ (log link), ``zero_logits`` z (log-odds of y = 0).

    Usage::

        HurdlePoisson()("visits", net(x), obs=visits)
    """

    params = (
        Param("rate", links.exp, doc="mean λ of the untruncated Poisson"),
        Param("zero_logits", links.logits, doc="log-odds of y = 0"),
    )
    loss_name = "hurdle Poisson NLL"

    def _distribution(self, rate, zero_logits):
        return HurdleDistribution(dist.Poisson(rate), zero_logits)

    def _classical(self, y, rate, zero_logits):
        p0 = torch.sigmoid(zero_logits)
        positive = -torch.log(1 - p0) - _log_poisson(y, rate) + torch.log(1 - torch.exp(-rate))
        return torch.where(y == 0, -torch.log(p0), positive)


class HurdleNegativeBinomial(_Counts, Likelihood, name="hurdle_negative_binomial"):
    r"""Hurdle negative binomial: zero or not from a logit, positive counts from a
    zero-truncated NB2 (mean μ, dispersion r).

    .. math::
        -\log p(y>0) = -\log\sigma(-z) - \log\mathrm{NB}(y\mid\mu,r) + \log(1 - \mathrm{NB}(0\mid\mu,r))

    Channels: ``rate`` μ (log link), ``total_count`` r (softplus), ``zero_logits`` z.

    Usage::

        HurdleNegativeBinomial(total_count=2.0)("visits", net(x), obs=visits)
    """

    params = (
        Param("rate", links.exp, doc="mean μ of the untruncated NB"),
        Param("total_count", links.softplus, doc="dispersion r > 0"),
        Param("zero_logits", links.logits, doc="log-odds of y = 0"),
    )
    loss_name = "hurdle negative binomial NLL"
    examples = ({"total_count": 2.0},)

    def _distribution(self, rate, total_count, zero_logits):
        return HurdleDistribution(_nb(rate, total_count), zero_logits)

    def _classical(self, y, rate, total_count, zero_logits):
        p0 = torch.sigmoid(zero_logits)
        nb0 = torch.exp(_log_nb(torch.zeros_like(y), rate, total_count))
        positive = -torch.log(1 - p0) - _log_nb(y, rate, total_count) + torch.log(1 - nb0)
        return torch.where(y == 0, -torch.log(p0), positive)


class _Trials:
    """Heads with a known number of trials n per row (``total_count``, data, not a parameter)."""

    _options = (("total_count", "total_count"),)

    def _init_trials(self, total_count):
        t = torch.as_tensor(total_count, dtype=torch.float64)
        if not bool(((t >= 0) & (t == t.round())).all()):
            raise ValueError(
                f"{type(self).__name__} likelihood: total_count (trials per row) must be non-negative integers; "
                f"got {t.tolist() if t.numel() < 10 else 'other values'}."
            )
        self.total_count = total_count if isinstance(total_count, torch.Tensor) else (int(t) if t.dim() == 0 else t)

    def _n(self, ref):
        return torch.as_tensor(self.total_count, dtype=ref.dtype, device=ref.device)

    def _support(self, params):
        return constraints.integer_interval(0, self._n(next(iter(params.values()))))

    def _support_text(self, params):
        n = self.total_count if isinstance(self.total_count, int) else "per row"
        return f"integer counts of successes in 0..total_count (total_count={n})"


class Binomial(_Trials, _Counts, Likelihood, name="binomial"):
    r"""Binomial likelihood: y successes out of n trials with success logit f.

    .. math::
        -\log p(y) = -\log\binom{n}{y} - y f + n\log(1 + e^{f})

    n = 1 is Bernoulli (binary cross-entropy). ``total_count`` is n: a number or one per row.

    Channel: ``logits``.

    Usage::

        Binomial(total_count=trials)("successes", net(x), obs=successes)
    """

    params = (Param("logits", links.logits, doc="log-odds of a success"),)
    loss_name = "binomial NLL"
    examples = ({"total_count": 10},)
    support_fix = "Counts must lie between 0 and the number of trials: check total_count and the data."

    def __init__(self, total_count, **fixed):
        self._init_trials(total_count)
        super().__init__(**fixed)

    def _distribution(self, logits):
        return dist.Binomial(total_count=self._n(logits), logits=logits)

    def _classical(self, y, logits):
        n = self._n(logits)
        log_choose = torch.lgamma(n + 1) - torch.lgamma(y + 1) - torch.lgamma(n - y + 1)
        return -log_choose - y * logits + n * F.softplus(logits)


class BetaBinomial(_Trials, _Counts, Likelihood, name="beta_binomial"):
    r"""Beta-binomial likelihood: over-dispersed successes out of n trials.

    .. math::
        -\log p(y) = -\log\binom{n}{y} - \log B(y+\alpha, n-y+\beta) + \log B(\alpha,\beta)

    Channels: ``concentration1`` α, ``concentration0`` β (softplus), as for Beta.

    Usage::

        BetaBinomial(total_count=trials)("successes", net(x), obs=successes)   # net: (N, 2)
    """

    params = (
        Param("concentration1", links.softplus, doc="α > 0 (weight of successes)"),
        Param("concentration0", links.softplus, doc="β > 0 (weight of failures)"),
    )
    loss_name = "beta-binomial NLL"
    examples = ({"total_count": 10},)
    support_fix = Binomial.support_fix

    def __init__(self, total_count, **fixed):
        self._init_trials(total_count)
        super().__init__(**fixed)

    def _distribution(self, concentration1, concentration0):
        return dist.BetaBinomial(concentration1, concentration0, total_count=self._n(concentration1))

    def _classical(self, y, concentration1, concentration0):
        a, b, n = concentration1, concentration0, self._n(concentration1)

        def lbeta(p, q):
            return torch.lgamma(p) + torch.lgamma(q) - torch.lgamma(p + q)

        log_choose = torch.lgamma(n + 1) - torch.lgamma(y + 1) - torch.lgamma(n - y + 1)
        return -log_choose - lbeta(y + a, n - y + b) + lbeta(a, b)


__all__ = [
    "BetaBinomial",
    "Binomial",
    "HurdleDistribution",
    "HurdleNegativeBinomial",
    "HurdlePoisson",
    "ZeroInflatedNegativeBinomial",
    "ZeroInflatedPoisson",
]
