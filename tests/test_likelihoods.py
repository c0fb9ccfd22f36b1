"""Every registered family, through the shared suite of pyro_mle.testing.LikelihoodTestCase.

Each case below supplies a constructor, an independent reference log-density (scipy.stats
or a closed form written in numpy), and the family's bad observed values.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from pyro_mle import likelihoods as L
from pyro_mle.testing import LikelihoodTestCase


# The links written out again in numpy, so a reference starts from the raw outputs and a wrong
# link or a swapped channel in the library cannot hide.
def softplus(f):
    return np.logaddexp(0.0, f)


def tan_half(f):
    return 2.0 * np.arctan(f)


def angle(f):
    return np.arctan2(np.sin(f), np.cos(f))


def cholesky(v, dim):
    L = np.zeros(v.shape[:-1] + (dim, dim))
    rows, cols = np.tril_indices(dim)
    L[..., rows, cols] = v
    i = np.arange(dim)
    L[..., i, i] = softplus(L[..., i, i])
    return L


class TestNormalLeastSquares(LikelihoodTestCase):
    def make_likelihood(self):
        return L.Normal(scale=0.3)

    def reference_log_prob(self, f, y):
        return stats.norm(f[:, 0], 0.3).logpdf(y)


class TestNormalPredictedScale(LikelihoodTestCase):
    def make_likelihood(self):
        return L.Normal()

    def reference_log_prob(self, f, y):
        return stats.norm(f[:, 0], softplus(f[:, 1])).logpdf(y)


class TestNormalPassedInScale(LikelihoodTestCase):
    """A scale that is a tensor, as when a model samples it as a latent site."""

    def make_likelihood(self):
        return L.Normal(scale=torch.tensor(0.7, dtype=torch.float64))

    def reference_log_prob(self, f, y):
        return stats.norm(f[:, 0], 0.7).logpdf(y)


class TestLaplace(LikelihoodTestCase):
    def make_likelihood(self):
        return L.Laplace()

    def reference_log_prob(self, f, y):
        return stats.laplace(f[:, 0], softplus(f[:, 1])).logpdf(y)


class TestStudentT(LikelihoodTestCase):
    def make_likelihood(self):
        return L.StudentT()

    def reference_log_prob(self, f, y):
        return stats.t(softplus(f[:, 2]), f[:, 0], softplus(f[:, 1])).logpdf(y)


class TestStudentTFixedDf(LikelihoodTestCase):
    def make_likelihood(self):
        return L.StudentT(df=4.0)

    def reference_log_prob(self, f, y):
        return stats.t(4.0, f[:, 0], softplus(f[:, 1])).logpdf(y)


class TestNormalMixture(LikelihoodTestCase):
    def make_likelihood(self):
        return L.NormalMixture(num_components=3)

    def reference_log_prob(self, f, y):
        log_w = special.log_softmax(f[:, 0:3], axis=-1)
        comp = stats.norm(f[:, 3:6], softplus(f[:, 6:9])).logpdf(y[:, None])
        return special.logsumexp(log_w + comp, axis=-1)


class TestNormalMixtureFixedScale(LikelihoodTestCase):
    def make_likelihood(self):
        return L.NormalMixture(num_components=2, scale=0.5)

    def reference_log_prob(self, f, y):
        log_w = special.log_softmax(f[:, 0:2], axis=-1)
        return special.logsumexp(log_w + stats.norm(f[:, 2:4], 0.5).logpdf(y[:, None]), axis=-1)


class TestExponential(LikelihoodTestCase):
    bad_observations = ((-1.0, "non-negative numbers"),)

    def make_likelihood(self):
        return L.Exponential()

    def reference_log_prob(self, f, y):
        return stats.expon(scale=1 / np.exp(f[:, 0])).logpdf(y)


class TestGamma(LikelihoodTestCase):
    bad_observations = ((0.0, "positive numbers (y > 0)"), (-2.0, "use Exponential"))

    def make_likelihood(self):
        return L.Gamma()

    def reference_log_prob(self, f, y):
        return stats.gamma(softplus(f[:, 0]), scale=1 / softplus(f[:, 1])).logpdf(y)


class TestBeta(LikelihoodTestCase):
    bad_observations = ((0.0, "strictly inside (0, 1)"), (1.5, "got 1.5"), (1.0, "squeeze"))
    output_scale = 0.5

    def make_likelihood(self):
        return L.Beta()

    def reference_log_prob(self, f, y):
        return stats.beta(softplus(f[:, 0]), softplus(f[:, 1])).logpdf(y)


class TestMultivariateNormalDiagonal(LikelihoodTestCase):
    def make_likelihood(self):
        return L.MultivariateNormal(dim=3)

    def reference_log_prob(self, f, y):
        return stats.norm(f[:, 0:3], softplus(f[:, 3:6])).logpdf(y).sum(-1)


class TestMultivariateNormalScalePerOutput(LikelihoodTestCase):
    """Height in m and weight in kg: one fixed scale per output."""

    def make_likelihood(self):
        return L.MultivariateNormal(dim=2, scale=torch.tensor([0.05, 4.0], dtype=torch.float64))

    def reference_log_prob(self, f, y):
        cov = np.diag([0.05**2, 4.0**2])
        return np.array([stats.multivariate_normal(m, cov).logpdf(v) for m, v in zip(f[:, 0:2], y)])


class TestMultivariateNormalFull(LikelihoodTestCase):
    output_scale = 0.5

    def make_likelihood(self):
        return L.MultivariateNormal(dim=3, covariance="full")

    def reference_log_prob(self, f, y):
        tril = cholesky(f[:, 3:9], 3)
        return np.array([stats.multivariate_normal(m, L_ @ L_.T).logpdf(v) for m, L_, v in zip(f[:, 0:3], tril, y)])


class TestVonMises(LikelihoodTestCase):
    bad_observations = ((4.0, "within [-π, π]"), (270.0, "torch.deg2rad"), (-3.5, "wrap_angle"))

    def make_likelihood(self):
        return L.VonMises()

    def reference_log_prob(self, f, y):
        return stats.vonmises(softplus(f[:, 1]), loc=angle(f[:, 0])).logpdf(y)

    def extreme_outputs(self, out):
        big = torch.zeros_like(out)
        big[:, 1] = 1e4  # κ = 10⁴: I₀(κ) overflows float64, the NLL must not
        return super().extreme_outputs(out) + [big]


class TestVonMisesFixedConcentration(LikelihoodTestCase):
    def make_likelihood(self):
        return L.VonMises(concentration=4.0)

    def reference_log_prob(self, f, y):
        return stats.vonmises(4.0, loc=angle(f[:, 0])).logpdf(y)


class TestVonMisesAtan2(LikelihoodTestCase):
    """The mean direction from two channels (sin, cos), chosen by name."""

    def make_likelihood(self):
        return L.VonMises(links={"loc": "atan2"})

    def reference_log_prob(self, f, y):
        return stats.vonmises(softplus(f[:, 2]), loc=np.arctan2(f[:, 0], f[:, 1])).logpdf(y)


class TestVonMisesTanHalf(LikelihoodTestCase):
    def make_likelihood(self):
        return L.VonMises(concentration=2.0, links={"loc": "tan_half"})

    def reference_log_prob(self, f, y):
        return stats.vonmises(2.0, loc=tan_half(f[:, 0])).logpdf(y)


class TestNormalExpScale(LikelihoodTestCase):
    """A link per parameter: scale = exp(f), torch's ExpTransform, by name."""

    extremes = (-30.0, 5.0)

    def make_likelihood(self):
        return L.Normal(links={"scale": "exp"})

    def reference_log_prob(self, f, y):
        return stats.norm(f[:, 0], np.exp(f[:, 1])).logpdf(y)


