"""A user writes a new family and inherits the whole suite from LikelihoodTestCase.

The family here, a Gumbel likelihood (the NLL of extreme-value regression), lives only in
this file; nothing in the library knows it.
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_mle import likelihoods as L
from pyro_mle.likelihoods import Likelihood, Param, links
from pyro_mle.testing import LikelihoodTestCase


class Gumbel(Likelihood):
    r"""Gumbel likelihood: :math:`-\log p(y) = z + e^{-z} + \log\beta`, :math:`z = (y-\mu)/\beta`."""

    params = (Param("loc", links.identity), Param("scale", links.softplus))
    loss_name = "Gumbel NLL"

    def _distribution(self, loc, scale):
        return dist.Gumbel(loc, scale)

    def _classical(self, y, loc, scale):
        z = (y - loc) / scale
        return z + torch.exp(-z) + torch.log(scale)


class TestUserGumbel(LikelihoodTestCase):
    extremes = (-2.0, 2.0)  # exp(-z) overflows for tiny scales: a property of the Gumbel, not a bug

    def make_likelihood(self):
        return Gumbel()

    def reference_log_prob(self, f, y):
        return stats.gumbel_r(f[:, 0], np.logaddexp(0.0, f[:, 1])).logpdf(y)


class Broken(Gumbel):
    """A family whose hand-written loss forgot the log-scale term."""

    def _classical(self, y, loc, scale):
        z = (y - loc) / scale
        return z + torch.exp(-z)


def test_an_unregistered_family_stays_out_of_the_registry():
    assert "gumbel" not in L.names()


def test_the_suite_catches_a_wrong_classical_loss():
    case = TestUserGumbel()
    case.make_likelihood = Broken
    with pytest.raises(AssertionError, match="largest relative difference"):
        case.test_nll_equals_classical_loss()


def test_the_suite_catches_a_wrong_reference():
    case = TestUserGumbel()
    case.reference_log_prob = lambda f, y: stats.gumbel_l(f[:, 0], np.logaddexp(0.0, f[:, 1])).logpdf(y)
    with pytest.raises(AssertionError):
        case.test_log_prob_matches_reference()


def test_the_suite_catches_samples_that_disagree_with_the_density():
    class Shifted(Gumbel):
        def _distribution(self, loc, scale):
            d = dist.Gumbel(loc, scale)
            d.sample = lambda shape=(): dist.Gumbel(loc + 0.3 * math.pi, scale).sample(shape)
            return d

    case = TestUserGumbel()
    case.make_likelihood = Shifted
    with pytest.raises(AssertionError, match="density mass"):
        case.test_samples_agree_with_log_prob()


class SwappedChannels(Gumbel):
    """A family whose declared channel order contradicts its documentation (scale first)."""

    params = (Param("scale", links.softplus), Param("loc", links.identity))


def test_the_suite_catches_a_swapped_channel_order():
    case = TestUserGumbel()
    case.make_likelihood = SwappedChannels
    with pytest.raises(AssertionError):
        case.test_log_prob_matches_reference()
