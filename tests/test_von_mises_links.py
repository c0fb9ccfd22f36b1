"""Von Mises mean links (issue 13): the default link follows a mean direction across ±π.

The reference is the NLL at the true parameters (scipy's von Mises density): a fit must reach
it within 0.1 %. The tan-half link 2·atan(f), the former default, cannot cross ±π and stalls.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import pyro_mle
from pyro_mle import likelihoods as L

F64 = torch.float64
A, B, KAPPA = 2.9, 1.2, 3.0  # μ = a + b·x runs over [1.7, 4.1]: across +π


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def wind(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    y = np.angle(np.exp(1j * (A + B * x + rng.vonmises(0.0, KAPPA, n))))  # wrapped to (−π, π]
    return torch.from_numpy(x), torch.from_numpy(y)


def model_for(links):
    def model(x, y=None):
        a = pyro.sample("a", dist.Normal(x.new_tensor(0.0), 3.0))
        b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 3.0))
        kappa = pyro.sample("kappa", dist.LogNormal(x.new_tensor(0.0), 1.0))
        f = a + b * x
        if links.get("loc") == "atan2":  # two channels: (sin, cos) of the linear angle
            c = pyro.sample("c", dist.Normal(x.new_tensor(0.0), 3.0))
            d = pyro.sample("d", dist.Normal(x.new_tensor(0.0), 3.0))
            f = torch.stack([a + b * x, c + d * x], -1)
        return L.VonMises(concentration=kappa, links=links)("y", f, obs=y)

    return model


def true_nll(x, y):
    return -stats.vonmises(KAPPA, loc=A + B * x.numpy()).logpdf(y.numpy()).sum()


def test_default_link_follows_the_mean_across_pi():
    x, y = wind()
    assert (A + B * x).max() > math.pi > (A + B * x).min()  # the data do cross ±π
    fit = pyro_mle.fit(model_for({}), x, y)
    ref = true_nll(x, y)
    assert fit.converged
    assert abs(fit.nll - ref) / ref < 1e-3, (fit.nll, ref)
    assert abs(fit.params["b"].item() - B) < 0.1


def test_atan2_link_crosses_pi_too():
    """atan2(a + b·x, c + d·x) is not the family μ = A + B·x the data come from, so it cannot
    reach the true NLL exactly; it gets within 2 %, where tan-half stays above 10 %."""
    x, y = wind()
    fit = pyro_mle.fit(model_for({"loc": "atan2"}), x, y)
    ref = true_nll(x, y)
    assert fit.nll < 1.02 * ref, (fit.nll, ref)


def test_tan_half_link_cannot_cross_pi():
    """The former default, kept by name: it stalls far above the true NLL (why it is no longer
    the default)."""
    x, y = wind()
    fit = pyro_mle.fit(model_for({"loc": "tan_half"}), x, y)
    assert fit.nll > 1.1 * true_nll(x, y)


def test_predicted_means_are_reported_wrapped():
    lik = L.VonMises(concentration=1.0)
    raw = torch.tensor([3.0, 3.5, -7.0], dtype=F64)
    mean = lik.distribution(raw).mean
    np.testing.assert_allclose(mean.numpy(), np.angle(np.exp(1j * raw.numpy())), atol=1e-12)
    assert (mean.abs() <= math.pi).all()


def test_links_by_name_object_and_transform():
    assert L.Normal(links={"scale": "exp"}).param_specs[1].link is L.links.exp
    assert L.Normal(links={"scale": L.links.exp}).param_specs[1].link is L.links.exp
    t = torch.distributions.transforms.SoftplusTransform()
    assert L.Normal(links={"scale": t}).param_specs[1].link.forward is t
    assert L.VonMises(links={"loc": "atan2"}).num_outputs == 3
    assert repr(L.Normal(links={"scale": "exp"})) == "Normal(links={'scale': 'exp'})"


def test_bad_links_are_named():
    with pytest.raises(KeyError, match=r"Normal likelihood: link for 'scale': no link named 'expo'; valid names"):
        L.Normal(links={"scale": "expo"})
    with pytest.raises(TypeError, match=r"links= names no parameter 'sigma'; its parameters are \['loc', 'scale'\]"):
        L.Normal(links={"sigma": "exp"})
    with pytest.raises(TypeError, match=r"a link must be a name from .* got int"):
        L.Normal(links={"scale": 3})
    with pytest.raises(ValueError, match=r"link 'cholesky' for 'scale' acts on vectors"):
        L.Normal(links={"scale": "cholesky"})


def test_new_links_invert_and_land_in_their_codomain():
    f = torch.linspace(-3, 3, 7, dtype=F64)
    theta = L.links.angle(f)
    np.testing.assert_allclose(L.links.angle.inverse(theta).numpy(), theta.numpy(), atol=1e-12)
    np.testing.assert_allclose(np.cos(theta.numpy()), np.cos(f.numpy()), atol=1e-12)  # the same angle
    two = torch.stack([torch.sin(f), 2 * torch.cos(f)], -1)
    np.testing.assert_allclose(
        L.links.atan2.inverse(L.links.atan2(L.links.atan2.inverse(f))).numpy(),
        L.links.atan2.inverse(f).numpy(),
        atol=1e-12,
    )
    assert bool(L.links.atan2.codomain.check(L.links.atan2(two)).all())
    raw = torch.randn(5, 4, dtype=F64)
    c = L.links.ordered(raw)
    assert bool((c.diff(dim=-1) > 0).all())
    np.testing.assert_allclose(L.links.ordered.inverse(c).numpy(), raw.numpy(), atol=1e-12)