class TestGammaTransformLink(LikelihoodTestCase):
    """A link given as a torch Transform object."""

    def make_likelihood(self):
        return L.Gamma(concentration=2.0, links={"rate": torch.distributions.transforms.ExpTransform()})

    def reference_log_prob(self, f, y):
        return stats.gamma(2.0, scale=np.exp(-f[:, 0])).logpdf(y)


class TestVonMisesMixture(LikelihoodTestCase):
    bad_observations = ((7.0, "within [-π, π]"),)
    extremes = (-30.0, 20.0)  # the hand-written loss uses I₀ itself, finite for κ < ~700

    def make_likelihood(self):
        return L.VonMisesMixture(num_components=2)

    def reference_log_prob(self, f, y):
        log_w = special.log_softmax(f[:, 0:2], axis=-1)
        comp = stats.vonmises(softplus(f[:, 4:6]), loc=angle(f[:, 2:4])).logpdf(y[:, None])
        return special.logsumexp(log_w + comp, axis=-1)


class TestBernoulli(LikelihoodTestCase):
    bad_observations = ((2.0, "must be 0 or 1; got 2"), (-1.0, "Encode labels as 0/1"), (0.5, "got 0.5"))
    extremes = (-1e4, 1e4)

    def make_likelihood(self):
        return L.Bernoulli()

    def reference_log_prob(self, f, y):
        return stats.bernoulli(special.expit(f[:, 0])).logpmf(y)


