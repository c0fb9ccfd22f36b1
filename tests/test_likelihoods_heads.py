"""The heads of issue 13 through the shared suite of pyro_mle.testing.LikelihoodTestCase.

Each case supplies a constructor and an independent reference log-density (scipy.stats, or a
closed form / enumeration written in numpy from the **raw** outputs), and its bad observations.
"""

import numpy as np
from scipy import stats

from pyro_mle import likelihoods as L
from pyro_mle.testing import LikelihoodTestCase


def softplus(f):
    return np.logaddexp(0.0, f)


def pinball(u, q):
    return u * (q - (u < 0))


class TestAsymmetricLaplaceQuantile(LikelihoodTestCase):
    def make_likelihood(self):
        return L.AsymmetricLaplace(quantile=0.9, scale=1.0)

    def reference_log_prob(self, f, y):
        # Koenker & Machado (1999): p(y) = q(1-q)/σ exp(-ρ_q((y-μ)/σ)); scipy has no such law
        q = 0.9
        return np.log(q * (1 - q)) - pinball(y - f[:, 0], q)


class TestAsymmetricLaplacePredictedScale(LikelihoodTestCase):
    def make_likelihood(self):
        return L.AsymmetricLaplace(quantile=0.25)

    def reference_log_prob(self, f, y):
        # scipy's laplace_asymmetric(kappa): density ∝ exp(-x·κ) for x ≥ 0, exp(x/κ) below, on
        # x = (y - loc)/scale; our slopes q/σ and (1-q)/σ give κ = sqrt(q/(1-q)), scale = σ/sqrt(q(1-q))
        q, s = 0.25, softplus(f[:, 1])
        return stats.laplace_asymmetric(np.sqrt(q / (1 - q)), loc=f[:, 0], scale=s / np.sqrt(q * (1 - q))).logpdf(y)
