"""What a fit must never do: claim an optimum it has not reached, cry wolf where one exists, or
leave the caller's tensors, gradients, generators and module weights changed when it fails.
Each case is one a review of the fit core reproduced; references are statsmodels' data,
numpy's lstsq and the closed-form Normal MLE."""

import random
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import statsmodels.api as sm
import torch
from torch.autograd.function import once_differentiable

import pyro_mle

F64 = torch.float64


def recorded(call):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = call()
    return result, [w.category for w in rec]


class _OnceDifferentiable(torch.autograd.Function):
    """The identity, with a backward that cannot itself be differentiated (no Hessian)."""

    @staticmethod
    def forward(ctx, v):
        return v.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return g


def test_no_hessian_leaves_the_callers_gtol_in_charge():
    """Longley, unscaled, where no Newton finish can run: L-BFGS alone does not reach lstsq, and
    fit must not say it did."""
    data = sm.datasets.longley.load_pandas()
    X = torch.tensor(sm.add_constant(data.exog).values, dtype=F64)
    y = torch.tensor(data.endog.values, dtype=F64)
    reference = np.linalg.lstsq(X.numpy(), y.numpy(), rcond=None)[0]

    def model(X, y):
        w = pyro.param("w", torch.zeros(X.shape[1], dtype=F64))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(_OnceDifferentiable.apply(X @ w), 1.0), obs=y)

    result, warned = recorded(lambda: pyro_mle.fit(model, X, y))
    error = np.max(np.abs(result.params["w"].numpy() - reference) / np.abs(reference))
    assert result.converged == (error < 1e-6), (result.message, error)
    if not result.converged:
        assert pyro_mle.ConvergenceWarning in warned


def test_a_large_variance_at_its_optimum_is_not_an_edge():
    """House prices in dollars: the variance MLE is 4e10 (its log beyond the edge threshold) and
    exists; so does a Cholesky factor with a large off-diagonal entry."""
    g = torch.Generator().manual_seed(0)
    y = 3e5 + 2e5 * torch.randn(1000, generator=g, dtype=F64)

    def model(y):
        mu = pyro.param("mu", torch.tensor(0.0, dtype=F64))
        var = pyro.param("var", torch.tensor(1.0, dtype=F64), constraint=dist.constraints.positive)
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(mu, var.sqrt()), obs=y)

    result, warned = recorded(lambda: pyro_mle.fit(model, y))
    assert result.converged and not warned, result.message
    # the loss is flat to rounding within 1e-7 of the variance (its standard error is 4 %)
    assert float(result.params["var"]) == pytest.approx(float(y.var(unbiased=False)), rel=1e-6)

    L = torch.tensor([[1.0, 0.0], [40.0, 1.0]], dtype=F64)
    z = torch.randn(2000, 2, generator=g, dtype=F64) @ L.T

    def mvn(z):
        m = pyro.param("m", torch.zeros(2, dtype=F64))
        S = pyro.param("S", torch.eye(2, dtype=F64), constraint=dist.constraints.lower_cholesky)
        with pyro.plate("n", len(z)):
            pyro.sample("z", dist.MultivariateNormal(m, scale_tril=S), obs=z)

    result, warned = recorded(lambda: pyro_mle.fit(mvn, z))
    assert result.converged and not warned, result.message
    centred = z - z.mean(0)
    expected = torch.linalg.cholesky(centred.T @ centred / len(z))
    np.testing.assert_allclose(result.params["S"].numpy(), expected.numpy(), rtol=1e-6)


def test_a_trial_point_that_raises_is_a_step_too_long():
    """A covariance entry as a free parameter: a line search may try a matrix that is not
    positive definite, where torch raises; the fit backs off and reaches the sample covariance."""
    g = torch.Generator().manual_seed(0)
    C = torch.tensor([[1.0, 0.95], [0.95, 1.0]], dtype=F64)
    z = torch.randn(500, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(C).T * 3

    def model(z):
        s = pyro.param("s", torch.ones(2, dtype=F64), constraint=dist.constraints.positive)
        rho = pyro.param("rho", torch.tensor(0.0, dtype=F64))
        cov = torch.stack([torch.stack([s[0], rho]), torch.stack([rho, s[1]])])
        with pyro.plate("n", len(z)):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(2, dtype=F64), covariance_matrix=cov), obs=z)

    result, _ = recorded(lambda: pyro_mle.fit(model, z))
    sample = (z.T @ z / len(z)).numpy()
    assert float(result.params["rho"]) == pytest.approx(sample[0, 1], rel=1e-5)