class TestCategorical(LikelihoodTestCase):
    bad_observations = ((4.0, "integer class labels in 0..3 (K=4"), (-1.0, "0..K-1"), (1.5, "got 1.5"))
    extremes = (-1e4, 1e4)

    def make_likelihood(self):
        return L.Categorical()

    def reference_log_prob(self, f, y):
        return special.log_softmax(f, axis=-1)[np.arange(len(y)), y.astype(int)]


class TestCategoricalKnownK(TestCategorical):
    def make_likelihood(self):
        return L.Categorical(num_classes=4)


class TestPoisson(LikelihoodTestCase):
    bad_observations = ((-1.0, "non-negative integer counts"), (2.5, "got 2.5"))

    def make_likelihood(self):
        return L.Poisson()

    def reference_log_prob(self, f, y):
        return stats.poisson(np.exp(f[:, 0])).logpmf(y)


class TestNegativeBinomial(LikelihoodTestCase):
    bad_observations = ((-1.0, "non-negative integer counts"), (0.5, "NegativeBinomial models counts"))

    def make_likelihood(self):
        return L.NegativeBinomial()

    def reference_log_prob(self, f, y):
        mu, r = np.exp(f[:, 0]), softplus(f[:, 1])
        return stats.nbinom(r, r / (r + mu)).logpmf(y)


class TestPlackettLuce(LikelihoodTestCase):
    bad_observations = (
        ([0.0, 0.0, 1.0, 2.0], "permutations of the item indices"),
        ([0.0, 1.0, 2.0, 5.0], "best first"),
    )
    extremes = (-1e4, 1e4)

    def make_likelihood(self):
        return L.PlackettLuce()

    def reference_log_prob(self, f, y):
        # Luce's choice axiom as a product of probabilities, in numpy: p = Π_j w_πj / Σ_{m≥j} w_πm
        w = np.exp(f)
        out = []
        for wi, perm in zip(w, y.astype(int)):
            ordered = wi[perm]
            out.append(np.sum(np.log(ordered / np.cumsum(ordered[::-1])[::-1])))
        return np.array(out)


def test_every_registered_family_has_a_test_case():
    import test_likelihoods_heads  # noqa: F401  (the issue-13 heads: their cases live there)

    ours = (__name__, "test_likelihoods_heads")
    tested = {type(c().make_likelihood()).name for c in LikelihoodTestCase.__subclasses__() if c.__module__ in ours}
    tested |= {type(TestCategoricalKnownK().make_likelihood()).name}
    assert tested == set(L.names())


# ----------------------------------------------------------------- family specifics


def test_plackett_luce_sums_to_one_over_all_permutations_of_four_items():
    logits = torch.tensor([1.3, -0.2, 0.4, 2.0], dtype=torch.float64)
    perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.float64)
    assert len(perms) == 24
    lp = L.PlackettLuce().distribution(logits.expand(24, 4)).log_prob(perms)
    assert abs(lp.exp().sum().item() - 1.0) < 1e-12
    # the probability that an item comes first is its softmax weight
    first = torch.stack([lp[perms[:, 0] == k].exp().sum() for k in range(4)])
    np.testing.assert_allclose(first.numpy(), special.softmax(logits.numpy()), rtol=1e-12)


def test_plackett_luce_with_two_items_is_bernoulli():
    s = torch.tensor([[0.7, -1.1]], dtype=torch.float64)
    lp = L.PlackettLuce().nll(s, torch.tensor([[0.0, 1.0]]))
    assert abs(lp.item() - (-math.log(special.expit(0.7 + 1.1)))) < 1e-12


def test_von_mises_fixed_concentration_is_cosine_loss_plus_constant():
    kappa = 3.0
    lik = L.VonMises(concentration=kappa)
    raw = torch.tensor([0.3, -1.2, 2.0, 9.0], dtype=torch.float64)
    y = torch.tensor([0.1, 2.5, -3.0, 3.1], dtype=torch.float64)
    mu = raw  # the raw output is the angle: cos is periodic, nothing to wrap
    const = math.log(2 * math.pi * special.i0(kappa))
    np.testing.assert_allclose(lik.nll(raw, y).numpy(), (-kappa * torch.cos(y - mu) + const).numpy(), rtol=1e-12)


