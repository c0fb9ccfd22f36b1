"""pyro_mle.objective, the building block under fit, against closed forms.

A float64 linear regression y = Xw + ε, ε ~ N(0, σ²) with σ = 0.5 fixed, and a prior
w ~ N(0, τ²) with τ = 2: the negative log-likelihood, its gradient and Hessian are written out
by hand (numpy, scipy.stats), and the minimiser is numpy's lstsq.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import init_to_sample
from scipy import optimize, stats

import pyro_mle
from pyro_mle.likelihoods import Normal

F64 = torch.float64
SCALE = 0.5  # σ of the likelihood
PRIOR_SCALE = 2.0  # τ of the prior on w


def regression(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ np.array([1.0, -2.0, 0.5]) + SCALE * rng.normal(size=n)
    return X, y


def model(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), PRIOR_SCALE).to_event(1))
    Normal(scale=SCALE)("y", x @ w, obs=y)


def nll(X, y, w):
    """Σ(y − Xw)²/2σ² + N log(σ√2π)."""
    r = y - X @ w
    return r @ r / (2 * SCALE**2) + len(y) * math.log(SCALE * math.sqrt(2 * math.pi))


@pytest.fixture()
def data():
    X, y = regression()
    return X, y, torch.tensor(X), torch.tensor(y)


@pytest.fixture(autouse=True)
def fresh_param_store():
    with pyro.get_param_store().scope():
        yield


def point(rng, d=3):
    return torch.tensor(rng.normal(size=d))


def test_layout_is_the_latent_site_in_the_unconstrained_space(data):
    X, y, x, yt = data
    obj = pyro_mle.objective(model, x, yt)
    assert obj.structure.latent == ("w",)
    assert obj.structure.observed == ("y",)
    assert obj.structure.num_data == len(y)
    assert len(obj.params) == 1 and obj.params[0].shape == (3,)
    assert "w" in obj.names[0]
    assert obj.flat().dtype == F64
    w = point(np.random.default_rng(1))
    obj.set_flat(w)
    assert torch.equal(obj.flat(), w)
    assert torch.equal(obj.estimate()["w"], w)


def test_mle_value_and_gradient_equal_the_closed_form(data):
    X, y, x, yt = data
    obj = pyro_mle.objective(model, x, yt, method="mle")
    rng = np.random.default_rng(2)
    for _ in range(3):
        w = point(rng)
        value, grad = obj.value_and_grad(w)
        wn = w.numpy()
        assert value.dtype == F64 and grad.dtype == F64
        assert float(value) == pytest.approx(nll(X, y, wn), rel=1e-13)
        np.testing.assert_allclose(grad.numpy(), X.T @ (X @ wn - y) / SCALE**2, rtol=1e-12, atol=1e-10)
        assert torch.equal(obj.flat(), w)  # value_and_grad leaves the parameters at x


def test_map_value_adds_the_prior_negative_log_density(data):
    X, y, x, yt = data
    obj = pyro_mle.objective(model, x, yt, method="map")
    rng = np.random.default_rng(3)
    for _ in range(3):
        w = point(rng)
        value, grad = obj.value_and_grad(w)
        wn = w.numpy()
        expected = nll(X, y, wn) - stats.norm(0.0, PRIOR_SCALE).logpdf(wn).sum()
        assert float(value) == pytest.approx(expected, rel=1e-13)
        np.testing.assert_allclose(
            grad.numpy(), X.T @ (X @ wn - y) / SCALE**2 + wn / PRIOR_SCALE**2, rtol=1e-12, atol=1e-10
        )


@pytest.mark.parametrize(("method", "prior_precision"), [("mle", 0.0), ("map", 1.0 / PRIOR_SCALE**2)])
def test_hessian_equals_the_closed_form(data, method, prior_precision):
    X, y, x, yt = data
    obj = pyro_mle.objective(model, x, yt, method=method)
    h = obj.hessian(point(np.random.default_rng(4)))
    assert h.shape == (3, 3) and h.dtype == F64
    expected = X.T @ X / SCALE**2 + prior_precision * np.eye(3)
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-12, atol=1e-10)


def test_scipy_minimize_on_the_block_reaches_lstsq(data):
    X, y, x, yt = data
    obj = pyro_mle.objective(model, x, yt)

    def fun(v):
        value, grad = obj.value_and_grad(torch.tensor(v))
        return float(value), grad.numpy()

    res = optimize.minimize(fun, obj.flat().numpy(), jac=True, method="BFGS", options=dict(gtol=1e-10))
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-8, rtol=0)


def constrained_model(x, y=None):
    loc = pyro.sample("loc", dist.Normal(torch.tensor(5.0, dtype=F64), 3.0))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(7.0, dtype=F64)))
    shift = pyro.sample("shift", dist.Uniform(torch.tensor(2.0, dtype=F64), torch.tensor(6.0, dtype=F64)))
    pyro.sample("y", dist.Normal(loc + shift * x, scale), obs=y)


def test_init_to_centre_starts_at_the_centre_of_each_support(data, monkeypatch):
    _, _, x, yt = data

    def refuse(self, *args, **kwargs):
        raise AssertionError("init_to_centre drew from the prior")

    # HalfNormal draws through its base Normal, so these cover both real-valued priors.
    monkeypatch.setattr(torch.distributions.Normal, "sample", refuse)
    monkeypatch.setattr(torch.distributions.Normal, "rsample", refuse)
    with pytest.raises(AssertionError, match="drew from the prior"):  # the patch bites
        dist.HalfNormal(torch.tensor(7.0, dtype=F64)).sample()
    with pytest.raises(AssertionError, match="drew from the prior"):
        pyro_mle.objective(constrained_model, x[:, 0], yt, init_loc_fn=init_to_sample)
    obj = pyro_mle.objective(constrained_model, x[:, 0], yt, init_loc_fn=pyro_mle.init_to_centre)
    start = obj.estimate()
    assert float(start["loc"]) == 0.0  # 0, not the prior's mean 5
    assert float(start["scale"]) == pytest.approx(1.0, rel=1e-15)
    assert float(start["shift"]) == pytest.approx(4.0, rel=1e-15)
    # the unconstrained start is zero everywhere
    np.testing.assert_allclose(obj.flat().numpy(), 0.0, atol=1e-15)
    # and evaluating the objective there does not draw either
    value, _ = obj.value_and_grad(obj.flat())
    assert math.isfinite(float(value))


def test_init_to_centre_is_the_default(data):
    _, _, x, yt = data
    start = pyro_mle.objective(constrained_model, x[:, 0], yt).estimate()
    assert [float(start[k]) for k in ("loc", "scale", "shift")] == pytest.approx([0.0, 1.0, 4.0], rel=1e-15)