def test_a_failed_fit_leaves_module_weights_and_gradients_as_they_were():
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)

    def model(x, y=None):
        pyro.module("net", net)
        pyro_mle.likelihoods.Normal(scale=0.1)("y", net(x).squeeze(-1), obs=y)

    pyro_mle.fit(model, x, y)
    trained = net.weight.detach().clone()
    assert net.weight.grad is None and net.bias.grad is None, "the fit's last gradient was left behind"

    def broken(x, y=None):
        pyro.module("net", net)
        pyro.param("unused", torch.zeros(2, dtype=F64))
        pyro_mle.likelihoods.Normal(scale=0.1)("y", net(x).squeeze(-1), obs=y)

    with pytest.raises(pyro_mle.UnusedParameterError, match="unused"):
        pyro_mle.fit(broken, x, y)
    assert torch.equal(net.weight.detach(), trained), "a failed fit must not throw the estimate away"


def test_the_callers_initial_tensor_is_not_optimised_in_place():
    init = torch.zeros(2, dtype=F64)
    x = torch.randn(40, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = x @ torch.tensor([3.0, -1.0], dtype=F64)

    def model(x, y=None):
        w = pyro.param("w", init)
        pyro_mle.likelihoods.Normal(scale=1.0)("y", x @ w, obs=y)

    result = pyro_mle.fit(model, x, y)
    assert torch.equal(init, torch.zeros(2, dtype=F64)) and not init.requires_grad
    np.testing.assert_allclose(result.params["w"].numpy(), [3.0, -1.0], rtol=1e-8)


def test_predict_with_a_seed_leaves_the_callers_generators():
    x = torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    y = x @ torch.tensor([1.0, 1.0], dtype=F64)

    def model(x, y=None):
        w = pyro.param("w", torch.zeros(2, dtype=F64))
        pyro_mle.likelihoods.Normal(scale=1.0)("y", x @ w, obs=y)

    result = pyro_mle.fit(model, x, y)
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    first = result.predict(x, num_samples=2, seed=5).draws["y"]
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected
    assert torch.equal(first, result.predict(x, num_samples=2, seed=5).draws["y"])


def test_objective_takes_only_its_own_parameters():
    x = torch.randn(20, 2, dtype=F64)
    y = x.sum(-1)

    def model(x, y=None):
        w = pyro.param("w", torch.zeros(2, dtype=F64))
        pyro_mle.likelihoods.Normal(scale=1.0)("y", x @ w, obs=y)

    with pyro.get_param_store().scope():
        pyro.param("left_over", torch.zeros(1000))
        obj = pyro_mle.objective(model, x, y)
        assert obj.names == ("w",) and obj.flat().shape == (2,)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_bad_seed_is_refused_by_name(seed):
    x = torch.zeros(3, 1, dtype=F64)

    def model(x, y=None):
        w = pyro.param("w", torch.zeros(1, dtype=F64))
        pyro_mle.likelihoods.Normal(scale=1.0)("y", x @ w, obs=y)

    with pytest.raises(ValueError, match="seed must be a non-negative integer or None"):
        pyro_mle.fit(model, x, torch.zeros(3, dtype=F64), seed=seed)


def test_objective_refuses_an_unknown_method():
    def model(y=None):
        pyro.sample("y", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0), obs=y)

    with pytest.raises(ValueError, match=r"method must be one of \['mle', 'map'\]; got 'ml'"):
        pyro_mle.objective(model, torch.tensor(1.0), method="ml")


def test_a_near_collinear_pair_of_columns_is_solved_not_just_stopped():
    """x2 = x1 + 1e-6·noise: the Hessian has an eigenvalue of 5e-10 that L-BFGS's steps never
    explore, so its curvature pairs look well conditioned and its gradient test passes at
    w1 ≈ w2 ≈ 1 while least squares puts them at ±4,245. The Newton finish must run and find
    lstsq's answer (a review's reproduction of a withdrawn shortcut)."""
    rng = np.random.default_rng(0)
    n, d = 1000, 50
    X = rng.standard_normal((n, d))
    X[:, 1] = X[:, 0] + 1e-6 * rng.standard_normal(n)
    y = X @ np.linspace(1, 2, d) + 3 + 0.1 * rng.standard_normal(n)

    def model(x, y=None):
        w = pyro.param("w", torch.zeros(d, dtype=torch.float64))
        b = pyro.param("b", torch.zeros((), dtype=torch.float64))
        pyro_mle.likelihoods.Normal(scale=1.0)("y", x @ w + b, obs=y)

    fit = pyro_mle.fit(model, torch.tensor(X), torch.tensor(y))
    reference = np.linalg.lstsq(np.c_[X, np.ones(n)], y, rcond=None)[0]
    estimate = np.r_[fit.params["w"].numpy(), fit.params["b"].numpy()]
    assert fit.converged, fit.message
    np.testing.assert_allclose(estimate, reference, rtol=1e-5)