def test_predicted_mean_directions_are_wrapped_angles():
    lik = L.VonMises()
    p = lik.parameters(torch.tensor([[1e6, 0.0], [-1e6, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert (p["loc"].abs() <= math.pi).all()
    np.testing.assert_allclose(
        L.wrap_angle(torch.tensor([3 * math.pi / 2, -3 * math.pi / 2])).numpy(), [-math.pi / 2, math.pi / 2], atol=1e-6
    )


def test_categorical_infers_k_and_known_k_is_enforced():
    assert L.Categorical().num_outputs is None
    assert L.Categorical(num_classes=5).num_outputs == 5
    with pytest.raises(ValueError, match="needs 5"):
        L.Categorical(num_classes=5).nll(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 channels"):
        L.Categorical().nll(torch.zeros(3, 1), torch.zeros(3))


def test_negative_binomial_tends_to_poisson():
    raw = torch.tensor([[0.5, 40.0]], dtype=torch.float64)  # total_count = softplus(40) = 40
    y = torch.tensor([3.0])
    nb = L.NegativeBinomial(total_count=1e8).nll(raw[:, :1], y)
    np.testing.assert_allclose(nb.item(), -stats.poisson(math.exp(0.5)).logpmf(3), rtol=1e-6)


def test_links_invert():
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for link in (L.links.identity, L.links.softplus, L.links.exp, L.links.tan_half):
        np.testing.assert_allclose(link.inverse(link(x)).numpy(), x.numpy(), rtol=1e-9, atol=1e-12)
    v = torch.randn(5, 6, dtype=torch.float64)
    np.testing.assert_allclose(L.links.cholesky.inverse(L.links.cholesky(v)).numpy(), v.numpy(), rtol=1e-9, atol=1e-12)
    assert L.links.softplus.inverse(torch.tensor(50.0, dtype=torch.float64)).item() == pytest.approx(50.0)


# ----------------------------------------------------------------- registry and construction


def test_registry_lookup_and_unknown_name():
    assert L.get("normal") is L.Normal
    assert L.names() == sorted(L.names())
    with pytest.raises(KeyError, match=r"no likelihood named 'gaussian'; valid names are \[.*'normal'"):
        L.get("gaussian")


def test_unknown_fixed_parameter_lists_the_valid_ones():
    with pytest.raises(
        TypeError, match=r"Normal likelihood has no parameter 'sigma'; its parameters are \['loc', 'scale'\]"
    ):
        L.Normal(sigma=1.0)


def test_invalid_fixed_value_is_rejected():
    with pytest.raises(ValueError, match=r"Normal likelihood: fixed scale must satisfy GreaterThan"):
        L.Normal(scale=-1.0)
    with pytest.raises(ValueError, match=r"fixed scale must be finite"):
        L.Normal(scale=float("nan"))


def test_everything_fixed_is_refused():
    with pytest.raises(ValueError, match="nothing for a network to predict"):
        L.Normal(loc=0.0, scale=1.0)


def test_num_outputs():
    assert L.Normal(scale=0.3).num_outputs == 1
    assert L.Normal().num_outputs == 2
    assert L.NormalMixture(3).num_outputs == 9
    assert L.NormalMixture(3, scale=0.1).num_outputs == 6
    assert L.MultivariateNormal(4).num_outputs == 8
    assert L.MultivariateNormal(4, covariance="full").num_outputs == 4 + 10
    assert L.VonMisesMixture(2).num_outputs == 6


def test_flat_y_against_column_outputs_gives_the_broadcast_hint():
    lik = L.Normal(scale=1.0)
    with pytest.raises(ValueError, match=r"would broadcast to a \(5, 5\) table: pass y.squeeze\(-1\)"):
        lik.nll(torch.zeros(5), torch.zeros(5, 1))


def test_strings_are_refused_clearly():
    with pytest.raises(TypeError, match="observed values must be a tensor"):
        L.Bernoulli().nll(torch.zeros(2), ["a", "b"])


def test_a_fixed_column_tensor_cannot_enlarge_the_batch():
    with pytest.raises(ValueError, match=r"fixed scale has shape \(4, 1\).*enlarge the batch to \(4, 4\)"):
        L.Normal(scale=torch.ones(4, 1)).nll(torch.zeros(4), torch.zeros(4))
    assert L.Normal(scale=torch.ones(4)).nll(torch.zeros(4), torch.zeros(4)).shape == (4,)
