"""Likelihood heads: a network's raw outputs → a distribution whose NLL is the loss.

Every family is registered by name::

    >>> from pyro_mle import likelihoods
    >>> likelihoods.names()[:3]
    ['bernoulli', 'beta', 'categorical']
    >>> likelihoods.get("normal")(scale=0.3)
    Normal(scale=0.3)
"""

from . import links
from .base import Likelihood, Param, get, names
from .censored import Censored, Truncated
from .circular import VonMises, VonMisesMixture, log_von_mises_pdf, wrap_angle
from .compositions import Dirichlet, Multinomial
from .continuous import Beta, Exponential, Gamma, Laplace, Normal, StudentT
from .counts import (
    BetaBinomial,
    Binomial,
    HurdleNegativeBinomial,
    HurdlePoisson,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
)
from .discrete import Bernoulli, Categorical, NegativeBinomial, Poisson
from .divergence import KLDecomposition, empirical_kl
from .mixture import NormalMixture
from .multivariate import MultivariateNormal
from .ordinal import OrderedLogistic, OrderedProbit
from .positive import LogNormal, Weibull
from .quantile import AsymmetricLaplace
from .ranking import PlackettLuce, PlackettLuceDistribution, permutation

__all__ = [
    "Multinomial",
    "Dirichlet",
    "OrderedProbit",
    "OrderedLogistic",
    "ZeroInflatedPoisson",
    "ZeroInflatedNegativeBinomial",
    "HurdlePoisson",
    "HurdleNegativeBinomial",
    "Binomial",
    "BetaBinomial",
    "AsymmetricLaplace",
    "Bernoulli",
    "Beta",
    "Categorical",
    "Censored",
    "Exponential",
    "Gamma",
    "KLDecomposition",
    "Laplace",
    "LogNormal",
    "Likelihood",
    "MultivariateNormal",
    "NegativeBinomial",
    "Normal",
    "NormalMixture",
    "Param",
    "PlackettLuce",
    "PlackettLuceDistribution",
    "Poisson",
    "StudentT",
    "Truncated",
    "VonMises",
    "VonMisesMixture",
    "Weibull",
    "empirical_kl",
    "get",
    "links",
    "log_von_mises_pdf",
    "names",
    "permutation",
    "wrap_angle",
]
